//! The layer under the worker loop: an io_uring echo server driven by hand on the public
//! ringwork-sys and ringwork-core API, no `unsafe`. Start with `echo` (the same server on
//! `ringwork_sys::worker`); read this when you need the ring itself.
//!
//! `cargo run -p ringwork-examples --bin echo-ring -- 127.0.0.1:7879`, then
//! `nc 127.0.0.1 7879`.
//!
//! What it shows, in the order a server needs it: a ring, the shared acceptor (multishot
//! accept, re-armed when it ends, backing off when descriptors run out), receives into a
//! provided buffer ring (no buffer per connection), and `ProtocolConn<Echo>`, core's
//! connection machine running the echo protocol, deciding everything else: when to re-arm a
//! receive, what to send (a received buffer itself, or bytes it owns), when a buffer goes
//! back, when a connection may be freed. The loop only maps its operations to safe SQEs and
//! completions back to events, and shows the machine each receive's bytes. `ringwork_sys::worker` is this plus zero-copy sends, bundles,
//! incremental buffers, batching, SQPOLL, an epoll backend, several threads and a graceful
//! shutdown.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use ringwork_core::accept::timeout_until;
use ringwork_core::buf::{BufGroup, RecvBuffers, RecvMode};
use ringwork_core::conn::{Event, Op, Starved, StreamMachine};
use ringwork_core::protocol::{Echo, Limits, ProtocolConn};
use ringwork_core::slab::Slab;
use ringwork_core::token::{OpKind, Slot, Token};
use ringwork_sys::accept::AcceptMode;
use ringwork_sys::net::SocketMode;
use ringwork_sys::{
    driver, Acceptor, BufRingHandle, Cqe, OpMemory, RingParams, SafeSqe, SendFlags, Target,
};

const GROUP: BufGroup = BufGroup(0);
const BUFFERS: u16 = 256;
const BUFFER_SIZE: u32 = 4096;
const MAX_CONNS: usize = 1024;

struct Conn {
    sock: Option<OwnedFd>,
    fd: RawFd,
    machine: ProtocolConn<Echo>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:7879")
        .parse()?;
    let listener = ringwork_sys::net::listener(addr, SocketMode::Blocking)?;
    println!(
        "echo listening on {}",
        ringwork_sys::net::local_addr(&listener)?
    );
    let mut ring = RingParams::new(256).build()?;
    let mut acceptor = Acceptor::new(listener, Slot::WORKER, ring.probe()?, AcceptMode::Multishot);
    // The handle finds the buffers again, on this ring, without an Option.
    let bufs = ring.register_buf_ring(GROUP, BUFFERS, BUFFER_SIZE)?;
    let mut recv = RecvBuffers::new(BUFFERS, BUFFER_SIZE, RecvMode::Whole);
    let mut starved = Starved::new(MAX_CONNS);
    let mut conns: Slab<Conn> = Slab::new(MAX_CONNS);
    acceptor.start(&mut ring)?;
    let (mut cqes, mut events, mut woken) = (Vec::new(), Vec::new(), Vec::new());
    // The acceptor reads no clock: the loop reads one, once per turn, and hands it the time.
    let epoch = Instant::now();
    let mut now_ms = 0;
    loop {
        // Wake in time to end an accept pause (none is due most of the time).
        match timeout_until(acceptor.next_deadline_ms(), now_ms, None) {
            Some(t) => ring.submit_and_wait_timeout(1, t)?,
            None => ring.submit_and_wait(1)?,
        };
        now_ms = epoch.elapsed().as_millis() as u64;
        cqes.clear();
        cqes.extend(ring.completions());
        for cqe in cqes.iter_mut() {
            let Ok(token) = Token::decode(cqe.user_data()) else {
                continue;
            };
            if acceptor.owns(&token) {
                if let Some(sock) = acceptor.on_cqe(&mut ring, cqe, conns.len(), now_ms)? {
                    let fd = sock.as_raw_fd();
                    let machine = ProtocolConn::new(Echo, Limits::default());
                    if let Some((slot, generation)) = conns.insert(Conn {
                        sock: Some(sock),
                        fd,
                        machine,
                    }) {
                        events.push((Token::new(OpKind::Recv, slot, generation), Event::Opened));
                    } // else: the table is full, and dropping the socket closed it.
                }
                continue;
            }
            if conns.get_checked(&token).is_none() {
                // A late completion of a freed connection: its buffer goes straight back.
                if let Some(selected) = cqe.take_buffer() {
                    ring.bufs(bufs)
                        .return_recv(&mut recv, selected, cqe.more())?;
                }
                continue;
            }
            completion_events(&mut ring, bufs, &mut recv, cqe, token, &mut events)?;
        }
        // Buffers back, and connections that waited for them woken.
        ring.publish_buffers(GROUP)?;
        let can_rearm = ring.bufs(bufs).book().can_rearm();
        starved.wake(can_rearm, &mut woken);
        events.extend(woken.drain(..).map(|t| (t, Event::BuffersAvailable)));
        for (token, event) in events.drain(..) {
            let Some(conn) = conns.get_checked_mut(&token) else {
                // Freed since: a buffer it was handed goes back.
                if let Event::Recv { buf, .. } = event {
                    ring.bufs(bufs).recycle_recv(&mut recv, buf)?;
                }
                continue;
            };
            let br = ring.bufs(bufs);
            let fed = match event {
                // The machine reads what it received, here and now: the buffer is the ring's.
                Event::Recv {
                    buf, offset, len, ..
                } => {
                    let bytes = br.piece_bytes(&recv, buf, offset, len);
                    conn.machine.on_received(event, bytes)
                }
                event => conn.machine.on_event(event),
            };
            if fed.is_err() {
                continue; // an event the machine refuses is a bug it reports; carry on
            }
            while let Some(conn) = conns.get_checked_mut(&token) {
                let Some(op) = conn.machine.poll_op() else {
                    break;
                };
                let free = op == Op::Free;
                let sqe = sqe_for(&mut ring, bufs, &mut recv, &mut starved, token, conn, op)?;
                if let Some(sqe) = sqe {
                    ring.push_safe(sqe)?;
                } else if free {
                    conns.remove(token.slot);
                }
            }
        }
        acceptor.poll(&mut ring, conns.len(), now_ms)?;
        for notice in acceptor.notices() {
            eprintln!("echo: {notice}");
        }
    }
}

