//! [`IncTracker`]: slices of provided buffers under incremental consumption.

use alloc::vec::Vec;
use core::fmt;

use super::{BufError, BufId, BufState, Lease, ProvidedRing};

/// Bookkeeping for a provided buffer ring with incremental consumption (IOU_PBUF_RING_INC,
/// Linux 6.12): the kernel fills a buffer a receive at a time, each receive continuing where
/// the last one stopped (possibly for another socket), and sets IORING_CQE_F_BUF_MORE on every
/// completion but the one that used the buffer up. So one buffer holds several slices, and it
/// may go back to the ring only when the kernel has finished with it *and* every slice has
/// been released. Until the kernel has finished, the buffer stays `Kernel` in the
/// [`ProvidedRing`] (the kernel still picks from it); its lease is taken then, and handed back
/// for recycling with the last slice.
///
/// A completion of 0 bytes consumes nothing (Linux 6.18 and the stable kernels that have
/// commit 3ecd3e03144b; before it the kernel wrongly retired the buffer, which is then lost to
/// the ring: safe, but its capacity shrinks).
#[derive(Debug)]
pub struct IncTracker {
    bufs: Vec<IncBuf>,
}

#[derive(Debug, Default)]
struct IncBuf {
    /// Where the kernel's next bytes in this buffer land.
    next: u32,
    /// Slices handed out and not yet released.
    held: u32,
    /// The kernel has finished with the buffer: its lease, until the last slice goes.
    lease: Option<Lease>,
}

/// Why an incremental-consumption completion or release was refused (a driver or kernel bug).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IncError {
    /// The ring's bookkeeping refused the buffer.
    Buf(BufError),
    /// A release of a buffer that has no slice out.
    NothingHeld(BufId),
}

impl fmt::Display for IncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IncError::Buf(e) => write!(f, "incremental buffer: {e}"),
            IncError::NothingHeld(id) => {
                write!(f, "released a slice of buffer {} which has none out", id.0)
            }
        }
    }
}

impl IncTracker {
    /// For a ring of `entries` buffers.
    pub fn new(entries: u16) -> Self {
        Self {
            bufs: (0..entries).map(|_| IncBuf::default()).collect(),
        }
    }

    /// A receive completion named buffer `id` with `len` bytes; `buf_more` is
    /// IORING_CQE_F_BUF_MORE. Returns where in the buffer the bytes are; unless `len` is 0,
    /// the caller now holds a slice, to give back with [`IncTracker::release`].
    pub fn on_recv(
        &mut self,
        ring: &mut ProvidedRing,
        id: BufId,
        len: u32,
        buf_more: bool,
    ) -> Result<u32, IncError> {
        let state = ring
            .state(id)
            .ok_or(IncError::Buf(BufError::OutOfRange(id)))?;
        if state != BufState::Kernel {
            return Err(IncError::Buf(BufError::NotKernelOwned { id, state }));
        }
        let b = &mut self.bufs[id.0 as usize];
        let offset = b.next;
        if len == 0 {
            return Ok(offset);
        }
        b.next += len;
        b.held += 1;
        if !buf_more {
            // The kernel is done with it: the rest of it is ours too.
            b.lease = Some(ring.on_selected(id).map_err(IncError::Buf)?);
        }
        Ok(offset)
    }

    /// Gives back one slice of buffer `id`; returns the buffer's lease when that was the last
    /// slice of a buffer the kernel has finished with: recycle it.
    pub fn release(&mut self, id: BufId) -> Result<Option<Lease>, IncError> {
        let b = self
            .bufs
            .get_mut(id.0 as usize)
            .ok_or(IncError::Buf(BufError::OutOfRange(id)))?;
        if b.held == 0 {
            return Err(IncError::NothingHeld(id));
        }
        b.held -= 1;
        if b.held > 0 || b.lease.is_none() {
            return Ok(None);
        }
        b.next = 0;
        Ok(b.lease.take())
    }

    /// Slices of buffer `id` handed out and not released.
    pub fn held(&self, id: BufId) -> u32 {
        self.bufs.get(id.0 as usize).map_or(0, |b| b.held)
    }

