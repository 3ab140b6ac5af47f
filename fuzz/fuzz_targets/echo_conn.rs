//! Arbitrary event sequences into the echo connection state machine, including ones no kernel
//! would produce. Impossible events must be refused (an error), never panic, and whatever is
//! accepted keeps the invariants: one send in flight at most, Close at most once and only with
//! nothing in flight, Free at most once and only after Closed, every buffer recycled at most
//! once.
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::buf::BufId;
use ringwork_core::conn::{Config, EchoConn, Event, Op};
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
}

fuzz_target!(|input: (u8, Vec<Ev>)| {
    let (max_queued, events) = input;
    let max_queued = 1 + usize::from(max_queued) % 8;
    let mut conn = EchoConn::new(Config { max_queued });
    let mut next_buf = 0u16;
    let mut recycled = HashSet::new();
    let mut handed_out = HashSet::new();
    let (mut closes, mut frees, mut sends_in_flight) = (0, 0, 0i32);
    for ev in events.into_iter().take(512) {
        let event = match ev {
            Ev::Opened => Event::Opened,
            Ev::Recv { len, more } => {
                let buf = BufId(next_buf);
                next_buf = next_buf.wrapping_add(1);
                Event::Recv { buf, offset: 0, len: u32::from(len).max(1), more }
            }
            Ev::RecvEof { more } => Event::RecvEof { more },
            Ev::RecvErr { errno, more } => Event::RecvErr { errno: RawErrno(i32::from(errno)), more },
            Ev::BuffersAvailable => Event::BuffersAvailable,
            Ev::SendDone { ok, n, errno } => Event::SendDone {
                res: if ok { Ok(n % 70_000) } else { Err(RawErrno(i32::from(errno))) },
            },
            Ev::CancelDone => Event::CancelDone,
            Ev::Closed => Event::Closed,
            Ev::Shutdown => Event::Shutdown,
        };
        let was_send = matches!(event, Event::SendDone { .. });
        let buf = match event {
            Event::Recv { buf, .. } => Some(buf),
            _ => None,
        };
        let Ok(actions) = conn.on_event(event) else { continue };
        if let Some(b) = buf {
            handed_out.insert(b);
        }
        if was_send {
            sends_in_flight -= 1;
        }
        for op in actions {
            match op {
                Op::Send { .. } => {
                    sends_in_flight += 1;
                    assert!(sends_in_flight <= 1, "two sends in flight");
                }
                Op::Recycle(b) => {
                    assert!(handed_out.contains(&b), "recycled a buffer never received");
                    assert!(recycled.insert(b), "buffer {b:?} recycled twice");
                }
                Op::Close => {
                    closes += 1;
                    assert_eq!(closes, 1, "closed twice");
                    assert_eq!(conn.in_flight(), 1, "close issued with other ops in flight");
                }
                Op::Free => {
                    frees += 1;
                    assert_eq!(frees, 1, "freed twice");
                    assert_eq!(conn.in_flight(), 0, "freed with ops in flight");
                }
                _ => {}
            }
        }
    }
});
