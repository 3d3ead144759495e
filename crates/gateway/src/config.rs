//! The gateway's part of the manifest (`warden.toml`): upstream servers and face settings.
//!
//! The kernel reads the same file for agents and policy; unknown keys are therefore ignored here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;
use crate::labels::{Integrity, Label};

/// Separators a client may use between server and tool names.
pub const SEPARATORS: [&str; 3] = ["/", "__", "."];

/// The gateway configuration.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct GatewayConfig {
    /// Face-wide settings.
    #[serde(default)]
    pub gateway: FaceSettings,
    /// Upstream MCP servers by name.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
    /// Directory the config file is in: relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Settings of the faces.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
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
    /// Origins the HTTP face accepts (besides requests without `Origin`).
    pub allowed_origins: Vec<String>,
    /// Timeout of one upstream request.
    pub upstream_timeout_secs: u64,
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
    pub admin_socket: Option<PathBuf>,
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
            jwks: None,
            audience: "warden".into(),
            http_agent: None,
            approvers: Vec::new(),
            admin_socket: None,
        }
    }
}

/// Which MCP era an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Era {
    /// Probe with `server/discover`, fall back to `initialize`.
    #[default]
    Auto,
    /// `initialize` handshake (2025-11-25 and earlier).
    Legacy,
    /// Stateless, per-request `_meta` (2026-07-28).
    Modern,
}

/// One upstream server.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct ServerConfig {
    /// Program of a stdio server.
    pub command: Option<String>,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment (the gateway's own environment is not passed except `PATH`, `HOME`,
    /// `LANG`, so an agent's token in the gateway's environment never reaches a tool).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// URL of a Streamable HTTP server.
    pub url: Option<String>,
    /// Era of the server.
    pub era: Era,
    /// Source labels of every result of this server (default `tool:<server>/<tool>`).
    pub labels: Vec<String>,
    /// Integrity of its results (default untrusted).
    pub trust: Option<Integrity>,
    /// Per-tool overrides.
    pub tools: BTreeMap<String, ToolConfig>,
}

/// Per-tool settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct ToolConfig {
    /// Source labels of this tool's results (replace the server's).
    pub labels: Option<Vec<String>>,
    /// Integrity of its results.
    pub trust: Option<Integrity>,
}

impl GatewayConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read `{}`: {e}", path.display())))?;
        let mut cfg = Self::parse(&text)?;
        cfg.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(cfg)
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let cfg: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        if !SEPARATORS.contains(&cfg.gateway.tool_separator.as_str()) {
            return Err(Error::Config(format!(
                "tool_separator `{}` is not one of `/`, `__`, `.`",
                cfg.gateway.tool_separator
            )));
        }
        if cfg.gateway.bare_names && cfg.servers.len() != 1 {
            return Err(Error::Config(
                "`bare_names` needs exactly one server".into(),
            ));
        }
        for (name, server) in &cfg.servers {
            if name.is_empty() || SEPARATORS.iter().any(|s| name.contains(s)) {
                return Err(Error::Config(format!(
                    "server name `{name}` is empty or holds a separator"
                )));
            }
            if server.command.is_some() == server.url.is_some() {
                return Err(Error::Config(format!(
                    "server `{name}` needs exactly one of `command` and `url`"
                )));
            }
        }
        Ok(cfg)
    }

    /// Resolves a path relative to the config file.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The label every result of `server/tool` carries by configuration.
    pub fn source_label(&self, server: &str, tool: &str) -> Label {
        let cfg = self.servers.get(server);
        let tool_cfg = cfg.and_then(|s| s.tools.get(tool));
        let sources = tool_cfg
            .and_then(|t| t.labels.clone())
            .or_else(|| cfg.map(|s| s.labels.clone()).filter(|l| !l.is_empty()))
            .unwrap_or_else(|| vec![format!("tool:{server}/{tool}")]);
        let integrity = tool_cfg
            .and_then(|t| t.trust)
            .or_else(|| cfg.and_then(|s| s.trust))
            .unwrap_or(Integrity::Untrusted);
        Label::new(sources, integrity)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_and_labels() {
        let cfg = GatewayConfig::parse(
            r#"
            [agents.x]
            ignored = true
            [servers.fs]
            command = "mcp-server-filesystem"
            args = ["/tmp"]
            trust = "untrusted"
            labels = ["file:workspace"]
            [servers.fs.tools.write_file]
            trust = "trusted"
            [servers.clock]
            url = "http://127.0.0.1:1/mcp"
            trust = "trusted"
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.split_tool("fs/read_text_file"),
            Some(("fs", "read_text_file"))
        );
        assert_eq!(cfg.split_tool("nope/x"), None);
        assert!(cfg.source_label("fs", "read_text_file").is_untrusted());
        assert!(!cfg.source_label("fs", "write_file").is_untrusted());
        assert_eq!(
            cfg.source_label("clock", "now")
                .sources
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["tool:clock/now".to_string()]
        );
    }

    #[test]
    fn refuses_ambiguous_servers() {
        assert!(GatewayConfig::parse("[servers.a]\n").is_err());
        assert!(GatewayConfig::parse("[servers.\"a/b\"]\ncommand = \"x\"\n").is_err());
        assert!(
            GatewayConfig::parse("[servers.a]\ncommand = \"x\"\nurl = \"http://x\"\n").is_err()
        );
        assert!(GatewayConfig::parse("[gateway]\ntool_separator = \"-\"\n").is_err());
    }
}
