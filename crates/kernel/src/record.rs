//! Decision records: one log entry per decision, as RFC 8785 canonical JSON.
//!
//! The format is documented in `docs/records.md`; the log stores the bytes opaquely.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::json::{jcs_key_order, parse_strict, write_jcs_key, write_jcs_str, write_jcs_strs};
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

impl RecordType {
    /// `"warden.decision"` or `"warden.approval"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decision => "warden.decision",
            Self::Approval => "warden.approval",
        }
    }
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
    /// The log entry: JCS bytes, exactly `canonical_bytes` of the record's JSON form (a property
    /// test holds the two together), written directly around the certificate's own canonical
    /// bytes: the gateway writes one per call.
    pub fn to_jcs_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1536);
        let opt = |out: &mut Vec<u8>, v: &Option<String>| match v {
            Some(s) => write_jcs_str(out, s),
            None => out.extend_from_slice(b"null"),
        };
        // Members in RFC 8785 order (all keys are ASCII, so byte order is UTF-16 order);
        // `approver` and `pending` are left out when absent.
        out.push(b'{');
        write_jcs_key(&mut out, true, "agent");
        write_jcs_str(&mut out, &self.agent);
        if let Some(approver) = &self.approver {
            write_jcs_key(&mut out, false, "approver");
            write_jcs_str(&mut out, approver);
        }
        write_jcs_key(&mut out, false, "args_hash");
        write_jcs_str(&mut out, &self.args_hash);
        write_jcs_key(&mut out, false, "certificate");
        match &self.certificate {
            Some(c) => out.extend_from_slice(&c.to_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        write_jcs_key(&mut out, false, "decision");
        write_jcs_str(&mut out, self.decision.as_str());
        write_jcs_key(&mut out, false, "delegation");
        write_jcs_strs(&mut out, &self.delegation);
        write_jcs_key(&mut out, false, "id");
        write_jcs_str(&mut out, &self.id);
        write_jcs_key(&mut out, false, "labels");
        out.push(b'{');
        let mut names: Vec<(&String, &Vec<String>)> = self.labels.iter().collect();
        names.sort_by(|a, b| jcs_key_order(a.0, b.0));
        for (i, (name, sources)) in names.into_iter().enumerate() {
            write_jcs_key(&mut out, i == 0, name);
            write_jcs_strs(&mut out, sources);
        }
        out.push(b'}');
        if let Some(pending) = &self.pending {
            write_jcs_key(&mut out, false, "pending");
            write_jcs_str(&mut out, pending);
        }
        write_jcs_key(&mut out, false, "reason");
        opt(&mut out, &self.reason);
        write_jcs_key(&mut out, false, "risk");
        opt(&mut out, &self.risk);
        write_jcs_key(&mut out, false, "rules");
        write_jcs_strs(&mut out, &self.rules);
        write_jcs_key(&mut out, false, "session");
        opt(&mut out, &self.session);
        write_jcs_key(&mut out, false, "taint");
        write_jcs_str(&mut out, &self.taint);
        write_jcs_key(&mut out, false, "time");
        write_jcs_str(&mut out, &self.time);
        write_jcs_key(&mut out, false, "tool");
        write_jcs_str(&mut out, &self.tool);
        write_jcs_key(&mut out, false, "type");
        write_jcs_str(&mut out, self.kind.as_str());
        write_jcs_key(&mut out, false, "v");
        out.extend_from_slice(self.v.to_string().as_bytes());
        out.push(b'}');
        out
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cert::tests::{opt_text, text, texts};
    use crate::json::canonical_bytes;
    use crate::{CertSigningKey, CertificateClaims, CertifiedTool};

    fn certificate(strings: &[String], labels: &BTreeMap<String, Vec<String>>) -> CallCertificate {
        let s = |i: usize| strings.get(i).cloned().unwrap_or_default();
        let claims = CertificateClaims {
            v: 1,
            id: s(0),
            kid: s(1),
            aud: s(2),
            issued: s(3),
            expires: s(4),
            agent: s(5),
            delegation: vec![s(6)],
            session: None,
            tool: CertifiedTool {
                server: s(7),
                name: s(8),
                definition_hash: s(9),
            },
            args_hash: s(10),
            labels: labels.clone(),
            taint: s(11),
            intent: None,
            decision: "allow".to_owned(),
            rules: vec![s(12)],
            risk: Some(s(13)),
            policy_hash: s(0),
            approval: None,
        };
        CallCertificate::sign(claims, &CertSigningKey::from_seed(&[9; 32]))
    }

    prop_compose! {
        fn record()(
            v in any::<u32>(),
            approval in any::<bool>(),
            decision in prop_oneof![Just(Verdict::Allow), Just(Verdict::Deny), Just(Verdict::NeedsApproval)],
            strings in proptest::collection::vec(text(), 14),
            delegation in texts(),
            rules in texts(),
            labels in proptest::collection::btree_map(text(), texts(), 0..5),
            (session, reason, risk, pending, approver) in (opt_text(), opt_text(), opt_text(), opt_text(), opt_text()),
            with_certificate in any::<bool>(),
        ) -> DecisionRecord {
            let s = |i: usize| strings[i].clone();
            DecisionRecord {
                v,
                kind: if approval { RecordType::Approval } else { RecordType::Decision },
                id: s(0),
                time: s(1),
                decision,
                agent: s(2),
                delegation,
                session,
                tool: s(3),
                args_hash: s(4),
                labels: labels.clone(),
                taint: s(5),
                rules,
                reason,
                risk,
                certificate: with_certificate.then(|| certificate(&strings, &labels)),
                pending,
                approver,
            }
        }
    }

    proptest! {
        /// The direct writer and the generic canonicalizer over the serde form agree byte for
        /// byte, and the bytes read back to the same record.
        #[test]
        fn record_bytes_are_rfc8785(r in record()) {
            let generic = canonical_bytes(&serde_json::to_value(&r).unwrap());
            let direct = r.to_jcs_bytes();
            prop_assert_eq!(&direct, &generic);
            // `serde_json` rather than the strict reader: arbitrary strings may hold
            // noncharacters, which I-JSON refuses.
            prop_assert_eq!(serde_json::from_slice::<DecisionRecord>(&direct).unwrap(), r);
        }
    }
}
