//! RDS: one RouteConfiguration per outbound HTTP port (named `PORT`, as Istio
//! does), a virtual host per service on that port, routes from the
//! VirtualService for the host or a default route to its cluster.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, data_source, header_value_option,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route::Action, route_action::ClusterSpecifier, route_action::HashPolicy,
    route_action::HostRewriteSpecifier, route_action::RequestMirrorPolicy,
    route_action::hash_policy, route_match::PathSpecifier, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::cluster::{BLACKHOLE, PASSTHROUGH, outbound_name};
use super::common::{duration, millis};
use crate::mesh::Mesh;
use crate::model::{DOMAIN_SUFFIX, Service, labels_match};
use crate::node::ProxyNode;
use crate::policy::TrafficPolicy;
use crate::routing::{
    AbortCode, Destination, DirectResponse, Fault, HeaderEdits, HeaderRules, HttpRoute, Redirect,
    RequestMatch, Share, StrMatch,
};
use api::networking::ConsistentHashLb;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};

/// The route table for one outbound port over the services visible there.
pub fn outbound(
    mesh: &Mesh,
    proxy: &ProxyNode,
    port: u32,
    services: &[&Service],
    registry_only: bool,
) -> RouteConfiguration {
    let mut virtual_hosts: Vec<VirtualHost> = services
        .iter()
        .map(|svc| VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains: domains(svc, port, &proxy.namespace),
            routes: routes_for(mesh, proxy, svc, port),
            // Istio: every outbound virtual host sends x-envoy-attempt-count.
            include_request_attempt_count: true,
            ..Default::default()
        })
        .collect();
    let (name, cluster) = if registry_only {
        ("block_all", BLACKHOLE)
    } else {
        ("allow_any", PASSTHROUGH)
    };
    virtual_hosts.push(VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: name.into(),
            r#match: Some(prefix_match("/")),
            action: Some(Action::Route(to_cluster(cluster.into(), None))),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    });
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// Every name a client in `client_ns` may use for the service, with and
/// without the port: FQDN, and for Kubernetes hosts the short forms Istio adds.
pub fn domains(svc: &Service, port: u32, client_ns: &str) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    let k8s_suffix = format!(".svc.{DOMAIN_SUFFIX}");
    if let Some(stem) = svc.hostname.strip_suffix(&k8s_suffix) {
        names.push(format!("{stem}.svc"));
        names.push(stem.to_string());
        if svc.namespace == client_ns
            && let Some((short, _)) = stem.split_once('.')
        {
            names.push(short.to_string());
        }
    }
    // A CIDR is not a name a Host header carries.
    names.extend(svc.addresses.iter().filter(|a| !a.contains('/')).cloned());
    let with_ports: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    names.extend(with_ports);
    names
}

/// The routes for one service: its VirtualService's, or a default route.
fn routes_for(mesh: &Mesh, proxy: &ProxyNode, svc: &Service, port: u32) -> Vec<Route> {
    if let Some(vs) = mesh
        .virtual_services_seen_by(&svc.hostname, &proxy.namespace)
        .next()
    {
        let routes: Vec<Route> = vs
            .http
            .iter()
            .flat_map(|rule| http_route(mesh, proxy, rule, port))
            .collect();
        return routes;
    }
    // Istio's default outbound route: its default retry policy, and the
    // DestinationRule's consistent hash (rule-wide, or the port's entry).
    let mut action = to_cluster(outbound_name(port, "", &svc.hostname), None);
    action.retry_policy = super::retry::policy(None, false);
    action.hash_policy = mesh
        .destination_rule(&svc.hostname, &proxy.namespace, &svc.namespace)
        .and_then(|r| TrafficPolicy::hash_for(&r.policy, None, Some(port)))
        .and_then(hash_policy)
        .into_iter()
        .collect();
    vec![Route {
        name: "default".into(),
        r#match: Some(prefix_match("/")),
        action: Some(Action::Route(action)),
        ..Default::default()
    }]
}

