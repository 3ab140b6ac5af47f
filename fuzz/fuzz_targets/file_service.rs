//! One worker's file service with a few connections, driven by arbitrary completion orders
//! and results: the fuzzer picks which operation in flight completes next and how (a stat
//! that finds nothing, an open refused, a short or failed read or send, a receive with no
//! head buffer), when an entry's file is closed or its mapping made (or refused, or to be
//! tried again), ticks, aborts, and when the chunk-buffer queue is served. The pool has one
//! to three buffers and the cache zero to three entries, so reads wait and entries churn.
//!
//! Every completion goes through the connections' checked door and must be accepted (only
//! operations the service handed out complete); the service never leases more buffers than
//! the pool has, never names a buffer for a read the connection does not hold, and never
//! sends from a file the cache does not hold when sends go from mappings. At the end every
//! connection is aborted and everything owed completes: every one must be freed, with every
//! chunk buffer back in the pool.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::errno::RawErrno;
use ringwork_core::filecache::{CacheConfig, FileId};
use ringwork_core::filesvc::{
    ChunkRead, FileConn, FileOp, FileRef, FileSend, FileService, Mapped, ServiceConfig, WorkerOp,
};
use ringwork_core::httpconn::{Config, FileInfo, FileKind, HttpConn, HttpEvent, SendSrc, Time};
use ringwork_core::token::{Generation, OpKind, Slot, Token};

const NOW: Time = Time {
    mono_ms: 1_000,
    mono_us: 0,
    unix_secs: 1_700_000_000,
};

/// The files of the simulated root: name and size.
const FILES: [(&str, u64); 4] = [("a", 10), ("b", 5_000), ("c", 20_000), ("d", 0)];

#[derive(Arbitrary, Debug)]
enum Step {
    /// Complete the `pick`-th operation in flight; `ok` and `frac` shape its result.
    Complete {
        pick: u8,
        ok: bool,
        frac: u8,
    },
    /// Complete the `pick`-th worker operation owed (an entry's close, a mapping) as `how`.
    Worker {
        pick: u8,
        how: u8,
    },
    /// Head buffers are back: the starved receives go again.
    Heads,
    Tick {
        ms: u16,
    },
    Abort {
        conn: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    chunks: u8,
    entries: u8,
    file_send: u8,
    links: bool,
    /// Per connection: the files it asks for, in order (index into FILES, 4+: missing).
    requests: Vec<Vec<u8>>,
    steps: Vec<Step>,
}

struct Conn {
    fc: FileConn,
    requests: Vec<u8>,
    in_flight: Vec<FileOp>,
    freed: bool,
}

struct Sim {
    svc: FileService,
    conns: Vec<Conn>,
    worker: Vec<WorkerOp>,
    starved: Vec<Token>,
    chunks: usize,
    mapped: bool,
    now: Time,
}

fn token(i: usize) -> Token {
    Token::new(OpKind::Recv, Slot(i as u32), Generation::ZERO)
}

fn stat(path: &[u8]) -> Result<(FileInfo, FileId), RawErrno> {
    let name = path.strip_suffix(b"\0").unwrap_or(path);
    let (i, &(_, size)) = FILES
        .iter()
        .enumerate()
        .find(|(_, (n, _))| n.as_bytes() == name)
        .ok_or(RawErrno::NOENT)?;
    let info = FileInfo {
        kind: FileKind::Regular,
        size,
        mtime_secs: 1,
        dio: None,
    };
    Ok((
        info,
        FileId {
            dev: 1,
            ino: i as u64 + 1,
            mtime_ns: 1,
        },
    ))
}

impl Sim {
    fn drive(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.freed {
            return;
        }
        while let Some(op) = self.svc.next(&mut c.fc, token(i), self.now) {
            assert!(
                self.svc.chunks_in_use() <= self.chunks,
                "more buffers leased than the pool has"
            );
            match op {
                FileOp::Free => {
                    assert!(
                        c.in_flight.is_empty(),
                        "freed with {:?} in flight",
                        c.in_flight
                    );
                    c.freed = true;
                    break;
                }
                FileOp::Release(_) | FileOp::Close { .. } => {}
                FileOp::ReadKept { buf, len, .. } => {
                    assert!(c.fc.holds(buf), "a read into a buffer not held");
                    let mut dst = vec![0; len as usize];
                    self.svc.read_kept(&mut c.fc, self.now, buf, &mut dst);
                }
                FileOp::Read(ChunkRead { buf, .. }) => {
                    assert!(c.fc.holds(buf), "a read into a buffer not held");
                    c.in_flight.push(op);
                }
                FileOp::SendFile { file, .. } => {
                    if self.mapped {
                        assert!(
                            matches!(file, FileRef::Entry(_)),
                            "a mapped send of {file:?}"
                        );
                    }
                    c.in_flight.push(op);
                }
                op => c.in_flight.push(op),
            }
        }
        while let Some(op) = self.svc.poll_worker_op() {
            self.worker.push(op);
        }
    }

