//! One HTTP connection driven by arbitrary completion orders: the fuzzer picks which of the
//! operations in flight completes next, and how (short, failed, a SEND_ZC's notification
//! before its result, a cancel's or shutdown's own completion late), between ticks, drains
//! and aborts. HttpConn counts its own operations: whenever its queue is drained,
//! `in_flight()` must equal what this model owes it; `Close` only when nothing but SEND_ZC
//! notifications is in flight, with `reset` exactly when some are owed; `Free` only when
//! nothing at all is, once, and nothing after it; no read into a buffer the kernel may still
//! read for a SEND_ZC, and no send of one being read into. At the end an abort, then every
//! completion still owed, must lead to `Free`. Requests may carry Accept-Encoding (a
//! precompressed `f.gz` exists), If-None-Match and If-Range, so the sibling stats and the
//! conditional answers are among the paths taken.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::buf::ZcSlot;
use ringwork_core::errno::RawErrno;
use ringwork_core::httpconn::{BufIx, Config, FileInfo, FileKind, HttpConn, Op, SendSrc, Time};

#[derive(Arbitrary, Debug)]
enum Step {
    /// Complete the `pick`-th operation in flight; `ok` and `frac` shape its result.
    Complete {
        pick: u8,
        ok: bool,
        frac: u8,
    },
    Tick {
        ms: u16,
    },
    Shutdown,
    Abort,
}

#[derive(Arbitrary, Debug)]
struct Input {
    zerocopy: bool,
    links: bool,
    close_after: bool,
    precompressed: bool,
    access_log: bool,
    /// Bodies after their first chunk go straight from the file (`Config::file_send`).
    file_send: bool,
    /// Per request: Accept-Encoding, If-None-Match, If-Range with a Range (bits 0, 1, 2).
    headers: u8,
    requests: u8,
    size: u16,
    steps: Vec<Step>,
}

/// An operation in flight, as the kernel sees it.
#[derive(Clone, Copy, Debug)]
enum Flight {
    Recv {
        max: u32,
    },
    Stat,
    /// `fails`: decided when a linked chain is issued, so that its read agrees.
    Open {
        fails: Option<bool>,
    },
    Read {
        buf: BufIx,
        len: u32,
        linked_fails: Option<bool>,
    },
    Send {
        len: u32,
    },
    ZcResult {
        slot: ZcSlot,
        len: u32,
        notifies: bool,
    },
    ZcNotif {
        slot: ZcSlot,
        buf: u8,
    },
    CloseFile,
    Cancel,
    Shutdown,
}

struct Model {
    conn: HttpConn,
    flights: Vec<Flight>,
    input: Vec<u8>,
    now: Time,
    size: u64,
    closed: bool,
    freed: bool,
    /// Per chunk buffer: a read in flight, SEND_ZC notifications owed.
    reading: [bool; 2],
    notifs: [u32; 2],
}

