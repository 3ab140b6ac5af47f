//! The io_uring driver: turns HttpConn's operations into SQEs and its completions back into
//! events.
//!
//! - Ring: SINGLE_ISSUER | DEFER_TASKRUN unless refused (logged) or disabled; `--sqpoll`
//!   instead when asked (`RingParams::build_server`). One `io_uring:` line per worker says
//!   which features are in use.
//! - Accept: `ringwork_sys::Acceptor`, as in ringwork-echo: one multishot IORING_OP_ACCEPT,
//!   re-armed whenever a CQE lacks F_MORE (single-shot, re-armed per connection, without Linux
//!   5.19 or with `--disable multishot-accept`); out of descriptors or memory it pauses (the
//!   loop's wait never outlasts the pause) and says so on stderr, once per episode.
//! - Files: IORING_OP_STATX by path relative to the root, then IORING_OP_OPENAT2 (RESOLVE_BENEATH
//!   | RESOLVE_NO_MAGICLINKS) straight into registered-file slot N for connection slot N; reads
//!   name `Target::Fixed(N)`, and the slot is closed with IORING_OP_CLOSE when the response is
//!   done (HttpConn never opens before the previous close completed, so a slot never holds the
//!   wrong file). With `--disable fixed-files`, or when the table cannot be registered,
//!   openat2 returns a plain descriptor (O_CLOEXEC) that reads and the close name instead.
//! - Links: with registered files HttpConn plans the response at stat time and queues the
//!   open with `link_next`, then the file's first read; both go in as one IOSQE_IO_LINK chain
//!   (`Ring::push_chain_or_submit`), so the read needs no round trip through this loop. The
//!   read names slot N before the open has filled it: since Linux 5.18 a linked request's
//!   fixed file is looked up at issue, not at submission (sys/tests/links.rs checks it).
//!   A failed open (a symlink out of the root) cancels the read (-ECANCELED, counted as
//!   `link_cancels`); HttpConn answers once both CQEs are in. `--disable links` submits the
//!   read after the open's CQE instead.
//! - Reads: IORING_OP_READ_FIXED into registered buffers 2N and 2N+1. Should registering the
//!   buffers fail (RLIMIT_MEMLOCK), the same memory is used with IORING_OP_READ and the reason
//!   is logged; `--disable fixed-buffers` forces that path.
//! - Sockets: plain fds, IORING_OP_RECV into a per-connection head buffer, IORING_OP_SEND.
//!   With `--zerocopy`, HttpConn sends file chunks as [`Op::SendZc`]: IORING_OP_SEND_ZC
//!   straight from the registered chunk buffer (IORING_RECVSEND_FIXED_BUF with its index;
//!   plain SEND_ZC when the buffers are not registered). Its token names the connection and,
//!   in its sub-index, the send's `ZcSlot`; its result and its notification go back to HttpConn (which
//!   refills the buffer only after the notification), and the connection counts it in flight
//!   until the notification. Notifications with IORING_NOTIF_USAGE_ZC_COPIED are counted for
//!   the `stats:` line.
//! - Time: `io_uring_enter` with a timeout (EXT_ARG) wakes the loop for HttpConn's ticks.
//! - Stopping (SIGINT/SIGTERM): a graceful drain. The acceptor cancels its accept and closes
//!   the listener once it has ended (new connections are refused); every connection gets
//!   [`HttpConn::on_shutdown`] (responses in flight finish, then the connection closes); after
//!   `--shutdown-grace-ms` the rest get [`HttpConn::abort`] (their socket ops cancelled). The
//!   worker returns once every connection is freed and the accept has ended.
//!
//! Every completion goes back to HttpConn (cancel and shutdown CQEs included), which counts its
//! own operations in flight: its `Op::Close { reset }` closes the socket (abortively when
//! SEND_ZC notifications are still owed), and a connection is freed only on its `Op::Free`,
//! once nothing of it is in flight. Until then its buffers, statx struct, open_how and path
//! stay where the kernel was told they are. No count is kept here.

use std::time::{Duration, Instant};

use rustix::fd::{AsRawFd, OwnedFd};
use rustix::fs::{AtFlags, StatxFlags};
use rustix::io_uring::{open_how, IoringOp, IoringSetupFlags, IORING_NOTIF_USAGE_ZC_COPIED};
use rustix::net::SendFlags;

