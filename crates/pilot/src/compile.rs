//! From loaded Istio and Kubernetes resources to the [`Mesh`] snapshot:
//! services with their endpoints, compiled VirtualServices, DestinationRules
//! and Sidecars, every host resolved to its FQDN.

use std::collections::BTreeMap;

use api::networking::{self as net, CaptureMode, OutboundTrafficMode, StringMatch};
use api::{Resource, Spec, kube};

use crate::cluster_ip::ClusterIps;
use crate::delegate::{DelegateVs, Delegates};
use crate::export::ExportTo;
use crate::mesh::{EgressListener, HostImport, ListenerPort, Mesh, SidecarScope};
use crate::model::{
    DOMAIN_SUFFIX, Endpoint, Protocol, Resolution, Service, ServicePort, labels_match, resolve_host,
};
use crate::policy::{DestinationPolicy, PolicyParts, Subset, TrafficPolicy};
use crate::routing::{
    AbortCode, Destination, DirectResponse, Fault, HeaderEdits, HeaderRules, HttpRoute, L4Match,
    L4Route, Mirror, Redirect, RequestMatch, Rewrite, Share, StrMatch, VirtualServiceRule,
};

/// Build the mesh from every loaded resource.
/// How the registry is built beyond what the config says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Give ServiceEntry hosts without addresses a VIP (see [`crate::auto_vip`]).
    pub auto_allocate: bool,
}

pub fn build(resources: &[Resource]) -> Mesh {
    build_with(resources, &BuildOptions::default())
}

pub fn build_with(resources: &[Resource], options: &BuildOptions) -> Mesh {
    let workload_entries: Vec<(&Resource, &net::WorkloadEntry)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::WorkloadEntry(we) => Some((r, we)),
            _ => None,
        })
        .collect();

    let cluster_ips = ClusterIps::allocate(resources);
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    for r in resources {
        let built = match &r.spec {
            Spec::Service(spec) => vec![kube_service(r, spec, &workload_entries, &cluster_ips)],
            Spec::ServiceEntry(se) => service_entry(r, se, &workload_entries),
            _ => continue,
        };
        for svc in built {
            // First definition of a host wins, as in Istio (oldest first).
            services.entry(svc.hostname.clone()).or_insert(svc);
        }
    }

    let mut mesh = Mesh::default();
    mesh.services = services.into_values().collect();
    if options.auto_allocate {
        crate::auto_vip::allocate(&mut mesh.services);
    }
    // VirtualServices without hosts are delegates: they apply only through
    // the roots that name them.
    let delegates: Delegates<'_> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::VirtualService(vs) if vs.hosts.is_empty() => Some((
                (r.namespace(), r.meta.name.as_str()),
                DelegateVs {
                    spec: vs,
                    export_to: ExportTo::new(&vs.export_to, r.namespace()),
                },
            )),
            _ => None,
        })
        .collect();
    for r in resources {
        match &r.spec {
            Spec::VirtualService(vs) if vs.hosts.is_empty() => {}
            Spec::VirtualService(vs) if vs.http.iter().any(|h| h.delegate.is_some()) => {
                let merged = crate::delegate::expand(r.namespace(), vs, &delegates);
                mesh.virtual_services.push(virtual_service(r, &merged));
            }
            Spec::VirtualService(vs) => mesh.virtual_services.push(virtual_service(r, vs)),
            Spec::DestinationRule(dr) => mesh.destination_rules.push(destination_rule(r, dr)),
            Spec::Sidecar(sc) => mesh.sidecars.push(sidecar(r, sc)),
            Spec::PeerAuthentication(pa) => {
                mesh.peer_authentications.push(crate::mesh::PeerAuthnRule {
                    namespace: r.namespace().to_string(),
                    name: r.meta.name.clone(),
                    spec: pa.clone(),
                })
            }
            Spec::AuthorizationPolicy(ap) => {
                mesh.authorization_policies
                    .push(crate::translate::authz::AuthzPolicy {
                        namespace: r.namespace().to_string(),
                        name: r.meta.name.clone(),
                        dry_run: crate::translate::authz::dry_run(&r.meta.annotations),
                        spec: ap.clone(),
                    })
            }
            Spec::RequestAuthentication(ra) => {
                mesh.request_authentications
                    .push(crate::translate::jwt::JwtPolicy {
                        namespace: r.namespace().to_string(),
                        name: r.meta.name.clone(),
                        spec: ra.clone(),
                    })
            }
            _ => {}
        }
    }
    mesh
}

