//! The CA: X.509-SVID and JWT-SVID contents per the SPIFFE specs, rotation, persistence.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use rustls::pki_types::CertificateDer;
use warden_identity::{
    CertificateAuthority, SvidUsage, TrustBundle, TrustDomain, leaf_spiffe_id, validate_jwt_svid,
    verify_x509_svid,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};

#[test]
fn x509_svid_follows_the_spec() {
    let ca = ca("example.org");
    let svid = ca
        .mint_x509_svid(&id("spiffe://example.org/agent/a"))
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(svid.cert_chain()[0].as_ref()).unwrap();
    assert_eq!(cert.subject().iter().count(), 0, "no subject fields");
    let mut uris = vec![];
    let mut saw_ku = false;
    let mut saw_bc = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                assert!(ext.critical, "SAN is critical when the subject is empty");
                for n in &san.general_names {
                    match n {
                        GeneralName::URI(u) => uris.push(u.to_string()),
                        other => panic!("stray SAN {other:?}"),
                    }
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                saw_ku = true;
                assert!(ext.critical);
                assert!(ku.digital_signature());
                assert!(!ku.key_cert_sign() && !ku.crl_sign());
            }
            ParsedExtension::BasicConstraints(bc) => {
                saw_bc = true;
                assert!(!bc.ca);
            }
            _ => {}
        }
    }
    assert!(saw_ku && saw_bc);
    assert_eq!(uris, ["spiffe://example.org/agent/a"]);
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(life <= 3600 + 10, "short-lived: {life}");
    // Random serials: two SVIDs never share one.
    let other = ca
        .mint_x509_svid(&id("spiffe://example.org/agent/a"))
        .unwrap();
    let (_, c2) = x509_parser::parse_x509_certificate(other.cert_chain()[0].as_ref()).unwrap();
    assert_ne!(cert.raw_serial(), c2.raw_serial());
    assert!(cert.raw_serial().len() >= 16);

    let bundle = ca.bundle();
    let got = verify_x509_svid(
        svid.cert_chain(),
        &bundle,
        SystemTime::now(),
        SvidUsage::Client,
    )
    .unwrap();
    assert_eq!(got.to_string(), "spiffe://example.org/agent/a");
}

#[test]
fn ca_refuses_foreign_ids_and_long_ttls() {
    let ca = ca("example.org");
    assert!(ca.mint_x509_svid(&id("spiffe://other.org/a")).is_err());
    assert!(ca.mint_x509_svid(&id("spiffe://example.org")).is_err());
    assert!(
        ca.mint_x509_svid_with_ttl(&id("spiffe://example.org/a"), Duration::from_secs(3601))
            .is_err()
    );
    assert!(
        ca.mint_jwt_svid(&id("spiffe://example.org/a"), &[])
            .is_err()
    );
}

#[test]
fn expired_svid_is_refused() {
    let clock = fixed(hours_ago(3));
    let ca = ca_at("example.org", clock.clone());
    let svid = ca.mint_x509_svid(&id("spiffe://example.org/a")).unwrap();
    let bundle = ca.bundle();
    assert!(verify_x509_svid(svid.cert_chain(), &bundle, hours_ago(3), SvidUsage::Client).is_ok());
    let err = verify_x509_svid(
        svid.cert_chain(),
        &bundle,
        SystemTime::now(),
        SvidUsage::Client,
    )
    .unwrap_err();
    assert!(err.to_string().contains("Expired"), "{err}");
}

#[test]
fn foreign_ca_svid_is_refused() {
    let ours = ca("example.org");
    let theirs = ca("example.org");
    let svid = theirs
        .mint_x509_svid(&id("spiffe://example.org/a"))
        .unwrap();
    assert!(
        verify_x509_svid(
            svid.cert_chain(),
            &ours.bundle(),
            SystemTime::now(),
            SvidUsage::Client
        )
        .is_err()
    );
    // Another trust domain's SVID never matches our bundle, even chaining to it.
    let other_td = ca("other.org");
    let svid = other_td
        .mint_x509_svid(&id("spiffe://other.org/a"))
        .unwrap();
    assert!(
        verify_x509_svid(
            svid.cert_chain(),
            &ours.bundle(),
            SystemTime::now(),
            SvidUsage::Client
        )
        .is_err()
    );
}

