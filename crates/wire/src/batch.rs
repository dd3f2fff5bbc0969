//! The uplink batch: what the box POSTs to the data center, and the data center's answer.
//!
//! Body layout before compression (all integers LEB128 varints unless noted):
//!
//! ```text
//! magic "RPB1" (4 bytes) | batch_id (8 bytes BE) | dropped_total | record_count
//! record*: instrument_ref | msg_id delta (zigzag) | timestamp delta (zigzag) | kind (u8)
//!          | priority (u8) | payload_len | payload
//! instrument_ref: index into the batch's serial table; an index equal to the table's
//!                 current length introduces a new serial: len | bytes
//! ```
//!
//! Deltas are taken against the previous record of the same batch. The whole body is
//! compressed with zstd; the data center limits the decompressed size.

use serde::{Deserialize, Serialize};

use crate::varint::{put_i64, put_u64, Reader};
use crate::Kind;

/// HTTP content type of a batch body.
pub const CONTENT_TYPE: &str = "application/vnd.rapbox.batch.v1+zstd";
/// HTTP header carrying the batch id (hex), so proxies' logs can name a batch.
pub const BATCH_ID_HEADER: &str = "X-Rapbox-Batch";
/// Largest decompressed batch a data center accepts.
pub const MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;
/// Largest number of records in one batch.
pub const MAX_RECORDS: usize = 1_000_000;
const MAGIC: &[u8; 4] = b"RPB1";
/// zstd's fastest regular level: on status reports it costs a few tenths of a byte per record more than
/// level 3 (about 2 bytes per record either way) and needs a compression context half the
/// size (the box's peak memory is the draining uplink's), at less CPU per batch.
const ZSTD_LEVEL: i32 = 1;
/// Bytes reserved for the record count: the longest varint of a u64.
const COUNT_SLOT: usize = 10;

/// One queued message as it travels to the data center.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Serial of the instrument, decided by the port it arrived on ("" for the box itself).
    pub instrument: String,
    /// The instrument's message id.
    pub msg_id: u64,
    /// Instrument timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// What it is.
    pub kind: Kind,
    /// 0 (urgent) to 3.
    pub priority: u8,
    /// Opaque payload.
    #[serde(with = "payload_text")]
    pub payload: Vec<u8>,
}

/// A decoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Chosen by the box; the data center answers a repeated id with the same ack.
    pub batch_id: u64,
    /// Routine messages the box's quota has dropped since it was installed.
    pub dropped_total: u64,
    /// The messages.
    pub records: Vec<Record>,
}

/// The data center's acknowledgement of a batch (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// The batch acknowledged.
    pub batch_id: u64,
    /// Records stored by this request.
    pub accepted: u64,
    /// Records the data center already had (a resend after a lost ack).
    pub duplicates: u64,
}

/// Builds a batch body record by record, without copying payloads twice.
#[derive(Debug)]
pub struct Encoder {
    buf: Vec<u8>,
    serials: Vec<String>,
    count: u64,
    prev_id: u64,
    prev_ts: i64,
    count_pos: usize,
}

