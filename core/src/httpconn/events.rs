//! The checked door: [`HttpEvent`] names everything a driver reports, and
//! [`HttpConn::on_event`] refuses what the connection cannot have been sent (a completion of
//! an op it never emitted, or already reported) with [`ConnError`], leaving it untouched, as
//! [`ProtocolConn`](crate::protocol::ProtocolConn) does. What it accepts goes to the
//! `on_*` handler of the same name, which stays public for drivers that report directly
//! (those guard a stray report instead of refusing it: it closes the connection, or is
//! ignored).

use super::*;
use crate::conn::ConnError;

/// Something the driver reports to an [`HttpConn`]: one variant per `on_*` method, carrying
/// what that method takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HttpEvent<'a> {
    /// [`HttpConn::on_recv`]: bytes of an [`Op::Recv`] (`Ok(&[])`: end of stream), or its
    /// error.
    Recv(Result<&'a [u8], RawErrno>),
    /// [`HttpConn::on_stat`]: the result of an [`Op::Stat`].
    Stat(Result<FileInfo, RawErrno>),
    /// [`HttpConn::on_open`]: the result of an [`Op::Open`].
    Open(Result<(), RawErrno>),
    /// [`HttpConn::on_read`]: the result of the [`Op::Read`] into `buf`.
    Read {
        /// The buffer the read named.
        buf: BufIx,
        /// Bytes read, or the error (ECANCELED for a linked read whose open failed).
        res: Result<u32, RawErrno>,
    },
    /// [`HttpConn::on_send`]: the result of an [`Op::Send`].
    Send(Result<u32, RawErrno>),
    /// [`HttpConn::on_file_send_declined`]: the driver did not perform the
    /// [`SendSrc::File`] send in flight.
    FileSendDeclined {
        /// Try the file again after the next chunk (else never in this response).
        again: bool,
    },
    /// [`HttpConn::on_send_zc`]: the result CQE of the [`Op::SendZc`] in `slot`.
    SendZc {
        /// The send's slot.
        slot: ZcSlot,
        /// Bytes sent, or the error.
        res: Result<u32, RawErrno>,
        /// IORING_CQE_F_MORE: a notification follows.
        more: bool,
    },
    /// [`HttpConn::on_send_notif`]: the notification CQE of the [`Op::SendZc`] in this slot.
    SendNotif(ZcSlot),
    /// [`HttpConn::on_cancel_done`]: an [`Op::Cancel`] request's own completion.
    CancelDone,
    /// [`HttpConn::on_shutdown_done`]: an [`Op::Shutdown`]'s completion.
    ShutdownDone,
    /// [`HttpConn::on_file_closed`]: the [`Op::CloseFile`] completed.
    FileClosed,
    /// [`HttpConn::on_tick`]: time passed.
    Tick,
    /// [`HttpConn::on_shutdown`]: the server is stopping.
    Shutdown,
    /// [`HttpConn::abort`]: the shutdown's grace period is over.
    Abort,
}

impl HttpEvent<'_> {
    /// The event's name, without its data (for [`ConnError::UnexpectedHttp`]).
    pub fn name(&self) -> &'static str {
        match self {
            HttpEvent::Recv(_) => "Recv",
            HttpEvent::Stat(_) => "Stat",
            HttpEvent::Open(_) => "Open",
            HttpEvent::Read { .. } => "Read",
            HttpEvent::Send(_) => "Send",
            HttpEvent::FileSendDeclined { .. } => "FileSendDeclined",
            HttpEvent::SendZc { .. } => "SendZc",
            HttpEvent::SendNotif(_) => "SendNotif",
            HttpEvent::CancelDone => "CancelDone",
            HttpEvent::ShutdownDone => "ShutdownDone",
            HttpEvent::FileClosed => "FileClosed",
            HttpEvent::Tick => "Tick",
            HttpEvent::Shutdown => "Shutdown",
            HttpEvent::Abort => "Abort",
        }
    }
}

