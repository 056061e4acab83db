//! Server and client in one process over smoltcp's loopback device:
//! handshake, writes, reads, block status, trim and zeroing, byte-exact
//! against a model, in all three header modes and for every device kind.

use blockwire_core::block::Extent;
use blockwire_core::block::contract::{STATE_HOLE, STATE_ZERO};
use blockwire_core::client::Config;
use blockwire_core::server::ServerConfig;
use blockwire_core::wire::{HeaderMode, TransmissionFlags};
use blockwire_smoltcp::{
    BlockDevice, CLOSE_DEADLINE, CONNECTION_STATE_SIZE, ClientError, ConnectionSlot, FlashDisk,
    KEEPALIVE_INTERVAL, MULTI_CONN_MIN_SLOTS, NBD_PORT, NbdClient, NbdServer, Network,
    PEER_TIMEOUT, RamDisk, RamFlash, StaticDisk, add_socket,
};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Loopback, Medium, TxToken};
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

/// The loopback device, losing every packet to or from one TCP port: a
/// peer that went silent (its host died, or the path to it).
struct Lossy {
    inner: Loopback,
    silent_port: Option<u16>,
}

struct LossyTx<'a> {
    inner: <Loopback as Device>::TxToken<'a>,
    silent_port: Option<u16>,
}

/// Whether an IPv4 packet (the loopback is `Medium::Ip`) is TCP to or
/// from `port`.
fn touches(packet: &[u8], port: u16) -> bool {
    let ihl = usize::from(packet[0] & 15) * 4;
    packet.len() >= ihl + 4
        && packet[9] == 6
        && (packet[ihl..ihl + 2] == port.to_be_bytes()
            || packet[ihl + 2..ihl + 4] == port.to_be_bytes())
}

impl TxToken for LossyTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let r = f(&mut packet);
        if !self.silent_port.is_some_and(|p| touches(&packet, p)) {
            self.inner.consume(len, |buf| buf.copy_from_slice(&packet));
        }
        r
    }
}

