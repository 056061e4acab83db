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
