//! Payloads of structured and extended reply chunks, and of the extended
//! `NBD_CMD_BLOCK_STATUS` request, as value types over a checked
//! [`Reader`]. Headers are in [`super::headers`].

use super::codec::{Overflow, PayloadError, Reader, Sink};
use super::headers::{ErrorChunk, Extent32, Extent64, OffsetHole};
use super::{ChunkType, MAX_STRING};
use crate::block::Extent;

/// `NBD_REPLY_TYPE_OFFSET_HOLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    pub offset: u64,
    pub length: u32,
}

impl Hole {
    pub fn parse(payload: &[u8]) -> Result<Self, PayloadError> {
        if payload.len() != OffsetHole::SIZE {
            return Err(PayloadError::BadLength("NBD_REPLY_TYPE_OFFSET_HOLE"));
        }
        let mut r = Reader::new(payload);
        Ok(Self {
            offset: r.u64("hole offset")?,
            length: r.u32("hole length")?,
        })
    }

    pub fn emit(&self, out: &mut impl Sink) -> Result<(), Overflow> {
        out.put_header(&OffsetHole {
            offset: self.offset.into(),
            length: self.length.into(),
        })
    }
}

/// `NBD_REPLY_TYPE_ERROR` and `NBD_REPLY_TYPE_ERROR_OFFSET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorPayload<'a> {
    /// The error value as sent (possibly zero or unknown: the receiver
    /// decides).
    pub error: u32,
    /// Text for humans; not validated.
    pub message: &'a [u8],
    /// For `ERROR_OFFSET`: the offset that failed.
    pub offset: Option<u64>,
}

impl<'a> ErrorPayload<'a> {
    /// Longest message either side accepts: the spec's string limit.
    pub const MAX_MESSAGE: usize = MAX_STRING;
    /// Longest payload of an error chunk this module parses.
    pub const MAX_LEN: usize = ErrorChunk::SIZE + Self::MAX_MESSAGE + 8;

    /// The whole payload of an error chunk of type `chunk`. Unknown error
    /// chunk types carry the same prefix; their tail is ignored, as the
    /// spec allows.
    pub fn parse(payload: &'a [u8], chunk: ChunkType) -> Result<Self, PayloadError> {
        let mut r = Reader::new(payload);
        let error = r.u32("error value")?;
        let len = r.u16("message length")? as usize;
        if len > Self::MAX_MESSAGE {
            return Err(PayloadError::BadString("error message"));
        }
        let message = r.bytes(len, "error message")?;
        let offset = match chunk {
            ChunkType::ERROR_OFFSET => Some(r.u64("error offset")?),
            _ => None,
        };
        match chunk {
            ChunkType::ERROR | ChunkType::ERROR_OFFSET => r.finish("the error chunk")?,
            _ => {}
        }
        Ok(Self {
            error,
            message,
            offset,
        })
    }

    /// Payload length as [`emit`](Self::emit) writes it.
    pub fn len(&self) -> usize {
        ErrorChunk::SIZE + self.message.len() + if self.offset.is_some() { 8 } else { 0 }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn chunk_type(&self) -> ChunkType {
        if self.offset.is_some() {
            ChunkType::ERROR_OFFSET
        } else {
            ChunkType::ERROR
        }
    }

    pub fn emit(&self, out: &mut impl Sink) -> Result<(), Overflow> {
        if self.len() > out.room() || self.message.len() > usize::from(u16::MAX) {
            return Err(Overflow);
        }
        out.put_header(&ErrorChunk {
            error: self.error.into(),
            message_length: (self.message.len() as u16).into(),
        })?;
        out.put(self.message)?;
        if let Some(off) = self.offset {
            out.put(&off.to_be_bytes())?;
        }
        Ok(())
    }
}

/// The fixed start of a block-status chunk: `BLOCK_STATUS` has the context
/// id; `BLOCK_STATUS_EXT` adds the descriptor count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusHead {
    pub context_id: u32,
    /// `Some` for `BLOCK_STATUS_EXT`.
    pub count: Option<u32>,
}

impl StatusHead {
    pub const fn size(wide: bool) -> usize {
        if wide { 8 } else { 4 }
    }

    pub fn parse(bytes: &[u8], wide: bool) -> Result<Self, PayloadError> {
        let mut r = Reader::new(bytes);
        let context_id = r.u32("context id")?;
        let count = if wide {
            Some(r.u32("descriptor count")?)
        } else {
            None
        };
        Ok(Self { context_id, count })
    }

