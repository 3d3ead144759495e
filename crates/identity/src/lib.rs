//! Warden's SPIFFE identity layer.
#![forbid(unsafe_code)]
