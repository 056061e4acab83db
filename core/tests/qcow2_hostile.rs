//! Hostile images: each class behind QEMU's 2014 qcow2 hardening
//! (CVE-2014-0143 integer overflows, -0144 missing bounds checks, -0145 the
//! snapshot table, -0146 a NULL dereference) and the overlap checks, built
//! by patching images qemu-img made. Each is refused with an error naming
//! what is wrong — never a panic, a hang or an unbounded allocation.

mod qcow2_support;

mod qcow2_hostile {
    use super::qcow2_support::*;
    use blockwire_core::qcow2::*;

    fn base(name: &str) -> Vec<u8> {
        make_image(name, "", "16M", &["write -P 7 0 200k"])
    }

    fn err(b: &[u8]) -> Qcow2Error {
        match open_bytes(b, true) {
            Ok(_) => panic!("hostile image opened"),
            Err(e) => {
                // Every refusal has a message naming the problem.
                let msg = e.to_string();
                assert!(msg.starts_with("qcow2: ") && msg.len() > 12, "{msg}");
                e
            }
        }
    }

    #[test]
    fn l1_size_beyond_limits_cve_2014_0143() {
        if !have_qemu() {
            return;
        }
        let mut b = base("l1big");
        // l1_size * 8 overflows 32 bits and exceeds QEMU's 32 MiB limit.
        be32(&mut b, 36, 0x2000_0001);
        assert!(matches!(
            err(&b),
            Qcow2Error::TooLarge {
                what: Meta::L1Table,
                ..
            }
        ));
        // Within QEMU's limit but beyond the caller's memory limit.
        let mut b = base("l1mem");
        be32(&mut b, 36, 1 << 20);
        let cfg = Config {
            max_l1_bytes: 64 << 10,
            read_only: true,
            ..Config::default()
        };
        let area = parse_area(&Store::mem(b.clone())).unwrap();
        assert!(matches!(
            Qcow2::words_needed(&area, &cfg),
            Err(Qcow2Error::TooLarge {
                what: Meta::L1Table,
                limit: 65536,
                ..
            })
        ));
    }

    #[test]
    fn l1_table_beyond_end_of_file_cve_2014_0144() {
        if !have_qemu() {
            return;
        }
        let mut b = base("l1end");
        be64(&mut b, 40, 1 << 40);
        assert!(matches!(
            err(&b),
            Qcow2Error::BeyondEnd {
                what: Meta::L1Table,
                ..
            }
        ));
    }

    #[test]
    fn l1_table_unaligned() {
        if !have_qemu() {
            return;
        }
        let mut b = base("l1unal");
        be64(&mut b, 40, 0x30008);
        assert!(matches!(
            err(&b),
            Qcow2Error::Unaligned {
                what: Meta::L1Table,
                offset: 0x30008
            }
        ));
    }

    #[test]
    fn l1_too_small_for_the_disk_size() {
        if !have_qemu() {
            return;
        }
        let mut b = base("l1small");
        be64(&mut b, 24, 1 << 40);
        assert!(matches!(err(&b), Qcow2Error::L1TooSmall { .. }));
        let mut b = base("size-huge");
        be64(&mut b, 24, u64::MAX - 5);
        assert!(matches!(err(&b), Qcow2Error::BadSize(_)));
    }

    #[test]
    fn refcount_table_beyond_limits_and_file() {
        if !have_qemu() {
            return;
        }
        let mut b = base("rtbig");
        be32(&mut b, 56, u32::MAX);
        assert!(matches!(
            err(&b),
            Qcow2Error::TooLarge {
                what: Meta::RefcountTable,
                ..
            }
        ));
        let mut b = base("rtend");
        be32(&mut b, 56, 50);
        assert!(matches!(
            err(&b),
            Qcow2Error::BeyondEnd {
                what: Meta::RefcountTable,
                ..
            }
        ));
        let mut b = base("rtzero");
        be32(&mut b, 56, 0);
        assert!(matches!(
            err(&b),
            Qcow2Error::BeyondEnd {
                what: Meta::RefcountTable,
                ..
            }
        ));
    }

