//! Series selectors as `match[]` takes them: `name{a="b",c!="d",e=~"f.*",g!~"h"}` or
//! `{__name__=~"..."}`.
//!
//! This is the plain PromQL vector-selector syntax and nothing more, so `/federate`
//! and `/api/v1/series` work before the PromQL issue lands; the tsdb converts
//! [`Matcher`] into its own index matchers. The rules follow Prometheus's: regexes are
//! fully anchored, strings are double-, single- or back-quoted with Go escapes, and a
//! selector must contain a matcher that does not match the empty string (otherwise it
//! would select every series there is). Errors name the 1-based character position.
//! Quoted UTF-8 metric and label names (Prometheus 3) are not supported.

use argus_common::model::Labels;
use regex::Regex;
use std::fmt;

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `=~` (anchored regex)
    Re,
    /// `!~` (anchored regex)
    Nre,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::Nre => "!~",
        }
    }
}

/// One label matcher. A missing label has the empty value, as in PromQL, so
/// `a!="x"` matches series without `a`. The metric name is the label `__name__`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

/// A selector that does not parse, with the 1-based character position of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position {position}: {message}")]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

/// Compiles `value` as Prometheus does: anchored at both ends, `.` matching newlines.
pub fn anchored_regex(value: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?s:{value})$"))
}

/// Parses a series selector into the metric name (when the selector fixes it, bare or
/// as `__name__="..."`) and the remaining matchers. Regexes are checked here so a bad
/// one is a 400 naming where it is.
pub fn parse_series_selector(s: &str) -> Result<(Option<String>, Vec<Matcher>), SelectorError> {
    let mut p = Parser { s, pos: 0 };
    p.skip_ws();
    let mut name = None;
    if p.peek()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
    {
        name = Some(p.ident(true));
        p.skip_ws();
    }
    let mut matchers = Vec::new();
    let mut brace = false;
    if p.peek() == Some('{') {
        brace = true;
        p.bump();
        loop {
            p.skip_ws();
            match p.peek() {
                Some('}') => {
                    p.bump();
                    break;
                }
                Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
                Some(c) => return Err(p.err(format!("expected label name or '}}', found {c:?}"))),
                None => return Err(p.err("unexpected end of selector: missing '}'")),
            }
            let label = p.ident(false);
            p.skip_ws();
            let op = p.op()?;
            p.skip_ws();
            let value_at = p.pos;
            let value = p.string()?;
            if matches!(op, MatchOp::Re | MatchOp::Nre)
                && let Err(e) = anchored_regex(&value)
            {
                return Err(p.err_at(value_at, format!("invalid regular expression: {e}")));
            }
            matchers.push(Matcher {
                name: label,
                op,
                value,
            });
            p.skip_ws();
            match p.peek() {
                Some(',') => p.bump(),
                Some('}') => {}
                Some(c) => return Err(p.err(format!("expected ',' or '}}', found {c:?}"))),
                None => return Err(p.err("unexpected end of selector: missing '}'")),
            }
        }
        p.skip_ws();
    }
    if let Some(c) = p.peek() {
        return Err(p.err(format!("unexpected {c:?} after the selector")));
    }
    if name.is_none() && !brace {
        return Err(p.err_at(0, "empty selector: expected a metric name or '{'"));
    }
    if let Some(n) = &name
        && let Some(m) = matchers
            .iter()
            .find(|m| m.name == "__name__" && m.op == MatchOp::Eq)
    {
        return Err(p.err_at(
            0,
            format!("metric name must not be set twice: {n:?} or {:?}", m.value),
        ));
    }
    if name.is_none()
        && let Some(i) = matchers
            .iter()
            .position(|m| m.name == "__name__" && m.op == MatchOp::Eq)
    {
        name = Some(matchers.remove(i).value);
    }
    let fixes_name = name.as_deref().is_some_and(|n| !n.is_empty());
    if !fixes_name && matchers.iter().all(matches_empty) {
        return Err(p.err_at(
            0,
            "vector selector must contain at least one non-empty matcher",
        ));
    }
    Ok((name, matchers))
}

