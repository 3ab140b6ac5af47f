//! Submission queue entry builders.
//!
//! Building an SQE is safe: it only fills a struct. Pushing it ([`crate::Ring::push`]) is
//! where the contract lives (every pointer stays valid until the CQE). Each builder mirrors
//! the liburing `io_uring_prep_*` function of the same name; the field layout follows
//! `include/uapi/linux/io_uring.h`.
//!
//! # References
//! io_uring_enter(2) ("IORING_OP_*"), liburing's `src/include/liburing.h`.

use core::ffi::c_void;

use ringwork_core::buf::BufGroup;
use ringwork_core::token::UserData;
use rustix::fd::RawFd;
use rustix::io::ReadWriteFlags;
use rustix::io_uring::{
    io_uring_ptr, io_uring_sqe, io_uring_user_data, open_how, IoringAcceptFlags,
    IoringAsyncCancelFlags, IoringFsyncFlags, IoringOp, IoringRecvFlags, IoringSendFlags,
    IoringSqeFlags, IoringTimeoutFlags, IORING_FILE_INDEX_ALLOC,
};
use rustix::net::{RecvFlags, SendFlags, SocketFlags};
use rustix::pipe::SpliceFlags;

pub use rustix::io_uring::IoringSqeFlags as SqeFlags;

/// `struct __kernel_timespec`, as IORING_OP_TIMEOUT and LINK_TIMEOUT read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelTimespec {
    /// Seconds.
    pub tv_sec: i64,
    /// Nanoseconds.
    pub tv_nsec: i64,
}

impl KernelTimespec {
    /// From a duration.
    pub fn from_duration(d: core::time::Duration) -> Self {
        Self {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        }
    }
}

/// What an SQE's `fd` names: a descriptor number, or an index in the registered file table
/// (IOSQE_FIXED_FILE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A plain file descriptor.
    Fd(RawFd),
    /// An index into the ring's registered file table.
    Fixed(u32),
}

/// One SQE, ready to push.
#[derive(Clone, Copy)]
pub struct Sqe(io_uring_sqe);

impl core::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // SAFETY: every union here is plain old data of the same size; reading the u64 view
        // of user_data and the u64 view of `off` is always defined.
        let (ud, off) = unsafe { (self.0.user_data.u64_(), self.0.off_or_addr2.off) };
        f.debug_struct("Sqe")
            .field("opcode", &self.0.opcode)
            .field("flags", &self.0.flags)
            .field("fd", &self.0.fd)
            .field("off", &off)
            .field("user_data", &ud)
            .finish_non_exhaustive()
    }
}

impl Sqe {
    fn new(op: IoringOp) -> Self {
        Self(io_uring_sqe {
            opcode: op,
            ..Default::default()
        })
    }

    /// liburing's `io_uring_prep_rw`: the common fd/addr/len/off layout.
    fn rw(op: IoringOp, target: Target, addr: *mut c_void, len: u32, off: u64) -> Self {
        let mut s = Self::new(op);
        s.set_target(target);
        s.0.addr_or_splice_off_in.addr = io_uring_ptr::new(addr);
        s.0.len.len = len;
        s.0.off_or_addr2.off = off;
        s
    }

    fn set_target(&mut self, target: Target) {
        match target {
            Target::Fd(fd) => self.0.fd = fd,
            Target::Fixed(index) => {
                self.0.fd = index as RawFd;
                self.0.flags |= IoringSqeFlags::FIXED_FILE;
            }
        }
    }

    /// The raw kernel struct.
    pub fn raw(&self) -> &io_uring_sqe {
        &self.0
    }

    /// Sets the `user_data` that comes back in the CQE.
    #[must_use]
    pub fn user_data(mut self, ud: UserData) -> Self {
        self.0.user_data = io_uring_user_data::from_u64(ud.0);
        self
    }

    /// Adds IOSQE_* flags (IO_LINK, IO_HARDLINK, IO_DRAIN, CQE_SKIP_SUCCESS, ASYNC, ...).
    #[must_use]
    pub fn flags(mut self, flags: IoringSqeFlags) -> Self {
        self.0.flags |= flags;
        self
    }

    /// IORING_OP_NOP.
    pub fn nop() -> Self {
        Self::new(IoringOp::Nop)
    }