impl Encoder {
    /// Starts a batch.
    pub fn new(batch_id: u64, dropped_total: u64) -> Self {
        let mut buf = Vec::with_capacity(256 * 1024);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&batch_id.to_be_bytes());
        put_u64(&mut buf, dropped_total);
        let count_pos = buf.len();
        // Room for the record count, which is known only at the end (see `finish`).
        buf.extend_from_slice(&[0; COUNT_SLOT]);
        Encoder { buf, serials: Vec::new(), count: 0, prev_id: 0, prev_ts: 0, count_pos }
    }

    /// Appends one record.
    pub fn push(&mut self, instrument: &str, msg_id: u64, timestamp_ms: i64, kind: Kind, priority: u8, payload: &[u8]) {
        match self.serials.iter().position(|s| s == instrument) {
            Some(i) => put_u64(&mut self.buf, i as u64),
            None => {
                put_u64(&mut self.buf, self.serials.len() as u64);
                put_u64(&mut self.buf, instrument.len() as u64);
                self.buf.extend_from_slice(instrument.as_bytes());
                self.serials.push(instrument.to_owned());
            }
        }
        put_i64(&mut self.buf, msg_id.wrapping_sub(self.prev_id) as i64);
        put_i64(&mut self.buf, timestamp_ms.wrapping_sub(self.prev_ts));
        self.buf.push(kind as u8);
        self.buf.push(priority);
        put_u64(&mut self.buf, payload.len() as u64);
        self.buf.extend_from_slice(payload);
        self.prev_id = msg_id;
        self.prev_ts = timestamp_ms;
        self.count += 1;
    }

    /// Records pushed so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Uncompressed bytes so far (the record count's varint not yet included).
    pub fn raw_len(&self) -> usize {
        self.buf.len() - COUNT_SLOT
    }

    /// Finishes and compresses the body.
    pub fn finish(mut self) -> Vec<u8> {
        // The count goes at the end of its slot and the head moves up to meet it, so the
        // body is one contiguous slice of `buf`: never copied into a second buffer of the
        // batch's size.
        let mut count = Vec::with_capacity(COUNT_SLOT);
        put_u64(&mut count, self.count);
        let slot_end = self.count_pos + COUNT_SLOT;
        let start = COUNT_SLOT - count.len();
        self.buf[slot_end - count.len()..slot_end].copy_from_slice(&count);
        self.buf.copy_within(..self.count_pos, start);
        // Compressing an in-memory buffer cannot fail except on allocation failure.
        zstd::bulk::compress(&self.buf[start..], ZSTD_LEVEL).unwrap_or_default()
    }
}

/// Why a batch body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("body is not zstd data or decompresses beyond {MAX_DECOMPRESSED} bytes: {0}")]
    Decompress(String),
    #[error("bad magic: not a rapbox v1 batch")]
    Magic,
    #[error("batch truncated while reading {0}")]
    Truncated(&'static str),
    #[error("record count {0} exceeds the limit")]
    TooManyRecords(u64),
    #[error("record {0}: unknown instrument reference")]
    InstrumentRef(u64),
    #[error("record {0}: serial is not UTF-8")]
    Serial(u64),
    #[error("record {0}: unknown kind {1}")]
    Kind(u64, u8),
    #[error("record {0}: priority {1} out of range")]
    Priority(u64, u8),
    #[error("{0} trailing bytes after the last record")]
    Trailing(usize),
}

/// Decodes a compressed batch body.
pub fn decode(body: &[u8]) -> Result<Batch, BatchError> {
    let raw = zstd::bulk::decompress(body, MAX_DECOMPRESSED).map_err(|e| BatchError::Decompress(e.to_string()))?;
    decode_raw(&raw)
}

fn decode_raw(raw: &[u8]) -> Result<Batch, BatchError> {
    let mut r = Reader::new(raw);
    if r.bytes(4) != Some(MAGIC.as_slice()) {
        return Err(BatchError::Magic);
    }
    let batch_id = r.be_u64().ok_or(BatchError::Truncated("batch id"))?;
    let dropped_total = r.var_u64().ok_or(BatchError::Truncated("dropped count"))?;
    let count = r.var_u64().ok_or(BatchError::Truncated("record count"))?;
    if count > MAX_RECORDS as u64 || count > r.remaining() as u64 {
        return Err(BatchError::TooManyRecords(count));
    }
    let mut serials: Vec<String> = Vec::new();
    let mut records = Vec::with_capacity(count as usize);
    let (mut prev_id, mut prev_ts) = (0u64, 0i64);
    for i in 0..count {
        let iref = r.var_u64().ok_or(BatchError::Truncated("instrument reference"))?;
        let instrument = if iref == serials.len() as u64 {
            let len = r.var_len(255).ok_or(BatchError::Truncated("serial"))?;
            let s = r.bytes(len).ok_or(BatchError::Truncated("serial"))?;
            let s = String::from_utf8(s.to_vec()).map_err(|_| BatchError::Serial(i))?;
            serials.push(s.clone());
            s
        } else {
            serials.get(iref as usize).cloned().ok_or(BatchError::InstrumentRef(i))?
        };
        let d_id = r.var_i64().ok_or(BatchError::Truncated("message id"))?;
        let d_ts = r.var_i64().ok_or(BatchError::Truncated("timestamp"))?;
        let msg_id = prev_id.wrapping_add(d_id as u64);
        let timestamp_ms = prev_ts.wrapping_add(d_ts);
        let k = r.u8().ok_or(BatchError::Truncated("kind"))?;
        let kind = Kind::from_u8(k).ok_or(BatchError::Kind(i, k))?;
        let priority = r.u8().ok_or(BatchError::Truncated("priority"))?;
        if priority > crate::PRIORITY_LOWEST {
            return Err(BatchError::Priority(i, priority));
        }
        let plen = r.var_len(r.remaining()).ok_or(BatchError::Truncated("payload"))?;
        let payload = r.bytes(plen).ok_or(BatchError::Truncated("payload"))?.to_vec();
        records.push(Record { instrument, msg_id, timestamp_ms, kind, priority, payload });
        prev_id = msg_id;
        prev_ts = timestamp_ms;
    }
    if r.remaining() != 0 {
        return Err(BatchError::Trailing(r.remaining()));
    }
    Ok(Batch { batch_id, dropped_total, records })
}

