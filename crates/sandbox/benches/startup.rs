//! Start-up benchmark (placeholder).
fn main() {}
