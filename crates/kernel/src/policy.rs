//! The Cedar side: schema generated from the tool specs, strict validation, slicing by agent,
//! evaluation that denies on any error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityUid,
    Policy, PolicyId, PolicySet, PrincipalConstraint, Request, RestrictedExpression, Schema,
    ValidationMode, Validator,
};
use serde_json::{Map, Value, json};

use crate::label::Label;
use crate::manifest::{Fact, Manifest};
use crate::schema::PolicyType;
use crate::tool::{ToolId, ToolSpec};
use crate::{Error, Timestamp};

/// A raw Cedar file placed beside the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// A name for errors and policy ids (the file name).
    pub name: String,
    /// The Cedar text.
    pub text: String,
}

/// The evaluation inputs beyond the arguments.
pub(crate) struct EvalInput<'a> {
    pub(crate) agent: &'a str,
    pub(crate) tool: &'a ToolId,
    pub(crate) args: &'a Map<String, Value>,
    pub(crate) labels: &'a BTreeMap<String, Label>,
    pub(crate) taint: &'a str,
    pub(crate) delegation: &'a [String],
    pub(crate) usage: (u64, u64),
    pub(crate) now: Timestamp,
}

/// What Cedar decided, with the rule ids and annotations the kernel needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PolicyOutcome {
    Allow {
        rules: Vec<String>,
        approval: bool,
        risk: Option<String>,
    },
    Deny {
        rules: Vec<String>,
        reason: String,
        risk: Option<String>,
    },
}

/// A compiled, validated, sliced policy bundle.
#[derive(Debug)]
pub(crate) struct PolicyBundle {
    schema: Schema,
    entities: Entities,
    globals: PolicySet,
    by_agent: HashMap<String, PolicySet>,
    pub(crate) tools: BTreeMap<ToolId, ToolSpec>,
    facts: BTreeMap<ToolId, Vec<Fact>>,
    pub(crate) limits: BTreeMap<String, crate::limits::RuleLimits>,
    pub(crate) manifest_cedar: String,
    pub(crate) hash: String,
    pub(crate) warnings: Vec<String>,
    authorizer: Authorizer,
    types: EntityTypes,
}

/// `Agent`, `Action` and `Server`, parsed once: parsing a type name runs the Cedar parser.
#[derive(Debug)]
struct EntityTypes {
    agent: cedar_policy::EntityTypeName,
    action: cedar_policy::EntityTypeName,
    server: cedar_policy::EntityTypeName,
}

impl EntityTypes {
    fn new() -> Result<Self, Error> {
        let parse = |t: &str| {
            cedar_policy::EntityTypeName::from_str(t)
                .map_err(|e| Error::PolicyValidation(e.to_string()))
        };
        Ok(Self {
            agent: parse("Agent")?,
            action: parse("Action")?,
            server: parse("Server")?,
        })
    }

    fn uid(ty: &cedar_policy::EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), cedar_policy::EntityId::new(id))
    }
}