impl HttpConn {
    /// Reports `event` at `now`, after checking that it can happen: a completion is accepted
    /// only while the op it completes is in flight (and once), whatever the phase (an abort
    /// leaves a lookup's stat or open, a read and a receive to complete in `Closing`).
    /// Refused with [`ConnError::UnexpectedHttp`], the connection unchanged (its ops, its
    /// count in flight), and the driver still owns whatever the event carried. Ticks,
    /// shutdowns and aborts are not completions: always accepted, also repeated and after
    /// [`Op::Free`].
    ///
    /// The orders the kernel does not fix are all accepted: a linked read's completion before
    /// or after its open's (ECANCELED when the open failed), a SEND_ZC's notification before
    /// or after its result, a cancel's or shutdown's own completion before or after what it
    /// ended, whatever its result.
    pub fn on_event(&mut self, now: Time, event: HttpEvent<'_>) -> Result<(), ConnError> {
        use HttpEvent as E;
        match event {
            E::Tick => self.on_tick(now),
            E::Shutdown => self.on_shutdown(),
            E::Abort => self.abort(),
            // Nothing is in flight after Free, so every guard below refuses too; this arm
            // says so where one looks for it.
            _ if self.phase == Phase::Freed => return Err(self.unexpected(event)),

            E::Recv(res) if self.recv_in_flight => self.on_recv(now, res),
            // Not by phase: an abort during the lookup leaves its stat or open in flight in
            // Closing.
            E::Stat(res) if self.owed.stat => self.on_stat(now, res),
            // Also before or after its linked read's completion.
            E::Open(res) if self.owed.open => self.on_open(now, res),
            // A read in flight marks its buffer, from the push until its completion, also
            // linked behind an open that failed (OpenFailed) or before that open reports.
            E::Read { buf, res } if self.reading(buf) => self.on_read(now, buf, res),
            // The send in flight is by copy (a SEND_ZC's result comes as SendZc): a head,
            // a chunk, or the file, whose result is a Send too.
            E::Send(res) if self.send_in_flight && self.owed.zc_result.is_none() => {
                self.on_send(now, res)
            }
            E::FileSendDeclined { again } if self.send_in_flight && self.file_in_flight => {
                self.on_file_send_declined(now, again)
            }
            // Sends are one at a time: only the one in flight owes a result, also after its
            // notification came.
            E::SendZc { slot, res, more }
                if self.send_in_flight && self.owed.zc_result == Some(slot) =>
            {
                self.on_send_zc(now, slot, res, more)
            }
            // Before or after the result, also after Close: the tracker knows which slots
            // owe one, and refuses the rest unchanged.
            E::SendNotif(slot) => {
                if self.send_notif(now, slot).is_err() {
                    return Err(self.unexpected(event));
                }
            }
            E::CancelDone if self.owed.cancel => self.on_cancel_done(now),
            E::ShutdownDone if self.owed.shutdown => self.on_shutdown_done(now),
            E::FileClosed if self.file_closing => self.on_file_closed(now),

            // A completion of an op not in flight (never emitted, or already reported).
            _ => return Err(self.unexpected(event)),
        }
        Ok(())
    }

    /// A stat is in flight: [`HttpEvent::Stat`] would be accepted (for a driver that must
    /// learn from the result before the connection does, which may change its path).
    pub fn stat_in_flight(&self) -> bool {
        self.phase != Phase::Freed && self.owed.stat
    }

    /// A read into `buf` is in flight (an index beyond the two buffers never is).
    fn reading(&self, buf: BufIx) -> bool {
        self.bufs.get(usize::from(buf.0)) == Some(&BufState::Reading)
    }

