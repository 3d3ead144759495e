//! The Cedar side: schema generated from the tool specs, strict validation, slicing by agent,
//! evaluation that denies on any error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityUid,
    Policy, PolicyId, PolicySet, PrincipalConstraint, Request, Schema, ValidationMode, Validator,
};
use cedar_policy_core::ast::{Name, RestrictedExpr, Value as CedarValue};
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
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
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "requests are valid by construction; tests check them"
        )
    )]
    schema: Schema,
    entities: Entities,
    globals: Slice,
    by_agent: HashMap<String, Slice>,
    pub(crate) tools: BTreeMap<ToolId, ToolSpec>,
    /// Per tool, what every request for it shares, built at load (a reload or a tool
    /// re-registration builds a new bundle, so a skeleton never outlives its tool spec).
    skeletons: HashMap<ToolId, Skeleton>,
    pub(crate) limits: BTreeMap<String, crate::limits::RuleLimits>,
    pub(crate) manifest_cedar: String,
    pub(crate) hash: String,
    pub(crate) warnings: Vec<String>,
    authorizer: Authorizer,
    types: EntityTypes,
    /// The annotations evaluation reads, per policy, read once at load: asking a `PolicySet`
    /// for an annotation runs the Cedar parser on the key at every call.
    notes: HashMap<PolicyId, Notes>,
    /// The `user` label (the usual default) as a Cedar value, built once.
    user_label: (Label, CedarValue),
    /// The name of Cedar's `decimal` constructor.
    decimal: Name,
}

/// The fixed parts of every request for one tool: its action and resource, and the typed
/// properties and facts its context carries, in the shape the generated schema declares.
#[derive(Debug)]
struct Skeleton {
    action: EntityUid,
    resource: EntityUid,
    /// `(name, policy type)` of each declared top-level argument; `None` when policies cannot
    /// see its value (it still gets a label).
    properties: Vec<(String, Option<PolicyType>)>,
    facts: Vec<(String, Fact)>,
}

/// The policies that can apply to one agent, and among them, per tool an action constraint
/// names, those whose action constraint can match that tool.
///
/// Dropping a policy whose action constraint cannot match is exact: Cedar tests the scope
/// before the condition (`scope && condition`, short-circuit), so such a policy neither applies
/// nor errors. Action constraints are read conservatively: `action` (any), or a group or id that
/// is not a known tool or `<server>/*` group, keeps the policy for every tool.
#[derive(Debug)]
struct Slice {
    all: PolicySet,
    by_tool: HashMap<ToolId, PolicySet>,
}

impl Slice {
    fn new(all: PolicySet, tools: &BTreeMap<ToolId, ToolSpec>) -> Result<Self, Error> {
        let named: BTreeSet<ToolId> = all
            .policies()
            .flat_map(|p| match p.action_constraint() {
                ActionConstraint::Eq(u) => vec![u],
                ActionConstraint::In(us) => us,
                ActionConstraint::Any => Vec::new(),
            })
            .filter_map(|u| ToolId::parse(u.id().unescaped()).ok())
            .filter(|t| tools.contains_key(t))
            .collect();
        let mut by_tool = HashMap::new();
        for tool in named {
            let mut set = PolicySet::new();
            for p in all.policies() {
                if may_match(p, &tool, tools) {
                    add(&mut set, p.clone())?;
                }
            }
            by_tool.insert(tool, set);
        }
        Ok(Self { all, by_tool })
    }

    fn for_tool(&self, tool: &ToolId) -> &PolicySet {
        self.by_tool.get(tool).unwrap_or(&self.all)
    }
}

/// Whether `policy`'s action constraint can match the action of `tool` (see [`Slice`]).
fn may_match(policy: &Policy, tool: &ToolId, tools: &BTreeMap<ToolId, ToolSpec>) -> bool {
    let excludes = |u: &EntityUid| {
        if u.type_name().to_string() != "Action" {
            return false;
        }
        let id = u.id().unescaped();
        if let Some(server) = id.strip_suffix("/*") {
            return server != tool.server();
        }
        ToolId::parse(id).is_ok_and(|t| t != *tool && tools.contains_key(&t))
    };
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(u) => !excludes(&u),
        ActionConstraint::In(us) => !us.iter().all(excludes),
    }
}

