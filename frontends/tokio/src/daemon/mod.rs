//! `blockwire daemon`: qemu-storage-daemon's QMP monitor over the block
//! graph `serve` builds.
//!
//! The command line takes qemu-storage-daemon's options (`--blockdev`,
//! `--object`, `--export`, `--nbd-server`, `--chardev` + `--monitor`,
//! `--pidfile`) plus the shorthand `--qmp unix:PATH|tcp:HOST:PORT`. The
//! graph, the export registry, the NBD connections and the QAPI parsing
//! are the ones `serve` uses; this module adds the monitor ([`qmp`]: the
//! wire protocol of QEMU's `docs/interop/qmp-spec.rst`), the commands
//! ([`commands`]) and an NBD server that can be started and stopped.
//!
//! Where QEMU versions differ, qemu-storage-daemon 7.2 is followed (the
//! version the differential test runs).

pub mod commands;
pub mod framer;
pub mod limits;
pub mod qmp;
pub mod schema;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::block::Graph;
use crate::block::qapi::{self, ServeConfig, keyval};
use crate::connection::ConnContext;
use crate::listen::{self, ListenAddr, Listener, Tracker};
use crate::pid_file::PidFile;
use crate::registry::Registry;
use crate::serve::Error;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// A QMP monitor on this socket (unix:PATH or tcp:HOST:PORT); may be
    /// repeated. Short for --chardev socket,...,server=on,wait=off
    /// --monitor chardev=...
    #[arg(long, value_name = "ADDR", value_parser = ListenAddr::parse)]
    pub qmp: Vec<ListenAddr>,
    /// qemu-storage-daemon's character device for a monitor:
    /// socket,id=ID,path=PATH|host=HOST,port=PORT,server=on,wait=off.
    #[arg(long, value_name = "OPTIONS")]
    pub chardev: Vec<String>,
    /// A QMP monitor on a --chardev: [chardev=]ID[,mode=control][,pretty=on|off].
    #[arg(long, value_name = "OPTIONS")]
    pub monitor: Vec<String>,
    /// A node, as blockdev-add takes it (JSON or key=value).
    #[arg(long, value_name = "OPTIONS")]
    pub blockdev: Vec<String>,
    /// An object (throttle-group, secret, tls-creds-x509), as object-add
    /// takes it.
    #[arg(long, value_name = "OPTIONS")]
    pub object: Vec<String>,
    /// An export, as block-export-add takes it (needs --nbd-server).
    #[arg(long, value_name = "OPTIONS")]
    pub export: Vec<String>,
    /// Start the NBD server: addr.type=inet,addr.host=H,addr.port=P |
    /// addr.type=unix,addr.path=P [,tls-creds=ID][,max-connections=N].
    #[arg(long, value_name = "OPTIONS")]
    pub nbd_server: Option<String>,
    /// Write the process id here (removed at exit).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
}

/// One QMP monitor to listen on.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSpec {
    pub addr: ListenAddr,
    pub pretty: bool,
}

fn keyval_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn on_off(opt: &str, key: &str, v: Option<&str>, default: bool) -> Result<bool, String> {
    match v {
        None => Ok(default),
        Some("on" | "yes" | "true" | "y") => Ok(true),
        Some("off" | "no" | "false" | "n") => Ok(false),
        Some(x) => Err(format!(
            "{opt}: Parameter '{key}' expects 'on' or 'off', not '{x}'"
        )),
    }
}

