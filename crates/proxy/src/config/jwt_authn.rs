//! `envoy.filters.http.jwt_authn` config (JwtAuthentication) as the proxy
//! runs it: providers with their issuer, audiences, inline JWKS (parsed
//! into public keys at config time), token locations and outputs; rules
//! (a route match and a requirement tree). Remote JWKS are not fetched:
//! Istio inlines them (the pilot fetches `jwksUri`), so `remote_jwks` NACKs.

use std::sync::Arc;

use base64::Engine as _;
use http::HeaderName;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as xds_jwt;

use super::route::RouteMatch;
use crate::error::ConfigError;

pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

/// Envoy's default `clock_skew_seconds`.
pub const DEFAULT_CLOCK_SKEW: u64 = 60;

#[derive(Debug)]
pub struct JwtAuthn {
    /// By name, sorted.
    pub providers: Vec<Arc<Provider>>,
    /// The first rule whose match matches decides; None = no requirement.
    pub rules: Vec<(RouteMatch, Option<Requirement>)>,
    pub bypass_cors_preflight: bool,
}

/// Where a provider looks for its token.
#[derive(Debug, Clone)]
pub enum Location {
    /// A header, with the prefix before the token (`Bearer `).
    Header(HeaderName, String),
    Param(String),
    Cookie(String),
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    /// Normalized (no scheme, no trailing slash), as Envoy compares them.
    pub audiences: Vec<String>,
    /// None: the JWKS did not parse (every token then fails, as Envoy).
    pub keys: Option<Vec<Jwk>>,
    pub locations: Vec<Location>,
    pub forward: bool,
    pub forward_payload_header: Option<HeaderName>,
    pub pad_forward_payload_header: bool,
    pub payload_in_metadata: Option<String>,
    pub clock_skew: u64,
    /// (header, claim path split at dots).
    pub claim_to_headers: Vec<(HeaderName, Vec<String>)>,
}

/// A requirement tree (JwtRequirement).
#[derive(Debug)]
pub enum Requirement {
    /// Index into `providers`.
    Provider(usize),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    AllowMissing,
    AllowMissingOrFailed,
}

/// One public key of a JWKS.
#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub key: PublicKey,
}

#[derive(Debug)]
pub enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (0x04 || x || y) on P-256, P-384 or P-521.
    Ec {
        crv: &'static str,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

/// Base64url, padding optional (as jwt_verify_lib decodes).
pub fn b64url(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    // absl's unescape (jwt_verify_lib's) skips whitespace.
    if s.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        return ENGINE.decode(compact).ok();
    }
    ENGINE.decode(s.as_bytes()).ok()
}

/// Envoy's audience normalization: no `http://`/`https://`, no trailing `/`.
pub fn normalize_audience(a: &str) -> &str {
    let a = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    a.strip_suffix('/').unwrap_or(a)
}

/// The keys of a JWKS document; None when it does not parse or holds no
/// usable key (jwt_verify_lib's JwksParseError / JwksNoValidKeys).
pub fn parse_jwks(text: &str) -> Option<Vec<Jwk>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let keys = v.get("keys")?.as_array()?;
    let mut out = Vec::new();
    for k in keys {
        let s = |f: &str| k.get(f).and_then(|v| v.as_str());
        let alg = s("alg").map(str::to_string);
        let key = match s("kty") {
            Some("RSA") => {
                if alg
                    .as_deref()
                    .is_some_and(|a| !a.starts_with("RS") && !a.starts_with("PS"))
                {
                    continue;
                }
                let (Some(n), Some(e)) = (s("n").and_then(b64url), s("e").and_then(b64url)) else {
                    continue;
                };
                PublicKey::Rsa { n, e }
            }
            Some("EC") => {
                let crv = match s("crv") {
                    Some("P-256") => "P-256",
                    Some("P-384") => "P-384",
                    Some("P-521") => "P-521",
                    _ => continue,
                };
                let (Some(x), Some(y)) = (s("x").and_then(b64url), s("y").and_then(b64url)) else {
                    continue;
                };
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                PublicKey::Ec { crv, point }
            }
            Some("OKP") if s("crv") == Some("Ed25519") => {
                let Some(x) = s("x").and_then(b64url).filter(|x| x.len() == 32) else {
                    continue;
                };
                PublicKey::Ed25519(x)
            }
            _ => continue,
        };
        out.push(Jwk {
            kid: s("kid").map(str::to_string),
            alg,
            key,
        });
    }
    (!out.is_empty()).then_some(out)
}

fn header_name(name: &str, at: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::new(at, format!("invalid header name {name:?}")))
}

