//! `/federate` output: the Prometheus text exposition format 0.0.4.
//!
//! An existing Prometheus scrapes this to pull what Argus holds, so the output must
//! be what its parser accepts, whatever the store contains. Prometheus's parser
//! (expfmt's TextParser, which `promtool check metrics` and the scraper share) is
//! strict in two ways that shape this file:
//!
//! - A family's `# TYPE` line must come before its samples and appear once, so each
//!   family is written contiguously with one HELP and one TYPE line.
//! - Under `# TYPE foo histogram` the parser claims `foo_bucket`, `foo_count` and
//!   `foo_sum` (`foo_count` and `foo_sum` for a summary) and insists on a float `le`
//!   (or `quantile`) label. A series that would break that (a `_bucket` without `le`,
//!   a gauge called `foo_sum` beside a histogram `foo`, members that disagree on the
//!   type) makes its family fall back to `untyped` per metric name, which always
//!   parses. Prometheus's own `/federate` writes every family as untyped; we keep the
//!   types whenever they are consistent.
//!
//! Samples carry their timestamps, as federation requires, and a series whose last
//! sample is a StaleNaN has ended and is left out, as Prometheus's federate does.
//! Output is sorted (family, name, labels) so it is deterministic.

use argus_common::model::{
    Labels, MetricType, TimestampMs, escape_help, is_stale_nan, is_valid_label_name,
    is_valid_metric_name,
};
use std::collections::HashMap;
use std::fmt::Write;

/// The Content-Type of text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rounds of family fallback before every family becomes untyped per name. Real data
/// settles in one or two; only names crafted to chain conflicts get further.
const MAX_FALLBACK_ROUNDS: usize = 8;

/// The last sample of one series, with the metadata of its metric.
#[derive(Debug, Clone, PartialEq)]
pub struct FederatedSample {
    pub name: String,
    /// Without `__name__`.
    pub labels: Labels,
    /// The series' metric type; for a histogram or summary this is the type of the
    /// family its `_bucket`/`_sum`/`_count` series belong to.
    pub kind: MetricType,
    pub help: String,
    pub timestamp_ms: TimestampMs,
    pub value: f64,
}

/// Renders the samples as text format 0.0.4, with HELP and TYPE lines once per
/// family and timestamps on every sample. Stale series, and series whose names could
/// not be written (never produced by validated ingest), are left out; of two samples
/// of the same series the later is kept.
pub fn render(samples: &[FederatedSample]) -> String {
    let mut rows: Vec<&FederatedSample> = samples.iter().filter(|s| exportable(s)).collect();
    rows.sort_by(|a, b| {
        (&a.name, &a.labels, a.timestamp_ms).cmp(&(&b.name, &b.labels, b.timestamp_ms))
    });
    // Keep the latest sample of each series (the last after sorting).
    rows.reverse();
    rows.dedup_by(|later, kept| later.name == kept.name && later.labels == kept.labels);
    rows.reverse();

    let mut assigned: Vec<(String, MetricType)> = rows.iter().map(|s| family_of(s)).collect();
    for round in 0.. {
        let degrade = conflicts(&rows, &assigned);
        if degrade.is_empty() {
            break;
        }
        if round >= MAX_FALLBACK_ROUNDS {
            for (row, a) in rows.iter().zip(assigned.iter_mut()) {
                *a = (row.name.clone(), MetricType::Unknown);
            }
            break;
        }
        for i in degrade {
            assigned[i] = (rows[i].name.clone(), MetricType::Unknown);
        }
    }

    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| {
        (&assigned[a].0, &rows[a].name, &rows[a].labels).cmp(&(
            &assigned[b].0,
            &rows[b].name,
            &rows[b].labels,
        ))
    });

    let mut out = String::new();
    let mut i = 0;
    while i < order.len() {
        let (family, kind) = &assigned[order[i]];
        let end = i + order[i..]
            .iter()
            .take_while(|&&j| assigned[j].0 == *family)
            .count();
        let members = &order[i..end];
        if let Some(help) = members
            .iter()
            .map(|&j| rows[j].help.as_str())
            .find(|h| !h.is_empty())
        {
            let _ = writeln!(out, "# HELP {family} {}", escape_help(help));
        }
        let _ = writeln!(out, "# TYPE {family} {}", kind.exposition_name());
        for &j in members {
            write_sample(&mut out, rows[j]);
        }
        i = end;
    }
    out
}

fn exportable(s: &FederatedSample) -> bool {
    !is_stale_nan(s.value)
        && is_valid_metric_name(&s.name)
        && s.labels.iter().all(|(k, _)| is_valid_label_name(k))
}