/// Payloads are shown as text in JSON when they are UTF-8, which status reports are.
mod payload_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(p))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u64) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                instrument: if i % 3 == 0 { "A-1".into() } else { "B-22".into() },
                msg_id: 1000 + i,
                timestamp_ms: 1_700_000_000_000 + i as i64 * 250,
                kind: if i % 10 == 0 { Kind::Alarm } else { Kind::Status },
                priority: if i % 10 == 0 { 0 } else { 2 },
                payload: format!("temp=37.{} reagent={}% door=closed", i % 10, 90 - i % 50).into_bytes(),
            })
            .collect()
    }

    fn encode(batch_id: u64, dropped: u64, recs: &[Record]) -> Vec<u8> {
        let mut e = Encoder::new(batch_id, dropped);
        for r in recs {
            e.push(&r.instrument, r.msg_id, r.timestamp_ms, r.kind, r.priority, &r.payload);
        }
        e.finish()
    }

    #[test]
    fn roundtrip() {
        let recs = sample(500);
        let body = encode(0xdead_beef, 17, &recs);
        let b = decode(&body).unwrap();
        assert_eq!(b, Batch { batch_id: 0xdead_beef, dropped_total: 17, records: recs });
    }

    #[test]
    fn every_length_of_the_record_count_roundtrips() {
        // Counts of 1, 2 and 3 varint bytes, with heads of different lengths before them.
        for (n, dropped) in [(1, 0), (127, u64::MAX), (128, 300), (16_384, 1 << 40)] {
            let recs = sample(n);
            let b = decode(&encode(7, dropped, &recs)).unwrap();
            assert_eq!(b, Batch { batch_id: 7, dropped_total: dropped, records: recs }, "{n} records");
        }
    }

    #[test]
    fn empty_batch_roundtrip() {
        let b = decode(&encode(1, 0, &[])).unwrap();
        assert!(b.records.is_empty());
    }

    #[test]
    fn routine_records_compress_well() {
        let recs = sample(1000);
        let body = encode(1, 0, &recs);
        assert!(body.len() < 1000 * 40, "{} bytes for 1000 records", body.len());
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(matches!(decode(b"not zstd"), Err(BatchError::Decompress(_))));
        let raw_bad = zstd::bulk::compress(b"XXXX12345678", 1).unwrap();
        assert_eq!(decode(&raw_bad), Err(BatchError::Magic));
        let recs = sample(5);
        let body = encode(9, 0, &recs);
        let raw = zstd::bulk::decompress(&body, MAX_DECOMPRESSED).unwrap();
        for cut in 0..raw.len() {
            assert!(decode_raw(&raw[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn a_huge_declared_count_does_not_allocate() {
        let mut raw = Vec::new();
        raw.extend_from_slice(MAGIC);
        raw.extend_from_slice(&1u64.to_be_bytes());
        put_u64(&mut raw, 0);
        put_u64(&mut raw, u64::MAX);
        assert!(matches!(decode_raw(&raw), Err(BatchError::TooManyRecords(_))));
    }

    #[test]
    fn ack_json_is_stable() {
        let a = BatchAck { batch_id: 5, accepted: 3, duplicates: 1 };
        let s = serde_json::to_string(&a).unwrap();
        assert_eq!(s, r#"{"batch_id":5,"accepted":3,"duplicates":1}"#);
        assert_eq!(serde_json::from_str::<BatchAck>(&s).unwrap(), a);
    }
}
