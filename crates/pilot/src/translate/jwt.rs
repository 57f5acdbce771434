//! RequestAuthentication -> `envoy.filters.http.jwt_authn`, in Istio's shape
//! (`pilot/pkg/security/authn`): one provider `origins-N` per JWT rule of the
//! policies that apply to the workload, the keys inline (`jwks`, or the
//! `jwksUri` document the pilot fetched, see [`crate::jwks`]), the verified
//! payload in the filter's dynamic metadata under `payload` (what the RBAC
//! `requestPrincipals` and `request.auth.*` matchers read), and a requirement
//! that lets a request without a token through but rejects an invalid one:
//! one provider `requires_any [provider, allow_missing]`; several
//! `requires_any [requires_any [providers], requires_all [each or missing]]`.

use std::collections::BTreeMap;

use api::security::{JwtRule, RequestAuthentication};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use serde_json::{Map, Value, json};

pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
const JWT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

/// The JWKS inlined when a `jwksUri` could not be fetched (as istiod does):
/// a well-formed RSA key whose private half was never kept, so every token
/// fails verification (401) instead of the filter being left out.
pub const FAKE_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"halyard-unfetchable-jwks","alg":"RS256","use":"sig","e":"AQAB","n":"s2O2HvRriEbnrRhIZeyR8BYc7Z2pk_qLaP5WzugTLv8JqPaSY0QCP2LuIK_7W_9JTr18LrYmXwtHbVEO9x_qNG4I4fdVEQhtYieE-0TMiLFAlG-Cvsf8fbWqUb7kotkReb7RajArlayyIvSo4gGVSFS_tKrS3bITw4yAuOUJ3Vv63wVI_DfHM9SogLPM1A1mONRlD3UkA4qdSYHBLEFBGmY73WmEGyCssKBWDeIGEKpGg_lqGdFmFsjImHiLk__gRyrg_hleXT4VQNWbHvbbeFPMEzlknQgUO9mnf95tFupXmuVxMoFNejp7uzxjITGer85F83X3HEauDA79RZ-R4Q"}]}"#;

/// A RequestAuthentication as loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtPolicy {
    pub namespace: String,
    pub name: String,
    pub spec: RequestAuthentication,
}

/// The policies that apply to a sidecar workload: root-namespace ones, then
/// the workload namespace's, each without a selector or with a matching one
/// (`targetRef(s)` ones attach to gateways, not sidecars).
pub fn applicable<'a>(
    policies: &'a [JwtPolicy],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a JwtPolicy> {
    let applies = |p: &&JwtPolicy| {
        p.spec.target_ref.is_none()
            && p.spec.target_refs.is_empty()
            && p.spec
                .selector
                .as_ref()
                .is_none_or(|s| crate::model::labels_match(&s.match_labels, labels))
    };
    let mut out: Vec<&JwtPolicy> = policies
        .iter()
        .filter(|p| p.namespace == root_namespace)
        .filter(applies)
        .collect();
    if namespace != root_namespace {
        out.extend(
            policies
                .iter()
                .filter(|p| p.namespace == namespace)
                .filter(applies),
        );
    }
    out
}

/// The jwt_authn config (Envoy JSON with `@type`) for the policies, None
/// when they have no JWT rule. `jwks_for_uri` answers a `jwksUri` with the
/// fetched document (None: not fetched, the fake key is inlined).
pub fn filter_json(
    policies: &[&JwtPolicy],
    jwks_for_uri: &dyn Fn(&str) -> Option<String>,
) -> Option<Value> {
    let rules: Vec<&JwtRule> = policies.iter().flat_map(|p| &p.spec.jwt_rules).collect();
    if rules.is_empty() {
        return None;
    }
    let mut providers = Map::new();
    let mut each_or_missing = Vec::new();
    let mut any_provider = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        providers.insert(name.clone(), provider(r, jwks_for_uri));
        each_or_missing.push(json!({"requiresAny": {"requirements": [
            {"providerName": name}, {"allowMissing": {}}]}}));
        any_provider.push(json!({"providerName": name}));
    }
    let requires = if each_or_missing.len() == 1 {
        each_or_missing.remove(0)
    } else {
        json!({"requiresAny": {"requirements": [
            {"requiresAny": {"requirements": any_provider}},
            {"requiresAll": {"requirements": each_or_missing}},
        ]}})
    };
    Some(json!({
        "@type": JWT_TYPE,
        "providers": providers,
        "rules": [{"match": {"prefix": "/"}, "requires": requires}],
        "bypassCorsPreflight": true,
    }))
}

