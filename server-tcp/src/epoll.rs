pub fn run(
    _: crate::WorkerConfig,
    _: rustix::fd::OwnedFd,
    _: rustix::fd::OwnedFd,
    _: &crate::Shared,
) -> ringwork_sys::Result<crate::WorkerStats> {
    todo!()
}
