//! The manifest (`warden.toml`): agents, servers, tools and allowlist entries, compiled to Cedar.
//!
//! The kernel's own tables are strict: an unknown key is an error naming its line, so typos do
//! not silently weaken a policy. The `sandbox`, `identity` and `gateway` tables, and the transport
//! keys of `[servers.NAME]`, belong to other layers and are kept raw.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::Error;
use crate::label::{Integrity, Label, Source};
use crate::limits::{Rate, RuleLimits, parse_duration};
use crate::schema::PolicyType;
use crate::tool::{ToolId, ToolSpec};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    trust_domain: String,
    #[serde(default)]
    policies: Vec<String>,
    #[serde(default)]
    certificates: RawCertificates,
    #[serde(default)]
    agents: BTreeMap<String, RawAgent>,
    #[serde(default)]
    servers: BTreeMap<String, RawServer>,
    #[serde(default)]
    allow: Vec<RawAllow>,
    sandbox: Option<toml::Table>,
    identity: Option<toml::Table>,
    gateway: Option<toml::Table>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificates {
    ttl: Option<String>,
    approval_ttl: Option<String>,
    signing_key: Option<String>,
    #[serde(default)]
    verifying_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    #[serde(default)]
    groups: Vec<String>,
    description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    label: Option<String>,
    trusted: Option<bool>,
    audience: Option<String>,
    description: Option<String>,
    #[serde(default)]
    tools: BTreeMap<String, RawTool>,
    command: Option<toml::Value>,
    args: Option<toml::Value>,
    env: Option<toml::Value>,
    cwd: Option<toml::Value>,
    url: Option<toml::Value>,
    sandbox: Option<toml::Value>,
    headers: Option<toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    description: Option<String>,
    input_schema: toml::Table,
    label: Option<String>,
    trusted: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    id: String,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    tools: Vec<String>,
    rate: Option<String>,
    budget: Option<RawBudget>,
    approval: Option<String>,
    risk: Option<String>,
    audit: Option<String>,
    hours: Option<String>,
    #[serde(default)]
    days: Vec<String>,
    #[serde(default)]
    args: BTreeMap<String, RawArgRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    agent: Option<String>,
    tool: Option<String>,
    session: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArgRule {
    rule: Option<String>,
    one_of: Option<Vec<toml::Value>>,
    pattern: Option<String>,
    regex: Option<String>,
    min: Option<toml::Value>,
    max: Option<toml::Value>,
    max_length: Option<u64>,
    #[serde(default)]
    deny_sources: Vec<String>,
    #[serde(default)]
    require_trusted: bool,
}

/// One upstream server as the manifest describes it.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Audience of certificates for this server: the configured string or `Server::"<name>"`.
    pub audience: String,
    /// Transport keys (`command`, `args`, `env`, `cwd`, `url`, `sandbox`, `headers`), raw, for
    /// the gateway.
    pub transport: toml::Table,
    output: Option<(String, bool)>,
}

/// An agent declared in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The manifest's short name.
    pub name: String,
    /// SPIFFE ID.
    pub id: String,
    /// Agent groups.
    pub groups: Vec<String>,
}

/// A parsed, checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    raw: RawManifest,
    servers: BTreeMap<String, ServerConfig>,
    agents: Vec<AgentConfig>,
    declared: Vec<ToolSpec>,
    tool_labels: BTreeMap<ToolId, (String, bool)>,
    cert_ttl: Duration,
    approval_ttl: Duration,
    allow: Vec<AllowRule>,
}

/// A regex or length test computed in Rust and handed to Cedar as `context.facts["…"]`,
/// because Cedar has neither regular expressions nor string length.
#[derive(Debug, Clone)]
pub(crate) enum Fact {
    MaxLength { arg: String, max: u64 },
    Regex { arg: String, regex: regex::Regex },
}

impl Fact {
    pub(crate) fn key(&self) -> String {
        match self {
            Self::MaxLength { arg, max } => format!("{arg}.length <= {max}"),
            Self::Regex { arg, regex } => format!("{arg} =~ {}", regex.as_str()),
        }
    }

