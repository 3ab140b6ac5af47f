//! Sends from a file mapping (`FileMap`, `SafeSqe::send_mapped`) against the real kernel:
//! the bytes arrive exact, and the mapping stays mapped while a send names it even when
//! every handle the caller held is gone.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use ringwork_core::token::UserData;
use ringwork_sys::{FileMap, OpMemory, RingParams, SafeSqe, Target};
use rustix::net::SendFlags;

mod common;
use common::{pattern, read_to_end_thread, tcp_pair, wait_cqes, TempFile};

#[test]
fn a_mapped_file_is_sent_byte_exact() {
    let len = (2 << 20) + 777;
    let file = TempFile::with_pattern("map-send", len);
    let map = Arc::new(FileMap::new(&file.file, len).unwrap());
    assert_eq!(map.len(), len);
    let (client, server) = tcp_pair();
    let reader = read_to_end_thread(client);
    let mut ring = RingParams::new(8).build().unwrap();
    let sock = Target::Fd(server.as_raw_fd());
    let chunk = 256 * 1024;
    let mut off = 0;
    while off < len {
        let end = (off + chunk).min(len);
        let sqe = SafeSqe::send_mapped(sock, &map, off..end)
            .send_flags(SendFlags::NOSIGNAL)
            .user_data(UserData(1));
        ring.push_safe(sqe).unwrap();
        let c = &wait_cqes(&mut ring, 1)[0];
        let sent = c.result().unwrap() as usize;
        assert!(sent > 0 && sent <= end - off);
        let Some(OpMemory::Mapped(back)) = ring.take_memory(UserData(1)) else {
            panic!("the send's reference to the mapping comes back with its CQE");
        };
        assert!(Arc::ptr_eq(&back, &map));
        // Short sends happen: the next one starts where this one stopped.
        off += sent;
    }
    drop(server);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), len);
    assert!(got == pattern(len), "the bytes differ from the file's");
}

#[test]
fn a_send_keeps_the_mapping_alive_after_the_caller_drops_it() {
    // More than loopback's socket buffers hold: the send cannot finish before we read.
    let len = 16 << 20;
    let file = TempFile::with_pattern("map-keep", len);
    let map = Arc::new(FileMap::new(&file.file, len).unwrap());
    let weak = Arc::downgrade(&map);
    let (client, server) = tcp_pair();
    let mut ring = RingParams::new(8).build().unwrap();
    // Nobody reads yet: with MSG_WAITALL the send waits for room, with the mapping named.
    let big = SafeSqe::send_mapped(Target::Fd(server.as_raw_fd()), &map, 0..len)
        .send_flags(SendFlags::NOSIGNAL | SendFlags::from_bits_retain(libc::MSG_WAITALL as u32))
        .user_data(UserData(3));
    ring.push_safe(big).unwrap();
    ring.submit().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(ring.owned_in_flight(), 1, "the send waits for the reader");
    drop(map);
    assert!(
        weak.upgrade().is_some(),
        "the operation in flight holds the mapping"
    );
    let reader = read_to_end_thread(client);
    let c = &wait_cqes(&mut ring, 1)[0];
    assert_eq!(c.result(), Ok(len as u32));
    assert!(weak.upgrade().is_some(), "until its memory is taken back");
    drop(ring.take_memory(UserData(3)));
    assert!(weak.upgrade().is_none(), "then it is unmapped");
    drop(server);
    assert!(reader.join().unwrap() == pattern(len));
}

#[test]
#[should_panic(expected = "outside the")]
fn a_range_past_the_mapping_is_refused() {
    let file = TempFile::with_pattern("map-range", 4096);
    let map = Arc::new(FileMap::new(&file.file, 4096).unwrap());
    let _ = SafeSqe::send_mapped(Target::Fd(0), &map, 0..4097);
}

#[test]
fn an_empty_mapping_is_refused() {
    let file = TempFile::with_pattern("map-empty", 0);
    assert!(FileMap::new(&file.file, 0).is_err());
}

