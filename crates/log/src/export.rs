//! Export of decision records to SIEMs: OCSF API Activity (class 6003) JSON lines, and CEF.
//!
//! The log stores opaque bytes; this module reads the decision record's field names (`docs/records.md`)
//! from a `serde_json::Value`, so it does not depend on the kernel crate. Fields that are
//! missing are left out; a record that is not a JSON object is refused.

use serde_json::{Map, Value, json};

use crate::LogError;

/// A SIEM export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// OCSF 1.5 API Activity (class 6003) events, one JSON object per line.
    Ocsf,
    /// ArcSight Common Event Format, one line per record.
    Cef,
}

fn parse(record: &[u8]) -> Result<Map<String, Value>, LogError> {
    match serde_json::from_slice::<Value>(record) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(LogError::Malformed("record is not a JSON object".into())),
    }
}

fn text<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

fn strings(m: &Map<String, Value>, key: &str) -> Vec<String> {
    m.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
pub(crate) fn epoch_millis(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !matches!(b.get(10), Some(b'T' | b't'))
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = t.get(19..)?;
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            let f = r.get(..digits)?;
            let ms = format!("{f:0<3}");
            (ms.get(..3)?.parse::<i64>().ok()?, r.get(digits..)?)
        }
        None => (0, rest),
    };
    if !matches!(zone, "Z" | "z")
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || s > 60
    {
        return None;
    }
    // Days from civil (proleptic Gregorian), after H. Hinnant's public-domain algorithm.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + frac)
}

/// One OCSF JSON line or CEF line for record `index`.
pub fn export_line(format: ExportFormat, index: u64, record: &[u8]) -> Result<String, LogError> {
    let m = parse(record)?;
    Ok(match format {
        ExportFormat::Ocsf => ocsf(index, &m).to_string(),
        ExportFormat::Cef => cef(index, &m),
    })
}

/// A one-line human summary of record `index` for `warden log show`.
pub fn summary_line(index: u64, record: &[u8]) -> String {
    let Ok(m) = parse(record) else {
        return format!("#{index} <{} bytes, not a JSON object>", record.len());
    };
    let rules = strings(&m, "rules").join(",");
    let mut s = format!(
        "#{index} {} {} {} {} agent={} tool={}",
        text(&m, "time").unwrap_or("-"),
        text(&m, "type").unwrap_or("-"),
        text(&m, "decision").unwrap_or("-"),
        text(&m, "id").unwrap_or("-"),
        text(&m, "agent").unwrap_or("-"),
        text(&m, "tool").unwrap_or("-"),
    );
    if !rules.is_empty() {
        s.push_str(&format!(" rules={rules}"));
    }
    if let Some(r) = text(&m, "reason") {
        s.push_str(&format!(" reason={r:?}"));
    }
    s
}

fn ocsf(index: u64, m: &Map<String, Value>) -> Value {
    let decision = text(m, "decision").unwrap_or("unknown");
    let (action_id, action, disposition_id, disposition, severity_id, severity) = match decision {
        "allow" => (1, "Allowed", 1, "Allowed", 1, "Informational"),
        "deny" => (2, "Denied", 2, "Blocked", 3, "Medium"),
        "needs_approval" => (2, "Denied", 99, "Needs Approval", 2, "Low"),
        _ => (0, "Unknown", 0, "Unknown", 0, "Unknown"),
    };
    let tool = text(m, "tool").unwrap_or("");
    let (server, operation) = tool.split_once('/').unwrap_or(("", tool));
    let rules = strings(m, "rules");
    let agent = text(m, "agent");
    let mut ev = json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": 99,
        "activity_name": "Tool Call",
        "type_uid": 600_399,
        "type_name": "API Activity: Tool Call",
        "severity_id": severity_id,
        "severity": severity,
        "action_id": action_id,
        "action": action,
        "disposition_id": disposition_id,
        "disposition": disposition,
        "is_alert": decision != "allow",
        "metadata": {
            "version": "1.5.0",
            "profiles": ["security_control"],
            "product": {"name": "Warden", "vendor_name": "Warden"},
            "log_name": "warden transparency log",
            "sequence": index,
        },
        "actor": {},
        "api": {
            "operation": operation,
            "service": {"name": server},
        },
        "src_endpoint": {},
        "unmapped": {},
    });
    let set = |ev: &mut Value, path: &[&str], v: Value| {
        let mut cur = ev;
        for (i, k) in path.iter().enumerate() {
            if i + 1 == path.len() {
                if let Some(o) = cur.as_object_mut() {
                    o.insert((*k).to_owned(), v);
                }
                return;
            }
            let Some(o) = cur.as_object_mut() else { return };
            cur = o.entry((*k).to_owned()).or_insert_with(|| json!({}));
        }
    };
    if let Some(t) = text(m, "time") {
        if let Some(ms) = epoch_millis(t) {
            set(&mut ev, &["time"], json!(ms));
        }
        set(&mut ev, &["metadata", "original_time"], json!(t));
    }
    if let Some(id) = text(m, "id") {
        set(&mut ev, &["metadata", "uid"], json!(id));
        set(&mut ev, &["api", "request", "uid"], json!(id));
    }
    if let Some(t) = text(m, "type") {
        set(&mut ev, &["metadata", "event_code"], json!(t));
    }
    if let Some(a) = agent {
        set(&mut ev, &["actor", "user", "uid"], json!(a));
        set(&mut ev, &["actor", "user", "name"], json!(a));
        set(&mut ev, &["src_endpoint", "name"], json!(a));
    }
    if let Some(s) = text(m, "session") {
        set(&mut ev, &["actor", "session", "uid"], json!(s));
    }
    if !rules.is_empty() {
        set(&mut ev, &["policy", "uid"], json!(rules.first()));
        set(&mut ev, &["policy", "name"], json!(rules.join(",")));
    }
    if let Some(r) = text(m, "reason") {
        set(&mut ev, &["policy", "desc"], json!(r));
        set(&mut ev, &["message"], json!(r));
    }
    for key in [
        "args_hash",
        "labels",
        "taint",
        "delegation",
        "risk",
        "rules",
        "v",
    ] {
        if let Some(v) = m.get(key).filter(|v| !v.is_null()) {
            set(&mut ev, &["unmapped", key], v.clone());
        }
    }
    ev
}