    /// IORING_OP_READ at an explicit `offset` (never -1: PITFALLS.md, "A read at offset -1 moves
    /// the file position").
    pub fn read(target: Target, buf: *mut u8, len: u32, offset: u64) -> Self {
        Self::rw(IoringOp::Read, target, buf.cast(), len, offset)
    }

    /// IORING_OP_WRITE at an explicit `offset`.
    pub fn write(target: Target, buf: *const u8, len: u32, offset: u64) -> Self {
        Self::rw(IoringOp::Write, target, buf.cast_mut().cast(), len, offset)
    }

    /// IORING_OP_READ_FIXED into registered buffer `buf_index`; `buf` must lie inside it.
    pub fn read_fixed(target: Target, buf: *mut u8, len: u32, offset: u64, buf_index: u16) -> Self {
        let mut s = Self::rw(IoringOp::ReadFixed, target, buf.cast(), len, offset);
        s.0.buf.buf_index = buf_index;
        s
    }

    /// IORING_OP_WRITE_FIXED from registered buffer `buf_index`; `buf` must lie inside it.
    pub fn write_fixed(
        target: Target,
        buf: *const u8,
        len: u32,
        offset: u64,
        buf_index: u16,
    ) -> Self {
        let mut s = Self::rw(
            IoringOp::WriteFixed,
            target,
            buf.cast_mut().cast(),
            len,
            offset,
        );
        s.0.buf.buf_index = buf_index;
        s
    }

    /// IORING_OP_READ with IOSQE_BUFFER_SELECT: the kernel picks a buffer from `group`.
    pub fn read_select(target: Target, group: BufGroup, len: u32, offset: u64) -> Self {
        let mut s = Self::rw(IoringOp::Read, target, core::ptr::null_mut(), len, offset);
        s.0.flags |= IoringSqeFlags::BUFFER_SELECT;
        s.0.buf.buf_group = group.0;
        s
    }

    /// IORING_OP_PROVIDE_BUFFERS (Linux 5.7), liburing's `io_uring_prep_provide_buffers`:
    /// hands `count` buffers of `len` bytes each, laid out back to back from `addr`, to buffer
    /// `group` with ids `first_id`, `first_id + 1`, ... The legacy (pre-ring) way to provide
    /// buffers: each batch costs an SQE, where a buffer ring (5.19) costs a memory store.
    pub fn provide_buffers(
        addr: *mut u8,
        len: u32,
        count: u16,
        group: BufGroup,
        first_id: ringwork_core::buf::BufId,
    ) -> Self {
        // The layout of io_uring_prep_rw with fd = count and off = the first id.
        let mut s = Self::rw(
            IoringOp::ProvideBuffers,
            Target::Fd(RawFd::from(count)),
            addr.cast(),
            len,
            u64::from(first_id.0),
        );
        s.0.buf.buf_group = group.0;
        s
    }

    /// IORING_OP_RECV into `buf`.
    pub fn recv(target: Target, buf: *mut u8, len: u32) -> Self {
        Self::rw(IoringOp::Recv, target, buf.cast(), len, 0)
    }

    /// IORING_OP_RECV with IOSQE_BUFFER_SELECT from provided-buffer `group` (Linux 5.7; ring
    /// groups 5.19); `multishot` adds IORING_RECV_MULTISHOT (Linux 6.0): one SQE, a CQE per
    /// receive, each with IORING_CQE_F_MORE while it stays armed.
    pub fn recv_select(target: Target, group: BufGroup, multishot: bool) -> Self {
        let mut s = Self::rw(IoringOp::Recv, target, core::ptr::null_mut(), 0, 0);
        s.0.flags |= IoringSqeFlags::BUFFER_SELECT;
        s.0.buf.buf_group = group.0;
        if multishot {
            s.0.ioprio.recv_flags = IoringRecvFlags::MULTISHOT;
        }
        s
    }

    /// Caps a buffer-select recv at `len` bytes (0, the default: the selected buffer's size).
    /// The kernel receives at most the smaller of the two.
    #[must_use]
    pub fn select_len(mut self, len: u32) -> Self {
        self.0.len.len = len;
        self
    }

