//! The command line. [`Command`] has one variant per subcommand; `info`
//! and `copy` are meant to join `serve` here.

use std::path::PathBuf;

use blockwire_core::block::blkdebug::Blkdebug;
use blockwire_core::block::throttle::ThrottleLimits;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::block::drivers::blkdebug::MAX_RULES as MAX_BLKDEBUG_RULES;
use crate::block::qapi::{ArgError, ServeConfig, is_qapi_export};
use crate::listen::ListenAddr;
use crate::size::parse_size;

#[derive(Debug, Parser)]
#[command(name = "blockwire", version, about = "An NBD (Network Block Device) server", long_about = None)]
pub struct Cli {
    /// More log output: -v for connections, -vv for requests (RUST_LOG
    /// overrides).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a file, block device, RAM disk or null device over NBD.
    ///
    /// With neither FILE nor --memory / --null (nor --export), serves a
    /// 1 GiB in-memory disk named "" on tcp:127.0.0.1:10809.
    Serve(ServeArgs),
    /// Show an NBD export's size, flags, block sizes and contexts (like
    /// nbdinfo).
    Info(crate::tools::info::InfoArgs),
    /// Copy between NBD exports and files, sparsely (like nbdcopy).
    Copy(crate::tools::copy::CopyArgs),
    /// qemu-storage-daemon's QMP monitor over the block graph: add nodes,
    /// export them over NBD, manage dirty bitmaps, read statistics.
    Daemon(crate::daemon::DaemonArgs),
}

/// An image format `serve` opens a file as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

