//! The kernel: one decision per call, in a fixed order — request checks, strict arguments,
//! Cedar policy, stateful limits — then a certificate, a held call or a denial, always with a
//! decision record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cert::{
    Approval, CallCertificate, CertSigningKey, CertificateClaims, CertifiedIntent, CertifiedTool,
};
use crate::json::{hex, sha256_tag};
use crate::label::{Label, Labeled};
use crate::limits::{Charge, LimitState, RuleLimits};
use crate::manifest::{Manifest, check_spiffe_id};
use crate::policy::{EvalInput, PolicyBundle, PolicyFile, PolicyOutcome};
use crate::record::{DecisionRecord, RecordType, Verdict};
use crate::tool::{Arguments, ToolId, ToolSpec};
use crate::{Error, Timestamp};

/// One tool call to decide.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The caller's SPIFFE ID, as authenticated by the gateway.
    pub agent: String,
    /// Delegation chain, origin first (empty when the agent acts for itself).
    pub delegation: Vec<String>,
    /// Session id, if the transport has one.
    pub session: Option<String>,
    /// The tool called.
    pub tool: ToolId,
    /// The arguments exactly as received (JSON bytes).
    pub arguments: Vec<u8>,
    /// Labels of top-level arguments. Labels for arguments absent from the call are ignored.
    pub labels: BTreeMap<String, Label>,
    /// The label of arguments without an entry in `labels` (default: `user`, trusted). A caller
    /// that cannot vouch for unlabeled arguments sets an untrusted label here.
    pub default_label: Label,
    /// The reason the agent gives, with its provenance; its label joins the call's taint.
    pub intent: Option<Labeled<String>>,
}

impl CallRequest {
    /// A request with no delegation, session, labels or intent.
    pub fn new(agent: impl Into<String>, tool: ToolId, arguments: impl Into<Vec<u8>>) -> Self {
        Self {
            agent: agent.into(),
            delegation: Vec::new(),
            session: None,
            tool,
            arguments: arguments.into(),
            labels: BTreeMap::new(),
            default_label: Label::user(),
            intent: None,
        }
    }
}

/// A refused call: the rules that refused it and why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Rule ids: Cedar `@id`s or kernel rules (`strict-args`, `unknown-tool`, `default-deny`,
    /// `policy-error`, `rate-limit`, `budget`, `invalid-request`, `internal-error`).
    pub rules: Vec<String>,
    /// The reason a person reads.
    pub reason: String,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules: Vec<String> = self.rules.iter().map(|r| format!("`{r}`")).collect();
        write!(f, "{} (rule {})", self.reason, rules.join(", "))
    }
}

/// A call held for a human. Only the kernel that created it can turn it into a certificate,
/// once ([`Kernel::approve`]) or refuse it ([`Kernel::refuse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCall {
    id: String,
    claims: Box<CertificateClaims>,
    reason: String,
    expires: Timestamp,
}

impl PendingCall {
    /// The id of the hold (the id of its decision record).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What would be certified: agent, tool, args hash, labels, rules, risk.
    pub fn claims(&self) -> &CertificateClaims {
        &self.claims
    }

    /// Why the call is held.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// After this instant the hold can no longer be approved.
    pub fn expires(&self) -> Timestamp {
        self.expires
    }

    fn digest(&self) -> String {
        sha256_tag(&self.claims.canonical_bytes())
    }
}

/// The policy's answer alone (see [`Kernel::evaluate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluation {
    /// The policy allows the call (limits not checked).
    Allow {
        /// Rule ids of the permits that applied.
        rules: Vec<String>,
        /// Whether a permit asks for human approval.
        needs_approval: bool,
        /// `@risk` of the permits.
        risk: Option<String>,
    },
    /// The policy or the strict checks refuse the call.
    Deny(Denial),
}

/// The kernel's answer.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Forward the call with this certificate.
    Allow(CallCertificate),
    /// Hold the call until a human decides.
    NeedsApproval(PendingCall),
    /// Refuse the call.
    Deny(Denial),
}

