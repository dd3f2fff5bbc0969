//! The on-disk form of a segment: the messages of one priority that one group commit
//! stored, as one SQLite row instead of one row per message.
//!
//! ```text
//! body:  record*     record = instrument varint | msg_id varint | ts zigzag varint
//!                             | kind u8 | payload_len varint | payload
//! keys:  run*        run    = instrument varint | first msg_id varint | count varint
//! ```
//!
//! Record `i` of a segment has seq `first_seq + i`. `keys` repeats the identities of the
//! body's records as runs of consecutive ids per instrument, so that the dedup index is
//! rebuilt at start-up without reading any payload. Only rapd writes these blobs, but a
//! damaged database must fail with an error, never a panic: every decoder is
//! bounds-checked.

/// Most records in one segment. Readers rely on it to bound index range scans
/// (`first_seq > cursor - MAX_RECORDS`), so it may grow only with a schema change.
pub const MAX_RECORDS: usize = 4096;

/// Appends an unsigned LEB128 varint.
pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
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

/// One record as encoded in a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec<'a> {
    pub instrument: i64,
    pub msg_id: u64,
    pub timestamp_ms: i64,
    pub kind: u8,
    pub payload: &'a [u8],
}

/// Appends one record to a body.
pub fn push(body: &mut Vec<u8>, instrument: i64, msg_id: u64, timestamp_ms: i64, kind: u8, payload: &[u8]) {
    put_u64(body, instrument as u64);
    put_u64(body, msg_id);
    put_i64(body, timestamp_ms);
    body.push(kind);
    put_u64(body, payload.len() as u64);
    body.extend_from_slice(payload);
}

/// Decodes the record at `*pos` and moves past it; None at the end or on damage
/// (`*pos == body.len()` tells the two apart).
pub fn next<'a>(body: &'a [u8], pos: &mut usize) -> Option<Rec<'a>> {
    let mut p = *pos;
    let instrument = get_u64(body, &mut p)? as i64;
    let msg_id = get_u64(body, &mut p)?;
    let timestamp_ms = get_i64(body, &mut p)?;
    let kind = *body.get(p)?;
    p += 1;
    let len = usize::try_from(get_u64(body, &mut p)?).ok()?;
    let payload = body.get(p..p.checked_add(len)?)?;
    *pos = p + len;
    Some(Rec { instrument, msg_id, timestamp_ms, kind, payload })
}

/// Builds the `keys` blob of a segment, record by record.
#[derive(Debug, Default)]
pub struct Keys {
    out: Vec<u8>,
    run: Option<(i64, u64, u64)>,
}

impl Keys {
    pub fn push(&mut self, instrument: i64, msg_id: u64) {
        if let Some((i, first, n)) = &mut self.run {
            if *i == instrument && first.checked_add(*n) == Some(msg_id) {
                *n += 1;
                return;
            }
        }
        self.flush();
        self.run = Some((instrument, msg_id, 1));
    }

    fn flush(&mut self) {
        if let Some((i, first, n)) = self.run.take() {
            put_u64(&mut self.out, i as u64);
            put_u64(&mut self.out, first);
            put_u64(&mut self.out, n);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.out
    }
}

/// Calls `f(instrument, first_id, last_id)` for the identities of records `from..to` of a
/// segment, from its `keys` blob; false if the blob is damaged.
pub fn for_each_key(keys: &[u8], from: u64, to: u64, mut f: impl FnMut(i64, u64, u64)) -> bool {
    let (mut pos, mut index) = (0usize, 0u64);
    while pos < keys.len() && index < to {
        let (Some(i), Some(first), Some(n)) =
            (get_u64(keys, &mut pos), get_u64(keys, &mut pos), get_u64(keys, &mut pos))
        else {
            return false;
        };
        if n == 0 {
            return false;
        }
        // The part of this run inside from..to.
        let (lo, hi) = (index.max(from), (index + n).min(to));
        if lo < hi {
            f(i as i64, first + (lo - index), first + (hi - index) - 1);
        }
        index += n;
    }
    index >= to
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut body = Vec::new();
        push(&mut body, 1, 7, -5, 2, b"hello");
        push(&mut body, 300, u64::MAX, i64::MAX, 1, b"");
        let mut pos = 0;
        assert_eq!(
            next(&body, &mut pos),
            Some(Rec { instrument: 1, msg_id: 7, timestamp_ms: -5, kind: 2, payload: b"hello" })
        );
        assert_eq!(
            next(&body, &mut pos),
            Some(Rec { instrument: 300, msg_id: u64::MAX, timestamp_ms: i64::MAX, kind: 1, payload: b"" })
        );
        assert_eq!(pos, body.len());
        assert_eq!(next(&body, &mut pos), None);
    }

    #[test]
    fn damaged_bodies_are_refused_not_overread() {
        let mut body = Vec::new();
        push(&mut body, 1, 7, 0, 2, b"hello");
        for cut in 0..body.len() {
            let mut pos = 0;
            assert_eq!(next(&body[..cut], &mut pos), None, "cut at {cut}");
        }
        let mut pos = 0;
        assert_eq!(next(&[0xff; 12], &mut pos), None);
    }

    #[test]
    fn keys_are_runs_and_can_be_sliced() {
        let mut k = Keys::default();
        for (i, id) in [(1, 10), (1, 11), (1, 12), (2, 5), (1, 13), (1, 20)] {
            k.push(i, id);
        }
        let keys = k.finish();
        let mut all = Vec::new();
        assert!(for_each_key(&keys, 0, 6, |i, a, b| all.push((i, a, b))));
        assert_eq!(all, vec![(1, 10, 12), (2, 5, 5), (1, 13, 13), (1, 20, 20)]);
        let mut part = Vec::new();
        assert!(for_each_key(&keys, 1, 4, |i, a, b| part.push((i, a, b))));
        assert_eq!(part, vec![(1, 11, 12), (2, 5, 5)]);
        // Asking for more records than the keys hold means damage.
        assert!(!for_each_key(&keys, 0, 7, |_, _, _| {}));
        assert!(!for_each_key(&keys[..keys.len() - 1], 0, 6, |_, _, _| {}));
    }
}
