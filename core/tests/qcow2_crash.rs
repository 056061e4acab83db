//! Crash consistency of the qcow2 core's plans: every write, write-zeroes,
//! discard and flush of a workload is recorded as the image file saw it;
//! then for every prefix of that record the "crashed" file is rebuilt as
//! (a) only what a barrier made durable, (b) everything issued, and (c)
//! the durable part plus every other unflushed write. `qemu-img check` must
//! never report corruption (leaks are allowed, as in QEMU), and every
//! write completed before an acknowledged flush must read back.

mod qcow2_support;

mod qcow2_crash {
    use super::qcow2_support::*;

    #[derive(Clone, Copy, Debug)]
    enum Cmd {
        Write(u64, u64, u64),
        Zero(u64, u64, bool),
        Discard(u64, u64),
        Flush,
    }

    fn workload(seed: u64, size: u64, cluster: u64, n: usize) -> Vec<Cmd> {
        let mut r = Rng(seed);
        (0..n)
            .map(|i| {
                let o =
                    (r.below(size / cluster) * cluster + r.below(3) * (cluster / 3)).min(size - 1);
                let l = (1 + r.below(cluster * 3)).min(size - o);
                match r.below(8) {
                    0..=3 => Cmd::Write(o, l, seed * 100 + i as u64),
                    4 => Cmd::Zero(o, l, r.below(2) == 0),
                    5 => Cmd::Discard(o, l),
                    _ => Cmd::Flush,
                }
            })
            .collect()
    }

    fn replay(orig: &[u8], log: &[Op], keep: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut img = orig.to_vec();
        for (i, op) in log.iter().enumerate() {
            if let Op::Write(off, data) = op {
                if keep(i) {
                    let end = *off as usize + data.len();
                    if img.len() < end {
                        img.resize(end, 0);
                    }
                    img[*off as usize..end].copy_from_slice(data);
                }
            }
        }
        img
    }

