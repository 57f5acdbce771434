//! AuthorizationPolicy -> Envoy RBAC (and ext_authz for CUSTOM), in the
//! shape Istio's builder emits (`pilot/pkg/security/authz/{builder,model}`):
//! one `envoy.filters.http.rbac` (HTTP chains) or `envoy.filters.network.rbac`
//! (TCP chains) per action group, in the order AUDIT, DENY, ALLOW, with
//! CUSTOM's shadow RBAC + ext_authz pair before them; dry-run policies
//! (`istio.io/dry-run: "true"`) become `shadow_rules`.
//!
//! Each rule is a policy named `ns[NS]-policy[NAME]-rule[I]`; its `from`
//! entries are ORed principals, its `to` entries ORed permissions, and each
//! `when` condition is ANDed into every principal (source/JWT/header keys)
//! or every permission (destination/SNI/metadata keys).
//!
//! TCP chains: a field that needs HTTP (methods, paths, hosts, JWT claims,
//! headers) makes an ALLOW rule never match (the rule is dropped), and is left
//! out of a DENY/AUDIT rule (which then matches more), so a TCP connection is
//! never allowed by an HTTP-only condition nor let through a DENY by one.

use std::collections::BTreeMap;

use api::mesh_config::MeshExtensionProvider;
use api::security::{AuthorizationAction, AuthorizationPolicy, Rule};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde_json::{Map, Value, json};

pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const TCP_RBAC: &str = "envoy.filters.network.rbac";
pub const HTTP_EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
pub const TCP_EXT_AUTHZ: &str = "envoy.filters.network.ext_authz";
const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
const RBAC_HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_TCP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const EXT_AUTHZ_HTTP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const EXT_AUTHZ_TCP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";
const URI_TEMPLATE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";
const TCP_STAT_PREFIX: &str = "tcp.";
const SHADOW_ALLOW_PREFIX: &str = "istio_dry_run_allow_";
const SHADOW_DENY_PREFIX: &str = "istio_dry_run_deny_";
const EXT_AUTHZ_SHADOW_PREFIX: &str = "istio_ext_authz_";
const EXT_AUTHZ_MATCH_PREFIX: &str = "istio-ext-authz";
const BAD_CUSTOM_SUFFIX: &str = "-deny-due-to-bad-CUSTOM-action";
/// The `istio.io/dry-run` annotation.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// An AuthorizationPolicy as loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthzPolicy {
    pub namespace: String,
    pub name: String,
    /// `istio.io/dry-run: "true"`: evaluated and counted, never enforced.
    pub dry_run: bool,
    pub spec: AuthorizationPolicy,
}

/// Is the `istio.io/dry-run` annotation true (Go's `strconv.ParseBool`)?
pub fn dry_run(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

impl AuthzPolicy {
    pub fn action(&self) -> AuthorizationAction {
        self.spec.action.unwrap_or(AuthorizationAction::Allow)
    }
}

/// The policies that apply to a sidecar workload (Istio's
/// `ListAuthorizationPolicies`): those of the root namespace and of the
/// workload's namespace, without a selector or with one matching the labels.
/// `targetRef(s)` policies attach to gateways and services, never to a
/// sidecar by its labels.
pub fn applicable<'a>(
    policies: &'a [AuthzPolicy],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a AuthzPolicy> {
    policies
        .iter()
        .filter(|p| p.namespace == root_namespace || p.namespace == namespace)
        .filter(|p| p.spec.target_ref.is_none() && p.spec.target_refs.is_empty())
        .filter(|p| {
            p.spec
                .selector
                .as_ref()
                .is_none_or(|s| crate::model::labels_match(&s.match_labels, labels))
        })
        .collect()
}

/// Everything the builder reads besides the policies.
pub struct Context<'a> {
    /// The trust domain, then its aliases (`cluster.local` without mesh TLS).
    pub trust_domains: Vec<String>,
    /// meshConfig `extensionProviders`.
    pub providers: &'a [MeshExtensionProvider],
    /// A service's hostname from an extension provider's `service`
    /// (`[NAMESPACE/]HOST`): namespace (None: any) and host.
    pub resolve_service: &'a dyn Fn(Option<&str>, &str) -> Option<String>,
}

/// The HTTP filters for the policies, in Istio's order (CUSTOM, AUDIT, DENY,
/// ALLOW), as (filter name, typed config as Envoy JSON with `@type`).
pub fn http_filters_json(policies: &[&AuthzPolicy], cx: &Context<'_>) -> Vec<(String, Value)> {
    build(policies, cx, false)
}

/// The network filters for a TCP chain, as for [`http_filters_json`].
pub fn tcp_filters_json(policies: &[&AuthzPolicy], cx: &Context<'_>) -> Vec<(String, Value)> {
    build(policies, cx, true)
}

/// The HTTP filters for the policies, ready for an HTTP connection manager.
pub fn http_filters(policies: &[&AuthzPolicy], cx: &Context<'_>) -> Vec<HttpFilter> {
    to_http(http_filters_json(policies, cx))
}

fn to_http(built: Built) -> Vec<HttpFilter> {
    built
        .into_iter()
        .filter_map(|(name, config)| match json_any(&config) {
            Ok(any) => Some(HttpFilter {
                name,
                config_type: Some(http_filter::ConfigType::TypedConfig(any)),
                ..Default::default()
            }),
            Err(e) => {
                tracing::error!(filter = %name, error = %e, "dropping an authz filter");
                None
            }
        })
        .collect()
}

/// The network filters for a TCP chain.
pub fn tcp_filters(policies: &[&AuthzPolicy], cx: &Context<'_>) -> Vec<Filter> {
    to_tcp(tcp_filters_json(policies, cx))
}

fn to_tcp(built: Built) -> Vec<Filter> {
    built
        .into_iter()
        .filter_map(|(name, config)| match json_any(&config) {
            Ok(any) => Some(Filter {
                name,
                config_type: Some(filter::ConfigType::TypedConfig(any)),
            }),
            Err(e) => {
                tracing::error!(filter = %name, error = %e, "dropping an authz filter");
                None
            }
        })
        .collect()
}

