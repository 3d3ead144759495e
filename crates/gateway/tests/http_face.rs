//! Security checks of the Streamable HTTP face, and HTTP upstreams (the real server-everything
//! in `streamableHttp` mode, and a recording server that proves the agent's bearer never goes
//! upstream).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{TestLog, authority, npm_bin};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};
use warden_gateway::{Gateway, GatewayConfig, HttpFace, jsonrpc};

struct Key {
    enc: EncodingKey,
    kid: String,
    jwk: Value,
}

fn key(kid: &str) -> Key {
    let secret = p256::SecretKey::random(&mut rand_core_06::OsRng);
    let der = secret.to_pkcs8_der().unwrap();
    let enc = EncodingKey::from_ec_der(der.as_bytes());
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("jwt-svid");
    Key {
        enc,
        kid: kid.into(),
        jwk,
    }
}

fn token(k: &Key, sub: &str, aud: &str, exp_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(
        &h,
        &json!({"sub": sub, "aud": aud, "exp": now + exp_in}),
        &k.enc,
    )
    .unwrap()
}

/// An MCP server (legacy, Streamable HTTP, JSON answers) that records the headers it receives.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    use axum::{Json, Router, http::HeaderMap, routing::post};
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let seen2 = seen.clone();
    let app = Router::new().route(
        "/mcp",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let seen = seen2.clone();
            async move {
                for (k, v) in &headers {
                    seen.lock().unwrap().push((k.to_string(), v.to_str().unwrap_or_default().to_owned()));
                }
                let id = body["id"].clone();
                let result = match body["method"].as_str().unwrap_or_default() {
                    "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "rec", "version": "0"}}),
                    "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object", "properties": {"m": {"type": "string"}}}}]}),
                    "tools/call" => json!({"content": [{"type": "text", "text": body["params"]["arguments"]["m"]}],
                                           "cert_seen": body["params"]["_meta"]["dev.warden/certificate"].is_object()}),
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

struct Face {
    url: String,
    good: Key,
    _dir: tempfile::TempDir,
    _face: Arc<HttpFace>,
    _log: Arc<TestLog>,
}

async fn face(eras: &str, extra: &str) -> Face {
    face_with("", eras, extra).await
}

/// As [`face`], with `settings` added to the `[gateway]` table.
async fn face_with(settings: &str, eras: &str, extra: &str) -> Face {
    let dir = tempfile::tempdir().unwrap();
    let good = key("k1");
    let jwks = dir.path().join("bundle.jwks");
    std::fs::write(
        &jwks,
        serde_json::to_vec(&json!({"keys": [good.jwk]})).unwrap(),
    )
    .unwrap();
    let text = format!(
        r#"
        trust_domain = "example.org"
        [agents.alice]
        id = "spiffe://example.org/agent/alice"
        [agents.bob]
        id = "spiffe://example.org/agent/bob"
        [gateway]
        pins = "{pins}"
        jwks = "{jwks}"
        audience = "warden-test"
        approvers = ["spiffe://example.org/human/alice"]
        {settings}
        [gateway.eras]
        {eras}
        {extra}
        "#,
        pins = dir.path().join("pins.json").display(),
        jwks = jwks.display(),
    );
    let cfg = GatewayConfig::parse(&text).unwrap();
    let log = TestLog::new();
    let gw = Gateway::new(cfg, authority(&text, &log)).unwrap();
    let face = HttpFace::new(gw).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    let f2 = face.clone();
    tokio::spawn(async move { f2.serve(l).await });
    Face {
        url,
        good,
        _dir: dir,
        _face: face,
        _log: log,
    }
}

fn init_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
           "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}})
}

