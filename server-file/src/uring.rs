//! The io_uring driver: turns HttpConn's operations into SQEs and its completions back into
//! events.
//!
//! - Accept: one multishot IORING_OP_ACCEPT, re-armed whenever a CQE lacks F_MORE.
//! - Files: IORING_OP_STATX by path relative to the root, then IORING_OP_OPENAT2 (RESOLVE_BENEATH
//!   | RESOLVE_NO_MAGICLINKS) straight into registered-file slot N for connection slot N; reads
//!   name `Target::Fixed(N)`, and the slot is closed with IORING_OP_CLOSE when the response is
//!   done (HttpConn never opens before the previous close completed, so a slot never holds the
//!   wrong file).
//! - Reads: IORING_OP_READ_FIXED into registered buffers 2N and 2N+1. Should registering the
//!   buffers fail (RLIMIT_MEMLOCK), the same memory is used with IORING_OP_READ and the reason
//!   is logged.
//! - Sockets: plain fds, IORING_OP_RECV into a per-connection head buffer, IORING_OP_SEND.
//! - Time: `io_uring_enter` with a timeout (EXT_ARG) wakes the loop for HttpConn's ticks.
//! - Stopping (SIGINT/SIGTERM): a graceful drain. The multishot accept is cancelled and the
//!   listener closed once it has ended (new connections are refused); every connection gets
//!   [`HttpConn::on_shutdown`] (responses in flight finish, then the connection closes); after
//!   `--shutdown-grace-ms` the rest get [`HttpConn::abort`] (their socket ops cancelled). The
//!   worker returns once every connection is freed and the accept has ended.
//!
//! A connection is freed only once HttpConn has said Close *and* every SQE submitted for it
//! has completed (cancel, shutdown and close CQEs included): until then its buffers, statx
//! struct, open_how and path stay where the kernel was told they are.

use std::time::Instant;

use rustix::fd::{AsRawFd, FromRawFd, OwnedFd};
use rustix::fs::{AtFlags, StatxFlags};
use rustix::io_uring::{open_how, IoringOp};
use rustix::net::SendFlags;

use ringwork_core::errno::RawErrno;
use ringwork_core::httpconn::{BufIx, HttpConn, Op, SendSrc};
use ringwork_core::slab::Slab;
use ringwork_core::token::{Generation, OpKind, Slot, Token};
use ringwork_sys::{FixedBuffers, Ring, RingParams, Sqe, Target};

use crate::epoll::tick_interval;
use crate::{file_info, open_flags, Shared};

/// Where the accept SQE's token points; never a connection slot (the slab is smaller).
const ACCEPT_SLOT: Slot = Slot(u32::MAX);

struct Conn {
    http: HttpConn,
    sock: OwnedFd,
    recv_buf: Box<[u8]>,
    stx: Box<rustix::fs::Statx>,
    how: Box<open_how>,
    /// The buffer the read in flight writes (HttpConn keeps at most one read in flight).
    read_buf: BufIx,
    /// The open in flight asked for O_DIRECT.
    direct: bool,
    /// SQEs submitted for this connection whose CQEs have not arrived.
    inflight: u32,
    /// HttpConn said Close.
    closed: bool,
}

struct Driver<'s> {
    shared: &'s Shared,
    ring: Ring,
    conns: Slab<Conn>,
    /// Start of each chunk buffer (2 per connection slot), registered or not.
    buf_ptrs: Vec<*mut u8>,
    /// The buffers when they could not be registered (kept alive here; plain reads).
    _unregistered: Option<FixedBuffers>,
    fixed: bool,
    /// Closed once the accept has ended during a drain.
    listener: Option<OwnedFd>,
    /// The multishot accept has not posted its last CQE.
    accept_armed: bool,
    /// When the drain began (SIGINT/SIGTERM), and whether its grace ran out.
    stopping: Option<Instant>,
    aborted: bool,
    direct_refused: bool,
    direct_noted: bool,
}