impl PolicyBundle {
    pub(crate) fn build(
        manifest: &Manifest,
        files: &[PolicyFile],
        learned: &[ToolSpec],
    ) -> Result<Self, Error> {
        let mut tools: BTreeMap<ToolId, ToolSpec> = BTreeMap::new();
        for spec in manifest.declared_tools().iter().chain(learned) {
            tools.insert(spec.id().clone(), spec.clone());
        }
        let compiled = manifest.compile(&tools)?;
        let schema_json = cedar_schema_json(&tools, &compiled.facts);
        let schema = Schema::from_json_value(schema_json.clone())
            .map_err(|e| Error::PolicyValidation(format!("generated schema: {e}")))?;

        let mut all = PolicySet::new();
        add_text(&mut all, "warden.toml", &compiled.cedar)?;
        for file in files {
            add_text(&mut all, &file.name, &file.text)?;
        }
        let result = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
        if !result.validation_passed() {
            let source_of = |id: &PolicyId| -> &str {
                let file = id.to_string();
                let file = file
                    .rsplit_once('#')
                    .map_or(file.as_str(), |(f, _)| f)
                    .to_owned();
                if file == "warden.toml" {
                    &compiled.cedar
                } else {
                    files
                        .iter()
                        .find(|f| f.name == file)
                        .map_or("", |f| f.text.as_str())
                }
            };
            let messages: Vec<String> = result
                .validation_errors()
                .map(|e| {
                    let at = location(source_of(e.policy_id()), e);
                    format!("policy `{}`{at}: {e}", e.policy_id())
                })
                .collect();
            return Err(Error::PolicyValidation(messages.join("; ")));
        }
        let mut entity_list = Vec::new();
        let mut groups_of: HashMap<String, Vec<String>> = HashMap::new();
        for agent in manifest.agents() {
            let parents = agent
                .groups
                .iter()
                .map(|g| uid("AgentGroup", g))
                .collect::<Result<_, _>>()?;
            entity_list.push(Entity::new_no_attrs(uid("Agent", &agent.id)?, parents));
            groups_of.insert(agent.id.clone(), agent.groups.clone());
        }
        let entities = Entities::from_entities(entity_list, Some(&schema))
            .map_err(|e| Error::PolicyValidation(format!("entities: {e}")))?;

        // Slice by principal: policies naming one agent go to that agent, policies naming a
        // group go to its members, everything else is global.
        let mut globals = PolicySet::new();
        let mut by_agent_policies: HashMap<String, Vec<Policy>> = HashMap::new();
        let mut by_group: HashMap<String, Vec<Policy>> = HashMap::new();
        for policy in all.policies() {
            match policy.principal_constraint() {
                PrincipalConstraint::Eq(u) | PrincipalConstraint::In(u)
                    if u.type_name().to_string() == "Agent" =>
                {
                    by_agent_policies
                        .entry(u.id().unescaped().to_owned())
                        .or_default()
                        .push(policy.clone());
                }
                PrincipalConstraint::In(u) if u.type_name().to_string() == "AgentGroup" => {
                    by_group
                        .entry(u.id().unescaped().to_owned())
                        .or_default()
                        .push(policy.clone());
                }
                _ => add(&mut globals, policy.clone())?,
            }
        }
        let agent_ids: BTreeSet<String> = by_agent_policies
            .keys()
            .cloned()
            .chain(groups_of.keys().cloned())
            .collect();
        let mut by_agent = HashMap::new();
        for agent in agent_ids {
            let mut set = globals.clone();
            for p in by_agent_policies.get(&agent).into_iter().flatten() {
                add(&mut set, p.clone())?;
            }
            for g in groups_of.get(&agent).into_iter().flatten() {
                for p in by_group.get(g).into_iter().flatten() {
                    add(&mut set, p.clone())?;
                }
            }
            by_agent.insert(agent, set);
        }

        let mut material = compiled.cedar.clone();
        for f in files {
            material.push_str(&format!("\n// file {}\n{}", f.name, f.text));
        }
        material.push_str(&schema_json.to_string());
        let hash = crate::json::sha256_tag(material.as_bytes());
        let mut warnings = compiled.warnings;
        for p in all.policies() {
            if let ActionConstraint::Any = p.action_constraint()
                && p.annotation("id").is_none()
            {
                warnings.push(format!(
                    "policy `{}` has no `@id`; its policy id is used",
                    p.id()
                ));
            }
        }
        Ok(Self {
            schema,
            entities,
            globals,
            by_agent,
            tools,
            facts: compiled.facts,
            limits: compiled.limits,
            manifest_cedar: compiled.cedar,
            hash,
            warnings,
            authorizer: Authorizer::new(),
            types: EntityTypes::new()?,
        })
    }

    /// The slice of the policy set that can apply to `agent`.
    fn slice(&self, agent: &str) -> &PolicySet {
        self.by_agent.get(agent).unwrap_or(&self.globals)
    }

    /// Number of policies in the slice for `agent` (for tests and benchmarks).
    pub(crate) fn slice_len(&self, agent: &str) -> usize {
        self.slice(agent).policies().count()
    }

