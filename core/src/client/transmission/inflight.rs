//! The table of requests in flight: cookie allocation and what each reply
//! has delivered so far (covered ranges, contexts, errors).

use crate::wire::{CommandFlags, CommandType};

use crate::client::{Cookie, RequestFailure};

/// Disjoint byte ranges tracked per read to refuse overlapping chunks.
/// Adjacent ranges merge, so in-order (or reverse-order) replies use one.
/// A reply scattered wider is still reassembled (the spec: the server "MAY
/// send the content chunks in any order (the client MUST reassemble
/// content chunks into the correct order)"); its further pieces are only
/// counted, so an overlap among them is caught by the byte count (more
/// bytes than the request) instead of by position. Detecting overlaps is
/// the client's option ("MAY initiate a hard disconnect"), reassembly is
/// not, and a fixed table keeps the memory per request bounded.
pub const MAX_FRAGMENTS: usize = 4;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub(crate) in_use: bool,
    pub(crate) cookie: u64,
    pub(crate) command: CommandType,
    pub(crate) flags: CommandFlags,
    pub(crate) offset: u64,
    pub(crate) length: u64,
    /// Bytes delivered (sum of `ranges`, which are disjoint).
    pub(crate) covered: u64,
    ranges: [(u64, u64); MAX_FRAGMENTS],
    nranges: u8,
    pub(crate) content_chunks: u32,
    pub(crate) failure: Option<RequestFailure>,
    /// Bit i: a status chunk for the i-th selected context arrived.
    pub(crate) contexts_seen: u32,
}

impl Slot {
    const FREE: Slot = Slot {
        in_use: false,
        cookie: 0,
        command: CommandType::READ,
        flags: CommandFlags::empty(),
        offset: 0,
        length: 0,
        covered: 0,
        ranges: [(0, 0); MAX_FRAGMENTS],
        nranges: 0,
        content_chunks: 0,
        failure: None,
        contexts_seen: 0,
    };

    /// `offset + length`; cannot overflow: requests are checked against an
    /// export size below 2^63 when submitted.
    pub(crate) fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// Whether `[start, start + len)` lies inside the request (overflow
    /// proof: `start + len` is never computed unchecked).
    pub(crate) fn contains(&self, start: u64, len: u64) -> bool {
        start >= self.offset && start.checked_add(len).is_some_and(|e| e <= self.end())
    }

    pub(crate) fn fail(&mut self, f: RequestFailure) {
        if self.failure.is_none() {
            self.failure = Some(f);
        }
    }

    /// Record content `[start, end)` (inside the request). `Err(())` if it
    /// overlaps earlier content: a tracked range, or more bytes in all
    /// than the request has.
    pub(crate) fn cover(&mut self, start: u64, end: u64) -> Result<(), ()> {
        let n = usize::from(self.nranges);
        let ranges = &mut self.ranges[..n.min(MAX_FRAGMENTS)];
        let len = end - start;
        if ranges.iter().any(|&(s, e)| start < e && s < end)
            || self.covered.saturating_add(len) > self.length
        {
            return Err(());
        }
        self.covered += len;
        // Merge with a neighbour on either side (possibly both).
        let left = ranges.iter().position(|&(_, e)| e == start);
        let right = ranges.iter().position(|&(s, _)| s == end);
        match (left, right) {
            (Some(l), Some(r)) => {
                let (_, re) = ranges[r];
                ranges[l].1 = re;
                ranges[r] = ranges[n - 1];
                self.nranges -= 1;
            }
            (Some(l), None) => ranges[l].1 = end,
            (None, Some(r)) => ranges[r].0 = start,
            // Table full: counted only (see MAX_FRAGMENTS).
            (None, None) if n >= MAX_FRAGMENTS => {}
            (None, None) => {
                self.ranges[n] = (start, end);
                self.nranges += 1;
            }
        }
        Ok(())
    }

    /// Record the whole request as delivered: a simple reply's data, the
    /// only reply the read gets.
    pub(crate) fn cover_whole(&mut self) {
        self.ranges[0] = (self.offset, self.end());
        self.nranges = 1;
        self.covered = self.length;
    }

    /// Outcome once `DONE` arrived, given how many contexts were selected.
    pub(crate) fn result(&self, contexts: usize) -> Result<(), RequestFailure> {
        if let Some(f) = self.failure {
            return Err(f);
        }
        match self.command {
            CommandType::READ if self.covered != self.length => Err(RequestFailure::Incomplete),
            CommandType::BLOCK_STATUS if self.contexts_seen != all_contexts(contexts) => {
                Err(RequestFailure::Incomplete)
            }
            _ => Ok(()),
        }
    }
}

