//! The reader against disks made by sgdisk, mkfs.fat and mtools
//! (tests/fixtures/make.sh), and against those disks damaged.

use blockwire_bootdisk::bls::{self, Entry, MAX_CONF};
use blockwire_bootdisk::fat::{Fat, Kind};
use blockwire_bootdisk::sparse::Sparse;
use blockwire_bootdisk::{Disk, Error, bzimage, crc32, gpt};

const FIXTURES: [(&[u8], Kind); 3] = [
    (include_bytes!("fixtures/gpt-fat12.sparse"), Kind::Fat12),
    (include_bytes!("fixtures/gpt-fat16.sparse"), Kind::Fat16),
    (include_bytes!("fixtures/gpt-fat32.sparse"), Kind::Fat32),
];

/// The fixture expanded to a plain image, to damage it.
fn image(sparse: &[u8]) -> Vec<u8> {
    let mut s = Sparse::new(sparse, 1 << 30).unwrap();
    let mut d = vec![0; s.size() as usize];
    s.read(0, &mut d).unwrap();
    d
}

fn initrd_byte(i: usize) -> u8 {
    ((i * 13 + 5) & 0xff) as u8
}

type R<T> = Result<T, Error<()>>;

/// Everything a boot does short of jumping: partition, file system,
/// entry, kernel header, files.
fn boot(mut d: &[u8]) -> R<(String, Vec<u8>, Vec<u8>, bzimage::Kernel)> {
    let part = gpt::boot_partition(&mut d)?;
    let mut fat = Fat::open(&mut d, part.offset, part.len)?;
    let (mut best, mut scratch) = ([0u8; MAX_CONF], [0u8; MAX_CONF]);
    let chosen = bls::choose(&mut fat, &mut d, &mut best, &mut scratch)?;
    let e = Entry::parse(&best[..chosen.len]).unwrap();
    let kf = fat.lookup(&mut d, e.linux.unwrap().as_bytes())?;
    let mut kernel = vec![0; kf.size as usize];
    fat.read(&mut d, &kf, 0, &mut kernel)?;
    let k =
        bzimage::parse(&kernel[..bzimage::HEAD], kernel.len() as u64).map_err(Error::NotBzImage)?;
    let mut initrd = Vec::new();
    for path in e.initrds() {
        let f = fat.lookup(&mut d, path.as_bytes())?;
        let mut b = vec![0; f.size as usize];
        fat.read(&mut d, &f, 0, &mut b)?;
        initrd.extend(b);
    }
    Ok((
        format!("{} {}", chosen.name(), e.options().join(" ")),
        kernel,
        initrd,
        k,
    ))
}

#[test]
fn boots_every_fat_type() {
    for (sparse, kind) in FIXTURES {
        let d = image(sparse);
        let mut disk = d.as_slice();
        let part = gpt::boot_partition(&mut disk).unwrap();
        assert_eq!(part.offset, 2048 * 512);
        assert_eq!(
            Fat::open(&mut disk, part.offset, part.len).unwrap().kind(),
            kind
        );
        let (entry, kernel, initrd, k) = boot(&d).unwrap();
        // The newest by file name; the EFI entry and README are skipped.
        assert_eq!(
            entry, "debian-6.1.0-57-cloud-amd64.conf console=ttyS0 quiet",
            "{kind:?}"
        );
        assert_eq!(kernel.len(), 16384);
        assert!(
            kernel[2048..]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (((i + 2048) * 7) & 0xff) as u8)
        );
        assert_eq!(initrd.len(), 70000);
        assert!(
            initrd.iter().enumerate().all(|(i, &b)| b == initrd_byte(i)),
            "{kind:?}"
        );
        assert_eq!(k.setup_len, 4 * 512);
        assert_eq!(k.init_size, 0x400000);
        // Partial reads at odd offsets cross cluster runs.
        let mut fat = Fat::open(&mut disk, part.offset, part.len).unwrap();
        let f = fat
            .lookup(&mut disk, b"/INITRD.IMG-6.1.0-57-cloud-amd64")
            .unwrap();
        let mut piece = [0u8; 3001];
        for at in [0usize, 511, 2047, 4095, 66999] {
            fat.read(&mut disk, &f, at as u64, &mut piece).unwrap();
            assert!(
                piece
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == initrd_byte(at + i))
            );
        }
        assert!(fat.read(&mut disk, &f, 67000, &mut piece).is_err());
        assert_eq!(
            fat.lookup(&mut disk, b"loader/missing").err(),
            Some(Error::NotFound)
        );
        assert_eq!(
            fat.lookup(&mut disk, b"initrd.img-6.1.0-57-cloud-amd64/x")
                .err(),
            Some(Error::NotFound)
        );
    }
}

