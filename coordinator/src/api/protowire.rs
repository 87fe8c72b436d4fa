//! A small, strict protobuf wire-format reader and writer.
//!
//! Remote write is the only protobuf Argus speaks besides raft-rs's own, and its
//! messages are tiny, so a hand-written reader beats generated code: no `protoc` on
//! CI, and every rule that matters for untrusted input is visible here. Reading never
//! panics, never allocates (fields borrow from the input), and every error names the
//! byte offset where the input went wrong.

use std::fmt;

/// The largest field number protobuf allows (2^29 - 1).
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

/// Wire types as the encoding defines them. Groups (3 and 4) are deprecated and never
/// appear in the messages we read, so they are refused rather than skipped.
pub const WIRE_VARINT: u8 = 0;
pub const WIRE_I64: u8 = 1;
pub const WIRE_LEN: u8 = 2;
pub const WIRE_I32: u8 = 5;

/// What went wrong, and at which byte of the outermost message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub offset: usize,
    pub kind: WireErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireErrorKind {
    TruncatedVarint,
    VarintTooLong,
    TruncatedFixed { width: usize },
    TruncatedLength { declared: u64, available: usize },
    InvalidFieldNumber(u64),
    UnsupportedWireType(u8),
    WrongWireType { field: u32, got: u8, expected: u8 },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
        match &self.kind {
            WireErrorKind::TruncatedVarint => write!(f, "truncated varint at byte {at}"),
            WireErrorKind::VarintTooLong => write!(f, "varint longer than 10 bytes at byte {at}"),
            WireErrorKind::TruncatedFixed { width } => {
                write!(f, "truncated {width}-byte fixed field at byte {at}")
            }
            WireErrorKind::TruncatedLength {
                declared,
                available,
            } => write!(
                f,
                "length-delimited field at byte {at} declares {declared} bytes but only {available} remain"
            ),
            WireErrorKind::InvalidFieldNumber(n) => {
                write!(f, "invalid field number {n} at byte {at}")
            }
            WireErrorKind::UnsupportedWireType(t) => {
                write!(f, "unsupported wire type {t} at byte {at}")
            }
            WireErrorKind::WrongWireType {
                field,
                got,
                expected,
            } => write!(
                f,
                "field {field} at byte {at} has wire type {got}, expected {expected}"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// One field's payload, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Varint(u64),
    I64(u64),
    Len(&'a [u8]),
    I32(u32),
}

impl Value<'_> {
    pub fn wire_type(&self) -> u8 {
        match self {
            Value::Varint(_) => WIRE_VARINT,
            Value::I64(_) => WIRE_I64,
            Value::Len(_) => WIRE_LEN,
            Value::I32(_) => WIRE_I32,
        }
    }
}

/// A decoded field: its number, its payload, and where its tag started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
    /// Absolute offset of the tag.
    pub offset: usize,
    /// Absolute offset of the payload (after the tag, and the length if any).
    pub payload_offset: usize,
}

impl<'a> Field<'a> {
    fn wrong(&self, expected: u8) -> WireError {
        WireError {
            offset: self.offset,
            kind: WireErrorKind::WrongWireType {
                field: self.number,
                got: self.value.wire_type(),
                expected,
            },
        }
    }

    /// The payload of a varint field (int64, uint64, enum, bool).
    pub fn varint(&self) -> Result<u64, WireError> {
        match self.value {
            Value::Varint(v) => Ok(v),
            _ => Err(self.wrong(WIRE_VARINT)),
        }
    }

    /// The payload of a fixed64 field (double, fixed64).
    pub fn fixed64(&self) -> Result<u64, WireError> {
        match self.value {
            Value::I64(v) => Ok(v),
            _ => Err(self.wrong(WIRE_I64)),
        }
    }

    /// The payload of a length-delimited field (string, bytes, message), with the
    /// absolute offset of its first byte, for nested readers.
    pub fn bytes(&self) -> Result<(&'a [u8], usize), WireError> {
        match self.value {
            Value::Len(b) => Ok((b, self.payload_offset)),
            _ => Err(self.wrong(WIRE_LEN)),
        }
    }
}

/// Iterates over the fields of one message. `base` is the absolute offset of `buf[0]`
/// in the outermost message, so nested errors still point into the whole body.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn err(&self, at: usize, kind: WireErrorKind) -> WireError {
        WireError {
            offset: self.base + at,
            kind,
        }
    }

    fn read_varint(&mut self) -> Result<u64, WireError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err(start, WireErrorKind::TruncatedVarint));
            };
            self.pos += 1;
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                return Err(self.err(start, WireErrorKind::VarintTooLong));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.err(start, WireErrorKind::VarintTooLong))
    }

    fn read_fixed<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let start = self.pos;
        let bytes = self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.get(..N))
            .ok_or_else(|| self.err(start, WireErrorKind::TruncatedFixed { width: N }))?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        self.pos += N;
        Ok(out)
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<Field<'a>>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let start = self.pos;
        let tag = self.read_varint()?;
        let number = tag >> 3;
        let wire = (tag & 7) as u8;
        if number == 0 || number > MAX_FIELD_NUMBER {
            return Err(self.err(start, WireErrorKind::InvalidFieldNumber(number)));
        }
        let mut payload_at = self.pos;
        let value = match wire {
            WIRE_VARINT => Value::Varint(self.read_varint()?),
            WIRE_I64 => Value::I64(u64::from_le_bytes(self.read_fixed::<8>()?)),
            WIRE_I32 => Value::I32(u32::from_le_bytes(self.read_fixed::<4>()?)),
            WIRE_LEN => {
                let len_at = self.pos;
                let declared = self.read_varint()?;
                let available = self.buf.len() - self.pos;
                let len = usize::try_from(declared)
                    .ok()
                    .filter(|&l| l <= available)
                    .ok_or_else(|| {
                        self.err(
                            len_at,
                            WireErrorKind::TruncatedLength {
                                declared,
                                available,
                            },
                        )
                    })?;
                payload_at = self.pos;
                let payload = &self.buf[self.pos..self.pos + len];
                self.pos += len;
                Value::Len(payload)
            }
            other => return Err(self.err(start, WireErrorKind::UnsupportedWireType(other))),
        };
        Ok(Some(Field {
            // number <= 2^29 - 1 was checked above.
            number: number as u32,
            value,
            offset: self.base + start,
            payload_offset: self.base + payload_at,
        }))
    }
}

