//! Delegation tokens on calls: a `tools/call` may carry a Biscuit delegation chain minted by
//! Warden and narrowed by each holder (`warden-identity`'s [`DelegationVerifier`]).
//!
//! The token travels in the call's `_meta` under [`META_DELEGATION`] (every face) or in the HTTP
//! header [`DELEGATION_HEADER`] (the HTTP face copies it into `_meta`; both present and different
//! is refused). The gateway verifies the chain with the root public key and, for each hop, the
//! delegator's X.509-SVID against the trust bundle (`bundle_file`, or the `[identity]` CA's),
//! requires the authenticated caller to be the last holder named, checks the called tool and
//! its arguments against every block, and hands the delegators (origin first, the caller
//! excluded) to the kernel, whose policy sees them as `context.delegation` (`origin`, `depth`,
//! `hops`).
//!
//! Any failure is a logged denial with rule `delegation` and the verifier's reason: the call is
//! decided by the authority as refused, never forwarded. The token never goes upstream.

use std::time::SystemTime;

use serde_json::{Map, Value};
use warden_identity::SpiffeId;
use warden_identity::delegation::{ArgValue, Presentation};

use crate::authority::{CallRequest, Refusal};
use crate::config::GatewayConfig;

/// `_meta` key of a call's delegation token (base64url Biscuit).
pub const META_DELEGATION: &str = "dev.warden/delegation";
/// HTTP header carrying a delegation token (copied into the call's `_meta`).
pub const DELEGATION_HEADER: &str = "warden-delegation";
/// Rule id of delegation refusals.
pub const RULE: &str = "delegation";

/// Copies a header token into `frame`'s `params._meta`; refuses a different token already there.
pub(crate) fn attach_header(frame: &mut Value, token: &str) -> Result<(), String> {
    let Some(params) = frame.get_mut("params").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err("`_meta` is not an object".into());
    };
    match meta.get(META_DELEGATION) {
        Some(Value::String(t)) if t.trim() == token.trim() => Ok(()),
        Some(_) => Err(format!(
            "header `{DELEGATION_HEADER}` and `_meta` `{META_DELEGATION}` disagree"
        )),
        None => {
            meta.insert(
                META_DELEGATION.into(),
                Value::String(token.trim().to_owned()),
            );
            Ok(())
        }
    }
}

/// Verifies the token `meta` carries, if any, for `call` presented by `call.agent`: on success
/// the call's delegation becomes the chain's delegators; on failure the call carries a
/// [`Refusal`].
pub(crate) fn apply(
    cfg: &GatewayConfig,
    meta: Option<&Value>,
    call: &mut CallRequest,
    now: SystemTime,
) {
    let Some(token) = meta.and_then(|m| m.get(META_DELEGATION)) else {
        return;
    };
    match verify(cfg, token, call, now) {
        Ok(delegators) => call.delegation = delegators,
        Err(reason) => {
            call.refusal = Some(Refusal {
                rule: RULE.into(),
                reason: format!("delegation refused: {reason}"),
            });
        }
    }
}

fn verify(
    cfg: &GatewayConfig,
    token: &Value,
    call: &CallRequest,
    now: SystemTime,
) -> Result<Vec<String>, String> {
    let Some(verifier) = &cfg.delegation else {
        return Err("this gateway accepts no delegation tokens (no `[gateway.delegation]`)".into());
    };
    let Some(token) = token.as_str() else {
        return Err(format!("`{META_DELEGATION}` is not a string"));
    };
    let presenter = SpiffeId::new(&call.agent).map_err(|e| e.to_string())?;
    let tool = format!("{}/{}", call.server, call.tool);
    let args = presented_args(&call.arguments);
    let chain = verifier
        .authorize(
            token,
            &Presentation {
                presenter: &presenter,
                tool: &tool,
                args: &args,
                now,
            },
        )
        .map_err(|e| match e {
            warden_identity::Error::Delegation(reason) => reason,
            other => other.to_string(),
        })?;
    // `hops` ends with the presenter; the kernel's chain is the delegators, origin first, so
    // that `context.delegation.depth` is the number of delegations.
    let mut hops: Vec<String> = chain.hops.iter().map(ToString::to_string).collect();
    hops.pop();
    if hops.len() != chain.depth {
        return Err("inconsistent chain".into());
    }
    Ok(hops)
}

/// Top-level arguments a delegation block can constrain: strings, integers and booleans. Other
/// arguments are not shown, so a constraint on them fails (closed).
fn presented_args(arguments: &Value) -> Vec<(String, ArgValue)> {
    let Some(args) = arguments.as_object() else {
        return Vec::new();
    };
    args.iter()
        .filter_map(|(name, v)| {
            let v = match v {
                Value::String(s) => ArgValue::Str(s.clone()),
                Value::Bool(b) => ArgValue::Bool(*b),
                Value::Number(n) => ArgValue::Int(n.as_i64()?),
                _ => return None,
            };
            Some((name.clone(), v))
        })
        .collect()
}

/// The kernel-format denial record of a call the gateway refused before policy.
pub(crate) fn refusal_record(
    call: &CallRequest,
    refusal: &Refusal,
    id: String,
    time: String,
) -> warden_kernel::DecisionRecord {
    let canonical = warden_kernel::canonical_bytes(&call.arguments);
    let labels = call
        .labels
        .iter()
        .map(|(k, l)| (k.clone(), l.sources.iter().cloned().collect()))
        .collect();
    let untrusted = call.labels.values().any(crate::Label::is_untrusted);
    warden_kernel::DecisionRecord {
        v: 1,
        kind: warden_kernel::RecordType::Decision,
        id,
        time,
        decision: warden_kernel::Verdict::Deny,
        agent: call.agent.clone(),
        delegation: call.delegation.clone(),
        session: call.session.clone(),
        tool: format!("{}/{}", call.server, call.tool),
        args_hash: warden_kernel::sha256_tag(&canonical),
        labels,
        taint: if untrusted { "untrusted" } else { "trusted" }.to_owned(),
        rules: vec![refusal.rule.clone()],
        reason: Some(refusal.reason.clone()),
        risk: None,
        certificate: None,
        pending: None,
        approver: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_is_copied_and_conflicts_are_refused() {
        let mut f =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a/b"}});
        attach_header(&mut f, "tok").unwrap();
        assert_eq!(f["params"]["_meta"][META_DELEGATION], "tok");
        attach_header(&mut f, "tok").unwrap();
        assert!(attach_header(&mut f, "other").is_err());
    }

    #[test]
    fn only_scalar_arguments_are_presented() {
        let args = presented_args(&json!({"s": "x", "n": 3, "b": true, "f": 1.5, "o": {}}));
        assert_eq!(args.len(), 3);
    }
}
