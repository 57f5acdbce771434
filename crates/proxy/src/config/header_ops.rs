//! Envoy's header mutations at one level of a route (`request_headers_to_add`
//! / `_remove`, `response_headers_to_add` / `_remove` on a Route or a weighted
//! cluster): removals first, then additions in order, each with its
//! `append_action`. Values are literal (`%%` is a literal `%`); Envoy's
//! `%COMMAND%` substitutions are refused by name rather than sent through
//! unexpanded.

use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, header_value_option};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::ConfigError;

/// What an addition does when the header is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    /// Add another value (Envoy's default, and Istio's `add`).
    Append,
    /// Add only when absent.
    AddIfAbsent,
    /// Replace every value, or add (Istio's `set`).
    Overwrite,
    /// Replace when present, else do nothing.
    OverwriteIfExists,
}

/// The mutations of one direction at one level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub remove: Vec<HeaderName>,
    pub add: Vec<(HeaderName, HeaderValue, AppendAction)>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Apply to `headers`: removals, then additions in order.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, action) in &self.add {
            match action {
                AppendAction::Append => {
                    headers.append(name.clone(), value.clone());
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                AppendAction::Overwrite => {
                    headers.insert(name.clone(), value.clone());
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
        }
    }

    /// Parse `*_headers_to_add` and `*_headers_to_remove` (error paths are
    /// relative to the message holding them).
    pub fn parse(
        add: &[HeaderValueOption],
        remove: &[String],
        add_field: &str,
        remove_field: &str,
    ) -> Result<HeaderOps, ConfigError> {
        let mut ops = HeaderOps::default();
        for (i, name) in remove.iter().enumerate() {
            let at = format!("{remove_field}[{i}]");
            ops.remove.push(header_name(name, &at)?);
        }
        for (i, option) in add.iter().enumerate() {
            let at = format!("{add_field}[{i}]");
            let header = option
                .header
                .as_ref()
                .ok_or_else(|| ConfigError::new(format!("{at}.header"), "value is required"))?;
            let name = header_name(&header.key, &format!("{at}.header.key"))?;
            let text = literal(&header.value)
                .map_err(|reason| ConfigError::new(format!("{at}.header.value"), reason))?;
            #[allow(deprecated)]
            let action = match (
                &option.append,
                header_value_option::HeaderAppendAction::try_from(option.append_action),
            ) {
                (Some(_), Ok(a))
                    if a != header_value_option::HeaderAppendAction::AppendIfExistsOrAdd =>
                {
                    return Err(ConfigError::new(
                        at,
                        "Both append and append_action are set and it's not allowed",
                    ));
                }
                (Some(append), _) if !append.value => AppendAction::Overwrite,
                (_, Ok(header_value_option::HeaderAppendAction::AppendIfExistsOrAdd)) => {
                    AppendAction::Append
                }
                (_, Ok(header_value_option::HeaderAppendAction::AddIfAbsent)) => {
                    AppendAction::AddIfAbsent
                }
                (_, Ok(header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd)) => {
                    AppendAction::Overwrite
                }
                (_, Ok(header_value_option::HeaderAppendAction::OverwriteIfExists)) => {
                    AppendAction::OverwriteIfExists
                }
                (_, Err(_)) => {
                    return Err(ConfigError::new(
                        format!("{at}.append_action"),
                        "value must be one of the defined enum values",
                    ));
                }
            };
            // Envoy leaves out headers whose value is empty unless asked.
            if text.is_empty() && !option.keep_empty_value {
                continue;
            }
            let value = HeaderValue::from_str(&text).map_err(|_| {
                ConfigError::new(format!("{at}.header.value"), "not a valid header value")
            })?;
            ops.add.push((name, value, action));
        }
        Ok(ops)
    }
}

/// Both directions at one level; None where a level has no mutations, so a
/// route without any costs nothing per request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LevelHeaders {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl LevelHeaders {
    /// The four fields of a Route or a ClusterWeight.
    pub fn parse(
        req_add: &[HeaderValueOption],
        req_remove: &[String],
        resp_add: &[HeaderValueOption],
        resp_remove: &[String],
    ) -> Result<Option<std::sync::Arc<LevelHeaders>>, ConfigError> {
        let level = LevelHeaders {
            request: HeaderOps::parse(
                req_add,
                req_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?,
            response: HeaderOps::parse(
                resp_add,
                resp_remove,
                "response_headers_to_add",
                "response_headers_to_remove",
            )?,
        };
        Ok((!level.request.is_empty() || !level.response.is_empty())
            .then(|| std::sync::Arc::new(level)))
    }
}

/// A header name a route may mutate: not a pseudo-header, not `host`.
fn header_name(name: &str, at: &str) -> Result<HeaderName, ConfigError> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(':') || lower == "host" {
        return Err(ConfigError::new(
            at,
            format!("':'-prefixed or host headers may not be modified: {name}"),
        ));
    }
    HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| ConfigError::new(at, format!("invalid header name {name:?}")))
}

