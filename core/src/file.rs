//! File-read requests: which reads to issue to stream a byte range of a file, chunk by chunk.
//!
//! A [`FileRead`] walks `len` bytes starting at `start` in chunks of at most `chunk` bytes,
//! each chunk read into one caller-owned buffer of [`FileRead::buffer_len`] bytes. It
//! describes reads ([`ReadReq`]: always an explicit offset, never -1, PITFALLS.md, "A read at
//! offset -1 moves the file position"), takes
//! their results ([`FileRead::on_read`]) and says which slice of the buffer holds the wanted
//! bytes once a chunk is complete ([`Chunk`]). Short reads are resubmitted for exactly the
//! remainder, EAGAIN and EINTR retry the same read, and a read that returns 0 (or makes no
//! progress) before the wanted bytes are in means the file shrank: [`FileError::UnexpectedEof`].
//!
//! O_DIRECT: given an [`Alignment`] (from statx `dio_mem_align` and `dio_offset_align`), every
//! read's file offset, length and buffer position are multiples of the larger of the two, and
//! chunks are laid on that grid, starting at `start` rounded down. The first chunk then holds a
//! few unwanted bytes before `start`, and reads may extend past the end of the range (the
//! kernel stops at end of file); the [`Chunk`] names the wanted sub-slice.
//!
//! What it deliberately does not do: own buffers or file descriptors, or keep more than one
//! read in flight. Pipelining is the caller's: as soon as a [`Chunk`] arrives it may issue the
//! next read into a *second* buffer while the first is being sent, since the state machine only
//! requires that all reads of one chunk (the first and its resubmissions) use the same buffer.
//! Nor does it bound EAGAIN retries; the driver decides how long to keep trying.

use crate::errno::RawErrno;
use core::fmt;

/// O_DIRECT alignment requirements, as statx reports them (`STATX_DIOALIGN`, Linux 6.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Alignment {
    /// Required alignment of the buffer address, in bytes (`stx_dio_mem_align`).
    pub mem: u32,
    /// Required alignment of file offsets and lengths, in bytes (`stx_dio_offset_align`).
    pub offset: u32,
}

impl Alignment {
    /// The unit every offset, length and buffer position is a multiple of: the larger
    /// requirement, which (both being powers of two) is a multiple of the smaller.
    pub fn unit(self) -> u32 {
        self.mem.max(self.offset)
    }
}

/// One read to issue: `len` bytes at file `offset` into the chunk's buffer at `buf_pos`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ReadReq {
    /// File offset (explicit: never -1).
    pub offset: u64,
    /// Bytes to read.
    pub len: u32,
    /// Where in the chunk's buffer the read writes (nonzero after a short read).
    pub buf_pos: u32,
}

/// A completed chunk: `len` wanted bytes, the file's bytes from `file_offset`, sit in the
/// chunk's buffer at `buf_start..buf_start + len`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Chunk {
    /// File offset of the first wanted byte.
    pub file_offset: u64,
    /// Where the wanted bytes start in the buffer.
    pub buf_start: u32,
    /// How many wanted bytes there are (never 0).
    pub len: u32,
    /// True for the final chunk of the range.
    pub last: bool,
}

/// Why a file read failed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FileError {
    /// End of file came before the range did: the file shrank since it was statx'ed.
    UnexpectedEof {
        /// The first wanted offset that could not be read.
        offset: u64,
    },
    /// The read failed with this errno (anything but EAGAIN and EINTR).
    Io(RawErrno),
    /// [`FileRead::on_read`] was called with no read in flight: a driver bug.
    NoReadInFlight,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::UnexpectedEof { offset } => {
                write!(f, "file ended at offset {offset}, before the range did")
            }
            FileError::Io(e) => write!(f, "file read failed: {e}"),
            FileError::NoReadInFlight => f.write_str("read completion with no read in flight"),
        }
    }
}

