//! Warden's SPIFFE identity layer.
//!
//! What it guarantees:
//! - [`CertificateAuthority`]: a CA for one trust domain that mints X.509-SVIDs (one URI SAN,
//!   critical key usage, never a CA, random serials, no subject fields) and ES256 JWT-SVIDs
//!   (`sub`, `aud`, `exp`), at most one hour long, and publishes its [`TrustBundle`] as a SPIFFE
//!   JWKS. Rotation keeps retired keys in the bundle until every SVID they signed has expired.
//! - [`SpiffeId`]: strict parsing per the SPIFFE ID specification.
//! - [`workload`]: the SPIFFE Workload API over a unix socket, callers attested by their peer
//!   credentials into SPIRE's unix selectors and mapped to SPIFFE IDs by [`RegistrationEntry`]s.
//! - [`tls`]: rustls configurations that verify the peer's chain against the bundle and then
//!   authorize its SPIFFE ID.
//! - [`delegation`]: Biscuit tokens that an agent narrows for a sub-agent, each hop a block signed
//!   with the delegator's Ed25519 delegation key, which its X.509-SVID key bound to its SPIFFE ID
//!   by a signed statement; verified with the root key and the trust bundle, bound to the last
//!   hop's holder, depth-limited.
//!
//! What it does not: federation with other trust domains, revocation lists, and attestation
//! stronger than the kernel's view of the calling process (see `docs/SECURITY.md`).
//!
//! Time and randomness are injected ([`Clock`], [`Random`]); key generation and ECDSA nonces use
//! `ring`'s system source.
#![forbid(unsafe_code)]

mod bundle;
mod ca;
mod config;
pub mod delegation;
mod delegation_key;
mod env;
mod error;
mod files;
mod jwt;
mod spiffe_id;
pub mod tls;
pub mod workload;
mod x509;

pub use bundle::{JwtAuthority, TrustBundle};
pub use ca::{CaPolicy, CertificateAuthority, JwtSvid, MAX_SVID_TTL, X509Svid};
pub use config::{
    IdentityConfig, RegistrationEntry, Selector, load_entries_file, save_entries_file,
};
pub use env::{Clock, FixedClock, OsRandom, Random, SystemClock};
pub use error::Error;
pub use jwt::{JwtSvidClaims, validate_jwt_svid};
pub use spiffe_id::{SpiffeId, TrustDomain};
pub use x509::{SvidUsage, leaf_spiffe_id, verify_x509_svid};
