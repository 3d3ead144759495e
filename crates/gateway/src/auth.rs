//! Bearer authentication of the HTTP face: JWT-SVIDs verified by `warden-identity` against the
//! trust domain's SPIFFE bundle (a JWKS file): ES256 signature by a `jwt-svid` key of the bundle
//! (by `kid`), `sub` a SPIFFE ID in the trust domain, `aud` holding the configured audience, `exp`
//! in the future, `nbf` in the past.

use std::path::Path;
use std::time::SystemTime;

use warden_identity::{TrustBundle, TrustDomain, validate_jwt_svid};

use crate::error::Error;

/// Verifies bearers against a trust bundle.
#[derive(Debug, Clone)]
pub struct BearerVerifier {
    bundle: TrustBundle,
    audience: String,
}

/// Why a bearer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bearer refused: {0}")]
pub struct BearerError(pub String);

impl BearerVerifier {
    /// Loads the SPIFFE bundle (JWKS) of `trust_domain` at `path`.
    pub fn load(path: &Path, trust_domain: &str, audience: &str) -> Result<Self, Error> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Config(format!("jwks `{}`: {e}", path.display())))?;
        Self::from_jwks(&bytes, trust_domain, audience)
    }

    /// Parses a SPIFFE bundle.
    pub fn from_jwks(bytes: &[u8], trust_domain: &str, audience: &str) -> Result<Self, Error> {
        let td = TrustDomain::new(trust_domain)
            .map_err(|e| Error::Config(format!("trust domain: {e}")))?;
        let bundle =
            TrustBundle::from_jwks(td, bytes).map_err(|e| Error::Config(format!("jwks: {e}")))?;
        Ok(Self {
            bundle,
            audience: audience.to_owned(),
        })
    }

    /// Verifies `token` at `now`; returns the SPIFFE ID it names.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<String, BearerError> {
        validate_jwt_svid(token, &self.audience, &self.bundle, now)
            .map(|claims| claims.spiffe_id.to_string())
            .map_err(|e| BearerError(e.to_string()))
    }
}
