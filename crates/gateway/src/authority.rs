//! The one seam between the gateway and the kernel + log: "decide this call and make its record
//! durable". The gateway never forwards a call before [`Authority::decide`] returned `Allow`, and
//! an `Err` refuses the call (fail closed).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use crate::labels::Label;

/// A tool call as the gateway presents it to the kernel.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The calling agent's SPIFFE ID.
    pub agent: String,
    /// Delegation chain, origin first.
    pub delegation: Vec<String>,
    /// Session id.
    pub session: Option<String>,
    /// Upstream server name.
    pub server: String,
    /// Tool name on that server.
    pub tool: String,
    /// The pinned definition of the tool (its `inputSchema` drives strict argument parsing);
    /// shared with the session's tool view, not copied per call.
    pub definition: std::sync::Arc<Value>,
    /// `sha256:<hex>` of the pinned definition.
    pub definition_hash: String,
    /// The arguments exactly as they will be forwarded (a JSON object).
    pub arguments: Value,
    /// Labels per argument name (only arguments with a known origin).
    pub labels: BTreeMap<String, Label>,
    /// The agent's stated reason for the call, with its label.
    pub intent: Option<(String, Label)>,
    /// Set when the gateway itself refuses the call before policy (e.g. a delegation token that
    /// does not verify): the authority must record a denial with this rule and reason, and never
    /// allow the call.
    pub refusal: Option<Refusal>,
}

/// A refusal decided by the gateway before the kernel (it is still a logged decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Rule id named in the record and the error (`delegation`).
    pub rule: String,
    /// Why, in words.
    pub reason: String,
}

/// Who decided a held call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Identity of the approver (a SPIFFE ID or an operator name).
    pub approver: String,
    /// Granted or refused.
    pub granted: bool,
    /// When, RFC 3339.
    pub time: String,
}

/// The kernel's verdict on a call, already durable in the log.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Forward the call with this certificate.
    Allow {
        /// The signed certificate as the kernel serialized it: its JCS text, valid JSON by
        /// construction (goes upstream in `_meta` `dev.warden/certificate` byte for byte).
        certificate: String,
        /// Id of the decision record.
        record: String,
        /// Rule ids that allowed it.
        rules: Vec<String>,
    },
    /// Hold the call for a human.
    NeedsApproval {
        /// Id of the decision record (and of the pending approval).
        record: String,
        /// Rule ids.
        rules: Vec<String>,
        /// Why approval is needed.
        reason: String,
    },
    /// Refuse the call.
    Deny {
        /// Id of the decision record.
        record: String,
        /// Rule ids.
        rules: Vec<String>,
        /// Why.
        reason: String,
    },
}

/// A verdict whose record is on its way to the log. The verdict is only handed out once the
/// record is durable: awaiting this future is the only way to get it, so no caller can act on a
/// decision the log has not acknowledged.
pub type PendingVerdict = Pin<Box<dyn Future<Output = Result<Verdict, AuthorityError>> + Send>>;

/// Decides calls and makes every decision durable before returning.
pub trait Authority: Send + Sync {
    /// Decides `call`; the decision record is durable when this returns `Ok`.
    fn decide(&self, call: &CallRequest) -> Result<Verdict, AuthorityError>;

    /// Decides `call` now (on the calling thread) and returns a future that resolves to the
    /// verdict once its record is durable, without blocking a thread on the log's `fdatasync`.
    /// The default decides with [`Authority::decide`] (blocking) and returns a ready future.
    fn decide_deferred(&self, call: &CallRequest) -> PendingVerdict {
        let verdict = self.decide(call);
        Box::pin(std::future::ready(verdict))
    }

    /// Decides a call that was held for approval, once a human answered (or the wait timed out:
    /// then `approval.granted` is false and the approver is `warden:timeout`).
    fn resolve(
        &self,
        call: &CallRequest,
        pending_record: &str,
        approval: &Approval,
    ) -> Result<Verdict, AuthorityError>;

    /// Makes a non-decision event durable (`warden.tool_pinned`, `warden.outcome`, ...).
    fn record_event(&self, event: &Value) -> Result<(), AuthorityError>;
}

/// The authority could not decide or could not make the decision durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthorityError(pub String);
