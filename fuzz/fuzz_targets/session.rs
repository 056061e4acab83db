//! A whole session: the core server and the core client back to back
//! through in-memory byte queues, driven by a script of operations over a
//! 64 KiB RAM disk that the test holds and the server side serves.
//!
//! Invariants: the handshake agrees on both sides; every request the
//! client accepts gets exactly one completion, and it is a success (the RAM
//! disk never fails, so a refusal means the two machines disagree on the
//! rules); reads return the model's data; zero extents cover zeroes; queue
//! sizes and requests in flight stay bounded; no panic.
#![no_main]

use arbitrary::Arbitrary;
use blockwire_core::client::Config;
use blockwire_core::server::ServerConfig;
use blockwire_core::wire::CommandFlags;
use blockwire_fuzz::TestExports;
use blockwire_fuzz::client::{ClientDriver, submit};
use blockwire_fuzz::server::ServerDriver;
use libfuzzer_sys::fuzz_target;

const SIZE: usize = 64 << 10;

#[derive(Arbitrary, Debug)]
struct Script {
    /// 0 client structured, 1 client extended, 2 server offers structured,
    /// 3 server offers extended, 4 contexts, 5 holes, 6 reverse chunks,
    /// 7 server takes payloads with skip_payload.
    cfg: u8,
    /// 0-1 minimum block (1, 512, 4096, 1); 2 maximum payload 8 KiB.
    geom: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        off: u16,
        len: u16,
        df: bool,
    },
    Write {
        off: u16,
        len: u16,
        fill: u8,
        fua: bool,
    },
    Trim {
        off: u16,
        len: u16,
    },
    Zero {
        off: u16,
        len: u16,
        flags: u8,
    },
    Flush,
    Cache {
        off: u16,
        len: u16,
    },
    BlockStatus {
        off: u16,
        len: u16,
        req_one: bool,
    },
    ToServer(u16),
    ToClient(u16),
    Run,
}

struct World {
    client: ClientDriver,
    server: ServerDriver<TestExports>,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
}

impl World {
    fn collect(&mut self) {
        let out = self.client.take_output();
        self.c2s.extend(out);
        self.server.drain();
        self.s2c.append(&mut self.server.wire);
        assert!(
            self.c2s.len() + self.s2c.len() <= 32 << 20,
            "queues grow unbounded"
        );
    }

    fn to_server(&mut self, n: usize) {
        self.collect();
        let n = n.min(self.c2s.len());
        let chunk: Vec<u8> = self.c2s.drain(..n).collect();
        self.server.feed(&chunk);
        self.collect();
    }

    fn to_client(&mut self, n: usize) {
        self.collect();
        let n = n.min(self.s2c.len());
        let chunk: Vec<u8> = self.s2c.drain(..n).collect();
        self.client.feed(&chunk);
        self.collect();
    }

    fn run(&mut self) {
        for _ in 0..10_000 {
            self.collect();
            if self.c2s.is_empty() && self.s2c.is_empty() {
                return;
            }
            self.to_server(usize::MAX);
            self.to_client(usize::MAX);
        }
        panic!("session does not settle");
    }
}

fuzz_target!(|script: Script| {
    let cfg = script.cfg;
    let min_block: u32 = match script.geom & 3 {
        1 => 512,
        2 => 4096,
        _ => 1,
    };
    let max_payload: u32 = if script.geom & 4 != 0 { 8192 } else { 65536 };
    let mut disk = vec![0u8; SIZE];
    for (i, b) in disk.iter_mut().enumerate() {
        if (i / 4096) % 3 == 0 {
            *b = (i % 251) as u8 | 1;
        }
    }
    let mut model = disk.clone();
    let mut config = Config::new("ram").expect("config");
    config.structured_replies = cfg & 1 != 0;
    config.extended_headers = cfg & 2 != 0;
    if cfg & 0x10 != 0 {
        config.add_meta_context("base:allocation").expect("config");
    }
    let server_cfg = ServerConfig {
        structured_replies: cfg & 4 != 0,
        extended_headers: cfg & 8 != 0,
        ..ServerConfig::default()
    };
    let mut server = ServerDriver::new(
        TestExports::ram(SIZE as u64, min_block, max_payload),
        server_cfg,
    );
    server.disk = Some(disk);
    server.holes = cfg & 0x20 != 0;
    server.reverse = cfg & 0x40 != 0;
    server.skip_payloads = cfg & 0x80 != 0;
    let mut w = World {
        client: ClientDriver::new(config),
        server,
        c2s: Vec::new(),
        s2c: Vec::new(),
    };
    w.run();
    let export = w.client.ready.expect("client did not reach Ready");
    let session = w.server.session.expect("server did not reach Ready");
    assert!(w.client.failed.is_none());
    assert_eq!(export.size, session.size);
    assert_eq!(export.mode, session.mode);

    let align = |v: u16| u64::from(v) / u64::from(min_block) * u64::from(min_block);
    let mut accepted = 0usize;
    for op in script.ops.iter().take(200) {
        let (kind, off, len, flags, fill) = match *op {
            Op::Read { off, len, df } => {
                let f = if df {
                    CommandFlags::DF
                } else {
                    CommandFlags::empty()
                };
                (0, off, len, f, 0)
            }
            Op::Write {
                off,
                len,
                fill,
                fua,
            } => {
                let f = if fua {
                    CommandFlags::FUA
                } else {
                    CommandFlags::empty()
                };
                (1, off, len, f, fill)
            }
            Op::Trim { off, len } => (3, off, len, CommandFlags::empty(), 0),
            Op::Zero { off, len, flags } => {
                let f = CommandFlags::from_bits_truncate(u16::from(flags) & 0x13);
                (4, off, len, f, 0)
            }
            Op::Flush => (2, 0, 0, CommandFlags::empty(), 0),
            Op::Cache { off, len } => (5, off, len, CommandFlags::empty(), 0),
            Op::BlockStatus { off, len, req_one } => {
                let f = if req_one {
                    CommandFlags::REQ_ONE
                } else {
                    CommandFlags::empty()
                };
                (6, off, len, f, 0)
            }
            Op::ToServer(n) => {
                w.to_server(usize::from(n));
                continue;
            }
            Op::ToClient(n) => {
                w.to_client(usize::from(n));
                continue;
            }
            Op::Run => {
                w.run();
                continue;
            }
        };
        let (o, l) = (align(off), align(len) as u32);
        if submit(&mut w.client, kind, o, l, flags, fill, Some(&model)).is_some() {
            accepted += 1;
            let r = o as usize..(o + u64::from(l)) as usize;
            match kind {
                1 => model[r].fill(fill),
                3 | 4 => model[r].fill(0),
                _ => {}
            }
        }
        assert!(w.client.client.in_flight() <= 64);
        w.collect();
    }
    w.run();
    assert!(
        w.client.failed.is_none(),
        "client failed: {:?}",
        w.client.failed
    );
    assert!(
        w.client.pending.is_empty(),
        "requests without completion: {:?}",
        w.client.pending.keys()
    );
    assert_eq!(w.client.completed, accepted);
    assert_eq!(
        w.client.completed_ok, accepted,
        "a request the client accepted failed"
    );
    assert_eq!(
        w.server.disk.as_ref().unwrap(),
        &model,
        "disk differs from the model"
    );
    w.client.client.disconnect().expect("disconnect");
    w.run();
    assert!(w.server.closed, "server did not see the disconnect");
    assert_eq!(w.client.client.handle_eof(), Ok(()));
});
