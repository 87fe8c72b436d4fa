//! The agent's series dictionary in memory: which series are alive, their refs, and
//! which ended since the last tick.
//!
//! Staleness is decided here, once, for every collector: a series seen in the previous
//! tick but absent now (a container removed, an interface or mount gone) gets a StaleNaN
//! and its ref is retired (DESIGN §5). Keeping it in one place means no collector has to
//! remember what it emitted last time. It does no I/O: defining a new ref is delegated
//! to the caller (the spool persists it), so the logic is tested with plain closures.

use crate::collect::Families;
use argus_common::model::{Labels, MetricType, SeriesRef, stale_nan, unit_from_name};
use std::collections::HashMap;

/// Why a series was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    SeriesLimit,
    LabelLimit,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SeriesLimit => "series_limit",
            Refusal::LabelLimit => "label_limit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesLimits {
    pub max_series: usize,
    pub max_labels: usize,
    pub max_label_value_len: usize,
}

/// The identity of a stored series: metric name plus labels including `job`.
pub type SeriesKey = (String, Labels);

#[derive(Debug, Clone, Copy)]
struct Live {
    series_ref: SeriesRef,
    /// The tick in which the series was last collected (or held).
    seen: u64,
}

/// What one tick produced for the spool.
#[derive(Debug, Default, PartialEq)]
pub struct TickPoints {
    pub points: Vec<(SeriesRef, f64)>,
    /// Refs that got their StaleNaN in this tick, to retire once the batch is gone.
    pub ended: Vec<SeriesRef>,
    pub refused: Vec<(Refusal, u64)>,
}

#[derive(Debug)]
pub struct SeriesTracker {
    live: HashMap<SeriesKey, Live>,
    limits: SeriesLimits,
    tick: u64,
}

impl SeriesTracker {
    /// Starts from the dictionary persisted by a previous run: those series count as
    /// seen in the previous tick, so one that vanished while the agent was down still
    /// gets its StaleNaN.
    pub fn new(
        limits: SeriesLimits,
        dictionary: impl IntoIterator<Item = (SeriesKey, SeriesRef)>,
    ) -> Self {
        let live = dictionary
            .into_iter()
            .map(|(k, r)| {
                (
                    k,
                    Live {
                        series_ref: r,
                        seen: 0,
                    },
                )
            })
            .collect();
        SeriesTracker {
            live,
            limits,
            tick: 0,
        }
    }

    pub fn live_series(&self) -> usize {
        self.live.len()
    }

    /// Assigns refs to this tick's points and writes StaleNaN for series that ended.
    ///
    /// `define` is called once per new series with (name, labels, type, unit, help) and
    /// returns its new ref; if it fails, the series is skipped this tick and retried next.
    pub fn observe<E>(
        &mut self,
        jobs: &[(String, Families)],
        mut define: impl FnMut(&str, &Labels, MetricType, &str, &str) -> Result<SeriesRef, E>,
    ) -> Result<TickPoints, E> {
        self.tick += 1;
        let tick = self.tick;
        let mut out = TickPoints::default();
        let mut refused: HashMap<Refusal, u64> = HashMap::new();
        for (job, families) in jobs {
            for fam in families.iter() {
                for (labels, value) in &fam.points {
                    let mut key_labels = labels.clone();
                    key_labels.set("job", job.as_str());
                    let key = (fam.name.clone(), key_labels);
                    if let Some(l) = self.live.get_mut(&key) {
                        l.seen = tick;
                        out.points.push((l.series_ref, *value));
                        continue;
                    }
                    if let Some(r) = self.admit(&key.1) {
                        *refused.entry(r).or_default() += 1;
                        continue;
                    }
                    let series_ref = define(
                        &fam.name,
                        &key.1,
                        fam.kind,
                        unit_from_name(&fam.name),
                        &fam.help,
                    )?;
                    self.live.insert(
                        key,
                        Live {
                            series_ref,
                            seen: tick,
                        },
                    );
                    out.points.push((series_ref, *value));
                }
            }
        }
        self.live.retain(|(_, labels), l| {
            if l.seen == tick {
                return true;
            }
            let held = jobs
                .iter()
                .any(|(job, f)| labels.get("job") == Some(job.as_str()) && f.is_held(labels));
            if held {
                l.seen = tick;
                return true;
            }
            out.points.push((l.series_ref, stale_nan()));
            out.ended.push(l.series_ref);
            false
        });
        out.refused = refused.into_iter().collect();
        out.refused.sort();
        Ok(out)
    }

