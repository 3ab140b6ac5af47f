//! The service driven by a simulated kernel: every operation it hands out completes (in an
//! order the test picks), and what must hold at the end holds: every connection freed,
//! every chunk buffer back in the pool, no cache entry held.

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::filecache::CacheConfig;
use crate::httpconn::{Config, FileKind, HttpEvent};
use crate::token::{Generation, OpKind, Slot};

const NOW: Time = Time {
    mono_ms: 1_000,
    mono_us: 0,
    unix_secs: 1_700_000_000,
};

/// The files of the simulated root: path and size.
const FILES: [(&str, u64); 3] = [("a.txt", 100), ("b.txt", 9_000), ("c.txt", 20_000)];

fn stat(path: &[u8]) -> Result<(FileInfo, FileId), RawErrno> {
    let path = &path[..path.len() - 1]; // the NUL
    let (i, &(_, size)) = FILES
        .iter()
        .enumerate()
        .find(|(_, (p, _))| p.as_bytes() == path)
        .ok_or(RawErrno::NOENT)?;
    let info = FileInfo {
        kind: FileKind::Regular,
        size,
        mtime_secs: 1,
        dio: None,
    };
    let id = FileId {
        dev: 1,
        ino: i as u64 + 10,
        mtime_ns: 1,
    };
    Ok((info, id))
}

fn size_of(c: &FileConn) -> u64 {
    stat(c.http().path()).map_or(0, |(info, _)| info.size)
}

fn service(chunks: usize, entries: u32, file_send: FileSend) -> FileService {
    FileService::new(ServiceConfig {
        cache: CacheConfig {
            entries,
            valid_ms: 60_000,
            body_budget: 1 << 20,
            body_max: 4_096,
            max_path: 256,
            inactive_ms: 0,
        },
        chunks,
        file_send,
    })
}

fn http(file_send: FileSend, links: bool) -> HttpConn {
    let cfg = Config {
        chunk: 4_096,
        file_send: file_send != FileSend::Off,
        link_open_read: links,
        ..Config::default()
    };
    HttpConn::new(cfg, NOW)
}

fn token(i: usize) -> Token {
    Token::new(OpKind::Recv, Slot(i as u32), Generation::ZERO)
}

/// One simulated connection: its requests still to send, its ops in flight, its buffers.
struct SimConn {
    fc: FileConn,
    requests: Vec<&'static str>,
    in_flight: Vec<FileOp>,
    bufs: [Vec<u8>; 2],
    freed: bool,
}

struct Sim {
    svc: FileService,
    conns: Vec<SimConn>,
    /// Entries whose close was asked for, to complete later.
    closing: Vec<EntryIx>,
    maps_made: usize,
    file_send: FileSend,
}

impl Sim {
    fn new(
        svc: FileService,
        file_send: FileSend,
        links: bool,
        requests: Vec<Vec<&'static str>>,
    ) -> Self {
        let conns = requests
            .into_iter()
            .map(|requests| SimConn {
                fc: FileConn::new(http(file_send, links)),
                requests,
                in_flight: Vec::new(),
                bufs: [vec![0; 4_096], vec![0; 4_096]],
                freed: false,
            })
            .collect();
        let mut sim = Self {
            svc,
            conns,
            closing: Vec::new(),
            maps_made: 0,
            file_send,
        };
        for i in 0..sim.conns.len() {
            sim.drive(i);
        }
        sim
    }

