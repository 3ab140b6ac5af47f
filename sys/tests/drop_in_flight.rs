//! A Ring dropped with operations in flight: what the kernel may still write must not be
//! memory the process has given back. A file of its own, its tests one at a time: they watch
//! addresses being unmapped and mapped again, which any other test allocating in parallel
//! could take first.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use ringwork_core::buf::BufGroup;
use ringwork_core::token::UserData;
use ringwork_sys::{ProvideMode, RingParams, Sqe, Target};
use rustix::mm::{MapFlags, ProtFlags};

mod common;
use common::tcp_pair;

/// Serialises the tests of this file (see the module doc).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const GROUP: BufGroup = BufGroup(3);
const ENTRIES: u16 = 4;
const SIZE: u32 = 4096;

/// Anonymous memory mapped at exactly `addr` (MAP_FIXED_NOREPLACE: never over a live
/// mapping), unmapped on drop.
struct MappedAt {
    ptr: *mut u8,
    len: usize,
}

impl MappedAt {
    /// `None` when something else already lives there.
    fn new(addr: *mut u8, len: usize) -> Option<Self> {
        // SAFETY: FIXED_NOREPLACE fails instead of replacing an existing mapping, so this
        // aliases nothing the process uses.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                addr.cast(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED_NOREPLACE,
            )
        }
        .ok()?;
        if ptr.cast::<u8>() != addr {
            // Kernels before 4.17 treat the flag as a hint; not ours then.
            // SAFETY: the mapping just made, unused.
            let _ = unsafe { rustix::mm::munmap(ptr, len) };
            return None;
        }
        Some(Self { ptr: addr, len })
    }

    fn bytes(&self) -> Vec<u8> {
        // SAFETY: our own mapping, `len` bytes; a volatile copy, since the kernel may write
        // it behind the compiler's back (which is what the test looks for).
        (0..self.len)
            .map(|i| unsafe { self.ptr.add(i).read_volatile() })
            .collect()
    }
}

impl Drop for MappedAt {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing borrows it.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// A recv that selects a provided buffer is armed on an idle socket, and the ring is
/// dropped. The ring's fd is kept open elsewhere (a duplicate: as a forked child or io-wq
/// work past the close would keep the ring alive), so only what `Drop` did decides what
/// happens next. Then the buffers' old addresses are mapped again, fresh, and the peer writes:
/// nothing may land there. Before the fix `Drop` neither cancelled nor waited and freed the
/// buffers with the recv still armed, and the peer's bytes landed in the new mapping.
fn dropped_ring_writes_nothing_into_memory_it_freed(mode: ProvideMode) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    ring.add_provided_buffers(GROUP, ENTRIES, SIZE, mode)
        .unwrap();
    let br = ring.buf_ring(GROUP).unwrap();
    let data = br.buf_ptr(ringwork_core::buf::BufId(0)).cast_mut();
    let data_len = ENTRIES as usize * SIZE as usize;
    // Multishot where the kernel has it with this group kind; one shot is enough to show it.
    let multishot = mode != ProvideMode::Sqe;
    let recv =
        Sqe::recv_select(Target::Fd(server.as_raw_fd()), GROUP, multishot).user_data(UserData(1));
    // SAFETY: buffer selection: the kernel writes only into the group's buffers, which the
    // ring owns; whether it keeps them long enough is what this test checks.
    unsafe { ring.push(&recv).unwrap() };
    ring.submit().unwrap();
    // Let the recv find the socket empty and arm itself.
    std::thread::sleep(Duration::from_millis(20));

    let ring_alive: OwnedFd = ring.fd().as_fd().try_clone_to_owned().unwrap();
    drop(ring);

    let reused = MappedAt::new(data, data_len)
        .expect("the provided buffers were still mapped after a drop that had nothing to wait for");
    client.write_all(&[0xab; 512]).unwrap();
    // The recv, had it survived, runs as task work on this thread's next return from the
    // kernel (the write above; the sleep below at the latest).
    std::thread::sleep(Duration::from_millis(50));
    let landed = reused.bytes().iter().filter(|&&b| b != 0).count();
    drop(ring_alive);
    assert_eq!(
        landed, 0,
        "the kernel wrote {landed} bytes into memory the dropped ring had freed"
    );
}