/// A decision and the record to log before acting on it.
#[derive(Debug, Clone)]
pub struct Enforcement {
    /// What to do.
    pub decision: Decision,
    /// Append this to the log, durably, before forwarding or refusing.
    pub record: DecisionRecord,
    /// The strictly parsed arguments (forward exactly their canonical bytes), when they parsed.
    pub arguments: Option<Arguments>,
}

/// The decision kernel. `Send + Sync`: share it (e.g. in an `Arc`) between threads. The policy is
/// immutable; the stateful limits sit behind one internal mutex held only to read usage and to
/// check-and-charge limits, never while Cedar evaluates.
#[derive(Debug, Clone)]
pub struct Kernel {
    bundle: Arc<PolicyBundle>,
    manifest: Arc<Manifest>,
    files: Arc<Vec<PolicyFile>>,
    learned: Arc<Vec<ToolSpec>>,
    signer: Arc<CertSigningKey>,
    kid: String,
    state: Arc<Mutex<LimitState>>,
}

impl Kernel {
    /// Compiles the manifest's allowlist and the raw Cedar `files` against a schema generated
    /// from the manifest's declared tools plus `learned` tools, validates strictly, and slices.
    pub fn new(
        manifest: Manifest,
        files: Vec<PolicyFile>,
        learned: Vec<ToolSpec>,
        signer: CertSigningKey,
    ) -> Result<Self, Error> {
        let bundle = PolicyBundle::build(&manifest, &files, &learned)?;
        let kid = signer.verifying_key().key_id();
        Ok(Self {
            bundle: Arc::new(bundle),
            manifest: Arc::new(manifest),
            files: Arc::new(files),
            learned: Arc::new(learned),
            signer: Arc::new(signer),
            kid,
            state: Arc::new(Mutex::new(LimitState::default())),
        })
    }

    /// A kernel that also knows `tools` (e.g. learned from an upstream's `tools/list`; a spec
    /// replaces one with the same id), recompiled and revalidated. The new kernel shares this
    /// one's limit state, so swapping it in loses no counters.
    pub fn with_tools(&self, tools: Vec<ToolSpec>) -> Result<Self, Error> {
        let mut learned: BTreeMap<ToolId, ToolSpec> = self
            .learned
            .iter()
            .map(|t| (t.id().clone(), t.clone()))
            .collect();
        for t in tools {
            learned.insert(t.id().clone(), t);
        }
        let learned: Vec<ToolSpec> = learned.into_values().collect();
        let bundle = PolicyBundle::build(&self.manifest, &self.files, &learned)?;
        Ok(Self {
            bundle: Arc::new(bundle),
            learned: Arc::new(learned),
            ..self.clone()
        })
    }