    /// `setup(dir)` runs before the image is created (a backing file);
    /// `prefill` are qemu-io commands run on it before recording starts.
    fn run_case(
        name: &str,
        opts: &str,
        size: u64,
        seed: u64,
        n: usize,
        setup: &dyn Fn(&std::path::Path),
        prefill: &[&str],
        first: &[Cmd],
    ) -> bool {
        let d = tmpdir(name);
        setup(&d);
        let path = d.join("c.qcow2");
        let sz = size.to_string();
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let ps = path.to_str().unwrap().to_string();
        args.push(&ps);
        args.push(&sz);
        run("qemu-img", &args);
        if !prefill.is_empty() {
            qemu_io(&path, prefill);
        }
        let orig = std::fs::read(&path).unwrap();
        let mut store = Store::mem(orig.clone());
        store.log = Some(Vec::new());
        let mut im = Image::open_store(store, &d, &default_cfg(false)).unwrap();
        let c = im.q.layout().cluster_size();
        let rt_before = im.q.header_area().header.refcount_table_offset;
        let mut cmds = first.to_vec();
        cmds.extend(workload(seed, size, c, n));
        cmds.push(Cmd::Flush);
        let mut model = im.read_all();
        // (log length when an acknowledged flush returned, model then,
        // index of the first command after it)
        let mut acked: Vec<(usize, Vec<u8>, usize)> = vec![(0, model.clone(), 0)];
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (ci, &cmd) in cmds.iter().enumerate() {
            match cmd {
                Cmd::Write(o, l, s) => {
                    let p = pattern(s, l as usize);
                    im.write(o, &p).unwrap();
                    model[o as usize..(o + l) as usize].copy_from_slice(&p);
                    ranges.push((o, l));
                }
                Cmd::Zero(o, l, u) => {
                    im.write_zeroes(o, l, u).unwrap();
                    model[o as usize..(o + l) as usize].fill(0);
                    ranges.push((o, l));
                }
                Cmd::Discard(o, l) => {
                    im.discard(o, l).unwrap();
                    let s = o.div_ceil(c) * c;
                    let e = if o + l == size { size } else { (o + l) / c * c };
                    if s < e {
                        model[s as usize..e as usize].fill(0);
                    }
                    ranges.push((o, l));
                }
                Cmd::Flush => {
                    im.flush().unwrap();
                    let len = im.store.log.as_ref().unwrap().len();
                    acked.push((len, model.clone(), ci + 1));
                    ranges.push((0, 0));
                }
            }
        }
        let grew = im.q.header_area().header.refcount_table_offset != rt_before;
        let log = im.store.log.take().unwrap();
        assert!(log.len() > 10, "workload too small");
        let img = d.join("crashed.qcow2");
        let mut checked = 0;
        for p in 0..=log.len() {
            // Everything before the last barrier in the prefix is durable.
            let durable = log[..p]
                .iter()
                .rposition(|o| matches!(o, Op::Flush))
                .map_or(0, |i| i + 1);
            let variants: [(&str, Box<dyn Fn(usize) -> bool>); 3] = [
                ("durable", Box::new(move |i| i < durable)),
                ("all", Box::new(move |i| i < p)),
                (
                    "alternate",
                    Box::new(move |i| i < durable || (i < p && i % 2 == 0)),
                ),
            ];
            for (vname, keep) in variants.iter() {
                if *vname != "durable" && durable == p {
                    continue;
                }
                let bytes = replay(&orig, &log, keep);
                std::fs::write(&img, &bytes).unwrap();
                let chk = qemu_check(&img);
                assert!(
                    chk.corruptions == 0
                        && chk.check_errors == 0
                        && (chk.status == 0 || chk.status == 3),
                    "{name}: crash after {p}/{} ops ({vname}): {}",
                    log.len(),
                    chk.raw
                );
                // Acknowledged flushes: the newest one inside the durable
                // part; bytes not touched by later commands must match.
                let (_, m, next_cmd) = acked
                    .iter()
                    .rev()
                    .find(|(len, _, _)| *len <= durable)
                    .unwrap();
                // QEMU reads the durable variant; the core's own reader (a
                // fresh open of the crashed bytes) the others, to keep the
                // test's time down.
                let got = if *vname == "durable" {
                    qemu_raw(&img)
                } else {
                    let mut again =
                        Image::open_store(Store::mem(bytes.clone()), &d, &default_cfg(true))
                            .unwrap();
                    again.read_all()
                };
                let mut touched = vec![false; size as usize];
                for &(o, l) in &ranges[*next_cmd..] {
                    // Discard and zero may round to clusters: mark whole clusters.
                    let s = o / c * c;
                    let e = ((o + l).div_ceil(c) * c).min(size);
                    touched[s as usize..e as usize].fill(true);
                }
                for i in 0..size as usize {
                    if !touched[i] && got[i] != m[i] {
                        panic!("{name}: crash after {p} ops ({vname}): flushed byte {i} lost");
                    }
                }
                checked += 1;
            }
        }
        eprintln!("{name}: {} ops, {checked} crash images checked", log.len());
        grew
    }

    #[test]
    fn crash_at_every_step_v3_64k() {
        if have_qemu() {
            let _ = run_case(
                "crash-64k",
                "",
                4 << 20,
                21,
                24,
                &|_| {},
                &["write -P 3 0 1M"],
                &[],
            );
        }
    }

    #[test]
    fn crash_at_every_step_512b_with_reftable_growth() {
        if have_qemu() {
            // The one-cluster refcount table covers 2 MiB: prefill close to
            // that so the recorded workload grows it.
            let grew = run_case(
                "crash-512",
                "cluster_size=512,refcount_bits=64",
                3 << 20,
                22,
                16,
                &|_| {},
                &["write -P 5 0 1900k"],
                &[Cmd::Write(1900 << 10, 200 << 10, 1)],
            );
            assert!(grew, "the workload did not grow the refcount table");
        }
    }

    #[test]
    fn crash_at_every_step_extended_l2_over_backing() {
        if !have_qemu() {
            return;
        }
        let base =
            |d: &std::path::Path| std::fs::write(d.join("base.raw"), pattern(9, 2 << 20)).unwrap();
        let _ = run_case(
            "crash-ext",
            "extended_l2=on,cluster_size=32k,backing_file=base.raw,backing_fmt=raw",
            2 << 20,
            23,
            20,
            &base,
            &[],
            &[],
        );
    }
}
