//! What a decoded request asks of the device: the core's plan of steps, and
//! how device errors become NBD errors.

use blockwire_core::block::contract::{BlockError, Zeroes};
use blockwire_core::block::stats::AcctType;
use blockwire_core::server::{Command, Fault, Request, Step};
use blockwire_core::wire::*;

#[test]
fn plans_spell_out_fua_and_empty_writes() {
    let plan = |command| Request { cookie: 1, command }.plan().collect::<Vec<_>>();
    let write = |len, fua| Command::Write {
        offset: 8,
        len,
        fua,
    };
    assert_eq!(
        plan(write(512, true)),
        [Step::Write {
            offset: 8,
            len: 512,
            fua: true
        }]
    );
    // An empty write stores nothing; with FUA it is a flush.
    assert_eq!(plan(write(0, false)), []);
    assert_eq!(plan(write(0, true)), [Step::Flush]);
    let trim = |fua| Command::Trim {
        offset: 8,
        len: 4096,
        fua,
    };
    assert_eq!(
        plan(trim(false)),
        [Step::Discard {
            offset: 8,
            len: 4096
        }]
    );
    assert_eq!(
        plan(trim(true)),
        [
            Step::Discard {
                offset: 8,
                len: 4096
            },
            Step::Flush
        ]
    );
    let how = Zeroes {
        may_unmap: true,
        fast: true,
        fua: true,
    };
    let zeroes = Command::WriteZeroes {
        offset: 8,
        len: 4096,
        how,
    };
    assert_eq!(
        plan(zeroes),
        [Step::WriteZeroes {
            offset: 8,
            len: 4096,
            how
        }]
    );
    assert_eq!(plan(Command::Flush), [Step::Flush]);
    assert_eq!(
        plan(Command::Cache { offset: 8, len: 1 }),
        [Step::Cache { offset: 8, len: 1 }]
    );
    let read = Command::Read {
        offset: 0,
        len: 1,
        no_fragment: false,
    };
    assert_eq!(plan(read), [Step::Read]);
    let r = Request {
        cookie: 1,
        command: read,
    };
    assert_eq!(r.acct_type(), Some(AcctType::Read));
    let r = Request {
        cookie: 1,
        command: zeroes,
    };
    assert_eq!(r.acct_type(), Some(AcctType::Write));
    let r = Request {
        cookie: 1,
        command: trim(true),
    };
    assert_eq!(r.acct_type(), Some(AcctType::Unmap));
    let r = Request {
        cookie: 1,
        command: Command::Cache { offset: 0, len: 1 },
    };
    assert_eq!(r.acct_type(), None);
}

#[test]
fn device_errors_reach_the_client_with_their_message() {
    let f = Fault::from(BlockError::NoSpace);
    assert_eq!(
        (f.errno, f.message),
        (Errno::ENOSPC, "no space left on the device")
    );
    let f = Fault::from(BlockError::Io(5));
    assert_eq!((f.errno, f.message), (Errno::EIO, "I/O error"));
    assert_eq!(BlockError::Io(5).to_string(), "I/O error (errno 5)");
}
