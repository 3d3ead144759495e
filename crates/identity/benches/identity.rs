//! Identity figures: SVID minting, Workload API fetch latency, mTLS handshake cost, delegation
//! chain verification at 1, 3 and 8 hops (new token from known delegators, new delegators,
//! repeated token), each beside a baseline measured in the same run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use warden_identity::delegation::{
    ArgValue, Attenuation, DelegationIssuer, DelegationKey, DelegationToken, DelegationVerifier,
    Presentation,
};
use warden_identity::tls::{Authorizer, SvidStore, TrustStore, client_config, server_config};
use warden_identity::workload::{EntryStore, SharedAuthority, WorkloadApi};
use warden_identity::{
    CaPolicy, CertificateAuthority, OsRandom, RegistrationEntry, Selector, SpiffeId, SystemClock,
    TrustDomain,
};

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(
        TrustDomain::new("example.org").unwrap(),
        CaPolicy::default(),
        Arc::new(SystemClock),
        Arc::new(OsRandom::new()),
    )
    .unwrap()
}

fn minting(c: &mut Criterion) {
    let ca = ca();
    let me = id("spiffe://example.org/agent/a");
    let aud = vec!["gateway".to_owned()];
    let mut g = c.benchmark_group("mint");
    g.bench_function("x509_svid", |b| {
        b.iter(|| black_box(ca.mint_x509_svid(&me).unwrap()))
    });
    g.bench_function("jwt_svid", |b| {
        b.iter(|| black_box(ca.mint_jwt_svid(&me, &aud).unwrap()))
    });
    // Baseline: generating the P-256 key alone, which every X.509-SVID needs.
    let rng = ring::rand::SystemRandom::new();
    g.bench_function("baseline_p256_keygen", |b| {
        b.iter(|| {
            black_box(
                ring::signature::EcdsaKeyPair::generate_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    &rng,
                )
                .unwrap(),
            )
        })
    });
    g.finish();
}

fn workload_api(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let uid: u32 = std::fs::read_to_string("/proc/self/status")
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
            id("spiffe://example.org/bench"),
            vec![Selector::Uid(uid)],
            None,
        )
        .unwrap(),
    ]);
    let api = WorkloadApi::new(SharedAuthority::new(ca()), entries);
    let path = socket.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(async move {
        api.serve(&path, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let endpoint = format!("unix:{}", socket.display());
    let client = rt
        .block_on(spiffe::WorkloadApiClient::connect_to(&endpoint))
        .unwrap();
    let mut g = c.benchmark_group("workload_api");
    g.bench_function("fetch_x509_svid", |b| {
        b.iter(|| black_box(rt.block_on(client.fetch_x509_svid()).unwrap()))
    });
    g.bench_function("fetch_jwt_svid", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(client.fetch_jwt_svid(["gateway"], None))
                    .unwrap(),
            )
        })
    });
    // Baseline: a bundle fetch, which mints nothing (attestation, gRPC and the socket only).
    g.bench_function("baseline_fetch_x509_bundles", |b| {
        b.iter(|| black_box(rt.block_on(client.fetch_x509_bundles()).unwrap()))
    });
    g.finish();
    let _ = stop.send(());
}

/// Drives a client and a server connection to the end of the handshake in memory.
fn handshake(client: &Arc<rustls::ClientConfig>, server: &Arc<rustls::ServerConfig>) {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut s = rustls::ServerConnection::new(Arc::clone(server)).unwrap();
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets().unwrap();
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets().unwrap();
    }
}

fn mtls(c: &mut Criterion) {
    let ca = ca();
    let gw = id("spiffe://example.org/gateway");
    let agent = id("spiffe://example.org/agents/a");
    let trust = TrustStore::new(ca.bundle());
    let server = Arc::new(
        server_config(
            SvidStore::new(&ca.mint_x509_svid(&gw).unwrap()).unwrap(),
            trust.clone(),
            Authorizer::path_prefix(id("spiffe://example.org/agents")),
        )
        .unwrap(),
    );
    let client = Arc::new(
        client_config(
            SvidStore::new(&ca.mint_x509_svid(&agent).unwrap()).unwrap(),
            trust,
            Authorizer::exact(gw),
        )
        .unwrap(),
    );
    // Baseline: the same handshake with rustls's stock WebPKI verifiers (server auth only).
    let svid = ca
        .mint_x509_svid(&id("spiffe://example.org/gateway"))
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for a in ca.bundle().x509_authorities() {
        roots.add(a.clone()).unwrap();
    }
    let provider = warden_identity::tls::provider();
    // The stock verifier checks DNS names; a self-signed server cert with a DNS SAN stands in.
    let plain_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let plain = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&plain_key)
        .unwrap();
    let mut plain_roots = rustls::RootCertStore::empty();
    plain_roots.add(plain.der().clone()).unwrap();
    let plain_server = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![plain.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(plain_key.serialize_der().into()),
            )
            .unwrap(),
    );
    let plain_client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(plain_roots)
            .with_no_client_auth(),
    );
    let _ = (svid, roots);
    let mut g = c.benchmark_group("mtls");
    g.bench_function("spiffe_mutual_handshake", |b| {
        b.iter(|| handshake(&client, &server))
    });
    g.bench_function("baseline_server_auth_handshake", |b| {
        b.iter(|| handshake(&plain_client, &plain_server))
    });
    g.finish();
}

