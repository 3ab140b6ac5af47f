//! ringwork-echo end to end: the real binary on loopback, port 0, each scenario on both
//! backends. Loads are bounded (a few hundred clients, tens of MiB) to suit a small machine.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwork_e2e::{
    assert_fds_return, exchange, raise_nofile_limit, random_bytes, run_clients, stat, terminate,
    Server, BACKENDS,
};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::Signal;
use rustix::time::Timespec;

fn start(backend: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0", "--backend", backend];
    args.extend_from_slice(extra);
    Server::start("ringwork-echo", &args)
}

/// Payload sizes: mostly small, some medium, a few of 1 MiB. About 20 MiB for 500 clients.
fn size_for(i: usize) -> usize {
    match i % 50 {
        0 => 1 << 20,
        1..=4 => 200_000 + i * 7,
        _ => 1 + (i * 7919) % 12_000,
    }
}

fn integrity(backend: &str) {
    raise_nofile_limit();
    let server = start(backend, &["--threads", "2"]);
    let baseline = server.fd_count();
    run_clients(server.addr, 500, None, size_for);
    // Small client receive buffers: the server's sends come back short and are resubmitted.
    run_clients(server.addr, 40, Some(4096), |i| 100_000 + i * 1013);
    assert_fds_return(&server, baseline, "after integrity clients");
}

#[test]
fn integrity_500_clients_uring() {
    integrity(BACKENDS[0]);
}

#[test]
fn integrity_500_clients_epoll() {
    integrity(BACKENDS[1]);
}

/// SQPOLL (the kernel's poller submits; no DEFER_TASKRUN): the same integrity scenario on
/// one thread, then a clean stop with every connection counted.
#[test]
fn integrity_500_clients_uring_sqpoll() {
    raise_nofile_limit();
    let server = start("uring", &["--threads", "1", "--sqpoll"]);
    let baseline = server.fd_count();
    run_clients(server.addr, 500, None, size_for);
    run_clients(server.addr, 40, Some(4096), |i| 100_000 + i * 1013);
    assert_fds_return(&server, baseline, "after integrity clients (sqpoll)");
    let stats = terminate(server);
    assert_eq!(stat(&stats, "conns"), 540, "{stats}");
}

/// `--zerocopy`: every send a SEND_ZC whose buffer goes back to the ring only after its
/// notification. The integrity scenario (the short-send half makes sends of one buffer
/// overlap their notifications), then a clean stop in which every notification was reaped
/// (the worker waits for them) and loopback reported each one as copied.
#[test]
fn integrity_500_clients_uring_zerocopy() {
    raise_nofile_limit();
    let server = start("uring", &["--threads", "2", "--zerocopy"]);
    let baseline = server.fd_count();
    run_clients(server.addr, 500, None, size_for);
    run_clients(server.addr, 40, Some(4096), |i| 100_000 + i * 1013);
    assert_fds_return(&server, baseline, "after integrity clients (zerocopy)");
    let stats = terminate(server);
    println!("zerocopy: {stats}");
    assert_eq!(stat(&stats, "conns"), 540, "{stats}");
    assert_eq!(stat(&stats, "refused"), 0, "{stats}");
    assert!(
        stat(&stats, "zc_notifs") > 0,
        "no SEND_ZC notifications: {stats}"
    );
    assert!(
        stat(&stats, "zc_copied") <= stat(&stats, "zc_notifs"),
        "{stats}"
    );
}

/// Receive bundles: completions that span several ring buffers are split back into buffers
/// in ring order; every byte of every client must come back in order, also with the ring
/// small enough to run dry (ENOBUFS) mid-bundle.
#[test]
fn integrity_500_clients_uring_bundles() {
    raise_nofile_limit();
    for buffers in ["1024", "16"] {
        let server = start(
            "uring",
            &["--threads", "2", "--bundle", "--buffers", buffers],
        );
        let baseline = server.fd_count();
        run_clients(server.addr, 500, None, size_for);
        run_clients(server.addr, 40, Some(4096), |i| 100_000 + i * 1013);
        assert_fds_return(&server, baseline, "after integrity clients (bundles)");
        let stats = terminate(server);
        println!("bundles, {buffers} buffers: {stats}");
        assert_eq!(stat(&stats, "conns"), 540, "{stats}");
        assert_eq!(stat(&stats, "refused"), 0, "{stats}");
        assert!(
            stat(&stats, "bundles") > 0,
            "no receive ever spanned two buffers, so bundles were not exercised: {stats}"
        );
    }
}