/// Runs one worker until SIGINT/SIGTERM.
pub fn run(shared: &Shared, listener: OwnedFd) -> Result<(), String> {
    let slots = shared.max_conns;
    let mut ring = RingParams::new(256)
        .cq_entries(4096)
        .build()
        .map_err(|e| format!("cannot set up io_uring: {e}"))?;
    {
        let probe = ring.probe().map_err(|e| e.to_string())?;
        for (op, name, since) in [
            (IoringOp::Openat2, "IORING_OP_OPENAT2", "5.6"),
            (IoringOp::Statx, "IORING_OP_STATX", "5.6"),
            (IoringOp::ReadFixed, "IORING_OP_READ_FIXED", "5.1"),
            (IoringOp::Send, "IORING_OP_SEND", "5.6"),
            (IoringOp::Recv, "IORING_OP_RECV", "5.6"),
            (IoringOp::Close, "IORING_OP_CLOSE", "5.6"),
        ] {
            probe.require(op, name, since).map_err(|e| e.to_string())?;
        }
    }
    ring.register_files_sparse(slots)
        .map_err(|e| format!("cannot register a file table of {slots} slots: {e}"))?;
    let count = u16::try_from(slots * 2)
        .map_err(|_| "--max-conns is at most 32767 with the io_uring backend".to_string())?;
    let buffers = FixedBuffers::new(count, shared.cfg.chunk as usize).map_err(|e| e.to_string())?;
    let total = buffers.buf_size() * usize::from(count);
    let (fixed, unregistered, buf_ptrs) = match ring.register_buffers(buffers) {
        Ok(()) => {
            let fb = ring.fixed_buffers().expect("just registered");
            let ptrs = (0..count)
                .map(|i| fb.ptr(ringwork_core::buf::BufId(i)))
                .collect();
            (true, None, ptrs)
        }
        Err(e) => {
            println!(
                "registering {} KiB of fixed buffers failed ({e}): \
                 reading with IORING_OP_READ instead of READ_FIXED",
                total / 1024
            );
            let fb =
                FixedBuffers::new(count, shared.cfg.chunk as usize).map_err(|e| e.to_string())?;
            let ptrs = (0..count)
                .map(|i| fb.ptr(ringwork_core::buf::BufId(i)))
                .collect();
            (false, Some(fb), ptrs)
        }
    };
    let mut d = Driver {
        shared,
        ring,
        conns: Slab::new(slots as usize),
        buf_ptrs,
        _unregistered: unregistered,
        fixed,
        listener: Some(listener),
        accept_armed: false,
        stopping: None,
        aborted: false,
        direct_refused: false,
        direct_noted: false,
    };
    d.arm_accept()?;
    d.run_loop()
}

