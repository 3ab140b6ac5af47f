//! What a cache hit costs in heap allocations: one keep-alive connection asks for the same
//! small file again and again, driven through the file service the way the backends drive it
//! (every operation completed at once, as a fast kernel would), and a counting global
//! allocator reports the allocations of each request after the first (the miss that fills
//! the cache). Per-request allocations are per-request malloc/free on the server's hottest
//! path; the count is printed, and held at or below `MAX_PER_HIT` (zero). Between requests
//! the connection holds none of those buffers: the worker keeps them for the next. (A test of core's machines
//! that lives in sys: a global allocator is `unsafe`, and all of Ringwork's `unsafe` is here.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use ringwork_core::filecache::{CacheConfig, FileId};
use ringwork_core::filesvc::{ChunkRead, FileConn, FileOp, FileSend, FileService, ServiceConfig};
use ringwork_core::httpconn::{Config, FileInfo, FileKind, HttpConn, HttpEvent, SendSrc, Time};
use ringwork_core::token::{Generation, OpKind, Slot, Token};

/// Counts every allocation (and reallocation) of the test process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The most allocations a hit may cost: none (its path, target, head and request record
/// are buffers idle connections gave back to the worker).
const MAX_PER_HIT: u64 = 0;

const NOW: Time = Time {
    mono_ms: 1_000,
    mono_us: 0,
    unix_secs: 1_700_000_000,
};

const REQUEST: &[u8] = b"GET /page.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n";
const SIZE: u64 = 2_000;

/// Serves one request on connection `fc`: its receive (`armed`: the one it asked for after
/// the last request) completes with the request, and everything the request leads to
/// completes at once, until the connection asks for its next receive.
fn serve(
    svc: &mut FileService,
    fc: &mut FileConn,
    bufs: &mut [Vec<u8>; 2],
    sent: &mut u64,
    armed: &mut bool,
) {
    let token = Token::new(OpKind::Recv, Slot(0), Generation::ZERO);
    let mut fed = false;
    if std::mem::take(armed) {
        fed = true;
        svc.on_recv(fc, NOW, Ok(REQUEST)).unwrap();
    }
    while let Some(op) = svc.next(fc, token, NOW) {
        match op {
            // The next receive: it completes in the next call; the ops after it (the
            // chunk buffer's release) are performed now, as a backend does.
            FileOp::Recv { .. } if fed => *armed = true,
            FileOp::Recv { .. } => {
                fed = true;
                svc.on_recv(fc, NOW, Ok(REQUEST)).unwrap();
            }
            FileOp::Stat => {
                let info = FileInfo {
                    kind: FileKind::Regular,
                    size: SIZE,
                    mtime_secs: 1,
                    dio: None,
                };
                let id = FileId {
                    dev: 1,
                    ino: 2,
                    mtime_ns: 3,
                };
                svc.on_stat(fc, NOW, Ok((info, id))).unwrap();
            }
            FileOp::Open { .. } => {
                svc.on_open(fc, NOW, Ok(())).unwrap();
            }
            FileOp::Read(ChunkRead { buf, len, .. }) => {
                let b = &mut bufs[usize::from(buf.0)];
                b.iter_mut().take(len as usize).for_each(|x| *x = b'x');
                let bytes = std::mem::take(b);
                svc.on_read(fc, NOW, buf, Ok(len), &bytes).unwrap();
                *b = bytes;
            }
            FileOp::ReadKept {
                buf, buf_pos, len, ..
            } => {
                let mut b = std::mem::take(&mut bufs[usize::from(buf.0)]);
                let at = buf_pos as usize..(buf_pos + len) as usize;
                svc.read_kept(fc, NOW, buf, &mut b[at]);
                bufs[usize::from(buf.0)] = b;
            }
            FileOp::Send(src) => {
                let len = match src {
                    SendSrc::Head { len, .. } | SendSrc::Buf { len, .. } => len,
                    SendSrc::HeadAndBuf { len, .. } => fc.http().head_bytes().len() as u32 + len,
                    SendSrc::File { len, .. } => len,
                };
                *sent += u64::from(len);
                fc.http_mut()
                    .on_event(NOW, HttpEvent::Send(Ok(len)))
                    .unwrap();
            }
            FileOp::SendFile { len, .. } => {
                *sent += u64::from(len);
                fc.http_mut()
                    .on_event(NOW, HttpEvent::Send(Ok(len)))
                    .unwrap();
            }
            FileOp::CloseFile => fc.http_mut().on_event(NOW, HttpEvent::FileClosed).unwrap(),
            FileOp::Release(_) => {}
            op => panic!("unexpected {op:?}"),
        }
    }
}

#[test]
fn a_cache_hit_allocates_nothing_and_an_idle_connection_holds_no_request_buffers() {
    let mut svc = FileService::new(ServiceConfig {
        cache: CacheConfig {
            entries: 16,
            valid_ms: 60_000,
            body_budget: 1 << 20,
            body_max: 65_536,
            max_path: 2_100,
            inactive_ms: 0,
        },
        chunks: 4,
        file_send: FileSend::Off,
    });
    let cfg = Config {
        head_with_body: true,
        ..Config::default()
    };
    let mut fc = FileConn::new(HttpConn::new(cfg, NOW));
    let mut bufs = [vec![0u8; 70_000], vec![0u8; 70_000]];
    let mut sent = 0;
    let mut armed = false;
    // The miss, then one hit to settle whatever grows once.
    serve(&mut svc, &mut fc, &mut bufs, &mut sent, &mut armed);
    serve(&mut svc, &mut fc, &mut bufs, &mut sent, &mut armed);
    let before = sent;
    const HITS: u64 = 100;
    let start = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..HITS {
        serve(&mut svc, &mut fc, &mut bufs, &mut sent, &mut armed);
        // Waiting for its next request: its request buffers are the worker's again.
        assert!(fc.http().wants_scratch());
    }
    let per_hit = (ALLOCATIONS.load(Ordering::Relaxed) - start) as f64 / HITS as f64;
    // Every hit was answered: head and body.
    assert!(sent - before > HITS * SIZE, "{} bytes", sent - before);
    assert_eq!(svc.cache_stats().hits, HITS + 1);
    println!("allocations per hit: {per_hit}");
    assert!(
        per_hit <= MAX_PER_HIT as f64,
        "{per_hit} allocations per hit (ceiling {MAX_PER_HIT})"
    );
}
