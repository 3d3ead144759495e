//! Delegation keys: an Ed25519 key bound to its holder's X.509-SVID by a signed statement.
//!
//! Biscuit verifies Ed25519 signatures about seven times faster than P-256 ones here, so each
//! delegation block is signed with an Ed25519 key rather than with the SVID's P-256 key. The
//! binding: the delegator signs, with its SVID's key (ECDSA P-256 with SHA-256, ASN.1), the
//! canonical statement
//!
//! ```text
//! warden/delegation-key/v1
//! spiffe-id <the SVID's SPIFFE ID>
//! key <the Ed25519 public key, 64 lowercase hex digits>
//! not-after <seconds since the Unix epoch, no later than the SVID's notAfter>
//! ```
//!
//! (each line ending in `\n`). The first line separates the statement from anything else the
//! SVID key signs (TLS handshakes sign other, prefixed, contents). A statement is accepted only in
//! this exact form: parsing re-encodes it and compares bytes.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use biscuit_auth::{Algorithm, PrivateKey, PublicKey};
use ring::signature::{self, EcdsaKeyPair, UnparsedPublicKey};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::{Error, Random, SpiffeId, X509Svid};

/// The first line of every statement.
pub(crate) const STATEMENT_PREFIX: &str = "warden/delegation-key/v1\n";
/// A statement longer than this is refused before parsing (SPIFFE IDs are at most 2048 bytes).
const MAX_STATEMENT_BYTES: usize = 4096;

/// What a statement says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyStatement {
    pub(crate) spiffe_id: SpiffeId,
    pub(crate) key: [u8; 32],
    /// Seconds since the Unix epoch.
    pub(crate) not_after: u64,
}

impl KeyStatement {
    /// The canonical bytes that are signed.
    pub(crate) fn encode(&self) -> String {
        format!(
            "{STATEMENT_PREFIX}spiffe-id {}\nkey {}\nnot-after {}\n",
            self.spiffe_id,
            hex::encode(self.key),
            self.not_after
        )
    }

    /// Parses a statement, accepting only its canonical form.
    pub(crate) fn parse(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Delegation(format!("bad delegation key statement: {why}"));
        if text.len() > MAX_STATEMENT_BYTES {
            return Err(bad("too long"));
        }
        let body = text
            .strip_prefix(STATEMENT_PREFIX)
            .ok_or_else(|| bad("wrong prefix"))?;
        let mut lines = body.split('\n');
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .ok_or_else(|| bad(&format!("missing `{name}`")))
        };
        let spiffe_id = SpiffeId::new(field("spiffe-id")?)?;
        let key_hex = field("key")?;
        let not_after = field("not-after")?;
        let key: [u8; 32] = hex::decode(key_hex)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| bad("the key is not 32 bytes of hex"))?;
        let not_after = not_after
            .parse::<u64>()
            .map_err(|_| bad("`not-after` is not a number"))?;
        let statement = Self {
            spiffe_id,
            key,
            not_after,
        };
        if statement.encode() != text {
            return Err(bad("not in canonical form"));
        }
        Ok(statement)
    }

    /// `not-after` as a time.
    pub(crate) fn not_after_time(&self) -> Result<SystemTime, Error> {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(self.not_after))
            .ok_or_else(|| Error::Delegation("`not-after` out of range".into()))
    }
}

/// Verifies `signature` over `statement` with the P-256 key of `leaf`.
pub(crate) fn verify_statement_signature(
    leaf: &CertificateDer<'_>,
    statement: &str,
    signature: &[u8],
) -> Result<(), Error> {
    let point = leaf_p256_point(leaf)?;
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(statement.as_bytes(), signature)
        .map_err(|_| {
            Error::Delegation("the delegation key statement is not signed by the SVID's key".into())
        })
}

/// The uncompressed P-256 point of a leaf certificate's key; any other key type is refused.
pub(crate) fn leaf_p256_point(leaf: &CertificateDer<'_>) -> Result<Vec<u8>, Error> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| Error::Delegation(format!("unparsable SVID: {e}")))?;
    let spki = cert.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(Error::Delegation(
            "a delegator's SVID key must be ECDSA P-256".into(),
        ));
    }
    Ok(spki.subject_public_key.data.to_vec())
}

/// A delegator's Ed25519 key with the statement, signed by its X.509-SVID key, that binds the
/// key to its SPIFFE ID until `not_after`; delegation blocks are signed with it
/// ([`crate::delegation::DelegationToken::attenuate`]).
#[derive(Clone)]
pub struct DelegationKey {
    key: PrivateKey,
    statement: KeyStatement,
    statement_text: String,
    signature: Vec<u8>,
    svid_chain: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for DelegationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegationKey")
            .field("spiffe_id", &self.statement.spiffe_id)
            .field("not_after", &self.statement.not_after)
            .finish_non_exhaustive()
    }
}

/// The file form of a [`DelegationKey`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    /// The Ed25519 private key, hex. A secret.
    private_key: String,
    statement: String,
    /// Standard base64.
    signature: String,
    /// The SVID chain whose key signed the statement, leaf first, standard base64 DER.
    svid: Vec<String>,
}

