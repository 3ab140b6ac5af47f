//! ringwork-files' epoll backend sends bodies after their first chunk with sendfile(2)
//! (`--sendfile`, on by default): whole files and ranges come out byte for byte, cached or
//! not, and a file cut short under a download ends that response with a closed connection,
//! never a hang, while the server goes on serving.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use ringwork_e2e::http::Client;
use ringwork_e2e::{connect, fresh_dir, random_bytes, stat, terminate, Server};

fn start(root: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--backend",
        "epoll",
    ];
    args.extend_from_slice(extra);
    args.push(root.to_str().unwrap());
    Server::start("ringwork-files", &args)
}

#[test]
fn files_and_ranges_are_byte_exact_by_sendfile_and_without_it() {
    let dir = fresh_dir("ringwork-sendfile-exact-");
    let sizes = [0usize, 1, 65_536, 65_537, 300_000, 3 << 20];
    let files: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| random_bytes(7 + i as u64, n))
        .collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("f{i}")), f).unwrap();
    }
    let variants: [(&[&str], bool); 3] = [
        (&[], true),
        (&["--open-file-cache", "0"], true),
        (&["--sendfile", "false"], false),
    ];
    for (extra, sendfile) in variants {
        let what = format!("epoll {extra:?}");
        let s = start(&dir, extra);
        let mut c = Client::connect(s.addr);
        for _ in 0..2 {
            for (i, f) in files.iter().enumerate() {
                let r = c.get(&format!("/f{i}"), "");
                assert_eq!(r.status, 200, "{what}: f{i}");
                assert!(
                    r.body == *f,
                    "{what}: f{i} ({} bytes) not byte-exact",
                    f.len()
                );
            }
        }
        // Ranges that start inside the first chunk, past it, and end at the end.
        let big = &files[5];
        for (a, b) in [
            (10usize, 200_000usize),
            (70_000, 2_000_000),
            (1 << 20, big.len() - 1),
        ] {
            let r = c.get("/f5", &format!("Range: bytes={a}-{b}\r\n"));
            assert_eq!(r.status, 206, "{what}: range {a}-{b}");
            assert!(r.body == big[a..=b], "{what}: range {a}-{b} not byte-exact");
        }
        drop(c);
        let line = terminate(s);
        let sends = stat(&line, "file_sends");
        assert_eq!(sends > 0, sendfile, "{what}: {line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_file_cut_short_under_a_download_closes_that_response_and_nothing_else() {
    let dir = fresh_dir("ringwork-sendfile-cut-");
    let len = 32 << 20;
    let path = dir.join("big.bin");
    std::fs::write(&path, random_bytes(3, len)).unwrap();
    std::fs::write(dir.join("small.txt"), b"still here\n").unwrap();
    for extra in [&[][..], &["--open-file-cache", "0"][..]] {
        let what = format!("epoll {extra:?}");
        let s = start(&dir, extra);
        // A slow reader: the server is mid-body when the file shrinks.
        let mut sock = connect(s.addr, Some(16 * 1024));
        sock.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while total < 256 * 1024 {
            total += sock.read(&mut got).unwrap();
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let t0 = Instant::now();
        loop {
            match sock.read(&mut got) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{what}: no end of stream after the cut: {e}"),
            }
        }
        assert!(
            total < len,
            "{what}: {total} bytes of a file cut to 8 MiB (was {len})"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{what}: a slow close"
        );
        let mut c = Client::connect(s.addr);
        let r = c.get("/small.txt", "");
        assert_eq!(
            (r.status, &r.body[..]),
            (200, &b"still here\n"[..]),
            "{what}"
        );
        drop(c);
        terminate(s);
        std::fs::write(&path, random_bytes(3, len)).unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}