    /// Takes connection `i`'s operations until it has none; performs at once what a
    /// backend performs at once.
    fn drive(&mut self, i: usize) {
        let c = &mut self.conns[i];
        while let Some(op) = self.svc.next(&mut c.fc, token(i), NOW) {
            match op {
                FileOp::Release(buf) => assert!(!c.fc.holds(buf)),
                FileOp::Free => {
                    assert!(!c.fc.holds(BufIx(0)) && !c.fc.holds(BufIx(1)));
                    assert!(c.in_flight.is_empty(), "freed with {:?}", c.in_flight);
                    c.freed = true;
                }
                FileOp::Close { .. } => {}
                FileOp::ReadKept {
                    buf, buf_pos, len, ..
                } => {
                    assert!(c.fc.holds(buf));
                    let dst = &mut c.bufs[usize::from(buf.0)];
                    let dst = &mut dst[buf_pos as usize..(buf_pos + len) as usize];
                    self.svc.read_kept(&mut c.fc, NOW, buf, dst);
                }
                FileOp::Read(ChunkRead { buf, .. }) => {
                    assert!(c.fc.holds(buf));
                    c.in_flight.push(op);
                }
                FileOp::SendFile { file, .. } => {
                    assert_ne!(self.file_send, FileSend::Off);
                    if self.file_send == FileSend::Mapped {
                        assert!(matches!(file, FileRef::Entry(_)), "{file:?}");
                    }
                    c.in_flight.push(op);
                }
                op => c.in_flight.push(op),
            }
        }
        self.worker_ops();
    }

    fn worker_ops(&mut self) {
        while let Some(op) = self.svc.poll_worker_op() {
            match op {
                WorkerOp::CloseEntry(ix) => self.closing.push(ix),
                WorkerOp::Map(ix) => {
                    self.maps_made += 1;
                    assert!(self.svc.on_mapped(ix, Mapped::Ready));
                }
            }
        }
    }

    /// Completes connection `i`'s `k`th operation in flight.
    fn complete(&mut self, i: usize, k: usize) {
        let c = &mut self.conns[i];
        let op = c.in_flight.remove(k);
        let (svc, fc) = (&mut self.svc, &mut c.fc);
        match op {
            FileOp::Recv { max } => {
                let bytes = match c.requests.pop() {
                    Some(path) => std::format!("GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n"),
                    None => std::string::String::new(),
                };
                assert!(bytes.len() <= max as usize);
                report(fc, HttpEvent::Recv(Ok(bytes.as_bytes())));
            }
            FileOp::Stat => {
                let seen = stat(fc.http().path());
                svc.on_stat(fc, NOW, seen).expect("a stat in flight");
            }
            FileOp::Open { .. } => {
                svc.on_open(fc, NOW, Ok(())).expect("an open in flight");
            }
            FileOp::Read(ChunkRead {
                buf, offset, len, ..
            }) => {
                let n = size_of(fc).saturating_sub(offset).min(u64::from(len)) as u32;
                svc.on_read(fc, NOW, buf, Ok(n), &c.bufs[usize::from(buf.0)])
                    .expect("a read in flight");
            }
            FileOp::Send(src) => {
                let len = match src {
                    SendSrc::Head { len, .. } | SendSrc::Buf { len, .. } => len,
                    other => panic!("{other:?}"),
                };
                report(fc, HttpEvent::Send(Ok(len)));
            }
            FileOp::SendFile { len, .. } => report(fc, HttpEvent::Send(Ok(len))),
            FileOp::CloseFile => report(fc, HttpEvent::FileClosed),
            FileOp::Cancel => {
                // The receive in flight ends cancelled; then the cancel itself.
                if let Some(k) = c
                    .in_flight
                    .iter()
                    .position(|op| matches!(op, FileOp::Recv { .. }))
                {
                    c.in_flight.remove(k);
                    report(fc, HttpEvent::Recv(Err(RawErrno::CANCELED)));
                }
                report(fc, HttpEvent::CancelDone);
            }
            FileOp::Shutdown => report(fc, HttpEvent::ShutdownDone),
            other => panic!("not in flight: {other:?}"),
        }
        self.drive(i);
        self.serve_waiting();
    }

    fn serve_waiting(&mut self) {
        while let Some(t) = self.svc.next_waiting() {
            let i = t.slot.0 as usize;
            if self.conns[i].freed {
                continue;
            }
            self.svc.wake(&mut self.conns[i].fc);
            self.drive(i);
        }
    }

