//! ringwork-sys: everything in Ringwork that talks to the kernel, on `rustix`.
//!
//! Start with [`worker::Server`]: a protocol of your own (a
//! `ringwork_core::protocol::Protocol`: bytes in, answer out) served on io_uring or epoll in
//! a few lines. The repository's `docs/WRITING.md` ("Writing your own server") walks from
//! there down to the ring, and `examples/src/bin/` has the programs it shows (`uppercase`,
//! `http-hello`, `echo`, and `echo-ring`, an echo server driven by hand on the ring).
//!
//! - [`worker`]: the worker loop, once for every stream protocol, on io_uring or epoll
//!   ([`worker::Server`] and [`worker::Serve`] run a whole server).
//! - [`files`]: core's file service (`ringwork_core::filesvc`) performed on the worker loop,
//!   once per backend: what ringwork-files runs, for any server built on the file service.
//! - `cli` (feature `cli`): `--backend` and the io_uring ring flags every server shares, on
//!   clap.
//! - [`backend`]: which backend to run on: io_uring where the kernel lets this process use it,
//!   epoll where it does not, with the reason.
//! - [`Ring`]: io_uring setup, the shared mappings, batched submission, CQE harvesting with
//!   overflow detection, and teardown.
//! - [`activation`]: listeners passed in by systemd (`LISTEN_FDS`), instead of bound.
//! - [`net`], [`signal`], [`epoll`]: listener setup, operator signals through a signalfd,
//!   and the epoll baseline's event loop primitive.
//! - [`accept`]: accepting for both servers, through the ring ([`Acceptor`]: multishot with
//!   its fallbacks) or epoll ([`EpollAcceptor`]), following core's accept policy
//!   (`ringwork_core::accept`: the back-off when accepting fails for lack of descriptors or
//!   memory, the stop at capacity).
//! - `tls` (feature `tls`): a TLS configuration from PEM files, checked at start and
//!   reloadable, for `ringwork_core::tls`.
//! - [`sqe`]: SQE builders, one per opcode Ringwork uses.
//! - [`register`]: fixed buffers, the registered file table, provided buffer rings, probe,
//!   io-wq limits.
//! - [`driver`]: the pieces under the loops: ring setup with its features line, the batched
//!   wait, the stop notice, cancelling everything on a socket.
//! - [`op`]: safe submission: SQEs that name no memory, or memory the ring owns until their
//!   last completion.
//!
//! The queue index protocol and every ownership decision come from `ringwork-core`; this
//! crate does the memory access and the syscalls, and nothing else. All of Ringwork's `unsafe`
//! lives here, each block with a `// SAFETY:` comment naming its invariant.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod accept;
pub mod activation;
pub mod backend;
#[cfg(feature = "cli")]
pub mod cli;
pub mod driver;
pub mod epoll;
pub mod error;
pub mod files;
pub mod metrics;
pub mod mmap;
pub mod net;
pub mod op;
pub mod register;
pub mod ring;
pub mod signal;
pub mod sqe;
#[cfg(feature = "tls")]
pub mod tls;
pub mod worker;

pub use accept::{AcceptMode, AcceptNotice, Acceptor, EpollAcceptor};
pub use error::{kernel_release, Error, Result};
pub use mmap::FileMap;
pub use op::{OpMemory, OpenArgs, SafeSqe, StatxTarget};
pub use register::{
    BufRingHandle, FixedBuffers, IowqWorkers, Probe, ProvideMode, ProvidedBuffers,
    PROVIDE_BUFFERS_USER_DATA,
};
pub use ring::{
    Completions, Cqe, LegacyFeatures, Ring, RingParams, RingStats, SelectedBuf, SqPoll, TaskRun,
    QUIESCE_CANCEL_USER_DATA,
};
pub use sqe::{Sqe, SqeFlags, Target};

/// The `rustix` this crate is built on: its flag and errno types appear in this crate's API,
/// and a user reaches them here instead of adding a dependency of the same version.
pub use rustix;
pub use rustix::io::Errno;
pub use rustix::io_uring::IoringOp;
pub use rustix::net::{RecvFlags, SendFlags};
