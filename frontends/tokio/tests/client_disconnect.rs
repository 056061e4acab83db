//! A connection ends politely: closing the last handle sends
//! `NBD_CMD_DISC` before it returns, even when the process (here, the
//! runtime) ends right after.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use blockwire::client::{Connection, NbdUri, Options};

const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const REPLY_MAGIC: u64 = 0x3e889045565a9;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REQUEST_MAGIC: u32 = 0x25609513;
const CMD_DISC: u16 = 2;

fn reply(s: &mut impl Write, option: u32, ty: u32, data: &[u8]) {
    let mut r = REPLY_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&option.to_be_bytes());
    r.extend_from_slice(&ty.to_be_bytes());
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.extend_from_slice(data);
    s.write_all(&r).unwrap();
}

/// A scripted server: refuses every option but `GO`, which opens a 1 MiB
/// export with simple replies; then reads request headers until the
/// client closes. Returns the commands it received.
fn scripted_server(listener: UnixListener) -> Vec<u16> {
    let (mut s, _) = listener.accept().unwrap();
    s.write_all(b"NBDMAGICIHAVEOPT\x00\x03").unwrap();
    let mut flags = [0; 4];
    s.read_exact(&mut flags).unwrap();
    loop {
        let mut h = [0; 16];
        s.read_exact(&mut h).unwrap();
        assert_eq!(&h[..8], IHAVEOPT);
        let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut payload = vec![0; len as usize];
        s.read_exact(&mut payload).unwrap();
        if option != OPT_GO {
            reply(&mut s, option, REP_ERR_UNSUP, b"");
            continue;
        }
        let mut info = vec![0, 0];
        info.extend_from_slice(&(1u64 << 20).to_be_bytes());
        info.extend_from_slice(&1u16.to_be_bytes());
        reply(&mut s, option, REP_INFO, &info);
        reply(&mut s, option, REP_ACK, b"");
        break;
    }
    let mut commands = Vec::new();
    let mut h = [0; 28];
    while s.read_exact(&mut h).is_ok() {
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            REQUEST_MAGIC
        );
        commands.push(u16::from_be_bytes([h[6], h[7]]));
    }
    commands
}

#[test]
fn closing_the_last_handle_sends_disc_before_returning() {
    let dir = std::env::temp_dir().join(format!("bw-disc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock: PathBuf = dir.join("s.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || scripted_server(listener));
    let uri = NbdUri::parse(&format!("nbd+unix:///?socket={}", sock.display())).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = Connection::connect(&uri, &Options::default())
            .await
            .unwrap();
        assert_eq!(c.size(), 1 << 20);
        c.close().await;
    });
    // The runtime ends here, its tasks with it: whatever was not sent by
    // now never will be.
    drop(runtime);
    let commands = server.join().unwrap();
    assert_eq!(commands, [CMD_DISC]);
    let _ = std::fs::remove_dir_all(&dir);
}