fn fix_gpt_crcs(d: &mut [u8]) {
    let entries = 1024;
    let crc = crc32(0, &d[entries..entries + 128 * 128]);
    d[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
    d[512 + 16..512 + 20].fill(0);
    let crc = crc32(0, &d[512..512 + 92]);
    d[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn bad_partition_tables() {
    let good = image(FIXTURES[1].0);
    let mut d = good.clone();
    d[512..1024].fill(0);
    assert_eq!(boot(&d).err(), Some(Error::NoPartitionTable));
    assert_eq!(boot(&[0u8; 100]).err(), Some(Error::NoPartitionTable));

    let mut d = good.clone();
    d[512 + 40] ^= 1;
    assert!(matches!(
        boot(&d).err(),
        Some(Error::BadPartitionTable("header CRC mismatch"))
    ));

    let mut d = good.clone();
    d[1024 + 60] ^= 1; // partition name
    assert!(matches!(
        boot(&d).err(),
        Some(Error::BadPartitionTable("entry array CRC mismatch"))
    ));

    // A Linux filesystem partition instead of the ESP.
    let mut d = good.clone();
    d[1024..1040].copy_from_slice(&gpt::guid(
        0x0FC63DAF,
        0x8483,
        0x4772,
        [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
    ));
    fix_gpt_crcs(&mut d);
    assert_eq!(boot(&d).err(), Some(Error::NoBootPartition));

    // The partition running past the disk.
    let mut d = good.clone();
    d[1024 + 40..1024 + 48].copy_from_slice(&u64::MAX.to_le_bytes());
    fix_gpt_crcs(&mut d);
    assert!(matches!(boot(&d).err(), Some(Error::BadPartitionTable(_))));

    // Absurd entry counts and sizes.
    for (at, v) in [(80usize, 1u32 << 30), (84, 100), (84, 1 << 20)] {
        let mut d = good.clone();
        d[512 + at..512 + at + 4].copy_from_slice(&v.to_le_bytes());
        fix_gpt_crcs(&mut d);
        assert!(
            matches!(boot(&d).err(), Some(Error::BadPartitionTable(_))),
            "{at} {v}"
        );
    }
}

#[test]
fn xbootldr_before_esp() {
    // Entry 1 a copy of the ESP typed XBOOTLDR: it is the one used.
    let mut d = image(FIXTURES[0].0);
    let (e0, e1) = (1024, 1024 + 128);
    d.copy_within(e0..e0 + 128, e1);
    d[e1..e1 + 16].copy_from_slice(&gpt::XBOOTLDR);
    fix_gpt_crcs(&mut d);
    let mut disk = d.as_slice();
    let p = gpt::boot_partition(&mut disk).unwrap();
    assert_eq!((p.index, p.type_guid), (1, gpt::XBOOTLDR));
    assert!(boot(&d).is_ok());
}

#[test]
fn bad_file_systems() {
    let good = image(FIXTURES[1].0);
    let part = 2048 * 512;
    let mut d = good.clone();
    d[part..part + 512].fill(0);
    assert!(matches!(boot(&d).err(), Some(Error::NotFat(_))));
    for (at, v) in [(12usize, 0u8), (13, 3), (16, 0), (14, 0)] {
        let mut d = good.clone();
        d[part + at] = v;
        if at == 14 {
            d[part + 15] = 0;
        }
        assert!(
            matches!(boot(&d).err(), Some(Error::NotFat(_))),
            "byte {at}"
        );
    }
    // Every FAT entry after the first two pointing past the data region
    // or marked free: chains break and say so.
    let fat_at = part + 512 * usize::from(u16::from_le_bytes([good[part + 14], good[part + 15]]));
    for v in [0xFFF0u16, 0] {
        let mut d = good.clone();
        for c in 2..4000usize {
            d[fat_at + 2 * c..fat_at + 2 * c + 2].copy_from_slice(&v.to_le_bytes());
        }
        let err = boot(&d).err();
        assert!(matches!(err, Some(Error::BadFat(_))), "{v:#x}: {err:?}");
    }
    // A chain that loops on itself: reads stay bounded by the file size
    // (the data is wrong, as on any damaged disk, but nothing spins).
    let mut d = good.clone();
    for c in 2..4000usize {
        d[fat_at + 2 * c..fat_at + 2 * c + 2].copy_from_slice(&3u16.to_le_bytes());
    }
    let _ = boot(&d);
}

#[test]
fn entries() {
    let e = Entry::parse(
        b"title T\n  linux  /a b\ninitrd /i1\ninitrd /i2\noptions x=1\n# c\noptions y\nfoo bar\n",
    )
    .unwrap();
    assert_eq!(e.linux, Some("/a b"));
    assert_eq!(e.initrds(), ["/i1", "/i2"]);
    assert_eq!(e.options(), ["x=1", "y"]);
    assert_eq!(e.unusable(), None);
    assert!(
        Entry::parse(b"architecture aa64\nlinux /x\n")
            .unwrap()
            .unusable()
            .is_some()
    );
    assert!(Entry::parse(b"efi /x.efi\n").unwrap().unusable().is_some());
    assert!(Entry::parse(b"\xff\n").is_err());
    assert!(Entry::parse("initrd a\n".repeat(5).as_bytes()).is_err());

    use core::cmp::Ordering::*;
    assert_eq!(bls::version_cmp("6.1.0-57", "6.1.0-9"), Greater);
    assert_eq!(bls::version_cmp("1.0~rc1", "1.0"), Less);
    assert_eq!(bls::version_cmp("007", "7"), Equal);
    let keyed = Entry::parse(b"sort-key a\nversion 1\nlinux /x\n").unwrap();
    let keyed2 = Entry::parse(b"sort-key a\nversion 2\nlinux /x\n").unwrap();
    let plain = Entry::parse(b"linux /x\n").unwrap();
    assert_eq!(bls::menu_order(&keyed, "z.conf", &plain, "a.conf"), Less);
    assert_eq!(bls::menu_order(&keyed2, "a.conf", &keyed, "b.conf"), Less);
    assert_eq!(
        bls::menu_order(&plain, "l-10.conf", &plain, "l-9.conf"),
        Less
    );
}

#[test]
fn kernels() {
    let d = image(FIXTURES[0].0);
    let (_, kernel, _, k) = boot(&d).unwrap();
    let head = &kernel[..bzimage::HEAD];
    for (at, v, why) in [
        (0x202, 0u8, "HdrS"),
        (0x1fe, 0, "boot flag"),
        (0x236, 0, "64-bit"),
        (0x207, 1, "2.12"),
    ] {
        let mut h = head.to_vec();
        h[at] = v;
        let err = bzimage::parse(&h, 16384).unwrap_err();
        assert!(err.contains(why), "{err}");
    }
    assert!(bzimage::parse(b"\x7fELF", 4).is_err());
    assert!(bzimage::parse(head, 2048).is_err());

    // At the preferred address when free, else relocated, else refused.
    let l = bzimage::layout(&k, 70000, 0x20_0000, 0x1000_0000).unwrap();
    assert_eq!((l.kernel, l.kernel_end), (0x100_0000, 0x140_0000));
    assert_eq!(l.initrd, (0x1000_0000 - 70000) & !4095);
    let l = bzimage::layout(&k, 70000, 0x20_0000, 0x100_0000).unwrap();
    assert_eq!(l.kernel, 0x20_0000);
    assert!(bzimage::layout(&k, 70000, 0x20_0000, 0x50_0000).is_err());
    assert!(bzimage::layout(&k, 0x100_0000, 0x20_0000, 0x100_0000).is_err());
    let fixed = bzimage::Kernel {
        relocatable: false,
        ..k
    };
    assert!(bzimage::layout(&fixed, 0, 0x20_0000, 0x100_0000).is_err());
}
