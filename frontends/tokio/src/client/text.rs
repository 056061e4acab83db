//! Strings from a server, made safe to show.
//!
//! Export names, descriptions, context names and error messages come from
//! the server and end up on the user's terminal and in `--json` output. A
//! hostile server could put terminal escape sequences (`ESC [ 2 J`, OSC
//! title changes), NULs or text-reordering characters into them. They are
//! escaped the way nbdinfo escapes export names (JSON escapes, `\u001b`),
//! which keeps JSON output valid and makes the text output unambiguous.
//! Invalid UTF-8 never gets this far: the core machine keeps the longest
//! valid prefix of human-readable text and refuses names that are not
//! UTF-8 (the spec requires UTF-8 strings).

/// Whether `c` is shown as a `\uXXXX` escape: C0 and C1 controls, DEL,
/// and the format characters that reorder or hide text (bidirectional
/// overrides and isolates, line and paragraph separators, zero-width
/// characters, the byte-order mark).
fn needs_escape(c: char) -> bool {
    matches!(u32::from(c),
        0x00..=0x1f | 0x7f..=0x9f
        | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x2069 | 0xfeff)
}

fn push_escaped(out: &mut String, s: &str, json: bool) {
    for c in s.chars() {
        match c {
            '"' if json => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// `s` for a line of text output: every character that could act on a
/// terminal escaped, backslashes doubled.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s, false);
    out
}

/// `s` as a JSON string literal, quotes included, escaped as [`escape`]
/// plus `"` (valid JSON whatever the input).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    push_escaped(&mut out, s, true);
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped() {
        assert_eq!(
            escape("evil\u{1b}[2J\u{1b}]0;x\u{7}"),
            "evil\\u001b[2J\\u001b]0;x\\u0007"
        );
        assert_eq!(escape("a\0b"), "a\\u0000b");
        assert_eq!(escape("c1\u{9b}31m del\u{7f}"), "c1\\u009b31m del\\u007f");
        assert_eq!(escape("rtl\u{202e}txt"), "rtl\\u202etxt");
        assert_eq!(escape("back\\slash \"q\" \n"), "back\\\\slash \"q\" \\n");
        assert_eq!(escape("plain ünïcödé ☃"), "plain ünïcödé ☃");
        assert_eq!(json_string("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
    }

    #[test]
    fn json_stays_valid() {
        let nasty: String = (0u32..0x300)
            .chain(0x2000..0x2070)
            .chain([0xfeff, 0x1f600])
            .filter_map(char::from_u32)
            .collect();
        let v: serde_json::Value = serde_json::from_str(&json_string(&nasty)).unwrap();
        assert_eq!(v.as_str().unwrap(), nasty);
        assert!(!json_string(&nasty).chars().any(needs_escape));
    }
}
