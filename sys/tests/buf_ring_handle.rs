//! A buffer ring's handle finds its buffers on the ring that registered them, and nowhere
//! else.

use ringwork_core::buf::BufGroup;
use ringwork_sys::{ProvideMode, RingParams};

#[test]
fn a_handle_finds_its_own_rings_buffers_and_refuses_another_ring() {
    let mut a = RingParams::new(8).build().expect("ring a");
    let mut b = RingParams::new(8).build().expect("ring b");
    let on_a = a
        .register_buf_ring(BufGroup(3), 8, 1024)
        .expect("group 3 on a");
    // The same group id on another ring is another group.
    let on_b = b
        .add_provided_buffers(BufGroup(3), 4, 512, ProvideMode::Sqe)
        .expect("group 3 on b");
    assert_eq!(on_a.group(), BufGroup(3));
    assert_ne!(on_a, on_b, "handles of two rings differ");
    assert_eq!(a.bufs(on_a).buf_size(), 1024);
    assert_eq!(b.bufs(on_b).buf_size(), 512);
    let wrong = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.bufs(on_a).buf_size()));
    assert!(
        wrong.is_err(),
        "a handle of ring a used on ring b must panic"
    );
}
