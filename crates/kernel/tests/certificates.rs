//! Certificates: every field is covered by the signature, and every verifier check can fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{TRADER, TestRng, signing_key, starter_kernel};
use serde_json::Value;
use warden_kernel::{
    CallCertificate, CallRequest, CertSigningKey, CertificateVerifier, Decision, Error, Timestamp,
    ToolId,
};

const T0: u64 = 1_795_464_229_000;
const ARGS: &str = r#"{"exchange":"NYSE","symbol":"ACME"}"#;

fn issue() -> CallCertificate {
    let k = starter_kernel();
    let req = CallRequest::new(
        TRADER,
        ToolId::parse("market/query_market_data").unwrap(),
        ARGS,
    );
    match k
        .enforce(&req, Timestamp::from_unix_millis(T0), &mut TestRng(1))
        .decision
    {
        Decision::Allow(c) => c,
        other => panic!("{other:?}"),
    }
}

fn verifier() -> CertificateVerifier {
    CertificateVerifier::new(vec![signing_key().verifying_key()], "Server::\"market\"")
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + ms)
}

/// Every leaf of the claims, changed, breaks the signature.
#[test]
fn tampering_any_field_invalidates() {
    let cert = issue();
    let original = cert.to_json_value();
    let mut paths = Vec::new();
    collect_leaves(&original["cert"], String::new(), &mut paths);
    assert!(paths.len() >= 18, "{paths:?}");
    for path in paths {
        let mut v = original.clone();
        let leaf = v.pointer_mut(&format!("/cert{path}")).unwrap();
        *leaf = match leaf.take() {
            Value::String(s) => Value::String(format!("{s}x")),
            Value::Number(n) => Value::from(n.as_u64().unwrap_or(0) + 1),
            Value::Null => Value::String("x".into()),
            Value::Bool(b) => Value::Bool(!b),
            other => panic!("unexpected leaf {other}"),
        };
        let result = CallCertificate::from_json_value(v)
            .and_then(|c| verifier().verify(&c, "query_market_data", ARGS.as_bytes(), at(1)));
        assert!(result.is_err(), "tampered `{path}` still verifies");
    }
    // Adding a field is refused at decoding.
    let mut v = original.clone();
    v["cert"]["extra"] = Value::Bool(true);
    assert!(CallCertificate::from_json_value(v).is_err());
    // The untouched certificate verifies, so the failures above are the tampering.
    verifier()
        .verify(&cert, "query_market_data", ARGS.as_bytes(), at(1))
        .unwrap();
}

fn collect_leaves(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| collect_leaves(v, format!("{path}/{k}"), out)),
        Value::Array(a) if !a.is_empty() => {
            a.iter()
                .enumerate()
                .for_each(|(i, v)| collect_leaves(v, format!("{path}/{i}"), out));
        }
        Value::Array(_) => {}
        _ => out.push(path),
    }
}

#[test]
fn signature_bytes_are_checked() {
    let mut v = issue().to_json_value();
    let sig = v["sig"].as_str().unwrap().to_owned();
    let mut bytes = sig.into_bytes();
    bytes[0] = if bytes[0] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(bytes).unwrap();
    v["sig"] = Value::String(flipped);
    let c = CallCertificate::from_json_value(v).unwrap();
    assert!(matches!(
        verifier().verify(&c, "query_market_data", ARGS.as_bytes(), at(1)),
        Err(Error::CertificateSignature)
    ));
}

#[test]
fn expiry_and_issue_time() {
    let c = issue();
    verifier()
        .verify(&c, "query_market_data", ARGS.as_bytes(), at(59_999))
        .unwrap();
    assert!(matches!(
        verifier().verify(&c, "query_market_data", ARGS.as_bytes(), at(60_000)),
        Err(Error::CertificateExpired(_))
    ));
    let early = Timestamp::from_unix_millis(T0 - 10_000);
    assert!(matches!(
        verifier().verify(&c, "query_market_data", ARGS.as_bytes(), early),
        Err(Error::CertificateNotYetValid(_))
    ));
}

#[test]
fn wrong_audience() {
    let v = CertificateVerifier::new(vec![signing_key().verifying_key()], "Server::\"broker\"");
    assert!(matches!(
        v.verify(&issue(), "query_market_data", ARGS.as_bytes(), at(1)),
        Err(Error::CertificateAudience { .. })
    ));
}

#[test]
fn replay_is_refused() {
    let c = issue();
    let v = verifier();
    v.verify(&c, "query_market_data", ARGS.as_bytes(), at(1))
        .unwrap();
    assert!(matches!(
        v.verify(&c, "query_market_data", ARGS.as_bytes(), at(2)),
        Err(Error::CertificateReplayed(_))
    ));
}

#[test]
fn unknown_key_and_rotation() {
    let other = CertSigningKey::from_seed(&[9u8; 32]);
    let v = CertificateVerifier::new(vec![other.verifying_key()], "Server::\"market\"");
    assert!(matches!(
        v.verify(&issue(), "query_market_data", ARGS.as_bytes(), at(1)),
        Err(Error::CertificateUnknownKey(_))
    ));
    // With both keys (rotation), the certificate verifies.
    let v = CertificateVerifier::new(
        vec![other.verifying_key(), signing_key().verifying_key()],
        "Server::\"market\"",
    );
    v.verify(&issue(), "query_market_data", ARGS.as_bytes(), at(1))
        .unwrap();
}

#[test]
fn arguments_are_bound_canonically() {
    let c = issue();
    // Same arguments, other formatting: still the same call.
    verifier()
        .verify(
            &c,
            "query_market_data",
            br#"{ "symbol": "ACME", "exchange": "NYSE" }"#,
            at(1),
        )
        .unwrap();
    let v = verifier();
    assert!(matches!(
        v.verify(
            &c,
            "query_market_data",
            br#"{"exchange":"NYSE","symbol":"ACMF"}"#,
            at(1)
        ),
        Err(Error::CertificateArguments)
    ));
    assert!(
        v.verify(
            &c,
            "query_market_data",
            br#"{"exchange":"NYSE","symbol":"ACME","symbol":"ACME"}"#,
            at(1)
        )
        .is_err()
    );
}

#[test]
fn decoding_round_trips_and_rejects_garbage() {
    let c = issue();
    assert_eq!(CallCertificate::decode(&c.to_bytes()).unwrap(), c);
    for bad in [
        &b"{}"[..],
        b"null",
        b"{\"cert\":{},\"sig\":\"00\"}",
        b"\xff",
    ] {
        assert!(CallCertificate::decode(bad).is_err());
    }
}

/// A certificate for one tool of a server cannot be spent on another tool of the same server,
/// even with the same arguments; the refusal does not use the certificate up.
#[test]
fn certificate_is_bound_to_its_tool() {
    let c = issue();
    let v = verifier();
    assert!(matches!(
        v.verify(&c, "delete_market_data", ARGS.as_bytes(), at(1)),
        Err(Error::CertificateTool { ref called, ref found })
            if called == "delete_market_data" && found == "query_market_data"
    ));
    v.verify(&c, "query_market_data", ARGS.as_bytes(), at(1))
        .unwrap();
}