impl Model {
    fn drain(&mut self, pending_link: &mut Option<bool>) {
        while let Some(op) = self.conn.poll_op() {
            assert!(!self.freed, "{op:?} after Free");
            assert!(!self.closed || op == Op::Free, "{op:?} after Close");
            match op {
                Op::Recv { max } => self.flights.push(Flight::Recv { max }),
                Op::Stat => self.flights.push(Flight::Stat),
                Op::Open { link_next, .. } => {
                    // A linked chain fails as a whole: its read learns the open's fate.
                    let fails = link_next.then(|| !matches!(self.conn.path(), b"f\0" | b"f.gz\0"));
                    *pending_link = fails;
                    self.flights.push(Flight::Open { fails });
                }
                Op::Read { buf, len, .. } => {
                    let b = usize::from(buf.0);
                    assert!(!self.reading[b], "two reads into one buffer");
                    assert_eq!(
                        self.notifs[b], 0,
                        "read into a buffer a SEND_ZC may still read"
                    );
                    self.reading[b] = true;
                    let linked_fails = pending_link.take();
                    self.flights.push(Flight::Read {
                        buf,
                        len,
                        linked_fails,
                    });
                }
                Op::Send(src) => {
                    let len = match src {
                        SendSrc::Head { len, .. } => len,
                        SendSrc::Buf { buf, len, .. } => {
                            assert!(
                                !self.reading[usize::from(buf.0)],
                                "send of a buffer being read"
                            );
                            len
                        }
                        SendSrc::HeadAndBuf { buf, len, .. } => {
                            assert!(
                                !self.reading[usize::from(buf.0)],
                                "send of a buffer being read"
                            );
                            len
                        }
                        SendSrc::File { len, .. } => {
                            assert!(
                                !self.reading.iter().any(|r| *r),
                                "a file send while a read is in flight"
                            );
                            len
                        }
                    };
                    self.flights.push(Flight::Send { len });
                }
                Op::SendZc { buf, len, slot, .. } => {
                    assert!(
                        !self.reading[usize::from(buf.0)],
                        "send of a buffer being read"
                    );
                    // Most sends promise a notification; decided at random by the slot.
                    let notifies = slot.0 % 3 != 2;
                    self.flights.push(Flight::ZcResult {
                        slot,
                        len,
                        notifies,
                    });
                    if notifies {
                        self.notifs[usize::from(buf.0)] += 1;
                        self.flights.push(Flight::ZcNotif { slot, buf: buf.0 });
                    }
                }
                Op::CloseFile => self.flights.push(Flight::CloseFile),
                Op::Cancel => self.flights.push(Flight::Cancel),
                Op::Shutdown => self.flights.push(Flight::Shutdown),
                Op::Close { reset } => {
                    let notifs = self
                        .flights
                        .iter()
                        .filter(|f| matches!(f, Flight::ZcNotif { .. }))
                        .count();
                    assert_eq!(
                        notifs,
                        self.flights.len(),
                        "Close with {:?} in flight",
                        self.flights
                    );
                    assert_eq!(
                        reset,
                        notifs > 0,
                        "reset exactly when notifications are owed"
                    );
                    self.closed = true;
                }
                Op::Free => {
                    assert!(self.closed, "Free before Close");
                    assert!(
                        self.flights.is_empty(),
                        "Free with {:?} in flight",
                        self.flights
                    );
                    self.freed = true;
                }
            }
        }
        assert_eq!(
            self.conn.in_flight() as usize,
            self.owed(),
            "in-flight count"
        );
    }

    /// Operations in flight: each flight, but a SEND_ZC's result and notification are one.
    fn owed(&self) -> usize {
        let both = |slot: ZcSlot| {
            self.flights
                .iter()
                .any(|f| matches!(f, Flight::ZcResult { slot: s, .. } if *s == slot))
        };
        self.flights
            .iter()
            .filter(|f| !matches!(f, Flight::ZcNotif { slot, .. } if both(*slot)))
            .count()
    }

    fn complete(&mut self, pick: usize, ok: bool, frac: u8) {
        let f = self.flights.remove(pick % self.flights.len());
        let now = self.now;
        let part = |len: u32| (u64::from(len) * u64::from(frac) / 255).max(1) as u32;
        match f {
            Flight::Recv { max } => {
                if !ok {
                    self.conn.on_recv(now, Err(RawErrno::CONNRESET));
                } else {
                    let n = (part(max) as usize).min(self.input.len());
                    let bytes: Vec<u8> = self.input.drain(..n).collect();
                    // No input left: the peer's end of stream.
                    self.conn.on_recv(now, Ok(&bytes));
                }
            }
            Flight::Stat => {
                let res = match self.conn.path() {
                    b"f\0" | b"x\0" | b"f.gz\0" if ok => Ok(FileInfo {
                        kind: FileKind::Regular,
                        size: self.size,
                        mtime_secs: 1,
                        dio: None,
                    }),
                    _ if ok => Err(RawErrno::NOENT),
                    _ => Err(RawErrno::ACCES),
                };
                self.conn.on_stat(now, res);
            }
            Flight::Open { fails } => {
                let fails = fails.unwrap_or(!ok);
                self.conn
                    .on_open(now, if fails { Err(RawErrno::XDEV) } else { Ok(()) });
            }
            Flight::Read {
                buf,
                len,
                linked_fails,
            } => {
                self.reading[usize::from(buf.0)] = false;
                let res = match linked_fails {
                    Some(true) => Err(RawErrno::CANCELED),
                    _ if ok => Ok(part(len)),
                    _ => Err(RawErrno::IO),
                };
                self.conn.on_read(now, buf, res);
            }
            Flight::Send { len } => {
                self.conn.on_send(
                    now,
                    if ok {
                        Ok(part(len))
                    } else {
                        Err(RawErrno::PIPE)
                    },
                );
            }
            Flight::ZcResult {
                slot,
                len,
                notifies,
                ..
            } => {
                let res = if ok {
                    Ok(part(len))
                } else {
                    Err(RawErrno::PIPE)
                };
                self.conn.on_send_zc(now, slot, res, notifies);
            }
            Flight::ZcNotif { slot, buf } => {
                self.notifs[usize::from(buf)] -= 1;
                self.conn.on_send_notif(now, slot);
            }
            Flight::CloseFile => self.conn.on_file_closed(now),
            Flight::Cancel => self.conn.on_cancel_done(now),
            Flight::Shutdown => self.conn.on_shutdown_done(now),
        }
    }
}

