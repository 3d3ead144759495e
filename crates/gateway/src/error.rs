//! The gateway's error type.

/// Everything that can go wrong in the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An upstream server failed.
    #[error("upstream `{server}`: {reason}")]
    Upstream {
        /// Server name.
        server: String,
        /// What happened.
        reason: String,
    },
    /// The pin file could not be read or written.
    #[error("pin file: {0}")]
    Pins(String),
    /// The authority (kernel and log) failed; the call is refused.
    #[error("authority: {0}")]
    Authority(String),
    /// An I/O error on a face.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A malformed frame.
    #[error(transparent)]
    Frame(#[from] crate::jsonrpc::FrameError),
}
