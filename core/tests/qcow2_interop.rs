//! The qcow2 core against QEMU 10's own tools, without a server: images
//! made by qemu-img/qemu-io are read through the core's plans and compared
//! with `qemu-img convert -O raw`; writes, zeroes and discards planned by the
//! core leave images that `qemu-img check` finds clean and `qemu-img
//! compare` finds equal to a raw file given the same writes.

mod qcow2_support;

mod qcow2_interop {
    use super::qcow2_support::*;
    use std::path::{Path, PathBuf};

    fn create(dir: &Path, name: &str, opts: &str, size: &str) -> PathBuf {
        let p = dir.join(name);
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            args.push("-o");
            args.push(opts);
        }
        let ps = p.to_str().unwrap().to_string();
        args.push(&ps);
        args.push(size);
        run("qemu-img", &args);
        p
    }

    /// Writes a mix of data, zero clusters and discards with qemu-io.
    fn fill(img: &Path, cluster: u64) {
        // Offsets scale with the cluster size (so writes cross cluster
        // boundaries) but stay inside the 16 MiB disks.
        let c = cluster.min(256 << 10);
        let cmds = [
            format!("write -P 0x11 0 {}", c * 3 + 100),
            format!("write -P 0x22 {} {}", c * 5 + 7, c / 2),
            format!("write -z {} {}", c * 8, c * 2),
            format!("write -P 0x33 {} {}", c * 12, c),
            format!("discard {} {}", c * 12, c),
            format!("write -P 0x44 {} 512", (c * 200).min((16 << 20) - 4096)),
            format!("write -P 0x55 {} 4096", 3 << 20),
        ];
        let refs: Vec<&str> = cmds.iter().map(|s| s.as_str()).collect();
        qemu_io(img, &refs);
    }

    fn compare_reads(img: &Path) {
        let want = qemu_raw(img);
        let mut im = Image::open(img, &default_cfg(true)).unwrap();
        assert_eq!(im.q.size() as usize, want.len());
        let got = im.read_all();
        assert!(got == want, "{}: whole-disk read differs", img.display());
        // base:allocation's data flag equals qemu-img map's.
        let map = run("qemu-img", &["map", "--output=json", img.to_str().unwrap()]);
        for l in map.lines().filter(|l| l.contains("\"start\"")) {
            let num = |k: &str| -> u64 {
                let i = l.find(&format!("\"{k}\":")).unwrap() + k.len() + 3;
                l[i..]
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse()
                    .unwrap()
            };
            let data = l.contains("\"data\": true");
            let (start, length) = (num("start"), num("length"));
            let mut pos = start;
            while pos < start + length {
                let r = loop {
                    match im.q.map(pos, start + length - pos).unwrap() {
                        blockwire_core::qcow2::MapResult::Run(r) => break r,
                        blockwire_core::qcow2::MapResult::Need(
                            blockwire_core::qcow2::Need::Load(ld),
                        ) => {
                            let mut b = vec![0u8; ld.len as usize];
                            im.store.read_at(ld.offset, &mut b);
                            im.q.install(ld, &b).unwrap();
                        }
                        other => panic!("{other:?}"),
                    }
                };
                // Unallocated runs take the backing file's flags.
                if r.base_allocation().is_some() || im.q.backing_name().is_none() {
                    let ours = r.base_allocation() == Some(0);
                    assert_eq!(
                        ours,
                        data,
                        "{}: data flag at {pos}: {r:?} vs {l}",
                        img.display()
                    );
                }
                pos += r.length;
            }
        }
        // Random reads at odd offsets and lengths.
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let off = r.below(want.len() as u64 - 1);
            let len = 1 + r.below((want.len() as u64 - off).min(300_000));
            let mut buf = vec![0u8; len as usize];
            im.read(off, &mut buf).unwrap();
            assert!(
                buf == want[off as usize..(off + len) as usize],
                "read {off}+{len} differs"
            );
        }
    }

    #[test]
    fn reads_match_qemu_across_versions_and_cluster_sizes() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("reads");
        for (name, opts, c) in [
            ("v2-64k.qcow2", "compat=0.10", 65536u64),
            ("v3-64k.qcow2", "compat=1.1", 65536),
            ("v3-512.qcow2", "cluster_size=512", 512),
            ("v2-512.qcow2", "compat=0.10,cluster_size=512", 512),
            ("v3-2m.qcow2", "cluster_size=2M", 2 << 20),
            ("v3-ext.qcow2", "extended_l2=on,cluster_size=64k", 65536),
            ("v3-ext-16k.qcow2", "extended_l2=on,cluster_size=16k", 16384),
            ("v3-ext-2m.qcow2", "extended_l2=on,cluster_size=2M", 2 << 20),
            ("v3-rc1.qcow2", "refcount_bits=1", 65536),
            ("v3-rc64.qcow2", "refcount_bits=64,cluster_size=4k", 4096),
            ("v3-meta.qcow2", "preallocation=metadata", 65536),
            (
                "v3-full.qcow2",
                "preallocation=full,cluster_size=256k",
                256 << 10,
            ),
        ] {
            let img = create(&d, name, opts, "16M");
            fill(&img, c);
            compare_reads(&img);
        }
    }

    #[test]
    fn unknown_autoclear_bits_are_cleared_on_first_write() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("autoclear");
        let img = create(&d, "a.qcow2", "", "4M");
        let mut b = std::fs::read(&img).unwrap();
        b[88..96].copy_from_slice(&(1u64 << 40).to_be_bytes());
        std::fs::write(&img, &b).unwrap();
        let mut im = Image::open(&img, &default_cfg(false)).unwrap();
        // Reading changes nothing.
        let mut buf = [0u8; 512];
        im.read(0, &mut buf).unwrap();
        assert_eq!(
            &std::fs::read(&img).unwrap()[88..96],
            &(1u64 << 40).to_be_bytes()
        );
        im.write(0, &[1u8; 512]).unwrap();
        im.flush().unwrap();
        drop(im);
        assert_eq!(&std::fs::read(&img).unwrap()[88..96], &[0u8; 8]);
        assert_clean(&img);
    }

    #[test]
    fn compressed_images_read_like_qemu() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("compressed");
        for (opts, c) in [
            ("", 65536u64),
            ("cluster_size=4k", 4096),
            ("cluster_size=2M", 2 << 20),
        ] {
            let src = create(&d, "src.qcow2", opts, "16M");
            fill(&src, c.min(65536));
            let out = d.join("comp.qcow2");
            let mut args = vec!["convert", "-q", "-c", "-O", "qcow2"];
            if !opts.is_empty() {
                args.push("-o");
                args.push(opts);
            }
            args.push(src.to_str().unwrap());
            args.push(out.to_str().unwrap());
            run("qemu-img", &args);
            compare_reads(&out);
        }
    }

    #[test]
    fn backing_chain_three_deep() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("chain");
        let base = d.join("base.raw");
        std::fs::write(&base, pattern(7, 6 << 20)).unwrap();
        let mid = d.join("mid.qcow2");
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
                mid.to_str().unwrap(),
                "8M",
            ],
        );
        qemu_io(
            &mid,
            &["write -P 0xaa 65536 100000", "write -z 1048576 131072"],
        );
        let top = d.join("top.qcow2");
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "mid.qcow2",
                "-F",
                "qcow2",
                top.to_str().unwrap(),
                "8M",
            ],
        );
        qemu_io(&top, &["write -P 0xbb 100000 70000", "discard 0 65536"]);
        compare_reads(&top);
        // Allocation depth per 64 KiB cluster against qemu-img map.
        let map = run("qemu-img", &["map", "--output=json", top.to_str().unwrap()]);
        let v: Vec<(u64, u64, u64)> = map
            .lines()
            .filter(|l| l.contains("\"start\""))
            .map(|l| {
                let num = |k: &str| -> u64 {
                    let i = l.find(&format!("\"{k}\":")).unwrap() + k.len() + 3;
                    l[i..]
                        .trim_start()
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect::<String>()
                        .parse()
                        .unwrap()
                };
                (num("start"), num("length"), num("depth"))
            })
            .collect();
        let mut im = Image::open(&top, &default_cfg(true)).unwrap();
        for (start, length, depth) in v {
            let mut pos = start;
            while pos < start + length {
                let (dep, n) = im.depth(pos, start + length - pos).unwrap();
                // qemu-img map's depth counts layers from 0 (top); ours is
                // qemu:allocation-depth (1 = top, 0 = nowhere). qemu-img map
                // reports unallocated-everywhere as the bottom layer's depth
                // with data=false; both are fine when the bytes are zeroes.
                if dep != 0 {
                    assert_eq!(dep as u64, depth + 1, "depth at {pos}");
                }
                pos += n;
            }
        }
    }
}

