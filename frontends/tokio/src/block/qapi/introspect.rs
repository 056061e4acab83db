//! The schema as `query-qmp-schema` returns it: a list of `SchemaInfo`
//! objects (`meta-type` `command`, `object`, `enum`, `alternate`,
//! `array`, `builtin`), built from the same statics the visitor checks
//! against, so what is advertised is what is accepted.
//!
//! As in QEMU, every integer type is shown as the builtin `int`, optional
//! members carry `"default": null`, and with `mask` the names of
//! non-builtin types are replaced by numbers (QEMU 7.2 does this to keep
//! clients from depending on type names). Members blockwire refuses
//! ([`Support::Only`]) are left out.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::block_core::BLOCKDEV_OPTIONS_TYPE;
use super::block_export::BLOCK_EXPORT_OPTIONS_TYPE;
use super::qom::OBJECT_OPTIONS_TYPE;
use super::schema::{Member, Struct, Support, Type};

/// One command: its arguments' type (an object) and return type (None:
/// the empty object, as `blockdev-add` returns `{}`).
#[derive(Clone, Copy)]
pub struct Command {
    pub name: &'static str,
    pub arg_type: &'static Type,
    pub ret_type: Option<&'static Type>,
}

/// The commands whose arguments this module's schema describes.
pub const COMMANDS: [Command; 3] = [
    Command {
        name: "blockdev-add",
        arg_type: &BLOCKDEV_OPTIONS_TYPE,
        ret_type: None,
    },
    Command {
        name: "block-export-add",
        arg_type: &BLOCK_EXPORT_OPTIONS_TYPE,
        ret_type: None,
    },
    Command {
        name: "object-add",
        arg_type: &OBJECT_OPTIONS_TYPE,
        ret_type: None,
    },
];

static EMPTY: Struct = Struct {
    name: "q_empty",
    members: &[],
    features: &[],
};
static EMPTY_T: Type = Type::Struct(&EMPTY);

/// One event: its data's type (None: no data).
#[derive(Clone, Copy)]
pub struct EventInfo {
    pub name: &'static str,
    pub arg_type: Option<&'static Type>,
}

/// `SchemaInfo` for `commands` and every type they reach.
pub fn schema_info(commands: &[Command], mask: bool) -> Vec<Value> {
    schema_info_with_events(commands, &[], mask)
}

/// [`schema_info`] with events (`meta-type` `event`), as
/// `query-qmp-schema` lists them.
pub fn schema_info_with_events(
    commands: &[Command],
    events: &[EventInfo],
    mask: bool,
) -> Vec<Value> {
    let mut b = Builder {
        mask,
        names: HashMap::new(),
        done: HashSet::new(),
        out: Vec::new(),
        queue: Vec::new(),
    };
    for c in commands {
        let arg = b.use_type(c.arg_type);
        let ret = b.use_type(c.ret_type.unwrap_or(&EMPTY_T));
        b.out.push(json!({
            "name": c.name,
            "meta-type": "command",
            "arg-type": arg,
            "ret-type": ret,
        }));
    }
    for e in events {
        let mut v = json!({"name": e.name, "meta-type": "event"});
        if let Some(t) = e.arg_type {
            v["arg-type"] = json!(b.use_type(t));
        }
        b.out.push(v);
    }
    while let Some(t) = b.queue.pop() {
        b.emit(t);
    }
    b.out
}

struct Builder {
    mask: bool,
    /// Real name → name shown.
    names: HashMap<String, String>,
    /// Names already queued or emitted.
    done: HashSet<String>,
    out: Vec<Value>,
    queue: Vec<Type>,
}

fn builtin(t: &Type) -> Option<(&'static str, &'static str)> {
    match t {
        Type::Str => Some(("str", "string")),
        Type::Int(_) => Some(("int", "int")),
        Type::Bool => Some(("bool", "boolean")),
        Type::Null => Some(("null", "null")),
        Type::Number => Some(("number", "number")),
        Type::Any => Some(("any", "value")),
        _ => None,
    }
}

fn shown(m: &Member) -> bool {
    m.support == Support::Yes
}

impl Builder {
    /// The name shown for `real` (a number when masking).
    fn name(&mut self, real: &str) -> String {
        if !self.mask {
            return real.to_owned();
        }
        let next = self.names.len().to_string();
        self.names.entry(real.to_owned()).or_insert(next).clone()
    }

    /// Queues `t` for emission once; returns the name it is shown as.
    fn use_type(&mut self, t: &Type) -> String {
        let real = t.name();
        let name = match (builtin(t), t) {
            (Some((n, _)), _) => n.to_owned(),
            (None, Type::List(elem)) => format!("[{}]", self.use_type(elem)),
            _ => self.name(&real),
        };
        if self.done.insert(real) {
            self.queue.push(*t);
        }
        name
    }

