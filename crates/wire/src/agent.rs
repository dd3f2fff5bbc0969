//! The agent protocol: framed messages between an instrument's agent and the box.
//!
//! A frame is a 4-byte big-endian body length followed by the body. The body starts
//! with the protocol version and a frame type. The full specification, with byte
//! layouts and the meaning of every error code, is `docs/agent-protocol.md`.
//!
//! Version-1 frames (REPORT, ACK, ERROR) are defined here; the version-2 frames
//! (requests in both directions: files, and what later versions add) are
//! [`crate::requests`]. [`decode`] reads both.

use std::io::{self, Read, Write};

use crate::varint::Reader;
use crate::Kind;

/// Protocol version carried in REPORT, ACK and ERROR frames (by every agent, old or new).
pub const VERSION: u8 = 1;
/// The highest protocol version this crate speaks (see [`crate::requests`]).
pub const MAX_VERSION: u8 = crate::requests::VERSION;
/// Largest accepted body (everything after the length prefix), in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest instrument serial, in bytes.
pub const MAX_SERIAL: usize = 64;
/// Longest error reason text, in bytes.
pub const MAX_REASON: usize = 255;
/// Fixed part of a REPORT body: version, type, id, timestamp, kind, priority, serial length.
const REPORT_FIXED: usize = 2 + 8 + 8 + 1 + 1 + 1;

/// Frame type codes.
mod ty {
    pub const REPORT: u8 = 0x01;
    pub const ACK: u8 = 0x02;
    pub const ERROR: u8 = 0x03;
}

/// Why the box refused a frame. The numeric codes are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The body could not be decoded.
    Malformed = 1,
    /// The declared length exceeds [`MAX_BODY`]; the connection is closed.
    TooLarge = 2,
    /// The serial in the message is not the instrument cabled to this port.
    WrongInstrument = 3,
    /// The queue is full and this message may not displace others; keep it and retry.
    QueueFull = 4,
    /// The box could not store the message durably (disk full, I/O error); retry later.
    StorageFailure = 5,
    /// The frame's protocol version is not supported.
    UnsupportedVersion = 6,
    /// The frame did not arrive completely in time; the connection is closed.
    Timeout = 7,
    /// The port already has its maximum number of connections; this one is closed.
    TooManyConnections = 8,
    /// The frame type is unknown or not valid in this direction.
    UnknownFrameType = 9,
    /// The box is shutting down; retry later.
    ShuttingDown = 10,
    /// Version 2: a request before HELLO, or one the negotiated capabilities do not allow.
    NotNegotiated = 11,
    /// Version 2: the box's transfer storage quota (or the data partition) cannot hold the file.
    QuotaExceeded = 12,
    /// Version 2: no such transfer or upload on this connection's instrument.
    UnknownTransfer = 13,
    /// Version 2: a READ beyond the file, or a CHUNK that does not continue where the box is.
    BadOffset = 14,
    /// Version 2: the uploaded bytes do not have the offered SHA-256; the box discarded them.
    HashMismatch = 15,
    /// Version 2: the agent does not want the offered file.
    Declined = 16,
    /// Version 2: no such remote session waits for this instrument's answer (or runs).
    UnknownSession = 17,
    /// Version 2: the answer came after the request's time to answer ended.
    Expired = 18,
}

impl ErrorCode {
    /// Decodes the wire value.
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::TooLarge,
            3 => ErrorCode::WrongInstrument,
            4 => ErrorCode::QueueFull,
            5 => ErrorCode::StorageFailure,
            6 => ErrorCode::UnsupportedVersion,
            7 => ErrorCode::Timeout,
            8 => ErrorCode::TooManyConnections,
            9 => ErrorCode::UnknownFrameType,
            10 => ErrorCode::ShuttingDown,
            11 => ErrorCode::NotNegotiated,
            12 => ErrorCode::QuotaExceeded,
            13 => ErrorCode::UnknownTransfer,
            14 => ErrorCode::BadOffset,
            15 => ErrorCode::HashMismatch,
            16 => ErrorCode::Declined,
            17 => ErrorCode::UnknownSession,
            18 => ErrorCode::Expired,
            _ => return None,
        })
    }

    /// The name used in logs and documentation.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::WrongInstrument => "wrong_instrument",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::StorageFailure => "storage_failure",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Timeout => "timeout",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::UnknownFrameType => "unknown_frame_type",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NotNegotiated => "not_negotiated",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::UnknownTransfer => "unknown_transfer",
            ErrorCode::BadOffset => "bad_offset",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::Declined => "declined",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::Expired => "expired",
        }
    }

    /// Whether the box closes the connection after sending this error.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::TooLarge | ErrorCode::Timeout | ErrorCode::TooManyConnections | ErrorCode::UnsupportedVersion
        )
    }
}