use ringwork_core::buf::ZcSlot;
use ringwork_core::errno::RawErrno;
use ringwork_core::httpconn::{BufIx, HttpConn, Op, SendSrc, ZC_SENDS};
use ringwork_core::slab::Slab;
use ringwork_core::token::{OpKind, Slot, Token};
use ringwork_sys::{Acceptor, FixedBuffers, Ring, RingParams, Sqe, Target};

use crate::epoll::tick_interval;
use crate::{file_info, open_flags, Shared};

struct Conn {
    http: HttpConn,
    /// The socket, until HttpConn says Close.
    sock: Option<OwnedFd>,
    recv_buf: Box<[u8]>,
    stx: Box<rustix::fs::Statx>,
    how: Box<open_how>,
    /// The buffer the read in flight writes (HttpConn keeps at most one read in flight).
    read_buf: BufIx,
    /// The open in flight asked for O_DIRECT.
    direct: bool,
    /// Without registered files: the open file's descriptor (closed by IORING_OP_CLOSE).
    file_fd: Option<i32>,
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
    /// Files open into registered-file slot N for connection slot N (else plain fds).
    fixed_files: bool,
    /// SEND_ZC with IORING_SEND_ZC_REPORT_USAGE (Linux 6.2).
    zc_report_usage: bool,
    /// HttpConn's settings for this ring (`link_open_read` where it can chain).
    http_cfg: ringwork_core::httpconn::Config,
    /// The listener and its accept (tokens of kind Accept on `Slot::WORKER`); it closes the
    /// listener once its accept has ended during a drain.
    acceptor: Acceptor,
    /// When the drain began (SIGINT/SIGTERM), and whether its grace ran out.
    stopping: Option<Instant>,
    aborted: bool,
    direct_refused: bool,
    direct_noted: bool,
}

