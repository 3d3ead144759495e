//! The one error type of `warden-identity`.

/// Everything that can go wrong in the identity layer. Messages are lowercase, user input in
/// backticks; no message carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string is not a valid SPIFFE ID or trust domain.
    #[error("invalid SPIFFE ID `{input}`: {reason}")]
    InvalidSpiffeId {
        /// The offending input (truncated).
        input: String,
        /// What rule it broke.
        reason: &'static str,
    },
    /// A selector string is malformed.
    #[error(
        "invalid selector `{0}`: expected `unix:uid:N`, `unix:gid:N`, `unix:path:/abs` or `unix:sha256:HEX`"
    )]
    InvalidSelector(String),
    /// The `[identity]` configuration or the entries file is malformed.
    #[error("invalid identity configuration: {0}")]
    Config(String),
    /// Key generation, signing or certificate encoding failed.
    #[error("crypto failure: {0}")]
    Crypto(String),
    /// An X.509-SVID was rejected.
    #[error("invalid X.509-SVID: {0}")]
    InvalidX509Svid(String),
    /// A JWT-SVID was rejected.
    #[error("invalid JWT-SVID: {0}")]
    InvalidJwtSvid(String),
    /// A trust bundle could not be parsed or is inconsistent.
    #[error("invalid trust bundle: {0}")]
    InvalidBundle(String),
    /// A peer's SPIFFE ID is not authorized.
    #[error("SPIFFE ID `{0}` is not authorized")]
    Unauthorized(String),
    /// A delegation token was rejected.
    #[error("delegation refused: {0}")]
    Delegation(String),
    /// The caller of the Workload API could not be attested.
    #[error("attestation failed: {0}")]
    Attestation(String),
    /// The requested lifetime is out of bounds.
    #[error("invalid lifetime: {0}")]
    InvalidTtl(String),
    /// Reading or writing a file failed.
    #[error("i/o error on `{path}`: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Serving the Workload API failed.
    #[error("workload api server failed: {0}")]
    Serve(String),
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
