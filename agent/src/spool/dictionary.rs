//! The series dictionary kept beside the spool: every definition a kept batch may
//! still reference, and the ref high-water mark.
//!
//! Batches carry refs, not names, so a def must outlive every batch that uses it and
//! must be on disk no later than the first such batch. A ref is never handed out twice
//! within an incarnation: the high-water mark is persisted, also through compaction.

use super::SpoolError;
use super::record::{self, AppendLog};
use argus_common::model::{Labels, MetricType, SeriesDef, SeriesRef};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

const KIND_DEF: u8 = 1;
const KIND_RETIRE: u8 = 2;
const KIND_NEXT_REF: u8 = 3;

/// The first ref an incarnation hands out; 0 stays unused so it can never be
/// mistaken for "no ref" by a careless reader.
const FIRST_REF: SeriesRef = 1;

/// Compaction is worth it once the file holds this many more records than the kept set
/// would need, and at least twice as many.
const COMPACT_SLACK_RECORDS: u64 = 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Retire {
    series_ref: SeriesRef,
    stale_in_seq: u64,
}

#[derive(Debug)]
struct Kept {
    def: SeriesDef,
    /// The seq of the batch holding the series' StaleNaN, once retired.
    retired_in: Option<u64>,
}

/// The in-memory state rebuilt from the file; no I/O here.
#[derive(Debug, Default)]
struct State {
    defs: BTreeMap<SeriesRef, Kept>,
    /// (stale seq, ref) of retired defs not yet forgotten, lowest seq first.
    retiring: BTreeSet<(u64, SeriesRef)>,
    /// The lowest ref never handed out.
    next_ref: SeriesRef,
}

impl State {
    fn apply(&mut self, kind: u8, payload: &[u8]) -> Result<(), String> {
        match kind {
            KIND_DEF => {
                let def: SeriesDef = postcard::from_bytes(payload).map_err(|e| e.to_string())?;
                self.next_ref = self.next_ref.max(def.series_ref.saturating_add(1));
                self.defs.insert(
                    def.series_ref,
                    Kept {
                        def,
                        retired_in: None,
                    },
                );
            }
            KIND_RETIRE => {
                let r: Retire = postcard::from_bytes(payload).map_err(|e| e.to_string())?;
                self.retire(r.series_ref, r.stale_in_seq);
            }
            KIND_NEXT_REF => {
                let n: SeriesRef = postcard::from_bytes(payload).map_err(|e| e.to_string())?;
                self.next_ref = self.next_ref.max(n);
            }
            other => return Err(format!("unknown dictionary record kind {other}")),
        }
        Ok(())
    }

    /// Returns false if there was nothing to retire (unknown or already retired).
    fn retire(&mut self, series_ref: SeriesRef, stale_in_seq: u64) -> bool {
        match self.defs.get_mut(&series_ref) {
            Some(kept) if kept.retired_in.is_none() => {
                kept.retired_in = Some(stale_in_seq);
                self.retiring.insert((stale_in_seq, series_ref));
                true
            }
            _ => false,
        }
    }

    /// Forgets retired defs whose stale batch is below `lowest_seq`, i.e. no longer kept.
    fn forget_below(&mut self, lowest_seq: u64) {
        while let Some(&(seq, r)) = self.retiring.first() {
            if seq >= lowest_seq {
                break;
            }
            self.retiring.pop_first();
            self.defs.remove(&r);
        }
    }
}

pub(crate) struct Dictionary {
    state: State,
    log: AppendLog,
    /// Records in the file, to judge when compaction pays.
    records: u64,
}

impl Dictionary {
    /// Opens the dictionary, forgetting what no batch from `lowest_seq` on can need;
    /// returns it and whether a torn tail was dropped.
    pub(crate) fn open(path: &Path, lowest_seq: u64) -> Result<(Dictionary, bool), SpoolError> {
        let mut state = State {
            next_ref: FIRST_REF,
            ..State::default()
        };
        let mut records = 0u64;
        let scanned = if path.exists() {
            record::scan_log(path, |_, kind, payload| {
                records += 1;
                state.apply(kind, payload)
            })?
        } else {
            record::Scanned {
                len: 0,
                torn: false,
            }
        };
        state.forget_below(lowest_seq);
        let log = AppendLog::open(path, scanned.len)?;
        Ok((
            Dictionary {
                state,
                log,
                records,
            },
            scanned.torn,
        ))
    }

    pub(crate) fn next_ref(&self) -> SeriesRef {
        self.state.next_ref
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.log.is_dirty()
    }

    pub(crate) fn sync(&mut self) -> Result<(), SpoolError> {
        self.log.sync()
    }

    /// Defs not retired: what the collection loop maps its series keys to.
    pub(crate) fn live(&self) -> impl Iterator<Item = &SeriesDef> {
        self.state
            .defs
            .values()
            .filter(|k| k.retired_in.is_none())
            .map(|k| &k.def)
    }

    /// Every def a kept batch may reference (live or retiring) with a ref of at least
    /// `first_ref`, in ref order.
    pub(crate) fn kept_from(&self, first_ref: SeriesRef) -> impl Iterator<Item = &SeriesDef> {
        self.state.defs.range(first_ref..).map(|(_, k)| &k.def)
    }

    pub(crate) fn counts(&self) -> (u64, u64) {
        let retiring = self.state.retiring.len() as u64;
        (self.state.defs.len() as u64 - retiring, retiring)
    }

