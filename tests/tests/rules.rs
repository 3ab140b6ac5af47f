//! ringwork-files' response rules end to end, on both backends: `--header`, `--expires`,
//! `--error-page`, `--fallback`, and `--rules FILE` reloaded on SIGHUP without dropping a
//! connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ringwork_e2e::http::{once, Client};
use ringwork_e2e::{binary, fresh_dir, terminate, Server, BACKENDS};
use rustix::process::Signal;

fn site(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("assets")).unwrap();
    std::fs::write(root.join("index.html"), b"<p>the app</p>\n").unwrap();
    std::fs::write(root.join("404.html"), b"<p>no such page</p>\n").unwrap();
    std::fs::write(root.join("assets/app.js"), b"let x = 1;\n").unwrap();
    std::fs::write(root.join("assets/style.css"), b"p {}\n").unwrap();
    std::fs::write(root.join("file.txt"), b"text\n").unwrap();
    root
}

fn files(backend: &str, root: &Path, rules: &[&str]) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0", "--backend", backend];
    args.extend_from_slice(rules);
    args.push(root.to_str().unwrap());
    Server::start_capturing("ringwork-files", &args)
}

fn scenario_headers_and_expires(backend: &str) {
    let dir = fresh_dir(&format!("ringwork-rules-headers-{backend}-"));
    let root = site(&dir);
    let s = files(
        backend,
        &root,
        &[
            "--header",
            "*.js: Access-Control-Allow-Origin: *",
            "--header",
            "*: X-Content-Type-Options: nosniff",
            "--expires",
            "*=1h",
            "--expires",
            "/assets/*.css=7d",
        ],
    );
    let mut c = Client::connect(s.addr);
    let js = c.get("/assets/app.js", "");
    assert_eq!(js.status, 200, "{backend}");
    assert_eq!(
        js.header("Access-Control-Allow-Origin"),
        Some("*"),
        "{backend}"
    );
    assert_eq!(js.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(
        js.header("Cache-Control"),
        Some("max-age=3600"),
        "{}",
        js.head
    );
    assert_eq!(js.body, b"let x = 1;\n");
    let css = c.get("/assets/style.css", "");
    assert_eq!(css.header("Access-Control-Allow-Origin"), None, "{backend}");
    assert_eq!(
        css.header("Cache-Control"),
        Some("max-age=604800"),
        "last wins"
    );
    let expires = css.header("Expires").expect("an Expires header");
    let date = css.header("Date").unwrap();
    assert!(
        expires.ends_with(" GMT") && expires != date,
        "{expires} {date}"
    );
    // The Expires date is 7 days after Date: the same weekday-less time of day.
    assert_eq!(&expires[17..], &date[17..], "{expires} vs {date}");
    // A 304 and a 206 carry them, a 404 does not (as nginx's without `always`).
    let etag = js.header("ETag").unwrap().to_string();
    let not_modified = c.get("/assets/app.js", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(not_modified.status, 304);
    assert_eq!(
        not_modified.header("Access-Control-Allow-Origin"),
        Some("*")
    );
    let partial = c.get("/assets/app.js", "Range: bytes=0-2\r\n");
    assert_eq!((partial.status, &partial.body[..]), (206, &b"let"[..]));
    assert_eq!(partial.header("Cache-Control"), Some("max-age=3600"));
    let missing = c.get("/nope.js", "");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("Access-Control-Allow-Origin"), None);
    assert_eq!(missing.header("Cache-Control"), None);
    terminate(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn header_and_expires_rules_go_on_matching_file_responses() {
    for backend in BACKENDS {
        scenario_headers_and_expires(backend);
    }
}

fn scenario_error_page(backend: &str) {
    let dir = fresh_dir(&format!("ringwork-rules-page-{backend}-"));
    let root = site(&dir);
    let s = files(backend, &root, &["--error-page", "404=/404.html"]);
    let mut c = Client::connect(s.addr);
    let r = c.get("/nope", "");
    assert_eq!(r.status, 404, "{backend}");
    assert_eq!(r.body, b"<p>no such page</p>\n", "{backend}");
    assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    assert_eq!(
        r.header("ETag"),
        None,
        "{backend}: an error page is not cacheable"
    );
    // The connection stays open after it, and `/file.txt/` is a 404 as well.
    let r = c.get("/file.txt/", "");
    assert_eq!(
        (r.status, &r.body[..]),
        (404, &b"<p>no such page</p>\n"[..])
    );
    c.send(b"HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read(true).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Content-Length"), Some("20"));
    assert_eq!(c.get("/file.txt", "").status, 200);
    // Removed page: the plain 404.
    std::fs::remove_file(root.join("404.html")).unwrap();
    let r = once(s.addr, b"GET /gone HTTP/1.1\r\nHost: t\r\n\r\n");
    let plain = r.status == 404 && r.body == b"404 Not Found\n";
    // The open-file cache may serve the page it holds until its validity passes.
    assert!(
        plain || r.body == b"<p>no such page</p>\n",
        "{backend}: {:?}",
        r
    );
    terminate(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_error_page_is_served_with_its_status() {
    for backend in BACKENDS {
        scenario_error_page(backend);
    }
}

fn scenario_fallback(backend: &str) {
    let dir = fresh_dir(&format!("ringwork-rules-fallback-{backend}-"));
    let root = site(&dir);
    let s = files(
        backend,
        &root,
        &["--fallback", "/index.html", "--expires", "/index.html=0"],
    );
    let mut c = Client::connect(s.addr);
    for path in ["/app/users/42", "/login", "/assets/missing.png"] {
        let r = c.get(path, "");
        assert_eq!(
            (r.status, &r.body[..]),
            (200, &b"<p>the app</p>\n"[..]),
            "{backend} {path}"
        );
        assert_eq!(
            r.header("Cache-Control"),
            Some("max-age=0"),
            "{backend} {path}"
        );
    }
    let r = c.get("/assets/app.js", "");
    assert_eq!((r.status, &r.body[..]), (200, &b"let x = 1;\n"[..]));
    // A directory without an index names something: still 403, not the fallback.
    std::fs::create_dir_all(root.join("empty")).unwrap();
    assert_eq!(c.get("/empty/", "").status, 403, "{backend}");
    terminate(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_fallback_answers_what_names_nothing() {
    for backend in BACKENDS {
        scenario_fallback(backend);
    }
}

/// `--rules FILE` and SIGHUP: a keep-alive connection opened before the reload is not
/// dropped (it answers by the rules it started with), connections after it get the new
/// rules, and a file that does not parse leaves them as they were.
fn scenario_reload(backend: &str) {
    let dir = fresh_dir(&format!("ringwork-rules-reload-{backend}-"));
    let root = site(&dir);
    let file = dir.join("site.rules");
    std::fs::write(&file, "# first\nheader *: X-Version: 1\n").unwrap();
    let s = files(backend, &root, &["--rules", file.to_str().unwrap()]);
    let mut before = Client::connect(s.addr);
    assert_eq!(before.get("/file.txt", "").header("X-Version"), Some("1"));
    std::fs::write(
        &file,
        "header *: X-Version: 2\nexpires *.txt=1d\nfallback /index.html\n",
    )
    .unwrap();
    s.signal(Signal::HUP);
    assert!(
        s.wait_until(Duration::from_secs(5), |s| s
            .stderr()
            .lines
            .iter()
            .any(|l| l.contains("SIGHUP: rules reloaded from"))),
        "{backend}: {:?}",
        s.stderr().lines
    );
    let r = before.get("/file.txt", "");
    assert_eq!(
        (r.status, r.header("X-Version")),
        (200, Some("1")),
        "{backend}"
    );
    let mut after = Client::connect(s.addr);
    let r = after.get("/file.txt", "");
    assert_eq!(r.header("X-Version"), Some("2"), "{backend}");
    assert_eq!(r.header("Cache-Control"), Some("max-age=86400"));
    assert_eq!(
        after.get("/spa/route", "").status,
        200,
        "{backend}: fallback"
    );
    // A bad file: said, and the rules stay.
    std::fs::write(&file, "header *: X-Version: 3\nheader nonsense\n").unwrap();
    s.signal(Signal::HUP);
    assert!(
        s.wait_until(Duration::from_secs(5), |s| s
            .stderr()
            .lines
            .iter()
            .any(|l| l.contains(":2: ") && l.contains("the old rules stay"))),
        "{backend}: {:?}",
        s.stderr().lines
    );
    let r = Client::connect(s.addr).get("/file.txt", "");
    assert_eq!(r.header("X-Version"), Some("2"), "{backend}");
    assert_eq!(before.get("/file.txt", "").status, 200, "{backend}");
    terminate(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sighup_reloads_the_rules_file_without_dropping_a_connection() {
    for backend in BACKENDS {
        scenario_reload(backend);
    }
}

/// A rule that does not parse stops the server at start, naming the flag and what is wrong.
#[test]
fn a_bad_rule_is_refused_at_start() {
    for (flag, value, says) in [
        ("--header", "*.js", "GLOB: Name: value"),
        ("--header", "*: Content-Length: 1", "the server's"),
        ("--expires", "*.css=7q", "duration"),
        ("--error-page", "500=/500.html", "403 or 404"),
        ("--fallback", "index.html", "starts with `/`"),
    ] {
        let out = std::process::Command::new(binary("ringwork-files"))
            .args(["--listen", "127.0.0.1:0", flag, value, "."])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value}");
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
    }
}