fn kube_service(
    r: &Resource,
    spec: &kube::ServiceSpec,
    workload_entries: &[(&Resource, &net::WorkloadEntry)],
    cluster_ips: &ClusterIps,
) -> Service {
    let ns = r.namespace();
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .map(|p| {
            let name = p.name.clone().unwrap_or_default();
            ServicePort {
                protocol: Protocol::detect(None, p.app_protocol.as_deref(), &name),
                name,
                number: p.port,
                target_port: match &p.target_port {
                    Some(kube::IntOrString::Int(n)) => Some(*n),
                    _ => None,
                },
            }
        })
        .collect();
    let mut addresses: Vec<String> = spec.cluster_ips.clone();
    match spec.cluster_ip.as_deref() {
        Some("None") => {}
        Some(ip) if !ip.is_empty() && !addresses.iter().any(|a| a == ip) => {
            addresses.insert(0, ip.to_string());
        }
        Some(ip) if !ip.is_empty() => {}
        _ if addresses.is_empty() && spec.external_name.is_none() => {
            if let Some(ip) = cluster_ips.get(ns, &r.meta.name) {
                addresses.push(ip.to_string());
            }
        }
        _ => {}
    }
    // Kubernetes Services also select WorkloadEntries in their namespace (Istio).
    let endpoints = match &spec.selector {
        Some(sel) if !sel.is_empty() => workload_entries
            .iter()
            .filter(|(wr, we)| wr.namespace() == ns && labels_match(sel, &we.labels))
            .filter_map(|(_, we)| workload_endpoint(we, &ports))
            .collect(),
        _ => Vec::new(),
    };
    Service {
        hostname: format!("{}.{ns}.svc.{DOMAIN_SUFFIX}", r.meta.name),
        namespace: ns.to_string(),
        addresses,
        ports,
        resolution: Resolution::Static,
        mesh_external: false,
        endpoints,
        origin: format!("Service {ns}/{}", r.meta.name),
        subject_alt_names: Vec::new(),
        export_to: ExportTo::from_annotation(
            r.meta
                .annotations
                .get("networking.istio.io/exportTo")
                .map(String::as_str),
            ns,
        ),
    }
}

fn service_entry(
    r: &Resource,
    se: &net::ServiceEntry,
    workload_entries: &[(&Resource, &net::WorkloadEntry)],
) -> Vec<Service> {
    let ns = r.namespace();
    let ports: Vec<ServicePort> = se
        .ports
        .iter()
        .map(|p| {
            let name = p.name.clone().unwrap_or_default();
            ServicePort {
                protocol: Protocol::detect(p.protocol.as_deref(), None, &name),
                name,
                number: p.number,
                target_port: p.target_port,
            }
        })
        .collect();
    let resolution = match se.resolution {
        Some(net::Resolution::Static) => Resolution::Static,
        Some(
            net::Resolution::Dns | net::Resolution::DnsRoundRobin | net::Resolution::DynamicDns,
        ) => Resolution::Dns,
        Some(net::Resolution::None) | None => Resolution::Passthrough,
    };
    let mut endpoints: Vec<Endpoint> = se
        .endpoints
        .iter()
        .filter_map(|we| workload_endpoint(we, &ports))
        .collect();
    if let Some(sel) = &se.workload_selector {
        endpoints.extend(
            workload_entries
                .iter()
                .filter(|(wr, we)| wr.namespace() == ns && labels_match(&sel.labels, &we.labels))
                .filter_map(|(_, we)| workload_endpoint(we, &ports)),
        );
    }
    // A selector-based entry is served from its endpoints like STATIC.
    let resolution = if se.workload_selector.is_some() && resolution == Resolution::Passthrough {
        Resolution::Static
    } else {
        resolution
    };
    se.hosts
        .iter()
        .map(|host| Service {
            hostname: host.clone(),
            namespace: ns.to_string(),
            addresses: se.addresses.clone(),
            ports: ports.clone(),
            resolution,
            mesh_external: matches!(se.location, Some(net::Location::MeshExternal) | None),
            endpoints: endpoints.clone(),
            origin: format!("ServiceEntry {ns}/{}", r.meta.name),
            subject_alt_names: se.subject_alt_names.clone(),
            export_to: ExportTo::new(&se.export_to, ns),
        })
        .collect()
}

