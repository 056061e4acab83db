//! Server and client in one process over smoltcp's loopback device:
//! handshake, writes, reads, block status, trim and zeroing, byte-exact
//! against a model, in all three header modes and for every device kind.

use blockwire_core::block::Extent;
use blockwire_core::block::contract::{STATE_HOLE, STATE_ZERO};
use blockwire_core::client::Config;
use blockwire_core::server::ServerConfig;
use blockwire_core::wire::{HeaderMode, TransmissionFlags};
use blockwire_smoltcp::{
    BlockDevice, CONNECTION_STATE_SIZE, ClientError, FlashDisk, NBD_PORT, NbdClient, NbdServer,
    Network, RamDisk, RamFlash, StaticDisk, add_sockets,
};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Loopback, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

const GRANULE: u64 = 4096;
const HOLE_ZERO: u64 = STATE_HOLE | STATE_ZERO;

fn leak(n: usize) -> &'static mut [u8] {
    Box::leak(vec![0u8; n].into_boxed_slice())
}

fn leak_words(n: usize) -> &'static mut [u64] {
    Box::leak(vec![0u64; n].into_boxed_slice())
}

/// Interface, loopback device, sockets and a 2-slot server, moved together
/// by [`Network::poll`].
struct Net<D: BlockDevice> {
    iface: Interface,
    device: Loopback,
    sockets: SocketSet<'static>,
    server: NbdServer<'static, D, 2>,
    micros: i64,
    next_port: u16,
}

impl<D: BlockDevice> Net<D> {
    fn new(disk: D, server_buf: usize) -> Self {
        let mut device = Loopback::new(Medium::Ip);
        let mut iface = Interface::new(
            IfaceConfig::new(HardwareAddress::Ip),
            &mut device,
            Instant::ZERO,
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8)).unwrap();
        });
        let mut sockets = SocketSet::new(Vec::new());
        let handles = add_sockets(
            &mut sockets,
            [
                (leak(server_buf), leak(server_buf)),
                (leak(server_buf), leak(server_buf)),
            ],
        );
        let server = NbdServer::new(disk, "disk", NBD_PORT, ServerConfig::default(), handles);
        Self {
            iface,
            device,
            sockets,
            server,
            micros: 0,
            next_port: 49152,
        }
    }

    /// A client socket connecting to the server.
    fn connect(&mut self) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(leak(256 * 1024)),
            tcp::SocketBuffer::new(leak(256 * 1024)),
        );
        s.set_nagle_enabled(false);
        self.next_port += 1;
        s.connect(
            self.iface.context(),
            (IpAddress::v4(127, 0, 0, 1), NBD_PORT),
            self.next_port,
        )
        .unwrap();
        self.sockets.add(s)
    }

    fn client(&mut self, mode: HeaderMode) -> (NbdClient<4>, blockwire_core::client::Export) {
        let handle = self.connect();
        let mut config = Config::new("disk").unwrap();
        config.structured_replies = mode != HeaderMode::Simple;
        config.extended_headers = mode == HeaderMode::Extended;
        if mode != HeaderMode::Simple {
            config.add_meta_context("base:allocation").unwrap();
        }
        let mut client = NbdClient::new(handle, config, self.now());
        client.set_timeout(smoltcp::time::Duration::from_secs(60));
        let export = client.handshake(self).unwrap();
        assert_eq!(export.mode, mode);
        (client, export)
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.micros)
    }
}

impl<D: BlockDevice> Network<'static> for Net<D> {
    fn poll(&mut self) -> Instant {
        self.micros += 100;
        let now = self.now();
        for _ in 0..64 {
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            if !self.server.poll(&mut self.sockets, now) {
                break;
            }
        }
        now
    }

    fn sockets(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn ram_disk(size: usize) -> RamDisk<'static> {
    let words = RamDisk::map_words(size, GRANULE).unwrap();
    RamDisk::zeroed(leak(size), leak_words(words), GRANULE).unwrap()
}

fn status(
    net: &mut Net<impl BlockDevice>,
    client: &mut NbdClient<4>,
    offset: u64,
    length: u64,
) -> Vec<Extent> {
    let mut out = [Extent::new(0, 0); 64];
    let n = client.block_status(net, offset, length, &mut out).unwrap();
    out[..n].to_vec()
}

