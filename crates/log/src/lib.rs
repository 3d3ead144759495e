//! Warden's transparency log: every decision of the kernel as a record in a Merkle tree.
//!
//! What it guarantees:
//! - **Public formats, unchanged.** RFC 9162 hashing and proofs ([`MerkleTree`],
//!   [`verify_inclusion`], [`verify_consistency`]); checkpoints in C2SP `tlog-checkpoint` format
//!   signed as C2SP `signed-note` with Ed25519 ([`Checkpoint`], [`NoteSigner`], [`NoteVerifier`]);
//!   receipts in C2SP `tlog-proof` format ([`Receipt`]); a static C2SP `tlog-tiles` tree under
//!   `DIR/tiles` ([`tiles`]). Tools nobody here wrote can check all of them.
//! - **Acknowledged = durable.** [`LogWriter::append`] returns only after the record, and the
//!   signed checkpoint that covers it, are in a CRC-framed segment file and `fdatasync` returned.
//!   When the log is idle, the appending thread writes its record's frame and `fdatasync`s it
//!   itself (no hand-off to another thread); appends that arrive meanwhile are group-committed by
//!   one writer thread (one frame and one `fdatasync` per batch), in the order they arrived.
//! - **Fail closed.** A write or `fdatasync` error stops the writer for good: every pending and
//!   later append gets [`LogError::WriterStopped`]. Opening a log cuts a half-written tail, recomputes
//!   the root from the records and refuses to start if any stored signature or the published
//!   checkpoint disagrees; a size is never signed with two different roots.
//!
//! What it does not do: it keeps all tree hashes in memory (64 bytes per record), and the tiles,
//! the published `checkpoint` and the id index are derived files written after the
//! acknowledgement (rebuildable with [`rebuild_derived`]); it has no witness cosigning.
//!
//! Async callers: [`LogWriter::submit`] (never blocks) and [`LogWriter::commit_or_queue`] (may
//! commit on the calling thread) return a [`Ticket`] that is a `Future` (woken by the writer
//! thread; no runtime dependency) and can also be waited on with [`Ticket::wait`].
#![forbid(unsafe_code)]

mod checkpoint;
mod export;
mod hash;
mod keys;
mod note;
mod proof;
mod receipt;
mod segment;
mod store;
pub mod tiles;
mod tree;
mod verify;

pub use checkpoint::{Checkpoint, SignedCheckpoint};
pub use export::{ExportFormat, export_line, summary_line};
pub use hash::Hash;
pub use keys::{
    PUBLIC_KEY_FILE, SIGNING_KEY_FILE, load_or_create_signing_key, load_verifier, os_entropy,
};
pub use note::{NoteSignature, NoteSigner, NoteVerifier, SignedNote, key_id};
pub use proof::{verify_consistency, verify_inclusion, verify_inclusion_of_leaf_hash};
pub use receipt::Receipt;
pub use segment::{
    Frame, FrameError, MAX_RECORD_LEN, TornTail, decode_frame, decode_segment_header,
};
pub use store::{Appended, Log, LogOptions, LogWriter, Ticket, read_records};
pub use tree::MerkleTree;
pub use verify::{Snapshot, VerifyReport, rebuild_derived, verify_dir};

use std::io;

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A record is larger than a `tlog-tiles` entry bundle can hold.
    #[error("record of {len} bytes is larger than the {max}-byte limit of a tlog-tiles entry")]
    RecordTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An index at or past the tree size.
    #[error("index {index} is not below the tree size {size}")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A tree size larger than the current one.
    #[error("size {size} is larger than the log's size {current}")]
    SizeOutOfRange {
        /// The size asked for.
        size: u64,
        /// The current size.
        current: u64,
    },
    /// A proof that does not verify.
    #[error("proof does not verify: {0}")]
    ProofInvalid(String),
    /// A note, checkpoint, key or proof that does not parse.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A signature that does not verify, or a missing one.
    #[error("signature check failed: {0}")]
    SignatureInvalid(String),
    /// Damage in the stored log, with where it is.
    #[error("log is damaged: {0}")]
    Corrupt(String),
    /// The stored log disagrees with a signed checkpoint or the key.
    #[error("log does not match its signed state: {0}")]
    Mismatch(String),
    /// The writer stopped after an I/O error; nothing more is accepted.
    #[error("log writer stopped after an error, nothing is accepted: {0}")]
    WriterStopped(String),
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// A filesystem error. The I/O error is part of the message (not a chained `source`), so a
    /// caller printing the whole chain does not repeat it.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        cause: io::Error,
    },
}

impl LogError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            cause: source,
        }
    }
}
