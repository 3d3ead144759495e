//! The gateway's view of the manifest (`warden.toml`): upstream transports from `[servers.NAME]`
//! and face settings from `[gateway]`.
//!
//! The manifest belongs to the kernel, which parses it strictly; the gateway reads the transport
//! keys the kernel keeps raw (`command`, `args`, `env`, `cwd`, `url`) and its own `[gateway]`
//! table. Output labels come from the kernel's reading of `label` / `trusted`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use warden_identity::delegation::{DelegationIssuer, DelegationVerifier};
use warden_identity::tls::TrustStore;
use warden_identity::{SpiffeId, TrustBundle, TrustDomain};
use warden_kernel::{Manifest, ToolId};

use crate::error::Error;
use crate::labels::{Integrity, Label};

/// Separators a client may use between server and tool names.
pub const SEPARATORS: [&str; 3] = ["/", "__", "."];

/// The gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Face-wide settings (`[gateway]`).
    pub gateway: FaceSettings,
    /// Upstream MCP servers by name.
    pub servers: BTreeMap<String, ServerConfig>,
    /// Directory the config file is in: relative paths resolve against it.
    pub base_dir: PathBuf,
    /// The verifier of delegation tokens, from `[gateway.delegation]`.
    pub delegation: Option<DelegationVerifier>,
    manifest: Arc<Manifest>,
}

/// Settings of the faces: the `[gateway]` table of the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaceSettings {
    /// Pin file (JSON), relative to the config file.
    pub pins: PathBuf,
    /// Separator between server and tool in the names agents see: `/` (default), `__` or `.`
    /// for clients that refuse `/` in tool names. Calls accept the configured one only.
    pub tool_separator: String,
    /// With exactly one server: tools keep their bare names (the policy still sees
    /// `<server>/<tool>`). For clients and test suites that expect the server's own names.
    pub bare_names: bool,
    /// Strict taint: once untrusted data entered a session, every argument counts as tainted.
    pub strict_taint: bool,
    /// How long a call waits for approval before it is denied.
    pub approval_timeout_secs: u64,
    /// Origins the HTTP face accepts (besides requests without `Origin` and loopback origins).
    pub allowed_origins: Vec<String>,
    /// Timeout of one upstream request.
    pub upstream_timeout_secs: u64,
    /// Longest time, in microseconds, `warden mcp` polls for its next input (a server's answer,
    /// the agent's next request) before its thread sleeps (0: never poll). The window adapts
    /// like KVM's halt polling: it grows while waits end soon after the thread went to sleep
    /// and shrinks while they last longer than this, so an idle session does not poll. See
    /// `docs/gateway.md` (What a call costs).
    pub idle_poll_us: u64,
    /// Legacy HTTP sessions one agent may hold open at once; its `initialize` past that ends its
    /// oldest session (default 64).
    pub max_sessions_per_agent: usize,
    /// Trust bundle (JWKS file, SPIFFE format) the HTTP face verifies JWT-SVID bearers against.
    pub jwks: Option<PathBuf>,
    /// Audience a bearer must carry (default `warden`).
    pub audience: String,
    /// Without `jwks`: the identity every HTTP caller gets. For loopback tests only; `warden
    /// serve` refuses a non-loopback listen address in this mode.
    pub http_agent: Option<String>,
    /// SPIFFE IDs allowed to answer approvals over HTTP.
    pub approvers: Vec<String>,
    /// Unix socket of the admin endpoint (`warden approvals`), relative to the config file.
    pub admin_socket: PathBuf,
    /// Era of each upstream (`auto` when absent).
    pub eras: BTreeMap<String, Era>,
    /// Directory of the decision log, relative to the config file.
    pub log: PathBuf,
    /// Delegation tokens the gateway accepts on calls (`[gateway.delegation]`); none without it.
    pub delegation: Option<DelegationSettings>,
    /// mTLS on the HTTP face (`[gateway.tls]`).
    pub tls: Option<TlsSettings>,
}

