//! The strict input visitor: checks a value against a schema type the
//! way QEMU's `qobject-input-visitor.c` (with the generated visit
//! functions) does, and returns it normalised.
//!
//! QEMU's behaviour, which this follows because users see it:
//! * members are visited in schema order (a union's tag and common
//!   members first, then its variant's), and the first failure is the
//!   error; members nobody asked for are reported after the struct's own
//!   members were all visited ("Parameter 'file.bar' is unexpected");
//! * "missing", "unexpected" and type errors name the member by its full
//!   path (`file.filename`, `inject-error[0].event`; `inject-error.0.event`
//!   in key=value form), but enum values, alternate types and integer
//!   ranges name the member alone (`Parameter 'aio' does not accept value
//!   'x'`), and a list element's alternate is called `null`;
//! * JSON `uint64`s accept negative numbers (they wrap), an `int` is
//!   "expected: integer" while a `uint64` "expects uint64";
//! * in key=value form every scalar is a string and is converted here:
//!   integers as C's `strtoll` with base 0 (`0x1f`, `017`), sizes with
//!   suffixes, booleans as `on` / `off` (or `yes` / `no`, `true` /
//!   `false`, `y` / `n`, though the error message names only the first).
//!
//! The result has the same shape as the input with only the schema's
//! members, integers as JSON integers and booleans as booleans, whatever
//! the syntax was, so conversion code reads one form.

use serde_json::{Map, Number, Value};

use super::Error;
use super::schema::{Alternate, Int, Literal, Member, Struct, Support, Type, Union};

/// Checks `input` against `ty`; `keyval` says it came from key=value
/// syntax (every scalar a string).
pub fn visit(ty: &Type, input: &Value, keyval: bool) -> Result<Value, Error> {
    let mut v = Visitor {
        keyval,
        stack: Vec::new(),
    };
    v.visit(ty, None, input)
}

enum Frame {
    /// An object being visited, and its name in its parent.
    Dict { name: Option<String> },
    /// A list being visited, its name, and the element now visited.
    List { name: Option<String>, index: usize },
}

struct Visitor {
    keyval: bool,
    stack: Vec<Frame>,
}

fn err(desc: String) -> Error {
    Error::new(desc)
}

/// What a member or element is called where QEMU uses the bare name.
fn short(name: Option<&str>) -> &str {
    name.unwrap_or("null")
}

