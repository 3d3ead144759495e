//! mTLS by SPIFFE ID: rustls client and server configurations whose verifiers check the peer's
//! chain against the trust bundle, then authorize the peer's SPIFFE ID.
//!
//! TLS 1.3 only, `ring` as the one crypto provider. The server name a client dials is not
//! checked: SPIFFE authenticates by SPIFFE ID, which the [`Authorizer`] decides on.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};

use crate::x509::{SvidUsage, leaf_spiffe_id, verify_x509_svid};
use crate::{Error, SpiffeId, TrustBundle, TrustDomain, X509Svid};

/// One rule for accepting a peer's SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpiffeIdMatcher {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any ID of this trust domain.
    TrustDomain(TrustDomain),
    /// This ID or any below it, segment-wise (`/agents` admits `/agents/a`, not `/agentsx`).
    PathPrefix(SpiffeId),
}

impl SpiffeIdMatcher {
    fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(want) => want == id,
            Self::TrustDomain(td) => id.trust_domain() == td,
            Self::PathPrefix(prefix) => id.is_under(prefix),
        }
    }
}

/// Decides which peer SPIFFE IDs are accepted: any one matching rule admits; no rule, no peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorizer {
    rules: Vec<SpiffeIdMatcher>,
}

impl Authorizer {
    /// Accepts the peers any of `rules` matches.
    pub fn any_of(rules: Vec<SpiffeIdMatcher>) -> Self {
        Self { rules }
    }

    /// Accepts exactly `id`.
    pub fn exact(id: SpiffeId) -> Self {
        Self::any_of(vec![SpiffeIdMatcher::Exact(id)])
    }

    /// Accepts every ID of `td`.
    pub fn trust_domain(td: TrustDomain) -> Self {
        Self::any_of(vec![SpiffeIdMatcher::TrustDomain(td)])
    }

    /// Accepts `prefix` and the IDs below it.
    pub fn path_prefix(prefix: SpiffeId) -> Self {
        Self::any_of(vec![SpiffeIdMatcher::PathPrefix(prefix)])
    }

    /// `Ok` when a rule admits `id`.
    pub fn authorize(&self, id: &SpiffeId) -> Result<(), Error> {
        if self.rules.iter().any(|r| r.matches(id)) {
            Ok(())
        } else {
            Err(Error::Unauthorized(id.to_string()))
        }
    }
}

/// The trust bundle the verifiers check chains against; shared and replaceable, so that a
/// rotated bundle takes effect on the next handshake.
#[derive(Clone, Debug)]
pub struct TrustStore(Arc<RwLock<Arc<TrustBundle>>>);

impl TrustStore {
    /// A store holding `bundle`.
    pub fn new(bundle: TrustBundle) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(bundle))))
    }

    /// Replaces the bundle.
    pub fn set(&self, bundle: TrustBundle) {
        let mut guard = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = Arc::new(bundle);
    }

    /// The current bundle.
    pub fn get(&self) -> Arc<TrustBundle> {
        match self.0.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }
}

/// The SVID a TLS endpoint presents; shared and replaceable for rotation.
#[derive(Clone)]
pub struct SvidStore(Arc<RwLock<Arc<CertifiedKey>>>);

impl fmt::Debug for SvidStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SvidStore(..)")
    }
}

impl SvidStore {
    /// A store presenting `svid`.
    pub fn new(svid: &X509Svid) -> Result<Self, Error> {
        Ok(Self(Arc::new(RwLock::new(certified_key(svid)?))))
    }

    /// Presents `svid` from the next handshake on.
    pub fn set(&self, svid: &X509Svid) -> Result<(), Error> {
        let key = certified_key(svid)?;
        let mut guard = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = key;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.0.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }
}

fn certified_key(svid: &X509Svid) -> Result<Arc<CertifiedKey>, Error> {
    let provider = provider();
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            svid.private_key_pkcs8().to_vec(),
        )))
        .map_err(|e| Error::Crypto(format!("unusable SVID key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(svid.cert_chain().to_vec(), key)))
}

/// The workspace's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration that presents `svid`, requires a client SVID chaining to `trust`, and
/// accepts only clients `authorizer` admits.
pub fn server_config(
    svid: SvidStore,
    trust: TrustStore,
    authorizer: Authorizer,
) -> Result<ServerConfig, Error> {
    let provider = provider();
    let verifier = SpiffeVerifier {
        trust,
        authorizer,
        provider: Arc::clone(&provider),
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Crypto(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(Presenter(svid)));
    Ok(config)
}

/// A client configuration that presents `svid` and accepts only servers whose SVID chains to
/// `trust` and whose SPIFFE ID `authorizer` admits.
pub fn client_config(
    svid: SvidStore,
    trust: TrustStore,
    authorizer: Authorizer,
) -> Result<ClientConfig, Error> {
    let provider = provider();
    let verifier = SpiffeVerifier {
        trust,
        authorizer,
        provider: Arc::clone(&provider),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Crypto(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(Presenter(svid)));
    Ok(config)
}

/// The SPIFFE ID of the peer of an established connection (client or server side). The
/// configurations above have verified and authorized it during the handshake.
pub fn peer_spiffe_id(conn: &CommonState) -> Result<SpiffeId, Error> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| Error::InvalidX509Svid("the peer presented no certificate".into()))?;
    leaf_spiffe_id(leaf)
}

#[derive(Debug)]
struct Presenter(SvidStore);

impl ResolvesServerCert for Presenter {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

impl ResolvesClientCert for Presenter {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

struct SpiffeVerifier {
    trust: TrustStore,
    authorizer: Authorizer,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SpiffeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeVerifier")
            .field("authorizer", &self.authorizer)
            .finish_non_exhaustive()
    }
}

impl SpiffeVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: SvidUsage,
    ) -> Result<(), rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let id = verify_x509_svid(&chain, &self.trust.get(), now, usage)
            .map_err(|e| rustls::Error::InvalidCertificate(other(e)))?;
        self.authorizer
            .authorize(&id)
            .map_err(|e| rustls::Error::InvalidCertificate(other(e)))
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

fn other(e: Error) -> rustls::CertificateError {
    rustls::CertificateError::Other(rustls::OtherError(Arc::new(e)))
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, SvidUsage::Server)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, SvidUsage::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
