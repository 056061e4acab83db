//! Deterministic error injection with blkdebug's meaning (`--blkdebug`).
//!
//! As in QEMU, the debugger has a *state* (starting at 1) and two kinds of
//! rules, each tied to an event:
//! * **inject-error** (`BlkdebugInjectErrorOptions`): when its event fires
//!   while the state matches (`state` 0 = any), the rule becomes *active*;
//!   the first event in a round that activates a rule deactivates all
//!   earlier ones. The next request overlapping `sector` (any request if
//!   unset) fails with `errno`; `once` then deletes the rule, otherwise it
//!   stays active. `immediately` is passed through: fail before queuing
//!   (true) or complete the failure asynchronously like real I/O (false).
//! * **set-state** (`BlkdebugSetStateOptions`): when its event fires in a
//!   matching state, the state becomes `new_state` after the round.
//!
//! An NBD server has no qcow2 events, so besides the `BlkdebugEvent` names
//! there are operation events `read`, `write`, `flush`, `discard`, `zero`;
//! [`Blkdebug::on_request`] fires the operation's event together with its
//! closest QEMU event (`read_aio`, `write_aio`, `flush_to_disk`,
//! `cluster_free`, `pwritev_zero`) and then checks the request.
//!
//! Textual rules: rules separated by `;`, fields by `,`:
//! `event=NAME[,state=N][,errno=N|EIO|ENOSPC|…][,sector=N][,once=on|off][,immediately=on|off]`
//! for inject-error, `event=NAME[,state=N],new_state=N` for set-state.
//! Booleans accept `on/off/true/false/yes/no/1/0`.
//!
//! ```
//! use blockwire_core::block::blkdebug::{Blkdebug, Injection, OpKind};
//!
//! let mut dbg: Blkdebug<8> = Blkdebug::parse("event=read,errno=5,sector=8,once=on").unwrap();
//! assert_eq!(dbg.on_request(OpKind::Read, 0, 4096), None); // sector 8 = byte 4096
//! assert_eq!(dbg.on_request(OpKind::Read, 4096, 512), Some(Injection { errno: 5, immediately: false }));
//! assert_eq!(dbg.on_request(OpKind::Read, 4096, 512), None); // once
//! ```

macro_rules! events {
    ($($v:ident = $s:literal,)*) => {
        /// `BlkdebugEvent`, plus the operation events an NBD server fires.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum BlkdebugEvent { $(#[doc = concat!("`", $s, "`")] $v,)* }

        impl BlkdebugEvent {
            /// Every event, in QAPI order followed by the operation events.
            pub const ALL: &'static [BlkdebugEvent] = &[$(BlkdebugEvent::$v,)*];

            /// The QAPI name (`read_aio`, …) or operation name (`read`, …).
            pub const fn name(self) -> &'static str {
                match self { $(BlkdebugEvent::$v => $s,)* }
            }
        }
    };
}

events! {
    L1Update = "l1_update", L1GrowAllocTable = "l1_grow_alloc_table",
    L1GrowWriteTable = "l1_grow_write_table", L1GrowActivateTable = "l1_grow_activate_table",
    L2Load = "l2_load", L2Update = "l2_update", L2UpdateCompressed = "l2_update_compressed",
    L2AllocCowRead = "l2_alloc_cow_read", L2AllocWrite = "l2_alloc_write",
    ReadAio = "read_aio", ReadBackingAio = "read_backing_aio", ReadCompressed = "read_compressed",
    WriteAio = "write_aio", WriteCompressed = "write_compressed", VmstateLoad = "vmstate_load",
    VmstateSave = "vmstate_save", CowRead = "cow_read", CowWrite = "cow_write",
    ReftableLoad = "reftable_load", ReftableGrow = "reftable_grow",
    ReftableUpdate = "reftable_update", RefblockLoad = "refblock_load",
    RefblockUpdate = "refblock_update", RefblockUpdatePart = "refblock_update_part",
    RefblockAlloc = "refblock_alloc", RefblockAllocHookup = "refblock_alloc_hookup",
    RefblockAllocWrite = "refblock_alloc_write",
    RefblockAllocWriteBlocks = "refblock_alloc_write_blocks",
    RefblockAllocWriteTable = "refblock_alloc_write_table",
    RefblockAllocSwitchTable = "refblock_alloc_switch_table", ClusterAlloc = "cluster_alloc",
    ClusterAllocBytes = "cluster_alloc_bytes", ClusterFree = "cluster_free",
    FlushToOs = "flush_to_os", FlushToDisk = "flush_to_disk",
    PwritevRmwHead = "pwritev_rmw_head", PwritevRmwAfterHead = "pwritev_rmw_after_head",
    PwritevRmwTail = "pwritev_rmw_tail", PwritevRmwAfterTail = "pwritev_rmw_after_tail",
    Pwritev = "pwritev", PwritevZero = "pwritev_zero", PwritevDone = "pwritev_done",
    EmptyImagePrepare = "empty_image_prepare", L1ShrinkWriteTable = "l1_shrink_write_table",
    L1ShrinkFreeL2Clusters = "l1_shrink_free_l2_clusters", CorWrite = "cor_write",
    Read = "read", Write = "write", Flush = "flush", Discard = "discard", Zero = "zero",
}

