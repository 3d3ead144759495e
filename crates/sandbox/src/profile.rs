//! Sandbox profiles: what a sandboxed command may see, reach and use.
//!
//! A profile comes from the `[sandbox.profiles.NAME]` table of `warden.toml` or from `warden run`
//! flags. Unknown keys are errors, so a misspelt grant never silently becomes "no grant", and a
//! misspelt limit never silently becomes "no limit".

use std::path::PathBuf;
use std::time::Duration;

use crate::Error;
use crate::egress::HostRule;

/// Resource limits of one sandbox run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time before the whole sandbox is killed.
    pub timeout: Duration,
    /// Memory of the whole process tree, in bytes (cgroup; tmpfs pages count too).
    pub memory_bytes: u64,
    /// Number of processes and threads (cgroup).
    pub pids: u64,
    /// Bytes of stdout and of stderr kept each; the rest is read and dropped.
    pub output_bytes: u64,
    /// Open descriptors per process (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Largest file a process may write (`RLIMIT_FSIZE`).
    pub file_size_bytes: u64,
    /// Size of the private `/tmp` tmpfs.
    pub tmp_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            memory_bytes: 512 << 20,
            pids: 128,
            output_bytes: 1 << 20,
            open_files: 256,
            file_size_bytes: 64 << 20,
            tmp_bytes: 64 << 20,
        }
    }
}

/// Everything a sandboxed command is granted. The default grants nothing but the minimal root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Paths visible read-only (at the same path inside).
    pub read_only: Vec<PathBuf>,
    /// Paths visible read-write (at the same path inside).
    pub read_write: Vec<PathBuf>,
    /// Hosts and ports reachable through the egress proxy.
    pub allow_hosts: Vec<HostRule>,
    /// Resource limits.
    pub limits: Limits,
    /// Names of environment variables passed through from the caller's environment.
    pub env: Vec<String>,
    /// Working directory inside the sandbox (default `/tmp`).
    pub cwd: Option<PathBuf>,
}

impl Profile {
    /// Parses a `[sandbox.profiles.NAME]` table.
    ///
    /// Keys: `ro`, `rw` (arrays of absolute paths), `allow_hosts` (array of `HOST:PORT`, `HOST`
    /// exact or `*.SUFFIX`), `env` (array of variable names), `cwd`, `timeout_secs`,
    /// `memory_mb`, `pids`, `output_limit` (bytes), `open_files`, `file_size_mb`, `tmp_mb`.
    pub fn from_table(table: &toml::Table) -> Result<Self, Error> {
        let mut profile = Profile::default();
        for (key, value) in table {
            match key.as_str() {
                "ro" => profile.read_only = paths(key, value)?,
                "rw" => profile.read_write = paths(key, value)?,
                "allow_hosts" => {
                    profile.allow_hosts = strings(key, value)?
                        .iter()
                        .map(|s| HostRule::parse(s))
                        .collect::<Result<_, _>>()?;
                }
                "env" => {
                    let names = strings(key, value)?;
                    for name in &names {
                        check_env_name(name)?;
                    }
                    profile.env = names;
                }
                "cwd" => {
                    let s = value.as_str().ok_or_else(|| bad(key, "a string"))?;
                    profile.cwd = Some(absolute(key, s)?);
                }
                "timeout_secs" => profile.limits.timeout = Duration::from_secs(number(key, value)?),
                "memory_mb" => profile.limits.memory_bytes = mib(key, value)?,
                "pids" => profile.limits.pids = number(key, value)?,
                "output_limit" => profile.limits.output_bytes = number(key, value)?,
                "open_files" => profile.limits.open_files = number(key, value)?,
                "file_size_mb" => profile.limits.file_size_bytes = mib(key, value)?,
                "tmp_mb" => profile.limits.tmp_bytes = mib(key, value)?,
                other => {
                    return Err(Error::Profile(format!("unknown key `{other}`")));
                }
            }
        }
        Ok(profile)
    }

    /// Finds `[sandbox.profiles.NAME]` in a whole `warden.toml` document and parses it.
    pub fn from_config(document: &str, name: &str) -> Result<Self, Error> {
        let root: toml::Table = document.parse().map_err(|e: toml::de::Error| {
            Error::Profile(format!("invalid toml: {}", e.message()))
        })?;
        let table = root
            .get("sandbox")
            .and_then(|s| s.get("profiles"))
            .and_then(|p| p.get(name))
            .and_then(toml::Value::as_table)
            .ok_or_else(|| Error::Profile(format!("no table `[sandbox.profiles.{name}]`")))?;
        Self::from_table(table)
    }
}

/// Checks an environment variable name: letters, digits and `_`, not starting with a digit.
pub(crate) fn check_env_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::Profile(format!("invalid variable name `{name}`")))
    }
}

fn bad(key: &str, expected: &str) -> Error {
    Error::Profile(format!("`{key}` must be {expected}"))
}

fn strings(key: &str, value: &toml::Value) -> Result<Vec<String>, Error> {
    value
        .as_array()
        .ok_or_else(|| bad(key, "an array of strings"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(key, "an array of strings"))
        })
        .collect()
}

pub(crate) fn absolute(key: &str, s: &str) -> Result<PathBuf, Error> {
    let path = PathBuf::from(s);
    if !path.is_absolute() || s.contains('\0') {
        return Err(Error::Profile(format!(
            "`{key}`: path `{s}` is not absolute"
        )));
    }
    Ok(path)
}

fn paths(key: &str, value: &toml::Value) -> Result<Vec<PathBuf>, Error> {
    strings(key, value)?
        .iter()
        .map(|s| absolute(key, s))
        .collect()
}

fn number(key: &str, value: &toml::Value) -> Result<u64, Error> {
    value
        .as_integer()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(key, "a positive integer"))
}

fn mib(key: &str, value: &toml::Value) -> Result<u64, Error> {
    number(key, value)?
        .checked_mul(1 << 20)
        .ok_or_else(|| bad(key, "smaller"))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_profile() {
        let doc = r#"
            [sandbox.profiles.fs]
            ro = ["/data"]
            rw = ["/work/out"]
            allow_hosts = ["api.github.com:443", "*.pypi.org:443"]
            env = ["LANG"]
            timeout_secs = 5
            memory_mb = 64
            pids = 16
            output_limit = 100
        "#;
        let p = Profile::from_config(doc, "fs").unwrap();
        assert_eq!(p.read_only, vec![PathBuf::from("/data")]);
        assert_eq!(p.read_write, vec![PathBuf::from("/work/out")]);
        assert_eq!(p.allow_hosts.len(), 2);
        assert_eq!(p.limits.timeout, Duration::from_secs(5));
        assert_eq!(p.limits.memory_bytes, 64 << 20);
        assert_eq!(p.limits.pids, 16);
        assert_eq!(p.limits.output_bytes, 100);
        assert_eq!(p.env, vec!["LANG".to_owned()]);
    }

    #[test]
    fn refuses_unknown_keys_relative_paths_and_bad_values() {
        let parse = |s: &str| Profile::from_table(&s.parse::<toml::Table>().unwrap());
        assert!(parse("rww = [\"/x\"]").is_err());
        assert!(parse("ro = [\"relative\"]").is_err());
        assert!(parse("pids = 0").is_err());
        assert!(parse("pids = -3").is_err());
        assert!(parse("memory_mb = \"big\"").is_err());
        assert!(parse("env = [\"A=B\"]").is_err());
        assert!(parse("allow_hosts = [\"example.com\"]").is_err());
        assert!(Profile::from_config("", "missing").is_err());
    }
}