impl Provider {
    fn parse(name: &str, p: &xds_jwt::JwtProvider) -> Result<Provider, ConfigError> {
        use xds_jwt::jwt_provider::JwksSourceSpecifier as J;
        if p.subjects.is_some() || p.max_lifetime.is_some() || p.require_expiration {
            return Err(ConfigError::new(
                "subjects",
                "subjects, max_lifetime and require_expiration are not supported",
            ));
        }
        let keys = match &p.jwks_source_specifier {
            Some(J::LocalJwks(ds)) => match &ds.specifier {
                Some(core::data_source::Specifier::InlineString(s)) => parse_jwks(s),
                Some(core::data_source::Specifier::InlineBytes(b)) => {
                    parse_jwks(&String::from_utf8_lossy(b))
                }
                _ => {
                    return Err(ConfigError::new(
                        "local_jwks",
                        "inline_string or inline_bytes required",
                    ));
                }
            },
            Some(J::RemoteJwks(_)) => {
                return Err(ConfigError::new(
                    "remote_jwks",
                    "not supported (inline the JWKS in local_jwks)",
                ));
            }
            None => return Err(ConfigError::new("jwks_source_specifier", "required")),
        };
        let mut locations = Vec::new();
        for (i, h) in p.from_headers.iter().enumerate() {
            locations.push(Location::Header(
                header_name(&h.name, &format!("from_headers[{i}].name"))?,
                h.value_prefix.clone(),
            ));
        }
        locations.extend(p.from_params.iter().cloned().map(Location::Param));
        locations.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
        if locations.is_empty() {
            // Envoy's defaults: `Authorization: Bearer <token>`, `?access_token=`.
            locations.push(Location::Header(
                http::header::AUTHORIZATION,
                "Bearer ".to_string(),
            ));
            locations.push(Location::Param("access_token".to_string()));
        }
        let forward_payload_header = (!p.forward_payload_header.is_empty())
            .then(|| header_name(&p.forward_payload_header, "forward_payload_header"))
            .transpose()?;
        let claim_to_headers = p
            .claim_to_headers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if !c.claim_path.is_empty() {
                    return Err(ConfigError::new(
                        format!("claim_to_headers[{i}].claim_path"),
                        "not supported (use claim_name)",
                    ));
                }
                Ok((
                    header_name(
                        &c.header_name,
                        &format!("claim_to_headers[{i}].header_name"),
                    )?,
                    c.claim_name.split('.').map(str::to_string).collect(),
                ))
            })
            .collect::<Result<_, _>>()?;
        Ok(Provider {
            name: name.to_string(),
            issuer: p.issuer.clone(),
            audiences: p
                .audiences
                .iter()
                .map(|a| normalize_audience(a).to_string())
                .collect(),
            keys,
            locations,
            forward: p.forward,
            forward_payload_header,
            pad_forward_payload_header: p.pad_forward_payload_header,
            payload_in_metadata: (!p.payload_in_metadata.is_empty())
                .then(|| p.payload_in_metadata.clone()),
            clock_skew: if p.clock_skew_seconds == 0 {
                DEFAULT_CLOCK_SKEW
            } else {
                u64::from(p.clock_skew_seconds)
            },
            claim_to_headers,
        })
    }
}

fn requirement(
    r: &xds_jwt::JwtRequirement,
    providers: &[Arc<Provider>],
) -> Result<Requirement, ConfigError> {
    use xds_jwt::jwt_requirement::RequiresType as R;
    let list = |reqs: &[xds_jwt::JwtRequirement], at: &str| {
        reqs.iter()
            .enumerate()
            .map(|(i, r)| {
                requirement(r, providers).map_err(|e| e.under(&format!("{at}.requirements[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &r.requires_type {
        Some(R::ProviderName(name)) => {
            Requirement::Provider(providers.iter().position(|p| &p.name == name).ok_or_else(
                || ConfigError::new("provider_name", format!("no provider named {name}")),
            )?)
        }
        Some(R::RequiresAny(l)) => Requirement::Any(list(&l.requirements, "requires_any")?),
        Some(R::RequiresAll(l)) => Requirement::All(list(&l.requirements, "requires_all")?),
        Some(R::AllowMissing(_)) => Requirement::AllowMissing,
        Some(R::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(R::ProviderAndAudiences(_)) => {
            return Err(ConfigError::new("provider_and_audiences", "not supported"));
        }
        Some(R::ExtractOnlyWithoutValidation(_)) => {
            return Err(ConfigError::new(
                "extract_only_without_validation",
                "not supported",
            ));
        }
        None => return Err(ConfigError::new("requires_type", "required")),
    })
}

impl TryFrom<&xds_jwt::JwtAuthentication> for JwtAuthn {
    type Error = ConfigError;

    fn try_from(j: &xds_jwt::JwtAuthentication) -> Result<Self, ConfigError> {
        use xds_jwt::requirement_rule::RequirementType;
        let mut names: Vec<&String> = j.providers.keys().collect();
        names.sort();
        let providers = names
            .into_iter()
            .map(|n| {
                Provider::parse(n, &j.providers[n])
                    .map(Arc::new)
                    .map_err(|e| e.under(&format!("providers[{n}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rules = j
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("rules[{i}]");
                let m = r
                    .r#match
                    .as_ref()
                    .ok_or_else(|| ConfigError::new(format!("{at}.match"), "required"))?;
                let m = RouteMatch::try_from(m).map_err(|e| e.under(&format!("{at}.match")))?;
                let req = match &r.requirement_type {
                    Some(RequirementType::Requires(req)) => Some(
                        requirement(req, &providers)
                            .map_err(|e| e.under(&format!("{at}.requires")))?,
                    ),
                    Some(RequirementType::RequirementName(_)) => {
                        return Err(ConfigError::new(
                            format!("{at}.requirement_name"),
                            "not supported",
                        ));
                    }
                    None => None,
                };
                Ok((m, req))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JwtAuthn {
            providers,
            rules,
            bypass_cors_preflight: j.bypass_cors_preflight,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_keys_parse_by_type() {
        let jwks = r#"{"keys": [
            {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
            {"kty": "oct", "k": "AAAA"}
        ]}"#;
        let keys = parse_jwks(jwks).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(parse_jwks("{}").is_none());
        assert!(parse_jwks("not json").is_none());
        assert_eq!(normalize_audience("https://api.example/"), "api.example");
    }
}
