//! A small std executor for the qcow2 core's plans, for tests: it opens
//! images made by qemu-img, follows backing chains, and carries out
//! reads, writes, zeroes, discards and flushes by performing exactly the
//! steps the core plans, on a file or an in-memory byte vector whose
//! operations can be recorded (for crash simulation).
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use blockwire_core::qcow2::header::HeaderArea;
use blockwire_core::qcow2::*;

/// One operation that reached the image file.
#[derive(Clone, Debug)]
pub enum Op {
    Write(u64, Vec<u8>),
    Flush,
    Discard(u64, u64),
}

/// The image file: a real file or memory, optionally recording operations.
pub struct Store {
    pub file: Option<File>,
    pub mem: Vec<u8>,
    pub log: Option<Vec<Op>>,
}

impl Store {
    pub fn file(path: &Path, writable: bool) -> Store {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        Store {
            file: Some(f),
            mem: Vec::new(),
            log: None,
        }
    }

    pub fn mem(bytes: Vec<u8>) -> Store {
        Store {
            file: None,
            mem: bytes,
            log: None,
        }
    }

    pub fn len(&self) -> u64 {
        match &self.file {
            Some(f) => f.metadata().unwrap().len(),
            None => self.mem.len() as u64,
        }
    }

    /// Reads; bytes past the end read as zeroes. Returns bytes in file.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> usize {
        buf.fill(0);
        match &self.file {
            Some(f) => {
                let mut done = 0;
                while done < buf.len() {
                    match f.read_at(&mut buf[done..], off + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) => panic!("read: {e}"),
                    }
                }
                done
            }
            None => {
                let len = self.mem.len() as u64;
                if off >= len {
                    return 0;
                }
                let n = ((len - off) as usize).min(buf.len());
                buf[..n].copy_from_slice(&self.mem[off as usize..off as usize + n]);
                n
            }
        }
    }

    pub fn write_at(&mut self, off: u64, data: &[u8]) {
        if let Some(log) = &mut self.log {
            log.push(Op::Write(off, data.to_vec()));
        }
        match &self.file {
            Some(f) => f.write_all_at(data, off).unwrap(),
            None => {
                let end = off as usize + data.len();
                if self.mem.len() < end {
                    self.mem.resize(end, 0);
                }
                self.mem[off as usize..end].copy_from_slice(data);
            }
        }
    }

    pub fn flush(&mut self) {
        if let Some(log) = &mut self.log {
            log.push(Op::Flush);
        }
        if let Some(f) = &self.file {
            f.sync_data().unwrap();
        }
    }

    pub fn discard(&mut self, off: u64, len: u64) {
        if let Some(log) = &mut self.log {
            log.push(Op::Discard(off, len));
        }
        // Optional step: zero it in memory so a wrong discard shows up.
        if self.file.is_none() {
            let end = ((off + len) as usize).min(self.mem.len());
            if (off as usize) < end {
                self.mem[off as usize..end].fill(0);
            }
        }
    }
}

/// A layer of a backing chain.
pub enum Layer {
    Raw(Store),
    Qcow2(Box<Image>),
}

impl Layer {
    pub fn size(&self) -> u64 {
        match self {
            Layer::Raw(s) => s.len(),
            Layer::Qcow2(i) => i.q.size(),
        }
    }

    pub fn read(&mut self, off: u64, buf: &mut [u8]) {
        buf.fill(0);
        let size = self.size();
        if off >= size {
            return;
        }
        let n = ((size - off) as usize).min(buf.len());
        match self {
            Layer::Raw(s) => {
                s.read_at(off, &mut buf[..n]);
            }
            Layer::Qcow2(i) => i.read(off, &mut buf[..n]).unwrap(),
        }
    }

    /// Allocation depth at `off` (1 = this layer), and run length.
    pub fn depth(&mut self, off: u64, len: u64) -> (u32, u64) {
        match self {
            Layer::Raw(_) => (1, len),
            Layer::Qcow2(i) => i.depth(off, len).unwrap(),
        }
    }
}