fn write_sample(out: &mut String, s: &FederatedSample) {
    // Labels' Display is the exposition format's `{name="escaped value",...}`.
    let _ = write!(out, "{}{} ", s.name, s.labels);
    format_value(out, s.value);
    let _ = writeln!(out, " {}", s.timestamp_ms);
}

/// The family a series belongs to and the family's type, before conflicts.
fn family_of(s: &FederatedSample) -> (String, MetricType) {
    let own = |kind| (s.name.clone(), kind);
    let base = |suffix: &str| {
        s.name
            .strip_suffix(suffix)
            .filter(|b| is_valid_metric_name(b))
    };
    let float_label = |l: &str| s.labels.get(l).is_some_and(|v| v.parse::<f64>().is_ok());
    match s.kind {
        MetricType::Histogram => {
            if let Some(b) = base("_bucket")
                && float_label("le")
            {
                return (b.to_string(), MetricType::Histogram);
            }
            if let Some(b) = base("_count").or_else(|| base("_sum"))
                && s.labels.get("le").is_none()
            {
                return (b.to_string(), MetricType::Histogram);
            }
            own(MetricType::Unknown)
        }
        MetricType::Summary => {
            if let Some(b) = base("_count").or_else(|| base("_sum"))
                && s.labels.get("quantile").is_none()
            {
                return (b.to_string(), MetricType::Summary);
            }
            if float_label("quantile") {
                return own(MetricType::Summary);
            }
            own(MetricType::Unknown)
        }
        // Text format 0.0.4 has no info type; both are written as gauge.
        MetricType::Info | MetricType::Gauge => own(MetricType::Gauge),
        MetricType::Counter => own(MetricType::Counter),
        MetricType::Unknown => own(MetricType::Unknown),
    }
}

/// Rows whose family cannot be written as assigned: members disagree on the type,
/// or a histogram or summary family `foo` would capture another family's
/// `foo_bucket`/`foo_count`/`foo_sum`. Only rows not already untyped under their own
/// name are returned, so every round makes progress.
fn conflicts(rows: &[&FederatedSample], assigned: &[(String, MetricType)]) -> Vec<usize> {
    struct Family {
        kind: MetricType,
        mixed: bool,
        members: Vec<usize>,
    }
    let mut families: HashMap<&str, Family> = HashMap::new();
    for (i, (family, kind)) in assigned.iter().enumerate() {
        let f = families.entry(family).or_insert(Family {
            kind: *kind,
            mixed: false,
            members: Vec::new(),
        });
        f.mixed |= f.kind != *kind;
        f.members.push(i);
    }
    let mut out = Vec::new();
    for (name, f) in &families {
        let claimed: &[&str] = match f.kind {
            MetricType::Histogram => &["_bucket", "_count", "_sum"],
            MetricType::Summary => &["_count", "_sum"],
            _ => &[],
        };
        let captures = claimed
            .iter()
            .any(|suffix| families.contains_key(format!("{name}{suffix}").as_str()));
        if f.mixed || captures {
            out.extend(f.members.iter().copied().filter(|&i| {
                !(assigned[i].1 == MetricType::Unknown && assigned[i].0 == rows[i].name)
            }));
        }
    }
    out
}

