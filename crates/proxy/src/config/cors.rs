//! `envoy.filters.http.cors`: the per-route `CorsPolicy` (the filter's own
//! config, `Cors`, is empty) as the CORS filter runs it.

use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use http::HeaderValue;

use super::fault::Fraction;
use super::route::{StringMatch, string_match};
use crate::error::ConfigError;

/// The filter's type and its per-route config's.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
pub const POLICY_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";

#[derive(Debug)]
pub struct CorsConfig {
    pub origins: Vec<StringMatch>,
    pub allow_methods: Option<HeaderValue>,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    /// `filter_enabled` (default: every request).
    pub enabled: Fraction,
    /// A preflight from an origin not allowed goes upstream (default) or
    /// is answered here without CORS headers.
    pub forward_not_matching_preflights: bool,
}

impl CorsConfig {
    /// Envoy's origin check: a matcher that matches `*` allows any origin.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }
}

impl TryFrom<&CorsPolicy> for CorsConfig {
    type Error = ConfigError;

    fn try_from(p: &CorsPolicy) -> Result<Self, ConfigError> {
        let origins = p
            .allow_origin_string_match
            .iter()
            .enumerate()
            .map(|(i, m)| {
                string_match(m).map_err(|e| e.under(&format!("allow_origin_string_match[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let value = |v: &str, at: &str| -> Result<Option<HeaderValue>, ConfigError> {
            if v.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(v)
                .map(Some)
                .map_err(|_| ConfigError::new(at, "not a valid header value"))
        };
        if !p.max_age.is_empty() && p.max_age.parse::<u64>().is_err() {
            return Err(ConfigError::new("max_age", "want whole seconds"));
        }
        let enabled = match &p.filter_enabled {
            Some(f) => Fraction::parse(f.default_value.as_ref(), "filter_enabled.default_value")?,
            None => Fraction {
                numerator: 1,
                denominator: 1,
            },
        };
        Ok(CorsConfig {
            origins,
            allow_methods: value(&p.allow_methods, "allow_methods")?,
            allow_headers: value(&p.allow_headers, "allow_headers")?,
            expose_headers: value(&p.expose_headers, "expose_headers")?,
            max_age: value(&p.max_age, "max_age")?,
            allow_credentials: p.allow_credentials.as_ref().is_some_and(|b| b.value),
            enabled,
            forward_not_matching_preflights: p
                .forward_not_matching_preflights
                .as_ref()
                .is_none_or(|b| b.value),
        })
    }
}