impl BlkdebugEvent {
    /// Looks an event up by name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.name() == s)
    }
}

/// The kind of request a frontend is about to perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`.
    Write,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Discard,
    /// `NBD_CMD_WRITE_ZEROES`.
    Zero,
}

impl OpKind {
    const fn events(self) -> [BlkdebugEvent; 2] {
        use BlkdebugEvent as E;
        match self {
            OpKind::Read => [E::Read, E::ReadAio],
            OpKind::Write => [E::Write, E::WriteAio],
            OpKind::Flush => [E::Flush, E::FlushToDisk],
            OpKind::Discard => [E::Discard, E::ClusterFree],
            OpKind::Zero => [E::Zero, E::PwritevZero],
        }
    }
}

/// `BlkdebugInjectErrorOptions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectError {
    /// Trigger event.
    pub event: BlkdebugEvent,
    /// Required state; 0 = any.
    pub state: u32,
    /// Error to return (default EIO = 5); 0 injects nothing.
    pub errno: u32,
    /// 512-byte sector the request must cover; `None` = any request.
    pub sector: Option<u64>,
    /// Delete the rule after it fired once.
    pub once: bool,
    /// Fail before queuing rather than asynchronously.
    pub immediately: bool,
}

impl InjectError {
    /// A rule failing every request after `event` with EIO.
    pub const fn new(event: BlkdebugEvent) -> Self {
        Self {
            event,
            state: 0,
            errno: 5,
            sector: None,
            once: false,
            immediately: false,
        }
    }
}

/// `BlkdebugSetStateOptions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetState {
    /// Trigger event.
    pub event: BlkdebugEvent,
    /// Required state; 0 = any.
    pub state: u32,
    /// State to enter.
    pub new_state: u32,
}

/// Either kind of rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// An inject-error rule.
    Inject(InjectError),
    /// A set-state rule.
    SetState(SetState),
}

/// An error to fail the request with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Injection {
    /// The errno (e.g. 5 for EIO).
    pub errno: u32,
    /// Fail before queuing rather than asynchronously.
    pub immediately: bool,
}

/// Why rules were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkdebugError {
    /// More rules than the debugger holds.
    Full,
    /// A rule without `event=`.
    MissingEvent,
    /// An unknown event name.
    UnknownEvent,
    /// An unknown key, or a key the rule kind does not take.
    UnknownKey,
    /// A value that does not parse.
    BadValue,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    rule: Rule,
    /// 0 = inactive, else the activation order (newest wins).
    active: u32,
}

/// Error-injection state with room for `N` rules.
#[derive(Clone, Debug)]
pub struct Blkdebug<const N: usize> {
    rules: heapless::Vec<Slot, N>,
    state: u32,
    seq: u32,
}