    pub fn emit(&self, out: &mut impl Sink) -> Result<(), Overflow> {
        match self.count {
            Some(n) => out.put_all(&[&self.context_id.to_be_bytes(), &n.to_be_bytes()]),
            None => out.put(&self.context_id.to_be_bytes()),
        }
    }
}

/// One block-status descriptor, 32- or 64-bit.
pub const fn descriptor_size(wide: bool) -> usize {
    if wide { Extent64::SIZE } else { Extent32::SIZE }
}

/// Decodes one descriptor; `bytes` must hold [`descriptor_size`] bytes.
pub fn parse_descriptor(bytes: &[u8], wide: bool) -> Result<Extent, PayloadError> {
    let mut r = Reader::new(bytes);
    Ok(if wide {
        Extent::new(r.u64("extent length")?, r.u64("extent flags")?)
    } else {
        Extent::new(
            u64::from(r.u32("extent length")?),
            u64::from(r.u32("extent flags")?),
        )
    })
}

/// Encodes one descriptor. In 32-bit form the caller has clipped the
/// length; the high half of the flags is dropped (only contexts with
/// 32-bit status may be negotiated without extended headers).
pub fn emit_descriptor(out: &mut impl Sink, e: Extent, wide: bool) -> Result<(), Overflow> {
    if wide {
        out.put_header(&Extent64 {
            length: e.length.into(),
            flags: e.flags.into(),
        })
    } else {
        out.put_header(&Extent32 {
            length: (e.length.min(u64::from(u32::MAX)) as u32).into(),
            flags: (e.flags as u32).into(),
        })
    }
}

/// Payload of an extended `NBD_CMD_BLOCK_STATUS` with `PAYLOAD_LEN`: the
/// effect length and the context ids to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusFilter<'a> {
    pub effect_length: u64,
    ids: &'a [u8],
}

impl<'a> StatusFilter<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, PayloadError> {
        let mut r = Reader::new(payload);
        let effect_length = r.u64("effect length")?;
        let ids = r.rest();
        if ids.len() % 4 != 0 {
            return Err(PayloadError::BadLength("the block status payload"));
        }
        Ok(Self { effect_length, ids })
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + 'a {
        self.ids
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    pub fn emit(out: &mut impl Sink, effect_length: u64, ids: &[u32]) -> Result<(), Overflow> {
        if 8 + 4 * ids.len() > out.room() {
            return Err(Overflow);
        }
        out.put(&effect_length.to_be_bytes())?;
        for id in ids {
            out.put(&id.to_be_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn hole_and_error_round_trip() {
        let mut out = Vec::new();
        let h = Hole {
            offset: 1 << 33,
            length: 4096,
        };
        h.emit(&mut out).unwrap();
        assert_eq!(Hole::parse(&out), Ok(h));
        assert!(Hole::parse(&out[..11]).is_err());

        let e = ErrorPayload {
            error: 5,
            message: b"boom",
            offset: Some(512),
        };
        let mut out = Vec::new();
        e.emit(&mut out).unwrap();
        assert_eq!(out.len(), e.len());
        assert_eq!(ErrorPayload::parse(&out, ChunkType::ERROR_OFFSET), Ok(e));
        assert_eq!(
            ErrorPayload::parse(&out, ChunkType::ERROR),
            Err(PayloadError::Trailing("the error chunk"))
        );
        // message length past the end
        assert_eq!(
            ErrorPayload::parse(&[0, 0, 0, 5, 0, 9, b'x'], ChunkType::ERROR),
            Err(PayloadError::LengthPastEnd("error message"))
        );
    }

    #[test]
    fn status_pieces_round_trip() {
        for wide in [false, true] {
            let mut out = Vec::new();
            let head = StatusHead {
                context_id: 3,
                count: wide.then_some(2),
            };
            head.emit(&mut out).unwrap();
            assert_eq!(out.len(), StatusHead::size(wide));
            assert_eq!(StatusHead::parse(&out, wide), Ok(head));
            let mut d = Vec::new();
            emit_descriptor(&mut d, Extent::new(4096, 3), wide).unwrap();
            assert_eq!(d.len(), descriptor_size(wide));
            assert_eq!(parse_descriptor(&d, wide), Ok(Extent::new(4096, 3)));
        }
        let mut p = Vec::new();
        StatusFilter::emit(&mut p, 1 << 20, &[1, 4]).unwrap();
        let f = StatusFilter::parse(&p).unwrap();
        assert_eq!(f.effect_length, 1 << 20);
        assert_eq!(f.ids().collect::<Vec<_>>(), [1, 4]);
        assert!(StatusFilter::parse(&p[..10]).is_err());
        assert!(StatusFilter::parse(&p[..6]).is_err());
    }
}
