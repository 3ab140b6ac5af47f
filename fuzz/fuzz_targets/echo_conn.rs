//! Arbitrary event sequences into the echo connection state machine, including ones no kernel
//! would produce. Impossible events must be refused (an error), never panic, and whatever is
//! accepted keeps the invariants: one send in flight at most, and only of a buffer the
//! connection holds; Close at most once and only with nothing else in flight; Free at most
//! once, only after Closed, with every buffer recycled; every buffer recycled at most once;
//! AwaitBuffers only while no recv is armed. Receive buffers come from a model ring (a receive
//! only while one is free, as the kernel hands out only published buffers) and the chunk table
//! is sized to that ring, as the drivers size it: however many receives land after a
//! backpressure cancel, it never fills (no `QueueOverflow`).
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::buf::BufId;
use ringwork_core::conn::{ChunkQueues, CloseReason, Config, EchoConn, Event, Op};
use ringwork_core::errno::RawErrno;

#[derive(Arbitrary, Debug)]
enum Ev {
    Opened,
    Recv { len: u16, more: bool },
    RecvEof { more: bool },
    RecvErr { errno: u8, more: bool },
    BuffersAvailable,
    SendDone { ok: bool, n: u32, errno: u8 },
    CancelDone,
    Closed,
    Shutdown,
    Abort,
}

fuzz_target!(|input: (u8, u8, Vec<Ev>)| {
    let (max_queued, log2_ring, events) = input;
    let max_queued = 1 + usize::from(max_queued) % 16;
    let ring = 1u16 << (log2_ring % 6);
    let mut queues = ChunkQueues::new(usize::from(ring));
    let mut conn = EchoConn::new(Config { max_queued });
    // The model ring: buffers the kernel may fill, and those the connection holds.
    let mut free: Vec<BufId> = (0..ring).rev().map(BufId).collect();
    let mut held: HashSet<BufId> = HashSet::new();
    let (mut closes, mut frees, mut sends_in_flight) = (0, 0, 0i32);
    for ev in events.into_iter().take(512) {
        let event = match ev {
            Ev::Opened => Event::Opened,
            Ev::Recv { len, more } => {
                // An empty ring answers ENOBUFS instead.
                let Some(&buf) = free.last() else { continue };
                Event::Recv {
                    buf,
                    offset: 0,
                    len: u32::from(len).max(1),
                    more,
                }
            }
            Ev::RecvEof { more } => Event::RecvEof { more },
            Ev::RecvErr { errno, more } => Event::RecvErr {
                errno: RawErrno(i32::from(errno)),
                more,
            },
            Ev::BuffersAvailable => Event::BuffersAvailable,
            Ev::SendDone { ok, n, errno } => Event::SendDone {
                res: if ok {
                    Ok(n % 70_000)
                } else {
                    Err(RawErrno(i32::from(errno)))
                },
            },
            Ev::CancelDone => Event::CancelDone,
            Ev::Closed => Event::Closed,
            Ev::Shutdown => Event::Shutdown,
            Ev::Abort => Event::Abort,
        };
        if conn.on_event(&mut queues, event.clone()).is_err() {
            // Refused: a received buffer stays the driver's, which gives it back.
            continue;
        }
        if let Event::Recv { buf, .. } = event {
            free.pop();
            held.insert(buf);
        }
        if matches!(event, Event::SendDone { .. }) {
            sends_in_flight -= 1;
        }
        while let Some(op) = conn.poll_op(&mut queues) {
            match op {
                Op::Send { buf, .. } => {
                    sends_in_flight += 1;
                    assert!(sends_in_flight <= 1, "two sends in flight");
                    assert!(held.contains(&buf), "send of a buffer not held");
                }
                Op::Recycle(b) => {
                    assert!(
                        held.remove(&b),
                        "buffer {b:?} recycled twice or never received"
                    );
                    free.push(b);
                }
                Op::AwaitBuffers => assert!(!conn.recv_armed(), "waits for buffers while armed"),
                Op::Close => {
                    closes += 1;
                    assert_eq!(closes, 1, "closed twice");
                    assert_eq!(conn.in_flight(), 1, "close issued with other ops in flight");
                }
                Op::Free => {
                    frees += 1;
                    assert_eq!(frees, 1, "freed twice");
                    assert_eq!(conn.in_flight(), 0, "freed with ops in flight");
                    assert!(held.is_empty(), "freed holding buffers");
                }
                Op::ArmRecv | Op::CancelRecv | Op::CancelAll => {}
                Op::SendOwned { .. } => panic!("echo sends only the bytes it received"),
            }
        }
        assert_eq!(
            queues.in_use(),
            conn.queued_buffers(),
            "chunks lost in the table"
        );
        assert_ne!(
            conn.close_reason(),
            Some(CloseReason::QueueOverflow),
            "a ring-sized table filled"
        );
    }
});
