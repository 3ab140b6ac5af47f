//! Teardown leaves nothing behind. A file of its own: counting /proc/self/fd and
//! /proc/self/maps is only meaningful while no other test in the process opens anything.

use ringwork_core::buf::BufGroup;
use ringwork_sys::{FixedBuffers, RingParams};

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn count_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn thousand_rings_leave_nothing_behind() {
    // Warm up allocator and lazily created state so the baseline is stable.
    drop(RingParams::new(4).build().unwrap());
    let (fds, maps) = (count_fds(), count_maps());
    for i in 0..1000u16 {
        let mut ring = RingParams::new(4).build().unwrap();
        ring.register_buffers(FixedBuffers::new(2, 4096).unwrap())
            .unwrap();
        ring.register_buf_ring(BufGroup(i), 4, 256).unwrap();
        ring.register_files_sparse(8).unwrap();
        drop(ring);
    }
    assert_eq!(count_fds(), fds, "fds back to baseline");
    let after = count_maps();
    // The allocator may keep an arena mapping or two; rings would leave thousands.
    assert!(
        after <= maps + 2,
        "mappings back to baseline: {maps} before, {after} after"
    );
}