/// `[gateway.delegation]`: the root key delegation chains must verify with.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DelegationSettings {
    /// The root public key, 32 bytes hex (`warden identity delegate` prints tokens under it).
    pub root_public_key: Option<String>,
    /// Or the root private key file written by `warden identity ca init` (`delegation.key`,
    /// hex), relative to the config file; only its public half is kept.
    pub root_key_file: Option<PathBuf>,
    /// Maximum number of delegations after the root (default 8).
    pub max_depth: Option<usize>,
    /// The SPIFFE bundle (JWKS, as `warden identity bundle` prints it) that delegators'
    /// X.509-SVIDs must chain to, relative to the config file. Without it the manifest must
    /// have `[identity]`: the embedded CA's bundle is used, kept current by the process that
    /// runs the CA ([`GatewayConfig::delegation_follows_authority`]).
    pub bundle_file: Option<PathBuf>,
}

/// `[gateway.tls]`: the HTTP face serves TLS 1.3 with a server SVID minted by Warden's CA and
/// requires a client X.509-SVID of a configured agent (or approver).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The gateway's own SPIFFE ID (its server SVID names it).
    pub spiffe_id: String,
}

impl Default for FaceSettings {
    fn default() -> Self {
        Self {
            pins: PathBuf::from("warden-pins.json"),
            tool_separator: "/".into(),
            bare_names: false,
            strict_taint: false,
            approval_timeout_secs: 120,
            allowed_origins: Vec::new(),
            upstream_timeout_secs: 120,
            idle_poll_us: 200,
            max_sessions_per_agent: 64,
            jwks: None,
            audience: "warden".into(),
            http_agent: None,
            approvers: Vec::new(),
            admin_socket: PathBuf::from("warden-admin.sock"),
            eras: BTreeMap::new(),
            log: PathBuf::from("log"),
            delegation: None,
            tls: None,
        }
    }
}

/// Which MCP era an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Era {
    /// Follow the agent, falling back to the other era.
    #[default]
    Auto,
    /// `initialize` handshake (2025-11-25 and earlier).
    Legacy,
    /// Stateless, per-request `_meta` (2026-07-28).
    Modern,
}

/// How to reach one upstream server.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct ServerConfig {
    /// Program of a stdio server.
    pub command: Option<String>,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment (the gateway's own environment is not passed except `PATH`, `HOME`,
    /// `LANG`, `TMPDIR`, so an agent's token in the gateway's environment never reaches a tool).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// URL of a Streamable HTTP server.
    pub url: Option<String>,
    /// Name of the `[sandbox.profiles.NAME]` a stdio server is started in.
    pub sandbox: Option<String>,
    /// That profile, parsed when the configuration is read (an unknown name is a configuration
    /// error, never an unsandboxed start).
    #[serde(skip)]
    pub sandbox_profile: Option<warden_sandbox::Profile>,
    /// Era of the server (from `[gateway.eras]`).
    #[serde(skip)]
    pub era: Era,
}

impl GatewayConfig {
    /// Reads the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read `{}`: {e}", path.display())))?;
        let manifest = Manifest::from_toml_str(&text).map_err(|e| Error::Config(e.to_string()))?;
        Self::from_manifest(&manifest, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses manifest text (relative paths resolve against the working directory).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let manifest = Manifest::from_toml_str(text).map_err(|e| Error::Config(e.to_string()))?;
        Self::from_manifest(&manifest, Path::new(""))
    }

