//! Live metrics: each worker's counters published where another thread can read them, and
//! the endpoint that serves them to Prometheus (`--metrics-listen`).
//!
//! A worker keeps its counters in plain fields, as it always has; at most once a
//! millisecond, at the end of a turn of its loop, it copies them into its own [`Slot`]
//! (relaxed stores under a sequence number: a seqlock, so that a reader sees one turn's
//! values, never half of two). The worker never waits, locks or allocates for it; a reader
//! that finds a copy under way tries again. [`Board`] holds one slot per worker, each on
//! cache lines of its own. What goes in a slot, in which order, is the loop's and its
//! engine's ([`crate::worker::Engine::publish`]); turning the sums into text is theirs too.
//!
//! [`Endpoint`] runs the endpoint on a plain thread with nonblocking std sockets under
//! poll(2): off the workers' hot path, scraped once every few seconds, it needs no ring. It
//! answers `GET /metrics` (and `HEAD`) with the text exposition format, anything else with
//! 404, 405 or 400, and closes after each answer (HTTP/1.1, `Connection: close`). A request
//! is read into at most [`MAX_REQUEST`] bytes and must be answered within [`CLIENT_DEADLINE`]
//! of its connection; at most [`MAX_CLIENTS`] connections are served at once (a new one
//! past that replaces the oldest), so a scraper that sends nothing, or garbage, or never
//! reads, holds one of them for a while and delays no other.
//!
//! What it deliberately does not do: keep-alive, TLS, authentication (bind it to an address
//! only the monitoring network reaches), or compression.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringwork_core::metrics::{scrape, Scrape, CONTENT_TYPE};
use rustix::event::{PollFd, PollFlags};

/// Values a worker's slot holds.
pub const VALUES: usize = 128;

/// How often at most a worker publishes (it publishes at the end of a turn of its loop once
/// this has passed since the last, and wakes for it when it has something unpublished).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(1);

/// One worker's published values, on cache lines of its own (128 bytes: adjacent-line
/// prefetch pairs lines), written only by that worker.
#[repr(align(128))]
pub struct Slot {
    /// Odd while the worker copies; bumped twice per copy.
    seq: AtomicU64,
    values: [AtomicU64; VALUES],
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            seq: AtomicU64::new(0),
            values: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Slot {
    /// Publishes `values` (at most [`VALUES`]). Only the slot's worker calls this.
    pub fn publish(&self, values: &[u64]) {
        // The only writer: its own last store.
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd sequence number before the values' stores; pairs with the
        // reader's acquire fence after its loads of the values (a reader that saw any new
        // value then sees the odd number, or a later one, and tries again).
        fence(Ordering::Release);
        for (slot, v) in self.values.iter().zip(values) {
            slot.store(*v, Ordering::Relaxed);
        }
        // Publishes the values' stores with the even number; pairs with the reader's
        // acquire load of `seq` before its loads.
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The values of one publication, added to `sum`.
    fn add_to(&self, sum: &mut [u64; VALUES]) {
        let mut copy = [0u64; VALUES];
        for attempt in 0u32.. {
            // Pairs with the release store that ends a publication.
            let before = self.seq.load(Ordering::Acquire);
            for (c, v) in copy.iter_mut().zip(&self.values) {
                *c = v.load(Ordering::Relaxed);
            }
            // Pairs with the writer's release fence: see `publish`.
            fence(Ordering::Acquire);
            let after = self.seq.load(Ordering::Relaxed);
            if before == after && before % 2 == 0 {
                break;
            }
            // A copy takes the worker well under a microsecond and makes no system call, so
            // it always ends once the worker runs again; but on a loaded machine the worker
            // may be preempted mid-copy for milliseconds. The reader spins, then yields, then
            // sleeps until it does: it never takes a half-written copy (an earlier version
            // gave up after 10,000 tries and summed torn values under load).
            match attempt {
                0..=100 => std::hint::spin_loop(),
                101..=1_000 => std::thread::yield_now(),
                _ => std::thread::sleep(Duration::from_micros(100)),
            }
        }
        for (s, c) in sum.iter_mut().zip(copy) {
            *s = s.wrapping_add(c);
        }
    }
}

/// Every worker's slot.
pub struct Board {
    slots: Box<[Slot]>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Board({} workers)", self.slots.len())
    }
}

impl Board {
    /// A board for `workers` workers, every value 0.
    pub fn new(workers: usize) -> Self {
        Self {
            slots: (0..workers).map(|_| Slot::default()).collect(),
        }
    }

