//! What a validated request means: one variant per command, each carrying
//! exactly its fields and the flags that change what it does.
//!
//! The machine produces these only after every check of the spec passed
//! (range, alignment, negotiated flags), so a frontend's `match` on
//! [`Command`] has no fallback arm, and a flag it ignores is a field it
//! destructured and dropped on purpose. Flags the spec lets a server accept
//! and ignore (`FUA` on reads, `FLUSH`, `CACHE` and `BLOCK_STATUS`) are not
//! carried.

use super::exports::ContextSet;
use crate::block::contract::Zeroes;
use crate::block::stats::AcctType;
use crate::block::throttle::Direction;
use crate::wire::{CommandFlags, CommandType};

/// A validated transmission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client's handle for the request, echoed in every reply.
    pub cookie: u64,
    pub command: Command,
}

/// One NBD command, validated, with what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ`: `len` bytes at `offset` (at most the advertised
    /// maximum payload).
    Read {
        offset: u64,
        len: u32,
        /// `NBD_CMD_FLAG_DF`: one data chunk, no holes.
        no_fragment: bool,
    },
    /// `NBD_CMD_WRITE`: the payload follows the request.
    Write { offset: u64, len: u32, fua: bool },
    /// `NBD_CMD_FLUSH`: every write completed so far becomes durable.
    Flush,
    /// `NBD_CMD_TRIM`: the range may be discarded.
    Trim { offset: u64, len: u64, fua: bool },
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes {
        offset: u64,
        len: u64,
        /// `NO_HOLE`, `FAST_ZERO` and `FUA`, as what they ask.
        how: Zeroes,
    },
    /// `NBD_CMD_CACHE`: advisory prefetch.
    Cache { offset: u64, len: u64 },
    /// `NBD_CMD_BLOCK_STATUS`: one reply chunk per context in `contexts`.
    BlockStatus {
        offset: u64,
        len: u64,
        /// `NBD_CMD_FLAG_REQ_ONE`: one extent per context.
        req_one: bool,
        contexts: ContextSet,
    },
}

impl Request {
    /// Builds the typed request from a header the machine validated.
    /// `None` for commands that are not requests (`DISC`) or unknown ones.
    pub(crate) fn from_wire(
        cookie: u64,
        command: CommandType,
        flags: CommandFlags,
        offset: u64,
        length: u64,
        contexts: ContextSet,
    ) -> Option<Self> {
        use CommandType as C;
        let fua = flags.contains(CommandFlags::FUA);
        let command = match command {
            // Validated against the maximum payload, which fits 32 bits.
            C::READ => Command::Read {
                offset,
                len: u32::try_from(length).ok()?,
                no_fragment: flags.contains(CommandFlags::DF),
            },
            C::WRITE => Command::Write {
                offset,
                len: u32::try_from(length).ok()?,
                fua,
            },
            C::FLUSH => Command::Flush,
            C::TRIM => Command::Trim {
                offset,
                len: length,
                fua,
            },
            C::WRITE_ZEROES => Command::WriteZeroes {
                offset,
                len: length,
                how: Zeroes {
                    may_unmap: !flags.contains(CommandFlags::NO_HOLE),
                    fast: flags.contains(CommandFlags::FAST_ZERO),
                    fua,
                },
            },
            C::CACHE => Command::Cache {
                offset,
                len: length,
            },
            C::BLOCK_STATUS => Command::BlockStatus {
                offset,
                len: length,
                req_one: flags.contains(CommandFlags::REQ_ONE),
                contexts,
            },
            _ => return None,
        };
        Some(Self { cookie, command })
    }

    /// The wire command this request came as.
    pub const fn kind(&self) -> CommandType {
        match self.command {
            Command::Read { .. } => CommandType::READ,
            Command::Write { .. } => CommandType::WRITE,
            Command::Flush => CommandType::FLUSH,
            Command::Trim { .. } => CommandType::TRIM,
            Command::WriteZeroes { .. } => CommandType::WRITE_ZEROES,
            Command::Cache { .. } => CommandType::CACHE,
            Command::BlockStatus { .. } => CommandType::BLOCK_STATUS,
        }
    }

    /// First byte the request touches (0 for `FLUSH`).
    pub const fn offset(&self) -> u64 {
        match self.command {
            Command::Read { offset, .. } | Command::Write { offset, .. } => offset,
            Command::Flush => 0,
            Command::Trim { offset, .. }
            | Command::WriteZeroes { offset, .. }
            | Command::Cache { offset, .. }
            | Command::BlockStatus { offset, .. } => offset,
        }
    }

    /// Bytes the request covers (0 for `FLUSH`).
    pub const fn len(&self) -> u64 {
        match self.command {
            Command::Read { len, .. } | Command::Write { len, .. } => len as u64,
            Command::Flush => 0,
            Command::Trim { len, .. }
            | Command::WriteZeroes { len, .. }
            | Command::Cache { len, .. }
            | Command::BlockStatus { len, .. } => len,
        }
    }

    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Payload bytes that follow the request on the wire (a write's data).
    pub const fn payload_len(&self) -> u32 {
        match self.command {
            Command::Write { len, .. } => len,
            _ => 0,
        }
    }

    /// Data bytes the request moves across the connection either way (a
    /// read's reply data or a write's payload): what a frontend budgets
    /// buffers for.
    pub const fn data_len(&self) -> u32 {
        match self.command {
            Command::Read { len, .. } | Command::Write { len, .. } => len,
            _ => 0,
        }
    }

    /// Whether the request changes the export's contents.
    pub const fn writes(&self) -> bool {
        matches!(
            self.command,
            Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. }
        )
    }