    /// The gateway's view of a parsed manifest.
    pub fn from_manifest(manifest: &Manifest, base_dir: &Path) -> Result<Self, Error> {
        let gateway: FaceSettings = match manifest.gateway() {
            Some(table) => table
                .clone()
                .try_into()
                .map_err(|e| Error::Config(format!("[gateway]: {e}")))?,
            None => FaceSettings::default(),
        };
        if !SEPARATORS.contains(&gateway.tool_separator.as_str()) {
            return Err(Error::Config(format!(
                "tool_separator `{}` is not one of `/`, `__`, `.`",
                gateway.tool_separator
            )));
        }
        let mut servers = BTreeMap::new();
        for (name, server) in manifest.servers() {
            if server.transport.is_empty() {
                // Declared for policy only (no transport): not an upstream of this gateway.
                continue;
            }
            let mut cfg: ServerConfig = server
                .transport
                .clone()
                .try_into()
                .map_err(|e| Error::Config(format!("[servers.{name}]: {e}")))?;
            if name.is_empty() || SEPARATORS.iter().any(|s| name.contains(s)) {
                return Err(Error::Config(format!(
                    "server name `{name}` is empty or holds a separator"
                )));
            }
            if cfg.command.is_some() == cfg.url.is_some() {
                return Err(Error::Config(format!(
                    "server `{name}` needs exactly one of `command` and `url`"
                )));
            }
            if let Some(profile) = &cfg.sandbox {
                if cfg.command.is_none() {
                    return Err(Error::Config(format!(
                        "server `{name}` names sandbox profile `{profile}` but is not a stdio server"
                    )));
                }
                cfg.sandbox_profile = Some(sandbox_profile(manifest, name, profile)?);
            }
            cfg.era = gateway.eras.get(name).copied().unwrap_or_default();
            servers.insert(name.clone(), cfg);
        }
        if let Some(unknown) = gateway.eras.keys().find(|k| !servers.contains_key(*k)) {
            return Err(Error::Config(format!(
                "[gateway.eras] names `{unknown}`, which is not an upstream server"
            )));
        }
        if gateway.bare_names && servers.len() != 1 {
            return Err(Error::Config(
                "`bare_names` needs exactly one server".into(),
            ));
        }
        let delegation = gateway
            .delegation
            .as_ref()
            .map(|d| delegation_verifier(d, manifest, base_dir))
            .transpose()?;
        if let Some(tls) = &gateway.tls {
            let id = SpiffeId::new(&tls.spiffe_id)
                .map_err(|e| Error::Config(format!("[gateway.tls] spiffe_id: {e}")))?;
            if id.trust_domain().name() != manifest.trust_domain() {
                return Err(Error::Config(format!(
                    "[gateway.tls] spiffe_id `{id}` is not in the trust domain `{}`",
                    manifest.trust_domain()
                )));
            }
        }
        Ok(Self {
            gateway,
            servers,
            base_dir: base_dir.to_path_buf(),
            delegation,
            manifest: Arc::new(manifest.clone()),
        })
    }

    /// The delegation verifier's trust store when it follows the embedded CA (`[identity]`,
    /// no `bundle_file`). It starts empty, so every delegated token is refused until the
    /// process that runs the CA sets the CA's bundle in it (and again on every rotation).
    pub fn delegation_follows_authority(&self) -> Option<&TrustStore> {
        let settings = self.gateway.delegation.as_ref()?;
        if settings.bundle_file.is_some() {
            return None;
        }
        self.delegation.as_ref().map(DelegationVerifier::trust)
    }

    /// The manifest this view was made from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Resolves a path relative to the config file.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The label every result of `server/tool` carries by configuration (the kernel's reading
    /// of the manifest: `tool:<server>/<tool>`, trusted, unless `label` / `trusted` say else).
    pub fn source_label(&self, server: &str, tool: &str) -> Label {
        let Ok(id) = ToolId::new(server, tool) else {
            // A name the kernel cannot even represent: assume the worst.
            return Label::new([format!("tool:{server}")], Integrity::Untrusted);
        };
        crate::kernel_authority::from_kernel_label(&self.manifest.tool_output_label(&id))
    }

