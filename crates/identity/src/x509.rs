//! Verification of X.509-SVIDs: the chain against a trust bundle, then the SPIFFE rules for a
//! leaf (exactly one URI SAN holding a SPIFFE ID, not a CA, a critical key usage that allows
//! signatures and not certificate signing).

use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::{Error, SpiffeId, TrustBundle};

/// Which side of a TLS connection the SVID authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvidUsage {
    /// A TLS server's certificate.
    Server,
    /// A TLS client's certificate.
    Client,
}

/// Signature algorithms accepted in SVID chains (those of the `ring` provider).
pub(crate) static SIGNATURE_ALGORITHMS:
    &[&dyn rustls::pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// Verifies an X.509-SVID chain (leaf first) against `bundle` at time `now` and returns the
/// leaf's SPIFFE ID. The ID must belong to the bundle's trust domain.
pub fn verify_x509_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
    usage: SvidUsage,
) -> Result<SpiffeId, Error> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| Error::InvalidX509Svid("empty certificate chain".into()))?;
    let id = leaf_spiffe_id(leaf)?;
    if id.trust_domain() != bundle.trust_domain() {
        return Err(Error::InvalidX509Svid(format!(
            "`{id}` is not in trust domain `{}`",
            bundle.trust_domain()
        )));
    }
    let anchors = bundle
        .x509_authorities()
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidBundle(format!("bad CA certificate: {e:?}")))?;
    if anchors.is_empty() {
        return Err(Error::InvalidBundle(
            "the bundle has no X.509 authorities".into(),
        ));
    }
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| Error::InvalidX509Svid(format!("unparsable leaf: {e:?}")))?;
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let eku = match usage {
        SvidUsage::Server => webpki::KeyUsage::server_auth(),
        SvidUsage::Client => webpki::KeyUsage::client_auth(),
    };
    ee.verify_for_usage(
        SIGNATURE_ALGORITHMS,
        &anchors,
        intermediates,
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
        eku,
        None,
        None,
    )
    .map_err(|e| Error::InvalidX509Svid(format!("chain does not verify: {e:?}")))?;
    Ok(id)
}

/// The SPIFFE ID of a leaf X.509-SVID, after the SPIFFE leaf rules; the chain is not checked.
pub fn leaf_spiffe_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, Error> {
    let bad = |m: &str| Error::InvalidX509Svid(m.to_owned());
    let (rest, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| Error::InvalidX509Svid(format!("unparsable leaf: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the leaf certificate"));
    }
    let mut uris = Vec::new();
    let mut key_usage = None;
    let mut is_ca = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(u) = name {
                        uris.push(*u);
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            ParsedExtension::KeyUsage(ku) => key_usage = Some((ext.critical, *ku)),
            ParsedExtension::ParseError { .. } => {
                return Err(bad("an extension does not parse"));
            }
            _ => {}
        }
    }
    if is_ca {
        return Err(bad("the leaf is a CA certificate"));
    }
    let Some((critical, ku)) = key_usage else {
        return Err(bad("the leaf has no key usage extension"));
    };
    if !critical {
        return Err(bad("the key usage extension is not critical"));
    }
    if !ku.digital_signature() {
        return Err(bad("key usage lacks digitalSignature"));
    }
    if ku.key_cert_sign() || ku.crl_sign() {
        return Err(bad("a leaf must not sign certificates or CRLs"));
    }
    let [uri] = uris.as_slice() else {
        return Err(bad("the leaf must hold exactly one URI SAN"));
    };
    SpiffeId::new(uri)
}