/// Escapes a CEF header field: backslash and pipe; line breaks become spaces.
pub(crate) fn cef_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a CEF extension value: backslash, equals sign and line breaks.
pub(crate) fn cef_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

const CS_LABELS: [&str; 7] = [
    "", "cs1Label", "cs2Label", "cs3Label", "cs4Label", "cs5Label", "cs6Label",
];
const CS_KEYS: [&str; 7] = ["", "cs1", "cs2", "cs3", "cs4", "cs5", "cs6"];

fn cef(index: u64, m: &Map<String, Value>) -> String {
    let decision = text(m, "decision").unwrap_or("unknown");
    let severity = match decision {
        "allow" => 3,
        "needs_approval" => 5,
        "deny" => 7,
        _ => 0,
    };
    let kind = text(m, "type").unwrap_or("warden.record");
    let tool = text(m, "tool").unwrap_or("");
    let mut ext: Vec<(&str, String)> = Vec::new();
    if let Some(ms) = text(m, "time").and_then(epoch_millis) {
        ext.push(("rt", ms.to_string()));
    }
    ext.push(("act", decision.to_owned()));
    if let Some(a) = text(m, "agent") {
        ext.push(("suser", a.to_owned()));
    }
    if let Some(id) = text(m, "id") {
        ext.push(("externalId", id.to_owned()));
    }
    ext.push(("cn1Label", "logIndex".into()));
    ext.push(("cn1", index.to_string()));
    let mut custom = |n: usize, label: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            ext.push((CS_LABELS.get(n).copied().unwrap_or("cs"), label.into()));
            ext.push((CS_KEYS.get(n).copied().unwrap_or("cs"), v));
        }
    };
    custom(1, "tool", Some(tool.to_owned()));
    custom(2, "rules", Some(strings(m, "rules").join(",")));
    custom(3, "argsHash", text(m, "args_hash").map(str::to_owned));
    custom(4, "session", text(m, "session").map(str::to_owned));
    custom(5, "taint", text(m, "taint").map(str::to_owned));
    custom(6, "delegation", Some(strings(m, "delegation").join(" > ")));
    if let Some(r) = text(m, "reason") {
        ext.push(("reason", r.to_owned()));
    }
    let ext: Vec<String> = ext
        .into_iter()
        .map(|(k, v)| format!("{k}={}", cef_value(&v)))
        .collect();
    format!(
        "CEF:0|Warden|Warden|{}|{}|{}|{}|{}",
        cef_header(env!("CARGO_PKG_VERSION")),
        cef_header(&format!("{kind}:{decision}")),
        cef_header(&format!("{decision} {tool}")),
        severity,
        ext.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_millis_known_answers() {
        assert_eq!(epoch_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            epoch_millis("2000-03-01T00:00:00.5Z"),
            Some(951_868_800_500)
        );
        assert_eq!(
            epoch_millis("2026-11-23T20:05:25.123Z"),
            Some(1_795_464_325_123)
        );
        assert_eq!(epoch_millis("2026-11-23 20:05:25Z"), None);
        assert_eq!(epoch_millis("2026-11-23T20:05:25+01:00"), None);
    }

    #[test]
    fn cef_escapes_header_and_extension() {
        assert_eq!(cef_header(r"a|b\c"), r"a\|b\\c");
        assert_eq!(cef_value("a=b\\c\nd\re|f"), "a\\=b\\\\c\\nd\\re|f");
    }
}
