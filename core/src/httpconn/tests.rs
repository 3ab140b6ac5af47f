use super::*;
use alloc::string::String;
use alloc::vec::Vec;
use proptest::prelude::*;

/// A simulated driver: one file `f` of `size` bytes (byte i is `i % 251`), a directory
/// `d` without index, `x` that stats as a file but fails to open (a symlink out of the
/// root: EXDEV), everything else missing. Reads and sends are cut short at random.
/// Linked opens: the linked read runs after a successful open, and after a failed one
/// completes with ECANCELED, its CQE before or after the open's. Cancel and shutdown
/// requests complete late, at random, like SEND_ZC notifications; whenever nothing is
/// queued the connection's in-flight count must match what the simulation owes it.
struct Sim {
    conn: HttpConn,
    file: Vec<u8>,
    bufs: [Vec<u8>; 2],
    out: Vec<u8>,
    input: Vec<u8>,
    cuts: Vec<u32>,
    cut_ix: usize,
    closed: bool,
    file_open: bool,
    dio: Option<Alignment>,
    direct_open: bool,
    /// Zero-copy sends whose notification is still to come: slot, buffer, and the bytes
    /// the kernel may still read there (position and a snapshot to compare with).
    zc_pending: Vec<(ZcSlot, usize, usize, Vec<u8>)>,
    /// xorshift state choosing when notifications arrive and in which order.
    rng: u64,
    /// A receive is pending (nothing more to give it).
    recv_pending: bool,
    /// Cancel and shutdown requests whose own completions are still to come.
    deferred: Vec<Deferred>,
    /// [`Op::Free`] was performed.
    freed: bool,
    /// Call [`HttpConn::on_shutdown`] when this many ops have been polled.
    shutdown_at: Option<usize>,
    /// The send side was shut down.
    fin: bool,
    /// At the shutdown: requests answered, and whether one was under way.
    at_shutdown: Option<(u64, bool)>,
}

#[derive(Clone, Copy, Debug)]
enum Deferred {
    Cancel,
    Shutdown,
}

impl Sim {
    /// One late cancel or shutdown completion, picked at random.
    fn complete_deferred(&mut self) {
        let k = self.rand(self.deferred.len());
        match self.deferred.swap_remove(k) {
            Deferred::Cancel => self.conn.on_cancel_done(Time::default()),
            Deferred::Shutdown => self.conn.on_shutdown_done(Time::default()),
        }
    }

    fn rand(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }

    /// One outstanding notification, picked at random (any order): the kernel is done
    /// with the bytes, which must still be the ones it was given.
    fn notify_one(&mut self) {
        let k = self.rand(self.zc_pending.len());
        let (slot, buf, pos, snapshot) = self.zc_pending.swap_remove(k);
        assert_eq!(
            &self.bufs[buf][pos..pos + snapshot.len()],
            &snapshot[..],
            "a buffer was reused before its SEND_ZC notification"
        );
        self.conn.on_send_notif(Time::default(), slot);
    }

    fn cut(&mut self, n: u32) -> u32 {
        let c = self.cuts[self.cut_ix % self.cuts.len()];
        self.cut_ix += 1;
        n.min(c.max(1))
    }

    fn run(&mut self) {
        let now = Time::default();
        let mut steps = 0;
        loop {
            let op = match self.conn.poll_op() {
                Some(op) => {
                    assert!(!self.freed, "{op:?} after Free");
                    assert!(!self.closed || op == Op::Free, "{op:?} after Close");
                    op
                }
                None => {
                    let owed = u32::from(self.recv_pending)
                        + (self.zc_pending.len() + self.deferred.len()) as u32;
                    assert_eq!(self.conn.in_flight(), owed, "in-flight count");
                    // Nothing else to do: what is still owed comes in (notifications
                    // also after Close: the driver keeps the buffers for them).
                    if !self.zc_pending.is_empty() {
                        self.notify_one();
                    } else if !self.deferred.is_empty() {
                        self.complete_deferred();
                    } else {
                        break;
                    }
                    continue;
                }
            };
            steps += 1;
            assert!(steps < 1_000_000, "no progress");
            // Notifications (and cancel and shutdown completions) also come between other
            // completions, late and out of order; not between Close's emission and its
            // performance, which a driver does at once.
            let closing = matches!(op, Op::Close { .. } | Op::Free);
            if !closing && !self.zc_pending.is_empty() && self.rand(3) == 0 {
                self.notify_one();
            }
            if !closing && !self.deferred.is_empty() && self.rand(3) == 0 {
                self.complete_deferred();
            }
            if self.shutdown_at == Some(steps) {
                // The server starts draining with `op` in flight.
                // Under way: a response, or the request a new connection (or a partial
                // head) waits for, which a drain still answers.
                let waiting = matches!(self.conn.phase, Phase::Head { .. })
                    && (self.conn.requests() == 0 || self.conn.rlen > 0);
                let busy = waiting
                    || matches!(
                        self.conn.phase,
                        Phase::Stat { .. }
                            | Phase::Open { .. }
                            | Phase::OpenFailed { .. }
                            | Phase::Respond
                    );
                self.at_shutdown = Some((self.conn.requests(), busy));
                self.conn.on_shutdown();
            }
            match op {
                Op::Recv { .. } if self.input.is_empty() => {
                    // Nothing more to receive: the receive stays pending.
                    self.recv_pending = true;
                }
                Op::Recv { max } => {
                    let n = self.cut(max).min(self.input.len() as u32) as usize;
                    let bytes: Vec<u8> = self.input.drain(..n).collect();
                    self.conn.on_recv(now, Ok(&bytes));
                }
                Op::Stat => {
                    let p = self.conn.path().to_vec();
                    let res = match &p[..] {
                        b"f\0" | b"x\0" | b"f.gz\0" => Ok(FileInfo {
                            kind: FileKind::Regular,
                            size: self.file.len() as u64,
                            mtime_secs: 1_000_000,
                            dio: self.dio,
                        }),
                        b"d\0" | b".\0" => Ok(FileInfo {
                            kind: FileKind::Directory,
                            size: 0,
                            mtime_secs: 0,
                            dio: None,
                        }),
                        _ => Err(RawErrno::NOENT),
                    };
                    self.conn.on_stat(now, res);
                }
                Op::Open { link_next, .. } if self.conn.path() == b"x\0" => {
                    assert!(!self.file_open, "the slot must be closed before reuse");
                    if !link_next {
                        self.conn.on_open(now, Err(RawErrno::XDEV));
                        continue;
                    }
                    let Some(Op::Read { buf, .. }) = self.conn.poll_op() else {
                        panic!("link_next without a read behind it");
                    };
                    if self.rand(2) == 0 {
                        self.conn.on_open(now, Err(RawErrno::XDEV));
                        self.conn.on_read(now, buf, Err(RawErrno::CANCELED));
                    } else {
                        self.conn.on_read(now, buf, Err(RawErrno::CANCELED));
                        self.conn.on_open(now, Err(RawErrno::XDEV));
                    }
                }
                Op::Open { direct, .. } => {
                    assert!(!self.file_open, "the slot must be closed before reuse");
                    self.file_open = true;
                    self.direct_open = direct;
                    self.conn.on_open(now, Ok(()));
                }
                Op::Read {
                    buf,
                    offset,
                    len,
                    buf_pos,
                } => {
                    assert!(self.file_open);
                    assert!(
                        self.zc_pending.iter().all(|p| p.1 != usize::from(buf.0)),
                        "a read into a buffer with a SEND_ZC notification outstanding"
                    );
                    if self.direct_open {
                        let unit = u64::from(self.dio.unwrap().unit());
                        assert_eq!(offset % unit, 0, "O_DIRECT offset alignment");
                        assert_eq!(u64::from(len) % unit, 0, "O_DIRECT length alignment");
                        assert_eq!(u64::from(buf_pos) % unit, 0, "O_DIRECT buffer alignment");
                    }
                    // Short reads stay aligned under O_DIRECT (the kernel stops at a block
                    // boundary or end of file).
                    let n = match self.direct_open {
                        true => {
                            let unit = self.dio.unwrap().unit();
                            let n = self.cut(len);
                            (n / unit).max(1) * unit
                        }
                        false => self.cut(len),
                    } as usize;
                    let off = offset as usize;
                    let avail = self.file.len().saturating_sub(off).min(n);
                    let b = &mut self.bufs[usize::from(buf.0)];
                    let pos = buf_pos as usize;
                    b[pos..pos + avail].copy_from_slice(&self.file[off..off + avail]);
                    self.conn.on_read(now, buf, Ok(avail as u32));
                }
                Op::Send(src) => {
                    let bytes: Vec<u8> = match src {
                        SendSrc::Head { start, len } => {
                            self.conn.head_bytes()[start as usize..(start + len) as usize].to_vec()
                        }
                        SendSrc::Buf { buf, start, len } => self.bufs[usize::from(buf.0)]
                            [start as usize..(start + len) as usize]
                            .to_vec(),
                        SendSrc::HeadAndBuf { buf, start, len } => {
                            // As a driver does: the head into the room before the chunk.
                            let head = self.conn.head_bytes().to_vec();
                            let b = &mut self.bufs[usize::from(buf.0)];
                            let from = start as usize - head.len();
                            b[from..start as usize].copy_from_slice(&head);
                            b[from..(start + len) as usize].to_vec()
                        }
                        SendSrc::File { offset, len } => {
                            assert!(self.file_open, "a file send with no file open");
                            assert!(len > 0 && len <= FILE_SEND_MAX, "file send of {len}");
                            // Sometimes the driver cannot: no mapping yet, pages on disk.
                            match self.rand(8) {
                                0 => {
                                    self.conn.on_file_send_declined(now, true);
                                    continue;
                                }
                                1 if self.rand(4) == 0 => {
                                    self.conn.on_file_send_declined(now, false);
                                    continue;
                                }
                                _ => {}
                            }
                            let off = offset as usize;
                            let end = (off + len as usize).min(self.file.len());
                            self.file[off.min(end)..end].to_vec()
                        }
                    };
                    let n = self.cut(bytes.len() as u32) as usize;
                    self.out.extend_from_slice(&bytes[..n]);
                    self.conn.on_send(now, Ok(n as u32));
                }
                Op::SendZc {
                    buf,
                    start,
                    len,
                    slot,
                } => {
                    let b = usize::from(buf.0);
                    let (start, len) = (start as usize, len as usize);
                    let n = self.cut(len as u32) as usize;
                    let bytes = self.bufs[b][start..start + n].to_vec();
                    self.out.extend_from_slice(&bytes);
                    self.zc_pending.push((slot, b, start, bytes));
                    if self.rand(4) == 0 {
                        // The notification before the result (the kernel does not
                        // promise their order).
                        let last = self.zc_pending.len() - 1;
                        self.zc_pending.swap(0, last);
                        let (slot, ..) = self.zc_pending.remove(0);
                        self.conn.on_send_notif(now, slot);
                    }
                    self.conn.on_send_zc(now, slot, Ok(n as u32), true);
                }
                Op::CloseFile => {
                    assert!(self.file_open);
                    self.file_open = false;
                    self.conn.on_file_closed(now);
                }
                Op::Shutdown => {
                    self.fin = true;
                    self.deferred.push(Deferred::Shutdown);
                }
                Op::Cancel if self.recv_pending => {
                    self.recv_pending = false;
                    // The cancel's own completion before or after the receive's.
                    if self.rand(2) == 0 {
                        self.conn.on_cancel_done(now);
                        self.conn.on_recv(now, Err(RawErrno::CANCELED));
                    } else {
                        self.conn.on_recv(now, Err(RawErrno::CANCELED));
                        self.deferred.push(Deferred::Cancel);
                    }
                }
                // The receive it meant completed first (the kernel says ENOENT).
                Op::Cancel => self.deferred.push(Deferred::Cancel),
                Op::Close { reset } => {
                    assert!(!self.file_open, "file left open at close");
                    assert!(!self.recv_pending, "closed with a receive in flight");
                    assert!(
                        self.deferred.is_empty(),
                        "closed with a cancel or shutdown in flight: {:?}",
                        self.deferred
                    );
                    // Notifications may still be owed (the driver keeps the buffers and
                    // resets the socket), but no send result.
                    assert_eq!(
                        self.conn.zc_in_flight(),
                        self.zc_pending.len(),
                        "closed with a SEND_ZC result outstanding"
                    );
                    assert_eq!(reset, !self.zc_pending.is_empty(), "reset iff owed");
                    self.closed = true;
                }
                Op::Free => {
                    assert!(self.closed, "freed before Close");
                    assert!(self.zc_pending.is_empty(), "freed with notifications owed");
                    assert_eq!(self.conn.in_flight(), 0);
                    self.freed = true;
                }
            }
        }
    }
}

