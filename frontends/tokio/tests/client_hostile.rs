//! `blockwire info`, `info --list` and `copy` against servers that
//! misbehave on purpose: terminal escapes, NULs and invalid UTF-8 in what
//! they say, an endless export list, silence in the handshake and in the
//! middle of a transfer. Each case ends, with the strings escaped or with
//! a clear error. Nothing here asserts on timing: `--timeout` is short so
//! the test is quick, and the helpers' own deadline only turns a hang
//! into a failure.
//!
//! The servers are scripted in this file, on Unix sockets, one thread per
//! connection (the shape of `client_disconnect.rs`'s scripted server).

#[path = "client_support.rs"]
mod support;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use blockwire::client::{ClientError, Connection, MAX_LISTED, NbdUri, Options};
use support::*;

const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const REPLY_MAGIC: u64 = 0x3e889045565a9;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const INFO_EXPORT: u16 = 0;
const INFO_NAME: u16 = 1;
const INFO_DESCRIPTION: u16 = 2;
const REQUEST_MAGIC: u32 = 0x25609513;
const SIMPLE_REPLY_MAGIC: u32 = 0x67446698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const SIZE: u64 = 4 << 20;

/// What a scripted server does wrong.
#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// Escapes, NUL and invalid UTF-8 in its canonical name, description
    /// and export list; otherwise a well-behaved 1 MiB read-only export.
    Evil,
    /// `NBD_OPT_LIST` answered with `NBD_REP_SERVER` forever, each entry
    /// `entry` bytes of name.
    EndlessList { entry: usize },
    /// The greeting, then nothing (it keeps the socket open and reads).
    SilentHandshake,
    /// A normal handshake, then no reply to any request (requests read).
    SilentReplies,
    /// A normal handshake, then it reads nothing at all.
    NoReading,
}

const EVIL_NAME: &[u8] = b"evil\x1b[2J\x1b]0;pwned\x07\x00tail";
const EVIL_DESC: &[u8] = b"desc\x1b[31mred\xc2\x9b\xe2\x80\xaeflip\xffhidden";
const EVIL_LISTED: &[u8] = b"listed\x1b[2J";

fn reply(s: &mut impl Write, option: u32, ty: u32, data: &[u8]) -> std::io::Result<()> {
    let mut r = REPLY_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&option.to_be_bytes());
    r.extend_from_slice(&ty.to_be_bytes());
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.extend_from_slice(data);
    s.write_all(&r)
}

fn info_reply(s: &mut impl Write, option: u32, ty: u16, data: &[u8]) -> std::io::Result<()> {
    let mut p = ty.to_be_bytes().to_vec();
    p.extend_from_slice(data);
    reply(s, option, REP_INFO, &p)
}

fn server_entry(name: &[u8], desc: &[u8]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name);
    p.extend_from_slice(desc);
    p
}

