//! What `ringwork-bench` and the end-to-end tests (`ringwork-e2e`) both do to a server
//! process, written once: start it and wait for its `listening on` line ([`server`]), read
//! its CPU time and memory from /proc ([`proc`]), and pin it or the load generator to CPUs
//! ([`pin`]).
//!
//! It returns errors rather than panicking (a benchmark reports them and goes on); the
//! end-to-end tests' library turns them into panics with the test's context. It holds no
//! policy: which CPU a server gets, what a leaked descriptor is, and what a test asserts stay
//! with the caller.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pin;
pub mod proc;
pub mod server;

pub use server::{Server, StderrLog};

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit (thousands of client
/// connections need it); returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_nofile_limit_rises_to_the_hard_limit() {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        assert_eq!(Some(super::raise_nofile_limit()), hard.or(Some(u64::MAX)));
    }
}
