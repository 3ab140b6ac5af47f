//! Runs each example as a user would and checks what it prints.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

#[test]
fn read_file_prints_the_size_and_checksum_std_computes() {
    let dir = std::env::temp_dir().join(format!("ringwork-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.bin");
    // Not a multiple of the example's chunk, so the last read is short.
    let bytes: Vec<u8> = (0..300_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_read-file"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let sum = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("300001 bytes, fnv1a64 {sum:016x}")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn read_file_names_what_went_wrong() {
    let out = Command::new(env!("CARGO_BIN_EXE_read-file"))
        .arg("/nonexistent/ringwork")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("read-file: "));
}

/// A server example, killed however the test ends (a server left running would hold cargo's
/// pipes open).
struct Running {
    child: std::process::Child,
    addr: String,
    /// Kept open so that later lines (the counters at exit) do not meet a closed pipe.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `binary` on a port the kernel picks, with `backend` (`uring`, `epoll`), and waits
/// for its "NAME listening on ADDR" line (lines before it, the io_uring features line, are
/// skipped).
fn start(binary: &str, backend: &str) -> Running {
    use std::io::BufRead;
    let mut child = Command::new(binary)
        .args(["127.0.0.1:0", backend])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("{binary} {backend}: no listening line");
        }
        if let Some((_, addr)) = line.trim().split_once(" listening on ") {
            break addr.to_string();
        }
    };
    Running {
        child,
        addr,
        _stdout: stdout,
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// The echo examples serve several clients at once, byte for byte, and free what they held:
/// after the clients leave, new ones are served just the same.
fn echoes_every_byte_to_concurrent_clients(binary: &str, backend: &str) {
    let server = start(binary, backend);
    for round in 0..2u8 {
        let clients: Vec<_> = (0..8u8)
            .map(|i| {
                let addr = server.addr.clone();
                std::thread::spawn(move || {
                    let mut s = connect(&addr);
                    // More than the ring's buffers hold at once: buffers must come back.
                    let payload: Vec<u8> = (0..300_000u32).map(|j| (j as u8) ^ i ^ round).collect();
                    let writer = {
                        let mut s = s.try_clone().unwrap();
                        let payload = payload.clone();
                        std::thread::spawn(move || s.write_all(&payload).unwrap())
                    };
                    let mut back = vec![0; payload.len()];
                    s.read_exact(&mut back).unwrap();
                    writer.join().unwrap();
                    assert!(back == payload, "client {i}: echoed bytes differ");
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
    }
}

#[test]
fn echo_echoes_every_byte_to_concurrent_clients_on_io_uring() {
    echoes_every_byte_to_concurrent_clients(env!("CARGO_BIN_EXE_echo"), "uring");
}

#[test]
fn echo_echoes_every_byte_to_concurrent_clients_on_epoll() {
    echoes_every_byte_to_concurrent_clients(env!("CARGO_BIN_EXE_echo"), "epoll");
}

/// The same server, driven by hand on the ring (io_uring only).
#[test]
fn echo_ring_echoes_every_byte_to_concurrent_clients() {
    echoes_every_byte_to_concurrent_clients(env!("CARGO_BIN_EXE_echo-ring"), "uring");
}

/// Lines of varied lengths, `n` bytes or a little more, distinct per `seed`.
fn lines(n: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0u32;
    while out.len() < n {
        let len = (i.wrapping_mul(2_654_435_761) >> 26) as usize; // 0..63
        out.extend((0..len).map(|j| {
            b"abcdefghijklmnopqrstuvwxyz0123456789 -"[(j + i as usize + seed as usize) % 38]
        }));
        out.push(b'\n');
        i += 1;
    }
    out
}

/// A client that writes 4 MiB of lines without reading for a second (the server's answers
/// pile up: it must stop reading, then resume), then reads every answer: byte-exact.
fn uppercase_slow_reader(backend: &str) {
    let server = start(env!("CARGO_BIN_EXE_uppercase"), backend);
    let clients: Vec<_> = (0..3u8)
        .map(|seed| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let mut s = connect(&addr);
                let sent = lines(4 << 20, seed);
                let writer = {
                    let mut s = s.try_clone().unwrap();
                    let sent = sent.clone();
                    std::thread::spawn(move || {
                        s.write_all(&sent).unwrap();
                        s.shutdown(std::net::Shutdown::Write).unwrap();
                    })
                };
                std::thread::sleep(Duration::from_secs(1));
                let mut back = Vec::new();
                s.read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                assert_eq!(back.len(), sent.len(), "client {seed}: answer length");
                assert!(
                    back == sent.to_ascii_uppercase(),
                    "client {seed}: answers differ"
                );
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn uppercase_answers_a_client_that_reads_late_byte_for_byte_on_io_uring() {
    uppercase_slow_reader("uring");
}

#[test]
fn uppercase_answers_a_client_that_reads_late_byte_for_byte_on_epoll() {
    uppercase_slow_reader("epoll");
}

/// 1,000 connections open at once, each sending a line in two pieces (a partial line is
/// kept for the rest) and reading its answer, then a second line on each.
fn thousand_connections(
    binary: &str,
    backend: &str,
    ask: fn(usize, u8) -> Vec<u8>,
    answer: fn(&[u8]) -> Vec<u8>,
) {
    let server = start(binary, backend);
    let mut conns: Vec<TcpStream> = (0..1000).map(|_| connect(&server.addr)).collect();
    for round in 0..2u8 {
        for (i, s) in conns.iter_mut().enumerate() {
            let q = ask(i, round);
            let (a, b) = q.split_at(q.len() / 2);
            s.write_all(a).unwrap();
            s.flush().unwrap();
            s.write_all(b).unwrap();
        }
        for (i, s) in conns.iter_mut().enumerate() {
            expect_answer(
                s,
                &answer(&ask(i, round)),
                &format!("connection {i}, round {round}"),
            );
        }
    }
}

/// Reads exactly `want.len()` bytes from `s`: they must be `want`.
fn expect_answer(s: &mut TcpStream, want: &[u8], what: &str) {
    let mut got = vec![0; want.len()];
    s.read_exact(&mut got).unwrap();
    assert!(got == want, "{what}: {:?}", String::from_utf8_lossy(&got));
}

fn numbered_line(i: usize, round: u8) -> Vec<u8> {
    format!("connection {i} round {round}\n").into_bytes()
}

#[test]
fn uppercase_serves_a_thousand_connections_at_once_on_io_uring() {
    thousand_connections(
        env!("CARGO_BIN_EXE_uppercase"),
        "uring",
        numbered_line,
        <[u8]>::to_ascii_uppercase,
    );
}

#[test]
fn uppercase_serves_a_thousand_connections_at_once_on_epoll() {
    thousand_connections(
        env!("CARGO_BIN_EXE_uppercase"),
        "epoll",
        numbered_line,
        <[u8]>::to_ascii_uppercase,
    );
}

const HELLO: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nHello, world!\n";

fn get(i: usize, round: u8) -> Vec<u8> {
    format!("GET /{i}/{round} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

fn hello(_: &[u8]) -> Vec<u8> {
    HELLO.to_vec()
}

#[test]
fn http_hello_serves_a_thousand_keep_alive_connections_at_once_on_io_uring() {
    thousand_connections(env!("CARGO_BIN_EXE_http-hello"), "uring", get, hello);
}

#[test]
fn http_hello_serves_a_thousand_keep_alive_connections_at_once_on_epoll() {
    thousand_connections(env!("CARGO_BIN_EXE_http-hello"), "epoll", get, hello);
}

/// Keep-alive, pipelining (answered in order), a client that reads late, `Connection: close`
/// and a malformed head (answered, then closed).
fn http_hello_keeps_alive_pipelines_and_closes(backend: &str) {
    let server = start(env!("CARGO_BIN_EXE_http-hello"), backend);
    let mut s = connect(&server.addr);
    for i in 0..100 {
        s.write_all(&get(i, 0)).unwrap();
        let mut got = vec![0; HELLO.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, HELLO, "request {i}");
    }
    // 20,000 pipelined requests, read after a second: far more answers than a socket holds.
    let pipelined: Vec<u8> = (0..20_000).flat_map(|i| get(i, 1)).collect();
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&pipelined).unwrap())
    };
    std::thread::sleep(Duration::from_secs(1));
    let mut got = vec![0; HELLO.len() * 20_000];
    s.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(
        got.chunks(HELLO.len()).all(|r| r == HELLO),
        "pipelined answers differ"
    );
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(
        rest.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        rest.ends_with(b"Connection: close\r\n\r\nHello, world!\n"),
        "one answer, then EOF"
    );
    let mut bad = connect(&server.addr);
    bad.write_all(b"NOT HTTP\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    bad.read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 400 Bad Request\r\n"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn http_hello_keeps_alive_pipelines_and_closes_on_io_uring() {
    http_hello_keeps_alive_pipelines_and_closes("uring");
}

#[test]
fn http_hello_keeps_alive_pipelines_and_closes_on_epoll() {
    http_hello_keeps_alive_pipelines_and_closes("epoll");
}

fn same(q: &[u8]) -> Vec<u8> {
    q.to_vec()
}

#[test]
fn echo_serves_a_thousand_connections_at_once_on_io_uring() {
    thousand_connections(env!("CARGO_BIN_EXE_echo"), "uring", numbered_line, same);
}

#[test]
fn echo_serves_a_thousand_connections_at_once_on_epoll() {
    thousand_connections(env!("CARGO_BIN_EXE_echo"), "epoll", numbered_line, same);
}

/// Clients that send without ever reading (their answers fill the socket, then the
/// server's queue to its high-water mark, and for the echo the receive buffers it may lend)
/// do not stop the server: 50 other connections are answered byte for byte meanwhile, and
/// after the silent ones leave, new connections are served as before.
fn never_reading_clients_stop_no_one(
    binary: &str,
    backend: &str,
    ask: fn(usize, u8) -> Vec<u8>,
    answer: fn(&[u8]) -> Vec<u8>,
) {
    let server = start(binary, backend);
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let s = connect(&server.addr);
            s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            s
        })
        .collect();
    let writers: Vec<_> = stalled
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                // Until the kernel stops taking bytes (the write times out) or 64 MiB.
                let chunk: Vec<u8> = (0..256).flat_map(|r| ask(i, r as u8)).collect();
                let mut written = 0usize;
                while written < 64 << 20 && s.write_all(&chunk).is_ok() {
                    written += chunk.len();
                }
                written
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut others: Vec<TcpStream> = (0..50).map(|_| connect(&server.addr)).collect();
    for round in 0..3u8 {
        for (i, s) in others.iter_mut().enumerate() {
            s.write_all(&ask(i, round)).unwrap();
            expect_answer(
                s,
                &answer(&ask(i, round)),
                &format!("connection {i}, round {round}"),
            );
        }
    }
    for w in writers {
        let written = w.join().unwrap();
        assert!(written > 0, "a silent client could not even start writing");
    }
    drop(stalled);
    drop(others);
    fresh_connections_served(&server.addr, ask, answer);
}

/// Ten fresh connections, one request each, answered.
fn fresh_connections_served(
    addr: &str,
    ask: fn(usize, u8) -> Vec<u8>,
    answer: fn(&[u8]) -> Vec<u8>,
) {
    for i in 0..10 {
        let mut s = connect(addr);
        s.write_all(&ask(i, 9)).unwrap();
        expect_answer(
            &mut s,
            &answer(&ask(i, 9)),
            &format!("fresh connection {i}"),
        );
    }
}

#[test]
fn echo_is_not_stopped_by_clients_that_never_read_on_io_uring() {
    never_reading_clients_stop_no_one(env!("CARGO_BIN_EXE_echo"), "uring", numbered_line, same);
}

#[test]
fn echo_is_not_stopped_by_clients_that_never_read_on_epoll() {
    never_reading_clients_stop_no_one(env!("CARGO_BIN_EXE_echo"), "epoll", numbered_line, same);
}

#[test]
fn echo_ring_is_not_stopped_by_clients_that_never_read() {
    never_reading_clients_stop_no_one(
        env!("CARGO_BIN_EXE_echo-ring"),
        "uring",
        numbered_line,
        same,
    );
}

#[test]
fn uppercase_is_not_stopped_by_clients_that_never_read_on_io_uring() {
    never_reading_clients_stop_no_one(
        env!("CARGO_BIN_EXE_uppercase"),
        "uring",
        numbered_line,
        <[u8]>::to_ascii_uppercase,
    );
}

#[test]
fn uppercase_is_not_stopped_by_clients_that_never_read_on_epoll() {
    never_reading_clients_stop_no_one(
        env!("CARGO_BIN_EXE_uppercase"),
        "epoll",
        numbered_line,
        <[u8]>::to_ascii_uppercase,
    );
}

#[test]
fn http_hello_is_not_stopped_by_clients_that_never_read_on_io_uring() {
    never_reading_clients_stop_no_one(env!("CARGO_BIN_EXE_http-hello"), "uring", get, hello);
}

#[test]
fn http_hello_is_not_stopped_by_clients_that_never_read_on_epoll() {
    never_reading_clients_stop_no_one(env!("CARGO_BIN_EXE_http-hello"), "epoll", get, hello);
}