/// Envoy JSON (camelCase or snake_case names, `@type` naming the message)
/// into an `Any`, through the Envoy descriptor pool.
pub fn json_any(value: &Value) -> Result<Any, String> {
    let type_url = value
        .get("@type")
        .and_then(Value::as_str)
        .ok_or("no @type")?
        .to_string();
    let name = type_url.rsplit('/').next().unwrap_or_default();
    let desc = xds::json::pool()
        .get_message_by_name(name)
        .ok_or_else(|| format!("unknown message type {name}"))?;
    let mut body = value.clone();
    if let Value::Object(m) = &mut body {
        m.remove("@type");
    }
    let text = body.to_string();
    let mut de = serde_json::Deserializer::from_str(&text);
    let msg = DynamicMessage::deserialize_with_options(
        desc,
        &mut de,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| e.to_string())?;
    Ok(Any {
        type_url,
        value: prost::Message::encode_to_vec(&msg),
    })
}

// ------------------------------------------------------------------ builder

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Log,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Log => "LOG",
        }
    }
}

/// An RBAC rule set: action and named policies.
struct RuleSet {
    action: Action,
    policies: Map<String, Value>,
}

impl RuleSet {
    fn new(action: Action) -> Self {
        RuleSet {
            action,
            policies: Map::new(),
        }
    }
    fn json(&self) -> Value {
        json!({"action": self.action.name(), "policies": Value::Object(self.policies.clone())})
    }
}

/// A policy that never matches (an ALLOW or DENY without rules).
fn match_never() -> Value {
    json!({"permissions": [{"notRule": {"any": true}}], "principals": [{"notId": {"any": true}}]})
}

fn policy_name(ns: &str, name: &str, rule: usize, provider: Option<&str>) -> String {
    let prefix = match provider {
        Some(p) => format!("{EXT_AUTHZ_MATCH_PREFIX}-{p}-"),
        None => String::new(),
    };
    format!("{prefix}ns[{ns}]-policy[{name}]-rule[{rule}]")
}

/// Add the policy's rules to `set`.
fn add_policy(
    set: &mut RuleSet,
    p: &AuthzPolicy,
    provider: Option<&str>,
    tds: &[String],
    for_tcp: bool,
) {
    for (i, rule) in p.spec.rules.iter().enumerate() {
        let name = policy_name(&p.namespace, &p.name, i, provider);
        let Ok(mut m) = Model::new(&p.namespace, rule) else {
            tracing::debug!(rule = %name, "skipped invalid rule");
            continue;
        };
        m.migrate_trust_domain(tds);
        match m.generate(for_tcp, set.action) {
            Ok(generated) => {
                set.policies.insert(name, generated);
            }
            Err(e) => tracing::debug!(rule = %name, error = %e, "skipped rule"),
        }
    }
    if p.spec.rules.is_empty() {
        set.policies.insert(
            policy_name(&p.namespace, &p.name, 0, provider),
            match_never(),
        );
    }
}

/// Enforced and dry-run rule sets of a group of policies of one action
/// (None when the group has no policy of that kind).
fn rule_sets(
    policies: &[&AuthzPolicy],
    action: Action,
    tds: &[String],
    for_tcp: bool,
) -> Option<(Option<RuleSet>, Option<RuleSet>)> {
    if policies.is_empty() {
        return None;
    }
    let mut enforce = RuleSet::new(action);
    let mut shadow = RuleSet::new(action);
    let (mut has_enforce, mut has_shadow) = (false, false);
    for p in policies {
        if p.dry_run {
            has_shadow = true;
            add_policy(&mut shadow, p, None, tds, for_tcp);
        } else {
            has_enforce = true;
            add_policy(&mut enforce, p, None, tds, for_tcp);
        }
    }
    Some((has_enforce.then_some(enforce), has_shadow.then_some(shadow)))
}

fn shadow_stat_prefix(shadow: Option<&RuleSet>) -> Option<&'static str> {
    // Istio derives it from the shadow rules' action, ALLOW when there are none.
    match shadow.map_or(Action::Allow, |s| s.action) {
        Action::Allow => Some(SHADOW_ALLOW_PREFIX),
        Action::Deny => Some(SHADOW_DENY_PREFIX),
        Action::Log => None,
    }
}

fn rbac_filter(
    for_tcp: bool,
    rules: Option<&RuleSet>,
    shadow: Option<&RuleSet>,
    shadow_prefix: Option<&str>,
) -> (String, Value) {
    let mut m = Map::new();
    m.insert(
        "@type".into(),
        json!(if for_tcp {
            RBAC_TCP_TYPE
        } else {
            RBAC_HTTP_TYPE
        }),
    );
    if let Some(r) = rules {
        m.insert("rules".into(), r.json());
    }
    if let Some(s) = shadow {
        m.insert("shadowRules".into(), s.json());
    }
    if let Some(p) = shadow_prefix {
        m.insert("shadowRulesStatPrefix".into(), json!(p));
    }
    if for_tcp {
        m.insert("statPrefix".into(), json!(TCP_STAT_PREFIX));
    }
    let name = if for_tcp { TCP_RBAC } else { HTTP_RBAC };
    (name.to_string(), Value::Object(m))
}

fn build(policies: &[&AuthzPolicy], cx: &Context<'_>, for_tcp: bool) -> Vec<(String, Value)> {
    let (mut custom, rest) = build_split(policies, cx, for_tcp);
    custom.extend(rest);
    custom
}

/// Built filters: (name, typed config as Envoy JSON).
type Built = Vec<(String, Value)>;

/// The CUSTOM filters, and the AUDIT/DENY/ALLOW ones: Istio's inbound HTTP
/// chain puts jwt_authn between the two.
fn build_split(policies: &[&AuthzPolicy], cx: &Context<'_>, for_tcp: bool) -> (Built, Built) {
    let by = |a: AuthorizationAction| -> Vec<&AuthzPolicy> {
        policies
            .iter()
            .copied()
            .filter(|p| p.action() == a)
            .collect()
    };
    let tds = &cx.trust_domains;
    let custom = build_custom(&by(AuthorizationAction::Custom), cx, for_tcp);
    let mut out = Vec::new();
    for (action, group) in [
        (Action::Log, by(AuthorizationAction::Audit)),
        (Action::Deny, by(AuthorizationAction::Deny)),
        (Action::Allow, by(AuthorizationAction::Allow)),
    ] {
        if let Some((rules, shadow)) = rule_sets(&group, action, tds, for_tcp) {
            out.push(rbac_filter(
                for_tcp,
                rules.as_ref(),
                shadow.as_ref(),
                shadow_stat_prefix(shadow.as_ref()),
            ));
        }
    }
    (custom, out)
}

