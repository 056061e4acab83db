//! Hostile boot disks: what the netboot firmware does with a disk short of
//! jumping, on a disk described by the input in the sparse format of
//! `blockwire_bootdisk::sparse` (a size, then non-zero 512-byte sectors),
//! so a small input can be a large GPT/FAT disk. GPT header and entry
//! array, FAT BPB, cluster chains, directories and long names, entry
//! choice, bzImage header and RAM layout: none may panic, loop forever or
//! read outside the disk (the sparse disk refuses such reads and the
//! reader must never ask for one). Reads of the same bytes in one piece
//! and in two must agree. The whole input is also parsed as an entry file.
#![no_main]

use blockwire_bootdisk::bls::{self, Entry, MAX_CONF};
use blockwire_bootdisk::fat::Fat;
use blockwire_bootdisk::sparse::Sparse;
use blockwire_bootdisk::{Disk, bzimage, gpt};
use libfuzzer_sys::fuzz_target;

/// File bytes read at most per file: a hostile size can be 4 GiB.
const MAX_READ: usize = 64 * 1024;

/// Read up to [`MAX_READ`] bytes of the file at `path` into `buf`, check
/// piecewise reads agree and reads past the end fail; the bytes read.
fn read_file(fat: &mut Fat, disk: &mut Sparse, path: &[u8], buf: &mut [u8]) -> Option<usize> {
    let f = fat.lookup(disk, path).ok()?;
    let n = (f.size as usize).min(MAX_READ);
    fat.read(disk, &f, 0, &mut buf[..n]).ok()?;
    // The same bytes in two pieces, the second starting mid-cluster.
    let half = n / 2 + 1;
    if n > half {
        let mut again = vec![0u8; n];
        fat.read(disk, &f, half as u64, &mut again[half..]).unwrap();
        fat.read(disk, &f, 0, &mut again[..half]).unwrap();
        assert_eq!(again, buf[..n]);
    }
    if f.size > 0 {
        let _ = fat.read(disk, &f, u64::from(f.size) - 1, &mut [0u8; 1]);
    }
    assert!(fat.read(disk, &f, u64::from(f.size), &mut [0u8; 1]).is_err());
    Some(n)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Entry::parse(data) {
        let _ = e.unusable();
        let _ = bls::menu_order(&e, "a.conf", &Entry::default(), "b.conf");
        let _ = bls::version_cmp(e.version.unwrap_or(""), e.title.unwrap_or(""));
    }
    let Some(mut disk) = Sparse::new(data, 1 << 40) else {
        return;
    };
    let Ok(part) = gpt::boot_partition(&mut disk) else {
        return;
    };
    assert!(part.offset + part.len <= disk.size());
    let Ok(mut fat) = Fat::open(&mut disk, part.offset, part.len) else {
        return;
    };
    let (mut best, mut scratch) = ([0u8; MAX_CONF], [0u8; MAX_CONF]);
    let chosen = bls::choose(&mut fat, &mut disk, &mut best, &mut scratch);
    let mut buf = vec![0u8; MAX_READ];
    let Ok(chosen) = chosen else {
        // Whatever the entry problem, the file system can still be walked.
        let _ = read_file(&mut fat, &mut disk, b"EFI/BOOT/BOOTX64.EFI", &mut buf);
        return;
    };
    let e = Entry::parse(&best[..chosen.len]).expect("a chosen entry parses");
    assert!(e.unusable().is_none());
    if let Some(n) = read_file(&mut fat, &mut disk, e.linux.unwrap().as_bytes(), &mut buf) {
        if let Ok(k) = bzimage::parse(&buf[..n.min(bzimage::HEAD)], n as u64) {
            for (low, high) in [(0x40_0000, 0x1000_0000), (0x100_0000, 0x200_0000)] {
                if let Ok(l) = bzimage::layout(&k, 1 << 20, low, high) {
                    assert!(l.kernel >= low && l.kernel_end <= l.initrd && l.initrd + (1 << 20) <= high);
                }
            }
        }
    }
    for path in e.initrds() {
        let _ = read_file(&mut fat, &mut disk, path.as_bytes(), &mut buf);
    }
});
