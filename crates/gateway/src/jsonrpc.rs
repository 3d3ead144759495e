//! JSON-RPC 2.0 frames as raw `serde_json::Value`s, so unknown fields and `_meta` pass untouched.
//!
//! Frames from agents are parsed strictly: a duplicate object key anywhere in a frame rejects the
//! whole frame (serde_json would silently keep the last one, and the value the kernel judged could
//! then differ from what a lenient upstream reads).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

/// Largest frame accepted from an agent or an upstream (16 MiB).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The most a line-delimited reader takes for one line: a frame of [`MAX_FRAME`] bytes and its
/// newline. Read with `take(MAX_LINE)`, a line that never ends costs this, not all memory.
pub(crate) const MAX_LINE: u64 = MAX_FRAME as u64 + 1;

/// Whether `line`, read with `take(MAX_LINE)`, hit the limit before its newline (so the rest of
/// it is still unread).
pub(crate) fn over_limit(line: &[u8]) -> bool {
    line.len() as u64 >= MAX_LINE && line.last() != Some(&b'\n')
}

/// `frame.params[key]`: what `Value::pointer("/params/key")` finds, without its allocations (it
/// unescapes every token into a new string; this is on every call's path).
pub fn param<'a>(frame: &'a Value, key: &str) -> Option<&'a Value> {
    frame.get("params")?.get(key)
}

/// [`param`], mutable.
pub fn param_mut<'a>(frame: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    frame.get_mut("params")?.get_mut(key)
}

/// `frame.params._meta[key]`.
pub fn meta<'a>(frame: &'a Value, key: &str) -> Option<&'a Value> {
    param(frame, "_meta")?.get(key)
}

