//! Images whose refcounts or COPIED flags lie (each found by the
//! `qcow2_image` fuzz target): a cluster the image uses but counts as
//! free, or counts once but does not mark COPIED. Writing to such an
//! image may leak clusters, as QEMU allows, but a completed write always
//! reads back, also after a flush and a reopen.

mod qcow2_support;

mod qcow2_refcount_lies {
    use super::qcow2_support::*;

    /// After a write of `data` at `at` over a table copied on write: it
    /// reads back, the guest cluster at `old` still reads `old_byte`
    /// through the copied table, and the flushed file reopens the same.
    fn reads_back(img: &mut Image, at: u64, data: &[u8], old: u64, old_byte: u8) {
        let mut r = vec![0; data.len()];
        img.read(at, &mut r).unwrap();
        assert!(r == data, "the write reads back");
        img.read(old, &mut r).unwrap();
        assert!(
            r.iter().all(|&x| x == old_byte),
            "the copied table still maps {old:#x}"
        );
        let mut again = open_bytes(&img.store.mem, true).unwrap();
        again.read(at, &mut r).unwrap();
        assert!(r == data, "the write survives a reopen");
    }

    /// An L2 table without COPIED but counted once (found by the fuzzer):
    /// its copy-on-write frees the old cluster, which the next new table
    /// reuses while the old table's copy is still cached. The cache must
    /// hold one table per cluster, or the write lands in the stale copy
    /// and the flush overwrites it with the new, empty one.
    #[test]
    fn cow_freed_l2_cluster_reused_by_a_new_table() {
        if !have_qemu() {
            return;
        }
        // 512-byte clusters: header c0, refcount table c1, block c2, L1
        // c3; L2 #0 at c4 (data c5), L2 #1 at c6 (data c7).
        let mut b = make_image(
            "l2reuse",
            "cluster_size=512",
            "1M",
            &["write -P 1 0 512", "write -P 2 32k 512"],
        );
        let l1 = get64(&b, 40) as usize;
        let l2 = get64(&b, l1 + 8);
        assert_eq!(l2 & ((1 << 56) - 1), 6 << 9, "layout as planned");
        be64(&mut b, l1 + 8, l2 & !(1 << 63));
        let mut img = open_bytes(&b, false).unwrap();
        // Copy-on-write of L2 #1; c6 is freed by the flush.
        img.write((32 << 10) + 512, &[0x22; 512]).unwrap();
        img.flush().unwrap();
        // A new table for L1 #3 takes the lowest free cluster, c6.
        let data = vec![0x5a; 512];
        img.write(96 << 10, &data).unwrap();
        img.flush().unwrap();
        reads_back(&mut img, 96 << 10, &data, 32 << 10, 2);
    }

    /// A live L2 table the refcounts count as free (found by the fuzzer):
    /// its copy-on-write queues a free of the old table, and the data
    /// cluster allocated in the same write must not be that cluster, or
    /// the queued decrement frees the new data and a later allocation
    /// overwrites it. The write lands elsewhere and reads back, also after
    /// more allocations and a reopen.
    #[test]
    fn zero_refcount_l2_table_is_not_reused_by_its_own_cow() {
        if !have_qemu() {
            return;
        }
        // 512-byte clusters: header c0, refcount table c1, refcount block
        // c2, L1 c3; each L2 maps 32 KiB. Three L2 tables (c4, c6, c8) and
        // their data (c5, c7, c9); then guest 0's data is discarded, so c5
        // is the lowest free cluster.
        let mut b = make_image(
            "l2zero",
            "cluster_size=512",
            "1M",
            &[
                "write -P 1 0 512",
                "write -P 2 32k 512",
                "write -P 3 64k 512",
                "discard 0 512",
            ],
        );
        let l1 = get64(&b, 40) as usize;
        let l2 = get64(&b, l1 + 16);
        assert_eq!(l2 & ((1 << 56) - 1), 8 << 9, "layout as planned");
        let rt = get64(&b, 48) as usize;
        let rb = get64(&b, rt) as usize;
        assert_eq!(b[rb + 2 * 5 + 1], 0, "c5 free after the discard");
        // The third L2 table loses COPIED and its refcount.
        be64(&mut b, l1 + 16, l2 & !(1 << 63));
        b[rb + 2 * 8 + 1] = 0;
        let mut img = open_bytes(&b, false).unwrap();
        // The write copies L2 #3 to c5 and queues c8's free; its data
        // cluster must not be c8.
        let data = vec![0x5a; 512];
        img.write(65 << 10, &data).unwrap();
        img.flush().unwrap();
        // More allocations after the queued free is applied.
        img.write(200 << 10, &[0x77; 2048]).unwrap();
        img.write(300 << 10, &[0x66; 2048]).unwrap();
        img.flush().unwrap();
        reads_back(&mut img, 65 << 10, &data, 64 << 10, 3);
    }

    /// A data cluster an L2 entry without COPIED points at but the image
    /// counts 0 (found by the fuzzer). A new write takes the cluster (it is
    /// free as far as the refcounts say); then the first entry's
    /// copy-on-write drops its reference. Applying that decrement would
    /// free the new write's cluster under it, and the next allocation (a
    /// new L2 table here) would overwrite its data: the decrement is
    /// skipped instead, leaking the cluster.
    #[test]
    fn shared_data_cluster_counted_zero_is_not_freed_under_a_new_write() {
        if !have_qemu() {
            return;
        }
        // 512-byte clusters: header c0, refcount table c1, block c2, L1
        // c3, L2 #0 at c4, guest 0's data at c5.
        let mut b = make_image("datazero", "cluster_size=512", "1M", &["write -P 1 0 512"]);
        let l1 = get64(&b, 40) as usize;
        let l2 = (get64(&b, l1) & ((1 << 56) - 1)) as usize;
        assert_eq!(l2, 4 << 9, "layout as planned");
        let e = get64(&b, l2);
        assert_eq!(e & ((1 << 56) - 1), 5 << 9, "layout as planned");
        let rt = get64(&b, 48) as usize;
        let rb = get64(&b, rt) as usize;
        // Guest 0's entry loses COPIED and c5 its refcount.
        be64(&mut b, l2, e & !(1 << 63));
        b[rb + 2 * 5 + 1] = 0;
        let mut img = open_bytes(&b, false).unwrap();
        // The lowest free cluster, c5, takes this write.
        let data = vec![0x5a; 512];
        img.write(512, &data).unwrap();
        // Copy-on-write of guest 0 queues the drop of its reference to c5.
        img.write(0, &[0x11; 512]).unwrap();
        img.flush().unwrap();
        // A new L2 table takes the lowest free cluster: not c5.
        img.write(64 << 10, &[0x77; 512]).unwrap();
        img.flush().unwrap();
        let mut r = vec![0; 512];
        img.read(512, &mut r).unwrap();
        assert!(r == data, "the write reads back");
        let mut again = open_bytes(&img.store.mem, true).unwrap();
        again.read(512, &mut r).unwrap();
        assert!(r == data, "the write survives a reopen");
    }
}
