//! The smoltcp NBD server on a Linux TAP device, serving a RAM disk: the
//! code path of the bare-metal targets, run as an ordinary process so it
//! can be tested with the real NBD tools.

mod args;

use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Instant as StdInstant;

use blockwire_smoltcp::blockwire_core::server::ServerConfig;
use blockwire_smoltcp::{CONNECTION_STATE_SIZE, ConnectionSlot, NbdServer, RamDisk, add_socket};
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{Medium, TunTapInterface, wait};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

/// TCP buffers per socket and direction: a 256 KiB window keeps a LAN
/// link busy, and smoltcp scales the window for buffers over 64 KiB.
const SOCKET_BUFFER: usize = 256 * 1024;
/// Allocation-map granule of the RAM disk.
const GRANULE: u64 = 4096;

fn main() -> ExitCode {
    let args = match args::Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("blockwire-linux-tap: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &args::Args) -> Result<(), String> {
    let mut device = TunTapInterface::new(&args.tap, Medium::Ethernet)
        .map_err(|e| format!("opening TAP {}: {e}", args.tap))?;
    let fd = device.as_raw_fd();
    let epoch = StdInstant::now();
    let now = || Instant::from_micros(epoch.elapsed().as_micros() as i64);

    let mut config = Config::new(EthernetAddress(args.mac).into());
    config.random_seed = epoch.elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
    let mut iface = Interface::new(config, &mut device, now());
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(args.ip), args.prefix));
    });
    if let Some(gw) = args.gateway {
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::from(gw))
            .map_err(|e| format!("route via {gw}: {e:?}"))?;
    }

    // The disk and buffers live for the whole process; leaking them gives
    // the 'static borrows a bare-metal target gets from statics.
    let data = Box::leak(vec![0u8; args.size].into_boxed_slice());
    let words = RamDisk::map_words(args.size, GRANULE).ok_or("bad disk size")?;
    let map = Box::leak(vec![0u64; words].into_boxed_slice());
    let disk = RamDisk::with_contents(
        data,
        map,
        GRANULE,
        // vec![0; n] is zeroed memory: no need to clear it again.
        blockwire_smoltcp::blockwire_core::block::alloc_map::AllocState::HoleZero,
    )
    .map_err(|e| format!("RAM disk: {e:?}"))?;

    let storage: &'static mut [SocketStorage<'static>] =
        Vec::leak((0..args.conns).map(|_| SocketStorage::EMPTY).collect());
    let mut sockets = SocketSet::new(storage);
    let slots: Vec<ConnectionSlot<'static>> = (0..args.conns)
        .map(|_| {
            let rx = Vec::leak(vec![0u8; SOCKET_BUFFER]);
            let tx = Vec::leak(vec![0u8; SOCKET_BUFFER]);
            ConnectionSlot::new(add_socket(&mut sockets, rx, tx))
        })
        .collect();
    let mut server = NbdServer::new(
        disk,
        "",
        args.port,
        ServerConfig::default(),
        Vec::leak(slots),
    );

    eprintln!(
        "blockwire-linux-tap: serving {} bytes on {}:{} via {} ({} connections, {} bytes of state each)",
        args.size, args.ip, args.port, args.tap, args.conns, CONNECTION_STATE_SIZE
    );
    let mut last_report = (0, 0);
    loop {
        let t = now();
        iface.poll(t, &mut device, &mut sockets);
        while server.poll(&mut sockets, t) {
            iface.poll(t, &mut device, &mut sockets);
        }
        // Report when a client comes or goes, not per request.
        let report = (server.stats().connections, server.busy());
        if report != last_report {
            eprintln!(
                "blockwire-linux-tap: {} busy, {:?}",
                report.1,
                server.stats()
            );
            last_report = report;
        }
        let delay = [
            iface.poll_delay(t, &sockets),
            server
                .poll_at()
                .map(|at| if at > t { at - t } else { Duration::ZERO }),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Duration::from_secs(1));
        wait(fd, Some(delay)).map_err(|e| format!("waiting on {}: {e}", args.tap))?;
    }
}
