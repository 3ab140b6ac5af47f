//! Safe submission: SQEs that name no user memory, or only memory the ring owns until the
//! operation's last completion.
//!
//! [`crate::Ring::push`] is `unsafe` because an [`Sqe`] is a bag of raw pointers: nothing
//! stops its memory from being freed or reused while the kernel still reads or writes it.
//! A [`SafeSqe`] closes that hole by construction. Each constructor either names no memory
//! at all (nop, accept, cancel, close, shutdown, poll, fsync, splice, tee, receives into
//! provided buffers), or takes the memory by value ([`OpMemory`]): a `Vec<u8>` to receive
//! into or send from,
//! a [`StatxTarget`], an [`OpenArgs`], a timeout's timespec, a fixed-buffer [`Lease`], a
//! reference to a [`FileMap`] sent from. The
//! ring keeps it from [`crate::Ring::push_safe`] until the CQE that ends the operation (the
//! first one without IORING_CQE_F_MORE: for SEND_ZC, its notification), then hands it back
//! through [`crate::Ring::take_memory`]. Sends from provided or fixed buffers name memory
//! the ring itself owns (see [`crate::Ring::send_provided`] and [`crate::Ring::send_fixed`]).
//!
//! How the memory finds its CQE: the kernel sees a ring-internal `user_data` for such an
//! operation (bit 63 set, an index into the ring's table of operation memory and a
//! generation), and the ring puts the caller's `user_data` back into the [`crate::Cqe`]
//! before anyone sees it. So a cancel, or any other operation with the same `user_data`,
//! can never complete "for" the memory early; `user_data` with bit 63 set is reserved, and
//! two operations with memory may not share one `user_data` while both are in flight
//! ([`crate::Error::UserDataInUse`]). [`SafeSqe::cancel`] of such a `user_data` is
//! translated to the internal one when pushed.
//!
//! ```
//! use std::io::Write;
//! use std::os::fd::AsRawFd;
//! use ringwork_core::token::UserData;
//! use ringwork_sys::{RingParams, SafeSqe, Target};
//!
//! let (mut peer, sock) = std::os::unix::net::UnixStream::pair()?;
//! let mut ring = RingParams::new(8).build()?;
//! // The buffer goes to the ring with the recv ...
//! let recv = SafeSqe::recv(Target::Fd(sock.as_raw_fd()), vec![0; 64], 64);
//! ring.push_safe(recv.user_data(UserData(7)))?;
//! peer.write_all(b"ping")?;
//! ring.submit_and_wait(1)?;
//! let cqe = ring.completions().next().expect("the recv completed");
//! assert_eq!(cqe.user_data(), UserData(7)); // the caller's user_data, not the ring's
//! // ... and comes back with its completion.
//! let buf = ring.take_bytes(UserData(7)).expect("returned with the CQE");
//! assert_eq!(&buf[..cqe.result()? as usize], b"ping");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What this module does not do: decide anything. Which operations to submit and when a
//! buffer may be reused are core's decisions; this only makes the submission sound.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use ringwork_core::buf::{BufGroup, Lease};
pub use ringwork_core::protocol::OutBytes;
use ringwork_core::token::UserData;
use rustix::event::PollFlags;
use rustix::fd::{IntoRawFd, OwnedFd, RawFd};
use rustix::fs::{AtFlags, Statx, StatxFlags};
use rustix::io_uring::{open_how, IoringTimeoutFlags};
use rustix::net::{RecvFlags, SendFlags, SocketFlags};
use rustix::pipe::SpliceFlags;

use crate::mmap::FileMap;
use crate::sqe::{KernelTimespec, Sqe, SqeFlags, Target};

/// Bit 63 of `user_data`: the SQE's memory is in the ring's table (see the module docs).
pub(crate) const OWNED_TAG: u64 = 1 << 63;

/// Memory an operation reads or writes, owned by the ring while the operation is in flight.
#[derive(Debug)]
pub enum OpMemory {
    /// A buffer received or read into, or sent or written from.
    Bytes(Vec<u8>),
    /// A statx result and the path it was asked for.
    Statx(Box<StatxTarget>),
    /// An openat2's path and `open_how`.
    Open(Box<OpenArgs>),
    /// A timeout's timespec.
    Timespec(Box<KernelTimespec>),
    /// A registered (fixed) buffer read into; its memory is the ring's, the lease says whose
    /// turn it is. It comes back with the read's completion.
    Fixed(Lease),
    /// A file mapping sent from: this reference keeps it mapped until the send has ended.
    Mapped(Arc<FileMap>),
    /// Bytes sent from: owned, `&'static` or shared ([`SafeSqe::send_bytes`]). Their
    /// memory does not move with the value (a `Vec`'s or an `Arc`'s heap, or static data).
    Out(OutBytes),
    /// A message of two byte slices sent with one IORING_OP_SENDMSG ([`SafeSqe::sendmsg2`]):
    /// its `msghdr`, `iovec`s and bytes.
    Msg(Box<Msg2>),
    /// An IORING_OP_FIXED_FD_INSTALL's result: the plain descriptor it installed, adopted
    /// by the ring when the CQE comes (`None` before, or when the install failed), so that
    /// it is closed even if nobody takes it.
    Installed(Option<OwnedFd>),
}