    /// Worker `index`'s slot.
    pub fn slot(&self, index: usize) -> &Slot {
        &self.slots[index]
    }

    /// The workers' values, summed (each worker's from one publication).
    pub fn sum(&self) -> [u64; VALUES] {
        let mut sum = [0; VALUES];
        for slot in self.slots.iter() {
            slot.add_to(&mut sum);
        }
        sum
    }
}

/// Most bytes of a scraper's request read: a request line and a few headers fit.
pub const MAX_REQUEST: usize = 8192;

/// How long a scraper's connection may take, from its accept to the last byte of the
/// answer handed to the kernel.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);

/// Most scrapers' connections served at once.
pub const MAX_CLIENTS: usize = 16;

/// Binds the metrics endpoint at `addr`, before any worker starts, so that a bad address
/// fails the start; [`Endpoint::spawn`] then serves it.
pub struct Endpoint {
    listener: TcpListener,
}

impl Endpoint {
    /// Listens at `addr` (`--metrics-listen`).
    pub fn bind(addr: SocketAddr) -> Result<Self, String> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| format!("--metrics-listen {addr}: cannot listen there: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
        Ok(Self { listener })
    }

    /// The address bound (the port the kernel picked, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves on a thread of its own (`NAME-metrics`) for the rest of the process: each
    /// `GET /metrics` is answered with what `render` writes, at that moment.
    pub fn spawn(
        self,
        name: &str,
        render: impl Fn(&mut String) + Send + 'static,
    ) -> Result<(), String> {
        std::thread::Builder::new()
            .name(format!("{name}-metrics"))
            .spawn(move || serve(self.listener, render))
            .map(drop)
            .map_err(|e| format!("cannot start the metrics thread: {e}"))
    }
}

/// One scraper's connection: its request so far, then its answer.
struct Client {
    stream: TcpStream,
    accepted: Instant,
    request: Vec<u8>,
    /// The answer and how much of it is sent; `None` while the request is read.
    answer: Option<(Vec<u8>, usize)>,
}

/// What became of a client after its turn.
#[derive(PartialEq, Eq)]
enum Turn {
    Keep,
    Done,
}

/// The endpoint's loop: poll the listener and the clients, accept, read, answer, close.
fn serve(listener: TcpListener, render: impl Fn(&mut String)) {
    let mut clients: Vec<Client> = Vec::with_capacity(MAX_CLIENTS);
    loop {
        let ready = poll_once(&listener, &clients);
        let Ok((accept, ready)) = ready else {
            // EINTR or ENOMEM: try again after a moment rather than spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let mut keep = Vec::with_capacity(clients.len());
        for (mut c, ready) in clients.drain(..).zip(ready) {
            let turn = if ready { c.turn(&render) } else { Turn::Keep };
            if turn == Turn::Keep && c.accepted.elapsed() < CLIENT_DEADLINE {
                keep.push(c);
            }
        }
        clients = keep;
        if accept {
            accept_all(&listener, &mut clients);
        }
    }
}

/// Waits (at most 100 ms, for the deadlines) for the listener and the clients: whether to
/// accept, and which clients can go on.
fn poll_once(listener: &TcpListener, clients: &[Client]) -> rustix::io::Result<(bool, Vec<bool>)> {
    let mut fds = Vec::with_capacity(clients.len() + 1);
    fds.push(PollFd::new(listener, PollFlags::IN));
    for c in clients {
        let want = if c.answer.is_some() {
            PollFlags::OUT
        } else {
            PollFlags::IN
        };
        fds.push(PollFd::new(&c.stream, want));
    }
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    rustix::event::poll(&mut fds, Some(&timeout))?;
    let ready = |fd: &PollFd<'_>| !fd.revents().is_empty();
    Ok((ready(&fds[0]), fds[1..].iter().map(ready).collect()))
}

/// Accepts what is waiting; past [`MAX_CLIENTS`], the oldest client goes.
fn accept_all(listener: &TcpListener, clients: &mut Vec<Client>) {
    while let Ok((stream, _)) = listener.accept() {
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if clients.len() >= MAX_CLIENTS {
            clients.remove(0);
        }
        clients.push(Client {
            stream,
            accepted: Instant::now(),
            request: Vec::new(),
            answer: None,
        });
    }
}

impl Client {
    /// Reads what the client sent, or sends what is left of its answer.
    fn turn(&mut self, render: &impl Fn(&mut String)) -> Turn {
        use std::io::{Read, Write};
        if let Some((answer, sent)) = &mut self.answer {
            return match self.stream.write(&answer[*sent..]) {
                Ok(n) if *sent + n == answer.len() => Turn::Done,
                Ok(n) => {
                    *sent += n;
                    Turn::Keep
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Turn::Keep,
                Err(_) => Turn::Done,
            };
        }
        let mut buf = [0u8; 2048];
        let room = MAX_REQUEST
            .saturating_sub(self.request.len())
            .min(buf.len());
        match self.stream.read(&mut buf[..room.max(1)]) {
            Ok(0) => return Turn::Done,
            Ok(n) => self.request.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Turn::Keep,
            Err(_) => return Turn::Done,
        }
        let answer = match scrape(&self.request) {
            Scrape::Partial if self.request.len() < MAX_REQUEST => return Turn::Keep,
            Scrape::Partial => answer(431, "Request Header Fields Too Large", None),
            Scrape::Metrics { head_only } => {
                let mut body = String::with_capacity(16 * 1024);
                render(&mut body);
                let mut a = answer(200, "OK", Some(body.len()));
                if !head_only {
                    a.extend_from_slice(body.as_bytes());
                }
                a
            }
            Scrape::Refuse(status) => answer(status.code(), status.reason(), None),
        };
        self.answer = Some((answer, 0));
        // Try at once: the socket has room for a whole answer, normally.
        self.turn(render)
    }
}

/// An answer's head (and, without `metrics_len`, its short text body), closing after it.
fn answer(code: u16, reason: &str, metrics_len: Option<usize>) -> Vec<u8> {
    let (kind, len, body) = match metrics_len {
        Some(len) => (CONTENT_TYPE, len, String::new()),
        None => {
            let body = format!("{code} {reason}\n");
            ("text/plain; charset=utf-8", body.len(), body)
        }
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader sees what one publication wrote, summed over the workers.
    #[test]
    fn the_board_sums_each_workers_last_publication() {
        let board = Board::new(2);
        board.slot(0).publish(&[1, 2, 3]);
        board.slot(1).publish(&[10, 20]);
        board.slot(0).publish(&[4, 5, 6]);
        let sum = board.sum();
        assert_eq!(sum[..4], [14, 25, 6, 0]);
    }

    /// A reader running beside a writer never sees two values of different publications.
    #[test]
    fn a_reader_never_sees_half_a_publication() {
        let board = std::sync::Arc::new(Board::new(1));
        let writer = {
            let board = std::sync::Arc::clone(&board);
            std::thread::spawn(move || {
                for i in 0..200_000u64 {
                    board.slot(0).publish(&[i; VALUES]);
                }
            })
        };
        while !writer.is_finished() {
            let sum = board.sum();
            assert!(sum.iter().all(|&v| v == sum[0]), "torn: {:?}", &sum[..4]);
        }
        writer.join().unwrap();
    }
}