    /// Evaluates a call. Any error, in the request, the context or any policy, is a deny.
    pub(crate) fn evaluate(&self, input: &EvalInput<'_>) -> PolicyOutcome {
        let fail = |reason: String| PolicyOutcome::Deny {
            rules: vec!["policy-error".to_owned()],
            reason,
            risk: None,
        };
        let Some(spec) = self.tools.get(input.tool) else {
            return fail(format!("tool `{}` has no policy schema", input.tool));
        };
        let request = match self.request(spec, input) {
            Ok(r) => r,
            Err(e) => return fail(format!("the call does not fit the policy schema: {e}")),
        };
        let slice = self.slice(input.agent);
        let response = self
            .authorizer
            .is_authorized(&request, slice, &self.entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
        let rule_of = |id: &PolicyId| {
            slice
                .annotation(id, "id")
                .map_or_else(|| id.to_string(), str::to_owned)
        };
        let risk_of = |ids: &[&PolicyId]| {
            ids.iter()
                .find_map(|id| slice.annotation(id, "risk"))
                .map(str::to_owned)
        };
        if !errors.is_empty() {
            let mut rules: Vec<String> = diagnostics
                .errors()
                .map(|e| match e {
                    cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                        rule_of(e.policy_id())
                    }
                })
                .collect();
            rules.dedup();
            return PolicyOutcome::Deny {
                rules,
                reason: format!(
                    "policy evaluation error (failing closed): {}",
                    errors.join("; ")
                ),
                risk: None,
            };
        }
        let determining: Vec<&PolicyId> = diagnostics.reason().collect();
        let mut rules: Vec<String> = determining.iter().map(|id| rule_of(id)).collect();
        rules.sort();
        rules.dedup();
        match response.decision() {
            CedarDecision::Allow => PolicyOutcome::Allow {
                approval: determining
                    .iter()
                    .any(|id| slice.annotation(id, "approval") == Some("human")),
                risk: risk_of(&determining),
                rules,
            },
            CedarDecision::Deny if determining.is_empty() => PolicyOutcome::Deny {
                rules: vec!["default-deny".to_owned()],
                reason: format!(
                    "no rule allows agent `{}` to call `{}`",
                    input.agent, input.tool
                ),
                risk: None,
            },
            CedarDecision::Deny => {
                let reasons: Vec<String> = determining
                    .iter()
                    .map(|id| self.forbid_reason(slice, id, input))
                    .collect();
                PolicyOutcome::Deny {
                    rules,
                    reason: reasons.join("; "),
                    risk: risk_of(&determining),
                }
            }
        }
    }

    fn forbid_reason(&self, slice: &PolicySet, id: &PolicyId, input: &EvalInput<'_>) -> String {
        if let Some(arg) = slice.annotation(id, "arg") {
            let label = input.labels.get(arg).cloned().unwrap_or_else(Label::empty);
            let sources: Vec<String> = label
                .source_strings()
                .iter()
                .map(|s| format!("`{s}`"))
                .collect();
            let integrity = if label.is_trusted() { "" } else { "untrusted " };
            let noun = if sources.len() == 1 {
                "source"
            } else {
                "sources"
            };
            return format!(
                "argument `{arg}` carries {integrity}{noun} {}",
                sources.join(", ")
            );
        }
        slice
            .annotation(id, "reason")
            .map_or_else(|| format!("forbidden by policy `{id}`"), str::to_owned)
    }

    fn request(&self, spec: &ToolSpec, input: &EvalInput<'_>) -> Result<Request, String> {
        let mut args = Vec::new();
        let mut labels = Vec::new();
        for (name, ty, _) in spec.policy_properties() {
            if let (Some(ty), Some(v)) = (ty, input.args.get(name)) {
                args.push((name.to_owned(), to_cedar(v, &ty)?));
            }
            let label = input.labels.get(name).cloned().unwrap_or_else(Label::empty);
            labels.push((name.to_owned(), label_expr(&label)?));
        }
        let facts = self
            .facts
            .get(spec.id())
            .into_iter()
            .flatten()
            .map(|f| (f.key(), RestrictedExpression::new_bool(f.holds(input.args))))
            .collect::<Vec<_>>();
        let origin = input.delegation.first().map_or(input.agent, String::as_str);
        let record = |pairs: Vec<(String, RestrictedExpression)>| {
            RestrictedExpression::new_record(pairs).map_err(|e| e.to_string())
        };
        let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
        let context = Context::from_pairs([
            ("args".to_owned(), record(args)?),
            ("labels".to_owned(), record(labels)?),
            ("facts".to_owned(), record(facts)?),
            (
                "taint".to_owned(),
                RestrictedExpression::new_string(input.taint.to_owned()),
            ),
            (
                "delegation".to_owned(),
                record(vec![
                    (
                        "origin".to_owned(),
                        RestrictedExpression::new_string(origin.to_owned()),
                    ),
                    ("depth".to_owned(), long(input.delegation.len() as u64)),
                    (
                        "hops".to_owned(),
                        RestrictedExpression::new_set(
                            input
                                .delegation
                                .iter()
                                .map(|h| RestrictedExpression::new_string(h.clone())),
                        ),
                    ),
                ])?,
            ),
            (
                "usage".to_owned(),
                record(vec![
                    ("agent_calls".to_owned(), long(input.usage.0)),
                    ("session_calls".to_owned(), long(input.usage.1)),
                ])?,
            ),
            (
                "now".to_owned(),
                record(vec![
                    ("unix".to_owned(), long(input.now.unix_millis() / 1000)),
                    ("minute_of_day".to_owned(), long(input.now.minute_of_day())),
                    ("weekday".to_owned(), long(input.now.weekday())),
                ])?,
            ),
        ])
        .map_err(|e| e.to_string())?;
        Request::new(
            EntityTypes::uid(&self.types.agent, input.agent),
            EntityTypes::uid(&self.types.action, &input.tool.to_string()),
            EntityTypes::uid(&self.types.server, input.tool.server()),
            context,
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())
    }
}

