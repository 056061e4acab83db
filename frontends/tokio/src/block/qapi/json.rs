//! JSON as QEMU reads it (`qobject/json-lexer.c`, `json-streamer.c`,
//! `json-parser.c`), into a `serde_json::Value`.
//!
//! Why not `serde_json::from_str`: QEMU's reader differs in ways a user
//! of qemu-storage-daemon sees, and strict parsing needs them:
//! * a member given twice is an error (`duplicate key`); serde_json keeps
//!   the last one and the first is silently lost;
//! * strings may also be single-quoted (`{'driver': 'file'}`), with `\'`
//!   as an escape, a QEMU extension scripts rely on;
//! * the error messages are QEMU's (`JSON parse error, premature EOI`,
//!   `... expecting value`, `... stray '01'`, `Expecting at most one JSON
//!   value`), so a script's output matches qemu-storage-daemon's;
//! * nesting deeper than 1024 is refused before anything is built.
//!
//! The model is QEMU's: a lexer cuts the text into tokens (a malformed
//! token is a `stray` error at once); a streamer collects them until the
//! brackets balance and then hands the batch to the parser; the first
//! value or error counts, and anything after a value is "at most one JSON
//! value". Integers are `int64` when they fit, else `uint64`, else a
//! double, as QEMU's `QNum`.

use serde_json::{Map, Number, Value};

/// QEMU's `MAX_NESTING`: open brackets at once.
pub const MAX_NESTING: usize = 1 << 10;
/// QEMU's `MAX_TOKEN_SIZE`: bytes of the tokens of one value.
pub const MAX_TOKEN_SIZE: usize = 64 << 20;
/// QEMU's `MAX_TOKEN_COUNT`: tokens of one value.
pub const MAX_TOKEN_COUNT: usize = 2 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Colon,
    Comma,
    Integer,
    Float,
    Keyword,
    String,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Parses exactly one JSON value, as `qobject_from_json` does.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut sink = Sink::default();
    let mut streamer = Streamer::default();
    let lexed = lex(text, &mut |t| {
        if sink.done() {
            return false;
        }
        let out = streamer.push(text, t);
        if let Some(out) = out {
            sink.consume(out);
        }
        !sink.done()
    });
    if let Err(stray) = lexed {
        sink.consume(Err(format!("JSON parse error, stray '{stray}'")));
    }
    if let Some(out) = streamer.finish(text) {
        sink.consume(out);
    }
    match (sink.result, sink.err) {
        (_, Some(e)) => Err(e),
        (Some(v), None) => Ok(v),
        // Only whitespace: QEMU's qobject_from_json returns NULL without
        // an error, and its callers all say "expected a JSON value".
        (None, None) => Err("JSON parse error, expecting value".into()),
    }
}

/// QEMU's `consume_json`: the first value or error is the answer; a
/// second emission turns a value into "at most one" and is otherwise
/// ignored.
#[derive(Default)]
struct Sink {
    result: Option<Value>,
    err: Option<String>,
}

impl Sink {
    fn consume(&mut self, out: Result<Value, String>) {
        if self.result.is_some() {
            self.result = None;
            self.err = Some("Expecting at most one JSON value".into());
        }
        if self.err.is_some() {
            return;
        }
        match out {
            Ok(v) => self.result = Some(v),
            Err(e) => self.err = Some(e),
        }
    }

    /// Once there is an error nothing later can change the answer.
    fn done(&self) -> bool {
        self.err.is_some()
    }
}

/// QEMU's `json-streamer`: tokens until the brackets balance.
#[derive(Default)]
struct Streamer {
    tokens: Vec<Token>,
    size: usize,
    braces: isize,
    brackets: isize,
}

