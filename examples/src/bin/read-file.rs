//! Reads a file with io_uring, several reads in flight, and prints its size and a checksum.
//!
//! `cargo run -p ringwork-examples --bin read-file -- PATH`
//!
//! What it shows: a ring, safe submission ([`SafeSqe::read`]: the buffer travels with the
//! read and comes back with its completion, so no `unsafe` is needed), explicit offsets (never
//! -1, which would move the shared file position), short reads resubmitted for the rest, and
//! `user_data` to tell the reads apart.
#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;
use std::process::ExitCode;

use ringwork_core::token::UserData;
use ringwork_sys::{RingParams, SafeSqe, Target};

/// Bytes per read, and reads kept in flight.
const CHUNK: usize = 64 * 1024;
const DEPTH: u64 = 4;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: read-file PATH");
        return ExitCode::FAILURE;
    };
    match run(&path) {
        Ok((len, sum)) => {
            println!("{len} bytes, fnv1a64 {sum:016x}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("read-file: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::ffi::OsStr) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let target = Target::Fd(file.as_raw_fd());
    let mut ring = RingParams::new(8).build()?;
    // Chunk i's bytes land in `data[i]`; the checksum runs in file order at the end.
    let chunks = len.div_ceil(CHUNK as u64);
    let mut data: Vec<Vec<u8>> = vec![Vec::new(); chunks as usize];
    // A read of chunk i carries user_data i; `next` is the next chunk to start.
    let mut next = 0;
    let mut in_flight = 0;
    while next < chunks.min(DEPTH) {
        ring.push_safe(read(target, next, 0, len))?;
        next += 1;
        in_flight += 1;
    }
    while in_flight > 0 {
        ring.submit_and_wait(1)?;
        let done: Vec<_> = ring.completions().collect();
        for cqe in done {
            let chunk = cqe.user_data().0;
            let buf = ring
                .take_bytes(cqe.user_data())
                .expect("a read's buffer comes back");
            let n = cqe.result().map_err(|e| format!("read: {e}"))? as usize;
            let have = data[chunk as usize].len() + n;
            data[chunk as usize].extend_from_slice(&buf[..n]);
            let want = (len - chunk * CHUNK as u64).min(CHUNK as u64) as usize;
            if n == 0 && have < want {
                return Err("the file shrank while being read".into());
            }
            if have < want {
                // A short read: ask again for the rest, at its own offset.
                ring.push_safe(read(target, chunk, have, len))?;
            } else if next < chunks {
                in_flight -= 1;
                ring.push_safe(read(target, next, 0, len))?;
                next += 1;
                in_flight += 1;
            } else {
                in_flight -= 1;
            }
        }
    }
    let sum = data
        .iter()
        .flatten()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    Ok((len, sum))
}

/// A read of chunk `chunk` from `done` bytes into it, into a fresh buffer.
fn read(target: Target, chunk: u64, done: usize, len: u64) -> SafeSqe {
    let offset = chunk * CHUNK as u64 + done as u64;
    let want = (len - offset).min((CHUNK - done) as u64) as usize;
    SafeSqe::read(target, vec![0; want], want, offset).user_data(UserData(chunk))
}
