//! Option payloads of the handshake, as value types: each parses from a
//! checked [`Reader`] and emits into a [`Sink`], and the server and the
//! client use the same types for the same bytes.
//!
//! Names that are used again on the wire (export names, context names,
//! queries) are validated [`nbd_string`]s; text shown to humans
//! (descriptions, error messages) is kept as bytes for the caller to
//! display as it sees fit.

use super::codec::{Overflow, PayloadError, Reader, Sink, nbd_string};
use super::headers::{InfoBlockSize, InfoExport, OptionReply, OptionRequest};
use super::{IHAVEOPT, InfoType, MAX_STRING, OPTION_REPLY_MAGIC, OptionType, ReplyType};

/// An option request header and its payload length, emitted together with
/// the payload so the length field can never disagree with it.
pub fn emit_request(
    out: &mut impl Sink,
    option: OptionType,
    payload: &[&[u8]],
) -> Result<(), Overflow> {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let h = OptionRequest {
        magic: IHAVEOPT.into(),
        option: option.0.into(),
        length: u32::try_from(len).map_err(|_| Overflow)?.into(),
    };
    frame(out, zerocopy::IntoBytes::as_bytes(&h), payload)
}

/// An option reply header and its payload.
pub fn emit_reply(
    out: &mut impl Sink,
    option: OptionType,
    reply: ReplyType,
    payload: &[&[u8]],
) -> Result<(), Overflow> {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let h = OptionReply {
        magic: OPTION_REPLY_MAGIC.into(),
        option: option.0.into(),
        reply_type: reply.0.into(),
        length: u32::try_from(len).map_err(|_| Overflow)?.into(),
    };
    frame(out, zerocopy::IntoBytes::as_bytes(&h), payload)
}

fn frame(out: &mut impl Sink, head: &[u8], payload: &[&[u8]]) -> Result<(), Overflow> {
    let len: usize = head.len() + payload.iter().map(|p| p.len()).sum::<usize>();
    if len > out.room() {
        return Err(Overflow);
    }
    out.put(head)?;
    for p in payload {
        out.put(p)?;
    }
    Ok(())
}

/// The information requests of `NBD_OPT_INFO` / `NBD_OPT_GO`, validated:
/// an even number of bytes, one `u16` type each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoRequests<'a>(&'a [u8]);

impl<'a> InfoRequests<'a> {
    pub fn iter(self) -> impl Iterator<Item = InfoType> + 'a {
        self.0
            .chunks_exact(2)
            .map(|c| InfoType(u16::from_be_bytes([c[0], c[1]])))
    }

    pub fn contains(self, t: InfoType) -> bool {
        self.iter().any(|x| x == t)
    }

    pub const fn len(self) -> usize {
        self.0.len() / 2
    }

    pub const fn is_empty(self) -> bool {
        self.0.is_empty()
    }
}

/// Payload of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    pub name: &'a str,
    pub requests: InfoRequests<'a>,
}

impl<'a> InfoRequest<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, PayloadError> {
        let mut r = Reader::new(payload);
        let name_len = r.u32("export name")? as usize;
        // "MUST be no larger than the option data length - 6".
        if name_len > payload.len().saturating_sub(6) {
            return Err(PayloadError::LengthPastEnd("export name"));
        }
        let name = r.string(name_len, "export name")?;
        let count = r.u16("information request count")? as usize;
        let rest = r.rest();
        if rest.len() != 2 * count {
            return Err(PayloadError::CountMismatch("information request"));
        }
        Ok(Self {
            name,
            requests: InfoRequests(rest),
        })
    }

    /// Emits the whole option (header and payload) asking for `requests`.
    pub fn emit(
        out: &mut impl Sink,
        option: OptionType,
        name: &str,
        requests: &[InfoType],
    ) -> Result<(), Overflow> {
        let name_len = (name.len() as u32).to_be_bytes();
        let count = (requests.len() as u16).to_be_bytes();
        let mut types = [0u8; 16];
        let types = types.get_mut(..2 * requests.len()).ok_or(Overflow)?;
        for (dst, t) in types.chunks_exact_mut(2).zip(requests) {
            dst.copy_from_slice(&t.0.to_be_bytes());
        }
        emit_request(out, option, &[&name_len, name.as_bytes(), &count, types])
    }
}

/// The queries of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`,
/// each a validated string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queries<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl<'a> Queries<'a> {
    pub const fn len(self) -> u32 {
        self.count
    }

    pub const fn is_empty(self) -> bool {
        self.count == 0
    }

    pub fn iter(self) -> impl Iterator<Item = &'a str> + 'a {
        let mut r = Reader::new(self.bytes);
        // Validated by `parse`, so every read succeeds.
        (0..self.count).map_while(move |_| r.string32("query").ok())
    }
}

/// Payload of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    pub export: &'a str,
    pub queries: Queries<'a>,
}

