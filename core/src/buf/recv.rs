//! [`RecvBuffers`]: receive completions of a provided buffer ring turned into per-buffer
//! pieces (whole buffers, bundles, incremental slices).

use alloc::vec::Vec;
use core::fmt;

use super::{BufError, BufId, IncError, IncTracker, Lease, ProvidedRing};

/// How a provided buffer ring's receive completions name their buffers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecvMode {
    /// One whole buffer per completion.
    Whole,
    /// Receive bundles (IORING_RECVSEND_BUNDLE, Linux 6.10): one completion may fill several
    /// consecutive ring buffers, naming only the first.
    Bundle,
    /// Incremental consumption (IOU_PBUF_RING_INC, Linux 6.12): a completion fills part of a
    /// buffer ([`IncTracker`]).
    Incremental,
}

/// What a receive CQE says about the buffers it filled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecvCompletion {
    /// The buffer the kernel picked (IORING_CQE_F_BUFFER): the first of a bundle.
    pub first: BufId,
    /// Bytes received: the CQE's `res` when not negative, else 0.
    pub bytes: u32,
    /// IORING_CQE_F_MORE: the multishot receive is still armed.
    pub more: bool,
    /// IORING_CQE_F_BUF_MORE: with incremental consumption, the kernel still fills `first`.
    pub buf_more: bool,
}

/// One buffer's share of a receive completion, as a connection's receive event carries it:
/// `len` bytes at `offset` in `buf`. `more` is the completion's F_MORE on the last piece, and
/// set on every piece before it: only the last piece of a bundle can say the multishot ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecvPiece {
    /// The buffer.
    pub buf: BufId,
    /// Where the bytes start in it (0 but with incremental consumption).
    pub offset: u32,
    /// How many bytes (at least 1).
    pub len: u32,
    /// The receive is still armed after this piece.
    pub more: bool,
}

/// Why [`RecvBuffers`] refused a completion or a recycle: a driver or kernel bug. Nothing was
/// changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecvError {
    /// The ring's bookkeeping refused a buffer the completion named.
    Buf(BufError),
    /// A recycle of a buffer (or slice) nobody holds.
    NothingHeld(BufId),
    /// [`RecvBuffers::on_recv`] of a completion without bytes (use
    /// [`RecvBuffers::return_unconsumed`]).
    Empty,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Buf(e) => write!(f, "receive completion: {e}"),
            RecvError::NothingHeld(id) => {
                write!(f, "recycled buffer {} which nobody holds", id.0)
            }
            RecvError::Empty => f.write_str("a receive of no bytes holds no buffer"),
        }
    }
}

impl From<IncError> for RecvError {
    fn from(e: IncError) -> Self {
        match e {
            IncError::Buf(e) => RecvError::Buf(e),
            IncError::NothingHeld(id) => RecvError::NothingHeld(id),
        }
    }
}

/// The receive side of one provided buffer ring, above its [`ProvidedRing`] bookkeeping:
/// turns a receive completion into the per-buffer [`RecvPiece`]s a connection is handed
/// (splitting bundles, locating incremental slices), holds the leases of the pieces handed
/// out until they are recycled, and gives back the buffers of a completion that nobody will
/// consume (a stale one, or an end of stream that names a buffer).
///
/// Invariants (proptest below, and the `provided_buffers` fuzz target): every piece names
/// exactly the bytes the kernel wrote, in ring order; a buffer goes back to the ring only once
/// every piece of it is recycled and the kernel has finished with it; none is lost or doubled.
#[derive(Debug)]
pub struct RecvBuffers {
    mode: RecvMode,
    buf_size: u32,
    /// Whole buffers handed out (whole and bundle modes), by id.
    leases: Vec<Option<Lease>>,
    inc: Option<IncTracker>,
    /// The leases of an unconsumed bundle on their way back (capacity reserved: a bundle
    /// spans at most the whole ring).
    unconsumed: Vec<Lease>,
}

