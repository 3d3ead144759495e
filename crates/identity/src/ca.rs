//! The certificate authority of one trust domain: mints X.509-SVIDs and JWT-SVIDs and
//! publishes the trust bundle; rotates its keys without breaking holders of current SVIDs.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::bundle::{JwtAuthority, TrustBundle};
use crate::env::{Clock, Random};
use crate::{Error, SpiffeId, TrustDomain, jwt};

/// The longest SVID lifetime this CA issues.
pub const MAX_SVID_TTL: Duration = Duration::from_secs(3600);
/// Leaves are back-dated by this much to absorb small clock skew between peers.
const BACKDATE: Duration = Duration::from_secs(10);
/// Serial numbers are this many random bytes (positive, 127 bits of entropy).
const SERIAL_LEN: usize = 16;

/// Lifetimes the CA works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaPolicy {
    /// X.509-SVID lifetime; at most [`MAX_SVID_TTL`].
    pub x509_svid_ttl: Duration,
    /// JWT-SVID lifetime; at most [`MAX_SVID_TTL`].
    pub jwt_svid_ttl: Duration,
    /// Lifetime of a CA certificate and of a JWT signing key.
    pub ca_ttl: Duration,
    /// `spiffe_refresh_hint` published in the bundle.
    pub refresh_hint: Duration,
}

impl Default for CaPolicy {
    fn default() -> Self {
        Self {
            x509_svid_ttl: MAX_SVID_TTL,
            jwt_svid_ttl: Duration::from_secs(300),
            ca_ttl: Duration::from_secs(7 * 24 * 3600),
            refresh_hint: Duration::from_secs(300),
        }
    }
}

impl CaPolicy {
    fn validate(&self) -> Result<(), Error> {
        let bounded = |d: Duration| !d.is_zero() && d <= MAX_SVID_TTL;
        if !bounded(self.x509_svid_ttl) || !bounded(self.jwt_svid_ttl) {
            return Err(Error::InvalidTtl(
                "SVID lifetimes must be between 1 s and 1 h".into(),
            ));
        }
        if self.ca_ttl < 2 * MAX_SVID_TTL {
            return Err(Error::InvalidTtl(
                "the CA lifetime must be at least twice the longest SVID lifetime".into(),
            ));
        }
        Ok(())
    }
}

/// An X.509-SVID with its private key.
#[derive(Clone)]
pub struct X509Svid {
    spiffe_id: SpiffeId,
    cert_chain: Vec<CertificateDer<'static>>,
    private_key_pkcs8: Vec<u8>,
    expiry: SystemTime,
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("expiry", &self.expiry)
            .field("private_key_pkcs8", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl X509Svid {
    /// An SVID from parts fetched elsewhere (e.g. from a SPIRE agent); not validated here.
    pub fn from_parts(
        spiffe_id: SpiffeId,
        cert_chain: Vec<CertificateDer<'static>>,
        private_key_pkcs8: Vec<u8>,
        expiry: SystemTime,
    ) -> Self {
        Self {
            spiffe_id,
            cert_chain,
            private_key_pkcs8,
            expiry,
        }
    }

    /// An SVID from the PEM files `warden identity svid --out-dir` writes (`svid.pem`: the
    /// chain, leaf first; `svid.key`: the PKCS#8 key). See [`X509Svid::from_der`].
    pub fn from_pem(cert_chain_pem: &[u8], private_key_pem: &[u8]) -> Result<Self, Error> {
        use rustls::pki_types::PrivatePkcs8KeyDer;
        use rustls::pki_types::pem::PemObject as _;
        let cert_chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidX509Svid(format!("certificate PEM: {e}")))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(private_key_pem).map_err(|e| {
            Error::InvalidX509Svid(format!("private key PEM (PKCS#8 expected): {e}"))
        })?;
        Self::from_der(cert_chain, key.secret_pkcs8_der().to_vec())
    }

    /// An SVID from its chain (leaf first) and PKCS#8 key, e.g. as the Workload API hands them
    /// out. The leaf must follow the SPIFFE leaf rules; the chain is not verified here
    /// (verifiers check it against their bundle).
    pub fn from_der(
        cert_chain: Vec<CertificateDer<'static>>,
        private_key_pkcs8: Vec<u8>,
    ) -> Result<Self, Error> {
        let leaf = cert_chain
            .first()
            .ok_or_else(|| Error::InvalidX509Svid("no certificate".into()))?;
        let spiffe_id = crate::x509::leaf_spiffe_id(leaf)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| Error::InvalidX509Svid(format!("unparsable leaf: {e}")))?;
        let secs = u64::try_from(parsed.validity().not_after.timestamp())
            .map_err(|_| Error::InvalidX509Svid("the leaf expires before 1970".into()))?;
        Ok(Self {
            spiffe_id,
            cert_chain,
            private_key_pkcs8,
            expiry: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        })
    }