    /// Bytes of buffer `id` the kernel has filled so far in this round of use: where its next
    /// receive into it lands.
    pub fn filled(&self, id: BufId) -> u32 {
        self.bufs.get(id.0 as usize).map_or(0, |b| b.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::fixtures::published_ring;
    use crate::buf::BufGroup;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn an_incremental_buffer_waits_for_the_kernel_and_every_slice() {
        let (mut ring, _) = published_ring(BufGroup(0), 2);
        let mut inc = IncTracker::new(2);
        let b = BufId(0);
        assert_eq!(inc.on_recv(&mut ring, b, 100, true), Ok(0));
        assert_eq!(
            inc.on_recv(&mut ring, b, 0, true),
            Ok(100),
            "EOF consumes nothing"
        );
        assert_eq!(inc.on_recv(&mut ring, b, 50, true), Ok(100));
        assert_eq!(inc.release(b), Ok(None), "the kernel still fills it");
        assert_eq!(ring.state(b), Some(BufState::Kernel));
        assert_eq!(inc.on_recv(&mut ring, b, 10, false), Ok(150));
        assert_eq!(ring.state(b), Some(BufState::App));
        assert_eq!(inc.release(b), Ok(None), "one slice still out");
        let lease = inc
            .release(b)
            .unwrap()
            .expect("last slice of a finished buffer");
        assert_eq!(lease.id(), b);
        assert_eq!(inc.release(b), Err(IncError::NothingHeld(b)));
        ring.recycle(lease);
        ring.take_returns(|_, _| {});
        assert_eq!(inc.on_recv(&mut ring, b, 7, true), Ok(0), "a fresh start");
    }

    proptest! {
        /// Incremental consumption against a simulated kernel: receives of random sizes take
        /// the rest of the head buffer or part of it; slices are released in random order. Each
        /// slice's offset is where the kernel put its bytes, a buffer goes back to the ring
        /// only once the kernel is done with it and its last slice is released, and every
        /// buffer comes back in the end.
        #[test]
        fn incremental_slices_and_recycling(
            ops in proptest::collection::vec((0u8..3, 0u32..300, 0usize..64), 0..400)
        ) {
            const N: u16 = 4;
            const SIZE: u32 = 256;
            // Kernel model: the ring in order, and how much of the head buffer is used.
            let (mut ring, mut kernel) = published_ring(BufGroup(2), N);
            let mut inc = IncTracker::new(N);
            let mut head_used = 0u32;
            let mut slices: Vec<(BufId, u32, u32)> = Vec::new();
            for (op, len, i) in ops {
                match op {
                    0 if !kernel.is_empty() => {
                        let id = kernel[0];
                        let take = len.min(SIZE - head_used);
                        let offset = head_used;
                        head_used += take;
                        let more = head_used < SIZE;
                        if !more {
                            kernel.pop_front();
                            head_used = 0;
                        }
                        let got = inc.on_recv(&mut ring, id, take, more).unwrap();
                        prop_assert_eq!(got, offset);
                        if take > 0 {
                            slices.push((id, offset, take));
                        }
                    }
                    1 if !slices.is_empty() => {
                        let (id, _, _) = slices.swap_remove(i % slices.len());
                        if let Some(lease) = inc.release(id).unwrap() {
                            prop_assert!(!kernel.contains(&id), "recycled while the kernel fills it");
                            prop_assert!(!slices.iter().any(|s| s.0 == id), "recycled with a slice out");
                            ring.recycle(lease);
                        }
                    }
                    2 => { ring.take_returns(|_, id| kernel.push_back(id)); }
                    _ => {}
                }
                // Slices of one buffer never overlap.
                for a in &slices {
                    for b in &slices {
                        if a != b && a.0 == b.0 {
                            prop_assert!(a.1 + a.2 <= b.1 || b.1 + b.2 <= a.1);
                        }
                    }
                }
            }
            // Release everything left; every buffer the kernel finished with comes back.
            for (id, _, _) in slices.drain(..) {
                if let Some(lease) = inc.release(id).unwrap() {
                    ring.recycle(lease);
                }
            }
            ring.take_returns(|_, id| kernel.push_back(id));
            prop_assert_eq!(ring.in_kernel(), N as usize);
        }
    }
}
