//! IORING_OP_SPLICE and IORING_OP_TEE against the real kernel: a file reaches a socket
//! byte-exact through a pipe, as one linked splice(file → pipe) → splice(pipe → socket)
//! pair per chunk, with plain and with registered descriptors; a short splice breaks the
//! link, and what it moved is still in the pipe to send; tee copies without consuming.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use ringwork_core::errno::RawErrno;
use ringwork_core::token::UserData;
use ringwork_sys::{Ring, RingParams, SafeSqe, Target};
use rustix::pipe::{fcntl_setpipe_size, pipe, SpliceFlags};

mod common;
use common::{pattern, read_to_end_thread, tcp_pair, wait_cqes, TempFile};

const CHUNK: u32 = 64 * 1024;

fn ring() -> Ring {
    RingParams::new(8).build().unwrap()
}

/// Sends `len` bytes of `file` (whose input end is `file_in`) to `sock` through the pipe
/// (`pipe_r`, `pipe_w`), one linked pair of splices per chunk; asserts each moved it all.
fn splice_file(
    ring: &mut Ring,
    file_in: Target,
    len: u64,
    (pipe_r, pipe_w): (Target, Target),
    sock: Target,
) {
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(u64::from(CHUNK)) as u32;
        let into_pipe = SafeSqe::splice(file_in, Some(off), pipe_w, None, n, SpliceFlags::MOVE)
            .user_data(UserData(1));
        let out_of_pipe =
            SafeSqe::splice(pipe_r, None, sock, None, n, SpliceFlags::MOVE).user_data(UserData(2));
        ring.push_safe_chain(vec![into_pipe, out_of_pipe], false)
            .unwrap();
        let mut got: Vec<_> = wait_cqes(ring, 2)
            .iter()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        got.sort_by_key(|(ud, _)| ud.0);
        assert_eq!(
            got,
            vec![(UserData(1), Ok(n)), (UserData(2), Ok(n))],
            "chunk at {off}"
        );
        off += u64::from(n);
    }
}

#[test]
fn a_file_reaches_a_socket_through_a_pipe_byte_exact() {
    // Not a multiple of the chunk: the last pair moves a short chunk on purpose.
    let len = (1 << 20) + 12_345;
    let file = TempFile::with_pattern("splice-plain", len);
    let (client, server) = tcp_pair();
    let reader = read_to_end_thread(client);
    let (pr, pw) = pipe().unwrap();
    assert!(fcntl_setpipe_size(&pw, CHUNK as usize).unwrap() >= CHUNK as usize);

    let mut ring = ring();
    splice_file(
        &mut ring,
        Target::Fd(file.file.as_raw_fd()),
        len as u64,
        (Target::Fd(pr.as_raw_fd()), Target::Fd(pw.as_raw_fd())),
        Target::Fd(server.as_raw_fd()),
    );
    drop(server);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), len);
    assert!(got == pattern(len), "the bytes differ from the file's");
}

#[test]
fn registered_descriptors_splice_the_same_bytes() {
    let len = 3 * CHUNK as usize + 100;
    let file = TempFile::with_pattern("splice-fixed", len);
    let (client, server) = tcp_pair();
    let reader = read_to_end_thread(client);
    let (pr, pw) = pipe().unwrap();
    fcntl_setpipe_size(&pw, CHUNK as usize).unwrap();

    let mut ring = ring();
    ring.register_files_sparse(4).unwrap();
    ring.update_files(
        0,
        &[
            file.file.as_raw_fd(),
            pr.as_raw_fd(),
            pw.as_raw_fd(),
            server.as_raw_fd(),
        ],
    )
    .unwrap();
    // The table holds its own references: close ours, so only the slots can be meant.
    drop((pr, pw));
    // The input ends are fixed through SPLICE_F_FD_IN_FIXED, the outputs through
    // IOSQE_FIXED_FILE: both kinds are exercised.
    splice_file(
        &mut ring,
        Target::Fixed(0),
        len as u64,
        (Target::Fixed(1), Target::Fixed(2)),
        Target::Fixed(3),
    );
    drop(server);
    // The table still holds the socket: close its slot too, or no FIN is sent.
    ring.update_files(3, &[-1]).unwrap();
    let got = reader.join().unwrap();
    assert_eq!(got.len(), len);
    assert!(got == pattern(len), "the bytes differ from the file's");
}

#[test]
fn a_short_splice_breaks_the_link_and_leaves_its_bytes_in_the_pipe() {
    // 1000 bytes of file, asked for a whole chunk: the first splice moves 1000 (EOF).
    let file = TempFile::with_pattern("splice-short", 1000);
    let (client, server) = tcp_pair();
    let reader = read_to_end_thread(client);
    let (pr, pw) = pipe().unwrap();
    let (pipe_r, pipe_w) = (Target::Fd(pr.as_raw_fd()), Target::Fd(pw.as_raw_fd()));
    let sock = Target::Fd(server.as_raw_fd());
    let mut ring = ring();
    let chain = vec![
        SafeSqe::splice(
            Target::Fd(file.file.as_raw_fd()),
            Some(0),
            pipe_w,
            None,
            CHUNK,
            SpliceFlags::empty(),
        )
        .user_data(UserData(1)),
        SafeSqe::splice(pipe_r, None, sock, None, CHUNK, SpliceFlags::empty())
            .user_data(UserData(2)),
    ];
    ring.push_safe_chain(chain, false).unwrap();
    let mut got: Vec<_> = wait_cqes(&mut ring, 2)
        .iter()
        .map(|c| (c.user_data(), c.result()))
        .collect();
    got.sort_by_key(|(ud, _)| ud.0);
    assert_eq!(
        got,
        vec![
            (UserData(1), Ok(1000)),
            (UserData(2), Err(RawErrno::CANCELED))
        ],
        "a short splice fails its link like a short read"
    );
    // The 1000 bytes wait in the pipe; sending exactly them finishes the job.
    ring.push_safe(
        SafeSqe::splice(pipe_r, None, sock, None, 1000, SpliceFlags::empty())
            .user_data(UserData(3)),
    )
    .unwrap();
    let c = &wait_cqes(&mut ring, 1)[0];
    assert_eq!((c.user_data(), c.result()), (UserData(3), Ok(1000)));
    drop(server);
    assert!(reader.join().unwrap() == pattern(1000));
}

#[test]
fn tee_copies_a_pipe_without_consuming_it() {
    let (ar, aw) = pipe().unwrap();
    let (br, bw) = pipe().unwrap();
    let msg = b"tee'd, not moved";
    let mut aw = std::fs::File::from(aw);
    aw.write_all(msg).unwrap();
    let mut ring = ring();
    ring.push_safe(
        SafeSqe::tee(
            Target::Fd(ar.as_raw_fd()),
            Target::Fd(bw.as_raw_fd()),
            msg.len() as u32,
            SpliceFlags::empty(),
        )
        .user_data(UserData(9)),
    )
    .unwrap();
    let c = &wait_cqes(&mut ring, 1)[0];
    assert_eq!(c.result(), Ok(msg.len() as u32));
    let read_all = |fd: std::os::fd::OwnedFd| {
        let mut buf = vec![0; msg.len()];
        std::fs::File::from(fd).read_exact(&mut buf).unwrap();
        buf
    };
    assert_eq!(read_all(br), msg, "the copy");
    assert_eq!(read_all(ar), msg, "the original, still there");
    drop(bw);
}
