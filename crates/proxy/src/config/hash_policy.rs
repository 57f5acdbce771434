//! `RouteAction.hash_policy`: what of a request feeds the consistent-hash
//! load balancers (RING_HASH, MAGLEV). The hash itself is computed by
//! `http::hash_policy`.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::route_action;

use super::duration;
use crate::error::ConfigError;

/// One `hash_policy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub source: HashSource,
    /// Stop at this policy when a hash has been produced so far.
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    /// A request header's values (lowercase name; `:authority`, `:path`
    /// and `:method` as Envoy's pseudo-headers).
    Header(String),
    /// A cookie; with a `ttl`, one is generated when the request has none
    /// and sent back in a `Set-Cookie`.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
    },
    /// The downstream peer's IP address.
    SourceIp,
    /// The first value of a query parameter (decoded).
    QueryParameter(String),
}

/// The route's hash policies; None when there are none (or none that can
/// produce a hash, e.g. `connection_properties {source_ip: false}`).
pub fn parse(
    policies: &[route_action::HashPolicy],
) -> Result<Option<Arc<[HashPolicy]>>, ConfigError> {
    use route_action::hash_policy::PolicySpecifier as P;
    let mut out = Vec::with_capacity(policies.len());
    for (i, p) in policies.iter().enumerate() {
        let at = |field: &str| format!("hash_policy[{i}].{field}");
        let source = match &p.policy_specifier {
            Some(P::Header(h)) => {
                let name = h.header_name.to_ascii_lowercase();
                let valid = match name.strip_prefix(':') {
                    Some(pseudo) => matches!(pseudo, "authority" | "path" | "method"),
                    None => http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
                };
                if !valid {
                    return Err(ConfigError::new(
                        at("header.header_name"),
                        format!("not a supported header name: {:?}", h.header_name),
                    ));
                }
                HashSource::Header(name)
            }
            Some(P::Cookie(c)) => {
                if c.name.is_empty() || c.name.contains([';', '=', ' ', '"', ',']) {
                    return Err(ConfigError::new(at("cookie.name"), "not a cookie name"));
                }
                if c.path.contains([';', '"']) || http::HeaderValue::from_str(&c.path).is_err() {
                    return Err(ConfigError::new(at("cookie.path"), "not a cookie path"));
                }
                let ttl = c
                    .ttl
                    .as_ref()
                    .map(|d| duration(d, &at("cookie.ttl")))
                    .transpose()?;
                HashSource::Cookie {
                    name: c.name.clone(),
                    ttl,
                    path: c.path.clone(),
                }
            }
            // Envoy adds no hash method without source_ip.
            Some(P::ConnectionProperties(c)) if !c.source_ip => continue,
            Some(P::ConnectionProperties(_)) => HashSource::SourceIp,
            Some(P::QueryParameter(q)) => {
                if q.name.is_empty() {
                    return Err(ConfigError::new(at("query_parameter.name"), "required"));
                }
                HashSource::QueryParameter(q.name.clone())
            }
            Some(P::FilterState(_)) => {
                return Err(ConfigError::new(at("filter_state"), "unsupported field"));
            }
            None => {
                return Err(ConfigError::new(
                    format!("hash_policy[{i}]"),
                    "one of header, cookie, connection_properties or query_parameter required",
                ));
            }
        };
        out.push(HashPolicy {
            source,
            terminal: p.terminal,
        });
    }
    Ok((!out.is_empty()).then(|| out.into()))
}
