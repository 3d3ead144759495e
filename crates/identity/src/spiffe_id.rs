//! SPIFFE IDs and trust domains, parsed strictly per the SPIFFE ID specification.

use std::fmt;
use std::str::FromStr;

use crate::Error;

const SCHEME: &str = "spiffe://";
/// The specification's upper bound on a SPIFFE ID, in bytes.
const MAX_ID_LEN: usize = 2048;
/// The specification's upper bound on a trust domain name, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A trust domain name: lowercase letters, digits, `.`, `-` and `_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`, not `spiffe://example.org`).
    pub fn new(name: &str) -> Result<Self, Error> {
        if name.is_empty() {
            return Err(invalid(name, "trust domain is empty"));
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(invalid(name, "trust domain is longer than 255 bytes"));
        }
        if !name.bytes().all(is_trust_domain_byte) {
            return Err(invalid(
                name,
                "trust domain may hold only lowercase letters, digits, `.`, `-` and `_`",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`, which keys bundles on the wire.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

/// A SPIFFE ID: `spiffe://<trust domain><path>`, the path empty or `/`-separated non-empty
/// segments of letters, digits, `.`, `-` and `_`, none of them `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or starting with `/`.
    path: String,
}

impl SpiffeId {
    /// Parses a SPIFFE ID. Rejects everything the specification forbids: other schemes (or a
    /// scheme not in lowercase), user info, ports, queries, fragments, percent-encoding, empty,
    /// `.` or `..` segments, a trailing `/`, and IDs longer than 2048 bytes.
    pub fn new(id: &str) -> Result<Self, Error> {
        if id.len() > MAX_ID_LEN {
            return Err(invalid(id, "SPIFFE ID is longer than 2048 bytes"));
        }
        let Some(rest) = id.strip_prefix(SCHEME) else {
            return Err(invalid(id, "SPIFFE ID must start with `spiffe://`"));
        };
        let (td, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let trust_domain = TrustDomain::new(td)?;
        validate_path(id, path)?;
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// Builds `spiffe://<trust domain><path>`; `path` is empty or starts with `/`.
    pub fn from_parts(trust_domain: &TrustDomain, path: &str) -> Result<Self, Error> {
        let id = format!("{SCHEME}{}{path}", trust_domain.name());
        validate_path(&id, path)?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            path: path.to_owned(),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path: empty, or `/`-prefixed.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True when `self` equals `prefix` or lies under it segment-wise (`/a/b` is under `/a`,
    /// `/ab` is not), in the same trust domain.
    pub fn is_under(&self, prefix: &SpiffeId) -> bool {
        if self.trust_domain != prefix.trust_domain {
            return false;
        }
        if prefix.path.is_empty() || self.path == prefix.path {
            return true;
        }
        self.path
            .strip_prefix(prefix.path.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain.0, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

fn validate_path(id: &str, path: &str) -> Result<(), Error> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(segments) = path.strip_prefix('/') else {
        return Err(invalid(id, "path must start with `/`"));
    };
    for segment in segments.split('/') {
        if segment.is_empty() {
            return Err(invalid(id, "path has an empty segment or a trailing `/`"));
        }
        if segment == "." || segment == ".." {
            return Err(invalid(id, "path has a `.` or `..` segment"));
        }
        if !segment.bytes().all(is_path_byte) {
            return Err(invalid(
                id,
                "path may hold only letters, digits, `.`, `-` and `_`",
            ));
        }
    }
    Ok(())
}

fn is_trust_domain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn invalid(input: &str, reason: &'static str) -> Error {
    // Cap what is echoed back: the input may be hostile and huge.
    let shown: String = input.chars().take(128).collect();
    Error::InvalidSpiffeId {
        input: shown,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in [
            "spiffe://example.org",
            "spiffe://example.org/agent/a",
            "spiffe://a-b_c.d9/Path.With-All_9/x",
            "spiffe://td/...x/a..b",
        ] {
            let id = SpiffeId::new(ok).unwrap();
            assert_eq!(id.to_string(), ok);
        }
        let id = SpiffeId::new("spiffe://example.org/a/b").unwrap();
        assert_eq!(id.trust_domain().name(), "example.org");
        assert_eq!(id.path(), "/a/b");
    }

    #[test]
    fn rejects_invalid_ids() {
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        let long_td = format!("spiffe://{}", "a".repeat(256));
        for bad in [
            "",
            "spiffe://",
            "spiffe:///path",
            "SPIFFE://example.org",
            "spiffe:/example.org",
            "https://example.org/a",
            "spiffe://Example.org",
            "spiffe://user@example.org",
            "spiffe://example.org:8080",
            "spiffe://example.org/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/",
            "spiffe://example.org/./a",
            "spiffe://example.org/a/..",
            "spiffe://example.org/a?b=c",
            "spiffe://example.org/a#f",
            "spiffe://example.org/a%20b",
            "spiffe://example.org/a b",
            "spiffe://example.org/é",
            long.as_str(),
            long_td.as_str(),
        ] {
            assert!(SpiffeId::new(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn is_under_is_segment_wise() {
        let prefix = SpiffeId::new("spiffe://td/agents").unwrap();
        assert!(
            SpiffeId::new("spiffe://td/agents")
                .unwrap()
                .is_under(&prefix)
        );
        assert!(
            SpiffeId::new("spiffe://td/agents/a")
                .unwrap()
                .is_under(&prefix)
        );
        assert!(
            !SpiffeId::new("spiffe://td/agentsx")
                .unwrap()
                .is_under(&prefix)
        );
        assert!(
            !SpiffeId::new("spiffe://other/agents/a")
                .unwrap()
                .is_under(&prefix)
        );
        let root = SpiffeId::new("spiffe://td").unwrap();
        assert!(SpiffeId::new("spiffe://td/x").unwrap().is_under(&root));
    }
}