/// `--chardev` and `--monitor` as qemu-storage-daemon takes them, for the
/// one combination a QMP monitor needs: a listening socket.
fn monitors(args: &DaemonArgs) -> Result<Vec<MonitorSpec>, String> {
    let mut chardevs = Vec::new();
    for c in &args.chardev {
        let opt = format!("--chardev {c}");
        let v = keyval::parse(c, Some("backend")).map_err(|e| format!("{opt}: {e}"))?;
        let Some(map) = v.as_object() else {
            return Err(format!("{opt}: expected options"));
        };
        for k in map.keys() {
            if !["backend", "id", "path", "host", "port", "server", "wait"].contains(&k.as_str()) {
                return Err(format!("{opt}: Invalid parameter '{k}'"));
            }
        }
        let backend = keyval_str(&v, "backend").unwrap_or("");
        if backend != "socket" {
            return Err(format!(
                "{opt}: chardev backend '{backend}' is not supported by blockwire (only socket)"
            ));
        }
        let id = keyval_str(&v, "id")
            .ok_or_else(|| format!("{opt}: Parameter 'id' is missing"))?
            .to_owned();
        if !on_off(&opt, "server", keyval_str(&v, "server"), false)? {
            return Err(format!(
                "{opt}: server=off (connecting out to a monitor client) is not supported by blockwire"
            ));
        }
        // wait=on would hold start-up until a client connects.
        if on_off(&opt, "wait", keyval_str(&v, "wait"), true)? {
            return Err(format!(
                "{opt}: wait=on is not supported by blockwire; use wait=off"
            ));
        }
        let addr = match (
            keyval_str(&v, "path"),
            keyval_str(&v, "host"),
            keyval_str(&v, "port"),
        ) {
            (Some(p), None, None) => ListenAddr::Unix(p.into()),
            (None, h, Some(port)) => {
                let h = h.unwrap_or("0.0.0.0");
                let host = if h.contains(':') {
                    format!("[{h}]")
                } else {
                    h.to_owned()
                };
                ListenAddr::Tcp(format!("{host}:{port}"))
            }
            _ => return Err(format!("{opt}: give either path= or host=,port=")),
        };
        chardevs.push((id, addr, false));
    }
    let mut out: Vec<MonitorSpec> = args
        .qmp
        .iter()
        .map(|a| MonitorSpec {
            addr: a.clone(),
            pretty: false,
        })
        .collect();
    for m in &args.monitor {
        let opt = format!("--monitor {m}");
        let v = keyval::parse(m, Some("chardev")).map_err(|e| format!("{opt}: {e}"))?;
        if let Some(map) = v.as_object() {
            for k in map.keys() {
                if !["chardev", "mode", "pretty", "id"].contains(&k.as_str()) {
                    return Err(format!("{opt}: Invalid parameter '{k}'"));
                }
            }
        }
        if let Some(mode) = keyval_str(&v, "mode").filter(|m| *m != "control") {
            return Err(format!(
                "{opt}: mode={mode} is not supported by blockwire (only control)"
            ));
        }
        let pretty = on_off(&opt, "pretty", keyval_str(&v, "pretty"), false)?;
        let id = keyval_str(&v, "chardev")
            .ok_or_else(|| format!("{opt}: Parameter 'chardev' is missing"))?;
        let Some(c) = chardevs.iter_mut().find(|c| c.0 == id) else {
            return Err(format!("{opt}: chardev \"{id}\" not found"));
        };
        if c.2 {
            return Err(format!("{opt}: chardev '{id}' is already in use"));
        }
        c.2 = true;
        out.push(MonitorSpec {
            addr: c.1.clone(),
            pretty,
        });
    }
    Ok(out)
}

/// The NBD server `nbd-server-start` (or `--nbd-server`) started.
struct NbdServer {
    stop: watch::Sender<bool>,
    accepting: JoinHandle<Vec<Listener>>,
}

/// Everything the monitor acts on.
pub struct Daemon {
    pub graph: Arc<Graph>,
    pub registry: Arc<Registry>,
    nbd: Mutex<Option<NbdServer>>,
    /// The options each node was added with (checked by the visitor), by
    /// node name, for `blockdev-reopen` to compare against.
    pub options: std::sync::Mutex<std::collections::HashMap<String, Value>>,
    /// Becomes true on `quit` or a signal.
    pub quit: watch::Sender<bool>,
}

/// `nbd-server-start`'s arguments, checked.
pub struct NbdServerConfig {
    pub addr: ListenAddr,
    pub tls_creds: Option<String>,
    pub max_connections: u32,
}

impl Daemon {
    pub fn new() -> Self {
        Self {
            graph: Arc::new(Graph::new()),
            registry: Arc::new(Registry::new()),
            nbd: Mutex::new(None),
            options: Default::default(),
            quit: watch::channel(false).0,
        }
    }

    pub async fn nbd_running(&self) -> bool {
        self.nbd.lock().await.is_some()
    }