/// What the driver does after a read completes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[must_use]
pub enum ReadOutcome {
    /// A chunk is complete: send its bytes; call [`FileRead::next_read`] for the next chunk
    /// (into another buffer) unless [`Chunk::last`].
    Chunk(Chunk),
    /// The chunk is not complete (short read, EAGAIN, EINTR): call [`FileRead::next_read`]
    /// and submit what it returns, into the same buffer.
    Resubmit,
    /// The read failed; the FileRead stays failed.
    Failed(FileError),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// No read in flight; `next_read` issues one.
    Ready,
    /// This read is with the kernel.
    InFlight(ReadReq),
    /// Every wanted byte has been delivered.
    Done,
    /// A read failed.
    Failed(FileError),
}

/// Bookkeeping for reading bytes `start..start + len` of a file, one read in flight at a time.
#[derive(Clone, Debug)]
pub struct FileRead {
    /// First wanted byte.
    start: u64,
    /// One past the last wanted byte.
    end: u64,
    /// Bytes per chunk (a multiple of `unit`).
    chunk: u32,
    /// 1 for buffered reads, the O_DIRECT unit otherwise.
    unit: u32,
    /// File offset that buffer position 0 of the current chunk holds.
    chunk_start: u64,
    /// Buffer bytes `0..filled` of the current chunk are read.
    filled: u32,
    /// Wanted bytes handed out in completed chunks.
    delivered: u64,
    state: State,
}

impl FileRead {
    /// Bookkeeping for `len` bytes from `start`, in chunks of `chunk` bytes, aligned for
    /// O_DIRECT when `align` is given.
    ///
    /// # Panics
    /// When `chunk` is zero, `start + len` overflows, an alignment is not a nonzero power of
    /// two, or `chunk` is not a multiple of [`Alignment::unit`]: caller bugs, never input-driven.
    pub fn new(start: u64, len: u64, chunk: u32, align: Option<Alignment>) -> Self {
        assert!(chunk > 0, "chunk must be nonzero");
        let end = start
            .checked_add(len)
            .expect("start + len overflows the file offset range");
        let unit = match align {
            None => 1,
            Some(a) => {
                assert!(
                    a.mem.is_power_of_two() && a.offset.is_power_of_two(),
                    "O_DIRECT alignments must be nonzero powers of two"
                );
                a.unit()
            }
        };
        assert!(
            chunk % unit == 0,
            "chunk must be a multiple of the O_DIRECT alignment"
        );
        Self {
            start,
            end,
            chunk,
            unit,
            chunk_start: start - start % u64::from(unit),
            filled: 0,
            delivered: 0,
            state: if len == 0 { State::Done } else { State::Ready },
        }
    }

    /// Bytes each chunk's buffer must hold.
    pub fn buffer_len(&self) -> u32 {
        self.chunk
    }

    /// True once every wanted byte has been delivered in a [`Chunk`].
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// True while a read is with the kernel.
    pub fn in_flight(&self) -> bool {
        matches!(self.state, State::InFlight(_))
    }

    /// The failure, once a read has failed.
    pub fn error(&self) -> Option<FileError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Wanted bytes delivered so far, in order from `start`.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Wanted bytes not yet delivered.
    pub fn remaining(&self) -> u64 {
        self.end - self.start - self.delivered
    }

    /// The wanted bytes not yet read, as `(file offset, length)`, for a caller that sends
    /// them straight from the file instead of reading them ([`FileRead::skip`] then counts
    /// them): `None` while a read is in flight or part of a chunk is in, when done, after a
    /// failure, and for O_DIRECT reads (whose chunks stay aligned).
    pub fn unread(&self) -> Option<(u64, u64)> {
        if self.state != State::Ready || self.filled != 0 || self.unit != 1 {
            return None;
        }
        let at = self.start.max(self.chunk_start);
        Some((at, self.end - at))
    }

