//! Delegation chains: narrowing only, bound to the holder, depth-limited.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use biscuit_auth::BlockBuilder;
use common::id;
use warden_identity::delegation::{
    ArgConstraint, ArgValue, Attenuation, DelegationIssuer, DelegationKey, DelegationToken,
    DelegationVerifier, Presentation,
};
use warden_identity::tls::TrustStore;

fn tools(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| (*s).to_owned()).collect()
}

fn in_an_hour() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

struct Setup {
    issuer: DelegationIssuer,
    verifier: DelegationVerifier,
    ca: warden_identity::CertificateAuthority,
}

impl Setup {
    /// A fresh delegation key of `who`, bound to a fresh X.509-SVID: the key its delegation
    /// blocks are signed with.
    fn svid(&self, who: &warden_identity::SpiffeId) -> DelegationKey {
        let svid = self.ca.mint_x509_svid(who).unwrap();
        DelegationKey::new(&svid, SystemTime::now(), &warden_identity::OsRandom::new()).unwrap()
    }
}

fn setup() -> Setup {
    let issuer = DelegationIssuer::generate();
    let ca = common::ca("td");
    let verifier = DelegationVerifier::new(&issuer.public_key(), TrustStore::new(ca.bundle()))
        .with_max_depth(3);
    Setup {
        issuer,
        verifier,
        ca,
    }
}

fn call<'a>(
    presenter: &'a warden_identity::SpiffeId,
    tool: &'a str,
    args: &'a [(String, ArgValue)],
) -> Presentation<'a> {
    Presentation {
        presenter,
        tool,
        args,
        now: SystemTime::now(),
    }
}

#[test]
fn a_to_b_to_c_chain_is_verified_and_returned() {
    let s = setup();
    let a = id("spiffe://td/agent/a");
    let b = id("spiffe://td/agent/b");
    let c = id("spiffe://td/agent/c");
    let root = s
        .issuer
        .mint(
            &a,
            &tools(&["fs/read", "fs/write", "git/log"]),
            SystemTime::now(),
            in_an_hour(),
        )
        .unwrap();
    let to_b = root
        .attenuate(
            &Attenuation {
                holder: b.clone(),
                tools: Some(tools(&["fs/read", "git/log"])),
                args: vec![],
                expires: in_an_hour(),
            },
            &s.svid(&a),
            SystemTime::now(),
        )
        .unwrap();
    let to_c = to_b
        .attenuate(
            &Attenuation {
                holder: c.clone(),
                tools: Some(tools(&["fs/read"])),
                args: vec![ArgConstraint::Prefix("path".into(), "/tmp/".into())],
                expires: in_an_hour(),
            },
            &s.svid(&b),
            SystemTime::now(),
        )
        .unwrap();
    let token = to_c.to_base64().unwrap();
    let ok_args = [("path".to_owned(), ArgValue::Str("/tmp/x".into()))];
    let chain = s
        .verifier
        .authorize(&token, &call(&c, "fs/read", &ok_args))
        .unwrap();
    assert_eq!(chain.origin, a);
    assert_eq!(chain.depth, 2);
    assert_eq!(chain.hops, vec![a.clone(), b.clone(), c.clone()]);

    // Each narrowing holds.
    let bad_args = [("path".to_owned(), ArgValue::Str("/etc/passwd".into()))];
    assert!(
        s.verifier
            .authorize(&token, &call(&c, "fs/read", &bad_args))
            .is_err()
    );
    assert!(
        s.verifier
            .authorize(&token, &call(&c, "fs/read", &[]))
            .is_err(),
        "constrained arg must be present"
    );
    assert!(
        s.verifier
            .authorize(&token, &call(&c, "git/log", &ok_args))
            .is_err(),
        "dropped by C's block"
    );
    assert!(
        s.verifier
            .authorize(&token, &call(&c, "fs/write", &ok_args))
            .is_err(),
        "dropped by B's block"
    );
    // B's own token still works for what B holds.
    let b_token = to_b.to_base64().unwrap();
    assert_eq!(
        s.verifier
            .authorize(&b_token, &call(&b, "git/log", &[]))
            .unwrap()
            .depth,
        1
    );
}

