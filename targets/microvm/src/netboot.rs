//! Firmware boot from a network disk: connect to an NBD server as a
//! client and boot what the export holds.
//!
//! - A GPT disk: the EFI system (or XBOOTLDR) partition's FAT file system,
//!   its first Boot Loader Specification entry in menu order
//!   (`loader/entries/*.conf`), and the Linux bzImage and initramfs it
//!   names, started through the 64-bit Linux boot protocol.
//! - A disk that starts with an x86-64 ELF (the stage-2 test kernel): its
//!   segments loaded at their physical addresses and jumped to.
//!
//! Every way a disk can be unbootable ends in one console line naming
//! what is wrong and exit status 4 through `isa-debug-exit`.

use blockwire_bootdisk::bls::{self, Entry, MAX_CONF};
use blockwire_bootdisk::fat::{Entry as FileEntry, Fat};
use blockwire_bootdisk::{Disk, Error, bzimage, gpt};
use blockwire_smoltcp::blockwire_core::client::Config;
use blockwire_smoltcp::{ClientError, NbdClient, Network};
use smoltcp::iface::{SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpAddress;

use crate::{Platform, exit, fail, println};

const RX_BUFFER: usize = 256 * 1024;
const TX_BUFFER: usize = 16 * 1024;
/// Program headers read at most.
const MAX_PHDRS: usize = 16;
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
/// Command line handed to Linux, at most (the kernel's own limit, from
/// its header, may be smaller).
const CMDLINE_MAX: usize = 4096;
/// `boot_params` offsets (Documentation/arch/x86/zero-page.rst).
const BP_ACPI_RSDP: usize = 0x070;
const BP_EXT_RAMDISK_IMAGE: usize = 0x0c0;
const BP_EXT_RAMDISK_SIZE: usize = 0x0c4;
const BP_EXT_CMD_LINE_PTR: usize = 0x0c8;
const BP_E820_ENTRIES: usize = 0x1e8;
const BP_TYPE_OF_LOADER: usize = 0x210;
const BP_RAMDISK_IMAGE: usize = 0x218;
const BP_RAMDISK_SIZE: usize = 0x21c;
const BP_CMD_LINE_PTR: usize = 0x228;
const BP_E820_TABLE: usize = 0x2d0;
const E820_MAX: usize = 128;

/// The interface and the client's socket, moved by the blocking client.
struct Net<'p, 's> {
    p: &'p mut Platform,
    sockets: SocketSet<'s>,
}

impl<'s> Network<'s> for Net<'_, 's> {
    fn poll(&mut self) -> Instant {
        let now = self.p.now();
        self.p.iface.poll(now, &mut self.p.net, &mut self.sockets);
        now
    }

    fn sockets(&mut self) -> &mut SocketSet<'s> {
        &mut self.sockets
    }
}

/// The export, as the boot disk reader sees it.
struct NbdDisk<'c, 'n, 'p, 's> {
    client: &'c mut NbdClient<4>,
    net: &'n mut Net<'p, 's>,
    size: u64,
}

