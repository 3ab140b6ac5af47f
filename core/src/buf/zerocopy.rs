//! [`ZcTracker`]: SEND_ZC results and notifications for buffers returned by recycling.

use alloc::vec::Vec;
use core::fmt;

use super::BufId;

/// Index of one in-flight SEND_ZC in a [`ZcTracker`]; the driver puts it in the send's
/// `user_data`, so that both of its CQEs (result and notification) name exactly one send even
/// when several sends of one buffer, or of one connection, await notifications at once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ZcSlot(pub u32);

/// Why a [`ZcTracker`] refused a completion: each is a driver or kernel bug.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ZcError {
    /// The slot names no send in flight.
    UnknownSlot(ZcSlot),
    /// A second result CQE for one send.
    DuplicateResult(ZcSlot),
    /// A notification for a send whose result said none would follow, or a second one.
    UnexpectedNotification(ZcSlot),
    /// A buffer id outside the tracker.
    OutOfRange(BufId),
}

impl fmt::Display for ZcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZcError::UnknownSlot(s) => write!(f, "SEND_ZC completion for unknown slot {}", s.0),
            ZcError::DuplicateResult(s) => write!(f, "second SEND_ZC result for slot {}", s.0),
            ZcError::UnexpectedNotification(s) => {
                write!(f, "unexpected SEND_ZC notification for slot {}", s.0)
            }
            ZcError::OutOfRange(id) => write!(f, "buffer id {} is outside the tracker", id.0),
        }
    }
}

/// Where one in-flight SEND_ZC stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ZcPhase {
    /// Submitted; neither CQE seen.
    Submitted,
    /// The result CQE carried IORING_CQE_F_MORE: the notification is still to come.
    AwaitingNotif,
    /// The notification came first (the kernel does not promise the order): only the
    /// result is still to come.
    NotifFirst,
}

#[derive(Clone, Copy, Debug)]
struct ZcSend<T> {
    owner: T,
    buf: BufId,
    phase: ZcPhase,
}

/// What a SEND_ZC's result CQE means for the driver.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ZcResult<T> {
    /// Who sent (for the driver: which connection gets `SendDone`).
    pub owner: T,
    /// The buffer the send named.
    pub buf: BufId,
    /// A deferred recycle that may happen now (the send ended without a notification and it
    /// was the last one holding the buffer).
    pub recycle: Option<BufId>,
}

/// SEND_ZC bookkeeping for buffers that a connection returns by "recycle" (provided-buffer
/// rings), where [`FixedPool`](super::FixedPool)'s `AwaitingNotif` state does not apply: the connection state
/// machine recycles a buffer after its last send's *result*, but with SEND_ZC the kernel may
/// read the buffer until that send's *notification* (PITFALLS.md, "SEND_ZC gives two CQEs, and the
/// buffer is the kernel's until the second"). The driver asks
/// [`ZcTracker::recycle`] instead of recycling, and recycles only what the tracker hands back,
/// now or from a later [`ZcTracker::on_notification`].
///
/// Invariants (proptest below): a buffer is never released for recycling while a notification
/// for a send that named it is outstanding, and every recycle asked for is released exactly
/// once, in whatever order results and notifications arrive.
///
/// `T` is whatever identifies the sender to the driver (a connection token). Capacity is fixed
/// at construction: when every slot is in flight [`ZcTracker::submit`] says so, and the driver
/// can send that one by copy instead.
#[derive(Debug, Clone)]
pub struct ZcTracker<T> {
    sends: Vec<Option<ZcSend<T>>>,
    free: Vec<ZcSlot>,
    /// Per buffer: sends naming it that are not finished (result and, if promised,
    /// notification seen).
    outstanding: Vec<u32>,
    /// Per buffer: the connection recycled it while sends were outstanding.
    recycle_wanted: Vec<bool>,
}

