//! Pure translation from the mesh snapshot to one proxy's Envoy resources.
//! Same input, same output: golden-tested in `tests/golden.rs`.

pub mod access_log;
pub mod authz;
pub mod cluster;
pub mod common;
pub mod cors;
pub mod endpoint;
pub mod jwt;
pub mod l4;
pub mod listener;
pub mod locality;
pub mod retry;
pub mod route;
pub mod tls;
pub mod traffic_policy;

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
    route_action::ClusterSpecifier, route_action::MaxStreamDuration, route_match::PathSpecifier,
};

use crate::mesh::{EgressListener, Mesh};
use crate::model::{Protocol, Service};
use crate::node::{InterceptionMode, ProxyNode};
use listener::Serve;

/// Everything one proxy gets, by type.
#[derive(Clone, Debug, Default)]
pub struct ProxyResources {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
}

/// Everything about a proxy that its translation depends on. Proxies with
/// equal keys get identical resources, so the pilot translates once per key:
/// replicas of a workload (same namespace, labels and ports) share one config.
/// Invariant: [`translate`] reads the proxy only through these fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConfigKey {
    namespace: String,
    /// Only when some config depends on labels ([`Mesh::label_sensitive`]).
    labels: Option<std::collections::BTreeMap<String, String>>,
    interception: InterceptionMode,
    /// The inbound ports its IPs serve (what the IPs matter for).
    inbound: Vec<(u32, u32, Protocol)>,
    /// Only when some cluster's endpoints depend on it (outlier detection
    /// or `localityLbSetting.distribute`: [`locality::sensitivity`]).
    locality: Option<crate::model::Locality>,
    /// Labels for `failoverPriority` (when `labels` is not kept already).
    locality_labels: Option<std::collections::BTreeMap<String, String>>,
}

impl ConfigKey {
    /// The proxy namespace the config was translated for.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The proxy's locality and labels as its endpoints were translated
    /// for (empty where they did not matter).
    pub fn locality(&self) -> locality::ProxyLocality<'_> {
        static NONE: std::sync::OnceLock<(crate::model::Locality, BTreeMap<String, String>)> =
            std::sync::OnceLock::new();
        let none = NONE.get_or_init(Default::default);
        locality::ProxyLocality {
            locality: self.locality.as_ref().unwrap_or(&none.0),
            labels: self
                .labels
                .as_ref()
                .or(self.locality_labels.as_ref())
                .unwrap_or(&none.1),
        }
    }
}

/// The key for a proxy; `label_sensitive` is [`Mesh::label_sensitive`].
pub fn config_key(mesh: &Mesh, proxy: &ProxyNode, label_sensitive: bool) -> ConfigKey {
    let (by_locality, by_labels) = locality::sensitivity(mesh.destination_rules.iter());
    ConfigKey {
        locality: by_locality.then(|| proxy.locality.clone()),
        locality_labels: (by_locality && by_labels && !label_sensitive)
            .then(|| proxy.labels.clone()),
        namespace: proxy.namespace.clone(),
        labels: label_sensitive.then(|| proxy.labels.clone()),
        interception: proxy.interception,
        inbound: if proxy.interception == InterceptionMode::None {
            Vec::new()
        } else {
            inbound_ports(mesh, proxy)
        },
    }
}