/// CUSTOM: per provider (sorted), a shadow RBAC that marks the requests the
/// policies select (dynamic metadata `istio_ext_authz_shadow_effective_policy_id`
/// prefixed `istio-ext-authz-PROVIDER`), then the ext_authz filter enabled by
/// that metadata. A provider that cannot be built, or more than one provider
/// on a workload, turns the policies into DENY rules instead (fail closed).
fn build_custom(
    policies: &[&AuthzPolicy],
    cx: &Context<'_>,
    for_tcp: bool,
) -> Vec<(String, Value)> {
    if policies.is_empty() {
        return Vec::new();
    }
    let mut by_provider: BTreeMap<String, (RuleSet, RuleSet)> = BTreeMap::new();
    for p in policies {
        let provider = p
            .spec
            .provider
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let (enforce, shadow) = by_provider
            .entry(provider.clone())
            .or_insert_with(|| (RuleSet::new(Action::Deny), RuleSet::new(Action::Deny)));
        let set = if p.dry_run { shadow } else { enforce };
        add_policy(set, p, Some(&provider), &cx.trust_domains, for_tcp);
    }
    let bad = |enforce: &RuleSet| {
        let mut set = RuleSet::new(Action::Deny);
        for (k, v) in &enforce.policies {
            set.policies
                .insert(format!("{k}{BAD_CUSTOM_SUFFIX}"), v.clone());
        }
        rbac_filter(for_tcp, Some(&set), None, None)
    };
    if by_provider.len() > 1 {
        tracing::warn!(
            "more than one CUSTOM provider on a workload: denying the requests its CUSTOM policies select"
        );
        return by_provider.values().map(|(e, _)| bad(e)).collect();
    }
    let mut out = Vec::new();
    for (provider, (enforce, shadow)) in &by_provider {
        let built = match ext_authz(cx, provider) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(provider = %provider, error = %e, "bad CUSTOM provider: denying");
                out.push(bad(enforce));
                continue;
            }
        };
        let (config, name) = if for_tcp {
            match built.tcp {
                Some(t) => (t, TCP_EXT_AUTHZ),
                None => continue, // an HTTP provider does not apply to TCP
            }
        } else {
            (built.http, HTTP_EXT_AUTHZ)
        };
        let rules = (!shadow.policies.is_empty()).then_some(shadow);
        let (rbac_name, mut rbac) = rbac_filter(for_tcp, None, Some(enforce), None);
        if let Some(r) = rules {
            rbac["rules"] = r.json();
        }
        rbac["shadowRulesStatPrefix"] = json!(EXT_AUTHZ_SHADOW_PREFIX);
        let mut config = config;
        config["filterEnabledMetadata"] = json!({
            "filter": if for_tcp { TCP_RBAC } else { HTTP_RBAC },
            "path": [{"key": format!("{EXT_AUTHZ_SHADOW_PREFIX}shadow_effective_policy_id")}],
            "value": {"stringMatch": {"prefix": format!("{EXT_AUTHZ_MATCH_PREFIX}-{provider}")}},
        });
        out.push((rbac_name, rbac));
        out.push((name.to_string(), config));
    }
    out
}

struct BuiltExtAuthz {
    http: Value,
    tcp: Option<Value>,
}

/// The cluster an extension provider's service resolves to:
/// `outbound|PORT||HOST`, and the host.
pub fn provider_cluster(
    cx: &Context<'_>,
    p: &MeshExtensionProvider,
) -> Result<(String, String), String> {
    let cfg = serde_json::to_value(&p.config).unwrap_or_default();
    let port = cfg.get("port").and_then(Value::as_u64).unwrap_or(0);
    if !(1..=65535).contains(&port) {
        return Err(format!(
            "port must be in the range [1, 65535], found: {port}"
        ));
    }
    let service = cfg
        .get("service")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if service.is_empty() {
        return Err("service must not be empty".into());
    }
    let (ns, host) = match service.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, service),
    };
    let host = (cx.resolve_service)(ns, host)
        .ok_or_else(|| format!("could not find service {service} in the registry"))?;
    Ok((format!("outbound|{port}||{host}"), host))
}