    /// The SPIFFE ID in the URI SAN.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// Leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// The private key, PKCS#8 DER. Handle as a secret.
    pub fn private_key_pkcs8(&self) -> &[u8] {
        &self.private_key_pkcs8
    }

    /// `notAfter` of the leaf.
    pub fn expiry(&self) -> SystemTime {
        self.expiry
    }

    /// The chain as PEM, leaf first.
    pub fn cert_chain_pem(&self) -> String {
        self.cert_chain
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect()
    }

    /// The private key as PEM. Handle as a secret.
    pub fn private_key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.private_key_pkcs8)
    }
}

/// A JWT-SVID: the encoded token and what it says.
#[derive(Clone, Debug)]
pub struct JwtSvid {
    /// `sub`.
    pub spiffe_id: SpiffeId,
    /// The JWS compact serialization. Handle as a bearer secret.
    pub token: String,
    /// `exp`.
    pub expiry: SystemTime,
}

struct X509Authority {
    cert: CertificateDer<'static>,
    key: KeyPair,
    not_after: SystemTime,
    /// When it stopped signing; `None` while active.
    retired_at: Option<SystemTime>,
}

struct JwtKey {
    key_id: String,
    pkcs8: Vec<u8>,
    key: EcdsaKeyPair,
    not_after: SystemTime,
    retired_at: Option<SystemTime>,
}

