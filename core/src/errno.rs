//! Completion results as errno values, without depending on rustix.
//!
//! A CQE's `res` is either a non-negative count or `-errno`. core only needs to name the
//! handful of errnos whose meaning drives protocol decisions, so it keeps its own newtype
//! rather than pulling in the syscall layer.

use core::fmt;

/// A positive errno value taken from a negative CQE `res` (Linux numbering, x86-64/generic).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawErrno(pub i32);

impl RawErrno {
    /// `EPERM`: operation not permitted.
    pub const PERM: Self = Self(1);
    /// `ENOENT`: no such file or directory.
    pub const NOENT: Self = Self(2);
    /// `EINTR`: interrupted.
    pub const INTR: Self = Self(4);
    /// `EIO`: I/O error.
    pub const IO: Self = Self(5);
    /// `EBADF`: bad file descriptor.
    pub const BADF: Self = Self(9);
    /// `EAGAIN`: try again.
    pub const AGAIN: Self = Self(11);
    /// `ENOMEM`: out of memory.
    pub const NOMEM: Self = Self(12);
    /// `EACCES`: permission denied.
    pub const ACCES: Self = Self(13);
    /// `EFAULT`: bad address.
    pub const FAULT: Self = Self(14);
    /// `EBUSY`: resource busy (io_uring_enter with a backed-up CQ).
    pub const BUSY: Self = Self(16);
    /// `EEXIST`: file exists.
    pub const EXIST: Self = Self(17);
    /// `EXDEV`: cross-device link (openat2 RESOLVE_BENEATH escape attempts).
    pub const XDEV: Self = Self(18);
    /// `ENOTDIR`: not a directory.
    pub const NOTDIR: Self = Self(20);
    /// `EISDIR`: is a directory.
    pub const ISDIR: Self = Self(21);
    /// `EINVAL`: invalid argument.
    pub const INVAL: Self = Self(22);
    /// `ENFILE`: too many open files in the system.
    pub const NFILE: Self = Self(23);
    /// `EMFILE`: too many open files.
    pub const MFILE: Self = Self(24);
    /// `EPIPE`: broken pipe.
    pub const PIPE: Self = Self(32);
    /// `ENAMETOOLONG`: file name too long.
    pub const NAMETOOLONG: Self = Self(36);
    /// `ELOOP`: too many symbolic links (RESOLVE_NO_SYMLINKS and friends).
    pub const LOOP: Self = Self(40);
    /// `ENOBUFS`: no buffer available in a provided buffer ring.
    pub const NOBUFS: Self = Self(105);
    /// `ECONNRESET`: connection reset by peer.
    pub const CONNRESET: Self = Self(104);
    /// `ENOTCONN`: socket not connected.
    pub const NOTCONN: Self = Self(107);
    /// `ETIME`: timer expired (IORING_OP_TIMEOUT).
    pub const TIME: Self = Self(62);
    /// `ENONET`: machine is not on the network.
    pub const NONET: Self = Self(64);
    /// `EPROTO`: protocol error.
    pub const PROTO: Self = Self(71);
    /// `ENOPROTOOPT`: protocol not available.
    pub const NOPROTOOPT: Self = Self(92);
    /// `ENETDOWN`: network is down.
    pub const NETDOWN: Self = Self(100);
    /// `ENETUNREACH`: network is unreachable.
    pub const NETUNREACH: Self = Self(101);
    /// `ECONNABORTED`: software caused connection abort (a queued connection the peer gave
    /// up on).
    pub const CONNABORTED: Self = Self(103);
    /// `ETIMEDOUT`: connection timed out.
    pub const TIMEDOUT: Self = Self(110);
    /// `EHOSTDOWN`: host is down.
    pub const HOSTDOWN: Self = Self(112);
    /// `EHOSTUNREACH`: no route to host.
    pub const HOSTUNREACH: Self = Self(113);
    /// `EALREADY`: cancel target already running.
    pub const ALREADY: Self = Self(114);
    /// `ECANCELED`: operation canceled.
    pub const CANCELED: Self = Self(125);
    /// `EOPNOTSUPP`: operation not supported.
    pub const OPNOTSUPP: Self = Self(95);

    /// Splits a CQE `res` into a count or an errno.
    #[inline]
    pub fn from_res(res: i32) -> Result<u32, RawErrno> {
        if res < 0 {
            Err(RawErrno(res.wrapping_neg()))
        } else {
            Ok(res as u32)
        }
    }

    /// The C name of the errno when it is one core names, else `None`.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::PERM => "EPERM",
            Self::NOENT => "ENOENT",
            Self::INTR => "EINTR",
            Self::IO => "EIO",
            Self::BADF => "EBADF",
            Self::AGAIN => "EAGAIN",
            Self::NOMEM => "ENOMEM",
            Self::ACCES => "EACCES",
            Self::FAULT => "EFAULT",
            Self::BUSY => "EBUSY",
            Self::EXIST => "EEXIST",
            Self::XDEV => "EXDEV",
            Self::NOTDIR => "ENOTDIR",
            Self::ISDIR => "EISDIR",
            Self::INVAL => "EINVAL",
            Self::NFILE => "ENFILE",
            Self::MFILE => "EMFILE",
            Self::PIPE => "EPIPE",
            Self::NAMETOOLONG => "ENAMETOOLONG",
            Self::LOOP => "ELOOP",
            Self::NOBUFS => "ENOBUFS",
            Self::CONNRESET => "ECONNRESET",
            Self::NOTCONN => "ENOTCONN",
            Self::TIME => "ETIME",
            Self::NONET => "ENONET",
            Self::PROTO => "EPROTO",
            Self::NOPROTOOPT => "ENOPROTOOPT",
            Self::NETDOWN => "ENETDOWN",
            Self::NETUNREACH => "ENETUNREACH",
            Self::CONNABORTED => "ECONNABORTED",
            Self::TIMEDOUT => "ETIMEDOUT",
            Self::HOSTDOWN => "EHOSTDOWN",
            Self::HOSTUNREACH => "EHOSTUNREACH",
            Self::ALREADY => "EALREADY",
            Self::CANCELED => "ECANCELED",
            Self::OPNOTSUPP => "EOPNOTSUPP",
            _ => return None,
        })
    }
}

impl fmt::Debug for RawErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "errno {}", self.0),
        }
    }
}

impl fmt::Display for RawErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_res_splits_counts_and_errnos() {
        assert_eq!(RawErrno::from_res(0), Ok(0));
        assert_eq!(RawErrno::from_res(4096), Ok(4096));
        assert_eq!(RawErrno::from_res(-105), Err(RawErrno::NOBUFS));
        assert_eq!(RawErrno::from_res(-125), Err(RawErrno::CANCELED));
        assert_eq!(RawErrno::from_res(i32::MIN), Err(RawErrno(i32::MIN)));
    }

    #[test]
    fn names_print() {
        extern crate alloc;
        use alloc::format;
        assert_eq!(format!("{}", RawErrno::AGAIN), "EAGAIN");
        assert_eq!(format!("{:?}", RawErrno(999)), "errno 999");
    }
}
