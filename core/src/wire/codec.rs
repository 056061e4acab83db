//! Checked reading and writing of variable-length payloads.
//!
//! Fixed headers are zerocopy structs ([`super::headers`]); everything of
//! variable length (option payloads, reply chunk payloads) is read through
//! one [`Reader`], which never indexes past its input and names the field
//! that was missing, and written through one [`Sink`], which refuses to
//! write a frame it cannot hold whole. A refusal is [`Overflow`]: a sizing
//! bug in the caller, never something a peer can cause, so callers treat it
//! as such (a debug assertion, and a closed connection rather than a
//! truncated frame in release builds).

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::MAX_STRING;

/// Why a payload does not parse. Each variant names the field at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// The payload ends inside this fixed-size field.
    Short(&'static str),
    /// This length field points past the end of the payload.
    LengthPastEnd(&'static str),
    /// This string is longer than 4096 bytes, not UTF-8, or holds a NUL.
    BadString(&'static str),
    /// This count does not match the bytes that follow it.
    CountMismatch(&'static str),
    /// This payload has bytes left over after its last field.
    Trailing(&'static str),
    /// This payload has a length the spec does not allow for its type.
    BadLength(&'static str),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Short(field) => write!(f, "payload too short for its {field}"),
            PayloadError::LengthPastEnd(field) => {
                write!(f, "{field} length exceeds the payload length")
            }
            PayloadError::BadString(field) => {
                write!(f, "{field} too long, not UTF-8, or containing NUL")
            }
            PayloadError::CountMismatch(field) => {
                write!(f, "{field} count does not match the payload length")
            }
            PayloadError::Trailing(what) => write!(f, "trailing data after {what}"),
            PayloadError::BadLength(what) => write!(f, "wrong payload length for {what}"),
        }
    }
}

impl core::error::Error for PayloadError {}

impl PayloadError {
    /// A short static description, for error replies that must be
    /// `&'static str` (the field names are static, the formatting is not).
    pub const fn summary(self) -> &'static str {
        match self {
            PayloadError::Short(_) => "option too short",
            PayloadError::LengthPastEnd(_) => "a length exceeds the option length",
            PayloadError::BadString(_) => "a string too long, not UTF-8, or containing NUL",
            PayloadError::CountMismatch(_) => "a count does not match the option length",
            PayloadError::Trailing(_) => "trailing data in the option",
            PayloadError::BadLength(_) => "wrong option length",
        }
    }
}

/// A string as the spec allows it on the wire: at most 4096 bytes of UTF-8
/// without NUL.
pub fn nbd_string(bytes: &[u8]) -> Option<&str> {
    if bytes.len() > MAX_STRING || bytes.contains(&0) {
        return None;
    }
    core::str::from_utf8(bytes).ok()
}

/// A bounds-checked big-endian reader over one payload.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub const fn new(payload: &'a [u8]) -> Self {
        Self { rest: payload }
    }

    /// Bytes not yet read.
    pub const fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Everything not yet read, consuming the reader.
    pub const fn rest(self) -> &'a [u8] {
        self.rest
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], PayloadError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(PayloadError::Short(field))?;
        self.rest = tail;
        Ok(*head)
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, PayloadError> {
        self.array::<2>(field).map(u16::from_be_bytes)
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, PayloadError> {
        self.array::<4>(field).map(u32::from_be_bytes)
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, PayloadError> {
        self.array::<8>(field).map(u64::from_be_bytes)
    }

    /// A fixed-size wire struct.
    pub fn header<T: FromBytes + KnownLayout + Immutable>(
        &mut self,
        field: &'static str,
    ) -> Result<T, PayloadError> {
        let (t, tail) = T::read_from_prefix(self.rest).map_err(|_| PayloadError::Short(field))?;
        self.rest = tail;
        Ok(t)
    }

    /// `n` bytes; `field` names the length that said `n`.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], PayloadError> {
        if n > self.rest.len() {
            return Err(PayloadError::LengthPastEnd(field));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// `n` bytes that must be a valid [`nbd_string`].
    pub fn string(&mut self, n: usize, field: &'static str) -> Result<&'a str, PayloadError> {
        let b = self.bytes(n, field)?;
        nbd_string(b).ok_or(PayloadError::BadString(field))
    }

    /// A 32-bit length followed by that many bytes of string.
    pub fn string32(&mut self, field: &'static str) -> Result<&'a str, PayloadError> {
        let n = self.u32(field)?;
        self.string(n as usize, field)
    }

    /// Succeeds only if everything was read; `what` names the payload.
    pub fn finish(self, what: &'static str) -> Result<(), PayloadError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(PayloadError::Trailing(what))
        }
    }
}

/// Output space ran out: the frame was not written (not even in part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow;

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("output buffer too small for the frame")
    }
}

impl core::error::Error for Overflow {}

/// Where frames are written. Every write is all or nothing.
pub trait Sink {
    /// Room left, in bytes.
    fn room(&self) -> usize;

    /// Append `bytes`, or nothing at all if they do not fit.
    #[must_use = "an unwritten frame is a sizing bug"]
    fn put(&mut self, bytes: &[u8]) -> Result<(), Overflow>;

    /// Append several pieces as one frame: all of them or none.
    #[must_use = "an unwritten frame is a sizing bug"]
    fn put_all(&mut self, parts: &[&[u8]]) -> Result<(), Overflow> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.room() {
            return Err(Overflow);
        }
        for p in parts {
            self.put(p)?;
        }
        Ok(())
    }

    /// Append a wire struct.
    #[must_use = "an unwritten frame is a sizing bug"]
    fn put_header<T: IntoBytes + Immutable>(&mut self, h: &T) -> Result<(), Overflow> {
        self.put(h.as_bytes())
    }
}