    /// Makes a buffer-select recv a bundle (IORING_RECVSEND_BUNDLE, Linux 6.10, advertised by
    /// IORING_FEAT_RECVSEND_BUNDLE): one receive fills as many consecutive ring buffers as the
    /// data needs, and its CQE names the first and the byte count.
    #[must_use]
    pub fn recv_bundle(mut self) -> Self {
        // SAFETY: reading a plain-integer bitflags field of the ioprio union, which
        // recv_select set (or left zero).
        let flags = unsafe { self.0.ioprio.recv_flags };
        self.0.ioprio.recv_flags = flags | IoringRecvFlags::BUNDLE;
        self
    }

    /// Sets `MSG_*` flags on a recv.
    #[must_use]
    pub fn recv_flags(mut self, flags: RecvFlags) -> Self {
        self.0.op_flags.recv_flags = flags;
        self
    }

    /// IORING_OP_SEND of `len` bytes at `buf`.
    pub fn send(target: Target, buf: *const u8, len: u32) -> Self {
        Self::rw(IoringOp::Send, target, buf.cast_mut().cast(), len, 0)
    }

    /// IORING_OP_SENDMSG (Linux 5.3) of the message `msg` describes (as liburing's
    /// `io_uring_prep_sendmsg`: `len` 1); `MSG_*` flags with [`Sqe::send_flags`].
    pub fn sendmsg(target: Target, msg: *const libc::msghdr) -> Self {
        Self::rw(IoringOp::Sendmsg, target, msg.cast_mut().cast(), 1, 0)
    }

    /// Sets `MSG_*` flags on a send (e.g. MSG_NOSIGNAL, MSG_WAITALL).
    #[must_use]
    pub fn send_flags(mut self, flags: SendFlags) -> Self {
        self.0.op_flags.send_flags = flags;
        self
    }

    /// IORING_OP_SEND_ZC (Linux 6.0): two CQEs, the result (IORING_CQE_F_MORE) and later the
    /// notification (IORING_CQE_F_NOTIF) after which the buffer is ours again.
    /// `report_usage` adds IORING_SEND_ZC_REPORT_USAGE (Linux 6.2): the notification's `res`
    /// says whether the kernel copied after all. `fixed_buf` sends from a registered buffer.
    pub fn send_zc(
        target: Target,
        buf: *const u8,
        len: u32,
        report_usage: bool,
        fixed_buf: Option<u16>,
    ) -> Self {
        let mut s = Self::rw(IoringOp::SendZc, target, buf.cast_mut().cast(), len, 0);
        let mut zc = IoringSendFlags::empty();
        if report_usage {
            zc |= IoringSendFlags::ZC_REPORT_USAGE;
        }
        if let Some(index) = fixed_buf {
            zc |= IoringSendFlags::FIXED_BUF;
            s.0.buf.buf_index = index;
        }
        s.0.ioprio.send_flags = zc;
        s
    }

    /// IORING_OP_ACCEPT on listening socket `target`, without the peer address.
    /// `multishot` adds IORING_ACCEPT_MULTISHOT (Linux 5.19); `direct` installs the new socket
    /// in the registered file table (IORING_FILE_INDEX_ALLOC, Linux 5.19) and the CQE's `res`
    /// is the table index instead of an fd.
    pub fn accept(target: Target, flags: SocketFlags, multishot: bool, direct: bool) -> Self {
        let mut s = Self::rw(IoringOp::Accept, target, core::ptr::null_mut(), 0, 0);
        s.0.op_flags.accept_flags = flags;
        if multishot {
            s.0.ioprio.accept_flags = IoringAcceptFlags::MULTISHOT;
        }
        if direct {
            s.0.splice_fd_in_or_file_index_or_addr_len.file_index = IORING_FILE_INDEX_ALLOC as u32;
        }
        s
    }

    /// IORING_OP_ASYNC_CANCEL of the request whose `user_data` is `ud` (Linux 5.5).
    pub fn cancel(ud: UserData) -> Self {
        let mut s = Self::rw(
            IoringOp::AsyncCancel,
            Target::Fd(-1),
            core::ptr::null_mut(),
            0,
            0,
        );
        s.0.addr_or_splice_off_in.user_data = io_uring_user_data::from_u64(ud.0);
        s
    }

