//! The connection driver over a socket pair: requests and payload paths,
//! many requests in flight, shutdown, and the handshake deadline.

use std::sync::Arc;
use std::time::Duration;

use blockwire::block::{BlockdevOptions, DriverOptions, Graph};
use blockwire::connection::{ConnContext, MAX_IN_FLIGHT, serve};
use blockwire::registry::{Export, ExportConfig, Registry};
use blockwire_core::server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

async fn context() -> (Arc<ConnContext>, watch::Sender<bool>) {
    let graph = Arc::new(Graph::new());
    graph
        .add(BlockdevOptions::new(DriverOptions::Ram { size: 1 << 20 }).named("disk"))
        .await
        .unwrap();
    let registry = Arc::new(Registry::new());
    let export = Export::new(
        &graph,
        ExportConfig {
            node_name: "disk".into(),
            writable: true,
            multi_conn: true,
            ..ExportConfig::default()
        },
    )
    .unwrap();
    registry.add(export).unwrap();
    let (tx, rx) = watch::channel(false);
    let ctx = ConnContext {
        registry,
        config: ServerConfig::default(),
        tls: None,
        shutdown: rx,
        epoch: tokio::time::Instant::now(),
    };
    (Arc::new(ctx), tx)
}

/// Old-fashioned client: NBD_OPT_EXPORT_NAME, simple replies.
async fn connect(c: &mut UnixStream) {
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    c.write_all(&3u32.to_be_bytes()).await.unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&0u32.to_be_bytes());
    c.write_all(&opt).await.unwrap();
    let mut info = [0u8; 10];
    c.read_exact(&mut info).await.unwrap();
    assert_eq!(u64::from_be_bytes(info[..8].try_into().unwrap()), 1 << 20);
}

fn request(ty: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&ty.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r
}

async fn simple_reply(c: &mut UnixStream) -> (u32, u64) {
    let mut r = [0u8; 16];
    c.read_exact(&mut r).await.unwrap();
    assert_eq!(&r[..4], &0x6744_6698u32.to_be_bytes());
    (
        u32::from_be_bytes(r[4..8].try_into().unwrap()),
        u64::from_be_bytes(r[8..].try_into().unwrap()),
    )
}

#[tokio::test]
async fn write_read_error_and_disconnect() {
    let (ctx, _stop) = context().await;
    let (mut c, s) = UnixStream::pair().unwrap();
    let server = tokio::spawn(serve(s, "test".into(), ctx));
    connect(&mut c).await;
    // Header and payload split across writes, payload larger than one
    // input buffer read, so both payload paths run.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(&request(1, 7, 4096, data.len() as u32))
        .await
        .unwrap();
    c.write_all(&data[..1000]).await.unwrap();
    c.write_all(&data[1000..]).await.unwrap();
    assert_eq!(simple_reply(&mut c).await, (0, 7));
    c.write_all(&request(0, 8, 4096, data.len() as u32))
        .await
        .unwrap();
    assert_eq!(simple_reply(&mut c).await, (0, 8));
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(back, data);
    // Out of range: EINVAL, and the connection stays usable.
    c.write_all(&request(0, 9, 1 << 20, 512)).await.unwrap();
    assert_eq!(simple_reply(&mut c).await, (22, 9));
    c.write_all(&request(3, 10, 0, 0)).await.unwrap();
    assert_eq!(simple_reply(&mut c).await, (0, 10));
    c.write_all(&request(2, 11, 0, 0)).await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    server.await.unwrap();
}

#[tokio::test]
async fn many_requests_in_flight_all_answered() {
    let (ctx, _stop) = context().await;
    let (mut c, s) = UnixStream::pair().unwrap();
    tokio::spawn(serve(s, "test".into(), ctx));
    connect(&mut c).await;
    let n = 3 * MAX_IN_FLIGHT as u64;
    let (mut r, mut w) = c.into_split();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            w.write_all(&request(0, i, i * 512, 512)).await.unwrap();
        }
        w
    });
    let mut seen = vec![false; n as usize];
    for _ in 0..n {
        let mut h = [0u8; 16];
        r.read_exact(&mut h).await.unwrap();
        let cookie = u64::from_be_bytes(h[8..].try_into().unwrap());
        let mut d = [0u8; 512];
        r.read_exact(&mut d).await.unwrap();
        assert!(!std::mem::replace(&mut seen[cookie as usize], true));
    }
    assert!(seen.iter().all(|&s| s));
    drop(sender.await.unwrap());
}

#[tokio::test]
async fn shutdown_ends_idle_connections() {
    let (ctx, stop) = context().await;
    let (mut c, s) = UnixStream::pair().unwrap();
    let server = tokio::spawn(serve(s, "test".into(), ctx));
    connect(&mut c).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("connection did not end")
        .unwrap();
}

/// A client that floods options and never reads the replies blocks our
/// writes; the handshake deadline must still end the connection.
#[tokio::test]
async fn handshake_deadline_bounds_a_client_that_never_reads() {
    let (ctx, _stop) = context().await;
    let mut ctx = Arc::try_unwrap(ctx).ok().unwrap();
    ctx.config.handshake_timeout = Some(Duration::from_millis(500));
    let (mut c, s) = UnixStream::pair().unwrap();
    let server = tokio::spawn(serve(s, "test".into(), Arc::new(ctx)));
    c.write_all(&3u32.to_be_bytes()).await.unwrap();
    let mut list = b"IHAVEOPT".to_vec();
    list.extend_from_slice(&3u32.to_be_bytes());
    list.extend_from_slice(&0u32.to_be_bytes());
    let flood = list.repeat(20_000);
    // Our own write may block too once the server stops reading.
    let _ = tokio::time::timeout(Duration::from_secs(5), c.write_all(&flood)).await;
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("a client that never reads held the connection past the deadline")
        .unwrap();
}
