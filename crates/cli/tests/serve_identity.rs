//! `warden serve --workload-socket`: the real binary serves the SPIFFE Workload API from the
//! manifest's `[identity]` CA and entries, next to the HTTP face or alone (`--no-http`), and the
//! Rust `spiffe` crate's client fetches from it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `warden serve` child, killed on drop.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    // The owner of a file this process just created is its effective uid.
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid()
}

/// A CA in `dir/id` and a manifest registering `agent/me` for uid `uid`.
fn setup(dir: &Path, uid: u32) -> PathBuf {
    let id_dir = dir.join("id");
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["identity", "ca", "init", "--trust-domain", "example.org"])
        .env("WARDEN_IDENTITY_DIR", &id_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.join("cert.key");
    std::fs::write(&key, "07".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = dir.join("warden.toml");
    std::fs::write(
        &config,
        format!(
            r#"
trust_domain = "example.org"
[agents.me]
id = "spiffe://example.org/agent/me"
[certificates]
signing_key = "cert.key"
[gateway]
http_agent = "spiffe://example.org/agent/me"
[identity]
trust_domain = "example.org"
ca_file = "id/ca.json"
[[identity.entries]]
spiffe_id = "spiffe://example.org/agent/me"
selectors = ["unix:uid:{uid}"]
"#
        ),
    )
    .unwrap();
    config
}

fn serve(dir: &Path, config: &Path, socket: &Path, extra: &[&str]) -> Serve {
    let child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--workload-socket")
        .arg(socket)
        .args(if extra.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        })
        .args(extra)
        .env("WARDEN_IDENTITY_DIR", dir.join("id"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut serve = Serve(child);
    let start = Instant::now();
    while !socket.exists() {
        if let Some(status) = serve.0.try_wait().unwrap() {
            panic!("warden serve exited early: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    serve
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_hands_svids_to_registered_callers_only() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), uid());
    let socket = tmp.path().join("workload.sock");
    let mut server = serve(tmp.path(), &config, &socket, &[]);

    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display()))
        .await
        .unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/agent/me"
    );
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    assert!(bundles.get(&td).is_some());
    // The HTTP face runs in the same process.
    assert!(server.0.try_wait().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_caller_is_refused_and_no_http_serves_the_api_alone() {
    let tmp = tempfile::tempdir().unwrap();
    // Registered for another uid: this process is not.
    let config = setup(tmp.path(), uid().wrapping_add(4242));
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            // Alone: no HTTP face, so no HTTP identity is needed either.
            .replace(
                "[gateway]\nhttp_agent = \"spiffe://example.org/agent/me\"\n",
                "",
            ),
    )
    .unwrap();
    let socket = tmp.path().join("workload.sock");
    let _server = serve(tmp.path(), &config, &socket, &["--no-http"]);

    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display()))
        .await
        .unwrap();
    let err = client.fetch_x509_svid().await.unwrap_err();
    let text = format!("{err:?} {err}").to_lowercase();
    assert!(
        // The `spiffe` client reports the refused stream as "no identity issued".
        text.contains("permissiondenied") || text.contains("noidentityissued"),
        "expected PermissionDenied, got {err:?}"
    );
}