/// The annotations of one policy that evaluation reads.
#[derive(Debug, Default)]
struct Notes {
    id: Option<String>,
    risk: Option<String>,
    approval: Option<String>,
    arg: Option<String>,
    reason: Option<String>,
}

impl Notes {
    fn of(policy: &Policy) -> Self {
        let get = |key: &str| policy.annotation(key).map(str::to_owned);
        Self {
            id: get("id"),
            risk: get("risk"),
            approval: get("approval"),
            arg: get("arg"),
            reason: get("reason"),
        }
    }
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
        let schema_json = cedar_schema_json(&tools, &compiled.facts, &manifest.server_groups());
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
        let mut global_set = PolicySet::new();
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
                _ => add(&mut global_set, policy.clone())?,
            }
        }
        let agent_ids: BTreeSet<String> = by_agent_policies
            .keys()
            .cloned()
            .chain(groups_of.keys().cloned())
            .collect();
        let mut by_agent = HashMap::new();
        for agent in agent_ids {
            let mut set = global_set.clone();
            for p in by_agent_policies.get(&agent).into_iter().flatten() {
                add(&mut set, p.clone())?;
            }
            for g in groups_of.get(&agent).into_iter().flatten() {
                for p in by_group.get(g).into_iter().flatten() {
                    add(&mut set, p.clone())?;
                }
            }
            by_agent.insert(agent, Slice::new(set, &tools)?);
        }
        let globals = Slice::new(global_set, &tools)?;

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
        let types = EntityTypes::new()?;
        let skeletons = tools
            .iter()
            .map(|(id, spec)| {
                let skeleton = Skeleton {
                    action: EntityTypes::uid(&types.action, &id.to_string()),
                    resource: EntityTypes::uid(&types.server, id.server()),
                    properties: spec
                        .policy_properties()
                        .map(|(name, ty, _)| (name.to_owned(), ty))
                        .collect(),
                    facts: compiled
                        .facts
                        .get(id)
                        .into_iter()
                        .flatten()
                        .map(|f| (f.key(), f.clone()))
                        .collect(),
                };
                (id.clone(), skeleton)
            })
            .collect();
        Ok(Self {
            schema,
            entities,
            globals,
            by_agent,
            tools,
            skeletons,
            limits: compiled.limits,
            manifest_cedar: compiled.cedar,
            hash,
            warnings,
            authorizer: Authorizer::new(),
            types,
            notes: all
                .policies()
                .map(|p| (p.id().clone(), Notes::of(p)))
                .collect(),
            user_label: (Label::user(), label_value(&Label::user())),
            decimal: Name::parse_unqualified_name("decimal")
                .map_err(|e| Error::PolicyValidation(e.to_string()))?,
        })
    }

    /// The slice of the policy set that can apply to `agent`.
    fn slice(&self, agent: &str) -> &Slice {
        self.by_agent.get(agent).unwrap_or(&self.globals)
    }

    /// Number of policies in the slice for `agent` (for tests and benchmarks).
    pub(crate) fn slice_len(&self, agent: &str) -> usize {
        self.slice(agent).all.policies().count()
    }

    /// Number of policies evaluated for `agent` calling `tool`.
    pub(crate) fn tool_slice_len(&self, agent: &str, tool: &ToolId) -> usize {
        self.slice(agent).for_tool(tool).policies().count()
    }

    /// Evaluates a call. Any error, in the request, the context or any policy, is a deny.
    pub(crate) fn evaluate(&self, input: &EvalInput<'_>) -> PolicyOutcome {
        let fail = |reason: String| PolicyOutcome::Deny {
            rules: vec!["policy-error".to_owned()],
            reason,
            risk: None,
        };
        let Some(skeleton) = self.skeletons.get(input.tool) else {
            return fail(format!("tool `{}` has no policy schema", input.tool));
        };
        let request = match self.request(skeleton, input) {
            Ok(r) => r,
            Err(e) => return fail(format!("the call does not fit the policy schema: {e}")),
        };
        let slice = self.slice(input.agent).for_tool(input.tool);
        let response = self
            .authorizer
            .is_authorized(&request, slice, &self.entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
        let rule_of = |id: &PolicyId| {
            self.note(id, |n| &n.id)
                .map_or_else(|| id.to_string(), str::to_owned)
        };
        let risk_of = |ids: &[&PolicyId]| {
            ids.iter()
                .find_map(|id| self.note(id, |n| &n.risk))
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
                    .any(|id| self.note(id, |n| &n.approval) == Some("human")),
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
                    .map(|id| self.forbid_reason(id, input))
                    .collect();
                PolicyOutcome::Deny {
                    rules,
                    reason: reasons.join("; "),
                    risk: risk_of(&determining),
                }
            }
        }
    }

    /// One annotation of policy `id`, as read at load.
    fn note(&self, id: &PolicyId, field: impl Fn(&Notes) -> &Option<String>) -> Option<&str> {
        self.notes.get(id).and_then(|n| field(n).as_deref())
    }

    fn forbid_reason(&self, id: &PolicyId, input: &EvalInput<'_>) -> String {
        if let Some(arg) = self.note(id, |n| &n.arg) {
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
        self.note(id, |n| &n.reason)
            .map_or_else(|| format!("forbidden by policy `{id}`"), str::to_owned)
    }

    /// The Cedar request for a call, built from typed values on the tool's skeleton.
    ///
    /// The context is built directly as Cedar values (`cedar_policy_core::ast::Value`), not as
    /// restricted expressions that Cedar would then evaluate into the same values: building and
    /// evaluating the expression tree cost more than Cedar's evaluation of the policies. The
    /// values are exactly those the evaluation would give (`context_matches_the_json_form` holds
    /// the two together against Cedar's own schema-directed JSON parser).
    ///
    /// It is not checked against the schema here (`Request::new(.., None)`): the schema check
    /// re-derived, per call, what construction already guarantees. The context holds exactly the
    /// attributes the generated schema declares for this action — `args` only the declared
    /// arguments that are present, each converted by `to_cedar` from the same `PolicyType` the
    /// schema was generated from (a value that does not fit is an error, hence a denial); a
    /// required argument is present because the strict parser checked the tool's JSON Schema
    /// before policy; `labels` one record per declared argument; `facts` one boolean per
    /// compiled fact; the fixed records with their fixed types. Principal, action and resource
    /// have the schema's entity types and the action is one the schema declares (the skeleton
    /// exists only for known tools). The unit test `built_requests_fit_the_schema` validates
    /// built requests against the schema, and `mistyped_arguments_deny` shows a value that does
    /// not fit never reaches evaluation. Policies themselves are still strictly validated at
    /// load.
    fn request(&self, skeleton: &Skeleton, input: &EvalInput<'_>) -> Result<Request, String> {
        let mut args = Vec::with_capacity(skeleton.properties.len());
        let mut labels = Vec::with_capacity(skeleton.properties.len());
        let unlabeled = Label::empty();
        // Arguments mostly share a label (the default one): build each distinct label once
        // (cloning a value shares its parts); the `user` label is built at load.
        let mut built: Vec<(&Label, CedarValue)> = Vec::new();
        for (name, ty) in &skeleton.properties {
            if let (Some(ty), Some(v)) = (ty, input.args.get(name)) {
                args.push((name.as_str(), self.to_cedar(v, ty)?));
            }
            let label = input.labels.get(name).unwrap_or(&unlabeled);
            let value = if *label == self.user_label.0 {
                self.user_label.1.clone()
            } else if let Some((_, v)) = built.iter().find(|(l, _)| *l == label) {
                v.clone()
            } else {
                let v = label_value(label);
                built.push((label, v.clone()));
                v
            };
            labels.push((name.as_str(), value));
        }
        let facts = skeleton
            .facts
            .iter()
            .map(|(key, f)| (key.as_str(), CedarValue::from(f.holds(input.args))));
        let origin = input.delegation.first().map_or(input.agent, String::as_str);
        let long = |n: u64| CedarValue::from(i64::try_from(n).unwrap_or(i64::MAX));
        let attributes = [
            ("args", record(args)),
            ("labels", record(labels)),
            ("facts", record(facts)),
            ("taint", CedarValue::from(input.taint)),
            (
                "delegation",
                record([
                    ("origin", CedarValue::from(origin)),
                    ("depth", long(input.delegation.len() as u64)),
                    (
                        "hops",
                        CedarValue::set(
                            input
                                .delegation
                                .iter()
                                .map(|h| CedarValue::from(h.as_str())),
                            None,
                        ),
                    ),
                ]),
            ),
            (
                "usage",
                record([
                    ("agent_calls", long(input.usage.0)),
                    ("session_calls", long(input.usage.1)),
                ]),
            ),
            (
                "now",
                record([
                    ("unix", long(input.now.unix_millis() / 1000)),
                    ("minute_of_day", long(input.now.minute_of_day())),
                    ("weekday", long(input.now.weekday())),
                ]),
            ),
        ];
        let mut context = BTreeMap::new();
        for (name, value) in attributes {
            context.insert(name.into(), value);
        }
        let context = Context::from(cedar_policy_core::ast::Context::Value(Arc::new(context)));
        Request::new(
            EntityTypes::uid(&self.types.agent, input.agent),
            skeleton.action.clone(),
            skeleton.resource.clone(),
            context,
            None,
        )
        .map_err(|e| e.to_string())
    }

    /// `v` as the Cedar value of type `ty` (an error when it does not fit).
    fn to_cedar(&self, v: &Value, ty: &PolicyType) -> Result<CedarValue, String> {
        Ok(match (ty, v) {
            (PolicyType::String, Value::String(s)) => CedarValue::from(s.as_str()),
            (PolicyType::Bool, Value::Bool(b)) => CedarValue::from(*b),
            (PolicyType::Long, Value::Number(n)) => {
                let n = n
                    .as_i64()
                    .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64));
                CedarValue::from(n.ok_or("integer out of range")?)
            }
            (PolicyType::Decimal, Value::Number(n)) => {
                let text = n
                    .as_f64()
                    .and_then(decimal_text)
                    .ok_or("number out of the policy's decimal range")?;
                // Cedar's own `decimal` constructor makes the extension value.
                let call = RestrictedExpr::call_extension_fn(
                    self.decimal.clone(),
                    [RestrictedExpr::val(text)],
                );
                RestrictedEvaluator::new(Extensions::all_available())
                    .interpret(call.as_borrowed())
                    .map_err(|e| e.to_string())?
            }
            (PolicyType::Set(inner), Value::Array(items)) => CedarValue::set(
                items
                    .iter()
                    .map(|i| self.to_cedar(i, inner))
                    .collect::<Result<Vec<_>, _>>()?,
                None,
            ),
            (PolicyType::Record(attrs), Value::Object(map)) => {
                let mut pairs = Vec::with_capacity(attrs.len());
                for (name, ty, _) in attrs {
                    if let Some(v) = map.get(name) {
                        pairs.push((name.as_str(), self.to_cedar(v, ty)?));
                    }
                }
                record(pairs)
            }
            _ => return Err(format!("value `{v}` does not fit the declared type")),
        })
    }
}

