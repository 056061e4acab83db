//! The unikernel's job: export a RAM disk over NBD, polling forever (until
//! `q` arrives on the console).

use blockwire_smoltcp::blockwire_core::block::alloc_map::AllocState;
use blockwire_smoltcp::blockwire_core::server::ServerConfig;
use blockwire_smoltcp::{CONNECTION_STATE_SIZE, NbdServer, RamDisk, add_sockets};
use smoltcp::iface::{PollResult, SocketSet, SocketStorage};

use crate::{Platform, exit, fail, println, serial};

/// Connections served at once.
const CONNECTIONS: usize = 2;
/// TCP buffers per connection and direction.
const SOCKET_BUFFER: usize = 128 * 1024;
/// Allocation-map granule of the RAM disk.
const GRANULE: u64 = 4096;

pub fn run(p: &mut Platform) -> ! {
    let size = p.options.size;
    let Some(words) = usize::try_from(size)
        .ok()
        .and_then(|s| RamDisk::map_words(s, GRANULE))
    else {
        fail("bad disk size")
    };
    let map = p.carve.words(words);
    let buffers = core::array::from_fn(|_| {
        (
            p.carve.bytes(SOCKET_BUFFER, 64),
            p.carve.bytes(SOCKET_BUFFER, 64),
        )
    });
    let data = p.carve.bytes(size as usize, 4096);
    let (Some(map), Some(data)) = (map, data) else {
        fail("not enough RAM for the disk: give QEMU more with -m")
    };
    let buffers = buffers.map(|(rx, tx)| match (rx, tx) {
        (Some(rx), Some(tx)) => (rx, tx),
        _ => fail("not enough RAM for socket buffers"),
    });
    // Guest RAM starts zeroed and nothing has written past the image, so
    // the disk is all zeroes without spending boot time clearing it.
    let disk = match RamDisk::with_contents(data, map, GRANULE, AllocState::HoleZero) {
        Ok(d) => d,
        Err(_) => fail("RAM disk setup"),
    };

    let mut storage = [SocketStorage::EMPTY; CONNECTIONS];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let handles = add_sockets::<CONNECTIONS>(&mut sockets, buffers);
    let mut server = NbdServer::new(disk, "", p.options.port, ServerConfig::default(), handles);
    let ready = p.clock.micros();
    println!(
        "blockwire-microvm: serving {} bytes on port {} ({} connections, {} bytes of state each), ready {} us after calibration, TSC at {} us",
        size,
        p.options.port,
        CONNECTIONS,
        CONNECTION_STATE_SIZE,
        ready,
        p.clock.micros_since_reset()
    );
    let mut first = true;
    let mut next_console_check = 0;
    loop {
        let now = p.now();
        let mut busy = p.iface.poll(now, &mut p.net, &mut sockets) != PollResult::None;
        while server.poll(&mut sockets, now) {
            busy = true;
            p.iface.poll(now, &mut p.net, &mut sockets);
        }
        if !busy {
            // Idle. Under TCG `pause` ends the translated-code loop, which
            // lets QEMU's main loop (and its user network) in; without it
            // a spinning guest delays every new connection by ~0.5 s.
            core::hint::spin_loop();
        }
        // `q` on the console powers off: how a test ends the VM. Checked
        // every 20 ms only: each port read stops the vCPU and takes QEMU's
        // big lock, and polling it flat out starves QEMU's main loop (and
        // with it the user network) by hundreds of milliseconds.
        let t = p.clock.micros();
        if t >= next_console_check {
            next_console_check = t + 20_000;
            if serial::Serial::try_read() == Some(b'q') {
                println!("blockwire-microvm: {:?}", server.stats());
                exit::exit(0);
            }
        }
        if first && server.stats().connections > 0 {
            first = false;
            println!(
                "blockwire-microvm: first connection {} us after calibration, TSC at {} us",
                p.clock.micros(),
                p.clock.micros_since_reset()
            );
        }
    }
}