/// A WorkloadEntry as an endpoint: its port for each service port is the one
/// it names (by port name), else the service's targetPort, else the port itself.
fn workload_endpoint(we: &net::WorkloadEntry, ports: &[ServicePort]) -> Option<Endpoint> {
    let address = we.address.clone()?;
    let ports = ports
        .iter()
        .map(|p| {
            let target = we
                .ports
                .get(&p.name)
                .copied()
                .or(p.target_port)
                .unwrap_or(p.number);
            (p.number, target)
        })
        .collect();
    Some(Endpoint {
        address,
        ports,
        labels: we.labels.clone(),
        service_account: we.service_account.clone(),
        weight: we.weight.filter(|w| *w > 0),
        // The entry's `locality`, else its labels (Istio's order).
        locality: match we.locality.as_deref().filter(|l| !l.is_empty()) {
            Some(l) => crate::model::Locality::parse(l, '/'),
            None => crate::model::Locality::from_labels(&we.labels),
        },
    })
}

pub(crate) fn str_match(m: &StringMatch) -> StrMatch {
    match m {
        StringMatch::Exact(s) => StrMatch::Exact(s.clone()),
        StringMatch::Prefix(s) => StrMatch::Prefix(s.clone()),
        StringMatch::Regex(s) => StrMatch::Regex(s.clone()),
        StringMatch::Present => StrMatch::Present,
    }
}

fn pairs(map: &BTreeMap<String, StringMatch>) -> Vec<(String, StrMatch)> {
    map.iter().map(|(k, v)| (k.clone(), str_match(v))).collect()
}

fn destination(d: &net::Destination, weight: i32, ns: &str) -> Destination {
    Destination {
        host: resolve_host(&d.host, ns),
        subset: d.subset.clone(),
        port: d.port.as_ref().map(|p| p.number),
        weight: weight.max(0) as u32,
        headers: HeaderRules::default(),
    }
}

/// Istio's fault translation: `percentage` (a double) becomes a share of a
/// million, the deprecated integer `percent` a share of a hundred;
/// `exponentialDelay` and `http2Error` have no Envoy form and are left out.
fn fault(f: &net::HttpFaultInjection) -> Option<Fault> {
    let share = |p: Option<&net::Percent>, percent: Option<i32>| match p {
        Some(p) => Share {
            numerator: (p.value.clamp(0.0, 100.0) * 10_000.0).round() as u32,
            denominator: 1_000_000,
        },
        None => Share {
            numerator: percent.unwrap_or(0).clamp(0, 100) as u32,
            denominator: 100,
        },
    };
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay?.get();
        Some((fixed, share(d.percentage.as_ref(), d.percent)))
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let code = match (a.http_status, &a.grpc_status) {
            (Some(s), _) => AbortCode::Http(s.max(0) as u32),
            (None, Some(name)) => AbortCode::Grpc(grpc_code(name)?),
            (None, None) => return None,
        };
        Some((code, share(a.percentage.as_ref(), None)))
    });
    (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
}

/// gRPC status names (as Istio's `grpcStatus` takes them) to codes.
fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
}

/// Istio's mirror shares: `mirrorPercentage` (a double) as a share of a
/// million, truncated; the deprecated integer `mirrorPercent` of a
/// hundred; 100% when neither is set; an explicit 0 mirrors nothing.
fn mirrors(h: &net::HttpRoute, ns: &str) -> Vec<Mirror> {
    let of_percent = |p: &net::Percent| {
        (p.value > 0.0).then(|| Share {
            numerator: (p.value.min(100.0) * 10_000.0) as u32,
            denominator: 1_000_000,
        })
    };
    let all = Share {
        numerator: 100,
        denominator: 100,
    };
    let mirror = |d: &net::Destination, share: Share| Mirror {
        destination: destination(d, 0, ns),
        share,
    };
    let mut out = Vec::new();
    if let Some(d) = &h.mirror {
        let share = match (&h.mirror_percentage, h.mirror_percent) {
            (Some(p), _) => of_percent(p),
            (None, Some(n)) => (n > 0).then_some(Share {
                numerator: n.min(100),
                denominator: 100,
            }),
            (None, None) => Some(all),
        };
        out.extend(share.map(|s| mirror(d, s)));
    }
    for m in &h.mirrors {
        let share = match &m.percentage {
            Some(p) => of_percent(p),
            None => Some(all),
        };
        out.extend(share.map(|s| mirror(&m.destination, s)));
    }
    out
}