    /// Points a cancel (by `user_data`) at another request.
    pub(crate) fn cancel_target(mut self, ud: UserData) -> Self {
        debug_assert_eq!(self.0.opcode, IoringOp::AsyncCancel);
        self.0.addr_or_splice_off_in.user_data = io_uring_user_data::from_u64(ud.0);
        self
    }

    /// IORING_OP_POLL_ADD (Linux 5.1): one completion once `events` are ready on `target`
    /// (the ready mask in `res`).
    pub fn poll_add(target: Target, events: rustix::event::PollFlags) -> Self {
        let mut s = Self::rw(IoringOp::PollAdd, target, core::ptr::null_mut(), 0, 0);
        // Little-endian layout, as liburing's io_uring_prep_poll_add (it swaps halves only on
        // big-endian machines).
        s.0.op_flags.poll32_events = events.bits() as u32;
        s
    }

    /// IORING_OP_ASYNC_CANCEL of every request on `target`
    /// (IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL, Linux 5.19; a [`Target::Fixed`]
    /// adds IORING_ASYNC_CANCEL_FD_FIXED, Linux 6.0). Older kernels refuse the flags (EINVAL)
    /// and cancel nothing: [`crate::Ring::can_cancel_fd`] and
    /// [`crate::Ring::can_cancel_fd_fixed`] say whether this works, and where it does not,
    /// cancel each request by its `user_data` ([`Sqe::cancel`]).
    pub fn cancel_fd(target: Target) -> Self {
        let mut s = Self::rw(
            IoringOp::AsyncCancel,
            Target::Fd(-1),
            core::ptr::null_mut(),
            0,
            0,
        );
        let mut flags = IoringAsyncCancelFlags::FD | IoringAsyncCancelFlags::ALL;
        match target {
            Target::Fd(fd) => s.0.fd = fd,
            Target::Fixed(index) => {
                // Here the fixed-ness is a cancel flag, not IOSQE_FIXED_FILE.
                s.0.fd = index as RawFd;
                flags |= IoringAsyncCancelFlags::FD_FIXED;
            }
        }
        s.0.op_flags.cancel_flags = flags;
        s
    }

    /// IORING_OP_ASYNC_CANCEL of every request of the ring, whatever its `user_data` or file
    /// (IORING_ASYNC_CANCEL_ANY, Linux 5.19; older kernels refuse it with EINVAL, see
    /// [`crate::Ring::can_cancel_fd`]). Its CQE's `res` is how many it found. Work io-wq is
    /// already running is only interrupted, and may finish normally.
    pub fn cancel_any() -> Self {
        let mut s = Self::rw(
            IoringOp::AsyncCancel,
            Target::Fd(-1),
            core::ptr::null_mut(),
            0,
            0,
        );
        s.0.op_flags.cancel_flags = IoringAsyncCancelFlags::ANY;
        s
    }

    /// IORING_OP_CLOSE (Linux 5.6) of an fd, or of a registered-file slot (Linux 5.15).
    pub fn close(target: Target) -> Self {
        let mut s = Self::new(IoringOp::Close);
        match target {
            Target::Fd(fd) => s.0.fd = fd,
            Target::Fixed(index) => {
                s.0.fd = 0;
                s.0.splice_fd_in_or_file_index_or_addr_len.file_index = index + 1;
            }
        }
        s
    }

    /// IORING_OP_FIXED_FD_INSTALL (Linux 6.8) of registered-file slot `index`: a plain
    /// descriptor for the slot's file, close-on-exec (`install_fd_flags` 0; the only other
    /// flag, IORING_FIXED_FD_NO_CLOEXEC, is not wanted), the result in `res`. The slot is the
    /// SQE's file, so IOSQE_FIXED_FILE is required. Like liburing's
    /// `io_uring_prep_fixed_fd_install(sqe, index, 0)`.
    ///
    /// # References
    /// io_uring_prep_fixed_fd_install(3).
    pub fn fixed_fd_install(index: u32) -> Self {
        let mut s = Self::new(IoringOp::FixedFdInstall);
        s.set_target(Target::Fixed(index));
        s
    }