    /// Counts the next `n` wanted bytes (at [`FileRead::unread`]'s offset) as delivered
    /// without a read; the next read, if any, starts after them.
    ///
    /// # Panics
    /// When [`FileRead::unread`] is `None` or `n` is more than it says: caller bugs.
    pub fn skip(&mut self, n: u64) {
        let (at, left) = self.unread().expect("skip with no unread bytes to skip");
        assert!(n <= left, "skip past the end of the wanted bytes");
        self.chunk_start = at + n;
        self.delivered += n;
        if self.chunk_start == self.end {
            self.state = State::Done;
        }
    }

    /// The current chunk's wanted bytes, as buffer positions `lo..hi`.
    fn wanted(&self) -> (u32, u32) {
        let lo = self.start.max(self.chunk_start) - self.chunk_start;
        let hi = self.end.min(self.chunk_start + u64::from(self.chunk)) - self.chunk_start;
        // Both are at most `chunk`, so they fit in u32.
        (lo as u32, hi as u32)
    }

    /// The read to issue now, if one is due: `None` while one is in flight, when done, or
    /// after a failure. Call again after [`ReadOutcome::Chunk`] (unless last) and
    /// [`ReadOutcome::Resubmit`].
    #[must_use]
    pub fn next_read(&mut self) -> Option<ReadReq> {
        if self.state != State::Ready {
            return None;
        }
        let (_, hi) = self.wanted();
        // Restart at the last aligned position at or below what is already in: for buffered
        // reads (unit 1) that is exactly the remainder; for O_DIRECT it may re-read a few
        // bytes, which land where they already are.
        let buf_pos = self.filled - self.filled % self.unit;
        let read_end = hi.div_ceil(self.unit) * self.unit;
        let req = ReadReq {
            offset: self.chunk_start + u64::from(buf_pos),
            len: read_end - buf_pos,
            buf_pos,
        };
        self.state = State::InFlight(req);
        Some(req)
    }

    /// The in-flight read completed with `res` (a CQE's `res`, split by
    /// [`RawErrno::from_res`]).
    pub fn on_read(&mut self, res: Result<u32, RawErrno>) -> ReadOutcome {
        let req = match self.state {
            State::InFlight(req) => req,
            // Not in flight: a completion the driver should not have routed here. Report it
            // without disturbing the state, so the real read's completion still lands.
            _ => return ReadOutcome::Failed(FileError::NoReadInFlight),
        };
        match res {
            // Nothing was read; the same request goes again.
            Err(RawErrno::AGAIN | RawErrno::INTR) => {
                self.state = State::Ready;
                ReadOutcome::Resubmit
            }
            Err(e) => self.fail(FileError::Io(e)),
            Ok(n) => {
                debug_assert!(n <= req.len, "kernel read more than asked");
                let now_filled = req.buf_pos + n.min(req.len);
                let (lo, hi) = self.wanted();
                if now_filled >= hi {
                    // Every wanted byte of the chunk is in (an O_DIRECT read may stop short of
                    // its aligned length at end of file; the bytes past `hi` are not wanted).
                    let chunk = Chunk {
                        file_offset: self.chunk_start + u64::from(lo),
                        buf_start: lo,
                        len: hi - lo,
                        last: self.chunk_start + u64::from(hi) == self.end,
                    };
                    self.delivered += u64::from(chunk.len);
                    self.chunk_start += u64::from(self.chunk);
                    self.filled = 0;
                    self.state = if chunk.last {
                        State::Done
                    } else {
                        State::Ready
                    };
                    ReadOutcome::Chunk(chunk)
                } else if now_filled <= self.filled {
                    // 0 bytes, or an aligned re-read that ended where we already were: end of
                    // file before the range's end.
                    let offset = (self.chunk_start + u64::from(self.filled)).max(self.start);
                    self.fail(FileError::UnexpectedEof { offset })
                } else {
                    // Short read: the next request is exactly the remainder.
                    self.filled = now_filled;
                    self.state = State::Ready;
                    ReadOutcome::Resubmit
                }
            }
        }
    }

