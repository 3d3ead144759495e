//! The compiled allowlist against a decision table, validation at load, fail-closed evaluation,
//! learned tools and slicing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{TestRng, signing_key};
use warden_kernel::{
    CallRequest, Decision, Kernel, Label, Manifest, PolicyFile, Source, Timestamp, ToolId, ToolSpec,
};

const AGENT: &str = "spiffe://example.org/agent/a";
const OTHER: &str = "spiffe://example.org/agent/b";
// 2026-11-23 (a Monday) 10:00 UTC.
const MONDAY_10H: u64 = 1_795_428_000_000;

const MANIFEST: &str = r#"
trust_domain = "example.org"

[agents.a]
id = "spiffe://example.org/agent/a"
groups = ["ops"]
[agents.b]
id = "spiffe://example.org/agent/b"

[servers.files]
[servers.files.tools.read]
input_schema = { type = "object", required = ["path"], properties = { path = { type = "string" }, limit = { type = "integer" }, ratio = { type = "number" }, mode = { type = "string" }, tags = { type = "array", items = { type = "string" } } } }

[[allow]]
id = "ops-read"
groups = ["ops"]
tools = ["files/read"]
hours = "08:00-18:00"
days = ["mon", "tue", "wed", "thu", "fri"]
[allow.args.path]
pattern = "/srv/*"
max_length = 20
deny_sources = ["web", "memory:secrets"]
[allow.args.limit]
min = 1
max = 100
[allow.args.ratio]
max = 0.5
[allow.args.mode]
one_of = ["text", "binary"]
regex = "^[a-z]+$"
"#;

/// (agent, arguments, labels, time, expected outcome or first rule)
type Row<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u64, &'a str);

fn kernel_with(files: Vec<PolicyFile>) -> Kernel {
    Kernel::new(
        Manifest::from_toml_str(MANIFEST).unwrap(),
        files,
        vec![],
        signing_key(),
    )
    .unwrap()
}

fn decide(k: &Kernel, agent: &str, args: &str, labels: &[(&str, &str)], at: u64) -> String {
    let mut req = CallRequest::new(agent, ToolId::parse("files/read").unwrap(), args);
    for (arg, src) in labels {
        let s = Source::new(src).unwrap();
        let integrity = k.manifest().source_integrity(&s);
        req.labels.insert((*arg).into(), Label::new(s, integrity));
    }
    match k
        .enforce(&req, Timestamp::from_unix_millis(at), &mut TestRng(at))
        .decision
    {
        Decision::Allow(_) => "allow".into(),
        Decision::NeedsApproval(_) => "hold".into(),
        Decision::Deny(d) => d.rules.join(","),
    }
}