/// What an IORING_OP_SENDMSG of two byte slices names: the `msghdr`, the two `iovec`s it
/// points to, and the bytes they point to. Boxed, so that the kernel's pointers into it stay
/// put while the send is in flight (the kernel reads the header at submission and the bytes
/// until the completion).
pub struct Msg2 {
    hdr: libc::msghdr,
    iov: [libc::iovec; 2],
    parts: [OutBytes; 2],
}

// SAFETY: the raw pointers in `hdr` and `iov` point into this value's own `iov` and into
// `parts`' heap or static bytes, which are Send; nothing else is reached through them.
unsafe impl Send for Msg2 {}

impl core::fmt::Debug for Msg2 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Msg2")
            .field("lens", &[self.iov[0].iov_len, self.iov[1].iov_len])
            .finish_non_exhaustive()
    }
}

impl Msg2 {
    /// The two byte slices, for the caller to keep or drop.
    pub fn into_parts(self) -> [OutBytes; 2] {
        self.parts
    }
}

/// The target of an IORING_OP_STATX: the NUL-terminated path and the `struct statx` the
/// kernel fills. Reusable: [`SafeSqe::statx`] copies a new path in.
pub struct StatxTarget {
    path: Vec<u8>,
    statx: Statx,
}

impl core::fmt::Debug for StatxTarget {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StatxTarget")
            .field("path", &String::from_utf8_lossy(&self.path))
            .finish_non_exhaustive()
    }
}

impl StatxTarget {
    /// An empty target (path empty, statx zeroed).
    pub fn new() -> Box<Self> {
        Box::new(Self {
            path: Vec::new(),
            // SAFETY: `struct statx` is integers and padding only; all-zero is a valid value
            // (what the kernel's own memset before filling it produces).
            statx: unsafe { core::mem::zeroed() },
        })
    }

    /// What the kernel wrote (meaningful after a successful completion).
    pub fn statx(&self) -> &Statx {
        &self.statx
    }
}

/// The arguments of an IORING_OP_OPENAT2 the kernel reads: path and `struct open_how`.
/// Reusable: [`SafeSqe::openat2`] copies new ones in.
#[derive(Default)]
pub struct OpenArgs {
    path: Vec<u8>,
    how: open_how,
    /// The open went into a registered-file slot (its result is not a descriptor).
    fixed_slot: bool,
    /// The descriptor a successful open without a file slot returned, adopted by the ring.
    opened: Option<OwnedFd>,
}

impl core::fmt::Debug for OpenArgs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpenArgs")
            .field("path", &String::from_utf8_lossy(&self.path))
            .finish_non_exhaustive()
    }
}

impl OpenArgs {
    /// Empty arguments.
    pub fn new() -> Box<Self> {
        Box::default()
    }

    /// The descriptor the open returned (when it succeeded into no file slot), once.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.opened.take()
    }
}

/// Copies `path` into `buf` with a NUL terminator; refuses interior NULs (the kernel would
/// silently stop at them and open another file).
fn set_path(buf: &mut Vec<u8>, path: &[u8]) -> crate::Result<()> {
    let path = path.strip_suffix(&[0]).unwrap_or(path);
    if path.contains(&0) {
        return Err(crate::Error::InvalidConfig("a path with a NUL byte inside"));
    }
    buf.clear();
    buf.extend_from_slice(path);
    buf.push(0);
    Ok(())
}

/// One SQE that is safe to push: it names no user memory, or carries the memory it names.
/// Built by the constructors below (and by [`crate::Ring`]'s buffer methods); pushed with
/// [`crate::Ring::push_safe`] or [`crate::Ring::push_safe_chain`].
#[derive(Debug)]
#[must_use = "an SQE does nothing until pushed"]
pub struct SafeSqe {
    pub(crate) sqe: Sqe,
    pub(crate) mem: Option<OpMemory>,
    /// A cancel by `user_data`: the target may need translating to an internal one.
    pub(crate) cancel_target: Option<UserData>,
}

impl SafeSqe {
    /// An SQE with no user memory. Crate-internal: only builders known to name none use it.
    pub(crate) fn bare(sqe: Sqe) -> Self {
        Self {
            sqe,
            mem: None,
            cancel_target: None,
        }
    }

    fn with(sqe: Sqe, mem: OpMemory) -> Self {
        Self {
            sqe,
            mem: Some(mem),
            cancel_target: None,
        }
    }

    /// Sets the `user_data` that comes back in the CQE.
    pub fn user_data(mut self, ud: UserData) -> Self {
        self.sqe = self.sqe.user_data(ud);
        self
    }

