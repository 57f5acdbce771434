//! `corsPolicy` as Istio emits it: a per-route `envoy.filters.http.cors`
//! CorsPolicy (the HCM carries the filter itself, before the router).

use api::networking::{CorsPolicy as IstioCors, UnmatchedPreflights};
use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::BoolValue;

use super::route::string_matcher;
use crate::compile::str_match;

/// The CORS filter's name: the HCM's filter and the routes' per-filter key.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Istio's `TranslateCORSPolicy`: origins from `allowOrigins` (exact,
/// prefix or regex), else the deprecated exact `allowOrigin`; the lists
/// joined with `,`; `maxAge` in whole seconds; the filter enabled for 100%
/// of requests; unmatched preflights forwarded unless `IGNORE`.
pub fn policy(c: &IstioCors) -> CorsPolicy {
    let allow_origin_string_match: Vec<StringMatcher> = if !c.allow_origins.is_empty() {
        c.allow_origins
            .iter()
            .filter_map(|m| string_matcher(&str_match(m)))
            .collect()
    } else {
        c.allow_origin
            .iter()
            .map(|o| StringMatcher {
                match_pattern: Some(MatchPattern::Exact(o.clone())),
                ..Default::default()
            })
            .collect()
    };
    CorsPolicy {
        allow_origin_string_match,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.get().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: fractional_percent::DenominatorType::Hundred as i32,
            }),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue {
            value: c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
}