    /// Runs until nothing is in flight, picking what completes next from `picks`.
    fn run(&mut self, picks: &[usize], aborts: &[usize]) {
        let mut step = 0;
        loop {
            if let Some(&i) = aborts.get(step / 7).filter(|_| step % 7 == 3) {
                let i = i % self.conns.len();
                if !self.conns[i].freed {
                    self.conns[i].fc.http_mut().abort();
                    self.drive(i);
                    self.serve_waiting();
                }
            }
            let busy: Vec<(usize, usize)> = (0..self.conns.len())
                .flat_map(|i| (0..self.conns[i].in_flight.len()).map(move |k| (i, k)))
                .collect();
            if busy.is_empty() {
                if let Some(ix) = self.closing.pop() {
                    self.svc.on_entry_closed(ix);
                    continue;
                }
                break;
            }
            let pick = picks.get(step).copied().unwrap_or(0) % busy.len();
            let (i, k) = busy[pick];
            self.complete(i, k);
            step += 1;
            assert!(step < 100_000, "no progress");
        }
        for (i, c) in self.conns.iter().enumerate() {
            assert!(c.freed, "connection {i} never freed: {:?}", c.fc.http());
        }
        assert_eq!(self.svc.chunks_in_use(), 0);
        assert_eq!(self.svc.cache.references(), 0, "cache entries still held");
        assert!(self.svc.waiting.is_empty());
    }
}

/// Reports a completion through the connection's checked door: the simulated kernel only
/// completes what was handed out, so it is never refused.
fn report(fc: &mut FileConn, event: HttpEvent<'_>) {
    let name = event.name();
    fc.http_mut()
        .on_event(NOW, event)
        .unwrap_or_else(|e| panic!("{name} refused: {e}"));
}