/// The full scenario on a 1 MiB RAM disk in one header mode.
fn ram_disk_scenario(mode: HeaderMode, server_buf: usize) {
    const SIZE: usize = 1 << 20;
    let mut net = Net::new(ram_disk(SIZE), server_buf);
    let mut model = vec![0u8; SIZE];
    let (mut c, export) = net.client(mode);
    assert_eq!(export.size, SIZE as u64);
    for f in [
        TransmissionFlags::SEND_FLUSH,
        TransmissionFlags::SEND_FUA,
        TransmissionFlags::SEND_TRIM,
        TransmissionFlags::SEND_WRITE_ZEROES,
        TransmissionFlags::CAN_MULTI_CONN,
    ] {
        assert!(export.has(f), "{f:?}");
    }
    assert!(!export.has(TransmissionFlags::READ_ONLY));

    if mode != HeaderMode::Simple {
        assert_eq!(
            status(&mut net, &mut c, 0, SIZE as u64),
            [Extent::new(SIZE as u64, HOLE_ZERO)]
        );
    }

    // Writes: unaligned, larger than every socket buffer, and tiny.
    let big = pattern(1, 300_000);
    c.write(&mut net, 1000, &big, false).unwrap();
    model[1000..301_000].copy_from_slice(&big);
    let small = pattern(2, 7);
    c.write(&mut net, 500_001, &small, true).unwrap();
    model[500_001..500_008].copy_from_slice(&small);

    let mut back = vec![0xa5u8; SIZE];
    c.read(&mut net, 0, &mut back).unwrap();
    assert!(back == model, "read-back after writes differs");

    // Odd-sized reads inside, across and at the end of the data.
    for (off, len) in [(999, 3), (300_999, 2), (4095, 4097), (SIZE - 1, 1)] {
        let mut b = vec![0u8; len];
        c.read(&mut net, off as u64, &mut b).unwrap();
        assert_eq!(b, model[off..off + len], "read {off}+{len}");
    }

    if mode != HeaderMode::Simple {
        // Granules 0..74 hold data (1000..301000 touches granule 73),
        // 122 holds the small write, the rest is untouched.
        let data_end = 301_000u64.div_ceil(GRANULE) * GRANULE;
        assert_eq!(
            status(&mut net, &mut c, 0, SIZE as u64),
            [
                Extent::new(data_end, 0),
                Extent::new(122 * GRANULE - data_end, HOLE_ZERO),
                Extent::new(GRANULE, 0),
                Extent::new(SIZE as u64 - 123 * GRANULE, HOLE_ZERO),
            ]
        );
    }

    // Trim and zero whole granules inside the data.
    c.trim(&mut net, 2 * GRANULE, 2 * GRANULE).unwrap();
    model[2 * GRANULE as usize..4 * GRANULE as usize].fill(0);
    c.write_zeroes(&mut net, 5 * GRANULE, GRANULE, false)
        .unwrap();
    model[5 * GRANULE as usize..6 * GRANULE as usize].fill(0);
    c.write_zeroes(&mut net, 7 * GRANULE + 10, 100, true)
        .unwrap();
    model[7 * GRANULE as usize + 10..7 * GRANULE as usize + 110].fill(0);
    c.flush(&mut net).unwrap();

    if mode != HeaderMode::Simple {
        assert_eq!(
            status(&mut net, &mut c, 0, 8 * GRANULE),
            [
                Extent::new(2 * GRANULE, 0),
                Extent::new(2 * GRANULE, HOLE_ZERO),
                Extent::new(GRANULE, 0),
                Extent::new(GRANULE, STATE_ZERO),
                Extent::new(2 * GRANULE, 0),
            ]
        );
    }

    let before = net.server.stats();
    c.read(&mut net, 0, &mut back).unwrap();
    assert!(back == model, "read-back after trim/zero differs");
    let chunks = net.server.stats().read_chunks - before.read_chunks;
    // Batching: data chunks are sized to the send buffer (at least half of
    // it), never to a packet. Structured mode adds hole chunks and the
    // data runs between them.
    let data_bound = (SIZE / (server_buf / 2)) as u64 + 16;
    assert!(chunks <= data_bound, "{chunks} chunks for a 1 MiB read");

    c.disconnect(&mut net).unwrap();
    for _ in 0..50 {
        net.poll();
    }
    assert_eq!(net.server.active(), 0);
    assert_eq!(net.server.device().data(), &model[..]);
}

#[test]
fn ram_disk_simple_replies() {
    ram_disk_scenario(HeaderMode::Simple, 64 * 1024);
}

#[test]
fn ram_disk_structured_replies() {
    ram_disk_scenario(HeaderMode::Structured, 64 * 1024);
}

#[test]
fn ram_disk_extended_headers() {
    ram_disk_scenario(HeaderMode::Extended, 64 * 1024);
}

#[test]
fn tiny_socket_buffers_wrap_and_split_everything() {
    // 1 KiB buffers: reply headers and request headers straddle the ring's
    // wrap, and every read is many chunks.
    ram_disk_scenario(HeaderMode::Extended, 1024);
    ram_disk_scenario(HeaderMode::Simple, 1024);
}