fn delegation(c: &mut Criterion) {
    let issuer = DelegationIssuer::generate();
    let ca = ca();
    let trust = || TrustStore::new(ca.bundle());
    // Known delegators: their keys are verified once, then come from the key cache; every
    // token is new (no token cache).
    let known = DelegationVerifier::new(&issuer.public_key(), trust()).with_cache_capacity(0);
    // New delegators: every SVID chain and statement is verified (both caches off).
    let cold = DelegationVerifier::new(&issuer.public_key(), trust())
        .with_cache_capacity(0)
        .with_key_cache_capacity(0);
    let repeat = DelegationVerifier::new(&issuer.public_key(), trust());
    let expires = SystemTime::now() + Duration::from_secs(3600);
    let tools = vec!["fs/read".to_owned(), "git/log".to_owned()];
    let args = [("path".to_owned(), ArgValue::Str("/tmp/x".into()))];
    let rng = OsRandom::new();
    let mut g = c.benchmark_group("delegation_verify");
    // `N_hops`: N holders, so N - 1 delegations, each a block signed by its delegator's
    // delegation key, bound to its SVID.
    for hops in [1usize, 3, 8] {
        let keys: Vec<DelegationKey> = (1..hops)
            .map(|i| {
                let svid = ca
                    .mint_x509_svid(&id(&format!("spiffe://example.org/h{}", i - 1)))
                    .unwrap();
                DelegationKey::new(&svid, SystemTime::now(), &rng).unwrap()
            })
            .collect();
        let chain = || {
            let mut token = issuer
                .mint(
                    &id("spiffe://example.org/h0"),
                    &tools,
                    SystemTime::now(),
                    expires,
                )
                .unwrap();
            for (i, key) in keys.iter().enumerate() {
                token = token
                    .attenuate(
                        &Attenuation {
                            holder: id(&format!("spiffe://example.org/h{}", i + 1)),
                            tools: Some(tools.clone()),
                            args: vec![],
                            expires,
                        },
                        key,
                        // Each block is issued when it is made, after its delegator's SVID.
                        SystemTime::now(),
                    )
                    .unwrap();
            }
            token.to_base64().unwrap()
        };
        let b64 = chain();
        let presenter = id(&format!("spiffe://example.org/h{}", hops - 1));
        let call = Presentation {
            presenter: &presenter,
            tool: "fs/read",
            args: &args,
            now: SystemTime::now(),
        };
        known.authorize(&b64, &call).unwrap();
        cold.authorize(&b64, &call).unwrap();
        repeat.authorize(&b64, &call).unwrap();
        // First presentation of a new token from known delegators: Biscuit signatures
        // (Ed25519), the per-block checks against the cached keys, then the Datalog.
        g.bench_function(format!("{hops}_hops_first_known"), |b| {
            b.iter_batched(
                chain,
                |t| black_box(known.authorize(&t, &call).unwrap()),
                BatchSize::SmallInput,
            )
        });
        // First presentation with new delegators: also every SVID chain (at the block's issue
        // time) and every statement's P-256 signature.
        g.bench_function(format!("{hops}_hops_first_new"), |b| {
            b.iter(|| black_box(cold.authorize(&b64, &call).unwrap()))
        });
        // Presented again: the verified chain comes from the cache; presenter and Datalog run.
        g.bench_function(format!("{hops}_hops_repeat"), |b| {
            b.iter(|| black_box(repeat.authorize(&b64, &call).unwrap()))
        });
        // Baseline: decoding alone (the Biscuit signatures, external ones included).
        g.bench_function(format!("baseline_{hops}_hops_decode"), |b| {
            b.iter(|| black_box(DelegationToken::from_base64(&b64, &issuer.public_key()).unwrap()))
        });
    }
    // Baselines: one Ed25519 and one P-256 signature verification (ring).
    let rng = ring::rand::SystemRandom::new();
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8(
        ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let msg = [7u8; 200];
    let public = ring::signature::KeyPair::public_key(&kp).as_ref().to_vec();
    let signature = kp.sign(&msg);
    g.bench_function("baseline_ed25519_verify", |b| {
        b.iter(|| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
                .verify(&msg, signature.as_ref())
                .unwrap()
        })
    });
    let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let p256 = ring::signature::EcdsaKeyPair::from_pkcs8(
        alg,
        ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .unwrap()
            .as_ref(),
        &rng,
    )
    .unwrap();
    let p256_public = ring::signature::KeyPair::public_key(&p256)
        .as_ref()
        .to_vec();
    let p256_signature = p256.sign(&rng, &msg).unwrap();
    g.bench_function("baseline_p256_verify", |b| {
        b.iter(|| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                &p256_public,
            )
            .verify(&msg, p256_signature.as_ref())
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, minting, workload_api, mtls, delegation);
criterion_main!(benches);