    /// A named enum that is not a static (a union's tag).
    fn tag_enum(&mut self, name: &str, values: Vec<&str>) -> String {
        let shown = self.name(name);
        if self.done.insert(name.to_owned()) {
            self.out.push(json!({
                "name": shown,
                "meta-type": "enum",
                "members": values.iter().map(|v| json!({"name": v})).collect::<Vec<_>>(),
                "values": values,
            }));
        }
        shown
    }

    fn member(&mut self, m: &Member) -> Value {
        let mut v = json!({"name": m.name, "type": self.use_type(&m.ty)});
        if m.optional {
            v["default"] = Value::Null;
        }
        if !m.features.is_empty() {
            v["features"] = json!(m.features);
        }
        v
    }

    fn emit(&mut self, t: Type) {
        let real = t.name();
        if let Some((name, json_type)) = builtin(&t) {
            self.out.push(json!({
                "name": name, "meta-type": "builtin", "json-type": json_type,
            }));
            return;
        }
        let name = match t {
            Type::List(_) => self.use_type(&t),
            _ => self.name(&real),
        };
        let info = match t {
            Type::Enum(e) => json!({
                "name": name,
                "meta-type": "enum",
                "members": e.values.iter().map(|v| json!({"name": v})).collect::<Vec<_>>(),
                "values": e.values,
            }),
            Type::Struct(s) => {
                let members: Vec<Value> = s
                    .members
                    .iter()
                    .filter(|m| shown(m))
                    .map(|m| self.member(m))
                    .collect();
                let mut v = json!({"name": name, "meta-type": "object", "members": members});
                if !s.features.is_empty() {
                    v["features"] = json!(s.features);
                }
                v
            }
            Type::Union(u) => {
                let tag_type = self.tag_enum(u.tag_enum, u.cases().collect());
                let mut members = vec![json!({"name": u.tag, "type": tag_type})];
                members.extend(u.base.iter().filter(|m| shown(m)).map(|m| self.member(m)));
                let variants: Vec<Value> = u
                    .variants
                    .iter()
                    .map(|v| {
                        json!({"case": v.case, "type": self.use_type(&Type::Struct(v.members))})
                    })
                    .collect();
                json!({
                    "name": name,
                    "meta-type": "object",
                    "members": members,
                    "tag": u.tag,
                    "variants": variants,
                })
            }
            Type::Alternate(a) => {
                let members: Vec<Value> = a
                    .members
                    .iter()
                    .map(|m| json!({"type": self.use_type(m)}))
                    .collect();
                json!({"name": name, "meta-type": "alternate", "members": members})
            }
            Type::List(elem) => {
                let elem = self.use_type(elem);
                json!({"name": name, "meta-type": "array", "element-type": elem})
            }
            Type::Str | Type::Int(_) | Type::Bool | Type::Null | Type::Number | Type::Any => return,
        };
        self.out.push(info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name(info: &[Value]) -> HashMap<String, Value> {
        info.iter()
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
            .collect()
    }

    #[test]
    fn every_reference_resolves_and_names_are_unique() {
        for mask in [false, true] {
            let info = schema_info(&COMMANDS, mask);
            let map = by_name(&info);
            assert_eq!(map.len(), info.len(), "duplicate names (mask={mask})");
            let mut refs = Vec::new();
            for e in &info {
                for k in ["arg-type", "ret-type", "element-type"] {
                    if let Some(t) = e[k].as_str() {
                        refs.push(t.to_owned());
                    }
                }
                for list in ["members", "variants"] {
                    for m in e[list].as_array().into_iter().flatten() {
                        if let Some(t) = m["type"].as_str() {
                            refs.push(t.to_owned());
                        }
                    }
                }
            }
            for r in refs {
                assert!(map.contains_key(&r), "{r} is referenced but not defined");
            }
        }
    }

    #[test]
    fn blockdev_options_as_qemu_shows_it() {
        let info = by_name(&schema_info(&COMMANDS, false));
        let b = &info["BlockdevOptions"];
        assert_eq!(b["tag"], "driver");
        assert_eq!(
            b["members"][0],
            json!({"name": "driver", "type": "BlockdevDriver"})
        );
        assert_eq!(
            b["members"][1],
            json!({"name": "node-name", "type": "str", "default": null})
        );
        let drivers = info["BlockdevDriver"]["values"].as_array().unwrap();
        assert!(drivers.contains(&json!("file")) && drivers.contains(&json!("blockwire-cow")));
        let file = &info["BlockdevOptionsFile"]["members"];
        let names: Vec<&str> = file
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        // Refused members are not advertised.
        assert_eq!(names, ["filename", "locking", "aio"]);
        assert_eq!(
            info["BlockdevRef"]["members"],
            json!([{"type": "BlockdevOptions"}, {"type": "str"}])
        );
        assert_eq!(info["[BlkdebugInjectErrorOptions]"]["meta-type"], "array");
        assert_eq!(info["int"]["json-type"], "int");
        assert_eq!(info["blockdev-add"]["ret-type"], "q_empty");
    }
}
