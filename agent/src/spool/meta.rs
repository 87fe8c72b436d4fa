//! The two small pieces of spool state besides batches and definitions: the
//! incarnation, and the floor (every seq below it is acknowledged, dropped or applied).

use super::SpoolError;
use super::record::{self, AppendLog, Next, RecordReader};
use std::path::{Path, PathBuf};

const KIND_INCARNATION: u8 = 1;
const KIND_FLOOR: u8 = 1;
const KIND_NEXT_SEQ: u8 = 2;

/// Past this size the floor log is rewritten as one record. Floors are ~20 bytes, so
/// this is a few thousand acknowledgements between rewrites.
const FLOOR_LOG_REWRITE_BYTES: u64 = 64 << 10;

/// Reads the incarnation file, `None` if there is none yet.
///
/// The file is only ever replaced atomically, so anything but exactly one good record
/// is damage, not a crash: it is an error rather than a silent new incarnation, which
/// would resend every kept batch under a new identity.
pub(crate) fn read_incarnation(path: &Path) -> Result<Option<u64>, SpoolError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(record::io_err(path, "reading")(e)),
    };
    parse_incarnation(&bytes)
        .map(Some)
        .map_err(|(offset, reason)| SpoolError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason,
        })
}

fn parse_incarnation(bytes: &[u8]) -> Result<u64, (u64, String)> {
    let mut r = RecordReader::new(bytes, 0);
    let value = match r.next().map_err(|e| (0, e.to_string()))? {
        Next::Record {
            kind: KIND_INCARNATION,
            ..
        } => postcard::from_bytes::<u64>(r.payload()).map_err(|e| (0, e.to_string()))?,
        other => {
            return Err((
                0,
                format!("expected an incarnation record, found {other:?}"),
            ));
        }
    };
    match r.next().map_err(|e| (0, e.to_string()))? {
        Next::End => Ok(value),
        other => Err((
            0,
            format!("unexpected data after the incarnation: {other:?}"),
        )),
    }
}

pub(crate) fn write_incarnation(path: &Path, incarnation: u64) -> Result<(), SpoolError> {
    let bytes = encode_or_err(path, KIND_INCARNATION, &incarnation)?;
    record::write_atomic(path, &bytes)
}

fn encode_or_err(path: &Path, kind: u8, value: &u64) -> Result<Vec<u8>, SpoolError> {
    record::encode(kind, value).map_err(|e| e.into_spool_error(path))
}

/// The persisted floor: the lowest seq that may still be in the spool, and a seq
/// high-water mark for when the segment holding the newest batch is gone.
///
/// Written without fsync on every change: losing the newest floors in a power loss only
/// means some acknowledged batches are sent again, which delivery allows. The floor
/// also keeps `next_seq` when the spool is empty and every segment file is gone; the
/// mark keeps it when only the newest segment is gone (acknowledged out of order).
pub(crate) struct FloorLog {
    log: AppendLog,
    floor: u64,
    next_seq: u64,
}

#[derive(Default)]
struct Marks {
    floor: u64,
    next_seq: u64,
}

impl Marks {
    fn apply(&mut self, kind: u8, payload: &[u8]) -> Result<(), String> {
        let value = postcard::from_bytes::<u64>(payload).map_err(|e| e.to_string())?;
        match kind {
            KIND_FLOOR => self.floor = self.floor.max(value),
            KIND_NEXT_SEQ => self.next_seq = self.next_seq.max(value),
            other => return Err(format!("unknown record kind {other}")),
        }
        Ok(())
    }
}

impl FloorLog {
    /// Opens the log, recovering the highest floor written; returns it and whether a torn
    /// tail was dropped.
    pub(crate) fn open(path: &Path) -> Result<(FloorLog, bool), SpoolError> {
        let mut marks = Marks::default();
        let scanned = if path.exists() {
            record::scan_log(path, |_, kind, payload| marks.apply(kind, payload))?
        } else {
            record::Scanned {
                len: 0,
                torn: false,
            }
        };
        let log = AppendLog::open(path, scanned.len)?;
        let floor_log = FloorLog {
            log,
            floor: marks.floor,
            next_seq: marks.next_seq,
        };
        Ok((floor_log, scanned.torn))
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// No seq below this was handed out (0 if never recorded).
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.log.is_dirty()
    }

    /// Records a new floor if it is higher than the last one.
    pub(crate) fn raise(&mut self, floor: u64) -> Result<(), SpoolError> {
        if floor <= self.floor {
            return Ok(());
        }
        self.floor = floor;
        self.append(KIND_FLOOR, floor)
    }

    /// Records that no seq below `next_seq` may be handed out again.
    pub(crate) fn raise_next_seq(&mut self, next_seq: u64) -> Result<(), SpoolError> {
        if next_seq <= self.next_seq {
            return Ok(());
        }
        self.next_seq = next_seq;
        self.append(KIND_NEXT_SEQ, next_seq)
    }

    fn append(&mut self, kind: u8, value: u64) -> Result<(), SpoolError> {
        if self.log.len() >= FLOOR_LOG_REWRITE_BYTES {
            return self.rewrite();
        }
        let bytes = encode_or_err(self.log.path(), kind, &value)?;
        self.log.append(&bytes).map(|_| ())
    }

    fn rewrite(&mut self) -> Result<(), SpoolError> {
        let path: PathBuf = self.log.path().to_path_buf();
        let mut bytes = encode_or_err(&path, KIND_FLOOR, &self.floor)?;
        bytes.extend(encode_or_err(&path, KIND_NEXT_SEQ, &self.next_seq)?);
        record::write_atomic(&path, &bytes)?;
        self.log = AppendLog::open(&path, bytes.len() as u64)?;
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> Result<(), SpoolError> {
        self.log.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnation_round_trips_and_damage_is_an_error() {
        let bytes = record::encode(KIND_INCARNATION, &0xdead_beef_u64).unwrap();
        assert_eq!(parse_incarnation(&bytes), Ok(0xdead_beef));
        assert!(parse_incarnation(&bytes[..bytes.len() - 1]).is_err());
        assert!(parse_incarnation(&[]).is_err());
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes);
        assert!(parse_incarnation(&twice).is_err());
    }

    #[test]
    fn floor_keeps_the_highest_value_across_rewrites_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor");
        let (mut log, torn) = FloorLog::open(&path).unwrap();
        assert!(!torn);
        assert_eq!(log.floor(), 0);
        // Enough raises to force several rewrites.
        log.raise_next_seq(20_000).unwrap();
        for f in 1..10_000u64 {
            log.raise(f).unwrap();
        }
        log.raise(5).unwrap();
        log.raise_next_seq(7).unwrap();
        assert_eq!(log.floor(), 9_999);
        assert!(std::fs::metadata(&path).unwrap().len() <= FLOOR_LOG_REWRITE_BYTES + 32);
        drop(log);
        let (log, _) = FloorLog::open(&path).unwrap();
        assert_eq!(log.floor(), 9_999);
        assert_eq!(log.next_seq(), 20_000, "the mark survives rewrites");
    }
}