impl Streamer {
    fn push(&mut self, text: &str, t: Token) -> Option<Result<Value, String>> {
        match t.kind {
            Kind::LCurly => self.braces += 1,
            Kind::RCurly => self.braces -= 1,
            Kind::LSquare => self.brackets += 1,
            Kind::RSquare => self.brackets -= 1,
            _ => {}
        }
        self.size += t.end - t.start;
        self.tokens.push(t);
        if (self.braces > 0 || self.brackets > 0) && self.braces >= 0 && self.brackets >= 0 {
            let limit = if self.size > MAX_TOKEN_SIZE {
                Some("JSON token size limit exceeded")
            } else if self.tokens.len() > MAX_TOKEN_COUNT {
                Some("JSON token count limit exceeded")
            } else if (self.braces + self.brackets) as usize > MAX_NESTING {
                Some("JSON nesting depth limit exceeded")
            } else {
                None
            };
            return limit.map(|m| {
                self.reset();
                Err(m.to_owned())
            });
        }
        Some(self.flush(text))
    }

    /// End of input: whatever is pending goes to the parser, which then
    /// runs out of tokens ("premature EOI").
    fn finish(&mut self, text: &str) -> Option<Result<Value, String>> {
        (!self.tokens.is_empty()).then(|| self.flush(text))
    }

    fn flush(&mut self, text: &str) -> Result<Value, String> {
        let tokens = std::mem::take(&mut self.tokens);
        self.reset();
        let mut p = Parser {
            text,
            tokens: &tokens,
            pos: 0,
        };
        p.value().map_err(|m| format!("JSON parse error, {m}"))
    }

    fn reset(&mut self) {
        self.tokens.clear();
        self.size = 0;
        self.braces = 0;
        self.brackets = 0;
    }
}

/// The lexer's states that are inside a token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    /// In a string quoted by this byte; `escape` after a backslash.
    Str {
        quote: u8,
        escape: bool,
    },
    Zero,
    Nonzero,
    Neg,
    /// After the `.`.
    Mantissa,
    MantissaDigits,
    /// After the `e`.
    Exp,
    ExpSign,
    ExpDigits,
    Keyword,
}

/// Cuts `text` into tokens for `emit` (which returns false to stop);
/// a malformed token is returned as the text QEMU quotes in `stray '…'`:
/// what was read of it, including the character that did not fit.
fn lex(text: &str, emit: &mut dyn FnMut(Token) -> bool) -> Result<(), String> {
    let b = text.as_bytes();
    let mut state = State::Start;
    let mut start = 0;
    let mut i = 0;
    while i <= b.len() {
        let c = b.get(i).copied();
        // What the byte does in this state: stay in the token, end it
        // before this byte (which is read again from Start), or fail.
        enum Step {
            Stay(State),
            /// The token ends with this byte.
            Done(Kind),
            /// The token ended before this byte.
            Before(Kind),
            Fail,
        }
        let step = match (state, c) {
            (State::Start, None) => return Ok(()),
            (State::Start, Some(c)) => match c {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    i += 1;
                    start = i;
                    continue;
                }
                b'{' => Step::Done(Kind::LCurly),
                b'}' => Step::Done(Kind::RCurly),
                b'[' => Step::Done(Kind::LSquare),
                b']' => Step::Done(Kind::RSquare),
                b':' => Step::Done(Kind::Colon),
                b',' => Step::Done(Kind::Comma),
                b'"' | b'\'' => Step::Stay(State::Str {
                    quote: c,
                    escape: false,
                }),
                b'0' => Step::Stay(State::Zero),
                b'1'..=b'9' => Step::Stay(State::Nonzero),
                b'-' => Step::Stay(State::Neg),
                b'a'..=b'z' => Step::Stay(State::Keyword),
                _ => Step::Fail,
            },
            (State::Str { .. }, None) => Step::Fail,
            (State::Str { quote, escape }, Some(c)) => match c {
                0..=0x1f => Step::Fail,
                _ if escape => Step::Stay(State::Str {
                    quote,
                    escape: false,
                }),
                b'\\' => Step::Stay(State::Str {
                    quote,
                    escape: true,
                }),
                _ if c == quote => Step::Done(Kind::String),
                _ => Step::Stay(state),
            },
            (State::Zero, Some(b'0'..=b'9')) => Step::Fail,
            (State::Zero | State::Nonzero, Some(b'.')) => Step::Stay(State::Mantissa),
            (State::Zero | State::Nonzero | State::MantissaDigits, Some(b'e' | b'E')) => {
                Step::Stay(State::Exp)
            }
            (State::Nonzero, Some(b'0'..=b'9')) => Step::Stay(State::Nonzero),
            (State::Zero | State::Nonzero, _) => Step::Before(Kind::Integer),
            (State::Neg, Some(b'0')) => Step::Stay(State::Zero),
            (State::Neg, Some(b'1'..=b'9')) => Step::Stay(State::Nonzero),
            (State::Mantissa | State::MantissaDigits, Some(b'0'..=b'9')) => {
                Step::Stay(State::MantissaDigits)
            }
            (State::Exp, Some(b'+' | b'-')) => Step::Stay(State::ExpSign),
            (State::Exp | State::ExpSign | State::ExpDigits, Some(b'0'..=b'9')) => {
                Step::Stay(State::ExpDigits)
            }
            (State::MantissaDigits | State::ExpDigits, _) => Step::Before(Kind::Float),
            (State::Keyword, Some(b'a'..=b'z')) => Step::Stay(State::Keyword),
            (State::Keyword, _) => Step::Before(Kind::Keyword),
            (State::Neg | State::Mantissa | State::Exp | State::ExpSign, _) => Step::Fail,
        };
        match step {
            Step::Stay(s) => {
                state = s;
                i += c.map_or(1, utf8_len);
            }
            Step::Done(kind) => {
                i += 1;
                if !emit(Token {
                    kind,
                    start,
                    end: i,
                }) {
                    return Ok(());
                }
                state = State::Start;
                start = i;
            }
            Step::Before(kind) => {
                if !emit(Token {
                    kind,
                    start,
                    end: i,
                }) {
                    return Ok(());
                }
                state = State::Start;
                start = i;
            }
            Step::Fail => {
                let end = match c {
                    Some(c) => i + utf8_len(c),
                    None => i,
                };
                return Err(text[start..end].to_owned());
            }
        }
    }
    Ok(())
}