mod qcow2_writes {
    use super::qcow2_support::*;
    use std::path::Path;

    #[derive(Clone, Copy, Debug)]
    enum Cmd {
        Write(u64, u64, u64),
        Zero(u64, u64, bool),
        Discard(u64, u64),
        Flush,
    }

    /// A workload of writes, zeroes and discards, biased to cross cluster
    /// and L2-table boundaries.
    fn workload(seed: u64, size: u64, cluster: u64, n: usize) -> Vec<Cmd> {
        let mut r = Rng(seed);
        let mut v = Vec::new();
        for i in 0..n {
            let base = match r.below(3) {
                0 => r.below(size),
                1 => (r.below(size / cluster)) * cluster,
                _ => (r.below(size / cluster)) * cluster + cluster - r.below(700),
            }
            .min(size - 1);
            let len = match r.below(4) {
                0 => 1 + r.below(1024),
                1 => 1 + r.below(cluster * 3),
                2 => cluster,
                _ => 1 + r.below(cluster * 40),
            }
            .min(size - base);
            v.push(match r.below(10) {
                0..=5 => Cmd::Write(base, len, seed * 1000 + i as u64),
                6 | 7 => Cmd::Zero(base, len, r.below(2) == 0),
                8 => Cmd::Discard(base, len),
                _ => Cmd::Flush,
            });
        }
        v
    }