    fn unexpected(&self, event: HttpEvent<'_>) -> ConnError {
        ConnError::UnexpectedHttp {
            phase: self.phase.name(),
            event: event.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{drain_ops, regular, GET_F};
    use super::*;
    use alloc::format;
    use alloc::string::String;
    use proptest::prelude::*;

    const NOW: Time = Time {
        mono_ms: 0,
        mono_us: 0,
        unix_secs: 0,
    };

    /// One of each completion, with buffer indices and slots around the ones in use.
    fn completions() -> Vec<HttpEvent<'static>> {
        let mut all = vec![
            HttpEvent::Recv(Ok(b"GET / HTTP/1.1\r\n\r\n")),
            HttpEvent::Recv(Ok(b"")),
            HttpEvent::Recv(Err(RawErrno::CONNRESET)),
            HttpEvent::Stat(Ok(regular(10))),
            HttpEvent::Stat(Err(RawErrno::NOENT)),
            HttpEvent::Open(Ok(())),
            HttpEvent::Open(Err(RawErrno::ACCES)),
            HttpEvent::Send(Ok(1)),
            HttpEvent::Send(Err(RawErrno::PIPE)),
            HttpEvent::FileSendDeclined { again: true },
            HttpEvent::CancelDone,
            HttpEvent::ShutdownDone,
            HttpEvent::FileClosed,
        ];
        for i in 0..3 {
            all.push(HttpEvent::Read {
                buf: BufIx(i),
                res: Ok(1),
            });
            all.push(HttpEvent::Read {
                buf: BufIx(i),
                res: Err(RawErrno::CANCELED),
            });
        }
        for s in [0, 1, 2, ZC_SENDS] {
            let slot = ZcSlot(s);
            all.push(HttpEvent::SendZc {
                slot,
                res: Ok(1),
                more: true,
            });
            all.push(HttpEvent::SendNotif(slot));
        }
        all
    }

    /// What a completion completes: its name, and the buffer or slot it names.
    fn key(event: &HttpEvent<'_>) -> String {
        match event {
            HttpEvent::Read { buf, .. } => format!("Read{}", buf.0),
            HttpEvent::SendZc { slot, .. } => format!("SendZc{}", slot.0),
            HttpEvent::SendNotif(slot) => format!("SendNotif{}", slot.0),
            e => e.name().into(),
        }
    }

    /// `event` is refused, naming itself and the phase, and the connection is exactly as
    /// before: every field, the ops queued for `poll_op`, the count in flight.
    fn refused(c: &mut HttpConn, event: HttpEvent<'_>) {
        let before = format!("{c:?}");
        let in_flight = c.in_flight();
        let phase = c.phase.name();
        assert_eq!(
            c.on_event(NOW, event),
            Err(ConnError::UnexpectedHttp {
                phase,
                event: event.name()
            }),
            "{event:?} in {phase}"
        );
        assert_eq!(c.in_flight(), in_flight, "{event:?} changed the count");
        assert_eq!(format!("{c:?}"), before, "{event:?} changed the connection");
    }

    /// Every completion but those whose [`key`] is in `owed` is refused.
    fn only_owed(c: &mut HttpConn, owed: &[&str]) {
        for event in completions() {
            if !owed.contains(&key(&event).as_str()) {
                refused(c, event);
            }
        }
    }

    fn accept(c: &mut HttpConn, event: HttpEvent<'_>) -> Vec<Op> {
        let phase = c.phase.name();
        c.on_event(NOW, event)
            .unwrap_or_else(|e| panic!("{event:?} in {phase}: {e}"));
        drain_ops(c)
    }

    /// A response walked through: at each step exactly the completions of the ops in flight
    /// are accepted (each once), whatever the phase; then, freed, none.
    #[test]
    fn on_event_refuses_every_completion_not_in_flight() {
        let cfg = Config {
            chunk: 4096,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, NOW);
        assert!(matches!(drain_ops(&mut c)[..], [Op::Recv { .. }]));
        only_owed(&mut c, &["Recv"]);
        assert_eq!(accept(&mut c, HttpEvent::Recv(Ok(GET_F))), [Op::Stat]);
        only_owed(&mut c, &["Stat"]);
        let ops = accept(&mut c, HttpEvent::Stat(Ok(regular(10_000))));
        assert!(matches!(ops[..], [Op::Open { .. }]), "{ops:?}");
        only_owed(&mut c, &["Open"]);
        let ops = accept(&mut c, HttpEvent::Open(Ok(())));
        let [Op::Send(SendSrc::Head { len: head, .. }), Op::Read { buf: BufIx(0), .. }] = ops[..]
        else {
            panic!("{ops:?}")
        };
        only_owed(&mut c, &["Send", "Read0"]);
        let read = |buf, n| HttpEvent::Read {
            buf: BufIx(buf),
            res: Ok(n),
        };
        let ops = accept(&mut c, read(0, 4096));
        assert!(
            matches!(ops[..], [Op::Read { buf: BufIx(1), .. }]),
            "{ops:?}"
        );
        only_owed(&mut c, &["Send", "Read1"]);
        let ops = accept(&mut c, HttpEvent::Send(Ok(head)));
        assert!(
            matches!(ops[..], [Op::Send(SendSrc::Buf { .. })]),
            "{ops:?}"
        );
        assert_eq!(accept(&mut c, read(1, 4096)), []);
        only_owed(&mut c, &["Send"]);
        let ops = accept(&mut c, HttpEvent::Send(Ok(4096)));
        assert!(
            matches!(
                ops[..],
                [
                    Op::Send(SendSrc::Buf { .. }),
                    Op::Read { buf: BufIx(0), .. }
                ]
            ),
            "{ops:?}"
        );
        // Aborted: the cancel, the send it ends, the read and the file close.
        assert_eq!(accept(&mut c, HttpEvent::Abort), [Op::Cancel]);
        only_owed(&mut c, &["Send", "Read0", "CancelDone"]);
        assert_eq!(accept(&mut c, HttpEvent::CancelDone), []);
        only_owed(&mut c, &["Send", "Read0"]);
        assert_eq!(accept(&mut c, HttpEvent::Send(Err(RawErrno::CANCELED))), []);
        only_owed(&mut c, &["Read0"]);
        assert_eq!(accept(&mut c, read(0, 1808)), [Op::CloseFile]);
        only_owed(&mut c, &["FileClosed"]);
        let ops = accept(&mut c, HttpEvent::FileClosed);
        assert_eq!(ops, [Op::Close { reset: false }, Op::Free]);
        only_owed(&mut c, &[]);
        // Not completions: always accepted, and nothing follows Free.
        for _ in 0..2 {
            for event in [HttpEvent::Tick, HttpEvent::Shutdown, HttpEvent::Abort] {
                assert_eq!(accept(&mut c, event), []);
            }
        }
        assert_eq!(c.in_flight(), 0);
    }

    /// A SEND_ZC in flight: its result is not a copy send's, another slot's result or
    /// notification is refused, its own notification is taken once (before the result
    /// here), its result once; a notification still owed after Close is taken, and frees.
    #[test]
    fn on_event_refuses_send_zc_reports_for_other_slots_and_repeats() {
        let cfg = Config {
            chunk: 4096,
            zerocopy: true,
            ..Config::default()
        };
        let mut c = HttpConn::new(cfg, NOW);
        drain_ops(&mut c);
        accept(&mut c, HttpEvent::Recv(Ok(GET_F)));
        accept(&mut c, HttpEvent::Stat(Ok(regular(3 * 4096))));
        let ops = accept(&mut c, HttpEvent::Open(Ok(())));
        let [Op::Send(SendSrc::Head { len: head, .. }), Op::Read { .. }] = ops[..] else {
            panic!("{ops:?}")
        };
        accept(&mut c, HttpEvent::Send(Ok(head)));
        let read = |buf| HttpEvent::Read {
            buf: BufIx(buf),
            res: Ok(4096),
        };
        let ops = accept(&mut c, read(0));
        let [Op::SendZc { slot, .. }, Op::Read { .. }] = ops[..] else {
            panic!("{ops:?}")
        };
        let (result, notif) = (format!("SendZc{}", slot.0), format!("SendNotif{}", slot.0));
        refused(&mut c, HttpEvent::Send(Ok(4096)));
        only_owed(&mut c, &[&result, &notif, "Read1"]);
        assert_eq!(accept(&mut c, HttpEvent::SendNotif(slot)), []);
        only_owed(&mut c, &[&result, "Read1"]);
        let zc = |slot, res, more| HttpEvent::SendZc { slot, res, more };
        assert_eq!(accept(&mut c, zc(slot, Ok(4096), true)), []);
        only_owed(&mut c, &["Read1"]);
        let ops = accept(&mut c, read(1));
        let [Op::SendZc { slot, .. }, Op::Read { buf: BufIx(0), .. }] = ops[..] else {
            panic!("{ops:?}")
        };
        // Result first this time, then the connection fails with the notification owed.
        assert_eq!(accept(&mut c, zc(slot, Ok(4096), true)), []);
        let notif = format!("SendNotif{}", slot.0);
        assert_eq!(accept(&mut c, HttpEvent::Abort), [], "the read is out");
        only_owed(&mut c, &[&notif, "Read0"]);
        assert_eq!(accept(&mut c, read(0)), [Op::CloseFile]);
        let ops = accept(&mut c, HttpEvent::FileClosed);
        assert_eq!(ops, [Op::Close { reset: true }]);
        only_owed(&mut c, &[&notif]);
        assert_eq!(accept(&mut c, HttpEvent::SendNotif(slot)), [Op::Free]);
        only_owed(&mut c, &[]);
    }

    /// The orders the kernel does not fix: a linked read's completion before or after its
    /// open's, successful or not; a cancel's completion before or after the receive it
    /// ended; an abort during the stat, then the open, whose completions still come.
    #[test]
    fn on_event_accepts_the_orders_the_kernel_does_not_fix() {
        let cfg = Config {
            chunk: 4096,
            link_open_read: true,
            ..Config::default()
        };
        let read = |res| HttpEvent::Read { buf: BufIx(0), res };
        for (open, read_res) in [
            (Ok(()), Ok(4096)),
            (Err(RawErrno::XDEV), Err(RawErrno::CANCELED)),
        ] {
            for read_first in [false, true] {
                let mut c = HttpConn::new(cfg, NOW);
                drain_ops(&mut c);
                accept(&mut c, HttpEvent::Recv(Ok(GET_F)));
                let ops = accept(&mut c, HttpEvent::Stat(Ok(regular(5000))));
                assert!(
                    matches!(
                        ops[..],
                        [
                            Op::Open {
                                link_next: true,
                                ..
                            },
                            Op::Read { .. }
                        ]
                    ),
                    "{ops:?}"
                );
                only_owed(&mut c, &["Open", "Read0"]);
                let (first, second) = match read_first {
                    true => (read(read_res), HttpEvent::Open(open)),
                    false => (HttpEvent::Open(open), read(read_res)),
                };
                let mut ops = accept(&mut c, first);
                refused(&mut c, first);
                ops.extend(accept(&mut c, second));
                refused(&mut c, second);
                assert!(matches!(ops[..], [Op::Send(_), ..]), "{ops:?}");
                let status: &[u8] = match open {
                    Ok(()) => b"HTTP/1.1 200",
                    Err(_) => b"HTTP/1.1 403",
                };
                assert!(c.head_bytes().starts_with(status));
            }
        }

        for cancel_first in [false, true] {
            let mut c = HttpConn::new(cfg, NOW);
            drain_ops(&mut c);
            assert_eq!(accept(&mut c, HttpEvent::Abort), [Op::Cancel]);
            let recv = HttpEvent::Recv(Err(RawErrno::CANCELED));
            let (first, second) = match cancel_first {
                true => (HttpEvent::CancelDone, recv),
                false => (recv, HttpEvent::CancelDone),
            };
            assert_eq!(accept(&mut c, first), []);
            let ops = accept(&mut c, second);
            assert_eq!(ops, [Op::Close { reset: false }, Op::Free]);
        }

        // Aborted during the lookup: the stat, then (not linked: O_DIRECT) the open.
        let cfg = Config {
            direct: true,
            ..cfg
        };
        let mut c = HttpConn::new(cfg, NOW);
        drain_ops(&mut c);
        accept(&mut c, HttpEvent::Recv(Ok(GET_F)));
        assert_eq!(accept(&mut c, HttpEvent::Abort), []);
        only_owed(&mut c, &["Stat"]);
        let dio = Some(Alignment {
            mem: 512,
            offset: 512,
        });
        let info = FileInfo { dio, ..regular(10) };
        let ops = accept(&mut c, HttpEvent::Stat(Ok(info)));
        assert_eq!(ops, [Op::Close { reset: false }, Op::Free]);

        let mut c = HttpConn::new(cfg, NOW);
        drain_ops(&mut c);
        accept(&mut c, HttpEvent::Recv(Ok(GET_F)));
        let ops = accept(&mut c, HttpEvent::Stat(Ok(info)));
        assert_eq!(
            ops,
            [Op::Open {
                direct: true,
                link_next: false
            }]
        );
        // The file system refuses O_DIRECT: the buffered retry is a second open.
        let ops = accept(&mut c, HttpEvent::Open(Err(RawErrno::INVAL)));
        assert!(matches!(ops[..], [Op::Open { direct: false, .. }]));
        assert_eq!(accept(&mut c, HttpEvent::Abort), []);
        only_owed(&mut c, &["Open"]);
        assert_eq!(accept(&mut c, HttpEvent::Open(Ok(()))), [Op::CloseFile]);
        let ops = accept(&mut c, HttpEvent::FileClosed);
        assert_eq!(ops, [Op::Close { reset: false }, Op::Free]);
    }

    /// Ticks, shutdowns and aborts in every phase a request passes, repeated: accepted.
    #[test]
    fn ticks_shutdowns_and_aborts_are_always_accepted() {
        let mut c = HttpConn::new(Config::default(), NOW);
        drain_ops(&mut c);
        let happenings = [HttpEvent::Tick, HttpEvent::Shutdown, HttpEvent::Tick];
        for event in happenings {
            c.on_event(NOW, event).unwrap();
        }
        // Draining, the new connection waits a short while for its first request; then the
        // tick closes it: the receive is cancelled.
        let later = Time {
            mono_ms: NOW.mono_ms + crate::httpconn::DRAIN_HEAD_WAIT_MS,
            ..NOW
        };
        c.on_event(later, HttpEvent::Tick).unwrap();
        assert_eq!(drain_ops(&mut c), [Op::Cancel]);
        for event in happenings.into_iter().chain([HttpEvent::Abort; 2]) {
            assert_eq!(accept(&mut c, event), []);
        }
        accept(&mut c, HttpEvent::CancelDone);
        let ops = accept(&mut c, HttpEvent::Recv(Err(RawErrno::CANCELED)));
        assert_eq!(ops, [Op::Close { reset: false }, Op::Free]);
        for event in happenings.into_iter().chain([HttpEvent::Abort; 2]) {
            assert_eq!(accept(&mut c, event), []);
        }
    }

    /// An op in flight in [`Kernel`], and how it will complete.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum InFlight {
        /// Completes with the input's next bytes, end of stream, or (`cancelled`)
        /// ECANCELED; with neither input nor end of stream, it waits for a cancel.
        Recv {
            max: u32,
            cancelled: bool,
        },
        Stat(Result<FileInfo, RawErrno>),
        Open(Result<(), RawErrno>),
        /// `cancelled`: linked behind an open that fails.
        Read {
            buf: BufIx,
            left: u32,
            cancelled: bool,
        },
        Send {
            len: u32,
            file: bool,
            cancelled: bool,
        },
        /// `notified`: its notification came first.
        SendZc {
            slot: ZcSlot,
            len: u32,
            more: bool,
            notified: bool,
        },
        Notif(ZcSlot),
        CloseFile,
        Cancel,
        Shutdown,
    }

