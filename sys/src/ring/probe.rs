//! What the kernel can do, as the ring found out: cancel flags, SKIP_SUCCESS for the ring's
//! own SQEs, SEND_ZC usage reports, the minimum wait.

use ringwork_core::token::UserData;
use rustix::io::Errno;
use rustix::io_uring::IoringFeatureFlags;

use crate::error::Result;
use crate::sqe::Sqe;

use super::Ring;

/// IORING_FEAT_MIN_TIMEOUT (Linux 6.12): `io_uring_getevents_arg.min_wait_usec` is honoured.
/// Value from include/uapi/linux/io_uring.h (`#define IORING_FEAT_MIN_TIMEOUT (1U << 15)`);
/// rustix 1.1 has no constant for it.
pub const IORING_FEAT_MIN_TIMEOUT: IoringFeatureFlags =
    IoringFeatureFlags::from_bits_retain(1 << 15);

impl Ring {
    /// True when IORING_OP_ASYNC_CANCEL takes IORING_ASYNC_CANCEL_FD | _ALL (Linux 5.19), so
    /// that [`Sqe::cancel_fd`] cancels every request on a plain descriptor. Without it that
    /// SQE fails (EINVAL) and cancels nothing: cancel each request by its `user_data`
    /// ([`Sqe::cancel`]) instead. A registered-file target needs more:
    /// [`Ring::can_cancel_fd_fixed`].
    pub fn can_cancel_fd(&self) -> bool {
        self.cancel_fd
    }

    /// True when [`Sqe::cancel_fd`] also takes a registered-file target
    /// (IORING_ASYNC_CANCEL_FD_FIXED, Linux 6.0).
    pub fn can_cancel_fd_fixed(&self) -> bool {
        self.cancel_fd_fixed
    }

    /// True when the ring's IORING_OP_PROVIDE_BUFFERS SQEs carry IOSQE_CQE_SKIP_SUCCESS
    /// (IORING_FEAT_CQE_SKIP, Linux 5.17) and so complete silently. Without it their success
    /// CQEs come back with [`PROVIDE_BUFFERS_USER_DATA`](crate::PROVIDE_BUFFERS_USER_DATA) and the ring consumes them itself;
    /// either way, a caller sees that `user_data` only on failure.
    pub fn skips_provide_success(&self) -> bool {
        self.provide_skips_success
    }

    /// True when SEND_ZC accepts IORING_SEND_ZC_REPORT_USAGE (Linux 6.2; SEND_ZC itself is
    /// 6.0, and the opcode probe cannot tell the two apart). Asks the kernel: a SEND_ZC with the
    /// flag to fd -1 fails in its preparation with EINVAL when the flag is unknown, and only
    /// later, at issue, with EBADF when it is known. Submits what is queued; completions of
    /// other requests met while waiting are kept for [`Ring::completions`].
    pub fn send_zc_reports_usage(&mut self) -> Result<bool> {
        const PROBE: UserData = UserData(u64::MAX);
        let sqe = Sqe::send_zc(crate::sqe::Target::Fd(-1), core::ptr::null(), 0, true, None)
            .user_data(PROBE);
        // SAFETY: zero bytes from a null pointer to no descriptor: the SQE names no memory.
        unsafe { self.push_or_submit_impl(&sqe)? };
        let mut others = Vec::new();
        let mut res = None;
        // A failure after preparation can still post a notification (the result then carries
        // F_MORE): wait for it too, so that nothing of the probe reaches the caller.
        let (mut more, mut notified) = (false, false);
        while res.is_none() || (more && !notified) {
            self.submit_and_wait(1)?;
            for cqe in self.completions() {
                if cqe.user_data() != PROBE {
                    others.push(cqe);
                } else if cqe.is_notification() {
                    notified = true;
                } else {
                    res = Some(cqe.res());
                    more = cqe.more();
                }
            }
        }
        // Served before anything still in the CQ, in the order they were posted.
        for cqe in others.into_iter().rev() {
            self.stash.push_front(cqe);
            self.stats.completions -= 1;
        }
        Ok(res != Some(-Errno::INVAL.raw_os_error()))
    }

    /// True when the kernel honours a minimum wait ([`Ring::submit_and_wait_min`]).
    pub fn has_min_timeout(&self) -> bool {
        self.features().contains(IORING_FEAT_MIN_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use crate::ring::{LegacyFeatures, RingParams};

    #[test]
    fn legacy_features_turn_the_gated_paths_off() {
        let ring = RingParams::new(4).build().unwrap();
        assert!(
            ring.skips_provide_success(),
            "IORING_FEAT_CQE_SKIP is Linux 5.17"
        );
        assert!(ring.can_cancel_fd(), "IORING_ASYNC_CANCEL_FD is Linux 5.19");
        let legacy = LegacyFeatures {
            no_cqe_skip: true,
            no_cancel_fd: true,
        };
        let ring = RingParams::new(4).legacy_features(legacy).build().unwrap();
        assert!(!ring.skips_provide_success());
        assert!(!ring.can_cancel_fd());
        assert!(!ring.can_cancel_fd_fixed());
    }
}
