//! What ringwork-files adds to the file engines of `ringwork_sys::files` (which perform the
//! file service's operations on io_uring or epoll, on the worker loop every Ringwork server
//! shares): its response rules, its access log and its counters.
//!
//! - Access log (`--access-log`): each worker formats the lines of what its connections
//!   answered into a batch. On io_uring the batch goes out as one IORING_OP_WRITE through
//!   the worker's ring when due (its buffer is the ring's until the CQE, and the worker
//!   does not end before it); on epoll as one write(2).
//! - Counters: at the end each worker adds its engine's and its file service's to the
//!   process's, for the `stats:` line.

use std::net::IpAddr;

use ringwork_core::filesvc::FileService;
use ringwork_core::httpconn::HttpConn;
use ringwork_core::token::Token;
use ringwork_sys::files::{FileHooks, FileStats};
use ringwork_sys::{Cqe, Error, Result, Ring};

use crate::accesslog::{self, RingLog};
use crate::Shared;

/// One worker's hooks.
pub struct Hooks<'s> {
    shared: &'s Shared,
    /// With `--access-log`: the lines not yet written, and on io_uring the write in flight.
    log: Option<RingLog>,
}

impl<'s> Hooks<'s> {
    /// A worker's hooks (both backends keep the same batch; only the write differs).
    pub fn new(shared: &'s Shared) -> Self {
        Self {
            shared,
            log: shared.access_log.as_ref().map(|_| RingLog::default()),
        }
    }
}

impl FileHooks for Hooks<'_> {
    fn new_conn(&mut self, http: HttpConn) -> HttpConn {
        // The rules in force when it was accepted (a SIGHUP reload reaches later ones).
        http.with_rules(self.shared.rules.current())
    }

    fn wants_peer(&self) -> bool {
        self.log.is_some()
    }

    fn answered(&mut self, peer: Option<IpAddr>, http: &mut HttpConn) {
        if let (Some(log), Some(sink)) = (&mut self.log, &self.shared.access_log) {
            accesslog::collect(sink, &mut log.batch, peer, http);
        }
    }

    fn end_of_turn(&mut self, ring: Option<&mut Ring>, stopping: bool) -> Result<()> {
        let (Some(log), Some(sink)) = (&mut self.log, &self.shared.access_log) else {
            return Ok(());
        };
        match ring {
            // The lines so far, in one write through the ring, when due; all of them once
            // stopping (the loop then ends after the write's CQE).
            Some(ring) => log.flush(sink, ring, stopping).map_err(Error::Broken),
            // The lines so far, in one write, when due.
            None => {
                if log.batch.due() {
                    log.batch.write_now(sink);
                }
                Ok(())
            }
        }
    }

    fn owns(&self, token: &Token) -> bool {
        self.log.is_some() && RingLog::owns(token)
    }

    fn on_cqe(&mut self, ring: &mut Ring, cqe: &Cqe) -> Result<()> {
        match (&mut self.log, &self.shared.access_log) {
            (Some(log), Some(sink)) => log.on_cqe(sink, ring, cqe).map_err(Error::Broken),
            _ => Ok(()),
        }
    }

    fn busy(&self) -> bool {
        self.log.as_ref().is_some_and(RingLog::busy)
    }

    fn finish(&mut self, stats: &FileStats, svc: &FileService) {
        if let (Some(log), Some(sink)) = (&mut self.log, &self.shared.access_log) {
            // The lines not yet written (on io_uring none, normally: the loop ends only once
            // the last write's CQE is in).
            log.batch.write_now(sink);
        }
        self.shared.stats.add_files(stats);
        self.shared.stats.add_service(svc);
    }
}
