//! Deterministic simulation of whole NBD deployments: the core server
//! machine over a block model, several core client machines, and a
//! simulated network between them, all in one thread and driven by one
//! seeded random source, so a seed names one exact run.
//!
//! The network delivers each connection's bytes in order but in random
//! splits (down to one byte), and interleaves connections at random, so
//! requests and replies of different connections are reordered freely.
//! The server frontend carries out requests in random order (across and
//! within connections), and sends the chunks of structured replies of
//! different requests interleaved. Faults: a connection reset (both ends
//! lose what was in flight; requests the server already read may still be
//! carried out later, as on a real server with I/O in flight), and a
//! server crash and restart over a disk that keeps only what was flushed
//! (and FUA writes), or, on "leaky" seeds, also a random part of what was
//! not.
//!
//! Invariants, checked as the run goes (the run stops at the first
//! violation, which names the seed and the step):
//! * no desynchronised stream: neither machine fails or rejects anything
//!   on a connection the simulation did not break;
//! * every request is answered exactly once (a completion for a cookie
//!   not in flight is a violation), and, once faults stop, every request
//!   still in flight is answered;
//! * a read returns, block by block, a value some write could have left
//!   there: the last write acknowledged before the read was sent, or a
//!   write that overlapped it in time (in flight, or lost with its
//!   connection), never anything older or made up;
//! * after a crash every block holds a write that could have survived:
//!   an acknowledged FUA write, or a write acknowledged before a flush
//!   that was acknowledged (on any connection when the export advertises
//!   `CAN_MULTI_CONN`, else on its own), or something later.
//!
//! Blocks are 512 bytes; each write fills each of its blocks with its
//! own id and the block's index, so every block read names the write it
//! came from.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use blockwire_core::block::Extent;
use blockwire_core::client::{Client, Config, Event as CEvent, MAX_FRAGMENTS, RequestFailure};
use blockwire_core::server::Event as SEvent;
use blockwire_core::server::{
    BlockSizes, Command, ExportInfo, Exports, Fault, Request, Server, ServerConfig, Session,
};
use blockwire_core::time::Instant;
use blockwire_core::wire::{CommandFlags, Errno, TransmissionFlags};

pub const BLOCK: usize = 512;
pub const BLOCKS: usize = 64;
pub const SIZE: usize = BLOCK * BLOCKS;
/// Requests one client machine keeps in flight at most.
const IN_FLIGHT: usize = 8;

/// splitmix64: small, fast, and the whole state is the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    /// True with probability `n` in `d`.
    pub fn odds(&mut self, n: u64, d: u64) -> bool {
        self.below(d) < n
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }
}

/// The one export.
#[derive(Clone, Copy)]
struct SimExports {
    multi_conn: bool,
}

impl Exports for SimExports {
    fn find(&self, name: &str) -> Option<usize> {
        (name.is_empty() || name == "sim").then_some(0)
    }
    fn export(&self, i: usize) -> Option<ExportInfo<'_>> {
        let mut flags = TransmissionFlags::SEND_FLUSH
            | TransmissionFlags::SEND_FUA
            | TransmissionFlags::SEND_TRIM
            | TransmissionFlags::SEND_WRITE_ZEROES;
        if self.multi_conn {
            flags |= TransmissionFlags::CAN_MULTI_CONN;
        }
        (i == 0).then_some(ExportInfo {
            name: "sim",
            description: "",
            size: SIZE as u64,
            flags,
            block_sizes: BlockSizes::DEFAULT,
            block_size_required: false,
        })
    }
    fn meta_context(&self, _: usize, i: usize) -> Option<&str> {
        (i == 0).then_some("base:allocation")
    }
}

/// What a block may hold, as the oracle sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Val {
    Zero,
    /// Written by the write with this id.
    Data(u64),
    /// Trimmed: the spec promises nothing about its contents.
    Any,
}

fn pattern(id: u64, block: usize) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    for c in b.chunks_mut(16) {
        c[..8].copy_from_slice(&id.to_le_bytes());
        c[8..].copy_from_slice(&(block as u64).to_le_bytes());
    }
    b
}

/// What a block's bytes say: `None` for bytes no write produced.
fn decode(bytes: &[u8], block: usize) -> Option<Val> {
    if bytes.iter().all(|&b| b == 0) {
        return Some(Val::Zero);
    }
    let id = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    (bytes == pattern(id, block)).then_some(Val::Data(id))
}

fn allows(set: &[Val], v: Val) -> bool {
    set.iter().any(|&c| c == v || c == Val::Any)
}

/// One write (or zero, or trim) as the oracle tracks it.
#[derive(Clone, Debug)]
struct WriteRec {
    val: Val,
    conn: usize,
    first: usize,
    count: usize,
    submit: u64,
    /// When its reply came (`Ok`).
    acked: Option<u64>,
    /// It failed or was lost: it may or may not have taken effect, and a
    /// server may still carry it out, until the next crash.
    lost: bool,
    /// When it was last certain to be durable (FUA reply, or a covering
    /// flush's reply).
    durable: Option<u64>,
}

impl WriteRec {
    /// The latest time it can have taken effect (`u64::MAX`: not known yet).
    fn latest(&self) -> u64 {
        self.acked.unwrap_or(u64::MAX)
    }
    fn covers(&self, b: usize) -> bool {
        b >= self.first && b < self.first + self.count
    }
}

/// What the oracle knows about the disk since the last crash.
struct Oracle {
    /// Per block: what it may hold at the start of the epoch.
    base: Vec<Vec<Val>>,
    epoch: u64,
    /// Writes of this epoch, by submission.
    writes: Vec<WriteRec>,
    multi_conn: bool,
}

impl Oracle {
    fn new(multi_conn: bool) -> Self {
        Oracle {
            base: vec![vec![Val::Zero]; BLOCKS],
            epoch: 0,
            writes: Vec::new(),
            multi_conn,
        }
    }

