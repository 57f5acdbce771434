//! RDS: one RouteConfiguration per outbound HTTP port (named `PORT`, as Istio
//! does), a virtual host per service on that port, routes from the
//! VirtualService for the host or a default route to its cluster.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::cluster::{BLACKHOLE, PASSTHROUGH, outbound_name};
use super::common::{duration, millis};
use crate::mesh::Mesh;
use crate::model::{DOMAIN_SUFFIX, Service, labels_match};
use crate::node::ProxyNode;
use crate::routing::{Destination, DirectResponse, HttpRoute, Redirect, RequestMatch, StrMatch};

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
    if let Some(vs) = mesh.virtual_services_for(&svc.hostname).next() {
        let routes: Vec<Route> = vs
            .http
            .iter()
            .flat_map(|rule| http_route(mesh, proxy, rule, port))
            .collect();
        return routes;
    }
    vec![Route {
        name: "default".into(),
        r#match: Some(prefix_match("/")),
        action: Some(Action::Route(to_cluster(
            outbound_name(port, "", &svc.hostname),
            None,
        ))),
        ..Default::default()
    }]
}

/// One VirtualService `http` entry: a route per `match` block (they are ORed).
fn http_route(mesh: &Mesh, proxy: &ProxyNode, rule: &HttpRoute, port: u32) -> Vec<Route> {
    let action = match (&rule.redirect, &rule.direct_response) {
        (Some(r), _) => Action::Redirect(redirect_action(r)),
        (None, Some(d)) => Action::DirectResponse(direct_response_action(d)),
        (None, None) => Action::Route(route_action(mesh, rule, port)),
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
    matches
        .into_iter()
        .map(|m| Route {
            name: name.clone(),
            r#match: Some(m),
            action: Some(action.clone()),
            ..Default::default()
        })
        .collect()
}

/// Istio's `redirect`: path, authority, port and scheme of the Location, and
/// the status (301 unless `redirectCode` says otherwise).
fn redirect_action(r: &Redirect) -> RedirectAction {
    use redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let response_code = match r.code {
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::MovedPermanently,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect: r.port.unwrap_or_default(),
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

fn route_action(mesh: &Mesh, rule: &HttpRoute, port: u32) -> RouteAction {
    let dests: Vec<&Destination> = rule
        .destinations
        .iter()
        .filter(|d| d.weight > 0 || rule.destinations.len() == 1)
        .collect();
    let cluster_of = |d: &Destination| {
        let dest_port =
            d.port
                .unwrap_or_else(|| match mesh.service(&d.host).map(|s| s.ports.as_slice()) {
                    Some([only]) => only.number,
                    _ => port,
                });
        outbound_name(dest_port, d.subset.as_deref().unwrap_or_default(), &d.host)
    };
    let timeout = rule.timeout.map(duration);
    match dests.as_slice() {
        [one] => to_cluster(cluster_of(one), timeout),
        many => RouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: many
                    .iter()
                    .map(|d| ClusterWeight {
                        name: cluster_of(d),
                        weight: Some(UInt32Value { value: d.weight }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })),
            timeout: Some(timeout.unwrap_or_else(|| millis(0))),
            ..Default::default()
        },
    }
}

/// A route to one cluster; Istio disables Envoy's 15 s default timeout.
fn to_cluster(
    cluster: String,
    timeout: Option<envoy_types::pb::google::protobuf::Duration>,
) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
        timeout: Some(timeout.unwrap_or_else(|| millis(0))),
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

fn string_matcher(sm: &StrMatch) -> Option<StringMatcher> {
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