/// Bytes of the UTF-8 sequence that starts with `first` (the text is a
/// `str`, so sequences are whole).
fn utf8_len(first: u8) -> usize {
    match first {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}

/// QEMU's `json-parser`, over one balanced batch of tokens. Errors are
/// the text after "JSON parse error, ".
struct Parser<'a> {
    text: &'a str,
    tokens: &'a [Token],
    pos: usize,
}

impl Parser<'_> {
    fn next(&mut self) -> Result<Token, String> {
        let t = self.tokens.get(self.pos).copied();
        self.pos += 1;
        t.ok_or_else(|| "premature EOI".to_owned())
    }

    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.pos).copied()
    }

    fn text(&self, t: Token) -> &str {
        &self.text[t.start..t.end]
    }

    fn value(&mut self) -> Result<Value, String> {
        let t = self.next()?;
        match t.kind {
            Kind::LCurly => self.object(),
            Kind::LSquare => self.array(),
            Kind::String => string(self.text(t)).map(Value::String),
            Kind::Integer => Ok(integer(self.text(t))),
            Kind::Float => Ok(float(self.text(t))),
            Kind::Keyword => match self.text(t) {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                "null" => Ok(Value::Null),
                k => Err(format!("invalid keyword '{k}'")),
            },
            _ => Err("expecting value".into()),
        }
    }

    fn object(&mut self) -> Result<Value, String> {
        let mut map = Map::new();
        if self.peek().map(|t| t.kind) == Some(Kind::RCurly) {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            let key = match self.value()? {
                Value::String(k) => k,
                _ => return Err("key is not a string in object".into()),
            };
            if self.next()?.kind != Kind::Colon {
                return Err("missing : in object pair".into());
            }
            let value = self.value()?;
            if map.contains_key(&key) {
                return Err("duplicate key".into());
            }
            map.insert(key, value);
            match self.next()?.kind {
                Kind::Comma => {}
                Kind::RCurly => return Ok(Value::Object(map)),
                _ => return Err("expected separator in dict".into()),
            }
        }
    }

    fn array(&mut self) -> Result<Value, String> {
        let mut list = Vec::new();
        if self.peek().map(|t| t.kind) == Some(Kind::RSquare) {
            self.pos += 1;
            return Ok(Value::Array(list));
        }
        loop {
            list.push(self.value()?);
            match self.next()?.kind {
                Kind::Comma => {}
                Kind::RSquare => return Ok(Value::Array(list)),
                _ => return Err("expected separator in list".into()),
            }
        }
    }
}