#[test]
fn compiled_allowlist_matches_the_decision_table() {
    let k = kernel_with(vec![]);
    let t = MONDAY_10H;
    let table: &[Row<'_>] = &[
        (AGENT, r#"{"path":"/srv/a"}"#, &[], t, "allow"),
        (AGENT, r#"{"path":"/etc/passwd"}"#, &[], t, "ops-read/path"),
        (
            AGENT,
            r#"{"path":"/srv/aaaaaaaaaaaaaaaaaaaaaaa"}"#,
            &[],
            t,
            "ops-read/path",
        ),
        (
            AGENT,
            r#"{"path":"/srv/a"}"#,
            &[("path", "web:x.example")],
            t,
            "ops-read/path",
        ),
        (
            AGENT,
            r#"{"path":"/srv/a"}"#,
            &[("path", "memory:secrets")],
            t,
            "ops-read/path",
        ),
        (
            AGENT,
            r#"{"path":"/srv/a"}"#,
            &[("path", "memory:notes")],
            t,
            "allow",
        ),
        (AGENT, r#"{"path":"/srv/a","limit":1}"#, &[], t, "allow"),
        (AGENT, r#"{"path":"/srv/a","limit":100}"#, &[], t, "allow"),
        (
            AGENT,
            r#"{"path":"/srv/a","limit":0}"#,
            &[],
            t,
            "ops-read/limit",
        ),
        (
            AGENT,
            r#"{"path":"/srv/a","limit":101}"#,
            &[],
            t,
            "ops-read/limit",
        ),
        (AGENT, r#"{"path":"/srv/a","ratio":0.5}"#, &[], t, "allow"),
        (
            AGENT,
            r#"{"path":"/srv/a","ratio":0.75}"#,
            &[],
            t,
            "ops-read/ratio",
        ),
        (
            AGENT,
            r#"{"path":"/srv/a","ratio":1e300}"#,
            &[],
            t,
            "strict-args",
        ),
        (
            AGENT,
            r#"{"path":"/srv/a","ratio":1e14}"#,
            &[],
            t,
            "ops-read/ratio",
        ),
        (
            AGENT,
            r#"{"path":"/srv/a","ratio":1e15}"#,
            &[],
            t,
            "policy-error",
        ),
        (AGENT, r#"{"path":"/srv/a","mode":"text"}"#, &[], t, "allow"),
        (
            AGENT,
            r#"{"path":"/srv/a","mode":"TEXT"}"#,
            &[],
            t,
            "ops-read/mode",
        ),
        (AGENT, r#"{"path":"/srv/a","tags":["x"]}"#, &[], t, "allow"),
        (
            AGENT,
            r#"{"path":"/srv/a"}"#,
            &[],
            t + 9 * 3_600_000,
            "ops-read",
        ),
        (
            AGENT,
            r#"{"path":"/srv/a"}"#,
            &[],
            t + 5 * 86_400_000,
            "ops-read",
        ),
        (OTHER, r#"{"path":"/srv/a"}"#, &[], t, "default-deny"),
    ];
    for (i, (agent, args, labels, at, expected)) in table.iter().enumerate() {
        assert_eq!(
            decide(&k, agent, args, labels, *at),
            *expected,
            "row {i}: {args} {labels:?}"
        );
    }
}

#[test]
fn evaluation_errors_deny_even_in_a_forbid() {
    // Without the kernel's fail-closed rule, Cedar skips an erroring forbid and allows.
    let overflow = PolicyFile {
        name: "overflow.cedar".into(),
        text: r#"@id("overflowing-forbid")
forbid (principal, action, resource) when { context.args has limit && context.args.limit * 4611686018427387904 > 0 };"#
            .into(),
    };
    let k = kernel_with(vec![overflow]);
    assert_eq!(
        decide(&k, AGENT, r#"{"path":"/srv/a"}"#, &[], MONDAY_10H),
        "allow"
    );
    let mut req = CallRequest::new(
        AGENT,
        ToolId::parse("files/read").unwrap(),
        r#"{"path":"/srv/a","limit":5}"#,
    );
    req.labels.clear();
    let e = k.enforce(
        &req,
        Timestamp::from_unix_millis(MONDAY_10H),
        &mut TestRng(1),
    );
    let Decision::Deny(d) = e.decision else {
        panic!("{:?}", e.decision)
    };
    assert_eq!(d.rules, vec!["overflowing-forbid"]);
    assert!(d.reason.contains("evaluation error"), "{}", d.reason);
}

#[test]
fn policies_that_do_not_validate_are_refused() {
    for (text, needle) in [
        (
            r#"permit (principal, action == Action::"files/write", resource);"#,
            "files/write",
        ),
        (
            r#"permit (principal, action, resource) when { context.args.nope == 1 };"#,
            "nope",
        ),
        (
            r#"permit (principal, action, resource) when { context.args.path == 1 };"#,
            "bad.cedar#0` (line 1, column 45)",
        ),
        (
            r#"permit (principal, action, resource) when { context.args.limit > 1 };"#,
            "limit",
        ),
        ("permit (principal, action, resource) when {", "line 1"),
    ] {
        let f = PolicyFile {
            name: "bad.cedar".into(),
            text: text.into(),
        };
        let err = Kernel::new(
            Manifest::from_toml_str(MANIFEST).unwrap(),
            vec![f],
            vec![],
            signing_key(),
        )
        .unwrap_err();
        assert!(err.to_string().contains(needle), "{text}: {err}");
    }
}

#[test]
fn manifest_errors_name_the_place() {
    for (text, needle) in [
        (
            "trust_domain = \"x\"\n[agents.a]\nid = \"spiffe://x/a\"\ngroup = [\"g\"]\n",
            "group",
        ),
        ("trust_domain = \"x\"\nbogus = 1\n", "bogus"),
        (
            "trust_domain = \"x\"\n[agents.a]\nid = \"not-spiffe\"\n",
            "SPIFFE",
        ),
        (
            "trust_domain = \"x\"\n[[allow]]\nid = \"r\"\nagents = [\"ghost\"]\ntools = [\"a/b\"]\n",
            "ghost",
        ),
        (
            "trust_domain = \"x\"\n[agents.a]\nid = \"spiffe://x/a\"\n[[allow]]\nid = \"r\"\nagents = [\"a\"]\ntools = [\"a/b\"]\nrate = \"5/fortnight\"\n",
            "5/fortnight",
        ),
        (
            "trust_domain = \"x\"\n[servers.s.tools.t]\ninput_schema = { type = \"object\", properties = { a = { \"$ref\" = \"#/x\" } } }\n",
            "$ref",
        ),
    ] {
        let err = Manifest::from_toml_str(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // The raw tables of other layers and the transport keys are kept, not refused.
    let m = Manifest::from_toml_str(
        "trust_domain = \"x\"\n[sandbox.profiles.p]\nanything = 1\n[identity]\nca = \"x\"\n[gateway]\nlisten = \"x\"\n[servers.s]\ncommand = \"npx\"\nargs = [\"-y\"]\nurl = \"http://x\"\n",
    )
    .unwrap();
    assert!(m.sandbox().is_some() && m.identity().is_some() && m.gateway().is_some());
    assert_eq!(m.servers()["s"].transport["command"].as_str(), Some("npx"));
}

#[test]
fn tools_learned_at_run_time_are_compiled_in() {
    let manifest = r#"
trust_domain = "example.org"
[agents.a]
id = "spiffe://example.org/agent/a"
[[allow]]
id = "fs-read"
agents = ["a"]
tools = ["fs/read_file"]
rate = "1/min"
[allow.args.path]
pattern = "/data/*"
"#;
    let k = Kernel::new(
        Manifest::from_toml_str(manifest).unwrap(),
        vec![],
        vec![],
        signing_key(),
    )
    .unwrap();
    assert!(
        k.warnings().iter().any(|w| w.contains("fs/read_file")),
        "{:?}",
        k.warnings()
    );
    let req = CallRequest::new(
        AGENT,
        ToolId::parse("fs/read_file").unwrap(),
        r#"{"path":"/data/x"}"#,
    );
    let now = Timestamp::from_unix_millis(MONDAY_10H);
    let Decision::Deny(d) = k.enforce(&req, now, &mut TestRng(1)).decision else {
        panic!()
    };
    assert_eq!(d.rules, vec!["unknown-tool"]);

    let def = br#"{"name":"read_file","description":"Read a file","inputSchema":{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}}"#;
    let learned = k
        .with_tools(vec![ToolSpec::from_mcp_json("fs", def).unwrap()])
        .unwrap();
    assert!(matches!(
        learned.enforce(&req, now, &mut TestRng(2)).decision,
        Decision::Allow(_)
    ));
    let outside = CallRequest::new(
        AGENT,
        ToolId::parse("fs/read_file").unwrap(),
        r#"{"path":"/etc/x"}"#,
    );
    assert!(matches!(
        learned.enforce(&outside, now, &mut TestRng(3)).decision,
        Decision::Deny(_)
    ));
    // The old and new kernels share limit state: the 1/min budget is spent for both.
    let Decision::Deny(d) = learned
        .with_tools(vec![])
        .unwrap()
        .enforce(&req, now, &mut TestRng(4))
        .decision
    else {
        panic!()
    };
    assert_eq!(d.rules, vec!["rate-limit"]);
}

#[test]
fn slices_do_not_grow_with_the_fleet() {
    let fleet = |n: usize| {
        let mut m = String::from(
            "trust_domain = \"example.org\"\n[servers.s.tools.t]\ninput_schema = { type = \"object\" }\n",
        );
        for i in 0..n {
            m.push_str(&format!(
                "[agents.a{i}]\nid = \"spiffe://example.org/agent/a{i}\"\n"
            ));
            m.push_str(&format!(
                "[[allow]]\nid = \"r{i}\"\nagents = [\"a{i}\"]\ntools = [\"s/t\"]\nrate = \"5/s\"\n"
            ));
        }
        Kernel::new(
            Manifest::from_toml_str(&m).unwrap(),
            vec![],
            vec![],
            signing_key(),
        )
        .unwrap()
    };
    let small = fleet(5);
    let large = fleet(200);
    assert_eq!(small.slice_len("spiffe://example.org/agent/a3"), 1);
    assert_eq!(large.slice_len("spiffe://example.org/agent/a3"), 1);
    assert_eq!(large.slice_len("spiffe://example.org/agent/a199"), 1);
    let req = CallRequest::new(
        "spiffe://example.org/agent/a150",
        ToolId::parse("s/t").unwrap(),
        "{}",
    );
    assert!(matches!(
        large
            .enforce(&req, Timestamp::from_unix_millis(1), &mut TestRng(1))
            .decision,
        Decision::Allow(_)
    ));
}

/// `server/*` entries compile before any tool of the server is known (the schema declares the
/// server's action group up front), and cover the server's tools once they are registered.
#[test]
fn server_wildcards_compile_before_the_tools_are_known() {
    let manifest = r#"
trust_domain = "example.org"
[agents.a]
id = "spiffe://example.org/agent/a"
[servers.web]
command = "web-server"
[[allow]]
id = "web-all"
agents = ["a"]
tools = ["web/*", "notes/*"]
"#;
    let k = Kernel::new(
        Manifest::from_toml_str(manifest).unwrap(),
        vec![],
        vec![],
        signing_key(),
    )
    .unwrap();
    assert!(
        k.manifest_cedar().contains(r#"action in Action::"web/*""#),
        "{}",
        k.manifest_cedar()
    );
    let now = Timestamp::from_unix_millis(MONDAY_10H);
    let fetch = CallRequest::new(AGENT, ToolId::parse("web/fetch").unwrap(), r#"{"url":"x"}"#);
    let Decision::Deny(d) = k.enforce(&fetch, now, &mut TestRng(1)).decision else {
        panic!("a tool not registered yet must not be allowed")
    };
    assert_eq!(d.rules, vec!["unknown-tool"]);

    let def = |name: &str| serde_json::json!({"name": name, "inputSchema": {"type": "object", "properties": {"url": {"type": "string"}}}});
    let learned = k
        .with_tools(vec![
            ToolSpec::from_mcp_definition("web", &def("fetch")).unwrap(),
            ToolSpec::from_mcp_definition("notes", &def("add")).unwrap(),
            ToolSpec::from_mcp_definition("shell", &def("exec")).unwrap(),
        ])
        .unwrap();
    for (tool, allowed) in [
        ("web/fetch", true),
        ("notes/add", true),
        ("shell/exec", false),
    ] {
        let req = CallRequest::new(AGENT, ToolId::parse(tool).unwrap(), r#"{"url":"x"}"#);
        let decision = learned.enforce(&req, now, &mut TestRng(2)).decision;
        assert_eq!(
            matches!(decision, Decision::Allow(_)),
            allowed,
            "{tool}: {decision:?}"
        );
    }
    let other = CallRequest::new(OTHER, ToolId::parse("web/fetch").unwrap(), r#"{"url":"x"}"#);
    assert!(matches!(
        learned.enforce(&other, now, &mut TestRng(3)).decision,
        Decision::Deny(_)
    ));
}