/// How TLS is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// No TLS; STARTTLS is refused.
    Off,
    /// TLS if the client asks for it (STARTTLS); plaintext clients are served.
    On,
    /// Every client must start TLS before anything else.
    Require,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// File or block device to export (opened read-write unless
    /// --read-only or --cow), or a Ceph RBD image as qemu-nbd names it:
    /// rbd:POOL/[NAMESPACE/]IMAGE[@SNAPSHOT][:conf=FILE][:id=USER][:OPTION=VALUE]...
    /// (OPTION: any Ceph option, e.g. mon_host, keyring,
    /// client_mount_timeout, rados_osd_op_timeout; `\` escapes ':').
    #[arg(value_name = "FILE", conflicts_with_all = ["memory", "null"])]
    pub file: Option<PathBuf>,

    /// Export a sparse in-memory disk of SIZE bytes (suffixes K, M, G, T;
    /// e.g. 512M). Memory is allocated on first write, in 64 KiB pieces.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "null")]
    pub memory: Option<u64>,

    /// Export a null device of SIZE bytes: reads return zeroes, writes
    /// are discarded.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub null: Option<u64>,

    /// With --null: delay every request by this many nanoseconds.
    #[arg(long, value_name = "NS", requires = "null")]
    pub latency_ns: Option<u64>,

    /// Name of the export (clients asking for "" get the first export
    /// whatever its name).
    #[arg(short = 'n', long, value_name = "NAME", default_value = "")]
    pub name: String,

    /// Description shown by `nbdinfo --list` / NBD_OPT_LIST.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,

    /// An additional export (repeatable), either as qemu-storage-daemon's
    /// --export (QAPI BlockExportOptions, type nbd) in JSON or key=value
    /// form: '{"type":"nbd","id":"e0","node-name":"f0","writable":true}'
    /// or nbd,id=e0,node-name=f0,name=disk,bitmaps.0=b0 — or in the short
    /// form, as comma-separated keys:
    /// name=NAME, and one of file=PATH | memory=SIZE | null=SIZE; then
    /// optionally readonly, offset=SIZE and size=SIZE (a window into the
    /// file, size a multiple of 512), description=TEXT, cow (copy-on-write
    /// in memory), bitmap=NAME (repeatable), allocation-depth,
    /// throttle=LIMITS and blkdebug=RULES (as --throttle and --blkdebug). A
    /// literal comma in a value is written ",,". Examples:
    /// --export name=b,file=img.raw,readonly,offset=1M,size=64M
    /// --export name=slow,memory=1G,throttle=bps=10M,,iops=100
    #[arg(long = "export", value_name = "SPEC", value_parser = ExportArg::parse)]
    pub exports: Vec<ExportArg>,

    /// A block node, as qemu-storage-daemon's --blockdev (repeatable):
    /// QAPI BlockdevOptions as JSON,
    /// '{"driver":"file","node-name":"f0","filename":"disk.img"}', or as
    /// key=value, file,node-name=f0,filename=disk.img (nested members as
    /// file.driver=..., list elements as inject-error.0.event=...).
    /// Drivers: file, host_device, null-co, blockwire-ram, nbd, raw,
    /// qcow2, rbd, throttle, blkdebug, blockwire-cow.
    #[arg(long = "blockdev", value_name = "OPTIONS")]
    pub blockdevs: Vec<String>,

    /// An object, as qemu-storage-daemon's --object (repeatable), JSON or
    /// key=value: throttle-group (id, limits.iops-total=..., ...),
    /// secret (id, data=... or file=..., format=raw|base64) or
    /// tls-creds-x509 (id, dir=..., endpoint=client|server, verify-peer=on|off).
    #[arg(long = "object", value_name = "OPTIONS")]
    pub objects: Vec<String>,

    /// Export read-only: writes, trims and zeroes fail with EPERM.
    #[arg(short = 'r', long)]
    pub read_only: bool,

    /// Copy-on-write: writes go to an overlay, the base is opened
    /// read-only and never changed. The overlay is in memory, or in FILE:
    /// for a file export without offset/size a qcow2 image with the base
    /// as its backing file (kept if FILE already is an overlay of that
    /// base, so it survives a restart, and QEMU can open it), otherwise a
    /// scratch file created or truncated at start.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub cow: Option<Option<PathBuf>>,

    /// Image format of FILE and of file= exports: raw or qcow2. Without
    /// it the format is probed as qemu-nbd does without -f (a qcow2
    /// header means qcow2, anything else raw); the log says which.
    #[arg(short = 'f', long, value_enum, value_name = "FORMAT")]
    pub format: Option<ImageFormat>,

    /// Where to listen: tcp:HOST:PORT or unix:PATH (repeatable). Default
    /// tcp:127.0.0.1:10809 unless sockets are passed by systemd
    /// (LISTEN_FDS / LISTEN_PID), which are always used.
    #[arg(long = "listen", value_name = "ADDR", value_parser = ListenAddr::parse)]
    pub listen: Vec<ListenAddr>,

    /// TLS policy: off, on (offered), require. Default: require when
    /// --tls-cert is given, else off.
    #[arg(long, value_enum, value_name = "MODE")]
    pub tls: Option<TlsMode>,

    /// Server certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Server private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM); when given, clients must present a
    /// certificate signed by one of them.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Stop accepting while N clients are connected (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections: usize,

    /// Drop clients that have not finished the handshake after SECS
    /// seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub handshake_timeout: u64,

    /// Advertise CAN_MULTI_CONN (the default): all connections share one
    /// backend in this process, so a flush on one covers writes completed
    /// on all.
    #[arg(long, overrides_with = "no_multi_conn")]
    pub multi_conn: bool,

    /// Do not advertise CAN_MULTI_CONN.
    #[arg(long, overrides_with = "multi_conn")]
    pub no_multi_conn: bool,

    /// Track writes in a dirty bitmap, exported as the metadata context
    /// qemu:dirty-bitmap:NAME (repeatable; 64 KiB granularity). A qcow2
    /// image's stored bitmap of that name is exported as it is.
    #[arg(long = "dirty-bitmap", value_name = "NAME")]
    pub dirty_bitmaps: Vec<String>,

    /// Offer the qemu:allocation-depth metadata context.
    #[arg(long)]
    pub allocation_depth: bool,

    /// Throttle I/O with QEMU's ThrottleLimits keys, e.g. bps=10M,iops=100
    /// or bps-read=..,bps-write=..,iops-total-max=..,iops-size=..
    #[arg(long, value_name = "LIMITS", value_parser = parse_throttle)]
    pub throttle: Option<ThrottleLimits>,

    /// Inject errors like QEMU's blkdebug: rules separated by ';', e.g.
    /// "event=read,errno=5,sector=2048,once=on". Events include read,
    /// write, flush, discard, zero.
    #[arg(long, value_name = "RULES", value_parser = parse_blkdebug)]
    pub blkdebug: Option<String>,

    /// Write the server's process id to FILE once it is listening.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

impl ServeArgs {
    /// The --export values in the short form.
    pub fn export_specs(&self) -> impl Iterator<Item = &ExportSpec> {
        self.exports.iter().filter_map(|e| match e {
            ExportArg::Short(s) => Some(s),
            ExportArg::Qapi(_) => None,
        })
    }

    /// The --export values in QAPI form, unparsed.
    pub fn qapi_exports(&self) -> impl Iterator<Item = &str> {
        self.exports.iter().filter_map(|e| match e {
            ExportArg::Qapi(s) => Some(s.as_str()),
            ExportArg::Short(_) => None,
        })
    }

    /// --object, --blockdev and the QAPI --export values, parsed and
    /// checked against the schema. (Parsed here rather than by clap so
    /// that an error is one line, worded as qemu-storage-daemon's, and
    /// the exit status is 1.)
    pub fn qapi_config(&self) -> Result<ServeConfig, ArgError> {
        ServeConfig::parse(
            self.objects.iter().map(String::as_str),
            self.blockdevs.iter().map(String::as_str),
            self.qapi_exports(),
        )
    }

