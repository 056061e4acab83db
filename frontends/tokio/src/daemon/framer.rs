//! Cutting a QMP client's byte stream into JSON messages, with a bound.
//!
//! QEMU's json-streamer collects tokens until the brackets balance and
//! parses then; it will hold up to 64 MiB of one value
//! ([`json::MAX_TOKEN_SIZE`](crate::block::qapi::json::MAX_TOKEN_SIZE)).
//! Here the same boundaries are found by a scanner that knows only
//! strings (both quote styles QEMU accepts, with escapes) and brackets;
//! each complete message then goes to [`json::parse`] for QEMU's
//! checks and messages. A message longer than [`MAX_MESSAGE`] is not
//! kept: its bytes are dropped as they arrive, and when it ends it is
//! answered with QEMU's "JSON token size limit exceeded", so one client
//! cannot make the daemon hold more than that per connection.
//!
//! [`json::parse`]: crate::block::qapi::json::parse

/// The longest message kept. Commands the daemon has are far smaller
/// (a `blockdev-add` of a deep chain is a few KiB); QEMU's 64 MiB would
/// let each client pin 64 MiB.
pub const MAX_MESSAGE: usize = 1 << 20;

/// What the scanner found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// One message's text, to be parsed.
    Message(Vec<u8>),
    /// A message over [`MAX_MESSAGE`], dropped.
    TooBig,
}

#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of the current message, kept or not.
    len: usize,
    depth: usize,
    started: bool,
    /// A bare scalar at the top level (`42`, `true`): ends at whitespace.
    scalar: bool,
    /// Inside a string opened by this quote.
    quote: Option<u8>,
    escape: bool,
}

impl Framer {
    pub fn new() -> Self {
        Self::default()
    }

    fn keep(&mut self, b: u8) {
        self.len += 1;
        if self.len <= MAX_MESSAGE {
            self.buf.push(b);
        } else if !self.buf.is_empty() {
            // Over the limit: let go of what was kept at once.
            self.buf = Vec::new();
        }
    }

    fn end(&mut self, out: &mut Vec<Frame>) {
        let f = if self.len > MAX_MESSAGE {
            Frame::TooBig
        } else {
            Frame::Message(std::mem::take(&mut self.buf))
        };
        out.push(f);
        self.buf.clear();
        self.len = 0;
        self.depth = 0;
        self.started = false;
        self.scalar = false;
        self.quote = None;
        self.escape = false;
    }

    /// Scans `data`, appending every message it completes to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        for &b in data {
            if !self.started {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' | b'[' => {
                        self.started = true;
                        self.depth = 1;
                        self.keep(b);
                    }
                    // A closing bracket alone: the parser says what is wrong.
                    b'}' | b']' => {
                        self.keep(b);
                        self.end(out);
                    }
                    b'"' | b'\'' => {
                        self.started = true;
                        self.quote = Some(b);
                        self.keep(b);
                    }
                    _ => {
                        self.started = true;
                        self.scalar = true;
                        self.keep(b);
                    }
                }
                continue;
            }
            if let Some(q) = self.quote {
                self.keep(b);
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == q {
                    self.quote = None;
                    if self.depth == 0 {
                        self.end(out);
                    }
                }
                continue;
            }
            if self.scalar {
                if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                    self.end(out);
                } else {
                    self.keep(b);
                }
                continue;
            }
            self.keep(b);
            match b {
                b'"' | b'\'' => self.quote = Some(b),
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.end(out);
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut f = Framer::new();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        out
    }

    fn msg(s: &str) -> Frame {
        Frame::Message(s.as_bytes().to_vec())
    }

    #[test]
    fn messages_split_anywhere() {
        let text = br#" {"execute": "a}", "arguments": {"x": ['}{', "\"}"]}}{"execute":"b"} 42 "#;
        let want = vec![
            msg(r#"{"execute": "a}", "arguments": {"x": ['}{', "\"}"]}}"#),
            msg(r#"{"execute":"b"}"#),
            msg("42"),
        ];
        assert_eq!(frames(&[text]), want);
        let split: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(frames(&split), want);
    }

    #[test]
    fn oversized_messages_are_dropped_not_kept() {
        let mut f = Framer::new();
        let mut out = Vec::new();
        f.push(b"{\"execute\": \"", &mut out);
        let chunk = vec![b'a'; 64 << 10];
        for _ in 0..(2 * MAX_MESSAGE / chunk.len()) {
            f.push(&chunk, &mut out);
            assert!(f.buf.capacity() <= 2 * MAX_MESSAGE);
        }
        assert!(f.buf.is_empty());
        f.push(b"\"}{\"execute\": \"x\"}", &mut out);
        assert_eq!(out, vec![Frame::TooBig, msg(r#"{"execute": "x"}"#)]);
    }

    #[test]
    fn stray_closers_are_messages() {
        assert_eq!(frames(&[b"} {}"]), vec![msg("}"), msg("{}")]);
    }
}
