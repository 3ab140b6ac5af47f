//! Streaming the body: reads into the two chunk buffers, sends of the head and chunks (or
//! straight from the file), SEND_ZC results and notifications.

use super::*;

impl HttpConn {
    /// The read into `buf` completed.
    pub fn on_read(&mut self, now: Time, buf: BufIx, res: Result<u32, RawErrno>) {
        self.completed();
        self.last_progress = now.mono_ms;
        let b = usize::from(buf.0 & 1);
        debug_assert_eq!(self.bufs[b], BufState::Reading);
        match (self.phase, res) {
            // The open failed and this read, linked behind it, was cancelled: now the error
            // response can go.
            (Phase::OpenFailed { status }, _) => {
                self.bufs[b] = BufState::Free;
                self.read = None;
                return self.fail(now, status);
            }
            // The linked read reports before its open (the kernel does not promise the
            // order): cancelled because the open failed, which on_open then reports. The
            // plan is dropped (`head_len == 0` marks it).
            (Phase::Open { planned: true, .. }, Err(_)) => {
                self.bufs[b] = BufState::Free;
                self.read = None;
                self.head_len = 0;
                return;
            }
            _ => {}
        }
        let Some(read) = self.read.as_mut() else {
            // Guard: reads are only issued while `read` is set; it is dropped only when none
            // is in flight.
            return self.close();
        };
        match read.on_read(res) {
            ReadOutcome::Chunk(mut chunk) => {
                // The chunk a declined file send asked for is in: the file again after it.
                self.file_cold = false;
                chunk.buf_start += self.head_room;
                self.bufs[b] = BufState::Full(chunk);
                self.read_ix ^= 1;
            }
            // Same buffer, the remainder: `read_ix` still names it.
            ReadOutcome::Resubmit => self.bufs[b] = BufState::Free,
            ReadOutcome::Failed(_) => {
                // The head is already out (or going): the only honest signal left is closing.
                self.bufs[b] = BufState::Free;
                return self.close();
            }
        }
        self.pump(now);
    }

    /// The send completed.
    pub fn on_send(&mut self, now: Time, res: Result<u32, RawErrno>) {
        self.completed();
        self.send_done(now, res);
    }

    /// The driver did not perform the [`SendSrc::File`] send it was given (that is its
    /// completion): the next chunk goes through a buffer and the file is tried again after it
    /// (`again`: the pages were not in memory, say), or, without `again`, the rest of the
    /// response does (the file cannot be sent from).
    pub fn on_file_send_declined(&mut self, now: Time, again: bool) {
        self.completed();
        self.send_in_flight = false;
        self.file_in_flight = false;
        if again {
            self.file_cold = true;
        } else {
            self.file_send = false;
        }
        // Closing, pump finishes the close.
        self.pump(now);
    }

    /// A send's result, by copy or zero copy.
    pub(super) fn send_done(&mut self, now: Time, res: Result<u32, RawErrno>) {
        self.send_in_flight = false;
        self.last_progress = now.mono_ms;
        let n = match res {
            Ok(n) if n > 0 => n,
            Err(RawErrno::AGAIN | RawErrno::INTR) => 0,
            // Peer gone (EPIPE, ECONNRESET), cancelled, or a zero-byte send.
            _ => return self.close(),
        };
        let mut n = n;
        if self.file_in_flight {
            self.file_in_flight = false;
            if let Some(read) = self.read.as_mut() {
                // Never more than asked: the kernel sends at most the range named.
                let left = read.unread().map_or(0, |(_, left)| left);
                read.skip(u64::from(n).min(left));
            }
            n = 0;
        } else if self.combined_in_flight {
            // Head first, then the chunk: what is left of either goes by the plain sends.
            self.combined_in_flight = false;
            let head = n.min(self.head_len - self.head_sent);
            self.head_sent += head;
            n -= head;
            if self.head_sent < self.head_len {
                // The chunk stays `Sending` with nothing of it sent; the head's rest first.
                debug_assert_eq!(n, 0);
            }
        } else if self.head_sent < self.head_len {
            self.head_sent += n.min(self.head_len - self.head_sent);
            n = 0;
        }
        if n > 0 {
            let s = usize::from(self.send_ix);
            if let BufState::Sending { chunk, sent } = self.bufs[s] {
                let sent = sent + n.min(chunk.len - sent);
                if sent == chunk.len {
                    // Free now, or once the notifications of its zero-copy sends are in.
                    let free = self
                        .zc
                        .as_mut()
                        .map_or(Ok(true), |zc| zc.recycle(BufId(s as u16)));
                    self.bufs[s] = match free {
                        Ok(false) => BufState::Notif,
                        // Ok(true), or Err: an index the tracker does not know was never
                        // sent by zero copy.
                        _ => BufState::Free,
                    };
                    self.send_ix ^= 1;
                } else {
                    self.bufs[s] = BufState::Sending { chunk, sent };
                }
            }
        }
        match self.phase {
            Phase::Respond => self.pump(now),
            Phase::Closing => self.close(),
            _ => self.pump(now),
        }
    }

