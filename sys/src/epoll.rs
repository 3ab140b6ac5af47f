//! The epoll baseline's event loop primitive: an epoll instance with a reusable, batched event
//! buffer. Edge-triggered registration is the caller's choice of flags.
//!
//! What it deliberately does not do: read or write; the epoll drivers call rustix's
//! nonblocking socket functions themselves, so the comparison with io_uring is of I/O models.
//! Accepting, with its back-off, is [`crate::accept::EpollAcceptor`]'s (accept4(2) on a
//! listener registered here).

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use rustix::time::Timespec;
use std::time::Duration;

use crate::error::{Error, Result};

pub use rustix::event::epoll::EventFlags as Interest;

/// An epoll instance and a buffer for up to `batch` events per wait.
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<Event>,
    batch: usize,
    waits: u64,
}

impl Epoll {
    /// A new epoll instance returning at most `batch` events per [`Epoll::wait`].
    pub fn new(batch: usize) -> Result<Self> {
        Ok(Self {
            fd: epoll::create(CreateFlags::CLOEXEC).map_err(Error::syscall("epoll_create1"))?,
            events: Vec::with_capacity(batch.max(1)),
            batch: batch.max(1),
            waits: 0,
        })
    }

    /// Registers `fd` with `interest`, tagged with `key`.
    pub fn add(&self, fd: impl AsFd, key: u64, interest: EventFlags) -> Result<()> {
        epoll::add(&self.fd, fd, EventData::new_u64(key), interest)
            .map_err(Error::syscall("epoll_ctl ADD"))
    }

    /// Changes `fd`'s interest and key.
    pub fn modify(&self, fd: impl AsFd, key: u64, interest: EventFlags) -> Result<()> {
        epoll::modify(&self.fd, fd, EventData::new_u64(key), interest)
            .map_err(Error::syscall("epoll_ctl MOD"))
    }

    /// Removes `fd`.
    pub fn delete(&self, fd: impl AsFd) -> Result<()> {
        epoll::delete(&self.fd, fd).map_err(Error::syscall("epoll_ctl DEL"))
    }

    /// Waits for events (at most `timeout`, or forever); returns them as `(key, flags)` pairs.
    /// EINTR and a timeout give none.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<impl Iterator<Item = (u64, EventFlags)> + '_> {
        self.events.clear();
        self.waits += 1;
        let ts = timeout.map(|d| Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        match epoll::wait(&self.fd, spare_capacity(&mut self.events), ts.as_ref()) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(errno) => {
                return Err(Error::Syscall {
                    what: "epoll_wait",
                    errno,
                })
            }
        }
        debug_assert!(self.events.len() <= self.batch);
        Ok(self.events.iter().map(|e| {
            let flags = e.flags;
            (e.data.u64(), flags)
        }))
    }

    /// epoll_wait calls made.
    pub fn waits(&self) -> u64 {
        self.waits
    }
}