    /// The kernel without the learned tool `id` (calls to it are then denied as unknown until
    /// it is learned again); the same kernel when it was not learned.
    pub fn without_tool(&self, id: &ToolId) -> Result<Self, Error> {
        if !self.learned.iter().any(|t| t.id() == id) {
            return Ok(self.clone());
        }
        let learned: Vec<ToolSpec> = self
            .learned
            .iter()
            .filter(|t| t.id() != id)
            .cloned()
            .collect();
        let bundle = PolicyBundle::build(&self.manifest, &self.files, &learned)?;
        Ok(Self {
            bundle: Arc::new(bundle),
            learned: Arc::new(learned),
            ..self.clone()
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A known tool.
    pub fn tool(&self, id: &ToolId) -> Option<&ToolSpec> {
        self.bundle.tools.get(id)
    }

    /// All known tools.
    pub fn tools(&self) -> impl Iterator<Item = &ToolSpec> {
        self.bundle.tools.values()
    }

    /// The Cedar the manifest's allowlist became.
    pub fn manifest_cedar(&self) -> &str {
        &self.bundle.manifest_cedar
    }

    /// `"sha256:<hex>"` of the policy bundle (compiled manifest, raw files, schema).
    pub fn policy_hash(&self) -> &str {
        &self.bundle.hash
    }

    /// Non-fatal findings at load (entries for tools not known yet, policies without `@id`).
    pub fn warnings(&self) -> &[String] {
        &self.bundle.warnings
    }

    /// The key id certificates are signed with.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// How many policies are evaluated for `agent` (the slice size).
    pub fn slice_len(&self, agent: &str) -> usize {
        self.bundle.slice_len(agent)
    }

    /// How many policies are evaluated for `agent` calling `tool`: the agent's slice narrowed
    /// to the policies whose action constraint can match the tool.
    pub fn tool_slice_len(&self, agent: &str, tool: &ToolId) -> usize {
        self.bundle.tool_slice_len(agent, tool)
    }

    /// The certificate audience for `server`.
    pub fn audience(&self, server: &str) -> String {
        self.manifest
            .servers()
            .get(server)
            .map_or_else(|| format!("Server::\"{server}\""), |s| s.audience.clone())
    }

    /// The label of a tool's output: its configured label joined with its inputs' labels.
    pub fn output_label<'a>(
        &self,
        tool: &ToolId,
        inputs: impl IntoIterator<Item = &'a Label>,
    ) -> Label {
        crate::label::propagate(&self.manifest.tool_output_label(tool), inputs)
    }

    /// The policy part alone, without side effects: request checks, strict arguments and Cedar
    /// against the current usage, but no limits are charged, no hold is registered and nothing
    /// is signed. For dry runs (`warden replay`, policy tests) and benchmarks.
    pub fn evaluate(&self, request: &CallRequest, now: Timestamp) -> Evaluation {
        let deny = |rule: &str, reason: String| {
            Evaluation::Deny(Denial {
                rules: vec![rule.to_owned()],
                reason,
            })
        };
        if let Err(reason) = check_spiffe_id(&request.agent) {
            return deny("invalid-request", reason);
        }
        let Some(spec) = self.bundle.tools.get(&request.tool) else {
            return deny(
                "unknown-tool",
                format!("tool `{}` is not known to the kernel", request.tool),
            );
        };
        let args = match spec.parse_arguments(&request.arguments) {
            Ok(args) => args,
            Err(e) => return deny("strict-args", e.to_string()),
        };
        let (labels, call_label) = call_labels(request, Some(&args));
        let Some(usage) = self
            .lock()
            .map(|s| s.usage(&request.agent, request.session.as_deref()))
        else {
            return deny("internal-error", "limit state is unusable".to_owned());
        };
        match self.bundle.evaluate(&EvalInput {
            agent: &request.agent,
            tool: &request.tool,
            args: args.as_map(),
            labels: &labels,
            taint: call_label.integrity().as_str(),
            delegation: &request.delegation,
            usage,
            now,
        }) {
            PolicyOutcome::Deny { rules, reason, .. } => Evaluation::Deny(Denial { rules, reason }),
            PolicyOutcome::Allow {
                rules,
                approval,
                risk,
            } => Evaluation::Allow {
                rules,
                needs_approval: approval,
                risk,
            },
        }
    }

    /// Decides `request` at `now`. Never panics and never fails: every problem is a denial with
    /// a record.
    pub fn enforce(
        &self,
        request: &CallRequest,
        now: Timestamp,
        rng: &mut (impl rand_core::CryptoRng + ?Sized),
    ) -> Enforcement {
        let id = random_id(rng);
        let mut record = DecisionRecord {
            v: 1,
            kind: RecordType::Decision,
            id: id.clone(),
            time: now.to_string(),
            decision: Verdict::Deny,
            agent: request.agent.clone(),
            delegation: request.delegation.clone(),
            session: request.session.clone(),
            tool: request.tool.to_string(),
            // Set from the parsed arguments, or from the raw bytes when the call is refused
            // before they parse (see `deny`).
            args_hash: String::new(),
            labels: BTreeMap::new(),
            taint: String::new(),
            rules: Vec::new(),
            reason: None,
            risk: None,
            certificate: None,
            pending: None,
            approver: None,
        };
        let deny = |mut record: DecisionRecord,
                    rules: Vec<String>,
                    reason: String,
                    arguments: Option<Arguments>| {
            if record.args_hash.is_empty() {
                record.args_hash = sha256_tag(&request.arguments);
            }
            record.decision = Verdict::Deny;
            record.rules = rules.clone();
            record.reason = Some(reason.clone());
            Enforcement {
                decision: Decision::Deny(Denial { rules, reason }),
                record,
                arguments,
            }
        };

        // Labels of present arguments; the call's taint joins them with the intent's label.
        let parsed_args = self
            .bundle
            .tools
            .get(&request.tool)
            .map(|spec| spec.parse_arguments(&request.arguments));
        let (labels, call_label) =
            call_labels(request, parsed_args.as_ref().and_then(|p| p.as_ref().ok()));
        record.labels = labels
            .iter()
            .map(|(k, l)| (k.clone(), l.source_strings()))
            .collect();
        record.taint = call_label.integrity().as_str().to_owned();

        if let Err(reason) = check_spiffe_id(&request.agent) {
            return deny(record, vec!["invalid-request".to_owned()], reason, None);
        }
        for hop in &request.delegation {
            if let Err(reason) = check_spiffe_id(hop) {
                return deny(
                    record,
                    vec!["invalid-request".to_owned()],
                    format!("delegation: {reason}"),
                    None,
                );
            }
        }
        let (Some(spec), Some(parsed)) = (self.bundle.tools.get(&request.tool), parsed_args) else {
            let reason = format!("tool `{}` is not known to the kernel", request.tool);
            return deny(record, vec!["unknown-tool".to_owned()], reason, None);
        };
        let args = match parsed {
            Ok(args) => args,
            Err(e) => return deny(record, vec!["strict-args".to_owned()], e.to_string(), None),
        };
        record.args_hash = args.hash().to_owned();

        let Some(usage) = self
            .lock()
            .map(|s| s.usage(&request.agent, request.session.as_deref()))
        else {
            return deny(
                record,
                vec!["internal-error".to_owned()],
                "limit state is unusable".to_owned(),
                Some(args),
            );
        };
        let outcome = self.bundle.evaluate(&EvalInput {
            agent: &request.agent,
            tool: &request.tool,
            args: args.as_map(),
            labels: &labels,
            taint: call_label.integrity().as_str(),
            delegation: &request.delegation,
            usage,
            now,
        });
        let (rules, approval, risk) = match outcome {
            PolicyOutcome::Deny {
                rules,
                reason,
                risk,
            } => {
                record.risk = risk;
                return deny(record, rules, reason, Some(args));
            }
            PolicyOutcome::Allow {
                rules,
                approval,
                risk,
            } => (rules, approval, risk),
        };
        record.rules = rules.clone();
        record.risk = risk.clone();

        let limited: Vec<(&str, &RuleLimits)> = rules
            .iter()
            .filter_map(|r| self.bundle.limits.get(r).map(|l| (r.as_str(), l)))
            .collect();
        let charge = Charge {
            agent: &request.agent,
            tool: &record.tool,
            session: request.session.as_deref(),
        };
        let charged = match self.lock() {
            None => Err(("internal-error", "limit state is unusable".to_owned())),
            Some(mut state) => state
                .charge(&limited, &charge, now, false)
                .map_err(|e| (e.rule, e.reason)),
        };
        if let Err((rule, reason)) = charged {
            return deny(record, vec![rule.to_owned()], reason, Some(args));
        }

        let claims = CertificateClaims {
            v: 1,
            id: id.clone(),
            kid: self.kid.clone(),
            aud: self.audience(request.tool.server()),
            issued: record.time.clone(),
            expires: now.plus(self.manifest.certificate_ttl()).to_string(),
            agent: request.agent.clone(),
            delegation: request.delegation.clone(),
            session: request.session.clone(),
            tool: CertifiedTool {
                server: request.tool.server().to_owned(),
                name: request.tool.name().to_owned(),
                definition_hash: spec.definition_hash().to_owned(),
            },
            args_hash: args.hash().to_owned(),
            labels: record.labels.clone(),
            taint: record.taint.clone(),
            intent: request.intent.as_ref().map(|i| CertifiedIntent {
                text: i.value().clone(),
                labels: i.label().source_strings(),
                integrity: i.label().integrity().as_str().to_owned(),
            }),
            decision: "allow".to_owned(),
            rules,
            risk,
            policy_hash: self.bundle.hash.clone(),
            approval: None,
        };
        if approval {
            let held_by: Vec<String> = claims.rules.iter().map(|r| format!("`{r}`")).collect();
            let reason = format!("rule {} requires human approval", held_by.join(", "));
            let pending = PendingCall {
                id: id.clone(),
                claims: Box::new(claims),
                reason: reason.clone(),
                expires: now.plus(self.manifest.approval_ttl()),
            };
            match self.lock() {
                Some(mut state) => {
                    state
                        .pending
                        .insert(id, (pending.digest(), pending.expires));
                }
                None => {
                    return deny(
                        record,
                        vec!["internal-error".to_owned()],
                        "limit state is unusable".to_owned(),
                        Some(args),
                    );
                }
            }
            record.decision = Verdict::NeedsApproval;
            record.reason = Some(reason);
            return Enforcement {
                decision: Decision::NeedsApproval(pending),
                record,
                arguments: Some(args),
            };
        }
        let certificate = CallCertificate::sign(claims, &self.signer);
        record.decision = Verdict::Allow;
        record.certificate = Some(certificate.clone());
        Enforcement {
            decision: Decision::Allow(certificate),
            record,
            arguments: Some(args),
        }
    }

    /// A human approved a held call: the certificate (with the approver and time) and a
    /// `warden.approval` record. Fails if this kernel did not hold the call, if it was already
    /// settled (single use), or if the hold expired.
    pub fn approve(
        &self,
        pending: &PendingCall,
        approver: &str,
        now: Timestamp,
        rng: &mut (impl rand_core::CryptoRng + ?Sized),
    ) -> Result<(CallCertificate, DecisionRecord), Error> {
        self.settle(pending, now)?;
        let mut claims = (*pending.claims).clone();
        claims.id = random_id(rng);
        claims.kid = self.kid.clone();
        claims.issued = now.to_string();
        claims.expires = now.plus(self.manifest.certificate_ttl()).to_string();
        claims.approval = Some(Approval {
            approver: approver.to_owned(),
            time: now.to_string(),
        });
        let certificate = CallCertificate::sign(claims, &self.signer);
        let mut record = approval_record(
            pending,
            approver,
            now,
            certificate.claims().id.clone(),
            Verdict::Allow,
        );
        record.certificate = Some(certificate.clone());
        Ok((certificate, record))
    }

    /// A human (or the approval timeout) refused a held call: a `warden.approval` deny record.
    pub fn refuse(
        &self,
        pending: &PendingCall,
        approver: &str,
        reason: &str,
        now: Timestamp,
        rng: &mut (impl rand_core::CryptoRng + ?Sized),
    ) -> Result<DecisionRecord, Error> {
        self.settle(pending, now).or_else(|e| match e {
            // Refusing an expired hold is still worth a record.
            Error::Approval(ref m) if m.contains("expired") => Ok(()),
            e => Err(e),
        })?;
        let mut record = approval_record(pending, approver, now, random_id(rng), Verdict::Deny);
        record.rules = vec!["approval".to_owned()];
        record.reason = Some(reason.to_owned());
        Ok(record)
    }

    fn settle(&self, pending: &PendingCall, now: Timestamp) -> Result<(), Error> {
        let mut state = self
            .lock()
            .ok_or_else(|| Error::Approval("limit state is unusable".to_owned()))?;
        if state.settled.contains(&pending.id) {
            return Err(Error::Approval(format!(
                "held call `{}` was already settled",
                pending.id
            )));
        }
        let Some((digest, expires)) = state.pending.get(&pending.id).cloned() else {
            return Err(Error::Approval(format!("no held call `{}`", pending.id)));
        };
        if digest != pending.digest() {
            return Err(Error::Approval(format!(
                "held call `{}` does not match what was held",
                pending.id
            )));
        }
        state.pending.remove(&pending.id);
        state.settled.insert(pending.id.clone());
        if now >= expires {
            return Err(Error::Approval(format!(
                "held call `{}` expired at {expires}",
                pending.id
            )));
        }
        Ok(())
    }

    /// Rebuilds the limit state from past records, oldest first (after a restart). Allowed and
    /// held calls are charged again at their recorded time, limits forced; approvals mark their
    /// holds settled. Returns the number of records replayed.
    pub fn rebuild_from<'a>(
        &self,
        records: impl IntoIterator<Item = &'a DecisionRecord>,
    ) -> Result<usize, Error> {
        let mut state = self
            .lock()
            .ok_or_else(|| Error::Record("limit state is unusable".to_owned()))?;
        let mut n = 0;
        for r in records {
            let time = Timestamp::parse_rfc3339(&r.time)?;
            match (r.kind, r.decision) {
                (RecordType::Decision, Verdict::Allow | Verdict::NeedsApproval) => {
                    let limited: Vec<(&str, &RuleLimits)> = r
                        .rules
                        .iter()
                        .filter_map(|rule| self.bundle.limits.get(rule).map(|l| (rule.as_str(), l)))
                        .collect();
                    let charge = Charge {
                        agent: &r.agent,
                        tool: &r.tool,
                        session: r.session.as_deref(),
                    };
                    let _ = state.charge(&limited, &charge, time, true);
                }
                (RecordType::Approval, _) => {
                    if let Some(p) = &r.pending {
                        state.settled.insert(p.clone());
                    }
                }
                _ => {}
            }
            n += 1;
        }
        Ok(n)
    }

    fn lock(&self) -> Option<MutexGuard<'_, LimitState>> {
        // A poisoned lock means a thread panicked mid-update: fail closed.
        self.state.lock().ok()
    }
}

