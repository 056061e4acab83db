//! The JSON front end end to end: syntax → visitor → typed options, and
//! the errors, worded as qemu-storage-daemon 7.2 words them (each message
//! below was taken from `qemu-storage-daemon --blockdev/--export/--object`
//! 7.2.22 given the same input; tests/tests/serve_qapi.rs checks the
//! shared ones against the real binary).

use std::path::PathBuf;

use blockwire_core::block::blkdebug::{BlkdebugEvent, InjectError, SetState};
use blockwire_core::block::zero_policy::{DetectZeroes, Discard};

use super::*;
use crate::block::export_options::BitmapRef;
use crate::block::options::{
    Aio, BlockdevRef, CacheOptions, DriverOptions, OnOffAuto, SocketAddress,
};

fn bd(s: &str) -> BlockdevOptions {
    parse_blockdev_arg(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn bd_err(s: &str) -> String {
    match parse_blockdev_arg(s) {
        Ok(o) => panic!("{s}: accepted as {o:?}"),
        Err(e) => e.to_string(),
    }
}

fn inline(r: &BlockdevRef) -> &BlockdevOptions {
    match r {
        BlockdevRef::Inline(o) => o,
        BlockdevRef::Name(n) => panic!("expected an inline node, got {n:?}"),
    }
}

#[test]
fn json_and_keyval_give_the_same_options() {
    let pairs = [
        (
            r#"{"driver":"file","node-name":"f0","filename":"/tmp/x.img","aio":"threads","locking":"off","read-only":true,"discard":"unmap","cache":{"direct":false,"no-flush":true},"detect-zeroes":"unmap"}"#,
            "file,node-name=f0,filename=/tmp/x.img,aio=threads,locking=off,read-only=on,discard=unmap,cache.direct=off,cache.no-flush=on,detect-zeroes=unmap",
        ),
        (
            r#"{"driver":"raw","node-name":"r","offset":1048576,"size":4096,"file":{"driver":"null-co","size":8388608,"latency-ns":5,"read-zeroes":true}}"#,
            "raw,node-name=r,offset=0x100000,size=4096,file.driver=null-co,file.size=8388608,file.latency-ns=5,file.read-zeroes=on",
        ),
        (
            r#"{"driver":"blkdebug","node-name":"d","image":"f0","align":4096,"max-transfer":65536,"inject-error":[{"event":"read","errno":28,"sector":8,"once":true},{"event":"write_aio","state":2,"immediately":true}],"set-state":[{"event":"flush","new_state":2}]}"#,
            "blkdebug,node-name=d,image=f0,align=4096,max-transfer=65536,inject-error.0.event=read,inject-error.0.errno=28,inject-error.0.sector=8,inject-error.0.once=on,inject-error.1.event=write_aio,inject-error.1.state=2,inject-error.1.immediately=on,set-state.0.event=flush,set-state.0.new_state=2",
        ),
        (
            r#"{"driver":"nbd","node-name":"n","server":{"type":"inet","host":"::1","port":"10809"},"export":"e","tls-creds":"tls0","tls-hostname":"h","reconnect-delay":5}"#,
            "nbd,node-name=n,server.type=inet,server.host=::1,server.port=10809,export=e,tls-creds=tls0,tls-hostname=h,reconnect-delay=5",
        ),
        (
            r#"{"driver":"blockwire-cow","node-name":"c","backing":"base","file":{"driver":"blockwire-ram","size":1073741824},"cluster-size":131072}"#,
            "blockwire-cow,node-name=c,backing=base,file.driver=blockwire-ram,file.size=1G,cluster-size=128k",
        ),
        (
            r#"{"driver":"throttle","node-name":"t","throttle-group":"tg0","file":"f0"}"#,
            "throttle,node-name=t,throttle-group=tg0,file=f0",
        ),
        (
            r#"{"driver":"qcow2","node-name":"q","file":{"driver":"file","filename":"d.qcow2"},"backing":"b","l2-cache-size":1048576,"refcount-cache-size":262144,"pass-discard-request":true,"lazy-refcounts":false,"cache-clean-interval":0}"#,
            "qcow2,node-name=q,file.driver=file,file.filename=d.qcow2,backing=b,l2-cache-size=1048576,refcount-cache-size=262144,pass-discard-request=on,lazy-refcounts=off,cache-clean-interval=0",
        ),
    ];
    for (json, keyval) in pairs {
        assert_eq!(bd(json), bd(keyval), "{json}\n{keyval}");
    }
}

#[test]
fn every_driver_converts_with_qemus_defaults() {
    let f = bd(r#"{"driver":"file","node-name":"f","filename":"x.img"}"#);
    assert_eq!(f.node_name.as_deref(), Some("f"));
    assert!(!f.read_only && !f.auto_read_only);
    assert_eq!(f.discard, Discard::Ignore);
    assert_eq!(f.detect_zeroes, DetectZeroes::Off);
    assert_eq!(f.cache, CacheOptions::default());
    assert_eq!(
        f.driver,
        DriverOptions::File {
            host_device: false,
            filename: PathBuf::from("x.img"),
            aio: Aio::Threads,
            locking: OnOffAuto::Auto,
        }
    );
    let h = bd("host_device,filename=/dev/sdz,aio=io_uring,locking=on");
    assert_eq!(h.driver.name(), "host_device");
    assert!(matches!(
        h.driver,
        DriverOptions::File {
            host_device: true,
            aio: Aio::IoUring,
            locking: OnOffAuto::On,
            ..
        }
    ));
    assert_eq!(
        bd("null-co").driver,
        DriverOptions::NullCo {
            size: 1 << 30,
            latency_ns: 0,
            read_zeroes: false,
        }
    );
    assert_eq!(
        bd("blockwire-ram,size=64M").driver,
        DriverOptions::Ram { size: 64 << 20 }
    );
    assert_eq!(
        bd(r#"{"driver":"nbd","server":{"type":"unix","path":"/run/n.sock"}}"#).driver,
        DriverOptions::Nbd {
            server: SocketAddress::Unix {
                path: "/run/n.sock".into()
            },
            export: None,
            tls_creds: None,
            tls_hostname: None,
            reconnect_delay: 0,
            open_timeout: 0,
        }
    );
    let timed = bd(
        r#"{"driver":"nbd","server":{"type":"unix","path":"/n"},"reconnect-delay":7,"open-timeout":5}"#,
    );
    assert!(matches!(
        timed.driver,
        DriverOptions::Nbd {
            reconnect_delay: 7,
            open_timeout: 5,
            ..
        }
    ));
    let r = bd("raw,file=f0");
    assert_eq!(
        r.driver,
        DriverOptions::Raw {
            file: BlockdevRef::Name("f0".into()),
            offset: 0,
            size: None,
            probed: false,
        }
    );
    let d = bd(
        r#"{"driver":"blkdebug","image":"f","inject-error":[{"event":"read_aio"}],"set-state":[{"event":"write","state":1,"new_state":3}]}"#,
    );
    let DriverOptions::Blkdebug {
        align,
        max_transfer,
        inject_error,
        set_state,
        ..
    } = d.driver
    else {
        panic!("{:?}", d.driver)
    };
    assert_eq!((align, max_transfer), (0, 0));
    // QEMU's defaults: any state, EIO, any sector, not once, not immediately.
    assert_eq!(inject_error, vec![InjectError::new(BlkdebugEvent::ReadAio)]);
    assert_eq!(
        set_state,
        vec![SetState {
            event: BlkdebugEvent::Write,
            state: 1,
            new_state: 3
        }]
    );
    let q = bd(r#"{"driver":"qcow2","file":"f"}"#);
    assert_eq!(
        q.driver,
        DriverOptions::Qcow2 {
            file: BlockdevRef::Name("f".into()),
            backing: None,
            cache_size: None,
            l2_cache_size: None,
            refcount_cache_size: None,
            pass_discard_request: None,
        }
    );
    let q = bd(r#"{"driver":"qcow2","file":"f","backing":null}"#);
    assert!(matches!(
        q.driver,
        DriverOptions::Qcow2 {
            backing: Some(None),
            ..
        }
    ));
    let c = bd(r#"{"driver":"blockwire-cow","backing":"b"}"#);
    assert_eq!(
        c.driver,
        DriverOptions::Cow {
            backing: BlockdevRef::Name("b".into()),
            file: None,
            cluster_size: 64 << 10,
        }
    );
    // sector -1 is QEMU's "any request".
    let d =
        bd(r#"{"driver":"blkdebug","image":"f","inject-error":[{"event":"read","sector":-1}]}"#);
    assert!(
        matches!(&d.driver, DriverOptions::Blkdebug { inject_error, .. } if inject_error[0].sector.is_none())
    );
}

/// Inline children take `cache.*`, `read-only` and `auto-read-only` from
/// their parent and default to `discard=unmap` (QEMU's
/// `bdrv_inherited_options`; checked against qemu-storage-daemon 7.2:
/// a trim through `raw,discard=unmap` over an inline `file` punches the
/// file, over a separately added `file` node it does not).
#[test]
fn inline_children_inherit_as_in_qemu() {
    let r = bd(
        r#"{"driver":"raw","discard":"unmap","auto-read-only":true,"cache":{"direct":true,"no-flush":true},
                  "file":{"driver":"file","filename":"x"}}"#,
    );
    let DriverOptions::Raw { file, .. } = &r.driver else {
        panic!()
    };
    let f = inline(file);
    assert_eq!(f.discard, Discard::Unmap);
    assert_eq!(
        f.cache,
        CacheOptions {
            direct: true,
            no_flush: true
        }
    );
    assert!(f.auto_read_only);
    // Explicit child options win.
    let r = bd(
        r#"{"driver":"raw","cache":{"direct":true},"file":{"driver":"file","filename":"x","discard":"ignore","cache":{"direct":false}}}"#,
    );
    let DriverOptions::Raw { file, .. } = &r.driver else {
        panic!()
    };
    assert_eq!(inline(file).discard, Discard::Ignore);
    assert!(!inline(file).cache.direct);
    // A backing child does not inherit auto-read-only (it is read-only).
    let c =
        bd(r#"{"driver":"blockwire-cow","auto-read-only":true,"backing":{"driver":"null-co"}}"#);
    let DriverOptions::Cow { backing, .. } = &c.driver else {
        panic!()
    };
    assert!(!inline(backing).auto_read_only);
    // The top node itself keeps QEMU's defaults.
    assert_eq!(bd("null-co").discard, Discard::Ignore);
    // key=value booleans, as QEMU's qapi_bool_parse.
    for t in ["on", "yes", "true", "y"] {
        assert!(bd(&format!("null-co,read-only={t}")).read_only, "{t}");
    }
    for f in ["off", "no", "false", "n"] {
        assert!(!bd(&format!("null-co,read-only={f}")).read_only, "{f}");
    }
    // force-share needs read-only, inherited read-only counts.
    assert_eq!(
        bd_err("null-co,force-share=on"),
        "force-share=on can only be used with read-only images"
    );
    bd("null-co,force-share=on,read-only=on");
    bd(r#"{"driver":"raw","read-only":true,"file":{"driver":"null-co","force-share":true}}"#);
}

/// Visitor errors, each as qemu-storage-daemon 7.2 prints it.
#[test]
fn visitor_errors_are_qemus() {
    let cases = [
        (
            r#"{"driver":"foo"}"#,
            "Parameter 'driver' does not accept value 'foo'",
        ),
        (r#"{"node-name":"x"}"#, "Parameter 'driver' is missing"),
        (
            r#"{"driver":5}"#,
            "Invalid parameter type for 'driver', expected: string",
        ),
        (
            r#"{"driver":"raw","file":{"driver":"foo"}}"#,
            "Parameter 'driver' does not accept value 'foo'",
        ),
        (
            r#"{"driver":"raw","file":{"driver":"null-co","bar":1}}"#,
            "Parameter 'file.bar' is unexpected",
        ),
        (
            r#"{"driver":"raw","file":5}"#,
            "Invalid parameter type for 'file', expected: BlockdevRef",
        ),
        (
            r#"{"driver":"raw","file":null}"#,
            "Invalid parameter type for 'file', expected: BlockdevRef",
        ),
        (r#"{"driver":"raw"}"#, "Parameter 'file' is missing"),
        (
            r#"{"driver":"raw","file":{}}"#,
            "Parameter 'file.driver' is missing",
        ),
        (
            r#"{"driver":"raw","file":{"driver":"file"}}"#,
            "Parameter 'file.filename' is missing",
        ),
        (
            r#"{"driver":"raw","file":{"driver":"file","filename":5}}"#,
            "Invalid parameter type for 'file.filename', expected: string",
        ),
        (
            r#"{"driver":"raw","file":{"driver":"file","filename":"x","aio":"bad"}}"#,
            "Parameter 'aio' does not accept value 'bad'",
        ),
        (
            r#"{"driver":"raw","file":{"driver":"file","filename":"x","aio":5}}"#,
            "Invalid parameter type for 'file.aio', expected: string",
        ),
        (
            r#"{"driver":"null-co","read-only":"yes"}"#,
            "Invalid parameter type for 'read-only', expected: boolean",
        ),
        (
            r#"{"driver":"null-co","cache":5}"#,
            "Invalid parameter type for 'cache', expected: object",
        ),
        (
            r#"{"driver":"null-co","cache":{"direct":1}}"#,
            "Invalid parameter type for 'cache.direct', expected: boolean",
        ),
        (
            r#"{"driver":"null-co","cache":{"foo":1}}"#,
            "Parameter 'cache.foo' is unexpected",
        ),
        (
            r#"{"driver":"null-co","discard":"bad"}"#,
            "Parameter 'discard' does not accept value 'bad'",
        ),
        (
            r#"{"driver":"null-co","size":"1G"}"#,
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            r#"{"driver":"null-co","size":1.0}"#,
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            r#"{"driver":"null-co","size":1e400}"#,
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            r#"{"driver":"null-co","size":9223372036854775808}"#,
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            r#"{"driver":"null-co","latency-ns":"x"}"#,
            "Parameter 'latency-ns' expects uint64",
        ),
        (
            r#"{"driver":"null-co","foo":1}"#,
            "Parameter 'foo' is unexpected",
        ),
        // Members in schema order: size before latency-ns.
        (
            r#"{"driver":"null-co","latency-ns":"x","size":"x"}"#,
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","inject-error":{}}"#,
            "Invalid parameter type for 'inject-error', expected: array",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","inject-error":[5]}"#,
            "Invalid parameter type for 'inject-error[0]', expected: object",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","inject-error":[{}]}"#,
            "Parameter 'inject-error[0].event' is missing",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","inject-error":[{"event":"bad"}]}"#,
            "Parameter 'event' does not accept value 'bad'",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","inject-error":[{"event":"read_aio","foo":1}]}"#,
            "Parameter 'inject-error[0].foo' is unexpected",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","inject-error":[{"event":"read_aio"},{"event":"read_aio","errno":"x"}]}"#,
            "Invalid parameter type for 'inject-error[1].errno', expected: integer",
        ),
        (
            r#"{"driver":"blkdebug","image":{"driver":"raw","file":{"driver":"file"}}}"#,
            "Parameter 'image.file.filename' is missing",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","max-transfer":2147483648}"#,
            "Parameter 'max-transfer' expects int32_t",
        ),
        (
            r#"{"driver":"nbd","server":{"type":"inet"}}"#,
            "Parameter 'server.host' is missing",
        ),
        (
            r#"{"driver":"nbd","server":{"type":"bad"}}"#,
            "Parameter 'type' does not accept value 'bad'",
        ),
        (
            r#"{"driver":"nbd","server":{}}"#,
            "Parameter 'server.type' is missing",
        ),
        (
            r#"{"driver":"nbd","server":{"type":"unix","path":"/x","foo":1}}"#,
            "Parameter 'server.foo' is unexpected",
        ),
        (
            r#"{"driver":"nbd","server":"x"}"#,
            "Invalid parameter type for 'server', expected: object",
        ),
        (r#"{"driver":"nbd"}"#, "Parameter 'server' is missing"),
        (
            r#"{"driver":"nbd","server":{"type":"unix","path":"/x"},"reconnect-delay":8589934592}"#,
            "Parameter 'reconnect-delay' expects uint32_t",
        ),
        (
            r#"{"driver":"nbd","server":{"type":"unix","path":"/x"},"reconnect-delay":-1}"#,
            "Parameter 'reconnect-delay' expects uint32_t",
        ),
        (
            r#"{"driver":"nbd","server":{"type":"unix","path":"/x"},"reconnect-delay":true}"#,
            "Parameter 'reconnect-delay' expects uint64",
        ),
        (
            r#"{"driver":"throttle","file":{"driver":"null-co"}}"#,
            "Parameter 'throttle-group' is missing",
        ),
        // Syntax.
        (
            r#"{"driver":"null-co",}"#,
            "JSON parse error, expecting value",
        ),
        (
            r#"{"driver":"null-co","a":1,"a":2}"#,
            "JSON parse error, duplicate key",
        ),
        ("{'driver':'null-co','x':1}", "Parameter 'x' is unexpected"),
        // key=value.
        ("foo", "Parameter 'driver' does not accept value 'foo'"),
        ("[1]", "Parameter 'driver' does not accept value '[1]'"),
        ("null-co,size=x", "Parameter 'size' expects integer"),
        ("null-co,size=1k", "Parameter 'size' expects integer"),
        ("null-co,size=08", "Parameter 'size' expects integer"),
        (
            "null-co,latency-ns=x",
            "Parameter 'latency-ns' expects integer",
        ),
        (
            "null-co,read-only=1",
            "Parameter 'read-only' expects 'on' or 'off'",
        ),
        (
            "null-co,cache=x",
            "Invalid parameter type for 'cache', expected: object",
        ),
        (
            "null-co,cache.direct=x",
            "Parameter 'cache.direct' expects 'on' or 'off'",
        ),
        ("null-co,cache.foo=x", "Parameter 'cache.foo' is unexpected"),
        ("null-co,size.x=1", "Parameters 'size.*' are unexpected"),
        (
            "blkdebug,image=x,inject-error.0.event=read_aio,inject-error.0.errno=x",
            "Parameter 'inject-error.0.errno' expects integer",
        ),
        (
            "blkdebug,image=x,inject-error.0=5",
            "Invalid parameter type for 'inject-error.0', expected: object",
        ),
        (
            "blkdebug,image=x,inject-error=5",
            "Invalid parameter type for 'inject-error', expected: array",
        ),
        (
            "blkdebug,image=x,inject-error.x.event=read_aio",
            "Invalid parameter type for 'inject-error', expected: array",
        ),
        (
            "nbd,server.type=inet,server.host=h,server.port=1,server.to=x",
            "Parameter 'server.to' expects integer",
        ),
        ("blockwire-ram,size=1.5", "Parameter 'size' expects size"),
        ("driver=null-co,driver=raw", "Parameter 'file' is missing"),
    ];
    for (input, want) in cases {
        assert_eq!(bd_err(input), want, "{input}");
    }
}

/// What conversion itself refuses, named by member.
#[test]
fn conversion_errors_name_the_member() {
    let cases = [
        (
            r#"{"driver":"file","filename":"x","pr-manager":"p"}"#,
            "Parameter 'pr-manager' is not supported by blockwire",
        ),
        (
            r#"{"driver":"raw","file":{"driver":"file","filename":"x","drop-cache":false}}"#,
            "Parameter 'file.drop-cache' is not supported by blockwire",
        ),
        (
            r#"{"driver":"file","filename":"x","aio-max-batch":4}"#,
            "Parameter 'aio-max-batch' is not supported by blockwire",
        ),
        (
            r#"{"driver":"nbd","server":{"type":"inet","host":"h","port":"1","ipv6":true}}"#,
            "Parameter 'server.ipv6' is not supported by blockwire",
        ),
        (
            r#"{"driver":"nbd","server":{"type":"unix","path":"/x"},"x-dirty-bitmap":"b"}"#,
            "Parameter 'x-dirty-bitmap' is not supported by blockwire",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","inject-error":[{"event":"read","iotype":"read"}]}"#,
            "Parameter 'inject-error[0].iotype' is not supported by blockwire",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","max-discard":512}"#,
            "Parameter 'max-discard' is not supported by blockwire",
        ),
        (
            r#"{"driver":"file","filename":""}"#,
            "The 'file' block driver requires a file name",
        ),
        (
            r#"{"driver":"null-co","size":-1}"#,
            "Parameter 'size' expects a non-negative number below 2^64",
        ),
        (
            r#"{"driver":"raw","file":"f","offset":-1}"#,
            "Parameter 'offset' expects a non-negative number below 2^64",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","align":-1}"#,
            "Parameter 'align' expects a non-negative number below 2^64",
        ),
        (
            r#"{"driver":"blkdebug","image":"x","inject-error":[{"event":"read","errno":-5}]}"#,
            "Parameter 'inject-error[0].errno' expects a non-negative number below 2^32",
        ),
        (
            r#"{"driver":"blockwire-cow","backing":null}"#,
            "Parameter 'backing' must name a node: a blockwire-cow overlay needs a backing node",
        ),
        (
            r#"{"driver":"blockwire-cow","backing":"b","cluster-size":1000}"#,
            "Cluster size must be a power of two between 512 and 2048k",
        ),
        (
            "blockwire-cow,backing=b,cluster-size=4M",
            "Cluster size must be a power of two between 512 and 2048k",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(bd_err(input), want, "{input}");
    }
    // Values that ask for nothing different are taken.
    bd(
        r#"{"driver":"file","filename":"x","drop-cache":true,"aio-max-batch":0,"x-check-cache-dropped":false}"#,
    );
    bd(r#"{"driver":"nbd","server":{"type":"unix","path":"/x","abstract":false,"tight":true}}"#);
}

#[test]
fn exports() {
    let e = parse_export_arg(r#"{"type":"nbd","id":"e0","node-name":"disk"}"#).unwrap();
    assert_eq!(e, ExportOptions::new("e0", "disk"));
    assert_eq!(e.name, "disk");
    let e = parse_export_arg(
        "nbd,id=e1,node-name=disk,name=,description=d,,x,writable=on,writethrough=off,\
         bitmaps.0=b0,bitmaps.1.node=other,bitmaps.1.name=b1,allocation-depth=on",
    )
    .unwrap();
    assert_eq!(e.name, "");
    assert_eq!(e.description.as_deref(), Some("d,x"));
    assert!(e.writable && e.allocation_depth);
    assert_eq!(
        e.bitmaps,
        vec![
            BitmapRef::Name("b0".into()),
            BitmapRef::Node {
                node: "other".into(),
                name: "b1".into()
            }
        ]
    );
    let err = |s: &str| parse_export_arg(s).unwrap_err().to_string();
    let long = "x".repeat(4097);
    assert_eq!(err("nbd,id=e"), "Parameter 'node-name' is missing");
    assert_eq!(
        err("fuse,id=e,node-name=n"),
        "Parameter 'type' does not accept value 'fuse'"
    );
    assert_eq!(err("nbd,id=0e,node-name=n"), "Invalid block export id");
    assert_eq!(
        err(r#"{"type":"nbd","id":"e","node-name":"n","bitmaps":[5]}"#),
        "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr"
    );
    assert_eq!(
        err(r#"{"type":"nbd","id":"e","node-name":"n","bitmaps":[{"node":"x"}]}"#),
        "Parameter 'bitmaps[0].name' is missing"
    );
    assert_eq!(
        err("nbd,id=e,node-name=n,bitmaps.0.node=b"),
        "Parameter 'bitmaps.0.name' is missing"
    );
    assert_eq!(
        err(r#"{"type":"nbd","id":"e","node-name":"n","writable":"yes"}"#),
        "Invalid parameter type for 'writable', expected: boolean"
    );
    assert_eq!(
        err(&format!("nbd,id=e,node-name=n,name={long}")),
        format!("export name '{long}' too long")
    );
    assert_eq!(
        err(&format!("nbd,id=e,node-name=n,description={long}")),
        format!("description '{long}' too long")
    );
    assert_eq!(
        err("nbd,id=e,node-name=n,iothread=io0"),
        "Parameter 'iothread' is not supported by blockwire"
    );
    assert_eq!(
        err("nbd,id=e,node-name=n,writethrough=on"),
        "Parameter 'writethrough' is not supported by blockwire"
    );
    parse_export_arg("nbd,id=e,node-name=n,fixed-iothread=off").unwrap();
}

#[test]
fn the_short_export_form_is_told_apart() {
    for qapi in [
        r#"{"type":"nbd"}"#,
        "nbd,id=e0,node-name=n",
        "type=nbd,id=e0,node-name=n",
        "id=e0,type=nbd,node-name=n",
        "fuse,id=e",
    ] {
        assert!(is_qapi_export(qapi), "{qapi}");
    }
    for short in [
        "name=b,file=img.raw,readonly",
        "readonly,name=b,file=x",
        "cow,name=c,memory=1G",
        "name=m,memory=1G,description=a,, type=x",
        "name=m,memory=1G,description=a,,type=x",
    ] {
        assert!(!is_qapi_export(short), "{short}");
    }
}

#[test]
fn objects() {
    let t = parse_object_arg(
        "throttle-group,id=tg0,limits.iops-total=100,limits.iops-total-max=200,\
         limits.iops-total-max-length=5,limits.bps-read=1048576,x-bps-write=2048,limits.iops-size=4096",
    )
    .unwrap();
    let ObjectOptions::ThrottleGroup(t) = t else {
        panic!("{t:?}")
    };
    assert_eq!(t.id, "tg0");
    assert_eq!(t.limits.iops_total.avg, 100);
    assert_eq!(t.limits.iops_total.max, 200);
    assert_eq!(t.limits.iops_total.max_length, 5);
    assert_eq!(t.limits.bps_read.avg, 1 << 20);
    assert_eq!(t.limits.bps_write.avg, 2048);
    assert_eq!(t.limits.iops_size, 4096);
    let json = parse_object_arg(
        r#"{"qom-type":"throttle-group","id":"tg0","limits":{"iops-total":100,"iops-total-max":200,"iops-total-max-length":5,"bps-read":1048576,"iops-size":4096},"x-bps-write":2048}"#,
    )
    .unwrap();
    assert_eq!(json, ObjectOptions::ThrottleGroup(t));

    let s = parse_object_arg("secret,id=s0,data=aGVsbG8=,format=base64").unwrap();
    let ObjectOptions::Secret(sec) = &s else {
        panic!()
    };
    assert_eq!(&*sec.data, b"hello");
    assert!(
        !format!("{s:?}").contains("hello"),
        "secret in debug output"
    );
    let path = tmp_path("secret");
    std::fs::write(&path, b"key bytes").unwrap();
    let s = parse_object_arg(&format!(
        r#"{{"qom-type":"secret","id":"s1","file":{:?}}}"#,
        path
    ))
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(&s, ObjectOptions::Secret(s) if &*s.data == b"key bytes"));

    let t = parse_object_arg("tls-creds-x509,id=tls0,dir=/pki,endpoint=server,verify-peer=off")
        .unwrap();
    assert_eq!(
        t,
        ObjectOptions::TlsCredsX509(crate::block::TlsCredsX509 {
            id: "tls0".into(),
            dir: "/pki".into(),
            endpoint: crate::block::TlsEndpoint::Server,
            verify_peer: false,
        })
    );
    let json =
        parse_object_arg(r#"{"qom-type":"tls-creds-x509","id":"tls1","dir":"/pki"}"#).unwrap();
    assert_eq!(
        json,
        ObjectOptions::TlsCredsX509(crate::block::TlsCredsX509::client("tls1", "/pki"))
    );

    let err = |s: &str| parse_object_arg(s).unwrap_err().to_string();
    let cases = [
        ("secret,id=s0", "Either 'file' or 'data' must be provided"),
        (
            "secret,id=s0,data=x,file=/etc/hostname",
            "'file' and 'data' are mutually exclusive",
        ),
        (
            "secret,id=s0,data=!!!!,format=base64",
            "Base64 data contains invalid characters",
        ),
        (
            "secret,id=s0,data=x,format=bad",
            "Parameter 'format' does not accept value 'bad'",
        ),
        (
            "secret,id=0s,data=x",
            "Parameter 'id' expects an identifier",
        ),
        ("secret,data=x", "Parameter 'id' is missing"),
        (
            "foo,id=x",
            "Parameter 'qom-type' does not accept value 'foo'",
        ),
        (
            r#"{"qom-type":"secret","id":"s","data":"x","bad":1}"#,
            "Parameter 'bad' is unexpected",
        ),
        (
            r#"{"qom-type":"secret","id":"s","data":5}"#,
            "Invalid parameter type for 'data', expected: string",
        ),
        (r#"{"id":"s","data":5}"#, "Parameter 'qom-type' is missing"),
        (
            "tls-creds-x509,id=t,dir=/pki,priority=NORMAL",
            "Parameter 'priority' is not supported by blockwire",
        ),
        (
            "tls-creds-x509,id=t,dir=/pki,endpoint=both",
            "Parameter 'endpoint' does not accept value 'both'",
        ),
        (
            "throttle-group,id=t,limits.bps-total=1,limits.bps-read=2",
            "bps/iops/max total values and read/write values cannot be used at the same time",
        ),
        (
            "throttle-group,id=t,limits.bps-total=-1",
            "bps/iops/max values must be within [0, 1000000000000000]",
        ),
        (
            "throttle-group,id=t,limits.bps-total=1000000000000001",
            "bps/iops/max values must be within [0, 1000000000000000]",
        ),
        (
            "throttle-group,id=t,limits.bps-total-max=5",
            "bps_max/iops_max require corresponding bps/iops values",
        ),
        (
            "throttle-group,id=t,limits.bps-total=10,limits.bps-total-max=5",
            "bps_max/iops_max cannot be lower than bps/iops",
        ),
        (
            "throttle-group,id=t,limits.bps-total=10,limits.bps-total-max-length=5",
            "burst length set without burst rate",
        ),
        (
            "throttle-group,id=t,limits.bps-total=10,limits.bps-total-max=20,limits.bps-total-max-length=0",
            "the burst length cannot be 0",
        ),
        (
            "throttle-group,id=t,limits.iops-size=-1",
            "iops size requires an iops value to be set",
        ),
        (
            "throttle-group,id=t,limits.iops-total=x",
            "Parameter 'limits.iops-total' expects integer",
        ),
        (
            "throttle-group,id=t,x-iops-total=x",
            "Parameter 'x-iops-total' expects integer",
        ),
        (
            r#"{"qom-type":"throttle-group","id":"t","limits":{"iops-total":"x"}}"#,
            "Invalid parameter type for 'limits.iops-total', expected: integer",
        ),
        (
            r#"{"qom-type":"throttle-group","id":"t","limits":{"iops-total":10,"iops-total-max":1000000000000000,"iops-total-max-length":2}}"#,
            "burst length too high for this burst rate",
        ),
        (
            "throttle-group,id=t,x-iops-total=-1",
            "Property values cannot be negative",
        ),
        (
            "throttle-group,id=t,x-iops-total=10,x-iops-total-max=20,x-iops-total-max-length=8589934592",
            "x-iops-total-max-length value must be in therange [0, 4294967295]",
        ),
        (
            "throttle-group,id=t,limits.iops-total=10,limits.iops-total-max=20,limits.iops-total-max-length=8589934592",
            "iops-total-max-length value must be in the range [0, 4294967295]",
        ),
        (
            "throttle-group,id=t,x-iops-size=5",
            "iops size requires an iops value to be set",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(err(input), want, "{input}");
    }
}

/// A path no other process uses: /tmp may be shared by processes in other
/// PID namespaces, so the pid alone is not enough.
fn tmp_path(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "blockwire-qapi-{}-{nanos}-{tag}",
        std::process::id()
    ))
}

fn tmp_file(tag: &str, size: u64) -> PathBuf {
    let p = tmp_path(tag);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

/// The whole path: objects, a stack of nodes over a file, an export,
/// into a graph.
#[tokio::test]
async fn serve_config_builds_the_graph() {
    let img = tmp_file("stack", 8 << 20);
    let graph = crate::block::Graph::new();
    let file = format!(r#"{{"driver":"file","node-name":"f0","filename":{img:?}}}"#);
    let cfg = ServeConfig::parse(
        ["throttle-group,id=tg0,limits.iops-total=1000", "secret,id=k0,data=x"],
        [
            file.as_str(),
            "blkdebug,node-name=dbg,image=f0,inject-error.0.event=flush,inject-error.0.errno=5",
            r#"{"driver":"throttle","node-name":"thr","throttle-group":"tg0","file":"dbg"}"#,
            "raw,node-name=top,file=thr,offset=1048576,size=4194304",
            r#"{"driver":"raw","node-name":"win","file":{"driver":"blockwire-ram","size":1048576}}"#,
        ],
        ["nbd,id=e0,node-name=top,writable=on", r#"{"type":"nbd","id":"e1","node-name":"win"}"#],
    )
    .unwrap();
    cfg.build(&graph).await.unwrap();
    let _ = std::fs::remove_file(&img);
    let top = graph.get("top").unwrap();
    assert_eq!(top.size(), 4 << 20);
    assert_eq!(top.driver_name(), "raw");
    assert_eq!(graph.get("thr").unwrap().driver_name(), "throttle");
    assert_eq!(graph.get("dbg").unwrap().driver_name(), "blkdebug");
    assert_eq!(graph.secret("k0").as_deref(), Some(&b"x"[..]));
    assert!(graph.throttle_group("tg0").is_some());
    // The inline RAM disk got a generated name and discard=unmap.
    let win = graph.get("win").unwrap();
    let ram = &win.children()[0].node;
    assert!(ram.auto_named());
    assert_eq!(ram.options().discard, Discard::Unmap);

    // What only the graph can refuse, with QEMU's words.
    let fails = |b: &'static str| async move {
        let g = crate::block::Graph::new();
        let cfg = ServeConfig::parse([], [b], []).unwrap();
        cfg.build(&g).await.unwrap_err().to_string()
    };
    assert_eq!(
        fails("null-co").await,
        "--blockdev null-co: 'node-name' must be specified for the root node"
    );
    assert_eq!(
        fails("null-co,node-name=0n").await,
        "--blockdev null-co,node-name=0n: Invalid node-name: '0n'"
    );
    assert_eq!(
        fails("null-co,node-name=abcdefghijabcdefghijabcdefghijab").await,
        "--blockdev null-co,node-name=abcdefghijabcdefghijabcdefghijab: Node name too long"
    );
    assert_eq!(
        fails("raw,node-name=r,file.driver=null-co,size=1000").await,
        "--blockdev raw,node-name=r,file.driver=null-co,size=1000: Specified size is not multiple of 512"
    );
    assert_eq!(
        fails("blkdebug,node-name=d,image.driver=null-co,align=3").await,
        "--blockdev blkdebug,node-name=d,image.driver=null-co,align=3: Cannot meet constraints with align 3"
    );
    assert_eq!(
        fails("null-co,node-name=n,detect-zeroes=unmap").await,
        "--blockdev null-co,node-name=n,detect-zeroes=unmap: setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"
    );
    assert_eq!(
        fails("throttle,node-name=t,file.driver=null-co,throttle-group=nope").await,
        "--blockdev throttle,node-name=t,file.driver=null-co,throttle-group=nope: Throttle group 'nope' does not exist"
    );
    // Exports are checked against the graph.
    let g = crate::block::Graph::new();
    let cfg = ServeConfig::parse(
        [],
        ["null-co,node-name=ro,read-only=on"],
        ["nbd,id=e,node-name=ro,writable=on"],
    )
    .unwrap();
    assert_eq!(
        cfg.build(&g).await.unwrap_err().to_string(),
        "--export nbd,id=e,node-name=ro,writable=on: Cannot export read-only node as writable"
    );
    let cfg = ServeConfig::parse([], [], ["nbd,id=e,node-name=nope"]).unwrap();
    assert_eq!(
        cfg.build(&crate::block::Graph::new())
            .await
            .unwrap_err()
            .to_string(),
        "--export nbd,id=e,node-name=nope: Cannot find device='' nor node-name='nope'"
    );
    let cfg = ServeConfig::parse(
        [],
        ["null-co,node-name=n"],
        ["nbd,id=e,node-name=n,bitmaps.0=b"],
    )
    .unwrap();
    assert_eq!(
        cfg.build(&crate::block::Graph::new())
            .await
            .unwrap_err()
            .to_string(),
        "--export nbd,id=e,node-name=n,bitmaps.0=b: Bitmap 'b' is not found"
    );
}

/// `auto-read-only`: a file that cannot be opened for writing is opened
/// read-only instead of failing. Root may write to files whatever their
/// mode, so the test uses a sysfs attribute without a store method, which
/// refuses writers (EACCES) even to root.
#[tokio::test]
async fn auto_read_only_falls_back_for_read_only_files() {
    let path = "/sys/kernel/uevent_seqnum";
    assert!(
        std::fs::OpenOptions::new().write(true).open(path).is_err(),
        "{path} is writable here; the test needs a file that refuses writers"
    );
    let g = crate::block::Graph::new();
    let rw = format!(r#"{{"driver":"file","node-name":"a","filename":"{path}"}}"#);
    let err = g.add(bd(&rw)).await.err().expect("writable open succeeded");
    assert!(err.to_string().contains("Could not open"), "{err}");
    let auto =
        format!(r#"{{"driver":"file","node-name":"b","filename":"{path}","auto-read-only":true}}"#);
    let node = g.add(bd(&auto)).await.unwrap();
    assert!(node.read_only());
}

#[test]
fn cli_errors_are_one_line() {
    let e = ServeConfig::parse([], ["{\"driver\":\n\"foo\"}"], []).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--blockdev {\"driver\": \"foo\"}: Parameter 'driver' does not accept value 'foo'"
    );
}
