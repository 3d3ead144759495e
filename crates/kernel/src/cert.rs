//! Call certificates: what the kernel allowed, bound to the exact arguments, signed with Ed25519.
//!
//! Wire form: the JCS bytes of `{"cert": <claims>, "sig": "<hex of 64 bytes>"}`; the signature is
//! over `warden/cert/v1\n` followed by the JCS bytes of the claims.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use warden_presign::Presigner;

use crate::json::{
    canonical_bytes, hex, jcs_key_order, parse_strict, sha256_tag, unhex, write_jcs_key,
    write_jcs_str, write_jcs_strs,
};
use crate::{Error, Timestamp};

/// Domain separation for certificate signatures.
pub const CERT_SIGNING_CONTEXT: &[u8] = b"warden/cert/v1\n";

/// The tool a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifiedTool {
    /// Upstream server name.
    pub server: String,
    /// Tool name on that server.
    pub name: String,
    /// `"sha256:<hex>"` of the pinned definition.
    pub definition_hash: String,
}

/// The intent the agent gave, with its provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifiedIntent {
    /// The text.
    pub text: String,
    /// Its sources.
    pub labels: Vec<String>,
    /// `"trusted"` or `"untrusted"`.
    pub integrity: String,
}

/// Who approved a held call, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The approver's identity as the gateway authenticated it.
    pub approver: String,
    /// RFC 3339 time of the approval.
    pub time: String,
}

/// The signed content of a certificate. Every field is covered by the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateClaims {
    /// Format version, 1.
    pub v: u32,
    /// Random, single-use id (32 hex digits).
    pub id: String,
    /// Id of the signing key (see [`CertVerifyingKey::key_id`]).
    pub kid: String,
    /// The upstream the certificate is for (`Server::"<server>"` or the configured audience).
    pub aud: String,
    /// RFC 3339 issue time.
    pub issued: String,
    /// RFC 3339 expiry; the certificate is invalid from this instant on.
    pub expires: String,
    /// The calling agent's SPIFFE ID.
    pub agent: String,
    /// Delegation chain, origin first.
    pub delegation: Vec<String>,
    /// Session id, if any.
    pub session: Option<String>,
    /// The tool.
    pub tool: CertifiedTool,
    /// `"sha256:<hex>"` of the JCS bytes of the arguments.
    pub args_hash: String,
    /// Argument name → its sources.
    pub labels: BTreeMap<String, Vec<String>>,
    /// Call-wide integrity: `"trusted"` or `"untrusted"`.
    pub taint: String,
    /// The intent, if the agent gave one.
    pub intent: Option<CertifiedIntent>,
    /// Always `"allow"`.
    pub decision: String,
    /// Rule ids that allowed the call.
    pub rules: Vec<String>,
    /// `@risk` of the allowing rule, if any.
    pub risk: Option<String>,
    /// `"sha256:<hex>"` of the policy bundle that decided.
    pub policy_hash: String,
    /// Set when a human approved the call.
    pub approval: Option<Approval>,
}

/// A signed call certificate. Cloning it is cheap (the content is shared), so the decision and
/// its record hold the same certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct CallCertificate(Arc<Signed>);

#[derive(PartialEq, Eq)]
struct Signed {
    claims: CertificateClaims,
    signature: [u8; 64],
    /// What the signature covers: [`CERT_SIGNING_CONTEXT`] followed by the claims' canonical
    /// bytes, computed once from `claims` (which never change afterwards).
    message: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    cert: CertificateClaims,
    sig: String,
}

/// [`Envelope`]'s serialized form, borrowing the claims.
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    cert: &'a CertificateClaims,
    sig: String,
}

impl CallCertificate {
    pub(crate) fn sign(claims: CertificateClaims, key: &CertSigningKey) -> Self {
        let message = signing_message(&claims);
        let signature = key.sign(&message);
        Self(Arc::new(Signed {
            claims,
            signature,
            message,
        }))
    }

    /// The signed claims. Only trust them after [`CertificateVerifier::verify`].
    pub fn claims(&self) -> &CertificateClaims {
        &self.0.claims
    }