    pub(crate) fn holds(&self, args: &serde_json::Map<String, Value>) -> bool {
        match self {
            Self::MaxLength { arg, max } => match args.get(arg) {
                None => true,
                Some(Value::String(s)) => s.chars().count() as u64 <= *max,
                Some(Value::Array(a)) => a.len() as u64 <= *max,
                Some(_) => false,
            },
            Self::Regex { arg, regex } => match args.get(arg) {
                None => true,
                Some(Value::String(s)) => regex.is_match(s),
                Some(_) => false,
            },
        }
    }
}

#[derive(Debug, Clone)]
struct AllowRule {
    raw: RawAllow,
    limits: RuleLimits,
    hours: Option<(u64, u64)>,
    days: Vec<u64>,
}

/// What the manifest compiles to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Compiled {
    pub(crate) cedar: String,
    pub(crate) facts: BTreeMap<ToolId, Vec<Fact>>,
    pub(crate) limits: BTreeMap<String, RuleLimits>,
    pub(crate) warnings: Vec<String>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Manifest {
    /// Parses and checks a manifest. Errors name the line and key (from TOML) or the entry.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| Error::Manifest(e.to_string()))?;
        let bad = |m: String| Err(Error::Manifest(m));
        if raw.trust_domain.is_empty()
            || !raw
                .trust_domain
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c))
        {
            return bad(format!(
                "`trust_domain` `{}` is not a valid SPIFFE trust domain",
                raw.trust_domain
            ));
        }
        let cert_ttl = parse_duration(raw.certificates.ttl.as_deref().unwrap_or("60s"))?;
        let approval_ttl =
            parse_duration(raw.certificates.approval_ttl.as_deref().unwrap_or("15min"))?;
        let mut agents = Vec::new();
        let mut ids = BTreeSet::new();
        for (name, a) in &raw.agents {
            check_spiffe_id(&a.id).map_err(|m| Error::Manifest(format!("[agents.{name}]: {m}")))?;
            if !ids.insert(a.id.clone()) {
                return bad(format!("[agents.{name}]: id `{}` is declared twice", a.id));
            }
            for g in &a.groups {
                check_name(g)
                    .map_err(|m| Error::Manifest(format!("[agents.{name}] group: {m}")))?;
            }
            let _ = &a.description;
            agents.push(AgentConfig {
                name: name.clone(),
                id: a.id.clone(),
                groups: a.groups.clone(),
            });
        }
        let mut servers = BTreeMap::new();
        let mut declared = Vec::new();
        let mut tool_labels = BTreeMap::new();
        for (name, s) in &raw.servers {
            let _ = &s.description;
            let output = match (&s.label, s.trusted) {
                (None, None) => None,
                (label, trusted) => {
                    Some((label.clone().unwrap_or_default(), trusted.unwrap_or(true)))
                }
            };
            if let Some((label, _)) = &output
                && !label.is_empty()
            {
                Source::new(label)?;
            }
            let mut transport = toml::Table::new();
            for (key, value) in [
                ("command", &s.command),
                ("args", &s.args),
                ("env", &s.env),
                ("cwd", &s.cwd),
                ("url", &s.url),
                ("sandbox", &s.sandbox),
                ("headers", &s.headers),
            ] {
                if let Some(v) = value {
                    transport.insert(key.to_owned(), v.clone());
                }
            }
            for (tool, t) in &s.tools {
                let mut definition = serde_json::Map::new();
                definition.insert("name".to_owned(), Value::String(tool.clone()));
                if let Some(d) = &t.description {
                    definition.insert("description".to_owned(), Value::String(d.clone()));
                }
                let schema = toml_to_json(&toml::Value::Table(t.input_schema.clone()));
                definition.insert("inputSchema".to_owned(), schema);
                let spec = ToolSpec::from_mcp_definition(name, &Value::Object(definition))
                    .map_err(|e| Error::Manifest(format!("[servers.{name}.tools.{tool}]: {e}")))?;
                let label = t
                    .label
                    .clone()
                    .or_else(|| output.as_ref().map(|o| o.0.clone()));
                let trusted = t.trusted.or(output.as_ref().map(|o| o.1)).unwrap_or(true);
                if let Some(l) = label.as_ref().filter(|l| !l.is_empty()) {
                    Source::new(l)?;
                    tool_labels.insert(spec.id().clone(), (l.clone(), trusted));
                } else if !trusted {
                    tool_labels.insert(spec.id().clone(), (String::new(), false));
                }
                declared.push(spec);
            }
            let audience = s
                .audience
                .clone()
                .unwrap_or_else(|| format!("Server::\"{name}\""));
            servers.insert(
                name.clone(),
                ServerConfig {
                    audience,
                    transport,
                    output,
                },
            );
        }
        let mut allow = Vec::new();
        let mut seen_ids = BTreeSet::new();
        for (i, a) in raw.allow.iter().enumerate() {
            let at = format!("[[allow]] #{} (`{}`)", i + 1, a.id);
            check_name(&a.id).map_err(|m| Error::Manifest(format!("{at}: id: {m}")))?;
            if !seen_ids.insert(a.id.clone()) {
                return bad(format!("{at}: rule id `{}` is used twice", a.id));
            }
            if a.agents.is_empty() && a.groups.is_empty() {
                return bad(format!("{at}: name at least one of `agents` or `groups`"));
            }
            for agent in &a.agents {
                if !raw.agents.contains_key(agent) {
                    return bad(format!(
                        "{at}: unknown agent `{agent}` (declare it under [agents])"
                    ));
                }
            }
            for g in &a.groups {
                check_name(g).map_err(|m| Error::Manifest(format!("{at}: group: {m}")))?;
            }
            if a.tools.is_empty() {
                return bad(format!("{at}: `tools` is empty"));
            }
            for t in &a.tools {
                if let Some(server) = t.strip_suffix("/*") {
                    ToolId::new(server, "x").map_err(|e| Error::Manifest(format!("{at}: {e}")))?;
                    if !a.args.is_empty() {
                        return bad(format!("{at}: argument rules need single tools, not `{t}`"));
                    }
                } else {
                    ToolId::parse(t).map_err(|e| Error::Manifest(format!("{at}: {e}")))?;
                }
            }
            if let Some(appr) = a.approval.as_deref().filter(|a| *a != "human") {
                return bad(format!("{at}: `approval` must be `human`, not `{appr}`"));
            }
            let rate = |r: &Option<String>| r.as_deref().map(Rate::parse).transpose();
            let limits = RuleLimits {
                rate: rate(&a.rate)?,
                budget_agent: rate(&a.budget.as_ref().and_then(|b| b.agent.clone()))?,
                budget_tool: rate(&a.budget.as_ref().and_then(|b| b.tool.clone()))?,
                budget_session: rate(&a.budget.as_ref().and_then(|b| b.session.clone()))?,
            };
            let hours = a
                .hours
                .as_deref()
                .map(parse_hours)
                .transpose()
                .map_err(|m| Error::Manifest(format!("{at}: {m}")))?;
            let days = a
                .days
                .iter()
                .map(|d| {
                    DAYS.iter()
                        .position(|x| x == d)
                        .map(|p| p as u64)
                        .ok_or_else(|| {
                            Error::Manifest(format!("{at}: unknown day `{d}` (use mon … sun)"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            for (arg, r) in &a.args {
                if let Some(rule) = &r.rule {
                    check_name(rule)
                        .map_err(|m| Error::Manifest(format!("{at} args.{arg}: rule: {m}")))?;
                }
                for s in &r.deny_sources {
                    Source::new(s)?;
                }
                if let Some(re) = &r.regex {
                    regex::Regex::new(re).map_err(|e| {
                        Error::Manifest(format!("{at} args.{arg}: regex `{re}`: {e}"))
                    })?;
                }
                if let Some(p) = &r.pattern
                    && (p.contains('?') || p.contains('['))
                {
                    return bad(format!(
                        "{at} args.{arg}: pattern `{p}`: only `*` is a wildcard"
                    ));
                }
            }
            allow.push(AllowRule {
                raw: a.clone(),
                limits,
                hours,
                days,
            });
        }
        Ok(Self {
            raw,
            servers,
            agents,
            declared,
            tool_labels,
            cert_ttl,
            approval_ttl,
            allow,
        })
    }

    /// The SPIFFE trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.raw.trust_domain
    }

    /// Paths of raw `.cedar` files, relative to the manifest (the caller reads them).
    pub fn policy_paths(&self) -> &[String] {
        &self.raw.policies
    }

    /// Path of the certificate signing key, relative to the manifest.
    pub fn signing_key_path(&self) -> Option<&str> {
        self.raw.certificates.signing_key.as_deref()
    }

    /// Paths of extra public keys certificates may be checked against (rotation).
    pub fn verifying_key_paths(&self) -> &[String] {
        &self.raw.certificates.verifying_keys
    }

    /// Certificate lifetime (`[certificates] ttl`, default 60 s).
    pub fn certificate_ttl(&self) -> Duration {
        self.cert_ttl
    }

    /// How long a held call may wait for approval (`[certificates] approval_ttl`, default 15 min).
    pub fn approval_ttl(&self) -> Duration {
        self.approval_ttl
    }

    /// Declared agents.
    pub fn agents(&self) -> &[AgentConfig] {
        &self.agents
    }

    /// Declared servers.
    pub fn servers(&self) -> &BTreeMap<String, ServerConfig> {
        &self.servers
    }

    /// Servers whose `<server>/*` action group the policy schema declares even before any of
    /// their tools is known: every declared server and every server an allowlist entry names
    /// as `<server>/*`. Tools join their server's group when they are registered.
    pub(crate) fn server_groups(&self) -> std::collections::BTreeSet<String> {
        let entries = self
            .allow
            .iter()
            .flat_map(|r| &r.raw.tools)
            .filter_map(|t| t.strip_suffix("/*"));
        self.servers
            .keys()
            .map(String::as_str)
            .chain(entries)
            .map(str::to_owned)
            .collect()
    }

    /// Tools declared with their input schema in the manifest.
    pub fn declared_tools(&self) -> &[ToolSpec] {
        &self.declared
    }

    /// The raw `[sandbox]` table.
    pub fn sandbox(&self) -> Option<&toml::Table> {
        self.raw.sandbox.as_ref()
    }

    /// The raw `[identity]` table.
    pub fn identity(&self) -> Option<&toml::Table> {
        self.raw.identity.as_ref()
    }

    /// The raw `[gateway]` table.
    pub fn gateway(&self) -> Option<&toml::Table> {
        self.raw.gateway.as_ref()
    }

    /// The label of `tool`'s output before its inputs are joined in: the configured label
    /// (default `tool:<server>/<tool>`, trusted).
    pub fn tool_output_label(&self, tool: &ToolId) -> Label {
        let configured = self.tool_labels.get(tool).cloned().or_else(|| {
            self.servers
                .get(tool.server())
                .and_then(|s| s.output.clone())
        });
        let (label, trusted) = configured.unwrap_or_default_with(tool);
        let source = Source::new(&label).unwrap_or_else(|_| Source::user());
        Label::new(
            source,
            if trusted {
                Integrity::Trusted
            } else {
                Integrity::Untrusted
            },
        )
    }

    /// The integrity the manifest gives `source`: `user` is trusted; `tool:<server>/<tool>`
    /// takes its tool's configured integrity (trusted by default); every other source
    /// (`web:`, `agent:`, `memory:`, …) is untrusted unless a tool's configured label names it.
    pub fn source_integrity(&self, source: &Source) -> Integrity {
        if source.as_str() == "user" {
            return Integrity::Trusted;
        }
        if source.kind() == "tool"
            && let Some(tool) = source
                .as_str()
                .strip_prefix("tool:")
                .and_then(|t| ToolId::parse(t).ok())
        {
            return self.tool_output_label(&tool).integrity();
        }
        let trusted = self
            .tool_labels
            .values()
            .chain(self.servers.values().filter_map(|s| s.output.as_ref()))
            .filter(|(l, _)| l == source.as_str() || l == source.kind())
            .map(|(_, t)| *t)
            .collect::<Vec<_>>();
        if !trusted.is_empty() && trusted.iter().all(|t| *t) {
            Integrity::Trusted
        } else {
            Integrity::Untrusted
        }
    }

    /// Compiles the allowlist to Cedar for the tools in `tools`. Entries naming a tool that is
    /// not known yet are skipped with a warning (skipping only ever denies more).
    pub(crate) fn compile(&self, tools: &BTreeMap<ToolId, ToolSpec>) -> Result<Compiled, Error> {
        let mut out = Compiled::default();
        let ids: BTreeMap<&str, &str> = self
            .agents
            .iter()
            .map(|a| (a.name.as_str(), a.id.as_str()))
            .collect();
        for rule in &self.allow {
            let a = &rule.raw;
            let at = format!("[[allow]] `{}`", a.id);
            let mut principals: Vec<String> = a
                .agents
                .iter()
                .filter_map(|n| ids.get(n.as_str()))
                .map(|id| format!("principal == Agent::{}", cedar_str(id)))
                .collect();
            principals.extend(
                a.groups
                    .iter()
                    .map(|g| format!("principal in AgentGroup::{}", cedar_str(g))),
            );
            let mut actions = Vec::new();
            for t in &a.tools {
                if let Some(server) = t.strip_suffix("/*") {
                    actions.push((format!("action in Action::{}", cedar_str(t)), None));
                    if !tools.keys().any(|k| k.server() == server) {
                        out.warnings
                            .push(format!("{at}: no tool of server `{server}` is known yet"));
                    }
                    continue;
                }
                let id = ToolId::parse(t)?;
                match tools.get(&id) {
                    Some(spec) => {
                        actions.push((format!("action == Action::{}", cedar_str(t)), Some(spec)))
                    }
                    None => out.warnings.push(format!(
                        "{at}: tool `{t}` is not known yet; entry skipped for it"
                    )),
                }
            }
            if !rule.limits.is_empty() {
                out.limits.insert(a.id.clone(), rule.limits.clone());
            }
            for principal in &principals {
                for (action, spec) in &actions {
                    let scope = format!("{principal},\n  {action},\n  resource");
                    let _ = writeln!(out.cedar, "// [[allow]] {}", a.id);
                    let _ = writeln!(out.cedar, "@id({})", cedar_str(&a.id));
                    for (key, value) in [
                        ("risk", &a.risk),
                        ("audit", &a.audit),
                        ("approval", &a.approval),
                    ] {
                        if let Some(v) = value {
                            let _ = writeln!(out.cedar, "@{key}({})", cedar_str(v));
                        }
                    }
                    let _ = writeln!(out.cedar, "permit (\n  {scope}\n);\n");
                    if let Some((from, to)) = rule.hours {
                        let hours = a.hours.clone().unwrap_or_default();
                        let cond = if from <= to {
                            format!(
                                "context.now.minute_of_day >= {from} && context.now.minute_of_day < {to}"
                            )
                        } else {
                            format!(
                                "context.now.minute_of_day >= {from} || context.now.minute_of_day < {to}"
                            )
                        };
                        forbid(
                            &mut out.cedar,
                            &a.id,
                            &format!("outside the allowed hours {hours} UTC"),
                            None,
                            &scope,
                            "unless",
                            &cond,
                        );
                    }
                    if !rule.days.is_empty() {
                        let set: Vec<String> = rule.days.iter().map(u64::to_string).collect();
                        let cond = format!("[{}].contains(context.now.weekday)", set.join(", "));
                        let reason = format!("outside the allowed days {}", a.days.join(", "));
                        forbid(
                            &mut out.cedar,
                            &a.id,
                            &reason,
                            None,
                            &scope,
                            "unless",
                            &cond,
                        );
                    }
                    let Some(spec) = spec else { continue };
                    for (arg, r) in &a.args {
                        self.compile_arg(&mut out, spec, &a.id, arg, r, &scope)?;
                    }
                }
            }
        }
        Ok(out)
    }

    fn compile_arg(
        &self,
        out: &mut Compiled,
        spec: &ToolSpec,
        entry: &str,
        arg: &str,
        r: &RawArgRule,
        scope: &str,
    ) -> Result<(), Error> {
        let at = format!("[[allow]] `{entry}` args.{arg}");
        let Some((_, ty, required)) = spec.policy_properties().find(|(n, _, _)| *n == arg) else {
            return Err(Error::Manifest(format!(
                "{at}: tool `{}` declares no argument `{arg}`",
                spec.id()
            )));
        };
        let rule_id = r.rule.clone().unwrap_or_else(|| format!("{entry}/{arg}"));
        let value = format!("context.args[{}]", cedar_str(arg));
        // The violation of `cond`. An absent optional argument violates nothing; the `has` comes
        // first so the validator can prove the access safe.
        let guard = |cond: String| {
            if required {
                format!("!({cond})")
            } else {
                format!("context.args has {} && !({cond})", cedar_str(arg))
            }
        };
        let needs_type = || {
            ty.clone().ok_or_else(|| Error::Manifest(format!(
                "{at}: the type of `{arg}` is not visible to policies (several types or a free-form object)"
            )))
        };
        if let Some(values) = &r.one_of {
            let ty = needs_type()?;
            let items = values
                .iter()
                .map(|v| {
                    cedar_literal(v, &ty).ok_or_else(|| {
                        Error::Manifest(format!(
                            "{at}: `one_of` value `{v}` does not fit the argument's type"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let shown: Vec<String> = values
                .iter()
                .map(|v| format!("`{}`", toml_plain(v)))
                .collect();
            let reason = format!("argument `{arg}` must be one of {}", shown.join(", "));
            let cond = guard(format!("[{}].contains({value})", items.join(", ")));
            forbid(
                &mut out.cedar,
                &rule_id,
                &reason,
                None,
                scope,
                "when",
                &cond,
            );
        }
        if let Some(p) = &r.pattern {
            if needs_type()? != PolicyType::String {
                return Err(Error::Manifest(format!(
                    "{at}: `pattern` needs a string argument"
                )));
            }
            let reason = format!("argument `{arg}` must match `{p}`");
            let cond = guard(format!("{value} like {}", cedar_str(p)));
            forbid(
                &mut out.cedar,
                &rule_id,
                &reason,
                None,
                scope,
                "when",
                &cond,
            );
        }
        for (bound, op, word) in [(&r.min, ">=", "at least"), (&r.max, "<=", "at most")] {
            let Some(bound) = bound else { continue };
            let ty = needs_type()?;
            let cond = match (&ty, bound) {
                (PolicyType::Long, toml::Value::Integer(n)) => format!("{value} {op} {n}"),
                (PolicyType::Decimal, toml::Value::Integer(_) | toml::Value::Float(_)) => {
                    let lit = cedar_literal(bound, &ty).unwrap_or_default();
                    let method = if op == ">=" {
                        "greaterThanOrEqual"
                    } else {
                        "lessThanOrEqual"
                    };
                    format!("{value}.{method}({lit})")
                }
                _ => {
                    return Err(Error::Manifest(format!(
                        "{at}: `min`/`max` need a numeric argument and bound"
                    )));
                }
            };
            let reason = format!("argument `{arg}` must be {word} {}", toml_plain(bound));
            forbid(
                &mut out.cedar,
                &rule_id,
                &reason,
                None,
                scope,
                "when",
                &guard(cond),
            );
        }
        let mut facts = Vec::new();
        if let Some(max) = r.max_length {
            facts.push((
                Fact::MaxLength {
                    arg: arg.to_owned(),
                    max,
                },
                format!("argument `{arg}` is longer than {max}"),
            ));
        }
        if let Some(re) = &r.regex {
            let regex = regex::Regex::new(re).map_err(|e| Error::Manifest(format!("{at}: {e}")))?;
            facts.push((
                Fact::Regex {
                    arg: arg.to_owned(),
                    regex,
                },
                format!("argument `{arg}` must match the regex `{re}`"),
            ));
        }
        for (fact, reason) in facts {
            let cond = format!("!context.facts[{}]", cedar_str(&fact.key()));
            forbid(
                &mut out.cedar,
                &rule_id,
                &reason,
                None,
                scope,
                "when",
                &cond,
            );
            let list = out.facts.entry(spec.id().clone()).or_default();
            if !list.iter().any(|f| f.key() == fact.key()) {
                list.push(fact);
            }
        }
        let labels = format!("context.labels[{}]", cedar_str(arg));
        if r.require_trusted {
            let cond = format!("!{labels}.trusted");
            forbid(
                &mut out.cedar,
                &rule_id,
                "",
                Some(arg),
                scope,
                "when",
                &cond,
            );
        }
        if !r.deny_sources.is_empty() {
            let tests: Vec<String> = r
                .deny_sources
                .iter()
                .map(|s| {
                    if s.contains(':') {
                        format!("{labels}.sources.contains({})", cedar_str(s))
                    } else {
                        format!("{labels}.kinds.contains({})", cedar_str(s))
                    }
                })
                .collect();
            forbid(
                &mut out.cedar,
                &rule_id,
                "",
                Some(arg),
                scope,
                "when",
                &tests.join(" || "),
            );
        }
        Ok(())
    }
}

trait OrDefaultLabel {
    fn unwrap_or_default_with(self, tool: &ToolId) -> (String, bool);
}

impl OrDefaultLabel for Option<(String, bool)> {
    fn unwrap_or_default_with(self, tool: &ToolId) -> (String, bool) {
        match self {
            Some((label, trusted)) if !label.is_empty() => (label, trusted),
            Some((_, trusted)) => (format!("tool:{tool}"), trusted),
            None => (format!("tool:{tool}"), true),
        }
    }
}

fn forbid(
    out: &mut String,
    id: &str,
    reason: &str,
    arg: Option<&str>,
    scope: &str,
    kw: &str,
    cond: &str,
) {
    let _ = writeln!(out, "@id({})", cedar_str(id));
    if !reason.is_empty() {
        let _ = writeln!(out, "@reason({})", cedar_str(reason));
    }
    if let Some(arg) = arg {
        let _ = writeln!(out, "@arg({})", cedar_str(arg));
    }
    let _ = writeln!(out, "forbid (\n  {scope}\n)\n{kw} {{ {cond} }};\n");
}

/// A Cedar string literal.
pub(crate) fn cedar_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn cedar_literal(v: &toml::Value, ty: &PolicyType) -> Option<String> {
    match (ty, v) {
        (PolicyType::String, toml::Value::String(s)) => Some(cedar_str(s)),
        (PolicyType::Long, toml::Value::Integer(n)) => Some(n.to_string()),
        (PolicyType::Bool, toml::Value::Boolean(b)) => Some(b.to_string()),
        (PolicyType::Decimal, toml::Value::Integer(n)) => Some(format!("decimal(\"{n}.0\")")),
        (PolicyType::Decimal, toml::Value::Float(f)) => {
            crate::policy::decimal_text(*f).map(|d| format!("decimal(\"{d}\")"))
        }
        _ => None,
    }
}

fn toml_plain(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_hours(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("invalid hours `{text}`: expected `HH:MM-HH:MM` (UTC)");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let minutes = |t: &str| -> Result<u64, String> {
        let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (u64, u64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 24 || m > 59 || (h == 24 && m > 0) {
            return Err(bad());
        }
        Ok(h * 60 + m)
    };
    let (from, to) = (minutes(a)?, minutes(b)?);
    if from == to {
        return Err(bad());
    }
    Ok((from, to))
}

fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be 1 to 128 of `A-Z a-z 0-9 - _ . : /`"
        ))
    }
}

/// Checks the syntax of a SPIFFE ID: `spiffe://<trust domain>/<path>`.
pub(crate) fn check_spiffe_id(id: &str) -> Result<(), String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("`{id}` is not a SPIFFE ID (`spiffe://<trust domain>/<path>`)"))?;
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let domain_ok = !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
    let path_ok = !path.is_empty()
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        });
    if domain_ok && path_ok && id.len() <= 2048 {
        Ok(())
    } else {
        Err(format!("`{id}` is not a valid SPIFFE ID"))
    }
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(n) => Value::from(*n),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}