/// Incremental buffer consumption: many receives, of many connections, share one buffer at
/// increasing offsets; every byte must come back in order, also with a ring of four buffers
/// that runs dry.
#[test]
fn integrity_500_clients_uring_incremental_buffers() {
    raise_nofile_limit();
    for buffers in ["1024", "4"] {
        let server = start(
            "uring",
            &["--threads", "2", "--incremental", "--buffers", buffers],
        );
        let baseline = server.fd_count();
        run_clients(server.addr, 500, None, size_for);
        run_clients(server.addr, 40, Some(4096), |i| 100_000 + i * 1013);
        assert_fds_return(&server, baseline, "after integrity clients (incremental)");
        let stats = terminate(server);
        println!("incremental, {buffers} buffers: {stats}");
        assert_eq!(stat(&stats, "conns"), 540, "{stats}");
        assert_eq!(stat(&stats, "refused"), 0, "{stats}");
        assert!(
            stat(&stats, "buf_more") > 0,
            "no buffer ever held two receives, so incremental consumption was not \
             exercised: {stats}"
        );
    }
}

/// Every optional io_uring feature disabled at once (what an old or buggy kernel gets):
/// single-shot accept, single-shot recv re-armed per completion, plain sends although
/// `--zerocopy` asks for SEND_ZC, no SQPOLL although `--sqpoll` asks for it, no
/// DEFER_TASKRUN, and receive buffers handed back with PROVIDE_BUFFERS SQEs instead of a
/// buffer ring. The integrity scenario, then a clean stop.
#[test]
fn integrity_500_clients_uring_everything_disabled() {
    raise_nofile_limit();
    let server = start(
        "uring",
        &[
            "--threads",
            "2",
            "--zerocopy",
            "--sqpoll",
            "--disable",
            "multishot-accept,multishot-recv,send-zc,sqpoll,defer-taskrun,coop-taskrun,pbuf-ring,cancel-fd",
        ],
    );
    let baseline = server.fd_count();
    run_clients(server.addr, 500, None, size_for);
    run_clients(server.addr, 40, Some(4096), |i| 100_000 + i * 1013);
    assert_fds_return(&server, baseline, "after integrity clients (all disabled)");
    let stats = terminate(server);
    println!("everything disabled: {stats}");
    assert_eq!(stat(&stats, "conns"), 540, "{stats}");
    assert_eq!(stat(&stats, "refused"), 0, "{stats}");
    assert_eq!(stat(&stats, "zc_notifs"), 0, "{stats}");
    // The PROVIDE_BUFFERS path really ran: its SQEs (which complete silently) returned the
    // buffers, about one per message.
    assert!(stat(&stats, "skip_success") > 500, "{stats}");
    // Nothing multishot and no SEND_ZC notifications: exactly one CQE per SQE that owes one.
    assert_eq!(
        stat(&stats, "submitted") - stat(&stats, "skip_success"),
        stat(&stats, "completions"),
        "{stats}"
    );
}

/// Plain waits (`--batch 1`, what a kernel without IORING_FEAT_MIN_TIMEOUT gets; the
/// default batches), and batches with a long min_wait: the integrity scenario on each.
#[test]
fn integrity_500_clients_uring_plain_and_long_batch_waits() {
    raise_nofile_limit();
    for extra in [
        ["--batch", "1", "--batch-wait-us", "50"],
        ["--batch", "64", "--batch-wait-us", "500"],
    ] {
        let mut args = vec!["--threads", "2"];
        args.extend_from_slice(&extra);
        let server = start("uring", &args);
        let baseline = server.fd_count();
        run_clients(server.addr, 500, None, size_for);
        run_clients(server.addr, 40, Some(4096), |i| 100_000 + i * 1013);
        assert_fds_return(
            &server,
            baseline,
            &format!("after integrity clients {extra:?}"),
        );
    }
}

/// The single-shot accept path (what a kernel without multishot accept gets), forced.
#[test]
fn single_shot_accept_fallback_uring() {
    raise_nofile_limit();
    let server = start("uring", &["--threads", "1", "--accept-mode", "single"]);
    let baseline = server.fd_count();
    run_clients(server.addr, 100, None, |i| 1 + i * 331);
    assert_fds_return(&server, baseline, "after single-shot accepts");
    let stats = terminate(server);
    assert_eq!(stat(&stats, "conns"), 100, "{stats}");
}

