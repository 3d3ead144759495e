//! Warden's sandbox: tool processes run with a minimal filesystem, no network but an egress
//! proxy, and hard limits.
