//! The block layer's configuration in QEMU's own terms: the QAPI types of
//! `blockdev-add` (`BlockdevOptions`), `block-export-add`
//! (`BlockExportOptions`) and `object-add` (`ObjectOptions`) for the
//! drivers, exports and objects blockwire has, and a strict input visitor
//! that reads them as qemu-storage-daemon 7.2 reads its `--blockdev`,
//! `--export` and `--object` options.
//!
//! * [`json`] and [`keyval`]: the two syntaxes (`{"driver": "file", ...}`
//!   and `driver=file,...`), with QEMU's parsers' rules and messages;
//! * [`schema`]: the type system; [`block_core`], [`drivers`],
//!   [`block_export`], [`qom`]: the types, named and ordered as QEMU 7.2
//!   declares them, each with the conversion of a checked value into the
//!   typed options the graph takes ([`crate::block::options`],
//!   [`crate::block::export_options`]);
//! * [`visit`]: the checks, with QEMU's error messages and member paths;
//! * [`introspect`]: the types as `query-qmp-schema` returns them.
//!
//! Every member the schema accepts is either carried out or refused by
//! name: QEMU members blockwire does not implement are in the schema so
//! that they are refused as "not supported by blockwire" rather than as
//! a typo ("is unexpected").
//!
//! The messages were taken from qemu-storage-daemon 7.2 (the version the
//! QMP differential test runs), and tests/tests/serve_qapi.rs checks them
//! against it. Where QEMU 10 (the installed utilities) words something
//! differently, 7.2 is followed and the difference is noted where it
//! applies (so far one: negative sizes, in `convert::non_negative`).

pub mod block_core;
pub mod block_export;
mod convert;
pub mod drivers;
pub mod introspect;
pub mod json;
pub mod keyval;
pub mod qom;
pub mod rbd;
pub mod schema;
#[cfg(test)]
mod tests;
pub mod visit;

use serde_json::Value;

use super::export_options::ExportOptions;
use super::options::BlockdevOptions;
pub use qom::ObjectOptions;

/// A QAPI input error, as QEMU's `GenericError`: one line that names the
/// member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    desc: String,
}

impl Error {
    pub fn new(desc: impl Into<String>) -> Self {
        Self { desc: desc.into() }
    }

    /// The message (QMP's `desc`).
    pub fn desc(&self) -> &str {
        &self.desc
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.desc)
    }
}

impl std::error::Error for Error {}

/// Which syntax a command-line value is in: JSON if it starts with `{`
/// (QEMU's `qobject_input_visitor_new_str` rule), else key=value.
fn parse_str(s: &str, implied_key: &str) -> Result<(Value, bool), Error> {
    if s.starts_with('{') {
        json::parse(s).map(|v| (v, false)).map_err(Error::new)
    } else {
        keyval::parse(s, Some(implied_key))
            .map(|v| (v, true))
            .map_err(Error::new)
    }
}

/// `--blockdev`: JSON or key=value (`driver` implied:
/// `file,node-name=f0,filename=disk.img`).
pub fn parse_blockdev_arg(s: &str) -> Result<BlockdevOptions, Error> {
    let (v, keyval) = parse_str(s, "driver")?;
    blockdev_options(&v, keyval)
}

/// `--export` in QAPI form: JSON or key=value (`type` implied:
/// `nbd,id=e0,node-name=f0`).
pub fn parse_export_arg(s: &str) -> Result<ExportOptions, Error> {
    let (v, keyval) = parse_str(s, "type")?;
    export_options(&v, keyval)
}

/// `--object`: JSON or key=value (`qom-type` implied:
/// `throttle-group,id=tg0,limits.iops-total=100`).
pub fn parse_object_arg(s: &str) -> Result<ObjectOptions, Error> {
    let (v, keyval) = parse_str(s, "qom-type")?;
    object_options(&v, keyval)
}

/// `blockdev-add`'s arguments (`keyval`: the value came from key=value
/// syntax, all scalars strings).
pub fn blockdev_options(v: &Value, keyval: bool) -> Result<BlockdevOptions, Error> {
    let checked = visit::visit(&block_core::BLOCKDEV_OPTIONS_TYPE, v, keyval)?;
    block_core::convert(&checked, keyval)
}

/// `block-export-add`'s arguments.
pub fn export_options(v: &Value, keyval: bool) -> Result<ExportOptions, Error> {
    let checked = visit::visit(&block_export::BLOCK_EXPORT_OPTIONS_TYPE, v, keyval)?;
    block_export::convert(&checked, keyval)
}

/// `object-add`'s arguments.
pub fn object_options(v: &Value, keyval: bool) -> Result<ObjectOptions, Error> {
    let checked = visit::visit(&qom::OBJECT_OPTIONS_TYPE, v, keyval)?;
    qom::convert(&checked, keyval)
}

