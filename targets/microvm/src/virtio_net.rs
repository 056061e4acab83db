//! smoltcp's `Device` over a virtio-mmio network card, heap-free: fixed
//! rings of receive and transmit buffers that the device owns while a
//! request is outstanding.

use core::ptr::NonNull;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use crate::virtio_hal::IdentityHal;

/// Descriptors per queue, and buffers per direction.
pub const QUEUE: usize = 32;
/// One Ethernet frame plus the virtio-net header, rounded up (the driver
/// wants at least 1526 bytes for a receive buffer).
const BUF: usize = 2048;
/// microvm's virtio-mmio window: transports of 512 bytes from here.
const MMIO_BASE: u64 = 0xfeb0_0000;
const MMIO_SIZE: usize = 0x200;
const MMIO_SLOTS: u64 = 32;

type Raw = VirtIONetRaw<IdentityHal, MmioTransport<'static>, QUEUE>;

/// The first virtio network device on the microvm's MMIO window.
pub fn find() -> Option<Raw> {
    for slot in 0..MMIO_SLOTS {
        let addr = MMIO_BASE + slot * MMIO_SIZE as u64;
        let header = NonNull::new(addr as *mut VirtIOHeader)?;
        // SAFETY: microvm maps virtio-mmio transports (or nothing, which
        // reads as zero and fails the magic check) at these addresses,
        // identity-mapped; each is used by at most this one transport.
        let Ok(transport) = (unsafe { MmioTransport::new(header, MMIO_SIZE) }) else {
            continue;
        };
        if transport.device_type() == DeviceType::Network {
            return VirtIONetRaw::new(transport).ok();
        }
    }
    None
}

pub struct VirtioNet {
    rx: RxRing,
    tx: TxRing,
}

struct RxRing {
    bufs: &'static mut [[u8; BUF]],
    /// Device token of each buffer while the device holds it.
    tokens: [Option<u16>; QUEUE],
    /// Buffer handed to smoltcp last time, to give back to the device.
    lent: Option<usize>,
}

struct TxRing {
    dev: Raw,
    bufs: &'static mut [[u8; BUF]],
    /// Device token and length of each buffer in flight.
    inflight: [Option<(u16, usize)>; QUEUE],
}

impl VirtioNet {
    /// Drive `dev` with `2 * QUEUE` buffers from `memory`
    /// (`2 * QUEUE * 2048` bytes).
    pub fn new(mut dev: Raw, memory: &'static mut [u8]) -> Self {
        let (rx_mem, tx_mem) = memory.split_at_mut(QUEUE * BUF);
        let as_bufs = |m: &'static mut [u8]| {
            let (bufs, _) = m.as_chunks_mut::<BUF>();
            bufs
        };
        let rx_bufs = as_bufs(rx_mem);
        let tx_bufs = as_bufs(tx_mem);
        let mut tokens = [None; QUEUE];
        for (i, buf) in rx_bufs.iter_mut().enumerate() {
            // SAFETY: the buffer stays untouched by us until the device
            // returns it through poll_receive/receive_complete.
            tokens[i] = unsafe { dev.receive_begin(buf) }.ok();
        }
        dev.disable_interrupts();
        Self {
            rx: RxRing {
                bufs: rx_bufs,
                tokens,
                lent: None,
            },
            tx: TxRing {
                dev,
                bufs: tx_bufs,
                inflight: [None; QUEUE],
            },
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.tx.dev.mac_address()
    }

    /// Give the buffer smoltcp read last back to the device.
    fn recycle(&mut self) {
        if let Some(i) = self.rx.lent.take() {
            // SAFETY: as in `new`: ours again only once the device is done.
            self.rx.tokens[i] = unsafe { self.tx.dev.receive_begin(&mut self.rx.bufs[i]) }.ok();
        }
    }
}

impl TxRing {
    /// Take back buffers the device has sent.
    fn reclaim(&mut self) {
        while let Some(token) = self.dev.poll_transmit() {
            let Some(i) = self
                .inflight
                .iter()
                .position(|s| matches!(s, Some((t, _)) if *t == token))
            else {
                break;
            };
            let (_, len) = self.inflight[i].take().unwrap_or((0, 0));
            // SAFETY: the same buffer (and length) given to transmit_begin.
            let _ = unsafe { self.dev.transmit_complete(token, &self.bufs[i][..len]) };
        }
    }

    fn free_slot(&mut self) -> usize {
        loop {
            self.reclaim();
            if let Some(i) = self.inflight.iter().position(Option::is_none) {
                return i;
            }
            core::hint::spin_loop();
        }
    }
}

pub struct Rx<'a>(&'a [u8]);
pub struct Tx<'a>(&'a mut TxRing);

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let ring = self.0;
        let i = ring.free_slot();
        let hdr = ring.dev.fill_buffer_header(&mut ring.bufs[i]).unwrap_or(0);
        let total = (hdr + len).min(BUF);
        let r = f(&mut ring.bufs[i][hdr..total]);
        // SAFETY: the buffer is not touched again until reclaim() gets
        // it back from the device.
        match unsafe { ring.dev.transmit_begin(&ring.bufs[i][..total]) } {
            Ok(token) => ring.inflight[i] = Some((token, total)),
            Err(_) => {} // queue full despite the free slot: the frame is dropped, TCP resends
        }
        r
    }
}

impl Device for VirtioNet {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        self.recycle();
        let token = self.tx.dev.poll_receive()?;
        let i = self.rx.tokens.iter().position(|t| *t == Some(token))?;
        self.rx.tokens[i] = None;
        // Recycled on the next call whatever happens now.
        self.rx.lent = Some(i);
        // SAFETY: the device returned this buffer under this token.
        let (hdr, len) =
            unsafe { self.tx.dev.receive_complete(token, &mut self.rx.bufs[i]) }.ok()?;
        Some((Rx(&self.rx.bufs[i][hdr..hdr + len]), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        self.recycle();
        self.tx.reclaim();
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(QUEUE);
        caps
    }
}

/// Send a gratuitous ARP for `ip`, so the neighbours (QEMU's user network
/// among them) learn our MAC now rather than when a first connection
/// needs it — slirp otherwise drops the SYN it cannot deliver and retries
/// only half a second later.
pub fn announce(net: &mut VirtioNet, ip: smoltcp::wire::Ipv4Address) {
    use smoltcp::wire::{
        ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
        EthernetRepr,
    };
    let mac = EthernetAddress(net.mac());
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: ip,
    };
    let eth = EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let len = eth.buffer_len() + arp.buffer_len();
    let Some(tx) = net.transmit(Instant::ZERO) else {
        return;
    };
    tx.consume(len, |buf| {
        let mut frame = EthernetFrame::new_unchecked(buf);
        eth.emit(&mut frame);
        arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    });
}
