//! `ConfigError`: one problem with one document, located by file, line and
//! column, and named by kind, namespace, name and field path, plus the
//! "did you mean" hint for misspelt field and enum names.

use std::fmt;
use std::path::PathBuf;

/// A problem with a document, printed as
/// `file:line:col: Kind namespace/name: field.path: message`.
///
/// Missing parts are left out: `file:line:col: Kind name: message` when the
/// document has no namespace or the error has no field, `file:line:col: message`
/// when the document could not be identified at all. `line` and `column` are
/// 1-based and count from the start of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl ConfigError {
    /// An error about a whole file or an unidentified document.
    pub fn new(file: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            line: line.max(1),
            column: 1,
            kind: None,
            namespace: None,
            name: None,
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        let who = match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
            (None, Some(name)) => Some(name.clone()),
            _ => None,
        };
        match (&self.kind, who) {
            (Some(kind), Some(who)) => write!(f, "{kind} {who}: ")?,
            (Some(kind), None) => write!(f, "{kind}: ")?,
            (None, Some(who)) => write!(f, "{who}: ")?,
            (None, None) => {}
        }
        if let Some(field) = self.field.as_deref().filter(|p| !p.is_empty() && *p != ".") {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" and
/// "unknown variant `X`, expected `A` or `B`" messages: the expected name
/// closest to `x` (edit distance at most 2), if any.
pub(crate) fn suggestion(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (unknown, rest) = rest.split_once('`')?;
    let (_, expected) = rest.split_once("expected")?;
    let candidates = expected.split('`').skip(1).step_by(2);
    let mut best: Option<(usize, &str)> = None;
    for cand in candidates {
        let d = edit_distance(unknown, cand);
        let d_ci = edit_distance(&unknown.to_ascii_lowercase(), &cand.to_ascii_lowercase());
        let d = d.min(d_ci);
        if d <= 2 && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, cand));
        }
    }
    best.map(|(_, c)| c.to_string())
}

/// Appends ", did you mean `x`?" to serde's unknown field/variant messages.
pub(crate) fn with_suggestion(message: String) -> String {
    match suggestion(&message) {
        Some(s) => format!("{message}, did you mean `{s}`?"),
        None => message,
    }
}

/// Levenshtein distance over chars (inputs are short field names).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 2 || a.len() > 256 || b.len() > 256 {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err() -> ConfigError {
        ConfigError {
            file: "a.yaml".into(),
            line: 3,
            column: 5,
            kind: Some("VirtualService".into()),
            namespace: Some("prod".into()),
            name: Some("reviews".into()),
            field: Some("spec.hosts".into()),
            message: "bad".into(),
        }
    }

    #[test]
    fn display_shapes() {
        assert_eq!(
            err().to_string(),
            "a.yaml:3:5: VirtualService prod/reviews: spec.hosts: bad"
        );
        let e = ConfigError {
            namespace: None,
            field: None,
            ..err()
        };
        assert_eq!(e.to_string(), "a.yaml:3:5: VirtualService reviews: bad");
        let e = ConfigError { name: None, ..e };
        assert_eq!(e.to_string(), "a.yaml:3:5: VirtualService: bad");
        assert_eq!(
            ConfigError::new("b.yml", 0, "oops").to_string(),
            "b.yml:1:1: oops"
        );
    }

    #[test]
    fn suggests_close_names() {
        let m = "unknown field `rout`, expected one of `name`, `match`, `route`, `redirect`";
        assert_eq!(suggestion(m).as_deref(), Some("route"));
        let m = "unknown variant `ROUND_ROBN`, expected one of `ROUND_ROBIN`, `RANDOM`";
        assert_eq!(suggestion(m).as_deref(), Some("ROUND_ROBIN"));
        let m = "unknown variant `round_robin`, expected `ROUND_ROBIN` or `RANDOM`";
        assert_eq!(suggestion(m).as_deref(), Some("ROUND_ROBIN"));
        let m = "unknown field `zzzzzz`, expected `name` or `labels`";
        assert_eq!(suggestion(m), None);
        assert_eq!(suggestion("unknown field `x`, there are no fields"), None);
        assert_eq!(suggestion("invalid type: integer"), None);
        assert_eq!(
            with_suggestion("unknown field `hostz`, expected `host`".into()),
            "unknown field `hostz`, expected `host`, did you mean `host`?"
        );
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("rout", "route"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