impl<'a> MetaContextRequest<'a> {
    /// Checks the whole request before any of it is acted on.
    pub fn parse(payload: &'a [u8]) -> Result<Self, PayloadError> {
        let mut r = Reader::new(payload);
        let export = r.string32("export name")?;
        let count = r.u32("query count")?;
        let bytes = r.rest();
        let mut check = Reader::new(bytes);
        for _ in 0..count {
            check.string32("query")?;
        }
        check.finish("queries")?;
        Ok(Self {
            export,
            queries: Queries { bytes, count },
        })
    }

    /// Emits the whole option (header and payload).
    pub fn emit(
        out: &mut impl Sink,
        option: OptionType,
        export: &str,
        queries: &[&str],
    ) -> Result<(), Overflow> {
        let len = 4 + export.len() + 4 + queries.iter().map(|q| 4 + q.len()).sum::<usize>();
        if OptionRequest::SIZE + len > out.room() {
            return Err(Overflow);
        }
        let h = OptionRequest {
            magic: IHAVEOPT.into(),
            option: option.0.into(),
            length: u32::try_from(len).map_err(|_| Overflow)?.into(),
        };
        out.put_header(&h)?;
        out.put(&(export.len() as u32).to_be_bytes())?;
        out.put(export.as_bytes())?;
        out.put(&(queries.len() as u32).to_be_bytes())?;
        for q in queries {
            out.put(&(q.len() as u32).to_be_bytes())?;
            out.put(q.as_bytes())?;
        }
        Ok(())
    }
}

/// Payload of `NBD_REP_SERVER`: an export's name and description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerEntry<'a> {
    pub name: &'a str,
    /// Text for humans; not validated.
    pub description: &'a [u8],
}

impl<'a> ServerEntry<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, PayloadError> {
        let mut r = Reader::new(payload);
        let name = r.string32("export name")?;
        let description = r.rest();
        if description.len() > MAX_STRING {
            return Err(PayloadError::BadString("export description"));
        }
        Ok(Self { name, description })
    }

    pub fn emit(&self, out: &mut impl Sink) -> Result<(), Overflow> {
        let len = (self.name.len() as u32).to_be_bytes();
        emit_reply(
            out,
            OptionType::LIST,
            ReplyType::SERVER,
            &[&len, self.name.as_bytes(), self.description],
        )
    }
}

/// Payload of `NBD_REP_META_CONTEXT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaContextEntry<'a> {
    pub id: u32,
    pub name: &'a str,
}

impl<'a> MetaContextEntry<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, PayloadError> {
        let mut r = Reader::new(payload);
        let id = r.u32("context id")?;
        let rest = r.rest();
        let name = nbd_string(rest).ok_or(PayloadError::BadString("context name"))?;
        Ok(Self { id, name })
    }

    pub fn emit(&self, out: &mut impl Sink, option: OptionType) -> Result<(), Overflow> {
        emit_reply(
            out,
            option,
            ReplyType::META_CONTEXT,
            &[&self.id.to_be_bytes(), self.name.as_bytes()],
        )
    }
}