/// One connection, as `script` says. Any socket error ends it.
fn serve(mut s: UnixStream, script: Script) -> std::io::Result<()> {
    s.write_all(b"NBDMAGICIHAVEOPT\x00\x03")?;
    let mut flags = [0; 4];
    s.read_exact(&mut flags)?;
    if script == Script::SilentHandshake {
        // Swallow whatever comes, answer nothing.
        let mut sink = [0; 4096];
        while s.read(&mut sink)? > 0 {}
        return Ok(());
    }
    loop {
        let mut h = [0; 16];
        s.read_exact(&mut h)?;
        assert_eq!(&h[..8], IHAVEOPT);
        let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut payload = vec![0; len as usize];
        s.read_exact(&mut payload)?;
        match option {
            OPT_LIST => match script {
                Script::EndlessList { entry } => {
                    let name = vec![b'x'; entry];
                    // Until the client hangs up.
                    loop {
                        reply(&mut s, option, REP_SERVER, &server_entry(&name, b""))?;
                    }
                }
                _ => {
                    reply(&mut s, option, REP_SERVER, &server_entry(b"plain", b""))?;
                    reply(
                        &mut s,
                        option,
                        REP_SERVER,
                        &server_entry(EVIL_LISTED, EVIL_DESC),
                    )?;
                    reply(&mut s, option, REP_ACK, b"")?;
                }
            },
            OPT_INFO | OPT_GO => {
                let mut export = SIZE.to_be_bytes().to_vec();
                // HAS_FLAGS | READ_ONLY, unless data must be written.
                let ro: u16 = if script == Script::NoReading { 0 } else { 2 };
                export.extend_from_slice(&(1u16 | ro).to_be_bytes());
                info_reply(&mut s, option, INFO_EXPORT, &export)?;
                if script == Script::Evil {
                    info_reply(&mut s, option, INFO_NAME, EVIL_NAME)?;
                    info_reply(&mut s, option, INFO_DESCRIPTION, EVIL_DESC)?;
                }
                reply(&mut s, option, REP_ACK, b"")?;
                if option == OPT_GO {
                    break;
                }
            }
            OPT_ABORT => {
                reply(&mut s, option, REP_ACK, b"")?;
                return Ok(());
            }
            // Structured replies, extended headers, meta contexts: no.
            _ => reply(&mut s, option, REP_ERR_UNSUP, b"")?,
        }
    }
    if script == Script::NoReading {
        // Keep the socket open, read nothing: the client's writes back up.
        std::thread::sleep(TIMEOUT);
        return Ok(());
    }
    loop {
        let mut h = [0; 28];
        s.read_exact(&mut h)?;
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            REQUEST_MAGIC
        );
        let ty = u16::from_be_bytes([h[6], h[7]]);
        let cookie = &h[8..16];
        let len = u32::from_be_bytes(h[24..28].try_into().unwrap());
        match ty {
            CMD_DISC => return Ok(()),
            CMD_WRITE => {
                let mut data = vec![0; len as usize];
                s.read_exact(&mut data)?;
            }
            _ => {}
        }
        if script == Script::SilentReplies {
            continue;
        }
        let mut r = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&0u32.to_be_bytes());
        r.extend_from_slice(cookie);
        if ty == CMD_READ {
            r.resize(r.len() + len as usize, 0x5a);
        }
        s.write_all(&r)?;
    }
}

/// A scripted server on a fresh socket; its URI. It serves every
/// connection until the test process ends.
fn start(dir: &TmpDir, script: Script) -> String {
    let sock = dir.join("hostile.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || {
                let _ = serve(s, script);
            });
        }
    });
    unix_uri(&sock, "")
}