impl Driver<'_> {
    fn push(&mut self, sqe: &Sqe) -> Result<(), String> {
        // SAFETY: every pointer in SQEs built by this driver points into memory that lives
        // until the CQE: the connection's boxed recv buffer, statx struct and open_how, its
        // HttpConn's path and head buffers (heap, untouched by HttpConn while the op is in
        // flight), or the chunk buffers, owned by the ring or by `_unregistered` for the
        // driver's life. A connection is freed only after all its CQEs (`inflight == 0`).
        unsafe { self.ring.push_or_submit(sqe) }.map_err(|e| format!("io_uring submit: {e}"))
    }

    fn arm_accept(&mut self) -> Result<(), String> {
        let Some(listener) = &self.listener else {
            return Ok(());
        };
        let ud = Token::new(OpKind::Accept, ACCEPT_SLOT, Generation::ZERO).encode();
        let sqe = Sqe::accept(
            Target::Fd(listener.as_raw_fd()),
            rustix::net::SocketFlags::CLOEXEC,
            true,
            false,
        )
        .user_data(ud);
        self.accept_armed = true;
        self.push(&sqe)
    }

    /// SIGINT/SIGTERM arrived: cancel the accept, and let every connection finish its
    /// response and close.
    fn begin_drain(&mut self) -> Result<(), String> {
        self.stopping = Some(Instant::now());
        if self.accept_armed {
            let accept = Token::new(OpKind::Accept, ACCEPT_SLOT, Generation::ZERO).encode();
            let ud = Token::new(OpKind::Cancel, ACCEPT_SLOT, Generation::ZERO).encode();
            self.push(&Sqe::cancel(accept).user_data(ud))?;
        }
        self.each_open_conn(HttpConn::on_shutdown)
    }

    /// Calls `f` on every connection HttpConn has not closed, then performs what it queued.
    fn each_open_conn(&mut self, mut f: impl FnMut(&mut HttpConn)) -> Result<(), String> {
        for i in 0..self.conns.capacity() {
            let slot = Slot(i as u32);
            if let Some(c) = self.conns.get_mut(slot) {
                if !c.closed {
                    f(&mut c.http);
                    self.drive(slot)?;
                }
            }
        }
        Ok(())
    }

    fn run_loop(&mut self) -> Result<(), String> {
        let tick = tick_interval(self.shared);
        let mut last_tick = self.shared.now().mono_ms;
        let mut cqes = Vec::with_capacity(1024);
        loop {
            if self.stopping.is_none() && ringwork_sys::signal::stop_requested() {
                self.begin_drain()?;
            }
            if let Some(since) = self.stopping {
                if self.conns.is_empty() && !self.accept_armed {
                    return Ok(());
                }
                if !self.aborted && since.elapsed() >= self.shared.shutdown_grace {
                    self.aborted = true;
                    self.each_open_conn(HttpConn::abort)?;
                }
            }
            match self.ring.submit_and_wait_timeout(1, tick) {
                Ok(_) => {}
                Err(e) if e.errno() == Some(rustix::io::Errno::INTR) => {}
                Err(e) if e.errno() == Some(rustix::io::Errno::TIME) => {}
                Err(e) => return Err(format!("io_uring_enter: {e}")),
            }
            cqes.clear();
            cqes.extend(self.ring.completions());
            for cqe in cqes.drain(..) {
                self.on_cqe(cqe)?;
            }
            let now = self.shared.now();
            if now.mono_ms.saturating_sub(last_tick) >= tick.as_millis() as u64 {
                last_tick = now.mono_ms;
                self.each_open_conn(|http| http.on_tick(now))?;
            }
        }
    }

    fn on_cqe(&mut self, cqe: ringwork_sys::Cqe) -> Result<(), String> {
        let Ok(token) = Token::decode(cqe.user_data) else {
            return Ok(());
        };
        if token.kind == OpKind::Accept {
            if let Ok(fd) = cqe.result() {
                // SAFETY: a successful non-direct accept's `res` is a new descriptor that
                // nothing else owns.
                let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                if self.stopping.is_none() {
                    self.new_conn(sock)?;
                }
                // Draining: accepted before the cancel took effect; dropping it closes it.
            }
            if !cqe.more() {
                self.accept_armed = false;
                if self.stopping.is_none() {
                    // Multishot accept ended (PITFALLS #2): re-arm.
                    self.arm_accept()?;
                } else {
                    // Nothing accepts any more: connections are refused from now on.
                    self.listener = None;
                }
            }
            return Ok(());
        }
        if token.slot == ACCEPT_SLOT {
            // The accept's cancel: the accept's own last CQE says what matters.
            return Ok(());
        }
        let now = self.shared.now();
        let Some(c) = self.conns.get_checked_mut(&token) else {
            // Stale: cannot happen while slots are freed only at inflight == 0.
            return Ok(());
        };
        c.inflight -= 1;
        let res = cqe.result();
        match token.kind {
            OpKind::Recv => {
                let bytes = res.map(|n| &c.recv_buf[..n as usize]);
                c.http.on_recv(now, bytes);
            }
            OpKind::Send => c.http.on_send(now, res),
            OpKind::Statx => {
                let info = res.map(|_| file_info(&c.stx));
                c.http.on_stat(now, info);
            }
            OpKind::Open => {
                if c.direct && res == Err(RawErrno::INVAL) && !self.direct_refused {
                    self.direct_refused = true;
                    println!("O_DIRECT open refused by the file system (EINVAL): serving buffered");
                }
                c.http.on_open(now, res.map(|_| ()));
            }
            OpKind::Read => {
                let buf = c.read_buf;
                c.http.on_read(now, buf, res);
            }
            OpKind::Close => c.http.on_file_closed(now),
            // Cancel and shutdown results carry nothing HttpConn needs: the cancelled op's own
            // CQE reports the cancellation.
            _ => {}
        }
        self.drive(token.slot)
    }

    fn new_conn(&mut self, sock: OwnedFd) -> Result<(), String> {
        let _ = rustix::net::sockopt::set_tcp_nodelay(&sock, true);
        let cfg = self.shared.cfg;
        let conn = Conn {
            http: HttpConn::new(cfg, self.shared.now()),
            sock,
            recv_buf: vec![0; cfg.limits.max_head_bytes + 1].into_boxed_slice(),
            stx: Box::new(zeroed_statx()),
            how: Box::new(open_how::default()),
            read_buf: BufIx(0),
            direct: false,
            inflight: 0,
            closed: false,
        };
        // A full table: the connection is dropped (its socket closed) at once.
        match self.conns.insert(conn) {
            Some((slot, _)) => self.drive(slot),
            None => Ok(()),
        }
    }

    /// Turns the connection's queued operations into SQEs; frees it when it is done.
    fn drive(&mut self, slot: Slot) -> Result<(), String> {
        let fixed = self.fixed;
        let root = self.shared.root.as_raw_fd();
        loop {
            let generation = self.conns.generation(slot);
            let Some(c) = self.conns.get_mut(slot) else {
                return Ok(());
            };
            let Some(op) = c.http.poll_op() else {
                if c.closed && c.inflight == 0 {
                    // Dropping the socket closes it; the file slot was closed by HttpConn.
                    self.conns.remove(slot);
                }
                return Ok(());
            };
            let sock = Target::Fd(c.sock.as_raw_fd());
            let (kind, sqe) = match op {
                Op::Recv { max } => {
                    let len = (max as usize).min(c.recv_buf.len()) as u32;
                    (OpKind::Recv, Sqe::recv(sock, c.recv_buf.as_mut_ptr(), len))
                }
                Op::Send(src) => {
                    let (ptr, len) = match src {
                        SendSrc::Head { start, len } => {
                            (c.http.head_bytes()[start as usize..].as_ptr(), len)
                        }
                        SendSrc::Buf { buf, start, len } => {
                            let base = self.buf_ptrs[slot.0 as usize * 2 + usize::from(buf.0)];
                            (base.wrapping_add(start as usize).cast_const(), len)
                        }
                    };
                    let sqe = Sqe::send(sock, ptr, len).send_flags(SendFlags::NOSIGNAL);
                    (OpKind::Send, sqe)
                }
                Op::Stat => {
                    let mask = StatxFlags::TYPE
                        | StatxFlags::SIZE
                        | StatxFlags::MTIME
                        | StatxFlags::DIOALIGN;
                    let stx: *mut rustix::fs::Statx = &mut *c.stx;
                    let path = c.http.path().as_ptr();
                    (
                        OpKind::Statx,
                        Sqe::statx(root, path, AtFlags::empty(), mask, stx),
                    )
                }
                Op::Open { direct } => {
                    crate::note_direct(&mut self.direct_noted, self.shared.cfg.direct, direct);
                    let (flags, resolve) = open_flags(direct);
                    // A direct descriptor has no close-on-exec bit; the kernel refuses
                    // O_CLOEXEC with a file slot (EINVAL).
                    let flags = flags - rustix::fs::OFlags::CLOEXEC;
                    c.direct = direct;
                    *c.how = open_how::default();
                    c.how.flags = u64::from(flags.bits());
                    c.how.resolve = resolve;
                    let how: *const open_how = &*c.how;
                    let path = c.http.path().as_ptr();
                    (OpKind::Open, Sqe::openat2(root, path, how, Some(slot.0)))
                }
                Op::Read {
                    buf,
                    offset,
                    len,
                    buf_pos,
                } => {
                    c.read_buf = buf;
                    let index = slot.0 as usize * 2 + usize::from(buf.0);
                    let ptr = self.buf_ptrs[index].wrapping_add(buf_pos as usize);
                    let file = Target::Fixed(slot.0);
                    let sqe = if fixed {
                        Sqe::read_fixed(file, ptr, len, offset, index as u16)
                    } else {
                        Sqe::read(file, ptr, len, offset)
                    };
                    (OpKind::Read, sqe)
                }
                Op::CloseFile => (OpKind::Close, Sqe::close(Target::Fixed(slot.0))),
                Op::Cancel => (OpKind::Cancel, Sqe::cancel_fd(sock)),
                Op::Shutdown => (OpKind::Shutdown, Sqe::shutdown(sock, 1)),
                Op::Close => {
                    c.closed = true;
                    continue;
                }
            };
            c.inflight += 1;
            let ud = Token::new(kind, slot, generation).encode();
            self.push(&sqe.user_data(ud))?;
        }
    }
}

fn zeroed_statx() -> rustix::fs::Statx {
    // SAFETY: `struct statx` is integers and padding only; all-zero is a valid value (it is
    // what the kernel's own `memset` before filling it produces).
    unsafe { core::mem::zeroed() }
}