fn misbehaving_clients(backend: &str) {
    raise_nofile_limit();
    let server = start(backend, &["--threads", "2"]);
    let baseline = server.fd_count();
    let addr = server.addr;

    // Half-close: shutdown(Write) first, then read everything back.
    for i in 0..5 {
        let payload = random_bytes(100 + i, 50_000);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&payload).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert!(back == payload, "half-close echo");
    }

    // Reset mid-transfer: SO_LINGER 0, then close with data in both directions.
    for i in 0..10 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&random_bytes(200 + i, 300_000)).unwrap_or(());
        let mut some = [0u8; 1000];
        let _ = s.read(&mut some);
        rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO)).unwrap();
        drop(s);
    }

    // Never read: the server's sends back up; it must stop reading, not grow or die.
    let stop = Arc::new(AtomicBool::new(false));
    let sluggards: Vec<_> = (0..4)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let chunk = random_bytes(300 + i, 64 * 1024);
                let mut written = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    match s.write(&chunk) {
                        Ok(n) => written += n,
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                written
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));

    // Meanwhile a fresh client is served.
    let payload = random_bytes(7, 100_000);
    assert!(exchange(addr, &payload, None) == payload, "fresh client");

    stop.store(true, Ordering::Relaxed);
    for h in sluggards {
        let written = h.join().unwrap();
        assert!(written > 0);
    }
    assert_fds_return(&server, baseline, "after misbehaving clients");
    let payload = random_bytes(8, 10_000);
    assert!(
        exchange(addr, &payload, None) == payload,
        "fresh client after"
    );
}

#[test]
fn half_close_reset_and_never_read_uring() {
    misbehaving_clients(BACKENDS[0]);
}

#[test]
fn half_close_reset_and_never_read_epoll() {
    misbehaving_clients(BACKENDS[1]);
}

