//! An in-memory [`Queryable`]: for unit tests and the conformance runner, where a
//! store with Raft and fjall behind it would only add noise.

use argus_common::model::Labels;

use super::value::{QueryError, Queryable, SeriesData};
use crate::tsdb::Matcher;

#[derive(Debug, Default, Clone)]
pub struct MemStore {
    series: Vec<SeriesData>,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }

    /// Adds samples to the series with these labels (created if new), keeping them
    /// sorted; a sample at an existing timestamp replaces the old one.
    pub fn add(&mut self, labels: Labels, samples: impl IntoIterator<Item = (i64, f64)>) {
        let i = match self.series.iter().position(|s| s.labels == labels) {
            Some(i) => i,
            None => {
                self.series.push(SeriesData {
                    labels,
                    samples: Vec::new(),
                });
                self.series.len() - 1
            }
        };
        let s = &mut self.series[i];
        for (t, v) in samples {
            match s.samples.binary_search_by_key(&t, |p| p.0) {
                Ok(j) => s.samples[j].1 = v,
                Err(j) => s.samples.insert(j, (t, v)),
            }
        }
    }

    pub fn clear(&mut self) {
        self.series.clear();
    }

    /// All series whose labels satisfy every matcher (an absent label reads as "").
    pub fn matching<'a>(&'a self, matchers: &'a [Matcher]) -> impl Iterator<Item = &'a SeriesData> {
        self.series.iter().filter(move |s| {
            matchers
                .iter()
                .all(|m| m.matches(s.labels.get(m.name()).unwrap_or("")))
        })
    }
}

impl Queryable for MemStore {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesData>, QueryError> {
        Ok(self
            .matching(matchers)
            .filter_map(|s| {
                let lo = s.samples.partition_point(|p| p.0 < mint);
                let hi = s.samples.partition_point(|p| p.0 <= maxt);
                (lo < hi).then(|| SeriesData {
                    labels: s.labels.clone(),
                    samples: s.samples[lo..hi].to_vec(),
                })
            })
            .collect())
    }
}
