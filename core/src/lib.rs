//! ringwork-core: the pure logic of Ringwork.
//!
//! Everything here is sans-IO: no syscalls, no clock, no file descriptors, no allocation after construction
//! (tables are sized once, up front).
//! The kernel side (`ringwork-sys`) turns the operations described here into SQEs and feeds
//! completions back in. Because nothing here touches the kernel, every module is driven
//! directly by proptest, loom and the fuzzers.
//!
//! To write a server of your own, start with [`protocol`]: a [`protocol::Protocol`] reads the
//! bytes a connection receives and writes its answer; [`protocol::ProtocolConn`] is the
//! connection under it (receive, owned sends, backpressure, half-close, timeouts,
//! cancel-then-close), and `ringwork_sys::worker::Server` serves it on io_uring or epoll. The
//! repository's `docs/WRITING.md` ("Writing your own server") goes from there down to the
//! ring; `examples/src/bin/` has the programs (`uppercase`, `http-hello`, `echo`,
//! `echo-ring`). A `ProtocolConn` allocates its input and output buffers as it needs them
//! (and keeps a sent one for the next answer); the tables elsewhere are sized once.
//!
//! What this crate deliberately does not do: touch the memory behind SQEs, CQEs or buffers.
//! It decides *which* slot, *which* buffer and *which* operation; `ringwork-sys` does the
//! unsafe part.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod accept;
pub mod buf;
pub mod conn;
pub mod errno;
pub mod file;
pub mod filecache;
pub mod filesvc;
pub mod http;
pub mod httpconn;
pub mod metrics;
pub mod protocol;
pub mod ring;
pub mod shutdown;
pub mod slab;
#[cfg(feature = "tls")]
pub mod tls;
pub mod token;

// Every error type is a `core::error::Error`, so callers can use `?` into `Box<dyn Error>`.
impl core::error::Error for buf::BufError {}
impl core::error::Error for buf::IncError {}
impl core::error::Error for buf::ZcError {}
impl core::error::Error for conn::ConnError {}
impl core::error::Error for errno::RawErrno {}
impl core::error::Error for file::FileError {}
impl core::error::Error for http::HttpError {}
impl core::error::Error for http::HeadTooSmall {}
impl core::error::Error for token::TokenError {}
impl core::error::Error for buf::RecvError {}
#[cfg(feature = "tls")]
impl core::error::Error for tls::TlsError {}
