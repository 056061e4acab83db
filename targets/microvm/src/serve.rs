//! The unikernel's job: export a RAM disk over NBD, polling forever (until
//! `q` arrives on the console).

use blockwire_smoltcp::blockwire_core::block::alloc_map::AllocState;
use blockwire_smoltcp::blockwire_core::server::ServerConfig;
use blockwire_smoltcp::{CONNECTION_STATE_SIZE, ConnectionSlot, NbdServer, RamDisk, add_socket};
use smoltcp::iface::{PollResult, SocketSet, SocketStorage};

use crate::{Platform, exit, fail, println, serial};

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
    let data = p.carve.bytes(size as usize, 4096);
    let (Some(map), Some(data)) = (map, data) else {
        fail("not enough RAM for the disk: give QEMU more with -m")
    };
    // Guest RAM starts zeroed and nothing has written past the image, so
    // the disk is all zeroes without spending boot time clearing it.
    let disk = match RamDisk::with_contents(data, map, GRANULE, AllocState::HoleZero) {
        Ok(d) => d,
        Err(_) => fail("RAM disk setup"),
    };

    // One socket (two TCP buffers) and one slot per connection, `conns=N`
    // of each, carved after the disk.
    let conns = p.options.conns;
    let buffers = conns
        .checked_mul(2 * SOCKET_BUFFER)
        .and_then(|len| p.carve.bytes(len, 64));
    let storage = p.carve.array(conns, |_| SocketStorage::EMPTY);
    let (Some(buffers), Some(storage)) = (buffers, storage) else {
        fail("not enough RAM for conns= connections: give QEMU more with -m or lower conns=")
    };
    let mut sockets = SocketSet::new(&mut storage[..]);
    let mut buffers = buffers.chunks_exact_mut(SOCKET_BUFFER);
    let slots = p.carve.array(conns, |_| {
        // Two chunks per connection were carved above.
        let (Some(rx), Some(tx)) = (buffers.next(), buffers.next()) else {
            fail("socket buffer accounting")
        };
        ConnectionSlot::new(add_socket(&mut sockets, rx, tx))
    });
    let Some(slots) = slots else {
        fail("not enough RAM for conns= connections: give QEMU more with -m or lower conns=")
    };
    let mut server = NbdServer::new(disk, "", p.options.port, ServerConfig::default(), slots);
    let ready = p.clock.micros();
    println!(
        "blockwire-microvm: serving {} bytes on port {} ({} connections, {} bytes of state each), ready {} us after calibration, TSC at {} us",
        size,
        p.options.port,
        conns,
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
