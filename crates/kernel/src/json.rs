//! Strict I-JSON (RFC 7493) parsing and RFC 8785 (JCS) canonicalization.
//!
//! `serde_json` accepts duplicate keys (keeping the last one), integers it cannot represent exactly
//! and escaped lone surrogates. Two readers of the same bytes can then disagree about what a call
//! means, so arguments and certificates go through this parser, which refuses all of them.

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::Error;

/// The largest integer magnitude I-JSON allows: 2^53 − 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// Nesting deeper than this is refused, so that parsing never exhausts the stack.
pub const MAX_DEPTH: usize = 64;
/// Documents larger than this are refused.
pub const MAX_BYTES: usize = 1 << 20;

/// Parses `bytes` as one I-JSON value.
///
/// Refused: invalid UTF-8, a byte-order mark, duplicate object keys, integers beyond ±(2^53−1)
/// (also when written with an exponent), numbers that overflow a double, lone surrogates (raw or
/// escaped), noncharacters, nesting deeper than [`MAX_DEPTH`], documents over [`MAX_BYTES`] and
/// trailing data.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, Error> {
    if bytes.len() > MAX_BYTES {
        return Err(json_err(0, format!("document exceeds {MAX_BYTES} bytes")));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| json_err(e.valid_up_to(), "invalid utf-8".to_owned()))?;
    if text.starts_with('\u{feff}') {
        return Err(json_err(0, "byte-order mark is not allowed".to_owned()));
    }
    let mut parser = Parser { text, pos: 0 };
    parser.skip_ws();
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos != text.len() {
        return Err(json_err(
            parser.pos,
            "trailing data after the value".to_owned(),
        ));
    }
    Ok(value)
}

/// The RFC 8785 canonical bytes of `value`.
pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if write_jcs_value(&mut out, value) {
        return out;
    }
    generic_canonical_bytes(value)
}

/// [`canonical_bytes`] by the general canonicalizer (which also formats non-integer numbers the
/// ECMAScript way).
fn generic_canonical_bytes(value: &Value) -> Vec<u8> {
    // INVARIANT: a `serde_json::Value` always serializes (its map keys are strings).
    serde_json_canonicalizer::to_vec(value).unwrap_or_default()
}

/// Appends the RFC 8785 form of `value` when every number in it is an integer of magnitude at
/// most 2^53 − 1 (written as plain decimal digits, as ECMAScript prints them); returns `false`,
/// leaving `out` partly written, when it meets another number.
fn write_jcs_value(out: &mut Vec<u8>, value: &Value) -> bool {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i.unsigned_abs() <= MAX_SAFE_INTEGER => {
                out.extend_from_slice(i.to_string().as_bytes());
            }
            _ => return false,
        },
        Value::String(s) => write_jcs_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !write_jcs_value(out, item) {
                    return false;
                }
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| jcs_key_order(a.0, b.0));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                write_jcs_key(out, i == 0, key);
                if !write_jcs_value(out, item) {
                    return false;
                }
            }
            out.push(b'}');
        }
    }
    true
}

/// Appends `text` as an RFC 8785 string: `"` and `\\` escaped, `\b \f \n \r \t` short-form,
/// other control characters as `\u00xx`, everything else as its UTF-8 bytes.
pub(crate) fn write_jcs_str(out: &mut Vec<u8>, text: &str) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    // Most strings (ids, hashes, times) need no escape: one scan without early exit (it
    // vectorizes), then one copy.
    let plain = !bytes.iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x00..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        start = i + 1;
        if short == 0 {
            out.extend_from_slice(b"\\u00");
            for nibble in [b >> 4, b & 0x0f] {
                // INVARIANT: a nibble is below 16.
                out.push(DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'));
            }
        } else {
            out.push(b'\\');
            out.push(short);
        }
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

/// Appends the RFC 8785 form of a list of strings.
pub(crate) fn write_jcs_strs<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a String>) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_jcs_str(out, item);
    }
    out.push(b']');
}

/// Appends `key` (already in RFC 8785 order among its siblings) and a `:`, after a `,` unless
/// it is the first member.
pub(crate) fn write_jcs_key(out: &mut Vec<u8>, first: bool, key: &str) {
    if !first {
        out.push(b',');
    }
    write_jcs_str(out, key);
    out.push(b':');
}

/// Sorts object keys the RFC 8785 way: by their UTF-16 code units.
pub(crate) fn jcs_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// `"sha256:<hex>"` of `bytes`.
pub fn sha256_tag(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            // INVARIANT: a nibble is below 16, so `get` always finds a digit.
            if let Some(d) = DIGITS.get(usize::from(nibble)) {
                out.push(char::from(*d));
            }
        }
    }
    out
}

/// Decodes lowercase or uppercase hexadecimal.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