impl Disk for NbdDisk<'_, '_, '_, '_> {
    type Error = ClientError;
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        // In pieces of at most 1 MiB: the client's timeout is per request,
        // and a whole kernel in one request would stretch what it allows
        // per byte on a slow link.
        for (i, piece) in buf.chunks_mut(1 << 20).enumerate() {
            self.client
                .read(self.net, offset + ((i as u64) << 20), piece)?;
        }
        Ok(())
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// The one line an unbootable disk gets, then power off with status 4.
fn unbootable(what: &str, e: Error<ClientError>) -> ! {
    println!("netboot: cannot boot: {what}: {e}");
    exit::exit(4)
}

pub fn run(p: &mut Platform) -> ! {
    let (Some(rx), Some(tx)) = (p.carve.bytes(RX_BUFFER, 64), p.carve.bytes(TX_BUFFER, 64)) else {
        fail("no memory for the socket")
    };
    // The Linux zero page and command line live below the kernel, in
    // memory no loaded image can overlap.
    let (Some(zero_page), Some(cmdline)) =
        (p.carve.bytes(4096, 4096), p.carve.bytes(CMDLINE_MAX, 16))
    else {
        fail("no memory for the boot parameters")
    };
    let (server, port) = p.options.server;
    let export = p.options.export;
    // Everything below this address is ours (image, DMA, buffers); the
    // loaded kernel must stay above it and inside RAM.
    let (low, high) = (p.carve.next(), p.carve.end());

    let mut storage = [SocketStorage::EMPTY; 1];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
    socket.set_nagle_enabled(false);
    let local_port = 49152 + (p.clock.micros_since_reset() % 16384) as u16;
    if socket
        .connect(
            p.iface.context(),
            (IpAddress::Ipv4(server), port),
            local_port,
        )
        .is_err()
    {
        fail("cannot connect: bad server address")
    }
    let handle = sockets.add(socket);
    println!("netboot: connecting to {server}:{port} export {export:?}");
    let start = p.clock.micros();
    let mut net = Net { p, sockets };

    let config = match Config::new(export) {
        Ok(c) => c,
        Err(_) => fail("bad client configuration"),
    };
    let mut client: NbdClient<4> = NbdClient::new(handle, config, net.p.now());
    let size = match client.handshake(&mut net) {
        Ok(e) => e.size,
        Err(e) => {
            println!("netboot: handshake failed: {e:?}");
            exit::exit(4)
        }
    };

    let mut head = [0u8; 64];
    if size < head.len() as u64 {
        println!("netboot: cannot boot: the disk is {size} bytes, too small for a partition table");
        exit::exit(4)
    }
    if let Err(e) = client.read(&mut net, 0, &mut head) {
        println!("netboot: reading the disk: {e:?}");
        exit::exit(4)
    }
    if &head[..4] == b"\x7fELF" {
        boot_elf(&mut client, &mut net, &head, size, low, high, start)
    }
    let mut disk = NbdDisk {
        client: &mut client,
        net: &mut net,
        size,
    };
    let linux = load_linux(&mut disk, zero_page, cmdline, low, high);
    let took = disk.net.p.clock.micros() - start;
    let _ = disk.client.disconnect(disk.net);
    println!(
        "netboot: loaded {} bytes of kernel and {} of initramfs in {took} us, entering {:#x}",
        linux.kernel_len, linux.initrd_len, linux.entry
    );
    // SAFETY: the kernel's protected-mode part is at `entry - 0x200`, its
    // init_size of RAM above free, the zero page and command line filled
    // in as the 64-bit boot protocol asks, all identity-mapped by our page
    // tables; nothing of ours is needed after the jump.
    unsafe { enter_linux(linux.entry, zero_page.as_ptr() as u64) }
}

struct Loaded {
    entry: u64,
    kernel_len: u64,
    initrd_len: u64,
}

/// GPT → FAT → boot entry → bzImage and initramfs in RAM, the zero page
/// and command line filled in.
fn load_linux(
    disk: &mut NbdDisk,
    zero_page: &mut [u8],
    cmdline: &mut [u8],
    low: u64,
    high: u64,
) -> Loaded {
    let part = gpt::boot_partition(disk).unwrap_or_else(|e| unbootable("partition table", e));
    let mut fat =
        Fat::open(disk, part.offset, part.len).unwrap_or_else(|e| unbootable("boot partition", e));
    println!(
        "netboot: boot partition {} ({} MiB at {}, {:?})",
        part.index + 1,
        part.len >> 20,
        part.offset,
        fat.kind()
    );
    let (mut text, mut scratch) = ([0u8; MAX_CONF], [0u8; MAX_CONF]);
    let chosen = bls::choose(&mut fat, disk, &mut text, &mut scratch)
        .unwrap_or_else(|e| unbootable("boot entry", e));
    let Ok(entry) = Entry::parse(&text[..chosen.len]) else {
        unbootable("boot entry", Error::BadEntry("unreadable"))
    };
    println!(
        "netboot: entry loader/entries/{}: {}",
        chosen.name(),
        entry.title.unwrap_or("(no title)")
    );
    let linux_path = entry.linux.unwrap_or("");
    let kernel = fat
        .lookup(disk, linux_path.as_bytes())
        .unwrap_or_else(|e| unbootable(linux_path, e));
    let mut head = [0u8; bzimage::HEAD];
    if u64::from(kernel.size) < head.len() as u64 {
        unbootable(
            linux_path,
            Error::NotBzImage("shorter than a boot sector and setup header"),
        )
    }
    fat.read(disk, &kernel, 0, &mut head)
        .unwrap_or_else(|e| unbootable(linux_path, e));
    let k = bzimage::parse(&head, u64::from(kernel.size))
        .unwrap_or_else(|why| unbootable(linux_path, Error::NotBzImage(why)));

    // The initramfs files, back to back, each 4-byte aligned as the
    // kernel's unpacker expects of concatenated archives.
    let mut initrds = [None::<FileEntry>; 4];
    let mut initrd_len = 0u64;
    for (slot, path) in initrds.iter_mut().zip(entry.initrds()) {
        let f = fat
            .lookup(disk, path.as_bytes())
            .unwrap_or_else(|e| unbootable(path, e));
        initrd_len = initrd_len.next_multiple_of(4) + u64::from(f.size);
        *slot = Some(f);
    }
    let layout = bzimage::layout(&k, initrd_len, low, high).unwrap_or_else(|why| {
        println!(
            "netboot: cannot boot: {linux_path}: does not fit in RAM: {why} (kernel needs {} MiB, initramfs {} KiB, free RAM {} MiB)",
            k.init_size >> 20,
            initrd_len >> 10,
            high.saturating_sub(low) >> 20
        );
        exit::exit(4)
    });

    // SAFETY: `layout` placed [kernel, kernel_end) and the initramfs in
    // [low, high): RAM above everything this program uses, identity
    // mapped, referred to by nothing else.
    let dst = unsafe {
        core::slice::from_raw_parts_mut(layout.kernel as *mut u8, k.payload_len as usize)
    };
    fat.read(disk, &kernel, k.setup_len, dst)
        .unwrap_or_else(|e| unbootable(linux_path, e));
    let mut at = layout.initrd;
    for (f, path) in initrds.iter().flatten().zip(entry.initrds()) {
        let pad = at.next_multiple_of(4) - at;
        // SAFETY: inside the initramfs range `layout` reserved (its length
        // counted this padding and file).
        let dst = unsafe {
            core::slice::from_raw_parts_mut(at as *mut u8, (pad + u64::from(f.size)) as usize)
        };
        dst[..pad as usize].fill(0);
        fat.read(disk, f, 0, &mut dst[pad as usize..])
            .unwrap_or_else(|e| unbootable(path, e));
        at += pad + u64::from(f.size);
    }

    // Command line: the entry's options, then what this machine needs
    // that the entry cannot know: the serial console (unless the entry
    // names one) and the virtio-mmio devices QEMU put on our command line.
    let limit = (k.cmdline_max as usize).min(CMDLINE_MAX - 1);
    let mut w = Cmdline {
        buf: &mut cmdline[..limit],
        len: 0,
        full: false,
    };
    for o in entry.options() {
        w.word(o);
    }
    if !entry.options().iter().any(|o| {
        o.split_ascii_whitespace()
            .any(|w| w.starts_with("console="))
    }) {
        w.word("console=ttyS0");
    }
    // microvm has no port 0x61 (PIT gate) and no HPET: Linux cannot
    // calibrate the TSC itself, so it gets the rate this firmware measured.
    if !entry.options().iter().any(|o| {
        o.split_ascii_whitespace()
            .any(|w| w.starts_with("tsc_early_khz="))
    }) {
        let mut num = [0u8; 40];
        let khz = disk.net.p.clock.hz() / 1000;
        let word = decimal(&mut num, b"tsc_early_khz=", khz);
        w.word(word);
    }
    let ours = disk.net.p.info.cmdline;
    for word in ours
        .split_ascii_whitespace()
        .filter(|w| w.starts_with("virtio_mmio.device="))
    {
        w.word(word);
    }
    if w.full {
        unbootable(
            "command line",
            Error::TooLarge("the options are longer than the kernel's command line limit"),
        )
    }
    let cmdline_len = w.len;
    cmdline[cmdline_len] = 0;
    println!(
        "netboot: linux {linux_path} (boot protocol {}.{:02}) at {:#x}, initramfs at {:#x}, command line: {}",
        k.version >> 8,
        k.version & 0xff,
        layout.kernel,
        layout.initrd,
        core::str::from_utf8(&cmdline[..cmdline_len]).unwrap_or("?")
    );

    zero_page.fill(0);
    put(
        zero_page,
        bzimage::HEADER_AT,
        &head[bzimage::HEADER_AT..k.header_end],
    );
    zero_page[BP_TYPE_OF_LOADER] = 0xff;
    let cmd = cmdline.as_ptr() as u64;
    put(zero_page, BP_CMD_LINE_PTR, &(cmd as u32).to_le_bytes());
    put(
        zero_page,
        BP_EXT_CMD_LINE_PTR,
        &((cmd >> 32) as u32).to_le_bytes(),
    );
    if initrd_len > 0 {
        put(
            zero_page,
            BP_RAMDISK_IMAGE,
            &(layout.initrd as u32).to_le_bytes(),
        );
        put(
            zero_page,
            BP_RAMDISK_SIZE,
            &(initrd_len as u32).to_le_bytes(),
        );
        put(
            zero_page,
            BP_EXT_RAMDISK_IMAGE,
            &((layout.initrd >> 32) as u32).to_le_bytes(),
        );
        put(
            zero_page,
            BP_EXT_RAMDISK_SIZE,
            &((initrd_len >> 32) as u32).to_le_bytes(),
        );
    }
    let info = &disk.net.p.info;
    put(zero_page, BP_ACPI_RSDP, &info.rsdp.to_le_bytes());
    let n = info.map_count.min(E820_MAX);
    zero_page[BP_E820_ENTRIES] = n as u8;
    for (i, &(addr, size, kind)) in info.map[..n].iter().enumerate() {
        let at = BP_E820_TABLE + i * 20;
        put(zero_page, at, &addr.to_le_bytes());
        put(zero_page, at + 8, &size.to_le_bytes());
        put(zero_page, at + 16, &kind.to_le_bytes());
    }
    Loaded {
        entry: layout.kernel + 0x200,
        kernel_len: k.payload_len,
        initrd_len,
    }
}

/// `prefix` then `n` in decimal, in `buf`.
fn decimal<'a>(buf: &'a mut [u8; 40], prefix: &[u8], mut n: u64) -> &'a str {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = prefix.len() + digits.len() - i;
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..len].copy_from_slice(&digits[i..]);
    core::str::from_utf8(&buf[..len]).unwrap_or("")
}

