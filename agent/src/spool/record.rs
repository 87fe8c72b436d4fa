//! The record framing every spool file shares, and the few file operations built on it.
//!
//! A record is `[len u32 LE][crc32 u32 LE][version u8][kind u8][postcard payload]`,
//! where `len` counts the bytes after the checksum (version, kind, payload) and the
//! checksum covers exactly those bytes. A kill -9 or a power loss can only leave a
//! partial record at the end of a file, and a partial record always fails one of
//! the checks below, so recovery is "keep every record before the first bad one".

use super::SpoolError;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tracing::warn;

/// The version written into every record. Bumped when a payload's encoding changes,
/// so an older agent refuses a newer spool instead of misreading it.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// Bytes before the checksummed part: length and checksum.
pub(crate) const HEADER_BYTES: usize = 8;

/// The largest checksummed part (version, kind, payload) a record may have.
///
/// Every length read from disk is checked against this before anything is allocated,
/// so a corrupt length costs at most this much memory, never gigabytes.
pub(crate) const MAX_BODY_BYTES: u32 = 16 << 20;

/// Why a record could not be encoded.
#[derive(Debug)]
pub(crate) enum EncodeError {
    TooLarge(usize),
    Serialize(String),
}

impl EncodeError {
    pub(crate) fn into_spool_error(self, path: &Path) -> SpoolError {
        match self {
            EncodeError::TooLarge(bytes) => SpoolError::TooLarge {
                path: path.to_path_buf(),
                bytes: bytes as u64,
                max: u64::from(MAX_BODY_BYTES),
            },
            EncodeError::Serialize(reason) => SpoolError::Encode {
                path: path.to_path_buf(),
                reason,
            },
        }
    }
}

/// Encodes one record. The payload is serialized straight after the header space,
/// so a batch is copied once.
pub(crate) fn encode<T: Serialize + ?Sized>(kind: u8, value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&[0u8; HEADER_BYTES]);
    buf.push(FORMAT_VERSION);
    buf.push(kind);
    let mut buf =
        postcard::to_extend(value, buf).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let body_len = buf.len() - HEADER_BYTES;
    let len = u32::try_from(body_len)
        .ok()
        .filter(|l| *l <= MAX_BODY_BYTES)
        .ok_or(EncodeError::TooLarge(buf.len()))?;
    let crc = crc32fast::hash(&buf[HEADER_BYTES..]);
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// What the reader found at its current position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// A whole, checksummed record; its payload is in [`RecordReader::payload`].
    Record {
        offset: u64,
        total_len: u64,
        kind: u8,
    },
    /// Clean end of input at a record boundary.
    End,
    /// A record that is cut short or damaged: it and everything after it is dropped.
    Torn { offset: u64, reason: &'static str },
    /// A record that passed its checksum but carries a version this agent does not know.
    Unsupported { offset: u64, version: u8 },
}

/// Reads records one at a time, holding one record's body in memory at most.
pub(crate) struct RecordReader<R> {
    inner: R,
    offset: u64,
    /// Where the input ends, when known: a length reaching past it is torn without
    /// allocating for it.
    end: Option<u64>,
    body: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    /// `offset` is where `inner` starts within its file, so reported offsets are absolute.
    pub(crate) fn new(inner: R, offset: u64) -> Self {
        RecordReader {
            inner,
            offset,
            end: None,
            body: Vec::new(),
        }
    }

    /// Like [`new`](Self::new) for an input known to end at offset `end`.
    pub(crate) fn with_end(inner: R, offset: u64, end: u64) -> Self {
        RecordReader {
            end: Some(end),
            ..RecordReader::new(inner, offset)
        }
    }

    /// The payload of the record [`next`](Self::next) last returned.
    pub(crate) fn payload(&self) -> &[u8] {
        self.body.get(2..).unwrap_or(&[])
    }

    pub(crate) fn next(&mut self) -> io::Result<Next> {
        let offset = self.offset;
        let mut header = [0u8; HEADER_BYTES];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Ok(Next::End);
        }
        if got < HEADER_BYTES {
            return Ok(Next::Torn {
                offset,
                reason: "header cut short",
            });
        }
        let (len, crc) = parse_header(&header);
        if len < 2 {
            return Ok(Next::Torn {
                offset,
                reason: "length too small",
            });
        }
        if len > MAX_BODY_BYTES {
            return Ok(Next::Torn {
                offset,
                reason: "length exceeds the largest record",
            });
        }
        let body_end = offset + (HEADER_BYTES as u64) + u64::from(len);
        if self.end.is_some_and(|end| body_end > end) {
            return Ok(Next::Torn {
                offset,
                reason: "body cut short",
            });
        }
        // Checked above: at most MAX_BODY_BYTES.
        let len = len as usize;
        self.body.clear();
        self.body.resize(len, 0);
        if read_full(&mut self.inner, &mut self.body)? < len {
            return Ok(Next::Torn {
                offset,
                reason: "body cut short",
            });
        }
        if crc32fast::hash(&self.body) != crc {
            return Ok(Next::Torn {
                offset,
                reason: "checksum mismatch",
            });
        }
        let total_len = (HEADER_BYTES + len) as u64;
        self.offset += total_len;
        if self.body[0] != FORMAT_VERSION {
            return Ok(Next::Unsupported {
                offset,
                version: self.body[0],
            });
        }
        Ok(Next::Record {
            offset,
            total_len,
            kind: self.body[1],
        })
    }
}