    /// IORING_OP_FSYNC (Linux 5.1) of the whole file: fsync(2), or fdatasync(2) with
    /// `datasync` (IORING_FSYNC_DATASYNC). Like liburing's `io_uring_prep_fsync`.
    ///
    /// The kernel does not order it after writes submitted before it: an fsync that must cover
    /// them has to be linked after them (IOSQE_IO_LINK), drained (IOSQE_IO_DRAIN) or submitted
    /// only once their CQEs are in.
    ///
    /// # References
    /// io_uring_enter(2), "IORING_OP_FSYNC"; io_uring_prep_fsync(3); fsync(2).
    pub fn fsync(target: Target, datasync: bool) -> Self {
        let mut s = Self::rw(IoringOp::Fsync, target, core::ptr::null_mut(), 0, 0);
        if datasync {
            s.0.op_flags.fsync_flags = IoringFsyncFlags::DATASYNC;
        }
        s
    }

    /// IORING_OP_SHUTDOWN (Linux 5.11); `how` is SHUT_RD (0), SHUT_WR (1) or SHUT_RDWR (2).
    pub fn shutdown(target: Target, how: u32) -> Self {
        Self::rw(IoringOp::Shutdown, target, core::ptr::null_mut(), how, 0)
    }

    /// IORING_OP_TIMEOUT: completes after `ts`, or after `count` other completions.
    pub fn timeout(ts: *const KernelTimespec, count: u32, flags: IoringTimeoutFlags) -> Self {
        let mut s = Self::rw(
            IoringOp::Timeout,
            Target::Fd(-1),
            ts.cast_mut().cast(),
            1,
            u64::from(count),
        );
        s.0.op_flags.timeout_flags = flags;
        s
    }

    /// IORING_OP_LINK_TIMEOUT (Linux 5.5): cancels the previous SQE in its link chain if it
    /// has not completed within `ts`.
    pub fn link_timeout(ts: *const KernelTimespec, flags: IoringTimeoutFlags) -> Self {
        let mut s = Self::rw(
            IoringOp::LinkTimeout,
            Target::Fd(-1),
            ts.cast_mut().cast(),
            1,
            0,
        );
        s.0.op_flags.timeout_flags = flags;
        s
    }

    /// IORING_OP_OPENAT2 (Linux 5.6) of NUL-terminated `path` relative to `dir`. With
    /// `fixed_slot`, the file goes into that registered-file slot instead of an fd (Linux 5.15).
    pub fn openat2(
        dir: RawFd,
        path: *const u8,
        how: *const open_how,
        fixed_slot: Option<u32>,
    ) -> Self {
        let mut s = Self::rw(
            IoringOp::Openat2,
            Target::Fd(dir),
            path.cast_mut().cast(),
            core::mem::size_of::<open_how>() as u32,
            how as u64,
        );
        if let Some(slot) = fixed_slot {
            s.0.splice_fd_in_or_file_index_or_addr_len.file_index = slot + 1;
        }
        s
    }

    /// IORING_OP_STATX (Linux 5.6) of `path` relative to `dir` (or of `dir` itself with an
    /// empty path and AT_EMPTY_PATH) into `statx_buf`.
    pub fn statx(
        dir: RawFd,
        path: *const u8,
        flags: rustix::fs::AtFlags,
        mask: rustix::fs::StatxFlags,
        statx_buf: *mut rustix::fs::Statx,
    ) -> Self {
        let mut s = Self::rw(
            IoringOp::Statx,
            Target::Fd(dir),
            path.cast_mut().cast(),
            mask.bits(),
            statx_buf as u64,
        );
        s.0.op_flags.statx_flags = flags;
        s
    }

