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
        .args(["--listen", "127.0.0.1:0"])
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