    /// Splits an agent-facing tool name into (server, tool).
    pub fn split_tool<'a>(&'a self, name: &'a str) -> Option<(&'a str, &'a str)> {
        if self.gateway.bare_names {
            return self.servers.keys().next().map(|s| (s.as_str(), name));
        }
        let (server, tool) = name.split_once(self.gateway.tool_separator.as_str())?;
        self.servers.contains_key(server).then_some((server, tool))
    }

    /// The agent-facing name of `server`'s `tool`.
    pub fn join_tool(&self, server: &str, tool: &str) -> String {
        if self.gateway.bare_names {
            return tool.to_owned();
        }
        format!("{server}{}{tool}", self.gateway.tool_separator)
    }
}

/// Refresh hint of the placeholder bundle a CA-following delegation verifier starts with.
const DEFAULT_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);

fn delegation_verifier(
    settings: &DelegationSettings,
    manifest: &Manifest,
    base_dir: &Path,
) -> Result<DelegationVerifier, Error> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::Config(format!("[gateway.delegation] {what}: {e}"))
    };
    let public = match (&settings.root_public_key, &settings.root_key_file) {
        (Some(hex_key), None) => {
            hex::decode(hex_key.trim()).map_err(|e| bad("root_public_key", &e))?
        }
        (None, Some(file)) => {
            let path = if file.is_absolute() {
                file.clone()
            } else {
                base_dir.join(file)
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| bad(&format!("`{}`", path.display()), &e))?;
            let private = hex::decode(text.trim()).map_err(|e| bad("root_key_file", &e))?;
            DelegationIssuer::from_private_key(&private)
                .map_err(|e| bad("root_key_file", &e))?
                .public_key()
        }
        _ => {
            return Err(Error::Config(
                "[gateway.delegation] needs exactly one of `root_public_key` and `root_key_file`"
                    .into(),
            ));
        }
    };
    if public.len() != 32 {
        return Err(Error::Config(
            "[gateway.delegation] the root public key is not 32 bytes".into(),
        ));
    }
    let td = TrustDomain::new(manifest.trust_domain())
        .map_err(|e| bad("the manifest's trust domain", &e))?;
    let bundle = match (&settings.bundle_file, manifest.identity()) {
        (Some(file), _) => {
            let path = if file.is_absolute() {
                file.clone()
            } else {
                base_dir.join(file)
            };
            let bytes =
                std::fs::read(&path).map_err(|e| bad(&format!("`{}`", path.display()), &e))?;
            TrustBundle::from_jwks(td, &bytes).map_err(|e| bad("bundle_file", &e))?
        }
        // Filled in by whoever runs the embedded CA; empty (refusing every delegation) until then.
        (None, Some(_)) => TrustBundle::new(td, Vec::new(), Vec::new(), 0, DEFAULT_REFRESH),
        (None, None) => {
            return Err(Error::Config(
                "[gateway.delegation] needs `bundle_file` (a SPIFFE bundle) or the manifest's \
                 `[identity]` CA: delegators' SVIDs cannot be checked without a trust bundle"
                    .into(),
            ));
        }
    };
    let verifier = DelegationVerifier::new(&public, TrustStore::new(bundle));
    Ok(match settings.max_depth {
        Some(d) => verifier.with_max_depth(d),
        None => verifier,
    })
}

