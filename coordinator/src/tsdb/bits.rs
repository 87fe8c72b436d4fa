//! Bit-level writer and reader for the chunk codec, plus the small integer codes it
//! shares (zigzag, length-prefixed integers, Elias gamma, byte varints).
//!
//! Bits are written most significant first, so a chunk reads in the order it was
//! written. The reader never panics: every read is checked against the input length
//! and reports `None` when the input runs out, which the codec maps to a clear error.

/// Appends bits, most significant first, into a byte vector.
#[derive(Debug, Default)]
pub(crate) struct BitWriter {
    buf: Vec<u8>,
    /// Pending bits, right-aligned; always fewer than 64 between calls.
    acc: u64,
    nacc: u32,
}

fn low_mask(nbits: u32) -> u64 {
    if nbits >= 64 {
        u64::MAX
    } else {
        (1u64 << nbits) - 1
    }
}

impl BitWriter {
    /// Starts after `prefix`, the byte-aligned header already written.
    pub(crate) fn with_prefix(prefix: Vec<u8>) -> Self {
        BitWriter {
            buf: prefix,
            acc: 0,
            nacc: 0,
        }
    }

    /// Writes the low `nbits` of `value` (`nbits` ≤ 64; higher bits are ignored).
    pub(crate) fn write(&mut self, value: u64, nbits: u32) {
        let nbits = nbits.min(64);
        let value = value & low_mask(nbits);
        let mut remaining = nbits;
        while remaining > 0 {
            let free = 64 - self.nacc;
            let take = remaining.min(free);
            let chunk = (value >> (remaining - take)) & low_mask(take);
            self.acc = if take == 64 {
                chunk
            } else {
                (self.acc << take) | chunk
            };
            self.nacc += take;
            remaining -= take;
            if self.nacc == 64 {
                self.buf.extend_from_slice(&self.acc.to_be_bytes());
                self.acc = 0;
                self.nacc = 0;
            }
        }
    }

    pub(crate) fn write_bit(&mut self, bit: bool) {
        self.write(u64::from(bit), 1);
    }

    /// Writes `value` as a 7-bit bit length followed by that many bits: 7 bits for
    /// zero, at most 71 for anything. Used for the few per-chunk integers (first
    /// timestamp, grid interval, first value) whose size varies widely.
    pub(crate) fn write_long(&mut self, value: u64) {
        let len = bit_len(value);
        self.write(u64::from(len), 7);
        self.write(value, len);
    }

    /// Elias gamma code of `n` ≥ 1: 2·⌊log2 n⌋ + 1 bits, so a run of 119 repeats costs 13 bits.
    pub(crate) fn write_gamma(&mut self, n: u64) {
        debug_assert!(n >= 1);
        let n = n.max(1);
        let len = bit_len(n);
        self.write(0, len - 1);
        self.write(n, len);
    }

    /// Bits written so far, including the prefix.
    pub(crate) fn bit_len(&self) -> usize {
        self.buf.len() * 8 + self.nacc as usize
    }

    /// Pads the last byte with zero bits and returns the bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if self.nacc > 0 {
            let padded = self.acc << (64 - self.nacc);
            let nbytes = self.nacc.div_ceil(8) as usize;
            self.buf.extend_from_slice(&padded.to_be_bytes()[..nbytes]);
        }
        self.buf
    }
}

