//! The on-disk form of a segment: the messages of one priority that one group commit
//! stored, as one SQLite row instead of one row per message.
//!
//! ```text
//! heads:    head*      head = instrument varint | msg_id varint | ts zigzag varint
//!                             | kind u8 | payload_len varint
//! payloads: the payloads, concatenated in the same order
//! ```
//!
//! Record `i` of a segment has seq `first_seq + i`. Heads and payloads are separate
//! blobs so that what only needs identities and sizes — the dedup index rebuilt at start,
//! a delivery or an eviction trimming a segment — reads a few bytes per message and never
//! the payloads. Only rapd writes these blobs, but a damaged database must fail with an
//! error, never a panic: every decoder is bounds-checked.

/// Most records in one segment. Readers rely on it to bound index range scans
/// (`first_seq > cursor - MAX_RECORDS`), so it may grow only with a schema change.
pub const MAX_RECORDS: usize = 4096;

fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn get_u64(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn get_i64(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let z = get_u64(buf, pos)?;
    Some(((z >> 1) as i64) ^ -((z & 1) as i64))
}

/// One record's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub instrument: i64,
    pub msg_id: u64,
    pub timestamp_ms: i64,
    pub kind: u8,
    pub len: usize,
}

/// Appends one record: its head to `heads`, its payload to `payloads`.
pub fn push(
    heads: &mut Vec<u8>,
    payloads: &mut Vec<u8>,
    instrument: i64,
    msg_id: u64,
    timestamp_ms: i64,
    kind: u8,
    payload: &[u8],
) {
    put_u64(heads, instrument as u64);
    put_u64(heads, msg_id);
    put_i64(heads, timestamp_ms);
    heads.push(kind);
    put_u64(heads, payload.len() as u64);
    payloads.extend_from_slice(payload);
}

/// Decodes the head at `*pos` and moves past it; None at the end or on damage.
pub fn next_head(heads: &[u8], pos: &mut usize) -> Option<Head> {
    let mut p = *pos;
    let instrument = get_u64(heads, &mut p)? as i64;
    let msg_id = get_u64(heads, &mut p)?;
    let timestamp_ms = get_i64(heads, &mut p)?;
    let kind = *heads.get(p)?;
    p += 1;
    let len = usize::try_from(get_u64(heads, &mut p)?).ok()?;
    *pos = p;
    Some(Head { instrument, msg_id, timestamp_ms, kind, len })
}

/// Walks a segment's records: head, the head's offset and the payload's offset.
pub struct Records<'a> {
    heads: &'a [u8],
    pos: usize,
    payload_off: usize,
}

/// A record's place in its segment's blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub head: Head,
    pub head_off: usize,
    pub payload_off: usize,
}

impl<'a> Records<'a> {
    pub fn new(heads: &'a [u8]) -> Self {
        Records { heads, pos: 0, payload_off: 0 }
    }

    /// The next record, or None at the end or on damage (see [`Records::at_end`]).
    pub fn next_placed(&mut self) -> Option<Placed> {
        let head_off = self.pos;
        let head = next_head(self.heads, &mut self.pos)?;
        let payload_off = self.payload_off;
        self.payload_off = payload_off.checked_add(head.len)?;
        Some(Placed { head, head_off, payload_off })
    }

    /// Offsets just past the records read so far: (heads, payloads).
    pub fn offsets(&self) -> (usize, usize) {
        (self.pos, self.payload_off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let (mut h, mut p) = (Vec::new(), Vec::new());
        push(&mut h, &mut p, 1, 7, -5, 2, b"hello");
        push(&mut h, &mut p, 300, u64::MAX, i64::MAX, 1, b"");
        push(&mut h, &mut p, 2, 8, 0, 3, b"!");
        assert_eq!(p, b"hello!");
        let mut r = Records::new(&h);
        let a = r.next_placed().unwrap();
        assert_eq!(a.head, Head { instrument: 1, msg_id: 7, timestamp_ms: -5, kind: 2, len: 5 });
        assert_eq!((a.head_off, a.payload_off), (0, 0));
        let b = r.next_placed().unwrap();
        assert_eq!(b.head, Head { instrument: 300, msg_id: u64::MAX, timestamp_ms: i64::MAX, kind: 1, len: 0 });
        assert_eq!(b.payload_off, 5);
        let c = r.next_placed().unwrap();
        assert_eq!((c.head.msg_id, c.payload_off), (8, 5));
        assert_eq!(r.offsets(), (h.len(), 6));
        assert_eq!(r.next_placed(), None);
    }

    #[test]
    fn damaged_heads_are_refused_not_overread() {
        let (mut h, mut p) = (Vec::new(), Vec::new());
        push(&mut h, &mut p, 1, 7, 0, 2, b"hello");
        for cut in 0..h.len() {
            let mut pos = 0;
            assert_eq!(next_head(&h[..cut], &mut pos), None, "cut at {cut}");
        }
        let mut pos = 0;
        assert_eq!(next_head(&[0xff; 12], &mut pos), None);
        // A length that overflows the payload offset.
        let mut h = Vec::new();
        push(&mut h, &mut Vec::new(), 1, 1, 0, 1, b"x");
        h.pop();
        h.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        push(&mut h, &mut Vec::new(), 1, 2, 0, 1, b"x");
        h.pop();
        h.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let mut r = Records::new(&h);
        assert!(r.next_placed().is_some());
        assert_eq!(r.next_placed(), None);
    }
}
