//! blockwire-rbd against the real test cluster (`tests/ceph/cluster.sh`):
//! data round trips checked with `rbd export`, allocation checked with
//! `rbd du`, concurrency, dropped futures, snapshots, resize, and every
//! set-up failure with its one-line error.

#![cfg(feature = "librbd")]

mod common;

use std::io;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use blockwire_rbd::{Cluster, ClusterOptions, Extent, ImageSpec, MonAddr, Secret, ZeroMode, errno};
use common::{MIB, first_difference, pattern};

const EROFS: i32 = 30;

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = first_difference(got, want) {
        panic!(
            "{what}: differs at byte {i} (got {} bytes, want {})",
            got.len(),
            want.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_flush_round_trip_matches_rbd_export() {
    let Some(env) = common::env() else { return };
    let name = env.create_image("rt", 32, &[]);
    let cluster = env.connect().await;
    let img = env.open(&cluster, &name).await;
    let info = img.opened_info();
    assert_eq!(info.size, 32 * MIB);
    assert_eq!((info.object_size, info.order), (4 * MIB, 22));
    assert!(
        info.features.exclusive_lock(),
        "librbd's default features: {:?}",
        info.features
    );
    assert!(!info.read_only);

    let mut model = vec![0u8; 32 * MIB as usize];
    // Unaligned, object-crossing, tiny and large writes.
    for (i, (off, len)) in [
        (0u64, 4096usize),
        (4 * MIB - 100, 300),
        (5 * MIB + 1, 1),
        (9 * MIB, 3 * MIB as usize),
        (32 * MIB - 512, 512),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(off, len, i as u64 + 1);
        let (r, back) = img.write(off, data).await;
        r.unwrap_or_else(|e| panic!("write at {off}: {e}"));
        assert_eq!(back.len(), len, "the buffer comes back");
        model[off as usize..off as usize + len].copy_from_slice(&back);
    }
    img.flush().await.0.expect("flush");

    let (r, buf) = img.read(0, vec![0u8; 32 * MIB as usize]).await;
    assert_eq!(r.expect("read"), 32 * MIB as usize);
    assert_same("read back", &buf, &model);
    // A read that is not aligned to anything.
    let (r, part) = img.read(4 * MIB - 150, vec![0u8; 400]).await;
    assert_eq!(r.unwrap(), 400);
    assert_same(
        "unaligned read",
        &part,
        &model[(4 * MIB - 150) as usize..(4 * MIB + 250) as usize],
    );

    drop(img);
    assert_same("rbd export", &env.export(&name), &model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_and_write_zeroes_read_back_as_zeroes() {
    let Some(env) = common::env() else { return };
    let name = env.create_image("zero", 24, &[]);
    let cluster = env.connect().await;
    let img = env.open(&cluster, &name).await;
    let size = 24 * MIB as usize;
    let full = pattern(0, size, 7);
    img.write(0, full.clone()).await.0.expect("fill");
    let mut model = full;

    // write_zeroes that may unmap: unaligned head and tail inside objects.
    let (a, b) = (MIB as usize + 3, 6 * MIB as usize + 5);
    img.write_zeroes(a as u64, (b - a) as u64, ZeroMode::Unmap)
        .await
        .0
        .expect("zeroes (unmap)");
    model[a..b].fill(0);
    // write_zeroes that must allocate (thick provisioning).
    let (c, d) = (9 * MIB as usize - 700, 9 * MIB as usize + 1300);
    img.write_zeroes(c as u64, (d - c) as u64, ZeroMode::Allocate)
        .await
        .0
        .expect("zeroes (allocate)");
    model[c..d].fill(0);
    // Discard of whole objects 4 and 5: guaranteed to read as zeroes.
    img.discard(16 * MIB, 8 * MIB).await.0.expect("discard");
    model[16 * MIB as usize..].fill(0);
    img.flush().await.0.expect("flush");

    let (r, buf) = img.read(0, vec![0xffu8; size]).await;
    r.expect("read");
    assert_same("after zeroes and discard", &buf, &model);
    drop(img);
    assert_same("rbd export", &env.export(&name), &model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_after_discard_agrees_with_rbd_du() {
    let Some(env) = common::env() else { return };
    let name = env.create_image("alloc", 64, &[]);
    let cluster = env.connect().await;
    let img = env.open(&cluster, &name).await;
    assert!(img.opened_info().features.fast_diff());
    let obj = 4 * MIB;

    // A fresh image is one hole.
    let a = img.allocation(0, 64 * MIB, 1000).await.expect("allocation");
    assert_eq!(
        a.extents,
        [Extent {
            offset: 0,
            length: 64 * MIB,
            data: false
        }]
    );

    // Data in objects 0, 1, 2, 5 (partly), 15 (one byte).
    for (off, len) in [(0, 3 * obj), (5 * obj + 4096, 8192), (64 * MIB - 1, 1)] {
        img.write(off, pattern(off, len as usize, 3))
            .await
            .0
            .expect("write");
    }
    // Trim object 1 completely: it becomes a hole.
    img.discard(obj, obj).await.0.expect("discard");
    img.flush().await.0.expect("flush");

    let a = img.allocation(0, 64 * MIB, 1000).await.expect("allocation");
    let want = [
        Extent {
            offset: 0,
            length: obj,
            data: true,
        },
        Extent {
            offset: obj,
            length: obj,
            data: false,
        },
        Extent {
            offset: 2 * obj,
            length: obj,
            data: true,
        },
        Extent {
            offset: 3 * obj,
            length: 2 * obj,
            data: false,
        },
        Extent {
            offset: 5 * obj,
            length: obj,
            data: true,
        },
        Extent {
            offset: 6 * obj,
            length: 9 * obj,
            data: false,
        },
        Extent {
            offset: 15 * obj,
            length: obj,
            data: true,
        },
    ];
    assert_eq!(a.extents, want);
    assert_eq!((a.start, a.end), (0, 64 * MIB));
    let data: u64 = a.extents.iter().filter(|e| e.data).map(|e| e.length).sum();
    assert_eq!(data, env.du_used(&name), "allocated bytes vs `rbd du`");

    // A sub-range is clipped; a cap on extents ends the answer early.
    let a = img.allocation(obj / 2, 2 * obj, 1000).await.unwrap();
    assert_eq!(
        a.extents,
        [
            Extent {
                offset: obj / 2,
                length: obj / 2,
                data: true
            },
            Extent {
                offset: obj,
                length: obj,
                data: false
            },
            Extent {
                offset: 2 * obj,
                length: obj / 2,
                data: true
            },
        ]
    );
    let a = img.allocation(0, 64 * MIB, 2).await.unwrap();
    assert_eq!((a.end, a.extents.len()), (2 * obj, 2));
    // Past the end: clipped to nothing.
    let a = img.allocation(64 * MIB, MIB, 10).await.unwrap();
    assert!(a.extents.is_empty() && a.start == a.end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fast_diff_everything_is_data_as_in_qemu() {
    let Some(env) = common::env() else { return };
    let name = env.create_image("nofd", 16, &["--image-feature", "layering"]);
    let cluster = env.connect().await;
    let img = env.open(&cluster, &name).await;
    let f = img.opened_info().features;
    assert!(!f.fast_diff() && !f.exclusive_lock(), "{f:?}");
    let a = img.allocation(0, 16 * MIB, 10).await.unwrap();
    assert_eq!(
        a.extents,
        [Extent {
            offset: 0,
            length: 16 * MIB,
            data: true
        }]
    );
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_share_librbds_threads() {
    let Some(env) = common::env() else { return };
    let name = env.create_image("many", 64, &[]);
    let cluster = env.connect().await;
    let img = env.open(&cluster, &name).await;
    const N: u64 = 512;
    const LEN: usize = 64 * 1024;
    // Warm up librbd's thread pools, then count threads with N in flight.
    img.write(0, vec![1u8; 4096]).await.0.unwrap();
    let before = threads();
    let writes: Vec<_> = (0..N)
        .map(|i| img.write(i * LEN as u64, pattern(i * LEN as u64, LEN, 9)))
        .collect();
    let during = threads();
    for (i, w) in writes.into_iter().enumerate() {
        let (r, buf) = w.await;
        r.unwrap_or_else(|e| panic!("write {i}: {e}"));
        assert_eq!(buf.len(), LEN, "the buffer comes back");
    }
    assert!(
        during < before + 16,
        "{N} requests in flight: threads {before} -> {during}"
    );

    // Reads, driven from many tasks at once.
    let mut tasks = Vec::new();
    for i in 0..N {
        let img = img.clone();
        tasks.push(tokio::spawn(async move {
            let off = i * LEN as u64;
            let (r, buf) = img.read(off, vec![0u8; LEN]).await;
            assert_eq!(r.expect("read"), LEN);
            assert!(buf == pattern(off, LEN, 9), "read {i} returned other data");
        }));
    }
    for t in tasks {
        t.await.expect("read task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_futures_keep_their_buffers_until_librbd_is_done() {
    let Some(env) = common::env() else { return };
    let name = env.create_image("drop", 32, &[]);
    let cluster = env.connect().await;
    let img = env.open(&cluster, &name).await;
    const N: u64 = 128;
    const LEN: usize = 128 * 1024;
    // Submit and drop at once: the only owner of each buffer is now the
    // request. If a buffer were freed early, librbd would write whatever
    // the allocator put there next, so scribble over freed memory.
    for i in 0..N {
        drop(img.write(i * LEN as u64, pattern(i * LEN as u64, LEN, 11)));
    }
    let scribble: Vec<Vec<u8>> = (0..N).map(|_| vec![0xeeu8; LEN]).collect();
    // librbd's flush completes after the writes queued before it.
    img.flush().await.0.expect("flush");
    drop(scribble);
    // Reads dropped mid-flight: librbd writes into buffers nobody waits for.
    for i in 0..N {
        drop(img.read(i * LEN as u64, vec![0u8; LEN]));
    }
    // Dropping the image with those reads in flight closes it after them.
    drop(img);
    let img = env.open(&cluster, &name).await;
    let (r, buf) = img.read(0, vec![0u8; N as usize * LEN]).await;
    r.unwrap();
    assert_same(
        "written by dropped futures",
        &buf,
        &pattern(0, N as usize * LEN, 11),
    );
    drop(img);
    assert_same("rbd export", &env.export(&name)[..N as usize * LEN], &buf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_read_only_and_keeps_its_data() {
    let Some(env) = common::env() else { return };
    let name = env.create_image("snap", 8, &[]);
    let cluster = env.connect().await;
    let img = env.open(&cluster, &name).await;
    img.write(0, vec![0xaau8; 8192]).await.0.unwrap();
    img.flush().await.0.unwrap();
    env.rbd(&["snap", "create", &format!("{}/{name}@s1", env.pool)]);
    img.write(0, vec![0xbbu8; 8192]).await.0.unwrap();
    img.flush().await.0.unwrap();

    let mut spec = ImageSpec::new(env.pool.clone(), name.clone());
    spec.snapshot = Some("s1".into());
    let snap = cluster.open(spec).await.expect("open the snapshot");
    assert!(snap.opened_info().read_only);
    let (r, buf) = snap.read(0, vec![0u8; 8192]).await;
    r.unwrap();
    assert!(buf.iter().all(|&b| b == 0xaa), "snapshot content");
    let (r, _) = snap.write(0, vec![0u8; 512]).await;
    assert_eq!(errno(&r.expect_err("write to a snapshot")), Some(EROFS));
    let e = snap.resize(MIB).await.expect_err("resize of a snapshot");
    assert_eq!(errno(&e), Some(EROFS), "{e}");
    assert!(e.to_string().contains("cannot resize RBD image"), "{e}");

    // Read-only without a snapshot sees the head.
    let mut spec = ImageSpec::new(env.pool.clone(), name.clone());
    spec.read_only = true;
    let ro = cluster.open(spec).await.unwrap();
    let (r, buf) = ro.read(0, vec![0u8; 8192]).await;
    r.unwrap();
    assert!(buf.iter().all(|&b| b == 0xbb));
    assert_eq!(
        errno(&ro.write(0, vec![0u8; 512]).await.0.unwrap_err()),
        Some(EROFS)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_grows_and_shrinks() {
    let Some(env) = common::env() else { return };
    let name = env.create_image("resize", 8, &[]);
    let cluster = env.connect().await;
    let img = env.open(&cluster, &name).await;
    img.write(7 * MIB, vec![0x11u8; MIB as usize])
        .await
        .0
        .unwrap();
    img.resize(20 * MIB).await.expect("grow");
    assert_eq!(img.info().await.unwrap().size, 20 * MIB);
    let (r, buf) = img.read(8 * MIB, vec![1u8; 4096]).await;
    r.unwrap();
    assert!(buf.iter().all(|&b| b == 0), "grown part reads as zeroes");
    img.resize(7 * MIB + 4096).await.expect("shrink");
    assert_eq!(img.info().await.unwrap().size, 7 * MIB + 4096);
    let out = env.rbd(&["info", "--format", "json", &format!("{}/{name}", env.pool)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("\"size\":{}", 7 * MIB + 4096)),
        "rbd info: {text}"
    );
    drop(img);
    let exported = env.export(&name);
    assert_eq!(exported.len() as u64, 7 * MIB + 4096);
    assert!(exported[7 * MIB as usize..].iter().all(|&b| b == 0x11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_given_as_servers_without_a_configuration_file() {
    let Some(env) = common::env() else { return };
    let name = env.create_image("servers", 4, &[]);
    let empty = std::env::temp_dir().join(format!("bw-rbd-empty-{}.conf", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    let (host, port) = env.mon_v1.rsplit_once(':').unwrap();
    let opts = ClusterOptions {
        conf: Some(empty.clone()),
        user: Some(env.user.clone()),
        key: Some(Secret::new(env.key.clone())),
        servers: vec![MonAddr::new(host, port.parse().unwrap())],
        auth_client_required: vec![blockwire_rbd::AuthMode::Cephx],
        connect_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let cluster = Cluster::connect(opts)
        .await
        .expect("connect through `servers`");
    assert_eq!(cluster.client(), "client.blockwire");
    assert!(
        cluster.mon_host().contains(&env.mon_v1),
        "{}",
        cluster.mon_host()
    );
    let img = env.open(&cluster, &name).await;
    img.write(0, vec![5u8; 4096]).await.0.unwrap();
    std::fs::remove_file(&empty).unwrap();
}

/// Connect options pointing at `mons`, with an empty configuration file
/// (not the test cluster's) and a 3 s timeout.
fn unreachable(env: &common::Env, mons: Vec<MonAddr>) -> (ClusterOptions, std::path::PathBuf) {
    let empty = std::env::temp_dir().join(format!(
        "bw-rbd-none-{}-{}.conf",
        std::process::id(),
        mons[0].port.unwrap()
    ));
    std::fs::write(&empty, "").unwrap();
    let opts = ClusterOptions {
        conf: Some(empty.clone()),
        user: Some(env.user.clone()),
        key: Some(Secret::new(env.key.clone())),
        servers: mons,
        connect_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    (opts, empty)
}

/// Fails instead of hanging; not a timing assertion (librados' own
/// deadline is the thing under test, this only catches a hang).
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("connect did not return at all")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_monitors_fail_within_the_timeout_with_one_line() {
    let Some(env) = common::env() else { return };
    // A port nobody listens on (refused), and a listener that never answers
    // (accepted into the backlog, then silence).
    let refused = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = refused.local_addr().unwrap().port();
    drop(refused);
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();

    for port in [refused_port, silent_port] {
        let (opts, conf) = unreachable(&env, vec![MonAddr::new("127.0.0.1", port)]);
        let t = Instant::now();
        let e = bounded(Cluster::connect(opts))
            .await
            .err()
            .expect("connect must fail");
        eprintln!(
            "monitor 127.0.0.1:{port}: failed after {:?}: {e}",
            t.elapsed()
        );
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(
            msg.starts_with(&format!("cannot connect to the Ceph monitors 127.0.0.1:{port} as client.blockwire within 3 s")),
            "{msg}"
        );
        std::fs::remove_file(conf).unwrap();
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_monitors_at_all_is_a_clear_error() {
    let Some(env) = common::env() else { return };
    let empty = std::env::temp_dir().join(format!("bw-rbd-nomon-{}.conf", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    let opts = ClusterOptions {
        conf: Some(empty.clone()),
        key: Some(Secret::new(env.key.clone())),
        ..Default::default()
    };
    let e = Cluster::connect(opts).await.err().expect("no monitors");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(
        e.to_string()
            .starts_with("no Ceph monitors for client.admin"),
        "{e}"
    );
    std::fs::remove_file(empty).unwrap();
    // A configuration file that does not exist.
    let opts = ClusterOptions {
        conf: Some("/nonexistent/ceph.conf".into()),
        ..Default::default()
    };
    let e = Cluster::connect(opts).await.err().expect("missing conf");
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string()
            .starts_with("cannot read Ceph configuration /nonexistent/ceph.conf"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_or_user_is_refused_with_one_line() {
    let Some(env) = common::env() else { return };
    // A well-formed key that belongs to another user.
    let mut opts = env.options();
    opts.key = Some(Secret::new(env.admin_key.clone()));
    opts.connect_timeout = Duration::from_secs(10);
    let e = bounded(Cluster::connect(opts))
        .await
        .err()
        .expect("wrong key");
    eprintln!("wrong key: {e}");
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "the Ceph monitors {} refused client.blockwire (wrong key, unknown user, or no auth method in common)",
            env.mon_host
        )),
        "{e}"
    );
    assert!(
        !e.to_string().contains(&env.admin_key),
        "the key must not be printed"
    );

    // A user the cluster does not know.
    let mut opts = env.options();
    opts.user = Some("nobody".into());
    opts.connect_timeout = Duration::from_secs(10);
    let e = bounded(Cluster::connect(opts))
        .await
        .err()
        .expect("unknown user");
    eprintln!("unknown user: {e}");
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("refused client.nobody"), "{e}");

    // Not a key at all.
    let mut opts = env.options();
    opts.key = Some(Secret::new("not-a-key"));
    let e = bounded(Cluster::connect(opts))
        .await
        .err()
        .expect("malformed key");
    eprintln!("malformed key: {e}");
    assert!(
        !e.to_string().contains("not-a-key"),
        "the key must not be printed: {e}"
    );
    assert!(e.to_string().contains("key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_pool_image_snapshot_and_no_permission_are_clear() {
    let Some(env) = common::env() else { return };
    let cluster = env.connect().await;
    let name = env.create_image("missing", 4, &[]);

    let e = cluster
        .open(ImageSpec::new("no-such-pool", "x"))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        "Ceph pool 'no-such-pool' does not exist: No such file or directory (ENOENT)"
    );

    let e = cluster
        .open(ImageSpec::new(env.pool.clone(), "no-such-image"))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        format!(
            "RBD image {}/no-such-image does not exist: No such file or directory (ENOENT)",
            env.pool
        )
    );

    let mut spec = ImageSpec::new(env.pool.clone(), name.clone());
    spec.snapshot = Some("no-such-snap".into());
    let e = cluster.open(spec).await.err().unwrap();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(
        e.to_string().starts_with(&format!(
            "RBD image or snapshot {}/{name}@no-such-snap does not exist",
            env.pool
        )),
        "{e}"
    );

    let mut spec = ImageSpec::new(env.pool.clone(), name.clone());
    spec.namespace = Some("no-such-namespace".into());
    let e = cluster.open(spec).await.err().unwrap();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");

    let e = cluster
        .open(ImageSpec::new(env.pool.clone(), "nul\0name"))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("contains a NUL byte"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_is_the_installed_librbd() {
    let Some(_env) = common::env() else { return };
    let (major, minor, _) = blockwire_rbd::librbd_version();
    assert_eq!(major, 1, "librbd major");
    assert!(
        minor >= 16,
        "librbd 1.{minor}: rbd_aio_write_zeroes needs 1.16+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_in_a_namespace() {
    let Some(env) = common::env() else { return };
    let ns = env.image_name("ns");
    env.rbd(&["namespace", "create", &format!("{}/{ns}", env.pool)]);
    env.rbd(&["create", "--size", "4M", &format!("{}/{ns}/disk", env.pool)]);
    // The same name outside the namespace is another image.
    env.rbd(&["create", "--size", "8M", &format!("{}/{ns}-disk", env.pool)]);
    let cluster = env.connect().await;
    let mut spec = ImageSpec::new(env.pool.clone(), "disk");
    spec.namespace = Some(ns.clone());
    let img = cluster.open(spec).await.expect("open in the namespace");
    assert_eq!(img.opened_info().size, 4 * MIB);
    assert_eq!(img.spec().to_string(), format!("{}/{ns}/disk", env.pool));
    let data = pattern(4096, 8192, 21);
    img.write(4096, data.clone()).await.0.unwrap();
    img.flush().await.0.unwrap();
    drop(img);
    let out = env
        .rbd(&[
            "export",
            "--no-progress",
            &format!("{}/{ns}/disk", env.pool),
            "-",
        ])
        .stdout;
    assert_same(
        "rbd export of the namespaced image",
        &out[4096..4096 + 8192],
        &data,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_larger_than_2_gib() {
    let Some(env) = common::env() else { return };
    // Sparse: only what is written takes space.
    let name = env.create_image("big", 8 * 1024, &[]);
    let cluster = env.connect().await;
    let img = env.open(&cluster, &name).await;
    let g = 1024 * MIB;
    for off in [0, 3 * g, 6 * g] {
        img.write(off, vec![0x77u8; 4096]).await.0.unwrap();
    }
    img.discard(0, 3 * g).await.0.expect("a 3 GiB discard");
    img.write_zeroes(3 * g, 3 * g, ZeroMode::Unmap)
        .await
        .0
        .expect("3 GiB of zeroes");
    for off in [0, 3 * g] {
        let (r, buf) = img.read(off, vec![1u8; 4096]).await;
        r.unwrap();
        assert!(buf.iter().all(|&b| b == 0), "zero at {off}");
    }
    let (r, buf) = img.read(6 * g, vec![0u8; 4096]).await;
    r.unwrap();
    assert!(buf.iter().all(|&b| b == 0x77));
    let a = img.allocation(0, 8 * g, 100).await.unwrap();
    assert_eq!(
        a.extents,
        [
            Extent {
                offset: 0,
                length: 6 * g,
                data: false
            },
            Extent {
                offset: 6 * g,
                length: 4 * MIB,
                data: true
            },
            Extent {
                offset: 6 * g + 4 * MIB,
                length: 2 * g - 4 * MIB,
                data: false
            },
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_against_a_cephx_cluster_is_refused() {
    let Some(env) = common::env() else { return };
    let mut opts = env.options();
    opts.key = None;
    opts.auth_client_required = vec![blockwire_rbd::AuthMode::None];
    opts.connect_timeout = Duration::from_secs(5);
    let e = bounded(Cluster::connect(opts))
        .await
        .err()
        .expect("auth none");
    eprintln!("auth none: {e}");
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    let msg = e.to_string();
    assert!(!msg.contains('\n'));
    assert!(
        msg.contains("client.blockwire") && msg.contains(&env.mon_host),
        "{msg}"
    );
}
