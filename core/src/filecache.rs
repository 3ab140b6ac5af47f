//! An open-file cache: which paths have a file the driver keeps open, shared by every request
//! for the same path, bounded, least recently used first out, and revalidated after a validity
//! period.
//!
//! [`FileCache`] decides; the driver holds the files (a registered-file slot or a descriptor
//! per [`EntryIx`]) and does the I/O. A request's path goes:
//!
//! - [`FileCache::hit`]: a live entry checked less than the validity period ago answers the
//!   stat and the open at once, with no system call; the request holds a reference until
//!   [`FileCache::release`].
//! - Otherwise the driver stats the path and reports it with [`FileCache::on_stat`]:
//!   - the same file as the entry's (same device and inode): the entry is revalidated (its
//!     size and mtime refreshed; its cached body dropped if either changed) and it is a hit;
//!   - a new file: an entry is reserved and the driver opens the file into it, reporting
//!     [`FileCache::on_open`]; a full cache evicts its least recently used unreferenced entry
//!     (whose file is closed first, so this one request goes uncached);
//!   - gone, no longer a regular file, or another file than the entry's (replaced by rename,
//!     or by a symlink): the entry leaves the index at once and its file is closed once no
//!     request uses it.
//! - [`FileCache::poll_close`] names the entries whose files the driver must close now;
//!   [`FileCache::on_closed`] makes them reusable. An entry is never reused before its close
//!   completed, so a file slot never names two files to requests in flight.
//!
//! Small files also keep their bytes ([`FileCache::body`]) within a memory budget, offered by
//! the driver after a read of the whole file ([`FileCache::offer_body`]): a hit then needs no
//! read either.
//!
//! Within the validity period a cached file is served as it was opened: a rewrite in place is
//! seen at once (the same open file), but a replacement, a deletion or a new symlink is seen
//! only once the period has passed and the next request stats the path. The root is never
//! left: entries are only ever filled by opens the driver confines to the root, and a path
//! that has become a symlink out of it stats as another file, so its entry is dropped and the
//! new open fails. This is nginx's `open_file_cache` with `open_file_cache_valid`.
//!
//! A path that names nothing (ENOENT, ENOTDIR) is remembered too, for the validity period,
//! in an entry of its own with no file ([`FileCache::absent`]): a precompressed sibling that
//! does not exist (`FILE.br`, `FILE.gz`, probed for every request that accepts them) costs no
//! stat either. A file created there is seen once the period has passed, as a deletion is.
//! That is nginx's `open_file_cache_errors on`, for this one error. Other failures (EACCES,
//! ELOOP, ...) and directories are not cached.
//!
//! Memory: everything is allocated in [`FileCache::new`] but the bodies, which are allocated
//! when offered and freed with their entry, within the budget.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use crate::errno::RawErrno;
use crate::httpconn::{FileInfo, FileKind};

/// An entry of the cache: the driver's file slot or descriptor number `0..capacity`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct EntryIx(pub u32);

/// What identifies a file and its version, from the driver's stat.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct FileId {
    /// Device number (major << 32 | minor, or however the driver packs it).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Modification time in nanoseconds since the epoch (with the size, the version).
    pub mtime_ns: u64,
}

/// Settings of a [`FileCache`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CacheConfig {
    /// Most files kept open (0: no cache).
    pub entries: u32,
    /// An entry answers without a stat for this long after it was last checked.
    pub valid_ms: u64,
    /// Most bytes of file bodies kept in memory, all entries together.
    pub body_budget: usize,
    /// Largest file whose body is kept.
    pub body_max: u32,
    /// Longest path (bytes, without its NUL) that is cached.
    pub max_path: usize,
    /// An entry no request has used for this long is dropped and its file closed
    /// ([`FileCache::expire_inactive`]), so that a deleted file's space comes back; 0: never.
    /// nginx's `open_file_cache inactive=` (60 s there too).
    pub inactive_ms: u64,
}

/// What [`FileCache::on_stat`] decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StatOutcome {
    /// The entry holds this file, revalidated: serve from it (a reference is taken).
    Hit(EntryIx),
    /// Open the file into this entry, then report [`FileCache::on_open`] (a reference is
    /// taken for the request that opens it).
    Open(EntryIx),
    /// Serve this request without the cache (open and close its own file).
    Uncached,
}

/// Counters, for the driver's stats line.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CacheStats {
    /// Requests answered from a fresh entry, with no stat.
    pub hits: u64,
    /// Stats that found the entry's file unchanged.
    pub revalidated: u64,
    /// Files opened into an entry.
    pub opened: u64,
    /// Entries dropped because their file changed identity, vanished or stopped being a
    /// regular file.
    pub invalidated: u64,
    /// Unreferenced entries closed to make room.
    pub evicted: u64,
    /// Stats answered "no such file" from a remembered absence.
    pub absent_hits: u64,
    /// Stats the cache could not answer (neither a fresh entry nor a remembered absence):
    /// each goes to the kernel.
    pub misses: u64,
    /// Entries dropped for being unused for the inactive period.
    pub expired: u64,
    /// Hits whose body was in memory (set by the driver's [`FileCache::body`] use).
    pub body_bytes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// On the free list.
    Free,
    /// Reserved, the open in flight; in the index.
    Opening,
    /// In the index, its file open.
    Live,
    /// Out of the index, its file open; closed when the last reference goes.
    Dead,
    /// Its close was handed to the driver.
    Closing,
    /// In the index, with no file: the path named nothing when last checked.
    Absent,
}

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Entry {
    state: State,
    path: Vec<u8>,
    hash: u64,
    info: FileInfo,
    id: FileId,
    checked_ms: u64,
    /// When a request last used the entry (set with its place at the front of the LRU list,
    /// which is in this order).
    used_ms: u64,
    /// A stat of the path, past the validity period, is in flight: other requests are served
    /// from the entry meanwhile instead of each stat'ing it too.
    checking: bool,
    refs: u32,
    /// The LRU list of Live entries: `prev` is more recently used.
    prev: u32,
    next: u32,
    body: Option<Box<[u8]>>,
}

