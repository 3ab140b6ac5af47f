//! ringwork-files sends bodies after their first chunk straight from the page cache
//! (`--sendfile`, on by default): with sendfile(2) on the epoll backend, and on io_uring
//! with sends from a mapping of the cached file (`--file-send mapping`, the default) or
//! sendfile(2) on the worker thread (`--file-send sendfile`), of the pages in memory only.
//! Whole files and ranges come out byte for byte, cached or not, by each path and each
//! fallback (chunk buffers); a file whose pages left memory under a download is read for
//! those chunks instead (`file_cold`); a file cut short under a download ends that response
//! with a closed connection, never a hang, while the server goes on serving; and a file
//! replaced (renamed over) under a download finishes as the file it began as.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use ringwork_e2e::http::Client;
use ringwork_e2e::{connect, fresh_dir, random_bytes, stat, terminate, Server};

/// io_uring's sendfile(2) path, with registered files (the descriptor installed from the
/// slot) and with plain descriptors.
const SENDFILE: &[&str] = &["--file-send", "sendfile"];
const SENDFILE_PLAIN_FDS: &[&str] = &["--file-send", "sendfile", "--disable", "fixed-files"];

fn start(root: &Path, backend: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--backend",
        backend,
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
    // Which send from the file: epoll's sendfile needs a descriptor only; io_uring maps
    // cached files only (through a descriptor installed from the registered slot, or the
    // plain one with `--disable fixed-files`).
    let variants: [(&str, &[&str], bool); 10] = [
        ("epoll", &[], true),
        ("epoll", &["--open-file-cache", "0"], true),
        ("epoll", &["--sendfile", "false"], false),
        ("uring", &[], true),
        ("uring", &["--disable", "fixed-files"], true),
        ("uring", SENDFILE, true),
        ("uring", SENDFILE_PLAIN_FDS, true),
        ("uring", &["--open-file-cache", "0"], false),
        ("uring", &["--sendfile", "false"], false),
        // Chunks go by SEND_ZC from their buffers instead.
        ("uring", &["--zerocopy"], false),
    ];
    for (backend, extra, sendfile) in variants {
        let what = format!("{backend} {extra:?}");
        let s = start(&dir, backend, extra);
        if backend == "uring" {
            let line = s
                .wait_for_line(Duration::from_secs(5), |l| l.starts_with("io_uring:"))
                .expect("a features line");
            assert!(
                line.contains(if sendfile {
                    "file_send=on"
                } else {
                    "file_send=off"
                }),
                "{what}: {line}"
            );
            // Which path sends from the file: sendfile(2) only where asked for.
            let by_sendfile = sendfile && extra.contains(&"sendfile");
            assert!(
                line.contains(if by_sendfile {
                    "sendfile=on"
                } else {
                    "sendfile=off"
                }),
                "{what}: {line}"
            );
        }
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
    let variants: [(&str, &[&str]); 6] = [
        ("epoll", &[]),
        ("epoll", &["--open-file-cache", "0"]),
        ("uring", &[]),
        ("uring", &["--disable", "fixed-files"]),
        ("uring", SENDFILE),
        ("uring", SENDFILE_PLAIN_FDS),
    ];
    for (backend, extra) in variants {
        let what = format!("{backend} {extra:?}");
        let s = start(&dir, backend, extra);
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

/// io_uring sends from the mapping only what is in the page cache: a download whose file's
/// second half is dropped from memory under it reads that part (at least one send declined,
/// `file_cold`) and still arrives byte for byte; a warm file is sent from the mapping whole.
#[test]
fn pages_out_of_memory_are_read_not_faulted_in_by_a_send() {
    let dir = fresh_dir("ringwork-sendfile-cold-");
    let len = 32 << 20;
    let path = dir.join("big.bin");
    let want = random_bytes(11, len);
    std::fs::write(&path, &want).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    file.sync_all().unwrap();
    for extra in [
        &[][..],
        &["--disable", "fixed-files"][..],
        SENDFILE,
        SENDFILE_PLAIN_FDS,
    ] {
        let what = format!("uring {extra:?}");
        let s = start(&dir, "uring", extra);
        // A slow reader: the server is a few MiB in when the second half leaves memory.
        let mut sock = connect(s.addr, Some(16 * 1024));
        sock.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::with_capacity(len + 1024);
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < 512 * 1024 {
            let n = sock.read(&mut buf).unwrap();
            assert!(n > 0, "{what}: early end of stream");
            got.extend_from_slice(&buf[..n]);
        }
        // Clean pages that no process maps are dropped (the server has faulted in only
        // the pages it has sent).
        rustix::fs::fadvise(&file, 16 << 20, None, rustix::fs::Advice::DontNeed).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        sock.read_to_end(&mut got).unwrap();
        let body_at = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head")
            + 4;
        assert!(
            got[body_at..] == want[..],
            "{what}: {} body bytes, not byte-exact",
            got.len() - body_at
        );
        // Again, warm now: the pages the first download read are in memory and mapped.
        let mut c = Client::connect(s.addr);
        let r = c.get("/big.bin", "");
        assert!(r.body == want, "{what}: warm download not byte-exact");
        drop(c);
        let line = terminate(s);
        assert!(stat(&line, "file_sends") > 0, "{what}: {line}");
        assert!(stat(&line, "file_cold") > 0, "{what}: {line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A file renamed over under a download: the response goes on from the file it opened, byte
/// for byte to its end, and the next request gets the new file, whichever path sends it.
#[test]
fn a_file_replaced_under_a_download_finishes_as_it_began() {
    let dir = fresh_dir("ringwork-sendfile-replace-");
    let len = 4 << 20;
    let path = dir.join("big.bin");
    let (old, new) = (random_bytes(21, len), random_bytes(22, len));
    let variants: [(&str, &[&str]); 6] = [
        ("epoll", &[]),
        ("epoll", &["--sendfile", "false"]),
        ("uring", &[]),
        ("uring", &["--sendfile", "false"]),
        ("uring", SENDFILE),
        ("uring", SENDFILE_PLAIN_FDS),
    ];
    for (backend, extra) in variants {
        let what = format!("{backend} {extra:?}");
        std::fs::write(&path, &old).unwrap();
        let s = start(&dir, backend, extra);
        // A slow reader: the server is mid-body when the file is replaced.
        let mut sock = connect(s.addr, Some(16 * 1024));
        sock.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::with_capacity(len + 1024);
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < 512 * 1024 {
            let n = sock.read(&mut buf).unwrap();
            assert!(n > 0, "{what}: early end of stream");
            got.extend_from_slice(&buf[..n]);
        }
        let tmp = dir.join("big.bin.new");
        std::fs::write(&tmp, &new).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let replaced = Instant::now();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        sock.read_to_end(&mut got).unwrap();
        let body_at = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head")
            + 4;
        assert!(
            got[body_at..] == old[..],
            "{what}: {} body bytes, not the old file byte for byte",
            got.len() - body_at
        );
        // Once the cache looks at the path again (`--open-file-cache-valid-ms`, 1 s by
        // default), the new file, whole.
        std::thread::sleep(Duration::from_millis(1500).saturating_sub(replaced.elapsed()));
        let mut c = Client::connect(s.addr);
        let r = c.get("/big.bin", "");
        assert!(r.body == new, "{what}: the new file not byte-exact");
        drop(c);
        let line = terminate(s);
        let sends = stat(&line, "file_sends");
        assert_eq!(sends > 0, !extra.contains(&"false"), "{what}: {line}");
        // The slow reader filled the socket: sendfile(2) waited for POLLOUT, and the body
        // above is still byte for byte.
        let waits = stat(&line, "file_send_waits");
        assert_eq!(waits > 0, extra.contains(&"sendfile"), "{what}: {line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
