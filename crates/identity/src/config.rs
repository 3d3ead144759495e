//! The `[identity]` table of `warden.toml`, registration entries and their selectors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::{CaPolicy, Error, SpiffeId, TrustDomain};

/// One of SPIRE's unix workload selectors.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// `unix:uid:N`: the caller's user id.
    Uid(u32),
    /// `unix:gid:N`: the caller's group id.
    Gid(u32),
    /// `unix:path:/abs`: the caller's executable.
    Path(String),
    /// `unix:sha256:HEX`: the SHA-256 of the caller's executable, lowercase hex.
    Sha256(String),
}

impl FromStr for Selector {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidSelector(s.chars().take(256).collect());
        let rest = s.strip_prefix("unix:").ok_or_else(bad)?;
        let (kind, value) = rest.split_once(':').ok_or_else(bad)?;
        let number = |v: &str| {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            v.parse::<u32>().map_err(|_| bad())
        };
        match kind {
            "uid" => Ok(Self::Uid(number(value)?)),
            "gid" => Ok(Self::Gid(number(value)?)),
            "path" if value.starts_with('/') && !value.contains('\0') => {
                Ok(Self::Path(value.to_owned()))
            }
            "sha256"
                if value.len() == 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Self::Sha256(value.to_owned()))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(u) => write!(f, "unix:uid:{u}"),
            Self::Gid(g) => write!(f, "unix:gid:{g}"),
            Self::Path(p) => write!(f, "unix:path:{p}"),
            Self::Sha256(h) => write!(f, "unix:sha256:{h}"),
        }
    }
}

/// Maps a set of selectors to a SPIFFE ID: a caller showing all of them gets the ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationEntry {
    spiffe_id: SpiffeId,
    selectors: Vec<Selector>,
    hint: String,
}

impl RegistrationEntry {
    /// An entry; `selectors` must not be empty (an entry matching everyone is refused).
    pub fn new(
        spiffe_id: SpiffeId,
        selectors: Vec<Selector>,
        hint: Option<String>,
    ) -> Result<Self, Error> {
        if selectors.is_empty() {
            return Err(Error::Config(format!(
                "entry for `{spiffe_id}` has no selectors"
            )));
        }
        if spiffe_id.path().is_empty() {
            return Err(Error::Config(format!(
                "entry `{spiffe_id}` names a trust domain, not a workload"
            )));
        }
        Ok(Self {
            spiffe_id,
            selectors,
            hint: hint.unwrap_or_default(),
        })
    }

    /// The SPIFFE ID granted.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The selectors required, all of them.
    pub fn selectors(&self) -> &[Selector] {
        &self.selectors
    }

    /// The hint sent with the SVID (empty when none).
    pub fn hint(&self) -> &str {
        &self.hint
    }

    /// True when the caller shows every selector of the entry.
    pub fn matches(&self, caller: &[Selector]) -> bool {
        self.selectors.iter().all(|s| caller.contains(s))
    }

    fn from_toml(value: &toml::Value) -> Result<Self, Error> {
        let table = value
            .as_table()
            .ok_or_else(|| Error::Config("an entry must be a table".into()))?;
        for key in table.keys() {
            if !matches!(key.as_str(), "spiffe_id" | "selectors" | "hint") {
                return Err(Error::Config(format!("unknown entry key `{key}`")));
            }
        }
        let id = table
            .get("spiffe_id")
            .and_then(toml::Value::as_str)
            .ok_or_else(|| Error::Config("entry needs a string `spiffe_id`".into()))?;
        let selectors = table
            .get("selectors")
            .and_then(toml::Value::as_array)
            .ok_or_else(|| Error::Config("entry needs an array `selectors`".into()))?
            .iter()
            .map(|s| {
                s.as_str()
                    .ok_or_else(|| Error::Config("selectors must be strings".into()))?
                    .parse()
            })
            .collect::<Result<Vec<Selector>, Error>>()?;
        let hint = match table.get("hint") {
            None => None,
            Some(h) => Some(
                h.as_str()
                    .ok_or_else(|| Error::Config("`hint` must be a string".into()))?
                    .to_owned(),
            ),
        };
        Self::new(SpiffeId::new(id)?, selectors, hint)
    }

    fn to_toml(&self) -> toml::Value {
        let mut t = toml::Table::new();
        t.insert("spiffe_id".into(), self.spiffe_id.to_string().into());
        t.insert(
            "selectors".into(),
            toml::Value::Array(
                self.selectors
                    .iter()
                    .map(|s| s.to_string().into())
                    .collect(),
            ),
        );
        if !self.hint.is_empty() {
            t.insert("hint".into(), self.hint.clone().into());
        }
        toml::Value::Table(t)
    }
}

/// The `[identity]` table of `warden.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityConfig {
    /// `trust_domain`, required.
    pub trust_domain: TrustDomain,
    /// `ca_file`: where the CA's keys live (relative paths are the caller's to resolve).
    pub ca_file: Option<PathBuf>,
    /// `entries_file`: the entries the CLI manages, added to those of the manifest.
    pub entries_file: Option<PathBuf>,
    /// `x509_svid_ttl_secs`, `jwt_svid_ttl_secs`, `ca_ttl_secs`, `refresh_hint_secs`.
    pub policy: CaPolicy,
    /// `[[identity.entries]]`.
    pub entries: Vec<RegistrationEntry>,
}