    fn fail(&mut self, e: FileError) -> ReadOutcome {
        self.state = State::Failed(e);
        ReadOutcome::Failed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_bytes_count_as_delivered_and_reads_go_on_after_them() {
        let mut r = FileRead::new(100, 5000, 1000, None);
        assert_eq!(r.unread(), Some((100, 5000)));
        let req = r.next_read().unwrap();
        assert_eq!((req.offset, req.len), (100, 1000));
        assert_eq!(
            r.unread(),
            None,
            "nothing to skip while a read is in flight"
        );
        assert!(matches!(r.on_read(Ok(1000)), ReadOutcome::Chunk(_)));
        r.skip(2500);
        assert_eq!((r.delivered(), r.unread()), (3500, Some((3600, 1500))));
        let req = r.next_read().unwrap();
        assert_eq!((req.offset, req.len, req.buf_pos), (3600, 1000, 0));
        assert!(matches!(r.on_read(Ok(1000)), ReadOutcome::Chunk(c) if c.file_offset == 3600));
        r.skip(500);
        assert!(r.done());
        assert_eq!(r.unread(), None);
        let direct = FileRead::new(
            0,
            5000,
            1024,
            Some(Alignment {
                mem: 512,
                offset: 512,
            }),
        );
        assert_eq!(
            direct.unread(),
            None,
            "O_DIRECT chunks stay aligned: no skipping"
        );
    }
    use proptest::prelude::*;
    use std::{vec, vec::Vec};

    fn chunk(file_offset: u64, buf_start: u32, len: u32, last: bool) -> ReadOutcome {
        ReadOutcome::Chunk(Chunk {
            file_offset,
            buf_start,
            len,
            last,
        })
    }

    #[test]
    fn whole_range_in_chunks() {
        let mut r = FileRead::new(100, 250, 100, None);
        let mut got = Vec::new();
        while let Some(req) = r.next_read() {
            assert_eq!(req.buf_pos, 0);
            assert!(r.next_read().is_none(), "one read in flight");
            got.push((req.offset, req.len));
            let _ = r.on_read(Ok(req.len));
        }
        assert_eq!(got, [(100, 100), (200, 100), (300, 50)]);
        assert!(r.done());
        assert_eq!((r.delivered(), r.remaining()), (250, 0));
    }

    #[test]
    fn short_read_resubmits_exactly_the_remainder() {
        let mut r = FileRead::new(0, 100, 100, None);
        let req = r.next_read().unwrap();
        assert_eq!(r.on_read(Ok(30)), ReadOutcome::Resubmit);
        let again = r.next_read().unwrap();
        assert_eq!(
            again,
            ReadReq {
                offset: req.offset + 30,
                len: 70,
                buf_pos: 30
            }
        );
        assert_eq!(r.on_read(Ok(70)), chunk(0, 0, 100, true));
        assert!(r.done());
        assert!(r.next_read().is_none());
    }

    #[test]
    fn zero_before_the_end_is_unexpected_eof() {
        let mut r = FileRead::new(10, 100, 64, None);
        let _ = r.next_read().unwrap();
        assert_eq!(r.on_read(Ok(64)), chunk(10, 0, 64, false));
        let _ = r.next_read().unwrap();
        assert_eq!(r.on_read(Ok(6)), ReadOutcome::Resubmit);
        let _ = r.next_read().unwrap();
        let e = FileError::UnexpectedEof { offset: 80 };
        assert_eq!(r.on_read(Ok(0)), ReadOutcome::Failed(e));
        assert_eq!(r.error(), Some(e));
        assert!(r.next_read().is_none());
        assert!(!r.done());
    }

    #[test]
    fn eagain_and_eintr_retry_the_same_read() {
        let mut r = FileRead::new(0, 10, 10, None);
        let req = r.next_read().unwrap();
        for e in [RawErrno::AGAIN, RawErrno::INTR] {
            assert_eq!(r.on_read(Err(e)), ReadOutcome::Resubmit);
            assert_eq!(r.next_read(), Some(req));
        }
        assert_eq!(
            r.on_read(Err(RawErrno::IO)),
            ReadOutcome::Failed(FileError::Io(RawErrno::IO))
        );
        assert_eq!(r.error(), Some(FileError::Io(RawErrno::IO)));
    }

    #[test]
    fn completion_without_a_read_is_reported() {
        let mut r = FileRead::new(0, 10, 10, None);
        assert_eq!(
            r.on_read(Ok(10)),
            ReadOutcome::Failed(FileError::NoReadInFlight)
        );
        assert!(r.next_read().is_some(), "state untouched");
    }

    #[test]
    fn empty_range_is_done_at_once() {
        let mut r = FileRead::new(5, 0, 4096, None);
        assert!(r.done());
        assert!(r.next_read().is_none());
    }

    #[test]
    fn o_direct_reads_are_aligned() {
        let align = Alignment {
            mem: 512,
            offset: 512,
        };
        let mut r = FileRead::new(1000, 5000, 4096, Some(align));
        let req = r.next_read().unwrap();
        assert_eq!(
            req,
            ReadReq {
                offset: 512,
                len: 4096,
                buf_pos: 0
            }
        );
        // A short read of whole blocks resubmits on the grid.
        assert_eq!(r.on_read(Ok(1024)), ReadOutcome::Resubmit);
        let req = r.next_read().unwrap();
        assert_eq!(
            req,
            ReadReq {
                offset: 1536,
                len: 3072,
                buf_pos: 1024
            }
        );
        assert_eq!(r.on_read(Ok(3072)), chunk(1000, 488, 3608, false));
        // The last chunk wants 1392 bytes and reads 1536; end of file cuts it at 1400.
        let req = r.next_read().unwrap();
        assert_eq!(
            req,
            ReadReq {
                offset: 4608,
                len: 1536,
                buf_pos: 0
            }
        );
        assert_eq!(r.on_read(Ok(1400)), chunk(4608, 0, 1392, true));
        assert!(r.done());
    }

    #[test]
    fn errors_print() {
        use std::format;
        assert_eq!(
            format!("{}", FileError::Io(RawErrno::IO)),
            "file read failed: EIO"
        );
        assert!(format!("{}", FileError::UnexpectedEof { offset: 7 }).contains('7'));
    }

    /// The byte a simulated file holds at `offset`.
    fn file_byte(offset: u64) -> u8 {
        (offset % 251) as u8
    }

    /// Drives a FileRead against a simulated file of `file_len` bytes whose reads are cut
    /// short by `shorts` (cycled: 0 means "all of it", otherwise at most that many units)
    /// and interrupted by EAGAIN where `again` says. Returns the delivered chunks' file
    /// ranges and the final error, checking buffer contents and alignment on the way.
    fn drive(
        r: &mut FileRead,
        unit: u32,
        file_len: u64,
        shorts: &[u32],
        again: &[bool],
    ) -> (Vec<(u64, u64)>, Option<FileError>) {
        let mut buf = vec![0u8; r.buffer_len() as usize];
        let mut ranges = Vec::new();
        let mut step = 0usize;
        let mut retried = false;
        while let Some(req) = r.next_read() {
            step += 1;
            assert!(step < 100_000, "no progress");
            assert_eq!(req.offset % u64::from(unit), 0);
            assert_eq!(req.len % unit, 0);
            assert_eq!(req.buf_pos % unit, 0);
            assert!(req.len > 0);
            assert!(req.buf_pos + req.len <= r.buffer_len());
            // Never twice in a row, so an all-`true` pattern still makes progress.
            retried = !retried && again[step % again.len()];
            if retried {
                assert_eq!(r.on_read(Err(RawErrno::AGAIN)), ReadOutcome::Resubmit);
                assert_eq!(r.next_read(), Some(req), "EAGAIN retries the same read");
                let _ = r.on_read(Err(RawErrno::INTR));
                continue;
            }
            let short = shorts[step % shorts.len()];
            let mut n = u64::from(req.len).min(file_len.saturating_sub(req.offset));
            if short > 0 {
                n = n.min(u64::from(short * unit));
            }
            let n = n as u32;
            for i in 0..n {
                buf[(req.buf_pos + i) as usize] = file_byte(req.offset + u64::from(i));
            }
            match r.on_read(Ok(n)) {
                ReadOutcome::Chunk(c) => {
                    assert!(c.len > 0);
                    let slice = &buf[c.buf_start as usize..(c.buf_start + c.len) as usize];
                    for (i, b) in slice.iter().enumerate() {
                        assert_eq!(*b, file_byte(c.file_offset + i as u64), "wrong bytes");
                    }
                    ranges.push((c.file_offset, c.file_offset + u64::from(c.len)));
                    assert_eq!(c.last, r.done());
                }
                ReadOutcome::Resubmit => {}
                ReadOutcome::Failed(e) => return (ranges, Some(e)),
            }
        }
        (ranges, r.error())
    }

    fn assert_tiles(ranges: &[(u64, u64)], start: u64, end: u64) {
        let mut at = start;
        for (lo, hi) in ranges {
            assert_eq!(*lo, at, "gap or overlap");
            assert!(hi > lo);
            at = *hi;
        }
        assert_eq!(at, end);
    }

    proptest! {
        #[test]
        fn buffered_reads_tile_the_range(
            start in 0u64..100_000,
            len in 0u64..50_000,
            chunk in 1u32..10_000,
            extra in 0u64..1000,
            shorts in proptest::collection::vec(0u32..5000, 1..8),
            again in proptest::collection::vec(proptest::bool::weighted(0.1), 1..8),
        ) {
            let mut r = FileRead::new(start, len, chunk, None);
            let (ranges, err) = drive(&mut r, 1, start + len + extra, &shorts, &again);
            prop_assert_eq!(err, None);
            prop_assert!(r.done());
            assert_tiles(&ranges, start, start + len);
            prop_assert_eq!(r.delivered(), len);
        }

        #[test]
        fn direct_reads_tile_the_range(
            start in 0u64..100_000,
            len in 0u64..50_000,
            unit_shift in 0u32..13,
            mem_shift in 0u32..13,
            chunk_units in 1u32..8,
            extra in 0u64..10_000,
            shorts in proptest::collection::vec(0u32..4, 1..8),
            again in proptest::collection::vec(proptest::bool::weighted(0.1), 1..8),
        ) {
            let align = Alignment { mem: 1 << mem_shift, offset: 1 << unit_shift };
            let unit = align.unit();
            let mut r = FileRead::new(start, len, chunk_units * unit, Some(align));
            let (ranges, err) = drive(&mut r, unit, start + len + extra, &shorts, &again);
            prop_assert_eq!(err, None);
            prop_assert!(r.done());
            assert_tiles(&ranges, start, start + len);
        }

        /// A file shorter than the range: every delivered byte is right and in order, then
        /// UnexpectedEof names the first byte that was not there.
        #[test]
        fn shrunk_file_fails_cleanly(
            start in 0u64..10_000,
            len in 1u64..20_000,
            cut in 0u64..20_000,
            unit_shift in 0u32..10,
            chunk_units in 1u32..8,
            shorts in proptest::collection::vec(0u32..4, 1..8),
        ) {
            let file_len = start + cut.min(len - 1);
            let unit = 1 << unit_shift;
            let align = (unit > 1).then_some(Alignment { mem: unit, offset: unit });
            let mut r = FileRead::new(start, len, chunk_units * unit, align);
            let (ranges, err) = drive(&mut r, unit, file_len, &shorts, &[false]);
            let delivered_to = ranges.last().map_or(start, |(_, hi)| *hi);
            assert_tiles(&ranges, start, delivered_to);
            prop_assert!(delivered_to <= file_len);
            match err {
                Some(FileError::UnexpectedEof { offset }) => {
                    prop_assert!(offset >= delivered_to && offset <= file_len.max(start));
                }
                other => prop_assert!(false, "expected UnexpectedEof, got {:?}", other),
            }
        }
    }
}
