//! From bytes received to a file: the request head is parsed, its path looked up (stat,
//! directory index, precompressed siblings, the slash redirect) and the file opened.

use super::*;

impl HttpConn {
    /// Bytes arrived (`Ok(&[])`: end of stream) or the receive failed.
    pub fn on_recv(&mut self, now: Time, res: Result<&[u8], RawErrno>) {
        self.completed();
        self.recv_in_flight = false;
        self.last_progress = now.mono_ms;
        match (self.phase, res) {
            (Phase::Head { .. }, Ok(bytes)) if !bytes.is_empty() => {
                // Bytes came before the worker took the request buffers back: they stay.
                self.idle_scratch = false;
                if self.rlen == 0 && self.requests > 0 {
                    // The keep-alive wait is over; the head's own clock starts now.
                    self.phase = Phase::Head { since: now.mono_ms };
                }
                // A receive never asks for more than the room left (`Op::Recv`'s max).
                let bytes = &bytes[..bytes.len().min(self.rcap() - self.rlen)];
                if self.rlen == 0 {
                    // Nothing kept: parse in place, keep only what is left over (a partial
                    // head, or the start of a pipelined request).
                    let used = self.start_request(now, bytes);
                    let rest = match used {
                        Some(n) => bytes.get(n..).unwrap_or(&[]),
                        None => bytes,
                    };
                    if !rest.is_empty() {
                        self.keep(rest);
                    }
                    if used.is_none() {
                        self.push_recv();
                    }
                } else {
                    self.keep(bytes);
                    self.want_head(now);
                }
            }
            (Phase::Drain { since, drained }, Ok(bytes)) if !bytes.is_empty() => {
                let drained = drained.saturating_add(bytes.len() as u32);
                if drained > DRAIN_LIMIT {
                    self.close();
                } else {
                    self.phase = Phase::Drain { since, drained };
                    self.push_recv();
                }
            }
            // End of stream, an error or a cancellation: nothing more will come.
            _ => self.close(),
        }
    }

    /// The path names a regular file: open it, and where the driver chains an open to its
    /// first read, plan the response now and queue that read behind the open.
    pub(super) fn open_regular(&mut self, now: Time, info: FileInfo) {
        let direct = self.cfg.direct
            && info
                .dio
                .is_some_and(|a| self.cfg.chunk % a.unit() == 0 && a.unit() <= 65536);
        if self.cfg.link_open_read && !direct {
            // Everything the response needs is known now: plan it, and let the
            // first read follow the open in one chain (no round trip between them).
            // O_DIRECT opens are not chained: their EINVAL retry would re-plan.
            if !self.plan_response(now, info, false) {
                return self.close();
            }
            self.phase = Phase::Open {
                info,
                direct,
                planned: true,
            };
            let r = usize::from(self.read_ix);
            // Only into a free buffer: one whose SEND_ZC notifications are still out
            // is read into later, by pump, once they are in.
            let next = match self.bufs[r] {
                BufState::Free => self.read.as_mut().and_then(FileRead::next_read),
                _ => None,
            };
            match next {
                Some(req) => {
                    self.push(Op::Open {
                        direct,
                        link_next: true,
                    });
                    self.push_read(req);
                }
                None => self.push(Op::Open {
                    direct,
                    link_next: false,
                }),
            }
        } else {
            self.phase = Phase::Open {
                info,
                direct,
                planned: false,
            };
            self.push(Op::Open {
                direct,
                link_next: false,
            });
        }
    }

