//! Envoy's generic matchers as the RBAC and JWT filters use them, compiled
//! at config time: `PathMatcher`, `MetadataMatcher` / `ValueMatcher` over a
//! request's dynamic metadata, and the `envoy.path.match.uri_template`
//! templates (`/api/*/items/**`) as anchored regexes.

use regex::Regex;

use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;

use super::route::{StringMatch, string_match};
use crate::error::ConfigError;

/// `envoy.type.matcher.v3.PathMatcher`: the path without query and fragment.
#[derive(Debug)]
pub struct PathMatcher(pub StringMatch);

impl PathMatcher {
    pub fn matches(&self, path: &str) -> bool {
        self.0.matches(strip_query(path))
    }
}

/// `:path` without its query string and fragment.
pub fn strip_query(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

impl TryFrom<&xds_matcher::PathMatcher> for PathMatcher {
    type Error = ConfigError;

    fn try_from(p: &xds_matcher::PathMatcher) -> Result<Self, ConfigError> {
        match &p.rule {
            Some(xds_matcher::path_matcher::Rule::Path(s)) => {
                Ok(PathMatcher(string_match(s).map_err(|e| e.under("path"))?))
            }
            None => Err(ConfigError::new("rule", "required")),
        }
    }
}

/// `envoy.type.matcher.v3.MetadataMatcher`: the value at `path` under the
/// `filter` namespace of the request's dynamic metadata.
#[derive(Debug)]
pub struct MetadataMatcher {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueMatcher,
    pub invert: bool,
}

impl MetadataMatcher {
    /// Envoy's Metadata::metadataValue then ValueMatcher::match, with invert.
    pub fn matches(&self, metadata: &crate::stream_info::DynamicMetadata) -> bool {
        let mut map = metadata.get(&self.filter);
        let mut found = None;
        for key in &self.path {
            found = map.and_then(|m| m.get(key));
            map = found.and_then(|v| v.as_object());
        }
        self.value.matches(found) != self.invert
    }
}

impl TryFrom<&xds_matcher::MetadataMatcher> for MetadataMatcher {
    type Error = ConfigError;

    fn try_from(m: &xds_matcher::MetadataMatcher) -> Result<Self, ConfigError> {
        use xds_matcher::metadata_matcher::path_segment::Segment;
        if m.filter.is_empty() {
            return Err(ConfigError::new("filter", "required"));
        }
        if m.path.is_empty() {
            return Err(ConfigError::new("path", "at least one segment is required"));
        }
        let path = m
            .path
            .iter()
            .enumerate()
            .map(|(i, s)| match &s.segment {
                Some(Segment::Key(k)) if !k.is_empty() => Ok(k.clone()),
                _ => Err(ConfigError::new(format!("path[{i}].key"), "required")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let value = m
            .value
            .as_ref()
            .ok_or_else(|| ConfigError::new("value", "required"))
            .and_then(|v| ValueMatcher::try_from(v).map_err(|e| e.under("value")))?;
        Ok(MetadataMatcher {
            filter: m.filter.clone(),
            path,
            value,
            invert: m.invert,
        })
    }
}

/// `envoy.type.matcher.v3.ValueMatcher` over a JSON value (protobuf Struct
/// semantics: numbers are doubles).
#[derive(Debug)]
pub enum ValueMatcher {
    Null,
    DoubleExact(f64),
    /// [start, end).
    DoubleRange(f64, f64),
    String(StringMatch),
    Bool(bool),
    Present(bool),
    /// A list with at least one element matching.
    ListOneOf(Box<ValueMatcher>),
    Or(Vec<ValueMatcher>),
}

impl ValueMatcher {
    pub fn matches(&self, v: Option<&serde_json::Value>) -> bool {
        use serde_json::Value as J;
        match (self, v) {
            // Envoy: present_match(true) matches any set value (null too);
            // present_match(false) only a missing one.
            (ValueMatcher::Present(p), v) => v.is_some() == *p,
            (ValueMatcher::Null, Some(J::Null)) => true,
            (ValueMatcher::DoubleExact(d), Some(J::Number(n))) => n.as_f64() == Some(*d),
            (ValueMatcher::DoubleRange(s, e), Some(J::Number(n))) => {
                n.as_f64().is_some_and(|x| x >= *s && x < *e)
            }
            (ValueMatcher::String(s), Some(J::String(x))) => s.matches(x),
            (ValueMatcher::Bool(b), Some(J::Bool(x))) => b == x,
            (ValueMatcher::ListOneOf(m), Some(J::Array(items))) => {
                items.iter().any(|i| m.matches(Some(i)))
            }
            (ValueMatcher::Or(ms), v) => ms.iter().any(|m| m.matches(v)),
            _ => false,
        }
    }
}

impl TryFrom<&xds_matcher::ValueMatcher> for ValueMatcher {
    type Error = ConfigError;

    fn try_from(v: &xds_matcher::ValueMatcher) -> Result<Self, ConfigError> {
        use xds_matcher::double_matcher::MatchPattern as D;
        use xds_matcher::value_matcher::MatchPattern as P;
        Ok(match &v.match_pattern {
            None => return Err(ConfigError::new("match_pattern", "required")),
            Some(P::NullMatch(_)) => ValueMatcher::Null,
            Some(P::DoubleMatch(d)) => match &d.match_pattern {
                Some(D::Exact(x)) => ValueMatcher::DoubleExact(*x),
                Some(D::Range(r)) => ValueMatcher::DoubleRange(r.start, r.end),
                None => return Err(ConfigError::new("double_match.match_pattern", "required")),
            },
            Some(P::StringMatch(s)) => {
                ValueMatcher::String(string_match(s).map_err(|e| e.under("string_match"))?)
            }
            Some(P::BoolMatch(b)) => ValueMatcher::Bool(*b),
            Some(P::PresentMatch(p)) => ValueMatcher::Present(*p),
            Some(P::ListMatch(l)) => match &l.match_pattern {
                Some(xds_matcher::list_matcher::MatchPattern::OneOf(one)) => {
                    ValueMatcher::ListOneOf(Box::new(
                        ValueMatcher::try_from(one.as_ref())
                            .map_err(|e| e.under("list_match.one_of"))?,
                    ))
                }
                None => return Err(ConfigError::new("list_match.one_of", "required")),
            },
            Some(P::OrMatch(o)) => ValueMatcher::Or(
                o.value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        ValueMatcher::try_from(m)
                            .map_err(|e| e.under(&format!("or_match.value_matchers[{i}]")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// An `envoy.path.match.uri_template` pattern, compiled: `*` is one path
/// segment, `**` any number of them (slashes included), `{name}` /
/// `{name=*}` / `{name=**}` the same with a name; the path (without query)
/// must match as a whole.
#[derive(Debug)]
pub struct UriTemplate {
    pub template: String,
    regex: Regex,
}

/// The characters Envoy's templates let a glob match (RFC 3986 pchar minus
/// `*`, with `=`).
const LITERAL: &str = r"a-zA-Z0-9\-._~%!$&'()+,;:@=";

impl UriTemplate {
    pub fn new(template: &str) -> Result<UriTemplate, ConfigError> {
        let bad = |why: &str| ConfigError::new("path_template", format!("{template:?}: {why}"));
        if !template.starts_with('/') {
            return Err(bad("must start with /"));
        }
        if template.len() > 256 {
            return Err(bad("longer than 256 characters"));
        }
        let mut re = String::from("^");
        let mut text_glob_seen = false;
        let mut glob = |op: &str, re: &mut String| -> Result<(), ConfigError> {
            if text_glob_seen {
                return Err(bad("no operator may follow **"));
            }
            match op {
                "*" => re.push_str(&format!("[{LITERAL}]+")),
                "**" => {
                    text_glob_seen = true;
                    re.push_str(&format!("[{LITERAL}/]*"));
                }
                _ => return Err(bad("unknown operator")),
            }
            Ok(())
        };
        let mut rest = &template[1..];
        re.push('/');
        let mut names = Vec::new();
        loop {
            let (segment, more) = match rest.split_once('/') {
                Some((s, m)) => (s, Some(m)),
                None => (rest, None),
            };
            match segment {
                "*" | "**" => glob(segment, &mut re)?,
                s if s.starts_with('{') && s.ends_with('}') => {
                    let inner = &s[1..s.len() - 1];
                    let (name, op) = inner.split_once('=').unwrap_or((inner, "*"));
                    let name_ok = !name.is_empty()
                        && name.len() <= 16
                        && name.starts_with(|c: char| c.is_ascii_alphabetic())
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !name_ok || names.contains(&name) {
                        return Err(bad("bad or repeated variable name"));
                    }
                    names.push(name);
                    if op != "*" && op != "**" {
                        return Err(bad("variables may only hold * or **"));
                    }
                    glob(op, &mut re)?;
                }
                s => {
                    let literal_ok = s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@=".contains(c));
                    if !literal_ok {
                        return Err(bad("invalid literal"));
                    }
                    re.push_str(&regex::escape(s));
                }
            }
            match more {
                Some(m) => {
                    re.push('/');
                    rest = m;
                }
                None => break,
            }
        }
        if names.len() > 5 {
            return Err(bad("more than 5 variables"));
        }
        re.push('$');
        let regex = Regex::new(&re).map_err(|e| bad(&e.to_string()))?;
        Ok(UriTemplate {
            template: template.to_string(),
            regex,
        })
    }

    /// Whether `path` (query and fragment ignored) matches.
    pub fn matches(&self, path: &str) -> bool {
        self.regex.is_match(strip_query(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_templates_match_segments_and_globs() {
        let t = UriTemplate::new("/path/template/*").unwrap();
        assert!(t.matches("/path/template/a"));
        assert!(t.matches("/path/template/a?x=1"));
        assert!(!t.matches("/path/template/"));
        assert!(!t.matches("/path/template/a/b"));
        let t = UriTemplate::new("/**/path/template").unwrap();
        assert!(!t.matches("/path/template"));
        assert!(t.matches("/a/b/path/template"));
        assert!(!t.matches("/a/b/path/templatex"));
        let t = UriTemplate::new("/api/{id}/items/{rest=**}").unwrap();
        assert!(t.matches("/api/7/items/x/y"));
        assert!(t.matches("/api/7/items/"));
        assert!(UriTemplate::new("/a/**/b/*").is_err());
        assert!(UriTemplate::new("no-slash").is_err());
    }

    #[test]
    fn value_matchers_follow_struct_semantics() {
        let v = serde_json::json!(["a", "bb"]);
        let m = ValueMatcher::ListOneOf(Box::new(ValueMatcher::String(StringMatch::Exact(
            "bb".into(),
            false,
        ))));
        assert!(m.matches(Some(&v)));
        assert!(!m.matches(Some(&serde_json::json!("bb"))));
        assert!(ValueMatcher::Present(true).matches(Some(&serde_json::json!(1))));
        assert!(!ValueMatcher::Present(true).matches(None));
    }
}
