//! blockwire-microvm: a bare-metal NBD server for QEMU's microvm machine.
//!
//! QEMU loads this ELF and enters it through its PVH note ([`boot`]); the
//! kernel reads its command line, finds the virtio-mmio network card,
//! carves a RAM disk out of guest memory and serves it over NBD with the
//! smoltcp frontend, polling forever. With the `netboot` feature it is an
//! NBD *client* instead: it loads a kernel from a disk on the host.
#![no_std]
#![no_main]

mod boot;
mod clock;
mod cmdline;
mod exit;
mod memory;
#[cfg(feature = "netboot")]
mod netboot;
mod port;
mod serial;
#[cfg(not(feature = "netboot"))]
mod serve;
mod start_info;
mod virtio_hal;
mod virtio_net;

use smoltcp::iface::{Config, Interface};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};

use crate::clock::Clock;
use crate::memory::Carve;
use crate::start_info::BootInfo;
use crate::virtio_net::VirtioNet;

/// DMA pool for the virtqueues (two queues of 32 descriptors need a few
/// pages).
const DMA_POOL: usize = 64 * 1024;

/// Everything the network needs, set up from the boot information.
pub struct Platform {
    pub clock: Clock,
    pub carve: Carve,
    pub net: VirtioNet,
    pub iface: Interface,
    pub options: cmdline::Options<'static>,
    /// The boot information, for a kernel booted from here.
    #[cfg_attr(not(feature = "netboot"), allow(dead_code))]
    pub info: BootInfo,
}

impl Platform {
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.clock.micros() as i64)
    }
}

fn fail(what: &str) -> ! {
    println!("blockwire-microvm: {what}");
    exit::exit(2)
}

fn bring_up(start_info: u32) -> Platform {
    serial::Serial::init();
    let Some(info) = BootInfo::read(u64::from(start_info)) else {
        fail("no PVH start info")
    };
    let options = cmdline::parse(info.cmdline, |bad| println!("ignoring malformed {bad}"));
    let Some(clock) = Clock::calibrate() else {
        fail("no PIT to calibrate the TSC against")
    };
    let kernel_end = memory::kernel_end();
    let Some((_, region_end)) = info.ram_around(kernel_end) else {
        fail("the kernel is not in RAM according to the memory map")
    };
    let mut carve = Carve::after_kernel(region_end);
    let Some(pool) = carve.bytes(DMA_POOL, 4096) else {
        fail("no memory for DMA")
    };
    virtio_hal::give_pool(pool);
    let Some(dev) = virtio_net::find() else {
        fail("no virtio-net device on the virtio-mmio window")
    };
    let Some(bufs) = carve.bytes(2 * virtio_net::QUEUE * 2048, 4096) else {
        fail("no memory for network buffers")
    };
    let mut net = VirtioNet::new(dev, bufs);

    virtio_net::announce(&mut net, options.ip);
    let mut config = Config::new(EthernetAddress(net.mac()).into());
    config.random_seed = clock.micros_since_reset() ^ clock.hz();
    let now = Instant::from_micros(clock.micros() as i64);
    let mut iface = Interface::new(config, &mut net, now);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(options.ip), options.prefix));
    });
    if let Some(gw) = options.gateway {
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
    }
    println!(
        "blockwire-microvm: {} mac {} ip {}/{} tsc {} MHz",
        env!("CARGO_PKG_VERSION"),
        EthernetAddress(net.mac()),
        options.ip,
        options.prefix,
        clock.hz() / 1_000_000
    );
    Platform {
        clock,
        carve,
        net,
        iface,
        options,
        info,
    }
}

/// Entered from [`boot`] in long mode with the PVH start info's address.
#[unsafe(no_mangle)]
pub extern "C" fn kernel_main(start_info: u32) -> ! {
    let mut p = bring_up(start_info);
    #[cfg(feature = "netboot")]
    netboot::run(&mut p);
    #[cfg(not(feature = "netboot"))]
    serve::run(&mut p);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("blockwire-microvm: panic: {info}");
    exit::exit(3)
}