fn parse_header(header: &[u8; HEADER_BYTES]) -> (u32, u32) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len, crc)
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

pub(crate) fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io { path, op, source }
}

/// What [`scan_log`] kept of a file.
#[derive(Debug)]
pub(crate) struct Scanned {
    /// Bytes of whole, accepted records: the file's length after recovery.
    pub(crate) len: u64,
    /// Whether a torn or rejected tail was cut off.
    pub(crate) torn: bool,
}

/// Reads every record of a file in order, handing each to `visit`, and cuts the file
/// at the first record that is torn or that `visit` rejects (returns `Err(reason)`).
///
/// Cutting, rather than skipping, keeps the framing trustworthy: after a bad length
/// nothing that follows can be located reliably. The cut is synced before anything
/// is appended after it.
pub(crate) fn scan_log(
    path: &Path,
    mut visit: impl FnMut(u64, u8, &[u8]) -> Result<(), String>,
) -> Result<Scanned, SpoolError> {
    let file = File::open(path).map_err(io_err(path, "opening"))?;
    let file_len = file
        .metadata()
        .map_err(io_err(path, "reading metadata"))?
        .len();
    let mut reader = RecordReader::with_end(io::BufReader::new(file), 0, file_len);
    let (cut, reason) = loop {
        let next = reader.next().map_err(io_err(path, "reading"))?;
        match next {
            Next::End => {
                return Ok(Scanned {
                    len: reader.offset,
                    torn: false,
                });
            }
            Next::Torn { offset, reason } => break (offset, reason.to_string()),
            Next::Unsupported { offset, version } => {
                return Err(SpoolError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    offset,
                    version,
                });
            }
            Next::Record { offset, kind, .. } => {
                if let Err(reason) = visit(offset, kind, reader.payload()) {
                    break (offset, reason);
                }
            }
        }
    };
    warn!(path = %path.display(), offset = cut, %reason, "spool: dropping a torn or damaged tail");
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path, "opening to truncate"))?;
    file.set_len(cut).map_err(io_err(path, "truncating"))?;
    file.sync_all()
        .map_err(io_err(path, "syncing after truncate"))?;
    Ok(Scanned {
        len: cut,
        torn: true,
    })
}

/// Reads the one record that an index says sits at `offset` with `total_len` bytes.
pub(crate) fn read_one(
    file: &mut File,
    path: &Path,
    offset: u64,
    total_len: u64,
) -> Result<(u8, Vec<u8>), SpoolError> {
    let corrupt = |reason: &str| SpoolError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.to_string(),
    };
    file.seek(SeekFrom::Start(offset))
        .map_err(io_err(path, "seeking"))?;
    let mut reader = RecordReader::with_end(
        Read::by_ref(file).take(total_len),
        offset,
        offset + total_len,
    );
    match reader.next().map_err(io_err(path, "reading"))? {
        Next::Record {
            total_len: got,
            kind,
            ..
        } if got == total_len => Ok((kind, reader.payload().to_vec())),
        Next::Record { .. } => Err(corrupt("record length differs from the index")),
        Next::End => Err(corrupt("record missing")),
        Next::Torn { reason, .. } => Err(corrupt(reason)),
        Next::Unsupported { version, .. } => Err(SpoolError::UnsupportedVersion {
            path: path.to_path_buf(),
            offset,
            version,
        }),
    }
}

/// A file only ever appended to, that never keeps a partial record in the middle.
pub(crate) struct AppendLog {
    file: File,
    path: PathBuf,
    len: u64,
    /// Written since the last sync.
    dirty: bool,
    /// A failed write could not be undone: appending more would bury good records
    /// behind a torn one, which recovery would then drop.
    poisoned: bool,
}

impl AppendLog {
    /// Opens (creating if needed) for appending after `len` valid bytes.
    pub(crate) fn open(path: &Path, len: u64) -> Result<Self, SpoolError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path, "opening for append"))?;
        Ok(AppendLog {
            file,
            path: path.to_path_buf(),
            len,
            dirty: false,
            poisoned: false,
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Appends whole records; returns the offset they start at. On failure the file is
    /// cut back to where it was, so a short write never leaves garbage mid-file.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<u64, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned {
                path: self.path.clone(),
            });
        }
        let offset = self.len;
        if let Err(e) = self.file.write_all(bytes) {
            if self.file.set_len(offset).is_err() {
                self.poisoned = true;
            }
            return Err(SpoolError::Io {
                path: self.path.clone(),
                op: "appending",
                source: e,
            });
        }
        self.len += bytes.len() as u64;
        self.dirty = true;
        Ok(offset)
    }

    pub(crate) fn sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty {
            self.file
                .sync_data()
                .map_err(io_err(&self.path, "syncing"))?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// Makes a file's directory entry (creation, rename, removal) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "syncing directory"))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    write_atomic_with(path, |w| {
        w.write_all(bytes).map_err(io_err(path, "writing"))
    })
}

