//! Provided-buffer bookkeeping against a model kernel, driven by arbitrary operations: receive
//! completions through `RecvBuffers` in each mode (whole buffers, bundles over consecutive
//! ring buffers, incremental slices), some consumed by a connection and some stale or ends of
//! stream that name a buffer (given back unconsumed), recycles in any order, publishes. The
//! model consumes the ring in order, as the kernel does; the pieces must name exactly the
//! buffers, offsets and lengths the model filled, only a bundle's last piece may end the
//! multishot, no buffer goes back to the ring while the model still fills it or a piece of it
//! is held, and none is lost or doubled.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::buf::{
    BufGroup, BufId, BufState, ProvidedRing, RecvBuffers, RecvCompletion, RecvMode, RecvPiece,
};

const SIZE: u32 = 64;

#[derive(Arbitrary, Debug)]
enum Step {
    /// A receive of up to `len` bytes (a bundle over as many buffers as it needs, or with
    /// incremental consumption as much of the head buffer as fits; 0: an end of stream).
    /// `consume`: a live connection takes it; else it is stale and given back.
    Recv { len: u16, more: bool, consume: bool },
    /// Give back the `i`-th held piece.
    Release { i: u8 },
    /// Publish what was recycled.
    Publish,
}

#[derive(Arbitrary, Debug)]
struct Input {
    mode: u8,
    log2_entries: u8,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let mode = match input.mode % 3 {
        0 => RecvMode::Whole,
        1 => RecvMode::Bundle,
        _ => RecvMode::Incremental,
    };
    let entries = 1u16 << (input.log2_entries % 5);
    let mut ring = ProvidedRing::new(BufGroup(0), entries);
    let mut rb = RecvBuffers::new(entries, SIZE, mode);
    let mut kernel: VecDeque<BufId> = VecDeque::new();
    let mut head_used = 0u32;
    let mut held: Vec<RecvPiece> = Vec::new();
    ring.take_returns(|_, id| kernel.push_back(id));
    for step in input.steps {
        match step {
            Step::Recv { len, more, consume } if !kernel.is_empty() => {
                let len = u32::from(len);
                let first = kernel[0];
                let mut want = Vec::new();
                let (bytes, buf_more) = match mode {
                    RecvMode::Whole => {
                        kernel.pop_front();
                        let bytes = len.min(SIZE);
                        want.push(RecvPiece {
                            buf: first,
                            offset: 0,
                            len: bytes,
                            more,
                        });
                        (bytes, false)
                    }
                    RecvMode::Bundle => {
                        let count = len.div_ceil(SIZE).max(1).min(kernel.len() as u32);
                        let bytes = len.min(count * SIZE);
                        let mut left = bytes;
                        for i in 0..count {
                            let buf = kernel.pop_front().expect("counted");
                            let this = left.min(SIZE);
                            left -= this;
                            want.push(RecvPiece {
                                buf,
                                offset: 0,
                                len: this,
                                more: more || i + 1 < count,
                            });
                        }
                        (bytes, false)
                    }
                    RecvMode::Incremental => {
                        let bytes = len.min(SIZE - head_used);
                        let offset = head_used;
                        head_used += bytes;
                        let buf_more = head_used < SIZE;
                        if !buf_more {
                            kernel.pop_front();
                            head_used = 0;
                        }
                        want.push(RecvPiece {
                            buf: first,
                            offset,
                            len: bytes,
                            more,
                        });
                        (bytes, buf_more)
                    }
                };
                let c = RecvCompletion {
                    first,
                    bytes,
                    more,
                    buf_more,
                };
                if consume && bytes > 0 {
                    let mut got = Vec::new();
                    rb.on_recv(&mut ring, c, |p| got.push(p))
                        .expect("the kernel's buffers");
                    assert_eq!(got, want, "pieces where the kernel put the bytes");
                    held.extend(got);
                } else {
                    rb.return_unconsumed(&mut ring, c)
                        .expect("the kernel's buffers");
                }
            }
            Step::Release { i } if !held.is_empty() => {
                let p = held.swap_remove(usize::from(i) % held.len());
                rb.recycle(&mut ring, p.buf).expect("a held piece");
                if ring.state(p.buf) == Some(BufState::Returning) {
                    assert!(
                        !kernel.contains(&p.buf),
                        "recycled while the kernel fills it"
                    );
                    assert!(
                        held.iter().all(|h| h.buf != p.buf),
                        "recycled with a piece out"
                    );
                }
            }
            Step::Publish => {
                ring.take_returns(|_, id| kernel.push_back(id));
            }
            _ => {}
        }
        assert_eq!(
            ring.in_kernel(),
            kernel.len(),
            "the kernel's buffers, counted"
        );
    }
    // Everything given back: every buffer is the kernel's again, none lost or doubled.
    for p in held.drain(..) {
        rb.recycle(&mut ring, p.buf).expect("a held piece");
    }
    ring.take_returns(|_, id| kernel.push_back(id));
    let mut ids: Vec<u16> = kernel.iter().map(|b| b.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), usize::from(entries), "a buffer lost or doubled");
});