    #[test]
    fn metadata_overlapping_the_header_or_each_other() {
        if !have_qemu() {
            return;
        }
        let mut b = base("ovl-hdr");
        be64(&mut b, 40, 0);
        assert!(matches!(
            err(&b),
            Qcow2Error::Overlap {
                what: Meta::L1Table,
                with: Meta::Header,
                ..
            }
        ));
        let mut b = base("ovl-rt");
        let rt = get64(&b, 48);
        be64(&mut b, 40, rt);
        assert!(matches!(err(&b), Qcow2Error::Overlap { .. }));
    }

    #[test]
    fn l2_table_offsets_unaligned_beyond_end_or_on_the_header() {
        if !have_qemu() {
            return;
        }
        let b0 = base("l2bad");
        let l1 = get64(&b0, 40) as usize;
        for (v, what) in [
            ((0x50200u64) | (1 << 63), "unaligned"),
            ((1u64 << 50) | (1 << 63), "beyond"),
            ((1u64 << 63) | 0, "zero"),
        ] {
            let mut b = b0.clone();
            be64(&mut b, l1, v);
            let mut im = open_bytes(&b, true).unwrap();
            let mut buf = vec![0u8; 4096];
            let r = im.read(0, &mut buf);
            match what {
                "unaligned" => assert!(matches!(
                    r,
                    Err(Qcow2Error::BadEntry {
                        what: Meta::L1Table,
                        ..
                    })
                )),
                "beyond" => assert!(matches!(
                    r,
                    Err(Qcow2Error::BeyondEnd {
                        what: Meta::L2Table,
                        ..
                    })
                )),
                // An L1 entry with only the COPIED bit is an unallocated table.
                _ => assert!(r.is_ok() && buf.iter().all(|&x| x == 0)),
            }
        }
    }

    #[test]
    fn l2_table_on_top_of_the_l1_table_or_a_refcount_block() {
        // Found by the qcow2_image fuzz target: an L1 entry pointing at the
        // L1 table itself made every L2 update overwrite the L1 on flush.
        if !have_qemu() {
            return;
        }
        let b0 = base("l2-on-l1");
        let l1 = get64(&b0, 40);
        let rt = get64(&b0, 48) as usize;
        let rb = get64(&b0, rt);
        for (target, with) in [(l1, Meta::L1Table), (rb, Meta::RefcountBlock)] {
            let mut buf = vec![0u8; 512];
            let mut b = b0.clone();
            be64(&mut b, l1 as usize, target | (1 << 63));
            let mut im = open_bytes(&b, false).unwrap();
            let r = im.read(0, &mut buf);
            assert!(
                matches!(r, Err(Qcow2Error::Overlap { what: Meta::L2Table, with: w, .. }) if w == with),
                "{r:?}"
            );
            assert!(im.write(0, &[1]).is_err());
        }
    }

    #[test]
    fn l2_entries_unaligned_or_with_reserved_bits() {
        if !have_qemu() {
            return;
        }
        let b0 = base("l2ent");
        let l1 = get64(&b0, 40) as usize;
        let l2 = (get64(&b0, l1) & 0x00ff_ffff_ffff_fe00) as usize;
        for v in [get64(&b0, l2) | 0x200, get64(&b0, l2) | (1 << 58)] {
            let mut b = b0.clone();
            be64(&mut b, l2, v);
            let mut im = open_bytes(&b, true).unwrap();
            let mut buf = vec![0u8; 512];
            assert!(matches!(
                im.read(0, &mut buf),
                Err(Qcow2Error::BadEntry {
                    what: Meta::L2Table,
                    offset: 0
                })
            ));
        }
    }