fn header_rules(h: Option<&net::Headers>) -> HeaderRules {
    let edits = |o: Option<&net::HeaderOperations>| {
        o.map(|o| HeaderEdits {
            set: o.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            add: o.add.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            remove: o.remove.clone(),
        })
        .unwrap_or_default()
    };
    h.map(|h| HeaderRules {
        request: edits(h.request.as_ref()),
        response: edits(h.response.as_ref()),
    })
    .unwrap_or_default()
}

fn virtual_service(r: &Resource, vs: &net::VirtualService) -> VirtualServiceRule {
    let ns = r.namespace();
    let weighted = |dests: Vec<Destination>| -> Vec<Destination> {
        // A lone destination without a weight takes all the traffic.
        if dests.len() == 1 && dests[0].weight == 0 {
            return dests
                .into_iter()
                .map(|d| Destination { weight: 100, ..d })
                .collect();
        }
        dests
    };
    VirtualServiceRule {
        namespace: ns.to_string(),
        name: r.meta.name.clone(),
        hosts: vs.hosts.iter().map(|h| resolve_host(h, ns)).collect(),
        gateways: vs.gateways.clone(),
        http: vs
            .http
            .iter()
            .map(|h| HttpRoute {
                name: h.name.clone(),
                matches: h
                    .matches
                    .iter()
                    .map(|m| RequestMatch {
                        uri: m.uri.as_ref().map(str_match),
                        method: m.method.as_ref().map(str_match),
                        authority: m.authority.as_ref().map(str_match),
                        scheme: m.scheme.as_ref().map(str_match),
                        headers: pairs(&m.headers),
                        without_headers: pairs(&m.without_headers),
                        query_params: pairs(&m.query_params),
                        ignore_uri_case: m.ignore_uri_case,
                        port: m.port,
                        source_labels: m.source_labels.clone(),
                        source_namespace: m.source_namespace.clone(),
                        gateways: m.gateways.clone(),
                    })
                    .collect(),
                destinations: weighted(
                    h.route
                        .iter()
                        .map(|d| Destination {
                            headers: header_rules(d.headers.as_ref()),
                            ..destination(&d.destination, d.weight, ns)
                        })
                        .collect(),
                ),
                headers: header_rules(h.headers.as_ref()),
                fault: h.fault.as_ref().and_then(fault),
                timeout: h.timeout.map(|d| d.get()),
                redirect: h.redirect.as_ref().map(|r| Redirect {
                    uri: r.uri.clone(),
                    authority: r.authority.clone(),
                    port: r.port,
                    scheme: r.scheme.clone(),
                    port_from_request: r.derive_port
                        == Some(net::RedirectPortSelection::FromRequestPort),
                    code: r.redirect_code.unwrap_or(301),
                }),
                retries: h.retries.clone(),
                rewrite: h.rewrite.as_ref().map(|r| Rewrite {
                    uri: r.uri.clone().filter(|u| !u.is_empty()),
                    authority: r.authority.clone().filter(|a| !a.is_empty()),
                    uri_regex: r
                        .uri_regex_rewrite
                        .as_ref()
                        .map(|x| (x.pattern.clone(), x.rewrite.clone())),
                }),
                mirrors: mirrors(h, ns),
                cors: h.cors_policy.clone(),
                direct_response: h.direct_response.as_ref().map(|d| DirectResponse {
                    status: d.status,
                    body: d.body.as_ref().and_then(|b| match (&b.string, &b.bytes) {
                        (Some(s), _) => Some(s.clone().into_bytes()),
                        (None, Some(b64)) => crate::translate::common::base64_decode(b64),
                        (None, None) => None,
                    }),
                }),
            })
            .collect(),
        tcp: vs
            .tcp
            .iter()
            .map(|t| L4Route {
                matches: t
                    .matches
                    .iter()
                    .map(|m| L4Match {
                        port: m.port,
                        destination_subnets: m.destination_subnets.clone(),
                        sni_hosts: Vec::new(),
                        source_labels: m.source_labels.clone(),
                        source_namespace: m.source_namespace.clone(),
                        gateways: m.gateways.clone(),
                    })
                    .collect(),
                destinations: weighted(l4_destinations(&t.route, ns)),
            })
            .collect(),
        tls: vs
            .tls
            .iter()
            .map(|t| L4Route {
                matches: t
                    .matches
                    .iter()
                    .map(|m| L4Match {
                        port: m.port,
                        destination_subnets: m.destination_subnets.clone(),
                        sni_hosts: m.sni_hosts.clone(),
                        source_labels: m.source_labels.clone(),
                        source_namespace: m.source_namespace.clone(),
                        gateways: m.gateways.clone(),
                    })
                    .collect(),
                destinations: weighted(l4_destinations(&t.route, ns)),
            })
            .collect(),
        export_to: ExportTo::new(&vs.export_to, ns),
    }
}