    /// `nbd-server-start`, with QEMU 7.2's messages.
    pub async fn nbd_start(&self, cfg: NbdServerConfig) -> Result<(), String> {
        let mut nbd = self.nbd.lock().await;
        if nbd.is_some() {
            return Err("NBD server already running".into());
        }
        let tls = match &cfg.tls_creds {
            None => None,
            Some(id) => {
                use crate::block::TlsEndpoint;
                let Some(c) = self.graph.tls_creds(id) else {
                    return Err(format!("No TLS credentials with id '{id}'"));
                };
                if c.endpoint != TlsEndpoint::Server {
                    return Err("Expected TLS credentials for a server endpoint".into());
                }
                let dir = c.dir();
                let ca = dir.join("ca-cert.pem");
                Some(crate::tls::acceptor(
                    &dir.join("server-cert.pem"),
                    &dir.join("server-key.pem"),
                    c.verify_peer.then_some(ca.as_path()),
                )?)
            }
        };
        let listener = Listener::bind(&cfg.addr).await.map_err(|e| e.to_string())?;
        info!("NBD server listening on {}", listener.describe());
        let (stop, stop_rx) = watch::channel(false);
        let config = blockwire_core::server::ServerConfig {
            // With credentials QEMU's NBD server requires TLS.
            tls: if tls.is_some() {
                blockwire_core::server::TlsPolicy::Required
            } else {
                blockwire_core::server::TlsPolicy::Off
            },
            ..Default::default()
        };
        let ctx = Arc::new(ConnContext {
            registry: self.registry.clone(),
            config,
            tls,
            shutdown: stop_rx,
            epoch: tokio::time::Instant::now(),
        });
        let limit = (cfg.max_connections > 0)
            .then(|| Arc::new(Semaphore::new(cfg.max_connections as usize)));
        let accepting = tokio::spawn(listen::accept_loop(
            vec![listener],
            ctx,
            limit,
            Tracker::default(),
        ));
        *nbd = Some(NbdServer { stop, accepting });
        Ok(())
    }

    /// `nbd-server-stop`: closes the socket, ends every NBD connection and
    /// removes every export, as QEMU does.
    pub async fn nbd_stop(&self) -> Result<(), String> {
        let Some(server) = self.nbd.lock().await.take() else {
            return Err("NBD server not running".into());
        };
        for e in self.registry.snapshot().iter() {
            e.disconnect_all();
            let _ = self.registry.remove(&e.id);
        }
        server.stop.send_replace(true);
        if let Ok(listeners) = server.accepting.await {
            for l in listeners {
                l.cleanup();
            }
        }
        Ok(())
    }
}

impl Default for Daemon {
    fn default() -> Self {
        Self::new()
    }
}

/// `NbdServerOptions` (`--nbd-server`) or `nbd-server-start`'s arguments
/// after the visitor: the address as a listen address.
pub fn nbd_server_config(v: &Value, legacy: bool) -> Result<NbdServerConfig, String> {
    let addr = &v["addr"];
    let data = if legacy { &addr["data"] } else { addr };
    let addr = match addr["type"].as_str() {
        Some("inet") => {
            let host = data["host"].as_str().unwrap_or("");
            let port = data["port"].as_str().unwrap_or("");
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            ListenAddr::Tcp(format!("{host}:{port}"))
        }
        Some("unix") => ListenAddr::Unix(data["path"].as_str().unwrap_or("").into()),
        other => return Err(format!("unsupported address type {other:?}")),
    };
    Ok(NbdServerConfig {
        addr,
        tls_creds: v["tls-creds"].as_str().map(str::to_owned),
        max_connections: v["max-connections"].as_u64().unwrap_or(0) as u32,
    })
}

