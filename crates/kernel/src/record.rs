//! Decision records: one log entry per decision, as RFC 8785 canonical JSON.
//!
//! The format is documented in `docs/records.md`; the log stores the bytes opaquely.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::json::{canonical_bytes, parse_strict};
use crate::{CallCertificate, Error};

/// The kind of a record this crate writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordType {
    /// A decision by [`Kernel::enforce`](crate::Kernel::enforce).
    #[serde(rename = "warden.decision")]
    Decision,
    /// A human approving or refusing a held call.
    #[serde(rename = "warden.approval")]
    Approval,
}

/// The outcome a record states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Allowed; the record carries the certificate.
    Allow,
    /// Denied; the record names the rules and the reason.
    Deny,
    /// Held for a human.
    NeedsApproval,
}

impl Verdict {
    /// `"allow"`, `"deny"` or `"needs_approval"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::NeedsApproval => "needs_approval",
        }
    }
}

/// One decision, as logged. Field names and meanings are a contract with the log and gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    /// Format version, 1.
    pub v: u32,
    /// `"warden.decision"` or `"warden.approval"`.
    #[serde(rename = "type")]
    pub kind: RecordType,
    /// Unique record id; for an allow, the certificate id.
    pub id: String,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The outcome.
    pub decision: Verdict,
    /// The calling agent's SPIFFE ID.
    pub agent: String,
    /// Delegation chain, origin first.
    pub delegation: Vec<String>,
    /// Session id.
    pub session: Option<String>,
    /// `"<server>/<tool>"`.
    pub tool: String,
    /// `"sha256:<hex>"` of the JCS bytes of the arguments, or of the raw bytes if they did not
    /// parse.
    pub args_hash: String,
    /// Argument name → sources.
    pub labels: BTreeMap<String, Vec<String>>,
    /// `"trusted"` or `"untrusted"`.
    pub taint: String,
    /// Rule ids that decided.
    pub rules: Vec<String>,
    /// Why, in words, for a deny or a hold.
    pub reason: Option<String>,
    /// `@risk` of the deciding rule.
    pub risk: Option<String>,
    /// The full signed certificate on allow (in the record, its wire form `{"cert": …, "sig": …}`).
    pub certificate: Option<CallCertificate>,
    /// Approval records only: the id of the held call's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// Approval records only: who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
}

impl DecisionRecord {
    /// The log entry: JCS bytes.
    pub fn to_jcs_bytes(&self) -> Vec<u8> {
        canonical_bytes(&serde_json::to_value(self).unwrap_or(Value::Null))
    }

    /// Reads a log entry. `Ok(None)` for entries of other layers' types (`warden.outcome`, …);
    /// an error for a malformed kernel record.
    pub fn from_log_entry(bytes: &[u8]) -> Result<Option<Self>, Error> {
        let value = parse_strict(bytes).map_err(|e| Error::Record(e.to_string()))?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind != "warden.decision" && kind != "warden.approval" {
            return Ok(None);
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| Error::Record(e.to_string()))
    }
}