    /// Adds IOSQE_* flags (IO_LINK, IO_DRAIN, ASYNC, CQE_SKIP_SUCCESS, ...). None of them
    /// makes the kernel touch other memory. (IOSQE_FIXED_FILE and IOSQE_BUFFER_SELECT come
    /// with the constructors that need them.)
    pub fn flags(mut self, flags: SqeFlags) -> Self {
        self.sqe = self
            .sqe
            .flags(flags - SqeFlags::FIXED_FILE - SqeFlags::BUFFER_SELECT);
        self
    }

    /// Sets `MSG_*` flags on a send.
    pub fn send_flags(mut self, flags: SendFlags) -> Self {
        self.sqe = self.sqe.send_flags(flags);
        self
    }

    /// Sets `MSG_*` flags on a recv.
    pub fn recv_flags(mut self, flags: RecvFlags) -> Self {
        self.sqe = self.sqe.recv_flags(flags);
        self
    }

    /// The SQE as it stands (for inspection; pushing it raw needs [`crate::Ring::push`]).
    pub fn sqe(&self) -> &Sqe {
        &self.sqe
    }

    /// IORING_OP_NOP.
    pub fn nop() -> Self {
        Self::bare(Sqe::nop())
    }

    /// IORING_OP_ACCEPT without the peer's address; see [`Sqe::accept`].
    pub fn accept(target: Target, flags: SocketFlags, multishot: bool, direct: bool) -> Self {
        Self::bare(Sqe::accept(target, flags, multishot, direct))
    }

    /// IORING_OP_ASYNC_CANCEL of the request with `user_data` `ud` (Linux 5.5).
    pub fn cancel(ud: UserData) -> Self {
        Self {
            cancel_target: Some(ud),
            ..Self::bare(Sqe::cancel(ud))
        }
    }

    /// IORING_OP_ASYNC_CANCEL of every request on `target` (Linux 5.19); see
    /// [`Sqe::cancel_fd`].
    pub fn cancel_fd(target: Target) -> Self {
        Self::bare(Sqe::cancel_fd(target))
    }

    /// IORING_OP_CLOSE of a descriptor the caller owns: the ring closes it, so nothing in
    /// user space can use the number afterwards.
    pub fn close(fd: OwnedFd) -> Self {
        Self::bare(Sqe::close(Target::Fd(fd.into_raw_fd())))
    }

    /// IORING_OP_CLOSE of registered-file slot `index` (Linux 5.15).
    pub fn close_fixed(index: u32) -> Self {
        Self::bare(Sqe::close(Target::Fixed(index)))
    }

    /// IORING_OP_FIXED_FD_INSTALL (Linux 6.8) of registered-file slot `index`: the file in
    /// the slot gets a plain descriptor as well (close-on-exec), for what the ring cannot do
    /// with a slot (mmap, fstat). The descriptor comes back as [`OpMemory::Installed`] from
    /// [`crate::Ring::take_memory`]; the slot stays as it was.
    pub fn fixed_fd_install(index: u32) -> Self {
        Self::with(Sqe::fixed_fd_install(index), OpMemory::Installed(None))
    }

    /// IORING_OP_SHUTDOWN (Linux 5.11); see [`Sqe::shutdown`].
    pub fn shutdown(target: Target, how: u32) -> Self {
        Self::bare(Sqe::shutdown(target, how))
    }

    /// IORING_OP_FSYNC; see [`Sqe::fsync`].
    pub fn fsync(target: Target, datasync: bool) -> Self {
        Self::bare(Sqe::fsync(target, datasync))
    }

    /// IORING_OP_POLL_ADD (Linux 5.1) for `events` on `target`: completes once one is ready,
    /// with the ready mask in `res`.
    pub fn poll_add(target: Target, events: PollFlags) -> Self {
        Self::bare(Sqe::poll_add(target, events))
    }

    /// IORING_OP_RECV into a buffer the kernel picks from provided-buffer `group`; see
    /// [`Sqe::recv_select`]. The buffers belong to the ring.
    pub fn recv_select(target: Target, group: BufGroup, multishot: bool) -> Self {
        Self::bare(Sqe::recv_select(target, group, multishot))
    }

    /// Caps a buffer-select recv at `len` bytes; see [`Sqe::select_len`].
    pub fn select_len(mut self, len: u32) -> Self {
        debug_assert!(self.mem.is_none());
        self.sqe = self.sqe.select_len(len);
        self
    }

    /// Makes a buffer-select recv a bundle; see [`Sqe::recv_bundle`].
    pub fn recv_bundle(mut self) -> Self {
        debug_assert!(self.mem.is_none());
        self.sqe = self.sqe.recv_bundle();
        self
    }

    /// IORING_OP_RECV of up to `len` bytes (at most `buf.len()`) into `buf`; `buf` comes back
    /// with the completion, the first `res` bytes received.
    pub fn recv(target: Target, mut buf: Vec<u8>, len: usize) -> Self {
        let len = len.min(buf.len()) as u32;
        let sqe = Sqe::recv(target, buf.as_mut_ptr(), len);
        Self::with(sqe, OpMemory::Bytes(buf))
    }

