//! Renders a collection in the Prometheus text format (0.0.4) or as JSON.
//!
//! Two audiences read it: `collect --once` shows a collection as it will be stored
//! (with `instance`, `job` and the scheduled timestamp), while `serve-metrics` serves
//! what node_exporter would (no `instance`, `job` or timestamps), so a Prometheus
//! scraping it adds its own target labels and applies its own staleness.

use crate::collection::Collection;
use argus_common::model::escape_help;
use serde_json::json;
use std::fmt::Write;

/// What to add to every series when rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// As stored: `instance` and `job` labels and the tick's timestamp.
    Stored { instance: &'a str },
    /// As node_exporter serves it to a scraper.
    Scrape,
}

/// Formats a sample value the way Prometheus parsers expect, including the
/// spellings of the special values.
pub fn format_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Renders the text exposition format.
pub fn render_text(c: &Collection, target: Target<'_>) -> String {
    let mut out = String::with_capacity(64 * 1024);
    for (job, families) in &c.jobs {
        for fam in families.iter() {
            if fam.points.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {} {}", fam.name, escape_help(&fam.help));
            let _ = writeln!(out, "# TYPE {} {}", fam.name, fam.kind.exposition_name());
            for (labels, value) in &fam.points {
                out.push_str(&fam.name);
                match target {
                    Target::Stored { instance } => {
                        let mut l = labels.clone();
                        l.set("instance", instance);
                        l.set("job", job.as_str());
                        let _ = write!(out, "{l}");
                    }
                    Target::Scrape => {
                        let _ = write!(out, "{labels}");
                    }
                }
                out.push(' ');
                format_value(&mut out, *value);
                if matches!(target, Target::Stored { .. }) {
                    let _ = write!(out, " {}", c.timestamp_ms);
                }
                out.push('\n');
            }
        }
    }
    out
}

/// Renders the collection as JSON: one object per family with its samples.
/// Non-finite values become the strings Prometheus's JSON API uses ("NaN", "+Inf").
pub fn render_json(c: &Collection, instance: &str) -> String {
    let mut families = Vec::new();
    for (job, fams) in &c.jobs {
        for fam in fams.iter() {
            let samples: Vec<_> = fam
                .points
                .iter()
                .map(|(labels, v)| {
                    let mut l = labels.clone();
                    l.set("instance", instance);
                    l.set("job", job.as_str());
                    let labels: serde_json::Map<String, serde_json::Value> =
                        l.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                    let value = if v.is_finite() {
                        json!(v)
                    } else {
                        let mut s = String::new();
                        format_value(&mut s, *v);
                        json!(s)
                    };
                    json!({"labels": labels, "value": value})
                })
                .collect();
            families.push(json!({
                "name": fam.name,
                "type": fam.kind.exposition_name(),
                "unit": argus_common::model::unit_from_name(&fam.name),
                "help": fam.help,
                "job": job,
                "samples": samples,
            }));
        }
    }
    let doc = json!({"timestamp_ms": c.timestamp_ms, "instance": instance, "families": families});
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::Families;

    fn sample() -> Collection {
        let mut f = Families::new();
        f.counter(
            "node_cpu_seconds_total",
            "Seconds the CPUs spent in each mode.",
            &[("cpu", "0"), ("mode", "idle")],
            12.5,
        );
        f.gauge("node_load1", "1m load average.\nSecond line", &[], f64::NAN);
        f.gauge("node_weird", "x", &[("path", "a\"b")], f64::INFINITY);
        Collection {
            timestamp_ms: 1_700_000_000_000,
            jobs: vec![("node".into(), f)],
        }
    }

    #[test]
    fn stored_form_carries_instance_job_and_timestamp() {
        let text = render_text(&sample(), Target::Stored { instance: "web-1" });
        assert!(text.contains(
            "node_cpu_seconds_total{cpu=\"0\",instance=\"web-1\",job=\"node\",mode=\"idle\"} 12.5 1700000000000\n"
        ));
        assert!(text.contains("# HELP node_load1 1m load average.\\nSecond line\n"));
        assert!(text.contains("node_load1{instance=\"web-1\",job=\"node\"} NaN 1700000000000\n"));
        assert!(text.contains("# TYPE node_cpu_seconds_total counter\n"));
    }

    #[test]
    fn scrape_form_has_no_target_labels_or_timestamps() {
        let text = render_text(&sample(), Target::Scrape);
        assert!(text.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12.5\n"));
        assert!(text.contains("node_load1 NaN\n"));
        assert!(text.contains("node_weird{path=\"a\\\"b\"} +Inf\n"));
        assert!(!text.contains("instance="));
    }

    #[test]
    fn json_form_parses_and_keeps_special_values_as_strings() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&sample(), "web-1")).unwrap();
        assert_eq!(v["families"][0]["samples"][0]["labels"]["job"], "node");
        assert_eq!(v["families"][0]["unit"], "seconds");
        assert_eq!(v["families"][1]["samples"][0]["value"], "NaN");
        assert_eq!(v["families"][2]["samples"][0]["value"], "+Inf");
    }
}