/// Whether a matcher accepts a series that lacks its label.
fn matches_empty(m: &Matcher) -> bool {
    match m.op {
        MatchOp::Eq => m.value.is_empty(),
        MatchOp::Ne => !m.value.is_empty(),
        // Parsing checked the regex; an unparsable one never gets here.
        MatchOp::Re => anchored_regex(&m.value).is_ok_and(|r| r.is_match("")),
        MatchOp::Nre => anchored_regex(&m.value).is_ok_and(|r| !r.is_match("")),
    }
}

/// A selector ready to test series against, for endpoints that filter what the store
/// returns (and for tests).
#[derive(Debug, Clone)]
pub struct CompiledSelector {
    name: Option<String>,
    matchers: Vec<(Matcher, Option<Regex>)>,
}

impl CompiledSelector {
    /// Parses and compiles a selector.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let (name, matchers) = parse_series_selector(s)?;
        let matchers = matchers
            .into_iter()
            .map(|m| {
                let re = match m.op {
                    MatchOp::Re | MatchOp::Nre => {
                        Some(anchored_regex(&m.value).map_err(|e| SelectorError {
                            position: 1,
                            message: format!("invalid regular expression: {e}"),
                        })?)
                    }
                    MatchOp::Eq | MatchOp::Ne => None,
                };
                Ok((m, re))
            })
            .collect::<Result<_, SelectorError>>()?;
        Ok(CompiledSelector { name, matchers })
    }

    /// The metric name the selector fixes, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The matchers other than the fixed name.
    pub fn matchers(&self) -> impl Iterator<Item = &Matcher> {
        self.matchers.iter().map(|(m, _)| m)
    }

    /// Whether a series (metric name and labels without `__name__`) is selected.
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        if self.name.as_deref().is_some_and(|n| n != name) {
            return false;
        }
        self.matchers.iter().all(|(m, re)| {
            let value = if m.name == "__name__" {
                name
            } else {
                labels.get(&m.name).unwrap_or("")
            };
            match (m.op, re) {
                (MatchOp::Eq, _) => value == m.value,
                (MatchOp::Ne, _) => value != m.value,
                (MatchOp::Re, Some(re)) => re.is_match(value),
                (MatchOp::Nre, Some(re)) => !re.is_match(value),
                // Regex ops always carry their compiled regex.
                (MatchOp::Re | MatchOp::Nre, None) => false,
            }
        })
    }
}