fn provider(r: &JwtRule, jwks_for_uri: &dyn Fn(&str) -> Option<String>) -> Value {
    let mut p = Map::new();
    p.insert("issuer".into(), json!(r.issuer));
    if !r.audiences.is_empty() {
        p.insert("audiences".into(), json!(r.audiences));
    }
    let jwks = match (&r.jwks, &r.jwks_uri) {
        (Some(inline), _) if !inline.is_empty() => inline.clone(),
        (_, Some(uri)) if !uri.is_empty() => {
            jwks_for_uri(uri).unwrap_or_else(|| FAKE_JWKS.to_string())
        }
        _ => FAKE_JWKS.to_string(),
    };
    p.insert("localJwks".into(), json!({"inlineString": jwks}));
    if r.forward_original_token {
        p.insert("forward".into(), json!(true));
    }
    if !r.from_headers.is_empty() {
        let headers: Vec<Value> = r
            .from_headers
            .iter()
            .map(|h| match h.prefix.as_deref() {
                Some(prefix) if !prefix.is_empty() => {
                    json!({"name": h.name, "valuePrefix": prefix})
                }
                _ => json!({"name": h.name}),
            })
            .collect();
        p.insert("fromHeaders".into(), json!(headers));
    }
    if !r.from_params.is_empty() {
        p.insert("fromParams".into(), json!(r.from_params));
    }
    if !r.from_cookies.is_empty() {
        p.insert("fromCookies".into(), json!(r.from_cookies));
    }
    if let Some(h) = r
        .output_payload_to_header
        .as_deref()
        .filter(|h| !h.is_empty())
    {
        p.insert("forwardPayloadHeader".into(), json!(h));
    }
    if !r.output_claim_to_headers.is_empty() {
        let claims: Vec<Value> = r
            .output_claim_to_headers
            .iter()
            .map(|c| json!({"headerName": c.header, "claimName": c.claim}))
            .collect();
        p.insert("claimToHeaders".into(), json!(claims));
    }
    p.insert("payloadInMetadata".into(), json!("payload"));
    Value::Object(p)
}

/// The jwt_authn HTTP filter, None without JWT rules.
pub fn http_filter(
    policies: &[&JwtPolicy],
    jwks_for_uri: &dyn Fn(&str) -> Option<String>,
) -> Option<HttpFilter> {
    let config = filter_json(policies, jwks_for_uri)?;
    match super::authz::json_any(&config) {
        Ok(any) => Some(HttpFilter {
            name: JWT_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any)),
            ..Default::default()
        }),
        Err(e) => {
            tracing::error!(error = %e, "dropping the jwt_authn filter");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> JwtPolicy {
        JwtPolicy {
            namespace: "foo".into(),
            name: "jwt".into(),
            spec: serde_yaml_ng::from_str(yaml).expect("spec"),
        }
    }

    #[test]
    fn one_rule_allows_a_missing_token() {
        let p = policy(
            "jwtRules: [{issuer: iss, jwks: '{\"keys\":[]}', forwardOriginalToken: true, fromHeaders: [{name: x-jwt, prefix: 'Bearer '}]}]",
        );
        let v = filter_json(&[&p], &|_| None).expect("filter");
        assert_eq!(
            v["rules"][0]["requires"],
            json!({"requiresAny": {"requirements": [{"providerName": "origins-0"}, {"allowMissing": {}}]}})
        );
        let o = &v["providers"]["origins-0"];
        assert_eq!(o["payloadInMetadata"], "payload");
        assert_eq!(o["forward"], true);
        assert_eq!(o["fromHeaders"][0]["valuePrefix"], "Bearer ");
        super::super::authz::json_any(&v).expect("a valid JwtAuthentication");
    }

    #[test]
    fn an_unfetched_jwks_uri_inlines_the_fake_key() {
        let p = policy(
            "jwtRules: [{issuer: a, jwksUri: 'http://x/jwks'}, {issuer: b, jwksUri: 'http://y/jwks'}]",
        );
        let v = filter_json(&[&p], &|u| {
            (u == "http://y/jwks").then(|| "{\"keys\":[]}".into())
        })
        .expect("filter");
        assert_eq!(
            v["providers"]["origins-0"]["localJwks"]["inlineString"],
            FAKE_JWKS
        );
        assert_eq!(
            v["providers"]["origins-1"]["localJwks"]["inlineString"],
            "{\"keys\":[]}"
        );
        assert!(
            v["rules"][0]["requires"]["requiresAny"]["requirements"][1]["requiresAll"].is_object()
        );
    }
}