/// Reads bits written by [`BitWriter`]; every read is bounds-checked.
#[derive(Debug)]
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    /// Reads `nbits` (≤ 64) bits, or `None` if the input is shorter.
    pub(crate) fn read(&mut self, nbits: u32) -> Option<u64> {
        if nbits > 64 || nbits as usize > self.remaining() {
            return None;
        }
        let mut out = 0u64;
        let mut remaining = nbits;
        while remaining > 0 {
            let byte = *self.data.get(self.pos / 8)?;
            let offset = (self.pos % 8) as u32;
            let avail = 8 - offset;
            let take = avail.min(remaining);
            let bits = (u64::from(byte) >> (avail - take)) & low_mask(take);
            out = (out << take) | bits;
            self.pos += take as usize;
            remaining -= take;
        }
        Some(out)
    }

    pub(crate) fn read_bit(&mut self) -> Option<bool> {
        self.read(1).map(|b| b == 1)
    }

    pub(crate) fn read_long(&mut self) -> Option<u64> {
        let len = self.read(7)? as u32;
        if len > 64 {
            return None;
        }
        self.read(len)
    }

    /// Reads an Elias gamma code; `None` on truncation or a length over 64 bits.
    pub(crate) fn read_gamma(&mut self) -> Option<u64> {
        let mut zeros = 0u32;
        while !self.read_bit()? {
            zeros += 1;
            if zeros >= 64 {
                return None;
            }
        }
        let rest = self.read(zeros)?;
        Some((1u64 << zeros) | rest)
    }
}

/// Number of significant bits (0 for 0).
pub(crate) fn bit_len(v: u64) -> u32 {
    64 - v.leading_zeros()
}

/// Bits that [`BitWriter::write_gamma`] spends on `n`.
pub(crate) fn gamma_len(n: u64) -> u64 {
    u64::from(2 * bit_len(n.max(1)) - 1)
}

/// Bits that [`BitWriter::write_long`] spends on `v`.
pub(crate) fn long_len(v: u64) -> u64 {
    7 + u64::from(bit_len(v))
}

/// Maps signed to unsigned so that small magnitudes of either sign stay small.
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// LEB128 varint for byte-aligned header fields.
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads a varint at `*pos`, advancing it; `None` on truncation or overflow.
pub(crate) fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        let part = u64::from(byte & 0x7f);
        if shift == 63 && part > 1 {
            return None;
        }
        out |= part << shift;
        if byte & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn fields_round_trip(fields in proptest::collection::vec((any::<u64>(), 0u32..=64, 0u8..4), 0..64)) {
            let mut w = BitWriter::default();
            for &(v, n, kind) in &fields {
                match kind {
                    0 => w.write(v, n),
                    1 => w.write_long(v),
                    2 => w.write_gamma(v.max(1)),
                    _ => w.write_bit(v & 1 == 1),
                }
            }
            let bits = w.bit_len();
            let bytes = w.finish();
            prop_assert_eq!(bytes.len(), bits.div_ceil(8));
            let mut r = BitReader::new(&bytes);
            for &(v, n, kind) in &fields {
                match kind {
                    0 => prop_assert_eq!(r.read(n), Some(v & low_mask(n))),
                    1 => prop_assert_eq!(r.read_long(), Some(v)),
                    2 => prop_assert_eq!(r.read_gamma(), Some(v.max(1))),
                    _ => prop_assert_eq!(r.read_bit(), Some(v & 1 == 1)),
                }
            }
            prop_assert!(r.remaining() < 8);
        }

        #[test]
        fn zigzag_and_varint_round_trip(v in any::<i64>()) {
            prop_assert_eq!(unzigzag(zigzag(v)), v);
            let mut buf = Vec::new();
            put_varint(&mut buf, zigzag(v));
            let mut pos = 0;
            prop_assert_eq!(get_varint(&buf, &mut pos), Some(zigzag(v)));
            prop_assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn reads_past_the_end_are_refused() {
        let mut r = BitReader::new(&[0xff]);
        assert_eq!(r.read(9), None);
        assert_eq!(r.read(8), Some(0xff));
        assert_eq!(r.read_bit(), None);
        // 64 zero bits: a gamma code longer than any u64.
        assert_eq!(BitReader::new(&[0; 9]).read_gamma(), None);
        assert_eq!(get_varint(&[0x80; 11], &mut 0), None);
        assert_eq!(get_varint(&[0x80], &mut 0), None);
    }

    #[test]
    fn small_values_are_cheap() {
        assert_eq!(gamma_len(1), 1);
        assert_eq!(gamma_len(119), 13);
        assert_eq!(long_len(0), 7);
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }
}