impl DelegationKey {
    /// A fresh Ed25519 key (its seed from `rng`) bound to `svid`'s SPIFFE ID until the SVID's
    /// `notAfter`, the statement signed with the SVID's key. Fails if the SVID has expired at
    /// `now`.
    pub fn new(svid: &X509Svid, now: SystemTime, rng: &dyn Random) -> Result<Self, Error> {
        if svid.expiry() <= now {
            return Err(Error::Delegation(format!(
                "the SVID of `{}` has expired",
                svid.spiffe_id()
            )));
        }
        let not_after = svid
            .expiry()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Delegation("the SVID expires before 1970".into()))?
            .as_secs();
        let mut seed = [0u8; 32];
        rng.fill(&mut seed)?;
        let key = PrivateKey::from_bytes(&seed, Algorithm::Ed25519).map_err(crypto)?;
        let public: [u8; 32] = key
            .public()
            .to_bytes()
            .try_into()
            .map_err(|_| Error::Crypto("an Ed25519 public key is not 32 bytes".into()))?;
        Self::bind(
            svid,
            KeyStatement {
                spiffe_id: svid.spiffe_id().clone(),
                key: public,
                not_after,
            },
            key,
        )
    }

    /// Signs `statement` with `svid`'s key, without checking what it says (tests build wrong
    /// statements with it).
    pub(crate) fn bind(
        svid: &X509Svid,
        statement: KeyStatement,
        key: PrivateKey,
    ) -> Result<Self, Error> {
        let rng = ring::rand::SystemRandom::new();
        let signer = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            svid.private_key_pkcs8(),
            &rng,
        )
        .map_err(|e| Error::Delegation(format!("the delegator's SVID key is unusable: {e}")))?;
        let statement_text = statement.encode();
        let signature = signer
            .sign(&rng, statement_text.as_bytes())
            .map_err(crypto)?
            .as_ref()
            .to_vec();
        Ok(Self {
            key,
            statement,
            statement_text,
            signature,
            svid_chain: svid.cert_chain().to_vec(),
        })
    }

    /// The SPIFFE ID the key is bound to.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.statement.spiffe_id
    }

    /// Until when the key may sign delegation blocks.
    pub fn not_after(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.statement.not_after)
    }

    /// The Ed25519 public key, 32 bytes.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public().to_bytes()
    }

    pub(crate) fn signing_key(&self) -> &PrivateKey {
        &self.key
    }

    pub(crate) fn statement_text(&self) -> &str {
        &self.statement_text
    }

    pub(crate) fn signature(&self) -> &[u8] {
        &self.signature
    }

    pub(crate) fn svid_chain(&self) -> &[CertificateDer<'static>] {
        &self.svid_chain
    }

    /// The key, its statement, signature and SVID chain as JSON. Holds the private key: write
    /// it with [`DelegationKey::save`] (0600).
    pub fn to_json(&self) -> Result<String, Error> {
        serde_json::to_string_pretty(&KeyFile {
            private_key: hex::encode(self.key.to_bytes()),
            statement: self.statement_text.clone(),
            signature: STANDARD.encode(&self.signature),
            svid: self
                .svid_chain
                .iter()
                .map(|c| STANDARD.encode(c.as_ref()))
                .collect(),
        })
        .map_err(|e| Error::Delegation(e.to_string()))
    }

    /// Reads what [`DelegationKey::to_json`] wrote and checks it is consistent: the statement is
    /// canonical, names the SVID's ID and the private key's public key, and is signed by the
    /// SVID's key. Whether the SVID chains to a bundle is the verifier's business.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let bad = |why: String| Error::Delegation(format!("bad delegation key file: {why}"));
        let file: KeyFile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let seed = hex::decode(file.private_key.trim()).map_err(|e| bad(e.to_string()))?;
        let key =
            PrivateKey::from_bytes(&seed, Algorithm::Ed25519).map_err(|e| bad(e.to_string()))?;
        let statement = KeyStatement::parse(&file.statement)?;
        let signature = STANDARD
            .decode(&file.signature)
            .map_err(|e| bad(e.to_string()))?;
        let svid_chain = file
            .svid
            .iter()
            .map(|c| STANDARD.decode(c).map(CertificateDer::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let leaf = svid_chain
            .first()
            .ok_or_else(|| bad("no SVID certificate".into()))?;
        if crate::x509::leaf_spiffe_id(leaf)? != statement.spiffe_id {
            return Err(bad("the statement does not name the SVID's ID".into()));
        }
        if key.public().to_bytes() != statement.key {
            return Err(bad("the statement does not name this key".into()));
        }
        verify_statement_signature(leaf, &file.statement, &signature)?;
        Ok(Self {
            key,
            statement,
            statement_text: file.statement,
            signature,
            svid_chain,
        })
    }

    /// Writes the key file at `path`, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        crate::files::write_secret(path, self.to_json()?.as_bytes())
    }

    /// Reads a key file written by [`DelegationKey::save`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text)
    }
}

/// The public half of an Ed25519 key as Biscuit represents it.
pub(crate) fn ed25519_public(key: &[u8; 32]) -> Result<PublicKey, Error> {
    PublicKey::from_bytes(key, Algorithm::Ed25519).map_err(crypto)
}

fn crypto(e: impl fmt::Display) -> Error {
    Error::Crypto(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> KeyStatement {
        KeyStatement {
            spiffe_id: SpiffeId::new("spiffe://example.org/agent/a").unwrap(),
            key: [7; 32],
            not_after: 1_800_000_000,
        }
    }

    #[test]
    fn statements_round_trip_in_canonical_form_only() {
        let s = statement();
        let text = s.encode();
        assert!(text.starts_with(STATEMENT_PREFIX));
        assert_eq!(KeyStatement::parse(&text).unwrap(), s);
        for bad in [
            text.replace("v1", "v2"),
            text.replace("not-after 1800000000", "not-after 01800000000"),
            text.replace("not-after 1800000000", "not-after +1800000000"),
            text.replace("key 07", "key 7"),
            text.to_uppercase(),
            format!("{text}extra\n"),
            text.trim_end().to_owned(),
            text.replace("spiffe-id ", "spiffe-id  "),
            text.replace('\n', "\r\n"),
            String::new(),
        ] {
            assert!(KeyStatement::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }
}