/// One VirtualService `http` entry: a route per `match` block (they are ORed).
fn http_route(mesh: &Mesh, proxy: &ProxyNode, rule: &HttpRoute, port: u32) -> Vec<Route> {
    let action = match (&rule.redirect, &rule.direct_response) {
        (Some(r), _) => Action::Redirect(redirect_action(r, port)),
        (None, Some(d)) => Action::DirectResponse(direct_response_action(d)),
        (None, None) => Action::Route(route_action(mesh, proxy, rule, port)),
    };
    let name = rule.name.clone().unwrap_or_default();
    let applies = |m: &&RequestMatch| {
        m.port.is_none_or(|p| p == port)
            && labels_match(&m.source_labels, &proxy.labels)
            && m.source_namespace
                .as_ref()
                .is_none_or(|ns| *ns == proxy.namespace)
            && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
    };
    let matches: Vec<RouteMatch> = if rule.matches.is_empty() {
        vec![prefix_match("/")]
    } else {
        rule.matches
            .iter()
            .filter(applies)
            .map(route_match)
            .collect()
    };
    // Istio: the route's edits, plus a lone destination's (weighted
    // destinations carry their own on the cluster weight).
    let mut edits = vec![&rule.headers];
    if let [only] = forwarded(rule).as_slice()
        && rule.redirect.is_none()
        && rule.direct_response.is_none()
    {
        edits.push(&only.headers);
    }
    let ops = HeaderOps::from_rules(&edits);
    let mut typed_per_filter_config: std::collections::HashMap<_, _> = rule
        .fault
        .as_ref()
        .filter(|_| rule.redirect.is_none() && rule.direct_response.is_none())
        .map(|f| (FAULT_FILTER.to_string(), super::common::any(&http_fault(f))))
        .into_iter()
        .collect();
    if let Some(c) = &rule.cors {
        typed_per_filter_config.insert(
            super::cors::CORS_FILTER.to_string(),
            super::common::any(&super::cors::policy(c)),
        );
    }
    matches
        .into_iter()
        .map(|m| Route {
            name: name.clone(),
            r#match: Some(m),
            action: Some(action.clone()),
            request_headers_to_add: ops.request_add.clone(),
            request_headers_to_remove: ops.request_remove.clone(),
            response_headers_to_add: ops.response_add.clone(),
            response_headers_to_remove: ops.response_remove.clone(),
            typed_per_filter_config: typed_per_filter_config.clone(),
            ..Default::default()
        })
        .collect()
}