fn ext_authz(cx: &Context<'_>, name: &str) -> Result<BuiltExtAuthz, String> {
    let p = cx
        .providers
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| format!("extension provider {name} not found"))?;
    let cfg = serde_json::to_value(&p.config).unwrap_or_default();
    let get = |k: &str| cfg.get(k);
    let str_of = |k: &str| get(k).and_then(Value::as_str);
    let bool_of = |k: &str| get(k).and_then(Value::as_bool).unwrap_or(false);
    let (cluster, host) = provider_cluster(cx, p)?;
    let status = match str_of("statusOnError") {
        None | Some("") => None,
        Some(s) => Some(status_code(s)?),
    };
    let timeout = match str_of("timeout") {
        Some(t) => t.to_string(),
        None => "600s".to_string(),
    };
    let body = get("includeRequestBodyInCheck").map(|b| {
        let mut m = Map::new();
        if let Some(n) = b.get("maxRequestBytes").and_then(Value::as_u64) {
            m.insert("maxRequestBytes".into(), json!(n));
        }
        for k in ["allowPartialMessage", "packAsBytes"] {
            if let Some(v) = b.get(k).and_then(Value::as_bool) {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    });
    let mut common = Map::new();
    if bool_of("failOpen") {
        common.insert("failureModeAllow".into(), json!(true));
    }
    common.insert("transportApiVersion".into(), json!("V3"));
    match p.kind.as_str() {
        "envoyExtAuthzGrpc" => {
            let grpc = json!({
                "envoyGrpc": {"clusterName": cluster, "authority": host},
                "timeout": timeout,
            });
            let mut http = common.clone();
            http.insert("@type".into(), json!(EXT_AUTHZ_HTTP_TYPE));
            http.insert("grpcService".into(), grpc.clone());
            if let Some(s) = &status {
                http.insert("statusOnError".into(), json!({"code": s}));
            }
            if let Some(b) = &body {
                http.insert("withRequestBody".into(), b.clone());
            }
            let mut tcp = common;
            tcp.insert("@type".into(), json!(EXT_AUTHZ_TCP_TYPE));
            tcp.insert("grpcService".into(), grpc);
            tcp.insert("statPrefix".into(), json!(TCP_STAT_PREFIX));
            Ok(BuiltExtAuthz {
                http: Value::Object(http),
                tcp: Some(Value::Object(tcp)),
            })
        }
        "envoyExtAuthzHttp" => {
            if let Some(prefix) = str_of("pathPrefix")
                && !prefix.is_empty()
                && !prefix.starts_with('/')
            {
                return Err(format!("pathPrefix must begin with `/`, found: {prefix:?}"));
            }
            let list = |k: &str| -> Option<Value> {
                let items: Vec<Value> = get(k)?
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_str)
                    .map(header_pattern)
                    .collect();
                (!items.is_empty()).then(|| json!({"patterns": items}))
            };
            let mut service = Map::new();
            service.insert(
                "serverUri".into(),
                json!({"uri": format!("http://{host}"), "cluster": cluster, "timeout": timeout}),
            );
            if let Some(prefix) = str_of("pathPrefix").filter(|p| !p.is_empty()) {
                service.insert("pathPrefix".into(), json!(prefix));
            }
            if let Some(extra) = get("includeAdditionalHeadersInCheck").and_then(Value::as_object) {
                let mut headers: Vec<(String, String)> = extra
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                headers.sort();
                if !headers.is_empty() {
                    let add: Vec<Value> = headers
                        .iter()
                        .map(|(k, v)| json!({"key": k, "value": v}))
                        .collect();
                    service.insert("authorizationRequest".into(), json!({"headersToAdd": add}));
                }
            }
            let mut response = Map::new();
            for (field, key) in [
                ("allowedUpstreamHeaders", "headersToUpstreamOnAllow"),
                ("allowedClientHeaders", "headersToDownstreamOnDeny"),
                (
                    "allowedClientHeadersOnSuccess",
                    "headersToDownstreamOnAllow",
                ),
            ] {
                if let Some(l) = list(key) {
                    response.insert(field.into(), l);
                }
            }
            if !response.is_empty() {
                service.insert("authorizationResponse".into(), Value::Object(response));
            }
            let mut http = common;
            http.insert("@type".into(), json!(EXT_AUTHZ_HTTP_TYPE));
            http.insert("httpService".into(), Value::Object(service));
            // `includeRequestHeadersInCheck` (the deprecated
            // `includeHeadersInCheck` only when it is absent).
            if let Some(l) =
                list("includeRequestHeadersInCheck").or_else(|| list("includeHeadersInCheck"))
            {
                http.insert("allowedHeaders".into(), l);
            }
            if let Some(s) = &status {
                http.insert("statusOnError".into(), json!({"code": s}));
            }
            if let Some(b) = body {
                http.insert("withRequestBody".into(), b);
            }
            Ok(BuiltExtAuthz {
                http: Value::Object(http),
                tcp: None,
            })
        }
        other => Err(format!("unsupported extension provider kind {other}")),
    }
}

/// `x-foo` exact, `x-*` prefix, `*-foo` suffix; all case-insensitive.
fn header_pattern(h: &str) -> Value {
    if let Some(rest) = h.strip_prefix('*')
        && !rest.is_empty()
    {
        json!({"suffix": rest, "ignoreCase": true})
    } else if let Some(rest) = h.strip_suffix('*')
        && !rest.is_empty()
    {
        json!({"prefix": rest, "ignoreCase": true})
    } else {
        json!({"exact": h, "ignoreCase": true})
    }
}

/// An HTTP status as Envoy's `StatusCode` enum name.
fn status_code(s: &str) -> Result<&'static str, String> {
    let code: u32 = s
        .parse()
        .map_err(|_| format!("invalid statusOnError {s}"))?;
    let name = match code {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "NoContent",
        301 => "MovedPermanently",
        302 => "Found",
        304 => "NotModified",
        400 => "BadRequest",
        401 => "Unauthorized",
        402 => "PaymentRequired",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        407 => "ProxyAuthenticationRequired",
        408 => "RequestTimeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "PayloadTooLarge",
        415 => "UnsupportedMediaType",
        429 => "TooManyRequests",
        431 => "RequestHeaderFieldsTooLarge",
        500 => "InternalServerError",
        501 => "NotImplemented",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => return Err(format!("unsupported statusOnError {s}")),
    };
    Ok(name)
}

// -------------------------------------------------------------------- model

/// What a condition compiles to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Gen {
    DestIp,
    DestPort,
    Sni,
    EnvoyFilter,
    SrcIp,
    RemoteIp,
    SrcNamespace,
    SrcServiceAccount,
    SrcPrincipal,
    TrustDomain,
    RequestPrincipal,
    Audiences,
    Presenter,
    Header,
    Claims,
    Host,
    Path,
    Method,
}

impl Gen {
    /// Generators that see all values at once (one matcher for the list).
    fn extended(self) -> bool {
        matches!(
            self,
            Gen::EnvoyFilter
                | Gen::RequestPrincipal
                | Gen::Audiences
                | Gen::Presenter
                | Gen::Claims
        )
    }
}

#[derive(Clone, Debug)]
struct Cond {
    key: String,
    values: Vec<String>,
    not_values: Vec<String>,
    g: Gen,
}

type CondList = Vec<Cond>;

/// One rule, as lists of ANDed conditions: each principal list (one per
/// `from`) and each permission list (one per `to`).
struct Model {
    /// The policy's namespace (service accounts without one).
    namespace: String,
    permissions: Vec<CondList>,
    principals: Vec<CondList>,
}

fn push(list: &mut CondList, front: bool, g: Gen, key: &str, values: &[String], nots: &[String]) {
    if values.is_empty() && nots.is_empty() {
        return;
    }
    let c = Cond {
        key: key.to_string(),
        values: values.to_vec(),
        not_values: nots.to_vec(),
        g,
    };
    if front {
        list.insert(0, c);
    } else {
        list.push(c);
    }
}

