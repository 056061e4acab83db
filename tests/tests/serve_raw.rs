//! Hostile clients over raw sockets (tests/py/nbd_raw.py, plain Python
//! `socket`, no libnbd) against the real `blockwire serve` binary, over a
//! Unix socket and TCP; plus an extended-headers session by hand.

use blockwire_tests::*;

const SCRIPT: &str = include_str!("../py/nbd_raw.py");

fn python() -> &'static str {
    if which(PYTHON).is_some() {
        PYTHON
    } else {
        "python3"
    }
}

fn raw_case(case: &str) {
    if which(python()).is_none() {
        missing("python3");
        return;
    }
    let Some(mut srv) = Server::start(&["--memory", "16M", "-n", "raw"]) else {
        return;
    };
    let addrs = [
        format!("unix:{}", srv.sock.display()),
        format!("tcp:127.0.0.1:{}", srv.port),
    ];
    for addr in &addrs {
        let args = ["-c", SCRIPT, case, addr.as_str(), "raw"];
        let out = run(python(), &args);
        assert!(
            out.status.success() && stdout_str(&out).contains("OK"),
            "{case} over {addr}:\n--- stdout ---\n{}\n--- stderr ---\n{}",
            stdout_str(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        srv.assert_running(&format!("after {case} over {addr}"));
    }
    // The server still serves a well-behaved client.
    if need(&["nbdinfo"]) {
        for (t, uri) in srv.uris() {
            let out = run("nbdinfo", &[uri.as_str()]);
            assert!(
                out.status.success(),
                "after {case}: {t}: {}",
                explain("nbdinfo", &[&uri], &out)
            );
        }
    }
}

#[test]
fn bad_option_magic_closes_connection() {
    raw_case("bad_option_magic");
}

#[test]
fn huge_option_length_closes_without_reading() {
    raw_case("huge_option_length");
}

#[test]
fn unknown_option_is_unsup_and_stays_in_sync() {
    raw_case("unknown_option_then_list");
}

#[test]
fn go_with_name_length_overflow_is_invalid_and_stays_in_sync() {
    raw_case("go_name_length_overflow");
}

#[test]
fn write_claiming_2_gib_gets_error_and_disconnect() {
    raw_case("write_claiming_2g");
}

#[test]
fn extended_headers_by_hand() {
    if is_standin() && !qemu_has_extended_headers("qemu-nbd") {
        return;
    }
    raw_case("extended_headers");
}