    pub(crate) fn define(
        &mut self,
        name: &str,
        labels: &Labels,
        kind: MetricType,
        unit: &str,
        help: &str,
    ) -> Result<SeriesRef, SpoolError> {
        let def = SeriesDef {
            series_ref: self.state.next_ref,
            name: name.to_string(),
            labels: labels.clone(),
            kind,
            unit: unit.to_string(),
            help: help.to_string(),
        };
        self.append(KIND_DEF, &def)?;
        let series_ref = def.series_ref;
        self.state.next_ref = series_ref.saturating_add(1);
        self.state.defs.insert(
            series_ref,
            Kept {
                def,
                retired_in: None,
            },
        );
        Ok(series_ref)
    }

    /// Marks a def retired by the batch `stale_in_seq`; unknown or already retired refs
    /// are left alone, so a repeated retire after a restart is harmless.
    pub(crate) fn retire(
        &mut self,
        series_ref: SeriesRef,
        stale_in_seq: u64,
        lowest_seq: u64,
    ) -> Result<(), SpoolError> {
        let retirable = self
            .state
            .defs
            .get(&series_ref)
            .is_some_and(|k| k.retired_in.is_none());
        if !retirable {
            tracing::debug!(series_ref, "spool: retire of an unknown or retired ref");
            return Ok(());
        }
        self.append(
            KIND_RETIRE,
            &Retire {
                series_ref,
                stale_in_seq,
            },
        )?;
        self.state.retire(series_ref, stale_in_seq);
        self.state.forget_below(lowest_seq);
        Ok(())
    }

    pub(crate) fn forget_below(&mut self, lowest_seq: u64) {
        self.state.forget_below(lowest_seq);
    }

    /// Never hands out a ref below `next_ref` from now on, persisted.
    pub(crate) fn raise_next_ref(&mut self, next_ref: SeriesRef) -> Result<(), SpoolError> {
        if next_ref <= self.state.next_ref {
            return Ok(());
        }
        self.append(KIND_NEXT_REF, &next_ref)?;
        self.state.next_ref = next_ref;
        Ok(())
    }

    fn append<T: Serialize>(&mut self, kind: u8, value: &T) -> Result<(), SpoolError> {
        let bytes = record::encode(kind, value).map_err(|e| e.into_spool_error(self.log.path()))?;
        self.log.append(&bytes)?;
        self.records += 1;
        Ok(())
    }

    /// True once the file has grown well past what the kept set needs.
    pub(crate) fn wants_compaction(&self) -> bool {
        let needed = self.state.defs.len() as u64 + self.state.retiring.len() as u64 + 1;
        self.records > needed.saturating_mul(2).max(needed + COMPACT_SLACK_RECORDS)
    }

    /// Rewrites the file with only the kept defs and the high-water mark, atomically.
    pub(crate) fn compact(&mut self) -> Result<(), SpoolError> {
        let path: PathBuf = self.log.path().to_path_buf();
        let mut written = 0u64;
        let mut len = 0u64;
        let state = &self.state;
        record::write_atomic_with(&path, |w| {
            let mut put = |bytes: Result<Vec<u8>, record::EncodeError>| {
                let bytes = bytes.map_err(|e| e.into_spool_error(&path))?;
                w.write_all(&bytes)
                    .map_err(record::io_err(&path, "writing"))?;
                written += 1;
                len += bytes.len() as u64;
                Ok::<(), SpoolError>(())
            };
            put(record::encode(KIND_NEXT_REF, &state.next_ref))?;
            for kept in state.defs.values() {
                put(record::encode(KIND_DEF, &kept.def))?;
                if let Some(stale_in_seq) = kept.retired_in {
                    let retire = Retire {
                        series_ref: kept.def.series_ref,
                        stale_in_seq,
                    };
                    put(record::encode(KIND_RETIRE, &retire))?;
                }
            }
            Ok(())
        })?;
        self.log = AppendLog::open(&path, len)?;
        self.records = written;
        tracing::debug!(path = %path.display(), records = written, "spool: dictionary compacted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def_bytes(r: SeriesRef) -> Vec<u8> {
        let def = SeriesDef {
            series_ref: r,
            name: "m".into(),
            labels: Labels::new(),
            kind: MetricType::Gauge,
            unit: String::new(),
            help: String::new(),
        };
        postcard::to_allocvec(&def).unwrap()
    }

    #[test]
    fn a_retired_def_is_kept_until_its_stale_batch_is_below_the_lowest_kept_seq() {
        let mut s = State::default();
        s.apply(KIND_DEF, &def_bytes(4)).unwrap();
        assert!(s.retire(4, 10));
        s.forget_below(10);
        assert!(s.defs.contains_key(&4), "batch 10 is still kept");
        s.forget_below(11);
        assert!(!s.defs.contains_key(&4));
        assert_eq!(s.next_ref, 5, "forgetting never lowers the high-water mark");
    }

    #[test]
    fn next_ref_is_the_max_of_defs_and_recorded_marks() {
        let mut s = State::default();
        s.apply(KIND_NEXT_REF, &postcard::to_allocvec(&100u64).unwrap())
            .unwrap();
        s.apply(KIND_DEF, &def_bytes(7)).unwrap();
        assert_eq!(s.next_ref, 100);
        s.apply(KIND_DEF, &def_bytes(150)).unwrap();
        assert_eq!(s.next_ref, 151);
        assert!(s.apply(9, &[]).is_err());
    }
}
