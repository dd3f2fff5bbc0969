//! LEB128 unsigned varints and zigzag signed deltas, bounds-checked.

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a signed value in zigzag form.
pub(crate) fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.remaining() < n {
            return None;
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Some(s)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn be_u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.bytes(2)?.try_into().ok()?))
    }

    pub(crate) fn be_u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn be_u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes(8)?.try_into().ok()?))
    }

    pub(crate) fn be_i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.bytes(8)?.try_into().ok()?))
    }

    pub(crate) fn var_u64(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                if shift == 63 && b > 1 {
                    return None;
                }
                return Some(v);
            }
        }
        None
    }

    pub(crate) fn var_i64(&mut self) -> Option<i64> {
        let z = self.var_u64()?;
        Some(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    pub(crate) fn var_len(&mut self, max: usize) -> Option<usize> {
        let v = self.var_u64()?;
        let v = usize::try_from(v).ok()?;
        (v <= max).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_extremes() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_u64(&mut b, v);
            assert_eq!(Reader::new(&b).var_u64(), Some(v));
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            let mut b = Vec::new();
            put_i64(&mut b, v);
            assert_eq!(Reader::new(&b).var_i64(), Some(v));
        }
    }

    #[test]
    fn overlong_and_truncated_are_refused() {
        assert_eq!(Reader::new(&[0x80; 11]).var_u64(), None);
        assert_eq!(Reader::new(&[0xff, 0xff]).var_u64(), None);
        let mut ten = vec![0xff; 9];
        ten.push(0x02);
        assert_eq!(Reader::new(&ten).var_u64(), None);
    }
}
