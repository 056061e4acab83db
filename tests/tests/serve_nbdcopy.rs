//! `nbdcopy` round trips through `blockwire serve`: file -> server -> file,
//! checksums equal, with one connection and with `--connections 4`.

use blockwire_tests::*;

fn round_trip(extra: &[&str], tag: &str) {
    let dir = TmpDir::new(tag);
    let src = dir.join("src.img");
    write_patterned(&src, 64 * MIB);
    let Some(srv) = Server::start(&["--memory", "64M", "--multi-conn"]) else {
        return;
    };
    let [(t1, u1), (t2, u2)] = srv.uris();
    for (tin, uin, tout, uout) in [(t1, &u1, t2, &u2), (t2, &u2, t1, &u1)] {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend([src.to_str().unwrap(), uin.as_str()]);
        run_ok("nbdcopy", &args);
        let out = dir.join(&format!("out-{tin}.img"));
        sparse_file(&out, 64 * MIB);
        let mut args: Vec<&str> = extra.to_vec();
        args.extend([uout.as_str(), out.to_str().unwrap()]);
        run_ok("nbdcopy", &args);
        assert_eq!(
            sha256(&src),
            sha256(&out),
            "nbdcopy {extra:?}: in via {tin}, out via {tout}"
        );
        // Different data the second time round, so a stale copy cannot pass.
        write_at(&src, 0, &[tin.len() as u8 + 1; 4096]);
    }
}

#[test]
fn nbdcopy_round_trip_one_connection() {
    require!("nbdcopy", "sha256sum");
    round_trip(&["--connections", "1"], "copy1");
}

#[test]
fn nbdcopy_round_trip_four_connections() {
    require!("nbdcopy", "sha256sum");
    round_trip(&["--connections", "4"], "copy4");
}
