//! A compact in-memory executor for the qcow2 core's plans, used by the
//! `qcow2_image` target: the image file is a `Vec<u8>` that refuses to
//! grow past [`FILE_CAP`] (like a full disk), so hostile images cannot make
//! the harness itself allocate without bound.

use blockwire_core::qcow2::bitmaps::{self, Directory};
use blockwire_core::qcow2::header::HeaderArea;
use blockwire_core::qcow2::*;

/// Largest file the harness lets an image grow to.
pub const FILE_CAP: u64 = 64 << 20;

pub struct Mem {
    pub q: Qcow2<Vec<u64>>,
    pub file: Vec<u8>,
    pub inflater: Box<Inflater>,
}

#[derive(Debug)]
pub struct Full;

fn read_at(file: &[u8], off: u64, buf: &mut [u8]) {
    buf.fill(0);
    if off < file.len() as u64 {
        let n = (file.len() - off as usize).min(buf.len());
        buf[..n].copy_from_slice(&file[off as usize..off as usize + n]);
    }
}

fn write_at(file: &mut Vec<u8>, off: u64, data: &[u8]) -> Result<(), Full> {
    let end = off.checked_add(data.len() as u64).ok_or(Full)?;
    if end > FILE_CAP {
        return Err(Full);
    }
    if file.len() < end as usize {
        file.resize(end as usize, 0);
    }
    file[off as usize..end as usize].copy_from_slice(data);
    Ok(())
}

/// Opens `file` with small, bounded caches and tables.
pub fn open(file: Vec<u8>, read_only: bool, slots: usize) -> Option<Mem> {
    let cfg = Config {
        read_only,
        l2_slots: slots,
        refblock_slots: slots + 2,
        max_l1_bytes: 1 << 16,
        max_reftable_bytes: 1 << 16,
    };
    let n = (HeaderArea::needed_len(&file, file.len() as u64).ok()? as usize).min(file.len());
    let area = HeaderArea::parse(&file[..n]).ok()?;
    let words = Qcow2::words_needed(&area, &cfg).ok()?;
    if words > 8 << 20 {
        return None;
    }
    let mut q = Qcow2::open(area, file.len() as u64, &cfg, vec![0u64; words]).ok()?;
    // Bounded: every install advances the opener or fails.
    while let Some(l) = q.open_need() {
        let mut b = vec![0u8; l.len as usize];
        read_at(&file, l.offset, &mut b);
        let have = file.len().saturating_sub(l.offset as usize).min(b.len());
        b.truncate(have);
        q.install(l, &b).ok()?;
    }
    Some(Mem {
        q,
        file,
        inflater: Box::new(Inflater::new()),
    })
}

/// Why an operation stopped.
#[derive(Debug)]
pub enum Stop {
    Image(Qcow2Error),
    Full,
    Loop,
}

impl From<Qcow2Error> for Stop {
    fn from(e: Qcow2Error) -> Self {
        Stop::Image(e)
    }
}

impl From<Full> for Stop {
    fn from(_: Full) -> Self {
        Stop::Full
    }
}

impl Mem {
    fn need(&mut self, n: Need) -> Result<(), Stop> {
        match n {
            Need::Load(l) => {
                let mut b = vec![0u8; l.len as usize];
                read_at(&self.file, l.offset, &mut b);
                self.q.install(l, &b)?;
                Ok(())
            }
            Need::Flush => self.flush(),
        }
    }

    fn compressed(&mut self, host: u64, len: u64, start: u64) -> Result<Vec<u8>, Stop> {
        let mut input = vec![0u8; len.min(4 << 20) as usize];
        read_at(&self.file, host, &mut input);
        let mut out = vec![0u8; self.q.layout().cluster_size() as usize];
        self.inflater.inflate_cluster(&input, &mut out, start)?;
        Ok(out)
    }

    /// Reads guest bytes (the backing file, if any, reads as zeroes).
    pub fn read(&mut self, off: u64, buf: &mut [u8]) -> Result<(), Stop> {
        let mut pos = 0;
        for _ in 0..100_000 {
            if pos == buf.len() {
                return Ok(());
            }
            let g = off + pos as u64;
            match self.q.map(g, (buf.len() - pos) as u64)? {
                MapResult::Need(n) => self.need(n)?,
                MapResult::Run(r) => {
                    assert!(r.offset == g && r.length > 0 && r.length as usize <= buf.len() - pos);
                    let dst = &mut buf[pos..pos + r.length as usize];
                    match r.mapping {
                        Mapping::Data { host } => read_at(&self.file, host, dst),
                        Mapping::Zero | Mapping::Unallocated => dst.fill(0),
                        Mapping::Compressed {
                            host,
                            len,
                            cluster_start,
                        } => {
                            let c = self.compressed(host, len, cluster_start)?;
                            let s = (g - cluster_start) as usize;
                            dst.copy_from_slice(&c[s..s + dst.len()]);
                        }
                    }
                    pos += r.length as usize;
                }
            }
        }
        Err(Stop::Loop)
    }