/// Writes a sample value as Prometheus does (Go's `strconv.FormatFloat(v, 'g', -1,
/// 64)`): the shortest digits that read back exactly, in exponent form when the
/// decimal exponent is below -4 or at least 6 (`1e+06`, `1.5e-07`), and `NaN`,
/// `+Inf`, `-Inf`.
pub fn format_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    if v == 0.0 {
        // Prometheus writes both zeros as 0.
        out.push('0');
        return;
    }
    // Rust's `{:e}` gives the same shortest round-trip digits: "d.ddde-x".
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    if v < 0.0 {
        out.push('-');
    }
    if !(-4..6).contains(&exp) {
        out.push(char::from(digits[0]));
        if digits.len() > 1 {
            out.push('.');
            out.extend(digits[1..].iter().map(|&d| char::from(d)));
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let e = exp.unsigned_abs();
        if e < 10 {
            out.push('0');
        }
        let _ = write!(out, "{e}");
        return;
    }
    // Fixed notation: `point` digits before the decimal point.
    let point = exp + 1;
    let digit = |i: i32| {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i))
            .map_or('0', |&d| char::from(d))
    };
    if point <= 0 {
        out.push('0');
    } else {
        for i in 0..point {
            out.push(digit(i));
        }
    }
    let frac = digits.len() as i32 - point;
    if frac > 0 {
        out.push('.');
        for i in point..point + frac {
            out.push(digit(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argus_common::model::stale_nan;

    fn fmt(v: f64) -> String {
        let mut s = String::new();
        format_value(&mut s, v);
        s
    }

    #[test]
    fn values_are_formatted_as_go_formats_them() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (1e6, "1e+06"),
            (1.6706705408e10, "1.6706705408e+10"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e100, "1e+100"),
            (-2.5e-300, "-2.5e-300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
            (99999.5, "99999.5"),
            (100000.0, "100000"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for &(v, want) in cases {
            assert_eq!(fmt(v), want, "{v:?}");
        }
    }

    #[test]
    fn formatted_values_read_back_exactly() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(512), |(v in any::<f64>())| {
            let s = fmt(v);
            if v.is_nan() {
                prop_assert_eq!(s, "NaN");
            } else {
                let back: f64 = s.replace("+Inf", "inf").replace("-Inf", "-inf").parse().unwrap();
                prop_assert!(back == v, "{v:?} -> {s} -> {back:?}");
            }
        });
    }

    fn sample(
        name: &str,
        labels: &[(&str, &str)],
        kind: MetricType,
        help: &str,
        ts: i64,
        v: f64,
    ) -> FederatedSample {
        FederatedSample {
            name: name.into(),
            labels: Labels::from_pairs(labels.iter().copied()),
            kind,
            help: help.into(),
            timestamp_ms: ts,
            value: v,
        }
    }

    /// A realistic mix: counter, gauge with awkward HELP and label values, histogram,
    /// summary, info, a stale series, given in scrambled order.
    fn fixture() -> Vec<FederatedSample> {
        use MetricType::*;
        let h = "Request latency.";
        vec![
            sample(
                "http_request_duration_seconds_sum",
                &[("job", "api")],
                Histogram,
                h,
                1000,
                12.5,
            ),
            sample(
                "node_load1",
                &[("instance", "h1")],
                Gauge,
                "1m load average.",
                1000,
                0.25,
            ),
            sample(
                "http_request_duration_seconds_bucket",
                &[("job", "api"), ("le", "+Inf")],
                Histogram,
                h,
                1000,
                30.0,
            ),
            sample(
                "http_request_duration_seconds_bucket",
                &[("job", "api"), ("le", "0.1")],
                Histogram,
                h,
                1000,
                10.0,
            ),
            sample(
                "http_request_duration_seconds_count",
                &[("job", "api")],
                Histogram,
                h,
                1000,
                30.0,
            ),
            sample(
                "http_requests_total",
                &[("code", "200"), ("path", "/a\"b\\c\nd")],
                Counter,
                "Requests served.",
                1000,
                1027.0,
            ),
            sample(
                "http_requests_total",
                &[("code", "500"), ("path", "/")],
                Counter,
                "Requests served.",
                2000,
                3.0,
            ),
            sample(
                "node_temp_celsius",
                &[("chip", "x")],
                Gauge,
                "Temperature with a \\ backslash\nand a newline.",
                1000,
                -1.5e-7,
            ),
            sample(
                "node_gone_bytes",
                &[("device", "sdz")],
                Gauge,
                "A disk that went away.",
                1000,
                stale_nan(),
            ),
            sample(
                "rpc_duration_seconds",
                &[("quantile", "0.5")],
                Summary,
                "RPC latency.",
                1000,
                0.05,
            ),
            sample(
                "rpc_duration_seconds_count",
                &[],
                Summary,
                "RPC latency.",
                1000,
                7.0,
            ),
            sample(
                "rpc_duration_seconds_sum",
                &[],
                Summary,
                "RPC latency.",
                1000,
                0.35,
            ),
            sample(
                "node_uname_info",
                &[("release", "6.1")],
                Info,
                "Kernel.",
                1000,
                1.0,
            ),
            sample(
                "node_boot_time_seconds",
                &[],
                Gauge,
                "Boot time.",
                1000,
                1.71234567e9,
            ),
            sample("node_odd_value", &[], Gauge, "Odd values.", 1000, f64::NAN),
            sample(
                "node_odd_value",
                &[("x", "inf")],
                Gauge,
                "Odd values.",
                1000,
                f64::NEG_INFINITY,
            ),
        ]
    }

    #[test]
    fn renders_families_with_help_type_and_timestamps() {
        let text = render(&fixture());
        let want = r#"# HELP http_request_duration_seconds Request latency.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{job="api",le="+Inf"} 30 1000
http_request_duration_seconds_bucket{job="api",le="0.1"} 10 1000
http_request_duration_seconds_count{job="api"} 30 1000
http_request_duration_seconds_sum{job="api"} 12.5 1000
# HELP http_requests_total Requests served.
# TYPE http_requests_total counter
http_requests_total{code="200",path="/a\"b\\c\nd"} 1027 1000
http_requests_total{code="500",path="/"} 3 2000
# HELP node_boot_time_seconds Boot time.
# TYPE node_boot_time_seconds gauge
node_boot_time_seconds 1.71234567e+09 1000
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1{instance="h1"} 0.25 1000
# HELP node_odd_value Odd values.
# TYPE node_odd_value gauge
node_odd_value NaN 1000
node_odd_value{x="inf"} -Inf 1000
# HELP node_temp_celsius Temperature with a \\ backslash\nand a newline.
# TYPE node_temp_celsius gauge
node_temp_celsius{chip="x"} -1.5e-07 1000
# HELP node_uname_info Kernel.
# TYPE node_uname_info gauge
node_uname_info{release="6.1"} 1 1000
# HELP rpc_duration_seconds RPC latency.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.5"} 0.05 1000
rpc_duration_seconds_count 7 1000
rpc_duration_seconds_sum 0.35 1000
"#;
        assert_eq!(text, want);
        assert!(
            !text.contains("node_gone_bytes"),
            "stale series are not exported"
        );
    }

    #[test]
    fn latest_sample_of_a_series_wins() {
        let mut v = fixture();
        v.push(sample(
            "node_load1",
            &[("instance", "h1")],
            MetricType::Gauge,
            "",
            3000,
            0.75,
        ));
        v.push(sample(
            "node_load1",
            &[("instance", "h1")],
            MetricType::Gauge,
            "",
            500,
            9.0,
        ));
        let text = render(&v);
        assert!(
            text.contains("node_load1{instance=\"h1\"} 0.75 3000\n"),
            "{text}"
        );
        assert_eq!(text.matches("node_load1{").count(), 1);
    }

    #[test]
    fn a_stale_marker_hides_the_series() {
        let v = vec![sample(
            "up",
            &[("job", "a")],
            MetricType::Gauge,
            "x",
            1000,
            stale_nan(),
        )];
        assert_eq!(render(&v), "");
        // An ordinary NaN is a value, not an end.
        let v = vec![sample(
            "up",
            &[("job", "a")],
            MetricType::Gauge,
            "x",
            1000,
            f64::NAN,
        )];
        assert!(render(&v).contains("up{job=\"a\"} NaN 1000"));
    }

    #[test]
    fn inconsistent_families_fall_back_to_untyped() {
        use MetricType::*;
        let v = vec![
            // A histogram `foo` whose `_sum` name is also a gauge of its own.
            sample("foo_bucket", &[("le", "1")], Histogram, "h", 1, 1.0),
            sample("foo_sum", &[("x", "1")], Gauge, "g", 1, 2.0),
            // A bucket without `le` cannot sit under TYPE histogram.
            sample("bar_bucket", &[], Histogram, "b", 1, 3.0),
            // Members of one name that disagree on the type.
            sample("baz", &[("a", "1")], Counter, "c", 1, 4.0),
            sample("baz", &[("a", "2")], Gauge, "c", 1, 5.0),
        ];
        let text = render(&v);
        assert!(!text.contains("histogram"), "{text}");
        assert!(
            text.contains("# TYPE bar_bucket untyped\nbar_bucket 3 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE baz untyped\n"), "{text}");
        assert!(text.contains("# TYPE foo_bucket untyped\n"), "{text}");
        // Only the histogram gives way; the gauge it would have captured stays a gauge.
        assert!(
            text.contains("# TYPE foo_sum gauge\nfoo_sum{x=\"1\"} 2 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE").count(), 4, "{text}");
    }

    /// The real promtool (Debian package `prometheus`) must accept what we emit. A
    /// missing promtool skips loudly, unless `CI` is set: then it fails.
    #[test]
    fn promtool_accepts_federation_output() {
        let Some(promtool) = argus_testkit::promtool::find() else {
            return;
        };
        let mut v = fixture();
        v.extend([
            sample(
                "foo_bucket",
                &[("le", "1")],
                MetricType::Histogram,
                "h",
                1,
                1.0,
            ),
            sample("foo_sum", &[("x", "1")], MetricType::Gauge, "g", 1, 2.0),
            sample("bar_bucket", &[], MetricType::Histogram, "b", 1, 3.0),
        ]);
        // The typed output must pass the lints too (HELP present, names conventional).
        let text = render(&fixture());
        let (code, report) = promtool_check(&promtool, &text);
        assert_eq!(
            code,
            Some(0),
            "promtool check metrics refused the output:\n{report}\n--- output ---\n{text}"
        );
        // The fallback output must parse; lint findings about untyped `_bucket` or
        // `_sum` names are expected there (exit 3).
        let text = render(&v);
        let (code, report) = promtool_check(&promtool, &text);
        assert!(
            code != Some(1) && !report.contains("error while linting"),
            "promtool could not parse the output:\n{report}\n--- output ---\n{text}"
        );
    }

    fn promtool_check(promtool: &std::path::Path, text: &str) -> (Option<i32>, String) {
        argus_testkit::promtool::run_check_metrics(promtool, text).expect("running promtool")
    }
}