/// A string token's value: escapes as QEMU's `parse_string` takes them,
/// including `\'` and `\/`; `\uXXXX` with surrogate pairs.
fn string(token: &str) -> Result<String, String> {
    // The token is quote, body, the same quote: all one byte each.
    let body = &token[1..token.len() - 1];
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let esc = &rest[at..];
        let c = esc[1..].chars().next().unwrap_or('\0');
        let used = match c {
            '"' | '\'' | '\\' | '/' => {
                out.push(c);
                2
            }
            'b' => {
                out.push('\u{8}');
                2
            }
            'f' => {
                out.push('\u{c}');
                2
            }
            'n' => {
                out.push('\n');
                2
            }
            'r' => {
                out.push('\r');
                2
            }
            't' => {
                out.push('\t');
                2
            }
            'u' => {
                let (ch, used) = unicode_escape(esc, token)?;
                out.push(ch);
                used
            }
            _ => return Err("invalid escape sequence in string".into()),
        };
        rest = &esc[used..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `\uXXXX` (and the `\uXXXX` of a low surrogate after a high one) at the
/// start of `esc`; the error quotes six characters from the backslash, as
/// QEMU's does.
fn unicode_escape(esc: &str, token: &str) -> Result<(char, usize), String> {
    let bad = || {
        // Up to six characters of the token from the backslash.
        let from = token.len() - (esc.len() + 1);
        let s: String = token[from..].chars().take(6).collect();
        format!("{s} is not a valid Unicode character")
    };
    let hex4 = |s: &str| -> Option<u32> {
        let h = s.get(..4)?;
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(h, 16).ok()
    };
    let hi = hex4(&esc[2..]).ok_or_else(bad)?;
    match hi {
        0xd800..=0xdbff => {
            let lo = esc
                .get(6..8)
                .filter(|p| *p == "\\u")
                .and_then(|_| hex4(&esc[8..]))
                .filter(|lo| (0xdc00..=0xdfff).contains(lo))
                .ok_or_else(bad)?;
            let cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
            Ok((char::from_u32(cp).ok_or_else(bad)?, 12))
        }
        0xdc00..=0xdfff => Err(bad()),
        cp => Ok((char::from_u32(cp).ok_or_else(bad)?, 6)),
    }
}

/// QEMU's integer token: `int64` if it fits, else `uint64` (positive),
/// else a double.
fn integer(t: &str) -> Value {
    if let Ok(i) = t.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = t.parse::<u64>() {
        return Value::Number(u.into());
    }
    float(t)
}

/// A double; an overflow to infinity is kept as the largest finite double
/// of that sign (serde_json cannot hold infinity). No member of the schema
/// takes a number, so the difference is never seen: any double is the
/// wrong type for every member.
fn float(t: &str) -> Value {
    let f: f64 = t.parse().unwrap_or(0.0);
    let f = if f.is_finite() {
        f
    } else {
        f64::MAX.copysign(f)
    };
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(s: &str) -> String {
        parse(s).unwrap_err()
    }

    #[test]
    fn values() {
        assert_eq!(
            parse(r#" {"a": [1, -2, 1.5, true, false, null, "x"], "b": {}} "#).unwrap(),
            json!({"a": [1, -2, 1.5, true, false, null, "x"], "b": {}})
        );
        assert_eq!(
            parse("{'a': 'it\\'s \"q\"'}").unwrap(),
            json!({"a": "it's \"q\""})
        );
        assert_eq!(
            parse(r#"{"a":"\u00e9\ud83d\ude00\n\/\\"}"#).unwrap(),
            json!({"a": "é😀\n/\\"})
        );
        assert_eq!(parse(r#"{"a":"é"}"#).unwrap(), json!({"a": "é"}));
    }

    #[test]
    fn numbers_are_qnums() {
        let v = parse(
            "[9223372036854775807, 9223372036854775808, 18446744073709551616, -0, \
             -9223372036854775809, 1e400, 1e10, 2.5E-3]",
        )
        .unwrap();
        assert!(v[0].is_i64());
        assert!(v[1].is_u64() && !v[1].is_i64());
        assert!(v[2].is_f64());
        assert_eq!(v[3], json!(0));
        assert!(v[4].is_f64());
        assert_eq!(v[5].as_f64(), Some(f64::MAX));
        assert_eq!(v[6].as_f64(), Some(1e10));
        assert_eq!(v[7].as_f64(), Some(2.5e-3));
    }

    /// Messages as qemu-storage-daemon 7.2 prints them for `--blockdev`.
    #[test]
    fn errors_are_qemus() {
        let cases = [
            ("{", "JSON parse error, premature EOI"),
            (r#"{"a"}"#, "JSON parse error, missing : in object pair"),
            (r#"{"a":}"#, "JSON parse error, expecting value"),
            (r#"{"a" 1}"#, "JSON parse error, missing : in object pair"),
            ("{1:2}", "JSON parse error, key is not a string in object"),
            (
                r#"{"a":1 "b":2}"#,
                "JSON parse error, expected separator in dict",
            ),
            (r#"{"a":[1,]}"#, "JSON parse error, expecting value"),
            (
                r#"{"a":[1 2]}"#,
                "JSON parse error, expected separator in list",
            ),
            (r#"{"a":[}"#, "JSON parse error, expecting value"),
            (r#"{"a":tru}"#, "JSON parse error, invalid keyword 'tru'"),
            (r#"{"a":true,}"#, "JSON parse error, expecting value"),
            (
                r#"{"a":"\x"}"#,
                "JSON parse error, invalid escape sequence in string",
            ),
            (
                r#"{"a":"\u12"}"#,
                r#"JSON parse error, \u12" is not a valid Unicode character"#,
            ),
            (
                r#"{"a":"\ud800"}"#,
                r#"JSON parse error, \ud800 is not a valid Unicode character"#,
            ),
            (r#"{"a":01}"#, "JSON parse error, stray '01'"),
            (r#"{"a":-}"#, "JSON parse error, stray '-}'"),
            (r#"{"a":1.}"#, "JSON parse error, stray '1.}'"),
            (r#"{"a":.5}"#, "JSON parse error, stray '.'"),
            (r#"{"a":1e}"#, "JSON parse error, stray '1e}'"),
            (r#"{"a":+1}"#, "JSON parse error, stray '+'"),
            (r#"{"a":"x"#, r#"JSON parse error, stray '"x'"#),
            ("{\"a\":\"tab\tin\"}", "JSON parse error, stray '\"tab\t'"),
            (r#"{"a":%d}"#, "JSON parse error, stray '%'"),
            (r#"{"a":'x}"#, "JSON parse error, stray ''x}'"),
            (r#"{"a":1,"a":2}"#, "JSON parse error, duplicate key"),
            (
                r#"{"driver":"null-co"}}"#,
                "Expecting at most one JSON value",
            ),
            (
                r#"{"driver":"null-co"} {}"#,
                "Expecting at most one JSON value",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(err(input), want, "{input}");
        }
    }

    #[test]
    fn nesting_is_bounded_as_qemus() {
        let nest = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert!(parse(&nest(MAX_NESTING - 1)).is_ok());
        assert_eq!(err(&nest(MAX_NESTING)), "JSON nesting depth limit exceeded");
        // Far deeper input stops at the limit, without recursion.
        assert_eq!(
            err(&"[".repeat(1_000_000)),
            "JSON nesting depth limit exceeded"
        );
    }
}