    /// A simulated kernel and driver: performs every op the connection emits and completes
    /// them in random order, through [`HttpConn::on_event`], each of which must be
    /// accepted; between them it sends junk (completions of a random kind, buffer and slot),
    /// which must be refused, the connection unchanged, unless an op in flight could
    /// complete so (then it is that op's completion). The file `f` has `size` bytes (`f.gz`
    /// too), `x` stats as a file and fails to open (a symlink out of the root), `d` is a
    /// directory without index, the rest is missing.
    struct Kernel {
        conn: HttpConn,
        now: Time,
        size: u64,
        dio: Option<Alignment>,
        input: Vec<u8>,
        /// The client ends its stream once its requests are sent (else it waits idle).
        eof: bool,
        in_flight: Vec<InFlight>,
        /// The last op polled was an open with `link_next`, whose result is this.
        linked: Option<Result<(), RawErrno>>,
        closed: bool,
        freed: bool,
        rng: u64,
    }

    impl Kernel {
        fn rand(&mut self, n: u64) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % n.max(1)
        }

        /// Polls and "submits" every op queued; checks the connection's count in flight.
        fn submit(&mut self) {
            while let Some(op) = self.conn.poll_op() {
                assert!(!self.freed, "{op:?} after Free");
                assert!(!self.closed || op == Op::Free, "{op:?} after Close");
                let linked = self.linked.take();
                let item = match op {
                    Op::Recv { max } => InFlight::Recv {
                        max,
                        cancelled: false,
                    },
                    Op::Stat => InFlight::Stat(match self.conn.path() {
                        b"f\0" | b"f.gz\0" | b"x\0" => Ok(FileInfo {
                            dio: self.dio,
                            ..regular(self.size)
                        }),
                        b"d\0" | b".\0" => Ok(FileInfo {
                            kind: FileKind::Directory,
                            ..regular(0)
                        }),
                        _ => Err(RawErrno::NOENT),
                    }),
                    Op::Open { direct, link_next } => {
                        let outside = self.conn.path() == b"x\0";
                        let res = match outside {
                            true => Err(RawErrno::XDEV),
                            false if direct && self.rand(2) == 0 => Err(RawErrno::INVAL),
                            false => Ok(()),
                        };
                        if link_next {
                            self.linked = Some(res);
                        }
                        InFlight::Open(res)
                    }
                    Op::Read {
                        buf, offset, len, ..
                    } => InFlight::Read {
                        buf,
                        left: self.size.saturating_sub(offset).min(u64::from(len)) as u32,
                        cancelled: linked.is_some_and(|r| r.is_err()),
                    },
                    Op::Send(src) => {
                        let (len, file) = match src {
                            SendSrc::Head { len, .. } | SendSrc::Buf { len, .. } => (len, false),
                            SendSrc::HeadAndBuf { len, .. } => {
                                (len + self.conn.head_bytes().len() as u32, false)
                            }
                            SendSrc::File { len, .. } => (len, true),
                        };
                        InFlight::Send {
                            len,
                            file,
                            cancelled: false,
                        }
                    }
                    Op::SendZc { slot, len, .. } => {
                        // A failed send promises no notification.
                        let more = self.rand(8) != 0;
                        if more {
                            self.in_flight.push(InFlight::Notif(slot));
                        }
                        InFlight::SendZc {
                            slot,
                            len,
                            more,
                            notified: false,
                        }
                    }
                    Op::CloseFile => InFlight::CloseFile,
                    Op::Cancel => {
                        // It ends the socket op in flight, or misses it (already done).
                        for op in &mut self.in_flight {
                            if let InFlight::Recv { cancelled, .. }
                            | InFlight::Send { cancelled, .. } = op
                            {
                                *cancelled = true;
                            }
                        }
                        InFlight::Cancel
                    }
                    Op::Shutdown => InFlight::Shutdown,
                    Op::Close { reset } => {
                        let notifs = self
                            .in_flight
                            .iter()
                            .all(|i| matches!(i, InFlight::Notif(_)));
                        assert!(notifs, "Close with {:?} in flight", self.in_flight);
                        assert_eq!(reset, !self.in_flight.is_empty(), "reset iff owed");
                        self.closed = true;
                        continue;
                    }
                    Op::Free => {
                        assert!(self.closed, "Free before Close");
                        assert_eq!(self.in_flight, [], "Free with ops in flight");
                        self.freed = true;
                        continue;
                    }
                };
                assert!(linked.is_none() || matches!(item, InFlight::Read { .. }));
                self.in_flight.push(item);
            }
            // Each op counts one, a SEND_ZC until its result and notification are both in.
            let mut zc_slots: Vec<ZcSlot> = self
                .in_flight
                .iter()
                .filter_map(|i| match *i {
                    InFlight::SendZc { slot, .. } | InFlight::Notif(slot) => Some(slot),
                    _ => None,
                })
                .collect();
            let others = self.in_flight.len() - zc_slots.len();
            zc_slots.sort();
            zc_slots.dedup();
            let owed = (others + zc_slots.len()) as u32;
            assert_eq!(self.conn.in_flight(), owed, "{:?}", self.in_flight);
        }

