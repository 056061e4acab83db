//! `blkdebug`: the child, with errors injected by QEMU's rules
//! (`inject-error`, `set-state`) and the alignment and transfer limits it
//! imposes (`align`, `max-transfer`).

use std::io;
use std::sync::{Arc, Mutex};

use blockwire_core::block::blkdebug::{Blkdebug as Rules, OpKind, Rule};

use crate::block::io::Io;
use crate::block::node::{Child, Driver, DriverInfo, Node, Status, Zeroes, invalid, lock};
use crate::block::options::{InjectError, SetState};

/// Rules one node carries.
pub const MAX_RULES: usize = 32;

pub struct Blkdebug {
    image: Arc<Node>,
    rules: Mutex<Rules<MAX_RULES>>,
    align: u64,
    max_transfer: u64,
}

impl Blkdebug {
    pub fn new(
        image: Arc<Node>,
        align: u64,
        max_transfer: u64,
        inject: &[InjectError],
        set_state: &[SetState],
    ) -> io::Result<Self> {
        if align != 0 && (!align.is_power_of_two() || align > (1 << 30)) {
            return Err(invalid(format!(
                "Cannot meet constraints with align {align}"
            )));
        }
        let align = align.max(1);
        if max_transfer != 0 && (max_transfer % align != 0 || max_transfer > i32::MAX as u64) {
            return Err(invalid(format!(
                "Cannot meet constraints with max-transfer {max_transfer}"
            )));
        }
        let mut rules = Rules::new();
        let all = inject
            .iter()
            .map(|r| Rule::Inject(*r))
            .chain(set_state.iter().map(|r| Rule::SetState(*r)));
        for r in all {
            rules.add(r).map_err(|e| invalid(e.to_string()))?;
        }
        Ok(Self {
            image,
            rules: Mutex::new(rules),
            align,
            max_transfer,
        })
    }

    /// The injected error for this request, or its violation of the
    /// limits (which QEMU's block layer would have split or aligned for
    /// it; an NBD client was told them, so this is the client's error).
    fn check(&self, kind: OpKind, offset: u64, len: u64) -> io::Result<()> {
        let data = matches!(kind, OpKind::Read | OpKind::Write);
        if data && (offset % self.align != 0 || len % self.align != 0) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if data && self.max_transfer != 0 && len > self.max_transfer {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        match lock(&self.rules).on_request(kind, offset, len) {
            Some(inj) => Err(io::Error::from_raw_os_error(inj.errno as i32)),
            None => Ok(()),
        }
    }
}

impl Driver for Blkdebug {
    fn driver_name(&self) -> &'static str {
        "blkdebug"
    }

    fn info(&self) -> DriverInfo {
        let mut i = self.image.info();
        i.align = i.align.max(self.align as u32);
        if self.max_transfer != 0 {
            i.max_transfer = match i.max_transfer {
                0 => self.max_transfer as u32,
                m => m.min(self.max_transfer as u32),
            };
        }
        i
    }

    fn size(&self) -> u64 {
        self.image.size()
    }

    fn children(&self) -> Vec<Child> {
        vec![Child {
            role: "image",
            node: self.image.clone(),
        }]
    }

    fn filename(&self) -> String {
        format!("blkdebug::{}", self.image.filename())
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        match self.check(OpKind::Read, offset, buf.len() as u64) {
            Ok(()) => self.image.read(offset, buf),
            Err(e) => Io::err(e),
        }
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> Io<'a, ()> {
        match self.check(OpKind::Write, offset, data.len() as u64) {
            Ok(()) => self.image.write(offset, data, fua),
            Err(e) => Io::err(e),
        }
    }

    fn flush(&self) -> Io<'_, ()> {
        match self.check(OpKind::Flush, 0, 0) {
            Ok(()) => self.image.flush(),
            Err(e) => Io::err(e),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> Io<'_, ()> {
        match self.check(OpKind::Discard, offset, len) {
            Ok(()) => self.image.discard(offset, len),
            Err(e) => Io::err(e),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, z: Zeroes) -> Io<'_, ()> {
        match self.check(OpKind::Zero, offset, len) {
            Ok(()) => self.image.write_zeroes(offset, len, z),
            Err(e) => Io::err(e),
        }
    }

    fn cache(&self, offset: u64, len: u64) -> Io<'_, ()> {
        self.image.cache(offset, len)
    }

    fn block_status<'a>(&'a self, offset: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()> {
        self.image.block_status(offset, len, out)
    }
}

/// The command line's `--blkdebug` rules (`event=read,errno=5;...`, one
/// rule per `;`) as the schema's lists.
pub fn parse_rules(s: &str) -> Result<(Vec<InjectError>, Vec<SetState>), String> {
    let mut inject = Vec::new();
    let mut set_state = Vec::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        match Rule::parse(part).map_err(|e| format!("{part:?}: {e}"))? {
            Rule::Inject(r) => inject.push(r),
            Rule::SetState(r) => set_state.push(r),
        }
    }
    if inject.len() + set_state.len() > MAX_RULES {
        return Err(format!("more than {MAX_RULES} rules"));
    }
    Ok((inject, set_state))
}