impl Device for Lossy {
    type RxToken<'a> = <Loopback as Device>::RxToken<'a>;
    type TxToken<'a> = LossyTx<'a>;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let silent_port = self.silent_port;
        let (rx, tx) = self.inner.receive(now)?;
        Some((
            rx,
            LossyTx {
                inner: tx,
                silent_port,
            },
        ))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        let silent_port = self.silent_port;
        let tx = self.inner.transmit(now)?;
        Some(LossyTx {
            inner: tx,
            silent_port,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

/// Interface, loopback device, sockets and a server (4 slots unless said
/// otherwise), moved together by [`Network::poll`].
struct Net<D: BlockDevice> {
    iface: Interface,
    device: Lossy,
    /// Simulated microseconds per poll.
    tick: i64,
    sockets: SocketSet<'static>,
    server: NbdServer<'static, 'static, D>,
    micros: i64,
    next_port: u16,
}

impl<D: BlockDevice> Net<D> {
    fn new(disk: D, server_buf: usize) -> Self {
        Self::with_slots(disk, server_buf, MULTI_CONN_MIN_SLOTS)
    }

    fn with_slots(disk: D, server_buf: usize, slots: usize) -> Self {
        let mut device = Lossy {
            inner: Loopback::new(Medium::Ip),
            silent_port: None,
        };
        let mut iface = Interface::new(
            IfaceConfig::new(HardwareAddress::Ip),
            &mut device,
            Instant::ZERO,
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8)).unwrap();
        });
        let mut sockets = SocketSet::new(Vec::new());
        let slots: Vec<ConnectionSlot<'static>> = (0..slots)
            .map(|_| {
                ConnectionSlot::new(add_socket(&mut sockets, leak(server_buf), leak(server_buf)))
            })
            .collect();
        let slots = Box::leak(slots.into_boxed_slice());
        let server = NbdServer::new(disk, "disk", NBD_PORT, ServerConfig::default(), slots);
        Self {
            iface,
            device,
            tick: 100,
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
        self.micros += self.tick;
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

/// Poll until `done` holds, for at most `limit` of the simulated clock;
/// returns the simulated time it took, or `None` past the limit.
fn poll_until<D: BlockDevice>(
    net: &mut Net<D>,
    limit: smoltcp::time::Duration,
    mut done: impl FnMut(&mut Net<D>) -> bool,
) -> Option<smoltcp::time::Duration> {
    let start = net.poll();
    loop {
        if done(net) {
            return Some(net.now() - start);
        }
        if net.poll() - start > limit {
            return None;
        }
    }
}

fn tcp_state<D: BlockDevice>(net: &mut Net<D>, h: SocketHandle) -> tcp::State {
    net.sockets.get_mut::<tcp::Socket>(h).state()
}

#[test]
fn multi_conn_is_advertised_only_with_enough_slots() {
    let mut few = Net::with_slots(ram_disk(64 * 1024), 16 * 1024, MULTI_CONN_MIN_SLOTS - 1);
    let (_, export) = few.client(HeaderMode::Simple);
    assert!(!export.has(TransmissionFlags::CAN_MULTI_CONN));
    let mut enough = Net::with_slots(ram_disk(64 * 1024), 16 * 1024, MULTI_CONN_MIN_SLOTS);
    let (_, export) = enough.client(HeaderMode::Simple);
    assert!(export.has(TransmissionFlags::CAN_MULTI_CONN));
}

#[test]
fn a_full_server_refuses_before_the_greeting() {
    let mut net = Net::with_slots(ram_disk(64 * 1024), 16 * 1024, 2);
    let (mut a, _) = net.client(HeaderMode::Simple);
    let (mut b, _) = net.client(HeaderMode::Structured);
    assert_eq!(net.server.busy(), 2);
    // A third client: no socket listens, so its SYN is answered with a
    // reset. It must never reach ESTABLISHED (be accepted, then dropped).
    let h = net.connect();
    let refused = poll_until(&mut net, smoltcp::time::Duration::from_secs(1), |n| {
        let s = tcp_state(n, h);
        assert_ne!(s, tcp::State::Established, "accepted while full");
        s == tcp::State::Closed
    });
    assert!(refused.is_some(), "neither served nor refused");
    assert_eq!(net.server.stats().connections, 2);
    // The connections being served are untouched...
    let data = pattern(6, 10_000);
    b.write(&mut net, 0, &data, false).unwrap();
    // ...and once one leaves, the next client is served.
    a.disconnect(&mut net).unwrap();
    let (mut c, _) = net.client(HeaderMode::Simple);
    let mut got = vec![0u8; data.len()];
    c.read(&mut net, 0, &mut got).unwrap();
    assert_eq!(got, data);
}

#[test]
fn a_slot_listens_again_as_soon_as_its_client_is_done() {
    // One slot, many clients in turn: each one's slot must be free within
    // a few round trips of its NBD_CMD_DISC (never TIME-WAIT's 10 s nor
    // the close deadline).
    let mut net = Net::with_slots(ram_disk(64 * 1024), 16 * 1024, 1);
    let quick = smoltcp::time::Duration::from_millis(50);
    assert!(quick < CLOSE_DEADLINE);
    for i in 0..5u8 {
        let (mut c, _) = net.client(HeaderMode::Structured);
        c.write(&mut net, 0, &[i; 512], false).unwrap();
        c.disconnect(&mut net).unwrap();
        let t = poll_until(&mut net, quick, |n| n.server.busy() == 0);
        assert!(t.is_some(), "client {i}: slot still busy after {quick}");
    }
    assert_eq!(net.server.stats().connections, 5);
}

#[test]
fn a_slot_the_server_closed_first_is_not_held_in_time_wait() {
    // NBD_OPT_ABORT: the server acknowledges and closes first, while the
    // client keeps its socket open. The acknowledgement must arrive, and
    // the slot must listen again at once.
    let mut net = Net::with_slots(ram_disk(64 * 1024), 16 * 1024, 1);
    let h = net.connect();
    let mut got = Vec::new();
    let mut sent = false;
    let limit = smoltcp::time::Duration::from_millis(100);
    let done = poll_until(&mut net, limit, |n| {
        let s = n.sockets.get_mut::<tcp::Socket>(h);
        while let Ok(chunk) = s.recv(|b| (b.len(), b.to_vec())) {
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        if !sent && got.len() >= 18 {
            let mut msg = vec![0, 0, 0, 3]; // fixed newstyle, no zeroes
            msg.extend_from_slice(&0x4948_4156_454F_5054u64.to_be_bytes());
            msg.extend_from_slice(&2u32.to_be_bytes()); // NBD_OPT_ABORT
            msg.extend_from_slice(&0u32.to_be_bytes());
            s.send_slice(&msg).unwrap();
            sent = true;
        }
        sent && got.len() >= 18 + 20 && n.server.busy() == 0
    });
    assert!(done.is_some(), "slot not free, got {} bytes", got.len());
    // The reply: option-reply magic, NBD_OPT_ABORT, NBD_REP_ACK.
    assert_eq!(&got[18..26], &0x0003_e889_0455_65a9u64.to_be_bytes());
    assert_eq!(&got[26..34], &[0, 0, 0, 2, 0, 0, 0, 1]);
    // The next client is served on the freed slot.
    let (_, export) = net.client(HeaderMode::Simple);
    assert_eq!(export.size, 64 * 1024);
}

#[test]
fn a_client_gone_mid_write_frees_its_slot() {
    // A client that closes its socket halfway through a write's payload
    // (a killed nbdcopy does this) can never finish the request: the slot
    // must not wait for the rest of it.
    let mut net = Net::with_slots(ram_disk(256 * 1024), 16 * 1024, 1);
    let (c, _) = net.client(HeaderMode::Simple);
    let h = c.handle();
    let mut req = Vec::new();
    req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes()); // flags
    req.extend_from_slice(&1u16.to_be_bytes()); // NBD_CMD_WRITE
    req.extend_from_slice(&7u64.to_be_bytes()); // cookie
    req.extend_from_slice(&0u64.to_be_bytes()); // offset
    req.extend_from_slice(&(64 * 1024u32).to_be_bytes());
    req.extend_from_slice(&[0xab; 1000]); // 1000 of 65536 payload bytes
    {
        let s = net.sockets.get_mut::<tcp::Socket>(h);
        s.send_slice(&req).unwrap();
        s.close();
    }
    let t = poll_until(&mut net, smoltcp::time::Duration::from_secs(1), |n| {
        n.server.busy() == 0
    });
    assert!(t.is_some(), "slot held by a client that left mid-write");
    let (_, export) = net.client(HeaderMode::Simple);
    assert_eq!(export.size, 256 * 1024);
}

fn client_port<D: BlockDevice>(net: &mut Net<D>, h: SocketHandle) -> u16 {
    let s = net.sockets.get::<tcp::Socket>(h);
    s.local_endpoint().unwrap().port
}

#[test]
fn a_silent_client_is_reaped_by_keepalive_and_a_live_one_is_not() {
    let mut net = Net::with_slots(ram_disk(64 * 1024), 16 * 1024, 2);
    let (live, _) = net.client(HeaderMode::Simple);
    let (silent, _) = net.client(HeaderMode::Simple);
    let port = client_port(&mut net, silent.handle());
    net.device.silent_port = Some(port);
    net.tick = 10_000; // 10 ms a poll: minutes of simulated idleness
    let t = poll_until(&mut net, PEER_TIMEOUT * 2, |n| n.server.busy() == 1);
    let t = t.expect("a silent client still holds its slot");
    // Reaped by the peer timeout (keep-alive probes unanswered), not by
    // some shorter idle rule that would also drop live clients.
    assert!(t >= PEER_TIMEOUT - KEEPALIVE_INTERVAL, "reaped after {t}");
    // The idle live client answers the probes and keeps its slot.
    assert!(
        poll_until(&mut net, PEER_TIMEOUT * 4, |n| n.server.busy() == 0).is_none(),
        "an idle live client was dropped"
    );
    net.tick = 100;
    let mut buf = [0u8; 512];
    let mut live = live;
    live.read(&mut net, 0, &mut buf).unwrap();
}

#[test]
fn a_vanished_client_is_reaped_within_the_peer_timeout() {
    // The client's socket disappears without a FIN or RST reaching the
    // server (its host died): keep-alive probes go unanswered... except
    // that on loopback smoltcp answers a segment for a socket it no longer
    // has with a reset, which is what a rebooted peer does. Either way
    // the slot must come back, at the latest after PEER_TIMEOUT.
    let mut net = Net::with_slots(ram_disk(64 * 1024), 16 * 1024, 1);
    let (c, _) = net.client(HeaderMode::Simple);
    net.sockets.remove(c.handle());
    let limit = PEER_TIMEOUT + CLOSE_DEADLINE;
    let t = poll_until(&mut net, limit, |n| n.server.busy() == 0);
    assert!(t.is_some(), "slot still held after {limit}");
}
