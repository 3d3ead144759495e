//! The Warden kernel decides every tool call an agent makes.
//!
//! [`Kernel::enforce`] takes a [`CallRequest`] (agent, delegation chain, session, tool, raw
//! argument bytes, per-argument provenance [`Label`]s, optional labeled intent) and returns an
//! [`Enforcement`]: a [`Decision`] — `Allow` with a signed [`CallCertificate`], `NeedsApproval`
//! with a [`PendingCall`], or `Deny` with a [`Denial`] naming the rule and the reason — and the
//! [`DecisionRecord`] to log before acting on it.
//!
//! # What it guarantees
//!
//! - **Deny by default, fail closed.** A call is allowed only if a Cedar `permit` applies and no
//!   `forbid` does; an unknown tool, arguments that do not parse, a context that does not fit the
//!   schema, any policy evaluation error (even in a `forbid`), an exhausted limit or an unusable
//!   lock is a denial with a record.
//! - **Strict arguments before policy.** Arguments are I-JSON only (no duplicate keys, no
//!   integers beyond ±(2^53−1), no lone surrogates), must validate against the pinned tool
//!   schema, and may hold only fields the schema declares. The args hash is SHA-256 over their
//!   RFC 8785 (JCS) bytes, which are exactly what should be forwarded.
//! - **Validated policy.** The manifest's allowlist compiles to Cedar; it and the raw `.cedar`
//!   files are validated in strict mode against a schema generated from the tool specs, and a
//!   policy that does not validate is refused at load with the validator's message.
//! - **Provenance.** Labels join by union of sources and lowest integrity; taint never washes
//!   off. Every argument's label and the call-wide taint reach the policy and the certificate.
//! - **Bounded cost.** The policy set is sliced by agent before evaluation, so cost does not grow
//!   with the fleet.
//! - **Certificates** are JCS objects signed with Ed25519 over `warden/cert/v1\n` + canonical
//!   bytes, short-lived, bound to one audience, one tool definition hash and one args hash;
//!   [`CertificateVerifier`] checks all of these and single use.
//!
//! # What it does not do
//!
//! - It performs no I/O, reads no clock and draws no randomness of its own: the caller passes
//!   `now` and an RNG, reads policy files and keys, and makes records durable.
//! - It does not authenticate agents: the `agent` and `delegation` fields are trusted as given
//!   (the gateway establishes them from SVIDs and delegation tokens).
//! - It trusts the labels it is given. Unlabeled arguments get the request's `default_label`
//!   (`user`, trusted, unless the caller says otherwise): provenance tracking is the gateway's.
//! - Labels are per top-level argument, not per nested value.
//! - Limits live in memory; [`Kernel::rebuild_from`] restores them from the log after a restart.
//!   Held calls do not survive a restart.
//!
//! # Threads
//!
//! [`Kernel`] is `Send + Sync` and cheap to clone (`Arc`s inside). The compiled policy is
//! immutable; one internal mutex guards the limits and held calls, held briefly and never while
//! Cedar evaluates. [`Kernel::with_tools`] builds a new kernel with more tools sharing the same
//! limit state.
#![forbid(unsafe_code)]

mod cert;
mod json;
mod kernel;
mod label;
mod limits;
mod manifest;
mod policy;
mod record;
mod schema;
mod time;
mod tool;

pub use cert::{
    Approval, CERT_SIGNING_CONTEXT, CallCertificate, CertSigningKey, CertVerifyingKey,
    CertificateClaims, CertificateVerifier, CertifiedIntent, CertifiedTool,
};
pub use json::{MAX_SAFE_INTEGER, canonical_bytes, parse_strict, sha256_tag};
pub use kernel::{CallRequest, Decision, Denial, Enforcement, Evaluation, Kernel, PendingCall};
pub use label::{Integrity, Label, Labeled, Source, propagate};
pub use limits::{Rate, parse_duration};
pub use manifest::{AgentConfig, Manifest, ServerConfig};
pub use policy::PolicyFile;
pub use record::{DecisionRecord, RecordType, Verdict};
pub use time::Timestamp;
pub use tool::{Arguments, ToolId, ToolSpec};

/// Everything that can go wrong at the kernel's boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes that are not I-JSON.
    #[error("invalid json at byte {offset}: {reason}")]
    Json {
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// Arguments that do not fit the tool's schema.
    #[error("arguments rejected at `{path}`: {reason}")]
    Arguments {
        /// JSON pointer of the offending value.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A tool input schema the kernel cannot enforce.
    #[error("invalid tool schema at `{path}`: {reason}")]
    ToolSchema {
        /// JSON pointer inside the definition.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A malformed tool definition.
    #[error("invalid tool definition: {0}")]
    ToolDefinition(String),
    /// A malformed `<server>/<tool>` name.
    #[error("invalid tool name `{name}`: {reason}")]
    ToolName {
        /// The name as given.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A malformed provenance source.
    #[error("invalid source `{source_text}`: {reason}")]
    Label {
        /// The source as given.
        source_text: String,
        /// What is wrong.
        reason: String,
    },
    /// A manifest that does not parse or does not make sense.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// A Cedar file that does not parse.
    #[error("policy `{file}` does not parse: {message}")]
    PolicyParse {
        /// The file.
        file: String,
        /// Where and why.
        message: String,
    },
    /// Policies that do not validate against the schema generated from the tool specs.
    #[error("policy does not validate: {0}")]
    PolicyValidation(String),
    /// A time that is not `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    #[error("invalid time `{0}`")]
    Time(String),
    /// A malformed key.
    #[error("invalid key: {0}")]
    Key(String),
    /// A certificate that does not decode.
    #[error("malformed certificate: {0}")]
    CertificateMalformed(String),
    /// A certificate signed by a key the verifier does not trust.
    #[error("certificate signed by unknown key `{0}`")]
    CertificateUnknownKey(String),
    /// A signature that does not verify.
    #[error("certificate signature does not verify")]
    CertificateSignature,
    /// A certificate for another audience.
    #[error("certificate is for audience `{found}`, expected `{expected}`")]
    CertificateAudience {
        /// This verifier's audience.
        expected: String,
        /// The certificate's.
        found: String,
    },
    /// A certificate for another tool of the same server.
    #[error("certificate is for tool `{found}`, not the called `{called}`")]
    CertificateTool {
        /// The tool the server was asked to run.
        called: String,
        /// The tool the certificate names.
        found: String,
    },
    /// A certificate past its expiry.
    #[error("certificate expired at {0}")]
    CertificateExpired(String),
    /// A certificate issued in the future.
    #[error("certificate is not valid before {0}")]
    CertificateNotYetValid(String),
    /// Arguments that differ from the certified ones.
    #[error("arguments do not match the certificate's args hash")]
    CertificateArguments,
    /// A certificate id seen before.
    #[error("certificate `{0}` was already used")]
    CertificateReplayed(String),
    /// An approval that cannot be applied.
    #[error("approval refused: {0}")]
    Approval(String),
    /// A malformed decision record.
    #[error("invalid decision record: {0}")]
    Record(String),
}