struct Parser<'a> {
    s: &'a str,
    /// Byte offset into `s`.
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn err(&self, message: impl Into<String>) -> SelectorError {
        self.err_at(self.pos, message)
    }

    fn err_at(&self, byte: usize, message: impl Into<String>) -> SelectorError {
        SelectorError {
            position: self.s[..byte].chars().count() + 1,
            message: message.into(),
        }
    }

    /// A metric name (`colons` allowed) or label name; the caller checked the first char.
    fn ident(&mut self, colons: bool) -> String {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
        {
            self.bump();
        }
        self.s[start..self.pos].to_string()
    }

    fn op(&mut self) -> Result<MatchOp, SelectorError> {
        let rest = &self.s[self.pos..];
        let (op, len) = if rest.starts_with("=~") {
            (MatchOp::Re, 2)
        } else if rest.starts_with("!~") {
            (MatchOp::Nre, 2)
        } else if rest.starts_with("!=") {
            (MatchOp::Ne, 2)
        } else if rest.starts_with('=') {
            (MatchOp::Eq, 1)
        } else {
            return Err(self.err("expected one of =, !=, =~, !~"));
        };
        self.pos += len;
        Ok(op)
    }

    /// A quoted string: "..." or '...' with Go escapes, or `...` raw.
    fn string(&mut self) -> Result<String, SelectorError> {
        let open_at = self.pos;
        let quote = match self.peek() {
            Some(q @ ('"' | '\'' | '`')) => q,
            Some(c) => return Err(self.err(format!("expected a quoted string, found {c:?}"))),
            None => return Err(self.err("expected a quoted string, found the end")),
        };
        self.bump();
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err_at(open_at, "unterminated string"));
            };
            let at = self.pos;
            self.bump();
            if c == quote {
                return Ok(out);
            }
            if quote == '`' {
                out.push(c);
                continue;
            }
            if c == '\n' {
                return Err(self.err_at(at, "newline in string"));
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.peek() else {
                return Err(self.err_at(open_at, "unterminated string"));
            };
            self.bump();
            match e {
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\x0b'),
                '\\' => out.push('\\'),
                '"' if quote == '"' => out.push('"'),
                '\'' if quote == '\'' => out.push('\''),
                'x' => out.push(self.hex_escape(at, 2)?),
                'u' => out.push(self.hex_escape(at, 4)?),
                'U' => out.push(self.hex_escape(at, 8)?),
                '0'..='7' => {
                    let mut v = e as u32 - '0' as u32;
                    for _ in 0..2 {
                        match self.peek() {
                            Some(d @ '0'..='7') => {
                                v = v * 8 + (d as u32 - '0' as u32);
                                self.bump();
                            }
                            _ => return Err(self.err_at(at, "octal escape needs three digits")),
                        }
                    }
                    if v > 255 {
                        return Err(self.err_at(at, "octal escape above \\377"));
                    }
                    out.push(char::from(v as u8));
                }
                other => return Err(self.err_at(at, format!("unknown escape \\{other}"))),
            }
        }
    }

    fn hex_escape(&mut self, at: usize, digits: usize) -> Result<char, SelectorError> {
        let mut v = 0u32;
        for _ in 0..digits {
            let d = self
                .peek()
                .and_then(|c| c.to_digit(16))
                .ok_or_else(|| self.err_at(at, format!("escape needs {digits} hex digits")))?;
            v = v * 16 + d;
            self.bump();
        }
        char::from_u32(v).ok_or_else(|| self.err_at(at, "escape is not a valid character"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, op: MatchOp, value: &str) -> Matcher {
        Matcher {
            name: name.into(),
            op,
            value: value.into(),
        }
    }

    #[test]
    fn parses_names_and_every_operator() {
        let (name, ms) =
            parse_series_selector(r#"http_requests_total{a="b", c!="d",e=~"f.*",g!~'h',}"#)
                .unwrap();
        assert_eq!(name.as_deref(), Some("http_requests_total"));
        assert_eq!(
            ms,
            vec![
                m("a", MatchOp::Eq, "b"),
                m("c", MatchOp::Ne, "d"),
                m("e", MatchOp::Re, "f.*"),
                m("g", MatchOp::Nre, "h"),
            ]
        );
        let (name, ms) = parse_series_selector("job:rate5m").unwrap();
        assert_eq!(name.as_deref(), Some("job:rate5m"));
        assert!(ms.is_empty());
        let (name, ms) = parse_series_selector("  up { } ").unwrap();
        assert_eq!(name.as_deref(), Some("up"));
        assert!(ms.is_empty());
    }

    #[test]
    fn name_matchers_become_the_name_when_equal() {
        let (name, ms) = parse_series_selector(r#"{__name__="up",job="node"}"#).unwrap();
        assert_eq!(name.as_deref(), Some("up"));
        assert_eq!(ms, vec![m("job", MatchOp::Eq, "node")]);
        let (name, ms) = parse_series_selector(r#"{__name__=~"node_.*"}"#).unwrap();
        assert_eq!(name, None);
        assert_eq!(ms, vec![m("__name__", MatchOp::Re, "node_.*")]);
    }

    #[test]
    fn strings_follow_go_escapes() {
        let (_, ms) =
            parse_series_selector(r#"x{a="q\"b\\n\n\t\x41\u00e9\101", b='it\'s', c=`raw\n"`}"#)
                .unwrap();
        assert_eq!(ms[0].value, "q\"b\\n\n\tAéA");
        assert_eq!(ms[1].value, "it's");
        assert_eq!(ms[2].value, "raw\\n\"");
    }

    #[test]
    fn errors_name_the_position() {
        let e = parse_series_selector(r#"up{job="a" instance="b"}"#).unwrap_err();
        assert_eq!(e.position, 12);
        assert!(e.message.contains("expected ',' or '}'"), "{e}");
        let e = parse_series_selector(r#"up{job=~"a("}"#).unwrap_err();
        assert_eq!(e.position, 9);
        assert!(e.message.contains("invalid regular expression"), "{e}");
        let e = parse_series_selector(r#"up{job="a}"#).unwrap_err();
        assert_eq!(e.position, 8);
        assert!(e.message.contains("unterminated"), "{e}");
        let e = parse_series_selector(r#"up{job=a}"#).unwrap_err();
        assert_eq!((e.position, e.message.contains("quoted")), (8, true));
        let e = parse_series_selector(r#"up{job<"a"}"#).unwrap_err();
        assert_eq!(e.position, 7);
        let e = parse_series_selector(r#"up{1="a"}"#).unwrap_err();
        assert_eq!(e.position, 4);
        let e = parse_series_selector("up{").unwrap_err();
        assert!(e.message.contains("missing '}'"), "{e}");
        let e = parse_series_selector("up extra").unwrap_err();
        assert_eq!(e.position, 4);
        let e = parse_series_selector(r#"é{a="b"}"#).unwrap_err();
        assert_eq!(e.position, 1);
        assert_eq!(e.to_string(), format!("position 1: {}", e.message));
    }

    #[test]
    fn a_selector_must_not_match_everything() {
        for s in [
            "",
            "{}",
            r#"{a=""}"#,
            r#"{a=~".*"}"#,
            r#"{a!="x"}"#,
            r#"{a!~"x"}"#,
        ] {
            let e = parse_series_selector(s).unwrap_err();
            assert!(
                e.message.contains("non-empty matcher") || e.message.contains("empty selector"),
                "{s}: {e}"
            );
        }
        for s in [
            r#"{a="x"}"#,
            r#"{a!=""}"#,
            r#"{a=~".+"}"#,
            r#"{a!~".*"}"#,
            r#"{a="",b="c"}"#,
        ] {
            parse_series_selector(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        let e = parse_series_selector(r#"up{__name__="down"}"#).unwrap_err();
        assert!(e.message.contains("set twice"), "{e}");
    }

    #[test]
    fn compiled_selectors_match_like_promql() {
        let l = Labels::from_pairs([("job", "node"), ("instance", "h1:9100")]);
        let sel = |s: &str| CompiledSelector::parse(s).unwrap();
        assert!(sel("up").matches("up", &l));
        assert!(!sel("up").matches("down", &l));
        assert!(sel(r#"{__name__=~"u.",job="node"}"#).matches("up", &l));
        assert!(!sel(r#"{__name__=~"u"}"#).matches("up", &l), "anchored");
        assert!(sel(r#"up{instance=~"h1:.*"}"#).matches("up", &l));
        assert!(!sel(r#"up{instance=~"h1"}"#).matches("up", &l), "anchored");
        assert!(
            sel(r#"up{zone!="eu"}"#).matches("up", &l),
            "absent is empty"
        );
        assert!(sel(r#"up{zone=""}"#).matches("up", &l));
        assert!(!sel(r#"up{job=""}"#).matches("up", &l));
        assert!(sel(r#"up{job!~"x|y"}"#).matches("up", &l));
        assert!(sel(r#"up{job=~"(?i)NODE"}"#).matches("up", &l));
        let nl = Labels::from_pairs([("msg", "a\nb")]);
        assert!(
            sel(r#"up{msg=~"a.b"}"#).matches("up", &nl),
            "dot matches newline"
        );
    }
}