impl Visitor {
    /// The full name of `name` in the current container, as QEMU's
    /// `full_name()` builds it.
    fn full(&self, name: Option<&str>) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut name = name;
        for frame in self.stack.iter().rev() {
            match frame {
                Frame::Dict { name: own } => {
                    parts.push(format!(".{}", name.unwrap_or("<anonymous>")));
                    name = own.as_deref();
                }
                Frame::List { name: own, index } => {
                    parts.push(if self.keyval {
                        format!(".{index}")
                    } else {
                        format!("[{index}]")
                    });
                    name = own.as_deref();
                }
            }
        }
        let mut s: String = parts.into_iter().rev().collect();
        match name {
            Some(n) => s.insert_str(0, n),
            None if s.starts_with('.') => {
                s.remove(0);
            }
            None if s.is_empty() => return "<anonymous>".into(),
            None => {}
        }
        s
    }

    fn invalid_type(&self, name: Option<&str>, expected: &str) -> Error {
        err(format!(
            "Invalid parameter type for '{}', expected: {expected}",
            self.full(name)
        ))
    }

    fn visit(&mut self, ty: &Type, name: Option<&str>, v: &Value) -> Result<Value, Error> {
        match ty {
            Type::Str => self.string(name, v).map(|s| Value::String(s.to_owned())),
            Type::Int(kind) => self.int(*kind, name, v),
            Type::Bool => self.boolean(name, v),
            Type::Null => match v {
                Value::Null => Ok(Value::Null),
                _ => Err(self.invalid_type(name, "null")),
            },
            Type::Number => match v {
                Value::Number(_) if !self.keyval => Ok(v.clone()),
                _ => Err(self.invalid_type(name, "number")),
            },
            Type::Any => Ok(v.clone()),
            Type::Enum(e) => {
                let s = self.string(name, v)?;
                if e.values.contains(&s) {
                    Ok(Value::String(s.to_owned()))
                } else {
                    Err(err(format!(
                        "Parameter '{}' does not accept value '{s}'",
                        short(name)
                    )))
                }
            }
            Type::Struct(s) => self.structure(s, name, v),
            Type::Union(u) => self.union(u, name, v),
            Type::Alternate(a) => self.alternate(a, name, v),
            Type::List(elem) => self.list(elem, name, v),
        }
    }

    /// A string scalar; in key=value form an object or list where a
    /// scalar belongs is "unexpected" members.
    fn string<'v>(&self, name: Option<&str>, v: &'v Value) -> Result<&'v str, Error> {
        match v {
            Value::String(s) => Ok(s),
            Value::Object(_) | Value::Array(_) if self.keyval => Err(err(format!(
                "Parameters '{}.*' are unexpected",
                self.full(name)
            ))),
            _ if self.keyval => Err(err(format!(
                "Internal error: parameter {} invalid",
                self.full(name)
            ))),
            _ => Err(self.invalid_type(name, "string")),
        }
    }

    fn boolean(&self, name: Option<&str>, v: &Value) -> Result<Value, Error> {
        if !self.keyval {
            return match v {
                Value::Bool(b) => Ok(Value::Bool(*b)),
                _ => Err(self.invalid_type(name, "boolean")),
            };
        }
        // QEMU's qapi_bool_parse(), though its message names only two.
        match self.string(name, v)? {
            "on" | "yes" | "true" | "y" => Ok(Value::Bool(true)),
            "off" | "no" | "false" | "n" => Ok(Value::Bool(false)),
            _ => Err(err(format!(
                "Parameter '{}' expects 'on' or 'off'",
                self.full(name)
            ))),
        }
    }

    fn int(&self, kind: Int, name: Option<&str>, v: &Value) -> Result<Value, Error> {
        let expects = |what: &str, who: &str| err(format!("Parameter '{who}' expects {what}"));
        let full = || self.full(name);
        // The value as QEMU's 64-bit visit reads it.
        let (signed, unsigned): (Option<i64>, Option<u64>) = if self.keyval {
            let s = self.string(name, v)?;
            match kind {
                Int::I64 | Int::I32 => (
                    Some(strtoi64(s).ok_or_else(|| expects("integer", &full()))?),
                    None,
                ),
                Int::U64 | Int::U32 | Int::U16 => (
                    None,
                    Some(strtou64(s).ok_or_else(|| expects("integer", &full()))?),
                ),
                Int::Size => (
                    None,
                    Some(strtosz(s).ok_or_else(|| expects("size", &full()))?),
                ),
            }
        } else {
            let n = match v {
                Value::Number(n) => Some(n),
                _ => None,
            };
            if kind.unsigned() {
                let u = n
                    .and_then(|n| n.as_u64().or_else(|| n.as_i64().map(|i| i as u64)))
                    .ok_or_else(|| expects("uint64", &full()))?;
                (None, Some(u))
            } else {
                let i = n
                    .and_then(Number::as_i64)
                    .ok_or_else(|| self.invalid_type(name, "integer"))?;
                (Some(i), None)
            }
        };
        // Narrower types: range-checked after the 64-bit visit, with the
        // member's own name.
        let range = || expects(kind.c_name(), short(name));
        match (kind, signed, unsigned) {
            (Int::I32, Some(i), _) if i32::try_from(i).is_err() => Err(range()),
            (Int::U32, _, Some(u)) if u32::try_from(u).is_err() => Err(range()),
            (Int::U16, _, Some(u)) if u16::try_from(u).is_err() => Err(range()),
            (_, Some(i), _) => Ok(Value::Number(i.into())),
            (_, _, Some(u)) => Ok(Value::Number(u.into())),
            _ => Err(range()),
        }
    }

    fn object<'v>(
        &self,
        name: Option<&str>,
        v: &'v Value,
    ) -> Result<&'v Map<String, Value>, Error> {
        match v {
            Value::Object(m) => Ok(m),
            _ => Err(self.invalid_type(name, "object")),
        }
    }

    /// Visits `members` of `map` in order into `out`.
    fn members(
        &mut self,
        members: &[Member],
        map: &Map<String, Value>,
        out: &mut Map<String, Value>,
    ) -> Result<(), Error> {
        for m in members {
            let Some(v) = map.get(m.name) else {
                if m.optional {
                    continue;
                }
                return Err(err(format!(
                    "Parameter '{}' is missing",
                    self.full(Some(m.name))
                )));
            };
            let value = self.visit(&m.ty, Some(m.name), v)?;
            if let Support::Only(harmless) = m.support {
                let same = match (harmless, &value) {
                    (Some(Literal::Bool(b)), Value::Bool(v)) => b == *v,
                    (Some(Literal::Int(i)), Value::Number(n)) => n.as_i64() == Some(i),
                    _ => false,
                };
                if !same {
                    return Err(err(format!(
                        "Parameter '{}' is not supported by blockwire",
                        self.full(Some(m.name))
                    )));
                }
                // Asks for what leaving it out asks for: not passed on.
                continue;
            }
            out.insert(m.name.to_owned(), value);
        }
        Ok(())
    }

    /// The first member of `map` no visited member list has.
    fn unexpected(
        &self,
        map: &Map<String, Value>,
        lists: &[&[Member]],
        tag: Option<&str>,
    ) -> Result<(), Error> {
        let known = |k: &str| Some(k) == tag || lists.iter().any(|l| l.iter().any(|m| m.name == k));
        match map.keys().find(|k| !known(k)) {
            Some(k) => Err(err(format!(
                "Parameter '{}' is unexpected",
                self.full(Some(k))
            ))),
            None => Ok(()),
        }
    }

    fn structure(&mut self, s: &Struct, name: Option<&str>, v: &Value) -> Result<Value, Error> {
        let map = self.object(name, v)?;
        self.stack.push(Frame::Dict {
            name: name.map(str::to_owned),
        });
        let r = (|| {
            let mut out = Map::new();
            self.members(s.members, map, &mut out)?;
            self.unexpected(map, &[s.members], None)?;
            Ok(Value::Object(out))
        })();
        self.stack.pop();
        r
    }

    fn union(&mut self, u: &Union, name: Option<&str>, v: &Value) -> Result<Value, Error> {
        let map = self.object(name, v)?;
        self.stack.push(Frame::Dict {
            name: name.map(str::to_owned),
        });
        let r = (|| {
            let mut out = Map::new();
            // The tag: an enum whose values are the cases.
            let Some(tag) = map.get(u.tag) else {
                return Err(err(format!(
                    "Parameter '{}' is missing",
                    self.full(Some(u.tag))
                )));
            };
            let case = self.string(Some(u.tag), tag)?;
            let Some(variant) = u.variant(case) else {
                return Err(err(format!(
                    "Parameter '{}' does not accept value '{case}'",
                    u.tag
                )));
            };
            out.insert(u.tag.to_owned(), Value::String(case.to_owned()));
            self.members(u.base, map, &mut out)?;
            self.members(variant.members.members, map, &mut out)?;
            self.unexpected(map, &[u.base, variant.members.members], Some(u.tag))?;
            Ok(Value::Object(out))
        })();
        self.stack.pop();
        r
    }

    fn alternate(&mut self, a: &Alternate, name: Option<&str>, v: &Value) -> Result<Value, Error> {
        let branch = a.members.iter().find(|t| match (t, v) {
            (Type::Struct(_) | Type::Union(_), Value::Object(_)) => true,
            (Type::Str | Type::Enum(_), Value::String(_)) => true,
            (Type::Int(_), Value::Number(_)) => !self.keyval,
            (Type::Bool, Value::Bool(_)) => !self.keyval,
            (Type::Null, Value::Null) => true,
            (Type::Number, Value::Number(_)) => !self.keyval,
            (Type::Any, _) => true,
            _ => false,
        });
        match branch {
            Some(t) => self.visit(t, name, v),
            None => Err(err(format!(
                "Invalid parameter type for '{}', expected: {}",
                short(name),
                a.name
            ))),
        }
    }

    fn list(&mut self, elem: &Type, name: Option<&str>, v: &Value) -> Result<Value, Error> {
        let Value::Array(items) = v else {
            return Err(self.invalid_type(name, "array"));
        };
        self.stack.push(Frame::List {
            name: name.map(str::to_owned),
            index: 0,
        });
        let mut out = Vec::with_capacity(items.len());
        let mut r = Ok(());
        for (i, item) in items.iter().enumerate() {
            if let Some(Frame::List { index, .. }) = self.stack.last_mut() {
                *index = i;
            }
            match self.visit(elem, None, item) {
                Ok(x) => out.push(x),
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        self.stack.pop();
        r.map(|()| Value::Array(out))
    }
}

// ---- C's number parsing, as QEMU's qemu_strto*() use it ----

/// `strtoull`-style digits with base 0 (`0x` hex, leading `0` octal),
/// after optional white space and sign; the whole string must be used.
/// Returns the sign and the magnitude, or None (no digits, trailing text,
/// more than 64 bits).
fn c_integer(s: &str) -> Option<(bool, u64)> {
    let s = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = match s.as_bytes() {
        [b'0', b'x' | b'X', c, ..] if c.is_ascii_hexdigit() => (16, &s[2..]),
        [b'0', _, ..] => (8, &s[1..]),
        _ => (10, s),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok().map(|m| (neg, m))
}

/// `qemu_strtoi64(s, NULL, 0)`.
pub(crate) fn strtoi64(s: &str) -> Option<i64> {
    match c_integer(s)? {
        (false, m) => i64::try_from(m).ok(),
        (true, m) if m <= 1 << 63 => Some((m as i64).wrapping_neg()),
        _ => None,
    }
}

/// `qemu_strtou64(s, NULL, 0)`: like `strtoull`, a negative number wraps.
pub(crate) fn strtou64(s: &str) -> Option<u64> {
    c_integer(s).map(|(neg, m)| if neg { m.wrapping_neg() } else { m })
}

/// `qemu_strtosz(s, NULL)`: a decimal number, optionally with a fraction,
/// and an optional suffix `B`, `K`, `M`, `G`, `T`, `P`, `E` (powers of
/// 1024, either case); or hexadecimal without fraction or suffix. A
/// fraction needs a suffix other than `B`; the result is rounded half
/// up, as QEMU's 64.64 fixed-point arithmetic does.
pub(crate) fn strtosz(s: &str) -> Option<u64> {
    fn suffix(c: Option<u8>) -> Option<u64> {
        let exp = match c?.to_ascii_lowercase() {
            b'b' => 0,
            b'k' => 1,
            b'm' => 2,
            b'g' => 3,
            b't' => 4,
            b'p' => 5,
            b'e' => 6,
            _ => return None,
        };
        Some(1u64 << (10 * exp))
    }
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let b = t.as_bytes();
    let int_len = b
        .iter()
        .position(|c| !c.is_ascii_digit() && *c != b'+')
        .unwrap_or(b.len());
    let digits = t[..int_len].strip_prefix('+').unwrap_or(&t[..int_len]);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let val: u64 = digits.parse().ok()?;
    let mut rest = &b[int_len..];
    if val == 0 && matches!(rest.first(), Some(b'x' | b'X')) {
        let hex = &t[int_len + 1..];
        if hex.is_empty() || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    // The fraction as a 0.64 fixed-point number, from the same double
    // QEMU's strtod() gives.
    let mut frac: u64 = 0;
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        // strtod() would take an exponent into the fraction; QEMU then
        // refuses the whole input. (An `e` it would not take is the
        // exabyte suffix.)
        let exp = &rest[(1 + n).min(rest.len())..];
        let exp_digit = |i: usize| exp.get(i).is_some_and(u8::is_ascii_digit);
        let has_exp = matches!(exp.first(), Some(b'e' | b'E'))
            && (exp_digit(1) || (matches!(exp.get(1), Some(b'+' | b'-')) && exp_digit(2)));
        if n > 0 && has_exp {
            return None;
        }
        if n > 0 {
            let f: f64 = std::str::from_utf8(&rest[..1 + n]).ok()?.parse().ok()?;
            frac = (f * 18446744073709551616.0) as u64;
        }
        rest = &rest[1 + n..];
    }
    let mul = match suffix(rest.first().copied()) {
        Some(m) => {
            rest = &rest[1..];
            m
        }
        None => 1,
    };
    if !rest.is_empty() {
        return None;
    }
    if mul == 1 {
        return (frac == 0).then_some(val);
    }
    let whole = u128::from(val) * u128::from(mul);
    let f = u128::from(frac) * u128::from(mul);
    let total = whole + (f >> 64) + ((f >> 63) & 1);
    u64::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_numbers() {
        assert_eq!(strtoi64("0x10"), Some(16));
        assert_eq!(strtoi64(" -017"), Some(-15));
        assert_eq!(strtoi64("08"), None);
        assert_eq!(strtoi64("1k"), None);
        assert_eq!(strtoi64(""), None);
        assert_eq!(strtoi64("0x"), None);
        assert_eq!(strtoi64("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(strtoi64("9223372036854775808"), None);
        assert_eq!(strtou64("-1"), Some(u64::MAX));
        assert_eq!(strtou64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(strtou64("18446744073709551616"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(strtosz("512"), Some(512));
        assert_eq!(strtosz("64k"), Some(64 << 10));
        assert_eq!(strtosz("1.5G"), Some(3 << 29));
        assert_eq!(strtosz("1.k"), Some(1024));
        assert_eq!(strtosz("1.0"), Some(1));
        assert_eq!(strtosz("0x100"), Some(256));
        assert_eq!(strtosz("16E"), None);
        assert_eq!(strtosz("15E"), Some(15 << 60));
        assert_eq!(strtosz("1.5E"), Some(3 << 59));
        for bad in [
            "1.5", "-1", "1x", "0x10k", "1.5e3k", "1.5e+3k", "k", "", "1kk", "0x",
        ] {
            assert_eq!(strtosz(bad), None, "{bad}");
        }
    }
}
