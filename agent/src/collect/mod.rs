//! Collectors: one file per family of metrics, each filling a [`Families`] for one tick.
//!
//! A collector never fails the whole collection: what it cannot read it reports as a
//! [`CollectError`] and it carries on with the rest, so one unreadable file or an
//! absent Docker engine costs only the metrics that depend on it.

pub mod agent;
pub mod cgroup;
pub mod containers;
pub mod host;
pub mod probes;

use argus_common::model::{Labels, MetricType};
use std::collections::HashMap;
use std::path::PathBuf;

/// Something a collector could not read. Reported and counted, never fatal.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("docker engine at {endpoint}: {reason}")]
    Docker { endpoint: String, reason: String },
    #[error("probe {probe}: {reason}")]
    Probe { probe: String, reason: String },
}

/// One metric family: all series of one metric name in one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    pub name: String,
    pub kind: MetricType,
    pub help: String,
    pub points: Vec<(Labels, f64)>,
}

/// The output of one collector for one tick, in the order metrics were first added.
///
/// Families are kept in insertion order with an index by name, so exposition output is
/// stable and a metric added twice (say per CPU) lands in one family.
#[derive(Debug, Default, Clone)]
pub struct Families {
    families: Vec<MetricFamily>,
    index: HashMap<String, usize>,
    /// Label pairs whose series are still alive although absent from this tick
    /// (a probe that was not due). The staleness tracker leaves those alone.
    held: Vec<(String, String)>,
}

impl Families {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one point. The first call for a name fixes its type and help text.
    pub fn add(&mut self, name: &str, kind: MetricType, help: &str, labels: Labels, value: f64) {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.families.push(MetricFamily {
                    name: name.to_string(),
                    kind,
                    help: help.to_string(),
                    points: Vec::new(),
                });
                self.index.insert(name.to_string(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        self.families[i].points.push((labels, value));
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(
            name,
            MetricType::Counter,
            help,
            Labels::from_pairs(labels.iter().copied()),
            value,
        );
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(
            name,
            MetricType::Gauge,
            help,
            Labels::from_pairs(labels.iter().copied()),
            value,
        );
    }

    /// Marks series carrying `name="value"` as alive although not collected this tick.
    pub fn hold(&mut self, name: &str, value: &str) {
        self.held.push((name.to_string(), value.to_string()));
    }

    pub fn is_held(&self, labels: &Labels) -> bool {
        self.held
            .iter()
            .any(|(k, v)| labels.get(k) == Some(v.as_str()))
    }

    pub fn get(&self, name: &str) -> Option<&MetricFamily> {
        self.index.get(name).map(|&i| &self.families[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &MetricFamily> {
        self.families.iter()
    }

    pub fn len(&self) -> usize {
        self.families.len()
    }

    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    pub fn sample_count(&self) -> usize {
        self.families.iter().map(|f| f.points.len()).sum()
    }
}