    /// What a read of block `b` sent at `sent` and answered at `now` may
    /// return: the base unless an acknowledged write came after it, and
    /// every write that may have taken effect before `now` and was not
    /// certainly overwritten before `sent`.
    fn readable(&self, b: usize, sent: u64, now: u64) -> Vec<Val> {
        let mine: Vec<&WriteRec> = self.writes.iter().filter(|w| w.covers(b)).collect();
        let overwritten = |latest: u64| {
            mine.iter()
                .any(|w2| w2.acked.is_some_and(|a| a < sent) && w2.submit > latest)
        };
        let mut out = Vec::new();
        if !overwritten(self.epoch) {
            out.extend_from_slice(&self.base[b]);
        }
        for w in &mine {
            if w.submit < now && !overwritten(w.latest()) {
                out.push(w.val);
            }
        }
        out
    }

    /// What block `b` may hold after a crash at `now`: whatever may have
    /// taken effect and was not certainly overwritten by a later write
    /// certain to be durable.
    fn survivable(&self, b: usize, now: u64) -> Vec<Val> {
        let mine: Vec<&WriteRec> = self.writes.iter().filter(|w| w.covers(b)).collect();
        let buried = |latest: u64| {
            mine.iter()
                .any(|w2| w2.durable.is_some_and(|d| d < now) && w2.submit > latest)
        };
        let mut out = Vec::new();
        if !buried(self.epoch) {
            out.extend_from_slice(&self.base[b]);
        }
        for w in &mine {
            // Lost writes could have landed until now, but no later.
            let latest = if w.lost { now } else { w.latest().min(now) };
            if !buried(latest) {
                out.push(w.val);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// A flush sent at `sent` on `conn` was answered at `now`: every write
    /// acknowledged before it was sent is durable (on every connection,
    /// with multi-conn).
    fn flushed(&mut self, conn: usize, sent: u64, now: u64) {
        let multi = self.multi_conn;
        for w in &mut self.writes {
            if w.durable.is_none() && w.acked.is_some_and(|a| a < sent) && (multi || w.conn == conn)
            {
                w.durable = Some(now);
            }
        }
    }
}

/// The disk under the server: a volatile cache and what is on stable
/// storage.
struct Disk {
    cache: Vec<u8>,
    stable: Vec<u8>,
    /// A crash may also keep part of what was not flushed.
    leaky: bool,
}

impl Disk {
    fn crash(&mut self, rng: &mut Rng) {
        if self.leaky {
            for b in 0..BLOCKS {
                let r = b * BLOCK..(b + 1) * BLOCK;
                if rng.odds(1, 2) {
                    let (c, s) = (&self.cache[r.clone()], &mut self.stable[r.clone()]);
                    s.copy_from_slice(c);
                }
            }
        }
        self.cache.copy_from_slice(&self.stable);
    }
}

/// A request the server read, waiting to be carried out.
struct Job {
    link: usize,
    /// The connection it came on (a reset orphans it: still carried out,
    /// reply dropped).
    generation: u64,
    req: Request,
    payload: Vec<u8>,
}

/// The server's end of one connection.
struct ServerEnd {
    machine: Server<SimExports>,
    input: Vec<u8>,
    session: Option<Session>,
    /// A write whose payload is arriving: the request and what came.
    write: Option<(Request, Vec<u8>)>,
    /// Reply chunks not yet sent, per request, in order.
    replies: Vec<Vec<Vec<u8>>>,
    disconnected: bool,
    /// Take write payloads straight from the input (`skip_payload`), as
    /// a frontend reading them into its own buffer does.
    skip: bool,
}

/// A request the client sent, by cookie.
struct Sent {
    kind: Kind,
    first: usize,
    count: usize,
    at: u64,
    /// Index in the oracle's writes (writes, zeroes, trims).
    write: Option<usize>,
    /// Read data as it arrives.
    data: Vec<u8>,
    /// Block status extents as they arrive: offset, length, flags.
    extents: Vec<(u64, u64, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Zero,
    Trim,
    Flush,
    /// `NBD_CMD_BLOCK_STATUS` on `base:allocation`.
    Status,
}

/// The client's end of one connection.
struct ClientEnd {
    machine: Box<Client<IN_FLIGHT>>,
    input: Vec<u8>,
    ready: bool,
    /// The export's flags, from `Ready`.
    flags: TransmissionFlags,
    /// `base:allocation` was selected.
    status: bool,
    sent: BTreeMap<u64, Sent>,
    /// Disconnect requested (`NBD_CMD_DISC` queued).
    leaving: bool,
    /// The server said it is shutting down.
    shutdown_seen: bool,
}

/// One connection: both ends and the bytes between them.
struct Link {
    client: ClientEnd,
    server: ServerEnd,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    /// Generation: bumps on every reconnect of this slot.
    generation: u64,
    alive: bool,
}

/// Counts for the summary line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub requests: u64,
    pub reads_checked: u64,
    pub resets: u64,
    pub crashes: u64,
    pub flushes: u64,
    /// Reads replied to in more out-of-order pieces than the client's
    /// range table holds (see `MAX_FRAGMENTS`): reassembled all the same.
    pub scattered: u64,
    pub statuses: u64,
    pub shutdowns: u64,
    /// Requests refused with `ESHUTDOWN`.
    pub eshutdown: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.requests += o.requests;
        self.reads_checked += o.reads_checked;
        self.resets += o.resets;
        self.crashes += o.crashes;
        self.flushes += o.flushes;
        self.scattered += o.scattered;
        self.statuses += o.statuses;
        self.shutdowns += o.shutdowns;
        self.eshutdown += o.eshutdown;
    }
}

pub struct Sim {
    rng: Rng,
    seed: u64,
    now: u64,
    links: Vec<Option<Link>>,
    jobs: Vec<Job>,
    disk: Disk,
    oracle: Oracle,
    exports: SimExports,
    server_cfg: ServerConfig,
    client_structured: bool,
    client_extended: bool,
    /// Ask for `base:allocation`.
    client_status: bool,
    /// Requests a client keeps in flight (at most the machine's table):
    /// small depths reuse cookies quickly.
    depth: usize,
    server_up: bool,
    next_id: u64,
    pub stats: Stats,
    /// Faults are injected while true (the end of a run turns them off to
    /// check that everything in flight is answered).
    faults: bool,
    violation: Option<String>,
    /// The server is shutting down: new requests get `ESHUTDOWN`, and each
    /// connection closes once its requests are answered.
    draining: bool,
    /// Requests the server failed on purpose: (link, generation, cookie).
    injected: BTreeSet<(usize, u64, u64)>,
    /// Reads whose reply came in more than MAX_FRAGMENTS pieces out of
    /// order.
    scattered: BTreeSet<(usize, u64, u64)>,
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let multi_conn = rng.odds(3, 4);
        let conns = if multi_conn {
            rng.range(1, 4)
        } else {
            1 + rng.range(0, 1)
        };
        let server_cfg = ServerConfig {
            handshake_timeout: None,
            structured_replies: rng.odds(3, 4),
            extended_headers: rng.odds(1, 2),
            ..ServerConfig::default()
        };
        let mut sim = Sim {
            seed,
            now: 1,
            links: (0..conns).map(|_| None).collect(),
            jobs: Vec::new(),
            disk: Disk {
                cache: vec![0; SIZE],
                stable: vec![0; SIZE],
                leaky: rng.odds(1, 2),
            },
            oracle: Oracle::new(multi_conn),
            exports: SimExports { multi_conn },
            server_cfg,
            client_structured: rng.odds(3, 4),
            client_extended: rng.odds(1, 2),
            client_status: rng.odds(2, 3),
            depth: rng.range(1, IN_FLIGHT),
            server_up: true,
            next_id: 1,
            stats: Stats::default(),
            faults: true,
            violation: None,
            injected: BTreeSet::new(),
            draining: false,
            scattered: BTreeSet::new(),
            rng,
        };
        for i in 0..conns {
            sim.connect(i);
        }
        sim
    }

    fn fail(&mut self, msg: String) {
        if self.violation.is_none() {
            self.violation = Some(format!(
                "seed {} step {}: {msg} (replay: cargo run -p blockwire-core --example sim -- --seed {})",
                self.seed, self.stats.steps, self.seed
            ));
        }
    }

    fn connect(&mut self, i: usize) {
        // Every event has a time of its own, so "before" is strict.
        self.now += 1;
        let mut config = Config::new("sim").expect("config");
        config.structured_replies = self.client_structured;
        config.extended_headers = self.client_extended;
        if self.client_status {
            config
                .add_meta_context("base:allocation")
                .expect("one context");
        }
        let generation = self.links[i].as_ref().map_or(0, |l| l.generation + 1);
        let server = Server::new(self.exports, self.server_cfg, Instant(self.now));
        let skip = self.rng.odds(1, 2);
        self.links[i] = Some(Link {
            client: ClientEnd {
                machine: Box::new(Client::new(config, Instant(self.now))),
                input: Vec::new(),
                ready: false,
                flags: TransmissionFlags::empty(),
                status: false,
                sent: BTreeMap::new(),
                leaving: false,
                shutdown_seen: false,
            },
            server: ServerEnd {
                machine: server,
                input: Vec::new(),
                session: None,
                write: None,
                replies: Vec::new(),
                disconnected: false,
                skip,
            },
            c2s: Vec::new(),
            s2c: Vec::new(),
            generation,
            alive: true,
        });
        self.pump(i);
    }

    /// Run both machines of link `i` until neither has anything to do
    /// with what it holds.
    fn pump(&mut self, i: usize) {
        for _ in 0..10_000 {
            let a = self.pump_server(i);
            let b = self.pump_client(i);
            if !a && !b {
                return;
            }
        }
        self.fail(format!("link {i}: the machines never settle"));
    }

    /// The server's documented loop; true if anything happened.
    fn pump_server(&mut self, i: usize) -> bool {
        let now = self.now;
        let Some(link) = self.links[i].as_mut().filter(|l| l.alive) else {
            return false;
        };
        let generation = link.generation;
        let mut did = false;
        let mut jobs = Vec::new();
        let mut problem = None;
        let s = &mut link.server;
        loop {
            if let Some(left) = s.machine.write_payload_remaining().filter(|_| s.skip) {
                let n = (left as usize).min(s.input.len());
                if n > 0 {
                    match &mut s.write {
                        Some((_, buf)) => buf.extend_from_slice(&s.input[..n]),
                        None => problem = Some("payload owed without a write".into()),
                    }
                    s.input.drain(..n);
                    s.machine.skip_payload(n as u64);
                    if n as u64 == left {
                        if s.machine.write_payload_remaining().is_some() {
                            problem = Some("payload still owed once taken whole".into());
                        }
                        if let Some((req, payload)) = s.write.take() {
                            jobs.push(Job {
                                link: i,
                                generation,
                                req,
                                payload,
                            });
                        }
                    }
                    did = true;
                    continue;
                }
            }
            let out = s.machine.poll_transmit();
            if !out.is_empty() {
                link.s2c.extend_from_slice(out);
                let n = out.len();
                s.machine.transmitted(n);
                did = true;
                continue;
            }
            let p = s.machine.handle_input(&s.input);
            let consumed = p.consumed;
            let ev = match p.event {
                None => None,
                Some(SEvent::WriteData {
                    cookie,
                    offset,
                    data,
                    last,
                }) => {
                    match &mut s.write {
                        Some((r, buf)) if r.cookie == cookie => {
                            if offset != r.offset() + buf.len() as u64 {
                                problem =
                                    Some(format!("write payload piece at {offset} out of order"));
                            }
                            buf.extend_from_slice(data);
                        }
                        _ => problem = Some(format!("write data for {cookie} without its write")),
                    }
                    if let Some((req, payload)) = s.write.take_if(|_| last) {
                        if payload.len() as u64 != req.len() {
                            problem = Some("write payload length".into());
                        }
                        jobs.push(Job {
                            link: i,
                            generation,
                            req,
                            payload,
                        });
                    }
                    None
                }
                Some(SEvent::Request(r)) => Some(Ok(r)),
                Some(SEvent::Ready(session)) => {
                    s.session = Some(session);
                    None
                }
                Some(SEvent::Reject { reply, close: None })
                    if self.draining && reply.errno() == Errno::ESHUTDOWN =>
                {
                    s.replies.push(vec![reply.as_bytes().to_vec()]);
                    self.stats.eshutdown += 1;
                    self.injected.insert((i, generation, reply.cookie()));
                    None
                }
                Some(SEvent::Disconnect) => {
                    s.disconnected = true;
                    None
                }
                Some(other) => Some(Err(format!("server event {other:?}"))),
            };
            s.input.drain(..consumed);
            if consumed > 0 {
                did = true;
            }
            match ev {
                Some(Ok(r)) => {
                    did = true;
                    match r.command {
                        Command::Write { len, .. } if len > 0 => s.write = Some((r, Vec::new())),
                        _ => jobs.push(Job {
                            link: i,
                            generation,
                            req: r,
                            payload: Vec::new(),
                        }),
                    }
                }
                Some(Err(e)) => {
                    problem = Some(e);
                    break;
                }
                None if consumed == 0 => break,
                None => {}
            }
        }
        let _ = now;
        self.jobs.extend(jobs);
        if let Some(p) = problem {
            self.fail(format!("link {i}: desynchronised: {p}"));
        }
        did
    }

    /// The client's documented loop; true if anything happened.
    fn pump_client(&mut self, i: usize) -> bool {
        let now = self.now;
        let Some(link) = self.links[i].as_mut().filter(|l| l.alive) else {
            return false;
        };
        let mut did = false;
        let mut problems = Vec::new();
        let mut completions = Vec::new();
        let c = &mut link.client;
        let mut at = 0;
        loop {
            let out = c.machine.poll_transmit();
            if !out.is_empty() {
                link.c2s.extend_from_slice(out);
                let n = out.len();
                c.machine.transmitted(n);
                did = true;
                continue;
            }
            let p = c.machine.handle_input(&c.input[at..]);
            at += p.consumed;
            if p.consumed > 0 {
                did = true;
            }
            match p.event {
                None if p.consumed == 0 => break,
                None => {}
                Some(ev) => {
                    did = true;
                    match ev {
                        CEvent::Ready(e) => {
                            c.ready = true;
                            c.flags = e.flags;
                            c.status = c.machine.context_id("base:allocation").is_some();
                            if e.has(TransmissionFlags::CAN_MULTI_CONN) != self.exports.multi_conn {
                                problems.push("CAN_MULTI_CONN lost in the handshake".to_string());
                            }
                        }
                        CEvent::ServerShutdown => c.shutdown_seen = true,
                        CEvent::Refused { .. }
                        | CEvent::MetaContext { .. }
                        | CEvent::CanonicalName(_)
                        | CEvent::Description(_) => {}
                        CEvent::ReadData {
                            cookie,
                            offset,
                            data,
                        } => match c.sent.get_mut(&cookie.0) {
                            Some(s) if s.kind == Kind::Read => {
                                let start = (s.first * BLOCK) as u64;
                                let end = start + s.data.len() as u64;
                                if offset < start || offset + data.len() as u64 > end {
                                    problems.push(format!("read data outside cookie {}", cookie.0));
                                } else {
                                    let o = (offset - start) as usize;
                                    s.data[o..o + data.len()].copy_from_slice(data);
                                }
                            }
                            _ => problems.push(format!(
                                "read data for cookie {} not a read in flight",
                                cookie.0
                            )),
                        },
                        CEvent::ReadHole {
                            cookie,
                            offset,
                            len,
                        } => match c.sent.get_mut(&cookie.0) {
                            Some(s) if s.kind == Kind::Read => {
                                let start = (s.first * BLOCK) as u64;
                                let o = (offset - start) as usize;
                                s.data[o..o + len as usize].fill(0);
                            }
                            _ => problems
                                .push(format!("hole for cookie {} not a read in flight", cookie.0)),
                        },
                        CEvent::Completed { cookie, result } => match c.sent.remove(&cookie.0) {
                            Some(s) => completions.push((cookie.0, s, result)),
                            None => problems.push(format!(
                                "completion for cookie {} not in flight (answered twice?)",
                                cookie.0
                            )),
                        },
                        CEvent::BlockStatus {
                            cookie,
                            context_id,
                            offset,
                            extents,
                        } => {
                            let ours = c.machine.context_id("base:allocation");
                            match c.sent.get_mut(&cookie.0) {
                                Some(s) if s.kind == Kind::Status && Some(context_id) == ours => {
                                    let mut at = offset;
                                    for e in extents {
                                        s.extents.push((at, e.length, e.flags));
                                        at += e.length;
                                    }
                                }
                                _ => problems.push(format!(
                                    "block status for cookie {} not a block status in flight",
                                    cookie.0
                                )),
                            }
                        }
                        // Only injected failures, checked at completion.
                        CEvent::ReplyError { .. } => {}
                        other => problems.push(format!("client event {other:?}")),
                    }
                }
            }
        }
        c.input.drain(..at);
        if c.machine.in_flight() != c.sent.len() {
            problems.push(format!(
                "the machine has {} in flight, the frontend {}",
                c.machine.in_flight(),
                c.sent.len()
            ));
        }
        for (cookie, s, result) in completions {
            self.complete(i, cookie, s, result, now);
        }
        for p in problems {
            self.fail(format!("link {i}: desynchronised: {p}"));
        }
        did
    }

    /// A request's reply arrived (`ok`: it succeeded).
    fn complete(
        &mut self,
        link: usize,
        cookie: u64,
        s: Sent,
        result: Result<(), RequestFailure>,
        now: u64,
    ) {
        let generation = self.links[link].as_ref().map_or(0, |l| l.generation);
        let key = (link, generation, cookie);
        let injected = self.injected.remove(&key);
        let scattered = self.scattered.remove(&key);
        let ok = result.is_ok();
        if scattered {
            // Checked like every other read below: the spec's "the client
            // MUST reassemble content chunks into the correct order".
            self.stats.scattered += 1;
        }
        if ok == injected {
            let (kind, said) = (s.kind, if ok { "succeeded" } else { "failed" });
            let why = if ok {
                "the server failed it"
            } else {
                "the server did not fail it"
            };
            self.fail(format!("link {link}: {kind:?} {said}, but {why}"));
            return;
        }
        if !ok {
            // It may or may not have taken effect, or only in part.
            if let Some(w) = s.write {
                self.oracle.writes[w].lost = true;
                self.oracle.writes[w].durable = None;
            }
            return;
        }
        let Some(w) = s.write else {
            match s.kind {
                Kind::Status => {
                    self.stats.statuses += 1;
                    let mut at = (s.first * BLOCK) as u64;
                    let end = at + (s.count * BLOCK) as u64;
                    if s.extents.is_empty() {
                        self.fail(format!("link {link}: block status without extents"));
                        return;
                    }
                    for &(o, l, f) in &s.extents {
                        if o != at || l == 0 || at >= end {
                            self.fail(format!(
                                "link {link}: block status extents {:?} do not tile from {}",
                                s.extents,
                                s.first * BLOCK
                            ));
                            return;
                        }
                        // A zero claim must be true of every whole block in it.
                        let (b0, b1) = (o.div_ceil(BLOCK as u64), (o + l).min(end) / BLOCK as u64);
                        for b in b0 as usize..b1 as usize {
                            let allowed = self.oracle.readable(b, s.at, now);
                            if f & 2 != 0 && !allows(&allowed, Val::Zero) {
                                self.fail(format!(
                                    "link {link}: block status says block {b} reads as zeroes; allowed {allowed:?}"
                                ));
                                return;
                            }
                        }
                        at = o + l;
                    }
                }
                Kind::Flush => {
                    self.stats.flushes += 1;
                    self.oracle.flushed(link, s.at, now);
                }
                Kind::Read => {
                    self.stats.reads_checked += 1;
                    for k in 0..s.count {
                        let b = s.first + k;
                        let got = decode(&s.data[k * BLOCK..(k + 1) * BLOCK], b);
                        let allowed = self.oracle.readable(b, s.at, now);
                        match got {
                            Some(v) if allows(&allowed, v) => {}
                            _ => {
                                if std::env::var_os("SIM_DEBUG").is_some() {
                                    for w in self.oracle.writes.iter().filter(|w| w.covers(b)) {
                                        eprintln!("{w:?}");
                                    }
                                    eprintln!(
                                        "now {now} epoch {} base {:?}",
                                        self.oracle.epoch, self.oracle.base[b]
                                    );
                                }
                                self.fail(format!(
                                    "link {link}: read of block {b} (sent at {}) returned {got:?}; allowed {allowed:?}",
                                    s.at
                                ));
                                return;
                            }
                        }
                    }
                }
                _ => {}
            }
            return;
        };
        let fua = self.oracle.writes[w].durable.is_some();
        let rec = &mut self.oracle.writes[w];
        rec.acked = Some(now);
        // Marked at submission to remember the flag; now it is true.
        if fua {
            rec.durable = Some(now);
        }
    }

    /// Send a random request on link `i`.
    fn submit(&mut self, i: usize) {
        // Every event has a time of its own, so "before" is strict.
        self.now += 1;
        let now = self.now;
        let kind = match self.rng.below(22) {
            0..=7 => Kind::Read,
            8..=14 => Kind::Write,
            15..=16 => Kind::Zero,
            17 => Kind::Trim,
            18..=19 => Kind::Status,
            _ => Kind::Flush,
        };
        let df = self.rng.odds(1, 4);
        let req_one = self.rng.odds(1, 4);
        // Mostly small requests (more of them overlap), some long ones
        // (more reply pieces).
        let count = if self.rng.odds(1, 8) {
            self.rng.range(5, 16)
        } else {
            self.rng.range(1, 4)
        };
        let first = self.rng.range(0, BLOCKS - count);
        let fua = self.rng.odds(1, 4);
        let id = self.next_id;
        let Some(link) = self.links[i].as_mut().filter(|l| l.alive && l.client.ready) else {
            return;
        };
        let c = &mut link.client;
        if c.leaving || c.shutdown_seen || c.sent.len() >= self.depth {
            return;
        }
        let (off, len) = ((first * BLOCK) as u64, (count * BLOCK) as u32);
        let flags = if fua {
            CommandFlags::FUA
        } else {
            CommandFlags::empty()
        };
        if kind == Kind::Status && !c.status {
            return;
        }
        let cookie = match kind {
            Kind::Read if df && c.flags.contains(TransmissionFlags::SEND_DF) => {
                c.machine.read(off, len, CommandFlags::DF)
            }
            Kind::Read => c.machine.read(off, len, CommandFlags::empty()),
            Kind::Status if req_one => {
                c.machine
                    .block_status(off, len.into(), CommandFlags::REQ_ONE)
            }
            Kind::Status => c
                .machine
                .block_status(off, len.into(), CommandFlags::empty()),
            Kind::Write => c.machine.write(off, len, flags),
            Kind::Zero => c.machine.write_zeroes(off, len.into(), flags),
            Kind::Trim => c.machine.trim(off, len.into(), flags),
            Kind::Flush => c.machine.flush(),
        };
        let cookie = match cookie {
            Ok(c) => c,
            Err(e) => {
                self.fail(format!(
                    "link {i}: {kind:?} refused by the client machine: {e:?}"
                ));
                return;
            }
        };
        // Drain the header; a write's payload follows it.
        loop {
            let out = c.machine.poll_transmit();
            if out.is_empty() {
                break;
            }
            link.c2s.extend_from_slice(out);
            let n = out.len();
            c.machine.transmitted(n);
        }
        let write = match kind {
            Kind::Read | Kind::Flush | Kind::Status => None,
            _ => {
                let val = match kind {
                    Kind::Write => {
                        for b in first..first + count {
                            link.c2s.extend_from_slice(&pattern(id, b));
                        }
                        if let Err(e) = c.machine.payload_sent() {
                            let msg = format!("link {i}: payload_sent refused: {e:?}");
                            self.fail(msg);
                            return;
                        }
                        Val::Data(id)
                    }
                    Kind::Zero => Val::Zero,
                    _ => Val::Any,
                };
                self.next_id += 1;
                self.oracle.writes.push(WriteRec {
                    val,
                    conn: i,
                    first,
                    count,
                    submit: now,
                    acked: None,
                    lost: false,
                    // FUA remembered here (as "durable once acked").
                    durable: fua.then_some(u64::MAX),
                });
                Some(self.oracle.writes.len() - 1)
            }
        };
        let data = if kind == Kind::Read {
            vec![0xee; count * BLOCK]
        } else {
            Vec::new()
        };
        let link = self.links[i].as_mut().unwrap();
        link.client.sent.insert(
            cookie.0,
            Sent {
                kind,
                first,
                count,
                at: now,
                write,
                data,
                extents: Vec::new(),
            },
        );
        self.stats.requests += 1;
    }

    /// Carry out one waiting request on the disk; queue its reply. One in
    /// thirty fails with `EIO` instead (a read after sending part of its
    /// data).
    fn execute(&mut self, k: usize) {
        // Every event has a time of its own, so "before" is strict.
        self.now += 1;
        let job = self.jobs.swap_remove(k);
        let (off, len) = (job.req.offset() as usize, job.req.len() as usize);
        let fua = job.req.flags().contains(CommandFlags::FUA);
        // An orphan (its connection was reset) is carried out; its reply
        // has nowhere to go.
        let live = self.links[job.link]
            .as_ref()
            .filter(|l| l.alive && l.generation == job.generation)
            .and_then(|l| l.server.session);
        let fails = live.is_some() && self.rng.odds(1, 30);
        let mut chunks = Vec::new();
        match job.req.command {
            Command::Read { .. } => {
                if let Some(session) = live {
                    let scattered;
                    (chunks, scattered) = self.read_reply(&job.req, session, fails);
                    if scattered {
                        self.scattered
                            .insert((job.link, job.generation, job.req.cookie));
                    }
                }
            }
            _ if fails => {}
            Command::BlockStatus { .. } => {
                if let Some(session) = live {
                    let cache = &self.disk.cache;
                    let max = self.rng.range(1, 8) as u32;
                    let mut out: Vec<u8> = Vec::new();
                    let mut scratch: Vec<Extent> = Vec::new();
                    let r = session.encoder().block_status(
                        &job.req,
                        max,
                        &mut scratch,
                        &mut out,
                        |_, q, push| {
                            let mut at = q.offset as usize;
                            let end = (q.offset + q.length) as usize;
                            while at < end {
                                let b = at / BLOCK;
                                let stop = ((b + 1) * BLOCK).min(end);
                                let zero =
                                    cache[b * BLOCK..(b + 1) * BLOCK].iter().all(|&x| x == 0);
                                if !push(Extent::new((stop - at) as u64, if zero { 3 } else { 0 }))
                                {
                                    break;
                                }
                                at = stop;
                            }
                            Ok::<(), ()>(())
                        },
                    );
                    if let Err(e) = r {
                        let msg = format!("block status reply: {e:?}");
                        self.fail(msg);
                        return;
                    }
                    chunks.push(out);
                }
            }
            Command::Write { .. } => {
                self.disk.cache[off..off + len].copy_from_slice(&job.payload);
                if fua {
                    self.disk.stable[off..off + len].copy_from_slice(&job.payload);
                }
            }
            Command::WriteZeroes { .. } | Command::Trim { .. } => {
                self.disk.cache[off..off + len].fill(0);
                if fua {
                    self.disk.stable[off..off + len].fill(0);
                }
            }
            Command::Flush => self.disk.stable.copy_from_slice(&self.disk.cache),
            _ => {}
        }
        let Some(session) = live else { return };
        let enc = session.encoder();
        if fails {
            self.injected
                .insert((job.link, job.generation, job.req.cookie));
            if !matches!(job.req.command, Command::Read { .. }) {
                let f = Fault::new(Errno::EIO, "simulated I/O error");
                chunks.push(enc.result(job.req, Err(f)).as_bytes().to_vec());
            }
        } else if chunks.is_empty() {
            chunks.push(enc.result(job.req, Ok(())).as_bytes().to_vec());
        }
        let link = self.links[job.link].as_mut().unwrap();
        link.server.replies.push(chunks);
    }

    /// The chunks of a read's reply, from the cache as it is now. Simple
    /// replies are one unit; structured ones come in random pieces, data
    /// or (zero runs) holes, in random order, ended by a `DONE` flag on
    /// the last piece or a `NONE` chunk. `fails`: some pieces, then an
    /// error chunk.
    fn read_reply(&mut self, req: &Request, session: Session, fails: bool) -> (Vec<Vec<u8>>, bool) {
        let enc = session.encoder();
        let (off, len) = (req.offset() as usize, req.len() as usize);
        let cache = &self.disk.cache;
        if !session.mode.structured() {
            if fails {
                let e = enc.error(*req, Errno::EIO, "simulated I/O error");
                return (vec![e.as_bytes().to_vec()], false);
            }
            let mut unit = enc
                .data(*req, off as u64, len as u32, true)
                .as_bytes()
                .to_vec();
            unit.extend_from_slice(&cache[off..off + len]);
            return (vec![unit], false);
        }
        let mut pieces = Vec::new();
        let mut at = off;
        if req.flags().contains(CommandFlags::DF) {
            // Don't fragment: one data chunk.
            pieces.push((off, len));
            at = off + len;
        }
        while at < off + len {
            let n = self.rng.range(1, (off + len - at).min(3 * BLOCK));
            pieces.push((at, n));
            at += n;
        }
        // In order, reversed (one range either way, as the client's
        // table merges adjacent pieces), or shuffled.
        let scattered = match self.rng.below(3) {
            0 => false,
            1 => {
                pieces.reverse();
                false
            }
            _ => {
                for k in (1..pieces.len()).rev() {
                    let j = self.rng.below(k as u64 + 1) as usize;
                    pieces.swap(k, j);
                }
                pieces.len() > MAX_FRAGMENTS
            }
        };
        if fails {
            pieces.truncate(self.rng.below(pieces.len() as u64) as usize);
        }
        let done_on_last = !fails && self.rng.odds(1, 2);
        let mut chunks = Vec::new();
        let count = pieces.len();
        for (k, (at, n)) in pieces.into_iter().enumerate() {
            let done = done_on_last && k + 1 == count;
            let data = &cache[at..at + n];
            let hole = data.iter().all(|&b| b == 0)
                && !req.flags().contains(CommandFlags::DF)
                && self.rng.odds(1, 2);
            let unit = match enc.hole(*req, at as u64, n as u32, done) {
                Some(h) if hole => h.as_bytes().to_vec(),
                _ => {
                    let mut u = enc
                        .data(*req, at as u64, n as u32, done)
                        .as_bytes()
                        .to_vec();
                    u.extend_from_slice(data);
                    u
                }
            };
            chunks.push(unit);
        }
        if fails {
            let e = if self.rng.odds(1, 2) {
                enc.error_at(*req, Errno::EIO, off as u64, "simulated I/O error")
            } else {
                enc.error(*req, Errno::EIO, "simulated I/O error")
            };
            chunks.push(e.as_bytes().to_vec());
        } else if !done_on_last {
            chunks.push(enc.ok(*req).as_bytes().to_vec());
        }
        (chunks, scattered)
    }

    /// Send the next chunk of one random reply of link `i`.
    fn send_chunk(&mut self, i: usize) {
        // Every event has a time of its own, so "before" is strict.
        self.now += 1;
        let pick = self.rng.next();
        let Some(link) = self.links[i].as_mut().filter(|l| l.alive) else {
            return;
        };
        let r = &mut link.server.replies;
        if r.is_empty() {
            return;
        }
        let k = (pick % r.len() as u64) as usize;
        let unit = r[k].remove(0);
        if r[k].is_empty() {
            r.swap_remove(k);
        }
        link.s2c.extend_from_slice(&unit);
    }

    /// Deliver a random prefix of what is in flight on link `i`.
    fn deliver(&mut self, i: usize, to_server: bool) {
        // Every event has a time of its own, so "before" is strict.
        self.now += 1;
        let small = self.rng.odds(1, 3);
        let n = self.rng.next();
        let Some(link) = self.links[i].as_mut().filter(|l| l.alive) else {
            return;
        };
        let q = if to_server {
            &mut link.c2s
        } else {
            &mut link.s2c
        };
        if q.is_empty() {
            return;
        }
        let max = if small { q.len().min(16) } else { q.len() };
        let n = 1 + (n % max as u64) as usize;
        let bytes: Vec<u8> = q.drain(..n).collect();
        if to_server {
            link.server.input.extend_from_slice(&bytes);
        } else {
            link.client.input.extend_from_slice(&bytes);
        }
        self.pump(i);
    }

    /// A graceful server shutdown (`SIGTERM`): connections still in the
    /// handshake are dropped, the others drain.
    fn shut_down(&mut self) {
        self.now += 1;
        self.stats.shutdowns += 1;
        self.draining = true;
        for i in 0..self.links.len() {
            match self.links[i].as_mut().filter(|l| l.alive) {
                Some(l) if l.client.ready && l.server.session.is_some() => {
                    l.server.machine.shutdown();
                    self.pump(i);
                }
                Some(_) => self.reset(i),
                None => {}
            }
        }
    }

    /// The client disconnects politely (`NBD_CMD_DISC`), requests maybe
    /// still in flight.
    fn leave(&mut self, i: usize) {
        self.now += 1;
        let Some(link) = self.links[i].as_mut().filter(|l| l.alive && l.client.ready) else {
            return;
        };
        if link.client.leaving {
            return;
        }
        if let Err(e) = link.client.machine.disconnect() {
            self.fail(format!("link {i}: disconnect refused: {e:?}"));
            return;
        }
        link.client.leaving = true;
        self.pump(i);
    }

    /// After `NBD_CMD_DISC` the server answers what it read, then closes;
    /// the client must find that clean, with nothing left in flight.
    fn close_if_done(&mut self, i: usize) {
        let Some(link) = self.links[i].as_ref().filter(|l| l.alive) else {
            return;
        };
        let generation = link.generation;
        // Shutting down, the server closes a connection once it has
        // answered everything it read (the client may not know yet).
        let drained = self.draining && link.c2s.is_empty() && link.server.write.is_none();
        let done = (link.server.disconnected || drained)
            && link.server.replies.is_empty()
            && link.s2c.is_empty()
            && !self
                .jobs
                .iter()
                .any(|j| j.link == i && j.generation == generation);
        if !done {
            return;
        }
        self.now += 1;
        let link = self.links[i].as_mut().unwrap();
        link.alive = false;
        let left = link.client.sent.len();
        let eof = link.client.machine.handle_eof();
        let polite = link.server.disconnected;
        if left > 0 || (polite && eof.is_err()) {
            self.fail(format!(
                "link {i}: after a polite disconnect {left} requests unanswered, close {eof:?}"
            ));
        }
    }

    /// The connection breaks: both ends lose what is in flight.
    fn reset(&mut self, i: usize) {
        // Every event has a time of its own, so "before" is strict.
        self.now += 1;
        let Some(link) = self.links[i].as_mut().filter(|l| l.alive) else {
            return;
        };
        self.stats.resets += 1;
        link.alive = false;
        // The client is told: its requests in flight are lost (the
        // machine must say the close was not clean if any were).
        let unclean = link.client.machine.handle_eof();
        let accepted = !link.client.sent.is_empty() && unclean.is_ok();
        let lost: Vec<Sent> = std::mem::take(&mut link.client.sent)
            .into_values()
            .collect();
        if accepted {
            self.fail(format!(
                "link {i}: EOF with requests in flight accepted as clean"
            ));
        }
        for s in lost {
            if let Some(w) = s.write {
                self.oracle.writes[w].lost = true;
            }
        }
    }

    fn crash(&mut self) {
        // Every event has a time of its own, so "before" is strict.
        self.now += 1;
        self.stats.crashes += 1;
        for i in 0..self.links.len() {
            self.reset(i);
        }
        // I/O in flight dies with the server.
        self.jobs.clear();
        self.disk.crash(&mut self.rng);
        self.server_up = false;
        let now = self.now;
        let mut base = Vec::with_capacity(BLOCKS);
        for b in 0..BLOCKS {
            let allowed = self.oracle.survivable(b, now);
            let got = decode(&self.disk.stable[b * BLOCK..(b + 1) * BLOCK], b);
            match got {
                Some(v) if allows(&allowed, v) => {}
                _ => {
                    self.fail(format!(
                        "after the crash block {b} holds {got:?}; durable promises allow {allowed:?}"
                    ));
                    return;
                }
            }
            base.push(allowed);
        }
        // A new epoch: lost writes can no longer land.
        self.oracle.base = base;
        self.oracle.epoch = now;
        self.oracle.writes.clear();
    }

    /// One random step.
    pub fn step(&mut self) {
        self.stats.steps += 1;
        let n = self.links.len();
        let i = self.rng.below(n as u64) as usize;
        let roll = self.rng.below(10_000);
        match roll {
            0..=2499 => self.submit(i),
            2500..=4999 => self.deliver(i, true),
            5000..=7499 => self.deliver(i, false),
            7500..=8699 if !self.jobs.is_empty() => {
                let k = self.rng.below(self.jobs.len() as u64) as usize;
                self.execute(k);
            }
            8700..=9959 => self.send_chunk(i),
            9960..=9974 => self.leave(i),
            9975..=9979 if self.faults && self.server_up && !self.draining => self.shut_down(),
            9980..=9994 if self.faults => self.reset(i),
            9995..=9999 if self.faults && self.server_up => self.crash(),
            _ => {}
        }
        for k in 0..n {
            self.close_if_done(k);
            // Told of the shutdown, a client disconnects once its
            // requests are answered.
            let idle = self.links[k].as_ref().is_some_and(|l| {
                l.alive && l.client.shutdown_seen && !l.client.leaving && l.client.sent.is_empty()
            });
            if idle {
                self.leave(k);
            }
        }
        // Recovery: the server restarts, clients reconnect.
        if !self.server_up && self.rng.odds(1, 20) {
            self.server_up = true;
        }
        if self.draining && self.links.iter().flatten().all(|l| !l.alive) {
            // Shut down: everything was flushed; it starts again.
            self.draining = false;
            self.disk.stable.copy_from_slice(&self.disk.cache);
        }
        if self.server_up && !self.draining {
            for k in 0..n {
                if self.links[k].as_ref().is_none_or(|l| !l.alive) && self.rng.odds(1, 10) {
                    self.connect(k);
                }
            }
        }
    }

    /// Stop faults and run until nothing moves: everything in flight must
    /// be answered.
    fn settle(&mut self) {
        self.faults = false;
        self.server_up = true;
        // Twice: links a polite disconnect closed in the first round
        // reconnect in the second.
        if self.draining {
            self.settle_round(false);
            self.draining = false;
            self.disk.stable.copy_from_slice(&self.disk.cache);
        }
        for _ in 0..2 {
            self.settle_round(true);
        }
        self.check_settled();
    }

    fn settle_round(&mut self, reconnect: bool) {
        for k in 0..self.links.len() {
            if reconnect && self.links[k].as_ref().is_none_or(|l| !l.alive) {
                self.connect(k);
            }
        }
        for _ in 0..100_000 {
            if self.violation.is_some() {
                return;
            }
            for k in 0..self.links.len() {
                self.close_if_done(k);
            }
            let mut moved = false;
            while !self.jobs.is_empty() {
                let k = self.rng.below(self.jobs.len() as u64) as usize;
                self.execute(k);
                moved = true;
            }
            for i in 0..self.links.len() {
                let busy = self.links[i].as_ref().is_some_and(|l| {
                    l.alive
                        && (!l.c2s.is_empty() || !l.s2c.is_empty() || !l.server.replies.is_empty())
                });
                if busy {
                    moved = true;
                    self.send_chunk(i);
                    self.deliver(i, true);
                    self.deliver(i, false);
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn check_settled(&mut self) {
        for i in 0..self.links.len() {
            let Some(l) = self.links[i].as_ref() else {
                continue;
            };
            if !l.client.ready {
                let msg = format!("link {i}: the handshake never finished");
                self.fail(msg);
            } else if !l.client.sent.is_empty() {
                let msg = format!("link {i}: {} requests never answered", l.client.sent.len());
                self.fail(msg);
            }
        }
    }

    /// Disconnect every client politely: each close must be clean.
    fn goodbye(&mut self) {
        for i in 0..self.links.len() {
            let Some(link) = self.links[i].as_mut().filter(|l| l.alive) else {
                continue;
            };
            if link.client.machine.disconnect().is_err() {
                let msg = format!("link {i}: disconnect refused");
                self.fail(msg);
                continue;
            }
            link.client.leaving = true;
            self.pump(i);
            while self.links[i]
                .as_ref()
                .is_some_and(|l| l.alive && !l.c2s.is_empty())
            {
                self.deliver(i, true);
            }
            let link = self.links[i].as_mut().unwrap();
            if !link.server.disconnected {
                let msg = format!("link {i}: the server never saw NBD_CMD_DISC");
                self.fail(msg);
            } else if link.client.machine.handle_eof().is_err() {
                let msg = format!("link {i}: a polite disconnect ended uncleanly");
                self.fail(msg);
            }
        }
    }

    /// The whole run: `steps` random steps, then settle and say goodbye.
    pub fn run(mut self, steps: u64) -> Result<Stats, String> {
        for _ in 0..steps {
            self.step();
            if let Some(v) = self.violation.take() {
                return Err(v);
            }
        }
        self.settle();
        if self.violation.is_none() {
            self.goodbye();
        }
        match self.violation.take() {
            Some(v) => Err(v),
            None => Ok(self.stats),
        }
    }
}

/// One seed, panics included (a panic in a machine is a violation too).
pub fn run_seed(seed: u64, steps: u64) -> Result<Stats, String> {
    let r = std::panic::catch_unwind(|| Sim::new(seed).run(steps));
    match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!(
                "seed {seed}: panic: {msg} (replay: cargo run -p blockwire-core --example sim -- --seed {seed})"
            ))
        }
    }
}