/// Translate the mesh for one proxy.
pub fn translate(mesh: &Mesh, proxy: &ProxyNode) -> ProxyResources {
    let sidecar = mesh.sidecar_for(proxy);
    let sidecar_ns = sidecar.map_or(proxy.namespace.as_str(), |s| s.namespace.as_str());
    let registry_only = sidecar
        .and_then(|s| s.registry_only)
        .unwrap_or(mesh.registry_only);
    let fallback = if registry_only {
        cluster::BLACKHOLE
    } else {
        cluster::PASSTHROUGH
    };
    let egress: Vec<Option<&EgressListener>> = match sidecar {
        Some(s) => s.egress.iter().map(Some).collect(),
        None => vec![None],
    };
    let in_scope = |e: Option<&EgressListener>| -> Vec<&Service> {
        mesh.services
            .iter()
            .filter(|svc| svc.export_to.visible_to(&proxy.namespace))
            .filter(|svc| Mesh::imports(e, sidecar_ns, svc))
            .collect()
    };

    let mut out = ProxyResources::default();
    // Route tables by port: the services each HTTP port's table covers.
    let mut http_ports: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    let mut visible: BTreeSet<&str> = BTreeSet::new();
    // Ports a port-specific egress listener owns on the wildcard address: the
    // catch-all scope adds no listener or routes there (as Istio does).
    let claimed: BTreeSet<u32> = egress
        .iter()
        .flatten()
        .filter(|e| !e.capture_none && e.bind.as_deref().is_none_or(|b| b == "0.0.0.0"))
        .filter_map(|e| e.port.as_ref().map(|p| p.number))
        .collect();

    for e in &egress {
        let services = in_scope(*e);
        visible.extend(services.iter().map(|s| s.hostname.as_str()));
        match e.and_then(|e| e.port.as_ref().map(|p| (e, p))) {
            // An egress listener on one port.
            Some((e, port)) => {
                let on_port: Vec<&Service> = services
                    .iter()
                    .copied()
                    .filter(|s| s.port(port.number).is_some())
                    .collect();
                let bind = e.capture_none || proxy.interception == InterceptionMode::None;
                let address = e.bind.clone().unwrap_or_else(|| {
                    if e.capture_none {
                        "127.0.0.1"
                    } else {
                        "0.0.0.0"
                    }
                    .to_string()
                });
                let serve = if port.protocol.is_http() {
                    http_ports
                        .entry(port.number)
                        .or_default()
                        .extend(on_port.iter().map(|s| s.hostname.as_str()));
                    Serve::Http {
                        route: port.number.to_string(),
                    }
                } else {
                    Serve::Tcp {
                        cluster: tcp_cluster(&on_port, port.number, fallback),
                    }
                };
                out.listeners
                    .push(listener::outbound(&address, port.number, &serve, bind));
            }
            // The catch-all scope: per-port listeners behind 15001.
            None if proxy.interception != InterceptionMode::None => {
                outbound_port_listeners(
                    mesh,
                    proxy,
                    &services,
                    fallback,
                    &claimed,
                    &mut out,
                    &mut http_ports,
                );
            }
            None => {}
        }
    }

    if proxy.interception != InterceptionMode::None {
        out.listeners.push(listener::virtual_outbound(fallback));
        let inbound = inbound_ports(mesh, proxy);
        for (port, target, _) in &inbound {
            out.clusters.push(cluster::inbound(*port, *target));
        }
        let chains: Vec<(u32, Serve)> = inbound
            .iter()
            .map(|(port, target, protocol)| (*target, inbound_serve(*port, *protocol)))
            .collect();
        // Mesh TLS reads the proxy's namespace and labels, both ConfigKey
        // fields (labels when a workload-level PeerAuthentication exists).
        let modes = mesh
            .tls
            .as_ref()
            .map(|t| (t, mesh.mtls_for(&proxy.namespace, &proxy.labels)));
        let mut inbound_listener = listener::virtual_inbound(
            &chains,
            cluster::INBOUND_PASSTHROUGH,
            modes
                .as_ref()
                .map(|(mesh, modes)| listener::InboundTls { mesh, modes }),
        );
        // AuthorizationPolicy/RequestAuthentication read the namespace and
        // labels (labels are a ConfigKey field when a policy has a selector).
        authz::secure_inbound(mesh, proxy, &mut inbound_listener);
        out.listeners.push(inbound_listener);
        out.clusters
            .push(cluster::passthrough(cluster::INBOUND_PASSTHROUGH));
    }

    // meshConfig access logs on every listener, HCM and tcp_proxy built above.
    if let Some(cfg) = &mesh.access_log {
        access_log::apply(cfg, &mut out.listeners);
    }

    for (port, hosts) in &http_ports {
        let services: Vec<&Service> = hosts.iter().filter_map(|h| mesh.service(h)).collect();
        out.routes.push(route::outbound(
            mesh,
            proxy,
            *port,
            &services,
            registry_only,
        ));
    }

    for host in &visible {
        let Some(svc) = mesh.service(host) else {
            continue;
        };
        let rule = mesh.destination_rule(&svc.hostname, &proxy.namespace, &svc.namespace);
        let mtls = mesh.tls.as_ref().map(|mesh_tls| cluster::MeshUpstream {
            mesh: mesh_tls,
            service_mode: mesh.service_mtls_mode(svc),
        });
        let at = locality::ProxyLocality {
            locality: &proxy.locality,
            labels: &proxy.labels,
        };
        for port in &svc.ports {
            for c in cluster::for_service_port(svc, port, rule, mtls, at) {
                if c.eds_cluster_config.is_some() {
                    let subset = rule.and_then(|r| {
                        let name = c.name.split('|').nth(2).unwrap_or_default();
                        r.subset(name)
                    });
                    let policy = endpoint::policy_for(rule, subset, port);
                    out.endpoints.push(endpoint::assignment(
                        &c.name, svc, port, subset, &policy, at,
                    ));
                }
                out.clusters.push(c);
            }
        }
    }
    out.clusters
        .push(cluster::passthrough(cluster::PASSTHROUGH));
    out.clusters.push(cluster::blackhole());
    for l in &mut out.listeners {
        listener::apply_path_normalization(l, mesh.path_normalization);
    }
    out
}