impl<T: Copy> ZcTracker<T> {
    /// A tracker for buffer ids `0..buffers` with room for `max_sends` sends in flight.
    pub fn new(buffers: u16, max_sends: u32) -> Self {
        Self {
            sends: alloc::vec![None; max_sends as usize],
            free: (0..max_sends).rev().map(ZcSlot).collect(),
            outstanding: alloc::vec![0; buffers as usize],
            recycle_wanted: alloc::vec![false; buffers as usize],
        }
    }

    /// Sends not yet finished (the driver must not tear down buffers before this is 0).
    pub fn in_flight(&self) -> usize {
        self.sends.len() - self.free.len()
    }

    /// True when `buf` was recycled by its owner and waits for notifications.
    pub fn is_deferred(&self, buf: BufId) -> bool {
        self.recycle_wanted
            .get(buf.0 as usize)
            .copied()
            .unwrap_or(false)
    }

    /// A SEND_ZC of `buf` by `owner` is about to be submitted: its slot, or `None` when every
    /// slot is in flight (send this one by copy instead).
    pub fn submit(&mut self, owner: T, buf: BufId) -> Result<Option<ZcSlot>, ZcError> {
        let count = self
            .outstanding
            .get_mut(buf.0 as usize)
            .ok_or(ZcError::OutOfRange(buf))?;
        let Some(slot) = self.free.pop() else {
            return Ok(None);
        };
        *count += 1;
        self.sends[slot.0 as usize] = Some(ZcSend {
            owner,
            buf,
            phase: ZcPhase::Submitted,
        });
        Ok(Some(slot))
    }

    /// The result CQE of the send in `slot` arrived; `more` is its IORING_CQE_F_MORE (a
    /// notification follows; without it the send ended, e.g. with an error).
    pub fn on_result(&mut self, slot: ZcSlot, more: bool) -> Result<ZcResult<T>, ZcError> {
        let send = self.send_mut(slot)?;
        let (owner, buf) = (send.owner, send.buf);
        let finished = match (send.phase, more) {
            (ZcPhase::Submitted, true) => {
                send.phase = ZcPhase::AwaitingNotif;
                false
            }
            // No notification promised: done. (A notification that came first with a result
            // that then says "none follows" would be a kernel bug; finish either way.)
            (ZcPhase::Submitted, false) | (ZcPhase::NotifFirst, _) => true,
            (ZcPhase::AwaitingNotif, _) => return Err(ZcError::DuplicateResult(slot)),
        };
        let recycle = if finished { self.finish(slot) } else { None };
        Ok(ZcResult {
            owner,
            buf,
            recycle,
        })
    }

    /// The notification CQE (IORING_CQE_F_NOTIF) of the send in `slot` arrived: the kernel is
    /// done reading its buffer. Returns the buffer when its recycle was deferred and no other
    /// send still holds it: recycle it now.
    pub fn on_notification(&mut self, slot: ZcSlot) -> Result<Option<BufId>, ZcError> {
        let send = self.send_mut(slot)?;
        match send.phase {
            ZcPhase::Submitted => {
                send.phase = ZcPhase::NotifFirst;
                Ok(None)
            }
            ZcPhase::AwaitingNotif => Ok(self.finish(slot)),
            ZcPhase::NotifFirst => Err(ZcError::UnexpectedNotification(slot)),
        }
    }

    /// The owner is done with `buf` (its `Recycle`): true to recycle now, false when sends
    /// still hold it (the tracker hands it back later, exactly once).
    pub fn recycle(&mut self, buf: BufId) -> Result<bool, ZcError> {
        let i = buf.0 as usize;
        let count = *self.outstanding.get(i).ok_or(ZcError::OutOfRange(buf))?;
        if count == 0 {
            return Ok(true);
        }
        debug_assert!(!self.recycle_wanted[i], "buffer {} recycled twice", buf.0);
        self.recycle_wanted[i] = true;
        Ok(false)
    }