    pub fn multi_conn(&self) -> bool {
        !self.no_multi_conn
    }

    pub fn tls_mode(&self) -> TlsMode {
        match (self.tls, &self.tls_cert) {
            (Some(m), _) => m,
            (None, Some(_)) => TlsMode::Require,
            (None, None) => TlsMode::Off,
        }
    }
}

fn parse_throttle(s: &str) -> Result<ThrottleLimits, String> {
    let l =
        ThrottleLimits::parse(s).map_err(|e| format!("invalid throttle limits {s:?}: {e:?}"))?;
    l.validate()
        .map_err(|e| format!("invalid throttle limits {s:?}: {e:?}"))?;
    Ok(l)
}

fn parse_blkdebug(s: &str) -> Result<String, String> {
    Blkdebug::<MAX_BLKDEBUG_RULES>::parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("invalid blkdebug rules {s:?}: {e:?}"))
}

/// Where an export's data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    File(PathBuf),
    Memory(u64),
    Null(u64),
}

/// One `--export`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    pub name: String,
    pub source: SourceSpec,
    pub read_only: bool,
    pub offset: Option<u64>,
    pub size: Option<u64>,
    pub description: String,
    pub cow: bool,
    pub bitmaps: Vec<String>,
    pub allocation_depth: bool,
    pub throttle: Option<ThrottleLimits>,
    pub blkdebug: Option<String>,
}

/// One `--export`: blockwire's short form, or QAPI `BlockExportOptions`
/// (JSON, or key=value with `type`), kept as given until
/// [`ServeArgs::qapi_config`] parses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportArg {
    Short(ExportSpec),
    Qapi(String),
}

impl ExportArg {
    pub fn parse(s: &str) -> Result<Self, String> {
        if is_qapi_export(s) {
            Ok(ExportArg::Qapi(s.to_owned()))
        } else {
            ExportSpec::parse(s).map(ExportArg::Short)
        }
    }
}

/// Splits on single commas; ",," is a literal comma (QEMU's convention).
fn split_commas(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                out.last_mut().map(|o| o.push(','));
            } else {
                out.push(String::new());
            }
        } else {
            out.last_mut().map(|o| o.push(c));
        }
    }
    out
}

