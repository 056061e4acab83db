//! Persistent dirty bitmaps against QEMU: a bitmap stored through the core
//! is listed by `qemu-img info` and merged by `qemu-img bitmap --merge`;
//! one QEMU recorded (`qemu-img bitmap --add`, then writes through qemu-io)
//! is loaded by the core with the right dirty ranges.

mod qcow2_support;

mod qcow2_bitmaps {
    use super::qcow2_support::*;
    use blockwire_core::qcow2::bitmaps::{FLAG_AUTO, FLAG_IN_USE};

    fn info(img: &std::path::Path) -> String {
        run(
            "qemu-img",
            &["info", "--output=json", "-U", img.to_str().unwrap()],
        )
    }

    #[test]
    fn qemu_recorded_bitmap_loads_with_its_dirty_ranges() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("bm-load");
        let img = d.join("b.qcow2");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "64M"],
        );
        run(
            "qemu-img",
            &[
                "bitmap",
                "--add",
                "-g",
                "65536",
                img.to_str().unwrap(),
                "b0",
            ],
        );
        run(
            "qemu-img",
            &[
                "bitmap",
                "--add",
                "-g",
                "1M",
                "--disable",
                img.to_str().unwrap(),
                "off",
            ],
        );
        qemu_io(
            &img,
            &[
                "write -P 1 100000 5000",
                "write -P 2 33554432 131072",
                "write -z 60M 1",
            ],
        );
        let mut im = Image::open(&img, &default_cfg(true)).unwrap();
        let got = im.load_bitmaps().unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        let b0 = got.iter().find(|b| b.name == "b0").unwrap();
        assert_eq!(b0.granularity_bits, 16);
        assert_eq!(b0.flags & FLAG_AUTO, FLAG_AUTO);
        assert_eq!(b0.flags & FLAG_IN_USE, 0);
        assert_eq!(
            b0.dirty,
            vec![(65536, 65536), (32 << 20, 131072), (60 << 20, 65536)]
        );
        let off = got.iter().find(|b| b.name == "off").unwrap();
        assert_eq!(off.flags & FLAG_AUTO, 0);
        assert!(off.dirty.is_empty());
    }

    #[test]
    fn core_stored_bitmap_is_listed_and_merged_by_qemu() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("bm-store");
        let img = d.join("s.qcow2");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "64M"],
        );
        run(
            "qemu-img",
            &["bitmap", "--add", img.to_str().unwrap(), "theirs"],
        );
        qemu_io(&img, &["write -P 1 0 64k"]);
        let runs = Runs(vec![(0, 65536), (10 << 20, 3 << 20), ((64 << 20) - 1, 1)]);
        {
            let mut im = Image::open(&img, &default_cfg(false)).unwrap();
            im.q.track_bitmaps(true);
            im.write(5 << 20, &[7u8; 4096]).unwrap();
            im.store_bitmap("ours", 16, FLAG_AUTO, &runs).unwrap();
            // Replacing it frees the old clusters (no leak).
            im.store_bitmap("ours", 16, FLAG_AUTO, &runs).unwrap();
            let got = im.load_bitmaps().unwrap();
            let ours = got.iter().find(|b| b.name == "ours").unwrap();
            assert_eq!(
                ours.dirty,
                vec![(0, 65536), (10 << 20, 3 << 20), ((64 << 20) - 65536, 65536)]
            );
        }
        assert_clean(&img);
        let i = info(&img);
        assert!(
            i.contains("\"name\": \"ours\"") && i.contains("\"name\": \"theirs\""),
            "{i}"
        );
        assert!(i.contains("\"auto\""), "{i}");
        // Merge ours into a bitmap of a fresh image; load it back.
        let dst = d.join("dst.qcow2");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", dst.to_str().unwrap(), "64M"],
        );
        run(
            "qemu-img",
            &["bitmap", "--add", dst.to_str().unwrap(), "merged"],
        );
        run(
            "qemu-img",
            &[
                "bitmap",
                "--merge",
                "ours",
                "-b",
                img.to_str().unwrap(),
                "-F",
                "qcow2",
                dst.to_str().unwrap(),
                "merged",
            ],
        );
        let mut im = Image::open(&dst, &default_cfg(true)).unwrap();
        let got = im.load_bitmaps().unwrap();
        assert_eq!(got[0].name, "merged");
        assert_eq!(
            got[0].dirty,
            vec![(0, 65536), (10 << 20, 3 << 20), ((64 << 20) - 65536, 65536)]
        );
    }

    #[test]
    fn untracked_writes_make_qemu_drop_stale_bitmaps() {
        // Writing without tracking clears the bitmaps autoclear bit, so
        // QEMU never trusts a bitmap that missed writes.
        if !have_qemu() {
            return;
        }
        let d = tmpdir("bm-untracked");
        let img = d.join("u.qcow2");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"],
        );
        run("qemu-img", &["bitmap", "--add", img.to_str().unwrap(), "b"]);
        let mut im = Image::open(&img, &default_cfg(false)).unwrap();
        im.write(0, &[1u8; 512]).unwrap();
        im.flush().unwrap();
        assert!(!im.q.bitmaps_consistent());
        drop(im);
        let c = qemu_check(&img);
        assert_eq!(c.corruptions, 0, "{}", c.raw);
    }
}