    /// IORING_OP_SEND of `buf[range]`; `buf` comes back with the completion.
    ///
    /// # Panics
    /// When `range` is out of `buf`'s bounds.
    pub fn send(target: Target, buf: Vec<u8>, range: core::ops::Range<usize>) -> Self {
        let bytes = &buf[range];
        let sqe = Sqe::send(target, bytes.as_ptr(), len_u32(bytes.len()));
        Self::with(sqe, OpMemory::Bytes(buf))
    }

    /// IORING_OP_SEND of `data[offset..]`: owned bytes, `&'static` bytes or shared
    /// `Arc<[u8]>` bytes (anything `Into<OutBytes>`); the ring holds them until the
    /// completion, and [`crate::Ring::take_memory`] hands them back ([`OpMemory::Out`]).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use ringwork_sys::{op::SafeSqe, sqe::Target};
    ///
    /// let sock = Target::Fd(3);
    /// let page: Arc<[u8]> = Arc::from(&b"shared by every connection"[..]);
    /// let fixed = SafeSqe::send_bytes(sock, b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), 0);
    /// let shared = SafeSqe::send_bytes(sock, Arc::clone(&page), 0);
    /// # let _ = (fixed, shared);
    /// ```
    ///
    /// # Panics
    /// When `offset` is past the end of `data`.
    pub fn send_bytes(target: Target, data: impl Into<OutBytes>, offset: usize) -> Self {
        let data = data.into();
        let bytes = &data.as_slice()[offset..];
        let sqe = Sqe::send(target, bytes.as_ptr(), len_u32(bytes.len()));
        Self::with(sqe, OpMemory::Out(data))
    }

    /// IORING_OP_SEND of `map[range]`: the bytes go from the file's mapping (its page cache)
    /// into the socket in one copy. The operation holds a clone of `map` until its last
    /// completion; [`crate::Ring::take_memory`] hands it back ([`OpMemory::Mapped`]) to drop.
    ///
    /// # Panics
    /// When `range` is out of the mapping's bounds.
    pub fn send_mapped(target: Target, map: &Arc<FileMap>, range: core::ops::Range<usize>) -> Self {
        let ptr = map.range_ptr(&range);
        let sqe = Sqe::send(target, ptr, len_u32(range.len()));
        Self::with(sqe, OpMemory::Mapped(Arc::clone(map)))
    }

    /// IORING_OP_SENDMSG (Linux 5.3) of `a.0[a.1]` then `b.0[b.1]` in one send (two
    /// iovecs, no copy into one buffer first); both come back with the completion
    /// ([`OpMemory::Msg`]).
    ///
    /// # Panics
    /// When a range is out of its bytes' bounds.
    pub fn sendmsg2(
        target: Target,
        a: (OutBytes, core::ops::Range<usize>),
        b: (OutBytes, core::ops::Range<usize>),
    ) -> Self {
        // SAFETY: `msghdr` is integers and pointers; all-zero (null pointers, no control
        // data, no name) is a valid value, as `{0}` in C.
        let hdr: libc::msghdr = unsafe { core::mem::zeroed() };
        let iov = |bytes: &OutBytes, range: core::ops::Range<usize>| {
            let part = &bytes.as_slice()[range];
            libc::iovec {
                iov_base: part.as_ptr().cast_mut().cast(),
                iov_len: part.len(),
            }
        };
        let mut msg = Box::new(Msg2 {
            hdr,
            iov: [iov(&a.0, a.1), iov(&b.0, b.1)],
            parts: [a.0, b.0],
        });
        // The iovecs and the bytes live in the box and in `parts`' heap (or static) memory:
        // moving the box moves neither.
        msg.hdr.msg_iov = msg.iov.as_mut_ptr();
        msg.hdr.msg_iovlen = 2;
        let sqe = Sqe::sendmsg(target, &msg.hdr);
        Self::with(sqe, OpMemory::Msg(msg))
    }

    /// IORING_OP_SPLICE (Linux 5.7) of up to `len` bytes from `fd_in` to `fd_out`; see
    /// [`Sqe::splice`] for the offsets and the fixed ends. It names descriptors only, no user
    /// memory.
    pub fn splice(
        fd_in: Target,
        off_in: Option<u64>,
        fd_out: Target,
        off_out: Option<u64>,
        len: u32,
        flags: SpliceFlags,
    ) -> Self {
        Self::bare(Sqe::splice(fd_in, off_in, fd_out, off_out, len, flags))
    }

    /// IORING_OP_TEE (Linux 5.8) of up to `len` bytes from pipe `fd_in` to pipe `fd_out`;
    /// see [`Sqe::tee`]. No user memory.
    pub fn tee(fd_in: Target, fd_out: Target, len: u32, flags: SpliceFlags) -> Self {
        Self::bare(Sqe::tee(fd_in, fd_out, len, flags))
    }