    fn apply(im: &mut Image, model: &mut [u8], cmds: &[Cmd], discard_zeroes: bool) {
        for &c in cmds {
            match c {
                Cmd::Write(o, l, s) => {
                    let p = pattern(s, l as usize);
                    im.write(o, &p).unwrap();
                    model[o as usize..(o + l) as usize].copy_from_slice(&p);
                }
                Cmd::Zero(o, l, unmap) => {
                    im.write_zeroes(o, l, unmap).unwrap();
                    model[o as usize..(o + l) as usize].fill(0);
                }
                Cmd::Discard(o, l) => {
                    im.discard(o, l).unwrap();
                    if discard_zeroes {
                        // Only whole clusters are discarded; with no backing
                        // they then read as zeroes (v3 and v2 alike).
                        let c = im.q.layout().cluster_size();
                        let size = im.q.size();
                        let s = o.div_ceil(c) * c;
                        let e = if o + l == size { size } else { (o + l) / c * c };
                        if s < e {
                            model[s as usize..e as usize].fill(0);
                        }
                    }
                }
                Cmd::Flush => im.flush().unwrap(),
            }
        }
        im.flush().unwrap();
    }

    fn check_against_qemu(img: &Path, model: &[u8]) {
        assert_clean(img);
        let raw = img.with_extension("model.raw");
        std::fs::write(&raw, model).unwrap();
        run(
            "qemu-img",
            &[
                "compare",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                img.to_str().unwrap(),
                raw.to_str().unwrap(),
            ],
        );
        let mut im = Image::open(img, &default_cfg(true)).unwrap();
        assert!(
            im.read_all() == model,
            "core reads back differ from the model"
        );
    }

    fn case(name: &str, opts: &str, size: u64, seed: u64, n: usize) -> (u64, u64) {
        case_with(name, opts, size, seed, n, &[])
    }

