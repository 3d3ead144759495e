//! Delegation chains through the gateway: Biscuit tokens minted by `warden-identity`, carried in
//! `_meta` (stdio) or the `Warden-Delegation` header (HTTP), verified with the root key alone,
//! bound to the presenting agent, and seen by a raw Cedar policy as `context.delegation`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{Agent, TestLog, error_code};
use serde_json::{Value, json};
use warden_gateway::{Authority, Gateway, GatewayConfig, HttpFace, META_DELEGATION, jsonrpc};
use warden_identity::delegation::{
    ArgConstraint, Attenuation, DelegationIssuer, DelegationKey, DelegationToken,
};
use warden_identity::{
    CaPolicy, CertificateAuthority, OsRandom, SpiffeId, SystemClock, TrustDomain, X509Svid,
};

const ALICE: &str = "spiffe://example.org/agent/alice";
const BOB: &str = "spiffe://example.org/agent/bob";
const CAROL: &str = "spiffe://example.org/agent/carol";
const DAVE: &str = "spiffe://example.org/agent/dave";

/// Tool calls the upstream received (their `params`).
type Seen = Arc<Mutex<Vec<Value>>>;

/// A legacy Streamable HTTP MCP server with two tools, recording every `tools/call`.
async fn upstream() -> (String, Seen) {
    use axum::{Json, Router, routing::post};
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    let app = Router::new().route(
        "/mcp",
        post(move |Json(body): Json<Value>| {
            let seen = seen2.clone();
            async move {
                let id = body["id"].clone();
                let schema = json!({"type": "object", "properties": {"m": {"type": "string"}}});
                let result = match body["method"].as_str().unwrap_or_default() {
                    "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "rec", "version": "0"}}),
                    "tools/list" => json!({"tools": [
                        {"name": "echo", "inputSchema": schema},
                        {"name": "admin", "inputSchema": schema}
                    ]}),
                    "tools/call" => {
                        seen.lock().unwrap().push(body["params"].clone());
                        json!({"content": [{"type": "text", "text": body["params"]["arguments"]["m"]}]})
                    }
                    _ => return (axum::http::StatusCode::ACCEPTED, Json(Value::Null)),
                };
                (axum::http::StatusCode::OK, Json(json!({"jsonrpc": "2.0", "id": id, "result": result})))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, seen)
}

struct Fixture {
    dir: tempfile::TempDir,
    issuer: DelegationIssuer,
    /// The CA whose bundle (`bundle.jwks`) the gateway checks delegators' SVIDs against.
    ca: CertificateAuthority,
    url: String,
    seen: Seen,
    log: Arc<TestLog>,
    authority: Arc<dyn Authority>,
}

/// Agents alice, bob, carol, dave may all call both tools; a raw Cedar policy forbids chains
/// deeper than one delegation.
const POLICY: &str = r#"
@id("no-deep-delegation")
@reason("at most one delegation")
forbid (principal, action, resource)
when { context.delegation.depth > 1 };
"#;

fn manifest(f_dir: &std::path::Path, url: &str, issuer: &DelegationIssuer, who: &str) -> String {
    format!(
        r#"
        trust_domain = "example.org"
        [agents.alice]
        id = "{ALICE}"
        [agents.bob]
        id = "{BOB}"
        [agents.carol]
        id = "{CAROL}"
        [agents.dave]
        id = "{DAVE}"
        [gateway]
        pins = "{pins}"
        http_agent = "{BOB}"
        [gateway.delegation]
        root_public_key = "{key}"
        bundle_file = "{bundle}"
        max_depth = 2
        [servers.rec]
        url = "{url}"
        [[allow]]
        id = "rec-all"
        agents = ["alice", "bob", "carol", "dave"]
        tools = ["rec/echo", "rec/admin"]
        "#,
        pins = f_dir.join(format!("pins-{who}.json")).display(),
        bundle = f_dir.join("bundle.jwks").display(),
        key = hex::encode(issuer.public_key()),
    )
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DelegationIssuer::generate();
    let ca = test_ca();
    std::fs::write(
        dir.path().join("bundle.jwks"),
        ca.bundle().to_jwks().unwrap(),
    )
    .unwrap();
    let (url, seen) = upstream().await;
    let log = TestLog::new();
    let text = manifest(dir.path(), &url, &issuer, "k");
    let m = warden_kernel::Manifest::from_toml_str(&text).unwrap();
    let schema = json!({"type": "object", "properties": {"m": {"type": "string"}}});
    let tools = ["echo", "admin"]
        .iter()
        .map(|t| {
            warden_kernel::ToolSpec::from_mcp_definition(
                "rec",
                &json!({"name": t, "inputSchema": schema}),
            )
            .unwrap()
        })
        .collect();
    let kernel = warden_kernel::Kernel::new(
        m,
        vec![warden_kernel::PolicyFile {
            name: "delegation.cedar".into(),
            text: POLICY.into(),
        }],
        tools,
        warden_kernel::CertSigningKey::from_seed(&[7; 32]),
    )
    .unwrap();
    let authority: Arc<dyn Authority> = Arc::new(warden_gateway::KernelAuthority::new(
        kernel,
        Arc::new(log.log.writer()),
        Arc::new(warden_gateway::SystemClock),
        getrandom::rand_core::UnwrapErr(getrandom::SysRng),
    ));
    Fixture {
        dir,
        issuer,
        ca,
        url,
        seen,
        log,
        authority,
    }
}

/// A stdio agent `who` on its own gateway (sharing the kernel and the log).
async fn agent(f: &Fixture, who: &str) -> Agent {
    let name = who.rsplit('/').next().unwrap();
    let cfg = GatewayConfig::parse(&manifest(f.dir.path(), &f.url, &f.issuer, name)).unwrap();
    let (mut a, _gw) = Agent::start(cfg, f.authority.clone(), who).await;
    a.initialize().await;
    a
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn in_an_hour() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

fn test_ca() -> CertificateAuthority {
    CertificateAuthority::generate(
        TrustDomain::new("example.org").unwrap(),
        CaPolicy::default(),
        Arc::new(SystemClock),
        Arc::new(OsRandom::new()),
    )
    .unwrap()
}

/// alice's root token for `rec/echo`.
fn root(f: &Fixture) -> DelegationToken {
    f.issuer
        .mint(
            &id(ALICE),
            &["rec/echo".to_owned()],
            SystemTime::now(),
            in_an_hour(),
        )
        .unwrap()
}

fn hop(to: &str, tools: &[&str], args: Vec<ArgConstraint>) -> Attenuation {
    Attenuation {
        holder: id(to),
        tools: Some(tools.iter().map(|s| (*s).to_owned()).collect()),
        args,
        expires: in_an_hour(),
    }
}

/// `t` narrowed for `to` by its current holder, signed with the holder's fresh SVID.
fn narrow(
    f: &Fixture,
    t: &DelegationToken,
    to: &str,
    tools: &[&str],
    args: Vec<ArgConstraint>,
) -> DelegationToken {
    let holder = t.holders().unwrap().pop().unwrap();
    narrow_as(&f.ca.mint_x509_svid(&holder).unwrap(), t, to, tools, args)
}

fn narrow_as(
    delegator: &X509Svid,
    t: &DelegationToken,
    to: &str,
    tools: &[&str],
    args: Vec<ArgConstraint>,
) -> DelegationToken {
    let key = DelegationKey::new(delegator, SystemTime::now(), &OsRandom::new()).unwrap();
    t.attenuate(&hop(to, tools, args), &key, SystemTime::now())
        .unwrap()
}

async fn call_with(a: &mut Agent, tool: &str, m: &str, token: &DelegationToken) -> Value {
    a.request(
        "tools/call",
        json!({"name": tool, "arguments": {"m": m},
               "_meta": {META_DELEGATION: token.to_base64().unwrap()}}),
    )
    .await
}

/// The last decision record of the log.
fn last_decision(f: &Fixture) -> Value {
    f.log
        .records()
        .into_iter()
        .rev()
        .find(|r| r["type"] == "warden.decision")
        .unwrap()
}

/// A refusal: a JSON-RPC denial naming `rule`, a logged deny with the same rule and a reason
/// containing `why`, and nothing reached the upstream.
fn assert_refused(f: &Fixture, resp: &Value, rule: &str, why: &str) {
    let before = f.seen.lock().unwrap().len();
    assert_eq!(error_code(resp), Some(jsonrpc::DENIED), "{resp}");
    assert_eq!(resp["error"]["data"]["rules"], json!([rule]), "{resp}");
    let rec = last_decision(f);
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["rules"], json!([rule]), "{rec}");
    assert!(
        rec["reason"].as_str().unwrap().contains(why),
        "reason `{}` lacks `{why}`",
        rec["reason"]
    );
    assert_eq!(f.seen.lock().unwrap().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hop_chain_is_allowed_and_reaches_the_policy() {
    let f = fixture().await;
    let to_bob = narrow(
        &f,
        &root(&f),
        BOB,
        &["rec/echo"],
        vec![ArgConstraint::Prefix("m".into(), "hi".into())],
    );
    let mut bob = agent(&f, BOB).await;
    let r = call_with(&mut bob, "rec/echo", "hi there", &to_bob).await;
    assert_eq!(common::text(&r), "hi there", "{r}");
    let rec = last_decision(&f);
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["agent"], BOB);
    assert_eq!(rec["delegation"], json!([ALICE]));
    // The bearer-like token never goes upstream.
    let seen = f.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]["_meta"].get(META_DELEGATION).is_none(),
        "{}",
        seen[0]
    );
    assert!(seen[0]["_meta"]["dev.warden/certificate"].is_object());

    // The argument constraint of bob's block holds.
    let r = call_with(&mut bob, "rec/echo", "bye", &to_bob).await;
    assert_refused(&f, &r, "delegation", "delegation refused");

    // A deeper chain (alice → bob → carol) verifies, but the Cedar policy on
    // `context.delegation.depth` denies it: the context really reaches Cedar.
    let to_carol = narrow(&f, &to_bob, CAROL, &["rec/echo"], Vec::new());
    let mut carol = agent(&f, CAROL).await;
    let r = call_with(&mut carol, "rec/echo", "hi again", &to_carol).await;
    assert_refused(&f, &r, "no-deep-delegation", "at most one delegation");
    assert_eq!(last_decision(&f)["delegation"], json!([ALICE, BOB]));
    // Without a token carol acts for herself and is allowed.
    let r = carol.call("rec/echo", json!({"m": "mine"})).await;
    assert_eq!(common::text(&r), "mine", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widening_wrong_presenter_and_over_deep_chains_are_refused() {
    let f = fixture().await;
    let mut bob = agent(&f, BOB).await;

    // bob's block names a tool alice's root never allowed: widening fails.
    let wide = narrow(&f, &root(&f), BOB, &["rec/echo", "rec/admin"], Vec::new());
    let r = call_with(&mut bob, "rec/admin", "hi", &wide).await;
    assert_refused(&f, &r, "delegation", "delegation refused");
    // A block without a tool restriction does not widen either.
    let r = call_with(&mut bob, "rec/admin", "hi", &root(&f)).await;
    assert_refused(&f, &r, "delegation", "");

    // carol replays bob's token: refused (held by bob).
    let to_bob = narrow(&f, &root(&f), BOB, &["rec/echo"], Vec::new());
    let mut carol = agent(&f, CAROL).await;
    let r = call_with(&mut carol, "rec/echo", "hi", &to_bob).await;
    assert_refused(&f, &r, "delegation", "presented by");

    // Three delegations exceed `max_depth = 2`.
    let to_carol = narrow(&f, &to_bob, CAROL, &["rec/echo"], Vec::new());
    let to_dave = narrow(&f, &to_carol, DAVE, &["rec/echo"], Vec::new());
    let mut dave = agent(&f, DAVE).await;
    let r = call_with(&mut dave, "rec/echo", "hi", &to_dave).await;
    assert_refused(&f, &r, "delegation", "exceeds the maximum");

    // A token from another root.
    let other = DelegationIssuer::generate()
        .mint(
            &id(BOB),
            &["rec/echo".to_owned()],
            SystemTime::now(),
            in_an_hour(),
        )
        .unwrap();
    let r = call_with(&mut bob, "rec/echo", "hi", &other).await;
    assert_refused(&f, &r, "delegation", "");
    assert!(f.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_header_carries_the_token() {
    let f = fixture().await;
    // The HTTP face in loopback mode: every caller is bob (`http_agent`).
    let cfg = GatewayConfig::parse(&manifest(f.dir.path(), &f.url, &f.issuer, "http")).unwrap();
    let gw = Gateway::new(cfg, f.authority.clone()).unwrap();
    let face = HttpFace::new(gw).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    let f2 = face.clone();
    tokio::spawn(async move { f2.serve(l).await });

    let client = reqwest::Client::new();
    let post = |headers: Vec<(&'static str, String)>, body: Value| {
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let resp = req
                .body(serde_json::to_vec(&body).unwrap())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let sid = resp
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_owned());
            let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null);
            (status, sid, v)
        }
    };
    let (code, sid, _) = post(
        Vec::new(),
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
               "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}),
    )
    .await;
    assert_eq!(code, 200);
    let sid = sid.unwrap();
    let to_bob = narrow(&f, &root(&f), BOB, &["rec/echo"], Vec::new())
        .to_base64()
        .unwrap();
    let call = |m: &str| json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "rec/echo", "arguments": {"m": m}}});
    let (code, _, v) = post(
        vec![
            ("mcp-session-id", sid.clone()),
            ("warden-delegation", to_bob.clone()),
        ],
        call("hi"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(common::text(&v), "hi", "{v}");
    assert_eq!(last_decision(&f)["delegation"], json!([ALICE]));

    // Header and `_meta` naming different tokens: refused before anything else.
    let mut conflicting = call("hi");
    conflicting["params"]["_meta"] = json!({META_DELEGATION: root(&f).to_base64().unwrap()});
    let (code, _, _) = post(
        vec![
            ("mcp-session-id", sid.clone()),
            ("warden-delegation", to_bob),
        ],
        conflicting,
    )
    .await;
    assert_eq!(code, 400);

    // A token held by carol, presented by bob over HTTP: a logged refusal.
    let to_carol = narrow(&f, &root(&f), CAROL, &["rec/echo"], Vec::new())
        .to_base64()
        .unwrap();
    let (_, _, v) = post(
        vec![("mcp-session-id", sid), ("warden-delegation", to_carol)],
        call("hi"),
    )
    .await;
    assert_refused(&f, &v, "delegation", "presented by");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_a_delegation_root_refuses_tokens() {
    let f = fixture().await;
    let text = manifest(f.dir.path(), &f.url, &f.issuer, "noroot")
        .replace("[gateway.delegation]", "[unused]")
        .replace("max_depth = 2", "");
    let text = text
        .lines()
        .filter(|l| {
            !l.contains("root_public_key") && !l.contains("[unused]") && !l.contains("bundle_file")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = GatewayConfig::parse(&text).unwrap();
    let (mut bob, _gw) = Agent::start(cfg, f.authority.clone(), BOB).await;
    bob.initialize().await;
    let to_bob = narrow(&f, &root(&f), BOB, &["rec/echo"], Vec::new());
    let r = call_with(&mut bob, "rec/echo", "hi", &to_bob).await;
    assert_refused(&f, &r, "delegation", "accepts no delegation tokens");
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What a thief holding `token`'s bytes and its own valid SVID can build: a third-party block
/// naming itself as the next holder, signed with its own key and carrying its own chain.
fn forged_hop(token: &DelegationToken, thief: &X509Svid) -> DelegationToken {
    use base64::Engine as _;
    use warden_identity::delegation::biscuit_auth::{Algorithm, BlockBuilder, PrivateKey};
    let key = PrivateKey::from_der_with_algorithm(thief.private_key_pkcs8(), Algorithm::Secp256r1)
        .unwrap();
    let issued = now_secs();
    let chain: Vec<String> = thief
        .cert_chain()
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_ref()))
        .collect();
    let context = json!({"holder": thief.spiffe_id().to_string(), "issued": issued, "svid": chain});
    let block = BlockBuilder::new().context(context.to_string());
    let signed = token
        .biscuit()
        .third_party_request()
        .unwrap()
        .create_block(&key, block)
        .unwrap();
    DelegationToken::from_biscuit(
        token
            .biscuit()
            .append_third_party(key.public(), signed)
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_token_extended_by_the_thief_is_refused() {
    let f = fixture().await;
    let to_bob = narrow(&f, &root(&f), BOB, &["rec/echo"], Vec::new());
    // carol steals bob's token and appends a block naming herself, signed with her own SVID.
    let carol_svid = f.ca.mint_x509_svid(&id(CAROL)).unwrap();
    let stolen = forged_hop(&to_bob, &carol_svid);
    let mut carol = agent(&f, CAROL).await;
    let r = call_with(&mut carol, "rec/echo", "hi", &stolen).await;
    assert_refused(
        &f,
        &r,
        "delegation",
        &format!("is signed by `{CAROL}`, but the token it narrows is held by `{BOB}`"),
    );
    // bob, the real holder, delegating to carol with his own SVID: allowed.
    let honest = narrow(&f, &to_bob, CAROL, &["rec/echo"], Vec::new());
    let r = call_with(&mut carol, "rec/echo", "hi", &honest).await;
    // Two delegations: verified, then denied by the Cedar depth rule (not by the verifier).
    assert_refused(&f, &r, "no-deep-delegation", "at most one delegation");

    // A block appended without any delegator signature (plain Biscuit attenuation).
    let plain = DelegationToken::from_biscuit(
        to_bob
            .biscuit()
            .append(
                warden_identity::delegation::biscuit_auth::BlockBuilder::new()
                    .context(json!({"holder": CAROL, "issued": now_secs()}).to_string()),
            )
            .unwrap(),
    );
    let r = call_with(&mut carol, "rec/echo", "hi", &plain).await;
    assert_refused(&f, &r, "delegation", "not signed by its delegator");

    // bob's SVID from a CA the gateway does not trust.
    let foreign = test_ca().mint_x509_svid(&id(BOB)).unwrap();
    let r = call_with(
        &mut carol,
        "rec/echo",
        "hi",
        &narrow_as(&foreign, &to_bob, CAROL, &["rec/echo"], Vec::new()),
    )
    .await;
    assert_refused(&f, &r, "delegation", "delegator SVID refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delegation_bundle_comes_from_a_file_or_the_embedded_ca() {
    let f = fixture().await;
    let base = manifest(f.dir.path(), &f.url, &f.issuer, "bundle");
    let without_file: String = base
        .lines()
        .filter(|l| !l.contains("bundle_file"))
        .collect::<Vec<_>>()
        .join("\n");
    // Neither a bundle file nor `[identity]`: a configuration error (fail closed).
    let err = GatewayConfig::parse(&without_file).unwrap_err().to_string();
    assert!(err.contains("bundle_file"), "{err}");
    // A bundle file that is not a SPIFFE bundle.
    std::fs::write(f.dir.path().join("bad.jwks"), "{}").unwrap();
    let bad = base.replace("bundle.jwks", "bad.jwks");
    assert!(GatewayConfig::parse(&bad).is_err());
    assert!(
        GatewayConfig::parse(&base)
            .unwrap()
            .delegation_follows_authority()
            .is_none()
    );

    // With `[identity]` and no file, the verifier follows the embedded CA's bundle, which
    // the process running the CA sets; until then every delegated token is refused.
    let with_identity = format!("{without_file}\n[identity]\ntrust_domain = \"example.org\"\n");
    let cfg = GatewayConfig::parse(&with_identity).unwrap();
    let trust = cfg.delegation_follows_authority().unwrap().clone();
    let (mut bob, _gw) = Agent::start(cfg, f.authority.clone(), BOB).await;
    bob.initialize().await;
    let to_bob = narrow(&f, &root(&f), BOB, &["rec/echo"], Vec::new());
    let r = call_with(&mut bob, "rec/echo", "hi", &to_bob).await;
    assert_refused(&f, &r, "delegation", "no X.509 authorities");
    trust.set(f.ca.bundle());
    let r = call_with(&mut bob, "rec/echo", "hi", &to_bob).await;
    assert_eq!(common::text(&r), "hi", "{r}");
}