/// The CA of one trust domain.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    policy: CaPolicy,
    /// Newest (active) first.
    x509: Vec<X509Authority>,
    /// Newest (active) first.
    jwt: Vec<JwtKey>,
    sequence: u64,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("policy", &self.policy)
            .field("x509_authorities", &self.x509.len())
            .field("jwt_authorities", &self.jwt.len())
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new CA with fresh keys.
    pub fn generate(
        trust_domain: TrustDomain,
        policy: CaPolicy,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
    ) -> Result<Self, Error> {
        policy.validate()?;
        let mut ca = Self {
            trust_domain,
            policy,
            x509: Vec::new(),
            jwt: Vec::new(),
            sequence: 0,
            clock,
            random,
        };
        ca.rotate()?;
        Ok(ca)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The lifetimes in force.
    pub fn policy(&self) -> &CaPolicy {
        &self.policy
    }

    /// The injected clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Starts signing with new X.509 and JWT keys. The old ones stay in the bundle until every
    /// SVID they signed has expired, so holders of current SVIDs are not broken.
    pub fn rotate(&mut self) -> Result<(), Error> {
        let now = self.clock.now();
        let x509 = self.new_x509_authority(now)?;
        let jwt = self.new_jwt_key(now)?;
        for a in &mut self.x509 {
            a.retired_at.get_or_insert(now);
        }
        for k in &mut self.jwt {
            k.retired_at.get_or_insert(now);
        }
        self.x509.insert(0, x509);
        self.jwt.insert(0, jwt);
        self.prune(now);
        self.sequence = self.sequence.saturating_add(1);
        Ok(())
    }

    /// Drops retired keys whose SVIDs have all expired; returns whether the bundle changed.
    pub fn prune_expired(&mut self) -> bool {
        let now = self.clock.now();
        let before = (self.x509.len(), self.jwt.len());
        self.prune(now);
        let changed = before != (self.x509.len(), self.jwt.len());
        if changed {
            self.sequence = self.sequence.saturating_add(1);
        }
        changed
    }

    fn prune(&mut self, now: SystemTime) {
        let x509_ttl = self.policy.x509_svid_ttl;
        let jwt_ttl = self.policy.jwt_svid_ttl;
        self.x509.retain(|a| {
            now < a.not_after && a.retired_at.is_none_or(|r| now < r + x509_ttl + BACKDATE)
        });
        self.jwt
            .retain(|k| now < k.not_after && k.retired_at.is_none_or(|r| now < r + jwt_ttl));
    }

    /// The time when the active CA certificate expires; rotate well before it.
    pub fn active_not_after(&self) -> Option<SystemTime> {
        self.x509.first().map(|a| a.not_after)
    }

    /// The trust bundle: every CA certificate and JWT key still needed, newest first.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(
            self.trust_domain.clone(),
            self.x509.iter().map(|a| a.cert.clone()).collect(),
            self.jwt
                .iter()
                .map(|k| JwtAuthority {
                    key_id: k.key_id.clone(),
                    public_key: k.key.public_key().as_ref().to_vec(),
                })
                .collect(),
            self.sequence,
            self.policy.refresh_hint,
        )
    }

    /// Mints an X.509-SVID for `id` with the policy's lifetime.
    pub fn mint_x509_svid(&self, id: &SpiffeId) -> Result<X509Svid, Error> {
        self.mint_x509_svid_with_ttl(id, self.policy.x509_svid_ttl)
    }

    /// Mints an X.509-SVID for `id` living `ttl` (at most [`MAX_SVID_TTL`], and never past the
    /// CA certificate).
    pub fn mint_x509_svid_with_ttl(&self, id: &SpiffeId, ttl: Duration) -> Result<X509Svid, Error> {
        self.check_id(id)?;
        if ttl.is_zero() || ttl > MAX_SVID_TTL {
            return Err(Error::InvalidTtl(format!(
                "`{}s` is not between 1 s and 1 h",
                ttl.as_secs()
            )));
        }
        let authority = self
            .x509
            .first()
            .ok_or_else(|| Error::Crypto("the CA has no active key".into()))?;
        let now = self.clock.now();
        if now >= authority.not_after {
            return Err(Error::Crypto(
                "the active CA certificate has expired".into(),
            ));
        }
        let not_after = (now + ttl).min(authority.not_after);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;

        let mut params = CertificateParams::default();
        // No subject fields: the SPIFFE ID in the (then critical) URI SAN is the identity.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(crypto)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(self.serial()?);
        params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(now))?;
        params.not_after = to_offset(not_after)?;

        let issuer = Issuer::from_ca_cert_der(&authority.cert, &authority.key).map_err(crypto)?;
        let cert = params.signed_by(&key, &issuer).map_err(crypto)?;
        Ok(X509Svid {
            spiffe_id: id.clone(),
            cert_chain: vec![cert.der().clone()],
            private_key_pkcs8: key.serialize_der(),
            expiry: truncate_to_seconds(not_after),
        })
    }

    /// Mints a JWT-SVID for `id` and `audience` with the policy's lifetime.
    pub fn mint_jwt_svid(&self, id: &SpiffeId, audience: &[String]) -> Result<JwtSvid, Error> {
        self.mint_jwt_svid_with_ttl(id, audience, self.policy.jwt_svid_ttl)
    }

    /// Mints a JWT-SVID for `id` and `audience` living `ttl` (at most [`MAX_SVID_TTL`]).
    pub fn mint_jwt_svid_with_ttl(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<JwtSvid, Error> {
        self.check_id(id)?;
        if ttl.is_zero() || ttl > MAX_SVID_TTL {
            return Err(Error::InvalidTtl(format!(
                "`{}s` is not between 1 s and 1 h",
                ttl.as_secs()
            )));
        }
        let key = self
            .jwt
            .first()
            .ok_or_else(|| Error::Crypto("the CA has no active JWT key".into()))?;
        let now = self.clock.now();
        let expiry = truncate_to_seconds((now + ttl).min(key.not_after));
        let token = jwt::sign(&key.key, &key.key_id, id, audience, now, expiry)?;
        Ok(JwtSvid {
            spiffe_id: id.clone(),
            token,
            expiry,
        })
    }

    fn check_id(&self, id: &SpiffeId) -> Result<(), Error> {
        if id.trust_domain() != &self.trust_domain {
            return Err(Error::InvalidSpiffeId {
                input: id.to_string(),
                reason: "not in this CA's trust domain",
            });
        }
        if id.path().is_empty() {
            return Err(Error::InvalidSpiffeId {
                input: id.to_string(),
                reason: "a workload's SPIFFE ID needs a path",
            });
        }
        Ok(())
    }

    fn serial(&self) -> Result<SerialNumber, Error> {
        let mut bytes = [0u8; SERIAL_LEN];
        self.random.fill(&mut bytes)?;
        // Positive, and never shorter than 16 bytes once DER-encoded.
        if let Some(first) = bytes.first_mut() {
            *first = (*first & 0x7f) | 0x40;
        }
        Ok(SerialNumber::from_slice(&bytes))
    }

    fn new_x509_authority(&self, now: SystemTime) -> Result<X509Authority, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
        let not_after = now + self.policy.ca_ttl;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Warden");
        dn.push(DnType::CommonName, self.trust_domain.name());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            self.trust_domain.id_string().try_into().map_err(crypto)?,
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(self.serial()?);
        params.not_before = to_offset(now.checked_sub(BACKDATE).unwrap_or(now))?;
        params.not_after = to_offset(not_after)?;
        let cert = params.self_signed(&key).map_err(crypto)?;
        Ok(X509Authority {
            cert: cert.der().clone(),
            key,
            not_after: truncate_to_seconds(not_after),
            retired_at: None,
        })
    }

    fn new_jwt_key(&self, now: SystemTime) -> Result<JwtKey, Error> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| Error::Crypto("JWT key generation failed".into()))?;
        let mut kid = [0u8; 16];
        self.random.fill(&mut kid)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| Error::Crypto("JWT key parsing failed".into()))?;
        Ok(JwtKey {
            key_id: hex::encode(kid),
            pkcs8: pkcs8.as_ref().to_vec(),
            key,
            not_after: now + self.policy.ca_ttl,
            retired_at: None,
        })
    }

    /// Writes the CA (its private keys included) to `path`, mode 0600, atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let stored = StoredCa {
            trust_domain: self.trust_domain.name().to_owned(),
            policy: self.policy,
            sequence: self.sequence,
            x509: self
                .x509
                .iter()
                .map(|a| StoredX509 {
                    cert: STANDARD.encode(a.cert.as_ref()),
                    key: STANDARD.encode(a.key.serialize_der()),
                    not_after: jwt::unix_seconds(a.not_after),
                    retired_at: a.retired_at.map(jwt::unix_seconds),
                })
                .collect(),
            jwt: self
                .jwt
                .iter()
                .map(|k| StoredJwt {
                    key_id: k.key_id.clone(),
                    key: STANDARD.encode(&k.pkcs8),
                    not_after: jwt::unix_seconds(k.not_after),
                    retired_at: k.retired_at.map(jwt::unix_seconds),
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| Error::Config(e.to_string()))?;
        crate::files::write_secret(path, &json)
    }

    /// Reads a CA written by [`CertificateAuthority::save`].
    pub fn load(
        path: &Path,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
    ) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let stored: StoredCa =
            serde_json::from_slice(&bytes).map_err(|e| Error::Config(format!("CA file: {e}")))?;
        stored.policy.validate()?;
        let rng = ring::rand::SystemRandom::new();
        let decode = |s: &str| {
            STANDARD
                .decode(s)
                .map_err(|e| Error::Config(format!("CA file: {e}")))
        };
        let mut x509 = Vec::new();
        for a in &stored.x509 {
            let key_der = decode(&a.key)?;
            let key = KeyPair::try_from(key_der.as_slice()).map_err(crypto)?;
            x509.push(X509Authority {
                cert: CertificateDer::from(decode(&a.cert)?),
                key,
                not_after: from_unix(a.not_after),
                retired_at: a.retired_at.map(from_unix),
            });
        }
        let mut jwt_keys = Vec::new();
        for k in &stored.jwt {
            let pkcs8 = decode(&k.key)?;
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
                .map_err(|_| Error::Config("CA file: bad JWT key".into()))?;
            jwt_keys.push(JwtKey {
                key_id: k.key_id.clone(),
                pkcs8,
                key,
                not_after: from_unix(k.not_after),
                retired_at: k.retired_at.map(from_unix),
            });
        }
        if x509.is_empty() || jwt_keys.is_empty() {
            return Err(Error::Config("CA file holds no keys".into()));
        }
        Ok(Self {
            trust_domain: TrustDomain::new(&stored.trust_domain)?,
            policy: stored.policy,
            x509,
            jwt: jwt_keys,
            sequence: stored.sequence,
            clock,
            random,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredCa {
    trust_domain: String,
    policy: CaPolicy,
    sequence: u64,
    x509: Vec<StoredX509>,
    jwt: Vec<StoredJwt>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredX509 {
    cert: String,
    key: String,
    not_after: u64,
    retired_at: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredJwt {
    key_id: String,
    key: String,
    not_after: u64,
    retired_at: Option<u64>,
}

fn crypto(e: impl fmt::Display) -> Error {
    Error::Crypto(e.to_string())
}

fn from_unix(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    from_unix(jwt::unix_seconds(t))
}

fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime, Error> {
    let secs = i64::try_from(jwt::unix_seconds(t))
        .map_err(|_| Error::InvalidTtl("time out of range".into()))?;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| Error::InvalidTtl("time out of range".into()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