impl ExportSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut name = None;
        let mut source = None;
        let mut spec = ExportSpec {
            name: String::new(),
            source: SourceSpec::Memory(0),
            read_only: false,
            offset: None,
            size: None,
            description: String::new(),
            cow: false,
            bitmaps: vec![],
            allocation_depth: false,
            throttle: None,
            blkdebug: None,
        };
        let mut set_source = |src: SourceSpec| {
            if source.replace(src).is_some() {
                Err("give only one of file=, memory=, null=".to_owned())
            } else {
                Ok(())
            }
        };
        for part in split_commas(s) {
            if part.is_empty() {
                continue;
            }
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (part.as_str(), None),
            };
            let need = || value.ok_or_else(|| format!("{key} needs a value ({key}=...)"));
            match key {
                "name" => name = Some(need()?.to_owned()),
                "file" => set_source(SourceSpec::File(need()?.into()))?,
                "memory" => set_source(SourceSpec::Memory(parse_size(need()?)?))?,
                "null" => set_source(SourceSpec::Null(parse_size(need()?)?))?,
                "readonly" | "read-only" | "ro" => spec.read_only = parse_bool(key, value)?,
                "offset" => spec.offset = Some(parse_size(need()?)?),
                "size" => spec.size = Some(parse_size(need()?)?),
                "description" => spec.description = need()?.to_owned(),
                "cow" => spec.cow = parse_bool(key, value)?,
                "bitmap" | "dirty-bitmap" => spec.bitmaps.push(need()?.to_owned()),
                "allocation-depth" => spec.allocation_depth = parse_bool(key, value)?,
                "throttle" => spec.throttle = Some(parse_throttle(need()?)?),
                "blkdebug" => spec.blkdebug = Some(parse_blkdebug(need()?)?),
                _ => {
                    return Err(format!(
                        "unknown key {key:?} (known: name, file, memory, null, readonly, \
                         offset, size, description, cow, bitmap, allocation-depth, \
                         throttle, blkdebug)"
                    ));
                }
            }
        }
        spec.name = name.ok_or("missing name=NAME")?;
        spec.source = source.ok_or("missing file=PATH, memory=SIZE or null=SIZE")?;
        if (spec.offset.is_some() || spec.size.is_some())
            && !matches!(spec.source, SourceSpec::File(_))
        {
            return Err("offset= and size= apply to file= exports".into());
        }
        Ok(spec)
    }
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("on" | "true" | "yes" | "1") => Ok(true),
        Some("off" | "false" | "no" | "0") => Ok(false),
        Some(v) => Err(format!("{key}={v}: expected on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut v = vec!["blockwire", "serve"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| match c.command {
            Command::Serve(s) => s,
            other => panic!("expected serve, got {other:?}"),
        })
    }

    #[test]
    fn defaults() {
        let s = serve(&[]).unwrap();
        assert_eq!(s.name, "");
        assert!(s.multi_conn());
        assert_eq!(s.handshake_timeout, 10);
        assert_eq!(s.tls_mode(), TlsMode::Off);
        assert_eq!(s.cow, None);
    }

    #[test]
    fn options() {
        let s = serve(&[
            "--memory",
            "2G",
            "-n",
            "disk",
            "--listen",
            "unix:/tmp/x.sock",
            "--listen",
            "tcp:[::1]:0",
            "--no-multi-conn",
            "--cow",
            "--dirty-bitmap",
            "b0",
            "--throttle",
            "bps=1M,iops=100",
            "--blkdebug",
            "event=read,errno=5",
            "--tls-cert",
            "c.pem",
            "-vv",
        ])
        .unwrap();
        assert_eq!(s.memory, Some(2 << 30));
        assert_eq!(s.listen.len(), 2);
        assert!(!s.multi_conn());
        assert_eq!(s.cow, Some(None));
        assert_eq!(s.tls_mode(), TlsMode::Require);
        let s = serve(&["--cow", "top.img", "base.img"]).unwrap();
        assert_eq!(s.cow, Some(Some("top.img".into())));
        assert_eq!(s.file, Some("base.img".into()));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(serve(&["--memory", "1X"]).is_err());
        assert!(serve(&["--memory", "1G", "--null", "1G"]).is_err());
        assert!(serve(&["--latency-ns", "5"]).is_err());
        assert!(serve(&["--throttle", "bogus=1"]).is_err());
        assert!(serve(&["--blkdebug", "event=nope"]).is_err());
        assert!(serve(&["--listen", "udp:host:1"]).is_err());
        assert!(serve(&["--tls", "maybe"]).is_err());
    }

    #[test]
    fn qapi_options() {
        let s = serve(&[
            "--object",
            "throttle-group,id=tg0,limits.iops-total=100",
            "--blockdev",
            r#"{"driver":"null-co","node-name":"n0"}"#,
            "--blockdev",
            "throttle,node-name=t0,throttle-group=tg0,file=n0",
            "--export",
            "nbd,id=e0,node-name=t0",
            "--export",
            "name=b,memory=1M",
        ])
        .unwrap();
        assert_eq!(s.export_specs().count(), 1);
        let cfg = s.qapi_config().unwrap();
        assert_eq!(
            (cfg.objects.len(), cfg.blockdevs.len(), cfg.exports.len()),
            (1, 2, 1)
        );
        // Bad QAPI values reach qapi_config (one line, exit status 1),
        // not clap.
        let s = serve(&["--blockdev", r#"{"driver":"foo"}"#]).unwrap();
        assert_eq!(
            s.qapi_config().unwrap_err().to_string(),
            r#"--blockdev {"driver":"foo"}: Parameter 'driver' does not accept value 'foo'"#
        );
    }

    #[test]
    fn export_specs() {
        let e = ExportSpec::parse("name=b,file=img.raw,readonly,offset=1M,size=64M").unwrap();
        assert_eq!(e.name, "b");
        assert_eq!(e.source, SourceSpec::File("img.raw".into()));
        assert!(e.read_only);
        assert_eq!((e.offset, e.size), (Some(1 << 20), Some(64 << 20)));
        let e = ExportSpec::parse("name=m,memory=1G,description=a,, b,bitmap=x,bitmap=y").unwrap();
        assert_eq!(e.description, "a, b");
        assert_eq!(e.bitmaps, vec!["x", "y"]);
        let e = ExportSpec::parse(
            "name=t,memory=1M,throttle=bps=1M,,iops=100,blkdebug=event=read,,errno=5,,once=on",
        )
        .unwrap();
        assert!(e.throttle.is_some());
        assert_eq!(e.blkdebug.as_deref(), Some("event=read,errno=5,once=on"));
        assert!(ExportSpec::parse("name=t,memory=1M,throttle=bogus=1").is_err());
        assert!(ExportSpec::parse("name=t,memory=1M,blkdebug=event=nope").is_err());
        assert!(ExportSpec::parse("file=x").unwrap_err().contains("name"));
        assert!(ExportSpec::parse("name=x").unwrap_err().contains("file"));
        assert!(ExportSpec::parse("name=x,memory=1G,null=1G").is_err());
        assert!(ExportSpec::parse("name=x,memory=1G,offset=1M").is_err());
        assert!(
            ExportSpec::parse("name=x,memory=1G,colour=red")
                .unwrap_err()
                .contains("unknown")
        );
    }
}