    #[test]
    fn data_cluster_on_metadata_is_not_written_over() {
        // QEMU's pre-write overlap check: an L2 entry that maps guest data
        // onto the refcount table must not turn a guest write into a
        // metadata overwrite.
        if !have_qemu() {
            return;
        }
        let mut b = base("ovl-data");
        let l1 = get64(&b, 40) as usize;
        let l2 = (get64(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
        let rt = get64(&b, 48);
        be64(&mut b, l2, rt | (1 << 63));
        let mut im = open_bytes(&b, false).unwrap();
        let r = im.write(100, &[1, 2, 3]);
        assert!(
            matches!(
                r,
                Err(Qcow2Error::Overlap {
                    what: Meta::Data,
                    with: Meta::RefcountTable,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn refcount_table_entry_near_u64_max_does_not_overflow() {
        // Found by the qcow2_image fuzz target: the overlap check added a
        // cluster to a hostile refcount table entry.
        if !have_qemu() {
            return;
        }
        let mut b = base("rt-max");
        let rt = get64(&b, 48) as usize;
        be64(&mut b, rt + 8, u64::MAX & !0x1ff);
        let mut im = open_bytes(&b, false).unwrap();
        let r = im.write(300 << 10, &[1u8; 100]);
        assert!(
            matches!(
                r,
                Err(Qcow2Error::BadEntry {
                    what: Meta::RefcountTable,
                    ..
                })
            ) || r.is_ok(),
            "{r:?}"
        );
    }

    #[test]
    fn backing_file_name_too_long_or_outside_cluster_0() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("bname");
        std::fs::write(d.join("b.raw"), vec![0u8; 1 << 20]).unwrap();
        let p = d.join("top.qcow2");
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "b.raw",
                "-F",
                "raw",
                p.to_str().unwrap(),
            ],
        );
        let b0 = std::fs::read(&p).unwrap();
        let mut b = b0.clone();
        be32(&mut b, 16, 2000);
        assert!(matches!(err(&b), Qcow2Error::BackingNameTooLong(2000)));
        let mut b = b0.clone();
        be64(&mut b, 8, 65536 - 2);
        assert!(matches!(err(&b), Qcow2Error::BadBackingNameOffset(_)));
    }

    #[test]
    fn snapshot_tables_that_overflow_cve_2014_0145() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("snap");
        let p = d.join("s.qcow2");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "4M"],
        );
        qemu_io(&p, &["write -P 1 0 100k"]);
        run(
            "qemu-img",
            &["snapshot", "-c", "first", p.to_str().unwrap()],
        );
        qemu_io(&p, &["write -P 2 0 50k"]);
        let b0 = std::fs::read(&p).unwrap();
        // A valid snapshot image opens and reads the active state.
        let mut im = open_bytes(&b0, true).unwrap();
        let mut buf = vec![0u8; 100 << 10];
        im.read(0, &mut buf).unwrap();
        assert!(buf[..50 << 10].iter().all(|&x| x == 2) && buf[50 << 10..].iter().all(|&x| x == 1));
        // Writing over a cluster the snapshot shares copies it.
        let mut im = Image::open_store(Store::mem(b0.clone()), &d, &default_cfg(false)).unwrap();
        im.write(60 << 10, &[9; 10000]).unwrap();
        im.flush().unwrap();
        let img2 = d.join("s2.qcow2");
        std::fs::write(&img2, &im.store.mem).unwrap();
        assert_clean(&img2);
        let snap = get64(&b0, 64) as usize;
        // Too many snapshots.
        let mut b = b0.clone();
        be32(&mut b, 60, 70000);
        assert!(matches!(
            err(&b),
            Qcow2Error::TooLarge {
                what: Meta::SnapshotTable,
                ..
            }
        ));
        // Table beyond the end of the file.
        let mut b = b0.clone();
        be64(&mut b, 64, 1 << 45);
        assert!(matches!(
            err(&b),
            Qcow2Error::BeyondEnd {
                what: Meta::SnapshotTable,
                ..
            }
        ));
        // An entry whose extra data is too large.
        let mut b = b0.clone();
        be32(&mut b, snap + 36, 1 << 30);
        assert!(matches!(err(&b), Qcow2Error::BadSnapshotTable { index: 0 }));
        // A snapshot L1 table larger than QEMU's limit.
        let mut b = b0.clone();
        be32(&mut b, snap + 8, u32::MAX);
        assert!(matches!(
            err(&b),
            Qcow2Error::TooLarge {
                what: Meta::InactiveL1,
                ..
            }
        ));
        // A snapshot L1 table on top of the header.
        let mut b = b0.clone();
        be64(&mut b, snap, 0);
        assert!(matches!(
            err(&b),
            Qcow2Error::Overlap {
                with: Meta::Header,
                ..
            }
        ));
        // More snapshots claimed than the file holds.
        let mut b = b0.clone();
        be32(&mut b, 60, 60000);
        assert!(matches!(
            err(&b),
            Qcow2Error::BeyondEnd { .. }
                | Qcow2Error::Truncated { .. }
                | Qcow2Error::BadSnapshotTable { .. }
        ));
    }

    #[test]
    fn feature_bits_unknown_dirty_corrupt_external_compression() {
        if !have_qemu() {
            return;
        }
        let b0 = base("feat");
        let mut b = b0.clone();
        be64(&mut b, 72, 1 << 9);
        let e = err(&b);
        assert!(matches!(
            e,
            Qcow2Error::UnknownIncompatibleFeature { bit: 9, .. }
        ));
        assert!(e.to_string().contains("bit 9"));
        // Named from the image's feature table: rename QEMU's "dirty bit"
        // entry to bit 9.
        let mut b = b.clone();
        let pos = b.windows(9).position(|w| w == b"dirty bit").unwrap();
        b[pos - 1] = 9;
        let e = err(&b);
        assert!(e.to_string().contains("(dirty bit)"), "{e}");
        // Corrupt: read-only only.
        let mut b = b0.clone();
        be64(&mut b, 72, 2);
        assert!(matches!(
            open_bytes(&b, false),
            Err(Qcow2Error::MarkedCorrupt)
        ));
        assert!(open_bytes(&b, true).is_ok());
        // Dirty (lazy refcounts): read-only only.
        let mut b = b0.clone();
        be64(&mut b, 72, 1);
        assert!(matches!(open_bytes(&b, false), Err(Qcow2Error::Dirty)));
        assert!(open_bytes(&b, true).is_ok());
        // Encryption.
        let mut b = b0.clone();
        be32(&mut b, 32, 1);
        assert!(matches!(err(&b), Qcow2Error::Encrypted(1)));
        // External data file, as qemu-img makes it.
        let d = tmpdir("extdata");
        let p = d.join("x.qcow2");
        let o = format!("data_file={}", d.join("x.data").display());
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &o,
                p.to_str().unwrap(),
                "1M",
            ],
        );
        assert!(matches!(
            err(&std::fs::read(&p).unwrap()),
            Qcow2Error::ExternalDataFile
        ));
        // zstd compression type.
        let p = d.join("z.qcow2");
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compression_type=zstd",
                p.to_str().unwrap(),
                "1M",
            ],
        );
        let e = err(&std::fs::read(&p).unwrap());
        assert!(matches!(e, Qcow2Error::UnsupportedCompression(1)));
        assert!(e.to_string().contains("zstd"));
    }

    #[test]
    fn header_fields_out_of_range() {
        if !have_qemu() {
            return;
        }
        let b0 = base("hdr");
        for (at, v, check) in [
            (20usize, 8u32, "bits"),
            (20, 22, "bits"),
            (96, 7, "order"),
            (100, 106, "len"),
            (100, 1 << 20, "len"),
            (4, 4, "version"),
        ] {
            let mut b = b0.clone();
            be32(&mut b, at, v);
            let e = err(&b);
            let ok = match check {
                "bits" => matches!(e, Qcow2Error::BadClusterBits(_)),
                "order" => matches!(e, Qcow2Error::BadRefcountOrder(7)),
                "len" => matches!(e, Qcow2Error::BadHeaderLength(_)),
                _ => matches!(e, Qcow2Error::UnsupportedVersion(4)),
            };
            assert!(ok, "{check}: {e:?}");
        }
        let mut b = b0.clone();
        b[0] = b'X';
        assert!(matches!(err(&b), Qcow2Error::BadMagic));
        assert!(matches!(err(&b0[..50]), Qcow2Error::Truncated { .. }));
        assert!(matches!(err(&b0[..4000]), Qcow2Error::Truncated { .. }));
        // An extension whose length runs past cluster 0.
        let mut b = b0.clone();
        let hl = u32::from_be_bytes(b[100..104].try_into().unwrap()) as usize;
        be32(&mut b, hl + 4, 70000);
        assert!(matches!(err(&b), Qcow2Error::BadExtension { .. }));
        // A bitmaps extension with zero bitmaps.
        let mut b = b0.clone();
        be32(&mut b, hl, 0x2385_2875);
        be32(&mut b, hl + 4, 24);
        b[hl + 8..hl + 32].fill(0);
        assert!(matches!(err(&b), Qcow2Error::BadBitmap { .. }));
    }

    #[test]
    fn compressed_cluster_with_garbage_data() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("cgarb");
        let src = d.join("s.raw");
        let text: Vec<u8> = (0..1u32 << 20)
            .map(|i| b"compressible text "[(i % 18) as usize])
            .collect();
        std::fs::write(&src, text).unwrap();
        let p = d.join("c.qcow2");
        run(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                src.to_str().unwrap(),
                p.to_str().unwrap(),
            ],
        );
        let mut b = std::fs::read(&p).unwrap();
        let l1 = get64(&b, 40) as usize;
        let l2 = (get64(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
        let e = get64(&b, l2);
        assert!(e & (1 << 62) != 0, "not compressed");
        let host = (e & ((1 << 54) - 1)) as usize;
        b[host..host + 64].fill(0xff);
        let mut im = open_bytes(&b, true).unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(matches!(
            im.read(0, &mut buf),
            Err(Qcow2Error::BadCompressedData { offset: 0 })
        ));
    }

    #[test]
    fn random_corruption_never_panics() {
        // Flip bytes in the metadata clusters of small-cluster images and
        // do everything: every outcome is Ok or a named error.
        if !have_qemu() {
            return;
        }
        let b0 = make_image(
            "flip",
            "cluster_size=512",
            "2M",
            &["write -P 7 0 100k", "write -z 200k 8k"],
        );
        let mut r = Rng(42);
        for _ in 0..400 {
            let mut b = b0.clone();
            for _ in 0..1 + r.below(6) {
                let at = r.below(b0.len().min(8192) as u64) as usize;
                b[at] = r.next() as u8;
            }
            if let Ok(mut im) = open_bytes(&b, false) {
                let mut buf = vec![0u8; 64 << 10];
                let _ = im.read(r.below(1 << 20), &mut buf);
                let _ = im.write(r.below(1 << 20), &[5; 3000]);
                let _ = im.write_zeroes(r.below(1 << 20), 70000, true);
                let _ = im.discard(0, 1 << 20);
                let _ = im.flush();
            }
        }
    }
}

