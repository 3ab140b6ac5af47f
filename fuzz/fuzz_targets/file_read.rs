//! Arbitrary file-read requests and read results: chunks delivered in order tile the wanted
//! range with no gap or overlap, every issued read is aligned when alignment is asked for,
//! and the machine never panics.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringwork_core::errno::RawErrno;
use ringwork_core::file::{Alignment, FileRead, ReadOutcome};

#[derive(Arbitrary, Debug)]
struct Input {
    start: u32,
    len: u32,
    chunk_kib: u8,
    align_log2: Option<u8>,
    results: Vec<(bool, u32, u8)>,
}

fuzz_target!(|input: Input| {
    let chunk = (u32::from(input.chunk_kib) + 1) * 4096;
    let align = input.align_log2.map(|l| {
        let a = 1u32 << (9 + u32::from(l % 4)); // 512 .. 4096
        Alignment { mem: a, offset: a }
    });
    let start = u64::from(input.start);
    let len = u64::from(input.len % (1 << 22));
    let mut fr = FileRead::new(start, len, chunk, align);
    let mut next_expected = start;
    for (ok, n, errno) in input.results.into_iter().take(4096) {
        let Some(req) = fr.next_read() else { break };
        if let Some(a) = align {
            assert_eq!(req.offset % u64::from(a.offset), 0);
            assert_eq!(req.len % a.offset, 0);
        }
        assert!(req.len <= fr.buffer_len());
        let res = if ok {
            Ok(n % (req.len + 1))
        } else {
            Err(RawErrno(i32::from(errno)))
        };
        match fr.on_read(res) {
            ReadOutcome::Chunk(c) => {
                assert_eq!(c.file_offset, next_expected, "gap or overlap");
                assert!(c.buf_start + c.len <= fr.buffer_len());
                next_expected += u64::from(c.len);
                assert!(next_expected <= start + len);
                if c.last {
                    assert_eq!(next_expected, start + len);
                }
            }
            ReadOutcome::Resubmit => {}
            ReadOutcome::Failed(_) => break,
        }
    }
    assert!(fr.delivered() <= len);
});