/// JSON-RPC: the frame is not valid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: the frame is not a valid request.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: the method is unknown.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC: the parameters are invalid.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC: internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP 2026-07-28: the request's protocol version is not supported.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
/// MCP 2026-07-28: an HTTP header disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// Warden: the kernel denied the call (data: `rules`, `reason`, `record`).
pub const DENIED: i64 = -32010;
/// Warden: the tool's definition changed since it was pinned.
pub const TOOL_CHANGED: i64 = -32011;
/// Warden: the decision could not be made durable; the call was refused.
pub const AUDIT_UNAVAILABLE: i64 = -32012;
/// Warden: the upstream server failed or is unreachable.
pub const UPSTREAM_ERROR: i64 = -32013;
/// Warden: the call waited for approval and was denied or timed out.
pub const APPROVAL_DENIED: i64 = -32014;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result` or `error`, no `method`.
    Response,
    /// None of the above.
    Invalid,
}

/// Classifies a frame.
pub fn classify(frame: &Value) -> Kind {
    let Some(obj) = frame.as_object() else {
        return Kind::Invalid;
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Kind::Invalid;
    }
    let has_id = obj
        .get("id")
        .is_some_and(|id| id.is_string() || id.is_number());
    match (obj.get("method").and_then(Value::as_str), has_id) {
        (Some(_), true) => Kind::Request,
        (Some(_), false) if !obj.contains_key("id") => Kind::Notification,
        (None, true) if obj.contains_key("result") || obj.contains_key("error") => Kind::Response,
        _ => Kind::Invalid,
    }
}

/// The `method` of a request or notification.
pub fn method(frame: &Value) -> Option<&str> {
    frame.get("method").and_then(Value::as_str)
}

/// A JSON-RPC error response.
pub fn error(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut err = Map::new();
    err.insert("code".into(), json!(code));
    err.insert("message".into(), json!(message));
    if let Some(data) = data {
        err.insert("data".into(), data);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": Value::Object(err)})
}

/// A JSON-RPC result response.
pub fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Over [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not JSON, or a duplicate key.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Parses one frame, rejecting duplicate object keys at any depth.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, FrameError> {
    if bytes.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let StrictValue(value) = serde::Deserialize::deserialize(&mut de)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    de.end().map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(value)
}

/// The id to answer a frame that [`parse_strict`] refused with, so a client waiting on its request
/// id is not left hanging: the top-level `id` when the frame is otherwise well-formed JSON (for
/// example a duplicate key deeper in `params`) and holds exactly one `id`, a string or an integer;
/// `null` otherwise, as JSON-RPC asks when the id cannot be told.
pub fn recover_id(bytes: &[u8]) -> Value {
    if bytes.len() > MAX_FRAME {
        return Value::Null;
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match de.deserialize_map(IdVisitor) {
        Ok(Some(id)) if de.end().is_ok() => id,
        _ => Value::Null,
    }
}

/// Reads only the top-level `id` of a frame; `None` if it is absent, repeated or not a string or
/// an integer.
struct IdVisitor;

impl<'de> Visitor<'de> for IdVisitor {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC frame")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let mut id = None;
        let mut ids = 0u32;
        while let Some(key) = map.next_key::<String>()? {
            if key == "id" {
                ids = ids.saturating_add(1);
                let v: Value = map.next_value()?;
                id = match v {
                    Value::String(_) => Some(v),
                    Value::Number(ref n) if n.is_i64() || n.is_u64() => Some(v),
                    _ => None,
                };
            } else {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        Ok(if ids == 1 { id } else { None })
    }
}

/// A `Value` whose deserializer refuses duplicate keys.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // The map itself tells a repeated key: no second set of keys to hash and keep.
            match out.entry(key) {
                serde_json::map::Entry::Vacant(slot) => {
                    let StrictValue(v) = map.next_value()?;
                    slot.insert(v);
                }
                serde_json::map::Entry::Occupied(slot) => {
                    return Err(de::Error::custom(format_args!(
                        "duplicate key `{}`",
                        slot.key()
                    )));
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// The prefix of Warden's own `_meta` keys. What an agent puts there is for the gateway (declared
/// labels, intent, a delegation token) and never reaches an upstream; the only such key an
/// upstream sees is the certificate the gateway adds to a `tools/call`.
pub(crate) const WARDEN_META_PREFIX: &str = "dev.warden/";

fn is_warden_key(k: &str) -> bool {
    k.starts_with(WARDEN_META_PREFIX)
}

/// Whether `frame` carries a `dev.warden/*` key in `params._meta` or `result._meta`.
fn carries_warden_meta(frame: &Value) -> bool {
    ["params", "result"].iter().any(|at| {
        frame
            .get(at)
            .and_then(|v| v.get("_meta"))
            .and_then(Value::as_object)
            .is_some_and(|meta| meta.keys().any(|k| is_warden_key(k)))
    })
}

/// `frame` as the JSON bytes an upstream receives: without any `dev.warden/*` key in
/// `params._meta` or `result._meta`, and with `certificate` (JSON text already: the call
/// certificate, sent as the kernel made it, with no round trip through a `Value`) as
/// `params._meta["dev.warden/certificate"]` when given. An agent's own certificate is thus never
/// forwarded, and the bytes never hold the key twice (a reader keeping the first of duplicate keys
/// would otherwise see the agent's). `certificate` must be valid JSON; the caller vouches for it.
pub(crate) fn to_upstream_vec(
    frame: &Value,
    certificate: Option<&str>,
) -> serde_json::Result<Vec<u8>> {
    let obj = match frame.as_object() {
        Some(obj) if certificate.is_some() || carries_warden_meta(frame) => obj,
        _ => return serde_json::to_vec(frame),
    };
    let mut out = Vec::with_capacity(256 + certificate.map_or(0, str::len));
    let empty = Map::new();
    out.push(b'{');
    for (i, (k, v)) in obj.iter().enumerate() {
        member(&mut out, i == 0, k)?;
        match v {
            Value::Object(params) if k == "params" => write_body(&mut out, params, certificate)?,
            Value::Object(result) if k == "result" => write_body(&mut out, result, None)?,
            _ => serde_json::to_writer(&mut out, v)?,
        }
    }
    if certificate.is_some() && !obj.contains_key("params") {
        member(&mut out, obj.is_empty(), "params")?;
        write_body(&mut out, &empty, certificate)?;
    }
    out.push(b'}');
    Ok(out)
}

/// `,` unless first, then `"k":`.
fn member(out: &mut Vec<u8>, first: bool, k: &str) -> serde_json::Result<()> {
    if !first {
        out.push(b',');
    }
    serde_json::to_writer(&mut *out, k)?;
    out.push(b':');
    Ok(())
}

/// `params` or `result`, its `_meta` written by [`write_meta`].
fn write_body(
    out: &mut Vec<u8>,
    body: &Map<String, Value>,
    certificate: Option<&str>,
) -> serde_json::Result<()> {
    let empty = Map::new();
    out.push(b'{');
    for (i, (k, v)) in body.iter().enumerate() {
        member(out, i == 0, k)?;
        match v {
            Value::Object(meta) if k == "_meta" => write_meta(out, meta, certificate)?,
            // A `_meta` that is not an object cannot hold the certificate: replaced.
            _ if k == "_meta" && certificate.is_some() => write_meta(out, &empty, certificate)?,
            _ => serde_json::to_writer(&mut *out, v)?,
        }
    }
    if certificate.is_some() && !body.contains_key("_meta") {
        member(out, body.is_empty(), "_meta")?;
        write_meta(out, &empty, certificate)?;
    }
    out.push(b'}');
    Ok(())
}

/// `_meta` without Warden's keys, then the certificate if any.
fn write_meta(
    out: &mut Vec<u8>,
    meta: &Map<String, Value>,
    certificate: Option<&str>,
) -> serde_json::Result<()> {
    out.push(b'{');
    let mut first = true;
    for (k, v) in meta.iter().filter(|(k, _)| !is_warden_key(k)) {
        member(out, first, k)?;
        first = false;
        serde_json::to_writer(&mut *out, v)?;
    }
    if let Some(raw) = certificate {
        member(out, first, crate::META_CERTIFICATE)?;
        out.extend_from_slice(raw.as_bytes());
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_strict(br#"{"p":{"args":{"x":1,"x":"y"}}}"#).is_err());
        assert!(parse_strict(br#"{"a":[{"b":1},{"b":2}]}"#).is_ok());
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse_strict(br#"{"a":1} x"#).is_err());
        assert!(parse_strict(b"").is_err());
    }

    #[test]
    fn classify_frames() {
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":1,"method":"m"})),
            Kind::Request
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","method":"m"})),
            Kind::Notification
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":"a","result":{}})),
            Kind::Response
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"1.0","id":1,"method":"m"})),
            Kind::Invalid
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":null,"method":"m"})),
            Kind::Invalid
        );
        assert_eq!(classify(&json!([1])), Kind::Invalid);
    }

    #[test]
    fn a_refused_frame_is_answered_with_its_id_when_it_can_be_told() {
        let dup_in_params =
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"x":1,"x":2}}"#;
        assert!(parse_strict(dup_in_params).is_err());
        assert_eq!(recover_id(dup_in_params), json!(7));
        assert_eq!(
            recover_id(br#"{"id":"a-1","params":{"k":1,"k":1}}"#),
            json!("a-1")
        );
        // The id itself repeated, missing, of the wrong type, or the frame not JSON: null.
        assert_eq!(recover_id(br#"{"id":1,"id":2}"#), Value::Null);
        assert_eq!(recover_id(br#"{"method":"x","a":1,"a":1}"#), Value::Null);
        assert_eq!(recover_id(br#"{"id":{"x":1},"a":1,"a":1}"#), Value::Null);
        assert_eq!(recover_id(br#"{"id":1.5,"a":1,"a":1}"#), Value::Null);
        assert_eq!(recover_id(br#"{"id":3,"a":1,"a":1"#), Value::Null);
        assert_eq!(recover_id(br#"{"id":3} trailing"#), Value::Null);
        assert_eq!(recover_id(b"[1,2]"), Value::Null);
        assert_eq!(recover_id(b""), Value::Null);
    }

    fn with_cert(frame: Value) -> Value {
        let raw = r#"{"cert":{"v":1},"sig":"ab"}"#;
        let bytes = to_upstream_vec(&frame, Some(raw)).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        // Byte for byte, and once.
        assert_eq!(text.matches(raw).count(), 1, "{text}");
        assert_eq!(
            text.matches("\"dev.warden/certificate\"").count(),
            1,
            "{text}"
        );
        // Strict parsing: no duplicate key anywhere.
        parse_strict(&bytes).unwrap()
    }

    #[test]
    fn the_certificate_replaces_the_agents_and_keeps_the_rest() {
        let out = with_cert(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "t", "arguments": {"a": 1},
                       "_meta": {"dev.warden/certificate": {"forged": true}, "trace": "x",
                                 "dev.warden/delegation": "secret", "dev.warden/intent": "i"}}}));
        assert_eq!(
            out["params"]["_meta"].as_object().unwrap().len(),
            2,
            "{out}"
        );
        assert_eq!(
            out["params"]["_meta"]["dev.warden/certificate"],
            json!({"cert": {"v": 1}, "sig": "ab"})
        );
        assert_eq!(out["params"]["_meta"]["trace"], "x");
        assert_eq!(out["params"]["arguments"], json!({"a": 1}));
        assert_eq!(out["id"], 7);
        assert_eq!(out["method"], "tools/call");
    }

    #[test]
    fn the_certificate_goes_where_there_is_no_meta_or_no_params() {
        let cert = json!({"cert": {"v": 1}, "sig": "ab"});
        let out =
            with_cert(json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"name": "t"}}));
        assert_eq!(
            out["params"]["_meta"],
            json!({"dev.warden/certificate": cert})
        );
        assert_eq!(out["params"]["name"], "t");
        let out = with_cert(json!({"jsonrpc": "2.0", "id": 1, "method": "m"}));
        assert_eq!(
            out["params"],
            json!({"_meta": {"dev.warden/certificate": cert}})
        );
        // A `_meta` that is not an object cannot hold it: replaced.
        let out =
            with_cert(json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"_meta": 3}}));
        assert_eq!(
            out["params"]["_meta"],
            json!({"dev.warden/certificate": cert})
        );
    }

    #[test]
    fn no_warden_key_goes_upstream_outside_a_certified_call() {
        let meta = json!({"dev.warden/certificate": {"forged": true},
            "dev.warden/delegation": "secret-biscuit", "dev.warden/labels": {"uri": ["web:x"]},
            "progressToken": 3});
        for frame in [
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read",
                   "params": {"uri": "file:///x", "_meta": meta}}),
            json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed",
                   "params": {"_meta": meta}}),
            json!({"jsonrpc": "2.0", "id": 9, "result": {"roots": [], "_meta": meta}}),
        ] {
            let bytes = to_upstream_vec(&frame, None).unwrap();
            let text = String::from_utf8(bytes.clone()).unwrap();
            assert!(!text.contains("dev.warden/"), "{text}");
            let out = parse_strict(&bytes).unwrap();
            let body = out.get("params").or_else(|| out.get("result")).unwrap();
            assert_eq!(body["_meta"], json!({"progressToken": 3}), "{text}");
        }
        // Frames without Warden's keys go out as they are, a non-object `_meta` included.
        for frame in [
            json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"_meta": 3}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"x": [1, 2]}}),
            json!({"jsonrpc": "2.0", "method": "n"}),
        ] {
            assert_eq!(
                to_upstream_vec(&frame, None).unwrap(),
                serde_json::to_vec(&frame).unwrap()
            );
        }
    }
}
