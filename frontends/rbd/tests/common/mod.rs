//! Shared by the tests that need the test cluster of
//! `tests/ceph/cluster.sh` (its `env` output in the environment).
//!
//! Without `BLOCKWIRE_CEPH_DIR` a test skips with a message, except in CI
//! (`CI=true`), where a missing cluster is a failure.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use blockwire_rbd::{Cluster, ClusterOptions, Image, ImageSpec, Secret};

pub const MIB: u64 = 1 << 20;

/// The cluster, as `cluster.sh env` describes it.
pub struct Env {
    pub dir: PathBuf,
    pub conf: PathBuf,
    /// `[v2:127.0.0.1:P,v1:127.0.0.1:Q]`
    pub mon_host: String,
    /// `127.0.0.1:Q`, the v1 address alone.
    pub mon_v1: String,
    pub pool: String,
    pub user: String,
    pub key: String,
    pub admin_key: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see tests/ceph/README.md)"))
}

/// The cluster, or `None` (skip) outside CI when there is none.
pub fn env() -> Option<Env> {
    if std::env::var_os("BLOCKWIRE_CEPH_DIR").is_none() {
        let msg = "no Ceph test cluster: run `eval \"$(tests/ceph/cluster.sh start DIR)\"` first \
                   (tests/ceph/README.md)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}; in CI this is a failure");
        }
        eprintln!("SKIP: {msg}");
        return None;
    }
    Some(Env {
        dir: var("BLOCKWIRE_CEPH_DIR").into(),
        conf: var("CEPH_CONF").into(),
        mon_host: var("BLOCKWIRE_CEPH_MON_HOST"),
        mon_v1: var("BLOCKWIRE_CEPH_MON_V1"),
        pool: var("BLOCKWIRE_CEPH_POOL"),
        user: var("BLOCKWIRE_CEPH_USER"),
        key: var("BLOCKWIRE_CEPH_KEY"),
        admin_key: var("BLOCKWIRE_CEPH_ADMIN_KEY"),
    })
}

/// `tests/ceph/cluster.sh`.
pub fn cluster_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ceph/cluster.sh")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Env {
    /// The `rbd` CLI as client.admin.
    pub fn rbd(&self, args: &[&str]) -> Output {
        run(Command::new("rbd")
            .arg("--conf")
            .arg(&self.conf)
            .args(["--name", "client.admin"])
            .args(args))
    }

    /// The `ceph` CLI as client.admin.
    pub fn ceph(&self, args: &[&str]) -> Output {
        run(Command::new("ceph")
            .arg("--conf")
            .arg(&self.conf)
            .args(["--name", "client.admin", "--connect-timeout", "30"])
            .args(args))
    }

    /// `cluster.sh CMD DIR ARGS`.
    pub fn cluster(&self, cmd: &str, args: &[&str]) {
        run(Command::new(cluster_sh())
            .arg(cmd)
            .arg(&self.dir)
            .args(args));
    }

    /// A fresh image name for this test process.
    pub fn image_name(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// `rbd create --size SIZE_MIB M [extra]`; returns its name.
    pub fn create_image(&self, prefix: &str, size_mib: u64, extra: &[&str]) -> String {
        let name = self.image_name(prefix);
        let size = format!("{size_mib}M");
        let spec = format!("{}/{name}", self.pool);
        let mut args = vec!["create", "--size", &size];
        args.extend_from_slice(extra);
        args.push(&spec);
        self.rbd(&args);
        name
    }

    /// `rbd export` of `image` (or `image@snap`), as bytes.
    pub fn export(&self, image: &str) -> Vec<u8> {
        let out = self.rbd(&[
            "export",
            "--no-progress",
            &format!("{}/{image}", self.pool),
            "-",
        ]);
        out.stdout
    }

    /// `rbd du`'s used bytes of `image`.
    pub fn du_used(&self, image: &str) -> u64 {
        let out = self.rbd(&["du", "--format", "json", &format!("{}/{image}", self.pool)]);
        let text = String::from_utf8_lossy(&out.stdout);
        // {"images":[{"name":"x","id":"..","provisioned_size":N,"used_size":M}],...}
        let i = text
            .find("\"used_size\":")
            .unwrap_or_else(|| panic!("rbd du: {text}"));
        text[i + 12..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    }

    /// Options for client.blockwire with its key, monitors from the
    /// configuration file.
    pub fn options(&self) -> ClusterOptions {
        ClusterOptions {
            conf: Some(self.conf.clone()),
            user: Some(self.user.clone()),
            key: Some(Secret::new(self.key.clone())),
            connect_timeout: Duration::from_secs(30),
            ..Default::default()
        }
    }

    pub async fn connect(&self) -> Cluster {
        Cluster::connect(self.options())
            .await
            .expect("connect to the test cluster")
    }

    pub async fn open(&self, cluster: &Cluster, image: &str) -> Image {
        cluster
            .open(ImageSpec::new(self.pool.clone(), image))
            .await
            .expect("open the image")
    }
}

/// `len` bytes that say where they are and who wrote them: the byte at
/// image offset `p` depends on `p` and `tag`, so misplaced, stale or
/// garbage data shows, and any sub-range can be recomputed.
pub fn pattern(offset: u64, len: usize, tag: u64) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|p| {
            let word = (p / 8) ^ tag.rotate_left(17) ^ 0x5bd1_e995_0000_0000;
            word.to_le_bytes()[(p % 8) as usize]
        })
        .collect()
}

/// The first differing offset of two byte strings, for failure messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}