#[test]
fn dropped_ring_writes_nothing_into_freed_provide_buffers_memory() {
    dropped_ring_writes_nothing_into_memory_it_freed(ProvideMode::Sqe);
}

#[test]
fn dropped_ring_writes_nothing_into_freed_buffer_ring_memory() {
    dropped_ring_writes_nothing_into_memory_it_freed(ProvideMode::Ring);
}

/// STATXs (always run by io-wq) in flight when the ring is dropped: once `drop` returns, the
/// kernel is done with their buffers (each completed, or was cancelled before it started), so
/// the buffers no longer change. Before the fix `drop` returned at once, and io-wq went on
/// filling buffers afterwards.
#[test]
fn dropped_ring_waits_for_statx_in_io_wq() {
    const STATX: usize = 64;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let f = common::TempFile::with_pattern("drop-statx", 4096);
    let path = std::ffi::CString::new(f.path.as_os_str().as_encoded_bytes()).unwrap();
    let mut ring = RingParams::new(128).build().unwrap();
    let mut stx: Box<[std::mem::MaybeUninit<rustix::fs::Statx>]> = (0..STATX)
        .map(|_| std::mem::MaybeUninit::zeroed())
        .collect();
    for (i, buf) in stx.iter_mut().enumerate() {
        let sqe = Sqe::statx(
            libc::AT_FDCWD,
            path.as_ptr().cast(),
            rustix::fs::AtFlags::empty(),
            rustix::fs::StatxFlags::BASIC_STATS,
            buf.as_mut_ptr(),
        )
        .user_data(UserData(i as u64));
        // SAFETY: `path` and `stx` outlive the ring, whose drop is what the test examines;
        // the reads below are volatile, as the kernel may write the buffers behind the
        // compiler's back.
        unsafe { ring.push(&sqe).unwrap() };
    }
    ring.submit().unwrap();
    let base = stx.as_ptr().cast::<u8>();
    let len = std::mem::size_of_val(&*stx);
    let snapshot = || -> Vec<u8> {
        (0..len)
            // SAFETY: in bounds of the boxed buffers, which live to the end of the test.
            .map(|i| unsafe { base.add(i).read_volatile() })
            .collect()
    };
    drop(ring);
    let at_drop = snapshot();
    std::thread::sleep(Duration::from_millis(50));
    let later = snapshot();
    let changed = at_drop.iter().zip(&later).filter(|(a, b)| a != b).count();
    assert_eq!(
        changed, 0,
        "the kernel wrote {changed} bytes of statx buffers after the ring was dropped"
    );
}

/// A ring that cannot prove itself idle (an op pushed with IOSQE_CQE_SKIP_SUCCESS may have
/// finished silently, or not) leaks its buffers instead of freeing them, and still closes
/// its fd.
#[test]
fn ring_that_cannot_prove_itself_idle_leaks_its_buffers() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut ring = RingParams::new(8)
        .teardown_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    ring.add_provided_buffers(GROUP, ENTRIES, SIZE, ProvideMode::Ring)
        .unwrap();
    let data = ring
        .buf_ring(GROUP)
        .unwrap()
        .buf_ptr(ringwork_core::buf::BufId(0))
        .cast_mut();
    let nop = Sqe::nop()
        .flags(ringwork_sys::SqeFlags::CQE_SKIP_SUCCESS)
        .user_data(UserData(1));
    // SAFETY: a NOP names no memory.
    unsafe { ring.push(&nop).unwrap() };
    ring.submit().unwrap();
    assert_eq!(ring.in_flight(), 1, "no CQE will ever say it finished");
    let fd = ring.fd().as_raw_fd();
    drop(ring);
    assert!(
        MappedAt::new(data, ENTRIES as usize * SIZE as usize).is_none(),
        "the buffers were unmapped although the ring could not prove itself idle"
    );
    assert_eq!(
        rustix::io::fcntl_getfd(
            // SAFETY: only asks whether the number is open; nothing is done with it.
            unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) }
        ),
        Err(rustix::io::Errno::BADF),
        "the ring fd is closed all the same"
    );
}
