//! Answers an operator found differing from nginx's, or from what `--help` promised, held on
//! both backends: many header fields within the head's byte limit, a long If-None-Match
//! list, a trailing slash after a file (served from the open-file cache too), and the
//! `--help` text on rewrites in place.

use std::path::{Path, PathBuf};

use ringwork_e2e::http::Client;
use ringwork_e2e::{binary, fresh_dir, terminate, Server, BACKENDS};

fn site(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("file.txt"), b"text\n").unwrap();
    root
}

fn scenario(backend: &str) {
    let dir = fresh_dir(&format!("ringwork-findings-{backend}-"));
    let root = site(&dir);
    let s = Server::start(
        "ringwork-files",
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            root.to_str().unwrap(),
        ],
    );
    let mut c = Client::connect(s.addr);
    // 200 header fields in about 2 KiB: limited by bytes (8 KiB), as nginx's buffer is.
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let r = c.get("/file.txt", &many);
    assert_eq!((r.status, &r.body[..]), (200, &b"text\n"[..]), "{backend}");
    let etag = r.header("ETag").unwrap().to_string();
    // The tag at the end of a list of 200: 304.
    let list: String = (0..200).map(|i| format!("\"other-{i}\", ")).collect();
    let r = c.get("/file.txt", &format!("If-None-Match: {list}{etag}\r\n"));
    assert_eq!(r.status, 304, "{backend}");
    // The file is cached now; a slash after it still names nothing.
    for target in ["/file.txt/", "/file.txt/.", "/file.txt/./"] {
        assert_eq!(c.get(target, "").status, 404, "{backend} {target}");
    }
    assert_eq!(c.get("/file.txt", "").status, 200, "{backend}");
    // Past the byte limit: 431.
    let too_many: String = (0..1000).map(|i| format!("X-{i}: v\r\n")).collect();
    let r = c.get("/file.txt", &too_many);
    assert_eq!(r.status, 431, "{backend}");
    drop(c);
    terminate(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn header_fields_and_if_none_match_are_limited_by_bytes_and_a_slash_after_a_file_is_404() {
    for backend in BACKENDS {
        scenario(backend);
    }
}

/// `--help` said a rewrite in place was seen at once; it is seen once the validity period
/// has passed, and until then goes out with the old length.
#[test]
fn help_says_what_a_rewrite_in_place_does() {
    let out = std::process::Command::new(binary("ringwork-files"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(!flat.contains("rewrite in place at once"), "{flat}");
    assert!(flat.contains("rewritten in place"), "{flat}");
    assert!(flat.contains("old length"), "{flat}");
}

/// A symlink inside the root that leads out of it: whatever a client asks for beneath it
/// (a file there, nothing, a directory with or without its slash, a file as a directory)
/// answers 403, as nginx's `disable_symlinks on` does, so that nothing tells which outside
/// paths exist or are directories; the same shapes inside the root answer as usual.
fn scenario_symlink_out(backend: &str) {
    let dir = fresh_dir(&format!("ringwork-findings-link-{backend}-"));
    let root = site(&dir);
    let outside = dir.join("outside");
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("x"), b"secret\n").unwrap();
    std::fs::write(outside.join("dir/index.html"), b"secret\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
    std::os::unix::fs::symlink("../outside/x", root.join("rel")).unwrap();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/index.html"), b"in\n").unwrap();
    let s = Server::start(
        "ringwork-files",
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            root.to_str().unwrap(),
        ],
    );
    let mut c = Client::connect(s.addr);
    for target in [
        "/out",
        "/out/",
        "/out/x",
        "/out/x/",
        "/out/nope",
        "/out/nope/",
        "/out/dir",
        "/out/dir/",
        "/out/dir/index.html",
        "/rel",
        "/rel/",
    ] {
        let r = c.get(target, "");
        assert_eq!(r.status, 403, "{backend} {target}");
        assert!(!r.body.starts_with(b"secret"), "{backend} {target}");
    }
    for (target, status) in [
        ("/sub", 301),
        ("/sub/", 200),
        ("/sub/nope", 404),
        ("/nope", 404),
        ("/file.txt/", 404),
        ("/file.txt", 200),
    ] {
        assert_eq!(c.get(target, "").status, status, "{backend} {target}");
    }
    drop(c);
    terminate(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn everything_under_a_symlink_out_of_the_root_answers_alike() {
    for backend in BACKENDS {
        scenario_symlink_out(backend);
    }
}