fn blockwire_fails(args: &[&str]) -> String {
    let out = run(env!("CARGO_BIN_EXE_blockwire"), args);
    assert!(
        !out.status.success(),
        "blockwire {args:?} must fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

/// No byte that could act on a terminal.
fn assert_inert(what: &str, out: &[u8]) {
    let bad = out
        .iter()
        .position(|&b| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f);
    assert!(
        bad.is_none(),
        "raw control byte in {what}: {:?}",
        String::from_utf8_lossy(out)
    );
    let s = std::str::from_utf8(out).expect("output is UTF-8");
    assert!(
        !s.chars()
            .any(|c| ('\u{80}'..='\u{9f}').contains(&c) || c == '\u{202e}'),
        "raw C1 control or bidi override in {what}: {s:?}"
    );
}

#[test]
fn server_strings_are_escaped_in_text_and_json() {
    let dir = TmpDir::new("hostile-escape");
    let uri = start(&dir, Script::Evil);
    let bin = env!("CARGO_BIN_EXE_blockwire");

    let out = run(bin, &["info", "--no-content", &uri]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_inert("info", &out.stdout);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("canonical-export-name: evil\\u001b[2J\\u001b]0;pwned\\u0007\\u0000tail"),
        "{text}"
    );
    // Invalid UTF-8 ends the text (the core keeps the valid prefix).
    assert!(
        text.contains("description: desc\\u001b[31mred\\u009b\\u202eflip\n"),
        "{text}"
    );
    assert!(!text.contains("hidden"), "{text}");

    let out = run(bin, &["info", "--json", "--no-content", &uri]);
    assert!(out.status.success());
    assert_inert("info --json", &out.stdout);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let e = &v["exports"][0];
    assert_eq!(
        e["canonical-export-name"],
        "evil\x1b[2J\x1b]0;pwned\x07\0tail"
    );
    assert_eq!(e["description"], "desc\x1b[31mred\u{9b}\u{202e}flip");

    for json in [false, true] {
        let mut args = vec!["info", "--list"];
        if json {
            args.push("--json");
        }
        args.push(&uri);
        let out = run(bin, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_inert("info --list", &out.stdout);
        if json {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
            let names: Vec<_> = v["exports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["export-name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(names, ["plain", "listed\x1b[2J"]);
        } else {
            let text = String::from_utf8(out.stdout).unwrap();
            assert!(text.contains("export=\"listed\\u001b[2J\":"), "{text}");
        }
    }

    // The content probe reads the export: the whole path works with the
    // escapes (`file` sees 0x5a bytes; if it is missing, no content line).
    let out = run(bin, &["info", &uri]);
    assert!(out.status.success());
    assert_inert("info with content", &out.stdout);
}

#[test]
fn an_endless_export_list_ends_with_an_error() {
    let dir = TmpDir::new("hostile-list");
    let uri = start(&dir, Script::EndlessList { entry: 8 });
    let err = blockwire_fails(&["info", "--list", &uri]);
    assert!(
        err.contains(&format!("listed more than {MAX_LISTED} exports")),
        "{err}"
    );
    // Entries of 4 KiB reach the byte bound first.
    let dir = TmpDir::new("hostile-list-big");
    let uri = start(&dir, Script::EndlessList { entry: 4096 });
    let err = blockwire_fails(&["info", "--list", "--json", &uri]);
    assert!(err.contains("MiB of exports"), "{err}");
}

#[test]
fn a_server_silent_in_the_handshake_times_out() {
    let dir = TmpDir::new("hostile-hs");
    let uri = start(&dir, Script::SilentHandshake);
    for args in [
        vec!["info", "--timeout", "0.5", &uri],
        vec!["info", "--list", "--timeout", "0.5", &uri],
    ] {
        let err = blockwire_fails(&args);
        assert!(
            err.contains("did not finish within 0.5 s (timeout)"),
            "{err}"
        );
    }
    let dst = dir.join("dst.img");
    let err = blockwire_fails(&[
        "copy",
        "--no-progress",
        "--timeout",
        "0.5",
        &uri,
        dst.to_str().unwrap(),
    ]);
    assert!(
        err.contains("did not finish within 0.5 s (timeout)"),
        "{err}"
    );
    // The library's default bounds the handshake too.
    assert_eq!(Options::default().handshake_timeout.as_secs(), 30);
    assert_eq!(Options::default().request_timeout, None);
}

#[test]
fn a_server_silent_mid_transfer_times_out() {
    let dir = TmpDir::new("hostile-mid");
    let uri = start(&dir, Script::SilentReplies);
    let dst = dir.join("dst.img");
    let err = blockwire_fails(&[
        "copy",
        "--no-progress",
        "--timeout",
        "0.5",
        &uri,
        dst.to_str().unwrap(),
    ]);
    assert!(err.contains("FAILED"), "{err}");
    assert!(
        err.contains("neither answered nor took anything for 0.5 s"),
        "{err}"
    );

    // The library: a request fails with the timeout, and so does the next
    // one (the connection is over).
    block_on(async {
        let uri = NbdUri::parse(&uri).unwrap();
        let opts = Options {
            request_timeout: Some(std::time::Duration::from_millis(300)),
            ..Options::default()
        };
        let c = Connection::connect(&uri, &opts).await.unwrap();
        let e = c.read_vec(0, 4096).await.expect_err("no reply ever comes");
        assert!(matches!(e, ClientError::Closed(_)), "{e}");
        assert!(e.to_string().contains("(timeout)"), "{e}");
        let e = c
            .read_vec(0, 4096)
            .await
            .expect_err("the connection is over");
        assert!(e.to_string().contains("(timeout)"), "{e}");
        assert!(c.is_closed());
    });
}

#[test]
fn a_server_that_stops_reading_times_out() {
    let dir = TmpDir::new("hostile-noread");
    let uri = start(&dir, Script::NoReading);
    let src = dir.join("src.img");
    // All data, more than the socket buffers hold.
    std::fs::write(&src, vec![0xab; SIZE as usize]).unwrap();
    // Writes back up in the socket; the writer is stuck until the
    // timeout fails the connection.
    let err = blockwire_fails(&[
        "copy",
        "--no-progress",
        "--timeout",
        "0.5",
        src.to_str().unwrap(),
        &uri,
    ]);
    assert!(
        err.contains("neither answered nor took anything for 0.5 s"),
        "{err}"
    );
}
