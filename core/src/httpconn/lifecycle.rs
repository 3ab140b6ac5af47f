//! The connection around its requests: the next request or the close, timeouts, shutdown
//! and abort, and the cancel, shutdown and close that end it before it is freed.

use super::*;

impl HttpConn {
    /// The completion of an [`Op::Cancel`] request (whatever its result: the cancelled op
    /// reports on its own).
    pub fn on_cancel_done(&mut self, _now: Time) {
        self.completed();
        self.owed.cancel = false;
        if self.phase == Phase::Closing {
            self.close();
        }
    }

    /// The completion of an [`Op::Shutdown`] (whatever its result: a peer that reset the
    /// connection shows in the receive).
    pub fn on_shutdown_done(&mut self, _now: Time) {
        self.completed();
        self.owed.shutdown = false;
        if self.phase == Phase::Closing {
            self.close();
        }
    }

    /// The file close completed.
    pub fn on_file_closed(&mut self, now: Time) {
        self.completed();
        self.file_open = false;
        self.file_closing = false;
        match self.phase {
            Phase::CloseFile => self.next_request(now),
            Phase::ProbeClose { then } => self.on_probe_closed(now, then),
            _ => self.close(),
        }
    }

    /// Time passed: drop the connection if a head, a keep-alive wait or a response has
    /// taken too long. Call at [`HttpConn::next_deadline_ms`] (or every so often: a tenth of
    /// the shortest timeout is plenty).
    pub fn on_tick(&mut self, now: Time) {
        if self.next_deadline_ms().is_some_and(|d| now.mono_ms >= d) {
            self.close();
        }
    }