/// An HTTPS `initialize` to `addr` presenting `svid`; the HTTP status line, or the error.
async fn mtls_initialize(
    addr: std::net::SocketAddr,
    ca: &warden_identity::CertificateAuthority,
    svid: &warden_identity::X509Svid,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use warden_identity::tls::{Authorizer, SvidStore, TrustStore, client_config};
    let config = client_config(
        SvidStore::new(svid).unwrap(),
        TrustStore::new(ca.bundle()),
        Authorizer::exact(
            warden_identity::SpiffeId::new("spiffe://example.org/warden/gateway").unwrap(),
        ),
    )
    .unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
    let go = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\naccept: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        text.lines()
            .next()
            .filter(|l| l.starts_with("HTTP/"))
            .map(str::to_owned)
            .ok_or_else(|| format!("no HTTP response: {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(20), go)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_gateway_tls_requires_a_configured_client_svid() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), uid());
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace(
            "[gateway]\nhttp_agent = \"spiffe://example.org/agent/me\"\n",
            "[gateway.tls]\nspiffe_id = \"spiffe://example.org/warden/gateway\"\n",
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let socket = tmp.path().join("workload.sock");
    let listen = port.to_string();
    let mut server = serve(tmp.path(), &config, &socket, &["--listen", &listen]);
    let ca = warden_identity::CertificateAuthority::load(
        &tmp.path().join("id/ca.json"),
        std::sync::Arc::new(warden_identity::SystemClock),
        std::sync::Arc::new(warden_identity::OsRandom::new()),
    )
    .unwrap();
    let me = ca
        .mint_x509_svid(&warden_identity::SpiffeId::new("spiffe://example.org/agent/me").unwrap())
        .unwrap();
    // The TLS listener comes up after the Workload API socket: retry briefly.
    let start = Instant::now();
    let status = loop {
        match mtls_initialize(port, &ca, &me).await {
            Ok(s) => break s,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                assert!(server.0.try_wait().unwrap().is_none(), "serve exited: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no mTLS answer: {e}"),
        }
    };
    assert!(status.contains(" 200 "), "{status}");
    let stranger = ca
        .mint_x509_svid(
            &warden_identity::SpiffeId::new("spiffe://example.org/agent/stranger").unwrap(),
        )
        .unwrap();
    let r = mtls_initialize(port, &ca, &stranger).await;
    assert!(r.is_err(), "unconfigured agent got {r:?}");
}

/// `warden identity delegate` without `--svid-cert`: the delegator's SVID comes from the
/// Workload API at `SPIFFE_ENDPOINT_SOCKET`, and the block it signs verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_signs_with_the_svid_from_the_workload_api() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), uid());
    let socket = tmp.path().join("workload.sock");
    let _server = serve(tmp.path(), &config, &socket, &["--no-http"]);
    let identity = |args: &[&str], socket: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
        cmd.arg("identity")
            .args(args)
            .env("WARDEN_IDENTITY_DIR", tmp.path().join("id"))
            .env_remove("SPIFFE_ENDPOINT_SOCKET");
        if let Some(s) = socket {
            cmd.env("SPIFFE_ENDPOINT_SOCKET", format!("unix:{}", s.display()));
        }
        cmd.output().unwrap()
    };
    let me = "spiffe://example.org/agent/me";
    let root = identity(&["delegate", "--to", me, "--tools", "fs/read"], None);
    assert!(
        root.status.success(),
        "{}",
        String::from_utf8_lossy(&root.stderr)
    );
    let tok = tmp.path().join("me.tok");
    std::fs::write(&tok, &root.stdout).unwrap();
    let narrow = [
        "delegate",
        "--token",
        tok.to_str().unwrap(),
        "--to",
        "spiffe://example.org/b",
    ];
    // Without an SVID and without a Workload API: refused.
    let refused = identity(&narrow, None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("SPIFFE_ENDPOINT_SOCKET"));
    let out = identity(&narrow, Some(&socket));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    use warden_identity::delegation::{DelegationIssuer, DelegationVerifier, Presentation};
    let key = std::fs::read_to_string(tmp.path().join("id/delegation.key")).unwrap();
    let issuer = DelegationIssuer::from_private_key(&hex::decode(key.trim()).unwrap()).unwrap();
    let bundle = identity(&["bundle"], None);
    let bundle = warden_identity::TrustBundle::from_jwks(
        warden_identity::TrustDomain::new("example.org").unwrap(),
        &bundle.stdout,
    )
    .unwrap();
    let verifier = DelegationVerifier::new(
        &issuer.public_key(),
        warden_identity::tls::TrustStore::new(bundle),
    );
    let b = warden_identity::SpiffeId::new("spiffe://example.org/b").unwrap();
    let chain = verifier
        .authorize(
            std::str::from_utf8(&out.stdout).unwrap(),
            &Presentation {
                presenter: &b,
                tool: "fs/read",
                args: &[],
                now: std::time::SystemTime::now(),
            },
        )
        .unwrap();
    assert_eq!(chain.hops.first().unwrap().to_string(), me);
}
