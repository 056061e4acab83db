//! `blockwire-cow`: a copy-on-write overlay. Writes go to `file` (the top:
//! a node of the same size, memory by default); what was never written is
//! read from `backing`, which is never written. The core's overlay plans
//! every request; this driver carries the plans out, in one place.

use std::io;
use std::sync::{Arc, Mutex};

use blockwire_core::block::Extent;
use blockwire_core::block::contract::{BlockError, StatusQuery};
use blockwire_core::block::overlay::{Overlay, ReadStep, Source, WriteStep};
use blockwire_core::server::status_from;

use crate::block::io::Io;
use crate::block::node::{Child, Driver, DriverInfo, Node, Status, Zeroes, invalid, lock};

/// Default cluster size (qcow2's).
pub const DEFAULT_CLUSTER: u64 = 64 << 10;

pub struct Cow {
    top: Arc<Node>,
    backing: Arc<Node>,
    map: Mutex<Overlay<Vec<u64>>>,
    /// The overlay wants overlapping writes serialised, as QEMU's COW does;
    /// writes are serialised as a whole, reads are not.
    writes: tokio::sync::Mutex<()>,
}

fn block_err(e: BlockError) -> io::Error {
    io::Error::from_raw_os_error(e.nbd_errno() as i32)
}

impl Cow {
    pub fn new(top: Arc<Node>, backing: Arc<Node>, cluster: u64) -> io::Result<Self> {
        let size = backing.size();
        if top.size() < size {
            return Err(invalid(format!(
                "copy-on-write top '{}' ({} bytes) is smaller than its backing '{}' ({size} bytes)",
                top.name(),
                top.size(),
                backing.name()
            )));
        }
        let map = Overlay::new_vec(size, cluster)
            .map_err(|e| invalid(format!("copy-on-write map: {e}")))?;
        Ok(Self {
            top,
            backing,
            map: Mutex::new(map),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    fn plan(
        &self,
        f: impl FnOnce(&Overlay<Vec<u64>>, &mut dyn FnMut(WriteStep) -> bool) -> Result<(), BlockError>,
    ) -> io::Result<Vec<WriteStep>> {
        let mut steps = Vec::new();
        f(&lock(&self.map), &mut |s| {
            steps.push(s);
            true
        })
        .map_err(block_err)?;
        Ok(steps)
    }

    /// Carries out a write plan: copy-ups, zeroing, the payload, optional
    /// discards of top storage no longer needed.
    async fn run(&self, steps: Vec<WriteStep>, data: &[u8]) -> io::Result<()> {
        for s in steps {
            match s {
                WriteStep::CopyUp { offset, length } => {
                    let mut tmp = vec![0u8; length as usize];
                    self.backing.read(offset, &mut tmp).wait().await?;
                    self.top.write(offset, &tmp, false).wait().await?;
                }
                WriteStep::ZeroTop { offset, length } => {
                    let z = Zeroes {
                        may_unmap: true,
                        ..Zeroes::default()
                    };
                    self.top.write_zeroes(offset, length, z).wait().await?
                }
                WriteStep::WriteTop {
                    offset,
                    length,
                    buf_offset,
                } => {
                    let piece = &data[buf_offset as usize..(buf_offset + length) as usize];
                    self.top.write(offset, piece, false).wait().await?
                }
                // Releasing top storage is optional; a failure only costs
                // space.
                WriteStep::DiscardTop { offset, length } => {
                    let _ = self.top.discard(offset, length).wait().await;
                }
            }
        }
        Ok(())
    }

    /// One write-like request: serialised, planned, carried out, then
    /// committed to the map (only once every step succeeded), then made
    /// durable if asked.
    fn modify<'a>(
        &'a self,
        data: &'a [u8],
        fua: bool,
        plan: impl FnOnce(
            &Overlay<Vec<u64>>,
            &mut dyn FnMut(WriteStep) -> bool,
        ) -> Result<(), BlockError>
        + Send
        + 'a,
        commit: impl FnOnce(&mut Overlay<Vec<u64>>) -> Result<(), BlockError> + Send + 'a,
    ) -> Io<'a, ()> {
        Io::pending(async move {
            let _serial = self.writes.lock().await;
            let steps = self.plan(plan)?;
            self.run(steps, data).await?;
            commit(&mut lock(&self.map)).map_err(block_err)?;
            if fua {
                self.top.flush().wait().await?;
            }
            Ok(())
        })
    }
}

impl Driver for Cow {
    fn driver_name(&self) -> &'static str {
        "blockwire-cow"
    }

