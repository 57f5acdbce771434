//! Types shared by several networking.istio.io kinds: string matches,
//! percentages, destinations, ports, selectors and header operations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a request attribute (uri, header, method, ...) is matched.
///
/// In YAML it is a map with exactly one of `exact`, `prefix` or `regex`
/// (RE2 syntax). An empty map `{}` is `Present`: for `headers` and
/// `withoutHeaders` Istio reads it as "the header is present" (with any value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawStringMatch", into = "RawStringMatch")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
    /// `{}`: matches when the attribute is present, whatever its value.
    Present,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<RawStringMatch> for StringMatch {
    type Error = String;

    fn try_from(raw: RawStringMatch) -> Result<Self, String> {
        match (raw.exact, raw.prefix, raw.regex) {
            (None, None, None) => Ok(StringMatch::Present),
            (Some(s), None, None) => Ok(StringMatch::Exact(s)),
            (None, Some(s), None) => Ok(StringMatch::Prefix(s)),
            (None, None, Some(s)) => {
                check_regex(&s)?;
                Ok(StringMatch::Regex(s))
            }
            _ => Err("set only one of `exact`, `prefix` or `regex`".to_string()),
        }
    }
}

/// Rejects patterns that do not compile (Rust's `regex` accepts what
/// Envoy's RE2 accepts, bar rare extensions), so Envoy never NACKs them.
pub(crate) fn check_regex(pattern: &str) -> Result<(), String> {
    match regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let reason = text
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(text.lines().last().unwrap_or("invalid"));
            Err(format!("invalid regex `{pattern}`: {reason}"))
        }
    }
}

/// `deserialize_with` for a regex string field.
pub(crate) fn regex_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_regex(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

impl From<StringMatch> for RawStringMatch {
    fn from(m: StringMatch) -> Self {
        let mut raw = RawStringMatch::default();
        match m {
            StringMatch::Exact(s) => raw.exact = Some(s),
            StringMatch::Prefix(s) => raw.prefix = Some(s),
            StringMatch::Regex(s) => raw.regex = Some(s),
            StringMatch::Present => {}
        }
        raw
    }
}

impl StringMatch {
    /// Whether `value` matches (`Regex` is not evaluated here and never matches;
    /// compile it with the `regex` crate where it is used).
    pub fn matches_literal(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => s == value,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(_) => false,
            StringMatch::Present => true,
        }
    }
}

/// A percentage, `{value: 0.1}` meaning 0.1 %.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// `port: {number: 9080}` in a destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default)]
    pub number: u32,
}

/// Where traffic goes: a service host, optionally a subset and a port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// A port declaration (Gateway server, Sidecar listener, ServiceEntry port).
/// `protocol` is Istio's name (HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP, TLS, ...),
/// compared case-insensitively by Istio. `number` 0 means the port was absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    #[serde(default)]
    pub number: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// `workloadSelector: {labels: {...}}` (Sidecar, ServiceEntry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `workloadSelector: {matchLabels: {...}}` (DestinationRule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Header manipulation for requests and responses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// `set` overwrites, `add` appends, `remove` deletes headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(y: &str) -> Result<StringMatch, String> {
        serde_yaml_ng::from_str(y).map_err(|e| e.to_string())
    }

    #[test]
    fn string_match_forms() {
        assert_eq!(sm("{exact: a}").unwrap(), StringMatch::Exact("a".into()));
        assert_eq!(
            sm("{prefix: /api}").unwrap(),
            StringMatch::Prefix("/api".into())
        );
        assert_eq!(
            sm("{regex: '.*'}").unwrap(),
            StringMatch::Regex(".*".into())
        );
        assert_eq!(sm("{}").unwrap(), StringMatch::Present);
        assert_eq!(
            sm("{exact: 'true'}").unwrap(),
            StringMatch::Exact("true".into())
        );
    }

    #[test]
    fn string_match_errors() {
        let e = sm("{exact: a, prefix: b}").unwrap_err();
        assert!(e.contains("only one of"), "{e}");
        let e = sm("{exct: a}").unwrap_err();
        assert!(e.contains("unknown field `exct`"), "{e}");
        let e = sm("a").unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = sm("{regex: '(abc'}").unwrap_err();
        assert!(e.starts_with("invalid regex `(abc`: unclosed group"), "{e}");
        assert!(sm("{regex: '^/api/v[0-9]+/.*$'}").is_ok());
    }

    #[test]
    fn string_match_roundtrip_and_match() {
        for m in [
            StringMatch::Exact("x".into()),
            StringMatch::Prefix("/p".into()),
            StringMatch::Regex("r+".into()),
            StringMatch::Present,
        ] {
            let y = serde_yaml_ng::to_string(&m).unwrap();
            assert_eq!(sm(&y).unwrap(), m);
        }
        assert!(StringMatch::Prefix("/api".into()).matches_literal("/api/v1"));
        assert!(!StringMatch::Exact("/api".into()).matches_literal("/api/v1"));
        assert!(StringMatch::Present.matches_literal(""));
    }
}