    /// IORING_OP_SPLICE (Linux 5.7), liburing's `io_uring_prep_splice`: splice(2) of up to
    /// `len` bytes from `fd_in` to `fd_out`, one of which must be a pipe. An offset is
    /// `Some` for a file end (explicit, like every file offset here: a `None` on a file
    /// would use and move the file position, racing any other user of it) and must be `None`
    /// for a pipe or socket end (the kernel refuses an offset on a pipe with ESPIPE).
    ///
    /// `fd_out` is the SQE's file (a [`Target::Fixed`] sets IOSQE_FIXED_FILE); a fixed
    /// `fd_in` sets SPLICE_F_FD_IN_FIXED, also Linux 5.7. The kernel always runs a splice in
    /// io-wq (it cannot splice without blocking), as unbounded work when `fd_out` is not a
    /// regular file: [`crate::Ring::register_iowq_max_workers`] caps those threads.
    ///
    /// The result is the number of bytes moved. Anything short of `len` fails an
    /// IOSQE_IO_LINK chain (the next SQE completes with ECANCELED).
    ///
    /// # References
    /// io_uring_enter(2), "IORING_OP_SPLICE"; io_uring_prep_splice(3); splice(2).
    pub fn splice(
        fd_in: Target,
        off_in: Option<u64>,
        fd_out: Target,
        off_out: Option<u64>,
        len: u32,
        flags: SpliceFlags,
    ) -> Self {
        // The kernel reads an offset of -1 as "none".
        const NO_OFFSET: u64 = u64::MAX;
        let mut s = Self::rw(
            IoringOp::Splice,
            fd_out,
            core::ptr::null_mut(),
            len,
            off_out.unwrap_or(NO_OFFSET),
        );
        s.0.addr_or_splice_off_in.splice_off_in = off_in.unwrap_or(NO_OFFSET);
        s.set_splice_in(fd_in, flags);
        s
    }

    /// IORING_OP_TEE (Linux 5.8), liburing's `io_uring_prep_tee`: tee(2) of up to `len`
    /// bytes from pipe `fd_in` to pipe `fd_out`, without consuming them from `fd_in`.
    /// Fixed targets as in [`Sqe::splice`]; like a splice it runs in io-wq, and a short
    /// result fails a link chain.
    ///
    /// # References
    /// io_uring_enter(2), "IORING_OP_TEE"; io_uring_prep_tee(3); tee(2).
    pub fn tee(fd_in: Target, fd_out: Target, len: u32, flags: SpliceFlags) -> Self {
        // Both offsets stay 0: the kernel refuses a tee with either set (EINVAL).
        let mut s = Self::rw(IoringOp::Tee, fd_out, core::ptr::null_mut(), len, 0);
        s.set_splice_in(fd_in, flags);
        s
    }

    /// The input end of a splice or tee: `splice_fd_in`, and SPLICE_F_FD_IN_FIXED for a
    /// registered file (IOSQE_FIXED_FILE only speaks for `fd`, the output end).
    fn set_splice_in(&mut self, fd_in: Target, flags: SpliceFlags) {
        let (fd, fixed) = match fd_in {
            Target::Fd(fd) => (fd, false),
            Target::Fixed(index) => (index as RawFd, true),
        };
        let mut bits = rustix::io_uring::SpliceFlags::from_bits_retain(flags.bits());
        if fixed {
            bits |= rustix::io_uring::SpliceFlags::FD_IN_FIXED;
        }
        self.0.splice_fd_in_or_file_index_or_addr_len.splice_fd_in = fd;
        self.0.op_flags.splice_flags = bits;
    }

