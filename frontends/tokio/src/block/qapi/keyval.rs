//! QEMU's `KEY=VALUE,...` syntax (`util/keyval.c`), the form most
//! qemu-storage-daemon command lines use: `driver=file,node-name=f0,
//! filename=disk.img`, `file.driver=file` for a nested member,
//! `inject-error.0.event=read_aio` for a list element.
//!
//! The result is a tree of objects, arrays and strings; the input visitor
//! in keyval mode converts the strings to what the schema wants (`on` /
//! `off` booleans, integers with a `0x` or `0` prefix, sizes with
//! suffixes), as QEMU's `qobject_input_visitor_new_keyval` does.
//!
//! The rules, as QEMU 7.2 applies them:
//! * key fragments are QAPI names (a letter, then letters, digits, `-`,
//!   `_`; optionally after a `__RFQDN_` prefix), or, after the first,
//!   decimal list indexes; at most 127 bytes each;
//! * `,,` in a value is a literal comma;
//! * the same key again replaces the value (the last one counts);
//! * a key that is both a leaf and a parent (`a=1,a.b=2`) is an error, as
//!   is a list with a gap (`a.1=x` without `a.0`);
//! * with an implied key (`driver` for `--blockdev`, `qom-type` for
//!   `--object`, `type` for `--export`), a first item without `=` is its
//!   value: `file,filename=x` is `driver=file,filename=x`. That value
//!   ends at the first `,` (no `,,` escape), as in QEMU 7.2.

use serde_json::{Map, Value};

/// Longest key fragment plus one (QEMU's `key_in_cur[128]`).
const FRAGMENT_MAX: usize = 128;

/// Parses `params`; `implied_key` names the key of a leading bare value.
pub fn parse(params: &str, implied_key: Option<&str>) -> Result<Value, String> {
    let mut root = Map::new();
    let mut pos = 0;
    let mut implied = implied_key;
    while pos < params.len() {
        pos = parse_one(&mut root, params, pos, implied)?;
        implied = None;
    }
    let mut root = Value::Object(root);
    listify(&mut root, &mut Vec::new())?;
    Ok(root)
}

/// Length of the QAPI name at the start of `s` (QEMU's
/// `parse_qapi_name(s, false)`), or 0 if there is none.
fn qapi_name_len(s: &[u8]) -> usize {
    let mut p = 0;
    if s.first() == Some(&b'_') {
        // A downstream extension: `__RFQDN_name`.
        if s.get(1) != Some(&b'_') {
            return 0;
        }
        p = 2;
        while s
            .get(p)
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.'))
        {
            p += 1;
        }
        if s.get(p) != Some(&b'_') {
            return 0;
        }
        p += 1;
    }
    if !s.get(p).is_some_and(u8::is_ascii_alphabetic) {
        return 0;
    }
    p += 1;
    while s
        .get(p)
        .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
    {
        p += 1;
    }
    p
}

/// A fragment that is a list index: decimal digits only.
fn index_of(key: &str) -> Option<usize> {
    if key.is_empty() || !key.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // QEMU caps indexes at INT_MAX; a list that long is refused anyway
    // as having a gap.
    Some(
        key.parse::<usize>()
            .unwrap_or(usize::MAX)
            .min(i32::MAX as usize),
    )
}

/// Makes `cur[frag]` an object (`value` None) or the string `value`,
/// as QEMU's `keyval_parse_put`; `key` names it in the error.
fn put<'m>(
    cur: &'m mut Map<String, Value>,
    frag: &str,
    value: Option<String>,
    key: &str,
) -> Result<&'m mut Value, String> {
    let inconsistent = || format!("Parameters '{key}.*' used inconsistently");
    match (cur.get(frag), &value) {
        (Some(Value::Object(_)), None) | (Some(Value::String(_)), Some(_)) | (None, _) => {}
        _ => return Err(inconsistent()),
    }
    let slot = cur.entry(frag.to_owned()).or_insert(Value::Null);
    match value {
        Some(v) => *slot = Value::String(v),
        None if !slot.is_object() => *slot = Value::Object(Map::new()),
        None => {}
    }
    Ok(slot)
}

