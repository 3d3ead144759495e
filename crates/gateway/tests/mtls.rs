//! mTLS on the HTTP face (`[gateway.tls]`): a real rustls client (tokio-rustls) presenting
//! X.509-SVIDs minted by Warden's CA. The configured agent gets through; no client certificate,
//! a foreign CA, an expired SVID and an unconfigured SPIFFE ID are refused in the handshake; a
//! JWT-SVID bearer sent as well must name the same agent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{TestLog, authority};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::TlsConnector;
use warden_gateway::{Gateway, GatewayConfig, HttpFace, MtlsFace};
use warden_identity::tls::{Authorizer, SvidStore, TrustStore, client_config};
use warden_identity::workload::SharedAuthority;
use warden_identity::{
    CaPolicy, CertificateAuthority, FixedClock, OsRandom, SpiffeId, SystemClock, TrustDomain,
    X509Svid,
};

const ALICE: &str = "spiffe://example.org/agent/alice";
const BOB: &str = "spiffe://example.org/agent/bob";
const MALLORY: &str = "spiffe://example.org/agent/mallory";
const GATEWAY: &str = "spiffe://example.org/warden/gateway";

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

struct Fixture {
    addr: std::net::SocketAddr,
    ca: SharedAuthority,
    /// The same CA's keys on a clock three hours back, for expired SVIDs.
    past: CertificateAuthority,
    _dir: tempfile::TempDir,
    _log: Arc<TestLog>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let back = SystemTime::now() - Duration::from_secs(3 * 3600);
    let past = CertificateAuthority::generate(
        td(),
        CaPolicy::default(),
        Arc::new(FixedClock::new(back)),
        Arc::new(OsRandom::new()),
    )
    .unwrap();
    let ca_file = dir.path().join("ca.json");
    past.save(&ca_file).unwrap();
    let ca = CertificateAuthority::load(&ca_file, Arc::new(SystemClock), Arc::new(OsRandom::new()))
        .unwrap();
    let ca = SharedAuthority::new(ca);
    let jwks = dir.path().join("bundle.jwks");
    std::fs::write(&jwks, ca.bundle().to_jwks().unwrap()).unwrap();
    let text = format!(
        r#"
        trust_domain = "example.org"
        [agents.alice]
        id = "{ALICE}"
        [agents.bob]
        id = "{BOB}"
        [gateway]
        pins = "{pins}"
        jwks = "{jwks}"
        [gateway.tls]
        spiffe_id = "{GATEWAY}"
        "#,
        pins = dir.path().join("pins.json").display(),
        jwks = jwks.display(),
    );
    let cfg = GatewayConfig::parse(&text).unwrap();
    let log = TestLog::new();
    let gw = Gateway::new(cfg, authority(&text, &log)).unwrap();
    let face = HttpFace::new(gw.clone()).unwrap();
    // The plain face refuses to serve a TLS configuration.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    assert!(face.serve(plain).await.is_err());

    let mtls = MtlsFace::new(gw.config(), ca.clone()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { mtls.serve(&face, l).await });
    Fixture {
        addr,
        ca,
        past,
        _dir: dir,
        _log: log,
    }
}

/// Accepts any server certificate: for the client that presents no SVID at all (the server
/// must refuse it whatever the client thinks of the server).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client presenting `svid` that accepts only the gateway's SPIFFE ID under `f`'s bundle.
fn svid_client(f: &Fixture, svid: &X509Svid) -> rustls::ClientConfig {
    client_config(
        SvidStore::new(svid).unwrap(),
        TrustStore::new(f.ca.bundle()),
        Authorizer::exact(id(GATEWAY)),
    )
    .unwrap()
}

fn no_cert_client() -> rustls::ClientConfig {
    let provider = warden_identity::tls::provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth()
}

/// POSTs `initialize` to `/mcp` over TLS with `config`; the HTTP status, or the error.
async fn initialize(
    f: &Fixture,
    config: rustls::ClientConfig,
    bearer: Option<&str>,
) -> Result<(u16, Value), String> {
    let body = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    let connector = TlsConnector::from(Arc::new(config));
    let exchange = async {
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let auth = bearer
            .map(|b| format!("authorization: Bearer {b}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\naccept: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(&body).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
        let json = text
            .split("\r\n\r\n")
            .nth(1)
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        Ok((status, json))
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_agent_gets_through_and_others_are_refused() {
    let f = fixture().await;

    let alice = f.ca.mint_x509_svid(&id(ALICE)).unwrap();
    let (status, body) = initialize(&f, svid_client(&f, &alice), None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["protocolVersion"], "2025-11-25");

    // No client certificate.
    let r = initialize(&f, no_cert_client(), None).await;
    assert!(r.is_err(), "no client cert got {r:?}");

    // An SVID for alice from a foreign CA of the same trust domain.
    let foreign = CertificateAuthority::generate(
        td(),
        CaPolicy::default(),
        Arc::new(SystemClock),
        Arc::new(OsRandom::new()),
    )
    .unwrap()
    .mint_x509_svid(&id(ALICE))
    .unwrap();
    let r = initialize(&f, svid_client(&f, &foreign), None).await;
    assert!(r.is_err(), "foreign CA got {r:?}");

    // An SVID for alice from the right CA that expired two hours ago.
    let expired = f.past.mint_x509_svid(&id(ALICE)).unwrap();
    assert!(expired.expiry() < SystemTime::now());
    let r = initialize(&f, svid_client(&f, &expired), None).await;
    assert!(r.is_err(), "expired SVID got {r:?}");

    // A valid SVID for a SPIFFE ID that is not a configured agent.
    let mallory = f.ca.mint_x509_svid(&id(MALLORY)).unwrap();
    let r = initialize(&f, svid_client(&f, &mallory), None).await;
    assert!(r.is_err(), "unconfigured ID got {r:?}");

    // Bob is configured too.
    let bob = f.ca.mint_x509_svid(&id(BOB)).unwrap();
    assert_eq!(
        initialize(&f, svid_client(&f, &bob), None).await.unwrap().0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_and_client_svid_must_name_the_same_agent() {
    let f = fixture().await;
    let alice = f.ca.mint_x509_svid(&id(ALICE)).unwrap();
    let alice_jwt = f.ca.mint_jwt_svid(&id(ALICE), &["warden".into()]).unwrap();
    let bob_jwt = f.ca.mint_jwt_svid(&id(BOB), &["warden".into()]).unwrap();

    let (status, _) = initialize(&f, svid_client(&f, &alice), Some(&alice_jwt.token))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = initialize(&f, svid_client(&f, &alice), Some(&bob_jwt.token))
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, _) = initialize(&f, svid_client(&f, &alice), Some("not-a-jwt"))
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_presents_the_gateway_svid() {
    let f = fixture().await;
    let alice = f.ca.mint_x509_svid(&id(ALICE)).unwrap();
    // A client that accepts only another server ID refuses the gateway.
    let wrong = client_config(
        SvidStore::new(&alice).unwrap(),
        TrustStore::new(f.ca.bundle()),
        Authorizer::exact(id("spiffe://example.org/someone/else")),
    )
    .unwrap();
    assert!(initialize(&f, wrong, None).await.is_err());
}