/// How many bytes `v` takes as a varint.
pub fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 still takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `v` as a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a field tag.
pub fn put_tag(out: &mut Vec<u8>, number: u32, wire: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire));
}

/// The encoded size of a tag.
pub fn tag_len(number: u32) -> usize {
    varint_len(u64::from(number) << 3)
}

/// The encoded size of a length-delimited field whose payload is `len` bytes.
pub fn len_field_len(number: u32, len: usize) -> usize {
    tag_len(number) + varint_len(len as u64) + len
}

/// Appends a length-delimited field holding `bytes`.
pub fn put_bytes(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_tag(out, number, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a varint field.
pub fn put_varint_field(out: &mut Vec<u8>, number: u32, v: u64) {
    put_tag(out, number, WIRE_VARINT);
    put_varint(out, v);
}

/// Appends a fixed64 field.
pub fn put_fixed64_field(out: &mut Vec<u8>, number: u32, v: u64) {
    put_tag(out, number, WIRE_I64);
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, WireError> {
        let mut r = Reader::new(buf, 0);
        let mut out = Vec::new();
        while let Some(f) = r.next_field()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn reads_every_wire_type() {
        let mut buf = Vec::new();
        put_varint_field(&mut buf, 1, 300);
        put_fixed64_field(&mut buf, 2, 0x7ff0_0000_0000_0002);
        put_bytes(&mut buf, 3, b"abc");
        put_tag(&mut buf, 4, WIRE_I32);
        buf.extend_from_slice(&7u32.to_le_bytes());
        let f = fields(&buf).unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(f[0].varint().unwrap(), 300);
        assert_eq!(f[1].fixed64().unwrap(), 0x7ff0_0000_0000_0002);
        assert_eq!(f[2].bytes().unwrap(), (&b"abc"[..], f[2].offset + 2));
        assert_eq!(f[3].value, Value::I32(7));
        assert!(f[0].fixed64().is_err(), "wire type is checked");
    }

    #[test]
    fn truncations_name_the_offset() {
        // Tag for field 1 varint, then a varint that never ends.
        let e = fields(&[0x08, 0x80, 0x80]).unwrap_err();
        assert_eq!(e.kind, WireErrorKind::TruncatedVarint);
        assert_eq!(e.offset, 1);
        assert_eq!(e.to_string(), "truncated varint at byte 1");

        let e = fields(&[0x12, 0x05, b'a']).unwrap_err();
        assert_eq!(
            e.kind,
            WireErrorKind::TruncatedLength {
                declared: 5,
                available: 1
            }
        );

        let e = fields(&[0x09, 1, 2, 3]).unwrap_err();
        assert_eq!(e.kind, WireErrorKind::TruncatedFixed { width: 8 });

        // Field number 0 and groups are refused.
        assert!(matches!(
            fields(&[0x00, 0x00]).unwrap_err().kind,
            WireErrorKind::InvalidFieldNumber(0)
        ));
        assert!(matches!(
            fields(&[0x0b]).unwrap_err().kind,
            WireErrorKind::UnsupportedWireType(3)
        ));
    }

    #[test]
    fn overlong_varints_are_refused() {
        let mut buf = vec![0x08];
        buf.extend_from_slice(&[0xff; 10]);
        buf.push(0x01);
        assert_eq!(fields(&buf).unwrap_err().kind, WireErrorKind::VarintTooLong);
        // Ten bytes whose last carries more than the 64th bit.
        let mut buf = vec![0x08];
        buf.extend_from_slice(&[0xff; 9]);
        buf.push(0x02);
        assert_eq!(fields(&buf).unwrap_err().kind, WireErrorKind::VarintTooLong);
        // u64::MAX itself is fine.
        let mut buf = Vec::new();
        put_varint_field(&mut buf, 1, u64::MAX);
        assert_eq!(fields(&buf).unwrap()[0].varint().unwrap(), u64::MAX);
    }

    #[test]
    fn nested_offsets_are_absolute() {
        let mut inner = Vec::new();
        put_bytes(&mut inner, 1, b"x");
        inner.push(0x08); // a truncated varint field
        let mut outer = Vec::new();
        put_varint_field(&mut outer, 5, 1);
        put_bytes(&mut outer, 2, &inner);
        let f = fields(&outer).unwrap();
        let (payload, at) = f[1].bytes().unwrap();
        let e = fields_at(payload, at).unwrap_err();
        // outer: [0x28, 0x01, 0x12, len] then inner: [0x0a, 0x01, 'x', 0x08]
        assert_eq!(e.offset, 4 + 3 + 1);
    }

    fn fields_at(buf: &[u8], base: usize) -> Result<Vec<Field<'_>>, WireError> {
        let mut r = Reader::new(buf, base);
        let mut out = Vec::new();
        while let Some(f) = r.next_field()? {
            out.push(f);
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<u64>()) {
            let mut buf = Vec::new();
            put_varint_field(&mut buf, 7, v);
            prop_assert_eq!(buf.len(), tag_len(7) + varint_len(v));
            let f = fields(&buf).unwrap();
            prop_assert_eq!(f[0].varint().unwrap(), v);
        }

        #[test]
        fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = fields(&buf);
        }
    }
}