    fn case_with(
        name: &str,
        opts: &str,
        size: u64,
        seed: u64,
        n: usize,
        first: &[Cmd],
    ) -> (u64, u64) {
        let d = tmpdir(name);
        let img = d.join("w.qcow2");
        let ps = img.to_str().unwrap().to_string();
        let sz = size.to_string();
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            args.push("-o");
            args.push(opts);
        }
        args.push(&ps);
        args.push(&sz);
        run("qemu-img", &args);
        let mut model = vec![0u8; size as usize];
        let mut im = Image::open(&img, &default_cfg(false)).unwrap();
        let c = im.q.layout().cluster_size();
        let rt0 = im.q.header_area().header.refcount_table_offset;
        let mut cmds = first.to_vec();
        cmds.extend(workload(seed, size, c, n));
        apply(&mut im, &mut model, &cmds, true);
        let rt1 = im.q.header_area().header.refcount_table_offset;
        drop(im);
        check_against_qemu(&img, &model);
        (rt0, rt1)
    }

    #[test]
    fn random_writes_v3_64k() {
        if have_qemu() {
            let _ = case("w-v3-64k", "", 24 << 20, 1, 150);
            // The check itself must see corruption: clear a used refcount.
            let d = tmpdir("w-sanity");
            let img = d.join("s.qcow2");
            run(
                "qemu-img",
                &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "1M"],
            );
            qemu_io(&img, &["write -P 1 0 64k"]);
            let mut b = std::fs::read(&img).unwrap();
            // Refcount block at cluster 2 (QEMU's layout): entry of the data cluster.
            for x in &mut b[2 * 65536..2 * 65536 + 16] {
                *x = 0;
            }
            std::fs::write(&img, &b).unwrap();
            assert_ne!(qemu_check(&img).status, 0);
        }
    }

    #[test]
    fn random_writes_v2_64k() {
        if have_qemu() {
            let _ = case("w-v2-64k", "compat=0.10", 24 << 20, 2, 150);
        }
    }

    #[test]
    fn random_writes_512_byte_clusters_grow_l2_and_reftable() {
        // 512-byte clusters with 64-bit refcounts: a refcount block covers
        // 64 clusters and the one-cluster refcount table 4096 clusters, so
        // this workload grows the refcount table and allocates many L2
        // tables (each maps 32 KiB).
        if have_qemu() {
            let big = [Cmd::Write(1 << 20, 3 << 20, 5)];
            let (before, after) = case_with(
                "w-512",
                "cluster_size=512,refcount_bits=64",
                6 << 20,
                3,
                200,
                &big,
            );
            assert_ne!(
                before, after,
                "the refcount table did not move: no growth exercised"
            );
        }
    }

    #[test]
    fn random_writes_2m_clusters() {
        if have_qemu() {
            let _ = case("w-2m", "cluster_size=2M", 40 << 20, 4, 60);
        }
    }

    #[test]
    fn random_writes_extended_l2() {
        if have_qemu() {
            let _ = case("w-ext", "extended_l2=on", 24 << 20, 5, 150);
            let _ = case(
                "w-ext16k",
                "extended_l2=on,cluster_size=16k",
                8 << 20,
                6,
                150,
            );
            let _ = case("w-ext2m", "extended_l2=on,cluster_size=2M", 40 << 20, 7, 80);
            let _ = case("w-v2-512", "compat=0.10,cluster_size=512", 3 << 20, 8, 150);
        }
    }

    #[test]
    fn random_writes_refcount_widths() {
        if have_qemu() {
            for (i, bits) in [1, 2, 4, 8, 32].iter().enumerate() {
                let _ = case(
                    &format!("w-rc{bits}"),
                    &format!("refcount_bits={bits},cluster_size=4k"),
                    4 << 20,
                    10 + i as u64,
                    80,
                );
            }
        }
    }

    #[test]
    fn writes_over_compressed_and_preallocated() {
        if !have_qemu() {
            return;
        }
        for (name, make, opts) in [
            ("w-comp", true, "cluster_size=65536"),
            ("w-comp-ext", true, "extended_l2=on"),
            ("w-prealloc", false, ""),
        ] {
            let d = tmpdir(name);
            let img = d.join("w.qcow2");
            if make {
                // Compressible data, so that convert -c really compresses.
                let src = d.join("src.raw");
                let text: Vec<u8> = (0..8u32 << 20)
                    .map(|i| b"qcow2 compressed cluster "[(i % 25) as usize] ^ (i >> 16) as u8)
                    .collect();
                std::fs::write(&src, text).unwrap();
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
                        "-o",
                        opts,
                        src.to_str().unwrap(),
                        img.to_str().unwrap(),
                    ],
                );
            } else {
                run(
                    "qemu-img",
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-o",
                        "preallocation=metadata",
                        img.to_str().unwrap(),
                        "8M",
                    ],
                );
            }
            let mut model = qemu_raw(&img);
            if make {
                let map = run("qemu-img", &["map", "--output=json", img.to_str().unwrap()]);
                assert!(
                    map.contains("\"compressed\": true"),
                    "convert -c did not compress"
                );
            }
            let mut im = Image::open(&img, &default_cfg(false)).unwrap();
            // Subcluster-aligned zeroes inside compressed clusters (with
            // extended L2 entries these cannot be metadata-only).
            let first = [
                Cmd::Zero(3 * 65536 + 4096, 10240, false),
                Cmd::Zero(5 * 65536 + 2048, 2048, true),
            ];
            apply(&mut im, &mut model, &first, true);
            let mut b = vec![0u8; 6 * 65536];
            im.read(0, &mut b).unwrap();
            assert!(
                b == model[..6 * 65536],
                "{name}: zeroes inside compressed clusters"
            );
            let cmds = workload(77, 8 << 20, 65536, 120);
            apply(&mut im, &mut model, &cmds, true);
            drop(im);
            check_against_qemu(&img, &model);
        }
    }

    #[test]
    fn writes_into_an_overlay_copy_up_from_the_backing() {
        if !have_qemu() {
            return;
        }
        for (name, opts) in [
            ("w-ov", ""),
            ("w-ov-ext", "extended_l2=on,"),
            ("w-ov-v2", "compat=0.10,"),
        ] {
            let d = tmpdir(name);
            let base = d.join("base.qcow2");
            run(
                "qemu-img",
                &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "8M"],
            );
            qemu_io(&base, &["write -P 0x61 0 8M"]);
            let top = d.join("top.qcow2");
            let o = format!("{opts}backing_file=base.qcow2,backing_fmt=qcow2");
            run(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    &o,
                    top.to_str().unwrap(),
                    "8M",
                ],
            );
            let mut model = qemu_raw(&top);
            let mut im = Image::open(&top, &default_cfg(false)).unwrap();
            let cmds = workload(31, 8 << 20, 65536, 120);
            // Discarded clusters read as zeroes only in v3 (zero flag);
            // in v2 the backing shows through again, as in QEMU.
            let v3 = !opts.contains("compat=0.10");
            for &c in &cmds {
                match c {
                    Cmd::Discard(..) if !v3 => continue,
                    _ => apply(&mut im, &mut model, &[c], true),
                }
            }
            drop(im);
            check_against_qemu(&top, &model);
        }
    }
}