impl<const N: usize> Sink for heapless::Vec<u8, N> {
    fn room(&self) -> usize {
        N - self.len()
    }
    fn put(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        // heapless checks the capacity before copying anything.
        self.extend_from_slice(bytes).map_err(|_| Overflow)
    }
}

#[cfg(any(test, feature = "alloc"))]
impl Sink for alloc::vec::Vec<u8> {
    fn room(&self) -> usize {
        usize::MAX - self.len()
    }
    fn put(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// A [`Sink`] over a caller-owned slice.
#[derive(Debug)]
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceSink<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Bytes written so far.
    pub const fn written(&self) -> usize {
        self.len
    }
}

impl Sink for SliceSink<'_> {
    fn room(&self) -> usize {
        self.buf.len() - self.len
    }
    fn put(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        let dst = self
            .buf
            .get_mut(self.len..self.len + bytes.len())
            .ok_or(Overflow)?;
        dst.copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_names_the_missing_field() {
        let mut r = Reader::new(&[0, 0, 0, 9, b'a']);
        assert_eq!(
            r.string32("export name"),
            Err(PayloadError::LengthPastEnd("export name"))
        );
        let mut r = Reader::new(&[0, 1]);
        assert_eq!(r.u32("count"), Err(PayloadError::Short("count")));
        let mut r = Reader::new(&[0, 0, 0, 1, 0]);
        assert_eq!(r.string32("query"), Err(PayloadError::BadString("query")));
        let r = Reader::new(&[1]);
        assert_eq!(r.finish("queries"), Err(PayloadError::Trailing("queries")));
    }

    #[test]
    fn sinks_write_whole_frames_or_nothing() {
        let mut v: heapless::Vec<u8, 4> = heapless::Vec::new();
        assert_eq!(v.put_all(&[&[1, 2], &[3, 4, 5]]), Err(Overflow));
        assert!(v.is_empty());
        v.put_all(&[&[1, 2], &[3]]).unwrap();
        assert_eq!(v.room(), 1);
        let mut buf = [0u8; 3];
        let mut s = SliceSink::new(&mut buf);
        assert_eq!(s.put(&[1, 2, 3, 4]), Err(Overflow));
        assert_eq!(s.written(), 0);
        s.put(&[7, 8]).unwrap();
        assert_eq!(s.written(), 2);
    }

    #[test]
    fn strings_follow_the_spec() {
        assert_eq!(nbd_string(b"disk"), Some("disk"));
        assert_eq!(nbd_string(b"a\0b"), None);
        assert_eq!(nbd_string(b"\xff"), None);
        assert_eq!(nbd_string(&[b'a'; 4097]), None);
        assert!(nbd_string(&[b'a'; 4096]).is_some());
    }
}