fuzz_target!(|input: Input| {
    let cfg = Config {
        chunk: 512,
        zerocopy: input.zerocopy,
        link_open_read: input.links,
        header_timeout_ms: 1_000,
        idle_timeout_ms: 2_000,
        precompressed: input.precompressed,
        access_log: input.access_log,
        file_send: input.file_send,
        ..Config::default()
    };
    let mut wire = Vec::new();
    for i in 0..(input.requests % 5) {
        let target = ["/f", "/x", "/nope", "/f", "/../f"][usize::from(i) % 5];
        let conn = if input.close_after {
            "Connection: close\r\n"
        } else {
            ""
        };
        let h = input.headers.rotate_left(u32::from(i));
        let mut extra = String::new();
        if h & 1 != 0 {
            extra.push_str("Accept-Encoding: br, gzip;q=0.5\r\n");
        }
        if h & 2 != 0 {
            extra.push_str("If-None-Match: \"1-0\", W/\"x\"\r\n");
        }
        if h & 4 != 0 {
            extra.push_str("Range: bytes=1-100\r\nIf-Range: \"1-64\"\r\n");
        }
        wire.extend_from_slice(
            format!("GET {target} HTTP/1.1\r\nHost: h\r\n{conn}{extra}\r\n").as_bytes(),
        );
    }
    let mut m = Model {
        conn: HttpConn::new(cfg, Time::default()),
        flights: Vec::new(),
        input: wire,
        now: Time::default(),
        size: u64::from(input.size % 3000),
        closed: false,
        freed: false,
        reading: [false; 2],
        notifs: [0; 2],
    };
    let mut link = None;
    let mut answered_logged = 0u64;
    m.drain(&mut link);
    for step in input.steps.into_iter().take(2000) {
        match step {
            Step::Complete { pick, ok, frac } if !m.flights.is_empty() => {
                m.complete(usize::from(pick), ok, frac)
            }
            Step::Tick { ms } => {
                m.now.mono_ms += u64::from(ms);
                m.conn.on_tick(m.now);
            }
            Step::Shutdown => m.conn.on_shutdown(),
            Step::Abort => m.conn.abort(),
            Step::Complete { .. } => {}
        }
        m.drain(&mut link);
        // Logged only once answered, never more often than answered.
        let mut logged = 0;
        m.conn.drain_log(|e| {
            assert!((200..600).contains(&e.status), "{e:?}");
            logged += 1;
        });
        answered_logged += logged;
        assert!(answered_logged <= m.conn.requests());
    }
    // The grace runs out: everything owed comes in, oldest first; the connection must end.
    m.conn.abort();
    m.drain(&mut link);
    for _ in 0..10_000 {
        if m.flights.is_empty() {
            break;
        }
        m.complete(0, false, 0);
        m.drain(&mut link);
    }
    assert!(m.freed, "never freed: {:?} in flight", m.flights);
});
