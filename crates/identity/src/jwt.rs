//! JWT-SVIDs: JWS compact tokens signed with ES256, per the SPIFFE JWT-SVID specification.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, EcdsaKeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::{Error, SpiffeId, TrustBundle};

/// Tokens longer than this are refused before decoding.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The algorithms the JWT-SVID specification allows. Only ES256 is minted and verified here;
/// the others are recognised so that their refusal says why.
const SPEC_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// A validated JWT-SVID's contents.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtSvidClaims {
    /// `sub`.
    pub spiffe_id: SpiffeId,
    /// `aud`.
    pub audience: Vec<String>,
    /// `exp`.
    pub expiry: SystemTime,
    /// Every claim, as JSON.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

#[derive(Serialize)]
struct OutClaims<'a> {
    sub: String,
    aud: &'a [String],
    exp: u64,
    iat: u64,
}

#[derive(Deserialize)]
struct InClaims {
    sub: String,
    aud: Audience,
    exp: serde_json::Number,
    #[serde(default)]
    nbf: Option<serde_json::Number>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Signs a JWT-SVID. `audience` must not be empty.
pub(crate) fn sign(
    key: &EcdsaKeyPair,
    key_id: &str,
    subject: &SpiffeId,
    audience: &[String],
    issued: SystemTime,
    expiry: SystemTime,
) -> Result<String, Error> {
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(Error::InvalidJwtSvid("audience must not be empty".into()));
    }
    let header = Header {
        alg: "ES256".into(),
        kid: Some(key_id.into()),
        typ: Some("JWT".into()),
    };
    let claims = OutClaims {
        sub: subject.to_string(),
        aud: audience,
        exp: unix_seconds(expiry),
        iat: unix_seconds(issued),
    };
    let signing_input = format!("{}.{}", json_b64(&header)?, json_b64(&claims)?);
    let rng = ring::rand::SystemRandom::new();
    let sig = key
        .sign(&rng, signing_input.as_bytes())
        .map_err(|_| Error::Crypto("ECDSA signing failed".into()))?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    ))
}

fn json_b64<T: Serialize>(value: &T) -> Result<String, Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::InvalidJwtSvid(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Validates a JWT-SVID against `bundle` for `audience` at time `now`: structure, header (only
/// `alg`, `kid`, `typ`), algorithm, key id, signature, `sub` in the bundle's trust domain, `aud`
/// holding `audience`, `exp` in the future and `nbf`, if any, in the past.
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<JwtSvidClaims, Error> {
    let bad = |m: &str| Error::InvalidJwtSvid(m.to_owned());
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad("token is longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a JWS compact serialization of three parts"));
    };
    let header: Header = serde_json::from_slice(&b64(h)?)
        .map_err(|e| Error::InvalidJwtSvid(format!("bad header: {e}")))?;
    if header.alg != "ES256" {
        return Err(if SPEC_ALGORITHMS.contains(&header.alg.as_str()) {
            Error::InvalidJwtSvid(format!("algorithm `{}` is not supported here", header.alg))
        } else {
            Error::InvalidJwtSvid(format!("algorithm `{}` is not allowed", header.alg))
        });
    }
    if let Some(typ) = &header.typ
        && typ != "JWT"
        && typ != "JOSE"
    {
        return Err(bad("`typ` must be `JWT` or `JOSE`"));
    }
    let kid = header
        .kid
        .as_deref()
        .ok_or_else(|| bad("header has no `kid`"))?;
    let authority = bundle
        .jwt_authority(kid)
        .ok_or_else(|| Error::InvalidJwtSvid(format!("no authority with key id `{kid}`")))?;
    let signature = b64(s)?;
    let signing_input_len = h.len() + 1 + p.len();
    let signing_input = token
        .get(..signing_input_len)
        .ok_or_else(|| bad("malformed token"))?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &authority.public_key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| bad("signature does not verify"))?;

    let payload = b64(p)?;
    let claims: InClaims = serde_json::from_slice(&payload)
        .map_err(|e| Error::InvalidJwtSvid(format!("bad claims: {e}")))?;
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&payload)
        .map_err(|e| Error::InvalidJwtSvid(format!("bad claims: {e}")))?;
    let spiffe_id = SpiffeId::new(&claims.sub)?;
    if spiffe_id.trust_domain() != bundle.trust_domain() {
        return Err(Error::InvalidJwtSvid(format!(
            "subject `{spiffe_id}` is not in trust domain `{}`",
            bundle.trust_domain()
        )));
    }
    let audiences = match claims.aud {
        Audience::One(a) => vec![a],
        Audience::Many(v) => v,
    };
    if audiences.is_empty() {
        return Err(bad("`aud` is empty"));
    }
    if audience.is_empty() || !audiences.iter().any(|a| a == audience) {
        return Err(Error::InvalidJwtSvid(format!(
            "audience `{audience}` is not in `aud`"
        )));
    }
    let exp = seconds(&claims.exp).ok_or_else(|| bad("`exp` is not a time"))?;
    let expiry = UNIX_EPOCH + Duration::from_secs(exp);
    if now >= expiry {
        return Err(bad("token has expired"));
    }
    if let Some(nbf) = &claims.nbf {
        let nbf = seconds(nbf).ok_or_else(|| bad("`nbf` is not a time"))?;
        if now < UNIX_EPOCH + Duration::from_secs(nbf) {
            return Err(bad("token is not yet valid"));
        }
    }
    Ok(JwtSvidClaims {
        spiffe_id,
        audience: audiences,
        expiry,
        claims: all,
    })
}

fn seconds(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
            .map(|f| f.trunc() as u64)
    })
}

fn b64(part: &str) -> Result<Vec<u8>, Error> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| Error::InvalidJwtSvid(format!("bad base64url: {e}")))
}

pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