/// Parses `[sandbox.profiles.PROFILE]`, which server `server` names.
fn sandbox_profile(
    manifest: &Manifest,
    server: &str,
    profile: &str,
) -> Result<warden_sandbox::Profile, Error> {
    let table = manifest
        .sandbox()
        .and_then(|s| s.get("profiles"))
        .and_then(|p| p.get(profile))
        .and_then(toml::Value::as_table)
        .ok_or_else(|| {
            Error::Config(format!(
                "server `{server}` names sandbox profile `{profile}`, which is not defined in \
                 `[sandbox.profiles]`"
            ))
        })?;
    warden_sandbox::Profile::from_table(table)
        .map_err(|e| Error::Config(format!("[sandbox.profiles.{profile}]: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transports_labels_and_eras() {
        let cfg = GatewayConfig::parse(
            r#"
            trust_domain = "example.org"
            [gateway]
            pins = "p.json"
            [gateway.eras]
            fs = "legacy"
            [servers.fs]
            command = "mcp-server-filesystem"
            args = ["/tmp"]
            label = "file:workspace"
            trusted = false
            [servers.clock]
            url = "http://127.0.0.1:1/mcp"
            [servers.policy_only]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.servers.len(), 2);
        assert_eq!(cfg.servers["fs"].era, Era::Legacy);
        assert_eq!(cfg.gateway.idle_poll_us, 200, "polling is on by default");
        assert_eq!(
            cfg.split_tool("fs/read_text_file"),
            Some(("fs", "read_text_file"))
        );
        assert_eq!(cfg.split_tool("nope/x"), None);
        let fs = cfg.source_label("fs", "read_text_file");
        assert!(fs.is_untrusted());
        assert!(fs.sources.contains("file:workspace"));
        let clock = cfg.source_label("clock", "now");
        assert!(!clock.is_untrusted());
        assert!(clock.sources.contains("tool:clock/now"));
    }

    #[test]
    fn idle_polling_can_be_turned_off_but_not_misspelt() {
        let cfg =
            GatewayConfig::parse("trust_domain = \"example.org\"\n[gateway]\nidle_poll_us = 0\n")
                .unwrap();
        assert_eq!(cfg.gateway.idle_poll_us, 0);
        assert!(
            GatewayConfig::parse("trust_domain = \"example.org\"\n[gateway]\nidle_poll = 0\n")
                .is_err()
        );
        assert!(
            GatewayConfig::parse("trust_domain = \"example.org\"\n[gateway]\nidle_poll_us = -1\n")
                .is_err()
        );
    }

    #[test]
    fn sandbox_profiles_must_exist_and_apply_to_stdio_servers() {
        let base = "trust_domain = \"example.org\"\n[sandbox.profiles.p]\nrw = [\"/srv\"]\n";
        let cfg = GatewayConfig::parse(&format!(
            "{base}[servers.a]\ncommand = \"x\"\nsandbox = \"p\"\n"
        ))
        .unwrap();
        let profile = cfg.servers["a"].sandbox_profile.as_ref().unwrap();
        assert_eq!(profile.read_write, vec![PathBuf::from("/srv")]);
        // Without `sandbox`, no profile.
        let cfg = GatewayConfig::parse(&format!("{base}[servers.a]\ncommand = \"x\"\n")).unwrap();
        assert!(cfg.servers["a"].sandbox_profile.is_none());
        for bad in [
            "[servers.a]\ncommand = \"x\"\nsandbox = \"q\"\n",
            "[servers.a]\nurl = \"http://x\"\nsandbox = \"p\"\n",
        ] {
            assert!(
                GatewayConfig::parse(&format!("{base}{bad}")).is_err(),
                "{bad}"
            );
        }
        // A profile with an unknown key is an error too, not a weaker sandbox.
        let typo = "trust_domain = \"example.org\"\n[sandbox.profiles.p]\nrww = [\"/srv\"]\n\
                    [servers.a]\ncommand = \"x\"\nsandbox = \"p\"\n";
        assert!(GatewayConfig::parse(typo).is_err());
    }

    #[test]
    fn refuses_ambiguous_servers() {
        let base = "trust_domain = \"example.org\"\n";
        assert!(
            GatewayConfig::parse(&format!(
                "{base}[servers.a]\ncommand = \"x\"\nurl = \"http://x\"\n"
            ))
            .is_err()
        );
        assert!(
            GatewayConfig::parse(&format!("{base}[gateway]\ntool_separator = \"-\"\n")).is_err()
        );
        assert!(GatewayConfig::parse(&format!("{base}[gateway]\nnot_a_setting = 1\n")).is_err());
        assert!(
            GatewayConfig::parse(&format!("{base}[gateway.eras]\nghost = \"legacy\"\n")).is_err()
        );
    }
}
