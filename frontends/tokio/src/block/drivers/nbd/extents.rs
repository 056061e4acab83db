//! Block status of an `nbd` node from the server's extents: the runs of
//! `base:allocation` and, where the server offers it,
//! `qemu:allocation-depth`, laid over each other.
//!
//! Without `qemu:allocation-depth` the depth is what QEMU's block layer
//! makes of an nbd node's status: an extent is allocated when it reads as
//! data or as zeroes (`BDRV_BLOCK_DATA` or `BDRV_BLOCK_ZERO`), so depth 1,
//! and only a hole whose contents are not known to be zero is
//! unallocated, depth 0. With it, the server's depths are passed on: the
//! whole upstream chain is below this node, as seen from above.

use blockwire_core::block::Extent;
use blockwire_core::block::contract::{STATE_HOLE, STATE_ZERO};

use crate::block::node::Status;

/// The depth QEMU reports for an nbd node's `base:allocation` flags.
pub fn depth_of(flags: u64) -> u32 {
    if flags & STATE_HOLE != 0 && flags & STATE_ZERO == 0 {
        0
    } else {
        1
    }
}

/// A walk over one context's extents.
struct Runs<'a> {
    extents: &'a [Extent],
    /// Bytes of `extents[0]` not yet used.
    left: u64,
}

impl<'a> Runs<'a> {
    fn new(extents: &'a [Extent]) -> Self {
        let mut r = Self { extents, left: 0 };
        r.skip_empty();
        r
    }

    fn skip_empty(&mut self) {
        while let Some(e) = self.extents.first() {
            if self.left == 0 {
                self.left = e.length;
            }
            if self.left > 0 {
                return;
            }
            self.extents = &self.extents[1..];
        }
    }

    fn peek(&self) -> Option<(u64, u64)> {
        self.extents.first().map(|e| (self.left, e.flags))
    }

    fn take(&mut self, n: u64) {
        self.left -= n;
        if self.left == 0 {
            self.extents = &self.extents[1..];
            self.skip_empty();
        }
    }
}

/// Appends to `out` the status of `[offset, offset+len)` from the
/// server's `alloc` extents (and `depth` ones), stopping where either
/// runs out; returns the bytes described.
///
/// `align` is the server's minimum block size. A server must report
/// status in whole blocks; one that does not (qemu-nbd 3.1 on files whose
/// size is not a multiple of 512) is worked around as QEMU does: a run
/// ending inside a block is cut back to the block boundary, or, if it does
/// not reach one, widened to the whole block and reported as data, which
/// is always a safe answer. `size` is the export's size, where a run may
/// end anywhere.
pub fn merge(
    offset: u64,
    len: u64,
    align: u64,
    size: u64,
    alloc: &[Extent],
    depth: Option<&[Extent]>,
    out: &mut Vec<Status>,
) -> u64 {
    let first = out.len();
    let end = offset.saturating_add(len);
    let mut a = Runs::new(alloc);
    let mut d = depth.map(Runs::new);
    let mut pos = offset;
    while pos < end {
        let Some((a_left, a_flags)) = a.peek() else {
            break;
        };
        let mut n = a_left.min(end - pos);
        let depth = match &d {
            None => depth_of(a_flags),
            Some(d) => match d.peek() {
                Some((d_left, d_flags)) => {
                    n = n.min(d_left);
                    u32::try_from(d_flags).unwrap_or(u32::MAX)
                }
                None => break,
            },
        };
        a.take(n);
        if let Some(d) = &mut d {
            d.take(n);
        }
        let flags = a_flags & (STATE_HOLE | STATE_ZERO);
        let joins = out.len() > first;
        match out.last_mut() {
            Some(last) if joins && last.flags == flags && last.depth == depth => {
                last.len += n;
            }
            _ => out.push(Status {
                len: n,
                flags,
                depth,
            }),
        }
        pos += n;
    }
    if align > 1 && offset % align == 0 {
        pos = realign(offset, align, size.min(end), first, out);
    }
    pos - offset
}