    /// What carrying out the request asks of the device, step by step:
    /// the one reading of NBD's command semantics both frontends execute.
    pub const fn plan(&self) -> Plan {
        let (first, then) = match self.command {
            Command::Read { .. } => (Step::Read, None),
            Command::BlockStatus { .. } => (Step::BlockStatus, None),
            // An empty write stores nothing; with FUA it is a flush, the
            // safe reading of "durable before the reply".
            Command::Write {
                len: 0, fua: false, ..
            } => return Plan::EMPTY,
            Command::Write { len: 0, .. } => (Step::Flush, None),
            Command::Write { offset, len, fua } => (Step::Write { offset, len, fua }, None),
            Command::Flush => (Step::Flush, None),
            // A discard has no durable form: FUA is a flush after it (as
            // QEMU's NBD server does).
            Command::Trim { offset, len, fua } => (
                Step::Discard { offset, len },
                if fua { Some(Step::Flush) } else { None },
            ),
            Command::WriteZeroes { offset, len, how } => {
                (Step::WriteZeroes { offset, len, how }, None)
            }
            Command::Cache { offset, len } => (Step::Cache { offset, len }, None),
        };
        Plan {
            steps: [Some(first), then],
            next: 0,
        }
    }

    /// How the request is accounted in the device's I/O statistics
    /// (QEMU's `BlockAcctType`); `None` for requests QEMU does not count.
    pub const fn acct_type(&self) -> Option<AcctType> {
        match self.command {
            Command::Read { .. } => Some(AcctType::Read),
            Command::Write { .. } | Command::WriteZeroes { .. } => Some(AcctType::Write),
            Command::Flush => Some(AcctType::Flush),
            Command::Trim { .. } => Some(AcctType::Unmap),
            Command::Cache { .. } | Command::BlockStatus { .. } => None,
        }
    }

    /// How a BlockBackend's I/O limits count the request (QEMU's
    /// `blk_co_do_preadv` / `blk_co_do_pwritev_part`): reads, and writes
    /// including write-zeroes, by their length; discard, flush, cache and
    /// block status pass unthrottled.
    pub const fn throttled_as(&self) -> Option<(Direction, u64)> {
        match self.command {
            Command::Read { len, .. } => Some((Direction::Read, len as u64)),
            Command::Write { len, .. } => Some((Direction::Write, len as u64)),
            Command::WriteZeroes { len, .. } => Some((Direction::Write, len)),
            _ => None,
        }
    }

    /// The meaningful flags, as the wire would carry them (for logs and
    /// tests; the variant fields are what to act on).
    pub fn flags(&self) -> CommandFlags {
        let mut f = CommandFlags::empty();
        let mut set = |on: bool, flag| {
            if on {
                f |= flag
            }
        };
        match self.command {
            Command::Read { no_fragment, .. } => set(no_fragment, CommandFlags::DF),
            Command::Write { fua, .. } | Command::Trim { fua, .. } => set(fua, CommandFlags::FUA),
            Command::WriteZeroes { how, .. } => {
                set(how.fua, CommandFlags::FUA);
                set(!how.may_unmap, CommandFlags::NO_HOLE);
                set(how.fast, CommandFlags::FAST_ZERO);
            }
            Command::BlockStatus { req_one, .. } => set(req_one, CommandFlags::REQ_ONE),
            Command::Flush | Command::Cache { .. } => {}
        }
        f
    }
}

/// One step of carrying out a request, from [`Request::plan`].
///
/// `Read`, `BlockStatus` and `Write` are always a plan's only step (they
/// build the reply or wait for a payload); after the device operations of
/// any other plan the reply is [`ReplyEncoder::result`], with the error of
/// the first step that failed (the steps after it are not run).
///
/// [`ReplyEncoder::result`]: super::ReplyEncoder::result
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send the reply [`ReadReply`](super::ReadReply) plans.
    Read,
    /// Send the reply [`ReplyEncoder::block_status`] assembles.
    ///
    /// [`ReplyEncoder::block_status`]: super::ReplyEncoder::block_status
    BlockStatus,
    /// Store the request's payload, `len` bytes (never 0) at `offset`.
    /// `fua`: durable before it completes; a device that cannot write
    /// durably flushes after it.
    Write { offset: u64, len: u32, fua: bool },
    /// Discard the range (advisory: doing nothing is correct).
    Discard { offset: u64, len: u64 },
    /// Make the range read as zeroes, as `how` says (`fua`: a device
    /// that cannot zero durably flushes after it).
    WriteZeroes { offset: u64, len: u64, how: Zeroes },
    /// Prefetch the range (advisory).
    Cache { offset: u64, len: u64 },
    /// Make every completed write durable.
    Flush,
}

/// The steps of one request, in order (at most two, none for an empty
/// write without FUA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    steps: [Option<Step>; 2],
    next: u8,
}

impl Plan {
    const EMPTY: Self = Self {
        steps: [None, None],
        next: 0,
    };
}

impl Iterator for Plan {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        let step = *self.steps.get(self.next as usize)?;
        self.next += 1;
        step
    }
}