/// A certificate with a SPIFFE URI SAN but marked as a CA, signed by a key the bundle trusts.
#[test]
fn leaf_marked_ca_is_refused() {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);

    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI("spiffe://example.org/a".try_into().unwrap())];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = p.signed_by(&leaf_key, &issuer).unwrap();

    let bundle = TrustBundle::new(
        TrustDomain::new("example.org").unwrap(),
        vec![ca_cert.der().clone()],
        vec![],
        1,
        Duration::from_secs(60),
    );
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
    let err = verify_x509_svid(&chain, &bundle, SystemTime::now(), SvidUsage::Client).unwrap_err();
    assert!(err.to_string().contains("CA"), "{err}");
    assert!(leaf_spiffe_id(&chain[0]).is_err());

    // Same chain without the CA bit passes: the refusal above is the CA bit's doing.
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI("spiffe://example.org/a".try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let ok = p.signed_by(&leaf_key, &issuer).unwrap();
    verify_x509_svid(
        &[ok.der().clone()],
        &bundle,
        SystemTime::now(),
        SvidUsage::Client,
    )
    .unwrap();

    // Two URI SANs: refused.
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![
        SanType::URI("spiffe://example.org/a".try_into().unwrap()),
        SanType::URI("spiffe://example.org/b".try_into().unwrap()),
    ];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let two = p.signed_by(&leaf_key, &issuer).unwrap();
    assert!(
        verify_x509_svid(
            &[two.der().clone()],
            &bundle,
            SystemTime::now(),
            SvidUsage::Client
        )
        .is_err()
    );
}

#[test]
fn jwt_svid_validates_and_tampering_fails() {
    let ca = ca("example.org");
    let me = id("spiffe://example.org/agent/a");
    let jwt = ca.mint_jwt_svid(&me, &["gateway".to_owned()]).unwrap();
    let bundle = ca.bundle();
    let claims = validate_jwt_svid(&jwt.token, "gateway", &bundle, SystemTime::now()).unwrap();
    assert_eq!(claims.spiffe_id, me);
    assert!(claims.claims.contains_key("exp") && claims.claims.contains_key("aud"));

    // Wrong audience.
    assert!(validate_jwt_svid(&jwt.token, "other", &bundle, SystemTime::now()).is_err());
    // Tampered payload: swap the subject.
    let parts: Vec<&str> = jwt.token.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    let forged = payload.replace("/agent/a", "/agent/b");
    let tampered = format!("{}.{}.{}", parts[0], b64.encode(forged), parts[2]);
    let err = validate_jwt_svid(&tampered, "gateway", &bundle, SystemTime::now()).unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    // alg none and unknown header fields.
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","kid":"x"}"#),
        parts[1]
    );
    assert!(validate_jwt_svid(&none, "gateway", &bundle, SystemTime::now()).is_err());
    // Expired.
    assert!(
        validate_jwt_svid(
            &jwt.token,
            "gateway",
            &bundle,
            SystemTime::now() + Duration::from_secs(3600)
        )
        .is_err()
    );
    // Signed by another CA of the same trust domain.
    let other = common::ca("example.org")
        .mint_jwt_svid(&me, &["gateway".to_owned()])
        .unwrap();
    assert!(validate_jwt_svid(&other.token, "gateway", &bundle, SystemTime::now()).is_err());
}

#[test]
fn rotation_keeps_old_svids_valid_and_bundle_round_trips() {
    let mut ca = ca("example.org");
    let me = id("spiffe://example.org/a");
    let old = ca.mint_x509_svid(&me).unwrap();
    let old_jwt = ca.mint_jwt_svid(&me, &["aud".to_owned()]).unwrap();
    let seq = ca.bundle().sequence();
    ca.rotate().unwrap();
    let new = ca.mint_x509_svid(&me).unwrap();
    let bundle = ca.bundle();
    assert_eq!(bundle.sequence(), seq + 1);
    assert_eq!(bundle.x509_authorities().len(), 2);
    assert_eq!(bundle.jwt_authorities().len(), 2);
    for s in [&old, &new] {
        verify_x509_svid(
            s.cert_chain(),
            &bundle,
            SystemTime::now(),
            SvidUsage::Server,
        )
        .unwrap();
    }
    validate_jwt_svid(&old_jwt.token, "aud", &bundle, SystemTime::now()).unwrap();

    let jwks = bundle.to_jwks().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(doc["spiffe_sequence"], bundle.sequence());
    assert!(doc["spiffe_refresh_hint"].as_u64().unwrap() > 0);
    let uses: Vec<&str> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["use"].as_str().unwrap())
        .collect();
    assert_eq!(uses, ["x509-svid", "x509-svid", "jwt-svid", "jwt-svid"]);
    let back =
        TrustBundle::from_jwks(TrustDomain::new("example.org").unwrap(), jwks.as_bytes()).unwrap();
    assert_eq!(back, bundle);
}

#[test]
fn save_and_load_keep_keys_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.json");
    let ca = ca("example.org");
    ca.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = CertificateAuthority::load(
        &path,
        Arc::new(warden_identity::SystemClock),
        Arc::new(CounterRandom::default()),
    )
    .unwrap();
    assert_eq!(loaded.bundle(), ca.bundle());
    let svid = loaded
        .mint_x509_svid(&id("spiffe://example.org/a"))
        .unwrap();
    verify_x509_svid(
        svid.cert_chain(),
        &ca.bundle(),
        SystemTime::now(),
        SvidUsage::Client,
    )
    .unwrap();
}