/// Cuts the runs from `out[first..]` at the first one ending inside a
/// block (see [`merge`]) before `limit` (the end of the export or of the
/// request, where runs may end anywhere); returns where the answer now
/// ends.
fn realign(offset: u64, align: u64, limit: u64, first: usize, out: &mut Vec<Status>) -> u64 {
    let mut pos = offset;
    for i in first..out.len() {
        let start = pos;
        let run_end = start + out[i].len;
        if run_end % align == 0 || run_end >= limit {
            pos = run_end;
            continue;
        }
        let down = run_end - run_end % align;
        if down > start {
            out[i].len = down - start;
            pos = down;
        } else {
            let up = (start + align).min(limit);
            out[i] = Status::data(up - start);
            pos = up;
        }
        out.truncate(i + 1);
        break;
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(length: u64, flags: u64) -> Extent {
        Extent::new(length, flags)
    }

    fn runs(out: &[Status]) -> Vec<(u64, u64, u32)> {
        out.iter().map(|s| (s.len, s.flags, s.depth)).collect()
    }

    #[test]
    fn allocation_alone_gets_qemus_depths() {
        let mut out = Vec::new();
        let n = merge(
            0,
            40,
            1,
            100,
            &[e(10, 0), e(10, 3), e(10, 1), e(30, 2)],
            None,
            &mut out,
        );
        assert_eq!(n, 40);
        assert_eq!(
            runs(&out),
            vec![(10, 0, 1), (10, 3, 1), (10, 1, 0), (10, 2, 1)]
        );
    }

    #[test]
    fn depth_splits_runs_and_stops_with_the_shorter_list() {
        let mut out = vec![Status::data(7)];
        let n = merge(
            100,
            1000,
            1,
            4096,
            &[e(50, 3), e(50, 0)],
            Some(&[e(30, 0), e(60, 2)]),
            &mut out,
        );
        assert_eq!(n, 90);
        // The run already in `out` is left alone.
        assert_eq!(
            runs(&out),
            vec![(7, 0, 1), (30, 3, 0), (20, 3, 2), (40, 0, 2)]
        );
    }

    #[test]
    fn adjacent_equal_runs_join_and_empty_extents_are_skipped() {
        let mut out = Vec::new();
        let n = merge(0, 64, 1, 64, &[e(0, 0), e(16, 0), e(48, 0)], None, &mut out);
        assert_eq!(n, 64);
        assert_eq!(runs(&out), vec![(64, 0, 1)]);
    }

    #[test]
    fn unaligned_runs_are_cut_or_widened_as_qemu_does() {
        let mut out = Vec::new();
        // 1000 bytes of hole then data: cut back to 512.
        let n = merge(
            0,
            4096,
            512,
            8192,
            &[e(1000, 3), e(3096, 0)],
            None,
            &mut out,
        );
        assert_eq!((n, runs(&out)), (512, vec![(512, 3, 1)]));
        out.clear();
        // A run shorter than a block: the block, as data.
        let n = merge(
            512,
            4096,
            512,
            8192,
            &[e(100, 3), e(3996, 0)],
            None,
            &mut out,
        );
        assert_eq!((n, runs(&out)), (512, vec![(512, 0, 1)]));
        out.clear();
        // The end of an export whose size is not aligned is fine.
        let n = merge(0, 1000, 512, 1000, &[e(1000, 3)], None, &mut out);
        assert_eq!((n, runs(&out)), (1000, vec![(1000, 3, 1)]));
        out.clear();
        // So is the end of a request that is not aligned.
        let n = merge(0, 700, 512, 8192, &[e(100, 0), e(600, 3)], None, &mut out);
        assert_eq!((n, runs(&out)), (512, vec![(512, 0, 1)]));
        out.clear();
        let n = merge(0, 700, 512, 8192, &[e(512, 0), e(188, 3)], None, &mut out);
        assert_eq!((n, runs(&out)), (700, vec![(512, 0, 1), (188, 3, 1)]));
    }

    #[test]
    fn nothing_described_is_nothing_appended() {
        let mut out = Vec::new();
        assert_eq!(merge(0, 10, 1, 10, &[], None, &mut out), 0);
        assert!(out.is_empty());
    }
}
