//! The kernel judges a call only by the tool definition it was made under: a changed definition
//! the kernel cannot type-check leaves the tool unknown (denied, with a record), even when an
//! earlier definition of it had been learned.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{TestLog, authority};
use serde_json::{Value, json};
use warden_gateway::{CallRequest, Verdict, definition_hash};

const MANIFEST: &str = r#"
    trust_domain = "example.org"
    [agents.a]
    id = "spiffe://example.org/agent/a"
    [[allow]]
    id = "t"
    agents = ["a"]
    tools = ["s/t"]
"#;

fn call(definition: &Value) -> CallRequest {
    CallRequest {
        agent: "spiffe://example.org/agent/a".into(),
        delegation: vec![],
        session: None,
        server: "s".into(),
        tool: "t".into(),
        definition: Arc::new(definition.clone()),
        definition_hash: definition_hash(definition).unwrap(),
        arguments: json!({"p": "x"}),
        labels: BTreeMap::new(),
        intent: None,
        refusal: None,
    }
}

fn denied_as_unknown(v: &Verdict) -> bool {
    matches!(v, Verdict::Deny { rules, .. } if rules.iter().any(|r| r == "unknown-tool"))
}

#[test]
fn a_changed_definition_the_kernel_cannot_check_is_not_judged_by_the_old_one() {
    let typed = json!({"name": "t", "inputSchema": {"type": "object",
        "properties": {"p": {"type": "string"}}}});
    let unchecked = json!({"name": "t", "inputSchema": {"type": "object",
        "properties": {"p": {"$ref": "#/defs/x"}}}});

    // Only the uncheckable definition ever seen: unknown.
    let log = TestLog::new();
    let fresh = authority(MANIFEST, &log);
    let v = fresh.decide(&call(&unchecked)).unwrap();
    assert!(denied_as_unknown(&v), "{v:?}");

    // The typed one first (allowed), then the operator accepted the change: still unknown,
    // and the typed one is learned again when it comes back.
    let log = TestLog::new();
    let auth = authority(MANIFEST, &log);
    assert!(matches!(
        auth.decide(&call(&typed)).unwrap(),
        Verdict::Allow { .. }
    ));
    let v = auth.decide(&call(&unchecked)).unwrap();
    assert!(denied_as_unknown(&v), "judged by the old definition: {v:?}");
    assert!(matches!(
        auth.decide(&call(&typed)).unwrap(),
        Verdict::Allow { .. }
    ));
    log.verify();
}
