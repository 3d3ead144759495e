//! Trust bundles, published as a SPIFFE bundle (a JWKS document with `x509-svid` and `jwt-svid`
//! keys, `spiffe_sequence` and `spiffe_refresh_hint`).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::{Error, TrustDomain};

/// Length of an uncompressed P-256 point: `0x04 || x || y`.
const P256_POINT_LEN: usize = 65;
/// Bundles larger than this are refused before parsing.
const MAX_BUNDLE_BYTES: usize = 1 << 20;

/// A JWT signing authority: its key id and its P-256 public key (uncompressed point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtAuthority {
    /// The `kid` JWT-SVIDs name in their header.
    pub key_id: String,
    /// `0x04 || x || y`.
    pub public_key: Vec<u8>,
}

/// The trust bundle of one trust domain: the CA certificates that X.509-SVIDs chain to and the
/// keys that sign JWT-SVIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<CertificateDer<'static>>,
    jwt_authorities: Vec<JwtAuthority>,
    sequence: u64,
    refresh_hint: Duration,
}

impl TrustBundle {
    /// A bundle from its parts.
    pub fn new(
        trust_domain: TrustDomain,
        x509_authorities: Vec<CertificateDer<'static>>,
        jwt_authorities: Vec<JwtAuthority>,
        sequence: u64,
        refresh_hint: Duration,
    ) -> Self {
        Self {
            trust_domain,
            x509_authorities,
            jwt_authorities,
            sequence,
            refresh_hint,
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificates (DER), newest first.
    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    /// The JWT signing keys, newest first.
    pub fn jwt_authorities(&self) -> &[JwtAuthority] {
        &self.jwt_authorities
    }

    /// The JWT key named `kid`.
    pub fn jwt_authority(&self, kid: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == kid)
    }

    /// `spiffe_sequence`: grows by one on every change of the bundle.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// `spiffe_refresh_hint`: how often relying parties should fetch the bundle again.
    pub fn refresh_hint(&self) -> Duration {
        self.refresh_hint
    }

    /// The CA certificates' DER, concatenated, as the Workload API carries them.
    pub fn x509_der_concatenated(&self) -> Vec<u8> {
        self.x509_authorities
            .iter()
            .flat_map(|c| c.as_ref().iter().copied())
            .collect()
    }

    /// The full SPIFFE bundle: a JWKS with both kinds of key.
    pub fn to_jwks(&self) -> Result<String, Error> {
        let mut keys = Vec::new();
        for cert in &self.x509_authorities {
            let point = certificate_p256_point(cert)?;
            let mut jwk = ec_jwk(&point, "x509-svid")?;
            jwk.x5c = Some(vec![STANDARD.encode(cert.as_ref())]);
            keys.push(jwk);
        }
        keys.extend(self.jwt_keys()?);
        self.document(keys)
    }

    /// A JWKS with only the `jwt-svid` keys, as the Workload API's `FetchJWTBundles` carries it.
    pub fn to_jwt_jwks(&self) -> Result<String, Error> {
        let keys = self.jwt_keys()?;
        self.document(keys)
    }

    fn jwt_keys(&self) -> Result<Vec<Jwk>, Error> {
        self.jwt_authorities
            .iter()
            .map(|a| {
                let mut jwk = ec_jwk(&a.public_key, "jwt-svid")?;
                jwk.kid = Some(a.key_id.clone());
                Ok(jwk)
            })
            .collect()
    }

    fn document(&self, keys: Vec<Jwk>) -> Result<String, Error> {
        let doc = Jwks {
            keys,
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: Some(self.refresh_hint.as_secs()),
        };
        serde_json::to_string_pretty(&doc).map_err(|e| Error::InvalidBundle(e.to_string()))
    }

    /// Parses a SPIFFE bundle (JWKS) for `trust_domain`. Keys with a `use` other than
    /// `x509-svid` or `jwt-svid` are ignored, as the specification asks; a malformed key of a
    /// known use fails the whole bundle.
    pub fn from_jwks(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, Error> {
        if json.len() > MAX_BUNDLE_BYTES {
            return Err(Error::InvalidBundle("bundle is larger than 1 MiB".into()));
        }
        let doc: Jwks =
            serde_json::from_slice(json).map_err(|e| Error::InvalidBundle(e.to_string()))?;
        let mut x509_authorities = Vec::new();
        let mut jwt_authorities = Vec::new();
        for key in doc.keys {
            match key.use_.as_deref() {
                Some("x509-svid") => {
                    let [cert] = key.x5c.as_deref().unwrap_or_default() else {
                        return Err(Error::InvalidBundle(
                            "an `x509-svid` key must hold exactly one `x5c` certificate".into(),
                        ));
                    };
                    let der = STANDARD
                        .decode(cert)
                        .map_err(|e| Error::InvalidBundle(format!("bad `x5c`: {e}")))?;
                    let der = CertificateDer::from(der);
                    let point = certificate_p256_point(&der)?;
                    if point != key.point()? {
                        return Err(Error::InvalidBundle(
                            "`x5c` certificate does not match the key's coordinates".into(),
                        ));
                    }
                    x509_authorities.push(der);
                }
                Some("jwt-svid") => {
                    let Some(kid) = key.kid.clone().filter(|k| !k.is_empty()) else {
                        return Err(Error::InvalidBundle(
                            "a `jwt-svid` key needs a `kid`".into(),
                        ));
                    };
                    jwt_authorities.push(JwtAuthority {
                        key_id: kid,
                        public_key: key.point()?,
                    });
                }
                _ => {}
            }
        }
        Ok(Self {
            trust_domain,
            x509_authorities,
            jwt_authorities,
            sequence: doc.spiffe_sequence.unwrap_or(0),
            refresh_hint: Duration::from_secs(doc.spiffe_refresh_hint.unwrap_or(0)),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

impl Jwk {
    fn point(&self) -> Result<Vec<u8>, Error> {
        if self.kty != "EC" || self.crv.as_deref() != Some("P-256") {
            return Err(Error::InvalidBundle(
                "only EC P-256 keys are supported".into(),
            ));
        }
        let coord = |c: &Option<String>| -> Result<Vec<u8>, Error> {
            let c = c
                .as_deref()
                .ok_or_else(|| Error::InvalidBundle("EC key without coordinates".into()))?;
            let bytes = URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|e| Error::InvalidBundle(format!("bad coordinate: {e}")))?;
            if bytes.len() != 32 {
                return Err(Error::InvalidBundle(
                    "P-256 coordinate is not 32 bytes".into(),
                ));
            }
            Ok(bytes)
        };
        let mut point = vec![0x04];
        point.extend(coord(&self.x)?);
        point.extend(coord(&self.y)?);
        Ok(point)
    }
}

fn ec_jwk(point: &[u8], use_: &str) -> Result<Jwk, Error> {
    let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
        return Err(Error::InvalidBundle(
            "not an uncompressed P-256 point".into(),
        ));
    };
    if point.len() != P256_POINT_LEN || point.first() != Some(&0x04) {
        return Err(Error::InvalidBundle(
            "not an uncompressed P-256 point".into(),
        ));
    }
    Ok(Jwk {
        kty: "EC".into(),
        use_: Some(use_.into()),
        kid: None,
        crv: Some("P-256".into()),
        x: Some(URL_SAFE_NO_PAD.encode(x)),
        y: Some(URL_SAFE_NO_PAD.encode(y)),
        x5c: None,
    })
}

/// The P-256 public point of a certificate's key.
pub(crate) fn certificate_p256_point(cert: &CertificateDer<'_>) -> Result<Vec<u8>, Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| Error::InvalidBundle(format!("bad certificate: {e}")))?;
    let point = parsed.public_key().subject_public_key.data.to_vec();
    if point.len() != P256_POINT_LEN || point.first() != Some(&0x04) {
        return Err(Error::InvalidBundle(
            "authority key is not an uncompressed P-256 point".into(),
        ));
    }
    Ok(point)
}