    fn run(&mut self, steps: &[Step], payload: &[u8]) -> Result<(), Stop> {
        for s in steps {
            match *s {
                Step::Data {
                    host,
                    length,
                    buf_offset,
                } => {
                    let b = &payload[buf_offset as usize..(buf_offset + length) as usize];
                    write_at(&mut self.file, host, b)?;
                }
                Step::Fill {
                    host,
                    guest,
                    length,
                    source,
                } => {
                    let mut b = vec![0u8; length as usize];
                    match source {
                        Source::Zeroes | Source::Backing => {}
                        Source::Host(h) => read_at(&self.file, h, &mut b),
                        Source::Compressed {
                            host: h,
                            len,
                            cluster_start,
                        } => {
                            let c = self.compressed(h, len, cluster_start)?;
                            let s = (guest - cluster_start) as usize;
                            b.copy_from_slice(&c[s..s + length as usize]);
                        }
                    }
                    write_at(&mut self.file, host, &b)?;
                }
                Step::Meta {
                    host, length, src, ..
                } => {
                    let mut b = vec![0u8; length as usize];
                    self.q.meta_bytes(&src, &mut b)?;
                    write_at(&mut self.file, host, &b)?;
                }
                Step::Flush | Step::Discard { .. } => {}
            }
        }
        Ok(())
    }

    fn drive(
        &mut self,
        off: u64,
        len: u64,
        payload: &[u8],
        plan: &mut dyn FnMut(
            &mut Qcow2<Vec<u64>>,
            u64,
            u64,
            &mut dyn FnMut(Step),
        ) -> Result<Plan, Qcow2Error>,
    ) -> Result<(), Stop> {
        let mut pos = 0;
        for _ in 0..100_000 {
            if pos >= len {
                return Ok(());
            }
            let mut steps = Vec::new();
            match plan(&mut self.q, off + pos, len - pos, &mut |s| steps.push(s))? {
                Plan::Need(n) => self.need(n)?,
                Plan::Planned(p) => {
                    let pl = payload.get(pos as usize..).unwrap_or(&[]);
                    match self.run(&steps, pl) {
                        Ok(()) => self.q.commit(p.ticket)?,
                        Err(e) => {
                            self.q.abort(p.ticket);
                            return Err(e);
                        }
                    }
                    pos += p.covered;
                }
            }
        }
        Err(Stop::Loop)
    }

    pub fn write(&mut self, off: u64, data: &[u8]) -> Result<(), Stop> {
        self.drive(off, data.len() as u64, data, &mut |q, o, l, s| {
            q.plan_write(o, l, s)
        })
    }

    pub fn zero(&mut self, off: u64, len: u64, unmap: bool) -> Result<(), Stop> {
        self.drive(off, len, &[], &mut |q, o, l, s| {
            q.plan_write_zeroes(o, l, unmap, s)
        })
    }

    pub fn discard(&mut self, off: u64, len: u64) -> Result<(), Stop> {
        self.drive(off, len, &[], &mut |q, o, l, s| q.plan_discard(o, l, s))
    }

    pub fn flush(&mut self) -> Result<(), Stop> {
        for _ in 0..1000 {
            let mut steps = Vec::new();
            match self.q.plan_flush(&mut |s| steps.push(s))? {
                Plan::Need(Need::Load(l)) => {
                    let mut b = vec![0u8; l.len as usize];
                    read_at(&self.file, l.offset, &mut b);
                    self.q.install(l, &b)?;
                }
                Plan::Need(Need::Flush) => return Err(Stop::Loop),
                Plan::Planned(p) => {
                    match self.run(&steps, &[]) {
                        Ok(()) => self.q.commit(p.ticket)?,
                        Err(e) => {
                            self.q.abort(p.ticket);
                            return Err(e);
                        }
                    }
                    if !self.q.has_dirty_metadata() {
                        return Ok(());
                    }
                }
            }
        }
        Err(Stop::Loop)
    }

    /// Parses the bitmap directory and decodes every table entry.
    pub fn bitmaps(&mut self) -> Result<usize, Qcow2Error> {
        let Some(ext) = self.q.header_area().bitmaps else {
            return Ok(0);
        };
        let mut dir = vec![0u8; ext.directory_size.min(1 << 20) as usize];
        read_at(&self.file, ext.directory_offset, &mut dir);
        let size = self.q.size();
        let cb = self.q.layout().cluster_bits;
        let d = Directory::parse(&dir, ext.nb_bitmaps, size, cb)?;
        let mut dirty = 0;
        for e in d.entries(size, cb) {
            let n = (e.table_size as usize).min(4096);
            let mut t = vec![0u8; n * 8];
            read_at(&self.file, e.table_offset, &mut t);
            for (i, x) in t.chunks_exact(8).enumerate() {
                let te =
                    bitmaps::decode_table_entry(u64::from_be_bytes(x.try_into().unwrap()), cb)?;
                let mut data = vec![0u8; 1 << cb];
                if let bitmaps::TableEntry::At(o) = te {
                    read_at(&self.file, o, &mut data);
                }
                bitmaps::for_each_dirty(
                    te,
                    &data,
                    i as u64,
                    cb,
                    e.granularity_bits,
                    size,
                    &mut |_, l| dirty += l,
                );
            }
        }
        Ok(dirty as usize)
    }
}
