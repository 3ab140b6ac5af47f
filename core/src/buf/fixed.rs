//! [`FixedPool`]: the registered-buffer pool's ownership bookkeeping.

use alloc::vec::Vec;

use super::{rearm_threshold, BufError, BufId, BufState, Lease, PoolId};
use crate::token::UserData;

/// The registered-buffer pool (IORING_REGISTER_BUFFERS): which buffer indices are free, leased,
/// or named by an in-flight READ_FIXED / WRITE_FIXED / SEND_ZC.
///
/// Not `Clone`: a copy would issue leases the original accepts.
#[derive(Debug)]
pub struct FixedPool {
    id: PoolId,
    states: Vec<BufState>,
    free: Vec<BufId>,
}

impl FixedPool {
    /// A pool of `count` buffers, all free.
    ///
    /// # Panics
    /// When `count` exceeds 65,536 (buffer indices are u16).
    pub fn new(count: usize) -> Self {
        assert!(
            count <= 1 << 16,
            "a fixed-buffer pool holds at most 65536 buffers"
        );
        Self {
            id: PoolId::fresh(),
            states: alloc::vec![BufState::Free; count],
            // Popped from the back: hand out low ids first.
            free: (0..count as u32).rev().map(|i| BufId(i as u16)).collect(),
        }
    }

    /// Number of buffers in the pool.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// This pool's identity, which its leases carry.
    pub fn id(&self) -> PoolId {
        self.id
    }

    /// True when `lease` was issued by this pool.
    pub fn owns(&self, lease: &Lease) -> bool {
        lease.pool == self.id
    }

    fn check(&self, lease: &Lease) {
        assert!(self.owns(lease), "a lease of another buffer pool");
    }

    /// True for an empty pool.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Number of free buffers.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// The state of buffer `id`.
    pub fn state(&self, id: BufId) -> Option<BufState> {
        self.states.get(id.0 as usize).copied()
    }

    /// Takes a free buffer, or `None` when all are in use.
    pub fn acquire(&mut self) -> Option<Lease> {
        let id = self.free.pop()?;
        self.states[id.0 as usize] = BufState::App;
        Some(Lease { id, pool: self.id })
    }

    /// Hands the buffer to the kernel for the operation `ud`; the lease is gone until
    /// [`FixedPool::complete`] returns it.
    pub fn submit(&mut self, lease: Lease, ud: UserData) -> BufId {
        self.check(&lease);
        let id = lease.id;
        assert_eq!(self.states[id.0 as usize], BufState::App);
        self.states[id.0 as usize] = BufState::InFlight(ud);
        id
    }

    /// The CQE of operation `ud` on buffer `id` arrived: the lease comes back.
    pub fn complete(&mut self, id: BufId, ud: UserData) -> Result<Lease, BufError> {
        let state = self.state(id).ok_or(BufError::OutOfRange(id))?;
        match state {
            BufState::InFlight(owner) if owner == ud => {
                self.states[id.0 as usize] = BufState::App;
                Ok(Lease { id, pool: self.id })
            }
            _ => Err(BufError::NotInFlight { id, state }),
        }
    }

    /// A SEND_ZC result CQE (with IORING_CQE_F_MORE) arrived: the kernel keeps the buffer until
    /// its notification, so no lease comes back yet.
    pub fn complete_awaiting_notif(&mut self, id: BufId, ud: UserData) -> Result<(), BufError> {
        let state = self.state(id).ok_or(BufError::OutOfRange(id))?;
        match state {
            BufState::InFlight(owner) if owner == ud => {
                self.states[id.0 as usize] = BufState::AwaitingNotif(ud);
                Ok(())
            }
            _ => Err(BufError::NotInFlight { id, state }),
        }
    }

