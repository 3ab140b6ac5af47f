//! Arbitrary event sequences into `ProtocolConn` running a line protocol, including ones no
//! kernel would produce. Impossible events must be refused (an error), never panic, and
//! whatever is accepted keeps the invariants: the bytes sent are the protocol's output, in
//! order (a prefix of what it wrote); one send in flight at most, and its completion hands
//! back the bytes it took; every receive buffer recycled exactly once; Close only with
//! nothing else in flight; Free once, after Closed, with every buffer back.
#![no_main]

use std::collections::HashSet;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::buf::BufId;
use ringwork_core::conn::{Event, Op, OutBytes, StreamMachine};
use ringwork_core::errno::RawErrno;
use ringwork_core::protocol::{Limits, Output, Protocol, ProtocolConn};

#[derive(Arbitrary, Debug)]
enum Ev {
    Opened,
    Recv { bytes: Vec<u8>, more: bool },
    RecvEof { more: bool },
    RecvErr { errno: u8, more: bool },
    BuffersAvailable,
    SendDone { ok: bool, n: u16, errno: u8 },
    CancelDone,
    Closed,
    Shutdown,
    Abort,
    Time { ms: u16 },
}

/// Upper-cases lines; `s` and `a` lines also send static and shared bytes, `c` closes.
#[derive(Default)]
struct Lines {
    produced: Vec<u8>,
}

impl Protocol for Lines {
    fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
        let Some(end) = input.iter().position(|&b| b == b'\n') else {
            return 0;
        };
        let line = &input[..=end];
        match line[0] {
            b's' => {
                out.send_static(b"static");
                self.produced.extend_from_slice(b"static");
            }
            b'a' => {
                out.send_shared(Arc::from(&b"shared"[..]));
                self.produced.extend_from_slice(b"shared");
            }
            b'c' => out.close(),
            _ => {}
        }
        let upper = line.to_ascii_uppercase();
        out.write(&upper);
        self.produced.extend_from_slice(&upper);
        line.len()
    }

    fn on_eof(&mut self, input: &[u8], out: &mut Output<'_>) {
        out.write(input);
        self.produced.extend_from_slice(input);
    }
}

fn errno(e: u8) -> RawErrno {
    match e % 5 {
        0 => RawErrno::NOBUFS,
        1 => RawErrno::AGAIN,
        2 => RawErrno::CANCELED,
        3 => RawErrno::INTR,
        _ => RawErrno(104),
    }
}

fuzz_target!(|events: Vec<Ev>| {
    let limits = Limits {
        high_water: 64,
        low_water: 16,
        max_input: 128,
        idle_timeout_ms: Some(50),
        message_timeout_ms: Some(30),
    };
    let mut conn = ProtocolConn::new(Lines::default(), limits);
    let mut held = HashSet::new();
    let mut next_buf = 0u16;
    let mut sending: Option<(OutBytes, u32)> = None;
    let mut out = Vec::new();
    let (mut closes, mut frees, mut now) = (0u32, 0u32, 0u64);
    for ev in events.into_iter().take(256) {
        conn.set_now(now);
        let accepted = match ev {
            Ev::Recv { bytes, more } => {
                let bytes = &bytes[..bytes.len().min(200)];
                let buf = BufId(next_buf);
                let ev = Event::Recv {
                    buf,
                    offset: 0,
                    len: bytes.len() as u32,
                    more,
                };
                let ok = conn.on_received(ev, bytes).is_ok();
                if ok {
                    next_buf = next_buf.wrapping_add(1);
                    assert!(held.insert(buf), "a buffer handed twice");
                }
                ok
            }
            Ev::SendDone { ok, n, errno: e } => {
                // A driver hands back the bytes of the send in flight; with none, it makes
                // some up (the machine must refuse them).
                let (data, offset) = sending.clone().unwrap_or((OutBytes::Static(b"bogus"), 0));
                let rest = data.len() - offset as usize;
                let res = if ok { Ok(u32::from(n)) } else { Err(errno(e)) };
                let accepted = conn
                    .on_event(Event::SendOwnedDone {
                        res,
                        data: data.clone(),
                    })
                    .is_ok();
                if accepted {
                    assert!(
                        sending.take().is_some(),
                        "a send completion accepted with none"
                    );
                    if let Ok(n) = res {
                        assert!(n as usize <= rest, "an overrun accepted");
                        let at = offset as usize;
                        out.extend_from_slice(&data.as_slice()[at..at + n as usize]);
                    }
                }
                accepted
            }
            Ev::Time { ms } => {
                now += u64::from(ms);
                conn.set_now(now);
                if conn.deadline_ms().is_some_and(|d| d <= now) {
                    conn.on_deadline();
                }
                true
            }
            ev => {
                let ev = match ev {
                    Ev::Opened => Event::Opened,
                    Ev::RecvEof { more } => Event::RecvEof { more },
                    Ev::RecvErr { errno: e, more } => Event::RecvErr {
                        errno: errno(e),
                        more,
                    },
                    Ev::BuffersAvailable => Event::BuffersAvailable,
                    Ev::CancelDone => Event::CancelDone,
                    Ev::Closed => Event::Closed,
                    Ev::Shutdown => Event::Shutdown,
                    Ev::Abort => Event::Abort,
                    Ev::Recv { .. } | Ev::SendDone { .. } | Ev::Time { .. } => unreachable!(),
                };
                conn.on_event(ev).is_ok()
            }
        };
        let _ = accepted;
        while let Some(op) = conn.poll_op() {
            match op {
                Op::SendOwned { data, offset } => {
                    assert!(sending.is_none(), "two sends in flight");
                    assert!((offset as usize) < data.len(), "an empty send");
                    sending = Some((data, offset));
                }
                Op::Recycle(b) => assert!(held.remove(&b), "{b:?} recycled twice or never held"),
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
                Op::Send { .. } => panic!("a provided-buffer send"),
                Op::ArmRecv | Op::CancelRecv | Op::CancelAll | Op::AwaitBuffers => {}
            }
        }
        assert!(
            conn.protocol().produced.starts_with(&out),
            "sent bytes the protocol did not write"
        );
    }
});