async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text)
        .or_else(|_| {
            text.lines()
                .rev()
                .find_map(|l| l.strip_prefix("data: "))
                .map(serde_json::from_str)
                .unwrap_or(Ok(Value::Null))
        })
        .unwrap_or(Value::Null);
    (status, h, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_origin_and_session_checks() {
    let f = face("", "").await;
    let alice = format!(
        "Bearer {}",
        token(
            &f.good,
            "spiffe://example.org/agent/alice",
            "warden-test",
            300
        )
    );
    let bob = format!(
        "Bearer {}",
        token(
            &f.good,
            "spiffe://example.org/agent/bob",
            "warden-test",
            300
        )
    );
    let other = key("k1");
    let forged = format!(
        "Bearer {}",
        token(
            &other,
            "spiffe://example.org/agent/alice",
            "warden-test",
            300
        )
    );
    let expired = format!(
        "Bearer {}",
        token(
            &f.good,
            "spiffe://example.org/agent/alice",
            "warden-test",
            -600
        )
    );
    let wrong_aud = format!(
        "Bearer {}",
        token(
            &f.good,
            "spiffe://example.org/agent/alice",
            "elsewhere",
            300
        )
    );
    let not_spiffe = format!("Bearer {}", token(&f.good, "alice", "warden-test", 300));

    assert_eq!(post(&f.url, &[], &init_body()).await.0, 401);
    for bad in [&forged, &expired, &wrong_aud, &not_spiffe] {
        assert_eq!(
            post(&f.url, &[("authorization", bad)], &init_body())
                .await
                .0,
            401,
            "{bad}"
        );
    }
    let (code, _, _) = post(
        &f.url,
        &[("authorization", &alice), ("origin", "http://evil.example")],
        &init_body(),
    )
    .await;
    assert_eq!(code, 403);
    let (code, headers, body) = post(
        &f.url,
        &[
            ("authorization", &alice),
            ("origin", "http://localhost:3000"),
        ],
        &init_body(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"]["protocolVersion"], "2025-11-25");
    let sid = headers
        .get("mcp-session-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();

    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    assert_eq!(
        post(&f.url, &[("authorization", &alice)], &ping).await.0,
        400,
        "no session id"
    );
    assert_eq!(
        post(
            &f.url,
            &[("authorization", &alice), ("mcp-session-id", &sid)],
            &ping
        )
        .await
        .0,
        200
    );
    // Another agent cannot ride alice's session.
    assert_eq!(
        post(
            &f.url,
            &[("authorization", &bob), ("mcp-session-id", &sid)],
            &ping
        )
        .await
        .0,
        404
    );
    // Duplicate keys are refused before anything else reads the body.
    let resp = reqwest::Client::new()
        .post(&f.url)
        .header("authorization", &alice)
        .header("mcp-session-id", &sid)
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":3,"method":"ping","method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Approvals endpoint: agents are not approvers.
    let list = reqwest::Client::new()
        .get(f.url.replace("/mcp", "/warden/approvals"))
        .header("authorization", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status().as_u16(), 403);
    let human = format!(
        "Bearer {}",
        token(
            &f.good,
            "spiffe://example.org/human/alice",
            "warden-test",
            300
        )
    );
    let list = reqwest::Client::new()
        .get(f.url.replace("/mcp", "/warden/approvals"))
        .header("authorization", &human)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_headers_must_match_the_body() {
    let f = face("", "").await;
    let alice = format!(
        "Bearer {}",
        token(
            &f.good,
            "spiffe://example.org/agent/alice",
            "warden-test",
            300
        )
    );
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x/y", "arguments": {}, "_meta": meta}});
    let good = [
        ("authorization", alice.as_str()),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "x/y"),
    ];
    let (code, _, body) = post(&f.url, &good, &call).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["error"]["code"],
        jsonrpc::INVALID_PARAMS,
        "unknown tool, but headers fine: {body}"
    );

    let mut bad = good;
    bad[3] = ("mcp-name", "x/other");
    let (code, _, body) = post(&f.url, &bad, &call).await;
    assert_eq!(
        (code, body["error"]["code"].as_i64()),
        (400, Some(jsonrpc::HEADER_MISMATCH))
    );
    let mut bad = good;
    bad[2] = ("mcp-method", "tools/list");
    let (code, _, body) = post(&f.url, &bad, &call).await;
    assert_eq!(
        (code, body["error"]["code"].as_i64()),
        (400, Some(jsonrpc::HEADER_MISMATCH))
    );
    let mut bad = good;
    bad[1] = ("mcp-protocol-version", "2025-11-25");
    let (code, _, body) = post(&f.url, &bad, &call).await;
    assert_eq!(
        (code, body["error"]["code"].as_i64()),
        (400, Some(jsonrpc::HEADER_MISMATCH))
    );

    // A header the face decides on, sent twice, is refused even when its first value matches:
    // something in front of the face reading the last one would see another call.
    for (name, second) in [
        ("mcp-name", "x/other"),
        ("mcp-method", "tools/list"),
        ("mcp-protocol-version", "2025-11-25"),
        ("origin", "http://evil.example"),
        ("authorization", "Bearer x"),
    ] {
        let mut twice = good.to_vec();
        if name == "origin" {
            twice.push(("origin", "http://localhost"));
        }
        twice.push((name, second));
        let (code, _, body) = post(&f.url, &twice, &call).await;
        // Refused before the body is read, not the unknown tool's error.
        assert_eq!(code, 400, "{name} twice: {body}");
        let why = body["error"]["message"].as_str().unwrap_or_default();
        assert!(why.contains("more than once"), "{name} twice: {body}");
    }

    let mut old = call.clone();
    old["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let mut hdr = good;
    hdr[1] = ("mcp-protocol-version", "2099-01-01");
    let (code, _, body) = post(&f.url, &hdr, &old).await;
    assert_eq!(
        (code, body["error"]["code"].as_i64()),
        (400, Some(jsonrpc::UNSUPPORTED_PROTOCOL_VERSION))
    );
    assert!(
        body["error"]["data"]["supported"]
            .as_array()
            .unwrap()
            .contains(&json!("2026-07-28"))
    );

    let discover =
        json!({"jsonrpc": "2.0", "id": 2, "method": "server/discover", "params": {"_meta": meta}});
    let (code, _, body) = post(
        &f.url,
        &[
            ("authorization", &alice),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "server/discover"),
        ],
        &discover,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["result"]["resultType"], "complete");
    assert!(
        body["result"]["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("2025-11-25"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_never_goes_upstream_and_http_upstreams_work() {
    let (rec_url, seen) = recording_upstream().await;
    // The real server-everything over Streamable HTTP.
    let port = common::free_port();
    let mut cmd = tokio::process::Command::new(npm_bin("mcp-server-everything"));
    cmd.arg("streamableHttp").env("PORT", port.to_string());
    let _everything = common::spawn_listening(cmd, port).await;
    let f = face(
        "rec = \"legacy\"\nevery = \"legacy\"",
        &format!(
            "[servers.rec]\nurl = \"{rec_url}\"\n[servers.every]\nurl = \"http://127.0.0.1:{port}/mcp\"\n\
             [[allow]]\nid = \"alice-echo\"\nagents = [\"alice\"]\ntools = [\"rec/echo\", \"every/echo\"]\n"
        ),
    )
    .await;
    let jwt = token(
        &f.good,
        "spiffe://example.org/agent/alice",
        "warden-test",
        300,
    );
    let alice = format!("Bearer {jwt}");
    let (_, headers, _) = post(&f.url, &[("authorization", &alice)], &init_body()).await;
    let sid = headers
        .get("mcp-session-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let h = [
        ("authorization", alice.as_str()),
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (_, _, listed) = post(
        &f.url,
        &h,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"rec/echo") && names.contains(&"every/echo"),
        "{names:?}"
    );
    let (_, _, r) = post(&f.url, &h, &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "rec/echo", "arguments": {"m": "hi"}}})).await;
    assert_eq!(r["result"]["content"][0]["text"], "hi", "{r}");
    assert_eq!(r["result"]["cert_seen"], true);
    let (_, _, r) = post(&f.url, &h, &json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "every/echo", "arguments": {"message": "hello"}}})).await;
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("hello"),
        "{r}"
    );
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|(k, v)| k != "authorization" && !v.contains(&jwt)),
        "{seen:?}"
    );
}