    /// The SEND_ZC notification CQE (IORING_CQE_F_NOTIF) for `ud` arrived: the lease comes back.
    pub fn notified(&mut self, id: BufId, ud: UserData) -> Result<Lease, BufError> {
        let state = self.state(id).ok_or(BufError::OutOfRange(id))?;
        match state {
            BufState::AwaitingNotif(owner) if owner == ud => {
                self.states[id.0 as usize] = BufState::App;
                Ok(Lease { id, pool: self.id })
            }
            _ => Err(BufError::NotInFlight { id, state }),
        }
    }

    /// True when a receive that found the pool empty may try again: at least a quarter of
    /// the buffers are free (every buffer, for pools smaller than four). The same policy as
    /// [`ProvidedRing::can_rearm`](super::ProvidedRing::can_rearm), for drivers that receive into a pool (epoll).
    pub fn can_rearm(&self) -> bool {
        self.free.len() >= rearm_threshold(self.states.len())
    }

    /// The free buffers but the `keep` most recently freed, least recently freed first: the
    /// ones a LIFO pool will hand out last (what a driver may give back to the system).
    pub fn idle(&self, keep: usize) -> impl Iterator<Item = BufId> + '_ {
        let n = self.free.len().saturating_sub(keep);
        self.free[..n].iter().copied()
    }

    /// Gives a buffer back to the free list.
    pub fn release(&mut self, lease: Lease) {
        self.check(&lease);
        let id = lease.id;
        assert_eq!(self.states[id.0 as usize], BufState::App);
        self.states[id.0 as usize] = BufState::Free;
        self.free.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::UserData;

    #[test]
    fn idle_buffers_are_the_least_recently_freed() {
        let mut p = FixedPool::new(4);
        let a = p.acquire().unwrap();
        let b = p.acquire().unwrap();
        let (ia, ib) = (a.id(), b.id());
        p.release(b);
        p.release(a);
        // Free, bottom to top: the two never used, then b, then a (next out).
        let idle: Vec<BufId> = p.idle(1).collect();
        assert_eq!(idle.len(), 3);
        assert_eq!(idle[2], ib);
        assert!(!idle.contains(&ia));
        assert_eq!(p.idle(4).count(), 0);
        assert_eq!(
            p.acquire().unwrap().id(),
            ia,
            "LIFO: the most recently freed first"
        );
    }
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    #[should_panic(expected = "a lease of another buffer pool")]
    fn fixed_pool_refuses_a_foreign_lease() {
        let mut a = FixedPool::new(2);
        let mut b = FixedPool::new(2);
        let lease = a.acquire().unwrap();
        let _in_flight = b.acquire().unwrap();
        b.release(lease);
    }

    #[test]
    fn leases_name_their_pool() {
        let mut a = FixedPool::new(1);
        let b = FixedPool::new(1);
        let lease = a.acquire().unwrap();
        assert!(a.owns(&lease) && !b.owns(&lease));
        assert_ne!(a.id(), b.id());
        a.release(lease);
    }

    #[test]
    fn fixed_pool_lease_cycle() {
        let mut pool = FixedPool::new(2);
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert!(pool.acquire().is_none(), "both leased");
        let (ida, idb) = (a.id(), b.id());
        assert_ne!(ida, idb);
        let ud = UserData(7);
        pool.submit(a, ud);
        // Wrong user_data: the completion of some other op cannot free this buffer.
        assert!(pool.complete(ida, UserData(8)).is_err());
        let a = pool.complete(ida, ud).unwrap();
        // A second completion for the same op is refused.
        assert!(pool.complete(ida, ud).is_err());
        pool.release(a);
        pool.release(b);
        assert_eq!(pool.available(), 2);
        assert!(pool.complete(BufId(9), ud).is_err());
        let _ = idb;
    }

    #[test]
    fn send_zc_buffer_waits_for_notification() {
        let mut pool = FixedPool::new(1);
        let l = pool.acquire().unwrap();
        let id = pool.submit(l, UserData(1));
        pool.complete_awaiting_notif(id, UserData(1)).unwrap();
        assert_eq!(pool.state(id), Some(BufState::AwaitingNotif(UserData(1))));
        assert!(
            pool.acquire().is_none(),
            "buffer not free before the notification"
        );
        assert!(pool.complete(id, UserData(1)).is_err());
        let l = pool.notified(id, UserData(1)).unwrap();
        pool.release(l);
        assert_eq!(pool.available(), 1);
    }

    #[test]
    fn fixed_pool_rearms_at_a_quarter_free() {
        let mut pool = FixedPool::new(8);
        let leases: Vec<Lease> = (0..8).map(|_| pool.acquire().unwrap()).collect();
        assert!(!pool.can_rearm());
        let mut leases = leases.into_iter();
        pool.release(leases.next().unwrap());
        assert!(!pool.can_rearm(), "one of eight is below a quarter");
        pool.release(leases.next().unwrap());
        assert!(pool.can_rearm());
        for l in leases {
            pool.release(l);
        }
    }

    #[derive(Debug, Clone)]
    enum PoolOp {
        Acquire,
        Submit(usize),
        Complete(usize),
        CompleteWrongUd(usize),
        Release(usize),
    }

    fn pool_op() -> impl Strategy<Value = PoolOp> {
        prop_oneof![
            Just(PoolOp::Acquire),
            (0usize..8).prop_map(PoolOp::Submit),
            (0usize..8).prop_map(PoolOp::Complete),
            (0usize..8).prop_map(PoolOp::CompleteWrongUd),
            (0usize..8).prop_map(PoolOp::Release),
        ]
    }

    proptest! {
        /// Under any sequence of lease/submit/complete/release, every buffer is in exactly
        /// one place: free list, an app lease, or in flight for exactly one user_data.
        #[test]
        fn fixed_pool_ownership(ops in proptest::collection::vec(pool_op(), 0..200)) {
            let n = 4;
            let mut pool = FixedPool::new(n);
            let mut held: Vec<Lease> = Vec::new();
            let mut inflight: Vec<(BufId, UserData)> = Vec::new();
            let mut next_ud = 1u64;
            for op in ops {
                match op {
                    PoolOp::Acquire => {
                        let had = pool.available();
                        match pool.acquire() {
                            Some(l) => held.push(l),
                            None => prop_assert_eq!(had, 0),
                        }
                    }
                    PoolOp::Submit(i) if !held.is_empty() => {
                        let l = held.swap_remove(i % held.len());
                        let ud = UserData(next_ud);
                        next_ud += 1;
                        let id = pool.submit(l, ud);
                        inflight.push((id, ud));
                    }
                    PoolOp::Complete(i) if !inflight.is_empty() => {
                        let (id, ud) = inflight.swap_remove(i % inflight.len());
                        held.push(pool.complete(id, ud).unwrap());
                    }
                    PoolOp::CompleteWrongUd(i) if !inflight.is_empty() => {
                        let (id, _) = inflight[i % inflight.len()];
                        prop_assert!(pool.complete(id, UserData(0)).is_err());
                    }
                    PoolOp::Release(i) if !held.is_empty() => {
                        pool.release(held.swap_remove(i % held.len()));
                    }
                    _ => {}
                }
                let mut seen = [0u8; 4];
                for l in &held {
                    prop_assert_eq!(pool.state(l.id()), Some(BufState::App));
                    seen[l.id().0 as usize] += 1;
                }
                for (id, ud) in &inflight {
                    prop_assert_eq!(pool.state(*id), Some(BufState::InFlight(*ud)));
                    seen[id.0 as usize] += 1;
                }
                for (id, count) in seen.iter_mut().enumerate() {
                    if pool.state(BufId(id as u16)) == Some(BufState::Free) {
                        *count += 1;
                    }
                }
                prop_assert_eq!(seen, [1u8; 4], "each buffer in exactly one place");
                prop_assert_eq!(pool.available() + held.len() + inflight.len(), n);
            }
        }
    }
}