/// Runs one worker until SIGINT/SIGTERM.
pub fn run(shared: &Shared, listener: OwnedFd) -> Result<(), String> {
    let slots = shared.max_conns;
    let uc = shared.uring;
    let (mut ring, refused) = RingParams::new(uc.sq_entries)
        .cq_entries(uc.sq_entries * 4)
        .build_server(uc.sqpoll, uc.task_run)
        .map_err(|e| format!("cannot set up io_uring: {e}"))?;
    if let Some(e) = refused {
        println!("{e}: falling back (see the io_uring: line)");
    }
    let want = uc.features;
    let (acceptor, fixed_files, links) = {
        let probe = ring.probe().map_err(|e| e.to_string())?;
        for (op, name, since) in [
            (IoringOp::Accept, "IORING_OP_ACCEPT", "5.5"),
            (IoringOp::Openat2, "IORING_OP_OPENAT2", "5.6"),
            (IoringOp::Statx, "IORING_OP_STATX", "5.6"),
            (IoringOp::Read, "IORING_OP_READ", "5.6"),
            (IoringOp::Send, "IORING_OP_SEND", "5.6"),
            (IoringOp::Recv, "IORING_OP_RECV", "5.6"),
            (IoringOp::Close, "IORING_OP_CLOSE", "5.6"),
        ] {
            probe.require(op, name, since).map_err(|e| e.to_string())?;
        }
        let acceptor = Acceptor::new(listener, Slot::WORKER, probe, want.multishot_accept);
        if shared.cfg.zerocopy {
            probe
                .require(IoringOp::SendZc, "IORING_OP_SEND_ZC (--zerocopy)", "6.0")
                .map_err(|e| e.to_string())?;
        }
        // Linked open → read from the slot the open fills needs the read's fixed file looked
        // up at issue, not at submission (Linux 5.18); 5.19's IORING_OP_SOCKET vouches.
        let deferred_file_assignment = probe.supports(IoringOp::Socket);
        if want.links && !deferred_file_assignment {
            println!(
                "{}: no linked open → read chains",
                unsupported(
                    "fixed-file assignment at issue time for linked requests",
                    "5.18"
                )
            );
        }
        (
            acceptor,
            want.fixed_files,
            want.links && deferred_file_assignment,
        )
    };
    // On 6.0 and 6.1 the flag would fail every send with EINVAL: send without it there.
    let zc_report_usage = shared.cfg.zerocopy
        && ring
            .send_zc_reports_usage()
            .map_err(|e| format!("probing IORING_SEND_ZC_REPORT_USAGE: {e}"))?;
    if shared.cfg.zerocopy && !zc_report_usage {
        println!(
            "--zerocopy: {}: zc_copied will stay 0",
            unsupported("IORING_SEND_ZC_REPORT_USAGE", "6.2")
        );
    }
    // Opening straight into a file slot is Linux 5.15, sparse tables 5.19: a refused
    // registration says which.
    let fixed_files = fixed_files
        && match ring.register_files_sparse(slots) {
            Ok(()) => true,
            Err(e) => {
                println!(
                    "registering a file table of {slots} slots failed ({e}): \
                     opening into plain descriptors"
                );
                false
            }
        };
    let count = u16::try_from(slots * 2)
        .map_err(|_| "--max-conns is at most 32767 with the io_uring backend".to_string())?;
    let buffers = FixedBuffers::new(count, shared.cfg.chunk as usize).map_err(|e| e.to_string())?;
    let total = buffers.buf_size() * usize::from(count);
    let registered: Result<(), Option<FixedBuffers>> = if !want.fixed_buffers {
        Err(Some(buffers))
    } else if !ring
        .probe()
        .map_err(|e| e.to_string())?
        .supports(IoringOp::ReadFixed)
    {
        println!(
            "{}: reading with IORING_OP_READ",
            unsupported("IORING_OP_READ_FIXED", "5.1")
        );
        Err(Some(buffers))
    } else {
        // The ring keeps the buffers only when the registration succeeds; on failure the
        // same memory is made again below, unregistered.
        ring.register_buffers(buffers).map_err(|e| {
            println!(
                "registering {} KiB of fixed buffers failed ({e}): \
                 reading with IORING_OP_READ instead of READ_FIXED",
                total / 1024
            );
            None
        })
    };
    let (fixed, unregistered, buf_ptrs) = match registered {
        Ok(()) => {
            let fb = ring.fixed_buffers().expect("just registered");
            let ptrs = (0..count)
                .map(|i| fb.ptr(ringwork_core::buf::BufId(i)))
                .collect();
            (true, None, ptrs)
        }
        Err(kept) => {
            let fb = match kept {
                Some(fb) => fb,
                None => FixedBuffers::new(count, shared.cfg.chunk as usize)
                    .map_err(|e| e.to_string())?,
            };
            let ptrs = (0..count)
                .map(|i| fb.ptr(ringwork_core::buf::BufId(i)))
                .collect();
            (false, Some(fb), ptrs)
        }
    };
    // A chain is two SQEs: a one-entry SQ cannot hold one.
    let links = links && fixed_files && ring.sq_entries() >= 2;
    let http_cfg = ringwork_core::httpconn::Config {
        link_open_read: links,
        ..shared.cfg
    };
    let yes = |on: bool| if on { "on" } else { "off" };
    let flags = ring.setup_flags();
    println!(
        "io_uring: sq={} cq={} defer_taskrun={} coop_taskrun={} sqpoll={} multishot_accept={} fixed_files={} fixed_buffers={} zerocopy={} links={}",
        ring.sq_entries(),
        ring.cq_entries(),
        yes(flags.contains(IoringSetupFlags::DEFER_TASKRUN)),
        yes(flags.contains(IoringSetupFlags::COOP_TASKRUN)),
        yes(flags.contains(IoringSetupFlags::SQPOLL)),
        yes(acceptor.multishot()),
        yes(fixed_files),
        yes(fixed),
        yes(shared.cfg.zerocopy),
        yes(links),
    );
    let mut d = Driver {
        shared,
        ring,
        conns: Slab::new(slots as usize),
        buf_ptrs,
        _unregistered: unregistered,
        fixed,
        fixed_files,
        zc_report_usage,
        http_cfg,
        acceptor,
        stopping: None,
        aborted: false,
        direct_refused: false,
        direct_noted: false,
    };
    d.acceptor
        .start(&mut d.ring)
        .map_err(|e| format!("io_uring submit: {e}"))?;
    d.report_accept();
    let result = d.run_loop();
    let rs = d.ring.stats();
    let st = &shared.stats;
    crate::Stats::add(&st.enters, rs.enters);
    crate::Stats::add(&st.cq_overflows, rs.overflow_seen);
    crate::Stats::add(&st.busy_retries, rs.busy_retries);
    result
}

