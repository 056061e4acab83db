//! A build without the `librbd` feature: the API is there, and connecting
//! says why it cannot work.

#![cfg(not(feature = "librbd"))]

use blockwire_rbd::{AVAILABLE, Cluster, ClusterOptions, librbd_version};

#[tokio::test]
async fn connect_reports_built_without_librbd() {
    assert!(!AVAILABLE);
    assert_eq!(librbd_version(), (0, 0, 0));
    let e = Cluster::connect(ClusterOptions::default())
        .await
        .err()
        .expect("no librbd");
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
    assert!(
        e.to_string()
            .starts_with("blockwire was built without librbd"),
        "{e}"
    );
}