impl Model {
    fn new(namespace: &str, r: &Rule) -> Result<Model, String> {
        let mut base_perm = CondList::new();
        let mut base_prin = CondList::new();
        for w in &r.when {
            let k = w.key.as_str();
            let (g, perm) = match k {
                "destination.ip" => (Gen::DestIp, true),
                "destination.port" => (Gen::DestPort, true),
                "connection.sni" => (Gen::Sni, true),
                _ if k.starts_with("experimental.envoy.filters.") => (Gen::EnvoyFilter, true),
                "source.ip" => (Gen::SrcIp, false),
                "remote.ip" => (Gen::RemoteIp, false),
                "source.namespace" => (Gen::SrcNamespace, false),
                "source.serviceAccount" => (Gen::SrcServiceAccount, false),
                "source.principal" => (Gen::SrcPrincipal, false),
                "request.auth.principal" => (Gen::RequestPrincipal, false),
                "request.auth.audiences" => (Gen::Audiences, false),
                "request.auth.presenter" => (Gen::Presenter, false),
                _ if k.starts_with("request.headers") => (Gen::Header, false),
                _ if k.starts_with("request.auth.claims") => (Gen::Claims, false),
                _ => return Err(format!("unknown attribute {k}")),
            };
            let list = if perm { &mut base_perm } else { &mut base_prin };
            push(list, false, g, k, &w.values, &w.not_values);
        }
        let mut principals = Vec::new();
        for from in &r.from {
            let mut merged = base_prin.clone();
            if let Some(s) = &from.source {
                push(
                    &mut merged,
                    true,
                    Gen::SrcIp,
                    "source.ip",
                    &s.ip_blocks,
                    &s.not_ip_blocks,
                );
                push(
                    &mut merged,
                    true,
                    Gen::RemoteIp,
                    "remote.ip",
                    &s.remote_ip_blocks,
                    &s.not_remote_ip_blocks,
                );
                push(
                    &mut merged,
                    true,
                    Gen::SrcNamespace,
                    "source.namespace",
                    &s.namespaces,
                    &s.not_namespaces,
                );
                push(
                    &mut merged,
                    true,
                    Gen::SrcServiceAccount,
                    "source.serviceAccount",
                    &s.service_accounts,
                    &s.not_service_accounts,
                );
                push(
                    &mut merged,
                    true,
                    Gen::RequestPrincipal,
                    "request.auth.principal",
                    &s.request_principals,
                    &s.not_request_principals,
                );
                push(
                    &mut merged,
                    true,
                    Gen::TrustDomain,
                    "source.trustDomain",
                    &s.trust_domains,
                    &s.not_trust_domains,
                );
                push(
                    &mut merged,
                    true,
                    Gen::SrcPrincipal,
                    "source.principal",
                    &s.principals,
                    &s.not_principals,
                );
            }
            principals.push(merged);
        }
        if r.from.is_empty() {
            principals.push(base_prin);
        }
        let mut permissions = Vec::new();
        for to in &r.to {
            let mut merged = base_perm.clone();
            if let Some(o) = &to.operation {
                push(
                    &mut merged,
                    true,
                    Gen::DestPort,
                    "destination.port",
                    &o.ports,
                    &o.not_ports,
                );
                push(&mut merged, true, Gen::Path, "path", &o.paths, &o.not_paths);
                push(
                    &mut merged,
                    true,
                    Gen::Method,
                    ":method",
                    &o.methods,
                    &o.not_methods,
                );
                push(
                    &mut merged,
                    true,
                    Gen::Host,
                    ":authority",
                    &o.hosts,
                    &o.not_hosts,
                );
            }
            permissions.push(merged);
        }
        if r.to.is_empty() {
            permissions.push(base_perm);
        }
        Ok(Model {
            namespace: namespace.to_string(),
            permissions,
            principals,
        })
    }

    /// Principals with an enforced trust domain in the local trust domain or
    /// an alias (or `cluster.local`) are expanded to every one of them.
    fn migrate_trust_domain(&mut self, tds: &[String]) {
        for list in &mut self.principals {
            for c in list.iter_mut() {
                if c.g == Gen::SrcPrincipal {
                    c.values = replace_trust_domain_aliases(tds, &c.values);
                    c.not_values = replace_trust_domain_aliases(tds, &c.not_values);
                } else if c.g == Gen::TrustDomain {
                    c.values = expand_trust_domains(tds, &c.values);
                    c.not_values = expand_trust_domains(tds, &c.not_values);
                }
            }
        }
    }

    fn generate(&self, for_tcp: bool, action: Action) -> Result<Value, String> {
        let mut permissions = Vec::new();
        for list in &self.permissions {
            let mut and = Vec::new();
            for c in list {
                and.extend(c.permission(for_tcp, action)?);
            }
            if and.is_empty() {
                and.push(json!({"any": true}));
            }
            permissions.push(json!({"andRules": {"rules": and}}));
        }
        let mut principals = Vec::new();
        for list in &self.principals {
            let mut and = Vec::new();
            for c in list {
                and.extend(c.principal(for_tcp, action, &self.namespace)?);
            }
            if and.is_empty() {
                and.push(json!({"any": true}));
            }
            principals.push(json!({"andIds": {"ids": and}}));
        }
        Ok(json!({"permissions": permissions, "principals": principals}))
    }
}

/// An ALLOW rule with a value it cannot compile is dropped (fewer requests
/// allowed); a DENY/AUDIT rule drops the value instead (more denied).
fn check(action: Action, r: Result<Value, String>) -> Result<Option<Value>, String> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if action == Action::Allow => Err(e),
        Err(_) => Ok(None),
    }
}

impl Cond {
    fn permission(&self, for_tcp: bool, action: Action) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        if self.g.extended() {
            if !self.values.is_empty()
                && let Some(p) = check(action, ext_permission(self.g, &self.key, &self.values))?
            {
                out.push(p);
            }
            if !self.not_values.is_empty()
                && let Some(p) = check(action, ext_permission(self.g, &self.key, &self.not_values))?
            {
                out.push(json!({"notRule": p}));
            }
            return Ok(out);
        }
        let mut or = Vec::new();
        for v in &self.values {
            if let Some(p) = check(action, permission(self.g, &self.key, v, for_tcp))? {
                or.push(p);
            }
        }
        if !or.is_empty() {
            out.push(json!({"orRules": {"rules": or}}));
        }
        let mut or = Vec::new();
        for v in &self.not_values {
            if let Some(p) = check(action, permission(self.g, &self.key, v, for_tcp))? {
                or.push(p);
            }
        }
        if !or.is_empty() {
            out.push(json!({"notRule": {"orRules": {"rules": or}}}));
        }
        Ok(out)
    }

    fn principal(&self, for_tcp: bool, action: Action, ns: &str) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        if self.g.extended() {
            if !self.values.is_empty()
                && let Some(p) = check(
                    action,
                    ext_principal(self.g, &self.key, &self.values, for_tcp),
                )?
            {
                out.push(p);
            }
            if !self.not_values.is_empty()
                && let Some(p) = check(
                    action,
                    ext_principal(self.g, &self.key, &self.not_values, for_tcp),
                )?
            {
                out.push(json!({"notId": p}));
            }
            return Ok(out);
        }
        let mut or = Vec::new();
        for v in &self.values {
            if let Some(p) = check(action, principal(self.g, &self.key, v, for_tcp, ns))? {
                or.push(p);
            }
        }
        if !or.is_empty() {
            out.push(json!({"orIds": {"ids": or}}));
        }
        let mut or = Vec::new();
        for v in &self.not_values {
            if let Some(p) = check(action, principal(self.g, &self.key, v, for_tcp, ns))? {
                or.push(p);
            }
        }
        if !or.is_empty() {
            out.push(json!({"notId": {"orIds": {"ids": or}}}));
        }
        Ok(out)
    }
}

