//! Owned memory mappings: the ring regions the kernel shares with us, page-aligned
//! anonymous memory for registered buffers and provided buffer rings, and read-only file
//! mappings that sends copy from ([`FileMap`]).

use core::ffi::c_void;
use core::ptr::NonNull;

use rustix::fd::AsFd;
use rustix::mm::{MapFlags, ProtFlags};

use crate::error::{Error, Result};

/// A mapping unmapped on drop.
#[derive(Debug)]
pub struct Mmap {
    ptr: NonNull<c_void>,
    len: usize,
}

// SAFETY: a Mmap is a plain region of memory with no thread affinity; access to its contents
// is governed by whoever holds it (the ring protocol, or leases).
unsafe impl Send for Mmap {}

impl Mmap {
    /// Maps `len` bytes of the io_uring instance `fd` at `offset` (IORING_OFF_*), shared and
    /// pre-faulted.
    pub fn ring_region(fd: impl AsFd, len: usize, offset: u64, what: &'static str) -> Result<Self> {
        // SAFETY: a fresh mapping at an address the kernel picks (null hint) aliases nothing
        // we own; the io_uring fd defines what is behind each offset.
        let ptr = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::POPULATE,
                fd,
                offset,
            )
        }
        .map_err(Error::syscall(what))?;
        Ok(Self {
            ptr: NonNull::new(ptr).ok_or(Error::InvalidConfig("mmap returned null"))?,
            len,
        })
    }

    /// Maps `len` bytes of zeroed, page-aligned anonymous memory, every page made now
    /// (MAP_POPULATE).
    pub fn anonymous(len: usize, what: &'static str) -> Result<Self> {
        Self::anonymous_with(len, what, MapFlags::POPULATE)
    }

    /// As [`Mmap::anonymous`], but a page is made when first touched (by us, or by the kernel
    /// writing into it or pinning it, as IORING_REGISTER_BUFFERS does): memory a pool may
    /// never use costs nothing resident.
    pub fn anonymous_lazy(len: usize, what: &'static str) -> Result<Self> {
        Self::anonymous_with(len, what, MapFlags::empty())
    }

    fn anonymous_with(len: usize, what: &'static str, extra: MapFlags) -> Result<Self> {
        if len == 0 {
            return Err(Error::InvalidConfig("zero-length mapping"));
        }
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | extra,
            )
        }
        .map_err(Error::syscall(what))?;
        Ok(Self {
            ptr: NonNull::new(ptr).ok_or(Error::InvalidConfig("mmap returned null"))?,
            len,
        })
    }

    /// Start of the mapping.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr().cast()
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: zero-length mappings are refused.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A pointer `offset` bytes into the mapping, cast to `T`.
    ///
    /// # Panics
    /// When `offset + size_of::<T>()` is past the end: the kernel's offsets are trusted, but
    /// not blindly.
    #[inline]
    pub fn at<T>(&self, offset: u32) -> *mut T {
        let offset = offset as usize;
        assert!(
            offset + core::mem::size_of::<T>() <= self.len,
            "ring offset {offset} outside the {} byte mapping",
            self.len
        );
        // SAFETY: in bounds of the mapping, checked above.
        unsafe { self.as_ptr().add(offset).cast() }
    }
}

/// A read-only, shared mapping of a file's first `len` bytes (PROT_READ, MAP_SHARED): the
/// page cache itself, in this process' address space, so that a send copies the file's
/// bytes into the socket straight from it, with no read into a buffer first. Sent with
/// [`crate::SafeSqe::send_mapped`], which keeps the mapping alive (an `Arc` clone in the
/// operation's memory) until the send's last completion: it is unmapped when the last
/// holder drops, never under a send.
///
/// It deliberately offers no `&[u8]` view: another process may change or truncate the file
/// under a shared mapping (a Rust reference to bytes that change is undefined behaviour, and
/// a page past a truncated end raises SIGBUS in user space). The kernel's own copy from a
/// mapping handles both (a truncated page fails the send with EFAULT or makes it short).
#[derive(Debug)]
pub struct FileMap {
    map: Mmap,
}

