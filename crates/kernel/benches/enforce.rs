//! `Kernel::enforce` at 10, 100 and 1,000 agents of 5 tools each, allow and deny, beside the
//! policy part alone (`Kernel::evaluate`) and, as the baseline, raw Cedar `is_authorized` over
//! the whole unsliced policy set for the same request. `ed25519_sign` (a bare Ed25519 signature
//! over a certificate-sized message) is the floor the allow path cannot go under. `record_bytes`
//! is the allow record's log entry, beside `record_bytes_generic` (serde form, generic RFC 8785
//! canonicalizer).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::hint::black_box;
use std::str::FromStr as _;

use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request};
use common::{TestRng, signing_key};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;
use warden_kernel::{
    CERT_SIGNING_CONTEXT, CallRequest, Decision, Evaluation, Kernel, Manifest, Timestamp, ToolId,
};

const TOOLS: usize = 100;
const TOOLS_PER_AGENT: usize = 5;

fn fleet(agents: usize) -> Kernel {
    let mut m = String::from("trust_domain = \"example.org\"\n");
    for t in 0..TOOLS {
        let _ = write!(
            m,
            "[servers.s{}.tools.t{}]\ninput_schema = {{ type = \"object\", required = [\"symbol\", \"n\"], \
             properties = {{ symbol = {{ type = \"string\" }}, n = {{ type = \"integer\" }} }} }}\n",
            t / 5,
            t
        );
    }
    for a in 0..agents {
        let _ = writeln!(m, "[agents.a{a}]\nid = \"spiffe://example.org/agent/a{a}\"");
        let tools: Vec<String> = (0..TOOLS_PER_AGENT)
            .map(|k| tool_name(a, k))
            .map(|t| format!("\"{t}\""))
            .collect();
        let _ = writeln!(
            m,
            "[[allow]]\nid = \"r{a}\"\nagents = [\"a{a}\"]\ntools = [{}]\nrate = \"1000000/s\"\n[allow.args.n]\nmax = 100",
            tools.join(", ")
        );
    }
    Kernel::new(
        Manifest::from_toml_str(&m).unwrap(),
        vec![],
        vec![],
        signing_key(),
    )
    .unwrap()
}

fn tool_name(agent: usize, k: usize) -> String {
    let t = (agent * TOOLS_PER_AGENT + k) % TOOLS;
    format!("s{}/t{}", t / 5, t)
}

fn request(agent: usize, n: u32) -> CallRequest {
    let id = format!("spiffe://example.org/agent/a{agent}");
    let args = format!(r#"{{"symbol":"ACME","n":{n}}}"#);
    CallRequest::new(
        id,
        ToolId::parse(&tool_name(agent, 2)).unwrap(),
        args.into_bytes(),
    )
}

/// The same request as Cedar sees it, for the raw baseline.
fn cedar_request(agent: usize, n: i64) -> Request {
    let tool = tool_name(agent, 2);
    let server = tool.split('/').next().unwrap().to_owned();
    let label = json!({"sources": ["user"], "kinds": ["user"], "trusted": true});
    let context = Context::from_json_value(
        json!({
            "args": {"symbol": "ACME", "n": n},
            "labels": {"symbol": label, "n": label},
            "facts": {},
            "taint": "trusted",
            "delegation": {"origin": format!("spiffe://example.org/agent/a{agent}"), "depth": 0, "hops": []},
            "usage": {"agent_calls": 0, "session_calls": 0},
            "now": {"unix": 1_795_464_229, "minute_of_day": 600, "weekday": 0}
        }),
        None,
    )
    .unwrap();
    Request::new(
        EntityUid::from_str(&format!("Agent::\"spiffe://example.org/agent/a{agent}\"")).unwrap(),
        EntityUid::from_str(&format!("Action::\"{tool}\"")).unwrap(),
        EntityUid::from_str(&format!("Server::\"{server}\"")).unwrap(),
        context,
        None,
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("enforce");
    // The signed message of a certificate from the 1,000-agent fleet, for `ed25519_sign`.
    let mut message = Vec::new();
    for agents in [10, 100, 1000] {
        let kernel = fleet(agents);
        let agent = agents / 2;
        let allow = request(agent, 7);
        let deny = request(agent, 1000);
        let mut rng = TestRng(1);
        let mut ms = 1_795_464_229_000;
        // Sanity: the requests decide as intended.
        assert!(matches!(
            kernel
                .enforce(&allow, Timestamp::from_unix_millis(ms), &mut rng)
                .decision,
            Decision::Allow(_)
        ));
        assert!(matches!(
            kernel
                .enforce(&deny, Timestamp::from_unix_millis(ms), &mut rng)
                .decision,
            Decision::Deny(_)
        ));
        assert!(matches!(
            kernel.evaluate(&allow, Timestamp::from_unix_millis(ms)),
            Evaluation::Allow { .. }
        ));
        // The agent's permit and argument forbid for this tool, nothing else.
        assert_eq!(kernel.tool_slice_len(&allow.agent, &allow.tool), 2);
        if agents == 1000 {
            let e = kernel.enforce(&allow, Timestamp::from_unix_millis(ms), &mut rng);
            let Decision::Allow(cert) = &e.decision else {
                unreachable!()
            };
            message = [CERT_SIGNING_CONTEXT, &cert.claims().canonical_bytes()].concat();
            // The allow record's log bytes (the gateway writes one per call), beside the
            // generic way: the serde form through the RFC 8785 canonicalizer.
            let record = e.record;
            let generic = |r: &warden_kernel::DecisionRecord| {
                warden_kernel::canonical_bytes(&serde_json::to_value(r).unwrap())
            };
            assert_eq!(record.to_jcs_bytes(), generic(&record));
            group.bench_function("record_bytes", |b| {
                b.iter(|| black_box(record.to_jcs_bytes()));
            });
            group.bench_function("record_bytes_generic", |b| {
                b.iter(|| black_box(generic(&record)));
            });
        }
        group.bench_with_input(BenchmarkId::new("allow", agents), &allow, |b, req| {
            b.iter(|| {
                ms += 1;
                black_box(kernel.enforce(req, Timestamp::from_unix_millis(ms), &mut rng))
            });
        });
        group.bench_with_input(BenchmarkId::new("deny", agents), &deny, |b, req| {
            b.iter(|| black_box(kernel.enforce(req, Timestamp::from_unix_millis(ms), &mut rng)));
        });
        group.bench_with_input(BenchmarkId::new("policy_only", agents), &allow, |b, req| {
            b.iter(|| black_box(kernel.evaluate(req, Timestamp::from_unix_millis(ms))));
        });
        let all = PolicySet::from_str(kernel.manifest_cedar()).unwrap();
        let entities = Entities::empty();
        let authorizer = Authorizer::new();
        let raw = cedar_request(agent, 7);
        assert_eq!(
            authorizer.is_authorized(&raw, &all, &entities).decision(),
            cedar_policy::Decision::Allow
        );
        group.bench_with_input(
            BenchmarkId::new("cedar_unsliced", agents),
            &raw,
            |b, req| {
                b.iter(|| black_box(authorizer.is_authorized(req, &all, &entities)));
            },
        );
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    group.bench_function("ed25519_sign", |b| {
        b.iter(|| black_box(ed25519_dalek::Signer::sign(&key, black_box(&message))));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
