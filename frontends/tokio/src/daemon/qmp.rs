//! The QMP wire protocol (QEMU `docs/interop/qmp-spec.rst`), one task per
//! client: the greeting, capabilities negotiation, then commands in order
//! and events as they happen.
//!
//! * Input is cut into messages by [`Framer`] (bounded), each parsed by
//!   QEMU's JSON reader; a malformed message is answered with an error
//!   and the session goes on, as QEMU's monitor does.
//! * A request is checked as `qmp_dispatch` checks it, with its
//!   messages; `id` is echoed in the reply, success or error.
//! * Until `qmp_capabilities` every other command is `CommandNotFound`
//!   and no events are sent; after it, `qmp_capabilities` itself is.
//! * A command runs to its end even if the client goes away meanwhile,
//!   so the graph never holds half a change.
//! * Every client receives every event (the graph's broadcast channel);
//!   one that falls more than the channel's backlog behind loses the
//!   oldest, and is told nothing: QMP has no way to say so.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};

use super::Daemon;
use super::commands::{self, QmpError};
use super::framer::{Frame, Framer};
use crate::block::events::{Event, Stamped};
use crate::block::qapi::json;
use crate::listen::Listener;

/// Accepts QMP clients on `l` until the task is aborted.
pub async fn accept(l: Listener, d: Arc<Daemon>, pretty: bool) {
    loop {
        let r = match &l {
            Listener::Tcp(t) => t.accept().await.map(|(s, p)| {
                let _ = s.set_nodelay(true);
                tokio::spawn(session(s, d.clone(), pretty, p.to_string()));
            }),
            Listener::Unix(u, _) => u.accept().await.map(|(s, _)| {
                tokio::spawn(session(s, d.clone(), pretty, "unix".into()));
            }),
        };
        if let Err(e) = r {
            warn!("QMP accept failed: {e}");
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

fn greeting() -> Value {
    json!({"QMP": {
        "version": {
            "qemu": {"micro": 0, "minor": 2, "major": 7},
            "package": concat!("blockwire ", env!("CARGO_PKG_VERSION")),
        },
        // Out-of-band execution is not offered: commands run in order.
        "capabilities": [],
    }})
}

/// An event as QMP sends it.
pub fn event_json(s: &Stamped) -> Value {
    let t = s.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (name, data) = match &s.event {
        Event::WriteThreshold {
            node_name,
            amount_exceeded,
            write_threshold,
        } => (
            "BLOCK_WRITE_THRESHOLD",
            json!({
                "node-name": node_name,
                "amount-exceeded": amount_exceeded,
                "write-threshold": write_threshold,
            }),
        ),
        Event::IoError {
            node_name,
            operation,
            nospace,
            reason,
        } => {
            // `nospace` is only sent where the device keeps an I/O status
            // (QEMU's `blk_iostatus_is_enabled`): an export does not.
            let _ = nospace;
            // QEMU's reason is strerror(): without std's "(os error N)".
            let reason = match reason.rfind(" (os error ") {
                Some(i) if reason.ends_with(')') => &reason[..i],
                _ => reason.as_str(),
            };
            (
                "BLOCK_IO_ERROR",
                json!({
                    "device": "",
                    "node-name": node_name,
                    "operation": operation,
                    "action": "report",
                    "reason": reason,
                }),
            )
        }
        Event::ExportDeleted { id } => ("BLOCK_EXPORT_DELETED", json!({"id": id})),
    };
    json!({
        "event": name,
        "data": data,
        "timestamp": {"seconds": t.as_secs(), "microseconds": t.subsec_micros()},
    })
}

struct Session {
    d: Arc<Daemon>,
    negotiated: bool,
    pretty: bool,
    /// `quit` succeeded: stop once its reply is out.
    quit: bool,
}

fn error_reply(e: &QmpError, id: Option<&Value>) -> Value {
    let mut r = json!({"error": {"class": e.class, "desc": e.desc}});
    if let Some(id) = id {
        r["id"] = id.clone();
    }
    r
}

impl Session {
    /// The reply to one message.
    async fn handle(&mut self, text: &[u8]) -> Value {
        let parsed = match std::str::from_utf8(text) {
            Ok(t) => json::parse(t),
            Err(_) => Err("JSON parse error, invalid UTF-8 sequence in string".into()),
        };
        let req = match parsed {
            Ok(v) => v,
            Err(e) => return error_reply(&QmpError::generic(e), None),
        };
        let Value::Object(req) = req else {
            return error_reply(&QmpError::generic("QMP input must be a JSON object"), None);
        };
        let id = req.get("id").cloned();
        match self.dispatch(&req).await {
            Ok(ret) => {
                let mut r = json!({"return": ret});
                if let Some(id) = id {
                    r["id"] = id;
                }
                r
            }
            Err(e) => error_reply(&e, id.as_ref()),
        }
    }

    /// QEMU's `qmp_dispatch` checks (`qmp_check_input_obj`), then the
    /// command.
    async fn dispatch(&mut self, req: &Map<String, Value>) -> Result<Value, QmpError> {
        for (k, v) in req {
            match k.as_str() {
                "execute" if !v.is_string() => {
                    return Err(QmpError::generic(
                        "QMP input member 'execute' must be a string",
                    ));
                }
                "arguments" if !v.is_object() => {
                    return Err(QmpError::generic(
                        "QMP input member 'arguments' must be an object",
                    ));
                }
                "execute" | "arguments" | "id" => {}
                // exec-oob is only valid once the oob capability is on,
                // and it is never offered.
                _ => {
                    return Err(QmpError::generic(format!(
                        "QMP input member '{k}' is unexpected"
                    )));
                }
            }
        }
        let Some(cmd) = req.get("execute").and_then(Value::as_str) else {
            return Err(QmpError::generic("QMP input lacks member 'execute'"));
        };
        let empty = Value::Object(Map::new());
        let args = req.get("arguments").unwrap_or(&empty);
        if cmd == "qmp_capabilities" {
            if self.negotiated {
                return Err(QmpError::command_not_found(
                    "Capabilities negotiation is already complete, command ignored",
                ));
            }
            let a = crate::block::qapi::visit::visit(
                &crate::block::qapi::schema::Type::Struct(&super::schema::QMP_CAPABILITIES),
                args,
                false,
            )?;
            if let Some(c) = a["enable"].as_array().and_then(|l| l.first()) {
                return Err(QmpError::generic(format!(
                    "Capability '{}' not available",
                    c.as_str().unwrap_or("")
                )));
            }
            self.negotiated = true;
            return Ok(json!({}));
        }
        if !self.negotiated {
            return Err(QmpError::command_not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        debug!(cmd, "QMP command");
        let r = commands::execute(&self.d, cmd, args).await;
        if cmd == "quit" && r.is_ok() {
            info!("quit requested over QMP");
            self.quit = true;
        }
        r
    }

    fn encode(&self, v: &Value) -> Vec<u8> {
        let mut s = if self.pretty {
            serde_json::to_vec_pretty(v)
        } else {
            serde_json::to_vec(v)
        }
        .unwrap_or_default();
        s.extend_from_slice(b"\r\n");
        s
    }
}

/// One client, until it leaves (or writing to it fails).
pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    sock: S,
    d: Arc<Daemon>,
    pretty: bool,
    peer: String,
) {
    info!(%peer, "QMP client connected");
    let mut events = d.graph.events().subscribe();
    let (mut rd, mut wr) = tokio::io::split(sock);
    let mut s = Session {
        d,
        negotiated: false,
        pretty,
        quit: false,
    };
    let r: std::io::Result<()> = async {
        wr.write_all(&s.encode(&greeting())).await?;
        let mut framer = Framer::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut frames = Vec::new();
        loop {
            tokio::select! {
                n = rd.read(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        return Ok(());
                    }
                    framer.push(&buf[..n], &mut frames);
                    for f in std::mem::take(&mut frames) {
                        let reply = match f {
                            Frame::Message(m) => s.handle(&m).await,
                            Frame::TooBig => error_reply(
                                &QmpError::generic("JSON token size limit exceeded"),
                                None,
                            ),
                        };
                                        wr.write_all(&s.encode(&reply)).await?;
                        if s.quit {
                            wr.flush().await?;
                            s.d.quit.send_replace(true);
                        }
                    }
                }
                e = events.recv() => {
                    match e {
                        Ok(ev) if s.negotiated => wr.write_all(&s.encode(&event_json(&ev))).await?,
                        Ok(_) => {}
                        Err(RecvError::Lagged(n)) => warn!(%peer, "QMP client missed {n} events"),
                        Err(RecvError::Closed) => return Ok(()),
                    }
                }
            }
        }
    }
    .await;
    match r {
        Ok(()) => info!(%peer, "QMP client left"),
        Err(e) => info!(%peer, "QMP client gone: {e}"),
    }
}