impl RecvBuffers {
    /// For a ring of `entries` buffers of `buf_size` bytes each, received in `mode`.
    ///
    /// # Panics
    /// When `buf_size` is 0.
    pub fn new(entries: u16, buf_size: u32, mode: RecvMode) -> Self {
        assert!(buf_size > 0, "receive buffers need a size");
        Self {
            mode,
            buf_size,
            leases: (0..entries).map(|_| None).collect(),
            inc: (mode == RecvMode::Incremental).then(|| IncTracker::new(entries)),
            unconsumed: Vec::with_capacity(match mode {
                RecvMode::Bundle => usize::from(entries),
                _ => 0,
            }),
        }
    }

    /// The receive mode.
    pub fn mode(&self) -> RecvMode {
        self.mode
    }

    /// A receive completion of at least one byte: `piece` is called for each buffer it
    /// filled, in the order of the bytes; the caller now holds each piece until
    /// [`RecvBuffers::recycle`]. Returns how many pieces there were. On error nothing was
    /// taken and `piece` was not called.
    pub fn on_recv(
        &mut self,
        ring: &mut ProvidedRing,
        c: RecvCompletion,
        mut piece: impl FnMut(RecvPiece),
    ) -> Result<u16, RecvError> {
        if c.bytes == 0 {
            return Err(RecvError::Empty);
        }
        match self.mode {
            RecvMode::Whole => {
                let lease = ring.on_selected(c.first).map_err(RecvError::Buf)?;
                self.leases[c.first.0 as usize] = Some(lease);
                piece(RecvPiece {
                    buf: c.first,
                    offset: 0,
                    len: c.bytes,
                    more: c.more,
                });
                Ok(1)
            }
            RecvMode::Bundle => {
                let count = self.bundle_count(c.bytes);
                let (size, leases) = (self.buf_size, &mut self.leases);
                let (mut left, mut i) = (c.bytes, 0u16);
                ring.on_selected_bundle(c.first, count, |lease| {
                    let buf = lease.id();
                    leases[buf.0 as usize] = Some(lease);
                    let len = left.min(size);
                    left -= len;
                    i += 1;
                    piece(RecvPiece {
                        buf,
                        offset: 0,
                        len,
                        more: c.more || i < count,
                    });
                })
                .map_err(RecvError::Buf)?;
                Ok(count)
            }
            RecvMode::Incremental => {
                let Some(inc) = self.inc.as_mut() else {
                    unreachable!("incremental mode has a tracker (new)")
                };
                let offset = inc.on_recv(ring, c.first, c.bytes, c.buf_more)?;
                piece(RecvPiece {
                    buf: c.first,
                    offset,
                    len: c.bytes,
                    more: c.more,
                });
                Ok(1)
            }
        }
    }

    /// A receive completion nobody will consume (a stale one, or an end of stream or error
    /// that names a buffer): what it filled goes back to the ring (with incremental
    /// consumption: the bytes count as a slice released at once, and the buffer goes back
    /// when the kernel has finished with it and no other slice is out).
    pub fn return_unconsumed(
        &mut self,
        ring: &mut ProvidedRing,
        c: RecvCompletion,
    ) -> Result<(), RecvError> {
        match self.mode {
            RecvMode::Incremental => {
                let Some(inc) = self.inc.as_mut() else {
                    unreachable!("incremental mode has a tracker (new)")
                };
                inc.on_recv(ring, c.first, c.bytes, c.buf_more)?;
                if c.bytes > 0 {
                    if let Some(lease) = inc.release(c.first)? {
                        ring.recycle(lease);
                    }
                }
            }
            // Even a completion of no bytes that names a buffer took it from the ring.
            RecvMode::Bundle if c.bytes > 0 => {
                let count = self.bundle_count(c.bytes);
                let unconsumed = &mut self.unconsumed;
                ring.on_selected_bundle(c.first, count, |lease| unconsumed.push(lease))
                    .map_err(RecvError::Buf)?;
                for lease in self.unconsumed.drain(..) {
                    ring.recycle(lease);
                }
            }
            RecvMode::Whole | RecvMode::Bundle => {
                let lease = ring.on_selected(c.first).map_err(RecvError::Buf)?;
                ring.recycle(lease);
            }
        }
        Ok(())
    }

