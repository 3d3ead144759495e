//! The JSON Schema subset tool input schemas use, compiled once and checked against every call.
//!
//! Supported: `type` (one or several), `enum`, `const`, `properties`, `required`,
//! `additionalProperties`, `items`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`,
//! `minLength`, `maxLength`, `minItems`, `maxItems`, `uniqueItems`, `pattern`, `anyOf`, `oneOf`,
//! `allOf`; annotations (`title`, `description`, `default`, `examples`, `format`, …) and
//! extension keywords starting with `x-` (e.g. `x-mcp-header`) are ignored.
//! Any other keyword (`$ref`, `not`, `if`, …) makes the schema unsupported: the tool is refused
//! rather than half-checked.
//!
//! Schema lockdown: an object accepts only the keys its `properties` declare, whatever
//! `additionalProperties: true` says; other keys are accepted only when `additionalProperties` is
//! itself a schema, and are then checked against it.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use crate::Error;

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "format",
    "$schema",
    "$id",
    "$comment",
    "readOnly",
    "writeOnly",
    "deprecated",
    "contentMediaType",
    "contentEncoding",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl JsonType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "null" => Self::Null,
            "boolean" => Self::Boolean,
            "integer" => Self::Integer,
            "number" => Self::Number,
            "string" => Self::String,
            "array" => Self::Array,
            "object" => Self::Object,
            _ => return None,
        })
    }

    fn matches(self, value: &Value) -> bool {
        match (self, value) {
            (Self::Null, Value::Null)
            | (Self::Boolean, Value::Bool(_))
            | (Self::Number, Value::Number(_))
            | (Self::String, Value::String(_))
            | (Self::Array, Value::Array(_))
            | (Self::Object, Value::Object(_)) => true,
            (Self::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        }
    }
}

/// The type a policy sees for an argument (a Cedar type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PolicyType {
    String,
    Long,
    Decimal,
    Bool,
    Set(Box<PolicyType>),
    /// Attributes with their type and whether they are required.
    Record(Vec<(String, PolicyType, bool)>),
}

#[derive(Debug, Clone)]
enum Additional {
    Forbidden,
    Schema(Box<SchemaNode>),
}

/// A compiled schema node.
#[derive(Debug, Clone)]
pub(crate) struct SchemaNode {
    types: Option<Vec<JsonType>>,
    enum_values: Option<Vec<Value>>,
    const_value: Option<Value>,
    properties: BTreeMap<String, SchemaNode>,
    required: Vec<String>,
    additional: Additional,
    items: Option<Box<SchemaNode>>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    exclusive_maximum: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    unique_items: bool,
    pattern: Option<Regex>,
    any_of: Vec<SchemaNode>,
    one_of: Vec<SchemaNode>,
    all_of: Vec<SchemaNode>,
}

