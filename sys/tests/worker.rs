//! The worker loop on both backends, in process, as a user of the crate runs it: `ProtocolConn<Echo>`
//! served byte-exact to concurrent clients, a client that resets mid-stream freeing what it
//! held (the next clients are served the same), and the stop notice draining to a clean return
//! whose counters add up; a `ProtocolConn` closed by its idle timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringwork_core::protocol::{Echo, Limits, Output, Protocol, ProtocolConn};
use ringwork_sys::backend::Backend;
use ringwork_sys::driver::{stop_notices, StartGate};
use ringwork_sys::net::{listener, SocketMode};
use ringwork_sys::worker::{run_on, Admission, StreamConfig, StreamStats, UringOptions, WorkerIo};

const CLIENTS: usize = 8;
const PAYLOAD: usize = 200 * 1024;

/// Sends `PAYLOAD` bytes (distinct per client) and reads them back while it writes.
fn echo_client(addr: SocketAddr, seed: u8) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8 ^ seed).collect();
    let writer = {
        let mut s = s.try_clone().unwrap();
        let payload = payload.clone();
        std::thread::spawn(move || s.write_all(&payload).unwrap())
    };
    let mut back = vec![0; PAYLOAD];
    s.read_exact(&mut back).expect("the whole echo");
    writer.join().unwrap();
    assert!(back == payload, "client {seed}: echoed bytes differ");
}

/// A client that sends, sees its echo begin, then resets the connection (SO_LINGER 0) with
/// the rest in flight.
fn resetting_client(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&vec![7u8; 64 * 1024]).unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).expect("the echo begins");
    rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO)).unwrap();
}

fn serve_then_stop(backend: Backend) -> StreamStats {
    // A plain listener: one worker accepts on it.
    let listener = listener(
        "127.0.0.1:0".parse().unwrap(),
        SocketMode::for_backend(backend),
    )
    .expect("a loopback listener");
    let addr = ringwork_sys::net::local_addr(&listener).unwrap();
    let (stop, mut notices) = stop_notices(1).unwrap();
    let notice = notices.pop().expect("one notice per worker");
    let cfg = StreamConfig {
        name: "worker-test",
        buffers: 64,
        max_conns: 64,
        shutdown_grace: Duration::from_secs(2),
        ..StreamConfig::default()
    };
    let worker = std::thread::spawn(move || {
        let (admission, gate) = (Admission::default(), StartGate::new(1));
        let io = WorkerIo {
            admission: &admission,
            gate: &gate,
            live: None,
        };
        run_on(backend, &cfg, vec![listener], notice, io, || {
            ProtocolConn::new(Echo, Limits::default())
        })
    });
    resetting_client(addr);
    let clients: Vec<_> = (0..CLIENTS as u8)
        .map(|seed| std::thread::spawn(move || echo_client(addr, seed)))
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    stop.notify();
    worker
        .join()
        .expect("the worker panicked")
        .expect("the worker drains and returns")
}

fn check(backend: Backend) {
    let stats = serve_then_stop(backend);
    assert_eq!(stats.conns, CLIENTS as u64 + 1, "{backend:?}: {stats}");
    assert!(
        stats.bytes >= (CLIENTS * PAYLOAD) as u64,
        "{backend:?}: every echoed byte counted: {stats}"
    );
    assert_eq!(stats.refused, 0, "{backend:?}: {stats}");
    assert_eq!(stats.rejected, 0, "{backend:?}: {stats}");
}

#[test]
fn the_worker_loop_echoes_and_drains_on_io_uring() {
    check(Backend::Uring);
}

#[test]
fn the_worker_loop_echoes_and_drains_on_epoll() {
    check(Backend::Epoll);
}

/// Answers each chunk received with "ok\n".
struct Ack;

impl Protocol for Ack {
    fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
        out.send_static(b"ok\n");
        input.len()
    }
}