fn requests(n: usize, paths: &[&'static str]) -> Vec<&'static str> {
    // Popped from the end: reversed, so that they go in order.
    (0..n).map(|k| paths[k % paths.len()]).rev().collect()
}

#[test]
fn a_second_request_for_a_small_file_needs_no_system_call() {
    let mut sim = Sim::new(
        service(4, 8, FileSend::Off),
        FileSend::Off,
        false,
        vec![vec![]],
    );
    let ops = |sim: &mut Sim| -> Vec<FileOp> { core::mem::take(&mut sim.conns[0].in_flight) };
    sim.conns[0].requests = requests(2, &["a.txt"]);
    // First request: stat, open into an entry, read the file into a leased buffer.
    sim.complete(0, 0); // the receive
    assert_eq!(sim.conns[0].in_flight, [FileOp::Stat]);
    sim.complete(0, 0);
    assert!(matches!(
        sim.conns[0].in_flight[..],
        [FileOp::Open {
            into: FileRef::Entry(_),
            ..
        }]
    ));
    sim.complete(0, 0);
    assert!(
        sim.conns[0].in_flight.iter().any(|op| matches!(
            op,
            FileOp::Read(ChunkRead {
                file: FileRef::Entry(_),
                lease: true,
                ..
            })
        )),
        "{:?}",
        sim.conns[0].in_flight
    );
    while !sim.conns[0]
        .in_flight
        .iter()
        .any(|op| matches!(op, FileOp::Recv { .. }))
    {
        sim.complete(0, 0);
    }
    assert_eq!(sim.svc.stats().body_hits, 0);
    // Second request: the cache answers stat, open and read; only sends remain.
    let k = sim.conns[0]
        .in_flight
        .iter()
        .position(|op| matches!(op, FileOp::Recv { .. }))
        .unwrap();
    sim.complete(0, k);
    let left = ops(&mut sim);
    assert!(
        left.iter().all(|op| matches!(op, FileOp::Send(_))),
        "{left:?}"
    );
    assert_eq!(sim.svc.stats().body_hits, 1);
    assert_eq!(sim.svc.cache_stats().hits, 1);
}

#[test]
fn reads_wait_in_order_for_the_one_buffer_and_closing_ones_are_cancelled() {
    // One chunk buffer, three connections asking for a large file at once.
    let reqs = vec![requests(1, &["c.txt"]); 3];
    let mut sim = Sim::new(service(1, 0, FileSend::Off), FileSend::Off, false, reqs);
    for i in 0..3 {
        sim.complete(i, 0); // receive
        sim.complete(i, 0); // stat
        sim.complete(i, 0); // open
    }
    let reads = |sim: &Sim, i: usize| {
        sim.conns[i]
            .in_flight
            .iter()
            .filter(|op| matches!(op, FileOp::Read(_)))
            .count()
    };
    assert_eq!((reads(&sim, 0), reads(&sim, 1), reads(&sim, 2)), (1, 0, 0));
    assert_eq!(sim.svc.chunks_in_use(), 1);
    assert_eq!(sim.svc.waiting.len(), 2);
    // Connection 1 is dropped while it waits: its read completes cancelled, the queue lets
    // it go, and it closes without ever holding a buffer.
    sim.conns[1].fc.http_mut().abort();
    sim.drive(1);
    assert_eq!(sim.svc.waiting.len(), 1);
    assert!(!sim.conns[1].fc.holds(BufIx(0)));
    sim.run(&[], &[]);
    assert!(
        sim.svc.stats().chunk_waits > 0,
        "connection 2 waited its turn"
    );
    assert_eq!(sim.conns[2].fc.http().requests(), 1);
}

#[test]
fn mapped_sends_wait_for_the_entry_mapping_then_go_from_it() {
    let mut sim = Sim::new(
        service(4, 8, FileSend::Mapped),
        FileSend::Mapped,
        false,
        vec![requests(2, &["c.txt"])],
    );
    sim.run(&[], &[]);
    assert_eq!(sim.maps_made, 1, "one mapping for the entry");
    assert_eq!(sim.conns[0].fc.http().requests(), 2);
}

#[test]
fn a_receive_without_head_buffers_waits_then_goes_again() {
    let mut sim = Sim::new(
        service(4, 8, FileSend::Off),
        FileSend::Off,
        false,
        vec![requests(1, &["a.txt"])],
    );
    let op = sim.conns[0].in_flight.pop().unwrap();
    let FileOp::Recv { max } = op else {
        panic!("{op:?}")
    };
    sim.svc.on_recv_nobufs(&mut sim.conns[0].fc, token(0));
    sim.drive(0);
    assert!(sim.conns[0].in_flight.is_empty(), "waits until woken");
    let mut woken = Vec::new();
    sim.svc.take_starved(&mut woken);
    assert_eq!(woken, [token(0)]);
    sim.svc.wake(&mut sim.conns[0].fc);
    sim.drive(0);
    assert_eq!(sim.conns[0].in_flight, [FileOp::Recv { max }]);
    sim.run(&[], &[]);
    assert_eq!(sim.svc.stats().head_waits, 1);
}

fn file_sends() -> impl Strategy<Value = FileSend> {
    prop_oneof![
        Just(FileSend::Off),
        Just(FileSend::Descriptor),
        Just(FileSend::Mapped)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever order completions come in, however few chunk buffers and cache entries,
    /// and whichever connections are dropped on the way: every connection is freed, every
    /// buffer is back, no entry is held, and a connection not dropped answered everything.
    #[test]
    fn every_connection_ends_with_nothing_held(
        chunks in 1usize..4,
        entries in 0u32..3,
        file_send in file_sends(),
        links in any::<bool>(),
        reqs in proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![Just("a.txt"), Just("b.txt"), Just("c.txt"), Just("nope.txt")],
                0..4,
            ),
            1..5,
        ),
        picks in proptest::collection::vec(any::<usize>(), 0..400),
        aborts in proptest::collection::vec(any::<usize>(), 0..3),
    ) {
        let wanted: Vec<usize> = reqs.iter().map(Vec::len).collect();
        let mut sim = Sim::new(service(chunks, entries, file_send), file_send, links, reqs);
        sim.run(&picks, &aborts);
        if aborts.is_empty() {
            for (c, n) in sim.conns.iter().zip(wanted) {
                prop_assert_eq!(c.fc.http().requests(), n as u64);
            }
        }
        // The service's tally took every answered request, once: none was replaced before
        // it was taken, whatever the order.
        let answered: u64 = sim.conns.iter().map(|c| c.fc.http().requests()).sum();
        prop_assert_eq!(sim.svc.tally().requests(), answered);
        prop_assert_eq!(sim.svc.tally().latency.count(), answered);
    }
}