fn ten_thousand(backend: &str) {
    const CONNS: usize = 10_000;
    raise_nofile_limit();
    let server = start(backend, &["--threads", "2"]);
    let baseline = server.fd_count();
    let rss_before = server.rss_kib();
    let mut client = Command::new(ringwork_e2e::binary("ringwork-e2e-client"))
        .args([server.addr.to_string(), CONNS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ringwork-e2e-client");
    let mut out = client.stdout.take().unwrap();
    let mut line = [0u8; 64];
    let n = out.read(&mut line).unwrap();
    let line = String::from_utf8_lossy(&line[..n]).into_owned();
    assert!(line.starts_with("ready"), "client said {line:?}");
    assert!(
        server.wait_until(Duration::from_secs(10), |s| s.fd_count()
            >= baseline + CONNS),
        "server holds {} fds with {CONNS} clients (baseline {baseline})",
        server.fd_count()
    );
    let rss_idle = server.rss_kib();
    let per_conn = (rss_idle.saturating_sub(rss_before) * 1024) as f64 / CONNS as f64;
    println!(
        "{backend}: RSS {rss_before} KiB idle, {rss_idle} KiB with {CONNS} connections: \
         {per_conn:.0} bytes per connection (beyond the slots preallocated for --max-conns)"
    );
    drop(client.stdin.take()); // the client exits and closes everything
    assert!(client.wait().unwrap().success(), "client failed");
    assert_fds_return(&server, baseline, "after 10K connections closed");
}

#[test]
fn ten_thousand_connections_uring() {
    ten_thousand(BACKENDS[0]);
}

#[test]
fn ten_thousand_connections_epoll() {
    ten_thousand(BACKENDS[1]);
}

fn tiny_buffer_ring(backend: &str, extra: &[&str]) {
    raise_nofile_limit();
    let mut args = vec!["--threads", "1", "--buffers", "4", "--buffer-size", "4096"];
    args.extend_from_slice(extra);
    let server = start(backend, &args);
    // Small client receive buffers hold the server's sends back, so buffers stay queued and
    // the ring (or pool) runs dry.
    run_clients(server.addr, 60, Some(4096), |i| 50_000 + i * 997);
    let stats = terminate(server);
    println!("{backend} {extra:?}: {stats}");
    // The provided ring runs dry under the burst (multishot recv grabs buffers as data comes).
    // The epoll pool only runs dry when sends stall, which loopback rarely makes happen.
    if backend == "uring" {
        assert!(
            stat(&stats, "nobufs") > 0,
            "the burst never ran the ring dry: {stats}"
        );
    }
    assert_eq!(stat(&stats, "refused"), 0, "{stats}");
}

#[test]
fn tiny_buffer_ring_loses_nothing_uring() {
    tiny_buffer_ring(BACKENDS[0], &[]);
}

/// The same storm with the buffers handed back by PROVIDE_BUFFERS SQEs (no buffer ring).
#[test]
fn tiny_provide_buffers_group_loses_nothing_uring() {
    tiny_buffer_ring(BACKENDS[0], &["--disable", "pbuf-ring"]);
}

#[test]
fn tiny_buffer_ring_loses_nothing_epoll() {
    tiny_buffer_ring(BACKENDS[1], &[]);
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

fn sigterm_under_load(backend: &str) {
    raise_nofile_limit();
    let server = start(backend, &["--threads", "2"]);
    let addr = server.addr;

    // Finished clients: all their bytes are written before the signal; they read nothing
    // until after it, so the echo is still on its way when the server is told to stop.
    let finished: Vec<(TcpStream, Vec<u8>)> = (0..10)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            let payload = random_bytes(500 + i, 32 * 1024);
            s.write_all(&payload).unwrap();
            (s, payload)
        })
        .collect();

    // Busy clients: write and read continuously through the signal.
    let busy: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_nonblocking(true).unwrap();
                let (mut sent, mut got) = (0usize, 0usize);
                let mut chunk = vec![0u8; 16 * 1024];
                let mut buf = vec![0u8; 64 * 1024];
                let mut writing = true;
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    let flags = if writing {
                        PollFlags::IN | PollFlags::OUT
                    } else {
                        PollFlags::IN
                    };
                    let mut fds = [PollFd::new(&s, flags)];
                    let ts = Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    };
                    poll(&mut fds, Some(&ts)).unwrap();
                    let revents = fds[0].revents();
                    if writing && revents.contains(PollFlags::OUT) {
                        for (k, b) in chunk.iter_mut().enumerate() {
                            *b = pattern(sent + k);
                        }
                        match (&s).write(&chunk) {
                            Ok(n) => sent += n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => writing = false,
                        }
                    }
                    if revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                        match (&s).read(&mut buf) {
                            Ok(0) => return (sent, got, true),
                            Ok(n) => {
                                for (k, &b) in buf[..n].iter().enumerate() {
                                    assert_eq!(b, pattern(got + k), "busy echo at {}", got + k);
                                }
                                got += n;
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            // A reset: the server closed with unread bytes in its socket.
                            Err(_) => return (sent, got, false),
                        }
                    }
                }
                panic!("busy client never saw the server close");
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    server.signal(Signal::TERM);

    for (i, (mut s, payload)) in finished.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("finished client {i}: {e}"));
        assert!(
            back == payload,
            "finished client {i}: {} of {} bytes echoed",
            back.len(),
            payload.len()
        );
    }
    for h in busy {
        let (sent, got, _eof) = h.join().expect("busy client");
        assert!(got <= sent, "echoed more than sent");
        assert!(got > 0, "busy client got nothing echoed");
    }
    let stats = terminate(server);
    println!("{backend}: {stats}");
    assert!(stat(&stats, "conns") >= 18, "{stats}");
}

#[test]
fn sigterm_under_load_uring() {
    sigterm_under_load(BACKENDS[0]);
}

#[test]
fn sigterm_under_load_epoll() {
    sigterm_under_load(BACKENDS[1]);
}