/// A `ProtocolConn` with a 300 ms idle timeout: a client that speaks is answered and kept
/// while it is active; once silent it is closed (EOF) after the timeout, not before, and
/// the worker still drains cleanly.
fn idle_connections_are_closed(backend: Backend) {
    let listener = listener(
        "127.0.0.1:0".parse().unwrap(),
        SocketMode::for_backend(backend),
    )
    .unwrap();
    let addr = ringwork_sys::net::local_addr(&listener).unwrap();
    let (stop, mut notices) = stop_notices(1).unwrap();
    let notice = notices.pop().unwrap();
    let cfg = StreamConfig {
        name: "idle-test",
        buffers: 64,
        max_conns: 64,
        ..StreamConfig::default()
    };
    let limits = Limits {
        idle_timeout_ms: Some(300),
        ..Limits::default()
    };
    let worker = std::thread::spawn(move || {
        let (admission, gate) = (Admission::default(), StartGate::new(1));
        let io = WorkerIo {
            admission: &admission,
            gate: &gate,
            live: None,
        };
        run_on(backend, &cfg, vec![listener], notice, io, move || {
            ProtocolConn::new(Ack, limits)
        })
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    // Active for 600 ms, twice the timeout: still served.
    for _ in 0..6 {
        s.write_all(b"x").unwrap();
        let mut ok = [0; 3];
        s.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"ok\n");
        std::thread::sleep(Duration::from_millis(100));
    }
    let silent = Instant::now();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("closed by the server");
    assert!(rest.is_empty());
    let idle = silent.elapsed();
    assert!(
        idle >= Duration::from_millis(150) && idle < Duration::from_secs(3),
        "{backend:?}: closed after {idle:?} idle ({:?} in all)",
        start.elapsed()
    );
    stop.notify();
    let stats = worker.join().unwrap().expect("drains");
    assert_eq!(stats.conns, 1, "{backend:?}: {stats}");
    assert_eq!(stats.refused, 0, "{backend:?}: {stats}");
}

#[test]
fn a_protocol_connection_idle_past_its_timeout_is_closed_on_io_uring() {
    idle_connections_are_closed(Backend::Uring);
}

#[test]
fn a_protocol_connection_idle_past_its_timeout_is_closed_on_epoll() {
    idle_connections_are_closed(Backend::Epoll);
}

/// Upper-cases every whole line.
struct Upper;

impl Protocol for Upper {
    fn on_data(&mut self, input: &[u8], out: &mut Output<'_>) -> usize {
        let Some(end) = input.iter().rposition(|&b| b == b'\n') else {
            return 0;
        };
        out.buf()
            .extend(input[..=end].iter().map(u8::to_ascii_uppercase));
        end + 1
    }
}

/// A line protocol served byte-exact to concurrent clients with receive buffers of 512 bytes
/// (lines span buffers, and a receive spans several with bundles), in each receive mode.
fn protocol_lines_round_trip(backend: Backend, uring: UringOptions) {
    let listener = listener(
        "127.0.0.1:0".parse().unwrap(),
        SocketMode::for_backend(backend),
    )
    .unwrap();
    let addr = ringwork_sys::net::local_addr(&listener).unwrap();
    let (stop, mut notices) = stop_notices(1).unwrap();
    let notice = notices.pop().unwrap();
    let cfg = StreamConfig {
        name: "lines-test",
        buffers: 64,
        buffer_size: 512,
        max_conns: 64,
        uring,
        ..StreamConfig::default()
    };
    let worker = std::thread::spawn(move || {
        let (admission, gate) = (Admission::default(), StartGate::new(1));
        let io = WorkerIo {
            admission: &admission,
            gate: &gate,
            live: None,
        };
        run_on(backend, &cfg, vec![listener], notice, io, || {
            ProtocolConn::new(Upper, Limits::default())
        })
    });
    let clients: Vec<_> = (0..4u8)
        .map(|seed| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let sent: Vec<u8> = (0..20_000u32)
                    .flat_map(|i| {
                        let len = (i * 7 + u32::from(seed)) % 90;
                        (0..len)
                            .map(move |j| b"abcdefghijklmnopqrstuvwxyz"[((i + j) % 26) as usize])
                            .chain([b'\n'])
                    })
                    .collect();
                let writer = {
                    let mut s = s.try_clone().unwrap();
                    let sent = sent.clone();
                    std::thread::spawn(move || s.write_all(&sent).unwrap())
                };
                let mut back = vec![0; sent.len()];
                s.read_exact(&mut back).expect("every answer");
                writer.join().unwrap();
                assert!(
                    back == sent.to_ascii_uppercase(),
                    "client {seed}: answers differ"
                );
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    stop.notify();
    let stats = worker.join().unwrap().expect("drains");
    assert_eq!(stats.refused, 0, "{backend:?}: {stats}");
}

#[test]
fn a_line_protocol_round_trips_on_io_uring_whole_buffers() {
    protocol_lines_round_trip(Backend::Uring, UringOptions::default());
}

#[test]
fn a_line_protocol_round_trips_on_io_uring_single_shot_receives() {
    let uring = UringOptions {
        multishot_recv: false,
        ..UringOptions::default()
    };
    protocol_lines_round_trip(Backend::Uring, uring);
}

#[test]
fn a_line_protocol_round_trips_on_io_uring_bundles() {
    let uring = UringOptions {
        bundle: true,
        ..UringOptions::default()
    };
    protocol_lines_round_trip(Backend::Uring, uring);
}

#[test]
fn a_line_protocol_round_trips_on_io_uring_incremental_buffers() {
    let uring = UringOptions {
        incremental: true,
        ..UringOptions::default()
    };
    protocol_lines_round_trip(Backend::Uring, uring);
}

#[test]
fn a_line_protocol_round_trips_on_epoll() {
    protocol_lines_round_trip(Backend::Epoll, UringOptions::default());
}
