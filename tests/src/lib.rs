//! Shared helpers for the end-to-end tests in `tests/tests/`: locate the binaries that
//! `cargo test --workspace` built, start them on an ephemeral loopback port, read the address
//! they print, and stop them.
