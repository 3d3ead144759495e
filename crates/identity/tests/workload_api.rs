//! The Workload API against clients we did not write: the `spiffe` crate's client,
//! `X509Source` and `JwtSource`; raw tonic calls for the negative cases.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::id;
use tokio::sync::oneshot;
use warden_identity::workload::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_identity::workload::proto::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};
use warden_identity::workload::{EntryStore, SharedAuthority, WorkloadApi};
use warden_identity::{RegistrationEntry, Selector, SvidUsage, verify_x509_svid};

struct Server {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    ca: SharedAuthority,
    entries: EntryStore,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn me_selectors() -> Vec<Selector> {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    vec![
        Selector::Uid(nix_uid()),
        Selector::Path(exe.to_str().unwrap().to_owned()),
    ]
}

fn nix_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn start(entries: Vec<RegistrationEntry>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let ca = SharedAuthority::new(common::ca("example.org"));
    let store = EntryStore::new(entries);
    let api = WorkloadApi::new(ca.clone(), store.clone());
    let (tx, rx) = oneshot::channel();
    let path = socket.clone();
    tokio::spawn(async move {
        api.serve(&path, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Server {
        _dir: dir,
        socket,
        ca,
        entries: store,
        stop: Some(tx),
    }
}

fn entry(spiffe_id: &str, selectors: Vec<Selector>) -> RegistrationEntry {
    RegistrationEntry::new(id(spiffe_id), selectors, None).unwrap()
}

fn endpoint(socket: &Path) -> String {
    format!("unix:{}", socket.display())
}

async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_crate_fetches_svids_and_bundles() {
    let server = start(vec![entry(
        "spiffe://example.org/agent/test",
        me_selectors(),
    )])
    .await;
    let client = spiffe::WorkloadApiClient::connect_to(endpoint(&server.socket))
        .await
        .unwrap();

    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/agent/test"
    );
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.as_ref().to_vec()))
        .collect();
    verify_x509_svid(
        &chain,
        &server.ca.bundle(),
        SystemTime::now(),
        SvidUsage::Client,
    )
    .unwrap();

    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    assert_eq!(bundles.get(&td).unwrap().authorities().len(), 1);

    let jwt = client.fetch_jwt_svid(["gateway"], None).await.unwrap();
    assert_eq!(
        jwt.spiffe_id().to_string(),
        "spiffe://example.org/agent/test"
    );
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let parsed =
        spiffe::JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["gateway"]).unwrap();
    assert_eq!(
        parsed.spiffe_id().to_string(),
        "spiffe://example.org/agent/test"
    );
    // The client's own validation refuses a wrong audience.
    assert!(spiffe::JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["other"]).is_err());

    // ValidateJWTSVID through the API: valid, wrong audience, tampered.
    let ok = client
        .validate_jwt_token("gateway", jwt.token())
        .await
        .unwrap();
    assert_eq!(
        ok.spiffe_id().to_string(),
        "spiffe://example.org/agent/test"
    );
    assert!(
        client
            .validate_jwt_token("other", jwt.token())
            .await
            .is_err()
    );
    let mut tampered = jwt.token().to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert!(
        client
            .validate_jwt_token("gateway", &tampered)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sources_see_rotation() {
    let server = start(vec![entry(
        "spiffe://example.org/agent/test",
        me_selectors(),
    )])
    .await;
    let source = spiffe::X509Source::builder()
        .endpoint(endpoint(&server.socket))
        .build()
        .await
        .unwrap();
    let before = source.svid().unwrap();
    let mut updates = source.updated();
    server.ca.rotate().unwrap();
    tokio::time::timeout(Duration::from_secs(10), updates.changed())
        .await
        .unwrap()
        .unwrap();
    let after = source.svid().unwrap();
    assert_ne!(
        before.cert_chain()[0].as_ref(),
        after.cert_chain()[0].as_ref()
    );
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = source.try_bundle_for_trust_domain(&td).unwrap();
    assert_eq!(bundle.authorities().len(), 2, "old and new CA both trusted");
    source.shutdown().await;

    let jwt_source = spiffe::JwtSource::builder()
        .endpoint(endpoint(&server.socket))
        .build()
        .await
        .unwrap();
    let jwt = jwt_source.fetch_jwt_svid(["svc"]).await.unwrap();
    let set = jwt_source.bundle_set().unwrap();
    spiffe::JwtSvid::parse_and_validate(jwt.token(), &*set, &["svc"]).unwrap();
    jwt_source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_header_is_invalid_argument() {
    let server = start(vec![entry(
        "spiffe://example.org/agent/test",
        me_selectors(),
    )])
    .await;
    let mut client = raw_client(&server.socket).await;
    let err = client
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut bad = tonic::Request::new(JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    });
    bad.metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    assert_eq!(
        client.fetch_jwtsvid(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    // With the header the same call succeeds: the refusal above is the header's doing.
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1);
    // No audience: InvalidArgument.
    let err = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // An identity the caller was not issued: PermissionDenied.
    let err = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: "spiffe://example.org/other".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x.y.z".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn unregistered_caller_is_permission_denied() {
    // Registered: same path, another uid. All selectors must match, so we are not.
    let mut sel = me_selectors();
    sel[0] = Selector::Uid(nix_uid().wrapping_add(4242));
    let server = start(vec![entry("spiffe://example.org/agent/other", sel)]).await;
    let mut client = raw_client(&server.socket).await;
    let err = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let spiffe_client = spiffe::WorkloadApiClient::connect_to(endpoint(&server.socket))
        .await
        .unwrap();
    assert!(spiffe_client.fetch_x509_svid().await.is_err());

    // Registering the caller while a stream is refused, then removing it, ends an open stream.
    server.entries.set(vec![entry(
        "spiffe://example.org/agent/test",
        me_selectors(),
    )]);
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().svids.len(), 1);
    server.entries.set(vec![]);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap();
    assert_eq!(end.unwrap_err().code(), tonic::Code::PermissionDenied);
}