/// Per-port listeners for the services in the catch-all scope.
fn outbound_port_listeners<'a>(
    mesh: &Mesh,
    proxy: &ProxyNode,
    services: &[&'a Service],
    fallback: &str,
    claimed: &BTreeSet<u32>,
    out: &mut ProxyResources,
    http_ports: &mut BTreeMap<u32, BTreeSet<&'a str>>,
) {
    let mut by_port: BTreeMap<u32, Vec<(&Service, Protocol)>> = BTreeMap::new();
    for svc in services {
        for p in svc.ports.iter().filter(|p| !claimed.contains(&p.number)) {
            by_port.entry(p.number).or_default().push((svc, p.protocol));
        }
    }
    for (port, entries) in by_port {
        let http: Vec<&Service> = entries
            .iter()
            .filter(|(_, p)| p.is_http() || *p == Protocol::Auto)
            .map(|(s, _)| *s)
            .collect();
        if !http.is_empty() {
            http_ports
                .entry(port)
                .or_default()
                .extend(http.iter().map(|s| s.hostname.as_str()));
        }
        let tcp: Vec<&Service> = entries
            .iter()
            .filter(|(_, p)| !p.is_http())
            .map(|(s, _)| *s)
            .collect();
        let route = port.to_string();
        let any_auto = entries.iter().any(|(_, p)| *p == Protocol::Auto);
        // TCP services with IP VIPs get a listener per VIP; CIDR VIPs get a
        // chain on the port's wildcard listener (as Istio does).
        let mut cidr_chains: Vec<(Vec<String>, String)> = Vec::new();
        for svc in tcp.iter().filter(|s| !s.addresses.is_empty()) {
            let cluster = cluster::outbound_name(port, "", &svc.hostname);
            let cidrs: Vec<String> = svc
                .addresses
                .iter()
                .filter(|a| a.contains('/'))
                .cloned()
                .collect();
            if !cidrs.is_empty() {
                cidr_chains.push((cidrs, cluster.clone()));
            }
            // A port of unknown protocol is sniffed on its VIP too: HTTP is
            // routed (and leaves as HTTP over mTLS), the rest is TCP.
            let sniffed = entries
                .iter()
                .any(|(s, p)| std::ptr::eq(*s, *svc) && *p == Protocol::Auto);
            let protocol = svc.port(port).map_or(Protocol::Tcp, |p| p.protocol);
            if !sniffed && l4::routed(mesh, proxy, svc) {
                // tcp/tls routes: chains by SNI and subnets on each VIP.
                let chains = l4::chains(mesh, proxy, svc, port, protocol, false);
                for vip in svc.addresses.iter().filter(|a| !a.contains('/')) {
                    out.listeners.push(listener::outbound_l4(
                        vip,
                        port,
                        &chains,
                        std::slice::from_ref(vip),
                    ));
                }
                continue;
            }
            let serve = if sniffed {
                Serve::Auto {
                    route: route.clone(),
                    cluster,
                }
            } else {
                Serve::Tcp { cluster }
            };
            for vip in svc.addresses.iter().filter(|a| !a.contains('/')) {
                out.listeners.push(listener::with_prefix_ranges(
                    listener::outbound(vip, port, &serve, false),
                    std::slice::from_ref(vip),
                ));
            }
        }
        // VIP-less TCP services with tcp/tls routes or on a TLS port share
        // `0.0.0.0:PORT` by SNI and subnets; the rest falls through to the
        // port's usual TCP destination.
        let vipless: Vec<&Service> = tcp
            .iter()
            .copied()
            .filter(|s| s.addresses.is_empty())
            .collect();
        let l4_wildcard = http.is_empty()
            && cidr_chains.is_empty()
            && vipless.iter().any(|s| {
                l4::routed(mesh, proxy, s)
                    || s.port(port)
                        .is_some_and(|p| matches!(p.protocol, Protocol::Tls | Protocol::Https))
            });
        if l4_wildcard {
            let mut chains: Vec<l4::L4Chain> = vipless
                .iter()
                .flat_map(|s| {
                    let protocol = s.port(port).map_or(Protocol::Tcp, |p| p.protocol);
                    l4::chains(mesh, proxy, s, port, protocol, true)
                })
                .collect();
            chains = l4::dedup(chains);
            if !chains.iter().any(l4::L4Chain::catch_all) {
                chains.push(l4::L4Chain {
                    server_names: Vec::new(),
                    prefix_ranges: Vec::new(),
                    clusters: vec![(tcp_cluster(&vipless, port, fallback), 100)],
                });
            }
            out.listeners
                .push(listener::outbound_l4("0.0.0.0", port, &chains, &[]));
            continue;
        }
        // The port's wildcard listener: HTTP (or sniffed) when an HTTP
        // service claims the port, else TCP for VIP-less services, with the
        // CIDR chains in front.
        let wildcard = if !http.is_empty() {
            Some(if any_auto {
                Serve::Auto {
                    route,
                    cluster: tcp_cluster(&tcp, port, fallback),
                }
            } else {
                Serve::Http { route }
            })
        } else if tcp.iter().any(|s| s.addresses.is_empty()) {
            Some(Serve::Tcp {
                cluster: tcp_cluster(&tcp, port, fallback),
            })
        } else if !cidr_chains.is_empty() {
            Some(Serve::Tcp {
                cluster: fallback.to_string(),
            })
        } else {
            None
        };
        if let Some(serve) = wildcard {
            out.listeners.push(listener::with_cidr_chains(
                listener::outbound("0.0.0.0", port, &serve, false),
                &cidr_chains,
            ));
        }
    }
}