        /// Reports `event`, which must be accepted.
        fn deliver(&mut self, event: HttpEvent<'_>) {
            if let Err(e) = self.conn.on_event(self.now, event) {
                panic!(
                    "{event:?} refused ({e}) with {:?} in flight",
                    self.in_flight
                );
            }
            self.submit();
        }

        /// Can op `i` complete now (a receive with nothing to say waits for a cancel)?
        fn ready(&self, i: usize) -> bool {
            match self.in_flight[i] {
                InFlight::Recv { cancelled, .. } => cancelled || self.eof || !self.input.is_empty(),
                _ => true,
            }
        }

        /// Completes op `i` as the kernel would.
        fn complete(&mut self, i: usize) {
            let op = self.in_flight.swap_remove(i);
            match op {
                InFlight::Recv {
                    cancelled: true, ..
                } if self.rand(2) == 0 => self.deliver(HttpEvent::Recv(Err(RawErrno::CANCELED))),
                InFlight::Recv { max, .. } if !self.input.is_empty() => {
                    let n = (1 + self.rand(u64::from(max))).min(self.input.len() as u64);
                    let bytes: Vec<u8> = self.input.drain(..n as usize).collect();
                    self.deliver(HttpEvent::Recv(Ok(&bytes)));
                }
                InFlight::Recv { cancelled, .. } => self.deliver(HttpEvent::Recv(match self.eof {
                    true => Ok(&[]),
                    false => {
                        assert!(cancelled, "a waiting receive completed");
                        Err(RawErrno::CANCELED)
                    }
                })),
                InFlight::Stat(res) => self.deliver(HttpEvent::Stat(res)),
                InFlight::Open(res) => self.deliver(HttpEvent::Open(res)),
                InFlight::Read {
                    buf,
                    cancelled: true,
                    ..
                } => self.deliver(HttpEvent::Read {
                    buf,
                    res: Err(RawErrno::CANCELED),
                }),
                InFlight::Read { buf, left, .. } => {
                    // Short reads but under O_DIRECT, whose reads stop at a block.
                    let n = match self.conn.cfg.direct || left == 0 || self.rand(3) != 0 {
                        true => left,
                        false => 1 + self.rand(u64::from(left)) as u32,
                    };
                    self.deliver(HttpEvent::Read { buf, res: Ok(n) })
                }
                InFlight::Send {
                    cancelled: true, ..
                } if self.rand(2) == 0 => self.deliver(HttpEvent::Send(Err(RawErrno::CANCELED))),
                InFlight::Send { file: true, .. } if self.rand(6) == 0 => {
                    let again = self.rand(3) != 0;
                    self.deliver(HttpEvent::FileSendDeclined { again })
                }
                InFlight::Send { len, .. } => {
                    let res = match self.rand(40) {
                        0 => Err(RawErrno::PIPE),
                        1 => Err(RawErrno::AGAIN),
                        _ => Ok(1 + self.rand(u64::from(len)) as u32),
                    };
                    self.deliver(HttpEvent::Send(res))
                }
                InFlight::SendZc {
                    slot, len, more, ..
                } => {
                    let res = match more {
                        true => Ok(1 + self.rand(u64::from(len)) as u32),
                        false => Err(RawErrno::PIPE),
                    };
                    self.deliver(HttpEvent::SendZc { slot, res, more })
                }
                InFlight::Notif(slot) => {
                    for op in &mut self.in_flight {
                        if let InFlight::SendZc {
                            slot: s, notified, ..
                        } = op
                        {
                            *notified |= *s == slot;
                        }
                    }
                    self.deliver(HttpEvent::SendNotif(slot))
                }
                InFlight::CloseFile => self.deliver(HttpEvent::FileClosed),
                InFlight::Cancel => self.deliver(HttpEvent::CancelDone),
                InFlight::Shutdown => self.deliver(HttpEvent::ShutdownDone),
            }
        }

