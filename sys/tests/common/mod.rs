//! Helpers shared by the real-kernel tests in `sys/tests/`: a removed-on-drop temp file with
//! a known pattern, and a connected TCP loopback pair.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};

/// A file with `len` bytes of [`pattern`], removed on drop.
pub struct TempFile {
    pub path: std::path::PathBuf,
    pub file: std::fs::File,
}

impl TempFile {
    /// Creates (or truncates) `ringwork-PID-NAME` in the temp dir with `len` pattern bytes.
    pub fn with_pattern(name: &str, len: usize) -> Self {
        let path = std::env::temp_dir().join(format!("ringwork-{}-{name}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(&pattern(len)).unwrap();
        Self { path, file }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `len` bytes of a fixed, position-dependent pattern.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A connected loopback pair: (client, server side).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// Submits and waits until `n` completions have arrived; returns them in arrival order.
pub fn wait_cqes(ring: &mut ringwork_sys::Ring, n: usize) -> Vec<ringwork_sys::Cqe> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.extend(ring.completions());
        if got.len() < n {
            ring.submit_and_wait(1).unwrap();
        }
    }
    got
}

/// Reads `stream` to its end on a new thread: the bytes the peer sent before closing.
pub fn read_to_end_thread(mut stream: TcpStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut all).unwrap();
        all
    })
}
