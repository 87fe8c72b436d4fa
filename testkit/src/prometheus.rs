//! Debian's Prometheus tools as test peers: finding their binaries, and reading the
//! text exposition format they (and Argus's `/federate`) write.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A series identity: every label, `__name__` included, sorted by name.
pub type LabelSet = BTreeMap<String, String>;

/// One sample line: its value and, when the line has one, its timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextSample {
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// The first of `names` found on PATH or in /usr/bin, /usr/sbin, or None after a loud
/// skip message. With `CI` set a missing binary fails the test instead: CI installs
/// `package`.
pub fn find_binary(names: &[&str], package: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin"].map(PathBuf::from));
    let found = names
        .iter()
        .find_map(|n| dirs.iter().map(|d| d.join(n)).find(|p| p.is_file()));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{names:?} is required in CI (Debian package `{package}`)"
        );
        eprintln!("\n*** SKIPPED: none of {names:?} found (apt-get install {package}) ***\n");
    }
    found
}

/// `name{a="b",...}`, as the exposition format writes it (for messages).
pub fn format_labels(ls: &LabelSet) -> String {
    let name = ls.get("__name__").map(String::as_str).unwrap_or_default();
    let rest: Vec<String> = ls
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

/// Parses text format 0.0.4 sample lines; comments and blank lines are skipped.
/// Errors name the line.
pub fn parse_exposition(text: &str) -> Result<Vec<(LabelSet, TextSample)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<(LabelSet, TextSample), String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    if name_end == 0 {
        return Err("no metric name".into());
    }
    let mut labels = LabelSet::new();
    labels.insert("__name__".into(), line[..name_end].to_string());
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value_text = fields.next().ok_or("no value")?;
    let value = value_text
        .parse::<f64>()
        .map_err(|e| format!("value {value_text:?}: {e}"))?;
    let timestamp_ms = fields
        .next()
        .map(|t| {
            t.parse::<i64>()
                .map_err(|e| format!("timestamp {t:?}: {e}"))
        })
        .transpose()?;
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok((
        labels,
        TextSample {
            value,
            timestamp_ms,
        },
    ))
}

/// Parses `a="b",c="d"}` (the opening brace already consumed); returns what follows.
fn parse_labels<'a>(mut s: &'a str, labels: &mut LabelSet) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let (name, after) = s.split_once('=').ok_or("label without '='")?;
        let name = name.trim().to_string();
        let mut chars = after
            .strip_prefix('"')
            .ok_or("label value not quoted")?
            .char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("dangling escape".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.clone(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        s = after[1 + end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_escapes_values_and_timestamps() {
        let text = "# HELP x y\n# TYPE a counter\na 1\nb{x=\"1\",y=\"a\\\"b\\\\c\\nd\",} -Inf 17\n\nc{} NaN\nd{le=\"+Inf\"} 1.5e-07 -3\n";
        let got = parse_exposition(text).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(format_labels(&got[0].0), "a{}");
        assert_eq!(got[0].1.value, 1.0);
        assert_eq!(got[0].1.timestamp_ms, None);
        assert_eq!(got[1].0.get("y").map(String::as_str), Some("a\"b\\c\nd"));
        assert_eq!(got[1].1.value, f64::NEG_INFINITY);
        assert_eq!(got[1].1.timestamp_ms, Some(17));
        assert!(got[2].1.value.is_nan());
        assert_eq!(got[3].0.get("le").map(String::as_str), Some("+Inf"));
        assert_eq!(got[3].1.value.to_bits(), 1.5e-07f64.to_bits());
        assert_eq!(got[3].1.timestamp_ms, Some(-3));
        assert!(parse_exposition("a{x=\"1} 2").is_err());
        assert!(parse_exposition("a 1 2 3").is_err());
    }
}