#[test]
fn two_connections_share_the_disk() {
    const SIZE: usize = 256 * 1024;
    let mut net = Net::new(ram_disk(SIZE), 16 * 1024);
    let (mut a, _) = net.client(HeaderMode::Extended);
    let (mut b, _) = net.client(HeaderMode::Structured);
    assert_eq!(net.server.active(), 2);
    let pa = pattern(3, 50_000);
    let pb = pattern(4, 50_000);
    a.write(&mut net, 0, &pa, false).unwrap();
    b.write(&mut net, 100_000, &pb, false).unwrap();
    a.flush(&mut net).unwrap();
    let mut got = vec![0u8; 50_000];
    b.read(&mut net, 0, &mut got).unwrap();
    assert_eq!(got, pa);
    a.read(&mut net, 100_000, &mut got).unwrap();
    assert_eq!(got, pb);
    a.disconnect(&mut net).unwrap();
    b.disconnect(&mut net).unwrap();
    // Both slots are free again: a third client gets in.
    for _ in 0..50 {
        net.poll();
    }
    let (mut c, _) = net.client(HeaderMode::Simple);
    c.read(&mut net, 0, &mut got).unwrap();
    assert_eq!(got, pa);
    assert_eq!(net.server.stats().connections, 3);
}

#[test]
fn static_disk_is_read_only() {
    let image: &'static [u8] = Box::leak(pattern(5, 70_000).into_boxed_slice());
    let mut net = Net::new(StaticDisk::new(image), 8 * 1024);
    let (mut c, export) = net.client(HeaderMode::Structured);
    assert!(export.has(TransmissionFlags::READ_ONLY));
    let mut back = vec![0u8; image.len()];
    c.read(&mut net, 0, &mut back).unwrap();
    assert_eq!(back, image);
    assert!(matches!(
        c.write(&mut net, 0, b"nope", false),
        Err(ClientError::Request(_))
    ));
    assert_eq!(status(&mut net, &mut c, 100, 1000), [Extent::new(1000, 0)]);
}

#[test]
fn flash_disk_read_modify_write() {
    const SIZE: usize = 256 * 1024;
    type Flash = RamFlash<'static, 4, 4, 4096>;
    let mem = leak(SIZE);
    mem.fill(0xff);
    let disk = FlashDisk::new(Flash::new(mem), leak(4096)).unwrap();
    let mut net = Net::new(disk, 8 * 1024);
    let (mut c, export) = net.client(HeaderMode::Extended);
    assert_eq!(export.size, SIZE as u64);
    let mut model = vec![0xffu8; SIZE];
    // Unaligned pieces across erase blocks, arriving in TCP-sized pieces;
    // overwrites that need erasing (bits going 0 -> 1).
    for (seed, off, len) in [
        (6u64, 100usize, 70_000usize),
        (7, 4090, 10),
        (8, 65_537, 3),
        (9, 0, 4096),
    ] {
        let p = pattern(seed, len);
        c.write(&mut net, off as u64, &p, false).unwrap();
        model[off..off + len].copy_from_slice(&p);
    }
    // Reads see the cached, not yet written back, block.
    let mut back = vec![0u8; SIZE];
    c.read(&mut net, 0, &mut back).unwrap();
    assert!(back == model);
    c.flush(&mut net).unwrap();
    let flash = net.server.device_mut();
    let erases = flash.erases();
    // 70 KB touch 18 blocks; the later writes revisit at most 3 more. One
    // erase per TCP segment would be ~50 for the first write alone.
    assert!(erases <= 24, "{erases} erases");
    c.write_zeroes(&mut net, 8192, 4096, false).unwrap();
    model[8192..12288].fill(0);
    c.disconnect(&mut net).unwrap();
    for _ in 0..50 {
        net.poll();
    }
    // Disconnecting wrote the last block back.
    let mut all = vec![0u8; SIZE];
    net.server.device_mut().read(0, &mut all).unwrap();
    assert!(all == model);
}

#[test]
fn flash_disk_writes_through_to_the_chip() {
    type Flash = RamFlash<'static, 1, 8, 1024>;
    let mem = leak(8 * 1024);
    mem.fill(0xff);
    let mut disk = FlashDisk::new(Flash::new(mem), leak(1024)).unwrap();
    let p = pattern(10, 3000);
    disk.write(500, &p).unwrap();
    disk.flush().unwrap();
    let flash = disk.into_inner().unwrap();
    assert_eq!(&flash.contents()[500..3500], &p[..]);
    assert!(flash.contents()[..500].iter().all(|&b| b == 0xff));
    // 500..3500 touches blocks 0..=3, each erased once.
    assert_eq!(flash.erases(), 4);
}

#[test]
fn flash_disk_refuses_a_wrong_erase_buffer() {
    type Flash = RamFlash<'static, 1, 8, 1024>;
    assert!(FlashDisk::new(Flash::new(leak(8192)), leak(512)).is_err());
}

#[test]
fn connection_state_is_bounded() {
    // The figure the README quotes; fails loudly if it grows.
    println!("static state per connection: {CONNECTION_STATE_SIZE} bytes");
    const { assert!(CONNECTION_STATE_SIZE < 24 * 1024) };
}