    fn report(&mut self, i: usize, event: HttpEvent<'_>) {
        let name = event.name();
        if let Err(e) = self.conns[i].fc.http_mut().on_event(self.now, event) {
            panic!("{name} refused: {e}");
        }
    }

    fn complete(&mut self, i: usize, k: usize, ok: bool, frac: u8) {
        let op = self.conns[i].in_flight.remove(k);
        let now = self.now;
        let short = |len: u32| {
            if ok {
                len
            } else {
                (len * u32::from(frac) / 255).max(1).min(len)
            }
        };
        match op {
            FileOp::Recv { max } => {
                if !ok && frac < 32 {
                    // No head buffer: it waits for buffers.
                    self.svc.on_recv_nobufs(&mut self.conns[i].fc, token(i));
                    self.starved.push(token(i));
                    self.conns[i].in_flight.push(op);
                    return self.drive(i);
                }
                let req = match self.conns[i].requests.pop() {
                    Some(f) => {
                        let name = FILES.get(usize::from(f)).map_or("missing", |f| f.0);
                        format!("GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n")
                    }
                    None => String::new(),
                };
                let n = req.len().min(max as usize);
                self.report(i, HttpEvent::Recv(Ok(&req.as_bytes()[..n])));
            }
            FileOp::Stat => {
                let c = &mut self.conns[i];
                let seen = if ok {
                    stat(c.fc.http().path())
                } else {
                    Err(RawErrno::ACCES)
                };
                if let Err(e) = self.svc.on_stat(&mut c.fc, now, seen) {
                    panic!("stat refused: {e}");
                }
            }
            FileOp::Open { .. } => {
                let res = if ok { Ok(()) } else { Err(RawErrno::ACCES) };
                if let Err(e) = self.svc.on_open(&mut self.conns[i].fc, now, res) {
                    panic!("open refused: {e}");
                }
            }
            FileOp::Read(ChunkRead { buf, len, .. }) => {
                let res = if ok || frac > 200 {
                    Ok(short(len))
                } else {
                    Err(RawErrno::IO)
                };
                let chunk = vec![7u8; 70_000];
                if let Err(e) = self
                    .svc
                    .on_read(&mut self.conns[i].fc, now, buf, res, &chunk)
                {
                    panic!("read refused: {e}");
                }
            }
            FileOp::Send(src) => {
                let len = match src {
                    SendSrc::Head { len, .. } | SendSrc::Buf { len, .. } => len,
                    SendSrc::HeadAndBuf { len, .. } | SendSrc::File { len, .. } => len,
                };
                let res = if ok || frac > 100 {
                    Ok(short(len))
                } else {
                    Err(RawErrno::PIPE)
                };
                self.report(i, HttpEvent::Send(res));
            }
            FileOp::SendFile { len, .. } => {
                if !ok && frac < 64 {
                    // The pages were not in memory: declined.
                    let again = frac % 2 == 0;
                    self.report(i, HttpEvent::FileSendDeclined { again });
                } else {
                    self.report(i, HttpEvent::Send(Ok(short(len))));
                }
            }
            FileOp::CloseFile => self.report(i, HttpEvent::FileClosed),
            FileOp::Cancel => {
                // What it cancels ends first (a receive parked for buffers never reached the
                // kernel: the service completes it itself).
                let c = &mut self.conns[i];
                if let Some(k) = c
                    .in_flight
                    .iter()
                    .position(|op| matches!(op, FileOp::Recv { .. }))
                {
                    c.in_flight.remove(k);
                    if !self.starved.contains(&token(i)) {
                        self.report(i, HttpEvent::Recv(Err(RawErrno::CANCELED)));
                    }
                }
                self.report(i, HttpEvent::CancelDone);
            }
            FileOp::Shutdown => self.report(i, HttpEvent::ShutdownDone),
            other => panic!("not in flight: {other:?}"),
        }
        self.drive(i);
    }

    fn serve_waiting(&mut self) {
        while let Some(t) = self.svc.next_waiting() {
            let i = t.slot.0 as usize;
            if !self.conns[i].freed {
                self.svc.wake(&mut self.conns[i].fc);
                self.drive(i);
            }
        }
    }

    fn heads(&mut self) {
        let mut woken = Vec::new();
        self.svc.take_starved(&mut woken);
        for t in woken {
            let i = t.slot.0 as usize;
            self.starved.retain(|s| *s != t);
            if self.conns[i].freed {
                continue;
            }
            // The parked receive goes again (or completes cancelled): out of flight here.
            if let Some(k) = self.conns[i]
                .in_flight
                .iter()
                .position(|op| matches!(op, FileOp::Recv { .. }))
            {
                self.conns[i].in_flight.remove(k);
            }
            self.svc.wake(&mut self.conns[i].fc);
            self.drive(i);
        }
    }