fn http_only(key: &str) -> String {
    format!("{key:?} is HTTP only")
}

fn permission(g: Gen, key: &str, v: &str, for_tcp: bool) -> Result<Value, String> {
    match g {
        Gen::DestIp => Ok(json!({"destinationIp": cidr(v)?})),
        Gen::DestPort => Ok(json!({"destinationPort": port(v)?})),
        Gen::Sni => Ok(json!({"requestedServerName": string_matcher(v, "")})),
        Gen::Host if !for_tcp => Ok(json!({"header": host_matcher(v)})),
        Gen::Method if !for_tcp => Ok(json!({"header": header_matcher(":method", v)})),
        Gen::Path if !for_tcp => {
            if v.contains("{*}") || v.contains("{**}") {
                let template = v.replace("{**}", "**").replace("{*}", "*");
                Ok(
                    json!({"uriTemplate": {"name": "uri-template", "typedConfig": {
                    "@type": URI_TEMPLATE_TYPE, "pathTemplate": template}}}),
                )
            } else {
                Ok(json!({"urlPath": {"path": string_matcher(v, "")}}))
            }
        }
        Gen::Host | Gen::Method | Gen::Path => Err(http_only(key)),
        _ => Err("unimplemented".into()),
    }
}

fn principal(g: Gen, key: &str, v: &str, for_tcp: bool, ns: &str) -> Result<Value, String> {
    let authenticated = |m: Value| json!({"authenticated": {"principalName": m}});
    match g {
        Gen::SrcIp => Ok(json!({"directRemoteIp": cidr(v)?})),
        Gen::RemoteIp => Ok(json!({"remoteIp": cidr(v)?})),
        Gen::SrcNamespace => {
            let pattern = v.split('*').map(quote_meta).collect::<Vec<_>>().join(".*");
            Ok(authenticated(regex(&format!(".*/ns/{pattern}/.*"))))
        }
        Gen::SrcServiceAccount => {
            let (sa_ns, sa) = v.split_once('/').unwrap_or((ns, v));
            Ok(authenticated(regex(&format!(
                "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
                quote_meta(sa_ns),
                quote_meta(sa)
            ))))
        }
        Gen::SrcPrincipal => Ok(authenticated(string_matcher(v, "spiffe://"))),
        Gen::TrustDomain => Ok(authenticated(if v.contains('*') {
            let pattern = v
                .split('*')
                .map(quote_meta)
                .collect::<Vec<_>>()
                .join("[^/]*");
            regex(&format!("spiffe://{pattern}/.*"))
        } else {
            json!({"prefix": format!("spiffe://{v}/")})
        })),
        Gen::Header => {
            if for_tcp {
                return Err(http_only(key));
            }
            let name = key
                .strip_prefix("request.headers")
                .and_then(|s| s.strip_prefix('['))
                .and_then(|s| s.strip_suffix(']'))
                .ok_or_else(|| format!("expecting format [<NAME>], but found {key}"))?;
            Ok(json!({"header": header_matcher(name, v)}))
        }
        _ => Err("unimplemented".into()),
    }
}

fn ext_permission(g: Gen, key: &str, values: &[String]) -> Result<Value, String> {
    match g {
        Gen::EnvoyFilter => {
            let rest = key
                .strip_prefix("experimental.")
                .unwrap_or(key)
                .trim_end_matches(']');
            let (filter, path) = rest
                .split_once('[')
                .ok_or_else(|| format!("invalid key: {key}"))?;
            let matchers: Vec<Value> = values
                .iter()
                .map(|v| {
                    if v.starts_with('[') && v.ends_with(']') {
                        let inner = v.trim_matches(|c| c == '[' || c == ']');
                        json!({"listMatch": {"oneOf": {"stringMatch": string_matcher(inner, "")}}})
                    } else {
                        json!({"stringMatch": string_matcher(v, "")})
                    }
                })
                .collect();
            Ok(
                json!({"metadata": {"filter": filter, "path": [{"key": path}],
                "value": or_match(matchers)}}),
            )
        }
        _ => Err("unimplemented".into()),
    }
}

fn jwt_claim(path: &[&str], value: Value) -> Value {
    let mut segs = vec![json!({"key": "payload"})];
    segs.extend(path.iter().map(|k| json!({"key": k})));
    json!({"metadata": {"filter": JWT_FILTER, "path": segs, "value": value}})
}

/// A claim that is a string, or a list with one such string.
fn claim_list_matcher(path: &[&str], values: &[String]) -> Value {
    let or = or_match(
        values
            .iter()
            .map(|v| json!({"stringMatch": string_matcher(v, "")}))
            .collect(),
    );
    jwt_claim(
        path,
        json!({"orMatch": {"valueMatchers": [{"listMatch": {"oneOf": or.clone()}}, or]}}),
    )
}

/// An OR of value matchers; one matcher stands alone.
fn or_match(mut matchers: Vec<Value>) -> Value {
    if matchers.len() == 1 {
        matchers.remove(0)
    } else {
        json!({"orMatch": {"valueMatchers": matchers}})
    }
}