/// A peer that sends and never reads holds its echo (the server's send to it stalls): at
/// SIGTERM the drain cannot finish that connection, and once the grace period (3 s) is over it
/// is aborted (everything in flight cancelled, then closed) and the server exits 0. The same
/// `Event::Abort` on both backends: io_uring cancels the stalled send, epoll abandons the
/// write that waits for EPOLLOUT.
fn sigterm_with_a_peer_that_never_reads(backend: &str, extra: &[&str]) {
    let mut args = vec!["--threads", "1"];
    args.extend_from_slice(extra);
    let mut server = start(backend, &args);
    let mut s = ringwork_e2e::connect(server.addr, Some(4096));
    s.set_nonblocking(true).unwrap();
    // Write until the echo has stalled and backpressure stops the server reading: then our
    // writes block for good.
    let chunk = vec![7u8; 64 * 1024];
    let (mut written, mut blocked_since) = (0usize, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !blocked_since.is_some_and(|t: Instant| t.elapsed() >= Duration::from_millis(300)) {
        assert!(Instant::now() < deadline, "{backend}: writes never blocked");
        match s.write(&chunk) {
            Ok(n) => {
                written += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                blocked_since.get_or_insert_with(Instant::now);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{backend}: write: {e}"),
        }
    }
    let t = Instant::now();
    server.signal(Signal::TERM);
    assert_eq!(
        server.wait_exit(Duration::from_secs(15)),
        Ok(Some(0)),
        "{backend}: after {written} bytes written and none read"
    );
    let took = t.elapsed();
    println!("{backend}: exited {took:?} after SIGTERM with {written} bytes unread");
    assert!(
        took >= Duration::from_millis(2500),
        "{backend}: exited after {took:?}: the stalled echo was dropped before the grace ran out"
    );
}

#[test]
fn sigterm_with_a_peer_that_never_reads_uring() {
    sigterm_with_a_peer_that_never_reads(BACKENDS[0], &[]);
}

/// As before Linux 5.19, where no cancel takes a descriptor: the stalled send still ends.
#[test]
fn sigterm_with_a_peer_that_never_reads_uring_without_cancel_by_fd() {
    sigterm_with_a_peer_that_never_reads(BACKENDS[0], &["--disable", "cancel-fd"]);
}

#[test]
fn sigterm_with_a_peer_that_never_reads_epoll() {
    sigterm_with_a_peer_that_never_reads(BACKENDS[1], &[]);
}

/// `--max-conns`: connections beyond the limit are closed at once; freed room is reused.
#[test]
fn max_conns_closes_the_excess() {
    for backend in BACKENDS {
        let server = start(backend, &["--threads", "1", "--max-conns", "2"]);
        let baseline = server.fd_count();
        let held: Vec<TcpStream> = (0..2)
            .map(|i| {
                let mut s = TcpStream::connect(server.addr).unwrap();
                s.write_all(&[i; 10]).unwrap();
                let mut back = [0u8; 10];
                s.read_exact(&mut back).unwrap();
                assert_eq!(back, [i; 10]);
                s
            })
            .collect();
        let mut excess = TcpStream::connect(server.addr).unwrap();
        excess
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = excess.write_all(b"over the limit");
        let mut buf = [0u8; 32];
        match excess.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("{backend}: the excess connection was served ({n} bytes)"),
        }
        drop(held);
        drop(excess);
        assert_fds_return(&server, baseline, "after the held connections closed");
        let payload = random_bytes(9, 1000);
        assert!(
            exchange(server.addr, &payload, None) == payload,
            "{backend}: no room after the held connections closed"
        );
        let stats = terminate(server);
        assert!(stat(&stats, "rejected") >= 1, "{backend}: {stats}");
    }
}

/// `--listen` twice: 127.0.0.1 and [::1] at once, every thread holding a listener on each,
/// echoing byte for byte on both, on both backends. Without IPv6 loopback the test fails and
/// says so.
#[test]
fn listens_on_ipv4_and_ipv6_at_once() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        panic!("IPv6 loopback [::1] is unavailable here ({e}): this test needs it");
    }
    for backend in BACKENDS {
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
            "--threads",
            "2",
            "--backend",
            backend,
        ];
        let server = Server::start("ringwork-echo", &args);
        assert_eq!(server.addrs.len(), 2, "{backend}: both addresses printed");
        assert!(server.addrs[0].is_ipv4() && server.addrs[1].is_ipv6());
        for addr in &server.addrs {
            assert_eq!(
                server.listeners_on(*addr),
                2,
                "{backend}: one per thread on {addr}"
            );
        }
        for addr in &server.addrs {
            for i in 0..8 {
                let payload = random_bytes(i, 10_000 + i as usize);
                assert!(
                    exchange(*addr, &payload, None) == payload,
                    "{backend} via {addr}"
                );
            }
        }
        let stats = terminate(server);
        assert_eq!(stat(&stats, "conns"), 16, "{backend}: {stats}");
    }
}