fn label_expr(label: &Label) -> Result<RestrictedExpression, String> {
    let sources = label
        .sources()
        .map(|s| RestrictedExpression::new_string(s.as_str().to_owned()));
    let kinds: BTreeSet<&str> = label.sources().map(|s| s.kind()).collect();
    RestrictedExpression::new_record([
        ("sources".to_owned(), RestrictedExpression::new_set(sources)),
        (
            "kinds".to_owned(),
            RestrictedExpression::new_set(
                kinds
                    .into_iter()
                    .map(|k| RestrictedExpression::new_string(k.to_owned())),
            ),
        ),
        (
            "trusted".to_owned(),
            RestrictedExpression::new_bool(label.is_trusted()),
        ),
    ])
    .map_err(|e| e.to_string())
}

fn to_cedar(v: &Value, ty: &PolicyType) -> Result<RestrictedExpression, String> {
    Ok(match (ty, v) {
        (PolicyType::String, Value::String(s)) => RestrictedExpression::new_string(s.clone()),
        (PolicyType::Bool, Value::Bool(b)) => RestrictedExpression::new_bool(*b),
        (PolicyType::Long, Value::Number(n)) => {
            let n = n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64));
            RestrictedExpression::new_long(n.ok_or("integer out of range")?)
        }
        (PolicyType::Decimal, Value::Number(n)) => {
            let text = n
                .as_f64()
                .and_then(decimal_text)
                .ok_or("number out of the policy's decimal range")?;
            RestrictedExpression::new_decimal(text)
        }
        (PolicyType::Set(inner), Value::Array(items)) => RestrictedExpression::new_set(
            items
                .iter()
                .map(|i| to_cedar(i, inner))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        (PolicyType::Record(attrs), Value::Object(map)) => {
            let mut pairs = Vec::new();
            for (name, ty, _) in attrs {
                if let Some(v) = map.get(name) {
                    pairs.push((name.clone(), to_cedar(v, ty)?));
                }
            }
            RestrictedExpression::new_record(pairs).map_err(|e| e.to_string())?
        }
        _ => return Err(format!("value `{v}` does not fit the declared type")),
    })
}

