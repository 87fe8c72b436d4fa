//! The batch queue on disk: segment files of batch records, and a small in-memory
//! index of where each kept batch sits.
//!
//! Payloads stay on disk and are read back only to be sent, so memory grows with the
//! number of batches (a few dozen bytes each), not with their size. Space is given
//! back a whole segment at a time: a segment file is deleted once none of its batches
//! is kept any more.

use super::record::{self, AppendLog};
use super::{PendingBatch, SpoolError};
use argus_common::model::PointGroup;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use tracing::{error, warn};

const KIND_BATCH: u8 = 1;
const PREFIX: &str = "segment-";
const SUFFIX: &str = ".log";

#[derive(Serialize)]
struct BatchOut<'a> {
    seq: u64,
    samples: u64,
    groups: &'a [PointGroup],
}

/// The leading fields of a batch record: enough to index it without decoding points.
#[derive(Deserialize)]
struct BatchHead {
    seq: u64,
    samples: u64,
}

#[derive(Deserialize)]
struct BatchIn {
    seq: u64,
    #[allow(dead_code)]
    samples: u64,
    groups: Vec<PointGroup>,
}

pub(crate) fn encode_batch(
    seq: u64,
    samples: u64,
    groups: &[PointGroup],
) -> Result<Vec<u8>, record::EncodeError> {
    record::encode(
        KIND_BATCH,
        &BatchOut {
            seq,
            samples,
            groups,
        },
    )
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    offset: u64,
    len: u32,
    samples: u32,
    /// Acknowledged, applied or lost: no longer sent, still occupying the file.
    gone: bool,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    len: u64,
    entries: Vec<Entry>,
    live: usize,
    /// Index of the first entry not gone, so finding the lowest kept seq stays cheap
    /// however acks arrive.
    first_live: usize,
}

impl Segment {
    fn advance_first_live(&mut self) {
        while self.entries.get(self.first_live).is_some_and(|e| e.gone) {
            self.first_live += 1;
        }
    }
}

/// Batches and samples that left the spool by one operation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removed {
    pub(crate) batches: u64,
    pub(crate) samples: u64,
}

/// What opening found on disk.
pub(crate) struct Opened {
    pub(crate) segments: Segments,
    /// Files whose tail was cut off.
    pub(crate) torn: u64,
    /// No seq below this was ever handed out (from records and file names).
    pub(crate) next_seq_hint: u64,
}

pub(crate) struct Segments {
    dir: PathBuf,
    segs: VecDeque<Segment>,
    /// Appends go to the last segment through this.
    writer: Option<AppendLog>,
    segment_bytes: u64,
    bytes: u64,
    live: u64,
    live_samples: u64,
    /// A segment file was created or removed since the directory was last synced.
    dir_dirty: bool,
}

pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{PREFIX}{first_seq:020}{SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// Indexes one record during recovery: seqs must rise within and across segments.
fn index_record(offset: u64, kind: u8, payload: &[u8], min_seq: u64) -> Result<(u64, u64), String> {
    if kind != KIND_BATCH {
        return Err(format!("unknown segment record kind {kind}"));
    }
    let (head, _) = postcard::take_from_bytes::<BatchHead>(payload).map_err(|e| e.to_string())?;
    if head.seq < min_seq {
        return Err(format!(
            "seq {} at offset {offset} is not above the previous one ({min_seq} expected at least)",
            head.seq
        ));
    }
    Ok((head.seq, head.samples))
}

impl Segments {
    /// Recovers every segment in `dir`, keeping batches from `floor` on.
    pub(crate) fn open(dir: &Path, floor: u64, segment_bytes: u64) -> Result<Opened, SpoolError> {
        let mut files: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(record::io_err(dir, "listing"))? {
            let entry = entry.map_err(record::io_err(dir, "listing"))?;
            let name = entry.file_name();
            if let Some(first) = name.to_str().and_then(parse_segment_name) {
                files.push((first, entry.path()));
            }
        }
        files.sort();

        let mut segments = Segments {
            dir: dir.to_path_buf(),
            segs: VecDeque::new(),
            writer: None,
            segment_bytes,
            bytes: 0,
            live: 0,
            live_samples: 0,
            dir_dirty: false,
        };
        let mut torn = 0u64;
        let mut next_seq_hint = 0u64;
        for (first_seq, path) in files {
            next_seq_hint = next_seq_hint.max(first_seq);
            let mut entries = Vec::new();
            // Seqs rise across files too: a record at or below an earlier one is damage.
            let mut min_seq = next_seq_hint;
            let scanned = record::scan_log(&path, |offset, kind, payload| {
                let (seq, samples) = index_record(offset, kind, payload, min_seq)?;
                min_seq = seq.saturating_add(1);
                let len = u32::try_from(payload.len() + record::HEADER_BYTES + 2)
                    .map_err(|_| "record too long".to_string())?;
                if seq >= floor {
                    entries.push(Entry {
                        seq,
                        offset,
                        len,
                        samples: u32::try_from(samples).unwrap_or(u32::MAX),
                        gone: false,
                    });
                }
                Ok(())
            })?;
            if scanned.torn {
                torn += 1;
            }
            next_seq_hint = next_seq_hint.max(min_seq);
            if entries.is_empty() {
                segments.remove_file(&path);
                continue;
            }
            segments.live += entries.len() as u64;
            segments.live_samples += entries.iter().map(|e| u64::from(e.samples)).sum::<u64>();
            segments.bytes += scanned.len;
            segments.segs.push_back(Segment {
                path,
                len: scanned.len,
                live: entries.len(),
                entries,
                first_live: 0,
            });
        }
        Ok(Opened {
            segments,
            torn,
            next_seq_hint,
        })
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn live(&self) -> u64 {
        self.live
    }

    pub(crate) fn live_samples(&self) -> u64 {
        self.live_samples
    }

    pub(crate) fn segment_count(&self) -> u64 {
        self.segs.len() as u64
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dir_dirty || self.writer.as_ref().is_some_and(AppendLog::is_dirty)
    }

    /// The lowest seq still kept, if any. Every segment held has a live entry.
    pub(crate) fn lowest_live(&self) -> Option<u64> {
        let seg = self.segs.front()?;
        seg.entries.get(seg.first_live).map(|e| e.seq)
    }

    /// The newest seq still on disk, kept or not.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.segs.back()?.entries.last().map(|e| e.seq)
    }

    /// Appends one encoded batch record, starting a new segment file when the current
    /// one would grow past the segment size. Returns whether a file was created.
    pub(crate) fn append(
        &mut self,
        seq: u64,
        bytes: &[u8],
        samples: u64,
    ) -> Result<bool, SpoolError> {
        let len = u32::try_from(bytes.len()).map_err(|_| SpoolError::TooLarge {
            path: self.dir.clone(),
            bytes: bytes.len() as u64,
            max: u64::from(record::MAX_BODY_BYTES),
        })?;
        let roll = match self.segs.back() {
            None => true,
            Some(last) => last.len > 0 && last.len + u64::from(len) > self.segment_bytes,
        };
        if roll || self.writer.is_none() {
            self.open_writer(seq, roll)?;
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(SpoolError::Poisoned {
                path: self.dir.clone(),
            });
        };
        let offset = writer.append(bytes)?;
        let Some(seg) = self.segs.back_mut() else {
            return Err(SpoolError::Poisoned {
                path: self.dir.clone(),
            });
        };
        seg.len += u64::from(len);
        seg.live += 1;
        seg.entries.push(Entry {
            seq,
            offset,
            len,
            samples: u32::try_from(samples).unwrap_or(u32::MAX),
            gone: false,
        });
        seg.advance_first_live();
        self.bytes += u64::from(len);
        self.live += 1;
        self.live_samples += samples;
        Ok(roll)
    }

    /// Points the writer at the last segment, or at a new one named after `seq`.
    fn open_writer(&mut self, seq: u64, new_segment: bool) -> Result<(), SpoolError> {
        if let Some(mut old) = self.writer.take() {
            // Its data must not miss the next sync just because it is no longer written.
            old.sync()?;
        }
        if new_segment {
            let path = self.dir.join(segment_name(seq));
            let writer = AppendLog::open(&path, 0)?;
            self.dir_dirty = true;
            self.segs.push_back(Segment {
                path,
                len: 0,
                entries: Vec::new(),
                live: 0,
                first_live: 0,
            });
            self.writer = Some(writer);
        } else if let Some(last) = self.segs.back() {
            self.writer = Some(AppendLog::open(&last.path, last.len)?);
        }
        Ok(())
    }

    /// Syncs the segment being written, and the directory if files came or went.
    pub(crate) fn sync(&mut self) -> Result<(), SpoolError> {
        if let Some(w) = self.writer.as_mut() {
            w.sync()?;
        }
        if self.dir_dirty {
            record::sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Marks one batch as no longer kept; returns what it held if it was kept.
    pub(crate) fn remove(&mut self, seq: u64) -> Option<Removed> {
        let i = self.segment_holding(seq)?;
        let seg = &mut self.segs[i];
        let j = seg.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        let entry = &mut seg.entries[j];
        if entry.gone {
            return None;
        }
        entry.gone = true;
        let samples = u64::from(entry.samples);
        seg.live -= 1;
        seg.advance_first_live();
        self.live -= 1;
        self.live_samples -= samples;
        if self.segs[i].live == 0 {
            self.delete_segment(i);
        }
        Some(Removed {
            batches: 1,
            samples,
        })
    }

    /// Marks every batch up to and including `seq` as no longer kept.
    pub(crate) fn remove_through(&mut self, seq: u64) -> Removed {
        let mut removed = Removed::default();
        while let Some(lowest) = self.lowest_live() {
            if lowest > seq {
                break;
            }
            if let Some(r) = self.remove(lowest) {
                removed.batches += r.batches;
                removed.samples += r.samples;
            }
        }
        removed
    }

    /// Deletes the oldest segment with whatever it still kept.
    pub(crate) fn drop_oldest(&mut self) -> Option<Removed> {
        let seg = self.segs.front()?;
        let kept = seg.entries.iter().filter(|e| !e.gone);
        let removed = kept.fold(Removed::default(), |acc, e| Removed {
            batches: acc.batches + 1,
            samples: acc.samples + u64::from(e.samples),
        });
        self.live -= removed.batches;
        self.live_samples -= removed.samples;
        self.delete_segment(0);
        Some(removed)
    }

    fn segment_holding(&self, seq: u64) -> Option<usize> {
        let after = self
            .segs
            .partition_point(|s| s.entries.first().is_some_and(|e| e.seq <= seq));
        after.checked_sub(1)
    }

    fn delete_segment(&mut self, i: usize) {
        let Some(seg) = self.segs.remove(i) else {
            return;
        };
        if i == self.segs.len() {
            // It was the one being written.
            self.writer = None;
        }
        self.bytes -= seg.len;
        self.remove_file(&seg.path);
    }

    /// A file that cannot be removed is only wasted space: its batches are below the
    /// floor and are skipped when the spool is next opened.
    fn remove_file(&mut self, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => self.dir_dirty = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %path.display(), error = %e, "spool: cannot remove a segment"),
        }
    }

    /// Reads up to `max` kept batches with seq >= `from`, in seq order. Records that
    /// cannot be read back are returned separately so the caller drops and counts them,
    /// rather than retrying them forever.
    pub(crate) fn read_pending(
        &self,
        from: u64,
        max: usize,
    ) -> Result<(Vec<PendingBatch>, Vec<u64>), SpoolError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        let start = self.segment_holding(from).unwrap_or(0);
        for seg in self.segs.iter().skip(start) {
            if out.len() >= max {
                break;
            }
            let wanted = seg.entries[seg.first_live..]
                .iter()
                .filter(|e| !e.gone && e.seq >= from);
            let mut file: Option<File> = None;
            for e in wanted {
                if out.len() >= max {
                    break;
                }
                let f = match &mut file {
                    Some(f) => f,
                    None => file.insert(
                        File::open(&seg.path).map_err(record::io_err(&seg.path, "opening"))?,
                    ),
                };
                match read_batch(f, &seg.path, e) {
                    Ok(groups) => out.push((e.seq, groups)),
                    Err(
                        err @ (SpoolError::Corrupt { .. } | SpoolError::UnsupportedVersion { .. }),
                    ) => {
                        error!(error = %err, seq = e.seq, "spool: a kept batch cannot be read back; dropping it");
                        bad.push(e.seq);
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Ok((out, bad))
    }
}

fn read_batch(file: &mut File, path: &Path, e: &Entry) -> Result<Vec<PointGroup>, SpoolError> {
    let (kind, payload) = record::read_one(file, path, e.offset, u64::from(e.len))?;
    let corrupt = |reason: String| SpoolError::Corrupt {
        path: path.to_path_buf(),
        offset: e.offset,
        reason,
    };
    if kind != KIND_BATCH {
        return Err(corrupt(format!("unexpected record kind {kind}")));
    }
    let batch: BatchIn = postcard::from_bytes(&payload).map_err(|err| corrupt(err.to_string()))?;
    if batch.seq != e.seq {
        return Err(corrupt(format!(
            "holds seq {} where seq {} was indexed",
            batch.seq, e.seq
        )));
    }
    Ok(batch.groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_first_seq() {
        assert_eq!(segment_name(42), "segment-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("segment-12.tmp"), None);
        assert_eq!(parse_segment_name("dictionary.log"), None);
        assert!(segment_name(9) < segment_name(10));
    }

    #[test]
    fn recovery_refuses_a_seq_that_does_not_rise() {
        let groups = [PointGroup {
            timestamp_ms: 1,
            points: vec![(1, 1.0)],
        }];
        let rec = encode_batch(5, 1, &groups).unwrap();
        let payload = &rec[record::HEADER_BYTES + 2..];
        assert_eq!(index_record(0, KIND_BATCH, payload, 5), Ok((5, 1)));
        assert!(index_record(0, KIND_BATCH, payload, 6).is_err());
        assert!(index_record(0, 9, payload, 0).is_err());
    }
}