impl SchemaNode {
    /// Compiles `schema`; `path` is a JSON pointer used in errors.
    pub(crate) fn compile(schema: &Value, path: &str) -> Result<Self, Error> {
        let err = |at: &str, reason: String| Error::ToolSchema {
            path: at.to_owned(),
            reason,
        };
        let Value::Object(map) = schema else {
            return Err(err(path, "a schema must be an object".to_owned()));
        };
        let mut node = Self {
            types: None,
            enum_values: None,
            const_value: None,
            properties: BTreeMap::new(),
            required: Vec::new(),
            additional: Additional::Forbidden,
            items: None,
            minimum: None,
            maximum: None,
            exclusive_minimum: None,
            exclusive_maximum: None,
            min_length: None,
            max_length: None,
            min_items: None,
            max_items: None,
            unique_items: false,
            pattern: None,
            any_of: Vec::new(),
            one_of: Vec::new(),
            all_of: Vec::new(),
        };
        for (key, value) in map {
            let at = format!("{path}/{key}");
            let number = || {
                value
                    .as_f64()
                    .ok_or_else(|| err(&at, "expected a number".to_owned()))
            };
            let count = || {
                value
                    .as_u64()
                    .ok_or_else(|| err(&at, "expected a count".to_owned()))
            };
            let list = |v: &Value| -> Result<Vec<SchemaNode>, Error> {
                let Value::Array(items) = v else {
                    return Err(err(&at, "expected an array of schemas".to_owned()));
                };
                items
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Self::compile(s, &format!("{at}/{i}")))
                    .collect()
            };
            match key.as_str() {
                "type" => {
                    let names: Vec<&Value> = match value {
                        Value::Array(names) => names.iter().collect(),
                        other => vec![other],
                    };
                    let types = names
                        .into_iter()
                        .map(|n| n.as_str().and_then(JsonType::parse))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| err(&at, format!("unknown type `{value}`")))?;
                    node.types = Some(types);
                }
                "enum" => {
                    let Value::Array(values) = value else {
                        return Err(err(&at, "expected an array".to_owned()));
                    };
                    node.enum_values = Some(values.clone());
                }
                "const" => node.const_value = Some(value.clone()),
                "properties" => {
                    let Value::Object(props) = value else {
                        return Err(err(&at, "expected an object".to_owned()));
                    };
                    for (name, sub) in props {
                        let sub = Self::compile(sub, &format!("{at}/{name}"))?;
                        node.properties.insert(name.clone(), sub);
                    }
                }
                "required" => {
                    let names = value.as_array().and_then(|names| {
                        names
                            .iter()
                            .map(|n| n.as_str().map(str::to_owned))
                            .collect()
                    });
                    node.required =
                        names.ok_or_else(|| err(&at, "expected an array of names".to_owned()))?;
                }
                "additionalProperties" => {
                    node.additional = match value {
                        Value::Bool(_) => Additional::Forbidden,
                        other => Additional::Schema(Box::new(Self::compile(other, &at)?)),
                    }
                }
                "items" => node.items = Some(Box::new(Self::compile(value, &at)?)),
                "minimum" => node.minimum = Some(number()?),
                "maximum" => node.maximum = Some(number()?),
                "exclusiveMinimum" => node.exclusive_minimum = Some(number()?),
                "exclusiveMaximum" => node.exclusive_maximum = Some(number()?),
                "minLength" => node.min_length = Some(count()?),
                "maxLength" => node.max_length = Some(count()?),
                "minItems" => node.min_items = Some(count()?),
                "maxItems" => node.max_items = Some(count()?),
                "uniqueItems" => node.unique_items = value.as_bool().unwrap_or(false),
                "pattern" => {
                    let text = value
                        .as_str()
                        .ok_or_else(|| err(&at, "expected a string".to_owned()))?;
                    let regex = Regex::new(text)
                        .map_err(|e| err(&at, format!("pattern `{text}` does not compile: {e}")))?;
                    node.pattern = Some(regex);
                }
                "anyOf" => node.any_of = list(value)?,
                "oneOf" => node.one_of = list(value)?,
                "allOf" => node.all_of = list(value)?,
                other if ANNOTATIONS.contains(&other) || other.starts_with("x-") => {}
                other => return Err(err(&at, format!("unsupported schema keyword `{other}`"))),
            }
        }
        Ok(node)
    }

    /// Checks `value`; the error names the JSON pointer of the offending value.
    pub(crate) fn check(&self, value: &Value, path: &str) -> Result<(), Error> {
        let fail = |reason: String| Error::Arguments {
            path: display_path(path),
            reason,
        };
        if let Some(types) = &self.types
            && !types.iter().any(|t| t.matches(value))
        {
            return Err(fail(format!("expected {}", type_names(types))));
        }
        if let Some(values) = &self.enum_values
            && !values.iter().any(|v| json_equal(v, value))
        {
            return Err(fail("value is not one of the schema's `enum`".to_owned()));
        }
        if let Some(c) = &self.const_value
            && !json_equal(c, value)
        {
            return Err(fail("value differs from the schema's `const`".to_owned()));
        }
        match value {
            Value::Number(n) => self.check_number(n.as_f64().unwrap_or(f64::NAN), &fail)?,
            Value::String(s) => {
                let len = s.chars().count() as u64;
                if self.min_length.is_some_and(|m| len < m) {
                    return Err(fail(format!(
                        "shorter than {} characters",
                        self.min_length.unwrap_or(0)
                    )));
                }
                if let Some(max) = self.max_length.filter(|m| len > *m) {
                    return Err(fail(format!("longer than {max} characters")));
                }
                if let Some(re) = self.pattern.as_ref().filter(|re| !re.is_match(s)) {
                    return Err(fail(format!("does not match pattern `{}`", re.as_str())));
                }
            }
            Value::Array(items) => {
                let len = items.len() as u64;
                if let Some(min) = self.min_items.filter(|m| len < *m) {
                    return Err(fail(format!("fewer than {min} items")));
                }
                if let Some(max) = self.max_items.filter(|m| len > *m) {
                    return Err(fail(format!("more than {max} items")));
                }
                if self.unique_items {
                    for (i, a) in items.iter().enumerate() {
                        if items.iter().skip(i + 1).any(|b| json_equal(a, b)) {
                            return Err(fail("items are not unique".to_owned()));
                        }
                    }
                }
                if let Some(item) = &self.items {
                    for (i, v) in items.iter().enumerate() {
                        item.check(v, &format!("{path}/{i}"))?;
                    }
                }
            }
            Value::Object(map) => {
                for name in &self.required {
                    if !map.contains_key(name) {
                        return Err(fail(format!("missing required field `{name}`")));
                    }
                }
                for (key, v) in map {
                    let at = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
                    match (self.properties.get(key), &self.additional) {
                        (Some(sub), _) => sub.check(v, &at)?,
                        (None, Additional::Schema(sub)) => sub.check(v, &at)?,
                        (None, Additional::Forbidden) => {
                            return Err(Error::Arguments {
                                path: display_path(&at),
                                reason: format!("field `{key}` is not declared by the tool schema"),
                            });
                        }
                    }
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
        for sub in &self.all_of {
            sub.check(value, path)?;
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|s| s.check(value, path).is_ok()) {
            return Err(fail("matches none of `anyOf`".to_owned()));
        }
        if !self.one_of.is_empty() {
            let matching = self
                .one_of
                .iter()
                .filter(|s| s.check(value, path).is_ok())
                .count();
            if matching != 1 {
                return Err(fail(format!(
                    "matches {matching} of `oneOf`, expected exactly 1"
                )));
            }
        }
        Ok(())
    }

    fn check_number(&self, n: f64, fail: &dyn Fn(String) -> Error) -> Result<(), Error> {
        if let Some(min) = self.minimum.filter(|m| n < *m) {
            return Err(fail(format!("less than the minimum {min}")));
        }
        if let Some(max) = self.maximum.filter(|m| n > *m) {
            return Err(fail(format!("greater than the maximum {max}")));
        }
        if let Some(min) = self.exclusive_minimum.filter(|m| n <= *m) {
            return Err(fail(format!("not greater than {min}")));
        }
        if let Some(max) = self.exclusive_maximum.filter(|m| n >= *m) {
            return Err(fail(format!("not less than {max}")));
        }
        Ok(())
    }

    /// The declared top-level properties with their policy type (`None` when a policy cannot see
    /// the argument's value: several types, combinators, free-form objects).
    pub(crate) fn properties(&self) -> impl Iterator<Item = (&str, Option<PolicyType>, bool)> {
        self.properties.iter().map(|(name, node)| {
            (
                name.as_str(),
                node.policy_type(),
                self.required.contains(name),
            )
        })
    }

    fn policy_type(&self) -> Option<PolicyType> {
        if !(self.any_of.is_empty() && self.one_of.is_empty() && self.all_of.is_empty()) {
            return None;
        }
        let single = match self.types.as_deref() {
            Some([t]) => *t,
            None if self
                .enum_values
                .as_ref()
                .is_some_and(|v| v.iter().all(Value::is_string)) =>
            {
                JsonType::String
            }
            _ => return None,
        };
        Some(match single {
            JsonType::String => PolicyType::String,
            JsonType::Integer => PolicyType::Long,
            JsonType::Number => PolicyType::Decimal,
            JsonType::Boolean => PolicyType::Bool,
            JsonType::Array => PolicyType::Set(Box::new(self.items.as_ref()?.policy_type()?)),
            JsonType::Object if !self.properties.is_empty() => PolicyType::Record(
                self.properties()
                    .filter_map(|(n, t, req)| Some((n.to_owned(), t?, req)))
                    .collect(),
            ),
            JsonType::Object | JsonType::Null => return None,
        })
    }

    /// Whether the root accepts only objects.
    pub(crate) fn is_object(&self) -> bool {
        self.types.as_deref() == Some(&[JsonType::Object])
    }
}

/// JSON equality where `1` and `1.0` are the same number.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

fn type_names(types: &[JsonType]) -> String {
    let names: Vec<String> = types
        .iter()
        .map(|t| format!("{t:?}").to_lowercase())
        .collect();
    names.join(" or ")
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> SchemaNode {
        SchemaNode::compile(
            &json!({
                "type": "object",
                "properties": {
                    "exchange": {"type": "string", "enum": ["NYSE", "LSE"]},
                    "symbol": {"type": "string", "pattern": "^[A-Z]{1,5}$", "maxLength": 5},
                    "days": {"type": "integer", "minimum": 1, "maximum": 365},
                    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "opts": {"type": "object", "properties": {"x": {"type": "boolean"}}}
                },
                "required": ["symbol"],
                "additionalProperties": true
            }),
            "",
        )
        .unwrap()
    }

    #[test]
    fn accepts_a_valid_call() {
        let v = json!({"exchange": "NYSE", "symbol": "ACME", "days": 30, "tags": ["a"],
                       "env": {"K": "v"}, "opts": {"x": true}});
        schema().check(&v, "").unwrap();
    }

    #[test]
    fn rejects_each_violation() {
        let s = schema();
        for bad in [
            json!({"symbol": "ACME", "extra": 1}),
            json!({"symbol": "acme"}),
            json!({"symbol": "ACMEXY"}),
            json!({"exchange": "NYSE"}),
            json!({"symbol": "A", "exchange": "TSX"}),
            json!({"symbol": "A", "days": 0}),
            json!({"symbol": "A", "days": 366}),
            json!({"symbol": "A", "days": 1.5}),
            json!({"symbol": "A", "tags": ["a", "b", "c"]}),
            json!({"symbol": "A", "tags": [1]}),
            json!({"symbol": "A", "env": {"K": 1}}),
            json!({"symbol": "A", "opts": {"y": true}}),
            json!([]),
        ] {
            assert!(s.check(&bad, "").is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn refuses_unsupported_keywords() {
        let e =
            SchemaNode::compile(&json!({"properties": {"a": {"$ref": "#/x"}}}), "").unwrap_err();
        assert!(e.to_string().contains("$ref"), "{e}");
        // Only the `x-` prefix marks an extension; look-alikes stay refused.
        for keyword in ["xmcp-header", "X-mcp-header", "mcp-header", "x_mcp"] {
            let e = SchemaNode::compile(&json!({"type": "string", keyword: "v"}), "").unwrap_err();
            assert!(e.to_string().contains(keyword), "{e}");
        }
    }

    /// `x-` keywords (MCP 2026-07-28's `x-mcp-header`) are annotations: accepted, and they
    /// change nothing in what a call may carry.
    #[test]
    fn ignores_extension_keywords() {
        let s = SchemaNode::compile(
            &json!({"type": "object", "x-mcp-header": "X-Region", "required": ["region"],
                    "properties": {"region": {"type": "string", "x-mcp-header": "X-Region",
                                              "x-anything": {"$ref": "#/not-followed"}, "maxLength": 4}}}),
            "",
        )
        .unwrap();
        assert!(s.check(&json!({"region": "eu"}), "").is_ok());
        assert!(s.check(&json!({"region": "europe"}), "").is_err());
        assert!(
            s.check(&json!({"region": "eu", "x-mcp-header": "v"}), "")
                .is_err()
        );
        assert!(s.check(&json!({}), "").is_err());
    }

    #[test]
    fn policy_types() {
        let s = schema();
        let types: BTreeMap<_, _> = s.properties().map(|(n, t, _)| (n.to_owned(), t)).collect();
        assert_eq!(types["exchange"], Some(PolicyType::String));
        assert_eq!(types["days"], Some(PolicyType::Long));
        assert_eq!(
            types["tags"],
            Some(PolicyType::Set(Box::new(PolicyType::String)))
        );
        assert_eq!(types["env"], None);
    }
}