/// A status report from an instrument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Chosen by the instrument; unique per instrument. A resent id is acked again, stored once.
    pub msg_id: u64,
    /// Milliseconds since the Unix epoch, by the instrument's clock.
    pub timestamp_ms: i64,
    /// What the message is about.
    pub kind: Kind,
    /// 0 (urgent) to 3 (lowest). Alarms are always treated as urgent.
    pub priority: u8,
    /// The serial the instrument claims; must match the port's configured instrument.
    pub serial: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
}

/// The box's answer to one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Durably stored (or already stored before, when `duplicate`).
    Ack { msg_id: u64, duplicate: bool },
    /// Refused; the instrument keeps the message unless the code says it is hopeless.
    Error { msg_id: u64, code: ErrorCode, reason: String },
}

/// Any frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Report(Report),
    Reply(Reply),
    /// A version-2 frame.
    Request(crate::requests::Message),
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame body is empty")]
    Empty,
    #[error("unsupported protocol version {0} (this box speaks versions 1 to {MAX_VERSION})")]
    Version(u8),
    #[error("unknown frame type 0x{0:02x}")]
    FrameType(u8),
    #[error("frame truncated while reading {0}")]
    Truncated(&'static str),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("message id {0} is reserved for the box's own records (an instrument's ids are below 2^63)")]
    ReservedId(u64),
    #[error("kind {0} may not be sent by an instrument")]
    KindNotAllowed(&'static str),
    #[error("priority {0} out of range 0..=3")]
    Priority(u8),
    #[error("serial is empty or longer than {MAX_SERIAL} bytes")]
    SerialLength,
    #[error("serial is not printable ASCII")]
    SerialChars,
    #[error("unknown error code {0}")]
    Code(u16),
    #[error("reason text is not UTF-8")]
    ReasonUtf8,
    #[error("{0} trailing bytes after the frame")]
    Trailing(usize),
    #[error("{0} is not UTF-8")]
    Text(&'static str),
    #[error("unknown file category {0:?}")]
    Category(String),
    #[error("file name {0:?} is not 1 to 128 characters of A-Z a-z 0-9 . _ + - (not starting with .)")]
    FileName(String),
    #[error("{0} data bytes, more than the chunk limit of 61440")]
    ChunkTooLarge(usize),
    #[error("unknown received status {0}")]
    Status(u8),
    #[error("{what} is {len} bytes, longer than {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
}

impl DecodeError {
    /// The protocol error code the box answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Version(_) => ErrorCode::UnsupportedVersion,
            DecodeError::FrameType(_) => ErrorCode::UnknownFrameType,
            _ => ErrorCode::Malformed,
        }
    }
}

impl Report {
    /// Appends this report as a complete frame (length prefix included).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(VERSION);
        out.push(ty::REPORT);
        out.extend_from_slice(&self.msg_id.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.push(self.kind as u8);
        out.push(self.priority);
        let serial = self.serial.as_bytes();
        out.push(serial.len().min(255) as u8);
        out.extend_from_slice(&serial[..serial.len().min(255)]);
        out.extend_from_slice(&self.payload);
        finish_len(out, start);
    }

    /// The largest payload that still fits [`MAX_BODY`] with this serial.
    pub fn max_payload(serial_len: usize) -> usize {
        MAX_BODY - REPORT_FIXED - serial_len
    }
}

impl Reply {
    /// Appends this reply as a complete frame (length prefix included).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(VERSION);
        match self {
            Reply::Ack { msg_id, duplicate } => {
                out.push(ty::ACK);
                out.extend_from_slice(&msg_id.to_be_bytes());
                out.push(u8::from(*duplicate));
            }
            Reply::Error { msg_id, code, reason } => {
                out.push(ty::ERROR);
                out.extend_from_slice(&msg_id.to_be_bytes());
                out.extend_from_slice(&(*code as u16).to_be_bytes());
                let r = truncate_utf8(reason, MAX_REASON);
                out.push(r.len() as u8);
                out.extend_from_slice(r.as_bytes());
            }
        }
        finish_len(out, start);
    }

    /// The message id this reply is about (0 when the box could not read one).
    pub fn msg_id(&self) -> u64 {
        match self {
            Reply::Ack { msg_id, .. } | Reply::Error { msg_id, .. } => *msg_id,
        }
    }
}