/// The SQE for one of connection `token`'s operations; `None` for those done here (a
/// buffer back to the ring, a wait for buffers) and for `Free`, which the caller does.
fn sqe_for(
    ring: &mut ringwork_sys::Ring,
    bufs: BufRingHandle,
    recv: &mut RecvBuffers,
    starved: &mut Starved,
    token: Token,
    conn: &mut Conn,
    op: Op,
) -> ringwork_sys::Result<Option<SafeSqe>> {
    let (target, ud) = (Target::Fd(conn.fd), |kind| token.with_kind(kind).encode());
    let sqe = match op {
        Op::ArmRecv => SafeSqe::recv_select(target, GROUP, true).user_data(ud(OpKind::Recv)),
        Op::Send { buf, offset, len } => ring
            .send_provided(target, GROUP, buf, offset, len)?
            .send_flags(SendFlags::NOSIGNAL)
            .user_data(ud(OpKind::Send)),
        // Bytes the machine owns (forwarded bytes it had to copy): the ring holds them until
        // the completion hands them back.
        Op::SendOwned { data, offset } => SafeSqe::send_bytes(target, data, offset as usize)
            .send_flags(SendFlags::NOSIGNAL)
            .user_data(ud(OpKind::SendOwned)),
        Op::Recycle(buf) => {
            ring.bufs(bufs).recycle_recv(recv, buf)?;
            return Ok(None);
        }
        Op::AwaitBuffers => {
            starved.wait(token);
            return Ok(None);
        }
        Op::CancelRecv => SafeSqe::cancel(ud(OpKind::Recv)).user_data(ud(OpKind::Cancel)),
        Op::CancelAll => {
            let sock = conn.sock.as_ref().expect("cancelled before the close");
            driver::cancel_socket_ops(ring, sock.as_fd()).user_data(ud(OpKind::Cancel))
        }
        Op::Close => {
            let sock = conn.sock.take().expect("closed once");
            SafeSqe::close(sock).user_data(ud(OpKind::Close))
        }
        Op::Free => return Ok(None),
    };
    Ok(Some(sqe))
}

/// The events one connection completion brings (a receive may bring none: a stale buffer).
fn completion_events(
    ring: &mut ringwork_sys::Ring,
    bufs: BufRingHandle,
    recv: &mut RecvBuffers,
    cqe: &mut Cqe,
    token: Token,
    events: &mut Vec<(Token, Event)>,
) -> ringwork_sys::Result<()> {
    let more = cqe.more();
    let event = match (token.kind, cqe.result()) {
        (OpKind::Recv, Ok(n)) if n > 0 => {
            let Some(selected) = cqe.take_buffer() else {
                return Ok(());
            };
            ring.bufs(bufs).take_recv(recv, selected, more, |p| {
                let (buf, offset, len, more) = (p.buf, p.offset, p.len, p.more);
                events.push((
                    token,
                    Event::Recv {
                        buf,
                        offset,
                        len,
                        more,
                    },
                ));
            })?;
            return Ok(());
        }
        (OpKind::Recv, Ok(_)) => Event::RecvEof { more },
        (OpKind::Recv, Err(errno)) => Event::RecvErr { errno, more },
        (OpKind::Send, res) => Event::SendDone { res },
        (OpKind::SendOwned, res) => match ring.take_memory(cqe.user_data()) {
            Some(OpMemory::Out(data)) => Event::SendOwnedDone { res, data },
            _ => return Ok(()), // cannot happen: every owned send files its bytes
        },
        (OpKind::Cancel, _) => Event::CancelDone,
        (OpKind::Close, _) => Event::Closed,
        _ => return Ok(()),
    };
    events.push((token, event));
    Ok(())
}