mod qcow2_bitmaps_in_use {
    use super::qcow2_support::*;
    use blockwire_core::qcow2::bitmaps::{self, FLAG_AUTO, FLAG_IN_USE};

    #[test]
    fn marking_auto_bitmaps_in_use_in_place_as_qemu_does_on_open() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("bm-inuse");
        let img = d.join("i.qcow2");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "16M"],
        );
        run("qemu-img", &["bitmap", "--add", img.to_str().unwrap(), "b"]);
        let mut im = Image::open(&img, &default_cfg(false)).unwrap();
        im.q.track_bitmaps(true);
        let ext = im.q.header_area().bitmaps.unwrap();
        let mut dir = vec![0u8; ext.directory_size as usize];
        im.store.read_at(ext.directory_offset, &mut dir);
        let cb = im.q.layout().cluster_bits;
        let size = im.q.size();
        let d2 = bitmaps::Directory::parse(&dir, ext.nb_bitmaps, size, cb).unwrap();
        let e = d2.find(b"b", size, cb).unwrap();
        assert_eq!(e.flags, FLAG_AUTO);
        im.store.write_at(
            e.flags_host_offset(ext.directory_offset),
            &(FLAG_AUTO | FLAG_IN_USE).to_be_bytes(),
        );
        im.store.flush();
        // A tracked write keeps the bitmaps autoclear bit.
        im.write(0, &[1u8; 4096]).unwrap();
        im.flush().unwrap();
        assert!(im.q.bitmaps_consistent());
        drop(im);
        let info = run(
            "qemu-img",
            &["info", "--output=json", img.to_str().unwrap()],
        );
        assert!(info.contains("\"in-use\""), "{info}");
        // Storing it again (in place of the in-use one) clears in_use.
        let mut im = Image::open(&img, &default_cfg(false)).unwrap();
        im.q.track_bitmaps(true);
        im.store_bitmap("b", 16, FLAG_AUTO, &Runs(vec![(0, 4096)]))
            .unwrap();
        drop(im);
        let info = run(
            "qemu-img",
            &["info", "--output=json", img.to_str().unwrap()],
        );
        assert!(
            !info.contains("\"in-use\"") && info.contains("\"auto\""),
            "{info}"
        );
        assert_clean(&img);
    }
}

mod qcow2_bitmaps_header {
    use super::qcow2_support::*;
    use blockwire_core::qcow2::bitmaps::FLAG_AUTO;

    #[test]
    fn storing_a_bitmap_rewrites_cluster_0_keeping_the_backing_file_and_unknown_extensions() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("bm-hdr");
        std::fs::write(d.join("base.raw"), pattern(4, 1 << 20)).unwrap();
        let img = d.join("t.qcow2");
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.raw",
                "-F",
                "raw",
                img.to_str().unwrap(),
                "1M",
            ],
        );
        // An unknown (compatible) header extension must survive the rewrite.
        let mut b = std::fs::read(&img).unwrap();
        let hl = u32::from_be_bytes(b[100..104].try_into().unwrap()) as usize;
        let tail: Vec<u8> = b[hl..4096].to_vec();
        let mut ext = Vec::new();
        ext.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        ext.extend_from_slice(&5u32.to_be_bytes());
        ext.extend_from_slice(b"hello\0\0\0");
        // Insert it first; move the backing name offset along.
        b[hl..hl + ext.len()].copy_from_slice(&ext);
        b[hl + ext.len()..4096].copy_from_slice(&tail[..4096 - hl - ext.len()]);
        let bo = u64::from_be_bytes(b[8..16].try_into().unwrap()) + ext.len() as u64;
        b[8..16].copy_from_slice(&bo.to_be_bytes());
        std::fs::write(&img, &b).unwrap();
        assert_clean(&img);
        let mut im = Image::open(&img, &default_cfg(false)).unwrap();
        im.store_bitmap("x", 16, FLAG_AUTO, &Runs(vec![(0, 1)]))
            .unwrap();
        drop(im);
        assert_clean(&img);
        let info = run(
            "qemu-img",
            &["info", "--output=json", img.to_str().unwrap()],
        );
        assert!(
            info.contains("\"backing-filename\": \"base.raw\""),
            "{info}"
        );
        assert!(
            info.contains("\"backing-filename-format\": \"raw\""),
            "{info}"
        );
        assert!(info.contains("\"name\": \"x\""), "{info}");
        let after = std::fs::read(&img).unwrap();
        assert!(
            after[..4096].windows(5).any(|w| w == b"hello"),
            "unknown extension lost"
        );
        assert_eq!(qemu_raw(&img), pattern(4, 1 << 20));
    }
}
