//! `blockwire info URI`: what `nbdinfo` shows, with the same `--json`
//! fields (checked against nbdinfo on qemu-nbd by the interop tests).

use std::fmt::Write as _;
use std::io::Write as _;

use blockwire_core::client::{Export, Mode};
use blockwire_core::wire::{HeaderMode, TransmissionFlags as F};
use clap::Args;

use crate::client::text::escape;
use crate::client::{ClientError, Connection, Details, NbdUri, Options, handshake};

use super::json::{human_size, string as js};

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// NBD URI, e.g. nbd://host:10809/export or nbd+unix:///?socket=PATH
    #[arg(value_name = "URI")]
    pub uri: String,
    /// Output JSON (the fields `nbdinfo --json` prints).
    #[arg(long)]
    pub json: bool,
    /// List all exports on the server.
    #[arg(short = 'L', long, conflicts_with = "map")]
    pub list: bool,
    /// Show the extents of a metadata context (default base:allocation).
    #[arg(long, value_name = "CONTEXT", num_args = 0..=1, require_equals = true,
          default_missing_value = "base:allocation")]
    pub map: Option<String>,
    /// Print only the export size in bytes.
    #[arg(long, conflicts_with_all = ["list", "map"])]
    pub size: bool,
    /// Do not probe the content of the export (with `file`).
    #[arg(long)]
    pub no_content: bool,
    #[command(flatten)]
    pub timeout: super::TimeoutArg,
}

/// Bytes from the start of the export given to `file` to guess content.
const CONTENT_SAMPLE: u64 = 256 * 1024;

pub async fn run(args: InfoArgs) -> Result<(), String> {
    let uri = NbdUri::parse(&args.uri).map_err(|e| e.to_string())?;
    let opts = args.timeout.options();
    let out = if let Some(ctx) = &args.map {
        map(&uri, ctx, args.json, &opts).await
    } else if args.list {
        list(&uri, args.json, &opts).await
    } else if args.size {
        let d = details(&uri, &opts).await.map_err(|e| e.to_string())?;
        let size = d.export.map_or(0, |e| e.size);
        Ok(if args.json {
            format!("{{\n\"export-size\": {size}\n}}\n")
        } else {
            format!("{size}\n")
        })
    } else {
        let d = details(&uri, &opts).await.map_err(|e| e.to_string())?;
        let content = if args.no_content {
            None
        } else {
            content(&uri, &opts).await
        };
        let e = ExportReport {
            name: uri.export.clone(),
            uri: uri.to_string(),
            details: d.clone(),
            content,
        };
        Ok(render(&d, &[e], args.json))
    }
    .map_err(|e| e.to_string())?;
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| format!("stdout: {e}"))
}

/// The export's details by `NBD_OPT_INFO` (and all its contexts); servers
/// without `INFO` are asked with `GO` instead.
async fn details(uri: &NbdUri, opts: &Options) -> Result<Details, ClientError> {
    match handshake(uri, opts, Mode::Info).await {
        Ok(s) => Ok(s.details),
        Err(ClientError::Protocol(_)) => {
            let c = Connection::connect(uri, opts).await?;
            let d = c.details().clone();
            c.close().await;
            Ok(d)
        }
        Err(e) => Err(e),
    }
}