/// A header value with `%%` unescaped; any other `%...%` is a formatter we
/// do not run.
fn literal(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            out.push('%');
            rest = tail;
            continue;
        }
        let Some(end) = after.find('%') else {
            return Err(format!(
                "Invalid header configuration. Un-terminated variable expression '{value}'"
            ));
        };
        return Err(format!(
            "header formatter %{}% is not supported (only literal values; write %% for a '%')",
            &after[..end]
        ));
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue as XdsHeaderValue;
    use envoy_types::pb::google::protobuf::BoolValue;

    fn opt(key: &str, value: &str, action: i32) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(XdsHeaderValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append_action: action,
            ..Default::default()
        }
    }

    #[test]
    fn removals_then_additions_with_each_action() {
        let ops = HeaderOps::parse(
            &[
                opt("x-set", "new", 2),
                opt("x-add", "two", 0),
                opt("x-if-absent", "nope", 1),
                opt("x-if-exists", "never", 3),
                opt("x-percent", "100%%", 0),
                opt("x-empty", "", 0),
            ],
            &["x-gone".into()],
            "request_headers_to_add",
            "request_headers_to_remove",
        )
        .expect("parse");
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-set", "a"),
            ("x-set", "b"),
            ("x-add", "one"),
            ("x-if-absent", "kept"),
            ("x-gone", "bye"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        ops.apply(&mut h);
        let all = |k: &str| {
            h.get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-set"), ["new"]);
        assert_eq!(all("x-add"), ["one", "two"]);
        assert_eq!(all("x-if-absent"), ["kept"]);
        assert!(all("x-if-exists").is_empty());
        assert_eq!(all("x-percent"), ["100%"]);
        assert!(!h.contains_key("x-empty"), "empty values are left out");
        assert!(!h.contains_key("x-gone"));
    }

    #[test]
    fn refused_with_the_field_path() {
        let err = |add: &[HeaderValueOption], remove: &[String]| {
            HeaderOps::parse(
                add,
                remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )
            .expect_err("refused")
            .to_string()
        };
        assert!(
            err(&[opt(":authority", "x", 0)], &[]).contains("request_headers_to_add[0].header.key")
        );
        assert!(err(&[], &["host".into()]).contains("request_headers_to_remove[0]"));
        let e = err(&[opt("x-a", "%DOWNSTREAM_REMOTE_ADDRESS%", 0)], &[]);
        assert!(
            e.contains("request_headers_to_add[0].header.value")
                && e.contains("DOWNSTREAM_REMOTE_ADDRESS"),
            "{e}"
        );
        assert!(err(&[opt("x-a", "50%", 0)], &[]).contains("Un-terminated"));
        let mut both = opt("x-a", "v", 2);
        #[allow(deprecated)]
        {
            both.append = Some(BoolValue { value: true });
        }
        assert!(err(&[both], &[]).contains("Both append and append_action"));
    }

    #[test]
    fn deprecated_append_false_overwrites() {
        let mut o = opt("x-a", "v", 0);
        #[allow(deprecated)]
        {
            o.append = Some(BoolValue { value: false });
        }
        let ops = HeaderOps::parse(&[o], &[], "a", "r").expect("parse");
        assert_eq!(ops.add[0].2, AppendAction::Overwrite);
    }
}