    fn send_mut(&mut self, slot: ZcSlot) -> Result<&mut ZcSend<T>, ZcError> {
        self.sends
            .get_mut(slot.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(ZcError::UnknownSlot(slot))
    }

    /// Frees `slot`; returns its buffer when that released a deferred recycle.
    fn finish(&mut self, slot: ZcSlot) -> Option<BufId> {
        let send = self.sends[slot.0 as usize].take()?;
        self.free.push(slot);
        let i = send.buf.0 as usize;
        self.outstanding[i] -= 1;
        if self.outstanding[i] == 0 && self.recycle_wanted[i] {
            self.recycle_wanted[i] = false;
            return Some(send.buf);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn zc_recycle_waits_for_every_notification_of_the_buffer() {
        let mut zc: ZcTracker<u32> = ZcTracker::new(2, 8);
        let b = BufId(1);
        // A short send and its remainder: two sends of one buffer, both awaiting notification.
        let s1 = zc.submit(7, b).unwrap().unwrap();
        let r = zc.on_result(s1, true).unwrap();
        assert_eq!((r.owner, r.buf, r.recycle), (7, b, None));
        let s2 = zc.submit(7, b).unwrap().unwrap();
        assert_ne!(s1, s2);
        assert_eq!(zc.on_result(s2, true).unwrap().recycle, None);
        assert_eq!(
            zc.recycle(b),
            Ok(false),
            "deferred: notifications outstanding"
        );
        assert!(zc.is_deferred(b));
        // Notifications out of order.
        assert_eq!(zc.on_notification(s2), Ok(None), "s1 still holds it");
        assert_eq!(zc.on_notification(s1), Ok(Some(b)));
        assert_eq!(zc.in_flight(), 0);
        assert!(!zc.is_deferred(b));
        assert_eq!(zc.on_notification(s1), Err(ZcError::UnknownSlot(s1)));
        // No sends outstanding: recycle at once.
        assert_eq!(zc.recycle(BufId(0)), Ok(true));
    }

    #[test]
    fn zc_notification_before_result_and_failed_sends() {
        let mut zc: ZcTracker<u32> = ZcTracker::new(1, 2);
        let b = BufId(0);
        let s = zc.submit(1, b).unwrap().unwrap();
        assert_eq!(zc.on_notification(s), Ok(None));
        assert_eq!(
            zc.on_notification(s),
            Err(ZcError::UnexpectedNotification(s))
        );
        assert_eq!(zc.on_result(s, true).unwrap().recycle, None);
        assert_eq!(zc.in_flight(), 0);
        // A failed send (no F_MORE) promises no notification.
        let s = zc.submit(1, b).unwrap().unwrap();
        assert_eq!(zc.on_result(s, false).unwrap().recycle, None);
        assert_eq!(zc.recycle(b), Ok(true));
        // Full: the driver sends by copy.
        let _a = zc.submit(1, b).unwrap().unwrap();
        let _b = zc.submit(1, b).unwrap().unwrap();
        assert_eq!(zc.submit(1, b), Ok(None));
        assert_eq!(zc.submit(1, BufId(5)), Err(ZcError::OutOfRange(BufId(5))));
    }

    #[derive(Debug, Clone, Copy)]
    struct ModelSend {
        slot: ZcSlot,
        buf: usize,
        notifies: bool,
        result_seen: bool,
        notif_seen: bool,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum ModelBuf {
        /// The connection holds it (it may send from it).
        Held,
        /// The connection recycled it; not yet released by the tracker.
        RecycleAsked,
        /// Released: back with the kernel.
        Released,
    }

    proptest! {
        /// Random interleavings of submits, results, notifications (before or after their
        /// result, in any order across sends), recycles and re-selections: a buffer is never
        /// released while a notification for it is outstanding, and every recycle is
        /// released exactly once.
        #[test]
        fn zc_tracker_never_releases_early_and_releases_once(
            ops in proptest::collection::vec((0u8..5, 0usize..16, any::<bool>()), 0..300)
        ) {
            const N: usize = 4;
            let mut zc: ZcTracker<usize> = ZcTracker::new(N as u16, 6);
            let mut bufs = [ModelBuf::Held; N];
            let mut sends: Vec<ModelSend> = Vec::new();
            let mut releases = [0u32; N];
            let mut asks = [0u32; N];
            fn check_release(
                id: BufId,
                bufs: &mut [ModelBuf; N],
                sends: &[ModelSend],
                releases: &mut [u32; N],
            ) -> Result<(), TestCaseError> {
                let b = id.0 as usize;
                prop_assert_eq!(bufs[b], ModelBuf::RecycleAsked, "released without a recycle");
                prop_assert!(
                    !sends.iter().any(|s| s.buf == b && s.notifies && !s.notif_seen),
                    "released before a notification"
                );
                bufs[b] = ModelBuf::Released;
                releases[b] += 1;
                Ok(())
            }
            // The connection sends from a buffer only while no send of it awaits its result
            // (one send in flight per connection, PITFALLS.md, "Short sends happen; overlapping
            // sends reorder"), and recycles only then.
            let result_pending = |sends: &[ModelSend], b: usize| {
                sends.iter().any(|s| s.buf == b && !s.result_seen)
            };
            for (op, i, flag) in ops {
                let b = i % N;
                match op {
                    0 if bufs[b] == ModelBuf::Held && !result_pending(&sends, b) => {
                        if let Some(slot) = zc.submit(b, BufId(b as u16)).unwrap() {
                            prop_assert!(!sends.iter().any(|s| s.slot == slot), "slot reused early");
                            sends.push(ModelSend { slot, buf: b, notifies: flag, result_seen: false, notif_seen: false });
                        } else {
                            prop_assert_eq!(zc.in_flight(), 6);
                        }
                    }
                    1 => {
                        let open: Vec<usize> = (0..sends.len()).filter(|&k| !sends[k].result_seen).collect();
                        if let Some(&k) = open.get(i % open.len().max(1)) {
                            sends[k].result_seen = true;
                            let s = sends[k];
                            let r = zc.on_result(s.slot, s.notifies).unwrap();
                            prop_assert_eq!((r.owner, r.buf), (s.buf, BufId(s.buf as u16)));
                            if let Some(id) = r.recycle {
                                check_release(id, &mut bufs, &sends, &mut releases)?;
                            }
                        }
                    }
                    2 => {
                        let open: Vec<usize> = (0..sends.len()).filter(|&k| sends[k].notifies && !sends[k].notif_seen).collect();
                        if let Some(&k) = open.get(i % open.len().max(1)) {
                            sends[k].notif_seen = true;
                            if let Some(id) = zc.on_notification(sends[k].slot).unwrap() {
                                check_release(id, &mut bufs, &sends, &mut releases)?;
                            }
                        }
                    }
                    3 if bufs[b] == ModelBuf::Held && !result_pending(&sends, b) => {
                        bufs[b] = ModelBuf::RecycleAsked;
                        asks[b] += 1;
                        if zc.recycle(BufId(b as u16)).unwrap() {
                            check_release(BufId(b as u16), &mut bufs, &sends, &mut releases)?;
                        }
                    }
                    // The kernel picks a released buffer for a new receive.
                    4 if bufs[b] == ModelBuf::Released => bufs[b] = ModelBuf::Held,
                    _ => {}
                }
                // Forget finished sends so that slots may be reused.
                sends.retain(|s| !(s.result_seen && (!s.notifies || s.notif_seen)));
                prop_assert_eq!(zc.in_flight(), sends.len());
            }
            // Drain: every result, then every notification.
            for k in 0..sends.len() {
                if !sends[k].result_seen {
                    sends[k].result_seen = true;
                    let s = sends[k];
                    if let Some(id) = zc.on_result(s.slot, s.notifies).unwrap().recycle {
                        check_release(id, &mut bufs, &sends, &mut releases)?;
                    }
                }
            }
            for k in 0..sends.len() {
                if sends[k].notifies && !sends[k].notif_seen {
                    sends[k].notif_seen = true;
                    if let Some(id) = zc.on_notification(sends[k].slot).unwrap() {
                        check_release(id, &mut bufs, &sends, &mut releases)?;
                    }
                }
            }
            prop_assert_eq!(zc.in_flight(), 0);
            prop_assert_eq!(releases, asks, "every recycle released exactly once");
            prop_assert!(!bufs.contains(&ModelBuf::RecycleAsked));
        }
    }
}