fn finish_len(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads the message id of a body if it is long enough to carry one, so that even a
/// malformed report can be answered about the right message.
pub fn peek_msg_id(body: &[u8]) -> u64 {
    if body.len() >= 10 {
        u64::from_be_bytes(body[2..10].try_into().unwrap_or([0; 8]))
    } else {
        0
    }
}

/// Decodes one body (without its length prefix).
pub fn decode(body: &[u8]) -> Result<Frame, DecodeError> {
    let mut r = Reader::new(body);
    let version = r.u8().ok_or(DecodeError::Empty)?;
    if version == crate::requests::VERSION {
        return crate::requests::decode_body(body).map(Frame::Request);
    }
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let t = r.u8().ok_or(DecodeError::Truncated("frame type"))?;
    let frame = match t {
        ty::REPORT => {
            let msg_id = r.be_u64().ok_or(DecodeError::Truncated("message id"))?;
            if msg_id >= crate::BOX_ID_BASE {
                return Err(DecodeError::ReservedId(msg_id));
            }
            let timestamp_ms = r.be_i64().ok_or(DecodeError::Truncated("timestamp"))?;
            let k = r.u8().ok_or(DecodeError::Truncated("kind"))?;
            let kind = Kind::from_u8(k).ok_or(DecodeError::Kind(k))?;
            if !kind.from_instrument() {
                return Err(DecodeError::KindNotAllowed(kind.name()));
            }
            let priority = r.u8().ok_or(DecodeError::Truncated("priority"))?;
            if priority > crate::PRIORITY_LOWEST {
                return Err(DecodeError::Priority(priority));
            }
            let slen = r.u8().ok_or(DecodeError::Truncated("serial length"))? as usize;
            if slen == 0 || slen > MAX_SERIAL {
                return Err(DecodeError::SerialLength);
            }
            let serial = r.bytes(slen).ok_or(DecodeError::Truncated("serial"))?;
            if !serial.iter().all(|b| b.is_ascii_graphic()) {
                return Err(DecodeError::SerialChars);
            }
            let serial = String::from_utf8(serial.to_vec()).map_err(|_| DecodeError::SerialChars)?;
            let payload = r.rest().to_vec();
            Frame::Report(Report { msg_id, timestamp_ms, kind, priority, serial, payload })
        }
        ty::ACK => {
            let msg_id = r.be_u64().ok_or(DecodeError::Truncated("message id"))?;
            let dup = r.u8().ok_or(DecodeError::Truncated("duplicate flag"))?;
            Frame::Reply(Reply::Ack { msg_id, duplicate: dup != 0 })
        }
        ty::ERROR => {
            let msg_id = r.be_u64().ok_or(DecodeError::Truncated("message id"))?;
            let c = r.be_u16().ok_or(DecodeError::Truncated("error code"))?;
            let code = ErrorCode::from_u16(c).ok_or(DecodeError::Code(c))?;
            let rlen = r.u8().ok_or(DecodeError::Truncated("reason length"))? as usize;
            let reason = r.bytes(rlen).ok_or(DecodeError::Truncated("reason"))?;
            let reason = String::from_utf8(reason.to_vec()).map_err(|_| DecodeError::ReasonUtf8)?;
            Frame::Reply(Reply::Error { msg_id, code, reason })
        }
        other => return Err(DecodeError::FrameType(other)),
    };
    if r.remaining() != 0 {
        return Err(DecodeError::Trailing(r.remaining()));
    }
    Ok(frame)
}

/// Why reading a frame from a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The declared body length exceeds [`MAX_BODY`].
    #[error("declared frame length {0} exceeds the limit of {MAX_BODY} bytes")]
    TooLarge(u32),
    /// An I/O error, including read time-outs (`WouldBlock`/`TimedOut`).
    #[error("reading frame: {0}")]
    Io(#[from] io::Error),
}

/// Reads one frame body into `buf` (reusing its allocation). Never allocates more
/// than [`MAX_BODY`] bytes, whatever the peer declares.
pub fn read_body<R: Read>(rd: &mut R, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match rd.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    let n = u32::from_be_bytes(len);
    if n as usize > MAX_BODY {
        return Err(ReadError::TooLarge(n));
    }
    buf.clear();
    buf.resize(n as usize, 0);
    rd.read_exact(buf)?;
    Ok(())
}

/// Writes a reply frame.
pub fn write_reply<W: Write>(w: &mut W, reply: &Reply) -> io::Result<()> {
    let mut out = Vec::with_capacity(32);
    reply.encode_into(&mut out);
    w.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            msg_id: 42,
            timestamp_ms: 1_700_000_000_000,
            kind: Kind::Alarm,
            priority: 0,
            serial: "DXI-0001".into(),
            payload: b"temp=37.1".to_vec(),
        }
    }

    fn body_of(frame: &[u8]) -> &[u8] {
        &frame[4..]
    }

    #[test]
    fn report_roundtrip() {
        let mut out = Vec::new();
        report().encode_into(&mut out);
        assert_eq!(u32::from_be_bytes(out[..4].try_into().unwrap()) as usize, out.len() - 4);
        assert_eq!(decode(body_of(&out)).unwrap(), Frame::Report(report()));
        assert_eq!(peek_msg_id(body_of(&out)), 42);
    }

    #[test]
    fn replies_roundtrip() {
        for reply in [
            Reply::Ack { msg_id: 7, duplicate: true },
            Reply::Error { msg_id: 9, code: ErrorCode::QueueFull, reason: "queue full: 10 MiB of alarms".into() },
        ] {
            let mut out = Vec::new();
            reply.encode_into(&mut out);
            assert_eq!(decode(body_of(&out)).unwrap(), Frame::Reply(reply));
        }
    }

    #[test]
    fn long_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(200);
        let mut out = Vec::new();
        Reply::Error { msg_id: 1, code: ErrorCode::Malformed, reason }.encode_into(&mut out);
        match decode(body_of(&out)).unwrap() {
            Frame::Reply(Reply::Error { reason, .. }) => assert!(reason.len() <= MAX_REASON),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        report().encode_into(&mut out);
        let body = body_of(&out);
        let fixed_end = REPORT_FIXED + "DXI-0001".len();
        for cut in 0..fixed_end {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut out = Vec::new();
        report().encode_into(&mut out);
        let mut body = body_of(&out).to_vec();
        body[0] = 9;
        assert_eq!(decode(&body), Err(DecodeError::Version(9)));
        assert_eq!(DecodeError::Version(9).code(), ErrorCode::UnsupportedVersion);
        let mut body = body_of(&out).to_vec();
        body[1] = 0x77;
        assert_eq!(decode(&body), Err(DecodeError::FrameType(0x77)));
        let mut body = body_of(&out).to_vec();
        body[18] = 6; // audit: the box's own kind
        assert_eq!(decode(&body), Err(DecodeError::KindNotAllowed("audit")));
        let mut body = body_of(&out).to_vec();
        body[2] = 0x80; // msg_id 2^63 + 42: the box's own id range
        assert_eq!(decode(&body), Err(DecodeError::ReservedId(crate::BOX_ID_BASE + 42)));
        assert_eq!(DecodeError::ReservedId(0).code(), ErrorCode::Malformed);
        let mut body = body_of(&out).to_vec();
        body[19] = 4;
        assert_eq!(decode(&body), Err(DecodeError::Priority(4)));
        let mut body = body_of(&out).to_vec();
        body[21] = b' ';
        assert_eq!(decode(&body), Err(DecodeError::SerialChars));
    }

    #[test]
    fn stream_reader_enforces_the_limit_before_allocating() {
        let mut stream: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut buf = Vec::new();
        assert!(matches!(read_body(&mut stream, &mut buf), Err(ReadError::TooLarge(u32::MAX))));
        assert!(buf.capacity() < 1024);
        let mut empty: &[u8] = &[];
        assert!(matches!(read_body(&mut empty, &mut buf), Err(ReadError::Closed)));
        let mut partial: &[u8] = &[0, 0];
        assert!(matches!(read_body(&mut partial, &mut buf), Err(ReadError::Io(_))));
    }

    #[test]
    fn maximal_report_fits() {
        let serial = "S".repeat(MAX_SERIAL);
        let r = Report { payload: vec![0; Report::max_payload(MAX_SERIAL)], serial, ..report() };
        let mut out = Vec::new();
        r.encode_into(&mut out);
        assert_eq!(out.len() - 4, MAX_BODY);
        let mut rd: &[u8] = &out;
        let mut buf = Vec::new();
        read_body(&mut rd, &mut buf).unwrap();
        assert_eq!(decode(&buf).unwrap(), Frame::Report(r));
    }
}