/// Parses one `KEY=VALUE` (or the implied key's bare value) starting at
/// `start`; returns where the next one starts.
fn parse_one(
    root: &mut Map<String, Value>,
    params: &str,
    start: usize,
    implied_key: Option<&str>,
) -> Result<usize, String> {
    let rest = &params[start..];
    let len = rest.find(['=', ',']).unwrap_or(rest.len());
    if let Some(ik) = implied_key.filter(|_| len > 0 && rest.as_bytes().get(len) != Some(&b'=')) {
        put(root, ik, Some(rest[..len].to_owned()), ik)?;
        let next = start + len;
        return Ok(if params.as_bytes().get(next) == Some(&b',') {
            next + 1
        } else {
            next
        });
    }
    let key = &rest[..len];
    let kb = key.as_bytes();
    let invalid = || format!("Invalid parameter '{key}'");

    // Walk the fragments, creating the objects they pass through.
    let mut cur = root;
    let mut s = 0;
    let mut prev: Option<&str> = None;
    loop {
        let flen = if s > 0 && kb.get(s).is_some_and(u8::is_ascii_digit) {
            kb[s..].iter().take_while(|c| c.is_ascii_digit()).count()
        } else {
            qapi_name_len(&kb[s..])
        };
        if flen == 0 || (s + flen < kb.len() && kb[s + flen] != b'.') {
            return Err(invalid());
        }
        if flen >= FRAGMENT_MAX {
            let fragment = if s != 0 || s + flen != kb.len() {
                " fragment"
            } else {
                ""
            };
            return Err(format!(
                "Parameter{fragment} '{}' is too long",
                &key[s..s + flen]
            ));
        }
        if let Some(p) = prev {
            // `s - 1` is the dot before this fragment.
            cur = match put(cur, p, None, &key[..s - 1])? {
                Value::Object(m) => m,
                // put() made it an object.
                _ => return Err(invalid()),
            };
        }
        prev = Some(&key[s..s + flen]);
        s += flen;
        if s == kb.len() {
            break;
        }
        s += 1;
    }
    let Some(leaf) = prev else {
        return Err(invalid());
    };

    let after = start + len;
    if params.as_bytes().get(after) != Some(&b'=') {
        return Err(format!("Expected '=' after parameter '{key}'"));
    }
    // The value runs to the next single comma; ",," is a comma.
    let mut value = String::new();
    let mut i = after + 1;
    let b = params.as_bytes();
    loop {
        let run_end = params[i..].find(',').map_or(params.len(), |n| i + n);
        value.push_str(&params[i..run_end]);
        if run_end == params.len() {
            i = run_end;
            break;
        }
        if b.get(run_end + 1) == Some(&b',') {
            value.push(',');
            i = run_end + 2;
        } else {
            i = run_end + 1;
            break;
        }
    }
    put(cur, leaf, Some(value), key)?;
    Ok(i)
}