/// Space-separated words into a fixed buffer; `full` once one did not fit.
struct Cmdline<'a> {
    buf: &'a mut [u8],
    len: usize,
    full: bool,
}

impl Cmdline<'_> {
    fn word(&mut self, w: &str) {
        let w = w.trim();
        if w.is_empty() {
            return;
        }
        let sep = usize::from(self.len > 0);
        if self.len + sep + w.len() > self.buf.len() {
            self.full = true;
            return;
        }
        if sep == 1 {
            self.buf[self.len] = b' ';
        }
        self.buf[self.len + sep..self.len + sep + w.len()].copy_from_slice(w.as_bytes());
        self.len += sep + w.len();
    }
}

/// The 64-bit Linux entry: a GDT with flat code at `__BOOT_CS` (0x10)
/// and data at `__BOOT_DS` (0x18), interrupts off, `rsi` the zero page.
///
/// # Safety
/// `entry` must be a loaded kernel's 64-bit entry and `zero_page` its
/// filled-in `boot_params`, both identity-mapped.
unsafe fn enter_linux(entry: u64, zero_page: u64) -> ! {
    #[repr(C, align(16))]
    struct Gdt([u64; 4]);
    static GDT: Gdt = Gdt([0, 0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF]);
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer {
        limit: (core::mem::size_of::<Gdt>() - 1) as u16,
        base: &GDT as *const Gdt as u64,
    };
    // SAFETY: the caller vouches for `entry` and `zero_page`; the GDT is
    // static, so it outlives the switch.
    unsafe {
        core::arch::asm!(
            "cli",
            "lgdt [rcx]",
            "mov ax, 0x18",
            "mov ds, ax",
            "mov es, ax",
            "mov ss, ax",
            "push 0x10",
            "lea rax, [rip + 2f]",
            "push rax",
            "retfq",
            "2:",
            "xor ebp, ebp",
            "xor edi, edi",
            "jmp rdx",
            // Fixed registers: the sequence uses rax as scratch.
            in("rcx") &ptr,
            in("rdx") entry,
            in("rsi") zero_page,
            options(noreturn)
        )
    }
}

