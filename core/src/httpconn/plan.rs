//! What the answer is: an error, a redirect, or a file response with its head, range and
//! conditional checks, planned once the file is known.

use super::*;

impl HttpConn {
    /// Answers a request error; the connection closes after it (its framing is suspect).
    pub(super) fn refuse(&mut self, now: Time, e: HttpError, head_only: bool) {
        if self.cfg.access_log && self.log_open.is_none() {
            // The head did not parse: an entry without a request line.
            self.log_open = Some(self.log.len());
            log_begin(&mut self.log, None);
        }
        // What is kept is dropped by the caller (start_request says it used it all).
        self.close_after = true;
        let info = ReqInfo {
            head_only,
            since_us: now.mono_us,
            ..ReqInfo::default()
        };
        self.req = Some(self.boxed_req(info));
        self.error(now, e.status());
    }

    /// Sends a small error response for the current request.
    pub(super) fn error(&mut self, now: Time, status: Status) {
        let (head_only, keep_alive) = self.req.as_ref().map_or((false, false), |r| {
            (r.head_only, r.keep_alive && !self.close_after)
        });
        self.close_after |= !keep_alive;
        self.alloc_head();
        let len = match error_response(status, keep_alive, now.unix_secs, &mut self.head) {
            Ok(l) => self.small_response(status, l, head_only),
            // HEAD_CAP holds any error response; should it not, closing is the fallback.
            Err(_) => return self.close(),
        };
        self.start_head(len);
        self.phase = Phase::Respond;
        self.pump(now);
    }

    /// What of a small response written whole into the head buffer goes out (no body for
    /// HEAD), noted for the log.
    pub(super) fn small_response(
        &mut self,
        status: Status,
        l: ErrorResponseLen,
        head_only: bool,
    ) -> usize {
        let len = if head_only { l.head } else { l.total };
        self.log_status = status.code();
        self.log_body = (len - l.head) as u64;
        len
    }

    /// Makes room for the longest head this connection writes: [`HEAD_CAP`] and what its
    /// rules add.
    pub(super) fn alloc_head(&mut self) {
        let cap = HEAD_CAP + self.rules.as_ref().map_or(0, |r| r.max_header_bytes());
        if self.head.len() < cap {
            self.head.resize(cap, 0);
        }
    }

    /// A lookup answers `status` (403 or 404): with the rules' page for it, looked up as a
    /// file and sent with that status, or else the plain error response. A page that is
    /// itself missing (or not a regular file) gets the plain response of the first status.
    pub(super) fn fail(&mut self, now: Time, status: Status) {
        // The rules are shared: a clone of the Arc, not of the page's path, lets the lookup
        // borrow the connection.
        let rules = self.rules.clone();
        let page = rules.as_deref().and_then(|r| r.error_page(status));
        match (self.req.as_deref_mut(), page) {
            (Some(req), Some(page)) if req.error_page.is_none() => {
                req.error_page = Some(status);
                self.look_up_instead(page);
            }
            (Some(req), _) => {
                let status = req.error_page.unwrap_or(status);
                self.error(now, status)
            }
            (None, _) => self.error(now, status),
        }
    }

    /// Stats `rel` (relative to the root) in place of the request's path: an error page or
    /// the fallback file.
    pub(super) fn look_up_instead(&mut self, rel: &str) {
        if let Some(req) = self.req.as_deref_mut() {
            req.slash = false;
            req.coding = None;
        }
        let need = rel.len() + PATH_ROOM;
        if self.path.len() < need {
            self.path.resize(need, 0);
        }
        self.path[..rel.len()].copy_from_slice(rel.as_bytes());
        self.path_len = rel.len();
        self.path[self.path_len] = 0;
        self.stat_path(false, 0);
    }

    pub(super) fn start_head(&mut self, len: usize) {
        self.head_len = len as u32;
        self.head_sent = 0;
        // Alone, unless plan_response finds a body to send it with.
        self.head_room = 0;
        self.combined_in_flight = false;
        // Buffers awaiting zero-copy notifications stay so; the body starts in a free one.
        for b in &mut self.bufs {
            if *b != BufState::Notif {
                *b = BufState::Free;
            }
        }
        let first = u8::from(self.bufs[0] == BufState::Notif && self.bufs[1] == BufState::Free);
        self.read_ix = first;
        self.send_ix = first;
    }

    /// The file is open: decide 200 / 206 / 304 / 416 and start sending.
    pub(super) fn respond(&mut self, now: Time, info: FileInfo, direct: bool) {
        if !self.plan_response(now, info, direct) {
            return self.close();
        }
        self.phase = Phase::Respond;
        self.pump(now);
    }