fn l4_destinations(route: &[net::RouteDestination], ns: &str) -> Vec<Destination> {
    route
        .iter()
        .map(|d| destination(&d.destination, d.weight, ns))
        .collect()
}

fn traffic_policy(p: Option<&net::TrafficPolicy>) -> TrafficPolicy {
    let Some(p) = p else {
        return TrafficPolicy::default();
    };
    TrafficPolicy {
        parts: PolicyParts {
            load_balancer: p.load_balancer.clone(),
            connection_pool: p.connection_pool.clone(),
            outlier_detection: p.outlier_detection.clone(),
            tls: p.tls.clone(),
        },
        retry_budget: p.retry_budget.clone(),
        // The first entry for a port wins, as Istio's lookup finds it.
        ports: p
            .port_level_settings
            .iter()
            .rev()
            .filter_map(|s| {
                let parts = PolicyParts {
                    load_balancer: s.load_balancer.clone(),
                    connection_pool: s.connection_pool.clone(),
                    outlier_detection: s.outlier_detection.clone(),
                    tls: s.tls.clone(),
                };
                Some((s.port.as_ref()?.number, parts))
            })
            .collect(),
    }
}

fn destination_rule(r: &Resource, dr: &net::DestinationRule) -> DestinationPolicy {
    let ns = r.namespace();
    DestinationPolicy {
        host: resolve_host(&dr.host, ns),
        namespace: ns.to_string(),
        name: r.meta.name.clone(),
        workload_selector: dr.workload_selector.is_some(),
        policy: traffic_policy(dr.traffic_policy.as_ref()),
        subsets: dr
            .subsets
            .iter()
            .map(|s| Subset {
                name: s.name.clone(),
                labels: s.labels.clone(),
                policy: traffic_policy(s.traffic_policy.as_ref()),
            })
            .collect(),
        export_to: ExportTo::new(&dr.export_to, ns),
    }
}

fn sidecar(r: &Resource, sc: &net::Sidecar) -> SidecarScope {
    let ns = r.namespace();
    SidecarScope {
        namespace: ns.to_string(),
        name: r.meta.name.clone(),
        selector: sc.workload_selector.as_ref().map(|s| s.labels.clone()),
        egress: sc
            .egress
            .iter()
            .map(|e| EgressListener {
                port: e.port.as_ref().map(|p| {
                    let name = p.name.clone().unwrap_or_default();
                    ListenerPort {
                        number: p.number,
                        protocol: Protocol::detect(p.protocol.as_deref(), None, &name),
                        name,
                    }
                }),
                bind: e.bind.clone(),
                capture_none: e.capture_mode == Some(CaptureMode::None),
                hosts: e
                    .hosts
                    .iter()
                    .map(|h| {
                        let (ns_part, host) = h.split_once('/').unwrap_or(("*", h));
                        HostImport {
                            namespace: ns_part.to_string(),
                            host: if host == "*" {
                                "*".to_string()
                            } else {
                                resolve_host(host, ns)
                            },
                        }
                    })
                    .collect(),
            })
            .collect(),
        registry_only: sc
            .outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode)
            .map(|m| m == OutboundTrafficMode::RegistryOnly),
    }
}