/// Turns objects whose keys are all indexes into arrays, innermost first
/// (QEMU's `keyval_listify`); `path` holds the key fragments to `v`.
fn listify(v: &mut Value, path: &mut Vec<String>) -> Result<(), String> {
    let Value::Object(map) = v else {
        return Ok(());
    };
    let (mut has_index, mut has_member) = (false, false);
    for (k, child) in map.iter_mut() {
        if index_of(k).is_some() {
            has_index = true;
        } else {
            has_member = true;
        }
        path.push(k.clone());
        let r = listify(child, path);
        path.pop();
        r?;
    }
    let prefix: String = path.iter().map(|f| format!("{f}.")).collect();
    if has_index && has_member {
        return Err(format!("Parameters '{prefix}*' used inconsistently"));
    }
    if !has_index {
        return Ok(());
    }
    let mut elems: Vec<(usize, Value)> = std::mem::take(map)
        .into_iter()
        .map(|(k, v)| (index_of(&k).unwrap_or(usize::MAX), v))
        .collect();
    elems.sort_by_key(|(i, _)| *i);
    let mut list: Vec<Value> = Vec::with_capacity(elems.len());
    for (i, v) in elems {
        if i > list.len() {
            return Err(format!("Parameter '{prefix}{}' missing", list.len()));
        }
        if i == list.len() {
            list.push(v);
        } else {
            // "0" and "00" name the same element; the later one counts.
            list[i] = v;
        }
    }
    *v = Value::Array(list);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(s: &str) -> Result<Value, String> {
        parse(s, Some("driver"))
    }

    #[test]
    fn nested_keys_lists_and_escapes() {
        assert_eq!(
            kv("raw,node-name=r,file.driver=file,file.filename=a,,b.img,size=1").unwrap(),
            json!({"driver": "raw", "node-name": "r", "size": "1",
                   "file": {"driver": "file", "filename": "a,b.img"}})
        );
        assert_eq!(
            kv("blkdebug,inject-error.1.event=b,inject-error.0.event=a,inject-error.0.once=on")
                .unwrap(),
            json!({"driver": "blkdebug",
                   "inject-error": [{"event": "a", "once": "on"}, {"event": "b"}]})
        );
        // The last value counts; a trailing comma is allowed; empty values too.
        assert_eq!(
            kv("driver=null-co,driver=raw,x=,").unwrap(),
            json!({"driver": "raw", "x": ""})
        );
        assert_eq!(kv("").unwrap(), json!({}));
        assert_eq!(
            parse("__com.example_x=1", None).unwrap(),
            json!({"__com.example_x": "1"})
        );
    }

    /// Messages as qemu-storage-daemon 7.2 prints them for `--blockdev`.
    #[test]
    fn errors_are_qemus() {
        let long = "a".repeat(128);
        let cases = [
            ("null-co,a..b=1", "Invalid parameter 'a..b'".to_owned()),
            ("null-co,=1", "Invalid parameter ''".into()),
            ("null-co,a", "Expected '=' after parameter 'a'".into()),
            ("null-co,,a=1", "Invalid parameter ''".into()),
            ("null-co,a.=1", "Invalid parameter 'a.'".into()),
            ("null-co,0=1", "Invalid parameter '0'".into()),
            ("null-co,a.0b=1", "Invalid parameter 'a.0b'".into()),
            (
                "null-co,size=1,size.x=2",
                "Parameters 'size.*' used inconsistently".into(),
            ),
            (
                "raw,file.driver=file,file=x",
                "Parameters 'file.*' used inconsistently".into(),
            ),
            (
                "raw,file=x,file.driver=file",
                "Parameters 'file.*' used inconsistently".into(),
            ),
            (
                "blkdebug,inject-error.1.event=read_aio",
                "Parameter 'inject-error.0' missing".into(),
            ),
            (
                "blkdebug,inject-error.0.event=x,inject-error.x=1",
                "Parameters 'inject-error.*' used inconsistently".into(),
            ),
            (
                &format!("null-co,{long}=1"),
                format!("Parameter '{long}' is too long"),
            ),
            (
                &format!("null-co,a.{long}=1"),
                format!("Parameter fragment '{long}' is too long"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(kv(input).unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn implied_key_only_first_and_only_bare() {
        assert_eq!(kv("file").unwrap(), json!({"driver": "file"}));
        assert_eq!(
            kv("driver=file,x=1").unwrap(),
            json!({"driver": "file", "x": "1"})
        );
        // Not first: a key without '='.
        assert_eq!(
            kv("driver=file,raw").unwrap_err(),
            "Expected '=' after parameter 'raw'"
        );
        // No implied key.
        assert_eq!(
            parse("file", None).unwrap_err(),
            "Expected '=' after parameter 'file'"
        );
    }
}