impl Driver<'_> {
    fn push(&mut self, sqe: &Sqe) -> Result<(), String> {
        // SAFETY: every pointer in SQEs built by this driver points into memory that lives
        // until the CQE: the connection's boxed recv buffer, statx struct and open_how, its
        // HttpConn's path and head buffers (heap, untouched by HttpConn while the op is in
        // flight), or the chunk buffers, owned by the ring or by `_unregistered` for the
        // driver's life. A connection is freed only on HttpConn's Op::Free, which comes after
        // every completion of its ops (a SEND_ZC's notification included), and HttpConn reads
        // nothing into a chunk buffer whose SEND_ZC notifications are outstanding.
        unsafe { self.ring.push_or_submit(sqe) }.map_err(|e| format!("io_uring submit: {e}"))
    }

    /// Prints what the acceptor has to say (back-off episodes, accept fallbacks) on stderr.
    fn report_accept(&mut self) {
        for notice in self.acceptor.notices() {
            eprintln!("ringwork-files: {notice}");
        }
    }

    /// SIGINT/SIGTERM arrived: cancel the accept, and let every connection finish its
    /// response and close.
    fn begin_drain(&mut self) -> Result<(), String> {
        self.stopping = Some(Instant::now());
        self.acceptor
            .stop(&mut self.ring)
            .map_err(|e| format!("io_uring submit: {e}"))?;
        self.report_accept();
        self.each_open_conn(HttpConn::on_shutdown)
    }

    /// Calls `f` on every connection HttpConn has not closed, then performs what it queued.
    fn each_open_conn(&mut self, mut f: impl FnMut(&mut HttpConn)) -> Result<(), String> {
        for i in 0..self.conns.capacity() {
            let slot = Slot(i as u32);
            if let Some(c) = self.conns.get_mut(slot) {
                if !c.http.is_closed() {
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
                if self.conns.is_empty() && self.acceptor.is_idle() {
                    return Ok(());
                }
                if !self.aborted && since.elapsed() >= self.shared.shutdown_grace {
                    self.aborted = true;
                    self.each_open_conn(HttpConn::abort)?;
                }
            }
            // Never past the end of an accept pause.
            let wait =
                ringwork_sys::accept::timeout_until(self.acceptor.next_deadline(), Some(tick))
                    .unwrap_or(tick);
            match self.ring.submit_and_wait_timeout(1, wait) {
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
            self.acceptor
                .poll(&mut self.ring, self.conns.len())
                .map_err(|e| format!("io_uring submit: {e}"))?;
            self.report_accept();
            let now = self.shared.now();
            if now.mono_ms.saturating_sub(last_tick) >= tick.as_millis() as u64 {
                last_tick = now.mono_ms;
                self.each_open_conn(|http| http.on_tick(now))?;
            }
        }
    }

    fn on_cqe(&mut self, cqe: ringwork_sys::Cqe) -> Result<(), String> {
        let Ok(token) = Token::decode(cqe.user_data()) else {
            return Ok(());
        };
        if self.acceptor.owns(&token) {
            // The acceptor re-arms, backs off, or (draining) closes the listener itself.
            let open = self.conns.len();
            let sock = self
                .acceptor
                .on_cqe(&mut self.ring, &cqe, open)
                .map_err(|e| format!("io_uring submit: {e}"))?;
            if let Some(sock) = sock {
                if self.stopping.is_none() {
                    self.new_conn(sock)?;
                }
                // Draining: accepted before the cancel took effect; dropping it closes it.
            }
            return Ok(());
        }
        let now = self.shared.now();
        // A SEND_ZC's token names the connection, and the send in `sub`.
        let zc_slot = ZcSlot(u32::from(token.sub));
        let Some(c) = self.conns.get_checked_mut(&token) else {
            // Stale: cannot happen while slots are freed only on HttpConn's Free.
            return Ok(());
        };
        let res = cqe.result();
        match token.kind {
            OpKind::SendZc if cqe.is_notification() => {
                let st = &self.shared.stats;
                crate::Stats::add(&st.zc_notifs, 1);
                // IORING_SEND_ZC_REPORT_USAGE: bit 31 of `res` says the kernel copied after
                // all (always, on loopback).
                if cqe.res() & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                    crate::Stats::add(&st.zc_copied, 1);
                }
                c.http.on_send_notif(now, zc_slot);
            }
            OpKind::SendZc => c.http.on_send_zc(now, zc_slot, res, cqe.more()),
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
                if let (Ok(fd), false) = (res, self.fixed_files) {
                    c.file_fd = Some(fd as i32);
                }
                c.http.on_open(now, res.map(|_| ()));
            }
            OpKind::Read => {
                if res == Err(RawErrno::CANCELED) {
                    crate::Stats::add(&self.shared.stats.link_cancels, 1);
                }
                let buf = c.read_buf;
                c.http.on_read(now, buf, res);
            }
            OpKind::Close => {
                // The descriptor is gone whatever the result (close(2) never leaves it open).
                c.file_fd = None;
                c.http.on_file_closed(now)
            }
            // Whatever their results (the cancelled op reports on its own): HttpConn closes
            // the socket only once these requests that name it are done.
            OpKind::Cancel => c.http.on_cancel_done(now),
            OpKind::Shutdown => c.http.on_shutdown_done(now),
            _ => {}
        }
        self.drive(token.slot)
    }

    fn new_conn(&mut self, sock: OwnedFd) -> Result<(), String> {
        let _ = rustix::net::sockopt::set_tcp_nodelay(&sock, true);
        let cfg = self.http_cfg;
        let conn = Conn {
            http: HttpConn::new(cfg, self.shared.now()),
            sock: Some(sock),
            recv_buf: vec![0; cfg.limits.max_head_bytes + 1].into_boxed_slice(),
            stx: Box::new(zeroed_statx()),
            how: Box::new(open_how::default()),
            read_buf: BufIx(0),
            direct: false,
            file_fd: None,
        };
        // A full table: the connection is dropped (its socket closed) at once.
        match self.conns.insert(conn) {
            Some((slot, _)) => self.drive(slot),
            None => Ok(()),
        }
    }

    /// Turns the connection's queued operations into SQEs; frees it when HttpConn says. An
    /// [`Op::Open`] with `link_next` goes in one IOSQE_IO_LINK chain with the op after it
    /// (its first read): HttpConn decides what is chained, this only submits it.
    fn drive(&mut self, slot: Slot) -> Result<(), String> {
        loop {
            let Some(c) = self.conns.get_mut(slot) else {
                return Ok(());
            };
            let Some(op) = c.http.poll_op() else {
                return Ok(());
            };
            if op == Op::Free {
                // Nothing of it is in flight: its memory may go (the socket was closed by
                // Op::Close, the file slot by Op::CloseFile).
                self.conns.remove(slot);
                return Ok(());
            }
            let link = matches!(
                op,
                Op::Open {
                    link_next: true,
                    ..
                }
            );
            let Some(first) = self.build_sqe(slot, op) else {
                continue;
            };
            if !link {
                self.push(&first)?;
                continue;
            }
            // Guard: HttpConn queues the linked read right behind its open.
            let next = self.conns.get_mut(slot).and_then(|c| c.http.poll_op());
            let Some(second) = next.and_then(|op| self.build_sqe(slot, op)) else {
                unreachable!("an open with link_next is followed by its read")
            };
            // SAFETY: as in `push`: the read's buffer is a chunk buffer that lives as long as
            // the driver, and the open's path and open_how live in the connection, which is
            // freed only after both CQEs (`inflight` counts each).
            unsafe { self.ring.push_chain_or_submit(&[first, second], false) }
                .map_err(|e| format!("io_uring submit: {e}"))?;
        }
    }

    /// The SQE (user_data set) for `op` of connection `slot`; `None` for [`Op::Close`], which
    /// closes the socket here and now.
    fn build_sqe(&mut self, slot: Slot, op: Op) -> Option<Sqe> {
        let fixed = self.fixed;
        let fixed_files = self.fixed_files;
        let root = self.shared.root.as_raw_fd();
        let generation = self.conns.generation(slot);
        let c = self.conns.get_mut(slot)?;
        // HttpConn emits nothing after Close, and only Close takes the socket.
        let sock = Target::Fd(c.sock.as_ref().map_or(-1, |s| s.as_raw_fd()));
        let (kind, sqe) = match op {
            Op::SendZc {
                buf,
                start,
                len,
                slot: zc,
            } => {
                let index = slot.0 as usize * 2 + usize::from(buf.0);
                let ptr = self.buf_ptrs[index].wrapping_add(start as usize);
                // Straight from the registered chunk buffer when there is one
                // (IORING_RECVSEND_FIXED_BUF: no page pinning per send).
                let fixed_buf = fixed.then_some(index as u16);
                let sqe = Sqe::send_zc(sock, ptr, len, self.zc_report_usage, fixed_buf)
                    .send_flags(SendFlags::NOSIGNAL);
                // `sub` names the send, so that its notification finds it (HttpConn's slots are
                // below ZC_SENDS).
                debug_assert!(zc.0 < ZC_SENDS);
                let token = Token::new(OpKind::SendZc, slot, generation).with_sub(zc.0 as u16);
                return Some(sqe.user_data(token.encode()));
            }
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
                let mask =
                    StatxFlags::TYPE | StatxFlags::SIZE | StatxFlags::MTIME | StatxFlags::DIOALIGN;
                let stx: *mut rustix::fs::Statx = &mut *c.stx;
                let path = c.http.path().as_ptr();
                (
                    OpKind::Statx,
                    Sqe::statx(root, path, AtFlags::empty(), mask, stx),
                )
            }
            Op::Open { direct, .. } => {
                crate::note_direct(&mut self.direct_noted, self.shared.cfg.direct, direct);
                let (mut flags, resolve) = open_flags(direct);
                if fixed_files {
                    // A direct descriptor has no close-on-exec bit; the kernel refuses
                    // O_CLOEXEC with a file slot (EINVAL).
                    flags -= rustix::fs::OFlags::CLOEXEC;
                }
                c.direct = direct;
                *c.how = open_how::default();
                c.how.flags = u64::from(flags.bits());
                c.how.resolve = resolve;
                let how: *const open_how = &*c.how;
                let path = c.http.path().as_ptr();
                let file_slot = fixed_files.then_some(slot.0);
                (OpKind::Open, Sqe::openat2(root, path, how, file_slot))
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
                let file = file_target(fixed_files, slot, c.file_fd);
                let sqe = if fixed {
                    Sqe::read_fixed(file, ptr, len, offset, index as u16)
                } else {
                    Sqe::read(file, ptr, len, offset)
                };
                (OpKind::Read, sqe)
            }
            Op::CloseFile => (
                OpKind::Close,
                Sqe::close(file_target(fixed_files, slot, c.file_fd)),
            ),
            // Before Linux 5.19 no cancel takes a descriptor: cancel the receive (what an
            // idle keep-alive connection waits in) by its user_data.
            // TODO(integrator): a send in flight is then not cancelled; HttpConn would have
            // to say which socket operation is in flight for the driver to name it.
            Op::Cancel if !self.ring.can_cancel_fd() => (
                OpKind::Cancel,
                Sqe::cancel(Token::new(OpKind::Recv, slot, generation).encode()),
            ),
            Op::Cancel => (OpKind::Cancel, Sqe::cancel_fd(sock)),
            Op::Shutdown => (OpKind::Shutdown, Sqe::shutdown(sock, 1)),
            Op::Close { reset } => {
                // Nothing names the socket any more (HttpConn waited for its cancel and
                // shutdown CQEs): dropping it closes it. With `reset`, SEND_ZC notifications
                // are owed and bytes of ours still queued hold them back (a peer that does
                // not read may never take them): SO_LINGER 0 makes the close a reset, so the
                // kernel drops them and the notifications come. The chunk buffers stay
                // untouched until Op::Free.
                if let Some(sock) = c.sock.take() {
                    if reset {
                        let _ =
                            rustix::net::sockopt::set_socket_linger(&sock, Some(Duration::ZERO));
                    }
                }
                return None;
            }
            Op::Free => unreachable!("drive frees the connection itself"),
        };
        Some(sqe.user_data(Token::new(kind, slot, generation).encode()))
    }
}