    fn info(&self) -> DriverInfo {
        let top = self.top.info();
        let base = self.backing.info();
        DriverInfo {
            read_only: top.read_only,
            // Writes wait for the one before to finish.
            waits: true,
            blocking: top.blocking || base.blocking,
            fast_zero: true,
            sparse: true,
            ..top
        }
    }

    fn size(&self) -> u64 {
        lock(&self.map).size()
    }

    fn children(&self) -> Vec<Child> {
        vec![
            Child {
                role: "file",
                node: self.top.clone(),
            },
            Child {
                role: "backing",
                node: self.backing.clone(),
            },
        ]
    }

    fn filename(&self) -> String {
        self.top.filename()
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        let mut steps: Vec<ReadStep> = Vec::new();
        let planned = lock(&self.map).plan_read(offset, buf.len() as u64, &mut |s| {
            steps.push(s);
            true
        });
        if let Err(e) = planned {
            return Io::err(block_err(e));
        }
        Io::pending(async move {
            for s in steps {
                let dst = &mut buf[s.buf_offset as usize..(s.buf_offset + s.length) as usize];
                match s.source {
                    Source::Top => self.top.read(s.offset, dst).wait().await?,
                    Source::Base => self.backing.read(s.offset, dst).wait().await?,
                    Source::Zeroes => dst.fill(0),
                }
            }
            Ok(())
        })
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> Io<'a, ()> {
        let len = data.len() as u64;
        self.modify(
            data,
            fua,
            move |m, sink| m.plan_write(offset, len, sink),
            move |m| m.commit_write(offset, len),
        )
    }

    fn flush(&self) -> Io<'_, ()> {
        self.top.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Io<'_, ()> {
        self.modify(
            &[],
            false,
            move |m, sink| m.plan_trim(offset, len, sink),
            move |m| m.commit_trim(offset, len),
        )
    }

    fn write_zeroes(&self, offset: u64, len: u64, z: Zeroes) -> Io<'_, ()> {
        self.modify(
            &[],
            z.fua,
            move |m, sink| m.plan_write_zeroes(offset, len, sink),
            move |m| m.commit_write_zeroes(offset, len),
        )
    }

    /// `base:allocation` and allocation depth: the top's clusters from the
    /// map, the rest from the backing node's own answer (its depth plus
    /// one), as QEMU counts backing layers.
    fn block_status<'a>(&'a self, offset: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()> {
        Io::pending(async move {
            let mut base = Vec::new();
            self.backing
                .block_status(offset, len, &mut base)
                .wait()
                .await?;
            let flags: Vec<Extent> = base.iter().map(|s| Extent::new(s.len, s.flags)).collect();
            let depths: Vec<Extent> = base
                .iter()
                .map(|s| Extent::new(s.len, u64::from(s.depth)))
                .collect();
            let q = StatusQuery::new(offset, len).max_extent_len(u64::MAX);
            let map = lock(&self.map);
            let mut alloc = Vec::new();
            map.allocation_status(&q, &mut status_from(&flags, offset), &mut |e| {
                alloc.push(e);
                true
            })
            .map_err(block_err)?;
            let mut depth = Vec::new();
            map.allocation_depth(&q, &mut status_from(&depths, offset), &mut |e| {
                depth.push(e);
                true
            })
            .map_err(block_err)?;
            drop(map);
            zip_status(&alloc, &depth, out);
            Ok(())
        })
    }
}

/// Merges two extent lists over the same range into runs carrying both.
fn zip_status(alloc: &[Extent], depth: &[Extent], out: &mut Vec<Status>) {
    let (mut i, mut j) = (0, 0);
    let (mut a_left, mut d_left) = (
        alloc.first().map_or(0, |e| e.length),
        depth.first().map_or(0, |e| e.length),
    );
    while i < alloc.len() && j < depth.len() {
        let n = a_left.min(d_left);
        if n > 0 {
            out.push(Status {
                len: n,
                flags: alloc[i].flags,
                depth: depth[j].flags.min(u64::from(u32::MAX)) as u32,
            });
        }
        a_left -= n;
        d_left -= n;
        if a_left == 0 {
            i += 1;
            a_left = alloc.get(i).map_or(0, |e| e.length);
        }
        if d_left == 0 {
            j += 1;
            d_left = depth.get(j).map_or(0, |e| e.length);
        }
    }
}