/// A TCP port served by exactly one service goes to its cluster; otherwise
/// the destination is ambiguous and traffic falls back.
fn tcp_cluster(services: &[&Service], port: u32, fallback: &str) -> String {
    match services {
        [one] => cluster::outbound_name(port, "", &one.hostname),
        _ => fallback.to_string(),
    }
}

/// The workload's own service ports: (service port, target port, protocol),
/// from services with an endpoint on one of the proxy's IPs.
fn inbound_ports(mesh: &Mesh, proxy: &ProxyNode) -> Vec<(u32, u32, Protocol)> {
    let mut at: Vec<(usize, usize)> = proxy
        .ips
        .iter()
        .flat_map(|ip| mesh.endpoints_at(ip).iter().copied())
        .collect();
    // In mesh order (services sorted by hostname), as a scan would meet them.
    at.sort_unstable();
    at.dedup();
    let mut seen = BTreeMap::new();
    for (si, ei) in at {
        let svc = &mesh.services[si];
        let ep = &svc.endpoints[ei];
        for p in &svc.ports {
            if let Some(target) = ep.ports.get(&p.number) {
                seen.entry(*target)
                    .or_insert((p.number, *target, p.protocol));
            }
        }
    }
    seen.into_values()
        .map(|(_, target, protocol)| (target, target, protocol))
        .collect()
}

/// An inbound port: HTTP through a connection manager to `inbound|PORT||`.
fn inbound_serve(port: u32, protocol: Protocol) -> Serve {
    let cluster = cluster::inbound_name(port);
    if !protocol.is_http() && protocol != Protocol::Auto {
        return Serve::Tcp { cluster };
    }
    let rc = RouteConfiguration {
        name: cluster.clone(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                // Istio's default inbound route: no timeout, gRPC's
                // `grpc-timeout` ignored, and a retry only when the app's
                // connection was reset before the request went out.
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.clone())),
                    timeout: Some(common::millis(0)),
                    max_stream_duration: Some(MaxStreamDuration {
                        max_stream_duration: Some(common::millis(0)),
                        grpc_timeout_header_max: Some(common::millis(0)),
                        ..Default::default()
                    }),
                    retry_policy: Some(retry::inbound()),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    if protocol == Protocol::Auto {
        // Unnamed ports are sniffed: HTTP gets the connection manager, the
        // rest goes to the app as plain TCP.
        return Serve::AutoInline(Box::new(rc), cluster);
    }
    Serve::HttpInline(Box::new(rc))
}
