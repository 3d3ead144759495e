//! Tools, their pinned definitions, and strictly parsed arguments.

use std::fmt;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::json::{canonical_bytes, hex, parse_strict};
use crate::schema::{PolicyType, SchemaNode};

/// A tool's name behind the gateway: `<server>/<tool>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ToolId {
    server: String,
    name: String,
}

impl ToolId {
    /// A tool id from its server and tool names. Server names are `[A-Za-z0-9_-]+`; tool names
    /// are non-empty, without `/`, whitespace or control characters.
    pub fn new(server: &str, name: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::ToolName {
            name: format!("{server}/{name}"),
            reason: reason.to_owned(),
        };
        if server.is_empty()
            || !server
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "server names hold only `A-Z`, `a-z`, `0-9`, `_` and `-`",
            ));
        }
        if name.is_empty() || name.len() > 128 {
            return Err(invalid("tool names hold 1 to 128 bytes"));
        }
        if name
            .chars()
            .any(|c| c == '/' || c == '*' || c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "tool names hold no `/`, `*`, whitespace or control characters",
            ));
        }
        Ok(Self {
            server: server.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Parses `<server>/<tool>`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let (server, name) = text.split_once('/').ok_or_else(|| Error::ToolName {
            name: text.to_owned(),
            reason: "expected `<server>/<tool>`".to_owned(),
        })?;
        Self::new(server, name)
    }

    /// The upstream server's name.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The tool's name on its server.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ToolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.server, self.name)
    }
}

/// A tool as pinned by the kernel: its id, its MCP definition, the compiled input schema and the
/// definition hash (SHA-256 of the JCS bytes of the definition).
#[derive(Debug, Clone)]
pub struct ToolSpec {
    id: ToolId,
    definition: Value,
    definition_hash: String,
    schema: SchemaNode,
}

impl ToolSpec {
    /// Builds a spec from an MCP tool definition (an object with `name` and `inputSchema`, as in
    /// a `tools/list` result) served by `server`.
    pub fn from_mcp_definition(server: &str, definition: &Value) -> Result<Self, Error> {
        let bad = |reason: &str| Error::ToolDefinition(reason.to_owned());
        let Value::Object(map) = definition else {
            return Err(bad("a tool definition must be an object"));
        };
        let name = map
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing `name`"))?;
        let id = ToolId::new(server, name)?;
        let input = map
            .get("inputSchema")
            .ok_or_else(|| bad("missing `inputSchema`"))?;
        let schema = SchemaNode::compile(input, "/inputSchema")?;
        if !schema.is_object() {
            return Err(Error::ToolSchema {
                path: "/inputSchema/type".to_owned(),
                reason: "the input schema must have `\"type\": \"object\"`".to_owned(),
            });
        }
        let definition_hash = format!(
            "sha256:{}",
            hex(&Sha256::digest(canonical_bytes(definition)))
        );
        Ok(Self {
            id,
            definition: definition.clone(),
            definition_hash,
            schema,
        })
    }

    /// [`from_mcp_definition`](Self::from_mcp_definition) over raw JSON bytes, parsed strictly.
    pub fn from_mcp_json(server: &str, bytes: &[u8]) -> Result<Self, Error> {
        Self::from_mcp_definition(server, &parse_strict(bytes)?)
    }

    /// The tool's id.
    pub fn id(&self) -> &ToolId {
        &self.id
    }

    /// The definition as given.
    pub fn definition(&self) -> &Value {
        &self.definition
    }

    /// `"sha256:<hex>"` of the definition's JCS bytes.
    pub fn definition_hash(&self) -> &str {
        &self.definition_hash
    }

    /// Parses `bytes` as this tool's arguments: strict I-JSON, an object, valid against the
    /// pinned input schema with schema lockdown.
    pub fn parse_arguments(&self, bytes: &[u8]) -> Result<Arguments, Error> {
        let value = parse_strict(bytes)?;
        let Value::Object(map) = value else {
            return Err(Error::Arguments {
                path: "/".to_owned(),
                reason: "arguments must be a JSON object".to_owned(),
            });
        };
        let value = Value::Object(map);
        self.schema.check(&value, "")?;
        let canonical = canonical_bytes(&value);
        let hash = crate::json::sha256_tag(&canonical);
        let Value::Object(map) = value else {
            return Err(Error::Arguments {
                path: "/".to_owned(),
                reason: "not an object".to_owned(),
            });
        };
        Ok(Arguments {
            map,
            canonical,
            hash,
        })
    }

    pub(crate) fn policy_properties(
        &self,
    ) -> impl Iterator<Item = (&str, Option<PolicyType>, bool)> {
        self.schema.properties()
    }
}

/// Arguments that passed strict parsing and the schema: the object, its RFC 8785 canonical bytes
/// (exactly what is forwarded and hashed) and `"sha256:<hex>"` of those bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Arguments {
    map: Map<String, Value>,
    canonical: Vec<u8>,
    hash: String,
}

impl Arguments {
    /// The arguments object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The canonical bytes: forward exactly these upstream.
    pub fn canonical_bytes(&self) -> &[u8] {
        &self.canonical
    }

    /// `"sha256:<hex>"` of the canonical bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> ToolSpec {
        ToolSpec::from_mcp_definition(
            "market",
            &json!({"name": "query", "inputSchema": {"type": "object",
                "properties": {"symbol": {"type": "string"}}, "required": ["symbol"]}}),
        )
        .unwrap()
    }

    #[test]
    fn hash_is_over_canonical_bytes() {
        let a = spec().parse_arguments(br#"{ "symbol" : "ACME" }"#).unwrap();
        assert_eq!(a.canonical_bytes(), br#"{"symbol":"ACME"}"#);
        assert_eq!(a.hash(), crate::json::sha256_tag(br#"{"symbol":"ACME"}"#));
    }

    #[test]
    fn strict_rejections() {
        let s = spec();
        for bad in [
            r#"{"symbol":"A","symbol":"B"}"#,
            r#"{"symbol":"A","extra":1}"#,
            r#"{"symbol":"A","n":9007199254740993}"#,
            r#"{"symbol":"\ud800"}"#,
            r#"["symbol"]"#,
            r#"{}"#,
        ] {
            assert!(s.parse_arguments(bad.as_bytes()).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn definition_hash_ignores_formatting() {
        let a = ToolSpec::from_mcp_json("s", br#"{"name":"t","inputSchema":{"type":"object"}}"#);
        let b =
            ToolSpec::from_mcp_json("s", br#"{ "inputSchema" : {"type":"object"}, "name":"t" }"#);
        assert_eq!(a.unwrap().definition_hash(), b.unwrap().definition_hash());
    }

    #[test]
    fn tool_ids() {
        assert_eq!(
            ToolId::parse("market/query").unwrap().to_string(),
            "market/query"
        );
        for bad in ["market", "/x", "a b/x", "m/", "m/a/b", "m/*"] {
            assert!(ToolId::parse(bad).is_err(), "{bad}");
        }
    }
}