/// `file -b` on the first bytes, as nbdinfo does; `None` if anything in
/// the way fails (content is a hint, not a requirement).
async fn content(uri: &NbdUri, opts: &Options) -> Option<String> {
    let c = Connection::connect(uri, opts).await.ok()?;
    let len = c.size().min(CONTENT_SAMPLE).min(c.max_request());
    let len = len - len % u64::from(c.export().min_block());
    let data = if len == 0 {
        Vec::new()
    } else {
        c.read_vec(0, len as u32).await.ok()?
    };
    c.close().await;
    let mut child = std::process::Command::new("file")
        .args(["-b", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    // `file` may stop reading early; a broken pipe is fine.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().ok()?;
    let _ = feeder.join();
    let s = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}

struct ExportReport {
    name: String,
    uri: String,
    details: Details,
    content: Option<String>,
}

async fn list(uri: &NbdUri, json: bool, opts: &Options) -> Result<String, ClientError> {
    let s = handshake(uri, opts, Mode::List).await?;
    let mut reports = Vec::new();
    for (name, desc) in &s.details.exports {
        let mut u = uri.clone();
        u.export = name.clone();
        let mut d = details(&u, opts).await?;
        if d.description.is_none() && !desc.is_empty() {
            d.description = Some(desc.clone());
        }
        reports.push(ExportReport {
            name: name.clone(),
            uri: u.to_string(),
            details: d,
            content: None,
        });
    }
    let mut top = s.details;
    if let Some(r) = reports.first() {
        top.export = r.details.export;
        top.tls |= r.details.tls;
    }
    Ok(render(&top, &reports, json))
}

/// (JSON name, flag) in nbdinfo's order.
const FLAGS: [(&str, F); 10] = [
    ("is_rotational", F::ROTATIONAL),
    ("is_read_only", F::READ_ONLY),
    ("can_cache", F::SEND_CACHE),
    ("can_df", F::SEND_DF),
    ("can_fast_zero", F::SEND_FAST_ZERO),
    ("can_flush", F::SEND_FLUSH),
    ("can_fua", F::SEND_FUA),
    ("can_multi_conn", F::CAN_MULTI_CONN),
    ("can_trim", F::SEND_TRIM),
    ("can_zero", F::SEND_WRITE_ZEROES),
];

fn flag(e: &Export, name: &str, f: F) -> bool {
    // libnbd reports DF only when structured replies can carry it.
    e.has(f) && (name != "can_df" || e.mode != HeaderMode::Simple)
}

fn render(top: &Details, exports: &[ExportReport], json: bool) -> String {
    let mut s = String::new();
    let structured = top.structured();
    if json {
        let _ = write!(
            s,
            "{{\n\"protocol\": \"newstyle-fixed\",\n\"TLS\": {},\n\"structured\": {},\n\"exports\": [",
            top.tls, structured
        );
        for (i, r) in exports.iter().enumerate() {
            s.push_str(if i == 0 { "\n" } else { ",\n" });
            export_json(&mut s, r);
        }
        s.push_str(" ]\n}\n");
    } else {
        let packets = match top.export.map(|e| e.mode) {
            Some(HeaderMode::Extended) => "extended",
            Some(HeaderMode::Structured) => "structured",
            _ => "simple",
        };
        let tls = if top.tls { "with" } else { "without" };
        let _ = writeln!(
            s,
            "protocol: newstyle-fixed {tls} TLS, using {packets} packets"
        );
        for r in exports {
            export_text(&mut s, r);
        }
    }
    s
}

fn export_json(s: &mut String, r: &ExportReport) {
    let d = &r.details;
    let _ = write!(s, "\t{{\n\t\"export-name\": {},\n", js(&r.name));
    if let Some(c) = d.canonical_name.as_ref().filter(|c| **c != r.name) {
        let _ = writeln!(s, "\t\"canonical-export-name\": {},", js(c));
    }
    if let Some(desc) = &d.description {
        let _ = writeln!(s, "\t\"description\": {},", js(desc));
    }
    if let Some(c) = &r.content {
        let _ = writeln!(s, "\t\"content\": {},", js(c));
    }
    let _ = writeln!(s, "\t\"uri\": {},", js(&r.uri));
    if !d.contexts.is_empty() {
        s.push_str("\t\"contexts\": [\n");
        let names: Vec<String> = d
            .contexts
            .iter()
            .map(|(_, n)| format!("\t\t{}", js(n)))
            .collect();
        s.push_str(&names.join(",\n"));
        s.push_str("\n\t],\n");
    }
    if let Some(e) = &d.export {
        for (name, f) in FLAGS {
            let _ = writeln!(s, "\t\"{name}\": {},", flag(e, name, f));
        }
        if let Some(b) = e.block_size {
            let _ = writeln!(s, "\t\"block_size_minimum\": {},", b.minimum);
            let _ = writeln!(s, "\t\"block_size_preferred\": {},", b.preferred);
            let _ = writeln!(s, "\t\"block_size_maximum\": {},", b.maximum);
        }
        let _ = write!(
            s,
            "\t\"export-size\": {},\n\t\"export-size-str\": {}\n",
            e.size,
            js(&human_size(e.size).0)
        );
    }
    s.push_str("\t}");
}

fn export_text(s: &mut String, r: &ExportReport) {
    let d = &r.details;
    let _ = writeln!(s, "export={}:", js(&r.name));
    if let Some(c) = d.canonical_name.as_ref().filter(|c| **c != r.name) {
        let _ = writeln!(s, "\tcanonical-export-name: {}", escape(c));
    }
    if let Some(desc) = &d.description {
        let _ = writeln!(s, "\tdescription: {}", escape(desc));
    }
    if let Some(e) = &d.export {
        let (h, human) = human_size(e.size);
        if human {
            let _ = writeln!(s, "\texport-size: {} ({h})", e.size);
        } else {
            let _ = writeln!(s, "\texport-size: {}", e.size);
        }
    }
    if let Some(c) = &r.content {
        let _ = writeln!(s, "\tcontent: {}", escape(c));
    }
    let _ = writeln!(s, "\turi: {}", r.uri);
    if !d.contexts.is_empty() {
        s.push_str("\tcontexts:\n");
        for (_, n) in &d.contexts {
            let _ = writeln!(s, "\t\t{}", escape(n));
        }
    }
    if let Some(e) = &d.export {
        for (name, f) in FLAGS {
            let _ = writeln!(s, "\t{name}: {}", flag(e, name, f));
        }
        if let Some(b) = e.block_size {
            let _ = writeln!(s, "\tblock_size_minimum: {}", b.minimum);
            let _ = writeln!(s, "\tblock_size_preferred: {}", b.preferred);
            let _ = writeln!(s, "\tblock_size_maximum: {}", b.maximum);
        }
    }
}

/// nbdinfo's names for extent types.
fn describe(context: &str, t: u64) -> String {
    match context {
        "base:allocation" => match t {
            0 => "data".into(),
            1 => "hole".into(),
            2 => "zero".into(),
            3 => "hole,zero".into(),
            _ => format!("{t}"),
        },
        "qemu:allocation-depth" => match t {
            0 => "absent".into(),
            1 => "local".into(),
            n => format!("backing depth {n}"),
        },
        c if c.starts_with("qemu:dirty-bitmap:") => match t {
            0 => "clean".into(),
            1 => "dirty".into(),
            _ => format!("{t}"),
        },
        _ => String::new(),
    }
}

/// Extents of `context` over the whole export, adjacent runs of one type
/// merged (as nbdinfo prints them).
pub async fn extents(c: &Connection, context: &str) -> Result<Vec<(u64, u64, u64)>, ClientError> {
    let size = c.size();
    // Compact requests carry 32-bit lengths.
    let step = if c.export().mode == HeaderMode::Extended {
        1 << 40
    } else {
        1 << 31
    };
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    let mut at = 0;
    while at < size {
        let len = (size - at).min(step);
        let ext = c.block_status(context, at, len).await?;
        if ext.is_empty() {
            return Err(ClientError::Closed(format!(
                "the server described no extent at offset {at}"
            )));
        }
        for e in ext {
            let len = e.length.min(size - at);
            match out.last_mut() {
                Some(last) if last.2 == e.flags && last.0 + last.1 == at => last.1 += len,
                _ => out.push((at, len, e.flags)),
            }
            at += len;
            if at >= size {
                break;
            }
        }
    }
    Ok(out)
}

async fn map(
    uri: &NbdUri,
    context: &str,
    json: bool,
    base: &Options,
) -> Result<String, ClientError> {
    let opts = Options {
        meta_contexts: vec![context.to_owned()],
        ..base.clone()
    };
    let c = Connection::connect(uri, &opts).await?;
    let ext = extents(&c, context).await?;
    c.close().await;
    let mut s = String::new();
    if json {
        s.push_str("[\n");
        let rows: Vec<String> = ext
            .iter()
            .map(|&(o, l, t)| {
                format!(
                    "{{ \"offset\": {o}, \"length\": {l}, \"type\": {t}, \"description\": {}}}",
                    js(&describe(context, t))
                )
            })
            .collect();
        s.push_str(&rows.join(",\n"));
        s.push_str("\n]\n");
    } else {
        for (o, l, t) in ext {
            let _ = writeln!(s, "{o:10}  {l:10}  {t:3}  {}", describe(context, t));
        }
    }
    Ok(s)
}