    /// The result CQE of the [`Op::SendZc`] named `slot` arrived; `more` is its
    /// IORING_CQE_F_MORE (a notification follows). Then as [`HttpConn::on_send`].
    pub fn on_send_zc(&mut self, now: Time, slot: ZcSlot, res: Result<u32, RawErrno>, more: bool) {
        let Some(zc) = self.zc.as_mut() else {
            // Guard: SendZc is only emitted with a tracker; a stray result is a driver bug.
            return self.close();
        };
        match zc.on_result(slot, more) {
            // A result that finishes the send cannot release a deferred buffer: the buffer
            // being sent is not recycled before this very result is handled below.
            Ok(r) => debug_assert!(r.recycle.is_none()),
            Err(_) => return self.close(),
        }
        self.owed.zc_result = None;
        self.send_done(now, res);
    }

    /// The notification CQE (IORING_CQE_F_NOTIF) of the [`Op::SendZc`] named `slot` arrived:
    /// the kernel is done with that send's bytes. May free its buffer for the next read, and
    /// lets a closing connection finish.
    pub fn on_send_notif(&mut self, now: Time, slot: ZcSlot) {
        // A duplicate or unknown notification (a driver or kernel bug) changes nothing, and
        // nothing here depends on it.
        let _ = self.send_notif(now, slot);
    }

    /// [`HttpConn::on_send_notif`]; `Err` (nothing changed) when no send in `slot` owes one.
    pub(super) fn send_notif(&mut self, now: Time, slot: ZcSlot) -> Result<(), ZcError> {
        let zc = self.zc.as_mut().ok_or(ZcError::UnknownSlot(slot))?;
        // The tracker refuses a notification it is not owed before it changes anything
        // (a slot not in flight, a second notification), so it is the check too.
        if let Some(buf) = zc.on_notification(slot)? {
            let b = usize::from(buf.0 & 1);
            debug_assert_eq!(self.bufs[b], BufState::Notif);
            self.bufs[b] = BufState::Free;
        }
        if self.phase == Phase::Closed {
            // The socket is closed; the last notification frees the connection.
            self.free_when_idle();
        } else {
            // Reads may proceed into the freed buffer; a closing connection may be done.
            self.pump(now);
        }
        Ok(())
    }

    /// Zero-copy sends whose result or notification is still to come.
    pub fn zc_in_flight(&self) -> usize {
        self.zc.as_deref().map_or(0, ZcTracker::in_flight)
    }

    /// Appends received bytes to what is kept (allocating the buffer when nothing was).
    pub(super) fn keep(&mut self, bytes: &[u8]) {
        if self.rbuf.is_empty() {
            self.rbuf = vec![0; self.rcap()];
        }
        self.rbuf[self.rlen..self.rlen + bytes.len()].copy_from_slice(bytes);
        self.rlen += bytes.len();
    }

    /// Gives the request buffers back: a connection waiting for its next request holds none.
    /// (Keeping them for a while instead, for a busy connection's next request, measured no
    /// faster and left 0.5 KiB more per idle connection: docs/PERFORMANCE.md.)
    pub(super) fn release_idle_buffers(&mut self) {
        self.rbuf = Vec::new();
        // The request buffers stay where they are until the worker takes them back (in the
        // same turn: the file service asks after every event), so that a connection costs
        // no room for them while it holds them.
        self.idle_scratch = true;
        self.path_len = 0;
        self.head_len = 0;
    }

    /// Whether the connection holds no request buffers (a worker may lend it some with
    /// [`HttpConn::lend_scratch`] before its next request comes in).
    pub fn wants_scratch(&self) -> bool {
        self.path.capacity() == 0 && self.head.capacity() == 0
    }

    /// Request buffers for the next request, from the worker's spares; what the connection
    /// already holds stays, and the rest of `s` is dropped.
    pub fn lend_scratch(&mut self, s: Scratch) {
        if self.path.capacity() == 0 {
            self.path = s.path;
        }
        if self.head.capacity() == 0 {
            self.head = s.head;
        }
        if self.target.capacity() == 0 {
            self.target = s.target;
        }
        if self.spare_req.is_none() {
            self.spare_req = s.req;
        }
    }

    /// The request buffers the connection gave up when it went idle, for the worker to
    /// lend to the next request of any connection.
    pub fn take_scratch(&mut self) -> Option<Scratch> {
        if !core::mem::take(&mut self.idle_scratch) {
            return None;
        }
        let scratch = Scratch {
            path: core::mem::take(&mut self.path),
            head: core::mem::take(&mut self.head),
            target: core::mem::take(&mut self.target),
            req: self.spare_req.take(),
        };
        (scratch.path.capacity() > 0 || scratch.head.capacity() > 0).then_some(scratch)
    }