mod qcow2_created {
    use super::qcow2_support::*;
    use blockwire_core::qcow2::create::Options;

    #[test]
    fn images_formatted_by_the_core_are_clean_for_qemu() {
        if !have_qemu() {
            return;
        }
        let d = tmpdir("created");
        std::fs::write(d.join("base.raw"), pattern(1, 4 << 20)).unwrap();
        for (i, o) in [
            Options {
                size: 64 << 20,
                ..Options::default()
            },
            Options {
                size: 10 << 20,
                version: 2,
                ..Options::default()
            },
            Options {
                size: 3 << 20,
                cluster_bits: 9,
                refcount_order: 6,
                ..Options::default()
            },
            Options {
                size: 100 << 20,
                cluster_bits: 21,
                ..Options::default()
            },
            Options {
                size: 5 << 20,
                cluster_bits: 14,
                extended_l2: true,
                refcount_order: 0,
                ..Options::default()
            },
            Options {
                size: 4 << 20,
                backing_file: b"base.raw",
                backing_format: b"raw",
                ..Options::default()
            },
        ]
        .iter()
        .enumerate()
        {
            let p = d.join(format!("c{i}.qcow2"));
            std::fs::write(&p, create_bytes(o)).unwrap();
            assert_clean(&p);
            let info = run("qemu-img", &["info", "--output=json", p.to_str().unwrap()]);
            assert!(
                info.contains(&format!("\"virtual-size\": {}", o.size)),
                "{info}"
            );
            // QEMU writes into it, the core reads it back; the core writes,
            // QEMU reads it back.
            qemu_io(&p, &["write -P 0x5a 1000 70000"]);
            let mut im = Image::open(&p, &default_cfg(false)).unwrap();
            let mut b = vec![0u8; 70000];
            im.read(1000, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0x5a));
            im.write(o.size - 3000, &[0x77; 3000]).unwrap();
            im.flush().unwrap();
            drop(im);
            assert_clean(&p);
            let raw = qemu_raw(&p);
            assert!(raw[o.size as usize - 3000..].iter().all(|&x| x == 0x77));
        }
    }
}