    /// IORING_OP_READ of up to `len` bytes (at most `buf.len()`) at file `offset` into `buf`.
    pub fn read(target: Target, mut buf: Vec<u8>, len: usize, offset: u64) -> Self {
        let len = len.min(buf.len()) as u32;
        let sqe = Sqe::read(target, buf.as_mut_ptr(), len, offset);
        Self::with(sqe, OpMemory::Bytes(buf))
    }

    /// IORING_OP_WRITE of `buf[range]` at file `offset`.
    ///
    /// # Panics
    /// When `range` is out of `buf`'s bounds.
    pub fn write(
        target: Target,
        buf: Vec<u8>,
        range: core::ops::Range<usize>,
        offset: u64,
    ) -> Self {
        let bytes = &buf[range];
        let sqe = Sqe::write(target, bytes.as_ptr(), len_u32(bytes.len()), offset);
        Self::with(sqe, OpMemory::Bytes(buf))
    }

    /// IORING_OP_STATX of `path` relative to `dir` into `target` (which comes back with the
    /// completion; read it with [`StatxTarget::statx`]).
    pub fn statx(
        dir: RawFd,
        path: &[u8],
        flags: AtFlags,
        mask: StatxFlags,
        mut target: Box<StatxTarget>,
    ) -> crate::Result<Self> {
        set_path(&mut target.path, path)?;
        let stx: *mut Statx = &mut target.statx;
        let sqe = Sqe::statx(dir, target.path.as_ptr(), flags, mask, stx);
        Ok(Self::with(sqe, OpMemory::Statx(target)))
    }

    /// IORING_OP_OPENAT2 of `path` relative to `dir` with `how`, into registered-file slot
    /// `fixed_slot` when given; `args` holds both while the kernel may read them and comes
    /// back with the completion.
    pub fn openat2(
        dir: RawFd,
        path: &[u8],
        how: open_how,
        fixed_slot: Option<u32>,
        mut args: Box<OpenArgs>,
    ) -> crate::Result<Self> {
        set_path(&mut args.path, path)?;
        args.how = how;
        args.fixed_slot = fixed_slot.is_some();
        args.opened = None;
        let sqe = Sqe::openat2(dir, args.path.as_ptr(), &args.how, fixed_slot);
        Ok(Self::with(sqe, OpMemory::Open(args)))
    }

    /// IORING_OP_TIMEOUT after `after`, or after `count` other completions (0: time only).
    pub fn timeout(after: core::time::Duration, count: u32, flags: IoringTimeoutFlags) -> Self {
        let ts = Box::new(KernelTimespec::from_duration(after));
        let sqe = Sqe::timeout(&*ts, count, flags);
        Self::with(sqe, OpMemory::Timespec(ts))
    }

    /// IORING_OP_LINK_TIMEOUT (Linux 5.5): cancels the previous SQE of its chain if it has not
    /// completed within `after`.
    pub fn link_timeout(after: core::time::Duration, flags: IoringTimeoutFlags) -> Self {
        let ts = Box::new(KernelTimespec::from_duration(after));
        let sqe = Sqe::link_timeout(&*ts, flags);
        Self::with(sqe, OpMemory::Timespec(ts))
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("an SQE moves at most 4 GiB")
}

/// The tables are keyed by `user_data`, which the caller chose (no adversary picks it) and
/// which is looked up several times per operation: a multiply-rotate hash (FxHash's) instead
/// of the default SipHash, whose per-lookup cost showed in the file server's CPU per request.
type UserDataHash = BuildHasherDefault<UserDataHasher>;

#[derive(Default)]
struct UserDataHasher(u64);

impl Hasher for UserDataHasher {
    fn finish(&self) -> u64 {
        // A product's low bits depend only on the factors' low bits: fold the high half in,
        // so keys that differ only in their top bits (the kind) land in different buckets.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// One operation's memory while it is in flight.
struct Entry {
    user_data: UserData,
    generation: u32,
    mem: OpMemory,
}

/// The ring's table of operation memory: what in-flight SQEs name, by internal `user_data`.
#[derive(Default)]
pub(crate) struct OwnedOps {
    entries: Vec<Option<Entry>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    /// Caller's `user_data` → index, for the uniqueness check and cancel translation.
    by_user_data: HashMap<u64, u32, UserDataHash>,
    /// Memory whose operation has ended, until the caller takes it; at most one per
    /// `user_data` (a newer one replaces an older one nobody took).
    done: HashMap<u64, OpMemory, UserDataHash>,
}

impl OwnedOps {
    /// Operations with memory still in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.by_user_data.len()
    }

    /// Files `mem` for an SQE with the caller's `ud`; returns the internal `user_data` to put
    /// in the SQE.
    pub(crate) fn insert(&mut self, ud: UserData, mem: OpMemory) -> crate::Result<UserData> {
        if self.by_user_data.contains_key(&ud.0) {
            return Err(crate::Error::UserDataInUse(ud));
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.entries.len())
                    .ok()
                    .filter(|&i| i < u32::MAX - 3)
                    .ok_or(crate::Error::InvalidConfig("too many operations in flight"))?;
                self.entries.push(None);
                self.generations.push(0);
                i
            }
        };
        let generation = self.generations[index as usize];
        self.entries[index as usize] = Some(Entry {
            user_data: ud,
            generation,
            mem,
        });
        self.by_user_data.insert(ud.0, index);
        Ok(internal(index, generation))
    }