#[test]
fn a_lazy_mapping_says_how_much_is_in_the_page_cache() {
    let page = rustix::param::page_size();
    let len = 64 * page + 100;
    let file = TempFile::with_pattern("map-lazy", len);
    let map = FileMap::lazy(&file.file, len).unwrap();
    // Just written: every page is in the page cache.
    assert_eq!(map.resident(0..len), len);
    assert_eq!(map.resident(page + 7..3 * page), 2 * page - 7);
    assert_eq!(
        map.resident(len - 5..len + 4096),
        5,
        "clamped to the mapping"
    );
    assert_eq!(map.resident(len..len), 0);
    // Written back and dropped from the page cache (a lazy mapping maps none of its pages,
    // so nothing holds them): nothing is resident.
    file.file.sync_all().unwrap();
    rustix::fs::fadvise(&file.file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    assert_eq!(map.resident(0..len), 0, "after POSIX_FADV_DONTNEED");
    // Read back, pages 8.. only: the prefix from 0 stays 0, from page 8 it is the rest.
    let mut buf = vec![0u8; len - 8 * page];
    rustix::io::pread(&file.file, &mut buf, 8 * page as u64).unwrap();
    assert_eq!(map.resident(0..len), 0);
    assert_eq!(map.resident(8 * page..len), len - 8 * page);
    // And a send from it still carries the file's bytes.
    let map = Arc::new(map);
    let (client, server) = tcp_pair();
    let reader = read_to_end_thread(client);
    let mut ring = RingParams::new(8).build().unwrap();
    let mut off = 0;
    while off < len {
        let sqe = SafeSqe::send_mapped(Target::Fd(server.as_raw_fd()), &map, off..len)
            .send_flags(SendFlags::NOSIGNAL)
            .user_data(UserData(5));
        ring.push_safe(sqe).unwrap();
        off += wait_cqes(&mut ring, 1)[0].result().unwrap() as usize;
        drop(ring.take_memory(UserData(5)));
    }
    drop(server);
    assert!(reader.join().unwrap() == pattern(len));
}

#[test]
fn a_registered_file_gets_a_plain_descriptor_back() {
    use std::os::fd::AsFd;
    let len = 3 * 4096 + 11;
    let file = TempFile::with_pattern("map-install", len);
    let mut ring = RingParams::new(8).build().unwrap();
    let probe = ring.probe().unwrap();
    if !probe.supports(rustix::io_uring::IoringOp::FixedFdInstall) {
        panic!("IORING_OP_FIXED_FD_INSTALL needs Linux 6.8; this kernel lacks it");
    }
    ring.register_files_sparse(2).unwrap();
    let dup = file.file.try_clone().unwrap();
    ring.update_files(1, &[dup.as_raw_fd()]).unwrap();
    drop(dup);
    ring.push_safe(SafeSqe::fixed_fd_install(1).user_data(UserData(9)))
        .unwrap();
    let fd = wait_cqes(&mut ring, 1)[0].result().unwrap();
    let Some(OpMemory::Installed(Some(owned))) = ring.take_memory(UserData(9)) else {
        panic!("the installed descriptor comes back with the CQE");
    };
    assert_eq!(owned.as_raw_fd() as u32, fd);
    // The same file: same inode, and a mapping of it holds its bytes.
    let (a, b) = (
        rustix::fs::fstat(owned.as_fd()).unwrap(),
        rustix::fs::fstat(&file.file).unwrap(),
    );
    assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
    let flags = rustix::io::fcntl_getfd(&owned).unwrap();
    assert!(
        flags.contains(rustix::io::FdFlags::CLOEXEC),
        "close-on-exec"
    );
    let map = FileMap::lazy(&owned, len).unwrap();
    assert_eq!(map.resident(0..len), len);
    // An empty slot: EBADF, and no descriptor.
    ring.push_safe(SafeSqe::fixed_fd_install(0).user_data(UserData(10)))
        .unwrap();
    assert!(wait_cqes(&mut ring, 1)[0].result().is_err());
    assert!(matches!(
        ring.take_memory(UserData(10)),
        Some(OpMemory::Installed(None))
    ));
}