/// The fault filter's name: the HCM's filter and the routes' per-filter key.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// Istio's `fault` as Envoy's HTTPFault.
fn http_fault(f: &Fault) -> HttpFault {
    HttpFault {
        delay: f.delay.as_ref().map(|(d, share)| FaultDelay {
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(*d))),
            percentage: Some(percent(share)),
        }),
        abort: f.abort.as_ref().map(|(code, share)| FaultAbort {
            error_type: Some(match code {
                AbortCode::Http(s) => fault_abort::ErrorType::HttpStatus(*s),
                AbortCode::Grpc(c) => fault_abort::ErrorType::GrpcStatus(*c),
            }),
            percentage: Some(percent(share)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A share of 100 or of a million as Envoy's FractionalPercent.
fn percent(s: &Share) -> FractionalPercent {
    FractionalPercent {
        numerator: s.numerator,
        denominator: if s.denominator == 100 {
            fractional_percent::DenominatorType::Hundred
        } else {
            fractional_percent::DenominatorType::Million
        } as i32,
    }
}

/// The destinations a route forwards to (zero-weight ones drop out unless
/// alone).
fn forwarded(rule: &HttpRoute) -> Vec<&Destination> {
    rule.destinations
        .iter()
        .filter(|d| d.weight > 0 || rule.destinations.len() == 1)
        .collect()
}

/// Envoy's four header mutation fields from Istio's `headers` blocks, in
/// order: per block, `set` (overwrite) then `add` (append), keys sorted.
/// `host`/`:authority` are not headers Envoy lets a route edit, so they
/// are left out.
#[derive(Default)]
struct HeaderOps {
    request_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_add: Vec<HeaderValueOption>,
    response_remove: Vec<String>,
}

impl HeaderOps {
    fn from_rules(rules: &[&HeaderRules]) -> HeaderOps {
        let mut ops = HeaderOps::default();
        for r in rules {
            push_edits(&r.request, &mut ops.request_add, &mut ops.request_remove);
            push_edits(&r.response, &mut ops.response_add, &mut ops.response_remove);
        }
        ops
    }
}

fn push_edits(e: &HeaderEdits, add: &mut Vec<HeaderValueOption>, remove: &mut Vec<String>) {
    use header_value_option::HeaderAppendAction as A;
    let editable = |name: &str| {
        let lower = name.to_ascii_lowercase();
        !(lower == "host" || lower.starts_with(':'))
    };
    for (list, action) in [
        (&e.set, A::OverwriteIfExistsOrAdd),
        (&e.add, A::AppendIfExistsOrAdd),
    ] {
        let mut sorted: Vec<&(String, String)> = list.iter().filter(|(k, _)| editable(k)).collect();
        sorted.sort();
        add.extend(sorted.into_iter().map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        }));
    }
    remove.extend(e.remove.iter().filter(|k| editable(k)).cloned());
}

/// Istio's `redirect`: path, authority, port and scheme of the Location, and
/// the status (301 unless `redirectCode` says otherwise). A port (given, or
/// `derivePort: FROM_REQUEST_PORT`, which is the listener's) is left out
/// when it is the scheme's default.
fn redirect_action(r: &Redirect, listener_port: u32) -> RedirectAction {
    use redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let response_code = match r.code {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    let port = if r.port_from_request {
        Some(listener_port)
    } else {
        r.port
    };
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let port_redirect = match port {
        Some(80) if scheme == "http" => 0,
        Some(443) if scheme == "https" => 0,
        Some(p) => p,
        None => 0,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect,
        response_code: response_code as i32,
        scheme_rewrite_specifier: r.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: r.uri.clone().map(PathRewriteSpecifier::PathRedirect),
        ..Default::default()
    }
}

/// Istio's `directResponse`: a status and an optional inline body.
fn direct_response_action(d: &DirectResponse) -> DirectResponseAction {
    DirectResponseAction {
        status: d.status,
        body: d.body.as_ref().map(|b| DataSource {
            specifier: Some(match String::from_utf8(b.clone()) {
                Ok(text) => data_source::Specifier::InlineString(text),
                Err(e) => data_source::Specifier::InlineBytes(e.into_bytes()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Istio's GetDestinationCluster: the destination's port, else the
/// service's only port, else the listener's.
pub(crate) fn destination_cluster(mesh: &Mesh, d: &Destination, port: u32) -> String {
    let dest_port =
        d.port
            .unwrap_or_else(|| match mesh.service(&d.host).map(|s| s.ports.as_slice()) {
                Some([only]) => only.number,
                _ => port,
            });
    outbound_name(dest_port, d.subset.as_deref().unwrap_or_default(), &d.host)
}

fn route_action(mesh: &Mesh, proxy: &ProxyNode, rule: &HttpRoute, port: u32) -> RouteAction {
    let dests = forwarded(rule);
    // Istio's GetDestinationCluster: the destination's port, else the
    // service's only port, else the listener's.
    let cluster_of = |d: &Destination| destination_cluster(mesh, d, port);
    let timeout = rule.timeout.map(duration);
    let mut action = match dests.as_slice() {
        [one] => to_cluster(cluster_of(one), timeout),
        many => RouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: many
                    .iter()
                    .map(|d| {
                        let ops = HeaderOps::from_rules(&[&d.headers]);
                        ClusterWeight {
                            name: cluster_of(d),
                            weight: Some(UInt32Value { value: d.weight }),
                            request_headers_to_add: ops.request_add,
                            request_headers_to_remove: ops.request_remove,
                            response_headers_to_add: ops.response_add,
                            response_headers_to_remove: ops.response_remove,
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            })),
            ..to_cluster(String::new(), timeout)
        },
    };
    if let Some(rw) = &rule.rewrite {
        if let Some((pattern, substitution)) = &rw.uri_regex {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(pattern)),
                substitution: substitution.clone(),
            });
        } else if let Some(uri) = &rw.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(a) = &rw.authority {
            action.host_rewrite_specifier =
                Some(HostRewriteSpecifier::HostRewriteLiteral(a.clone()));
        }
    }
    action.request_mirror_policies = rule
        .mirrors
        .iter()
        .map(|m| RequestMirrorPolicy {
            cluster: cluster_of(&m.destination),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(percent(&m.share)),
                ..Default::default()
            }),
            trace_sampled: Some(BoolValue { value: false }),
            ..Default::default()
        })
        .collect();
    // Each forwarded destination's DestinationRule hash, in order.
    let hashes: Vec<Option<&ConsistentHashLb>> = dests
        .iter()
        .map(|d| destination_hash(mesh, proxy, d))
        .collect();
    action.hash_policy = hashes
        .iter()
        .flatten()
        .filter_map(|h| hash_policy(h))
        .collect();
    let consistent_hash =
        rule.destinations.len() == 1 && hashes.first().is_some_and(Option::is_some);
    action.retry_policy = super::retry::policy(rule.retries.as_ref(), consistent_hash);
    action
}

/// The consistent hash the destination's DestinationRule (as this proxy
/// sees it) sets for its subset and explicit port.
fn destination_hash<'m>(
    mesh: &'m Mesh,
    proxy: &ProxyNode,
    d: &Destination,
) -> Option<&'m ConsistentHashLb> {
    let svc = mesh.service(&d.host)?;
    let rule = mesh.destination_rule(&d.host, &proxy.namespace, &svc.namespace)?;
    let subset = d
        .subset
        .as_deref()
        .and_then(|n| rule.subset(n))
        .map(|s| &s.policy);
    TrafficPolicy::hash_for(&rule.policy, subset, d.port)
}

/// Istio's `consistentHashToHashPolicy`: the hash key as a route hash
/// policy (none when only ring or table sizes are set).
fn hash_policy(h: &ConsistentHashLb) -> Option<HashPolicy> {
    use hash_policy::{ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter};
    let specifier = if let Some(name) = &h.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: name.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &h.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            ttl: c.ttl.map(|t| duration(t.get())),
            path: c.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if let Some(source_ip) = h.use_source_ip {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip })
    } else if let Some(name) = &h.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: name.clone() })
    } else {
        return None;
    };
    Some(HashPolicy {
        policy_specifier: Some(specifier),
        ..Default::default()
    })
}