/// Why opening a chain failed.
#[derive(Debug)]
pub enum ChainOpenError {
    Image(Qcow2Error),
    Chain(blockwire_core::qcow2::chain::ChainError),
}

impl From<Qcow2Error> for ChainOpenError {
    fn from(e: Qcow2Error) -> Self {
        ChainOpenError::Image(e)
    }
}

/// An open image with its backing chain.
pub struct Image {
    pub q: Qcow2<Vec<u64>>,
    pub store: Store,
    pub backing: Option<Layer>,
    pub inflater: Box<Inflater>,
    pub steps_run: usize,
}

pub fn default_cfg(read_only: bool) -> Config {
    Config {
        read_only,
        ..Config::default()
    }
}

/// Reads cluster 0 and parses it.
pub fn parse_area(store: &Store) -> Result<HeaderArea, Qcow2Error> {
    let mut first = vec![0u8; 4096];
    let n = store.read_at(0, &mut first);
    first.truncate(n);
    let need = HeaderArea::needed_len(&first, store.len())?;
    let mut buf = vec![0u8; need as usize];
    let n = store.read_at(0, &mut buf);
    buf.truncate(n);
    HeaderArea::parse(&buf)
}

impl Image {
    pub fn open_store(store: Store, dir: &Path, cfg: &Config) -> Result<Image, Qcow2Error> {
        let mut ids = vec![0u128; blockwire_core::qcow2::chain::DEFAULT_MAX_DEPTH];
        let mut guard = blockwire_core::qcow2::chain::ChainGuard::new(&mut ids);
        Image::open_chain(store, dir, cfg, &mut guard).map_err(|e| match e {
            ChainOpenError::Image(e) => e,
            ChainOpenError::Chain(c) => panic!("{c}"),
        })
    }

    /// Opens an image and its backing chain under `guard`.
    pub fn open_chain(
        store: Store,
        dir: &Path,
        cfg: &Config,
        guard: &mut blockwire_core::qcow2::chain::ChainGuard<'_>,
    ) -> Result<Image, ChainOpenError> {
        use std::os::unix::fs::MetadataExt;
        let id = match &store.file {
            Some(f) => {
                let m = f.metadata().unwrap();
                ((m.dev() as u128) << 64) | m.ino() as u128
            }
            None => u128::MAX - guard.depth() as u128,
        };
        guard.enter(id).map_err(ChainOpenError::Chain)?;
        let area = parse_area(&store)?;
        let words = Qcow2::words_needed(&area, cfg)?;
        let mut q = Qcow2::open(area, store.len(), cfg, vec![0u64; words])?;
        while let Some(load) = q.open_need() {
            let mut buf = vec![0u8; load.len as usize];
            let n = store.read_at(load.offset, &mut buf);
            buf.truncate(n);
            q.install(load, &buf)?;
        }
        let q = q;
        let backing = match q.backing_name() {
            None => None,
            Some(name) => {
                let name = String::from_utf8_lossy(name).to_string();
                let path = if name.starts_with('/') {
                    PathBuf::from(&name)
                } else {
                    dir.join(&name)
                };
                let bstore = Store::file(&path, false);
                let mut magic = [0u8; 4];
                bstore.read_at(0, &mut magic);
                let fmt = String::from_utf8_lossy(q.backing_format()).to_string();
                if fmt == "qcow2" || (fmt.is_empty() && &magic == b"QFI\xfb") {
                    let bdir = path.parent().unwrap().to_path_buf();
                    Some(Layer::Qcow2(Box::new(Image::open_chain(
                        bstore,
                        &bdir,
                        &default_cfg(true),
                        guard,
                    )?)))
                } else {
                    guard
                        .enter({
                            use std::os::unix::fs::MetadataExt;
                            let m = bstore.file.as_ref().unwrap().metadata().unwrap();
                            ((m.dev() as u128) << 64) | m.ino() as u128
                        })
                        .map_err(ChainOpenError::Chain)?;
                    Some(Layer::Raw(bstore))
                }
            }
        };
        Ok(Image {
            q,
            store,
            backing,
            inflater: Box::new(Inflater::new()),
            steps_run: 0,
        })
    }