pub async fn run(args: DaemonArgs) -> Result<(), Error> {
    let monitors = monitors(&args)?;
    if monitors.is_empty() {
        warn!(
            "no QMP monitor (--qmp or --chardev/--monitor): the daemon can only be stopped by a signal"
        );
    }
    let daemon = Arc::new(Daemon::new());
    // Objects, then nodes, then the NBD server, then exports: the order
    // in which each can refer to the ones before.
    let cfg = ServeConfig::parse(
        args.object.iter().map(String::as_str),
        args.blockdev.iter().map(String::as_str),
        args.export.iter().map(String::as_str),
    )?;
    cfg.build_nodes(&daemon.graph).await?;
    for b in &args.blockdev {
        // Parsed once more for the checked value blockdev-reopen compares
        // with (ServeConfig keeps the typed options only); it parsed
        // above, so it parses here.
        let v = if b.starts_with('{') {
            qapi::json::parse(b).map(|v| (v, false))
        } else {
            keyval::parse(b, Some("driver")).map(|v| (v, true))
        };
        if let Ok((v, keyval)) = v
            && let Ok(checked) =
                qapi::visit::visit(&qapi::block_core::BLOCKDEV_OPTIONS_TYPE, &v, keyval)
            && let Some(name) = checked["node-name"].as_str()
        {
            commands::remember(&daemon, name, checked.clone());
        }
    }
    if let Some(s) = &args.nbd_server {
        let fail = |e: &dyn std::fmt::Display| format!("--nbd-server {s}: {e}");
        let v = if s.starts_with('{') {
            qapi::json::parse(s).map(|v| (v, false))
        } else {
            keyval::parse(s, None).map(|v| (v, true))
        }
        .map_err(|e| fail(&e))?;
        let checked = qapi::visit::visit(
            &qapi::schema::Type::Struct(&schema::NBD_SERVER_OPTIONS),
            &v.0,
            v.1,
        )
        .map_err(|e| fail(&e))?;
        let c = nbd_server_config(&checked, false).map_err(|e| fail(&e))?;
        daemon.nbd_start(c).await.map_err(|e| fail(&e))?;
    }
    for (i, e) in cfg.exports.iter().enumerate() {
        commands::add_export(&daemon, e)
            .await
            .map_err(|m| cfg.export_error(i, m.desc))?;
    }
    let mut listeners = Vec::new();
    for m in &monitors {
        let l = Listener::bind(&m.addr).await?;
        info!("QMP monitor on {}", l.describe());
        listeners.push((l, m.pretty));
    }
    let _pid = match &args.pidfile {
        Some(p) => Some(PidFile::create(p)?),
        None => None,
    };
    crate::shutdown::install(daemon.quit.clone())?;
    let mut tasks = Vec::new();
    for (l, pretty) in listeners {
        tasks.push(tokio::spawn(qmp::accept(l, daemon.clone(), pretty)));
    }
    let mut quit = daemon.quit.subscribe();
    let _ = quit.wait_for(|q| *q).await;
    info!("quitting");
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        if let Err(e) = t.await
            && let Ok(reason) = e.try_into_panic()
        {
            std::panic::resume_unwind(reason);
        }
    }
    for m in &monitors {
        if let ListenAddr::Unix(p) = &m.addr {
            let _ = std::fs::remove_file(p);
        }
    }
    if daemon.nbd_running().await {
        let _ = daemon.nbd_stop().await;
    }
    daemon.graph.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: DaemonArgs,
    }

    fn mons(argv: &[&str]) -> Result<Vec<MonitorSpec>, String> {
        let t = T::try_parse_from(std::iter::once("x").chain(argv.iter().copied())).unwrap();
        monitors(&t.a)
    }

    #[test]
    fn qsd_monitor_options() {
        let m = mons(&[
            "--chardev",
            "socket,path=/tmp/q.sock,server=on,wait=off,id=m0",
            "--monitor",
            "chardev=m0,pretty=on",
            "--qmp",
            "tcp:127.0.0.1:4444",
        ])
        .unwrap();
        assert_eq!(
            m,
            vec![
                MonitorSpec {
                    addr: ListenAddr::Tcp("127.0.0.1:4444".into()),
                    pretty: false
                },
                MonitorSpec {
                    addr: ListenAddr::Unix("/tmp/q.sock".into()),
                    pretty: true
                },
            ]
        );
        let e = mons(&["--chardev", "socket,path=/x,server=on,id=m0"]).unwrap_err();
        assert!(e.contains("wait=on"), "{e}");
        let e = mons(&["--monitor", "m1"]).unwrap_err();
        assert_eq!(e, "--monitor m1: chardev \"m1\" not found");
        let e = mons(&[
            "--chardev",
            "socket,path=/x,server=on,wait=off,id=a,bogus=1",
        ])
        .unwrap_err();
        assert!(e.ends_with("Invalid parameter 'bogus'"), "{e}");
    }
}