fn json_err(offset: usize, reason: String) -> Error {
    Error::Json { offset, reason }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        json_err(self.pos, reason.into())
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, literal: &str) -> Result<(), Error> {
        if self
            .text
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(literal))
        {
            self.pos += literal.len();
            Ok(())
        } else {
            Err(self.err(format!("expected `{literal}`")))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH}")));
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.expect("true").map(|()| Value::Bool(true)),
            Some(b'f') => self.expect("false").map(|()| Value::Bool(false)),
            Some(b'n') => self.expect("null").map(|()| Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
            None => Err(self.err("unexpected end of input")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        self.pos += 1;
        let mut map = Map::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key_pos = self.pos;
            let key = self.string()?;
            self.skip_ws();
            self.expect(":")?;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            if map.contains_key(&key) {
                return Err(json_err(key_pos, format!("duplicate key `{key}`")));
            }
            map.insert(key, value);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expected `,` or `]`")),
            }
        }
    }

    fn string(&mut self) -> Result<String, Error> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let rest = self.text.get(self.pos..).unwrap_or_default();
            let mut chars = rest.chars();
            let Some(c) = chars.next() else {
                return Err(self.err("unterminated string"));
            };
            match c {
                '"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                '\\' => {
                    self.pos += 1;
                    let c = self.escape()?;
                    check_char(c).map_err(|r| self.err(r))?;
                    out.push(c);
                }
                c if u32::from(c) < 0x20 => return Err(self.err("control character in string")),
                c => {
                    check_char(c).map_err(|r| self.err(r))?;
                    self.pos += c.len_utf8();
                    out.push(c);
                }
            }
        }
    }

    fn escape(&mut self) -> Result<char, Error> {
        let c = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
        self.pos += 1;
        Ok(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                if (0xDC00..0xE000).contains(&hi) {
                    return Err(self.err("lone low surrogate"));
                }
                if (0xD800..0xDC00).contains(&hi) {
                    if self
                        .text
                        .get(self.pos..)
                        .is_some_and(|r| r.starts_with("\\u"))
                    {
                        self.pos += 2;
                        let lo = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&lo) {
                            return Err(self.err("lone high surrogate"));
                        }
                        let code = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        char::from_u32(code).ok_or_else(|| self.err("invalid surrogate pair"))?
                    } else {
                        return Err(self.err("lone high surrogate"));
                    }
                } else {
                    char::from_u32(hi).ok_or_else(|| self.err("invalid escape"))?
                }
            }
            _ => return Err(self.err("invalid escape")),
        })
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("truncated unicode escape"))?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err("invalid unicode escape"));
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).map_err(|_| self.err("invalid unicode escape"))
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        let digits = |pos: &mut usize| {
            let from = *pos;
            while bytes.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos - from
        };
        let mut pos = self.pos;
        if bytes.get(pos) == Some(&b'-') {
            pos += 1;
        }
        let int_start = pos;
        let int_len = digits(&mut pos);
        if int_len == 0 {
            return Err(json_err(pos, "expected a digit".to_owned()));
        }
        if int_len > 1 && bytes.get(int_start) == Some(&b'0') {
            return Err(json_err(int_start, "leading zero in number".to_owned()));
        }
        let mut integral = true;
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            integral = false;
            if digits(&mut pos) == 0 {
                return Err(json_err(pos, "expected a digit after `.`".to_owned()));
            }
        }
        if matches!(bytes.get(pos), Some(b'e' | b'E')) {
            pos += 1;
            integral = false;
            if matches!(bytes.get(pos), Some(b'+' | b'-')) {
                pos += 1;
            }
            if digits(&mut pos) == 0 {
                return Err(json_err(pos, "expected a digit in the exponent".to_owned()));
            }
        }
        self.pos = pos;
        let literal = self.text.get(start..pos).unwrap_or_default();
        let out_of_range = || json_err(start, format!("number `{literal}` is outside ±(2^53−1)"));
        if integral {
            let value: i64 = literal.parse().map_err(|_| out_of_range())?;
            if value.unsigned_abs() > MAX_SAFE_INTEGER {
                return Err(out_of_range());
            }
            return Ok(Value::Number(Number::from(value)));
        }
        let value: f64 = literal
            .parse()
            .map_err(|_| json_err(start, format!("invalid number `{literal}`")))?;
        if !value.is_finite() {
            return Err(json_err(
                start,
                format!("number `{literal}` overflows a double"),
            ));
        }
        // An integer written with a fraction or an exponent is still an integer.
        if value.fract() == 0.0 && value.abs() > MAX_SAFE_INTEGER as f64 {
            return Err(out_of_range());
        }
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| json_err(start, format!("invalid number `{literal}`")))
    }
}

