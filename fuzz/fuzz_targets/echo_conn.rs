//! Arbitrary event sequences into ringwork-echo's machine, `ProtocolConn<Echo>`, including
//! ones no kernel would produce. Impossible events must be refused (an error), never panic,
//! and whatever is accepted keeps the invariants: the bytes sent are the bytes received, in
//! order (a prefix of them); one send in flight at most, a lent one only of a buffer the
//! connection holds and within what that buffer received; no buffer recycled while a send
//! reads it, none twice; Close at most once and only with nothing else in flight; Free at
//! most once, only after Closed, with every buffer back. Receive buffers come from a model
//! ring (a receive only while one is free, as the kernel hands out only published buffers),
//! so more lent sends than `MAX_LENT` and copies beyond it are reached with small rings too.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::buf::BufId;
use ringwork_core::conn::{Event, Op, OutBytes, StreamMachine};
use ringwork_core::errno::RawErrno;
use ringwork_core::protocol::{Echo, Limits, ProtocolConn};

#[derive(Arbitrary, Debug)]
enum Ev {
    Opened,
    Recv { len: u8, more: bool },
    RecvEof { more: bool },
    RecvErr { errno: u8, more: bool },
    BuffersAvailable,
    SendDone { ok: bool, n: u16, errno: u8 },
    CancelDone,
    Closed,
    Shutdown,
    Abort,
}

/// The send the model kernel has in flight.
enum Sending {
    Lent { buf: BufId, offset: u32, len: u32 },
    Owned(OutBytes, u32),
}

fuzz_target!(|input: (u8, u8, Vec<Ev>)| {
    let (water, log2_ring, events) = input;
    let high_water = 2 + usize::from(water);
    let limits = Limits {
        high_water,
        low_water: high_water / 2,
        ..Limits::default()
    };
    let ring = 1u16 << (log2_ring % 6);
    let mut conn = ProtocolConn::new(Echo, limits);
    // The model ring: buffers the kernel may fill, and what those the connection holds got.
    let mut free: Vec<BufId> = (0..ring).rev().map(BufId).collect();
    let mut held: HashMap<BufId, Vec<u8>> = HashMap::new();
    let (mut received, mut sent) = (Vec::new(), Vec::new());
    let mut sending: Option<Sending> = None;
    let (mut closes, mut frees, mut fill) = (0, 0, 0u8);
    for ev in events.into_iter().take(512) {
        let mut recv_bytes = None;
        let accepted = match ev {
            Ev::Recv { len, more } => {
                // An empty ring answers ENOBUFS instead.
                let Some(&buf) = free.last() else { continue };
                let bytes: Vec<u8> = (0..=len)
                    .map(|_| {
                        fill = fill.wrapping_add(1);
                        fill
                    })
                    .collect();
                let ev = Event::Recv {
                    buf,
                    offset: 0,
                    len: bytes.len() as u32,
                    more,
                };
                let r = conn.on_received(ev, &bytes);
                recv_bytes = Some((buf, bytes));
                r
            }
            Ev::SendDone { ok, n, errno } => {
                let res = if ok {
                    Ok(u32::from(n))
                } else {
                    Err(RawErrno(i32::from(errno)))
                };
                match sending.take() {
                    Some(Sending::Owned(data, offset)) => {
                        let r = conn.on_event(Event::SendOwnedDone {
                            res,
                            data: data.clone(),
                        });
                        if r.is_ok() {
                            if let Ok(n) = res {
                                let at = offset as usize;
                                sent.extend_from_slice(&data.as_slice()[at..at + n as usize]);
                            }
                        } else {
                            sending = Some(Sending::Owned(data, offset));
                        }
                        r
                    }
                    lent => {
                        let r = conn.on_event(Event::SendDone { res });
                        match (&lent, r.is_ok(), res) {
                            (Some(Sending::Lent { buf, offset, len }), true, Ok(n)) => {
                                assert!(n <= *len, "a send of {len} bytes accepted as {n}");
                                let at = *offset as usize;
                                sent.extend_from_slice(&held[buf][at..at + n as usize]);
                            }
                            (_, false, _) => sending = lent,
                            _ => {}
                        }
                        r
                    }
                }
            }
            other => conn.on_event(match other {
                Ev::Opened => Event::Opened,
                Ev::RecvEof { more } => Event::RecvEof { more },
                Ev::RecvErr { errno, more } => Event::RecvErr {
                    errno: RawErrno(i32::from(errno)),
                    more,
                },
                Ev::BuffersAvailable => Event::BuffersAvailable,
                Ev::CancelDone => Event::CancelDone,
                Ev::Closed => Event::Closed,
                Ev::Shutdown => Event::Shutdown,
                Ev::Abort => Event::Abort,
                Ev::Recv { .. } | Ev::SendDone { .. } => unreachable!("matched above"),
            }),
        };
        if accepted.is_err() {
            // Refused: a received buffer stays the driver's, which gives it back.
            continue;
        }
        if let Some((buf, bytes)) = recv_bytes {
            free.pop();
            received.extend_from_slice(&bytes);
            held.insert(buf, bytes);
        }
        while let Some(op) = conn.poll_op() {
            match op {
                Op::Send { buf, offset, len } => {
                    assert!(sending.is_none(), "two sends in flight");
                    let bytes = held.get(&buf).expect("send of a buffer not held");
                    assert!(
                        len > 0 && (offset + len) as usize <= bytes.len(),
                        "send past the bytes"
                    );
                    sending = Some(Sending::Lent { buf, offset, len });
                }
                Op::SendOwned { data, offset } => {
                    assert!(sending.is_none(), "two sends in flight");
                    assert!((offset as usize) < data.len(), "an empty send");
                    sending = Some(Sending::Owned(data, offset));
                }
                Op::Recycle(b) => {
                    assert!(
                        !matches!(sending, Some(Sending::Lent { buf, .. }) if buf == b),
                        "buffer {b:?} recycled while a send reads it"
                    );
                    assert!(
                        held.remove(&b).is_some(),
                        "buffer {b:?} recycled twice or never received"
                    );
                    free.push(b);
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
                    assert!(held.is_empty(), "freed holding buffers");
                }
                Op::ArmRecv | Op::CancelRecv | Op::CancelAll | Op::AwaitBuffers => {}
            }
        }
        assert!(
            received.starts_with(&sent),
            "sent bytes that were not received, in order"
        );
    }
});
