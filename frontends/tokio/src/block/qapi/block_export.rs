//! `BlockExportOptions` (QEMU 7.2 `qapi/block-export.json`) for the one
//! export type blockwire has, `nbd`, and its conversion into
//! [`ExportOptions`].

use serde_json::Value;

use super::Error;
use super::convert::Obj;
use super::schema::{Alternate, Literal, Member, Struct, Type, Union, Variant};
use crate::block::export_options::{BitmapRef, ExportOptions, NBD_MAX_STRING_SIZE};
use crate::block::graph::id_wellformed;

pub static BLOCK_EXPORT_OPTIONS: Union = Union {
    name: "BlockExportOptions",
    tag: "type",
    tag_enum: "BlockExportType",
    base: &[
        Member::req("id", Type::Str),
        // Exports run on the process's runtime; there are no iothreads.
        Member::unsupported("fixed-iothread", Type::Bool, Some(Literal::Bool(false))),
        Member::unsupported("iothread", Type::Str, None),
        Member::req("node-name", Type::Str),
        Member::opt("writable", Type::Bool),
        // Flushing after every write before it is acknowledged: not in
        // the export layer yet; `false` is QEMU's default.
        Member::unsupported("writethrough", Type::Bool, Some(Literal::Bool(false))),
    ],
    variants: &[Variant {
        case: "nbd",
        members: &NBD,
    }],
};

pub static BLOCK_EXPORT_OPTIONS_TYPE: Type = Type::Union(&BLOCK_EXPORT_OPTIONS);

pub static BLOCK_DIRTY_BITMAP: Struct = Struct {
    name: "BlockDirtyBitmap",
    members: &[
        Member::req("node", Type::Str),
        Member::req("name", Type::Str),
    ],
    features: &[],
};

pub static BLOCK_DIRTY_BITMAP_OR_STR: Alternate = Alternate {
    name: "BlockDirtyBitmapOrStr",
    members: &[Type::Str, Type::Struct(&BLOCK_DIRTY_BITMAP)],
};

static BITMAP_T: Type = Type::Alternate(&BLOCK_DIRTY_BITMAP_OR_STR);

/// `BlockExportOptionsNbd` (with its base `BlockExportOptionsNbdBase`).
pub static NBD: Struct = Struct {
    name: "BlockExportOptionsNbd",
    members: &[
        Member::opt("name", Type::Str),
        Member::opt("description", Type::Str),
        Member::opt("bitmaps", Type::List(&BITMAP_T)),
        Member::opt("allocation-depth", Type::Bool),
    ],
    features: &[],
};

/// Converts a checked `BlockExportOptions` value.
pub fn convert(v: &Value, keyval: bool) -> Result<ExportOptions, Error> {
    let o = Obj::root(v, keyval)?;
    let id = o.req_str("id")?;
    if !id_wellformed(id) {
        return Err(Error::new("Invalid block export id"));
    }
    let mut e = ExportOptions::new(id, o.req_str("node-name")?);
    e.writable = o.bool("writable")?.unwrap_or(false);
    if let Some(name) = o.str("name")? {
        e.name = name.to_owned();
    }
    if e.name.len() > NBD_MAX_STRING_SIZE {
        return Err(Error::new(format!("export name '{}' too long", e.name)));
    }
    if let Some(d) = o.str("description")? {
        if d.len() > NBD_MAX_STRING_SIZE {
            return Err(Error::new(format!("description '{d}' too long")));
        }
        e.description = Some(d.to_owned());
    }
    for (i, b) in o.list("bitmaps")?.iter().enumerate() {
        e.bitmaps.push(match b {
            Value::String(name) => BitmapRef::Name(name.clone()),
            _ => {
                let path = o.elem_path("bitmaps", i);
                let b = Obj::object(b, &path, keyval)?;
                BitmapRef::Node {
                    node: b.req_str("node")?.to_owned(),
                    name: b.req_str("name")?.to_owned(),
                }
            }
        });
    }
    e.allocation_depth = o.bool("allocation-depth")?.unwrap_or(false);
    Ok(e)
}