/// Payload of `NBD_REP_INFO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Info<'a> {
    /// `NBD_INFO_EXPORT`: size and transmission flags (raw: the receiver
    /// decides what unknown bits mean).
    Export { size: u64, flags: u16 },
    /// `NBD_INFO_NAME`: the canonical name; text, not validated.
    Name(&'a [u8]),
    /// `NBD_INFO_DESCRIPTION`; text, not validated.
    Description(&'a [u8]),
    /// `NBD_INFO_BLOCK_SIZE`, as sent (not yet checked for sense).
    BlockSize {
        minimum: u32,
        preferred: u32,
        maximum: u32,
    },
    /// A type this implementation does not know; the spec says to ignore it.
    Unknown(InfoType),
}

impl<'a> Info<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, PayloadError> {
        let mut r = Reader::new(payload);
        let ty = InfoType(r.u16("information type")?);
        match ty {
            InfoType::EXPORT => {
                if payload.len() != InfoExport::SIZE {
                    return Err(PayloadError::BadLength("NBD_INFO_EXPORT"));
                }
                let size = r.u64("export size")?;
                let flags = r.u16("transmission flags")?;
                Ok(Info::Export { size, flags })
            }
            InfoType::BLOCK_SIZE => {
                if payload.len() != InfoBlockSize::SIZE {
                    return Err(PayloadError::BadLength("NBD_INFO_BLOCK_SIZE"));
                }
                Ok(Info::BlockSize {
                    minimum: r.u32("minimum block size")?,
                    preferred: r.u32("preferred block size")?,
                    maximum: r.u32("maximum block size")?,
                })
            }
            InfoType::NAME | InfoType::DESCRIPTION => {
                let text = r.rest();
                if text.len() > MAX_STRING {
                    return Err(PayloadError::BadString("information string"));
                }
                Ok(if ty == InfoType::NAME {
                    Info::Name(text)
                } else {
                    Info::Description(text)
                })
            }
            other => Ok(Info::Unknown(other)),
        }
    }

    /// Emits the whole `NBD_REP_INFO` reply to `option`.
    pub fn emit(&self, out: &mut impl Sink, option: OptionType) -> Result<(), Overflow> {
        let ty = |t: InfoType| t.0.to_be_bytes();
        match *self {
            Info::Export { size, flags } => emit_reply(
                out,
                option,
                ReplyType::INFO,
                &[
                    &ty(InfoType::EXPORT),
                    &size.to_be_bytes(),
                    &flags.to_be_bytes(),
                ],
            ),
            Info::Name(s) => emit_reply(out, option, ReplyType::INFO, &[&ty(InfoType::NAME), s]),
            Info::Description(s) => emit_reply(
                out,
                option,
                ReplyType::INFO,
                &[&ty(InfoType::DESCRIPTION), s],
            ),
            Info::BlockSize {
                minimum,
                preferred,
                maximum,
            } => emit_reply(
                out,
                option,
                ReplyType::INFO,
                &[
                    &ty(InfoType::BLOCK_SIZE),
                    &minimum.to_be_bytes(),
                    &preferred.to_be_bytes(),
                    &maximum.to_be_bytes(),
                ],
            ),
            Info::Unknown(t) => emit_reply(out, option, ReplyType::INFO, &[&ty(t)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn payload(out: &[u8]) -> &[u8] {
        &out[OptionRequest::SIZE..]
    }

    #[test]
    fn info_request_round_trip() {
        let mut out = Vec::new();
        InfoRequest::emit(
            &mut out,
            OptionType::GO,
            "disk",
            &[InfoType::NAME, InfoType::BLOCK_SIZE],
        )
        .unwrap();
        let r = InfoRequest::parse(payload(&out)).unwrap();
        assert_eq!(r.name, "disk");
        assert_eq!(r.requests.len(), 2);
        assert!(r.requests.contains(InfoType::BLOCK_SIZE));
        assert!(!r.requests.contains(InfoType::DESCRIPTION));
    }

    #[test]
    fn info_request_rules() {
        // name length > option length - 6
        let mut p = 4u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"disk");
        p.extend_from_slice(&0u16.to_be_bytes());
        assert_eq!(
            InfoRequest::parse(&p[..9]),
            Err(PayloadError::LengthPastEnd("export name"))
        );
        assert!(InfoRequest::parse(&p).is_ok());
        p.push(0);
        assert_eq!(
            InfoRequest::parse(&p),
            Err(PayloadError::CountMismatch("information request"))
        );
    }

    #[test]
    fn meta_context_request_round_trip_and_checks() {
        let mut out = Vec::new();
        MetaContextRequest::emit(
            &mut out,
            OptionType::SET_META_CONTEXT,
            "",
            &["base:allocation", "qemu:dirty-bitmap:b"],
        )
        .unwrap();
        let r = MetaContextRequest::parse(payload(&out)).unwrap();
        assert_eq!(r.export, "");
        let q: Vec<&str> = r.queries.iter().collect();
        assert_eq!(q, ["base:allocation", "qemu:dirty-bitmap:b"]);
        let mut bad = payload(&out).to_vec();
        bad.push(1);
        assert_eq!(
            MetaContextRequest::parse(&bad),
            Err(PayloadError::Trailing("queries"))
        );
        let short = &payload(&out)[..payload(&out).len() - 1];
        assert_eq!(
            MetaContextRequest::parse(short),
            Err(PayloadError::LengthPastEnd("query"))
        );
    }

    #[test]
    fn replies_round_trip() {
        let mut out = Vec::new();
        ServerEntry {
            name: "a",
            description: b"the disk",
        }
        .emit(&mut out)
        .unwrap();
        let e = ServerEntry::parse(&out[OptionReply::SIZE..]).unwrap();
        assert_eq!((e.name, e.description), ("a", &b"the disk"[..]));

        for info in [
            Info::Export {
                size: 1 << 40,
                flags: 0x1ff,
            },
            Info::Name(b"n"),
            Info::Description(b"d"),
            Info::BlockSize {
                minimum: 1,
                preferred: 4096,
                maximum: 1 << 25,
            },
        ] {
            let mut out = Vec::new();
            info.emit(&mut out, OptionType::GO).unwrap();
            assert_eq!(Info::parse(&out[OptionReply::SIZE..]), Ok(info));
        }
        assert_eq!(
            Info::parse(&[0, 0, 1]),
            Err(PayloadError::BadLength("NBD_INFO_EXPORT"))
        );
        assert_eq!(Info::parse(&[0, 9]), Ok(Info::Unknown(InfoType(9))));

        let mut out = Vec::new();
        MetaContextEntry {
            id: 7,
            name: "base:allocation",
        }
        .emit(&mut out, OptionType::SET_META_CONTEXT)
        .unwrap();
        let m = MetaContextEntry::parse(&out[OptionReply::SIZE..]).unwrap();
        assert_eq!((m.id, m.name), (7, "base:allocation"));
    }
}