    /// Takes back what [`OwnedOps::insert`] filed when the SQE could not be pushed after all.
    pub(crate) fn unwind(&mut self, internal_ud: UserData) -> Option<OpMemory> {
        let index = self.lookup(internal_ud)?;
        self.release(index).map(|(_, mem)| mem)
    }

    /// The internal `user_data` of the in-flight operation with memory that the caller knows
    /// as `ud`, if any (for cancels).
    pub(crate) fn internal_for(&self, ud: UserData) -> Option<UserData> {
        let &index = self.by_user_data.get(&ud.0)?;
        Some(internal(index, self.generations[index as usize]))
    }

    fn lookup(&self, internal_ud: UserData) -> Option<u32> {
        let index = (internal_ud.0 & 0xffff_ffff) as u32;
        let generation = ((internal_ud.0 & !OWNED_TAG) >> 32) as u32;
        let entry = self.entries.get(index as usize)?.as_ref()?;
        (entry.generation == generation).then_some(index)
    }

    fn release(&mut self, index: u32) -> Option<(UserData, OpMemory)> {
        let entry = self.entries[index as usize].take()?;
        self.by_user_data.remove(&entry.user_data.0);
        let g = &mut self.generations[index as usize];
        *g = (*g + 1) & 0x7fff_ffff;
        self.free.push(index);
        Some((entry.user_data, entry.mem))
    }

    /// A CQE with an internal `user_data`: the caller's `user_data`, and when the operation
    /// has ended (`!more`), its memory moves to the done table.
    pub(crate) fn on_cqe(
        &mut self,
        internal_ud: UserData,
        res: i32,
        more: bool,
    ) -> Option<UserData> {
        let index = self.lookup(internal_ud)?;
        if more {
            return self.entries[index as usize].as_ref().map(|e| e.user_data);
        }
        let (ud, mut mem) = self.release(index)?;
        if let OpMemory::Open(args) = &mut mem {
            if !args.fixed_slot && res >= 0 {
                // SAFETY: the CQE that ends an IORING_OP_OPENAT2 without a file slot carries,
                // when it succeeded, a new descriptor that nothing else owns; this is the one
                // place that sees it (the caller gets it from here, once).
                args.opened =
                    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(res) });
            }
        }
        if let OpMemory::Installed(fd @ None) = &mut mem {
            if res >= 0 {
                // SAFETY: a successful IORING_OP_FIXED_FD_INSTALL's result is the new
                // descriptor it installed in this process' table, owned by nothing else; its
                // CQE ends the operation and is seen here once.
                *fd = Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(res) });
            }
        }
        self.done.insert(ud.0, mem);
        Some(ud)
    }

    pub(crate) fn take_done(&mut self, ud: UserData) -> Option<OpMemory> {
        self.done.remove(&ud.0)
    }

    /// Drops memory whose operations have ended; memory still in flight is leaked, because
    /// the kernel may still read or write it.
    pub(crate) fn leak_in_flight(&mut self) {
        for entry in self.entries.drain(..).flatten() {
            core::mem::forget(entry.mem);
        }
        self.by_user_data.clear();
    }
}

fn internal(index: u32, generation: u32) -> UserData {
    UserData(OWNED_TAG | (u64::from(generation) << 32) | u64::from(index))
}

/// Whether a CQE's `user_data` is one of the table's, not one of the ring's own constants
/// (`u64::MAX` and the two below it: the SEND_ZC usage probe, PROVIDE_BUFFERS, quiesce's
/// cancels), which table indices stay clear of.
pub(crate) fn is_internal(ud: UserData) -> bool {
    ud.0 & OWNED_TAG != 0 && ud.0 < u64::MAX - 2
}

impl crate::Ring {
    /// Queues `op`, submitting what is queued first when the SQ is full. Its memory (if any)
    /// is the ring's until the operation's last CQE; take it back then with
    /// [`crate::Ring::take_memory`].
    ///
    /// Refused: `user_data` with bit 63 set (the ring's own), and a second operation with
    /// memory under a `user_data` whose first is still in flight
    /// ([`crate::Error::UserDataInUse`]). On any error the operation was not queued and its
    /// memory is dropped.
    pub fn push_safe(&mut self, op: SafeSqe) -> crate::Result<()> {
        let (sqe, internal) = self.prepare(op)?;
        // SAFETY: `prepare` checked the SQE names no memory but what the ring owns: its own
        // buffers (alive as long as the ring, and leaked rather than freed while the kernel may
        // use them), or memory now filed under the SQE's internal user_data until its last
        // CQE (and leaked if the ring drops first).
        let pushed = unsafe { self.push_or_submit_impl(&sqe) };
        if pushed.is_err() {
            if let Some(ud) = internal {
                self.owned_mut().unwind(ud);
            }
        }
        pushed
    }

