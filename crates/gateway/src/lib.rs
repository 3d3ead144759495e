//! Warden's MCP gateway.
//!
//! An MCP proxy in front of real MCP servers. Every `tools/call` an agent sends is labelled with
//! the provenance of its arguments (declared by the client, or inferred from earlier untrusted
//! results of the session), decided by the kernel, made durable in the log, and only then
//! forwarded upstream with its certificate in `_meta` (`dev.warden/certificate`). Results come
//! back labelled (`_meta` `dev.warden/labels`) and their text is indexed for taint inference.
//!
//! What it guarantees:
//! - no call reaches an upstream without an `Allow` made durable first; any failure of the
//!   [`Authority`] refuses the call (fail closed);
//! - a tool whose definition changed since it was pinned is hidden and refused until accepted;
//! - denials are JSON-RPC errors carrying the rule ids and the reason, never "tool not found";
//! - frames pass as raw JSON: unknown fields and `_meta` reach the other side untouched, except
//!   the `dev.warden/*` keys the gateway owns.
//!
//! What it does not: taint inference sees copies, not paraphrases (see `docs/gateway.md`); a
//! server's own behaviour after an allowed call is the sandbox's business.
#![forbid(unsafe_code)]

mod admin;
mod approval;
mod auth;
mod authority;
mod backpressure;
mod config;
mod delegation;
mod error;
mod http;
mod idle_poll;
pub mod jsonrpc;
mod kernel_authority;
mod labels;
mod listen;
mod pins;
pub mod replay;
mod session;
pub mod sse;
mod stdio;
pub mod taint;
mod tls;
mod upstream;

pub use admin::{admin_request, serve_admin};
pub use approval::{Clock, PendingCall, SystemClock, rfc3339};
pub use auth::{BearerError, BearerVerifier};
pub use authority::{
    Approval, Authority, AuthorityError, CallRequest, PendingVerdict, Refusal, Verdict,
};
pub use config::{DelegationSettings, Era, FaceSettings, GatewayConfig, ServerConfig, TlsSettings};
pub use delegation::{DELEGATION_HEADER, META_DELEGATION};
pub use error::Error;
pub use http::HttpFace;
pub use kernel_authority::{
    KernelAuthority, RecordAck, RecordSink, from_kernel_label, rebuild_from_log, to_kernel_label,
};
pub use labels::{Integrity, Label};
pub use pins::{Pin, PinStatus, PinStore, definition_hash};
pub use session::{Gateway, Session};
pub use stdio::serve_stdio;
pub use tls::{MtlsFace, MtlsListener, TlsPeer};

/// The legacy protocol revision the gateway speaks (`initialize`, sessions).
pub const LEGACY_VERSION: &str = "2025-11-25";
/// The modern protocol revision the gateway speaks (stateless, per-request `_meta`).
pub const MODERN_VERSION: &str = "2026-07-28";
/// Legacy revisions an agent may negotiate with `initialize`.
pub const LEGACY_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
/// Every revision the gateway serves, newest first.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"];

/// `_meta` key of the certificate sent upstream.
pub const META_CERTIFICATE: &str = "dev.warden/certificate";
/// `_meta` key of labels (results: the result's label; calls: per-argument declared labels).
pub const META_LABELS: &str = "dev.warden/labels";
/// `_meta` key of the agent's stated intent for a call.
pub const META_INTENT: &str = "dev.warden/intent";
