//! Safe submission (`ringwork_sys::op`) against the real kernel: memory travels with its
//! operation and comes back with its last CQE, the caller's user_data is what completions
//! show, cancels find operations with memory, and memory still in flight when a ring drops
//! is leaked, never freed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use ringwork_core::buf::BufGroup;
use ringwork_core::errno::RawErrno;
use ringwork_core::token::UserData;
use ringwork_sys::{
    Error, FixedBuffers, OpMemory, OpenArgs, Ring, RingParams, SafeSqe, Sqe, StatxTarget, Target,
};
use rustix::fs::{AtFlags, OFlags, StatxFlags};
use rustix::io_uring::open_how;

mod common;
use common::{pattern, tcp_pair, TempFile};

/// Counts frees of allocations of one telltale size, so a test can see whether a buffer it
/// handed to the ring was freed.
struct CountingAlloc;

const TELLTALE: usize = 12_345;
static TELLTALE_FREES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() == TELLTALE {
            TELLTALE_FREES.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn ring() -> Ring {
    RingParams::new(8).build().unwrap()
}

fn wait_one(ring: &mut Ring) -> ringwork_sys::Cqe {
    loop {
        if let Some(c) = ring.completions().next() {
            return c;
        }
        ring.submit_and_wait(1).unwrap();
    }
}

#[test]
fn recv_into_owned_memory_comes_back_with_its_cqe() {
    let (mut client, server) = tcp_pair();
    let mut ring = ring();
    let sqe = SafeSqe::recv(Target::Fd(server.as_raw_fd()), vec![0; 64], 64).user_data(UserData(7));
    ring.push_safe(sqe).unwrap();
    ring.submit().unwrap();
    assert_eq!(ring.owned_in_flight(), 1);
    assert!(ring.take_bytes(UserData(7)).is_none(), "not before its CQE");
    client.write_all(b"hello, ring").unwrap();
    let c = wait_one(&mut ring);
    assert_eq!(
        c.user_data(),
        UserData(7),
        "the caller's user_data, not the ring's"
    );
    assert_eq!(c.result(), Ok(11));
    let buf = ring.take_bytes(UserData(7)).expect("the buffer comes back");
    assert_eq!(&buf[..11], b"hello, ring");
    assert_eq!(buf.len(), 64);
    assert!(ring.take_bytes(UserData(7)).is_none(), "once");
    assert_eq!(ring.owned_in_flight(), 0);
}

#[test]
fn cancel_by_user_data_finds_an_operation_with_memory() {
    let (_client, server) = tcp_pair();
    let mut ring = ring();
    let fd = Target::Fd(server.as_raw_fd());
    ring.push_safe(SafeSqe::recv(fd, vec![0; 16], 16).user_data(UserData(5)))
        .unwrap();
    ring.submit().unwrap();
    // Another operation with the same user_data and no memory: its CQE must not release the
    // recv's buffer.
    ring.push_safe(SafeSqe::nop().user_data(UserData(5)))
        .unwrap();
    let c = wait_one(&mut ring);
    assert_eq!((c.user_data(), c.result()), (UserData(5), Ok(0)), "the nop");
    assert_eq!(
        ring.owned_in_flight(),
        1,
        "the recv's memory is still in flight"
    );
    assert!(ring.take_bytes(UserData(5)).is_none());

    ring.push_safe(SafeSqe::cancel(UserData(5)).user_data(UserData(6)))
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let c = wait_one(&mut ring);
        seen.push((c.user_data(), c.result()));
    }
    seen.sort_by_key(|(ud, _)| ud.0);
    assert_eq!(
        seen,
        vec![
            (UserData(5), Err(RawErrno::CANCELED)),
            // Found: without translating the target, the kernel would answer ENOENT.
            (UserData(6), Ok(0)),
        ]
    );
    assert!(ring.take_bytes(UserData(5)).is_some());
}