/// Splits the output into (status, body) pairs using Content-Length.
fn responses(mut out: &[u8], head_only: &[bool]) -> Vec<(u16, Vec<u8>)> {
    let mut v = Vec::new();
    while !out.is_empty() {
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head end")
            + 4;
        let head = String::from_utf8(out[..end].to_vec()).unwrap();
        let status: u16 = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |l| l.parse().unwrap());
        let len = if head_only.get(v.len()).copied().unwrap_or(false) {
            0
        } else {
            len
        };
        v.push((status, out[end..end + len].to_vec()));
        out = &out[end + len..];
    }
    v
}

fn sim(size: usize, chunk: u32, input: Vec<u8>, cuts: Vec<u32>) -> Sim {
    sim_with(size, chunk, None, input, cuts, None, false)
}

/// With `dio`, statx reports that O_DIRECT alignment and the server asks for O_DIRECT.
fn sim_with(
    size: usize,
    chunk: u32,
    dio: Option<Alignment>,
    input: Vec<u8>,
    cuts: Vec<u32>,
    zerocopy_seed: Option<u64>,
    links: bool,
) -> Sim {
    let cfg = Config {
        chunk,
        direct: dio.is_some(),
        zerocopy: zerocopy_seed.is_some(),
        link_open_read: links,
        // Half the cases (by the file size proptest picked) send head and first chunk at
        // once, as the servers do; the other half send the head alone.
        head_with_body: size % 2 == 1,
        precompressed: true,
        access_log: true,
        // Two cases in three send the body after the first chunk from the file.
        file_send: size % 3 != 0,
        ..Config::default()
    };
    let buf_len = (chunk + HEAD_ROOM) as usize;
    Sim {
        conn: HttpConn::new(cfg, Time::default()),
        file: (0..size).map(|i| (i % 251) as u8).collect(),
        bufs: [vec![0; buf_len], vec![0; buf_len]],
        out: Vec::new(),
        input,
        cuts,
        cut_ix: 0,
        closed: false,
        file_open: false,
        dio,
        direct_open: false,
        zc_pending: Vec::new(),
        rng: zerocopy_seed.unwrap_or(1) | 1,
        recv_pending: false,
        deferred: Vec::new(),
        freed: false,
        shutdown_at: None,
        fin: false,
        at_shutdown: None,
    }
}

#[derive(Clone, Debug)]
enum Req {
    Get,
    Head,
    Range(u64, u64),
    /// A range behind an If-Range with the file's ETag (true) or another.
    IfRange(u64, u64, bool),
    /// If-None-Match with the file's ETag (true: 304) or another (200), beside an
    /// If-Modified-Since that alone would say 304.
    IfNoneMatch(bool),
    /// Accept-Encoding taking gzip (`f.gz` exists: served) or only brotli (`f.br` does
    /// not: `f` served); the simulated sibling holds the same bytes.
    Encoded(bool),
    Missing,
    Dir,
    DirNoSlash,
    Escape,
}

fn req_strategy() -> impl Strategy<Value = Req> {
    prop_oneof![
        4 => Just(Req::Get),
        1 => Just(Req::Head),
        2 => (0u64..20_000, 0u64..20_000).prop_map(|(a, b)| Req::Range(a.min(b), a.max(b))),
        1 => (0u64..20_000, 0u64..20_000, any::<bool>())
            .prop_map(|(a, b, m)| Req::IfRange(a.min(b), a.max(b), m)),
        1 => any::<bool>().prop_map(Req::IfNoneMatch),
        1 => any::<bool>().prop_map(Req::Encoded),
        1 => Just(Req::Missing),
        1 => Just(Req::Dir),
        1 => Just(Req::DirNoSlash),
        1 => Just(Req::Escape),
    ]
}