mod qcow2_chain {
    use super::qcow2_support::*;
    use blockwire_core::qcow2::chain::{ChainError, ChainGuard};

    #[test]
    fn backing_chains_that_loop_or_are_too_deep_are_refused() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("chainloop");
        let a = d.join("a.qcow2");
        let b = d.join("b.qcow2");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "1M"],
        );
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "a.qcow2",
                "-F",
                "qcow2",
                b.to_str().unwrap(),
            ],
        );
        // Make a's backing file b: a loop (only an unsafe rebase can).
        run(
            "qemu-img",
            &[
                "rebase",
                "-u",
                "-f",
                "qcow2",
                "-b",
                "b.qcow2",
                "-F",
                "qcow2",
                a.to_str().unwrap(),
            ],
        );
        let mut ids = vec![0u128; 64];
        let mut g = ChainGuard::new(&mut ids);
        let r = Image::open_chain(Store::file(&b, false), &d, &default_cfg(true), &mut g);
        let Err(ChainOpenError::Chain(e)) = r else {
            panic!("loop not refused")
        };
        assert_eq!(e, ChainError::Loop { depth: 2, first: 0 });
        assert!(e.to_string().contains("loops"));
        // A chain of 5 under a guard of 4.
        let mut prev = "base.raw".to_string();
        std::fs::write(d.join(&prev), vec![0u8; 1 << 20]).unwrap();
        for i in 0..4 {
            let name = format!("l{i}.qcow2");
            let fmt = if i == 0 { "raw" } else { "qcow2" };
            run(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    &prev,
                    "-F",
                    fmt,
                    d.join(&name).to_str().unwrap(),
                ],
            );
            prev = name;
        }
        let mut ids = vec![0u128; 4];
        let mut g = ChainGuard::new(&mut ids);
        let r = Image::open_chain(
            Store::file(&d.join(&prev), false),
            &d,
            &default_cfg(true),
            &mut g,
        );
        assert!(matches!(
            r,
            Err(ChainOpenError::Chain(ChainError::TooDeep { limit: 4 }))
        ));
        let mut ids = vec![0u128; 5];
        let mut g = ChainGuard::new(&mut ids);
        assert!(
            Image::open_chain(
                Store::file(&d.join(&prev), false),
                &d,
                &default_cfg(true),
                &mut g
            )
            .is_ok()
        );
    }
}