impl<const N: usize> Default for Blkdebug<N> {
    fn default() -> Self {
        Self {
            rules: heapless::Vec::new(),
            state: 1,
            seq: 0,
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn parse_errno(v: &str) -> Option<u32> {
    const NAMES: [(&str, u32); 8] = [
        ("EPERM", 1),
        ("EIO", 5),
        ("ENOMEM", 12),
        ("EINVAL", 22),
        ("ENOSPC", 28),
        ("EOVERFLOW", 75),
        ("ENOTSUP", 95),
        ("ESHUTDOWN", 108),
    ];
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(v))
        .map(|&(_, e)| e)
        .or_else(|| v.parse().ok())
}

impl Rule {
    /// Parses one rule of the textual syntax (see the module docs).
    pub fn parse(s: &str) -> Result<Self, BlkdebugError> {
        let mut event = None;
        let mut inject = InjectError::new(BlkdebugEvent::Read);
        let mut new_state = None;
        let mut inject_keys = false;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').ok_or(BlkdebugError::BadValue)?;
            let (k, v) = (k.trim(), v.trim());
            let num = || v.parse::<u64>().map_err(|_| BlkdebugError::BadValue);
            let num32 = || v.parse::<u32>().map_err(|_| BlkdebugError::BadValue);
            let flag = || parse_bool(v).ok_or(BlkdebugError::BadValue);
            match k {
                "event" => {
                    event = Some(BlkdebugEvent::from_name(v).ok_or(BlkdebugError::UnknownEvent)?)
                }
                "state" => inject.state = num32()?,
                "new_state" | "new-state" => new_state = Some(num32()?),
                "errno" => {
                    inject.errno = parse_errno(v).ok_or(BlkdebugError::BadValue)?;
                    inject_keys = true;
                }
                "sector" => {
                    inject.sector = Some(num()?);
                    inject_keys = true;
                }
                "once" => {
                    inject.once = flag()?;
                    inject_keys = true;
                }
                "immediately" => {
                    inject.immediately = flag()?;
                    inject_keys = true;
                }
                _ => return Err(BlkdebugError::UnknownKey),
            }
        }
        inject.event = event.ok_or(BlkdebugError::MissingEvent)?;
        match new_state {
            Some(_) if inject_keys => Err(BlkdebugError::UnknownKey),
            Some(new_state) => Ok(Rule::SetState(SetState {
                event: inject.event,
                state: inject.state,
                new_state,
            })),
            None => Ok(Rule::Inject(inject)),
        }
    }

    fn event(&self) -> BlkdebugEvent {
        match self {
            Rule::Inject(r) => r.event,
            Rule::SetState(r) => r.event,
        }
    }

    fn state(&self) -> u32 {
        match self {
            Rule::Inject(r) => r.state,
            Rule::SetState(r) => r.state,
        }
    }
}

impl<const N: usize> Blkdebug<N> {
    /// No rules, state 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `;`-separated rules (see the module docs).
    pub fn parse(s: &str) -> Result<Self, BlkdebugError> {
        let mut d = Self::new();
        for r in s.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            d.add(Rule::parse(r)?)?;
        }
        Ok(d)
    }

    /// Adds a rule after the existing ones.
    pub fn add(&mut self, rule: Rule) -> Result<(), BlkdebugError> {
        self.rules
            .push(Slot { rule, active: 0 })
            .map_err(|_| BlkdebugError::Full)
    }

    /// The current state.
    pub fn state(&self) -> u32 {
        self.state
    }

    /// Number of rules left (`once` rules disappear after firing).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Fires `events` as one round (QEMU's `blkdebug_debug_event`).
    pub fn fire(&mut self, events: &[BlkdebugEvent]) {
        let mut injected = false;
        let mut new_state = self.state;
        for i in 0..self.rules.len() {
            let rule = self.rules[i].rule;
            if !events.contains(&rule.event()) || (rule.state() != 0 && rule.state() != self.state)
            {
                continue;
            }
            match rule {
                Rule::Inject(_) => {
                    if !injected {
                        for s in self.rules.iter_mut() {
                            s.active = 0;
                        }
                        injected = true;
                    }
                    self.seq = self.seq.wrapping_add(1).max(1);
                    self.rules[i].active = self.seq;
                }
                Rule::SetState(s) => new_state = s.new_state,
            }
        }
        self.state = new_state;
    }

    /// Checks a request against the active rules (QEMU's `rule_check`).
    pub fn check(&mut self, offset: u64, length: u64) -> Option<Injection> {
        let end = offset.saturating_add(length);
        let i = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active != 0)
            .filter(|(_, s)| match s.rule {
                Rule::Inject(r) => match r.sector {
                    None => true,
                    Some(sec) => sec
                        .checked_mul(512)
                        .is_some_and(|b| length > 0 && b >= offset && b < end),
                },
                Rule::SetState(_) => false,
            })
            .max_by_key(|(_, s)| s.active)?
            .0;
        let Rule::Inject(r) = self.rules[i].rule else {
            return None;
        };
        if r.errno == 0 {
            return None;
        }
        if r.once {
            self.rules.remove(i);
        }
        Some(Injection {
            errno: r.errno,
            immediately: r.immediately,
        })
    }

    /// Fires `kind`'s events and checks the request; `Some` means fail it.
    pub fn on_request(&mut self, kind: OpKind, offset: u64, length: u64) -> Option<Injection> {
        self.fire(&kind.events());
        self.check(offset, length)
    }
}