    /// Sets RWF_* flags on a read or write.
    #[must_use]
    pub fn rw_flags(mut self, flags: ReadWriteFlags) -> Self {
        self.0.op_flags.rw_flags = flags;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_is_64_bytes() {
        assert_eq!(core::mem::size_of::<io_uring_sqe>(), 64);
    }

    #[test]
    fn fixed_target_sets_flag_and_index() {
        let s = Sqe::read(Target::Fixed(7), core::ptr::null_mut(), 4096, 8192);
        assert!(s.raw().flags.contains(IoringSqeFlags::FIXED_FILE));
        assert_eq!(s.raw().fd, 7);
        // SAFETY: plain-data unions.
        unsafe {
            assert_eq!(s.raw().off_or_addr2.off, 8192);
            assert_eq!(s.raw().len.len, 4096);
        }
    }

    #[test]
    fn cancel_fd_fixed_uses_cancel_flag_not_sqe_flag() {
        let s = Sqe::cancel_fd(Target::Fixed(3));
        assert!(!s.raw().flags.contains(IoringSqeFlags::FIXED_FILE));
        // SAFETY: plain-data union.
        let flags = unsafe { s.raw().op_flags.cancel_flags };
        assert!(flags.contains(IoringAsyncCancelFlags::FD_FIXED | IoringAsyncCancelFlags::ALL));
    }

    #[test]
    fn cancel_any_matches_nothing_but_any() {
        let s = Sqe::cancel_any();
        assert_eq!(s.raw().opcode, IoringOp::AsyncCancel);
        // SAFETY: plain-data union.
        let flags = unsafe { s.raw().op_flags.cancel_flags };
        // The kernel refuses ANY together with FD (EINVAL): ANY alone.
        assert_eq!(flags, IoringAsyncCancelFlags::ANY);
        assert!(!s.raw().flags.contains(IoringSqeFlags::FIXED_FILE));
    }

    #[test]
    fn fsync_datasync_sets_the_fsync_flag() {
        let s = Sqe::fsync(Target::Fd(5), true);
        assert_eq!(s.raw().opcode, IoringOp::Fsync);
        assert_eq!(s.raw().fd, 5);
        // SAFETY: plain-data union.
        let flags = unsafe { s.raw().op_flags.fsync_flags };
        assert_eq!(flags, IoringFsyncFlags::DATASYNC);
        // SAFETY: plain-data union.
        let flags = unsafe { Sqe::fsync(Target::Fd(5), false).raw().op_flags.fsync_flags };
        assert!(flags.is_empty());
    }

    #[test]
    fn splice_follows_liburing_layout() {
        let s = Sqe::splice(
            Target::Fd(3),
            Some(4096),
            Target::Fd(9),
            None,
            65536,
            SpliceFlags::MORE,
        );
        assert_eq!(s.raw().opcode, IoringOp::Splice);
        // fd is the output end; the input end travels in splice_fd_in.
        assert_eq!(s.raw().fd, 9);
        assert!(!s.raw().flags.contains(IoringSqeFlags::FIXED_FILE));
        // SAFETY: plain-data unions.
        unsafe {
            assert_eq!(
                s.raw().splice_fd_in_or_file_index_or_addr_len.splice_fd_in,
                3
            );
            assert_eq!(s.raw().addr_or_splice_off_in.splice_off_in, 4096);
            assert_eq!(s.raw().off_or_addr2.off, u64::MAX, "no offset is -1");
            assert_eq!(s.raw().len.len, 65536);
            assert_eq!(
                s.raw().op_flags.splice_flags.bits(),
                SpliceFlags::MORE.bits()
            );
        }
    }

    #[test]
    fn splice_fixed_ends_use_their_own_flags() {
        let s = Sqe::splice(
            Target::Fixed(2),
            Some(0),
            Target::Fixed(5),
            None,
            1,
            SpliceFlags::empty(),
        );
        assert_eq!(s.raw().fd, 5);
        assert!(s.raw().flags.contains(IoringSqeFlags::FIXED_FILE));
        // SAFETY: plain-data unions.
        unsafe {
            assert_eq!(
                s.raw().splice_fd_in_or_file_index_or_addr_len.splice_fd_in,
                2
            );
            assert_eq!(
                s.raw().op_flags.splice_flags,
                rustix::io_uring::SpliceFlags::FD_IN_FIXED
            );
        }
        // Only the input end fixed: no IOSQE_FIXED_FILE.
        let s = Sqe::tee(Target::Fixed(1), Target::Fd(7), 10, SpliceFlags::empty());
        assert_eq!(s.raw().opcode, IoringOp::Tee);
        assert!(!s.raw().flags.contains(IoringSqeFlags::FIXED_FILE));
        // SAFETY: plain-data unions.
        unsafe {
            assert_eq!(s.raw().off_or_addr2.off, 0);
            assert_eq!(s.raw().addr_or_splice_off_in.splice_off_in, 0);
            assert!(s
                .raw()
                .op_flags
                .splice_flags
                .contains(rustix::io_uring::SpliceFlags::FD_IN_FIXED));
        }
    }

    #[test]
    fn close_fixed_is_index_plus_one() {
        let s = Sqe::close(Target::Fixed(0));
        // SAFETY: plain-data union.
        let index = unsafe { s.raw().splice_fd_in_or_file_index_or_addr_len.file_index };
        assert_eq!(index, 1);
    }
}