    /// The stat of [`HttpConn::path`] completed.
    pub fn on_stat(&mut self, now: Time, res: Result<FileInfo, RawErrno>) {
        self.completed();
        self.owed.stat = false;
        self.last_progress = now.mono_ms;
        let Phase::Stat { index, sibling } = self.phase else {
            // Guard: a stat is only issued in Phase::Stat; a stray one is a driver bug.
            return self.close();
        };
        if let Some(i) = sibling {
            let coding = self
                .req
                .as_ref()
                .and_then(|r| r.codings.get(usize::from(i)));
            match (res, coding) {
                (Ok(info), Some(c)) if info.kind == FileKind::Regular => {
                    // The sibling is served: the path keeps its suffix for the open.
                    if let Some(r) = self.req.as_mut() {
                        r.coding = Some(c);
                    }
                }
                (_, coding) => {
                    // No such sibling (or not a regular file, or not to be read): the next
                    // coding's, then the file itself.
                    self.path_len -= coding.map_or(0, |c| c.suffix().len());
                    self.path[self.path_len] = 0;
                    return self.stat_path(index, usize::from(i) + 1);
                }
            }
        }
        let slash = self.req.as_ref().is_some_and(|r| r.slash);
        let instead = self
            .req
            .as_ref()
            .is_some_and(|r| r.fallback || r.error_page.is_some());
        match res {
            // An error page or the fallback must be a regular file; anything else answers
            // as the page or fallback were not configured.
            Ok(info) if instead && info.kind != FileKind::Regular => {
                self.fail(now, Status::NotFound)
            }
            Err(_) if instead => self.fail(now, Status::NotFound),
            // A file asked for as a directory (`/file.txt/`): not found, as nginx answers,
            // once the open says the path stays beneath the root.
            Ok(info) if info.kind == FileKind::Regular && slash && !index => {
                self.probe(Found::FileAsDirectory)
            }
            Ok(info) if info.kind == FileKind::Regular => self.open_regular(now, info),
            Ok(info) if info.kind == FileKind::Directory && !index => {
                if self.path_len == 1 && self.path[0] == b'.' {
                    // The root itself: nothing to resolve.
                    self.found(now, Found::Directory)
                } else {
                    self.probe(Found::Directory)
                }
            }
            // A directory without index.html, a directory named index.html, a FIFO or device.
            Ok(_) => self.fail(now, Status::Forbidden),
            Err(RawErrno::NOENT | RawErrno::NOTDIR | RawErrno::NAMETOOLONG) if index => {
                self.fail(now, Status::Forbidden)
            }
            Err(RawErrno::NAMETOOLONG) => self.found(now, Found::Nothing),
            Err(RawErrno::NOENT | RawErrno::NOTDIR) => self.probe(Found::Nothing),
            Err(_) => self.fail(now, Status::Forbidden),
        }
    }

    /// The stat found `then`, following symlinks wherever they lead (a stat cannot be kept
    /// beneath the root): before answering, an open (`RESOLVE_BENEATH`, as every open here)
    /// says whether resolving the path leaves the root. Everything under a symlink that
    /// leaves it is then answered 403, as a file there is (and as nginx's `disable_symlinks
    /// on` answers), so a client learns nothing of what exists outside. A regular file needs
    /// no probe: its own open says so.
    fn probe(&mut self, then: Found) {
        self.phase = Phase::Probe { then };
        self.push(Op::Open {
            direct: false,
            link_next: false,
        });
    }

    /// The probe's open completed.
    fn on_probe(&mut self, now: Time, then: Found, res: Result<(), RawErrno>) {
        match res {
            // Resolution left the root (EXDEV), or met a symlink loop.
            Err(RawErrno::XDEV | RawErrno::LOOP) => self.fail(now, Status::Forbidden),
            Err(_) => self.found(now, then),
            // The path opened beneath the root (a directory, or a file since created): close
            // it, then answer.
            Ok(()) => {
                self.file_open = true;
                self.file_closing = true;
                self.phase = Phase::ProbeClose { then };
                self.push(Op::CloseFile);
            }
        }
    }

    /// The probe's file is closed.
    pub(super) fn on_probe_closed(&mut self, now: Time, then: Found) {
        self.found(now, then)
    }

    /// Answers what the stat found, now known to be beneath the root.
    fn found(&mut self, now: Time, then: Found) {
        let slash = self.req.as_ref().is_some_and(|r| r.slash);
        match then {
            Found::FileAsDirectory => self.fail(now, Status::NotFound),
            Found::Directory if !slash => {
                // `/sub` is a directory: relative links in its index resolve against `/sub/`,
                // so send the client there first (as every static server does).
                self.redirect(now)
            }
            Found::Directory => {
                // A directory: its index.html, or nothing (no listings).
                let mut len = self.path_len;
                if len == 1 && self.path[0] == b'.' {
                    len = 0;
                } else {
                    self.path[len] = b'/';
                    len += 1;
                }
                self.path[len..len + 10].copy_from_slice(b"index.html");
                self.path_len = len + 10;
                self.path[self.path_len] = 0;
                self.stat_path(true, 0);
            }
            Found::Nothing => {
                let rules = self.rules.clone();
                match rules.as_deref().and_then(Rules::fallback) {
                    // A path that names nothing: the fallback file, with 200.
                    Some(fallback) => {
                        if let Some(req) = self.req.as_deref_mut() {
                            req.fallback = true;
                        }
                        self.look_up_instead(fallback);
                    }
                    None => self.fail(now, Status::NotFound),
                }
            }
        }
    }

