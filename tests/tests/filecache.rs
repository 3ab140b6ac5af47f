//! ringwork-files' open-file cache end to end: files changed under a running server are seen
//! once the validity period has passed, a path swapped for a symlink out of the root is never
//! served, and a cache far smaller than the set of files serves every file byte for byte under
//! churn, and a deleted file nobody asks for again is closed after the inactive period. Both
//! backends, and the io_uring backend with descriptors instead of registered files.

use std::path::Path;
use std::time::Duration;

use ringwork_e2e::http::Client;
use ringwork_e2e::{fresh_dir, proc, random_bytes, stat, terminate, Server};

/// Validity period the tests run with: long enough that a request right after another is a
/// hit, short enough to wait out.
const VALID_MS: u64 = 300;

/// Every way the io_uring and epoll drivers hold cached files.
const VARIANTS: [(&str, &[&str]); 3] = [
    ("uring", &[]),
    ("uring", &["--disable", "fixed-files"]),
    ("epoll", &[]),
];

fn start(root: &Path, backend: &str, extra: &[&str]) -> Server {
    let valid = VALID_MS.to_string();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--backend",
        backend,
        "--open-file-cache-valid-ms",
        &valid,
    ];
    args.extend_from_slice(extra);
    args.push(root.to_str().unwrap());
    Server::start("ringwork-files", &args)
}

fn past_the_period() {
    std::thread::sleep(Duration::from_millis(VALID_MS + 150));
}

/// The body of a 200 answer for `path`, with its Content-Length checked against it.
fn get_ok(c: &mut Client, path: &str, what: &str) -> Vec<u8> {
    let r = c.get(path, "");
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(
        r.header("Content-Length"),
        Some(r.body.len().to_string().as_str()),
        "{what}: Content-Length"
    );
    r.body
}