/// A Cedar `decimal` literal for `f` (four fraction digits), if in range.
pub(crate) fn decimal_text(f: f64) -> Option<String> {
    (f.is_finite() && f.abs() < 900_000_000_000_000.0).then(|| format!("{f:.4}"))
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, Error> {
    let ty = cedar_policy::EntityTypeName::from_str(ty)
        .map_err(|e| Error::PolicyValidation(e.to_string()))?;
    Ok(EntityUid::from_type_name_and_id(
        ty,
        cedar_policy::EntityId::new(id),
    ))
}

fn add(set: &mut PolicySet, policy: Policy) -> Result<(), Error> {
    set.add(policy).map_err(|e| Error::PolicyParse {
        file: "(slice)".to_owned(),
        message: e.to_string(),
    })
}

fn add_text(all: &mut PolicySet, file: &str, text: &str) -> Result<(), Error> {
    let parsed = PolicySet::from_str(text).map_err(|e| Error::PolicyParse {
        file: file.to_owned(),
        message: parse_message(text, &e),
    })?;
    if parsed.templates().next().is_some() {
        return Err(Error::PolicyParse {
            file: file.to_owned(),
            message: "templates are not supported".to_owned(),
        });
    }
    for (i, policy) in parsed.policies().enumerate() {
        let id = PolicyId::new(format!("{file}#{i}"));
        add(all, policy.new_id(id))?;
    }
    Ok(())
}

fn parse_message(text: &str, e: &cedar_policy::ParseErrors) -> String {
    format!("{}{e}", location(text, e).trim_start_matches(' '))
}

/// ` (line L, column C)` of the first label of `diagnostic` in `text`, or nothing.
fn location(text: &str, diagnostic: &dyn miette::Diagnostic) -> String {
    diagnostic
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| {
            let before = text.get(..l.offset()).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |s| s.chars().count()) + 1;
            format!(" (line {line}, column {col})")
        })
        .unwrap_or_default()
}

fn cedar_type(ty: &PolicyType) -> Value {
    match ty {
        PolicyType::String => json!({"type": "String"}),
        PolicyType::Long => json!({"type": "Long"}),
        PolicyType::Bool => json!({"type": "Boolean"}),
        PolicyType::Decimal => json!({"type": "Extension", "name": "decimal"}),
        PolicyType::Set(inner) => json!({"type": "Set", "element": cedar_type(inner)}),
        PolicyType::Record(attrs) => {
            let attributes: Map<String, Value> = attrs
                .iter()
                .map(|(n, t, req)| {
                    let mut v = cedar_type(t);
                    if let Value::Object(m) = &mut v {
                        m.insert("required".to_owned(), Value::Bool(*req));
                    }
                    (n.clone(), v)
                })
                .collect();
            json!({"type": "Record", "attributes": attributes})
        }
    }
}

/// The Cedar schema (JSON form) for `tools`.
pub(crate) fn cedar_schema_json(
    tools: &BTreeMap<ToolId, ToolSpec>,
    facts: &BTreeMap<ToolId, Vec<Fact>>,
) -> Value {
    let label_type = json!({"type": "Record", "attributes": {
        "sources": {"type": "Set", "element": {"type": "String"}},
        "kinds": {"type": "Set", "element": {"type": "String"}},
        "trusted": {"type": "Boolean"}
    }});
    let mut actions = Map::new();
    for id in tools.keys() {
        actions.insert(format!("{}/*", id.server()), json!({}));
    }
    for (id, spec) in tools {
        let mut args = Vec::new();
        let mut labels = Map::new();
        for (name, ty, required) in spec.policy_properties() {
            if let Some(ty) = ty {
                args.push((name.to_owned(), ty, required));
            }
            labels.insert(name.to_owned(), label_type.clone());
        }
        let fact_attrs: Map<String, Value> = facts
            .get(id)
            .into_iter()
            .flatten()
            .map(|f| (f.key(), json!({"type": "Boolean"})))
            .collect();
        let context = json!({"type": "Record", "attributes": {
            "args": cedar_type(&PolicyType::Record(args)),
            "labels": {"type": "Record", "attributes": labels},
            "facts": {"type": "Record", "attributes": fact_attrs},
            "taint": {"type": "String"},
            "delegation": {"type": "Record", "attributes": {
                "origin": {"type": "String"},
                "depth": {"type": "Long"},
                "hops": {"type": "Set", "element": {"type": "String"}}
            }},
            "usage": {"type": "Record", "attributes": {
                "agent_calls": {"type": "Long"},
                "session_calls": {"type": "Long"}
            }},
            "now": {"type": "Record", "attributes": {
                "unix": {"type": "Long"},
                "minute_of_day": {"type": "Long"},
                "weekday": {"type": "Long"}
            }}
        }});
        actions.insert(
            id.to_string(),
            json!({
                "memberOf": [{"id": format!("{}/*", id.server())}],
                "appliesTo": {"principalTypes": ["Agent"], "resourceTypes": ["Server"], "context": context}
            }),
        );
    }
    json!({"": {
        "entityTypes": {
            "Agent": {"memberOfTypes": ["AgentGroup"]},
            "AgentGroup": {},
            "Server": {}
        },
        "actions": actions
    }})
}