proptest! {
    #[test]
    fn pipelined_requests_get_exact_bytes(
        size in 0usize..20_000,
        chunk in 1u32..5000,
        reqs in proptest::collection::vec(req_strategy(), 1..6),
        cuts in proptest::collection::vec(1u32..9000, 1..8),
        direct in any::<bool>(),
        zerocopy in proptest::option::of(any::<u64>()),
        links in any::<bool>(),
    ) {
        let mut input = Vec::new();
        for r in &reqs {
            let line = match r {
                Req::Get
                | Req::Range(..)
                | Req::IfRange(..)
                | Req::IfNoneMatch(_)
                | Req::Encoded(_) => {
                    "GET /f HTTP/1.1"
                }
                Req::Head => "HEAD /f HTTP/1.1",
                Req::Missing => "GET /nope HTTP/1.1",
                Req::Dir => "GET /d/ HTTP/1.1",
                Req::DirNoSlash => "GET /d?q=1 HTTP/1.1",
                Req::Escape => "GET /x HTTP/1.1",
            };
            input.extend_from_slice(line.as_bytes());
            input.extend_from_slice(b"\r\nHost: x\r\n");
            // The simulated file's mtime is 1_000_000 (0xf4240).
            let etag = alloc::format!("\"f4240-{size:x}\"");
            match r {
                Req::Range(a, b) => {
                    input.extend_from_slice(alloc::format!("Range: bytes={a}-{b}\r\n").as_bytes());
                }
                Req::IfRange(a, b, m) => {
                    let v = if *m { etag.as_str() } else { "\"f4240-0x\"" };
                    input.extend_from_slice(
                        alloc::format!("Range: bytes={a}-{b}\r\nIf-Range: {v}\r\n").as_bytes(),
                    );
                }
                Req::Encoded(gzip) => {
                    let v = if *gzip { "br;q=0, gzip" } else { "br, gzip;q=0" };
                    input.extend_from_slice(alloc::format!("Accept-Encoding: {v}\r\n").as_bytes());
                }
                Req::IfNoneMatch(m) => {
                    let v = if *m { alloc::format!("\"x\", W/{etag}") } else { String::from("\"x\"") };
                    input.extend_from_slice(
                        alloc::format!(
                            "If-None-Match: {v}\r\nIf-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n"
                        )
                        .as_bytes(),
                    );
                }
                _ => {}
            }
            input.extend_from_slice(b"\r\n");
        }
        let dio = direct.then_some(Alignment { mem: 512, offset: 512 });
        let chunk = if direct { chunk.div_ceil(512) * 512 } else { chunk };
        let mut s = sim_with(size, chunk, dio, input, cuts, zerocopy, links);
        s.run();
        // All input consumed; the connection waits for more (keep-alive), never closed.
        prop_assert!(!s.closed);
        prop_assert!(!s.file_open);
        prop_assert_eq!(s.conn.zc_in_flight(), 0);
        prop_assert_eq!(s.conn.in_flight(), 1, "just the receive");
        let head_only: Vec<bool> = reqs.iter().map(|r| matches!(r, Req::Head)).collect();
        let got = responses(&s.out, &head_only);
        prop_assert_eq!(got.len(), reqs.len());
        // The log has every request, in order, with what was answered.
        let mut logged = Vec::new();
        s.conn.drain_log(|e| logged.push((e.status, e.body_bytes, e.method.to_vec())));
        prop_assert_eq!(logged.len(), reqs.len());
        for ((status, body), (lstatus, lbytes, method)) in got.iter().zip(&logged) {
            prop_assert_eq!((*status, body.len() as u64), (*lstatus, *lbytes));
            prop_assert!(method == b"GET" || method == b"HEAD");
        }
        for (r, (status, body)) in reqs.iter().zip(got) {
            match r {
                Req::Get => {
                    prop_assert_eq!(status, 200);
                    prop_assert_eq!(&body[..], &s.file[..]);
                }
                Req::Head => prop_assert_eq!((status, body.len()), (200, 0)),
                Req::IfRange(_, _, false) | Req::IfNoneMatch(false) | Req::Encoded(_) => {
                    prop_assert_eq!(status, 200);
                    prop_assert_eq!(&body[..], &s.file[..]);
                }
                Req::IfNoneMatch(true) => prop_assert_eq!((status, body.len()), (304, 0)),
                Req::Range(a, b) | Req::IfRange(a, b, true) => {
                    if *a as usize >= size {
                        prop_assert_eq!(status, 416);
                    } else {
                        prop_assert_eq!(status, 206);
                        let end = (*b as usize).min(size - 1);
                        prop_assert_eq!(&body[..], &s.file[*a as usize..=end]);
                    }
                }
                Req::Missing => prop_assert_eq!(status, 404),
                Req::DirNoSlash => {
                    prop_assert_eq!(status, 301);
                    prop_assert_eq!(&body[..], b"301 Moved Permanently\n");
                }
                Req::Dir | Req::Escape => prop_assert_eq!(status, 403),
            }
        }
    }

    /// A drain may begin at any point of a pipelined exchange: every response that went
    /// out is complete and right, the one in progress is finished, nothing after it is
    /// begun, and the connection closes (after the client's end of stream when the send
    /// side was shut down) with its file closed.
    #[test]
    fn shutdown_at_any_point_finishes_the_response_in_progress(
        size in 0usize..20_000,
        chunk in 1u32..5000,
        gets in 1usize..5,
        cuts in proptest::collection::vec(1u32..9000, 1..8),
        at in 1usize..300,
        zerocopy in proptest::option::of(any::<u64>()),
        links in any::<bool>(),
    ) {
        // Also with zero-copy sends (notifications may come after Close; the buffers must be
        // untouched until they do) and linked
        // open → read chains in flight when the drain begins.
        let input = b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n".repeat(gets);
        let mut s = sim_with(size, chunk, None, input, cuts, zerocopy, links);
        s.shutdown_at = Some(at);
        s.run();
        if !s.conn.is_closed() && !s.fin {
            // The point was never reached: the drain finds the connection waiting.
            prop_assert!(s.recv_pending);
            s.at_shutdown = Some((s.conn.requests(), false));
            s.conn.on_shutdown();
            s.run();
        }
        if s.fin {
            // Shut down after a response, as after `Connection: close`: the client closes.
            prop_assert!(s.recv_pending);
            s.recv_pending = false;
            s.conn.on_recv(Time::default(), Ok(&[]));
            s.run();
        }
        prop_assert!(s.closed && s.conn.is_closed());
        prop_assert!(s.freed && s.conn.is_freed(), "closed but never freed");
        prop_assert!(!s.file_open);
        let got = responses(&s.out, &[]);
        // Exactly the responses done or under way when the drain began.
        let (done, busy) = s.at_shutdown.unwrap();
        prop_assert_eq!(got.len() as u64, done + u64::from(busy));
        prop_assert_eq!(got.len() as u64, s.conn.requests());
        for (status, body) in got {
            prop_assert_eq!(status, 200);
            prop_assert_eq!(&body[..], &s.file[..]);
        }
    }

    #[test]
    fn garbage_never_panics_and_closes_cleanly(
        input in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(1u32..500, 1..4),
    ) {
        let mut s = sim(100, 64, input, cuts);
        s.run();
        prop_assert!(!s.file_open);
    }
}

#[test]
fn malformed_request_gets_400_then_close_after_eof() {
    let mut s = sim(10, 64, b"GARBAGE\r\n\r\n".to_vec(), vec![1000]);
    s.run();
    assert!(s.out.starts_with(b"HTTP/1.1 400"));
    assert!(!s.closed, "draining until the client closes");
    assert!(s.recv_pending);
    s.recv_pending = false;
    s.conn.on_recv(Time::default(), Ok(&[]));
    s.run();
    assert!(s.closed);
}

#[test]
fn header_timeout_cancels_the_receive_then_closes() {
    let cfg = Config {
        header_timeout_ms: 100,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, Time::default());
    assert!(matches!(c.poll_op(), Some(Op::Recv { .. })));
    c.on_tick(Time {
        mono_ms: 50,
        mono_us: 0,
        unix_secs: 0,
    });
    assert_eq!(c.poll_op(), None);
    c.on_tick(Time {
        mono_ms: 100,
        mono_us: 0,
        unix_secs: 0,
    });
    assert_eq!(c.poll_op(), Some(Op::Cancel));
    c.on_recv(Time::default(), Err(RawErrno::CANCELED));
    assert_eq!(
        c.poll_op(),
        None,
        "the cancel's own completion is still to come"
    );
    c.on_cancel_done(Time::default());
    assert_eq!(c.poll_op(), Some(Op::Close { reset: false }));
    assert_eq!(c.poll_op(), Some(Op::Free));
    assert!(c.is_freed());
}

/// The deadline is exactly when a tick closes: a millisecond before it nothing happens, at
/// it the connection closes; for the first head and for a response that stalls.
#[test]
fn a_tick_closes_at_the_next_deadline_and_not_before() {
    let cfg = Config {
        header_timeout_ms: 100,
        idle_timeout_ms: 1000,
        ..Config::default()
    };
    let t = |ms| Time {
        mono_ms: ms,
        mono_us: 0,
        unix_secs: 0,
    };
    let mut c = HttpConn::new(cfg, t(5));
    drain_ops(&mut c);
    assert_eq!(c.next_deadline_ms(), Some(105), "the first head");
    c.on_tick(t(104));
    assert!(drain_ops(&mut c).is_empty());
    c.on_tick(t(105));
    assert_eq!(drain_ops(&mut c), [Op::Cancel]);

    let mut c = HttpConn::new(cfg, t(5));
    drain_ops(&mut c);
    c.on_recv(t(10), Ok(GET_F));
    drain_ops(&mut c);
    assert_eq!(
        c.next_deadline_ms(),
        None,
        "no timeout while the lookup runs"
    );
    c.on_stat(t(20), Ok(regular(10)));
    drain_ops(&mut c);
    c.on_open(t(30), Ok(()));
    drain_ops(&mut c);
    assert_eq!(
        c.next_deadline_ms(),
        Some(1030),
        "a response makes progress or ends"
    );
    c.on_tick(t(1029));
    assert!(drain_ops(&mut c).is_empty());
    c.on_tick(t(1030));
    assert_eq!(drain_ops(&mut c), [Op::Cancel]);
}

pub(super) fn drain_ops(c: &mut HttpConn) -> Vec<Op> {
    core::iter::from_fn(|| c.poll_op()).collect()
}

/// A fresh connection's `GET /f` of a regular file of `size` bytes, up to the open's
/// completion (no links, no O_DIRECT); returns the ops that follow the open.
fn open_response(c: &mut HttpConn, size: u64) -> Vec<Op> {
    let now = Time::default();
    assert!(matches!(drain_ops(c)[..], [Op::Recv { .. }]));
    c.on_recv(now, Ok(GET_F));
    assert_eq!(drain_ops(c), [Op::Stat]);
    c.on_stat(now, Ok(regular(size)));
    assert_eq!(
        drain_ops(c),
        [Op::Open {
            direct: false,
            link_next: false
        }]
    );
    c.on_open(now, Ok(()));
    drain_ops(c)
}