#[test]
fn widening_is_impossible() {
    let s = setup();
    let a = id("spiffe://td/agent/a");
    let b = id("spiffe://td/agent/b");
    let root = s
        .issuer
        .mint(&a, &tools(&["fs/read"]), SystemTime::now(), in_an_hour())
        .unwrap();
    // Asking for a tool the parent lacks yields nothing.
    let asks_more = root
        .attenuate(
            &Attenuation {
                holder: b.clone(),
                tools: Some(tools(&["fs/read", "shell/exec"])),
                args: vec![],
                expires: in_an_hour(),
            },
            &s.svid(&a),
            SystemTime::now(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(
        s.verifier
            .authorize(&asks_more, &call(&b, "shell/exec", &[]))
            .is_err()
    );
    assert!(
        s.verifier
            .authorize(&asks_more, &call(&b, "fs/read", &[]))
            .is_ok()
    );

    // A raw block that asserts new rights, and a rule deriving them, names B as holder.
    let raw = BlockBuilder::new()
        .code(r#"right("shell/exec"); right($t) <- tool($t);"#)
        .unwrap()
        .context(r#"{"holder":"spiffe://td/agent/b"}"#.to_owned());
    let forged = DelegationToken::from_biscuit(root.biscuit().append(raw).unwrap())
        .to_base64()
        .unwrap();
    let err = s
        .verifier
        .authorize(&forged, &call(&b, "shell/exec", &[]))
        .unwrap_err();
    assert!(err.to_string().contains("delegation refused"), "{err}");
    // A later expiry than the parent's does not extend it.
    let clock_later = SystemTime::now() + Duration::from_secs(7200);
    let longer = s
        .issuer
        .mint(
            &a,
            &tools(&["fs/read"]),
            SystemTime::now(),
            SystemTime::now() + Duration::from_secs(60),
        )
        .unwrap()
        .attenuate(
            &Attenuation {
                holder: b.clone(),
                tools: None,
                args: vec![],
                expires: clock_later + Duration::from_secs(3600),
            },
            &s.svid(&a),
            SystemTime::now(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    let p = Presentation {
        presenter: &b,
        tool: "fs/read",
        args: &[],
        now: clock_later,
    };
    assert!(s.verifier.authorize(&longer, &p).is_err());
}

#[test]
fn token_presented_by_another_agent_fails() {
    let s = setup();
    let a = id("spiffe://td/agent/a");
    let b = id("spiffe://td/agent/b");
    let mallory = id("spiffe://td/agent/mallory");
    let root = s
        .issuer
        .mint(&a, &tools(&["fs/read"]), SystemTime::now(), in_an_hour())
        .unwrap();
    let to_b = root
        .attenuate(
            &Attenuation {
                holder: b.clone(),
                tools: None,
                args: vec![],
                expires: in_an_hour(),
            },
            &s.svid(&a),
            SystemTime::now(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    let err = s
        .verifier
        .authorize(&to_b, &call(&mallory, "fs/read", &[]))
        .unwrap_err();
    assert!(err.to_string().contains("held by"), "{err}");
    // The root token is A's: B cannot present it either.
    let root_b64 = root.to_base64().unwrap();
    assert!(
        s.verifier
            .authorize(&root_b64, &call(&b, "fs/read", &[]))
            .is_err()
    );
    assert!(
        s.verifier
            .authorize(&root_b64, &call(&a, "fs/read", &[]))
            .is_ok()
    );
}

#[test]
fn over_deep_chain_fails_and_other_roots_fail() {
    let s = setup();
    let mut token = s
        .issuer
        .mint(
            &id("spiffe://td/h0"),
            &tools(&["t/x"]),
            SystemTime::now(),
            in_an_hour(),
        )
        .unwrap();
    for i in 1..=4 {
        token = token
            .attenuate(
                &Attenuation {
                    holder: id(&format!("spiffe://td/h{i}")),
                    tools: None,
                    args: vec![],
                    expires: in_an_hour(),
                },
                &s.svid(&id(&format!("spiffe://td/h{}", i - 1))),
                SystemTime::now(),
            )
            .unwrap();
        let b64 = token.to_base64().unwrap();
        let holder = id(&format!("spiffe://td/h{i}"));
        let r = s.verifier.authorize(&b64, &call(&holder, "t/x", &[]));
        if i <= 3 {
            assert_eq!(r.unwrap().depth, i);
        } else {
            assert!(r.unwrap_err().to_string().contains("depth"));
        }
    }
    // A token minted by another root is refused.
    let other = DelegationIssuer::generate();
    let a = id("spiffe://td/a");
    let foreign = other
        .mint(&a, &tools(&["t/x"]), SystemTime::now(), in_an_hour())
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(
        s.verifier
            .authorize(&foreign, &call(&a, "t/x", &[]))
            .is_err()
    );
    // Garbage never panics.
    for junk in ["", "x", "AAAA", &"A".repeat(100_000)] {
        assert!(s.verifier.authorize(junk, &call(&a, "t/x", &[])).is_err());
    }
    let _ = HashMap::<(), ()>::new();
}

#[test]
fn issuer_key_round_trips() {
    let issuer = DelegationIssuer::generate();
    let again = DelegationIssuer::from_private_key(&issuer.private_key()).unwrap();
    assert_eq!(issuer.public_key(), again.public_key());
}