    pub fn open(path: &Path, cfg: &Config) -> Result<Image, Qcow2Error> {
        let store = Store::file(path, !cfg.read_only);
        Image::open_store(store, path.parent().unwrap(), cfg)
    }

    fn load(&mut self, load: Load) -> Result<(), Qcow2Error> {
        let mut buf = vec![0u8; load.len as usize];
        self.store.read_at(load.offset, &mut buf);
        self.q.install(load, &buf)
    }

    fn need(&mut self, n: Need) -> Result<(), Qcow2Error> {
        match n {
            Need::Load(l) => self.load(l),
            Need::Flush => self.flush(),
        }
    }

    fn read_compressed(
        &mut self,
        host: u64,
        len: u64,
        cluster_start: u64,
    ) -> Result<Vec<u8>, Qcow2Error> {
        let mut input = vec![0u8; len as usize];
        self.store.read_at(host, &mut input);
        let mut out = vec![0u8; self.q.layout().cluster_size() as usize];
        self.inflater
            .inflate_cluster(&input, &mut out, cluster_start)?;
        Ok(out)
    }

    pub fn read(&mut self, off: u64, buf: &mut [u8]) -> Result<(), Qcow2Error> {
        let mut pos = 0usize;
        let mut guard = 0;
        while pos < buf.len() {
            guard += 1;
            assert!(guard < 1_000_000, "read loop does not progress");
            let g = off + pos as u64;
            match self.q.map(g, (buf.len() - pos) as u64)? {
                MapResult::Need(n) => self.need(n)?,
                MapResult::Run(r) => {
                    assert_eq!(r.offset, g);
                    assert!(r.length > 0);
                    let dst = &mut buf[pos..pos + r.length as usize];
                    match r.mapping {
                        Mapping::Data { host } => {
                            self.store.read_at(host, dst);
                        }
                        Mapping::Zero => dst.fill(0),
                        Mapping::Unallocated => match &mut self.backing {
                            Some(b) => b.read(g, dst),
                            None => dst.fill(0),
                        },
                        Mapping::Compressed {
                            host,
                            len,
                            cluster_start,
                        } => {
                            let c = self.read_compressed(host, len, cluster_start)?;
                            let s = (g - cluster_start) as usize;
                            dst.copy_from_slice(&c[s..s + dst.len()]);
                        }
                    }
                    pos += r.length as usize;
                }
            }
        }
        Ok(())
    }

    /// Allocation depth of the run at `off` as qemu:allocation-depth
    /// reports it: 1 here, backing depth + 1, 0 unallocated.
    pub fn depth(&mut self, off: u64, len: u64) -> Result<(u32, u64), Qcow2Error> {
        loop {
            match self.q.map(off, len)? {
                MapResult::Need(n) => self.need(n)?,
                MapResult::Run(r) => {
                    if r.allocated_here() {
                        return Ok((1, r.length));
                    }
                    return Ok(match &mut self.backing {
                        None => (0, r.length),
                        Some(b) => {
                            if off >= b.size() {
                                (0, r.length)
                            } else {
                                let (d, l) = b.depth(off, r.length.min(b.size() - off));
                                (if d == 0 { 0 } else { d + 1 }, l)
                            }
                        }
                    });
                }
            }
        }
    }

