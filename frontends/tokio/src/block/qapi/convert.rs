//! Reading a value the visitor has checked: typed accessors that name
//! members by their full path for the errors conversion itself raises.
//!
//! The visitor has already enforced every type, so an accessor finding
//! the wrong JSON type means the schema and the conversion disagree: an
//! internal error, reported as such rather than a panic.

use serde_json::{Map, Value};

use super::Error;

/// A checked object and where it is in the input.
#[derive(Clone, Copy)]
pub struct Obj<'a> {
    map: &'a Map<String, Value>,
    /// Full path of this object (`""` at the root, `file`, `inject-error[0]`).
    path: &'a str,
    keyval: bool,
}

fn internal(path: &str) -> Error {
    Error::new(format!(
        "internal error: schema and conversion disagree about '{path}'"
    ))
}

/// "Parameter 'x' expects a non-negative number below 2^64": what QEMU
/// 7.2's drivers say of a negative size, offset or alignment. (QEMU 10
/// says "Value '-1' is out of range for parameter 'offset'" instead: the
/// one difference between 7.2 and 10 among the cases
/// tests/tests/serve_qapi.rs checks.)
pub fn non_negative(path: &str) -> Error {
    Error::new(format!(
        "Parameter '{path}' expects a non-negative number below 2^64"
    ))
}

impl<'a> Obj<'a> {
    /// The checked value's top level.
    pub fn root(v: &'a Value, keyval: bool) -> Result<Self, Error> {
        Self::object(v, "", keyval)
    }

    pub fn keyval(&self) -> bool {
        self.keyval
    }

    /// The full path of member `name` of this object.
    pub fn path(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The full path of element `i` of list member `name`.
    pub fn elem_path(&self, name: &str, i: usize) -> String {
        if self.keyval {
            format!("{}.{i}", self.path(name))
        } else {
            format!("{}[{i}]", self.path(name))
        }
    }

    pub fn value(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn str(&self, name: &str) -> Result<Option<&'a str>, Error> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(internal(&self.path(name))),
        }
    }

    pub fn req_str(&self, name: &str) -> Result<&'a str, Error> {
        self.str(name)?.ok_or_else(|| internal(&self.path(name)))
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, Error> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(internal(&self.path(name))),
        }
    }

    pub fn i64(&self, name: &str) -> Result<Option<i64>, Error> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| internal(&self.path(name))),
            Some(_) => Err(internal(&self.path(name))),
        }
    }

    pub fn u64(&self, name: &str) -> Result<Option<u64>, Error> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| internal(&self.path(name))),
            Some(_) => Err(internal(&self.path(name))),
        }
    }

    /// An `int` member that must not be negative (QEMU's drivers read
    /// such members as sizes).
    pub fn non_negative(&self, name: &str) -> Result<Option<u64>, Error> {
        match self.i64(name)? {
            None => Ok(None),
            Some(i) => u64::try_from(i)
                .map(Some)
                .map_err(|_| non_negative(&self.path(name))),
        }
    }

    /// An `int` member that must fit in a `u32`.
    pub fn u32_of_int(&self, name: &str) -> Result<Option<u32>, Error> {
        match self.i64(name)? {
            None => Ok(None),
            Some(i) => u32::try_from(i).map(Some).map_err(|_| {
                Error::new(format!(
                    "Parameter '{}' expects a non-negative number below 2^32",
                    self.path(name)
                ))
            }),
        }
    }

    /// `v` (an element or alternate branch) as an object at `path`.
    pub fn object(v: &'a Value, path: &'a str, keyval: bool) -> Result<Obj<'a>, Error> {
        match v {
            Value::Object(map) => Ok(Obj { map, path, keyval }),
            _ => Err(internal(path)),
        }
    }

    pub fn list(&self, name: &str) -> Result<&'a [Value], Error> {
        match self.map.get(name) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(internal(&self.path(name))),
        }
    }
}