        /// The op in flight that `event` could be the completion of.
        fn completes(&self, event: &HttpEvent<'_>) -> Option<usize> {
            self.in_flight.iter().position(|op| match (event, *op) {
                (HttpEvent::Recv(_), InFlight::Recv { .. })
                | (HttpEvent::Stat(_), InFlight::Stat(_))
                | (HttpEvent::Open(_), InFlight::Open(_))
                | (HttpEvent::Send(_), InFlight::Send { .. })
                | (HttpEvent::FileSendDeclined { .. }, InFlight::Send { file: true, .. })
                | (HttpEvent::FileClosed, InFlight::CloseFile)
                | (HttpEvent::CancelDone, InFlight::Cancel)
                | (HttpEvent::ShutdownDone, InFlight::Shutdown) => true,
                (HttpEvent::Read { buf, .. }, InFlight::Read { buf: b, .. }) => *buf == b,
                (HttpEvent::SendZc { slot, .. }, InFlight::SendZc { slot: s, .. }) => *slot == s,
                // Before its result too, unless it already came.
                (HttpEvent::SendNotif(slot), InFlight::Notif(s)) => *slot == s,
                (
                    HttpEvent::SendNotif(slot),
                    InFlight::SendZc {
                        slot: s, notified, ..
                    },
                ) => *slot == s && !notified,
                _ => false,
            })
        }

