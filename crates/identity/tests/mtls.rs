//! mTLS by SPIFFE ID: our rustls configurations against `spiffe-rustls` fed by an `X509Source`
//! from our Workload API, and against each other.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::id;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use warden_identity::tls::{
    Authorizer, SpiffeIdMatcher, SvidStore, TrustStore, client_config, peer_spiffe_id,
    server_config,
};
use warden_identity::workload::{EntryStore, SharedAuthority, WorkloadApi};
use warden_identity::{CertificateAuthority, RegistrationEntry, Selector, SpiffeId, TrustDomain};

/// Runs one TLS exchange over an in-memory pipe; returns what each side saw of the other.
async fn exchange(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> (Result<SpiffeId, String>, Result<SpiffeId, String>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_side = tokio::spawn(async move {
        let mut tls = acceptor.accept(s).await.map_err(|e| e.to_string())?;
        let peer = peer_spiffe_id(tls.get_ref().1).map_err(|e| e.to_string())?;
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let connector = TlsConnector::from(Arc::new(client));
    let client_side = async move {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector
            .connect(name, c)
            .await
            .map_err(|e| e.to_string())?;
        let peer = peer_spiffe_id(tls.get_ref().1).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    };
    let client_result = tokio::time::timeout(Duration::from_secs(10), client_side)
        .await
        .unwrap();
    let server_result = tokio::time::timeout(Duration::from_secs(10), server_side)
        .await
        .unwrap()
        .unwrap();
    (server_result, client_result)
}

fn ours(
    ca: &CertificateAuthority,
    who: &str,
    authorizer: Authorizer,
) -> (SvidStore, TrustStore, Authorizer) {
    let svid = ca.mint_x509_svid(&id(who)).unwrap();
    (
        SvidStore::new(&svid).unwrap(),
        TrustStore::new(ca.bundle()),
        authorizer,
    )
}

fn our_client(
    ca: &CertificateAuthority,
    who: &str,
    authorizer: Authorizer,
) -> rustls::ClientConfig {
    let (s, t, a) = ours(ca, who, authorizer);
    client_config(s, t, a).unwrap()
}

fn our_server(
    ca: &CertificateAuthority,
    who: &str,
    authorizer: Authorizer,
) -> rustls::ServerConfig {
    let (s, t, a) = ours(ca, who, authorizer);
    server_config(s, t, a).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ours_against_ours_authorizes_by_spiffe_id() {
    let ca = common::ca("example.org");
    let gw = "spiffe://example.org/gateway";
    let agents = Authorizer::path_prefix(id("spiffe://example.org/agents"));

    let (s, c) = exchange(
        our_server(&ca, gw, agents.clone()),
        our_client(
            &ca,
            "spiffe://example.org/agents/a",
            Authorizer::exact(id(gw)),
        ),
    )
    .await;
    assert_eq!(s.unwrap(), id("spiffe://example.org/agents/a"));
    assert_eq!(c.unwrap(), id(gw));

    // Wrong SPIFFE ID: outside the prefix.
    let (s, c) = exchange(
        our_server(&ca, gw, agents.clone()),
        our_client(
            &ca,
            "spiffe://example.org/agentsx",
            Authorizer::exact(id(gw)),
        ),
    )
    .await;
    assert!(s.is_err() && c.is_err(), "{s:?} {c:?}");

    // The client refuses a server that is not the one it wants.
    let (_, c) = exchange(
        our_server(&ca, "spiffe://example.org/impostor", agents.clone()),
        our_client(
            &ca,
            "spiffe://example.org/agents/a",
            Authorizer::exact(id(gw)),
        ),
    )
    .await;
    let err = c.unwrap_err();
    assert!(err.contains("impostor"), "{err}");

    // A client SVID from a foreign CA (same trust domain name) is refused.
    let foreign = common::ca("example.org");
    let (s, _) = exchange(
        our_server(&ca, gw, agents.clone()),
        our_client(
            &foreign,
            "spiffe://example.org/agents/a",
            Authorizer::exact(id(gw)),
        ),
    )
    .await;
    assert!(s.is_err());

    // An expired client SVID is refused.
    let old = common::ca_at("example.org", common::fixed(common::hours_ago(3)));
    let (svid, _, _) = ours(&old, "spiffe://example.org/agents/a", Authorizer::default());
    let mut trust = ca.bundle().x509_authorities().to_vec();
    trust.extend(old.bundle().x509_authorities().iter().cloned());
    let both = warden_identity::TrustBundle::new(
        TrustDomain::new("example.org").unwrap(),
        trust,
        vec![],
        1,
        Duration::from_secs(60),
    );
    let (server_svid, _, _) = ours(&ca, gw, Authorizer::default());
    let (s, _) = exchange(
        server_config(server_svid, TrustStore::new(both.clone()), agents.clone()).unwrap(),
        client_config(svid, TrustStore::new(both), Authorizer::exact(id(gw))).unwrap(),
    )
    .await;
    let err = s.unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");

    // Trust-domain authorizer, and an empty authorizer that admits nobody.
    let (s, _) = exchange(
        our_server(
            &ca,
            gw,
            Authorizer::trust_domain(TrustDomain::new("example.org").unwrap()),
        ),
        our_client(
            &ca,
            "spiffe://example.org/anything",
            Authorizer::exact(id(gw)),
        ),
    )
    .await;
    assert!(s.is_ok());
    let (s, _) = exchange(
        our_server(&ca, gw, Authorizer::any_of(vec![])),
        our_client(
            &ca,
            "spiffe://example.org/anything",
            Authorizer::exact(id(gw)),
        ),
    )
    .await;
    assert!(s.is_err());
    let _ = SpiffeIdMatcher::Exact(id(gw));
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_rustls_peers_authorize_by_spiffe_id() {
    // Our Workload API hands this process `spiffe://example.org/svc/peer`.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let shared = SharedAuthority::new(common::ca("example.org"));
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let entries = EntryStore::new(vec![
        RegistrationEntry::new(
            id("spiffe://example.org/svc/peer"),
            vec![Selector::Uid(uid)],
            None,
        )
        .unwrap(),
    ]);
    let api = WorkloadApi::new(shared.clone(), entries);
    let (stop, stopped) = oneshot::channel::<()>();
    let path = socket.clone();
    tokio::spawn(async move {
        api.serve(&path, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let source = spiffe::X509Source::builder()
        .endpoint(format!("unix:{}", socket.display()))
        .build()
        .await
        .unwrap();
    let ca_view = |who: &str, a: Authorizer| -> rustls::ClientConfig {
        let svid = shared.mint_x509_svid(&id(who)).unwrap();
        client_config(
            SvidStore::new(&svid).unwrap(),
            TrustStore::new(shared.bundle()),
            a,
        )
        .unwrap()
    };
    let peer = "spiffe://example.org/svc/peer";

    // spiffe-rustls server admitting only agent A.
    let server = spiffe_rustls::mtls_server(source.clone())
        .authorize(spiffe_rustls::authorizer::exact(["spiffe://example.org/agents/a"]).unwrap())
        .build()
        .unwrap();
    let (s, c) = exchange(
        server.clone(),
        ca_view("spiffe://example.org/agents/a", Authorizer::exact(id(peer))),
    )
    .await;
    assert_eq!(s.unwrap(), id("spiffe://example.org/agents/a"));
    assert_eq!(c.unwrap(), id(peer));
    let (s, _) = exchange(
        server,
        ca_view("spiffe://example.org/agents/b", Authorizer::exact(id(peer))),
    )
    .await;
    assert!(s.is_err(), "spiffe-rustls must refuse agent B");

    // spiffe-rustls client against our server, which admits only `peer`.
    let client_ok = spiffe_rustls::mtls_client(source.clone())
        .authorize(spiffe_rustls::authorizer::exact(["spiffe://example.org/gateway"]).unwrap())
        .build()
        .unwrap();
    let gw_svid = shared
        .mint_x509_svid(&id("spiffe://example.org/gateway"))
        .unwrap();
    let our = |a: Authorizer| {
        server_config(
            SvidStore::new(&gw_svid).unwrap(),
            TrustStore::new(shared.bundle()),
            a,
        )
        .unwrap()
    };
    let (s, c) = exchange(our(Authorizer::exact(id(peer))), client_ok.clone()).await;
    assert_eq!(s.unwrap(), id(peer));
    assert_eq!(c.unwrap(), id("spiffe://example.org/gateway"));
    let (s, _) = exchange(
        our(Authorizer::exact(id("spiffe://example.org/someone-else"))),
        client_ok,
    )
    .await;
    assert!(
        s.is_err(),
        "our server must refuse a peer it was not told to admit"
    );
    // spiffe-rustls client that wants another server refuses ours.
    let client_picky = spiffe_rustls::mtls_client(source.clone())
        .authorize(
            spiffe_rustls::authorizer::exact(["spiffe://example.org/not-the-gateway"]).unwrap(),
        )
        .build()
        .unwrap();
    let (_, c) = exchange(our(Authorizer::exact(id(peer))), client_picky).await;
    assert!(c.is_err());

    source.shutdown().await;
    let _ = stop.send(());
}