    fn worker_op(&mut self, k: usize, how: u8) {
        match self.worker.remove(k) {
            WorkerOp::CloseEntry(ix) => self.svc.on_entry_closed(ix),
            WorkerOp::Map(ix) => {
                let outcome = [Mapped::Ready, Mapped::Retry, Mapped::Failed][usize::from(how % 3)];
                let _ = self.svc.on_mapped(ix, outcome);
                if how > 200 {
                    self.svc.remap(ix);
                }
            }
        }
    }

    fn busy(&self) -> bool {
        self.conns.iter().any(|c| !c.in_flight.is_empty())
    }
}

fuzz_target!(|input: Input| {
    let chunks = usize::from(input.chunks % 3) + 1;
    let file_send = match input.file_send % 3 {
        0 => FileSend::Off,
        1 => FileSend::Descriptor,
        _ => FileSend::Mapped,
    };
    let cfg = ServiceConfig {
        cache: CacheConfig {
            entries: u32::from(input.entries % 4),
            valid_ms: 500,
            body_budget: 4_096,
            body_max: 1_024,
            max_path: 64,
            inactive_ms: 2_000,
        },
        chunks,
        file_send,
    };
    let http_cfg = Config {
        chunk: 4_096,
        link_open_read: input.links,
        file_send: file_send != FileSend::Off,
        header_timeout_ms: 5_000,
        idle_timeout_ms: 5_000,
        ..Config::default()
    };
    let conns = input
        .requests
        .iter()
        .take(4)
        .map(|r| Conn {
            fc: FileConn::new(HttpConn::new(http_cfg, NOW)),
            requests: r.iter().take(4).rev().copied().collect(),
            in_flight: Vec::new(),
            freed: false,
        })
        .collect::<Vec<_>>();
    if conns.is_empty() {
        return;
    }
    let mut sim = Sim {
        svc: FileService::new(cfg),
        conns,
        worker: Vec::new(),
        starved: Vec::new(),
        chunks,
        mapped: file_send == FileSend::Mapped,
        now: NOW,
    };
    for i in 0..sim.conns.len() {
        sim.drive(i);
    }
    for step in input.steps.iter().take(500) {
        match *step {
            Step::Complete { pick, ok, frac } => {
                let busy: Vec<(usize, usize)> = (0..sim.conns.len())
                    .flat_map(|i| (0..sim.conns[i].in_flight.len()).map(move |k| (i, k)))
                    .collect();
                if let Some(&(i, k)) = busy.get(usize::from(pick) % busy.len().max(1)) {
                    if sim.starved.contains(&token(i))
                        && matches!(sim.conns[i].in_flight[k], FileOp::Recv { .. })
                    {
                        continue;
                    }
                    sim.complete(i, k, ok, frac);
                }
            }
            Step::Worker { pick, how } => {
                if !sim.worker.is_empty() {
                    let k = usize::from(pick) % sim.worker.len();
                    sim.worker_op(k, how);
                }
            }
            Step::Heads => sim.heads(),
            Step::Tick { ms } => {
                sim.now.mono_ms += u64::from(ms);
                sim.svc.expire(sim.now.mono_ms);
                for i in 0..sim.conns.len() {
                    if !sim.conns[i].freed {
                        sim.conns[i].fc.http_mut().on_tick(sim.now);
                        sim.drive(i);
                    }
                }
            }
            Step::Abort { conn } => {
                let i = usize::from(conn) % sim.conns.len();
                if !sim.conns[i].freed {
                    sim.conns[i].fc.http_mut().abort();
                    sim.drive(i);
                }
            }
        }
        sim.serve_waiting();
    }
    // The end: every connection aborted, everything owed completes, in order.
    for i in 0..sim.conns.len() {
        if !sim.conns[i].freed {
            sim.conns[i].fc.http_mut().abort();
            sim.drive(i);
        }
    }
    let mut guard = 0;
    while sim.busy() || !sim.starved.is_empty() {
        sim.heads();
        sim.serve_waiting();
        if let Some(i) = (0..sim.conns.len()).find(|&i| {
            sim.conns[i]
                .in_flight
                .iter()
                .any(|op| !matches!(op, FileOp::Recv { .. }) || !sim.starved.contains(&token(i)))
        }) {
            let k = sim.conns[i]
                .in_flight
                .iter()
                .position(|op| {
                    !matches!(op, FileOp::Recv { .. }) || !sim.starved.contains(&token(i))
                })
                .unwrap();
            sim.complete(i, k, true, 255);
        }
        guard += 1;
        assert!(guard < 100_000, "no progress at the end");
    }
    while let Some(op) = sim.worker.pop() {
        if let WorkerOp::CloseEntry(ix) = op {
            sim.svc.on_entry_closed(ix);
        }
    }
    for (i, c) in sim.conns.iter().enumerate() {
        assert!(c.freed, "connection {i} never freed: {:?}", c.fc.http());
    }
    assert_eq!(sim.svc.chunks_in_use(), 0, "chunk buffers not back");
});