    /// `info` in a box: the spare one when there is one.
    pub(super) fn boxed_req(&mut self, info: ReqInfo) -> alloc::boxed::Box<ReqInfo> {
        match self.spare_req.take() {
            Some(mut b) => {
                *b = info;
                b
            }
            None => alloc::boxed::Box::new(info),
        }
    }

    /// Issues the next send and read, or finishes the response.
    pub(super) fn pump(&mut self, now: Time) {
        if self.phase != Phase::Respond {
            if self.phase == Phase::Closing {
                self.close();
            }
            return;
        }
        let reading = self.bufs.contains(&BufState::Reading);
        // Sends, strictly in order: the head, then chunks alternating between the buffers.
        if !self.send_in_flight {
            if self.head_sent == 0 && self.head_room > 0 {
                // The head goes with the first chunk, once it is read.
                let s = usize::from(self.send_ix);
                if let BufState::Full(chunk) = self.bufs[s] {
                    self.bufs[s] = BufState::Sending { chunk, sent: 0 };
                    self.send_in_flight = true;
                    self.combined_in_flight = true;
                    self.push(Op::Send(SendSrc::HeadAndBuf {
                        buf: BufIx(self.send_ix),
                        start: chunk.buf_start,
                        len: chunk.len,
                    }));
                }
            } else if self.head_sent < self.head_len {
                self.send_in_flight = true;
                self.push(Op::Send(SendSrc::Head {
                    start: self.head_sent,
                    len: self.head_len - self.head_sent,
                }));
            } else {
                let s = usize::from(self.send_ix);
                match self.bufs[s] {
                    BufState::Full(chunk) => {
                        self.bufs[s] = BufState::Sending { chunk, sent: 0 };
                        self.send_chunk(chunk.buf_start, chunk.len);
                    }
                    BufState::Sending { chunk, sent } => {
                        // A short send: exactly the remainder.
                        self.send_chunk(chunk.buf_start + sent, chunk.len - sent);
                    }
                    // Every chunk read is out: the rest from the file itself, when it can.
                    BufState::Free if self.file_send && !self.file_cold && !reading => {
                        let r = self.read.as_ref().and_then(FileRead::unread);
                        let other_free = self.bufs[s ^ 1] == BufState::Free;
                        if let (Some((offset, left)), true) = (r, other_free) {
                            self.send_in_flight = true;
                            self.file_in_flight = true;
                            self.push(Op::Send(SendSrc::File {
                                offset,
                                len: left.min(u64::from(FILE_SEND_MAX)) as u32,
                            }));
                        }
                    }
                    BufState::Free | BufState::Reading | BufState::Notif => {}
                }
            }
        }
        // One read at a time, into the buffer after the last completed chunk, once it is free.
        // Sending from the file, only the first chunk (it goes with the head) and one after
        // each declined file send are read.
        let r = usize::from(self.read_ix);
        let read_wanted = !self.file_send
            || self.file_cold
            || self.read.as_ref().is_some_and(|r| r.delivered() == 0);
        if read_wanted && !reading && self.bufs[r] == BufState::Free && !self.file_in_flight {
            if let Some(req) = self.read.as_mut().and_then(FileRead::next_read) {
                self.push_read(req);
            }
        }
        let body_done = match &self.read {
            None => true,
            Some(read) => read.done(),
        };
        let idle = !self.send_in_flight && !self.bufs.contains(&BufState::Reading);
        // Buffers awaiting notifications do not hold the response up: its bytes are out.
        let drained = self
            .bufs
            .iter()
            .all(|b| matches!(b, BufState::Free | BufState::Notif));
        if idle && body_done && self.head_sent == self.head_len && drained {
            self.finish(now);
        }
    }

    /// Sends `len` bytes of the chunk buffer `send_ix` from `start`: by zero copy when
    /// configured and a tracker slot is free, else by copy.
    pub(super) fn send_chunk(&mut self, start: u32, len: u32) {
        self.send_in_flight = true;
        let buf = BufIx(self.send_ix);
        let slot = self
            .zc
            .as_mut()
            .and_then(|zc| zc.submit((), BufId(u16::from(buf.0))).ok().flatten());
        self.push(match slot {
            Some(slot) => Op::SendZc {
                buf,
                start,
                len,
                slot,
            },
            None => Op::Send(SendSrc::Buf { buf, start, len }),
        });
    }

    /// Queues `req`, the file's next read, into the read buffer (now filling).
    pub(super) fn push_read(&mut self, req: ReadReq) {
        self.bufs[usize::from(self.read_ix)] = BufState::Reading;
        self.push(Op::Read {
            buf: BufIx(self.read_ix),
            offset: req.offset,
            len: req.len,
            buf_pos: req.buf_pos + self.head_room,
        });
    }
}