    /// The certificate as a JSON value (`{"cert": …, "sig": …}`), e.g. for `_meta`.
    pub fn to_json_value(&self) -> Value {
        serde_json::to_value(self.envelope()).unwrap_or(Value::Null)
    }

    /// The JCS bytes of [`to_json_value`](Self::to_json_value), written around the claims'
    /// canonical bytes (`cert` sorts before `sig`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let canonical = self.canonical_claims();
        let mut out = Vec::with_capacity(canonical.len() + 150);
        out.extend_from_slice(b"{\"cert\":");
        out.extend_from_slice(canonical);
        out.extend_from_slice(b",\"sig\":\"");
        out.extend_from_slice(hex(&self.0.signature).as_bytes());
        out.extend_from_slice(b"\"}");
        out
    }

    /// The JCS bytes of the claims (what follows the signing context in the signed message).
    fn canonical_claims(&self) -> &[u8] {
        self.0
            .message
            .get(CERT_SIGNING_CONTEXT.len()..)
            .unwrap_or_default()
    }

    /// Decodes a certificate from JSON bytes (strict I-JSON, no unknown fields). Decoding does
    /// not verify anything.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Self::from_json_value(parse_strict(bytes)?)
    }

    /// Decodes a certificate from a JSON value. Decoding does not verify anything.
    pub fn from_json_value(value: Value) -> Result<Self, Error> {
        let envelope: Envelope = serde_json::from_value(value)
            .map_err(|e| Error::CertificateMalformed(e.to_string()))?;
        Self::from_envelope(envelope)
    }

    fn from_envelope(envelope: Envelope) -> Result<Self, Error> {
        let signature = unhex(&envelope.sig)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| {
                Error::CertificateMalformed("`sig` is not 64 hex-encoded bytes".to_owned())
            })?;
        let message = signing_message(&envelope.cert);
        Ok(Self(Arc::new(Signed {
            claims: envelope.cert,
            signature,
            message,
        })))
    }

    fn envelope(&self) -> EnvelopeRef<'_> {
        EnvelopeRef {
            cert: &self.0.claims,
            sig: hex(&self.0.signature),
        }
    }
}

impl fmt::Debug for CallCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallCertificate")
            .field("claims", &self.0.claims)
            .field("sig", &hex(&self.0.signature))
            .finish()
    }
}

/// The wire form, `{"cert": …, "sig": …}` (in decision records).
impl Serialize for CallCertificate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.envelope().serialize(serializer)
    }
}

/// The wire form, with the checks of [`CallCertificate::from_json_value`]. Decoding does not
/// verify anything.
impl<'de> Deserialize<'de> for CallCertificate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let envelope = Envelope::deserialize(deserializer)?;
        Self::from_envelope(envelope).map_err(serde::de::Error::custom)
    }
}

fn signing_message(claims: &CertificateClaims) -> Vec<u8> {
    let mut message = Vec::with_capacity(1024);
    message.extend_from_slice(CERT_SIGNING_CONTEXT);
    claims.write_canonical(&mut message);
    message
}