    /// Carries out `steps` with `payload`.
    fn run_steps(&mut self, steps: &[Step], payload: &[u8]) -> Result<(), Qcow2Error> {
        for s in steps {
            self.steps_run += 1;
            match *s {
                Step::Data {
                    host,
                    length,
                    buf_offset,
                } => {
                    let b = &payload[buf_offset as usize..(buf_offset + length) as usize];
                    self.store.write_at(host, b);
                }
                Step::Fill {
                    host,
                    guest,
                    length,
                    source,
                } => {
                    let mut b = vec![0u8; length as usize];
                    match source {
                        Source::Zeroes => {}
                        Source::Backing => {
                            if let Some(l) = &mut self.backing {
                                l.read(guest, &mut b);
                            }
                        }
                        Source::Host(h) => {
                            self.store.read_at(h, &mut b);
                        }
                        Source::Compressed {
                            host,
                            len,
                            cluster_start,
                        } => {
                            let c = self.read_compressed(host, len, cluster_start)?;
                            let s = (guest - cluster_start) as usize;
                            b.copy_from_slice(&c[s..s + length as usize]);
                        }
                    }
                    self.store.write_at(host, &b);
                }
                Step::Meta {
                    host, length, src, ..
                } => {
                    let mut b = vec![0u8; length as usize];
                    let n = self.q.meta_bytes(&src, &mut b)?;
                    assert_eq!(n as u64, length);
                    self.store.write_at(host, &b);
                }
                Step::Flush => self.store.flush(),
                Step::Discard { host, length } => self.store.discard(host, length),
            }
        }
        Ok(())
    }