impl IdentityConfig {
    /// Parses the raw `[identity]` table. Unknown keys are errors.
    pub fn from_table(table: &toml::Table) -> Result<Self, Error> {
        let mut policy = CaPolicy::default();
        let mut trust_domain = None;
        let mut ca_file = None;
        let mut entries_file = None;
        let mut entries = Vec::new();
        for (key, value) in table {
            let secs = || -> Result<Duration, Error> {
                value
                    .as_integer()
                    .and_then(|i| u64::try_from(i).ok())
                    .map(Duration::from_secs)
                    .ok_or_else(|| Error::Config(format!("`{key}` must be a positive integer")))
            };
            let string = || -> Result<&str, Error> {
                value
                    .as_str()
                    .ok_or_else(|| Error::Config(format!("`{key}` must be a string")))
            };
            match key.as_str() {
                "trust_domain" => trust_domain = Some(TrustDomain::new(string()?)?),
                "ca_file" => ca_file = Some(PathBuf::from(string()?)),
                "entries_file" => entries_file = Some(PathBuf::from(string()?)),
                "x509_svid_ttl_secs" => policy.x509_svid_ttl = secs()?,
                "jwt_svid_ttl_secs" => policy.jwt_svid_ttl = secs()?,
                "ca_ttl_secs" => policy.ca_ttl = secs()?,
                "refresh_hint_secs" => policy.refresh_hint = secs()?,
                "entries" => {
                    let list = value.as_array().ok_or_else(|| {
                        Error::Config("`entries` must be an array of tables".into())
                    })?;
                    for e in list {
                        entries.push(RegistrationEntry::from_toml(e)?);
                    }
                }
                other => return Err(Error::Config(format!("unknown key `{other}`"))),
            }
        }
        let trust_domain =
            trust_domain.ok_or_else(|| Error::Config("`trust_domain` is required".into()))?;
        for e in &entries {
            if e.spiffe_id().trust_domain() != &trust_domain {
                return Err(Error::Config(format!(
                    "entry `{}` is outside trust domain `{trust_domain}`",
                    e.spiffe_id()
                )));
            }
        }
        Ok(Self {
            trust_domain,
            ca_file,
            entries_file,
            policy,
            entries,
        })
    }
}

/// Reads an entries file (`[[entries]]` tables); a missing file holds no entries.
pub fn load_entries_file(path: &Path) -> Result<Vec<RegistrationEntry>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e| Error::Config(format!("`{}`: {e}", path.display())))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        if key != "entries" {
            return Err(Error::Config(format!(
                "unknown key `{key}` in entries file"
            )));
        }
        for e in value
            .as_array()
            .ok_or_else(|| Error::Config("`entries` must be an array of tables".into()))?
        {
            out.push(RegistrationEntry::from_toml(e)?);
        }
    }
    Ok(out)
}

/// Writes an entries file atomically.
pub fn save_entries_file(path: &Path, entries: &[RegistrationEntry]) -> Result<(), Error> {
    let mut table = toml::Table::new();
    table.insert(
        "entries".into(),
        toml::Value::Array(entries.iter().map(RegistrationEntry::to_toml).collect()),
    );
    let text = toml::to_string(&table).map_err(|e| Error::Config(e.to_string()))?;
    crate::files::write_secret(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_round_trip_and_reject_garbage() {
        for s in [
            "unix:uid:0",
            "unix:gid:1000",
            "unix:path:/usr/bin/python3",
            &format!("unix:sha256:{}", "ab".repeat(32)),
        ] {
            assert_eq!(s.parse::<Selector>().unwrap().to_string(), s);
        }
        for s in [
            "uid:0",
            "unix:uid:",
            "unix:uid:-1",
            "unix:uid:+1",
            "unix:path:rel",
            "unix:sha256:AB",
            "unix:pid:1",
            "unix:uid:99999999999",
        ] {
            assert!(s.parse::<Selector>().is_err(), "{s}");
        }
    }

    #[test]
    fn config_parses_and_is_strict() {
        let t: toml::Table = r#"
            trust_domain = "example.org"
            x509_svid_ttl_secs = 600
            [[entries]]
            spiffe_id = "spiffe://example.org/agent/a"
            selectors = ["unix:uid:1000", "unix:path:/usr/bin/python3"]
        "#
        .parse()
        .unwrap();
        let c = IdentityConfig::from_table(&t).unwrap();
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.policy.x509_svid_ttl, Duration::from_secs(600));
        let caller = [
            "unix:uid:1000".parse().unwrap(),
            "unix:gid:5".parse().unwrap(),
        ];
        assert!(!c.entries[0].matches(&caller), "all selectors must match");

        let unknown: toml::Table = "trust_domain = \"a\"\nbogus = 1".parse().unwrap();
        assert!(IdentityConfig::from_table(&unknown).is_err());
        let foreign: toml::Table = "trust_domain = \"a\"\n[[entries]]\nspiffe_id = \"spiffe://b/x\"\nselectors = [\"unix:uid:1\"]".parse().unwrap();
        assert!(IdentityConfig::from_table(&foreign).is_err());
        let empty: toml::Table =
            "trust_domain = \"a\"\n[[entries]]\nspiffe_id = \"spiffe://a/x\"\nselectors = []"
                .parse()
                .unwrap();
        assert!(IdentityConfig::from_table(&empty).is_err());
    }
}