/// A label as the Cedar record the schema declares: `sources`, `kinds` and `trusted`.
fn label_value(label: &Label) -> CedarValue {
    let sources = label.sources().map(|s| CedarValue::from(s.as_str()));
    let kinds: BTreeSet<&str> = label.sources().map(|s| s.kind()).collect();
    record([
        ("sources", CedarValue::set(sources, None)),
        (
            "kinds",
            CedarValue::set(kinds.into_iter().map(CedarValue::from), None),
        ),
        ("trusted", CedarValue::from(label.is_trusted())),
    ])
}

/// A Cedar record. Inserting a handful of attributes one by one is cheaper than Cedar's own
/// constructor, which collects, sorts and bulk-builds; a repeated name keeps the last value
/// either way (names here are distinct: schema properties, fact keys, fixed attributes).
fn record<'a>(pairs: impl IntoIterator<Item = (&'a str, CedarValue)>) -> CedarValue {
    let mut map = BTreeMap::new();
    for (name, value) in pairs {
        map.insert(name.into(), value);
    }
    CedarValue::record_arc(Arc::new(map), None)
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

/// The Cedar schema (JSON form) for `tools`, with a `<server>/*` action group for each server
/// of `groups` and each server of a tool.
pub(crate) fn cedar_schema_json(
    tools: &BTreeMap<ToolId, ToolSpec>,
    facts: &BTreeMap<ToolId, Vec<Fact>>,
    groups: &BTreeSet<String>,
) -> Value {
    let label_type = json!({"type": "Record", "attributes": {
        "sources": {"type": "Set", "element": {"type": "String"}},
        "kinds": {"type": "Set", "element": {"type": "String"}},
        "trusted": {"type": "Boolean"}
    }});
    let mut actions = Map::new();
    for server in groups {
        actions.insert(format!("{server}/*"), json!({}));
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MANIFEST: &str = r#"
trust_domain = "example.org"
[agents.a]
id = "spiffe://example.org/agent/a"
[servers.s.tools.t]
input_schema = { type = "object", required = ["name", "n", "opts"], properties = { name = { type = "string" }, n = { type = "integer" }, x = { type = "number" }, flag = { type = "boolean" }, tags = { type = "array", items = { type = "string" } }, opts = { type = "object", required = ["k"], properties = { k = { type = "integer" }, j = { type = "string" } } }, color = { enum = ["red", "blue"] }, free = {} } }
[servers.s.tools.u]
input_schema = { type = "object", properties = { n = { type = "integer" } } }
[[allow]]
id = "r"
agents = ["a"]
tools = ["s/t"]
[allow.args.name]
max_length = 5
regex = "^[a-z]+$"
[allow.args.n]
max = 100
"#;

    const AGENT: &str = "spiffe://example.org/agent/a";

    fn bundle() -> PolicyBundle {
        let manifest = Manifest::from_toml_str(MANIFEST).unwrap();
        PolicyBundle::build(&manifest, &[], &[]).unwrap()
    }

    fn eval(bundle: &PolicyBundle, tool: &str, args: &Value) -> PolicyOutcome {
        let tool = ToolId::parse(tool).unwrap();
        let args = args.as_object().unwrap();
        let labels = args
            .keys()
            .map(|k| (k.clone(), Label::user()))
            .collect::<BTreeMap<_, _>>();
        bundle.evaluate(&EvalInput {
            agent: AGENT,
            tool: &tool,
            args,
            labels: &labels,
            taint: "trusted",
            delegation: &[],
            usage: (0, 0),
            now: Timestamp::from_unix_millis(1_795_464_229_000),
        })
    }

    /// Requests are built without Cedar's per-request schema check; this holds the builder to
    /// the schema for every kind of argument, present or absent, with and without facts.
    #[test]
    fn built_requests_fit_the_schema() {
        let b = bundle();
        let calls = [
            ("s/t", json!({"name": "abc", "n": 7, "opts": {"k": 1}})),
            (
                "s/t",
                json!({"name": "ABCDEFG", "n": 700, "x": 1.5, "flag": true, "tags": ["a", "b"],
                       "opts": {"k": 1, "j": "z"}, "color": "red", "free": {"q": [1]}}),
            ),
            ("s/u", json!({})),
            ("s/u", json!({"n": -3})),
        ];
        for (tool, args) in calls {
            let id = ToolId::parse(tool).unwrap();
            let map = args.as_object().unwrap();
            let labels = map
                .keys()
                .map(|k| (k.clone(), Label::user()))
                .collect::<BTreeMap<_, _>>();
            let input = EvalInput {
                agent: AGENT,
                tool: &id,
                args: map,
                labels: &labels,
                taint: "untrusted",
                delegation: &["spiffe://example.org/agent/o".to_owned()],
                usage: (3, 4),
                now: Timestamp::from_unix_millis(1_795_464_229_000),
            };
            let request = b.request(&b.skeletons[&id], &input).unwrap();
            let checked = Request::new(
                request.principal().unwrap().clone(),
                request.action().unwrap().clone(),
                request.resource().unwrap().clone(),
                request.context().unwrap().clone(),
                Some(&b.schema),
            );
            assert!(checked.is_ok(), "{tool} {args}: {:?}", checked.err());
        }
    }

    /// The context built directly as Cedar values equals the one Cedar's schema-directed JSON
    /// parser makes from the same call written as JSON (Cedar's documented context form):
    /// strings, longs, decimals, booleans, sets, nested records, labels with several sources,
    /// delegation and facts.
    #[test]
    fn context_matches_the_json_form() {
        let manifest = Manifest::from_toml_str(MANIFEST).unwrap();
        let b = PolicyBundle::build(&manifest, &[], &[]).unwrap();
        let web = Label::untrusted(crate::label::Source::new("web:evil.example").unwrap());
        let mixed = Label::user().join(&web).join(&Label::untrusted(
            crate::label::Source::new("tool:s/u").unwrap(),
        ));
        let label_json = |l: &Label| {
            let kinds: BTreeSet<&str> = l.sources().map(|s| s.kind()).collect();
            json!({"sources": l.source_strings(), "kinds": kinds, "trusted": l.is_trusted()})
        };
        let calls = [
            (
                json!({"name": "abc", "n": 7, "opts": {"k": 1}}),
                vec![("name", Label::user()), ("n", web.clone())],
                vec![],
            ),
            (
                json!({"name": "ABCDEFG\u{e9}\"", "n": -700, "x": 1.5, "flag": true,
                       "tags": ["a", "b", "a"], "opts": {"k": 1, "j": "z"}, "color": "red",
                       "free": {"q": [1]}}),
                vec![
                    ("tags", mixed.clone()),
                    ("x", web.clone()),
                    ("opts", mixed.clone()),
                ],
                vec![
                    "spiffe://example.org/agent/o".to_owned(),
                    "spiffe://example.org/agent/p".to_owned(),
                ],
            ),
        ];
        let id = ToolId::parse("s/t").unwrap();
        let skeleton = &b.skeletons[&id];
        for (args, given, delegation) in calls {
            let map = args.as_object().unwrap();
            let labels: BTreeMap<String, Label> = given
                .iter()
                .map(|(k, l)| ((*k).to_owned(), l.clone()))
                .collect();
            let now = Timestamp::from_unix_millis(1_795_464_229_123);
            let input = EvalInput {
                agent: AGENT,
                tool: &id,
                args: map,
                labels: &labels,
                taint: "untrusted",
                delegation: &delegation,
                usage: (3, 4),
                now,
            };
            let built = b.request(skeleton, &input).unwrap();
            let typed_args: Map<String, Value> = skeleton
                .properties
                .iter()
                .filter(|(_, ty)| ty.is_some())
                .filter_map(|(n, _)| map.get(n).map(|v| (n.clone(), v.clone())))
                .map(|(n, v)| {
                    // Cedar's JSON form writes a decimal as an extension call.
                    let v = if n == "x" {
                        json!({"__extn": {"fn": "decimal", "arg": decimal_text(v.as_f64().unwrap()).unwrap()}})
                    } else {
                        v
                    };
                    (n, v)
                })
                .collect();
            let label_map: Map<String, Value> = skeleton
                .properties
                .iter()
                .map(|(n, _)| {
                    let l = labels.get(n).cloned().unwrap_or_else(Label::empty);
                    (n.clone(), label_json(&l))
                })
                .collect();
            let facts: Map<String, Value> = skeleton
                .facts
                .iter()
                .map(|(k, f)| (k.clone(), Value::Bool(f.holds(map))))
                .collect();
            assert!(!facts.is_empty());
            let expected = json!({
                "args": typed_args,
                "labels": label_map,
                "facts": facts,
                "taint": "untrusted",
                "delegation": {
                    "origin": delegation.first().map_or(AGENT, String::as_str),
                    "depth": delegation.len(),
                    "hops": delegation,
                },
                "usage": {"agent_calls": 3, "session_calls": 4},
                "now": {"unix": 1_795_464_229, "minute_of_day": now.minute_of_day(),
                        "weekday": now.weekday()},
            });
            let parsed =
                Context::from_json_value(expected, Some((&b.schema, &skeleton.action))).unwrap();
            assert_eq!(built.context().unwrap(), &parsed, "{args}");
        }
    }

    /// A value that does not fit the declared type (the strict parser bypassed) never reaches
    /// Cedar: the call is denied as a policy error.
    #[test]
    fn mistyped_arguments_deny() {
        let b = bundle();
        let ok = json!({"name": "abc", "n": 7, "opts": {"k": 1}});
        assert!(matches!(eval(&b, "s/t", &ok), PolicyOutcome::Allow { .. }));
        for bad in [
            json!({"name": 5, "n": 7, "opts": {"k": 1}}),
            json!({"name": "abc", "n": "7", "opts": {"k": 1}}),
            json!({"name": "abc", "n": 7, "opts": {"k": "1"}}),
            json!({"name": "abc", "n": 7, "opts": {"k": 1}, "tags": [1]}),
            json!({"name": "abc", "n": 7, "opts": {"k": 1}, "flag": "yes"}),
        ] {
            match eval(&b, "s/t", &bad) {
                PolicyOutcome::Deny { rules, .. } => {
                    assert_eq!(rules, vec!["policy-error".to_owned()], "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // A required argument missing errors in the policy that reads it: still a denial.
        assert!(matches!(
            eval(&b, "s/t", &json!({"name": "abc", "opts": {"k": 1}})),
            PolicyOutcome::Deny { .. }
        ));
    }

    /// Skeletons come from the tool specs of their bundle: a tool re-registered with another
    /// schema gets a new skeleton (a stale one would not type its new argument).
    #[test]
    fn skeletons_follow_the_tool_specs() {
        let manifest = Manifest::from_toml_str(MANIFEST).unwrap();
        let b = PolicyBundle::build(&manifest, &[], &[]).unwrap();
        let u = ToolId::parse("s/u").unwrap();
        assert!(b.skeletons[&u].properties.iter().all(|(n, _)| n != "m"));
        let spec = ToolSpec::from_mcp_definition(
            "s",
            &json!({"name": "u", "inputSchema": {"type": "object",
                    "properties": {"n": {"type": "integer"}, "m": {"type": "string"}}}}),
        )
        .unwrap();
        let b = PolicyBundle::build(&manifest, &[], &[spec]).unwrap();
        assert!(
            b.skeletons[&u]
                .properties
                .iter()
                .any(|(n, t)| n == "m" && *t == Some(PolicyType::String))
        );
    }

    /// Per-tool slices keep every policy whose action constraint can match the tool (the exact
    /// action, its server's group, any action) and drop only those naming other tools.
    #[test]
    fn tool_slices_keep_what_can_match() {
        let manifest = Manifest::from_toml_str(MANIFEST).unwrap();
        let files = [PolicyFile {
            name: "extra.cedar".to_owned(),
            text: r#"
@id("group") forbid (principal, action in Action::"s/*", resource) when { context.taint == "untrusted" };
@id("any") forbid (principal, action, resource) when { context.usage.agent_calls > 100 };
@id("other") forbid (principal, action == Action::"s/u", resource);
@id("u") permit (principal, action == Action::"s/u", resource);
"#
            .to_owned(),
        }];
        let b = PolicyBundle::build(&manifest, &files, &[]).unwrap();
        let t = ToolId::parse("s/t").unwrap();
        let u = ToolId::parse("s/u").unwrap();
        let all = b.slice_len(AGENT);
        // `r`'s permit and its three argument forbids (length, regex, max), `group` and `any`.
        assert_eq!(b.tool_slice_len(AGENT, &t), 6);
        assert!(b.tool_slice_len(AGENT, &t) < all);
        // `group`, `any`, `other` and `u`.
        assert_eq!(b.tool_slice_len(AGENT, &u), 4);
        let ok = json!({"name": "abc", "n": 7, "opts": {"k": 1}});
        assert!(matches!(eval(&b, "s/t", &ok), PolicyOutcome::Allow { .. }));
        let tool = t.clone();
        let args = ok.as_object().unwrap();
        let no_labels = BTreeMap::new();
        let input = |taint, calls| EvalInput {
            agent: AGENT,
            tool: &tool,
            args,
            labels: &no_labels,
            taint,
            delegation: &[],
            usage: (calls, 0),
            now: Timestamp::from_unix_millis(1_795_464_229_000),
        };
        for (taint, calls, rule) in [("untrusted", 0, "group"), ("trusted", 101, "any")] {
            match b.evaluate(&input(taint, calls)) {
                PolicyOutcome::Deny { rules, .. } => assert_eq!(rules, vec![rule.to_owned()]),
                other => panic!("{rule}: {other:?}"),
            }
        }
        assert!(matches!(
            eval(&b, "s/u", &json!({})),
            PolicyOutcome::Deny { .. }
        ));
    }
}