    /// The open completed; `Err(INVAL)` on an O_DIRECT open makes it retry buffered.
    pub fn on_open(&mut self, now: Time, res: Result<(), RawErrno>) {
        self.completed();
        self.owed.open = false;
        self.last_progress = now.mono_ms;
        if let Phase::Probe { then } = self.phase {
            return self.on_probe(now, then, res);
        }
        let Phase::Open {
            info,
            direct,
            planned,
        } = self.phase
        else {
            // Aborted while the open was in flight (or a stray report): a file it opened
            // must still be closed.
            self.file_open |= res.is_ok();
            return self.close();
        };
        match res {
            Ok(()) if planned => {
                self.file_open = true;
                if self.head_len == 0 {
                    // The linked read reported a failure although its open succeeded (not
                    // something the kernel does): the plan is gone; close, file included.
                    return self.close();
                }
                // The head is ready and the first read in flight (or done): send.
                self.phase = Phase::Respond;
                self.pump(now);
            }
            Ok(()) => {
                self.file_open = true;
                self.respond(now, info, direct);
            }
            Err(RawErrno::INVAL) if direct => {
                // The file system refused O_DIRECT after all: same bytes, buffered.
                self.phase = Phase::Open {
                    info,
                    direct: false,
                    planned: false,
                };
                self.push(Op::Open {
                    direct: false,
                    link_next: false,
                });
            }
            Err(e) => {
                let status = match e {
                    RawErrno::NOENT | RawErrno::NOTDIR => Status::NotFound,
                    // EXDEV / ELOOP: resolution left the root (a symlink out of it); EACCES.
                    _ => Status::Forbidden,
                };
                if self.bufs.contains(&BufState::Reading) {
                    // The linked read's ECANCELED is still to come: it owns its buffer.
                    self.phase = Phase::OpenFailed { status };
                } else {
                    self.read = None;
                    self.fail(now, status);
                }
            }
        }
    }

    /// Parses what is kept; starts a request, answers an error, or receives more.
    pub(super) fn want_head(&mut self, now: Time) {
        let kept = core::mem::take(&mut self.rbuf);
        let used = self.start_request(now, &kept[..self.rlen]);
        self.rbuf = kept;
        match used {
            Some(n) if n < self.rlen => {
                // Pipelined bytes move to the front.
                self.rbuf.copy_within(n..self.rlen, 0);
                self.rlen -= n;
            }
            Some(_) => self.rlen = 0,
            None => {
                if self.rlen == 0 {
                    self.release_idle_buffers();
                }
                self.push_recv();
            }
        }
    }

