//! Warden's transparency log: every decision of the kernel as a record in a Merkle tree.
#![forbid(unsafe_code)]