impl CertificateClaims {
    /// The RFC 8785 bytes of the claims, exactly what `canonical_bytes(&serde_json::to_value(self))`
    /// gives (a property test holds the two together), written directly: going through a
    /// `Value` and the generic canonicalizer cost more than the signature itself.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        self.write_canonical(&mut out);
        out
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        let opt = |out: &mut Vec<u8>, v: &Option<String>| match v {
            Some(s) => write_jcs_str(out, s),
            None => out.extend_from_slice(b"null"),
        };
        // Members in RFC 8785 order (all keys are ASCII, so byte order is UTF-16 order).
        out.push(b'{');
        write_jcs_key(out, true, "agent");
        write_jcs_str(out, &self.agent);
        write_jcs_key(out, false, "approval");
        match &self.approval {
            Some(a) => {
                out.push(b'{');
                write_jcs_key(out, true, "approver");
                write_jcs_str(out, &a.approver);
                write_jcs_key(out, false, "time");
                write_jcs_str(out, &a.time);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        write_jcs_key(out, false, "args_hash");
        write_jcs_str(out, &self.args_hash);
        write_jcs_key(out, false, "aud");
        write_jcs_str(out, &self.aud);
        write_jcs_key(out, false, "decision");
        write_jcs_str(out, &self.decision);
        write_jcs_key(out, false, "delegation");
        write_jcs_strs(out, &self.delegation);
        write_jcs_key(out, false, "expires");
        write_jcs_str(out, &self.expires);
        write_jcs_key(out, false, "id");
        write_jcs_str(out, &self.id);
        write_jcs_key(out, false, "intent");
        match &self.intent {
            Some(i) => {
                out.push(b'{');
                write_jcs_key(out, true, "integrity");
                write_jcs_str(out, &i.integrity);
                write_jcs_key(out, false, "labels");
                write_jcs_strs(out, &i.labels);
                write_jcs_key(out, false, "text");
                write_jcs_str(out, &i.text);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        write_jcs_key(out, false, "issued");
        write_jcs_str(out, &self.issued);
        write_jcs_key(out, false, "kid");
        write_jcs_str(out, &self.kid);
        write_jcs_key(out, false, "labels");
        out.push(b'{');
        let mut names: Vec<(&String, &Vec<String>)> = self.labels.iter().collect();
        names.sort_by(|a, b| jcs_key_order(a.0, b.0));
        for (i, (name, sources)) in names.into_iter().enumerate() {
            write_jcs_key(out, i == 0, name);
            write_jcs_strs(out, sources);
        }
        out.push(b'}');
        write_jcs_key(out, false, "policy_hash");
        write_jcs_str(out, &self.policy_hash);
        write_jcs_key(out, false, "risk");
        opt(out, &self.risk);
        write_jcs_key(out, false, "rules");
        write_jcs_strs(out, &self.rules);
        write_jcs_key(out, false, "session");
        opt(out, &self.session);
        write_jcs_key(out, false, "taint");
        write_jcs_str(out, &self.taint);
        write_jcs_key(out, false, "tool");
        out.push(b'{');
        write_jcs_key(out, true, "definition_hash");
        write_jcs_str(out, &self.tool.definition_hash);
        write_jcs_key(out, false, "name");
        write_jcs_str(out, &self.tool.name);
        write_jcs_key(out, false, "server");
        write_jcs_str(out, &self.tool.server);
        out.push(b'}');
        write_jcs_key(out, false, "v");
        out.extend_from_slice(self.v.to_string().as_bytes());
        out.push(b'}');
    }
}

/// The kernel's certificate signing key.
pub struct CertSigningKey {
    key: SigningKey,
    /// Signs: RFC 8032 deterministic until [`CertSigningKey::start_presigning`], then with
    /// nonces computed ahead of time off the call path (see `warden-presign`).
    signer: Presigner,
}

impl CertSigningKey {
    /// A key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let signer = Presigner::new(&key);
        Self { key, signer }
    }

    /// From now on, certificates are signed with presigned nonces drawn from `entropy` by a
    /// background thread: a certificate's signature then costs ~1 µs instead of ~14 µs on the
    /// call path. The signatures verify as before; they are no longer RFC 8032's deterministic
    /// bytes (two signatures of the same claims differ).
    pub fn start_presigning(&mut self, entropy: warden_presign::Entropy) -> Result<(), Error> {
        self.signer
            .start(entropy)
            .map_err(|e| Error::Key(e.to_string()))
    }

    /// The Ed25519 signature of `message`.
    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signer.sign(message)
    }

    /// A fresh key.
    pub fn generate(rng: &mut (impl rand_core::CryptoRng + ?Sized)) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self::from_seed(&seed)
    }

    /// Parses the key file form: 64 hex digits of the seed, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let seed = unhex(text.trim())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                Error::Key("expected 64 hex digits (a 32-byte ed25519 seed)".to_owned())
            })?;
        Ok(Self::from_seed(&seed))
    }

    /// The key file form (64 hex digits). Secret: write it with mode 0600, never log it.
    pub fn to_secret_hex(&self) -> String {
        hex(self.key.as_bytes())
    }

    /// The public half.
    pub fn verifying_key(&self) -> CertVerifyingKey {
        CertVerifyingKey(self.key.verifying_key())
    }
}