fn check_char(c: char) -> Result<(), &'static str> {
    let code = u32::from(c);
    let nonchar = (0xFDD0..=0xFDEF).contains(&code) || (code & 0xFFFE) == 0xFFFE;
    if nonchar {
        Err("noncharacter in string")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects(text: &str) {
        assert!(parse_strict(text.as_bytes()).is_err(), "accepted {text:?}");
    }

    #[test]
    fn accepts_plain_json() {
        let v =
            parse_strict(br#" {"a": [1, -2, 3.5, true, null, "x\u00e9\ud83d\ude00"]} "#).unwrap();
        assert_eq!(v["a"][5], "xé😀");
        assert_eq!(v["a"][1], -2);
    }

    #[test]
    fn rejects_what_ijson_forbids() {
        rejects(r#"{"a":1,"a":2}"#);
        rejects(r#"{"a":{"b":1,"b":1}}"#);
        rejects("9007199254740992");
        rejects("-9007199254740992");
        rejects("1e300");
        rejects("9007199254740992.0");
        rejects("1e400");
        rejects(r#""\ud800""#);
        rejects(r#""\udc00""#);
        rejects(r#""\ud800\u0041""#);
        rejects("\"\u{fdd0}\"");
        rejects("\u{feff}{}");
        rejects("{} {}");
        rejects("01");
        rejects("[1,]");
        rejects("\"a\nb\"");
        rejects(&"[".repeat(MAX_DEPTH + 2));
        assert!(parse_strict(&[b'"', 0xff, b'"']).is_err());
    }

    #[test]
    fn accepts_the_edges() {
        assert_eq!(
            parse_strict(b"9007199254740991").unwrap(),
            9_007_199_254_740_991_i64
        );
        assert_eq!(
            parse_strict(b"-9007199254740991").unwrap(),
            -9_007_199_254_740_991_i64
        );
        assert!(parse_strict(b"1.5e10").is_ok());
    }

    #[test]
    fn canonical_form_sorts_keys_and_normalizes_numbers() {
        let v = parse_strict(br#"{"b": 1.0, "a": "\u00e9", "c": [1e2, 0.1]}"#).unwrap();
        let bytes = canonical_bytes(&v);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":"é","b":1,"c":[100,0.1]}"#
        );
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(MAX_SAFE_INTEGER as i64)..=MAX_SAFE_INTEGER as i64).prop_map(Value::from),
            (-1e15f64..1e15).prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn accepts_what_serde_writes_and_canonicalizes_stably(v in arb_json()) {
            let text = serde_json::to_vec(&v).unwrap();
            // Noncharacters are legal JSON but not I-JSON; skip values holding them.
            let has_nonchar = String::from_utf8_lossy(&text).chars().any(|c| check_char(c).is_err());
            proptest::prop_assume!(!has_nonchar);
            let parsed = parse_strict(&text).unwrap();
            let canonical = canonical_bytes(&parsed);
            proptest::prop_assert_eq!(canonical_bytes(&parse_strict(&canonical).unwrap()), canonical);
        }
    }

    proptest::proptest! {
        #[test]
        fn jcs_strings_match_the_canonicalizer(text in proptest::prelude::any::<String>()) {
            let mut out = Vec::new();
            write_jcs_str(&mut out, &text);
            proptest::prop_assert_eq!(out, canonical_bytes(&Value::String(text)));
        }

        #[test]
        fn jcs_key_order_matches_the_canonicalizer(
            keys in proptest::collection::btree_set(proptest::prelude::any::<String>(), 0..8)
        ) {
            let mut sorted: Vec<&String> = keys.iter().collect();
            sorted.sort_by(|a, b| jcs_key_order(a, b));
            let mut out = vec![b'{'];
            for (i, k) in sorted.iter().enumerate() {
                write_jcs_key(&mut out, i == 0, k);
                out.push(b'0');
            }
            out.push(b'}');
            let object: Map<String, Value> = keys.iter().map(|k| (k.clone(), Value::from(0))).collect();
            proptest::prop_assert_eq!(out, canonical_bytes(&Value::Object(object)));
        }
    }

    proptest::proptest! {
        /// The direct writer (integers only) and the general canonicalizer agree.
        #[test]
        fn direct_canonical_form_matches_the_canonicalizer(v in arb_json()) {
            proptest::prop_assert_eq!(canonical_bytes(&v), generic_canonical_bytes(&v));
        }
    }

    #[test]
    fn direct_canonical_form_edges() {
        for text in [
            "9007199254740991",
            "-9007199254740991",
            "0",
            "-0",
            "1.0",
            "1e2",
            r#"{"b":[1,2.5],"a":{"\u00e9":1,"z":null,"\ud83d\ude00":true,"\uffff":false}}"#,
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(canonical_bytes(&v), generic_canonical_bytes(&v), "{text}");
        }
        let big = Value::from(9_007_199_254_740_993_i64);
        assert_eq!(canonical_bytes(&big), generic_canonical_bytes(&big));
    }

    #[test]
    fn jcs_strings_escape_controls() {
        let mut out = Vec::new();
        write_jcs_str(&mut out, "a\"\\\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}é\u{2028}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}é\u{2028}\""
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
