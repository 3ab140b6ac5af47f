//! Trimming adopted fixed buffers: the pages of free buffers go back to the system (they read
//! as zeroes when next used), the most recently freed are kept, and registered (pinned)
//! buffers are never touched.

use ringwork_sys::{FixedBuffers, RingParams};

/// Fills every buffer with 0xAB and frees them in id order (so the last id is on top).
fn fill_and_free(ring: &mut ringwork_sys::Ring, count: usize) {
    let bufs = ring.fixed_buffers().unwrap();
    let leases: Vec<_> = (0..count).map(|_| bufs.acquire().unwrap()).collect();
    for l in &leases {
        bufs.bytes_mut(l).fill(0xAB);
    }
    for l in leases {
        bufs.release(l);
    }
}

/// How many of the buffers, acquired in the pool's order, still hold their 0xAB bytes.
fn still_filled(ring: &mut ringwork_sys::Ring, count: usize) -> usize {
    let bufs = ring.fixed_buffers().unwrap();
    let leases: Vec<_> = (0..count).map(|_| bufs.acquire().unwrap()).collect();
    let n = leases
        .iter()
        .filter(|l| bufs.bytes(l).iter().all(|&b| b == 0xAB))
        .count();
    for l in leases {
        bufs.release(l);
    }
    n
}

#[test]
fn trimmed_free_buffers_read_as_zeroes_and_the_kept_ones_keep_their_bytes() {
    let mut ring = RingParams::new(4).build().unwrap();
    ring.adopt_buffers(FixedBuffers::new(6, 8192).unwrap())
        .unwrap();
    fill_and_free(&mut ring, 6);
    assert_eq!(ring.trim_fixed_buffers(2).unwrap(), 4);
    assert_eq!(
        still_filled(&mut ring, 6),
        2,
        "the two kept hold their bytes"
    );
    fill_and_free(&mut ring, 6);
    assert_eq!(ring.trim_fixed_buffers(0).unwrap(), 6);
    assert_eq!(still_filled(&mut ring, 6), 0, "every page dropped");
}

#[test]
fn registered_buffers_are_never_trimmed() {
    let mut ring = RingParams::new(4).build().unwrap();
    ring.register_buffers(FixedBuffers::new(2, 4096).unwrap())
        .unwrap();
    fill_and_free(&mut ring, 2);
    assert_eq!(ring.trim_fixed_buffers(0).unwrap(), 0);
    assert_eq!(still_filled(&mut ring, 2), 2);
}