    /// Decides 200 / 206 / 304 / 416 from the stat and the request: writes the head and sets
    /// up the body reader. False when the head does not fit (close).
    #[must_use]
    pub(super) fn plan_response(&mut self, now: Time, info: FileInfo, direct: bool) -> bool {
        let req = self.req.as_deref().cloned().unwrap_or(ReqInfo {
            head_only: true,
            ..ReqInfo::default()
        });
        self.close_after |= !req.keep_alive;
        self.alloc_head();
        // A sibling's type is its file's: the path without the coding's suffix.
        let name_len = self.path_len - req.coding.map_or(0, |c| c.suffix().len());
        let path_str = core::str::from_utf8(&self.path[..name_len]).unwrap_or("");
        let mut head = ResponseHead::new(Status::Ok, now.unix_secs);
        // `close_after` also covers a server drain that began while the file was looked up.
        head.keep_alive = !self.close_after;
        head.content_type = Some(content_type(path_str));
        head.last_modified = Some(info.mtime_secs);
        head.accept_ranges = true;
        head.content_encoding = req.coding.map(ContentCoding::name);
        head.vary_accept_encoding = self.cfg.precompressed;
        let etag = ETag::new(info.mtime_secs, info.size);
        head.etag = Some(etag.as_str());
        let mut body: Option<(u64, u64)> = None;
        // An error page is sent whole, with its error's status, and nothing that would let
        // a cache keep it as the answer.
        let fresh = req.error_page.is_none()
            && client_is_fresh(
                req.if_none_match.as_deref(),
                req.if_modified_since.as_deref(),
                &etag,
                info.mtime_secs,
            );
        if let Some(status) = req.error_page {
            head.status = status;
            head.last_modified = None;
            head.etag = None;
            head.accept_ranges = false;
            head.content_length = info.size;
            body = Some((0, info.size));
        } else if fresh {
            head.status = Status::NotModified;
        } else {
            // An If-Range that does not hold: the file may have changed, send all of it.
            let range = match (req.range.as_deref(), req.if_range.as_deref()) {
                (Some(r), None) => parse_range(r, info.size),
                (Some(r), Some(v)) if if_range_holds(v, &etag, info.mtime_secs) => {
                    parse_range(r, info.size)
                }
                _ => RangeResult::Full,
            };
            match range {
                RangeResult::Full => {
                    head.content_length = info.size;
                    body = Some((0, info.size));
                }
                RangeResult::Partial {
                    start,
                    end_inclusive,
                } => {
                    head.status = Status::PartialContent;
                    head.content_length = end_inclusive - start + 1;
                    head.content_range = Some(ContentRange::Bytes {
                        start,
                        end_inclusive,
                        complete_len: info.size,
                    });
                    body = Some((start, end_inclusive - start + 1));
                }
                RangeResult::Unsatisfiable => {
                    head.status = Status::RangeNotSatisfiable;
                    head.content_type = None;
                    head.etag = None;
                    head.content_encoding = None;
                    head.content_range = Some(ContentRange::Unsatisfied {
                        complete_len: info.size,
                    });
                }
            }
        }
        let mut len = match head.write(&mut self.head) {
            Ok(len) => len,
            Err(_) => return false,
        };
        let rules = self.rules.as_deref().filter(|_| {
            matches!(
                head.status,
                Status::Ok | Status::PartialContent | Status::NotModified
            )
        });
        if let Some(rules) = rules {
            // Before the blank line that ends the head; alloc_head made room for them.
            len -= 2;
            match rules.write_headers(path_str, now.unix_secs, &mut self.head[len..]) {
                Ok(n) if len + n + 2 <= self.head.len() => len += n,
                _ => return false,
            }
            self.head[len..len + 2].copy_from_slice(b"\r\n");
            len += 2;
        }
        self.log_status = head.status.code();
        self.log_body = match body {
            Some((_, len)) if !req.head_only => len,
            _ => 0,
        };
        self.start_head(len);
        self.read = match body {
            Some((start, len)) if !req.head_only && len > 0 => {
                let align = if direct { info.dio } else { None };
                Some(FileRead::new(start, len, self.cfg.chunk, align))
            }
            _ => None,
        };
        // The head waits for the first chunk and goes out with it, where the driver can.
        self.head_room = if self.cfg.head_with_body
            && !self.cfg.zerocopy
            && !direct
            && self.read.is_some()
            && self.head_len <= HEAD_ROOM
        {
            HEAD_ROOM
        } else {
            0
        };
        self.file_send = self.cfg.file_send && !self.cfg.zerocopy && !direct && self.read.is_some();
        self.file_cold = false;
        true
    }
}