    /// Parses a request head at the start of `src` and starts answering it. `None`: no
    /// complete head yet (nothing done). `Some(n)`: the request's first `n` bytes were its
    /// head (all of `src` after an error: the connection closes after answering it).
    pub(super) fn start_request(&mut self, now: Time, src: &[u8]) -> Option<usize> {
        let parsed = parse_request(src, &self.cfg.limits);
        let (request, head_len) = match parsed {
            // The buffer is one byte larger than the limit, so a full buffer parsed as
            // Partial is impossible (parse_request reports HeadTooLarge first).
            Ok(Parsed::Partial) => return None,
            Ok(Parsed::Complete { request, head_len }) => (request, head_len),
            Err(e) => {
                self.refuse(now, e, false);
                return Some(src.len());
            }
        };
        if self.cfg.access_log {
            if let Some(start) = self.log_open.take() {
                // Guard: an entry is closed by finish or dropped by close before the next
                // head; should one be left open, it is dropped here.
                self.log.truncate(start);
            }
            self.log_open = Some(self.log.len());
            log_begin(&mut self.log, Some(&request));
        }
        // Room for the decoded path (never longer than the target), `/index.html`, a
        // sibling's suffix and a NUL (PATH_ROOM): sized to this target, so that a
        // connection's memory follows what it asks for.
        let need = request.target.len().min(self.cfg.limits.max_target_len) + PATH_ROOM;
        if self.path.len() < need {
            self.path = vec![0; need];
        }
        let keep_alive = request.keep_alive;
        let head_only = request.method == Method::Head;
        let info = ReqInfo {
            head_only,
            keep_alive,
            slash: is_directory_request(request.target.as_bytes()),
            range: request.range.and_then(|r| ArrayVec::try_from(r).ok()),
            if_modified_since: request
                .if_modified_since
                .and_then(|r| ArrayVec::try_from(r).ok()),
            if_none_match: request.if_none_match.map(KeptBytes::new),
            if_range: request
                .if_range
                .map(|v| ArrayVec::try_from(v).unwrap_or_default()),
            codings: match request.accept_encoding {
                Some(v) if self.cfg.precompressed => preferred_codings(v),
                _ => Codings::default(),
            },
            coding: None,
            fallback: false,
            error_page: None,
            since_us: now.mono_us,
        };
        let checked = request.check_servable().and_then(|()| {
            let target = request.target.as_bytes();
            let cap = self.path.len() - PATH_ROOM;
            Ok(normalize_path(target, &mut self.path[..cap])?.len())
        });
        self.target.clear();
        self.target.extend_from_slice(request.target.as_bytes());
        // The head is consumed whatever the outcome (the caller moves the rest).
        self.req = Some(self.boxed_req(info));
        match checked {
            Ok(len) => {
                if len == 0 {
                    self.path[0] = b'.';
                    self.path_len = 1;
                } else {
                    self.path_len = len;
                }
                self.path[self.path_len] = 0;
                self.stat_path(false, 0);
            }
            Err(e) => {
                self.refuse(now, e, head_only);
                return Some(src.len());
            }
        }
        Some(head_len)
    }

    /// Stats the path, or first its precompressed sibling for the request's `coding`th
    /// coding (appending the suffix), if the client takes that many. A target with a trailing
    /// slash names a directory: no sibling until the path is its `index.html`.
    pub(super) fn stat_path(&mut self, index: bool, coding: usize) {
        let slash = self.req.as_ref().is_some_and(|r| r.slash);
        let next = self
            .req
            .as_ref()
            .and_then(|r| r.codings.get(coding))
            .filter(|_| index || !slash);
        let sibling = next.map(|c| {
            let suffix = c.suffix().as_bytes();
            // PATH_ROOM keeps room for `/index.html`, a suffix and the NUL.
            self.path[self.path_len..self.path_len + suffix.len()].copy_from_slice(suffix);
            self.path_len += suffix.len();
            self.path[self.path_len] = 0;
            coding as u8
        });
        self.phase = Phase::Stat { index, sibling };
        self.push(Op::Stat);
    }

    /// Answers a directory requested without its trailing slash with a 301 to the slashed
    /// target (the request's own bytes, made a safe header value by
    /// [`slash_redirect_location`]); the connection stays open as after any response.
    pub(super) fn redirect(&mut self, now: Time) {
        let (head_only, keep_alive) = self.req.as_ref().map_or((false, false), |r| {
            (r.head_only, r.keep_alive && !self.close_after)
        });
        self.close_after |= !keep_alive;
        self.alloc_head();
        // Rare, so the room for a long Location is made when needed.
        let mut location = vec![0; 3 * self.target.len() + 2];
        let Some(location) = slash_redirect_location(&self.target, &mut location) else {
            // The target parsed as a path before, so this cannot fail; close if it does.
            return self.close();
        };
        if self.head.len() < HEAD_CAP + location.len() {
            self.head.resize(HEAD_CAP + location.len(), 0);
        }
        let len = match redirect_response(location, keep_alive, now.unix_secs, &mut self.head) {
            Ok(l) => self.small_response(Status::MovedPermanently, l, head_only),
            Err(_) => return self.close(),
        };
        self.start_head(len);
        self.phase = Phase::Respond;
        self.pump(now);
    }
}
