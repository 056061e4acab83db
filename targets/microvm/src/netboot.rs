//! Firmware boot from a network disk: connect to an NBD server as a
//! client, read an ELF kernel from the start of the export, load its
//! segments at their physical addresses and jump to it.

use blockwire_smoltcp::blockwire_core::client::Config;
use blockwire_smoltcp::{NbdClient, Network};
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

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

pub fn run(p: &mut Platform) -> ! {
    let (Some(rx), Some(tx)) = (p.carve.bytes(RX_BUFFER, 64), p.carve.bytes(TX_BUFFER, 64)) else {
        fail("no memory for the socket")
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
    let disk = match client.handshake(&mut net) {
        Ok(e) => e,
        Err(e) => {
            println!("netboot: handshake failed: {e:?}");
            exit::exit(4)
        }
    };

    // ELF64 header: magic, class 2, little endian, x86-64.
    let mut ehdr = [0u8; 64];
    if let Err(e) = client.read(&mut net, 0, &mut ehdr) {
        println!("netboot: reading the ELF header: {e:?}");
        exit::exit(4)
    }
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 || u16_at(&ehdr, 18) != 0x3e {
        fail("the disk does not start with an x86-64 ELF")
    }
    let entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = usize::from(u16_at(&ehdr, 54));
    let phnum = usize::from(u16_at(&ehdr, 56));
    if phentsize != PHDR_SIZE || phnum == 0 || phnum > MAX_PHDRS {
        fail("unsupported program header table")
    }
    let mut phdrs = [0u8; MAX_PHDRS * PHDR_SIZE];
    let table = &mut phdrs[..phnum * PHDR_SIZE];
    if client.read(&mut net, phoff, table).is_err() {
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
            && offset
                .checked_add(filesz)
                .is_some_and(|end| end <= disk.size);
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
        if let Err(e) = client.read(&mut net, offset, file) {
            println!("netboot: reading a segment: {e:?}");
            exit::exit(4)
        }
        zero.fill(0);
        loaded += filesz;
    }
    let took = net.p.clock.micros() - start;
    let _ = client.disconnect(&mut net);
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