    /// The holder is done with a piece of `buf`: back to the ring now, or (incremental) with
    /// the buffer's last piece once the kernel has finished with it.
    pub fn recycle(&mut self, ring: &mut ProvidedRing, buf: BufId) -> Result<(), RecvError> {
        let lease = match self.inc.as_mut() {
            Some(inc) => inc.release(buf)?,
            None => Some(
                self.leases
                    .get_mut(buf.0 as usize)
                    .and_then(Option::take)
                    .ok_or(RecvError::NothingHeld(buf))?,
            ),
        };
        if let Some(lease) = lease {
            ring.recycle(lease);
        }
        Ok(())
    }

    /// The slices handed out, with incremental consumption (None with whole buffers).
    pub fn incremental(&self) -> Option<&IncTracker> {
        self.inc.as_ref()
    }

    /// True when a piece of `buf` is handed out (the holder may send from it).
    pub fn holds(&self, buf: BufId) -> bool {
        match &self.inc {
            Some(inc) => inc.held(buf) > 0,
            None => self.leases.get(buf.0 as usize).is_some_and(Option::is_some),
        }
    }

    /// Buffers a bundle of `bytes` spans (at least one).
    fn bundle_count(&self, bytes: u32) -> u16 {
        u16::try_from(bytes.div_ceil(self.buf_size).max(1)).unwrap_or(u16::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::fixtures::published_ring;
    use crate::buf::{BufGroup, BufState};
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn a_stale_bundle_returns_every_buffer_it_spans() {
        let (mut ring, _) = published_ring(BufGroup(0), 4);
        let mut rb = RecvBuffers::new(4, 10, RecvMode::Bundle);
        let c = RecvCompletion {
            first: BufId(0),
            bytes: 25,
            more: true,
            buf_more: false,
        };
        rb.return_unconsumed(&mut ring, c).unwrap();
        assert_eq!((ring.in_kernel(), ring.returning()), (1, 3));
        // A completion naming a buffer the kernel no longer has changes nothing.
        assert!(rb.return_unconsumed(&mut ring, c).is_err());
        assert_eq!((ring.in_kernel(), ring.returning()), (1, 3));
        let mut pieces = Vec::new();
        let c = RecvCompletion {
            first: BufId(3),
            bytes: 5,
            more: false,
            buf_more: false,
        };
        assert_eq!(rb.on_recv(&mut ring, c, |p| pieces.push(p)), Ok(1));
        assert_eq!(
            pieces,
            [RecvPiece {
                buf: BufId(3),
                offset: 0,
                len: 5,
                more: false
            }]
        );
    }

    /// One step of the receive model below.
    #[derive(Clone, Copy, Debug)]
    enum RecvStep {
        /// A completion of up to `len` bytes (0: an end of stream naming a buffer);
        /// `consume` hands it to a connection, else it is stale and given back.
        Recv { len: u32, more: bool, consume: bool },
        /// The `i`-th piece held is recycled.
        Recycle { i: usize },
        /// Recycled buffers are published.
        Publish,
    }

    fn recv_step() -> impl Strategy<Value = RecvStep> {
        prop_oneof![
            4 => (0u32..200, any::<bool>(), proptest::bool::weighted(0.8))
                .prop_map(|(len, more, consume)| RecvStep::Recv { len, more, consume }),
            3 => (0usize..64).prop_map(|i| RecvStep::Recycle { i }),
            2 => Just(RecvStep::Publish),
        ]
    }

    fn recv_mode() -> impl Strategy<Value = RecvMode> {
        prop_oneof![
            Just(RecvMode::Whole),
            Just(RecvMode::Bundle),
            Just(RecvMode::Incremental)
        ]
    }

    proptest! {
        /// Receive completions in every mode against a model kernel that consumes the ring in
        /// order: each piece names exactly the buffer, offset and length the model filled, in
        /// order, with only a bundle's last piece free to end the multishot; stale completions
        /// and recycled pieces give their buffers back only once the kernel has finished with
        /// them and no piece is out; in the end every buffer is the kernel's again, once.
        #[test]
        fn receive_pieces_match_the_kernel_and_every_buffer_comes_back(
            mode in recv_mode(),
            log2_entries in 0u32..4,
            steps in proptest::collection::vec(recv_step(), 0..300),
        ) {
            const SIZE: u32 = 64;
            let entries = 1u16 << log2_entries;
            let (mut ring, mut kernel) = published_ring(BufGroup(0), entries);
            let mut rb = RecvBuffers::new(entries, SIZE, mode);
            let mut head_used = 0u32;
            let mut held: Vec<RecvPiece> = Vec::new();
            for step in steps {
                match step {
                    RecvStep::Recv { len, more, consume } if !kernel.is_empty() => {
                        // What the model kernel fills, and what the pieces must say.
                        let mut want: Vec<RecvPiece> = Vec::new();
                        let first = kernel[0];
                        let (bytes, buf_more) = match mode {
                            RecvMode::Whole => {
                                kernel.pop_front();
                                let bytes = len.min(SIZE);
                                want.push(RecvPiece { buf: first, offset: 0, len: bytes, more });
                                (bytes, false)
                            }
                            RecvMode::Bundle => {
                                let count = len.div_ceil(SIZE).max(1).min(kernel.len() as u32);
                                let bytes = len.min(count * SIZE);
                                let mut left = bytes;
                                for i in 0..count {
                                    let buf = kernel.pop_front().unwrap();
                                    let this = left.min(SIZE);
                                    left -= this;
                                    let more = more || i + 1 < count;
                                    want.push(RecvPiece { buf, offset: 0, len: this, more });
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
                                want.push(RecvPiece { buf: first, offset, len: bytes, more });
                                (bytes, buf_more)
                            }
                        };
                        let c = RecvCompletion { first, bytes, more, buf_more };
                        if consume && bytes > 0 {
                            let mut got = Vec::new();
                            let n = rb.on_recv(&mut ring, c, |p| got.push(p)).unwrap();
                            prop_assert_eq!(usize::from(n), got.len());
                            prop_assert_eq!(&got, &want);
                            for p in &got {
                                prop_assert!(rb.holds(p.buf));
                            }
                            held.extend(got);
                        } else {
                            if bytes == 0 {
                                let refused = rb.on_recv(&mut ring, c, |_| panic!("no piece"));
                                prop_assert_eq!(refused, Err(RecvError::Empty));
                            }
                            // Stale, or an end of stream that names a buffer.
                            rb.return_unconsumed(&mut ring, c).unwrap();
                        }
                    }
                    RecvStep::Recycle { i } if !held.is_empty() => {
                        let p = held.swap_remove(i % held.len());
                        rb.recycle(&mut ring, p.buf).unwrap();
                        let in_use = held.iter().any(|h| h.buf == p.buf);
                        let filling = mode == RecvMode::Incremental
                            && kernel.front() == Some(&p.buf);
                        prop_assert_eq!(rb.holds(p.buf), in_use);
                        if in_use || filling {
                            prop_assert_ne!(ring.state(p.buf), Some(BufState::Returning));
                        } else {
                            prop_assert_eq!(ring.state(p.buf), Some(BufState::Returning));
                        }
                    }
                    RecvStep::Publish => {
                        ring.take_returns(|_, id| kernel.push_back(id));
                    }
                    _ => {}
                }
                // Every buffer in exactly one place: the kernel's, returning, or held.
                let mut app: Vec<BufId> = held.iter().map(|p| p.buf)
                    .filter(|b| !kernel.contains(b)).collect();
                app.sort_unstable();
                app.dedup();
                prop_assert_eq!(ring.in_kernel(), kernel.len());
                prop_assert_eq!(ring.in_kernel() + ring.returning() + app.len(), usize::from(entries));
            }
            for p in held.drain(..) {
                rb.recycle(&mut ring, p.buf).unwrap();
            }
            prop_assert_eq!(rb.recycle(&mut ring, BufId(0)), Err(RecvError::NothingHeld(BufId(0))));
            ring.take_returns(|_, id| kernel.push_back(id));
            let mut ids: Vec<u16> = kernel.iter().map(|b| b.0).collect();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), usize::from(entries), "a buffer lost or doubled");
        }
    }
}