    /// When the connection next needs [`HttpConn::on_tick`] (monotonic milliseconds, as
    /// [`Time::mono_ms`]): the end of the wait for a head (or of a keep-alive wait with
    /// nothing received), of a response making no progress, or of the discard after an
    /// error. `None`: no timeout runs (a lookup in flight, closing). It moves with every
    /// event: ask again after each.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match self.phase {
            Phase::Head { since } => {
                // A keep-alive wait with nothing received is idle; anything partial is a head.
                let limit = if self.rlen == 0 && self.requests > 0 {
                    self.cfg.idle_timeout_ms
                } else {
                    self.cfg.header_timeout_ms
                };
                // Draining, a new connection's first request gets a short while only.
                let limit = if self.close_after {
                    limit.min(DRAIN_HEAD_WAIT_MS)
                } else {
                    limit
                };
                Some(since.saturating_add(limit))
            }
            Phase::Drain { since, .. } => Some(since.saturating_add(self.cfg.header_timeout_ms)),
            Phase::Respond => Some(self.last_progress.saturating_add(self.cfg.idle_timeout_ms)),
            _ => None,
        }
    }

    /// The server is stopping (a graceful drain): a response in progress (or a request being
    /// looked up) is finished and the connection then closes, as after `Connection: close`
    /// (send side shut down, the client's end of stream awaited); an idle keep-alive
    /// connection closes now. A connection still waiting for its first request (accepted
    /// just before the stop, or during it: its client has been let in and is sending) or
    /// holding part of a head gets that request answered, with `Connection: close`, if it
    /// comes within [`DRAIN_HEAD_WAIT_MS`] of when the wait began (and the header timeout).
    /// Responses not yet begun say `Connection: close`. How long the drain may take is the
    /// driver's to bound, with [`HttpConn::abort`].
    pub fn on_shutdown(&mut self) {
        match self.phase {
            Phase::Head { .. } if self.rlen == 0 && self.requests > 0 => self.close(),
            Phase::Head { .. } => self.close_after = true,
            Phase::Stat { .. }
            | Phase::Open { .. }
            | Phase::OpenFailed { .. }
            | Phase::Probe { .. }
            | Phase::ProbeClose { .. }
            | Phase::Respond
            | Phase::CloseFile => {
                self.close_after = true;
            }
            Phase::Drain { .. } | Phase::Closing | Phase::Closed | Phase::Freed => {}
        }
    }

    /// Drop the connection now, whatever it is doing (a drain's grace period is over): the
    /// socket operation in flight is cancelled, reads in flight finish, the file is closed,
    /// then [`Op::Close`].
    pub fn abort(&mut self) {
        self.close();
    }

    pub(super) fn push_recv(&mut self) {
        if !self.recv_in_flight {
            self.recv_in_flight = true;
            let max = match self.phase {
                Phase::Drain { .. } => self.rcap(),
                _ => self.rcap() - self.rlen,
            };
            self.push(Op::Recv { max: max as u32 });
        }
    }

    /// The response is out.
    pub(super) fn finish(&mut self, now: Time) {
        self.requests += 1;
        let since = self.req.as_ref().map_or(now.mono_us, |r| r.since_us);
        self.answered = Some(Answered {
            status: self.log_status,
            body_bytes: self.log_body,
            latency_us: u32::try_from(now.mono_us.saturating_sub(since)).unwrap_or(u32::MAX),
        });
        if let Some(start) = self.log_open.take() {
            // The entry is complete: its status and body length go in the fixed part.
            self.log[start..start + 2].copy_from_slice(&self.log_status.to_le_bytes());
            self.log[start + 2..start + 10].copy_from_slice(&self.log_body.to_le_bytes());
        }
        self.read = None;
        self.file_send = false;
        if self.file_open {
            self.phase = Phase::CloseFile;
            self.file_closing = true;
            self.push(Op::CloseFile);
        } else {
            self.next_request(now);
        }
    }

    pub(super) fn next_request(&mut self, now: Time) {
        if let Some(done) = self.req.take() {
            self.spare_req = Some(done);
        }
        if self.close_after {
            if self.requests > 0 && self.rlen == 0 && !self.cancel_sent {
                // Error responses and `Connection: close` alike: let the client read first.
                self.phase = Phase::Drain {
                    since: now.mono_ms,
                    drained: 0,
                };
                self.push(Op::Shutdown);
                self.push_recv();
            } else {
                self.close();
            }
            return;
        }
        self.phase = Phase::Head { since: now.mono_ms };
        self.want_head(now);
    }

    /// Closes as soon as nothing is in flight: cancels the socket op, waits for reads, closes
    /// the file, waits for the cancel's and a shutdown's own completions; frees once the
    /// notifications are in too.
    pub(super) fn close(&mut self) {
        if self.is_closed() {
            return;
        }
        if let Some(start) = self.log_open.take() {
            // A response that never finished (the client left, an abort) is not logged.
            self.log.truncate(start);
        }
        self.phase = Phase::Closing;
        let reading = self.bufs.contains(&BufState::Reading);
        if self.recv_in_flight || self.send_in_flight {
            if !self.cancel_sent {
                self.cancel_sent = true;
                self.push(Op::Cancel);
            }
            return;
        }
        if reading {
            // File reads finish on their own; on_read calls back here.
            return;
        }
        if self.file_open {
            // on_file_closed calls back here.
            if !self.file_closing {
                self.file_closing = true;
                self.push(Op::CloseFile);
            }
            return;
        }
        if self.pending > 0 {
            // A stat or open looking the path up, a cancel or shutdown request: each
            // completion calls back here. The socket must outlive requests that name it (a
            // cancel by descriptor would hit a reused number).
            return;
        }
        // SEND_ZC notifications may still be owed (no send result: `send_in_flight` above);
        // see the module docs.
        self.phase = Phase::Closed;
        self.push(Op::Close {
            reset: self.zc_in_flight() > 0,
        });
        self.free_when_idle();
    }

    /// After [`Op::Close`]: [`Op::Free`] once no notification is owed.
    pub(super) fn free_when_idle(&mut self) {
        if self.phase == Phase::Closed && self.in_flight() == 0 {
            self.phase = Phase::Freed;
            self.push(Op::Free);
        }
    }
}

/// During a drain, how long a connection waiting for its first request (or holding part of
/// a head) may take to send it, from when the wait began: a client let in just before or
/// during the stop is answered; one that sends nothing does not hold the drain.
pub const DRAIN_HEAD_WAIT_MS: u64 = 1_000;
