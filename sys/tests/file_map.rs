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