    /// Queues `ops` as one IOSQE_IO_LINK chain (IOSQE_IO_HARDLINK with `hard`), all or none,
    /// submitting what is queued first when the SQ lacks room for all of it; see
    /// [`crate::Ring::push_chain`] for the semantics.
    pub fn push_safe_chain(&mut self, ops: Vec<SafeSqe>, hard: bool) -> crate::Result<()> {
        let mut sqes = Vec::with_capacity(ops.len());
        let mut internals = Vec::new();
        let mut failed = None;
        for op in ops {
            match self.prepare(op) {
                Ok((sqe, internal)) => {
                    sqes.push(sqe);
                    internals.extend(internal);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let pushed = match failed {
            Some(e) => Err(e),
            // SAFETY: as in `push_safe`, for every SQE of the chain.
            None => unsafe { self.push_chain_or_submit_impl(&sqes, hard) },
        };
        if pushed.is_err() {
            for ud in internals {
                self.owned_mut().unwind(ud);
            }
        }
        pushed
    }

    /// Checks `op`'s user_data, files its memory, translates a cancel's target; returns the
    /// SQE to push and its internal user_data when it carries memory.
    fn prepare(&mut self, op: SafeSqe) -> crate::Result<(Sqe, Option<UserData>)> {
        let ud = UserData(op.sqe.raw().user_data.u64_());
        if is_internal(ud) {
            return Err(crate::Error::InvalidConfig(
                "user_data with bit 63 set is reserved for the ring",
            ));
        }
        let mut sqe = op.sqe;
        if let Some(target) = op.cancel_target {
            if let Some(internal) = self.owned_mut().internal_for(target) {
                sqe = sqe.cancel_target(internal);
            }
        }
        match op.mem {
            None => Ok((sqe, None)),
            Some(mem) => {
                let internal = self.owned_mut().insert(ud, mem)?;
                Ok((sqe.user_data(internal), Some(internal)))
            }
        }
    }

    /// The memory of the ended operation whose `user_data` is `ud`, once its last CQE has
    /// been harvested. Memory nobody takes stays until the next operation with the same
    /// `user_data` ends (which replaces it) or the ring drops.
    pub fn take_memory(&mut self, ud: UserData) -> Option<OpMemory> {
        self.owned_mut().take_done(ud)
    }

    /// [`crate::Ring::take_memory`] of a byte buffer.
    pub fn take_bytes(&mut self, ud: UserData) -> Option<Vec<u8>> {
        match self.take_memory(ud)? {
            OpMemory::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// [`crate::Ring::take_memory`] of a statx target.
    pub fn take_statx(&mut self, ud: UserData) -> Option<Box<StatxTarget>> {
        match self.take_memory(ud)? {
            OpMemory::Statx(t) => Some(t),
            _ => None,
        }
    }

    /// [`crate::Ring::take_memory`] of openat2 arguments.
    pub fn take_open_args(&mut self, ud: UserData) -> Option<Box<OpenArgs>> {
        match self.take_memory(ud)? {
            OpMemory::Open(a) => Some(a),
            _ => None,
        }
    }

    /// [`crate::Ring::take_memory`] of a fixed-buffer lease (after a read into it).
    pub fn take_lease(&mut self, ud: UserData) -> Option<Lease> {
        match self.take_memory(ud)? {
            OpMemory::Fixed(l) => Some(l),
            _ => None,
        }
    }

    /// Operations with memory filed in the ring and not yet ended.
    pub fn owned_in_flight(&self) -> usize {
        self.owned_ref().in_flight()
    }

    /// IORING_OP_SEND of `len` bytes at `offset` in provided buffer `id` of `group`, which
    /// the ring owns. Bounds-checked, so it is sound whatever the buffer's state; that the
    /// bytes are the ones meant (the buffer is held, not back in the kernel's ring) is the
    /// caller's bookkeeping ([`ringwork_core::buf::ProvidedRing`], `IncTracker`).
    pub fn send_provided(
        &mut self,
        target: Target,
        group: BufGroup,
        id: ringwork_core::buf::BufId,
        offset: u32,
        len: u32,
    ) -> crate::Result<SafeSqe> {
        let ptr = self.provided_range(group, id, offset, len)?;
        Ok(SafeSqe::bare(Sqe::send(target, ptr, len)))
    }

    /// [`crate::Ring::send_provided`] with IORING_OP_SEND_ZC (Linux 6.0); `report_usage` as
    /// in [`Sqe::send_zc`]. The kernel reads the bytes until the notification.
    pub fn send_zc_provided(
        &mut self,
        target: Target,
        group: BufGroup,
        id: ringwork_core::buf::BufId,
        offset: u32,
        len: u32,
        report_usage: bool,
    ) -> crate::Result<SafeSqe> {
        let ptr = self.provided_range(group, id, offset, len)?;
        Ok(SafeSqe::bare(Sqe::send_zc(
            target,
            ptr,
            len,
            report_usage,
            None,
        )))
    }

    fn provided_range(
        &mut self,
        group: BufGroup,
        id: ringwork_core::buf::BufId,
        offset: u32,
        len: u32,
    ) -> crate::Result<*const u8> {
        let br = self
            .buf_ring(group)
            .ok_or(crate::Error::InvalidConfig("no such buffer group"))?;
        if id.0 >= br.book().entries()
            || u64::from(offset) + u64::from(len) > u64::from(br.buf_size())
        {
            return Err(crate::Error::InvalidConfig(
                "a send outside its provided buffer",
            ));
        }
        Ok(br.buf_ptr(id).wrapping_add(offset as usize))
    }

    /// A read of up to `len` bytes at file `offset` into the fixed buffer `lease` holds,
    /// starting `buf_pos` bytes in: IORING_OP_READ_FIXED when the buffers are registered,
    /// IORING_OP_READ into the same memory when they were adopted unregistered
    /// ([`crate::Ring::adopt_buffers`]). The lease travels with the read and comes back with
    /// its completion ([`crate::Ring::take_lease`]), so nothing can look at the bytes while
    /// the kernel writes them.
    ///
    /// # Panics
    /// When the ring has no fixed buffers, the lease is not theirs, or the range is outside
    /// the buffer.
    pub fn read_fixed(
        &mut self,
        target: Target,
        lease: Lease,
        buf_pos: u32,
        len: u32,
        offset: u64,
    ) -> SafeSqe {
        let (ptr, index, registered) = self.fixed_range(&lease, buf_pos, len);
        let sqe = if registered {
            Sqe::read_fixed(target, ptr, len, offset, index)
        } else {
            Sqe::read(target, ptr, len, offset)
        };
        SafeSqe::with(sqe, OpMemory::Fixed(lease))
    }

    /// IORING_OP_SEND of `len` bytes at `start` in the fixed buffer `lease` holds. The kernel
    /// only reads the buffer; the lease stays the caller's.
    ///
    /// # Panics
    /// As [`crate::Ring::read_fixed`].
    pub fn send_fixed(&mut self, target: Target, lease: &Lease, start: u32, len: u32) -> SafeSqe {
        let (ptr, _, _) = self.fixed_range(lease, start, len);
        SafeSqe::bare(Sqe::send(target, ptr, len))
    }

    /// A write of `len` bytes at `start` in the fixed buffer `lease` holds to file `offset`:
    /// IORING_OP_WRITE_FIXED when the buffers are registered, IORING_OP_WRITE from the same
    /// memory when adopted. The kernel only reads the buffer; the lease stays the caller's.
    ///
    /// # Panics
    /// As [`crate::Ring::read_fixed`].
    pub fn write_fixed(
        &mut self,
        target: Target,
        lease: &Lease,
        start: u32,
        len: u32,
        offset: u64,
    ) -> SafeSqe {
        let (ptr, index, registered) = self.fixed_range(lease, start, len);
        SafeSqe::bare(if registered {
            Sqe::write_fixed(target, ptr, len, offset, index)
        } else {
            Sqe::write(target, ptr, len, offset)
        })
    }

    /// IORING_OP_SEND_ZC (Linux 6.0) of `len` bytes at `start` in the fixed buffer `lease`
    /// holds, with IORING_RECVSEND_FIXED_BUF when the buffers are registered. The kernel
    /// reads the buffer until the notification: keep it unchanged until then.
    ///
    /// # Panics
    /// As [`crate::Ring::read_fixed`].
    pub fn send_zc_fixed(
        &mut self,
        target: Target,
        lease: &Lease,
        start: u32,
        len: u32,
        report_usage: bool,
    ) -> SafeSqe {
        let (ptr, index, registered) = self.fixed_range(lease, start, len);
        let fixed = registered.then_some(index);
        SafeSqe::bare(Sqe::send_zc(target, ptr, len, report_usage, fixed))
    }

    fn fixed_range(&mut self, lease: &Lease, start: u32, len: u32) -> (*mut u8, u16, bool) {
        let registered = self.fixed_registered();
        let fb = self.fixed_buffers().expect("the ring has no fixed buffers");
        assert!(fb.owns(lease), "a lease of another buffer pool");
        assert!(
            start as usize + len as usize <= fb.buf_size(),
            "a range outside its fixed buffer"
        );
        let id = lease.id();
        (fb.ptr(id).wrapping_add(start as usize), id.0, registered)
    }
}