pub(crate) fn all_contexts(n: usize) -> u32 {
    if n >= 32 { u32::MAX } else { (1u32 << n) - 1 }
}

#[derive(Debug)]
pub(crate) struct InFlight<const N: usize> {
    slots: [Slot; N],
    generation: u64,
    count: usize,
}

impl<const N: usize> InFlight<N> {
    const CHECK: () = assert!(N > 0 && N <= 1 << 16, "1 to 65536 requests in flight");

    pub(crate) fn new() -> Self {
        let () = Self::CHECK;
        Self {
            slots: [Slot::FREE; N],
            generation: 0,
            count: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn insert(
        &mut self,
        command: CommandType,
        flags: CommandFlags,
        offset: u64,
        length: u64,
    ) -> Option<(usize, Cookie)> {
        let i = self.slots.iter().position(|s| !s.in_use)?;
        self.generation = self.generation.wrapping_add(1);
        let cookie = (self.generation << 16) | i as u64;
        self.slots[i] = Slot {
            in_use: true,
            cookie,
            command,
            flags,
            offset,
            length,
            ..Slot::FREE
        };
        self.count += 1;
        Some((i, Cookie(cookie)))
    }

    /// The slot of a cookie the server named, if it is in flight.
    pub(crate) fn find(&self, cookie: u64) -> Option<usize> {
        let i = (cookie & 0xffff) as usize;
        let s = self.slots.get(i)?;
        (s.in_use && s.cookie == cookie).then_some(i)
    }

    pub(crate) fn get(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i).filter(|s| s.in_use)
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.slots.get_mut(i).filter(|s| s.in_use)
    }

    pub(crate) fn remove(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i).filter(|s| s.in_use) {
            s.in_use = false;
            self.count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(offset: u64, length: u64) -> Slot {
        Slot {
            in_use: true,
            offset,
            length,
            ..Slot::FREE
        }
    }

    #[test]
    fn cover_merges_and_detects_overlap() {
        let mut s = read(100, 100);
        assert_eq!(s.cover(150, 200), Ok(()));
        assert_eq!(s.cover(100, 120), Ok(()));
        assert_eq!(s.cover(119, 121), Err(()));
        assert_eq!(s.cover(120, 150), Ok(())); // joins both
        assert_eq!(s.nranges, 1);
        assert_eq!(s.covered, 100);
        assert_eq!(s.result(0), Ok(()));
    }

    #[test]
    fn cover_past_the_table_counts_and_still_catches_excess() {
        let mut s = read(0, 100);
        // Every other byte of the first 2 * MAX_FRAGMENTS + 2: more pieces
        // than the table holds.
        let pieces = 2 * MAX_FRAGMENTS as u64 + 2;
        for i in (0..pieces).step_by(2) {
            assert_eq!(s.cover(i, i + 1), Ok(()));
        }
        assert_eq!(s.result(0), Err(RequestFailure::Incomplete));
        for i in (1..pieces).step_by(2) {
            assert_eq!(s.cover(i, i + 1), Ok(()));
        }
        assert_eq!(s.cover(pieces, 100), Ok(()));
        assert_eq!(s.result(0), Ok(()));
        // Any byte more is an overlap, tracked or not.
        assert_eq!(s.cover(50, 51), Err(()));
    }

    #[test]
    fn contains_never_overflows() {
        let s = read(u64::MAX - 10, 10);
        assert!(s.contains(u64::MAX - 10, 10));
        assert!(!s.contains(u64::MAX, 1));
        assert!(!s.contains(u64::MAX - 1, u64::MAX));
    }

    #[test]
    fn cookies_are_unique_and_found() {
        let mut t = InFlight::<4>::new();
        let (i, a) = t
            .insert(CommandType::FLUSH, CommandFlags::empty(), 0, 0)
            .unwrap();
        t.remove(i);
        let (j, b) = t
            .insert(CommandType::FLUSH, CommandFlags::empty(), 0, 0)
            .unwrap();
        assert_eq!(i, j);
        assert_ne!(a, b);
        assert_eq!(t.find(a.0), None);
        assert_eq!(t.find(b.0), Some(j));
        assert_eq!(t.find(u64::MAX), None);
    }
}
