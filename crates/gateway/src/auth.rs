//! Bearer authentication of the HTTP face: JWT-SVIDs (ES256 / ES384 / RS256 / EdDSA) verified
//! against a SPIFFE trust bundle given as a JWKS file.
//!
//! TEMPORARY home: the identity crate provides the JWT-SVID verifier; until it lands this module
//! does the same checks with `jsonwebtoken`: signature by a key of the bundle (by `kid`), `exp`
//! (with `nbf` when present), the audience, and a `sub` that is a `spiffe://` ID.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use crate::error::Error;

/// Verifies bearers against a trust bundle.
#[derive(Debug, Clone)]
pub struct BearerVerifier {
    keys: JwkSet,
    audience: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

/// Why a bearer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bearer refused: {0}")]
pub struct BearerError(pub String);

impl BearerVerifier {
    /// Loads the JWKS at `path`.
    pub fn load(path: &Path, audience: &str) -> Result<Self, Error> {
        let text = std::fs::read(path)
            .map_err(|e| Error::Config(format!("jwks `{}`: {e}", path.display())))?;
        Self::from_jwks(&text, audience)
    }

    /// Parses a JWKS.
    pub fn from_jwks(bytes: &[u8], audience: &str) -> Result<Self, Error> {
        let keys: JwkSet =
            serde_json::from_slice(bytes).map_err(|e| Error::Config(format!("jwks: {e}")))?;
        Ok(Self {
            keys,
            audience: audience.to_owned(),
        })
    }

    /// Verifies `token`; returns the SPIFFE ID it names.
    pub fn verify(&self, token: &str) -> Result<String, BearerError> {
        let header = decode_header(token).map_err(|e| BearerError(e.to_string()))?;
        if !matches!(
            header.alg,
            Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::RS256
                | Algorithm::PS256
                | Algorithm::EdDSA
        ) {
            return Err(BearerError(format!(
                "algorithm {:?} not accepted",
                header.alg
            )));
        }
        let kid = header.kid.ok_or_else(|| BearerError("no `kid`".into()))?;
        let jwk = self
            .keys
            .find(&kid)
            .ok_or_else(|| BearerError(format!("unknown key `{kid}`")))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| BearerError(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = 5;
        let data =
            decode::<Claims>(token, &key, &validation).map_err(|e| BearerError(e.to_string()))?;
        if !data.claims.sub.starts_with("spiffe://") {
            return Err(BearerError(format!(
                "subject `{}` is not a SPIFFE ID",
                data.claims.sub
            )));
        }
        Ok(data.claims.sub)
    }
}