// SAFETY: nothing in user space reads or writes through the mapping (no view is offered);
// the kernel reads it only for sends, which take their own `Arc` reference. Sharing the
// handle between threads shares nothing else.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Maps the first `len` bytes of `file` (opened for reading), pre-faulted
    /// (MAP_POPULATE: a send then finds every page in the page tables, and the pages of a
    /// cached file cost no fault).
    pub fn new(file: impl AsFd, len: usize) -> Result<Self> {
        Self::map(file, len, MapFlags::POPULATE)
    }

    /// Maps the first `len` bytes of `file` without faulting anything in: cheap whatever the
    /// file's size, and it reads nothing from disk. A send faults the pages it copies in
    /// (the kernel maps a few around each fault); [`FileMap::resident`] says beforehand how
    /// much of a range is in the page cache, for a sender that must not wait on the disk.
    pub fn lazy(file: impl AsFd, len: usize) -> Result<Self> {
        Self::map(file, len, MapFlags::empty())
    }

    fn map(file: impl AsFd, len: usize, extra: MapFlags) -> Result<Self> {
        if len == 0 {
            return Err(Error::InvalidConfig("zero-length file mapping"));
        }
        // SAFETY: a fresh mapping at an address the kernel picks (null hint) aliases nothing
        // we own; it is read-only, and no Rust reference into it is ever made (see above).
        let ptr = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED | extra,
                file,
                0,
            )
        }
        .map_err(Error::syscall("map file"))?;
        Ok(Self {
            map: Mmap {
                ptr: NonNull::new(ptr).ok_or(Error::InvalidConfig("mmap returned null"))?,
                len,
            },
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// Never true: zero-length mappings are refused.
    pub fn is_empty(&self) -> bool {
        self.map.len == 0
    }

    /// How many bytes of `range` (clamped to the mapping), from its start, are in the page
    /// cache now (mincore(2) of the pages under them): a send of that prefix copies from
    /// memory and waits on no disk read. A page may be reclaimed just after, so this is
    /// advice, not a promise. 0 when mincore fails.
    pub fn resident(&self, range: core::ops::Range<usize>) -> usize {
        let end = range.end.min(self.map.len);
        if range.start >= end {
            return 0;
        }
        let page = rustix::param::page_size();
        let base = self.map.as_ptr() as usize;
        // mincore wants a page-aligned start; the mapping itself is page-aligned.
        let first = range.start / page * page;
        // Pages checked per call: enough for one FILE_SEND_MAX send.
        const BATCH: usize = 512;
        let mut vec = [0u8; BATCH];
        let mut at = first;
        while at < end {
            let pages = (end - at).div_ceil(page).min(BATCH);
            // SAFETY: `[base + at, base + at + pages * page)` lies in our mapping (the last
            // page may extend past `len` but not past the mapping's last page, which the
            // kernel rounds up to); `vec` has room for one byte per page; mincore only writes
            // `vec`.
            let rc = unsafe {
                libc::mincore(
                    (base + at) as *mut libc::c_void,
                    pages * page,
                    vec.as_mut_ptr(),
                )
            };
            if rc != 0 {
                break;
            }
            match vec[..pages].iter().position(|v| v & 1 == 0) {
                Some(i) => {
                    at += i * page;
                    break;
                }
                None => at += pages * page,
            }
        }
        at.min(end).saturating_sub(range.start)
    }

    /// Start of `range` in the mapping, for an SQE to read from.
    ///
    /// # Panics
    /// When `range` is not inside the mapping.
    pub(crate) fn range_ptr(&self, range: &core::ops::Range<usize>) -> *const u8 {
        assert!(
            range.start <= range.end && range.end <= self.map.len,
            "range {range:?} outside the {} byte file mapping",
            self.map.len
        );
        self.map.as_ptr().wrapping_add(range.start)
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; everything that pointed into it (ring views, buffer
        // slices) is borrowed from, or owned by, the value that owns this Mmap and is gone.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr(), self.len) };
    }
}