/// Whether an `--export` value is QAPI (JSON, or key=value with a `type`)
/// rather than blockwire's own `name=...,file=...` form: it starts with
/// `{`, or has a `type=` item, or its first item is a bare word that is
/// none of the short form's flags (`nbd,id=...` implies `type=nbd`).
pub fn is_qapi_export(s: &str) -> bool {
    if s.starts_with('{') {
        return true;
    }
    let items = split_items(s);
    let first = items.first().map_or("", String::as_str);
    let sugar_flags = ["readonly", "read-only", "ro", "cow", "allocation-depth"];
    if !first.is_empty() && !first.contains('=') && !sugar_flags.contains(&first) {
        return true;
    }
    items.iter().any(|item| item.starts_with("type="))
}

/// Items separated by single commas; `,,` is a comma inside an item.
fn split_items(s: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                if let Some(i) = items.last_mut() {
                    i.push(',');
                }
            }
            ',' => items.push(String::new()),
            c => {
                if let Some(i) = items.last_mut() {
                    i.push(c);
                }
            }
        }
    }
    items
}

/// One command-line option that failed, printed as qemu-storage-daemon
/// prints it: `--blockdev VALUE: message`.
#[derive(Debug)]
pub struct ArgError {
    pub option: &'static str,
    pub value: String,
    pub error: Error,
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One line, whatever the value holds: JSON may span lines.
        let value: String = self
            .value
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        write!(f, "{} {}: {}", self.option, value, self.error)
    }
}

impl std::error::Error for ArgError {}

/// Everything `blockwire serve` was given in QAPI form, parsed and
/// checked, in the order the graph needs them: objects (throttle groups,
/// secrets), then nodes, then exports. (qemu-storage-daemon takes its
/// options strictly in command-line order, so that a node naming a group
/// given after it fails there; here it works.)
#[derive(Debug, Default)]
pub struct ServeConfig {
    pub objects: Vec<ObjectOptions>,
    pub blockdevs: Vec<BlockdevOptions>,
    pub exports: Vec<ExportOptions>,
    /// The values as given, for messages (parallel to the lists above).
    given: [Vec<String>; 3],
}

impl ServeConfig {
    /// Parses the raw option values; the first bad one is the error.
    pub fn parse<'a>(
        objects: impl IntoIterator<Item = &'a str>,
        blockdevs: impl IntoIterator<Item = &'a str>,
        exports: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ArgError> {
        fn all<'a, T>(
            option: &'static str,
            values: impl IntoIterator<Item = &'a str>,
            given: &mut Vec<String>,
            parse: fn(&str) -> Result<T, Error>,
        ) -> Result<Vec<T>, ArgError> {
            values
                .into_iter()
                .map(|v| {
                    given.push(v.to_owned());
                    parse(v).map_err(|error| ArgError {
                        option,
                        value: v.to_owned(),
                        error,
                    })
                })
                .collect()
        }
        let mut given: [Vec<String>; 3] = Default::default();
        let [o, b, e] = &mut given;
        Ok(Self {
            objects: all("--object", objects, o, parse_object_arg)?,
            blockdevs: all("--blockdev", blockdevs, b, parse_blockdev_arg)?,
            exports: all("--export", exports, e, parse_export_arg)?,
            given,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.blockdevs.is_empty() && self.exports.is_empty()
    }

    /// The error for item `i` of list `which`, naming it as given.
    fn fail(&self, option: &'static str, which: usize, i: usize, msg: String) -> ArgError {
        ArgError {
            option,
            value: self.given[which].get(i).cloned().unwrap_or_default(),
            error: Error::new(msg),
        }
    }

    /// Adds the objects and then the nodes to `graph`.
    pub async fn build_nodes(&self, graph: &super::Graph) -> Result<(), ArgError> {
        for (i, o) in self.objects.iter().enumerate() {
            o.add_to(graph)
                .map_err(|e| self.fail("--object", 0, i, e.to_string()))?;
        }
        for (i, b) in self.blockdevs.iter().enumerate() {
            graph
                .add(b.clone())
                .await
                .map_err(|e| self.fail("--blockdev", 1, i, e.to_string()))?;
        }
        Ok(())
    }

    /// Checks export `i` against `graph` with QEMU's messages (its node
    /// exists, is writable if the export is, has the bitmaps named).
    pub fn check_export(&self, i: usize, graph: &super::Graph) -> Result<(), ArgError> {
        match self.exports.get(i) {
            Some(e) => e.check(graph).map_err(|m| self.export_error(i, m)),
            None => Ok(()),
        }
    }

    /// An error about export `i`, naming the `--export` value it came from.
    pub fn export_error(&self, i: usize, msg: impl std::fmt::Display) -> ArgError {
        self.fail("--export", 2, i, msg.to_string())
    }

    /// [`Self::build_nodes`], then [`Self::check_export`] for each export:
    /// everything that can fail before an export is served.
    pub async fn build(&self, graph: &super::Graph) -> Result<(), ArgError> {
        self.build_nodes(graph).await?;
        for i in 0..self.exports.len() {
            self.check_export(i, graph)?;
        }
        Ok(())
    }
}