fn ext_principal(g: Gen, key: &str, values: &[String], for_tcp: bool) -> Result<Value, String> {
    if for_tcp {
        return Err(http_only(key));
    }
    match g {
        Gen::RequestPrincipal => {
            let any = || regex(".+");
            let mut or: Vec<Value> = Vec::new();
            for v in values {
                let (iss, sub, found) = match v.rfind('/') {
                    Some(i) => (&v[..i], &v[i + 1..], true),
                    None => (v.as_str(), "", false),
                };
                let (mi, ms) = if v == "*" {
                    (any(), any())
                } else if let Some(rest) = v.strip_prefix('*') {
                    if found {
                        let mi = if iss == "*" {
                            any()
                        } else {
                            json!({"suffix": iss.trim_start_matches('*')})
                        };
                        (mi, json!({"exact": sub}))
                    } else {
                        (any(), json!({"suffix": rest}))
                    }
                } else if let Some(rest) = v.strip_suffix('*') {
                    if found {
                        let ms = if sub == "*" {
                            any()
                        } else {
                            json!({"prefix": sub.trim_end_matches('*')})
                        };
                        (json!({"exact": iss}), ms)
                    } else {
                        (json!({"prefix": rest}), any())
                    }
                } else {
                    (json!({"exact": iss}), json!({"exact": sub}))
                };
                or.push(json!({"andIds": {"ids": [
                    jwt_claim(&["iss"], json!({"stringMatch": mi})),
                    jwt_claim(&["sub"], json!({"stringMatch": ms})),
                ]}}));
            }
            Ok(if or.len() == 1 {
                or.remove(0)
            } else {
                json!({"orIds": {"ids": or}})
            })
        }
        Gen::Audiences => Ok(claim_list_matcher(&["aud"], values)),
        Gen::Presenter => Ok(claim_list_matcher(&["azp"], values)),
        Gen::Claims => {
            let claims = nested_claims(key.strip_prefix("request.auth.claims").unwrap_or(""))
                .ok_or_else(|| format!("invalid claim key {key}"))?;
            let path: Vec<&str> = claims.iter().map(String::as_str).collect();
            Ok(claim_list_matcher(&path, values))
        }
        _ => Err("unimplemented".into()),
    }
}

/// `[a][b]` (or `[a.b]` for a single claim with dots kept) as `a`, `b`.
fn nested_claims(s: &str) -> Option<Vec<String>> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    if inner.is_empty() {
        return None;
    }
    let parts: Vec<String> = inner.split("][").map(str::to_string).collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || p.contains('[') || p.contains(']'))
    {
        return None;
    }
    Some(parts)
}

fn port(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(p) if p <= 65535 => Ok(p),
        _ => Err(format!("invalid port {v}")),
    }
}

fn cidr(v: &str) -> Result<Value, String> {
    let (ip, len) = match v.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (v, None),
    };
    let addr: std::net::IpAddr = ip.parse().map_err(|_| format!("invalid IP {v}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("invalid CIDR {v}")),
        },
    };
    Ok(json!({"addressPrefix": ip, "prefixLen": len}))
}

fn regex(r: &str) -> Value {
    json!({"safeRegex": {"regex": r}})
}

/// Go's `regexp.QuoteMeta`.
fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Istio's string matcher: `*` any (`.+`), `*x` suffix, `x*` prefix, else
/// exact; with `prefix` (e.g. `spiffe://`) prepended, a suffix match turns
/// into a regex.
fn string_matcher(v: &str, prefix: &str) -> Value {
    if v == "*" {
        regex(".+")
    } else if let Some(rest) = v.strip_prefix('*') {
        if prefix.is_empty() {
            json!({"suffix": rest})
        } else {
            regex(&format!("{}.*{}", quote_meta(prefix), quote_meta(rest)))
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        json!({"prefix": format!("{prefix}{rest}")})
    } else {
        json!({"exact": format!("{prefix}{v}")})
    }
}

fn header_matcher(name: &str, v: &str) -> Value {
    if v == "*" {
        json!({"name": name, "presentMatch": true})
    } else if let Some(rest) = v.strip_prefix('*') {
        json!({"name": name, "stringMatch": {"suffix": rest}})
    } else if let Some(rest) = v.strip_suffix('*') {
        json!({"name": name, "stringMatch": {"prefix": rest}})
    } else {
        json!({"name": name, "stringMatch": {"exact": v}})
    }
}

fn host_matcher(v: &str) -> Value {
    let name = ":authority";
    if v == "*" {
        json!({"name": name, "presentMatch": true})
    } else if let Some(rest) = v.strip_prefix('*') {
        json!({"name": name, "stringMatch": {"suffix": rest, "ignoreCase": true}})
    } else if let Some(rest) = v.strip_suffix('*') {
        json!({"name": name, "stringMatch": {"prefix": rest, "ignoreCase": true}})
    } else {
        json!({"name": name, "stringMatch": {"exact": v, "ignoreCase": true}})
    }
}

// ------------------------------------------------------------- trust domains

fn td_prefix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_suffix('*').is_some_and(|p| a.starts_with(p))
}

fn td_suffix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|p| a.ends_with(p))
}

fn td_in(a: &str, list: &[String]) -> bool {
    list.iter().any(|s| {
        a == s
            || s == "*"
            || td_prefix_match(a, s)
            || td_prefix_match(s, a)
            || td_suffix_match(a, s)
            || td_suffix_match(s, a)
    })
}

/// Istio's `ReplaceTrustDomainAliases`: `TD/ns/N/sa/S` whose TD is the local
/// trust domain, an alias, or `cluster.local` becomes one principal per trust
/// domain (a `*suffix` TD matching one is kept as written).
fn replace_trust_domain_aliases(tds: &[String], principals: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in principals {
        let parts: Vec<&str> = p.split('/').collect();
        if parts.len() != 5 || parts[0] == "*" {
            out.push(p.clone());
            continue;
        }
        let td = parts[0];
        if !(td_in(td, tds) || td == "cluster.local") {
            out.push(p.clone());
            continue;
        }
        let mut these: Vec<String> = Vec::new();
        for t in tds {
            let np = if td_suffix_match(t, td) {
                p.clone()
            } else {
                format!("{t}/{}", parts[1..].join("/"))
            };
            if !these.contains(&np) {
                these.push(np);
            }
        }
        out.extend(these);
    }
    out
}

