//! `nbdinfo` against `blockwire serve`: sizes, flags, block sizes, metadata
//! contexts, export lists and allocation / dirty maps.

use blockwire_tests::*;
use serde_json::Value;

/// `nbdinfo --json URI`, returning the single export object.
fn info(uri: &str) -> (Value, Value) {
    let out = run_ok("nbdinfo", &["--json", uri]);
    let v = json(&out);
    let exports = v["exports"]
        .as_array()
        .unwrap_or_else(|| panic!("no exports in {v}"));
    assert_eq!(
        exports.len(),
        1,
        "{uri}: nbdinfo --json without --list shows one export: {v}"
    );
    (v.clone(), exports[0].clone())
}

fn flag(e: &Value, name: &str) -> bool {
    e[name]
        .as_bool()
        .unwrap_or_else(|| panic!("nbdinfo --json: no boolean {name} in {e}"))
}

fn contexts(e: &Value) -> Vec<String> {
    e["contexts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn check_block_sizes(what: &str, e: &Value) {
    let min = e["block_size_minimum"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no block_size_minimum: {e}"));
    let pref = e["block_size_preferred"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no block_size_preferred: {e}"));
    let max = e["block_size_maximum"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no block_size_maximum: {e}"));
    assert!(
        min.is_power_of_two() && pref.is_power_of_two(),
        "{what}: block sizes {min}/{pref}/{max}"
    );
    assert!(
        min <= pref && pref <= max,
        "{what}: block sizes out of order {min}/{pref}/{max}"
    );
    assert!(
        min <= 4096,
        "{what}: minimum block size {min} > 4096 for a memory/file export"
    );
    assert!(pref >= 512, "{what}: preferred block size {pref} < 512");
    assert!(max >= MIB, "{what}: maximum block size {max} < 1 MiB");
}

/// The map must tile [0, size) exactly.
fn assert_tiles(what: &str, map: &[(u64, u64, u64)], size: u64) {
    let mut at = 0;
    for &(o, l, _) in map {
        assert_eq!(o, at, "{what}: extents not contiguous: {map:?}");
        assert!(l > 0, "{what}: zero-length extent: {map:?}");
        at += l;
    }
    assert_eq!(
        at, size,
        "{what}: extents cover {at}, export is {size}: {map:?}"
    );
}

#[test]
fn json_memory_export_flags_sizes_contexts() {
    require!("nbdinfo");
    let Some(srv) = Server::start(&[
        "--memory",
        "64M",
        "-n",
        "disk",
        "--description",
        "memory disk",
        "--multi-conn",
    ]) else {
        return;
    };
    for (t, uri) in srv.uris() {
        let (top, e) = info(&uri);
        let what = format!("{t} {uri}");
        assert_eq!(top["protocol"], "newstyle-fixed", "{what}: {top}");
        assert_eq!(top["TLS"], false, "{what}: {top}");
        assert_eq!(
            top["structured"], true,
            "{what}: structured replies not negotiated: {top}"
        );
        assert_eq!(e["export-name"], "disk", "{what}: {e}");
        assert_eq!(e["description"], "memory disk", "{what}: {e}");
        assert_eq!(e["export-size"].as_u64(), Some(64 * MIB), "{what}: {e}");
        assert!(!flag(&e, "is_read_only"), "{what}: {e}");
        for f in [
            "can_flush",
            "can_fua",
            "can_trim",
            "can_zero",
            "can_fast_zero",
            "can_cache",
            "can_multi_conn",
            "can_df",
        ] {
            assert!(
                flag(&e, f),
                "{what}: {f} is false for a writable memory export with --multi-conn: {e}"
            );
        }
        check_block_sizes(&what, &e);
        let ctx = contexts(&e);
        assert!(
            ctx.iter().any(|c| c == "base:allocation"),
            "{what}: no base:allocation in {ctx:?}"
        );
        assert!(
            !ctx.iter().any(|c| c == "qemu:allocation-depth"),
            "{what}: qemu:allocation-depth offered without --allocation-depth: {ctx:?}"
        );
    }
}

#[test]
fn json_read_only_file_with_allocation_depth() {
    require!("nbdinfo");
    let dir = TmpDir::new("rofile");
    let img = dir.join("ro.img");
    write_patterned(&img, 8 * MIB);
    let img_s = img.display().to_string();
    let Some(srv) = Server::start(&[&img_s, "-r", "-n", "ro", "--allocation-depth"]) else {
        return;
    };
    for (t, uri) in srv.uris() {
        let (_, e) = info(&uri);
        let what = format!("{t} {uri}");
        assert_eq!(e["export-name"], "ro", "{what}: {e}");
        assert_eq!(e["export-size"].as_u64(), Some(8 * MIB), "{what}: {e}");
        assert!(
            flag(&e, "is_read_only"),
            "{what}: -r export not read-only: {e}"
        );
        assert!(flag(&e, "can_df"), "{what}: {e}");
        check_block_sizes(&what, &e);
        let ctx = contexts(&e);
        for c in ["base:allocation", "qemu:allocation-depth"] {
            assert!(ctx.iter().any(|x| x == c), "{what}: no {c} in {ctx:?}");
        }
        let depth = nbdinfo_map(&uri, Some("qemu:allocation-depth"));
        assert_tiles(&format!("{what} allocation-depth map"), &depth, 8 * MIB);
        let alloc = nbdinfo_map(&uri, None);
        assert_tiles(&format!("{what} base:allocation map"), &alloc, 8 * MIB);
    }
}

#[test]
fn json_null_export() {
    require!("nbdinfo");
    let Some(srv) = Server::start(&["--null", "1G"]) else {
        return;
    };
    for (t, uri) in srv.uris() {
        let (_, e) = info(&uri);
        assert_eq!(
            e["export-name"], "",
            "{t}: default export name is \"\": {e}"
        );
        assert_eq!(e["export-size"].as_u64(), Some(GIB), "{t}: {e}");
        assert!(!flag(&e, "is_read_only"), "{t}: {e}");
        assert!(flag(&e, "can_zero"), "{t}: {e}");
    }
}

#[test]
fn json_default_is_1g_memory_disk() {
    require!("nbdinfo");
    let Some(srv) = Server::start(&[]) else {
        return;
    };
    for (t, uri) in srv.uris() {
        let (_, e) = info(&uri);
        assert_eq!(e["export-name"], "", "{t}: {e}");
        assert_eq!(e["export-size"].as_u64(), Some(GIB), "{t}: {e}");
        assert!(!flag(&e, "is_read_only"), "{t}: {e}");
    }
}

#[test]
fn json_multi_conn_is_configurable() {
    require!("nbdinfo");
    for (opt, want) in [("--multi-conn", true), ("--no-multi-conn", false)] {
        let Some(srv) = Server::start(&["--memory", "16M", opt]) else {
            return;
        };
        for (t, uri) in srv.uris() {
            let (_, e) = info(&uri);
            assert_eq!(flag(&e, "can_multi_conn"), want, "{t} with {opt}: {e}");
        }
    }
}

#[test]
fn json_dirty_bitmap_context() {
    require!("nbdinfo");
    let Some(srv) = Server::start(&[
        "--memory",
        "16M",
        "--dirty-bitmap",
        "b0",
        "--allocation-depth",
    ]) else {
        return;
    };
    for (t, uri) in srv.uris() {
        let (_, e) = info(&uri);
        let ctx = contexts(&e);
        for c in [
            "base:allocation",
            "qemu:dirty-bitmap:b0",
            "qemu:allocation-depth",
        ] {
            assert!(ctx.iter().any(|x| x == c), "{t}: no {c} in {ctx:?}");
        }
    }
}

#[test]
fn list_shows_every_export_with_description() {
    require!("nbdinfo", "nbdcopy");
    let dir = TmpDir::new("list");
    let img = dir.join("base.img");
    write_patterned(&img, 16 * MIB);
    let slice = format!(
        "name=slice,file={},readonly,offset=1M,size=4M,description=a slice",
        img.display()
    );
    let Some(srv) = Server::start(&[
        "--memory",
        "16M",
        "-n",
        "a",
        "--description",
        "first export",
        "--export",
        "name=b,memory=8M,description=the second export",
        "--export",
        "name=c,null=1G,readonly,description=third",
        "--export",
        &slice,
    ]) else {
        return;
    };
    let want = [
        ("a", "first export", 16 * MIB, false),
        ("b", "the second export", 8 * MIB, false),
        ("c", "third", GIB, true),
        ("slice", "a slice", 4 * MIB, true),
    ];
    for (t, uri) in srv.uris() {
        let out = run_ok("nbdinfo", &["--list", "--json", &uri]);
        let v = json(&out);
        let exports = v["exports"]
            .as_array()
            .unwrap_or_else(|| panic!("{t}: no exports: {v}"));
        assert_eq!(exports.len(), want.len(), "{t}: nbdinfo --list: {v}");
        for (name, desc, size, ro) in want {
            let e = exports
                .iter()
                .find(|e| e["export-name"] == name)
                .unwrap_or_else(|| panic!("{t}: export {name} not listed: {v}"));
            assert_eq!(e["description"], desc, "{t}: {name}: {e}");
            assert_eq!(e["export-size"].as_u64(), Some(size), "{t}: {name}: {e}");
            assert_eq!(flag(e, "is_read_only"), ro, "{t}: {name}: {e}");
        }
    }
    // The slice export serves bytes [1M, 5M) of the file.
    let out_img = dir.join("slice.out");
    run_ok(
        "nbdcopy",
        &[srv.uri_unix("slice").as_str(), out_img.to_str().unwrap()],
    );
    let got = std::fs::read(&out_img).unwrap();
    assert!(
        got == read_at(&img, MIB, 4 * MIB as usize),
        "export `slice` does not serve file bytes [1M, 5M)"
    );
}

#[test]
fn map_shows_holes_after_trim() {
    require!("nbdinfo", "python3-nbd");
    let Some(srv) = Server::start(&["--memory", "16M"]) else {
        return;
    };
    libnbd_ops(
        &srv.uri_unix(""),
        &[Op::Write(0, 4 * MIB, 0xab), Op::Trim(MIB, MIB)],
    );
    for (t, uri) in srv.uris() {
        let map = nbdinfo_map(&uri, None);
        let merged = merge_extents(&map);
        assert_eq!(
            merged,
            vec![
                (0, MIB, 0),
                (MIB, MIB, 3),
                (2 * MIB, 2 * MIB, 0),
                (4 * MIB, 12 * MIB, 3)
            ],
            "{t}: nbdinfo --map after write 0..4M, discard 1M..2M on a memory disk (type 0=data, 3=hole,zero); raw: {map:?}"
        );
    }
}

#[test]
fn map_dirty_bitmap_shows_written_ranges() {
    require!("nbdinfo", "python3-nbd");
    let Some(srv) = Server::start(&["--memory", "16M", "--dirty-bitmap", "b0"]) else {
        return;
    };
    let ctx = Some("qemu:dirty-bitmap:b0");
    for (t, uri) in srv.uris() {
        let map = nbdinfo_map(&uri, ctx);
        assert_tiles(t, &map, 16 * MIB);
        assert!(
            map.iter().all(|e| e.2 == 0),
            "{t}: fresh dirty bitmap is not clean: {map:?}"
        );
    }
    libnbd_ops(
        &srv.uri_tcp(""),
        &[Op::Write(MIB, 4 * KIB, 1), Op::Write(8 * MIB, 64 * KIB, 2)],
    );
    for (t, uri) in srv.uris() {
        let map = nbdinfo_map(&uri, ctx);
        assert_tiles(t, &map, 16 * MIB);
        let dirty = |off: u64| {
            map.iter()
                .any(|&(o, l, ty)| o <= off && off < o + l && ty & 1 == 1)
        };
        for (o, l) in [(MIB, 4 * KIB), (8 * MIB, 64 * KIB)] {
            for off in (o..o + l).step_by(4096) {
                assert!(dirty(off), "{t}: written offset {off} not dirty: {map:?}");
            }
        }
        assert!(
            !dirty(0) && !dirty(4 * MIB) && !dirty(12 * MIB),
            "{t}: untouched ranges dirty: {map:?}"
        );
        let total: u64 = map.iter().filter(|e| e.2 & 1 == 1).map(|e| e.1).sum();
        assert!(
            total <= 2 * MIB,
            "{t}: {total} bytes dirty after writing 68 KiB: {map:?}"
        );
    }
}