/// The cache; see the module docs.
#[derive(Debug)]
pub struct FileCache {
    cfg: CacheConfig,
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// Open addressing, linear probing: entry index + 1, 0 empty. Twice the entries, a power
    /// of two.
    table: Vec<u32>,
    /// Most and least recently used Live entries.
    head: u32,
    tail: u32,
    /// Entries whose file the driver must close.
    closes: Vec<u32>,
    body_bytes: usize,
    stats: CacheStats,
}

/// How far [`FileCache::on_stat`] looks from the least recently used end for an entry no
/// request holds, before giving up and serving uncached.
const EVICT_SCAN: usize = 16;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl FileCache {
    /// An empty cache.
    pub fn new(cfg: CacheConfig) -> Self {
        let n = cfg.entries as usize;
        let table_len = if n == 0 {
            0
        } else {
            (2 * n).next_power_of_two()
        };
        Self {
            cfg,
            // Reserved, and made one by one as the cache first fills ([`FileCache::take_free`]):
            // a cache sized for a site's working set costs nothing resident until used.
            entries: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
            table: vec![0; table_len],
            head: NIL,
            tail: NIL,
            closes: Vec::with_capacity(n),
            body_bytes: 0,
            stats: CacheStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            body_bytes: self.body_bytes,
            ..self.stats
        }
    }

    /// Entries in the index (opening or live).
    pub fn len(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.state, State::Opening | State::Live))
            .count()
    }

    /// True when nothing is in the index.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries whose file is open or being opened or closed (what the driver holds).
    pub fn held(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| !matches!(e.state, State::Free | State::Absent))
            .count()
    }

    /// References requests hold, all entries together.
    #[cfg(test)]
    pub(crate) fn references(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.refs)).sum()
    }

    /// `path` without its NUL, if it is one the cache takes.
    fn key<'p>(&self, path: &'p [u8]) -> Option<&'p [u8]> {
        let path = path.strip_suffix(b"\0").unwrap_or(path);
        (!self.table.is_empty() && path.len() <= self.cfg.max_path).then_some(path)
    }

    /// The table position holding `path`, or the empty one where it would go.
    fn find(&self, path: &[u8], hash: u64) -> (usize, Option<u32>) {
        let mask = self.table.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            match self.table[i] {
                0 => return (i, None),
                e => {
                    let ix = e - 1;
                    let entry = &self.entries[ix as usize];
                    if entry.hash == hash && entry.path == path {
                        return (i, Some(ix));
                    }
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Takes entry `ix` out of the table (backward-shift deletion keeps probes unbroken).
    fn unindex(&mut self, ix: u32) {
        let mask = self.table.len() - 1;
        let mut i = self.entries[ix as usize].hash as usize & mask;
        // It is in the table: probing from its home reaches it before an empty position.
        while self.table[i] != ix + 1 {
            debug_assert_ne!(self.table[i], 0, "entry {ix} is not in the index");
            if self.table[i] == 0 {
                return;
            }
            i = (i + 1) & mask;
        }
        self.table[i] = 0;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let e = self.table[j];
            if e == 0 {
                return;
            }
            let home = self.entries[(e - 1) as usize].hash as usize & mask;
            // Move `e` back into the hole unless its home lies cyclically in (i, j].
            let between = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !between {
                self.table[i] = e;
                self.table[j] = 0;
                i = j;
            }
        }
    }

    fn lru_unlink(&mut self, ix: u32) {
        let (prev, next) = {
            let e = &self.entries[ix as usize];
            (e.prev, e.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        let e = &mut self.entries[ix as usize];
        e.prev = NIL;
        e.next = NIL;
    }

    /// Makes `ix` the most recently used entry, used at `now_ms`.
    fn lru_push_front(&mut self, ix: u32, now_ms: u64) {
        let old = self.head;
        {
            let e = &mut self.entries[ix as usize];
            e.prev = NIL;
            e.next = old;
            e.used_ms = now_ms;
        }
        if old == NIL {
            self.tail = ix;
        } else {
            self.entries[old as usize].prev = ix;
        }
        self.head = ix;
    }

    fn drop_body(&mut self, ix: u32) {
        if let Some(b) = self.entries[ix as usize].body.take() {
            self.body_bytes -= b.len();
        }
    }

    /// Takes entry `ix` out of the index: its file is closed once nothing holds it.
    fn kill(&mut self, ix: u32) {
        let state = self.entries[ix as usize].state;
        debug_assert!(matches!(
            state,
            State::Live | State::Opening | State::Absent
        ));
        self.unindex(ix);
        if matches!(state, State::Live | State::Absent) {
            self.lru_unlink(ix);
        }
        if state == State::Absent {
            // No file to close: free at once.
            self.entries[ix as usize].state = State::Free;
            self.free.push(ix);
            return;
        }
        self.drop_body(ix);
        let e = &mut self.entries[ix as usize];
        e.state = State::Dead;
        if e.refs == 0 {
            e.state = State::Closing;
            self.closes.push(ix);
        }
    }

    /// A live entry for `path` checked within the validity period, or whose check after it
    /// is already in flight: a reference for the request and the file's stat. `None`: stat
    /// the path and report [`FileCache::on_stat`] (the first request past the period does;
    /// the others are served from the entry until that check is in).
    pub fn hit(&mut self, path: &[u8], now_ms: u64) -> Option<(EntryIx, FileInfo)> {
        let key = self.key(path)?;
        let (_, ix) = self.find(key, fnv1a(key));
        let ix = ix?;
        let e = &mut self.entries[ix as usize];
        if e.state != State::Live {
            return None;
        }
        let age = now_ms.saturating_sub(e.checked_ms);
        // A check never reported (it cannot be, but a driver bug must not serve a file
        // forever) stops counting after another period.
        if age >= self.cfg.valid_ms && (!e.checking || age >= self.cfg.valid_ms.saturating_mul(2)) {
            e.checking = true;
            return None;
        }
        let info = e.info;
        e.refs += 1;
        self.lru_unlink(ix);
        self.lru_push_front(ix, now_ms);
        self.stats.hits += 1;
        Some((EntryIx(ix), info))
    }

    /// True when `path` named nothing when checked within the validity period: answer its
    /// stat with ENOENT, no system call.
    pub fn absent(&mut self, path: &[u8], now_ms: u64) -> bool {
        let Some(key) = self.key(path) else {
            return false;
        };
        let (_, Some(ix)) = self.find(key, fnv1a(key)) else {
            return false;
        };
        let e = &self.entries[ix as usize];
        if e.state != State::Absent || now_ms.saturating_sub(e.checked_ms) >= self.cfg.valid_ms {
            return false;
        }
        self.lru_unlink(ix);
        self.lru_push_front(ix, now_ms);
        self.stats.absent_hits += 1;
        true
    }

    /// The stat of `path` (what the driver's statx said: the file's stat and identity, or
    /// the error).
    pub fn on_stat(
        &mut self,
        path: &[u8],
        res: Result<(FileInfo, FileId), RawErrno>,
        now_ms: u64,
    ) -> StatOutcome {
        let Some(key) = self.key(path) else {
            return StatOutcome::Uncached;
        };
        let hash = fnv1a(key);
        let (_, existing) = self.find(key, hash);
        if let Some(ix) = existing {
            self.entries[ix as usize].checking = false;
        }
        let (info, id) = match res {
            Ok((info, id)) if info.kind == FileKind::Regular => (info, id),
            // Gone, or no longer a regular file: whatever is cached for it goes; a path that
            // names nothing is remembered as such.
            other => {
                if let Some(ix) = existing {
                    match self.entries[ix as usize].state {
                        State::Live => {
                            self.stats.invalidated += 1;
                            self.kill(ix);
                        }
                        State::Absent => self.kill(ix),
                        _ => {}
                    }
                }
                if matches!(other, Err(RawErrno::NOENT | RawErrno::NOTDIR)) {
                    self.remember_absent(key, hash, now_ms);
                }
                return StatOutcome::Uncached;
            }
        };
        if let Some(ix) = existing {
            let e = &mut self.entries[ix as usize];
            match e.state {
                // Another request is opening it: this one goes its own way.
                State::Opening => return StatOutcome::Uncached,
                State::Live if e.id.dev == id.dev && e.id.ino == id.ino => {
                    // The same open file: rewritten in place, its bytes are the new ones
                    // already; its size and time are refreshed, and a kept body dropped.
                    let changed = e.info.size != info.size || e.id.mtime_ns != id.mtime_ns;
                    e.info = info;
                    e.id = id;
                    e.checked_ms = now_ms;
                    e.refs += 1;
                    if changed {
                        self.drop_body(ix);
                    }
                    self.lru_unlink(ix);
                    self.lru_push_front(ix, now_ms);
                    self.stats.revalidated += 1;
                    return StatOutcome::Hit(EntryIx(ix));
                }
                // Created where nothing was: the absence goes, the file is opened below.
                State::Absent => self.kill(ix),
                // Replaced (rename, symlink): the entry goes, the new file is opened below.
                _ => {
                    self.stats.invalidated += 1;
                    self.kill(ix);
                }
            }
        }
        let Some(ix) = self.take_free() else {
            // Full: make room for a later request by closing the least recently used entry
            // no request holds (its slot is reusable once that close completes).
            let mut cur = self.tail;
            for _ in 0..EVICT_SCAN {
                if cur == NIL {
                    break;
                }
                let e = &self.entries[cur as usize];
                if e.refs == 0 {
                    self.stats.evicted += 1;
                    self.kill(cur);
                    break;
                }
                cur = e.prev;
            }
            return StatOutcome::Uncached;
        };
        let (slot, _) = self.find(key, hash);
        let e = self.occupy(slot, ix, key, hash, State::Opening, now_ms);
        e.info = info;
        e.id = id;
        e.refs = 1;
        StatOutcome::Open(EntryIx(ix))
    }

    /// A free entry: one given back, else a new one while fewer than the configured number
    /// exist.
    fn take_free(&mut self) -> Option<u32> {
        if let Some(ix) = self.free.pop() {
            return Some(ix);
        }
        if self.entries.len() >= self.cfg.entries as usize {
            return None;
        }
        self.entries.push(Entry {
            state: State::Free,
            // Grown to its first path when first filled, and kept for the next.
            path: Vec::new(),
            hash: 0,
            info: FileInfo {
                kind: FileKind::Other,
                size: 0,
                mtime_secs: 0,
                dio: None,
            },
            id: FileId::default(),
            checked_ms: 0,
            used_ms: 0,
            checking: false,
            refs: 0,
            prev: NIL,
            next: NIL,
            body: None,
        });
        // At most `cfg.entries` (a u32) entries.
        Some((self.entries.len() - 1) as u32)
    }

    /// Puts free entry `ix` in the index for `key` (at table position `slot`), in `state`.
    fn occupy(
        &mut self,
        slot: usize,
        ix: u32,
        key: &[u8],
        hash: u64,
        state: State,
        now_ms: u64,
    ) -> &mut Entry {
        self.table[slot] = ix + 1;
        let e = &mut self.entries[ix as usize];
        e.state = state;
        e.path.clear();
        e.path.extend_from_slice(key);
        e.hash = hash;
        e.checked_ms = now_ms;
        e.checking = false;
        e.refs = 0;
        e
    }

    /// Records that `key` names nothing, in a free entry (an absence never evicts a file).
    fn remember_absent(&mut self, key: &[u8], hash: u64, now_ms: u64) {
        // Still in the index (another request's open of it is in flight): nothing to add.
        let (slot, None) = self.find(key, hash) else {
            return;
        };
        let Some(ix) = self.take_free() else {
            return;
        };
        self.occupy(slot, ix, key, hash, State::Absent, now_ms);
        self.lru_push_front(ix, now_ms);
    }

    /// The open into entry `ix` (from [`StatOutcome::Open`]) completed. On failure the entry
    /// is free again (nothing was opened into it) and the opener's reference is gone with it:
    /// do not [`release`](FileCache::release) it.
    pub fn on_open(&mut self, ix: EntryIx, ok: bool) {
        let i = ix.0;
        let e = &mut self.entries[i as usize];
        match (e.state, ok) {
            (State::Opening, true) => {
                e.state = State::Live;
                self.stats.opened += 1;
                // Used since its stat (the open takes no clock reading of its own).
                let since = e.checked_ms;
                self.lru_push_front(i, since);
            }
            (State::Opening, false) => {
                self.unindex(i);
                let e = &mut self.entries[i as usize];
                e.state = State::Free;
                e.refs = 0;
                self.free.push(i);
            }
            // Guard: only an Opening entry has an open in flight.
            (state, _) => debug_assert!(false, "on_open of a {state:?} entry"),
        }
    }

    /// A request is done with entry `ix` (from a hit or an open it reported).
    pub fn release(&mut self, ix: EntryIx) {
        let e = &mut self.entries[ix.0 as usize];
        debug_assert!(e.refs > 0, "release of an unreferenced entry");
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 && e.state == State::Dead {
            e.state = State::Closing;
            self.closes.push(ix.0);
        }
    }

    /// Drops every entry no request holds (their files to be closed, by
    /// [`FileCache::poll_close`]): for a driver out of descriptors, whose cached files then
    /// make room for connections. Returns how many.
    pub fn evict_unused(&mut self) -> usize {
        let mut n = 0;
        let mut cur = self.tail;
        while cur != NIL {
            let prev = self.entries[cur as usize].prev;
            let e = &self.entries[cur as usize];
            if e.refs == 0 && e.state == State::Live {
                self.kill(cur);
                n += 1;
            }
            cur = prev;
        }
        self.stats.evicted += n as u64;
        n
    }

    /// Drops the entries no request has used for [`CacheConfig::inactive_ms`] (their files
    /// to be closed, by [`FileCache::poll_close`]; entries a request holds stay), so that a
    /// deleted or replaced file that nobody asks for again gives its space back. Call on the
    /// driver's tick; returns how many.
    pub fn expire_inactive(&mut self, now_ms: u64) -> usize {
        let inactive = self.cfg.inactive_ms;
        if inactive == 0 {
            return 0;
        }
        let mut n = 0;
        let mut cur = self.tail;
        while cur != NIL {
            let e = &self.entries[cur as usize];
            // The list is in order of use: the rest were used more recently.
            if now_ms.saturating_sub(e.used_ms) < inactive {
                break;
            }
            let prev = e.prev;
            if e.refs == 0 {
                self.kill(cur);
                n += 1;
            }
            cur = prev;
        }
        self.stats.expired += n as u64;
        n
    }

    /// An entry whose file the driver must close now; report [`FileCache::on_closed`].
    pub fn poll_close(&mut self) -> Option<EntryIx> {
        self.closes.pop().map(EntryIx)
    }

    /// The close of entry `ix`'s file completed: the entry may hold another file.
    pub fn on_closed(&mut self, ix: EntryIx) {
        let e = &mut self.entries[ix.0 as usize];
        debug_assert_eq!(e.state, State::Closing);
        if e.state == State::Closing {
            e.state = State::Free;
            self.free.push(ix.0);
        }
    }

    /// The identity (device, inode, mtime at the last check) of the file entry `ix` holds
    /// open: `None` unless the entry holds one (open in the index, or out of it and still
    /// referenced). For a driver that reaches the file another way (a mapping, a second
    /// descriptor) and checks it is the same file.
    pub fn file_id(&self, ix: EntryIx) -> Option<FileId> {
        let e = self.entries.get(ix.0 as usize)?;
        matches!(e.state, State::Live | State::Dead).then_some(e.id)
    }

    /// The bytes of entry `ix`'s file, when kept.
    pub fn body(&self, ix: EntryIx) -> Option<&[u8]> {
        self.entries[ix.0 as usize].body.as_deref()
    }

    /// Whether [`FileCache::offer_body`] would keep entry `ix`'s bytes: a live entry of a
    /// small enough file with no body yet, within the budget.
    pub fn wants_body(&self, ix: EntryIx) -> bool {
        let e = &self.entries[ix.0 as usize];
        e.state == State::Live
            && e.body.is_none()
            && e.info.size > 0
            && e.info.size <= u64::from(self.cfg.body_max)
            && self.body_bytes + e.info.size as usize <= self.cfg.body_budget
    }

    /// The whole of entry `ix`'s file, just read from its open file: kept when
    /// [`FileCache::wants_body`] and `bytes` is as long as the file's size.
    pub fn offer_body(&mut self, ix: EntryIx, bytes: &[u8]) -> bool {
        if !self.wants_body(ix) || bytes.len() as u64 != self.entries[ix.0 as usize].info.size {
            return false;
        }
        self.body_bytes += bytes.len();
        self.entries[ix.0 as usize].body = Some(bytes.into());
        true
    }
}

/// A request's hold on the cache, from its stat to its `CloseFile`: the entry whose file it
/// uses, and whether its open is the one that fills that entry. A driver keeps one per
/// connection and goes through the methods below, which are the one order both backends
/// call the cache in: [`FileCache::stat_from_cache`] (or a stat, then
/// [`FileCache::stat_done`]), [`CacheRef::is_open`] (or an open, then
/// [`FileCache::open_done`]), reads ([`FileCache::kept_body`], [`FileCache::read_done`]),
/// [`FileCache::close_file`], and [`FileCache::forget`] when the connection is freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheRef {
    entry: Option<EntryIx>,
    /// `entry` was reserved for this request's open, which has not completed.
    opening: bool,
}

impl CacheRef {
    /// The entry whose file the request uses (open, or being opened).
    pub fn entry(&self) -> Option<EntryIx> {
        self.entry
    }

    /// The entry the request's open must put its file in.
    pub fn opening(&self) -> Option<EntryIx> {
        self.entry.filter(|_| self.opening)
    }

    /// The entry's file is open already: the request's open is answered at once.
    pub fn is_open(&self) -> bool {
        self.entry.is_some() && !self.opening
    }
}

impl FileCache {
    /// A stat the cache answers with no system call: a fresh entry (the request now holds
    /// it) or a path known to name nothing. `None`: stat the path, then
    /// [`FileCache::stat_done`].
    pub fn stat_from_cache(
        &mut self,
        r: &mut CacheRef,
        path: &[u8],
        now_ms: u64,
    ) -> Option<Result<FileInfo, RawErrno>> {
        if let Some(ix) = r.entry.take() {
            // Guard: a request's hold ends at its CloseFile, before the next stat.
            debug_assert!(false, "a stat while holding a cache entry");
            self.release(ix);
        }
        r.opening = false;
        if let Some((ix, info)) = self.hit(path, now_ms) {
            r.entry = Some(ix);
            return Some(Ok(info));
        }
        // A path that named nothing a moment ago (a precompressed sibling, mostly).
        let absent = self.absent(path, now_ms);
        self.stats.misses += u64::from(!absent);
        absent.then_some(Err(RawErrno::NOENT))
    }

    /// What the stat of `path` found: the request holds the entry of the same file (a
    /// hit), or one reserved for its open, or none (not cached).
    pub fn stat_done(
        &mut self,
        r: &mut CacheRef,
        path: &[u8],
        seen: Result<(FileInfo, FileId), RawErrno>,
        now_ms: u64,
    ) {
        if r.entry.is_some() {
            return;
        }
        match self.on_stat(path, seen, now_ms) {
            StatOutcome::Hit(ix) => r.entry = Some(ix),
            StatOutcome::Open(ix) => {
                r.entry = Some(ix);
                r.opening = true;
            }
            StatOutcome::Uncached => {}
        }
    }

    /// The request's open completed (`ok`). `Some(ix)`: the file belongs to entry `ix` (the
    /// driver keeps it there; on failure the entry is free again and the request holds
    /// none); `None`: the file is the request's own, closed at its `CloseFile`.
    pub fn open_done(&mut self, r: &mut CacheRef, ok: bool) -> Option<EntryIx> {
        let ix = r.opening()?;
        r.opening = false;
        self.on_open(ix, ok);
        if !ok {
            r.entry = None;
        }
        Some(ix)
    }

    /// The kept bytes of the request's file, where a read needs none.
    pub fn kept_body(&self, r: &CacheRef) -> Option<&[u8]> {
        self.body(r.entry.filter(|_| !r.opening)?)
    }

    /// A read of the request's file from `offset` gave `bytes`: a small file read whole
    /// from its start is kept, for the hits to come.
    pub fn read_done(&mut self, r: &CacheRef, offset: u64, bytes: &[u8]) {
        if let (Some(ix), 0) = (r.entry, offset) {
            self.offer_body(ix, bytes);
        }
    }

    /// The request closes its file: true when it was the cache's (the hold ends, and the
    /// file stays open for the next request), false when it is the request's own to close.
    pub fn close_file(&mut self, r: &mut CacheRef) -> bool {
        let Some(ix) = r.entry.take() else {
            return false;
        };
        r.opening = false;
        self.release(ix);
        true
    }

    /// The connection is freed with the hold its response did not close (it ended before
    /// its open or its close): an entry reserved for an open never made is free again, a
    /// hit is let go.
    pub fn forget(&mut self, r: &mut CacheRef) {
        match (r.entry.take(), r.opening) {
            (Some(ix), true) => self.on_open(ix, false),
            (Some(ix), false) => self.release(ix),
            (None, _) => {}
        }
        r.opening = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn info(size: u64) -> FileInfo {
        FileInfo {
            kind: FileKind::Regular,
            size,
            mtime_secs: 1,
            dio: None,
        }
    }

    fn id(ino: u64) -> FileId {
        FileId {
            dev: 1,
            ino,
            mtime_ns: 5,
        }
    }

    fn cfg(entries: u32) -> CacheConfig {
        CacheConfig {
            entries,
            valid_ms: 1000,
            body_budget: 10_000,
            body_max: 4096,
            max_path: 64,
            inactive_ms: 0,
        }
    }

    /// Stat, open and return the entry, as a driver does for a miss.
    fn open(c: &mut FileCache, path: &[u8], ino: u64, now: u64) -> EntryIx {
        match c.on_stat(path, Ok((info(10), id(ino))), now) {
            StatOutcome::Open(ix) => {
                c.on_open(ix, true);
                ix
            }
            other => panic!("expected an open, got {other:?}"),
        }
    }

    /// Entries no request used for the inactive period are dropped and their files closed;
    /// one a request holds, and one used since, stay; a remembered absence goes too.
    #[test]
    fn entries_unused_for_the_inactive_period_are_closed() {
        let mut c = FileCache::new(CacheConfig {
            inactive_ms: 60_000,
            ..cfg(4)
        });
        let old = open(&mut c, b"old", 1, 0);
        c.release(old);
        let held = open(&mut c, b"held", 2, 0);
        let _ = c.on_stat(b"gone", Err(RawErrno::NOENT), 0);
        let recent = open(&mut c, b"recent", 3, 50_000);
        c.release(recent);
        assert_eq!(c.expire_inactive(59_999), 0, "not yet");
        assert_eq!(
            c.expire_inactive(60_000),
            2,
            "old and the absence, not held"
        );
        assert_eq!(c.poll_close(), Some(old));
        assert_eq!(c.poll_close(), None, "an absence has no file to close");
        c.on_closed(old);
        assert_eq!(c.file_id(recent), Some(id(3)), "used since: kept open");
        c.release(held);
        assert_eq!(c.expire_inactive(60_001), 1, "held until released");
        assert_eq!(c.poll_close(), Some(held));
        assert_eq!(c.stats().expired, 3);
        let never = FileCache::new(cfg(4)).expire_inactive(u64::MAX);
        assert_eq!(never, 0, "inactive_ms 0: never");
    }

    /// A request's way through the cache, as both drivers take it: a miss stats and opens
    /// into an entry, its read keeps the bytes, the next request is answered with no stat,
    /// no open and no read, and each close ends the hold.
    #[test]
    fn a_cache_ref_takes_a_request_from_miss_to_hit() {
        let mut c = FileCache::new(cfg(4));
        let mut first = CacheRef::default();
        assert_eq!(c.stat_from_cache(&mut first, b"a", 0), None, "a miss stats");
        c.stat_done(&mut first, b"a", Ok((info(10), id(7))), 0);
        let ix = first.opening().expect("reserved for the open");
        assert!(!first.is_open());
        assert_eq!(
            c.open_done(&mut first, true),
            Some(ix),
            "its file goes into the entry"
        );
        assert!(first.is_open());
        assert_eq!(c.kept_body(&first), None, "not read yet");
        c.read_done(&first, 0, b"0123456789");
        assert!(c.close_file(&mut first), "the cache's file: not closed");
        assert_eq!(first, CacheRef::default());

        let mut next = CacheRef::default();
        assert_eq!(c.stat_from_cache(&mut next, b"a", 10), Some(Ok(info(10))));
        assert!(next.is_open(), "answered without an open");
        assert_eq!(c.kept_body(&next), Some(&b"0123456789"[..]));
        // Freed before its close: the hold goes, so the entry may be evicted.
        c.forget(&mut next);
        assert_eq!(c.evict_unused(), 1, "no request holds it");
    }

    #[test]
    fn a_failed_open_frees_its_entry_and_the_request_holds_none() {
        let mut c = FileCache::new(cfg(4));
        let mut r = CacheRef::default();
        c.stat_done(&mut r, b"a", Ok((info(10), id(7))), 0);
        let ix = r.opening().expect("reserved");
        assert_eq!(c.open_done(&mut r, false), Some(ix));
        assert_eq!(r.entry(), None);
        assert!(!c.close_file(&mut r), "nothing of the cache's to close");
        // An entry reserved for an open that never completed is free again on forget too.
        let mut gone = CacheRef::default();
        c.stat_done(&mut gone, b"b", Ok((info(10), id(8))), 0);
        assert!(gone.opening().is_some());
        c.forget(&mut gone);
        assert_eq!(c.held(), 0);
        assert_eq!(
            c.stat_from_cache(&mut gone, b"b", 1),
            None,
            "never opened: a miss"
        );
    }

    #[test]
    fn a_path_found_missing_is_answered_enoent_until_the_period_passes() {
        let mut c = FileCache::new(cfg(4));
        let mut r = CacheRef::default();
        c.stat_done(&mut r, b"x.gz", Err(RawErrno::NOENT), 0);
        assert_eq!(r, CacheRef::default(), "nothing to hold");
        assert_eq!(
            c.stat_from_cache(&mut r, b"x.gz", 500),
            Some(Err(RawErrno::NOENT))
        );
        assert_eq!(
            c.stat_from_cache(&mut r, b"x.gz", 1000),
            None,
            "looked at again"
        );
    }

    #[test]
    fn file_id_names_the_open_file_while_the_entry_holds_it() {
        let mut c = FileCache::new(cfg(4));
        let StatOutcome::Open(ix) = c.on_stat(b"a", Ok((info(10), id(7))), 0) else {
            panic!("a miss opens");
        };
        assert_eq!(c.file_id(ix), None, "not open yet");
        c.on_open(ix, true);
        assert_eq!(c.file_id(ix), Some(id(7)));
        // Replaced on disk: out of the index, still held by the request.
        let _ = c.on_stat(b"a", Ok((info(10), id(8))), 2000);
        assert_eq!(c.file_id(ix), Some(id(7)), "dead but referenced");
        c.release(ix);
        assert_eq!(c.poll_close(), Some(ix));
        assert_eq!(c.file_id(ix), None, "closing");
        c.on_closed(ix);
        assert_eq!(c.file_id(ix), None, "free");
        assert_eq!(c.file_id(EntryIx(99)), None, "out of range");
    }

    #[test]
    fn a_fresh_entry_answers_without_a_stat_until_the_period_passes() {
        let mut c = FileCache::new(cfg(4));
        assert_eq!(c.hit(b"a\0", 0), None);
        let ix = open(&mut c, b"a\0", 7, 0);
        c.release(ix);
        assert_eq!(c.hit(b"a\0", 999), Some((ix, info(10))));
        c.release(ix);
        assert_eq!(c.hit(b"a\0", 1000), None, "stale after valid_ms");
        // Revalidated: the same inode.
        assert_eq!(
            c.on_stat(b"a\0", Ok((info(10), id(7))), 1000),
            StatOutcome::Hit(ix)
        );
        c.release(ix);
        assert!(c.hit(b"a\0", 1999).is_some());
        assert_eq!(c.stats().revalidated, 1);
    }

    #[test]
    fn past_the_period_one_request_stats_and_the_others_are_served_meanwhile() {
        let mut c = FileCache::new(cfg(4));
        let ix = open(&mut c, b"a", 7, 0);
        c.release(ix);
        assert_eq!(c.hit(b"a", 1000), None, "the first past the period stats");
        assert_eq!(
            c.hit(b"a", 1001),
            Some((ix, info(10))),
            "the next while it is out"
        );
        c.release(ix);
        // Replaced: the check says so, and from then on the entry is gone.
        assert!(matches!(
            c.on_stat(b"a", Ok((info(10), id(8))), 1002),
            StatOutcome::Open(_)
        ));
        assert_eq!(c.hit(b"a", 1003), None);
        // A check that never reports stops holding others off after another period.
        let mut c = FileCache::new(cfg(4));
        let ix = open(&mut c, b"c", 7, 0);
        c.release(ix);
        assert_eq!(c.hit(b"c", 1000), None);
        assert!(c.hit(b"c", 1999).is_some());
        c.release(ix);
        assert_eq!(c.hit(b"c", 2000), None);
        // An unchanged file's check starts a new period.
        let mut c = FileCache::new(cfg(4));
        let ix = open(&mut c, b"b", 7, 0);
        c.release(ix);
        assert_eq!(c.hit(b"b", 1000), None);
        assert_eq!(
            c.on_stat(b"b", Ok((info(10), id(7))), 1000),
            StatOutcome::Hit(ix)
        );
        c.release(ix);
        assert!(c.hit(b"b", 1999).is_some());
        c.release(ix);
        assert_eq!(
            c.hit(b"b", 2000),
            None,
            "the next period's first stats again"
        );
    }

    #[test]
    fn a_replaced_file_closes_its_entry_when_the_last_request_lets_go() {
        let mut c = FileCache::new(cfg(4));
        let old = open(&mut c, b"a", 7, 0);
        // Still held by the request that opened it when the stat sees another inode.
        let new = match c.on_stat(b"a", Ok((info(10), id(8))), 2000) {
            StatOutcome::Open(ix) => ix,
            other => panic!("{other:?}"),
        };
        assert_ne!(old, new, "an entry in use is never reused");
        assert_eq!(c.poll_close(), None, "in use: not closed yet");
        c.release(old);
        assert_eq!(c.poll_close(), Some(old));
        c.on_closed(old);
        c.on_open(new, true);
        c.release(new);
        assert_eq!(c.hit(b"a", 2001).map(|h| h.0), Some(new));
    }

    #[test]
    fn a_vanished_file_is_dropped_and_not_served() {
        let mut c = FileCache::new(cfg(4));
        let ix = open(&mut c, b"a", 7, 0);
        c.release(ix);
        assert_eq!(
            c.on_stat(b"a", Err(RawErrno::NOENT), 1500),
            StatOutcome::Uncached
        );
        assert_eq!(c.poll_close(), Some(ix));
        assert_eq!(c.hit(b"a", 1501), None);
        assert!(c.is_empty());
        c.on_closed(ix);
        assert_eq!(c.held(), 0);
    }

    #[test]
    fn a_missing_path_is_remembered_until_the_period_passes_or_it_appears() {
        let mut c = FileCache::new(cfg(2));
        assert!(!c.absent(b"a.gz", 0));
        assert_eq!(
            c.on_stat(b"a.gz", Err(RawErrno::NOENT), 0),
            StatOutcome::Uncached
        );
        assert!(c.absent(b"a.gz", 999));
        assert!(!c.absent(b"a.gz", 1000), "checked again after the period");
        assert_eq!(c.held(), 0, "an absence holds no file");
        // Created: the absence gives way to the file.
        let ix = open(&mut c, b"a.gz", 9, 1000);
        assert!(!c.absent(b"a.gz", 1001));
        c.release(ix);
        assert!(c.hit(b"a.gz", 1001).is_some());
        c.release(ix);
        // Other errors are not remembered.
        c.on_stat(b"b", Err(RawErrno::ACCES), 1001);
        assert!(!c.absent(b"b", 1002));
        assert_eq!(c.stats().absent_hits, 1);
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_free_entry() {
        let mut c = FileCache::new(cfg(2));
        let a = open(&mut c, b"a", 1, 0);
        let b = open(&mut c, b"b", 2, 0);
        c.release(a);
        c.release(b);
        // `a` used again: `b` is now the least recently used.
        assert!(c.hit(b"a", 1).is_some());
        c.release(a);
        assert_eq!(
            c.on_stat(b"c", Ok((info(1), id(3))), 2),
            StatOutcome::Uncached
        );
        assert_eq!(c.poll_close(), Some(b));
        c.on_closed(b);
        assert!(matches!(
            c.on_stat(b"c", Ok((info(1), id(3))), 3),
            StatOutcome::Open(ix) if ix == b
        ));
        assert!(c.hit(b"a", 4).is_some(), "the recently used entry stays");
    }

    #[test]
    fn evict_unused_drops_every_entry_no_request_holds() {
        let mut c = FileCache::new(cfg(4));
        let a = open(&mut c, b"a", 1, 0);
        let b = open(&mut c, b"b", 2, 0);
        let d = open(&mut c, b"d", 3, 0);
        c.release(a);
        c.release(d);
        assert_eq!(c.evict_unused(), 2);
        let mut closed = [c.poll_close(), c.poll_close(), c.poll_close()];
        closed.sort();
        assert_eq!(closed, [None, Some(a), Some(d)]);
        assert!(c.hit(b"b", 1).is_some(), "the entry in use stays");
        assert_eq!(c.hit(b"a", 1), None);
        c.release(b);
        c.release(b);
    }

    #[test]
    fn a_failed_open_frees_its_entry() {
        let mut c = FileCache::new(cfg(1));
        let StatOutcome::Open(ix) = c.on_stat(b"a", Ok((info(1), id(3))), 0) else {
            panic!()
        };
        c.on_open(ix, false);
        assert!(c.is_empty());
        assert_eq!(c.held(), 0);
        assert!(matches!(
            c.on_stat(b"a", Ok((info(1), id(3))), 0),
            StatOutcome::Open(_)
        ));
    }

    #[test]
    fn bodies_are_kept_within_the_budget_and_dropped_on_change() {
        let mut c = FileCache::new(CacheConfig {
            body_budget: 15,
            ..cfg(4)
        });
        let a = open(&mut c, b"a", 1, 0);
        let b = open(&mut c, b"b", 2, 0);
        assert!(!c.offer_body(a, b"short"), "not the whole file");
        assert!(c.offer_body(a, b"0123456789"));
        assert!(!c.wants_body(b), "over the budget");
        assert_eq!(c.body(a), Some(&b"0123456789"[..]));
        c.release(a);
        // Rewritten in place: same inode, new mtime.
        let changed = FileId {
            mtime_ns: 6,
            ..id(1)
        };
        assert_eq!(
            c.on_stat(b"a", Ok((info(10), changed)), 2000),
            StatOutcome::Hit(a)
        );
        assert_eq!(c.body(a), None);
        assert!(c.wants_body(b), "the budget is back");
    }

    #[test]
    fn long_paths_and_a_zero_sized_cache_go_uncached() {
        let mut c = FileCache::new(cfg(0));
        assert_eq!(
            c.on_stat(b"a", Ok((info(1), id(3))), 0),
            StatOutcome::Uncached
        );
        let mut c = FileCache::new(cfg(2));
        let long = [b'x'; 65];
        assert_eq!(
            c.on_stat(&long, Ok((info(1), id(3))), 0),
            StatOutcome::Uncached
        );
        assert_eq!(c.hit(&long, 0), None);
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A request for path `p` (file identity from the model's world).
        Request(u8),
        /// The world: path `p` now names file `ino` (0: gone).
        Change(u8, u8),
        /// Time passes.
        Tick(u16),
        /// The oldest request in progress finishes.
        Finish,
        /// The oldest pending close completes.
        Closed,
        /// The oldest open in flight completes (`bool`: ok).
        Opened(bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..6).prop_map(Step::Request),
            1 => (0u8..6, 0u8..4).prop_map(|(p, i)| Step::Change(p, i)),
            1 => (0u16..1500).prop_map(Step::Tick),
            3 => Just(Step::Finish),
            2 => Just(Step::Closed),
            2 => any::<bool>().prop_map(Step::Opened),
        ]
    }

    proptest! {
        /// A driver's life with the cache against a model of the file system: a request is
        /// only ever served the file its path named within the validity period, an entry in
        /// use or not yet closed is never handed out for another file, and every file opened
        /// into an entry is closed exactly once.
        #[test]
        fn the_cache_never_serves_another_file_or_reuses_a_held_entry(
            steps in proptest::collection::vec(step(), 1..200),
            entries in 0u32..4,
        ) {
            let mut c = FileCache::new(CacheConfig { valid_ms: 1000, ..cfg(entries) });
            let mut now = 0u64;
            // The world: path → (ino, when it last changed).
            let mut world: BTreeMap<u8, (u64, u64)> = BTreeMap::new();
            // What the driver holds in each entry: the inode opened into it.
            let mut slots: BTreeMap<u32, u64> = BTreeMap::new();
            let mut opening: Vec<(EntryIx, u64)> = Vec::new();
            let mut requests: Vec<EntryIx> = Vec::new();
            let mut closing: Vec<EntryIx> = Vec::new();
            for s in steps {
                match s {
                    Step::Request(p) => {
                        let path = [b'a' + p];
                        if let Some((ix, _)) = c.hit(&path, now) {
                            let held = slots.get(&ix.0).copied();
                            // Within the period, the entry holds a file the path named
                            // at most valid_ms ago.
                            let (ino, changed) = world.get(&p).copied().unwrap_or((0, 0));
                            prop_assert!(
                                held == Some(ino) || now < changed + 1000,
                                "stale beyond the period: {held:?} vs {ino}"
                            );
                            requests.push(ix);
                            continue;
                        }
                        if c.absent(&path, now) {
                            // Remembered as missing: only within the period of a change.
                            let (ino, changed) = world.get(&p).copied().unwrap_or((0, 0));
                            prop_assert!(ino == 0 || now < changed + 1000, "absent, but {ino}");
                            continue;
                        }
                        let res = match world.get(&p) {
                            Some(&(ino, _)) if ino != 0 => Ok((info(ino), id(ino))),
                            _ => Err(RawErrno::NOENT),
                        };
                        match c.on_stat(&path, res, now) {
                            StatOutcome::Hit(ix) => {
                                prop_assert_eq!(slots.get(&ix.0).copied(), res.ok().map(|r| r.1.ino));
                                requests.push(ix);
                            }
                            StatOutcome::Open(ix) => {
                                prop_assert!(!slots.contains_key(&ix.0), "entry reused while held");
                                prop_assert!(!closing.contains(&ix));
                                slots.insert(ix.0, res.unwrap().1.ino);
                                opening.push((ix, res.unwrap().1.ino));
                            }
                            StatOutcome::Uncached => {}
                        }
                    }
                    Step::Change(p, ino) => {
                        world.insert(p, (u64::from(ino), now));
                    }
                    Step::Tick(ms) => now += u64::from(ms),
                    Step::Finish => {
                        if !requests.is_empty() {
                            c.release(requests.remove(0));
                        }
                    }
                    Step::Opened(ok) => {
                        if !opening.is_empty() {
                            let (ix, _) = opening.remove(0);
                            c.on_open(ix, ok);
                            if ok {
                                requests.push(ix);
                            } else {
                                slots.remove(&ix.0);
                            }
                        }
                    }
                    Step::Closed => {
                        while let Some(ix) = c.poll_close() {
                            prop_assert!(!closing.contains(&ix), "closed twice");
                            prop_assert!(!requests.contains(&ix), "closed while in use");
                            closing.push(ix);
                        }
                        if !closing.is_empty() {
                            let ix = closing.remove(0);
                            prop_assert!(slots.remove(&ix.0).is_some(), "closed an empty entry");
                            c.on_closed(ix);
                        }
                    }
                }
                prop_assert!(c.held() <= entries as usize);
                prop_assert_eq!(c.held(), slots.len());
            }
        }
    }
}
