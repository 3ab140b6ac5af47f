//! Provided-buffer bookkeeping against a model kernel, driven by arbitrary operations: receive
//! bundles (`ProvidedRing::on_selected_bundle`) and incremental consumption (`IncTracker`).
//! The model consumes the ring in order, as the kernel does; the bookkeeping must name exactly
//! the buffers (and, incrementally, the offsets) the model filled, never hand a buffer back to
//! the ring while the model still fills it or a slice of it is held, and lose none.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::buf::{BufGroup, BufId, IncTracker, Lease, ProvidedRing};

const SIZE: u32 = 64;

#[derive(Arbitrary, Debug)]
enum Step {
    /// A receive of `len` bytes (a bundle over as many buffers as it needs, or with
    /// incremental consumption as much of the head buffer as fits).
    Recv { len: u16 },
    /// Give back the `i`-th held buffer or slice.
    Release { i: u8 },
    /// Publish what was recycled.
    Publish,
}

#[derive(Arbitrary, Debug)]
struct Input {
    incremental: bool,
    log2_entries: u8,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let entries = 1u16 << (input.log2_entries % 5);
    let mut ring = ProvidedRing::new(BufGroup(0), entries);
    let mut inc = IncTracker::new(entries);
    let mut kernel: VecDeque<BufId> = VecDeque::new();
    let mut head_used = 0u32;
    // Bundles: leases held. Incremental: (buffer, offset, len) slices held.
    let mut leases: Vec<Lease> = Vec::new();
    let mut slices: Vec<(BufId, u32, u32)> = Vec::new();
    ring.take_returns(|_, id| kernel.push_back(id));
    for step in input.steps {
        match step {
            Step::Recv { len } if !kernel.is_empty() => {
                let len = u32::from(len).max(1);
                if input.incremental {
                    let id = kernel[0];
                    let take = len.min(SIZE - head_used);
                    let offset = head_used;
                    head_used += take;
                    let more = head_used < SIZE;
                    if !more {
                        kernel.pop_front();
                        head_used = 0;
                    }
                    let got = inc.on_recv(&mut ring, id, take, more).expect("kernel's buffer");
                    assert_eq!(got, offset, "slice where the kernel put it");
                    slices.push((id, offset, take));
                } else {
                    let count = len.div_ceil(SIZE).min(kernel.len() as u32) as usize;
                    let filled: Vec<BufId> = kernel.drain(..count).collect();
                    let mut named = Vec::new();
                    ring.on_selected_bundle(filled[0], count as u16, |l| {
                        named.push(l.id());
                        leases.push(l);
                    })
                    .expect("kernel's buffers");
                    assert_eq!(named, filled, "the bundle's buffers, in ring order");
                }
            }
            Step::Release { i } if input.incremental && !slices.is_empty() => {
                let (id, _, _) = slices.swap_remove(usize::from(i) % slices.len());
                if let Some(lease) = inc.release(id).expect("a held slice") {
                    assert!(!kernel.contains(&id), "recycled while the kernel fills it");
                    assert!(slices.iter().all(|s| s.0 != id), "recycled with a slice out");
                    ring.recycle(lease);
                }
            }
            Step::Release { i } if !input.incremental && !leases.is_empty() => {
                ring.recycle(leases.swap_remove(usize::from(i) % leases.len()));
            }
            Step::Publish => {
                ring.take_returns(|_, id| kernel.push_back(id));
            }
            _ => {}
        }
        assert_eq!(ring.in_kernel(), kernel.len(), "the kernel's buffers, counted");
    }
    // Everything given back: every buffer is the kernel's again, none lost or doubled.
    for (id, _, _) in slices.drain(..) {
        if let Some(lease) = inc.release(id).expect("a held slice") {
            ring.recycle(lease);
        }
    }
    for lease in leases.drain(..) {
        ring.recycle(lease);
    }
    ring.take_returns(|_, id| kernel.push_back(id));
    let mut ids: Vec<u16> = kernel.iter().map(|b| b.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), usize::from(entries), "a buffer lost or doubled");
});
