//! ringwork-sys (being written)