/// Replaces `path` with what `fill` writes, streamed so a large file never sits whole in
/// memory: write a temporary, sync it, rename it over, sync the directory.
pub(crate) fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut io::BufWriter<File>) -> Result<(), SpoolError>,
) -> Result<(), SpoolError> {
    let tmp = tmp_path(path);
    let file = File::create(&tmp).map_err(io_err(&tmp, "creating"))?;
    let mut w = io::BufWriter::new(file);
    fill(&mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| io_err(&tmp, "writing")(e.into_error()))?;
    file.sync_all().map_err(io_err(&tmp, "syncing"))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path, "renaming into place"))?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".tmp");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<Next> {
        let mut r = RecordReader::new(bytes, 0);
        let mut out = Vec::new();
        loop {
            let n = r.next().unwrap();
            let stop = !matches!(n, Next::Record { .. });
            out.push(n);
            if stop {
                return out;
            }
        }
    }

    #[test]
    fn record_layout_is_length_checksum_version_kind_payload() {
        let rec = encode(7, &300u64).unwrap();
        // postcard varint of 300 is [0xac, 0x02].
        assert_eq!(&rec[8..], &[FORMAT_VERSION, 7, 0xac, 0x02]);
        assert_eq!(&rec[0..4], &4u32.to_le_bytes());
        assert_eq!(&rec[4..8], &crc32fast::hash(&rec[8..]).to_le_bytes());
    }

    #[test]
    fn records_read_back_in_order_with_offsets() {
        let mut bytes = encode(1, &5u64).unwrap();
        let second_at = bytes.len() as u64;
        bytes.extend(encode(2, "hello").unwrap());
        let mut r = RecordReader::new(&bytes[..], 0);
        assert_eq!(
            r.next().unwrap(),
            Next::Record {
                offset: 0,
                total_len: second_at,
                kind: 1
            }
        );
        assert_eq!(postcard::from_bytes::<u64>(r.payload()).unwrap(), 5);
        assert!(
            matches!(r.next().unwrap(), Next::Record { offset, kind: 2, .. } if offset == second_at)
        );
        assert_eq!(postcard::from_bytes::<&str>(r.payload()).unwrap(), "hello");
        assert_eq!(r.next().unwrap(), Next::End);
    }

    #[test]
    fn every_cut_of_the_last_record_is_torn_and_earlier_records_survive() {
        let first = encode(1, &1u64).unwrap();
        let second = encode(1, "a longer second record").unwrap();
        for cut in 1..second.len() {
            let mut bytes = first.clone();
            bytes.extend_from_slice(&second[..cut]);
            let got = read_all(&bytes);
            assert!(matches!(got[0], Next::Record { .. }), "cut {cut}");
            assert!(
                matches!(got[1], Next::Torn { offset, .. } if offset == first.len() as u64),
                "cut {cut}: {:?}",
                got[1]
            );
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut bytes = encode(1, "payload").unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert_eq!(
            read_all(&bytes),
            vec![Next::Torn {
                offset: 0,
                reason: "checksum mismatch"
            }]
        );
    }

    #[test]
    fn a_huge_length_is_refused_before_allocating() {
        let mut bytes = encode(1, "payload").unwrap();
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = RecordReader::new(&bytes[..], 0);
        assert_eq!(
            r.next().unwrap(),
            Next::Torn {
                offset: 0,
                reason: "length exceeds the largest record"
            }
        );
        assert!(r.body.capacity() < 1024);
    }

    #[test]
    fn a_length_past_the_known_end_is_refused_before_allocating() {
        let mut bytes = encode(1, "payload").unwrap();
        bytes[0..4].copy_from_slice(&(MAX_BODY_BYTES - 1).to_le_bytes());
        let end = bytes.len() as u64;
        let mut r = RecordReader::with_end(&bytes[..], 0, end);
        assert_eq!(
            r.next().unwrap(),
            Next::Torn {
                offset: 0,
                reason: "body cut short"
            }
        );
        assert!(r.body.capacity() < 1024);
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        // What a filesystem can leave after a power loss: the size grew, the data did not.
        let mut bytes = encode(1, &1u64).unwrap();
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 64]);
        let got = read_all(&bytes);
        assert!(matches!(got[1], Next::Torn { offset, .. } if offset == good));
    }

    #[test]
    fn a_newer_version_is_reported_not_torn() {
        let mut bytes = encode(1, &1u64).unwrap();
        bytes[HEADER_BYTES] = FORMAT_VERSION + 1;
        let crc = crc32fast::hash(&bytes[HEADER_BYTES..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            read_all(&bytes),
            vec![Next::Unsupported {
                offset: 0,
                version: FORMAT_VERSION + 1
            }]
        );
    }
}