        /// A completion of a random kind, buffer and slot: refused unchanged, or, when an op
        /// in flight could complete so, accepted as that op's completion.
        fn junk(&mut self) {
            let mut all = completions();
            let event = all.swap_remove(self.rand(all.len() as u64) as usize);
            match self.completes(&event) {
                // What an op in flight would say, said by that op (its result is the
                // kernel's to choose).
                Some(i) if matches!(event, HttpEvent::FileSendDeclined { .. }) => {
                    self.in_flight.swap_remove(i);
                    self.deliver(event);
                }
                Some(i) if self.ready(i) => self.complete(i),
                // A receive waiting for the client: it has nothing to say yet.
                Some(_) => {}
                None => refused(&mut self.conn, event),
            }
        }

        /// Runs the connection until it is freed, aborting it at step `abort_at`.
        fn run(&mut self, junk_per_16: u64, abort_at: Option<usize>) {
            self.submit();
            let mut steps = 0;
            while !self.freed {
                steps += 1;
                assert!(steps < 100_000, "no progress: {:?}", self.in_flight);
                self.now.mono_ms += 1;
                if abort_at == Some(steps) {
                    self.deliver(HttpEvent::Abort);
                    continue;
                }
                if self.rand(16) < junk_per_16 {
                    self.junk();
                    continue;
                }
                if self.rand(64) == 0 {
                    let event = match self.rand(3) {
                        0 => HttpEvent::Tick,
                        1 => HttpEvent::Shutdown,
                        _ => HttpEvent::Abort,
                    };
                    self.deliver(event);
                    continue;
                }
                let ready: Vec<usize> = (0..self.in_flight.len())
                    .filter(|&i| self.ready(i))
                    .collect();
                if ready.is_empty() {
                    // Waiting for the client: time runs out (a head, an idle keep-alive or a
                    // drain), or, shut down, the grace period does.
                    assert!(!self.closed, "closed with {:?} in flight", self.in_flight);
                    self.now.mono_ms += 100_000;
                    let event = match self.conn.is_closing() {
                        true => HttpEvent::Abort,
                        false => HttpEvent::Tick,
                    };
                    self.deliver(event);
                    continue;
                }
                let i = ready[self.rand(ready.len() as u64) as usize];
                self.complete(i);
            }
            // Nothing is owed a freed connection; what is not a completion still goes in.
            for event in completions() {
                refused(&mut self.conn, event);
            }
            for event in [HttpEvent::Tick, HttpEvent::Shutdown, HttpEvent::Abort] {
                self.deliver(event);
            }
        }
    }

    fn request() -> impl Strategy<Value = &'static [u8]> {
        prop::sample::select(vec![
            &b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"HEAD /f HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=100-5000\r\n\r\n",
            b"GET /f HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
            b"GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /d/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
            b"BREW /f HTCPCP/1.0\r\n\r\n",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the order of completions, the config and the junk thrown in, every
        /// completion of an op in flight is accepted, every other refused unchanged, and
        /// the connection reaches Free.
        #[test]
        fn on_event_accepts_every_possible_event_and_refuses_the_rest(
            reqs in proptest::collection::vec(request(), 0..5),
            size in prop_oneof![0u64..100, 0u64..20_000],
            flags in any::<[bool; 7]>(),
            junk_per_16 in 0u64..8,
            abort_at in proptest::option::of(1usize..40),
            seed in any::<u64>(),
        ) {
            let [zerocopy, link_open_read, head_with_body, file_send, direct, precompressed, eof] =
                flags;
            let cfg = Config {
                chunk: 4096,
                zerocopy,
                link_open_read,
                head_with_body,
                file_send,
                direct,
                precompressed,
                ..Config::default()
            };
            let mut kernel = Kernel {
                conn: HttpConn::new(cfg, NOW),
                now: NOW,
                size,
                dio: direct.then_some(Alignment { mem: 512, offset: 512 }),
                input: reqs.concat(),
                eof,
                in_flight: Vec::new(),
                linked: None,
                closed: false,
                freed: false,
                rng: seed | 1,
            };
            kernel.run(junk_per_16, abort_at);
        }
    }
}