impl fmt::Debug for CertSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertSigningKey({})", self.verifying_key().key_id())
    }
}

/// A public key certificates are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertVerifyingKey(VerifyingKey);

impl CertVerifyingKey {
    /// Parses 64 hex digits (32 bytes).
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let bytes = unhex(text.trim())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                Error::Key("expected 64 hex digits (a 32-byte ed25519 public key)".to_owned())
            })?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| Error::Key("not a valid ed25519 public key".to_owned()))
    }

    /// 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex(self.0.as_bytes())
    }

    /// `ed25519:<first 16 hex digits of SHA-256 of the key>`.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!("ed25519:{}", hex(digest.get(..8).unwrap_or_default()))
    }
}

/// Checks certificates for one audience (a tool server), with single use.
///
/// Keeps the ids of verified certificates until they expire, so a replayed certificate fails. The
/// set lives in memory: a verifier that restarts forgets it, which the short expiry bounds.
#[derive(Debug)]
pub struct CertificateVerifier {
    keys: Vec<CertVerifyingKey>,
    audience: String,
    leeway_ms: u64,
    seen: Mutex<HashMap<String, Timestamp>>,
}

impl CertificateVerifier {
    /// A verifier trusting `keys` (several, for rotation) for certificates addressed to
    /// `audience`. Clock leeway for the issue time defaults to 5 seconds.
    pub fn new(keys: Vec<CertVerifyingKey>, audience: impl Into<String>) -> Self {
        Self {
            keys,
            audience: audience.into(),
            leeway_ms: 5_000,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies `certificate` for a call of `tool` (the tool's name on this server, as the server
    /// was asked to run it) with `arguments` (the JSON the tool received) at `now`, and records its
    /// id as used. Checks, in order: key id, signature, version, decision, audience, tool,
    /// validity window, arguments hash, single use. The audience pins the server; the tool check
    /// stops a certificate for one tool of the server being spent on another with the same
    /// arguments.
    pub fn verify(
        &self,
        certificate: &CallCertificate,
        tool: &str,
        arguments: &[u8],
        now: Timestamp,
    ) -> Result<CertificateClaims, Error> {
        let claims = certificate.claims();
        let key = self
            .keys
            .iter()
            .find(|k| k.key_id() == claims.kid)
            .ok_or_else(|| Error::CertificateUnknownKey(claims.kid.clone()))?;
        let signature = Signature::from_bytes(&certificate.0.signature);
        key.0
            .verify(&certificate.0.message, &signature)
            .map_err(|_| Error::CertificateSignature)?;
        if claims.v != 1 || claims.decision != "allow" {
            return Err(Error::CertificateMalformed(
                "not a version 1 allow certificate".to_owned(),
            ));
        }
        if claims.aud != self.audience {
            return Err(Error::CertificateAudience {
                expected: self.audience.clone(),
                found: claims.aud.clone(),
            });
        }
        if claims.tool.name != tool {
            return Err(Error::CertificateTool {
                called: tool.to_owned(),
                found: claims.tool.name.clone(),
            });
        }
        let issued = Timestamp::parse_rfc3339(&claims.issued)?;
        let expires = Timestamp::parse_rfc3339(&claims.expires)?;
        if now.unix_millis().saturating_add(self.leeway_ms) < issued.unix_millis() {
            return Err(Error::CertificateNotYetValid(claims.issued.clone()));
        }
        if now >= expires {
            return Err(Error::CertificateExpired(claims.expires.clone()));
        }
        let args_hash = sha256_tag(&canonical_bytes(&parse_strict(arguments)?));
        if args_hash != claims.args_hash {
            return Err(Error::CertificateArguments);
        }
        let mut seen = match self.seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        seen.retain(|_, exp| *exp > now);
        if seen.insert(claims.id.clone(), expires).is_some() {
            return Err(Error::CertificateReplayed(claims.id.clone()));
        }
        Ok(claims.clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Any string, or a short one of the characters JSON escaping and our formats care about.
    pub(crate) fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z:/._ \"\\\\-]{0,12}"]
    }

    pub(crate) fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(text())
    }

    pub(crate) fn texts() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(text(), 0..4)
    }

    prop_compose! {
        fn claims()(
            v in any::<u32>(),
            strings in proptest::collection::vec(text(), 14),
            session in opt_text(),
            risk in opt_text(),
            delegation in texts(),
            rules in texts(),
            labels in proptest::collection::btree_map(text(), texts(), 0..5),
            intent in proptest::option::of((text(), texts(), text())),
            approval in proptest::option::of((text(), text())),
        ) -> CertificateClaims {
            let s = |i: usize| strings[i].clone();
            CertificateClaims {
                v,
                id: s(0),
                kid: s(1),
                aud: s(2),
                issued: s(3),
                expires: s(4),
                agent: s(5),
                delegation,
                session,
                tool: CertifiedTool { server: s(6), name: s(7), definition_hash: s(8) },
                args_hash: s(9),
                labels,
                taint: s(10),
                intent: intent.map(|(text, labels, integrity)| CertifiedIntent { text, labels, integrity }),
                decision: s(11),
                rules,
                risk,
                policy_hash: s(12),
                approval: approval.map(|(approver, time)| Approval { approver, time }),
            }
        }
    }

    proptest! {
        /// Signing with the expanded key derived once gives exactly the RFC 8032 signature the
        /// plain signing key gives, over the signing context and the claims' canonical bytes;
        /// the wire bytes written around the claims are the JCS bytes of the JSON form; the
        /// record's serde form is the same JSON and decodes to the same certificate.
        #[test]
        fn signature_and_wire_bytes(c in claims(), seed in any::<[u8; 32]>()) {
            use ed25519_dalek::Signer as _;
            let key = CertSigningKey::from_seed(&seed);
            let cert = CallCertificate::sign(c.clone(), &key);
            let message = [CERT_SIGNING_CONTEXT, &c.canonical_bytes()].concat();
            let reference = SigningKey::from_bytes(&seed).sign(&message).to_bytes();
            prop_assert_eq!(cert.0.signature, reference);
            prop_assert_eq!(cert.to_bytes(), canonical_bytes(&cert.to_json_value()));
            let via_serde = serde_json::to_value(&cert).unwrap();
            prop_assert_eq!(&via_serde, &cert.to_json_value());
            let back: CallCertificate = serde_json::from_value(via_serde).unwrap();
            prop_assert_eq!(back, cert);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// A presigning key's certificates carry valid Ed25519 signatures over the same message
        /// (not RFC 8032's deterministic bytes: two signatures of the same claims differ), and
        /// a signature over other claims does not verify.
        #[test]
        fn presigned_certificates_verify(c in claims(), seed in any::<[u8; 32]>()) {
            let mut key = CertSigningKey::from_seed(&seed);
            key.start_presigning(warden_presign::os_entropy()).unwrap();
            let public = key.verifying_key();
            let (a, b) = (CallCertificate::sign(c.clone(), &key), CallCertificate::sign(c.clone(), &key));
            for cert in [&a, &b] {
                let sig = Signature::from_bytes(&cert.0.signature);
                prop_assert!(public.0.verify_strict(&cert.0.message, &sig).is_ok());
                let mut other = cert.0.message.clone();
                if let Some(last) = other.last_mut() { *last ^= 1; }
                prop_assert!(public.0.verify_strict(&other, &sig).is_err());
            }
            prop_assert_eq!(&a.0.message, &b.0.message);
        }
    }

    proptest! {
        /// The direct writer and the generic canonicalizer agree byte for byte, so certificates
        /// verify with any RFC 8785 implementation.
        #[test]
        fn claims_canonical_bytes_are_rfc8785(c in claims()) {
            let generic = canonical_bytes(&serde_json::to_value(&c).unwrap());
            prop_assert_eq!(c.canonical_bytes(), generic);
        }
    }
}
