//! The epoll driver: performs HttpConn's operations with nonblocking syscalls.
//!
//! Sockets are edge-triggered (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET): a receive or send
//! that meets EAGAIN waits for the next edge; everything else (statx, openat2, pread, close)
//! runs synchronously and its completion is fed straight back. Timeouts come from
//! `epoll_wait`'s timeout plus a tick over all connections.

use std::ffi::CStr;
use std::time::Duration;

use ringwork_core::errno::RawErrno;
use ringwork_core::httpconn::{HttpConn, Op, SendSrc};
use ringwork_core::slab::Slab;
use ringwork_core::token::Slot;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode, StatxFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use crate::{file_info, open_flags, Shared};

/// Page alignment for O_DIRECT buffers.
const ALIGN: usize = 4096;

/// A buffer whose usable part starts at a page boundary (for O_DIRECT preads).
struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let mem = vec![0u8; len + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        Self { mem, start, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

struct Conn {
    http: HttpConn,
    sock: OwnedFd,
    file: Option<OwnedFd>,
    bufs: [AlignedBuf; 2],
    recv_buf: Vec<u8>,
    /// A receive waiting for EPOLLIN (its `max`).
    pending_recv: Option<u32>,
    /// A send waiting for EPOLLOUT.
    pending_send: Option<SendSrc>,
    closed: bool,
}

/// Whether this thread has said that O_DIRECT is in use (0) or was refused (1).
#[derive(Default)]
struct DirectLog(bool, bool);

fn raw(e: Errno) -> RawErrno {
    RawErrno(e.raw_os_error())
}

fn key(slot: Slot, generation: u32) -> u64 {
    // 0 is the listener; connections are slot + 1 with their generation above.
    (u64::from(generation) << 32) | (u64::from(slot.0) + 1)
}

/// Runs one worker until SIGINT/SIGTERM.
pub fn run(shared: &Shared, listener: OwnedFd) -> Result<(), String> {
    let ep =
        epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll_create: {e}"))?;
    epoll::add(
        &ep,
        &listener,
        EventData::new_u64(0),
        EventFlags::IN | EventFlags::ET,
    )
    .map_err(|e| format!("epoll_ctl(listener): {e}"))?;
    let mut conns: Slab<Conn> = Slab::new(shared.max_conns as usize);
    let mut events = Vec::with_capacity(256);
    let tick = tick_interval(shared);
    let ts = rustix::time::Timespec {
        tv_sec: tick.as_secs() as i64,
        tv_nsec: i64::from(tick.subsec_nanos()),
    };
    let mut last_tick = shared.now().mono_ms;
    let mut direct_log = DirectLog::default();
    while !ringwork_sys::signal::stop_requested() {
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        for ev in events.iter() {
            let k = ev.data.u64();
            if k == 0 {
                accept_all(shared, &ep, &listener, &mut conns, &mut direct_log);
                continue;
            }
            let slot = Slot((k & 0xffff_ffff) as u32 - 1);
            let generation = (k >> 32) as u32;
            if conns.generation(slot).get() != generation {
                continue;
            }
            let Some(c) = conns.get_mut(slot) else {
                continue;
            };
            let flags = ev.flags;
            let gone = flags.intersects(EventFlags::ERR | EventFlags::HUP);
            if flags.intersects(EventFlags::IN | EventFlags::RDHUP) || gone {
                if let Some(max) = c.pending_recv.take() {
                    do_recv(shared, c, max);
                }
            }
            if flags.contains(EventFlags::OUT) || gone {
                if let Some(src) = c.pending_send.take() {
                    do_send(shared, c, src);
                }
            }
            drive(shared, c, &mut direct_log);
            if c.closed {
                conns.remove(slot);
            }
        }
        let now = shared.now();
        if now.mono_ms.saturating_sub(last_tick) >= tick.as_millis() as u64 {
            last_tick = now.mono_ms;
            for i in 0..conns.capacity() {
                let slot = Slot(i as u32);
                if let Some(c) = conns.get_mut(slot) {
                    c.http.on_tick(now);
                    drive(shared, c, &mut direct_log);
                    if c.closed {
                        conns.remove(slot);
                    }
                }
            }
        }
    }
    Ok(())
}

/// A tenth of the shortest timeout, between 5 ms and 100 ms.
pub fn tick_interval(shared: &Shared) -> Duration {
    let shortest = shared.cfg.header_timeout_ms.min(shared.cfg.idle_timeout_ms);
    Duration::from_millis((shortest / 10).clamp(5, 100))
}

fn accept_all(
    shared: &Shared,
    ep: &OwnedFd,
    listener: &OwnedFd,
    conns: &mut Slab<Conn>,
    direct_log: &mut DirectLog,
) {
    loop {
        let sock = match rustix::net::accept_with(
            listener,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        ) {
            Ok(s) => s,
            Err(Errno::AGAIN) => return,
            // ECONNABORTED, EMFILE...: try again at the next edge.
            Err(_) => return,
        };
        let _ = rustix::net::sockopt::set_tcp_nodelay(&sock, true);
        let chunk = shared.cfg.chunk as usize;
        let conn = Conn {
            http: HttpConn::new(shared.cfg, shared.now()),
            sock,
            file: None,
            bufs: [AlignedBuf::new(chunk), AlignedBuf::new(chunk)],
            recv_buf: vec![0; shared.cfg.limits.max_head_bytes + 1],
            pending_recv: None,
            pending_send: None,
            closed: false,
        };
        // A full table drops the connection (closing its socket).
        let Some((slot, generation)) = conns.insert(conn) else {
            continue;
        };
        let c = conns.get_mut(slot).expect("just inserted");
        let data = EventData::new_u64(key(slot, generation.get()));
        let interest = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET;
        if epoll::add(ep, &c.sock, data, interest).is_err() {
            conns.remove(slot);
            continue;
        }
        drive(shared, c, direct_log);
        if c.closed {
            conns.remove(slot);
        }
    }
}

fn do_recv(shared: &Shared, c: &mut Conn, max: u32) {
    let max = (max as usize).min(c.recv_buf.len());
    match rustix::net::recv(&c.sock, &mut c.recv_buf[..max], RecvFlags::empty()) {
        Ok((n, _)) => c.http.on_recv(shared.now(), Ok(&c.recv_buf[..n])),
        Err(Errno::AGAIN) => c.pending_recv = Some(max as u32),
        Err(e) => c.http.on_recv(shared.now(), Err(raw(e))),
    }
}

fn do_send(shared: &Shared, c: &mut Conn, src: SendSrc) {
    let bytes = match src {
        SendSrc::Head { start, len } => {
            &c.http.head_bytes()[start as usize..(start + len) as usize]
        }
        SendSrc::Buf { buf, start, len } => {
            &c.bufs[usize::from(buf.0)].bytes()[start as usize..(start + len) as usize]
        }
    };
    match rustix::net::send(&c.sock, bytes, SendFlags::NOSIGNAL) {
        Ok(n) => c.http.on_send(shared.now(), Ok(n as u32)),
        Err(Errno::AGAIN) => c.pending_send = Some(src),
        Err(e) => c.http.on_send(shared.now(), Err(raw(e))),
    }
}

/// Performs every operation the connection has queued.
fn drive(shared: &Shared, c: &mut Conn, direct_log: &mut DirectLog) {
    while let Some(op) = c.http.poll_op() {
        match op {
            Op::Recv { max } => do_recv(shared, c, max),
            Op::Send(src) => do_send(shared, c, src),
            Op::Stat => {
                let res = CStr::from_bytes_with_nul(c.http.path())
                    .map_err(|_| RawErrno::INVAL)
                    .and_then(|path| {
                        rustix::fs::statx(
                            &shared.root,
                            path,
                            AtFlags::empty(),
                            StatxFlags::TYPE
                                | StatxFlags::SIZE
                                | StatxFlags::MTIME
                                | StatxFlags::DIOALIGN,
                        )
                        .map_err(raw)
                    });
                c.http.on_stat(shared.now(), res.map(|s| file_info(&s)));
            }
            Op::Open { direct } => {
                crate::note_direct(&mut direct_log.0, shared.cfg.direct, direct);
                let (flags, resolve) = open_flags(direct);
                // Nonblocking: should the path have become a FIFO since the stat, the open
                // must not block this thread (pread ignores O_NONBLOCK on regular files).
                let flags = flags | rustix::fs::OFlags::NONBLOCK;
                let res = CStr::from_bytes_with_nul(c.http.path())
                    .map_err(|_| RawErrno::INVAL)
                    .and_then(|path| {
                        rustix::fs::openat2(&shared.root, path, flags, Mode::empty(), resolve)
                            .map_err(raw)
                    });
                if direct && res.as_ref().err() == Some(&RawErrno::INVAL) && !direct_log.1 {
                    direct_log.1 = true;
                    println!("O_DIRECT open refused by the file system (EINVAL): serving buffered");
                }
                c.http.on_open(
                    shared.now(),
                    res.map(|fd| {
                        c.file = Some(fd);
                    }),
                );
            }
            Op::Read {
                buf,
                offset,
                len,
                buf_pos,
            } => {
                let res = match &c.file {
                    Some(file) => {
                        let b = &mut c.bufs[usize::from(buf.0)].bytes_mut()
                            [buf_pos as usize..(buf_pos + len) as usize];
                        rustix::io::pread(file, b, offset)
                            .map(|n| n as u32)
                            .map_err(raw)
                    }
                    None => Err(RawErrno::BADF),
                };
                c.http.on_read(shared.now(), buf, res);
            }
            Op::CloseFile => {
                c.file = None;
                c.http.on_file_closed(shared.now());
            }
            Op::Cancel => {
                let now = shared.now();
                if c.pending_recv.take().is_some() {
                    c.http.on_recv(now, Err(RawErrno::CANCELED));
                }
                if c.pending_send.take().is_some() {
                    c.http.on_send(now, Err(RawErrno::CANCELED));
                }
            }
            Op::Shutdown => {
                let _ = rustix::net::shutdown(&c.sock, rustix::net::Shutdown::Write);
            }
            Op::Close => c.closed = true,
        }
    }
}
