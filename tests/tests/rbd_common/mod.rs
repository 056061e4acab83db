//! The Ceph test cluster of `tests/ceph/cluster.sh` (its `env` lines in
//! the environment, as `tests/ceph/test.sh` sets them) for the `rbd`
//! driver's tests through `blockwire serve`.
//!
//! Without `BLOCKWIRE_CEPH_DIR` a test skips loudly, except in CI
//! (`CI=true`), where a missing cluster is a failure.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use blockwire_tests::*;

pub struct Ceph {
    pub dir: PathBuf,
    pub conf: PathBuf,
    /// `127.0.0.1:PORT`: the monitor's v1 address, as a `server` list has it.
    pub mon_v1: String,
    pub pool: String,
    pub user: String,
    pub key: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see tests/ceph/README.md)"))
}

/// The cluster, or `None` (skip) outside CI without one.
pub fn ceph() -> Option<Ceph> {
    if std::env::var_os("BLOCKWIRE_CEPH_DIR").is_none() {
        let msg = "no Ceph test cluster: run these tests through tests/ceph/test.sh \
                   (or eval \"$(tests/ceph/cluster.sh start DIR)\" first)";
        assert!(!in_ci(), "{msg}; in CI this is a failure");
        eprintln!("SKIP: {msg}");
        return None;
    }
    if !need(&["rbd", "qemu-img", "qemu-io", "nbdinfo", "nbdcopy", "fio"]) {
        return None;
    }
    Some(Ceph {
        dir: var("BLOCKWIRE_CEPH_DIR").into(),
        conf: var("CEPH_CONF").into(),
        mon_v1: var("BLOCKWIRE_CEPH_MON_V1"),
        pool: var("BLOCKWIRE_CEPH_POOL"),
        user: var("BLOCKWIRE_CEPH_USER"),
        key: var("BLOCKWIRE_CEPH_KEY"),
    })
}

fn check(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Ceph {
    /// The `rbd` CLI as client.admin.
    pub fn rbd(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("rbd");
        cmd.arg("--conf")
            .arg(&self.conf)
            .args(["--name", "client.admin"])
            .args(args);
        check(&format!("rbd {args:?}"), run_cmd(cmd, CMD_TIMEOUT))
    }

    /// The `ceph` CLI as client.admin.
    pub fn ceph(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ceph");
        cmd.arg("--conf")
            .arg(&self.conf)
            .args(["--name", "client.admin", "--connect-timeout", "30"])
            .args(args);
        check(&format!("ceph {args:?}"), run_cmd(cmd, CMD_TIMEOUT))
    }

    /// The OSDs holding RADOS object `object` of the pool (`ceph osd map`),
    /// sorted.
    pub fn acting(&self, object: &str) -> Vec<u64> {
        let out = self.ceph(&["osd", "map", &self.pool, object, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut osds: Vec<u64> = v["acting"]
            .as_array()
            .unwrap_or_else(|| panic!("ceph osd map: {v}"))
            .iter()
            .map(|o| o.as_u64().unwrap())
            .collect();
        osds.sort();
        osds
    }

    /// `rbd info --format json` of `image`.
    pub fn info(&self, image: &str) -> serde_json::Value {
        let out = self.rbd(&["info", "--format", "json", &self.spec(image)]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `tests/ceph/cluster.sh CMD DIR ARGS`.
    pub fn cluster(&self, cmd: &str, args: &[&str]) {
        let mut c = Command::new(workspace_root().join("tests/ceph/cluster.sh"));
        c.arg(cmd).arg(&self.dir).args(args);
        check(
            &format!("cluster.sh {cmd} {args:?}"),
            run_cmd(c, CMD_TIMEOUT),
        );
    }

    /// `rbd create` of a fresh image of `size_mib` MiB; its name.
    pub fn create(&self, prefix: &str, size_mib: u64, extra: &[&str]) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let size = format!("{size_mib}M");
        let spec = self.spec(&name);
        let mut args = vec!["create", "--size", &size];
        args.extend_from_slice(extra);
        args.push(&spec);
        self.rbd(&args);
        name
    }

    pub fn spec(&self, image: &str) -> String {
        format!("{}/{image}", self.pool)
    }

    /// `rbd export` of `image` as bytes.
    pub fn export(&self, image: &str) -> Vec<u8> {
        self.rbd(&["export", "--no-progress", &self.spec(image), "-"])
            .stdout
    }

    /// `rbd du`'s used bytes of `image` (whole objects, from the object map).
    pub fn du_used(&self, image: &str) -> u64 {
        let out = self.rbd(&["du", "--format", "json", &self.spec(image)]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("rbd du: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        v["images"][0]["used_size"]
            .as_u64()
            .unwrap_or_else(|| panic!("rbd du: no used_size in {v}"))
    }

    /// qemu-nbd's spelling of `image` for client.blockwire, keyring and
    /// monitors from the test configuration.
    pub fn filename(&self, image: &str) -> String {
        format!(
            "rbd:{}:conf={}:id={}",
            self.spec(image),
            self.conf.display(),
            self.user
        )
    }
}

/// `blockwire serve FILENAME` (an `rbd:` name) with `extra` arguments.
pub fn serve(filename: &str, extra: &[&str]) -> Server {
    let mut args = vec![filename];
    args.extend_from_slice(extra);
    Server::start(&args).expect("blockwire serve")
}

/// fio's nbd engine: `rw` (randwrite, write) of `bs` blocks over `size`,
/// then crc32c verification of everything written, failing on any error.
pub fn fio_verify(uri: &str, label: &str, extra: &[&str]) {
    let uri_arg = format!("--uri={uri}");
    let mut args = vec![
        "--name=bw-rbd",
        "--ioengine=nbd",
        uri_arg.as_str(),
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--randrepeat=0",
        "--verify_state_save=0",
    ];
    args.extend_from_slice(extra);
    let out = run("fio", &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .to_lowercase();
    let verify_errors = ["verify: bad", "verify failed", "bad magic", "bad header"];
    assert!(
        out.status.success()
            && !verify_errors.iter().any(|e| text.contains(e))
            && text.contains("err= 0"),
        "{label}: fio failed: {}",
        explain("fio", &args, &out)
    );
}

/// Everything the export holds, read with nbdcopy.
pub fn read_all(uri: &str, dir: &TmpDir, name: &str) -> Vec<u8> {
    let out = dir.join(name);
    run_ok("nbdcopy", &[uri, out.to_str().unwrap()]);
    std::fs::read(&out).unwrap()
}

/// Panics with the first differing offset unless `a == b`.
pub fn assert_same(a: &[u8], b: &[u8], what: &str) {
    if a != b {
        let at = a
            .iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        panic!(
            "{what}: differ at offset {at} (lengths {} and {})",
            a.len(),
            b.len()
        );
    }
}