/// One agent's `initialize`s cannot grow the face without bound: past
/// `max_sessions_per_agent` its oldest session ends; other agents' sessions are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_legacy_sessions_are_bounded_oldest_ended_first() {
    let f = face_with("max_sessions_per_agent = 2", "", "").await;
    let bearer = |who: &str| {
        format!(
            "Bearer {}",
            token(
                &f.good,
                &format!("spiffe://example.org/agent/{who}"),
                "warden-test",
                300
            )
        )
    };
    let (alice, bob) = (bearer("alice"), bearer("bob"));
    let open = |auth: String| {
        let url = f.url.clone();
        async move {
            let (code, headers, body) = post(&url, &[("authorization", &auth)], &init_body()).await;
            assert_eq!(code, 200, "{body}");
            headers["mcp-session-id"].to_str().unwrap().to_owned()
        }
    };
    let bobs = open(bob.clone()).await;
    let mut alices = Vec::new();
    for _ in 0..3 {
        alices.push(open(alice.clone()).await);
    }
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    let alive = |auth: String, sid: String| {
        let (url, ping) = (f.url.clone(), ping.clone());
        async move {
            post(
                &url,
                &[("authorization", &auth), ("mcp-session-id", &sid)],
                &ping,
            )
            .await
            .0
        }
    };
    assert_eq!(
        alive(alice.clone(), alices[0].clone()).await,
        404,
        "the oldest ended"
    );
    assert_eq!(alive(alice.clone(), alices[1].clone()).await, 200);
    assert_eq!(alive(alice.clone(), alices[2].clone()).await, 200);
    assert_eq!(alive(bob, bobs).await, 200, "another agent's session stays");
}