/// The stage-2 path: an ELF at offset 0, loaded by its program headers.
fn boot_elf(
    client: &mut NbdClient<4>,
    net: &mut Net,
    ehdr: &[u8; 64],
    size: u64,
    low: u64,
    high: u64,
    start: u64,
) -> ! {
    // ELF64 header: magic, class 2, little endian, x86-64.
    if ehdr[4] != 2 || ehdr[5] != 1 || u16_at(ehdr, 18) != 0x3e {
        fail("the disk starts with an ELF that is not x86-64")
    }
    let entry = u64_at(ehdr, 24);
    let phoff = u64_at(ehdr, 32);
    let phentsize = usize::from(u16_at(ehdr, 54));
    let phnum = usize::from(u16_at(ehdr, 56));
    if phentsize != PHDR_SIZE || phnum == 0 || phnum > MAX_PHDRS {
        fail("unsupported program header table")
    }
    let mut phdrs = [0u8; MAX_PHDRS * PHDR_SIZE];
    let table = &mut phdrs[..phnum * PHDR_SIZE];
    if client.read(net, phoff, table).is_err() {
        fail("reading the program headers")
    }

    let mut loaded = 0u64;
    for ph in table.chunks_exact(PHDR_SIZE) {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = (
            u64_at(ph, 8),
            u64_at(ph, 24),
            u64_at(ph, 32),
            u64_at(ph, 40),
        );
        let fits = paddr >= low
            && filesz <= memsz
            && paddr.checked_add(memsz).is_some_and(|end| end <= high)
            && offset.checked_add(filesz).is_some_and(|end| end <= size);
        if !fits {
            println!(
                "netboot: segment at {paddr:#x} (+{memsz:#x}) is outside free RAM {low:#x}..{high:#x}"
            );
            exit::exit(4)
        }
        // SAFETY: [paddr, paddr+memsz) is RAM above everything this kernel
        // uses (checked just above), identity-mapped, and nothing else
        // refers to it.
        let dst = unsafe { core::slice::from_raw_parts_mut(paddr as *mut u8, memsz as usize) };
        let (file, zero) = dst.split_at_mut(filesz as usize);
        if let Err(e) = client.read(net, offset, file) {
            println!("netboot: reading a segment: {e:?}");
            exit::exit(4)
        }
        zero.fill(0);
        loaded += filesz;
    }
    let took = net.p.clock.micros() - start;
    let _ = client.disconnect(net);
    if !(low..high).contains(&entry) {
        fail("entry point outside the loaded kernel")
    }
    println!("netboot: loaded {loaded} bytes in {took} us, entering {entry:#x}");
    // SAFETY: `entry` lies in RAM we just filled from the ELF's segments;
    // the page tables (identity, 4 GiB) and stack stay valid, as the
    // second stage expects of a 64-bit PVH-style hand-over.
    let kernel: extern "C" fn() -> ! = unsafe { core::mem::transmute(entry as usize) };
    kernel()
}