#[test]
fn a_failed_send_closes_only_after_the_read_in_flight_and_the_file_close() {
    let now = Time::default();
    let cfg = Config {
        chunk: 4096,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    let ops = open_response(&mut c, 100_000);
    assert!(matches!(
        ops[..],
        [Op::Send(SendSrc::Head { .. }), Op::Read { .. }]
    ));
    c.on_send(now, Err(RawErrno::PIPE));
    assert_eq!(drain_ops(&mut c), [], "the read still owns buffer 0");
    c.on_read(now, BufIx(0), Ok(4096));
    assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
    c.on_file_closed(now);
    assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
    assert!(c.is_freed());
}

/// A SEND_ZC chunk whose notification is late: the next read waits for it when it needs
/// that buffer; a connection that fails meanwhile says Close with it still owed.
/// With `head_with_body` the head waits for the first chunk and both go in one send;
/// a short send of it goes on with the head's rest, then the chunk's.
#[test]
fn the_head_goes_out_with_the_first_chunk() {
    let now = Time::default();
    let cfg = Config {
        chunk: 4096,
        head_with_body: true,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    let ops = open_response(&mut c, 3000);
    assert!(
        matches!(
            ops[..],
            [Op::Read {
                buf: BufIx(0),
                buf_pos: HEAD_ROOM,
                ..
            }]
        ),
        "no head alone, the chunk read behind the room: {ops:?}"
    );
    c.on_read(now, BufIx(0), Ok(3000));
    let ops = drain_ops(&mut c);
    assert_eq!(
        ops,
        [Op::Send(SendSrc::HeadAndBuf {
            buf: BufIx(0),
            start: HEAD_ROOM,
            len: 3000
        })]
    );
    let head_len = c.head_bytes().len() as u32;
    // Short: part of the head only.
    c.on_send(now, Ok(head_len - 5));
    let ops = drain_ops(&mut c);
    assert_eq!(
        ops,
        [Op::Send(SendSrc::Head {
            start: head_len - 5,
            len: 5
        })]
    );
    c.on_send(now, Ok(5));
    let ops = drain_ops(&mut c);
    assert_eq!(
        ops,
        [Op::Send(SendSrc::Buf {
            buf: BufIx(0),
            start: HEAD_ROOM,
            len: 3000
        })]
    );
    c.on_send(now, Ok(3000));
    assert!(matches!(drain_ops(&mut c)[..], [Op::CloseFile, ..]));
}

/// A chunk buffer is free exactly when nothing of the connection's is in it: not while a
/// read fills it or its bytes wait or go out, and again once they are sent.
#[test]
fn the_body_after_the_first_chunk_goes_from_the_file() {
    let now = Time::default();
    let cfg = Config {
        chunk: 1000,
        head_with_body: true,
        file_send: true,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    // The first chunk is read: it goes out with the head.
    let ops = open_response(&mut c, 5000);
    let [Op::Read {
        buf,
        offset: 0,
        len: 1000,
        ..
    }] = ops[..]
    else {
        panic!("{ops:?}")
    };
    c.on_read(now, buf, Ok(1000));
    let ops = drain_ops(&mut c);
    assert!(
        matches!(ops[..], [Op::Send(SendSrc::HeadAndBuf { len: 1000, .. })]),
        "{ops:?}"
    );
    let head = c.head_bytes().len() as u32;
    c.on_send(now, Ok(head + 1000));
    // The rest from the file, no read; a short send goes on where it stopped.
    assert_eq!(
        drain_ops(&mut c),
        [Op::Send(SendSrc::File {
            offset: 1000,
            len: 4000
        })]
    );
    c.on_send(now, Ok(1500));
    assert_eq!(
        drain_ops(&mut c),
        [Op::Send(SendSrc::File {
            offset: 2500,
            len: 2500
        })]
    );
    // Declined (the pages are not in memory): one chunk through a buffer, then the file.
    c.on_file_send_declined(now, true);
    let ops = drain_ops(&mut c);
    let [Op::Read {
        buf,
        offset: 2500,
        len: 1000,
        ..
    }] = ops[..]
    else {
        panic!("{ops:?}")
    };
    c.on_read(now, buf, Ok(1000));
    let ops = drain_ops(&mut c);
    assert!(
        matches!(ops[..], [Op::Send(SendSrc::Buf { len: 1000, .. })]),
        "{ops:?}"
    );
    c.on_send(now, Ok(1000));
    assert_eq!(
        drain_ops(&mut c),
        [Op::Send(SendSrc::File {
            offset: 3500,
            len: 1500
        })]
    );
    // Declined for good: the rest through buffers, two reads in turn.
    c.on_file_send_declined(now, false);
    let ops = drain_ops(&mut c);
    assert!(
        matches!(
            ops[..],
            [Op::Read {
                offset: 3500,
                len: 1000,
                ..
            }]
        ),
        "{ops:?}"
    );
    let mut bufs = [
        vec![0; 1000 + HEAD_ROOM as usize],
        vec![0; 1000 + HEAD_ROOM as usize],
    ];
    let Op::Read { buf, .. } = ops[0] else {
        unreachable!()
    };
    c.on_read(now, buf, Ok(1000));
    let mut out = Vec::new();
    let rest = complete_io(&mut c, &mut bufs, &mut out);
    assert_eq!(out.len(), 1500, "the last 1,500 bytes through buffers");
    assert!(matches!(rest[..], [Op::Recv { .. }]), "{rest:?}");
    assert_eq!(c.requests(), 1);
}

#[test]
fn no_file_sends_with_zero_copy_or_o_direct() {
    let now = Time::default();
    let cfg = Config {
        chunk: 1000,
        file_send: true,
        zerocopy: true,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    let ops = open_response(&mut c, 3000);
    let mut bufs = [vec![0; 1000], vec![0; 1000]];
    let mut out = Vec::new();
    c.ops.extend(ops);
    let rest = complete_io(&mut c, &mut bufs, &mut out);
    assert!(
        rest.iter()
            .all(|op| !matches!(op, Op::Send(SendSrc::File { .. }))),
        "{rest:?}"
    );
}

#[test]
fn a_chunk_buffer_is_free_only_between_uses() {
    let now = Time::default();
    let mut c = HttpConn::new(
        Config {
            chunk: 4096,
            ..Config::default()
        },
        now,
    );
    assert!(
        c.buf_free(BufIx(0)) && c.buf_free(BufIx(1)),
        "idle: both free"
    );
    let ops = open_response(&mut c, 4096);
    assert!(
        matches!(
            ops[..],
            [
                Op::Send(SendSrc::Head { .. }),
                Op::Read { buf: BufIx(0), .. }
            ]
        ),
        "{ops:?}"
    );
    assert!(!c.buf_free(BufIx(0)), "a read fills it");
    assert!(c.buf_free(BufIx(1)), "a one-chunk file needs one buffer");
    let head_len = c.head_bytes().len() as u32;
    c.on_send(now, Ok(head_len));
    c.on_read(now, BufIx(0), Ok(4096));
    let ops = drain_ops(&mut c);
    assert!(
        matches!(ops[..], [Op::Send(SendSrc::Buf { buf: BufIx(0), .. }), ..]),
        "{ops:?}"
    );
    assert!(!c.buf_free(BufIx(0)), "its bytes go out");
    c.on_send(now, Ok(4096));
    let _ = drain_ops(&mut c);
    assert!(c.buf_free(BufIx(0)), "sent: free again");
}

#[test]
fn zero_copy_buffers_wait_for_their_notifications() {
    let now = Time::default();
    let cfg = Config {
        chunk: 4096,
        zerocopy: true,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    assert!(matches!(
        open_response(&mut c, 3 * 4096)[..],
        [
            Op::Send(SendSrc::Head { .. }),
            Op::Read { buf: BufIx(0), .. }
        ]
    ));
    let head_len = c.head_bytes().len() as u32;
    c.on_send(now, Ok(head_len));
    c.on_read(now, BufIx(0), Ok(4096));
    let ops = drain_ops(&mut c);
    let slot0 = match ops[..] {
        [Op::SendZc {
            buf: BufIx(0),
            start: 0,
            len: 4096,
            slot,
        }, Op::Read { buf: BufIx(1), .. }] => slot,
        _ => panic!("{ops:?}"),
    };
    // Buffer 0 is out but not notified; buffer 1 fills: its send goes, but the third
    // chunk must not be read into buffer 0 yet.
    c.on_send_zc(now, slot0, Ok(4096), true);
    c.on_read(now, BufIx(1), Ok(4096));
    let ops = drain_ops(&mut c);
    let slot1 = match ops[..] {
        [Op::SendZc {
            buf: BufIx(1),
            slot,
            ..
        }] => slot,
        _ => panic!("{ops:?}"),
    };
    assert_eq!(c.zc_in_flight(), 2);
    c.on_send_notif(now, slot0);
    assert!(matches!(
        drain_ops(&mut c)[..],
        [Op::Read { buf: BufIx(0), .. }]
    ));
    // The peer goes away: the send fails (no notification promised), the read
    // completes, the file closes, and Close follows (nothing owed).
    c.on_send_zc(now, slot1, Err(RawErrno::PIPE), false);
    assert_eq!(c.zc_in_flight(), 0);
    c.on_read(now, BufIx(0), Ok(4096));
    assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
    c.on_file_closed(now);
    assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);

    // And with a notification outstanding at the failure: Close comes without it.
    let mut c = HttpConn::new(cfg, now);
    open_response(&mut c, 3 * 4096);
    c.on_send(now, Ok(head_len));
    c.on_read(now, BufIx(0), Ok(4096));
    let Some(Op::SendZc { slot, .. }) = c.poll_op() else {
        panic!("no SendZc")
    };
    drain_ops(&mut c);
    // Short: 100 bytes out, notification owed; the remainder fails.
    c.on_send_zc(now, slot, Ok(100), true);
    let Some(Op::SendZc { slot: rest, .. }) = c.poll_op() else {
        panic!("no remainder")
    };
    c.on_send_zc(now, rest, Err(RawErrno::CONNRESET), false);
    c.on_read(now, BufIx(1), Ok(4096));
    assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
    c.on_file_closed(now);
    // Close comes with the notification still owed: the driver resets the socket (so
    // that the kernel drops the queued bytes and the notification comes) and keeps the
    // buffer, which the kernel may still read, until Free.
    assert_eq!(drain_ops(&mut c), [Op::Close { reset: true }]);
    assert_eq!((c.zc_in_flight(), c.in_flight()), (1, 1));
    assert!(c.is_closed() && !c.is_freed());
    c.on_send_notif(now, slot);
    assert_eq!(c.zc_in_flight(), 0);
    assert_eq!(drain_ops(&mut c), [Op::Free]);
    assert_eq!(drain_ops(&mut c), [], "nothing after Free");
}

/// The kernel does not order a SEND_ZC's notification after its result. Notification
/// first: the send still counts in flight until its result, and a connection that closes
/// meanwhile is freed exactly when the last of the two is in, whichever it is.
#[test]
fn a_notification_before_its_result_is_counted_once() {
    let now = Time::default();
    let cfg = Config {
        chunk: 4096,
        zerocopy: true,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    open_response(&mut c, 4096);
    let head_len = c.head_bytes().len() as u32;
    c.on_send(now, Ok(head_len));
    c.on_read(now, BufIx(0), Ok(4096));
    let ops = drain_ops(&mut c);
    let [Op::SendZc { slot, .. }] = ops[..] else {
        panic!("{ops:?}")
    };
    assert_eq!(c.in_flight(), 1);
    c.on_send_notif(now, slot);
    assert_eq!(c.in_flight(), 1, "the result is still to come");
    assert_eq!(drain_ops(&mut c), []);
    c.on_send_zc(now, slot, Ok(4096), true);
    assert_eq!(c.zc_in_flight(), 0);
    // The response is done: the file closes and the next request is awaited.
    assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
    c.on_file_closed(now);
    assert!(matches!(drain_ops(&mut c)[..], [Op::Recv { .. }]));
    assert_eq!(c.in_flight(), 1, "just the receive");

    // Closing with both CQEs of a send outstanding: the notification comes first, the
    // failed result last (no Close before it: a result is a socket completion), then
    // Close and Free at once.
    let mut c = HttpConn::new(cfg, now);
    open_response(&mut c, 2 * 4096);
    c.on_send(now, Ok(head_len));
    c.on_read(now, BufIx(0), Ok(4096));
    let Some(Op::SendZc { slot, .. }) = c.poll_op() else {
        panic!("no SendZc")
    };
    drain_ops(&mut c);
    c.abort();
    assert_eq!(drain_ops(&mut c), [Op::Cancel]);
    c.on_cancel_done(now);
    c.on_read(now, BufIx(1), Ok(4096));
    c.on_send_notif(now, slot);
    assert_eq!(drain_ops(&mut c), [], "the send's result is still to come");
    assert_eq!(c.in_flight(), 1);
    c.on_send_zc(now, slot, Err(RawErrno::CANCELED), false);
    assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
    c.on_file_closed(now);
    assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
    assert_eq!(c.in_flight(), 0);
}

/// A cancel or shutdown request names the socket: the socket is closed only once its
/// completion is in (a cancel by descriptor on a closed, reused number would hit another
/// connection), and the connection freed then.
#[test]
fn close_waits_for_the_cancel_and_shutdown_completions() {
    let now = Time::default();
    let mut c = HttpConn::new(Config::default(), now);
    drain_ops(&mut c);
    c.abort();
    assert_eq!(drain_ops(&mut c), [Op::Cancel]);
    // The cancel's completion before the receive's.
    c.on_cancel_done(now);
    assert_eq!(drain_ops(&mut c), []);
    c.on_recv(now, Err(RawErrno::CANCELED));
    assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);

    // A 404 with `Connection: close`: the send side is shut down and the client's end
    // of stream awaited; it comes before the shutdown's own completion.
    let mut c = HttpConn::new(Config::default(), now);
    drain_ops(&mut c);
    c.on_recv(
        now,
        Ok(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(drain_ops(&mut c), [Op::Stat]);
    c.on_stat(now, Err(RawErrno::NOENT));
    probe(&mut c, now, Err(RawErrno::NOENT));
    let ops = drain_ops(&mut c);
    let [Op::Send(SendSrc::Head { len, .. })] = ops[..] else {
        panic!("{ops:?}")
    };
    c.on_send(now, Ok(len));
    assert!(matches!(
        drain_ops(&mut c)[..],
        [Op::Shutdown, Op::Recv { .. }]
    ));
    c.on_recv(now, Ok(&[]));
    assert_eq!(drain_ops(&mut c), [], "the shutdown is still in flight");
    assert_eq!(c.in_flight(), 1);
    c.on_shutdown_done(now);
    assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
    // Stray reports change nothing and never underflow.
    c.on_cancel_done(now);
    assert_eq!((c.in_flight(), drain_ops(&mut c)), (0, vec![]));
}

/// Aborted while the open is in flight: a file it opened is closed before the
/// connection is freed (before, its descriptor was left open).
#[test]
fn an_abort_during_the_open_closes_the_file_it_opens() {
    let now = Time::default();
    let mut c = HttpConn::new(Config::default(), now);
    drain_ops(&mut c);
    c.on_recv(now, Ok(GET_F));
    assert_eq!(drain_ops(&mut c), [Op::Stat]);
    c.on_stat(now, Ok(regular(10)));
    drain_ops(&mut c);
    c.abort();
    assert_eq!(drain_ops(&mut c), [], "the open is in flight");
    c.on_open(now, Ok(()));
    assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
    c.on_file_closed(now);
    assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
}

/// A linked open → read chain: the read is queued right behind its open; when the open
/// fails its read's ECANCELED (before or after the open's CQE) releases the buffer, the
/// 403 goes out, and the connection serves its next request.
#[test]
fn a_broken_open_read_chain_answers_and_keeps_the_connection() {
    let now = Time::default();
    let cfg = Config {
        chunk: 4096,
        link_open_read: true,
        ..Config::default()
    };
    let info = FileInfo {
        kind: FileKind::Regular,
        size: 5000,
        mtime_secs: 0,
        dio: None,
    };
    for read_first in [false, true] {
        let mut c = HttpConn::new(cfg, now);
        drain_ops(&mut c);
        c.on_recv(now, Ok(b"GET /out HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(drain_ops(&mut c), [Op::Stat]);
        c.on_stat(now, Ok(info));
        let ops = drain_ops(&mut c);
        assert!(
            matches!(
                ops[..],
                [
                    Op::Open {
                        link_next: true,
                        ..
                    },
                    Op::Read {
                        buf: BufIx(0),
                        offset: 0,
                        len: 4096,
                        ..
                    }
                ]
            ),
            "{ops:?}"
        );
        if read_first {
            c.on_read(now, BufIx(0), Err(RawErrno::CANCELED));
            assert_eq!(drain_ops(&mut c), []);
            c.on_open(now, Err(RawErrno::XDEV));
        } else {
            c.on_open(now, Err(RawErrno::XDEV));
            assert_eq!(drain_ops(&mut c), [], "the read still owns buffer 0");
            c.on_read(now, BufIx(0), Err(RawErrno::CANCELED));
        }
        let ops = drain_ops(&mut c);
        let [Op::Send(SendSrc::Head { start: 0, len })] = ops[..] else {
            panic!("{ops:?}")
        };
        assert!(c.head_bytes().starts_with(b"HTTP/1.1 403"));
        c.on_send(now, Ok(len));
        // Keep-alive: the next request, linked again, served in full.
        assert!(matches!(drain_ops(&mut c)[..], [Op::Recv { .. }]));
        c.on_recv(now, Ok(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n"));
        drain_ops(&mut c);
        c.on_stat(now, Ok(info));
        assert_eq!(drain_ops(&mut c).len(), 2);
        c.on_open(now, Ok(()));
        let ops = drain_ops(&mut c);
        assert!(
            matches!(ops[..], [Op::Send(SendSrc::Head { .. })]),
            "{ops:?}"
        );
        assert!(c.head_bytes().starts_with(b"HTTP/1.1 200"));
    }
}

pub(super) const GET_F: &[u8] = b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n";

pub(super) fn regular(size: u64) -> FileInfo {
    FileInfo {
        kind: FileKind::Regular,
        size,
        mtime_secs: 0,
        dio: None,
    }
}

/// Completes every queued read and send in full (file byte i is `i % 251`) until the
/// connection wants something else; returns the ops it stopped at and the bytes sent.
fn complete_io(c: &mut HttpConn, bufs: &mut [Vec<u8>; 2], out: &mut Vec<u8>) -> Vec<Op> {
    let now = Time::default();
    let mut rest = Vec::new();
    let mut queue = drain_ops(c);
    while !queue.is_empty() {
        for op in core::mem::take(&mut queue) {
            match op {
                Op::Read {
                    buf,
                    offset,
                    len,
                    buf_pos,
                } => {
                    let b = &mut bufs[usize::from(buf.0)];
                    for i in 0..len as usize {
                        b[buf_pos as usize + i] = ((offset as usize + i) % 251) as u8;
                    }
                    c.on_read(now, buf, Ok(len));
                }
                Op::Send(SendSrc::Head { start, len }) => {
                    out.extend_from_slice(&c.head_bytes()[start as usize..(start + len) as usize]);
                    c.on_send(now, Ok(len));
                }
                Op::Send(SendSrc::Buf { buf, start, len }) => {
                    out.extend_from_slice(
                        &bufs[usize::from(buf.0)][start as usize..(start + len) as usize],
                    );
                    c.on_send(now, Ok(len));
                }
                Op::CloseFile => c.on_file_closed(now),
                other => rest.push(other),
            }
            queue.extend(drain_ops(c));
        }
    }
    rest
}

/// An idle keep-alive connection holds no buffer: the head it received whole was parsed
/// where the driver received it, and the request's path and head go when it is answered.
/// A partial head is kept (and a pipelined one parsed from what is kept).
#[test]
fn an_idle_connection_holds_no_buffers() {
    let now = Time::default();
    let cfg = Config {
        chunk: 4096,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    assert_eq!(c.heap_bytes(), 0, "a new connection");
    let mut bufs = [vec![0u8; 4096], vec![0u8; 4096]];
    let mut out = Vec::new();
    let ops = open_response(&mut c, 100);
    assert!(c.heap_bytes() > 0, "answering: path and head");
    for op in ops {
        if let Op::Send(SendSrc::Head { len, .. }) = op {
            c.on_send(now, Ok(len));
        } else if let Op::Read { buf, len, .. } = op {
            c.on_read(now, buf, Ok(len));
        }
    }
    let rest = complete_io(&mut c, &mut bufs, &mut out);
    assert!(
        matches!(rest[..], [Op::Recv { max }] if max as usize == cfg.limits.max_head_bytes + 1),
        "{rest:?}"
    );
    // Idle after the response: the request buffers are the worker's to take back (the file
    // service does at once); then the connection holds none.
    assert!(c.take_scratch().is_some());
    assert_eq!(c.heap_bytes(), 0, "idle after the response");
    // Half a head is kept; the rest completes it, with the next request pipelined behind.
    c.on_recv(now, Ok(b"GET /f HT"));
    assert!(
        matches!(drain_ops(&mut c)[..], [Op::Recv { max }] if max as usize == cfg.limits.max_head_bytes + 1 - 9)
    );
    assert!(c.heap_bytes() > cfg.limits.max_head_bytes);
    c.on_recv(
        now,
        Ok(b"TP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    assert_eq!(drain_ops(&mut c), [Op::Stat]);
    assert_eq!(c.path(), b"f\0");
    c.on_stat(now, Err(RawErrno::NOENT));
    probe(&mut c, now, Err(RawErrno::NOENT));
    let rest = complete_io(&mut c, &mut bufs, &mut out);
    assert_eq!(rest, [Op::Stat], "the pipelined request, without a receive");
    assert_eq!(c.path(), b"g\0");
    c.on_stat(now, Err(RawErrno::NOENT));
    probe(&mut c, now, Err(RawErrno::NOENT));
    let rest = complete_io(&mut c, &mut bufs, &mut out);
    assert!(matches!(rest[..], [Op::Recv { .. }]), "{rest:?}");
    assert!(c.take_scratch().is_some());
    assert_eq!(c.heap_bytes(), 0, "idle again");
    assert_eq!(
        String::from_utf8_lossy(&out)
            .matches("HTTP/1.1 404")
            .count(),
        2
    );
}

#[test]
fn shutdown_mid_response_finishes_it_then_closes() {
    let now = Time::default();
    let cfg = Config {
        chunk: 4096,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    let first = open_response(&mut c, 100_000);
    assert!(matches!(
        first[..],
        [Op::Send(SendSrc::Head { .. }), Op::Read { .. }]
    ));
    // The server starts draining with the head and the first read in flight.
    c.on_shutdown();
    assert_eq!(drain_ops(&mut c), [], "nothing is cancelled");
    for op in first {
        c.ops.push(op);
    }
    let mut bufs = [vec![0; 4096], vec![0; 4096]];
    let mut out = Vec::new();
    let rest = complete_io(&mut c, &mut bufs, &mut out);
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &out[head_end..];
    assert_eq!(body.len(), 100_000, "the whole body went out");
    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    // Then as after `Connection: close`: FIN, and wait for the client's end of stream.
    assert!(
        matches!(rest[..], [Op::Shutdown, Op::Recv { .. }]),
        "{rest:?}"
    );
    c.on_shutdown_done(now);
    c.on_recv(now, Ok(&[]));
    assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
    assert_eq!(c.requests(), 1);
}

#[test]
fn shutdown_during_the_lookup_answers_with_connection_close() {
    let now = Time::default();
    let mut c = HttpConn::new(Config::default(), now);
    let _ = drain_ops(&mut c);
    c.on_recv(now, Ok(GET_F));
    assert_eq!(drain_ops(&mut c), [Op::Stat]);
    c.on_shutdown();
    c.on_stat(now, Ok(regular(10)));
    assert_eq!(
        drain_ops(&mut c),
        [Op::Open {
            direct: false,
            link_next: false
        }]
    );
    c.on_open(now, Ok(()));
    let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
}

#[test]
fn shutdown_closes_an_idle_keep_alive_connection_now() {
    let now = Time::default();
    let mut c = HttpConn::new(Config::default(), now);
    let _ = drain_ops(&mut c);
    c.on_recv(now, Ok(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(drain_ops(&mut c), [Op::Stat]);
    c.on_stat(now, Err(RawErrno::NOENT));
    probe(&mut c, now, Err(RawErrno::NOENT));
    let ops = drain_ops(&mut c);
    let [Op::Send(SendSrc::Head { len, .. })] = ops[..] else {
        panic!("{ops:?}")
    };
    c.on_send(now, Ok(len));
    assert!(matches!(drain_ops(&mut c)[..], [Op::Recv { .. }]));
    assert_eq!(c.requests(), 1);
    // Waiting for its next request, nothing received: it closes at once.
    c.on_shutdown();
    assert_eq!(drain_ops(&mut c), [Op::Cancel]);
    c.on_recv(now, Err(RawErrno::CANCELED));
    c.on_cancel_done(now);
    assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
}

/// A connection waiting for its first request when the drain begins (accepted just before
/// the stop, or by the accept in flight during it), or holding part of a head, gets that
/// request answered with `Connection: close`, if it comes within DRAIN_HEAD_WAIT_MS; one
/// that sends nothing is closed then.
#[test]
fn shutdown_answers_a_first_request_that_comes_soon_and_no_later() {
    let now = Time::default();
    for partial in [&b""[..], b"GET /nope HT"] {
        let mut c = HttpConn::new(Config::default(), now);
        let _ = drain_ops(&mut c);
        if !partial.is_empty() {
            c.on_recv(now, Ok(partial));
            assert!(matches!(drain_ops(&mut c)[..], [Op::Recv { .. }]));
        }
        c.on_shutdown();
        assert_eq!(drain_ops(&mut c), [], "{partial:?}: still waiting");
        assert_eq!(c.next_deadline_ms(), Some(DRAIN_HEAD_WAIT_MS));
        c.on_tick(Time {
            mono_ms: DRAIN_HEAD_WAIT_MS - 1,
            ..now
        });
        assert_eq!(drain_ops(&mut c), []);
        let rest: &[u8] = if partial.is_empty() {
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        } else {
            b"TP/1.1\r\nHost: x\r\n\r\n"
        };
        c.on_recv(now, Ok(rest));
        assert_eq!(drain_ops(&mut c), [Op::Stat]);
        c.on_stat(now, Err(RawErrno::NOENT));
        probe(&mut c, now, Err(RawErrno::NOENT));
        let ops = drain_ops(&mut c);
        let [Op::Send(SendSrc::Head { len, .. })] = ops[..] else {
            panic!("{ops:?}")
        };
        let head = String::from_utf8_lossy(c.head_bytes()).into_owned();
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert!(head.contains("Connection: close"), "{head}");
        c.on_send(now, Ok(len));
        assert!(matches!(
            drain_ops(&mut c)[..],
            [Op::Shutdown, Op::Recv { .. }]
        ));
        assert_eq!(c.requests(), 1);
    }
    // Nothing comes: closed at the deadline.
    let mut c = HttpConn::new(Config::default(), now);
    let _ = drain_ops(&mut c);
    c.on_shutdown();
    c.on_tick(Time {
        mono_ms: DRAIN_HEAD_WAIT_MS,
        ..now
    });
    assert_eq!(drain_ops(&mut c), [Op::Cancel]);
    assert_eq!(c.requests(), 0);
}

#[test]
fn abort_cancels_a_stalled_send_then_closes_the_file_and_the_connection() {
    let now = Time::default();
    let cfg = Config {
        chunk: 4096,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    let _ = open_response(&mut c, 100_000);
    c.on_shutdown();
    c.on_read(now, BufIx(0), Ok(4096));
    // The second buffer's read is issued; the head send never completes (a client that
    // does not read), and the grace runs out.
    let ops = drain_ops(&mut c);
    let [Op::Read { buf, len, .. }] = ops[..] else {
        panic!("expected the second read: {ops:?}");
    };
    c.abort();
    assert_eq!(drain_ops(&mut c), [Op::Cancel]);
    c.on_send(now, Err(RawErrno::CANCELED));
    assert_eq!(
        drain_ops(&mut c),
        [],
        "the read in flight still owns its buffer"
    );
    c.on_read(now, buf, Ok(len));
    assert_eq!(drain_ops(&mut c), [Op::CloseFile]);
    c.on_file_closed(now);
    assert_eq!(
        drain_ops(&mut c),
        [],
        "the cancel's completion is still to come"
    );
    c.on_cancel_done(now);
    assert_eq!(drain_ops(&mut c), [Op::Close { reset: false }, Op::Free]);
    assert!(c.is_freed());
}

#[test]
fn if_modified_since_gives_304() {
    let input =
        b"GET /f HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n\r\n";
    let mut s = sim(10, 64, input.to_vec(), vec![1000]);
    s.run();
    assert!(
        s.out.starts_with(b"HTTP/1.1 304"),
        "{:?}",
        String::from_utf8_lossy(&s.out)
    );
}

/// Answers the open that checks a stat's answer stays beneath the root (and the close of
/// what it opened).
fn probe(c: &mut HttpConn, now: Time, res: Result<(), RawErrno>) {
    assert_eq!(
        drain_ops(c),
        [Op::Open {
            direct: false,
            link_next: false
        }],
        "a probe"
    );
    c.on_open(now, res);
    if res.is_ok() {
        assert_eq!(drain_ops(c), [Op::CloseFile]);
        c.on_file_closed(now);
    }
}

fn head_of(out: &[u8]) -> String {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    String::from_utf8(out[..end].to_vec()).unwrap()
}

#[test]
fn a_directory_without_its_slash_is_redirected_with_the_query() {
    let input = b"GET /d?q=%41&r HTTP/1.1\r\nHost: x\r\n\r\nHEAD /d HTTP/1.1\r\nHost: x\r\n\r\nGET /d/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = sim(10, 64, input.to_vec(), vec![1000]);
    s.run();
    assert!(!s.closed, "a redirect keeps the connection");
    let got = responses(&s.out, &[false, true, false]);
    assert_eq!(
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        [301, 301, 403],
        "with the slash: the index, or 403 without one"
    );
    let head = head_of(&s.out);
    assert!(head.contains("\r\nLocation: /d/?q=%41&r\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: keep-alive\r\n"), "{head}");
}

#[test]
fn a_long_redirect_target_is_encoded_whole() {
    // Every byte of a long non-ASCII name becomes three in the Location, beyond the
    // usual head capacity.
    let name = "\u{e9}".repeat(400);
    let input = alloc::format!("GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut c = HttpConn::new(Config::default(), Time::default());
    let _ = drain_ops(&mut c);
    c.on_recv(Time::default(), Ok(input.as_bytes()));
    assert_eq!(drain_ops(&mut c), [Op::Stat]);
    let dir = FileInfo {
        kind: FileKind::Directory,
        size: 0,
        mtime_secs: 0,
        dio: None,
    };
    c.on_stat(Time::default(), Ok(dir));
    probe(&mut c, Time::default(), Ok(()));
    let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
    let want = alloc::format!("\r\nLocation: /{}/\r\n", "%C3%A9".repeat(400));
    assert!(head.starts_with("HTTP/1.1 301 "), "{head}");
    assert!(head.contains(&want), "{head}");
}

#[test]
fn etags_are_sent_and_answer_conditional_requests() {
    // The simulated file: mtime 1_000_000 (0xf4240), 10 bytes.
    let input = b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n\
        GET /f HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"f4240-a\"\r\n\r\n\
        GET /f HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"f4240-b\"\r\nIf-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n\r\n\
        GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=2-3\r\nIf-Range: \"f4240-a\"\r\n\r\n\
        GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=2-3\r\nIf-Range: W/\"f4240-a\"\r\n\r\n\
        GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=2-3\r\nIf-Range: Mon, 12 Jan 1970 13:46:40 GMT\r\n\r\n\
        GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=2-3\r\nIf-Range: Mon, 12 Jan 1970 13:46:41 GMT\r\n\r\n";
    let mut s = sim(10, 64, input.to_vec(), vec![1000]);
    s.run();
    let got = responses(&s.out, &[]);
    let statuses: Vec<u16> = got.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 304, 200, 206, 200, 206, 200]);
    assert_eq!(got[3].1, s.file[2..4]);
    assert_eq!(got[4].1, s.file);
    let text = String::from_utf8_lossy(&s.out);
    assert_eq!(
        text.matches("\r\nETag: \"f4240-a\"\r\n").count(),
        7,
        "on every 200, 206 and 304: {text}"
    );
}

/// An If-None-Match list longer than the bytes kept inline, with the current tag last, is
/// still 304 (it was cut to an empty list, which matches nothing: 200).
#[test]
fn a_long_if_none_match_list_with_the_tag_answers_304() {
    let mut list = String::new();
    for i in 0..100 {
        list.push_str(&alloc::format!("\"old-{i}\", "));
    }
    list.push_str("\"f4240-a\"");
    assert!(list.len() > 256);
    let input = alloc::format!("GET /f HTTP/1.1\r\nHost: x\r\nIf-None-Match: {list}\r\n\r\n");
    let mut s = sim(10, 64, input.into_bytes(), vec![1000]);
    s.run();
    let statuses: Vec<u16> = responses(&s.out, &[]).iter().map(|r| r.0).collect();
    assert_eq!(statuses, [304]);
}

/// Drives one request until the stats are done; `siblings` say which paths stat as
/// regular files of 10 bytes (others: ENOENT). Returns the paths statted and the head.
fn lookup(input: &[u8], siblings: &[&[u8]]) -> (Vec<Vec<u8>>, String) {
    lookup_with(input, siblings, Rules::default())
}

/// [`lookup`] with response rules.
fn lookup_with(input: &[u8], siblings: &[&[u8]], rules: Rules) -> (Vec<Vec<u8>>, String) {
    let now = Time {
        mono_ms: 0,
        mono_us: 0,
        unix_secs: 1_000_000_000,
    };
    let cfg = Config {
        precompressed: true,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now).with_rules(Arc::new(rules));
    let _ = drain_ops(&mut c);
    c.on_recv(now, Ok(input));
    let mut statted = Vec::new();
    loop {
        let ops = drain_ops(&mut c);
        match ops[..] {
            [Op::Stat] => {
                let p = c.path().to_vec();
                let found = siblings.contains(&&p[..p.len() - 1]);
                statted.push(p[..p.len() - 1].to_vec());
                c.on_stat(
                    now,
                    if found {
                        Ok(regular(10))
                    } else {
                        Err(RawErrno::NOENT)
                    },
                );
            }
            [Op::Open { .. }] => {
                let p = c.path();
                if !siblings.contains(&&p[..p.len() - 1]) {
                    // A probe of a path that names nothing.
                    c.on_open(now, Err(RawErrno::NOENT));
                    continue;
                }
                c.on_open(now, Ok(()));
                if let [Op::CloseFile] = drain_ops(&mut c)[..] {
                    c.on_file_closed(now);
                    continue;
                }
                let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
                return (statted, head);
            }
            _ => {
                let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
                return (statted, head);
            }
        }
    }
}

#[test]
fn precompressed_siblings_are_tried_best_first() {
    let req = b"GET /a.txt HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br;q=0.5, gzip\r\n\r\n";
    let (statted, head) = lookup(req, &[b"a.txt", b"a.txt.br"]);
    assert_eq!(statted, [&b"a.txt.gz"[..], b"a.txt.br"], "gzip weighs more");
    assert!(head.contains("\r\nContent-Encoding: br\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nVary: Accept-Encoding\r\n"), "{head}");
    // No sibling: the file itself, still with Vary.
    let (statted, head) = lookup(req, &[b"a.txt"]);
    assert_eq!(statted, [&b"a.txt.gz"[..], b"a.txt.br", b"a.txt"]);
    assert!(!head.contains("Content-Encoding"), "{head}");
    assert!(head.contains("\r\nVary: Accept-Encoding\r\n"), "{head}");
    // q=0 refuses, and no header means no sibling.
    let refused = b"GET /a.txt HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip;q=0, br;q=0\r\n\r\n";
    let (statted, head) = lookup(refused, &[b"a.txt", b"a.txt.gz", b"a.txt.br"]);
    assert_eq!(statted, [&b"a.txt"[..]]);
    assert!(!head.contains("Content-Encoding"), "{head}");
    let (statted, _) = lookup(
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        &[b"a.txt", b"a.txt.gz"],
    );
    assert_eq!(statted, [&b"a.txt"[..]]);
}

#[test]
fn a_directory_index_has_siblings_too() {
    let dir = FileInfo {
        kind: FileKind::Directory,
        size: 0,
        mtime_secs: 0,
        dio: None,
    };
    let now = Time::default();
    let cfg = Config {
        precompressed: true,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    let _ = drain_ops(&mut c);
    c.on_recv(
        now,
        Ok(b"GET /d/ HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"),
    );
    assert_eq!(
        (drain_ops(&mut c), c.path()),
        (vec![Op::Stat], &b"d\0"[..]),
        "the directory itself first"
    );
    c.on_stat(now, Ok(dir));
    probe(&mut c, now, Ok(()));
    assert_eq!(
        (drain_ops(&mut c), c.path()),
        (vec![Op::Stat], &b"d/index.html.gz\0"[..])
    );
    c.on_stat(now, Ok(regular(5)));
    assert!(matches!(drain_ops(&mut c)[..], [Op::Open { .. }]));
    assert_eq!(c.path(), b"d/index.html.gz\0");
    c.on_open(now, Ok(()));
    let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
    assert!(head.contains("\r\nContent-Encoding: gzip\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"),
        "{head}"
    );
}

#[test]
fn the_log_has_each_answered_request() {
    let input = b"GET /f?q HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: t/1\r\n\r\n\
        HEAD /f HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
        DELETE /f HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = sim(10, 64, input.to_vec(), vec![7]);
    s.run();
    let mut got = Vec::new();
    s.conn.drain_log(|e| {
        got.push((
            String::from_utf8(e.method.to_vec()).unwrap(),
            String::from_utf8(e.target.to_vec()).unwrap(),
            e.version_minor,
            e.status,
            e.body_bytes,
            e.referer.map(<[u8]>::to_vec),
            e.user_agent.map(<[u8]>::to_vec),
        ))
    });
    let s405 = "405 Method Not Allowed\n".len() as u64;
    assert_eq!(
        got,
        [
            (
                "GET".into(),
                "/f?q".into(),
                1,
                200,
                10,
                Some(b"http://r/".to_vec()),
                Some(b"t/1".to_vec())
            ),
            ("HEAD".into(), "/f".into(), 0, 200, 0, None, None),
            ("DELETE".into(), "/f".into(), 1, 405, s405, None, None),
        ]
    );
    let mut again = 0;
    s.conn.drain_log(|_| again += 1);
    assert_eq!(again, 0, "drained once");
}

#[test]
fn a_head_that_does_not_parse_is_logged_and_a_cut_response_is_not() {
    let mut s = sim(10, 64, b"GARBAGE\r\n\r\n".to_vec(), vec![100]);
    s.run();
    let mut got = Vec::new();
    s.conn
        .drain_log(|e| got.push((e.method.len(), e.target.len(), e.status)));
    assert_eq!(got, [(0, 0, 400)]);
    // The client goes away before the response is out: nothing is logged.
    let now = Time::default();
    let cfg = Config {
        access_log: true,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now);
    let _ = open_response(&mut c, 100_000);
    c.abort();
    let mut n = 0;
    c.drain_log(|_| n += 1);
    assert_eq!(n, 0);
}

fn rules(lines: &str) -> Rules {
    let mut r = Rules::default();
    r.add_file(lines).unwrap();
    r
}

#[test]
fn header_rules_go_on_file_responses_that_match() {
    let r = rules("header *.txt: X-Kind: text\nheader *: X-Frame-Options: DENY\nexpires /a.*=1h\n");
    let (_, head) = lookup_with(
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        &[b"a.txt"],
        r.clone(),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("\r\nX-Kind: text\r\nX-Frame-Options: DENY\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nCache-Control: max-age=3600\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nExpires: Sun, 09 Sep 2001 02:46:40 GMT\r\n"),
        "{head}"
    );
    assert!(
        head.ends_with("\r\n\r\n") && !head.ends_with("\r\n\r\n\r\n"),
        "{head}"
    );
    // A precompressed sibling matches as its file.
    let (_, head) = lookup_with(
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
        &[b"a.txt", b"a.txt.gz"],
        r.clone(),
    );
    assert!(
        head.contains("Content-Encoding: gzip") && head.contains("X-Kind: text"),
        "{head}"
    );
    let (_, head) = lookup_with(
        b"GET /b.html HTTP/1.1\r\nHost: x\r\n\r\n",
        &[b"b.html"],
        r.clone(),
    );
    assert!(
        !head.contains("X-Kind") && !head.contains("Cache-Control"),
        "{head}"
    );
    assert!(head.contains("X-Frame-Options: DENY"), "{head}");
    // Not on errors.
    let (_, head) = lookup_with(b"GET /nope.txt HTTP/1.1\r\nHost: x\r\n\r\n", &[], r);
    assert!(
        head.starts_with("HTTP/1.1 404") && !head.contains("X-Kind"),
        "{head}"
    );
}

#[test]
fn an_error_page_is_sent_with_its_status() {
    let r = rules("error-page 404=/errors/404.html\n");
    let (statted, head) = lookup_with(
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        &[b"errors/404.html"],
        r.clone(),
    );
    assert_eq!(statted, [&b"nope"[..], b"errors/404.html"]);
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Length: 10\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Type: text/html"), "{head}");
    assert!(
        !head.contains("ETag") && !head.contains("Last-Modified"),
        "{head}"
    );
    // Conditionals and ranges do not apply to it.
    let (_, head) = lookup_with(
        b"GET /nope HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nIf-None-Match: *\r\n\r\n",
        &[b"errors/404.html"],
        r.clone(),
    );
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Length: 10\r\n"), "{head}");
    // A missing page: the plain 404, after one look for the page.
    let (statted, head) = lookup_with(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", &[], r);
    assert_eq!(statted, [&b"nope"[..], b"errors/404.html"]);
    assert!(
        head.starts_with("HTTP/1.1 404") && head.contains("Content-Length: 14"),
        "{head}"
    );
}

#[test]
fn the_fallback_answers_paths_that_name_nothing_with_200() {
    let r = rules("fallback /index.html\nerror-page 404=/404.html\nexpires /index.html=0\n");
    let (statted, head) = lookup_with(
        b"GET /app/route/42 HTTP/1.1\r\nHost: x\r\n\r\n",
        &[b"index.html", b"404.html"],
        r.clone(),
    );
    assert_eq!(statted, [&b"app/route/42"[..], b"index.html"]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/html"), "{head}");
    assert!(
        head.contains("Cache-Control: max-age=0\r\n"),
        "the fallback's rules: {head}"
    );
    // A file that exists is itself.
    let (statted, _) = lookup_with(
        b"GET /a.css HTTP/1.1\r\nHost: x\r\n\r\n",
        &[b"a.css"],
        r.clone(),
    );
    assert_eq!(statted, [&b"a.css"[..]]);
    // No fallback file: the error page.
    let (statted, head) = lookup_with(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", &[b"404.html"], r);
    assert_eq!(statted, [&b"x"[..], b"index.html", b"404.html"]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

/// A stat follows symlinks out of the root; the probe's open does not. Whatever lies under
/// a symlink that leaves the root (a directory, with or without its slash, nothing, a file
/// asked for as a directory) answers 403, as a file there does; the same paths inside the
/// root answer as before.
#[test]
fn everything_under_a_symlink_out_of_the_root_answers_403() {
    let now = Time::default();
    let dir = FileInfo {
        kind: FileKind::Directory,
        size: 0,
        mtime_secs: 0,
        dio: None,
    };
    let cases: [(&[u8], Result<FileInfo, RawErrno>, u16); 4] = [
        (b"GET /out HTTP/1.1\r\nHost: x\r\n\r\n", Ok(dir), 301),
        (b"GET /out/dir/ HTTP/1.1\r\nHost: x\r\n\r\n", Ok(dir), 0),
        (
            b"GET /out/nope HTTP/1.1\r\nHost: x\r\n\r\n",
            Err(RawErrno::NOENT),
            404,
        ),
        (
            b"GET /out/x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            Ok(regular(3)),
            404,
        ),
    ];
    for (input, stat, inside) in cases {
        for escapes in [true, false] {
            let mut c = HttpConn::new(Config::default(), now);
            let _ = drain_ops(&mut c);
            c.on_recv(now, Ok(input));
            assert_eq!(drain_ops(&mut c), [Op::Stat]);
            c.on_stat(now, stat);
            let opened = match stat {
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            probe(
                &mut c,
                now,
                if escapes { Err(RawErrno::XDEV) } else { opened },
            );
            let ops = drain_ops(&mut c);
            let what = String::from_utf8_lossy(input);
            if escapes {
                let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
                assert!(head.starts_with("HTTP/1.1 403"), "{what}: {head}");
            } else if inside == 0 {
                assert_eq!(ops, [Op::Stat], "{what}: the index next");
                assert_eq!(c.path(), b"out/dir/index.html\0");
            } else {
                let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
                let want = alloc::format!("HTTP/1.1 {inside}");
                assert!(head.starts_with(&want), "{what}: {head}");
            }
        }
    }
    // The root needs no probe.
    let mut c = HttpConn::new(Config::default(), now);
    let _ = drain_ops(&mut c);
    c.on_recv(now, Ok(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    let _ = drain_ops(&mut c);
    c.on_stat(now, Ok(dir));
    assert_eq!(
        (drain_ops(&mut c), c.path()),
        (vec![Op::Stat], &b"index.html\0"[..])
    );
}

/// An open linked to its first read that fails (a symlink out of the root) answers with
/// the error page as an unlinked one does, once the cancelled read is back.
#[test]
fn a_failed_linked_open_gets_the_error_page() {
    let now = Time::default();
    let cfg = Config {
        link_open_read: true,
        ..Config::default()
    };
    let mut c = HttpConn::new(cfg, now).with_rules(Arc::new(rules("error-page 403=/403.html\n")));
    let _ = drain_ops(&mut c);
    c.on_recv(now, Ok(b"GET /link HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(drain_ops(&mut c), [Op::Stat]);
    c.on_stat(now, Ok(regular(10)));
    let ops = drain_ops(&mut c);
    let [Op::Open {
        link_next: true, ..
    }, Op::Read { buf, .. }] = ops[..]
    else {
        panic!("{ops:?}")
    };
    c.on_open(now, Err(RawErrno::XDEV));
    assert_eq!(drain_ops(&mut c), [], "the linked read is still out");
    c.on_read(now, buf, Err(RawErrno::CANCELED));
    assert_eq!(
        (drain_ops(&mut c), c.path()),
        (vec![Op::Stat], &b"403.html\0"[..])
    );
    c.on_stat(now, Ok(regular(7)));
    let ops = drain_ops(&mut c);
    assert!(
        matches!(ops[..], [Op::Open { .. }, Op::Read { .. }]),
        "{ops:?}"
    );
    let head = String::from_utf8(c.head_bytes().to_vec()).unwrap();
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Length: 7\r\n"), "{head}");
}

/// A worker's connection table holds an `HttpConn` per connection, idle ones included: at
/// 10,000 idle keep-alive connections every byte here is 10 KB of resident memory (the
/// SEND_ZC tracker, 96 bytes, is boxed: only `--zerocopy` pays for it; the last request's
/// record for the metrics, 24 bytes, is inline).
#[test]
#[cfg(target_pointer_width = "64")]
fn an_http_connection_stays_within_704_bytes() {
    let size = core::mem::size_of::<HttpConn>();
    assert!(size <= 704, "{size} bytes");
}