/// A `trustDomains` value naming a trust domain of the bundle stands for all.
fn expand_trust_domains(tds: &[String], values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let add: Vec<String> = if tds.contains(v) {
            tds.to_vec()
        } else {
            vec![v.clone()]
        };
        for a in add {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

// ------------------------------------------------------------- inbound hook

/// Put the workload's authentication and authorization filters on every
/// chain of its inbound listener (the pass-through chains too, as Istio
/// does: a deny-all covers undeclared ports): HTTP chains get jwt_authn,
/// then the CUSTOM/AUDIT/DENY/ALLOW filters, first in the connection
/// manager's chain (before fault, CORS and the router); TCP chains get the
/// network RBAC/ext_authz filters before tcp_proxy.
pub fn secure_inbound(
    mesh: &crate::mesh::Mesh,
    proxy: &crate::node::ProxyNode,
    listener: &mut envoy_types::pb::envoy::config::listener::v3::Listener,
) {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use prost::{Message, Name};

    let root = crate::mesh::ROOT_NAMESPACE;
    let policies = applicable(
        &mesh.authorization_policies,
        root,
        &proxy.namespace,
        &proxy.labels,
    );
    let jwt_policies = super::jwt::applicable(
        &mesh.request_authentications,
        root,
        &proxy.namespace,
        &proxy.labels,
    );
    if policies.is_empty() && jwt_policies.is_empty() {
        return;
    }
    let trust_domains: Vec<String> = match &mesh.tls {
        Some(t) => t.trust_domains().map(str::to_string).collect(),
        None => vec!["cluster.local".to_string()],
    };
    let resolve = |ns: Option<&str>, host: &str| -> Option<String> {
        mesh.services
            .iter()
            .filter(|s| ns.is_none_or(|n| s.namespace == n))
            .find(|s| {
                s.hostname == host
                    || ns.is_some_and(|n| {
                        s.hostname == format!("{host}.{n}.svc.{}", crate::model::DOMAIN_SUFFIX)
                    })
            })
            .map(|s| s.hostname.clone())
    };
    let cx = Context {
        trust_domains,
        providers: &mesh.extension_providers,
        resolve_service: &resolve,
    };
    let jwks = |uri: &str| mesh.jwks.get(uri).cloned();
    // Istio's inbound order: CUSTOM (shadow RBAC + ext_authz), jwt_authn,
    // then AUDIT, DENY, ALLOW.
    let (custom, rest) = build_split(&policies, &cx, false);
    let mut http = to_http(custom);
    http.extend(super::jwt::http_filter(&jwt_policies, &jwks));
    http.extend(to_http(rest));
    let tcp = tcp_filters(&policies, &cx);
    let chains = listener
        .filter_chains
        .iter_mut()
        .chain(listener.default_filter_chain.as_mut());
    for chain in chains {
        let mut out = Vec::with_capacity(chain.filters.len() + tcp.len());
        for f in chain.filters.drain(..) {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                out.push(f);
                continue;
            };
            if any.type_url.ends_with(&HttpConnectionManager::full_name()) {
                match HttpConnectionManager::decode(any.value.as_slice()) {
                    Ok(mut hcm) => {
                        hcm.http_filters.splice(0..0, http.iter().cloned());
                        out.push(Filter {
                            name: f.name,
                            config_type: Some(filter::ConfigType::TypedConfig(Any {
                                type_url: any.type_url.clone(),
                                value: hcm.encode_to_vec(),
                            })),
                        });
                    }
                    Err(_) => out.push(f),
                }
            } else if f.name == "envoy.filters.network.tcp_proxy" {
                out.extend(tcp.iter().cloned());
                out.push(f);
            } else {
                out.push(f);
            }
        }
        chain.filters = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound_filters(
        mesh: &crate::mesh::Mesh,
        labels: &[(&str, &str)],
    ) -> (Vec<String>, Vec<String>) {
        use envoy_types::pb::envoy::config::core::v3::Node;
        use prost::Message;
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let node: Node = xds::json::from_json(&json!({
            "id": "sidecar~10.2.0.5~payments-0.pay~pay.svc.cluster.local",
            "metadata": {"NAMESPACE": "pay", "LABELS": labels}}))
        .expect("node");
        let proxy = crate::node::ProxyNode::from_node(&node).expect("proxy");
        let out = crate::translate::translate(mesh, &proxy);
        let inbound = out
            .listeners
            .iter()
            .find(|l| l.name == "virtualInbound")
            .expect("virtualInbound");
        let (mut http, mut tcp) = (Vec::new(), Vec::new());
        for c in inbound
            .filter_chains
            .iter()
            .chain(inbound.default_filter_chain.as_ref())
        {
            for f in &c.filters {
                let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    continue;
                };
                if f.name == "envoy.filters.network.http_connection_manager" {
                    let hcm = envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
                    http = hcm.http_filters.iter().map(|h| h.name.clone()).collect();
                } else {
                    tcp.push(f.name.clone());
                }
            }
        }
        (http, tcp)
    }

    #[test]
    fn selectors_pick_the_workloads_policies_and_make_config_label_sensitive() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: payments, namespace: pay}\nspec:\n  selector: {app: payments}\n  ports: [{name: http-api, port: 8080}]\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: payments-0, namespace: pay}\nspec: {address: 10.2.0.5, labels: {app: payments}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-v2, namespace: pay}\nspec:\n  selector: {matchLabels: {version: v2}}\n  action: DENY\n  rules: [{}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: other-ns, namespace: shop}\nspec: {}\n";
        let (resources, errors) = api::load::load_str(std::path::Path::new("t.yaml"), yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let mesh = crate::compile::build(&resources);
        assert_eq!(mesh.authorization_policies.len(), 2);
        assert!(mesh.label_sensitive());
        let (http, _) = inbound_filters(&mesh, &[("app", "payments")]);
        assert!(!http.iter().any(|n| n == HTTP_RBAC), "{http:?}");
        let (http, tcp) = inbound_filters(&mesh, &[("app", "payments"), ("version", "v2")]);
        assert_eq!(
            http.first().map(String::as_str),
            Some(HTTP_RBAC),
            "{http:?}"
        );
        // The pass-through chain is covered too.
        assert!(tcp.iter().any(|n| n == TCP_RBAC), "{tcp:?}");
    }

    #[test]
    fn string_matchers_follow_istio() {
        assert_eq!(string_matcher("*", "spiffe://"), regex(".+"));
        assert_eq!(
            string_matcher("*-x.y", "spiffe://"),
            regex("spiffe://.*-x\\.y")
        );
        assert_eq!(string_matcher("a*", ""), json!({"prefix": "a"}));
        assert_eq!(string_matcher("*a", ""), json!({"suffix": "a"}));
    }

    #[test]
    fn trust_domain_aliases_expand_principals() {
        let tds = vec!["td1".to_string(), "cluster.local".to_string()];
        assert_eq!(
            replace_trust_domain_aliases(&tds, &["cluster.local/ns/a/sa/b".into()]),
            vec!["td1/ns/a/sa/b", "cluster.local/ns/a/sa/b"]
        );
        assert_eq!(
            replace_trust_domain_aliases(&tds, &["other/ns/a/sa/b".into()]),
            vec!["other/ns/a/sa/b"]
        );
    }

    #[test]
    fn cidrs_reject_bad_lengths() {
        assert!(cidr("10.0.0.0/33").is_err());
        assert_eq!(
            cidr("::1").unwrap(),
            json!({"addressPrefix": "::1", "prefixLen": 128})
        );
    }
}