/// The open file of connection `slot`: its registered-file slot, or its descriptor.
fn file_target(fixed_files: bool, slot: Slot, fd: Option<i32>) -> Target {
    match (fixed_files, fd) {
        (true, _) => Target::Fixed(slot.0),
        // HttpConn reads and closes only after a successful open, which set the fd.
        (false, fd) => Target::Fd(fd.expect("the open succeeded before any read or close")),
    }
}

/// "FEATURE needs Linux X; this kernel is Y", the same words as sys's errors.
fn unsupported(feature: &'static str, since: &'static str) -> String {
    ringwork_sys::Error::unsupported(feature, since).to_string()
}

fn zeroed_statx() -> rustix::fs::Statx {
    // SAFETY: `struct statx` is integers and padding only; all-zero is a valid value (it is
    // what the kernel's own `memset` before filling it produces).
    unsafe { core::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    use ringwork_sys::Cqe;
    use rustix::io_uring::IoringCqeFlags;

    const CHUNK: u32 = 4096;

    fn shared() -> Shared {
        let root = rustix::fs::open(
            std::env::temp_dir(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        Shared {
            root,
            cfg: ringwork_core::httpconn::Config {
                chunk: CHUNK,
                zerocopy: true,
                ..ringwork_core::httpconn::Config::default()
            },
            max_conns: 1,
            uring: crate::UringConfig::default(),
            shutdown_grace: Duration::from_secs(1),
            start: Instant::now(),
            stats: crate::Stats::default(),
        }
    }

    /// A driver on a real ring whose SQEs are never submitted: the test plays the kernel by
    /// feeding completions to `on_cqe` itself, in orders the kernel may choose.
    fn driver(shared: &Shared) -> Driver<'_> {
        let ring = RingParams::new(256).build().unwrap();
        let buffers = FixedBuffers::new(2, CHUNK as usize).unwrap();
        let buf_ptrs = (0..2)
            .map(|i| buffers.ptr(ringwork_core::buf::BufId(i)))
            .collect();
        Driver {
            shared,
            ring,
            conns: Slab::new(1),
            buf_ptrs,
            _unregistered: Some(buffers),
            fixed: false,
            fixed_files: true,
            multishot_accept: false,
            zc_report_usage: false,
            http_cfg: shared.cfg,
            listener: None,
            accept_armed: false,
            stopping: None,
            aborted: false,
            direct_refused: false,
            direct_noted: false,
        }
    }

    fn cqe(kind: OpKind, sub: u16, res: i32, flags: IoringCqeFlags) -> Cqe {
        Cqe {
            user_data: Token::new(kind, Slot(0), Generation::ZERO)
                .with_sub(sub)
                .encode(),
            res,
            flags,
        }
    }

    fn done(kind: OpKind, res: i32) -> Cqe {
        cqe(kind, 0, res, IoringCqeFlags::empty())
    }

    /// SEND_ZC's notification may come before its result (the kernel promises no order, and
    /// core's ZcTracker accepts both). The driver counted notifications owed by hand:
    /// `notifs_owed -= 1` on a notification that came first underflowed. Now HttpConn counts
    /// its own operations, and the connection is freed exactly when its last completion is in.
    #[test]
    fn a_send_zc_notification_before_its_result_frees_the_connection_once_all_are_in() {
        let shared = shared();
        let mut d = driver(&shared);
        let (sock, _peer) = UnixStream::pair().unwrap();
        d.new_conn(OwnedFd::from(sock)).unwrap();
        // The request, received; `Connection: close` makes the connection end after it.
        let req = b"GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        d.conns.get_mut(Slot(0)).unwrap().recv_buf[..req.len()].copy_from_slice(req);
        d.on_cqe(done(OpKind::Recv, req.len() as i32)).unwrap();
        // A regular file of one chunk.
        {
            let stx = &mut d.conns.get_mut(Slot(0)).unwrap().stx;
            stx.stx_mode = 0o100644;
            stx.stx_size = u64::from(CHUNK);
        }
        d.on_cqe(done(OpKind::Statx, 0)).unwrap();
        d.on_cqe(done(OpKind::Open, 0)).unwrap();
        let head = d.conns.get(Slot(0)).unwrap().http.head_bytes().len();
        d.on_cqe(done(OpKind::Send, head as i32)).unwrap();
        d.on_cqe(done(OpKind::Read, CHUNK as i32)).unwrap();
        // The chunk goes by SEND_ZC in the tracker's first slot; its notification first.
        d.on_cqe(cqe(OpKind::SendZc, 0, 0, IoringCqeFlags::NOTIF))
            .unwrap();
        d.on_cqe(cqe(OpKind::SendZc, 0, CHUNK as i32, IoringCqeFlags::MORE))
            .unwrap();
        // The response is out: the file closes, the send side shuts down, and the client's
        // end of stream is awaited.
        d.on_cqe(done(OpKind::Close, 0)).unwrap();
        d.on_cqe(done(OpKind::Recv, 0)).unwrap();
        assert!(
            d.conns.get(Slot(0)).is_some(),
            "freed with the shutdown's completion still to come"
        );
        d.on_cqe(done(OpKind::Shutdown, 0)).unwrap();
        assert!(d.conns.is_empty(), "not freed after its last completion");
    }
}
