//! Runs each example as a user would and checks what it prints.

use std::process::Command;

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

/// The echo example serves several clients at once, byte for byte, and frees what they held:
/// after the clients leave, new ones are served just the same.
fn echoes_every_byte_to_concurrent_clients(binary: &str) {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    /// Killed however the test ends: a server left running would hold cargo's pipes open.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Running(
        Command::new(binary)
            .arg("127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Lines before it (the io_uring features line) are skipped; the reader stays open so
    // that later lines (the counters at exit) do not meet a closed pipe.
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "no listening line"
        );
        if let Some(addr) = line.trim().strip_prefix("echo listening on ") {
            break addr.to_string();
        }
    };
    for round in 0..2u8 {
        let clients: Vec<_> = (0..8u8)
            .map(|i| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(&addr).unwrap();
                    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                        .unwrap();
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
    drop(child);
}

#[test]
fn echo_echoes_every_byte_to_concurrent_clients() {
    echoes_every_byte_to_concurrent_clients(env!("CARGO_BIN_EXE_echo"));
}

/// The same server, driven by hand on the ring.
#[test]
fn echo_ring_echoes_every_byte_to_concurrent_clients() {
    echoes_every_byte_to_concurrent_clients(env!("CARGO_BIN_EXE_echo-ring"));
}