#[test]
fn two_operations_with_memory_may_not_share_a_user_data() {
    let (_client, server) = tcp_pair();
    let mut ring = ring();
    let fd = Target::Fd(server.as_raw_fd());
    ring.push_safe(SafeSqe::recv(fd, vec![0; 16], 16).user_data(UserData(1)))
        .unwrap();
    let second = ring.push_safe(SafeSqe::recv(fd, vec![0; 16], 16).user_data(UserData(1)));
    assert!(
        matches!(second, Err(Error::UserDataInUse(UserData(1)))),
        "{second:?}"
    );
    assert_eq!(ring.owned_in_flight(), 1);
}

#[test]
fn the_rings_own_user_data_is_refused() {
    let mut ring = ring();
    let reserved = UserData(1 << 63 | 3);
    let safe = ring.push_safe(SafeSqe::nop().user_data(reserved));
    assert!(matches!(safe, Err(Error::InvalidConfig(_))), "{safe:?}");
    // SAFETY: a nop names no memory.
    let raw = unsafe { ring.push(&Sqe::nop().user_data(reserved)) };
    assert!(matches!(raw, Err(Error::InvalidConfig(_))), "{raw:?}");
}

#[test]
fn statx_and_openat2_through_owned_arguments() {
    let f = TempFile::with_pattern("safe-stat", 5000);
    let dir = rustix::fs::open(
        f.path.parent().unwrap(),
        OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let name = f.path.file_name().unwrap().as_encoded_bytes();
    let mut ring = ring();
    let stat = SafeSqe::statx(
        dir.as_raw_fd(),
        name,
        AtFlags::empty(),
        StatxFlags::SIZE,
        StatxTarget::new(),
    )
    .unwrap()
    .user_data(UserData(1));
    ring.push_safe(stat).unwrap();
    let c = wait_one(&mut ring);
    assert_eq!((c.user_data(), c.result()), (UserData(1), Ok(0)));
    let target = ring.take_statx(UserData(1)).unwrap();
    assert_eq!(target.statx().stx_size, 5000);

    let mut how = open_how::default();
    how.flags = u64::from((OFlags::RDONLY | OFlags::CLOEXEC).bits());
    let open = SafeSqe::openat2(dir.as_raw_fd(), name, how, None, OpenArgs::new())
        .unwrap()
        .user_data(UserData(2));
    ring.push_safe(open).unwrap();
    let c = wait_one(&mut ring);
    assert!(c.result().is_ok(), "{c:?}");
    let Some(OpMemory::Open(mut args)) = ring.take_memory(UserData(2)) else {
        panic!("the open's arguments come back");
    };
    let file = args.take_fd().expect("the ring adopted the new descriptor");
    assert!(args.take_fd().is_none(), "once");
    assert_eq!(file.as_raw_fd(), c.result().unwrap() as i32);
    // Read it back through owned memory too.
    let read =
        SafeSqe::read(Target::Fd(file.as_raw_fd()), vec![0; 8192], 8192, 0).user_data(UserData(3));
    ring.push_safe(read).unwrap();
    let c = wait_one(&mut ring);
    assert_eq!(c.result(), Ok(5000));
    let buf = ring.take_bytes(UserData(3)).unwrap();
    assert_eq!(&buf[..5000], &pattern(5000)[..]);
    ring.push_safe(SafeSqe::close(file).user_data(UserData(4)))
        .unwrap();
    assert_eq!(wait_one(&mut ring).result(), Ok(0));
}

#[test]
fn a_path_with_an_inner_nul_is_refused() {
    let r = SafeSqe::statx(
        -1,
        b"a\0b",
        AtFlags::empty(),
        StatxFlags::SIZE,
        StatxTarget::new(),
    );
    assert!(matches!(r, Err(Error::InvalidConfig(_))));
}

#[test]
fn a_selected_buffer_is_taken_once() {
    const GROUP: BufGroup = BufGroup(1);
    let (mut client, server) = tcp_pair();
    let mut ring = ring();
    ring.register_buf_ring(GROUP, 4, 256).unwrap();
    ring.push_safe(
        SafeSqe::recv_select(Target::Fd(server.as_raw_fd()), GROUP, false).user_data(UserData(1)),
    )
    .unwrap();
    client.write_all(b"abc").unwrap();
    let mut c = wait_one(&mut ring);
    let sel = c.take_buffer().expect("a selected buffer");
    assert!(
        c.take_buffer().is_none(),
        "a CQE's buffer can be taken once"
    );
    assert_eq!(c.buffer_id(), None);
    let br = ring.buf_ring(GROUP).unwrap();
    let lease = br.take(sel).unwrap();
    assert_eq!(br.bytes(&lease, 3), b"abc");
    // Sending from it goes through the ring's bounds check.
    let out_of_bounds =
        ring.send_provided(Target::Fd(server.as_raw_fd()), GROUP, lease.id(), 200, 57);
    assert!(out_of_bounds.is_err());
    let send = ring
        .send_provided(Target::Fd(server.as_raw_fd()), GROUP, lease.id(), 0, 3)
        .unwrap()
        .user_data(UserData(2));
    ring.push_safe(send).unwrap();
    assert_eq!(wait_one(&mut ring).result(), Ok(3));
    ring.buf_ring(GROUP).unwrap().recycle(lease);
}

#[test]
#[should_panic(expected = "a lease of another buffer pool")]
fn a_foreign_lease_cannot_name_the_rings_fixed_buffers() {
    let mut ring = ring();
    ring.register_buffers(FixedBuffers::new(2, 4096).unwrap())
        .unwrap();
    let mut other = FixedBuffers::new(2, 4096).unwrap();
    let foreign = other.acquire().unwrap();
    let _ = ring.read_fixed(Target::Fd(0), foreign, 0, 16, 0);
}

/// Memory of an operation still in flight when its ring drops is leaked when the ring cannot
/// make the operation end; when it can (it cancels everything and reaps), the memory comes
/// back with the CQE and is freed. (Before ring-owned memory, a driver's buffers were simply
/// freed with the driver.)
#[test]
fn memory_in_flight_at_drop_is_leaked_not_freed() {
    use ringwork_sys::LegacyFeatures;
    let (_client, server) = tcp_pair();
    let before = TELLTALE_FREES.load(Ordering::SeqCst);
    {
        // Without cancel-any (as before Linux 5.19) the armed recv on a quiet socket never
        // ends: the ring cannot prove itself idle.
        let mut ring = RingParams::new(8)
            .legacy_features(LegacyFeatures {
                no_cancel_fd: true,
                ..LegacyFeatures::default()
            })
            .teardown_timeout(std::time::Duration::from_millis(50))
            .build()
            .unwrap();
        let sqe = SafeSqe::recv(Target::Fd(server.as_raw_fd()), vec![0; TELLTALE], 64)
            .user_data(UserData(1));
        ring.push_safe(sqe).unwrap();
        ring.submit().unwrap();
    }
    assert_eq!(
        TELLTALE_FREES.load(Ordering::SeqCst),
        before,
        "a buffer the kernel may still write was freed"
    );
    {
        // With cancel-any, the drop cancels the recv, reaps its CQE, and only then frees.
        let mut ring = ring();
        let sqe = SafeSqe::recv(Target::Fd(server.as_raw_fd()), vec![0; TELLTALE], 64)
            .user_data(UserData(1));
        ring.push_safe(sqe).unwrap();
        ring.submit().unwrap();
    }
    assert_eq!(TELLTALE_FREES.load(Ordering::SeqCst), before + 1);
    {
        let (mut client, server) = tcp_pair();
        let mut ring = ring();
        let sqe = SafeSqe::recv(Target::Fd(server.as_raw_fd()), vec![0; TELLTALE], 64)
            .user_data(UserData(1));
        ring.push_safe(sqe).unwrap();
        client.write_all(b"x").unwrap();
        assert_eq!(wait_one(&mut ring).result(), Ok(1));
        // Not taken: the ring frees it with itself.
    }
    assert_eq!(TELLTALE_FREES.load(Ordering::SeqCst), before + 2);
}