fn approval_record(
    pending: &PendingCall,
    approver: &str,
    now: Timestamp,
    id: String,
    decision: Verdict,
) -> DecisionRecord {
    let c = &pending.claims;
    DecisionRecord {
        v: 1,
        kind: RecordType::Approval,
        id,
        time: now.to_string(),
        decision,
        agent: c.agent.clone(),
        delegation: c.delegation.clone(),
        session: c.session.clone(),
        tool: format!("{}/{}", c.tool.server, c.tool.name),
        args_hash: c.args_hash.clone(),
        labels: c.labels.clone(),
        taint: c.taint.clone(),
        rules: c.rules.clone(),
        reason: None,
        risk: c.risk.clone(),
        certificate: None,
        pending: Some(pending.id.clone()),
        approver: Some(approver.to_owned()),
    }
}

/// The labels of the present arguments (unlabeled ones get the default label) and the call-wide
/// label: their join with the intent's label. Unparseable arguments: the labels as given.
fn call_labels(
    request: &CallRequest,
    args: Option<&Arguments>,
) -> (BTreeMap<String, Label>, Label) {
    let labels: BTreeMap<String, Label> = match args {
        Some(args) => args
            .as_map()
            .keys()
            .map(|name| {
                let label = request.labels.get(name).unwrap_or(&request.default_label);
                (name.clone(), label.clone())
            })
            .collect(),
        None => request.labels.clone(),
    };
    let mut call_label = labels.values().fold(Label::empty(), |acc, l| acc.join(l));
    if let Some(intent) = &request.intent {
        call_label = call_label.join(intent.label());
    }
    (labels, call_label)
}

fn random_id(rng: &mut (impl rand_core::CryptoRng + ?Sized)) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    hex(&bytes)
}
