//! OSD failures under blockwire-rbd, on the real test cluster: an OSD
//! killed and restarted under a write load loses no acknowledged write
//! (checked with `rbd export` after recovery), and with an OSD request
//! timeout set, a placement group without any live OSD fails requests with
//! ETIMEDOUT instead of hanging. These kill daemons, so the tests of this
//! file run one at a time (and after `cluster_io`, cargo runs test binaries
//! one after another).

#![cfg(feature = "librbd")]

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use blockwire_rbd::{Cluster, ImageSpec, Request, errno};
use common::{Env, MIB, first_difference, pattern};
use tokio::sync::{Mutex, MutexGuard};

const ETIMEDOUT: i32 = 110;

async fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// Runs a blocking cluster.sh step off the runtime, so that the write load
/// goes on meanwhile.
async fn cluster_step(env: &Arc<Env>, cmd: &'static str, arg: String) {
    let env = Arc::clone(env);
    tokio::task::spawn_blocking(move || env.cluster(cmd, &[&arg]))
        .await
        .expect("cluster.sh step");
}

/// Wait until `acks` reaches `target`. Progress is counted in acknowledged
/// writes, not in time; the deadline only turns a stall into a failure.
async fn until_acked(acks: &AtomicU64, target: u64, what: &str) {
    for _ in 0..6000 {
        if acks.load(Ordering::SeqCst) >= target {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "writes stalled before {what}: {} of {target} acknowledged",
        acks.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osd_killed_under_write_load_loses_no_acknowledged_write() {
    let Some(env) = common::env() else { return };
    let _serial = one_at_a_time().await;
    let env = Arc::new(env);
    const BLOCK: usize = 64 * 1024;
    const BLOCKS: u64 = 1024; // 64 MiB
    const QD: usize = 16;
    const STEP: u64 = 200; // acknowledged writes between the phases
    const MAX_WRITES: u64 = 50_000; // the load stops by itself

    let name = env.create_image("osdkill", BLOCKS * BLOCK as u64 / MIB, &[]);
    // Without librbd's cache a write completes when the OSDs have it: an
    // acknowledged write is one the cluster holds.
    let mut opts = env.options();
    opts.config.push(("rbd_cache".into(), "false".into()));
    let cluster = Cluster::connect(opts).await.expect("connect");
    let img = cluster
        .open(ImageSpec::new(env.pool.clone(), name.clone()))
        .await
        .expect("open");

    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // The writer: QD writes in flight, round robin over the blocks (QD <
    // BLOCKS, so two writes to one block are never in flight together);
    // model[b] = tag of the last acknowledged write to block b.
    let writer = {
        let (img, acks, stop) = (img.clone(), Arc::clone(&acks), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut model = vec![0u64; BLOCKS as usize];
            let mut inflight: VecDeque<(u64, u64, Request<Vec<u8>>)> = VecDeque::new();
            let mut seq = 0u64;
            loop {
                while inflight.len() < QD && !stop.load(Ordering::SeqCst) && seq < MAX_WRITES {
                    seq += 1;
                    let block = seq % BLOCKS;
                    let off = block * BLOCK as u64;
                    inflight.push_back((block, seq, img.write(off, pattern(off, BLOCK, seq))));
                }
                let Some((block, tag, req)) = inflight.pop_front() else {
                    break;
                };
                let (r, _) = req.await;
                if let Err(e) = r {
                    panic!("write {tag} failed while the cluster recovers: {e}");
                }
                model[block as usize] = tag;
                acks.fetch_add(1, Ordering::SeqCst);
            }
            (model, seq)
        })
    };

    until_acked(&acks, STEP, "the kill").await;
    cluster_step(&env, "kill-osd", "1".into()).await;
    let killed_at = acks.load(Ordering::SeqCst);
    until_acked(&acks, killed_at + STEP, "the restart").await;
    cluster_step(&env, "restart-osd", "1".into()).await;
    let restarted_at = acks.load(Ordering::SeqCst);
    until_acked(&acks, restarted_at + STEP, "the end").await;
    stop.store(true, Ordering::SeqCst);
    let (model, submitted) = writer.await.expect("writer");
    assert!(
        submitted < MAX_WRITES,
        "the load ran out before the phases were done"
    );
    eprintln!(
        "{submitted} writes acknowledged: {killed_at} before the kill, {} while osd.1 was down, {} after its restart",
        restarted_at - killed_at,
        submitted - restarted_at
    );

    // After recovery, another client reads what the cluster holds, while
    // our handle is still open (nothing of ours is left to flush).
    env.cluster("wait-clean", &[]);
    let exported = env.export(&name);
    assert_eq!(exported.len(), BLOCKS as usize * BLOCK);
    for (b, &tag) in model.iter().enumerate() {
        let off = b * BLOCK;
        let got = &exported[off..off + BLOCK];
        let want = if tag == 0 {
            vec![0u8; BLOCK]
        } else {
            pattern(off as u64, BLOCK, tag)
        };
        if let Some(i) = first_difference(got, &want) {
            panic!("block {b} (last acknowledged write {tag}) differs at byte {i} in `rbd export`");
        }
    }
    drop(img);
}

/// The acting set of one RADOS object of the test pool (`ceph osd map`).
fn acting(env: &Env, object: &str) -> Vec<String> {
    let map = env.ceph(&["osd", "map", &env.pool, object, "--format", "json"]);
    let map = String::from_utf8_lossy(&map.stdout).into_owned();
    let mut osds: Vec<String> = map
        .split("\"acting\":[")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or_else(|| panic!("ceph osd map: {map}"))
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    osds.sort();
    assert_eq!(osds.len(), 2, "size 2: {map}");
    osds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_osd_timeout_a_pg_without_live_osds_fails_requests_with_etimedout() {
    let Some(env) = common::env() else { return };
    let _serial = one_at_a_time().await;
    let env = Arc::new(env);
    let name = env.create_image("osdtimeout", 256, &[]);
    let info = env.rbd(&["info", "--format", "json", &format!("{}/{name}", env.pool)]);
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    let field = |k: &str| {
        info.split(&format!("\"{k}\":\""))
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("rbd info: {info}"))
            .to_string()
    };
    let (id, prefix) = (field("id"), field("block_name_prefix"));
    // A data object whose two OSDs are not the two of the image header:
    // with them down the header (watch, lock) stays reachable, so only the
    // data request can be what times out. (The object map is not needed:
    // the object exists before the OSDs go, and writes to an existing
    // object leave the map alone.) 64 objects: that none of them lands in
    // a PG of another pair is vanishingly unlikely.
    let header = acting(&env, &format!("rbd_header.{id}"));
    let (objno, victims) = (0..64u64)
        .map(|n| (n, acting(&env, &format!("{prefix}.{n:016x}"))))
        .find(|(_, a)| *a != header)
        .expect("a data object on other OSDs than the header");
    let off = objno * 4 * MIB;

    let mut opts = env.options();
    opts.osd_op_timeout = Some(Duration::from_secs(3));
    let cluster = Cluster::connect(opts).await.expect("connect");
    // Open (header reads), take the exclusive lock and create the object
    // (object map update) while all is well.
    let img = cluster
        .open(ImageSpec::new(env.pool.clone(), name.clone()))
        .await
        .expect("open");
    img.write(off, vec![1u8; 4096])
        .await
        .0
        .expect("first write");

    for osd in &victims {
        cluster_step(&env, "kill-osd", osd.clone()).await;
    }
    let bounded = |f| tokio::time::timeout(Duration::from_secs(120), f);
    let (r, _) = bounded(img.write(off, vec![2u8; 4096]))
        .await
        .expect("the write hung");
    let e = r.expect_err("a write to a PG without OSDs");
    assert_eq!(errno(&e), Some(ETIMEDOUT), "{e}");
    let (r, _) = bounded(img.read(off, vec![0u8; 4096]))
        .await
        .expect("the read hung");
    assert_eq!(
        errno(&r.expect_err("a read from a PG without OSDs")),
        Some(ETIMEDOUT)
    );

    for osd in &victims {
        cluster_step(&env, "restart-osd", osd.clone()).await;
    }
    env.cluster("wait-clean", &[]);
    // The same handle works again once the OSDs are back.
    img.write(off, vec![3u8; 4096])
        .await
        .0
        .expect("write after recovery");
    let (r, buf) = img.read(off, vec![0u8; 4096]).await;
    r.expect("read after recovery");
    assert!(buf.iter().all(|&b| b == 3));
}