#[test]
fn changed_files_are_seen_once_the_validity_period_passes_and_never_escape() {
    let passwd = std::fs::read("/etc/passwd").unwrap();
    for (backend, extra) in VARIANTS {
        let what = format!("{backend} {extra:?}");
        let dir = fresh_dir(&format!("ringwork-filecache-{backend}-{}-", extra.len()));
        let a = dir.join("a.bin");
        let v1 = random_bytes(1, 1000);
        std::fs::write(&a, &v1).unwrap();
        // Bigger than one chunk: the other read path (no body kept).
        let big = dir.join("big.bin");
        let b1 = random_bytes(7, 200_000);
        std::fs::write(&big, &b1).unwrap();

        let s = start(&dir, backend, extra);
        let mut c = Client::connect(s.addr);
        assert_eq!(get_ok(&mut c, "/a.bin", &what), v1, "{what}: first");
        assert_eq!(get_ok(&mut c, "/a.bin", &what), v1, "{what}: a hit");
        assert_eq!(get_ok(&mut c, "/big.bin", &what), b1, "{what}: big");
        assert_eq!(get_ok(&mut c, "/big.bin", &what), b1, "{what}: big, a hit");

        // Rewritten in place (same inode, another size).
        let v2 = random_bytes(2, 1500);
        std::fs::write(&a, &v2).unwrap();
        let b2 = random_bytes(8, 150_000);
        std::fs::write(&big, &b2).unwrap();
        past_the_period();
        assert_eq!(get_ok(&mut c, "/a.bin", &what), v2, "{what}: rewritten");
        assert_eq!(
            get_ok(&mut c, "/big.bin", &what),
            b2,
            "{what}: big rewritten"
        );

        // Replaced by rename: within the period the old file may still be served, whole.
        let v3 = random_bytes(3, 700);
        let tmp = dir.join("a.tmp");
        std::fs::write(&tmp, &v3).unwrap();
        std::fs::rename(&tmp, &a).unwrap();
        let early = get_ok(&mut c, "/a.bin", &what);
        assert!(
            early == v2 || early == v3,
            "{what}: the old or the new file"
        );
        past_the_period();
        assert_eq!(get_ok(&mut c, "/a.bin", &what), v3, "{what}: renamed over");

        // Deleted.
        std::fs::remove_file(&a).unwrap();
        past_the_period();
        assert_eq!(c.get("/a.bin", "").status, 404, "{what}: deleted");

        // Back (its absence is remembered for the period), cached, then swapped for a
        // symlink out of the root.
        let v4 = random_bytes(4, 900);
        std::fs::write(&a, &v4).unwrap();
        past_the_period();
        assert_eq!(get_ok(&mut c, "/a.bin", &what), v4, "{what}: back");
        std::os::unix::fs::symlink("/etc/passwd", &tmp).unwrap();
        std::fs::rename(&tmp, &a).unwrap();
        let early = c.get("/a.bin", "");
        assert!(
            early.status == 200 && early.body == v4,
            "{what}: within the period the file opened before (status {})",
            early.status
        );
        past_the_period();
        for _ in 0..3 {
            let r = c.get("/a.bin", "");
            assert_eq!(r.status, 403, "{what}: a symlink out of the root");
            assert!(r.body != passwd && !r.body.starts_with(b"root:"), "{what}");
        }
        // A symlink inside the root is served.
        std::fs::remove_file(&a).unwrap();
        std::os::unix::fs::symlink("big.bin", &a).unwrap();
        past_the_period();
        assert_eq!(get_ok(&mut c, "/a.bin", &what), b2, "{what}: inside link");
        drop(c);

        let line = terminate(s);
        assert!(stat(&line, "cache_hits") >= 3, "{what}: {line}");
        assert!(stat(&line, "cache_revalidated") >= 1, "{what}: {line}");
        assert!(stat(&line, "cache_invalidated") >= 3, "{what}: {line}");
        assert!(stat(&line, "body_hits") >= 1, "{what}: {line}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether the server still holds `name` open: a descriptor (epoll, or io_uring without
/// registered files), or a mapping (the io_uring backend sends cached bodies from one; a
/// registered file slot itself shows nowhere in /proc).
fn holds_file(s: &Server, name: &str) -> bool {
    let by_fd = proc::fd_targets(s.pid())
        .iter()
        .any(|t| t.to_string_lossy().contains(name));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", s.pid())).unwrap_or_default();
    by_fd || maps.contains(name)
}

/// A cached file deleted and never asked for again is closed once no request has used it for
/// `--open-file-cache-inactive-ms`, while other files are served: its space comes back
/// (nginx's `open_file_cache inactive=`). Before, it stayed open until its path was asked
/// for again.
#[test]
fn a_deleted_file_nobody_asks_for_is_closed_after_the_inactive_period() {
    for (backend, extra) in VARIANTS {
        let what = format!("{backend} {extra:?}");
        let root = fresh_dir("ringwork-inactive-");
        // Larger than a chunk: the io_uring backend maps it to send its body.
        let doomed = random_bytes(7, 200 * 1024);
        std::fs::write(root.join("doomed.bin"), &doomed).unwrap();
        std::fs::write(root.join("other.txt"), b"still here\n").unwrap();
        let mut args = vec!["--open-file-cache-inactive-ms", "400"];
        args.extend_from_slice(extra);
        let s = start(&root, backend, &args);
        let mut c = Client::connect(s.addr);
        assert!(
            get_ok(&mut c, "/doomed.bin", &what) == doomed,
            "{what}: body"
        );
        std::fs::remove_file(root.join("doomed.bin")).unwrap();
        assert!(
            holds_file(&s, "doomed.bin"),
            "{what}: the cache holds it open"
        );
        let mut released = false;
        for _ in 0..50 {
            get_ok(&mut c, "/other.txt", &what);
            if !holds_file(&s, "doomed.bin") {
                released = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(released, "{what}: the deleted file is still held after 5 s");
        let line = terminate(s);
        assert!(stat(&line, "cache_expired") >= 1, "{what}: {line}");
        let _ = std::fs::remove_dir_all(&root);
    }
}

#[test]
fn a_small_cache_under_churn_serves_every_file_byte_exact() {
    const FILES: usize = 60;
    for (backend, extra) in VARIANTS {
        let what = format!("{backend} {extra:?}");
        let dir = fresh_dir(&format!("ringwork-filechurn-{backend}-{}-", extra.len()));
        let files: Vec<Vec<u8>> = (0..FILES)
            .map(|i| random_bytes(100 + i as u64, [0, 1, 100, 4096, 5000, 70_000][i % 6]))
            .collect();
        for (i, f) in files.iter().enumerate() {
            std::fs::write(dir.join(format!("f{i}")), f).unwrap();
        }
        let s = start(
            &dir,
            backend,
            &[
                extra,
                &[
                    "--open-file-cache",
                    "8",
                    "--chunk",
                    "4096",
                    "--file-cache-memory",
                    "1",
                ],
            ]
            .concat(),
        );
        let baseline = s.settled_fd_count();
        let addr = s.addr;
        let clients: Vec<_> = (0..8)
            .map(|k| {
                let files = files.clone();
                let what = what.clone();
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    // Each client walks the files in its own order, some repeatedly.
                    for n in 0..240usize {
                        let i = (n * (2 * k + 1) + k * 7 + (n / 17) * 3) % FILES;
                        let r = c.get(&format!("/f{i}"), "");
                        assert_eq!(r.status, 200, "{what}: f{i}");
                        assert!(r.body == files[i], "{what}: f{i} differs");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client failed");
        }
        // The cache holds at most its 8 files (descriptors, without registered files).
        let held = s.settled_fd_count();
        assert!(
            held <= baseline + 8,
            "{what}: {held} fds, baseline {baseline}"
        );
        let line = terminate(s);
        assert!(stat(&line, "cache_evicted") > 0, "{what}: {line}");
        assert!(stat(&line, "cache_hits") > 0, "{what}: {line}");
        // Bodies past the 4 KiB first chunk went from the file (a mapping on io_uring, made
        // and dropped as entries come and go), byte-exact above.
        assert!(stat(&line, "file_sends") > 0, "{what}: {line}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A precompressed sibling that does not exist is remembered as missing (no stat per
/// request), and once one is created it is served after the validity period.
#[test]
fn a_missing_sibling_is_remembered_and_a_new_one_seen_after_the_period() {
    const GZIP: &str = "Accept-Encoding: gzip\r\n";
    for (backend, extra) in VARIANTS {
        let what = format!("{backend} {extra:?}");
        let dir = fresh_dir(&format!("ringwork-filesibling-{backend}-{}-", extra.len()));
        let plain = random_bytes(11, 3000);
        std::fs::write(dir.join("t.txt"), &plain).unwrap();
        let s = start(&dir, backend, extra);
        let mut c = Client::connect(s.addr);
        for _ in 0..5 {
            let r = c.get("/t.txt", GZIP);
            assert_eq!(
                (r.status, r.header("Content-Encoding")),
                (200, None),
                "{what}"
            );
            assert!(r.body == plain, "{what}");
        }
        let gz = random_bytes(12, 700);
        std::fs::write(dir.join("t.txt.gz"), &gz).unwrap();
        past_the_period();
        let r = c.get("/t.txt", GZIP);
        assert_eq!(
            r.header("Content-Encoding"),
            Some("gzip"),
            "{what}: the new sibling"
        );
        assert!(r.body == gz, "{what}");
        drop(c);
        let line = terminate(s);
        assert!(stat(&line, "cache_absent") >= 3, "{what}: {line}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A large cached file is sent from the file after its first chunk (on io_uring from a
/// mapping kept with the cache entry): rewritten in place at the same size it is seen at once
/// (the same open file, and the mapping shows the page cache); grown in place, the next check
/// after the period serves the new size whole (the mapping, shorter than the file, is made
/// again); shrunk in place, the short file; replaced by rename, the new file. Every body is
/// checked byte for byte.
#[test]
fn a_large_cached_file_changed_under_its_mapping_is_served_as_it_is_now() {
    for (backend, extra) in VARIANTS {
        let what = format!("{backend} {extra:?}");
        let dir = fresh_dir(&format!("ringwork-filemap-{backend}-{}-", extra.len()));
        let path = dir.join("big.bin");
        let s = start(&dir, backend, extra);
        let mut c = Client::connect(s.addr);
        let v1 = random_bytes(1, 2 << 20);
        std::fs::write(&path, &v1).unwrap();
        assert!(get_ok(&mut c, "/big.bin", &what) == v1, "{what}: v1");
        // The same size, other bytes, written into the same inode: seen at once.
        let v2 = random_bytes(2, 2 << 20);
        rewrite_in_place(&path, &v2);
        assert!(
            get_ok(&mut c, "/big.bin", &what) == v2,
            "{what}: v2, rewritten"
        );
        // Grown past what was mapped.
        let v3 = random_bytes(3, 3 << 20);
        rewrite_in_place(&path, &v3);
        past_the_period();
        assert!(get_ok(&mut c, "/big.bin", &what) == v3, "{what}: v3, grown");
        // Shrunk below it.
        let v4 = random_bytes(4, (1 << 20) + 3);
        rewrite_in_place(&path, &v4);
        past_the_period();
        assert!(
            get_ok(&mut c, "/big.bin", &what) == v4,
            "{what}: v4, shrunk"
        );
        // Replaced by rename: another inode.
        let v5 = random_bytes(5, (5 << 20) / 2);
        let tmp = dir.join("big.tmp");
        std::fs::write(&tmp, &v5).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        past_the_period();
        assert!(
            get_ok(&mut c, "/big.bin", &what) == v5,
            "{what}: v5, renamed over"
        );
        drop(c);
        let line = terminate(s);
        assert!(stat(&line, "file_sends") > 0, "{what}: {line}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Writes `bytes` over the file at `path` in place (same inode), truncating it to their length.
fn rewrite_in_place(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    f.set_len(bytes.len() as u64).unwrap();
}

/// A miss is stat'ed and opened at once when its path is in the kernel's lookup cache
/// (`inline_lookups`), with the same answers as the ring's STATX path: files byte for byte
/// (small, kept; large, read in chunks), a directory's index and its redirect, a missing
/// path, a symlink out of the root refused, and a FIFO in the root answered at once (the
/// nonblocking open never holds the loop). Cached and uncached (`--open-file-cache 0`), with
/// registered files and with descriptors; with `--disable inline-lookups` none is inline.
#[test]
fn misses_are_looked_up_inline_with_the_same_answers() {
    let dir = fresh_dir("ringwork-inline-lookups-");
    let small = random_bytes(11, 700);
    let big = random_bytes(12, 300_000);
    let index = random_bytes(13, 64);
    std::fs::write(dir.join("small.bin"), &small).unwrap();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/index.html"), &index).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("out")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.join("fifo"))
        .status()
        .unwrap();
    assert!(fifo.success(), "mkfifo");
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let variants: [(&[&str], bool); 5] = [
        (&[], true),
        (&["--open-file-cache", "0"], true),
        (&["--disable", "fixed-files"], true),
        (
            &["--disable", "fixed-files", "--open-file-cache", "0"],
            true,
        ),
        (&["--disable", "inline-lookups"], false),
    ];
    for (extra, inline) in variants {
        let what = format!("{extra:?}");
        let s = start(&dir, "uring", extra);
        let mut c = Client::connect(s.addr);
        for round in 0..3 {
            let what = format!("{what} round {round}");
            // The large file's pages out of memory, its path still in the lookup cache: the
            // file the inline lookup opened reads from the disk like any other.
            evict_pages(&dir.join("big.bin"));
            assert_eq!(get_ok(&mut c, "/small.bin", &what), small, "{what}");
            assert!(get_ok(&mut c, "/big.bin", &what) == big, "{what}: big");
            assert_eq!(get_ok(&mut c, "/sub/", &what), index, "{what}: index");
            assert_eq!(c.get("/sub", "").status, 301, "{what}: redirect");
            assert_eq!(c.get("/missing", "").status, 404, "{what}: missing");
            let r = c.get("/out", "");
            assert_ne!(r.status, 200, "{what}: symlink out of the root");
            assert!(r.body != passwd, "{what}: symlink out of the root");
            let r = c.get("/fifo", "");
            assert!(matches!(r.status, 403 | 404), "{what}: fifo {}", r.status);
            past_the_period();
        }
        drop(c);
        let line = terminate(s);
        assert_eq!(stat(&line, "refused"), 0, "{what}: {line}");
        let n = stat(&line, "inline_lookups");
        assert_eq!(n > 0, inline, "{what}: {line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Drops `path`'s pages from the page cache (written back first, then POSIX_FADV_DONTNEED),
/// leaving its dentry.
fn evict_pages(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}