    fn admit(&self, labels: &Labels) -> Option<Refusal> {
        if labels.len() > self.limits.max_labels
            || labels
                .iter()
                .any(|(_, v)| v.len() > self.limits.max_label_value_len)
        {
            return Some(Refusal::LabelLimit);
        }
        if self.live.len() >= self.limits.max_series {
            return Some(Refusal::SeriesLimit);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argus_common::model::is_stale_nan;
    use std::convert::Infallible;

    const LIMITS: SeriesLimits = SeriesLimits {
        max_series: 100,
        max_labels: 4,
        max_label_value_len: 16,
    };

    fn fams(ifaces: &[&str]) -> Vec<(String, Families)> {
        let mut f = Families::new();
        for i in ifaces {
            f.counter(
                "node_network_receive_bytes_total",
                "h",
                &[("device", i)],
                1.0,
            );
        }
        vec![("node".to_string(), f)]
    }

    fn counting_definer()
    -> impl FnMut(&str, &Labels, MetricType, &str, &str) -> Result<SeriesRef, Infallible> {
        let mut next = 0;
        move |_, _, _, _, _| {
            next += 1;
            Ok(next)
        }
    }

    #[test]
    fn refs_are_stable_and_vanished_series_end_with_stale_nan() {
        let mut t = SeriesTracker::new(LIMITS, []);
        let mut def = counting_definer();
        let a = t.observe(&fams(&["eth0", "eth1"]), &mut def).unwrap();
        assert_eq!(a.points.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
        let b = t.observe(&fams(&["eth0"]), &mut def).unwrap();
        assert_eq!(b.points.len(), 2);
        assert_eq!(b.points[0], (1, 1.0));
        assert_eq!(b.points[1].0, 2);
        assert!(is_stale_nan(b.points[1].1));
        assert_eq!(b.ended, vec![2]);
        // It comes back: a fresh ref, never the retired one.
        let c = t.observe(&fams(&["eth0", "eth1"]), &mut def).unwrap();
        assert_eq!(c.points.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!(c.ended.is_empty());
    }

    #[test]
    fn held_series_are_not_ended() {
        let mut t = SeriesTracker::new(LIMITS, []);
        let mut def = counting_definer();
        let mut f = Families::new();
        f.gauge("probe_success", "h", &[("service", "web")], 1.0);
        t.observe(&[("blackbox".into(), f)], &mut def).unwrap();
        let mut held = Families::new();
        held.hold("service", "web");
        let out = t.observe(&[("blackbox".into(), held)], &mut def).unwrap();
        assert!(out.points.is_empty() && out.ended.is_empty());
        let out = t
            .observe(&[("blackbox".into(), Families::new())], &mut def)
            .unwrap();
        assert_eq!(out.ended, vec![1]);
    }

    #[test]
    fn restored_dictionary_keeps_refs_and_ends_what_is_gone() {
        let key = |d: &str| {
            (
                "node_network_receive_bytes_total".to_string(),
                Labels::from_pairs([("device", d), ("job", "node")]),
            )
        };
        let mut t = SeriesTracker::new(LIMITS, [(key("eth0"), 7), (key("veth9"), 8)]);
        let out = t.observe(&fams(&["eth0"]), counting_definer()).unwrap();
        assert_eq!(out.points[0], (7, 1.0));
        assert_eq!(out.ended, vec![8]);
    }

    #[test]
    fn limits_refuse_and_count() {
        let mut t = SeriesTracker::new(
            SeriesLimits {
                max_series: 2,
                ..LIMITS
            },
            [],
        );
        let mut f = Families::new();
        for d in ["a", "b", "c"] {
            f.counter("x_total", "h", &[("device", d)], 1.0);
        }
        f.counter(
            "y_total",
            "h",
            &[("device", "a-very-long-label-value")],
            1.0,
        );
        let out = t
            .observe(&[("node".into(), f)], counting_definer())
            .unwrap();
        assert_eq!(out.points.len(), 2);
        assert_eq!(
            out.refused,
            vec![(Refusal::SeriesLimit, 1), (Refusal::LabelLimit, 1)]
        );
    }

    #[test]
    fn a_failed_definition_is_propagated() {
        let mut t = SeriesTracker::new(LIMITS, []);
        let r = t.observe(&fams(&["eth0"]), |_, _, _, _, _| Err("disk full"));
        assert_eq!(r, Err("disk full"));
        assert_eq!(t.live_series(), 0);
    }
}
