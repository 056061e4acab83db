//! I/O limits over QMP: `qom-set` / `qom-get` on a `throttle-group`
//! object (what qemu-storage-daemon 7.2 offers: its throttle nodes share
//! such groups), and `block_set_io_throttle` on an export, QEMU's older
//! per-BlockBackend limits (a block export is the BlockBackend here).

use serde_json::{Value, json};

use super::Daemon;
use super::commands::QmpError;
use crate::block::qapi::qom;
use crate::block::throttle_group::ThrottleGroup;
use blockwire_core::block::throttle::ThrottleLimits;
use std::sync::Arc;

type Reply = Result<Value, QmpError>;

fn device_not_found(name: &str) -> QmpError {
    QmpError {
        class: "DeviceNotFound",
        desc: format!("Device '{name}' not found"),
    }
}

/// The throttle group a QOM path names: its id, or `/objects/ID` (user
/// objects are children of `/objects`, and a partial path that is one
/// object's id resolves to it, as `object_resolve_path` finds it).
fn group_at(d: &Daemon, path: &str) -> Result<Arc<ThrottleGroup>, QmpError> {
    let id = path.strip_prefix("/objects/").unwrap_or(path);
    if let Some(g) = d.graph.throttle_group(id) {
        return Ok(g);
    }
    if d.graph.secret(id).is_some() || d.graph.tls_creds(id).is_some() {
        // A secret or TLS credentials object: QEMU has properties there,
        // and blockwire does not model them as QOM properties.
        return Err(QmpError::generic(format!(
            "Object '{id}' is not a throttle-group: blockwire's qom-get and qom-set reach throttle-group properties only"
        )));
    }
    Err(device_not_found(path))
}

fn property_not_found(property: &str) -> QmpError {
    QmpError::generic(format!("Property 'throttle-group.{property}' not found"))
}

/// `qom-get`: a throttle group's `limits`, or one legacy `x-` limit.
pub fn qom_get(d: &Daemon, a: &Value) -> Reply {
    let group = group_at(d, a["path"].as_str().unwrap_or(""))?;
    let property = a["property"].as_str().unwrap_or("");
    qom::limits_property(&group.limits(), property).ok_or_else(|| property_not_found(property))
}

/// `qom-set`: a throttle group's `limits`, merged over the group's as
/// `throttle_group_set_limits` merges them; the legacy `x-` properties
/// only take values before the object is complete, as in QEMU.
pub fn qom_set(d: &Daemon, a: &Value) -> Reply {
    let group = group_at(d, a["path"].as_str().unwrap_or(""))?;
    let property = a["property"].as_str().unwrap_or("");
    match property {
        "limits" => {
            let limits = qom::merged_limits(&group.limits(), &a["value"])?;
            group.set_limits(limits).map_err(QmpError::generic)?;
            Ok(json!({}))
        }
        p if qom::limits_property(&group.limits(), p).is_some() => Err(QmpError::generic(
            "Property cannot be set after initialization",
        )),
        p => Err(property_not_found(p)),
    }
}

/// `BlockIOThrottle` members and the `ThrottleLimits` names they set.
const LEGACY: [(&str, &str); 19] = [
    ("bps", "bps-total"),
    ("bps_rd", "bps-read"),
    ("bps_wr", "bps-write"),
    ("iops", "iops-total"),
    ("iops_rd", "iops-read"),
    ("iops_wr", "iops-write"),
    ("bps_max", "bps-total-max"),
    ("bps_rd_max", "bps-read-max"),
    ("bps_wr_max", "bps-write-max"),
    ("iops_max", "iops-total-max"),
    ("iops_rd_max", "iops-read-max"),
    ("iops_wr_max", "iops-write-max"),
    ("bps_max_length", "bps-total-max-length"),
    ("bps_rd_max_length", "bps-read-max-length"),
    ("bps_wr_max_length", "bps-write-max-length"),
    ("iops_max_length", "iops-total-max-length"),
    ("iops_rd_max_length", "iops-read-max-length"),
    ("iops_wr_max_length", "iops-write-max-length"),
    ("iops_size", "iops-size"),
];

/// `block_set_io_throttle`, as `qmp_block_set_io_throttle` does it: the
/// export (by `device` or `id`, exactly one) gets these limits, checked
/// as QEMU checks them; it joins `group` (by default a group named after
/// it) and the group takes the limits, so every member shares them;
/// all-zero rates turn its throttling off. Requests already waiting keep
/// their place; the new limits count from the next one.
///
/// qemu-storage-daemon 7.2 has no BlockBackends to name and answers
/// `CommandNotFound`; QEMU 2.11's schema (the seed) and the system
/// emulator have the command, with these arguments.
pub fn block_set_io_throttle(d: &Daemon, a: &Value) -> Reply {
    let name = match (a["device"].as_str(), a["id"].as_str()) {
        (Some(n), None) | (None, Some(n)) => n,
        _ => return Err(QmpError::generic("Need exactly one of 'device' and 'id'")),
    };
    let table = d.registry.snapshot();
    let Some(export) = table.iter().find(|e| e.id == name) else {
        return Err(device_not_found(name));
    };
    let members = LEGACY
        .iter()
        .filter_map(|(qmp, limit)| Some(((*limit).to_owned(), a.get(*qmp)?.clone())));
    let limits = qom::merged_limits(
        &ThrottleLimits::default(),
        &Value::Object(members.collect()),
    )?;
    let l = &limits;
    let enabled = [
        l.bps_total,
        l.bps_read,
        l.bps_write,
        l.iops_total,
        l.iops_read,
        l.iops_write,
    ]
    .iter()
    .any(|b| b.avg > 0);
    if !enabled {
        export.set_throttle(None);
        return Ok(json!({}));
    }
    let wanted = a["group"].as_str();
    let group = match (export.throttle(), wanted) {
        (Some(g), None) => g,
        (Some(g), Some(w)) if g.id() == w => g,
        (_, w) => {
            // Groups are shared by name, throttle-group objects included
            // (QEMU's `throttle_group_incref`).
            let w = w.unwrap_or(name);
            let member = table
                .iter()
                .filter_map(|e| e.throttle())
                .find(|g| g.id() == w);
            match member.or_else(|| d.graph.throttle_group(w)) {
                Some(g) => g,
                None => Arc::new(ThrottleGroup::new(w, limits).map_err(QmpError::generic)?),
            }
        }
    };
    group.set_limits(limits).map_err(QmpError::generic)?;
    export.set_throttle(Some(group));
    Ok(json!({}))
}
