//! Warden's MCP gateway.
#![forbid(unsafe_code)]
