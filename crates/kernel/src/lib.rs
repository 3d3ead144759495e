//! The Warden kernel decides every tool call an agent makes.
//!
//! It is pure and synchronous: no I/O, no async, no global state; the clock and randomness are
//! injected by the caller.
#![forbid(unsafe_code)]