/// A route to one cluster with Istio's timeouts (`setTimeout`): the
/// VirtualService's `timeout` or none (Envoy's 15 s default disabled), and
/// `max_grpc_timeout` the same, so a `grpc-timeout` header cannot extend it.
fn to_cluster(
    cluster: String,
    timeout: Option<envoy_types::pb::google::protobuf::Duration>,
) -> RouteAction {
    let timeout = timeout.unwrap_or_else(|| millis(0));
    #[allow(deprecated)]
    RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
        timeout: Some(timeout),
        max_grpc_timeout: Some(timeout),
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(prefix.into())),
        ..Default::default()
    }
}

fn route_match(m: &RequestMatch) -> RouteMatch {
    let path_specifier = Some(match &m.uri {
        Some(StrMatch::Exact(p)) => PathSpecifier::Path(p.clone()),
        Some(StrMatch::Prefix(p)) => PathSpecifier::Prefix(p.clone()),
        Some(StrMatch::Regex(r)) => PathSpecifier::SafeRegex(regex(r)),
        Some(StrMatch::Present) | None => PathSpecifier::Prefix("/".into()),
    });
    let mut headers: Vec<HeaderMatcher> = Vec::new();
    for (name, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header(name, sm, false));
        }
    }
    headers.extend(m.headers.iter().map(|(n, sm)| header(n, sm, false)));
    headers.extend(m.without_headers.iter().map(|(n, sm)| header(n, sm, true)));
    RouteMatch {
        path_specifier,
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(name, sm)| QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: Some(match string_matcher(sm) {
                    Some(s) => QueryParameterMatchSpecifier::StringMatch(s),
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                }),
            })
            .collect(),
        ..Default::default()
    }
}

fn header(name: &str, sm: &StrMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(match string_matcher(sm) {
            Some(s) => HeaderMatchSpecifier::StringMatch(s),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }),
        ..Default::default()
    }
}

pub(super) fn string_matcher(sm: &StrMatch) -> Option<StringMatcher> {
    let pattern = match sm {
        StrMatch::Exact(s) => MatchPattern::Exact(s.clone()),
        StrMatch::Prefix(s) => MatchPattern::Prefix(s.clone()),
        StrMatch::Regex(r) => MatchPattern::SafeRegex(regex(r)),
        StrMatch::Present => return None,
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}