    fn drive(
        &mut self,
        off: u64,
        len: u64,
        payload: Option<&[u8]>,
        mut plan: impl FnMut(
            &mut Qcow2<Vec<u64>>,
            u64,
            u64,
            &mut dyn FnMut(Step),
        ) -> Result<Plan, Qcow2Error>,
    ) -> Result<(), Qcow2Error> {
        let mut pos = 0u64;
        let mut guard = 0;
        while pos < len {
            guard += 1;
            assert!(guard < 1_000_000, "plan loop does not progress");
            let mut steps = Vec::new();
            match plan(&mut self.q, off + pos, len - pos, &mut |s| steps.push(s))? {
                Plan::Need(n) => {
                    assert!(steps.is_empty());
                    self.need(n)?
                }
                Plan::Planned(p) => {
                    let pl = payload.map(|p| &p[pos as usize..]).unwrap_or(&[]);
                    match self.run_steps(&steps, pl) {
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
        Ok(())
    }

    pub fn write(&mut self, off: u64, data: &[u8]) -> Result<(), Qcow2Error> {
        self.drive(off, data.len() as u64, Some(data), |q, o, l, s| {
            q.plan_write(o, l, s)
        })
    }

    pub fn write_zeroes(&mut self, off: u64, len: u64, unmap: bool) -> Result<(), Qcow2Error> {
        self.drive(off, len, None, |q, o, l, s| {
            q.plan_write_zeroes(o, l, unmap, s)
        })
    }

    pub fn discard(&mut self, off: u64, len: u64) -> Result<(), Qcow2Error> {
        self.drive(off, len, None, |q, o, l, s| q.plan_discard(o, l, s))
    }

    pub fn flush(&mut self) -> Result<(), Qcow2Error> {
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(guard < 100_000, "flush loop does not progress");
            let mut steps = Vec::new();
            match self.q.plan_flush(&mut |s| steps.push(s))? {
                Plan::Need(n) => match n {
                    Need::Load(l) => self.load(l)?,
                    Need::Flush => panic!("flush plan asked for a flush"),
                },
                Plan::Planned(p) => {
                    match self.run_steps(&steps, &[]) {
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
    }

    /// Reads the whole virtual disk.
    pub fn read_all(&mut self) -> Vec<u8> {
        let mut v = vec![0u8; self.q.size() as usize];
        self.read(0, &mut v).unwrap();
        v
    }
}

// ---- qemu tools ----

pub fn tmpdir(name: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("qcow2-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Whether the QEMU tools are there; in CI their absence is a failure.
pub fn have_qemu() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("qemu-img is missing: the qcow2 interop tests need QEMU's tools");
    }
    if !ok {
        eprintln!("SKIP: qemu-img missing");
    }
    ok
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn qemu_io(img: &Path, cmds: &[&str]) {
    let mut args: Vec<&str> = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let p = img.to_str().unwrap();
    args.push(p);
    let out = run("qemu-io", &args);
    assert!(
        !out.contains("error") && !out.contains("failed"),
        "qemu-io: {out}"
    );
}

/// `qemu-img convert -O raw` of the image, as bytes.
pub fn qemu_raw(img: &Path) -> Vec<u8> {
    let raw = img.with_extension("raw-out");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    v
}

/// `qemu-img check --output=json`, parsed loosely.
pub struct Check {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    pub status: i32,
    pub raw: String,
}

pub fn qemu_check(img: &Path) -> Check {
    let out = Command::new("qemu-img")
        .args([
            "check",
            "--output=json",
            "-f",
            "qcow2",
            img.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| -> u64 {
        s.find(&format!("\"{k}\":"))
            .map(|i| {
                s[i + k.len() + 3..]
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    Check {
        corruptions: field("corruptions"),
        leaks: field("leaks"),
        check_errors: field("check-errors"),
        status: out.status.code().unwrap_or(-1),
        raw: format!("{s}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

pub fn assert_clean(img: &Path) {
    let c = qemu_check(img);
    assert!(
        c.corruptions == 0 && c.leaks == 0 && c.check_errors == 0 && c.status == 0,
        "qemu-img check {}: {}",
        img.display(),
        c.raw
    );
}

/// A deterministic pseudo-random generator (xorshift) for test workloads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A byte pattern identifying a write.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

// ---- persistent bitmaps ----

use blockwire_core::qcow2::bitmaps::{self, DirtySource, TableEntry};

/// Dirty runs as a [`DirtySource`].
pub struct Runs(pub Vec<(u64, u64)>);

impl DirtySource for Runs {
    fn for_each_dirty(&self, offset: u64, end: u64, f: &mut dyn FnMut(u64, u64)) {
        for &(o, l) in &self.0 {
            let s = o.max(offset);
            let e = (o + l).min(end);
            if s < e {
                f(s, e - s);
            }
        }
    }
}

/// A bitmap as loaded: name, flags, granularity, dirty runs (merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub name: String,
    pub flags: u32,
    pub granularity_bits: u8,
    pub dirty: Vec<(u64, u64)>,
}

impl Image {
    fn directory_bytes(&mut self) -> Option<(Vec<u8>, u32, u64)> {
        let ext = self.q.header_area().bitmaps?;
        let mut dir = vec![0u8; ext.directory_size as usize];
        self.store.read_at(ext.directory_offset, &mut dir);
        Some((dir, ext.nb_bitmaps, ext.directory_offset))
    }

    /// Every bitmap in the image, with its dirty runs.
    pub fn load_bitmaps(&mut self) -> Result<Vec<Loaded>, Qcow2Error> {
        let Some((dir, nb, _)) = self.directory_bytes() else {
            return Ok(Vec::new());
        };
        let size = self.q.size();
        let cb = self.q.layout().cluster_bits;
        let c = 1usize << cb;
        let d = bitmaps::Directory::parse(&dir, nb, size, cb)?;
        let mut out = Vec::new();
        for e in d.entries(size, cb) {
            let mut table = vec![0u8; e.table_size as usize * 8];
            self.store.read_at(e.table_offset, &mut table);
            let mut dirty: Vec<(u64, u64)> = Vec::new();
            for (i, t) in table.chunks_exact(8).enumerate() {
                let te =
                    bitmaps::decode_table_entry(u64::from_be_bytes(t.try_into().unwrap()), cb)?;
                let mut data = vec![0u8; c];
                if let TableEntry::At(off) = te {
                    self.store.read_at(off, &mut data);
                }
                bitmaps::for_each_dirty(
                    te,
                    &data,
                    i as u64,
                    cb,
                    e.granularity_bits,
                    size,
                    &mut |o, l| match dirty.last_mut() {
                        Some(last) if last.0 + last.1 == o => last.1 += l,
                        _ => dirty.push((o, l)),
                    },
                );
            }
            out.push(Loaded {
                name: String::from_utf8_lossy(e.name).to_string(),
                flags: e.flags,
                granularity_bits: e.granularity_bits,
                dirty,
            });
        }
        Ok(out)
    }

    fn alloc(&mut self, n: u64) -> Result<u64, Qcow2Error> {
        loop {
            let mut steps = Vec::new();
            match self.q.alloc_clusters(n, &mut |s| steps.push(s))? {
                Alloc::At(h) => return Ok(h),
                Alloc::Need(nd) => self.need(nd)?,
                Alloc::Planned(p) => {
                    self.run_steps(&steps, &[])?;
                    self.q.commit(p.ticket)?;
                }
            }
        }
    }

    fn free(&mut self, host: u64, len: u64) -> Result<(), Qcow2Error> {
        while let Some(nd) = self.q.free_clusters(host, len)? {
            self.need(nd)?;
        }
        Ok(())
    }

    /// Stores (adds or replaces) bitmap `name`, keeping the others, in
    /// QEMU's order: data, table, directory; flush; header; flush; free.
    pub fn store_bitmap(
        &mut self,
        name: &str,
        granularity_bits: u8,
        flags: u32,
        dirty: &Runs,
    ) -> Result<(), Qcow2Error> {
        let size = self.q.size();
        let cb = self.q.layout().cluster_bits;
        let c = 1u64 << cb;
        let n = bitmaps::table_entries(size, granularity_bits, cb);
        let mut table = vec![0u8; (n * 8) as usize];
        let mut buf = vec![0u8; c as usize];
        let mut to_free: Vec<(u64, u64)> = Vec::new();
        for i in 0..n {
            if bitmaps::encode_cluster(dirty, i, cb, granularity_bits, size, &mut buf) {
                let h = self.alloc(1)?;
                self.store.write_at(h, &buf);
                table[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&h.to_be_bytes());
            }
        }
        let tclusters = (n * 8).div_ceil(c).max(1);
        let th = self.alloc(tclusters)?;
        self.store.write_at(th, &table);
        // New directory: the other entries verbatim, then this one.
        let mut newdir = Vec::new();
        let mut count = 0u32;
        if let Some((dir, nb, doff)) = self.directory_bytes() {
            let d = bitmaps::Directory::parse(&dir, nb, size, cb)?;
            for e in d.entries(size, cb) {
                if e.name == name.as_bytes() {
                    let mut t = vec![0u8; e.table_size as usize * 8];
                    self.store.read_at(e.table_offset, &mut t);
                    for x in t.chunks_exact(8) {
                        if let TableEntry::At(o) = bitmaps::decode_table_entry(
                            u64::from_be_bytes(x.try_into().unwrap()),
                            cb,
                        )? {
                            to_free.push((o, c));
                        }
                    }
                    to_free.push((e.table_offset, (e.table_size as u64 * 8).max(1)));
                    continue;
                }
                newdir.extend_from_slice(e.raw);
                count += 1;
            }
            to_free.push((doff, dir.len() as u64));
        }
        let mut ent = vec![0u8; bitmaps::entry_len(name.len(), 0)];
        bitmaps::emit_entry(
            &mut ent,
            th,
            n as u32,
            flags,
            granularity_bits,
            name.as_bytes(),
        )?;
        newdir.extend_from_slice(&ent);
        count += 1;
        let dh = self.alloc((newdir.len() as u64).div_ceil(c))?;
        self.store.write_at(dh, &newdir);
        self.flush()?;
        self.q
            .set_bitmaps_extension(Some(blockwire_core::qcow2::header::BitmapsExt {
                nb_bitmaps: count,
                directory_size: newdir.len() as u64,
                directory_offset: dh,
            }))?;
        self.flush()?;
        for (h, l) in to_free {
            self.free(h, l)?;
        }
        self.flush()?;
        Ok(())
    }
}

// ---- images made by the core itself, and a small refcount checker ----

use blockwire_core::qcow2::create::{Create, Options};

/// The bytes of a new image formatted by the core.
pub fn create_bytes(o: &Options<'_>) -> Vec<u8> {
    let c = Create::new(o).unwrap();
    let cs = c.cluster_size() as usize;
    let mut v = vec![0u8; c.clusters() as usize * cs];
    for i in 0..c.clusters() {
        c.cluster(i, &mut v[i as usize * cs..(i as usize + 1) * cs])
            .unwrap();
    }
    v
}

pub fn be64_at(b: &[u8], at: u64) -> u64 {
    let mut a = [0u8; 8];
    for (i, x) in a.iter_mut().enumerate() {
        *x = b.get(at as usize + i).copied().unwrap_or(0);
    }
    u64::from_be_bytes(a)
}

/// What `qemu-img check` counts, recomputed from the bytes: (clusters
/// referenced more often than their refcount says, leaked clusters).
/// Knows header, refcount table and blocks, L1, L2 and data clusters
/// (including compressed ones); images with snapshots or bitmaps are not
/// handled.
pub fn check_refcounts(b: &[u8]) -> (u64, u64) {
    let area = HeaderArea::parse(b).unwrap();
    let h = area.header;
    let lay = blockwire_core::qcow2::layout::Layout::new(&h);
    let c = lay.cluster_size();
    let clusters = (b.len() as u64).div_ceil(c) + 1;
    let mut refs = vec![0u64; clusters as usize + 64];
    let add = |off: u64, len: u64, refs: &mut Vec<u64>| {
        let first = off / c;
        let last = (off + len.max(1) - 1) / c;
        for k in first..=last {
            if (k as usize) < refs.len() {
                refs[k as usize] += 1;
            }
        }
    };
    add(0, c, &mut refs);
    add(
        h.refcount_table_offset,
        h.refcount_table_clusters as u64 * c,
        &mut refs,
    );
    let rt_entries = h.refcount_table_clusters as u64 * c / 8;
    for i in 0..rt_entries {
        let e = be64_at(b, h.refcount_table_offset + i * 8);
        if e != 0 {
            add(e, c, &mut refs);
        }
    }
    add(h.l1_table_offset, h.l1_size as u64 * 8, &mut refs);
    for i in 0..h.l1_size as u64 {
        let l2 = be64_at(b, h.l1_table_offset + i * 8) & 0x00ff_ffff_ffff_fe00;
        if l2 == 0 {
            continue;
        }
        add(l2, c, &mut refs);
        for j in 0..lay.l2_entries() {
            let at = l2 + j * 8 * lay.l2_entry_words();
            let m = lay
                .decode_l2(be64_at(b, at), be64_at(b, at + 8), 0)
                .unwrap();
            match m {
                blockwire_core::qcow2::layout::ClusterMap::Compressed { host, len } => {
                    add(host, len, &mut refs)
                }
                blockwire_core::qcow2::layout::ClusterMap::Standard { host, .. } => {
                    if host != 0 {
                        add(host, c, &mut refs)
                    }
                }
            }
        }
    }
    let per = 1u64 << lay.refblock_bits();
    let mut errors = 0;
    let mut leaks = 0;
    for k in 0..refs.len() as u64 {
        let ti = k / per;
        let rc = if ti < rt_entries {
            let blk = be64_at(b, h.refcount_table_offset + ti * 8);
            if blk == 0 {
                0
            } else {
                let words: Vec<u64> = (0..c / 8).map(|w| be64_at(b, blk + w * 8)).collect();
                lay.refcount_get(&words, k % per)
            }
        } else {
            0
        };
        let r = refs[k as usize];
        if rc < r {
            errors += 1;
        } else if rc > r {
            leaks += 1;
        }
    }
    (errors, leaks)
}

/// An image qemu-img creates with `opts` and qemu-io fills with `prefill`.
pub fn make_image(name: &str, opts: &str, size: &str, prefill: &[&str]) -> Vec<u8> {
    let d = tmpdir(name);
    let p = d.join("h.qcow2");
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    let ps = p.to_str().unwrap().to_string();
    args.push(&ps);
    args.push(size);
    run("qemu-img", &args);
    if !prefill.is_empty() {
        qemu_io(&p, prefill);
    }
    std::fs::read(&p).unwrap()
}

/// Opens image bytes in memory (no backing file can be found).
pub fn open_bytes(b: &[u8], ro: bool) -> Result<Image, Qcow2Error> {
    Image::open_store(
        Store::mem(b.to_vec()),
        std::path::Path::new("/nonexistent"),
        &default_cfg(ro),
    )
}

pub fn be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub fn be64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

pub fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}
