//! Analyzers for the networking kinds: VirtualService references and
//! conflicts, DestinationRule TLS and subsets, Gateway selectors, ports,
//! credentials and conflicts, ServiceEntry addresses and protocols, Sidecar
//! selectors.

use std::collections::{BTreeMap, BTreeSet};

use super::index::{Index, hosts_overlap, labels_match, resolve};
use super::{Message, codes};
use crate::networking::*;
use crate::{Kind, Resource, Spec};

/// Every destination of a VirtualService with its field path.
fn destinations(vs: &VirtualService) -> Vec<(String, &Destination)> {
    let mut out = Vec::new();
    for (i, r) in vs.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((format!("http[{i}].route[{j}]"), &d.destination));
        }
        if let Some(m) = &r.mirror {
            out.push((format!("http[{i}].mirror"), m));
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            out.push((format!("http[{i}].mirrors[{j}]"), &m.destination));
        }
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((format!("tcp[{i}].route[{j}]"), &d.destination));
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((format!("tls[{i}].route[{j}]"), &d.destination));
        }
    }
    out
}

/// The namespaces a resource is visible in, for checks made from each of
/// them: its own when exported everywhere, else the listed ones.
fn export_namespaces(r: &Resource, export_to: &[String]) -> Vec<String> {
    let own = r.namespace().to_string();
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        return vec![own];
    }
    export_to
        .iter()
        .filter(|e| *e != "~")
        .map(|e| if e == "." { own.clone() } else { e.clone() })
        .collect()
}

fn virtual_services<'a>(
    ix: &Index<'a>,
) -> impl Iterator<Item = (&'a Resource, &'a VirtualService)> + use<'a> {
    ix.resources.iter().filter_map(|r| match &r.spec {
        Spec::VirtualService(vs) => Some((r, vs)),
        _ => None,
    })
}

fn destination_rules<'a>(
    ix: &Index<'a>,
) -> impl Iterator<Item = (&'a Resource, &'a DestinationRule)> + use<'a> {
    ix.resources.iter().filter_map(|r| match &r.spec {
        Spec::DestinationRule(dr) => Some((r, dr)),
        _ => None,
    })
}

fn gateways<'a>(ix: &Index<'a>) -> impl Iterator<Item = (&'a Resource, &'a Gateway)> + use<'a> {
    ix.resources.iter().filter_map(|r| match &r.spec {
        Spec::Gateway(g) => Some((r, g)),
        _ => None,
    })
}

// ---------------------------------------------------------------- VirtualService

/// IST0101 for destinations (and mirrors) with no Service/ServiceEntry or
/// no such port; IST0112 when a multi-port service needs a port; IST0140
/// when a subset is used on a gateway-only route.
pub(super) fn vs_destination_hosts(ix: &Index<'_>, out: &mut Vec<Message>) {
    for (r, vs) in virtual_services(ix) {
        let namespaces = export_namespaces(r, &vs.export_to);
        for (_, d) in destinations(vs) {
            for ns in &namespaces {
                let found = ix.lookup(ns, &d.host);
                if found.is_empty() {
                    out.push(Message::new(
                        codes::REFERENCED_RESOURCE_NOT_FOUND,
                        r,
                        format!("Referenced host not found: {:?}", d.host),
                    ));
                    continue;
                }
                let ports: BTreeSet<u32> = found
                    .iter()
                    .flat_map(|s| s.ports.iter().map(|p| p.0))
                    .collect();
                match d.port {
                    Some(p) if !ports.is_empty() && !ports.contains(&p.number) => {
                        out.push(Message::new(
                            codes::REFERENCED_RESOURCE_NOT_FOUND,
                            r,
                            format!(
                                "Referenced host+port not found: \"{}+{}\"",
                                d.host, p.number
                            ),
                        ));
                    }
                    None if ports.len() > 1
                        && found.iter().any(|s| s.resource.kind == Kind::Service) =>
                    {
                        let list: Vec<String> = ports.iter().map(u32::to_string).collect();
                        out.push(Message::new(
                            codes::VS_DESTINATION_PORT_SELECTOR_REQUIRED,
                            r,
                            format!(
                                "This VirtualService routes to a service {:?} that exposes multiple ports [{}]. Specifying a port in the destination is required to disambiguate.",
                                d.host,
                                list.join(" ")
                            ),
                        ));
                    }
                    _ => {}
                }
            }
        }
        // A gateway route without a subset does not get the subset routing
        // that mesh VirtualServices for the same host apply to sidecars.
        let gateway_only = !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == "mesh");
        if gateway_only {
            for (_, d) in destinations(vs) {
                if d.subset.is_some() {
                    continue;
                }
                let fqdn = resolve(r.namespace(), &d.host);
                for (mr, mvs) in virtual_services(ix) {
                    let mesh = mvs.gateways.is_empty() || mvs.gateways.iter().any(|g| g == "mesh");
                    let same_host = mvs.hosts.iter().any(|h| resolve(mr.namespace(), h) == fqdn);
                    let uses_subset = destinations(mvs).iter().any(|(_, md)| md.subset.is_some());
                    if mesh && same_host && uses_subset {
                        out.push(Message::new(
                            codes::INGRESS_ROUTE_RULES_NOT_AFFECTED,
                            r,
                            format!("Subset in virtual service {}/{} has no effect on ingress gateway {}/{} requests", mr.namespace(), mr.meta.name, r.namespace(), r.meta.name),
                        ));
                    }
                }
            }
        }
    }
}

/// IST0101 for destinations naming a subset that no DestinationRule defines.
pub(super) fn vs_destination_rules(ix: &Index<'_>, out: &mut Vec<Message>) {
    for (r, vs) in virtual_services(ix) {
        for (_, d) in destinations(vs) {
            let Some(subset) = &d.subset else { continue };
            let fqdn = resolve(r.namespace(), &d.host);
            let found = destination_rules(ix).any(|(dr_r, dr)| {
                let dr_host = resolve(dr_r.namespace(), &dr.host);
                super::index::host_matches(&dr_host, &fqdn)
                    && dr.subsets.iter().any(|s| &s.name == subset)
            });
            if !found {
                out.push(Message::new(
                    codes::REFERENCED_RESOURCE_NOT_FOUND,
                    r,
                    format!(
                        "Referenced host+subset in destinationrule not found: \"{}+{}\"",
                        d.host, subset
                    ),
                ));
            }
        }
    }
}

/// Splits a gateway reference into (namespace, name).
fn gateway_ref<'a>(vs_ns: &'a str, g: &'a str) -> (&'a str, &'a str) {
    match g.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => match g.split_once('.') {
            // `name.namespace.svc.cluster.local` form.
            Some((name, rest)) => (rest.split('.').next().unwrap_or(vs_ns), name),
            None => (vs_ns, g),
        },
    }
}

/// IST0101 for unknown gateways, IST0132 for a gateway that serves none of
/// the VirtualService's hosts (also when it does not exist), IST0165 for
/// references to generated gateways.
pub(super) fn vs_gateways(ix: &Index<'_>, out: &mut Vec<Message>) {
    for (r, vs) in virtual_services(ix) {
        let mut refs: Vec<&String> = vs.gateways.iter().collect();
        for h in &vs.http {
            for m in &h.matches {
                refs.extend(&m.gateways);
            }
        }
        let mut seen = BTreeSet::new();
        for g in refs {
            if g == "mesh" || !seen.insert(g.as_str()) {
                continue;
            }
            if g.contains("istio-autogenerated-k8s-gateway") {
                out.push(Message::new(
                    codes::REFERENCED_INTERNAL_GATEWAY,
                    r,
                    format!("Gateway reference in VirtualService {} is to an implementation-generated internal Gateway: {g}.", r.meta.name),
                ));
                continue;
            }
            let (ns, name) = gateway_ref(r.namespace(), g);
            let gw = gateways(ix)
                .find(|(gr, _)| gr.meta.name == name && gr.namespace() == ns)
                .map(|(_, gw)| gw);
            if gw.is_none() {
                out.push(Message::new(
                    codes::REFERENCED_RESOURCE_NOT_FOUND,
                    r,
                    format!("Referenced gateway not found: {g:?}"),
                ));
            }
            let served = gw.is_some_and(|gw| {
                vs.hosts.iter().any(|h| {
                    gw.servers.iter().flat_map(|s| &s.hosts).any(|sh| {
                        let (sns, shost) = sh.split_once('/').unwrap_or(("*", sh));
                        let ns_ok = sns == "*"
                            || (sns == "." && ns == r.namespace())
                            || sns == r.namespace();
                        ns_ok && hosts_overlap(shost, h)
                    })
                })
            });
            if !served {
                out.push(Message::new(
                    codes::VS_HOST_NOT_FOUND_IN_GATEWAY,
                    r,
                    format!("one or more host [{}] defined in VirtualService {}/{} not found in Gateway {ns}/{name}.", vs.hosts.join(" "), r.namespace(), r.meta.name),
                ));
            }
        }
    }
}

/// IST0109: several VirtualServices bound to the mesh define the same host
/// for overlapping sets of namespaces.
pub(super) fn vs_conflicting_mesh_hosts(ix: &Index<'_>, out: &mut Vec<Message>) {
    // (resource, host, export scope: None = everywhere)
    let mut entries: Vec<(&Resource, String, Option<BTreeSet<String>>)> = Vec::new();
    for (r, vs) in virtual_services(ix) {
        let mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
        if !mesh {
            continue;
        }
        let scope = if vs.export_to.is_empty() || vs.export_to.iter().any(|e| e == "*") {
            None
        } else {
            Some(
                vs.export_to
                    .iter()
                    .map(|e| {
                        if e == "." {
                            r.namespace().to_string()
                        } else {
                            e.clone()
                        }
                    })
                    .collect(),
            )
        };
        let hosts: BTreeSet<String> = vs.hosts.iter().map(|h| resolve(r.namespace(), h)).collect();
        for h in hosts {
            entries.push((r, h, scope.clone()));
        }
    }
    for (i, (r, host, scope)) in entries.iter().enumerate() {
        let conflicting: BTreeSet<String> = entries
            .iter()
            .enumerate()
            .filter(|(j, (o, oh, other))| {
                *j != i
                    && o.key() != r.key()
                    && hosts_overlap(host, oh)
                    && match (scope, other) {
                        (None, _) | (_, None) => true,
                        (Some(a), Some(b)) => !a.is_disjoint(b),
                    }
            })
            .map(|(_, (o, _, _))| format!("{}/{}", o.namespace(), o.meta.name))
            .collect();
        if !conflicting.is_empty() {
            let mut all = vec![format!("{}/{}", r.namespace(), r.meta.name)];
            all.extend(conflicting);
            all.sort();
            out.push(Message::new(
                codes::CONFLICTING_MESH_GATEWAY_VS_HOSTS,
                r,
                format!("The VirtualServices {} associated with mesh gateway define the same host {host} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.", all.join(",")),
            ));
        }
    }
}

/// IST0130/IST0131: rules after a catch-all are unreachable; a match that
/// an earlier match covers (same conditions, or a longer path under an
/// earlier prefix) is ineffective; a rule whose every match is covered by
/// earlier rules is unreachable. For HTTP, TCP and TLS routes.
pub(super) fn vs_match_overlap(ix: &Index<'_>, out: &mut Vec<Message>) {
    for (r, vs) in virtual_services(ix) {
        let http: Vec<&[HttpMatchRequest]> = vs.http.iter().map(|h| &h.matches[..]).collect();
        rule_overlap(r, &http, http_covers, http_same, out);
        let tcp: Vec<&[L4MatchAttributes]> = vs.tcp.iter().map(|t| &t.matches[..]).collect();
        rule_overlap(r, &tcp, |a, b| a == b, |a, b| a == b, out);
        let tls: Vec<&[TlsMatchAttributes]> = vs.tls.iter().map(|t| &t.matches[..]).collect();
        rule_overlap(r, &tls, |a, b| a == b, |a, b| a == b, out);
    }
}

/// `covers(a, b)`: `a` matches everything `b` does; `same`: equal
/// conditions (a rule is unreachable only when all its matches repeat
/// earlier ones exactly).
fn rule_overlap<M>(
    r: &Resource,
    rules: &[&[M]],
    covers: fn(&M, &M) -> bool,
    same: fn(&M, &M) -> bool,
    out: &mut Vec<Message>,
) {
    let mut catch_all: Option<usize> = None;
    for (i, matches) in rules.iter().enumerate() {
        if let Some(c) = catch_all {
            out.push(Message::new(
                codes::VS_UNREACHABLE_RULE,
                r,
                format!("VirtualService rule #{i} not used (only the last rule can have no matches; rule #{c} matches every request)."),
            ));
            continue;
        }
        let all_repeated = !matches.is_empty()
            && matches.iter().all(|m| {
                rules[..i]
                    .iter()
                    .any(|earlier| earlier.iter().any(|e| same(e, m)))
            });
        for (j, m) in matches.iter().enumerate() {
            let prior = rules[..i]
                .iter()
                .position(|earlier| earlier.iter().any(|e| covers(e, m)));
            match prior {
                Some(k) => out.push(Message::new(
                    codes::VS_INEFFECTIVE_MATCH,
                    r,
                    format!("VirtualService rule #{i} match #{j} is not used (duplicate/overlapping match in rule #{k})."),
                )),
                None => {
                    if matches[..j].iter().any(|e| covers(e, m)) {
                        out.push(Message::new(
                            codes::VS_INEFFECTIVE_MATCH,
                            r,
                            format!("VirtualService rule #{i} match #{j} is not used (duplicate/overlapping match in rule #{i})."),
                        ));
                    }
                }
            }
        }
        if all_repeated {
            out.push(Message::new(
                codes::VS_UNREACHABLE_RULE,
                r,
                format!("VirtualService rule #{i} not used (all matches are used by prior rules)."),
            ));
        }
        if matches.is_empty() {
            catch_all = Some(i);
        }
    }
}

/// `a ⊆ b` for label/header maps.
fn map_subset<V: PartialEq>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> bool {
    a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// Equal conditions, names aside.
fn http_same(a: &HttpMatchRequest, b: &HttpMatchRequest) -> bool {
    let strip = |m: &HttpMatchRequest| HttpMatchRequest {
        name: None,
        stat_prefix: None,
        ..m.clone()
    };
    strip(a) == strip(b)
}

/// Whether every request `b` matches is also matched by `a`.
fn http_covers(a: &HttpMatchRequest, b: &HttpMatchRequest) -> bool {
    let uri_ok = match (&a.uri, &b.uri) {
        (None, _) => true,
        (Some(StringMatch::Prefix(p)), Some(StringMatch::Prefix(q))) if p == q => true,
        // Istio does not count `prefix: /` as overlapping narrower matches.
        (Some(StringMatch::Prefix(p)), Some(StringMatch::Prefix(q) | StringMatch::Exact(q))) => {
            p != "/" && q.starts_with(p.as_str())
        }
        (x, y) => x == y,
    };
    let opt = |x: &Option<StringMatch>, y: &Option<StringMatch>| x.is_none() || x == y;
    uri_ok
        && opt(&a.scheme, &b.scheme)
        && opt(&a.method, &b.method)
        && opt(&a.authority, &b.authority)
        && (a.port.is_none() || a.port == b.port)
        && (a.source_namespace.is_none() || a.source_namespace == b.source_namespace)
        && (a.gateways.is_empty() || a.gateways == b.gateways)
        && a.ignore_uri_case == b.ignore_uri_case
        && map_subset(&a.headers, &b.headers)
        && map_subset(&a.query_params, &b.query_params)
        && map_subset(&a.without_headers, &b.without_headers)
        && map_subset(&a.source_labels, &b.source_labels)
}

// ---------------------------------------------------------------- DestinationRule

/// IST0128/IST0129: SIMPLE or MUTUAL TLS without `caCertificates` does not
/// verify the server (unless a credentialName with a workloadSelector provides it).
pub(super) fn dr_ca_certificates(ix: &Index<'_>, out: &mut Vec<Message>) {
    for (r, dr) in destination_rules(ix) {
        let Some(tp) = &dr.traffic_policy else {
            continue;
        };
        let unverified = |tls: &ClientTlsSettings| {
            matches!(
                tls.mode,
                Some(ClientTlsMode::Simple | ClientTlsMode::Mutual)
            ) && tls.ca_certificates.as_deref().unwrap_or("").is_empty()
                && !(tls
                    .credential_name
                    .as_deref()
                    .is_some_and(|c| !c.is_empty())
                    && dr.workload_selector.is_some())
                && tls.insecure_skip_verify != Some(true)
        };
        let mode = |tls: &ClientTlsSettings| match tls.mode {
            Some(ClientTlsMode::Mutual) => "MUTUAL",
            _ => "SIMPLE",
        };
        if let Some(tls) = &tp.tls
            && unverified(tls)
        {
            out.push(Message::new(
                codes::NO_SERVER_CERT_VERIFICATION_DR,
                r,
                format!("DestinationRule {} in namespace {} has TLS mode set to {} but no caCertificates are set to validate server identity for host: {}", r.meta.name, r.namespace(), mode(tls), dr.host),
            ));
        }
        for p in &tp.port_level_settings {
            if let Some(tls) = &p.tls
                && unverified(tls)
            {
                let port = p.port.map_or(0, |p| p.number);
                out.push(Message::new(
                    codes::NO_SERVER_CERT_VERIFICATION_PORT,
                    r,
                    format!("DestinationRule {} in namespace {} has TLS mode set to {} but no caCertificates are set to validate server identity for host: {} at port {port}", r.meta.name, r.namespace(), mode(tls), dr.host),
                ));
            }
        }
    }
}

/// Labels Kubernetes sets from the node; a subset selecting on them is
/// matched at runtime, not against pod labels.
const TOPOLOGY_LABELS: [&str; 4] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
    "topology.istio.io/network",
];

/// IST0174 for a host that matches no service; IST0173 for a subset whose
/// labels (with the service's selector) select no pod.
pub(super) fn dr_subsets_select_pods(ix: &Index<'_>, out: &mut Vec<Message>) {
    for (r, dr) in destination_rules(ix) {
        let found = ix.lookup(r.namespace(), &dr.host);
        if found.is_empty() {
            out.push(Message::new(
                codes::UNKNOWN_DR_HOST,
                r,
                format!("The host {} defined in the DestinationRule does not match any services in the mesh.", dr.host),
            ));
            continue;
        }
        for s in &dr.subsets {
            let labels: BTreeMap<String, String> = s
                .labels
                .iter()
                .filter(|(k, v)| !TOPOLOGY_LABELS.contains(&k.as_str()) || v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if labels.is_empty() && s.labels.len() != labels.len() {
                continue; // Only topology labels: decided by node placement.
            }
            let selects = found.iter().any(|svc| {
                let Some(sel) = svc.selector else { return true };
                ix.workloads.iter().any(|w| {
                    w.namespace == svc.namespace
                        && labels_match(sel, w.labels)
                        && labels_match(&labels, w.labels)
                })
            });
            if !selects {
                out.push(Message::new(
                    codes::DR_SUBSET_NOT_SELECT_PODS,
                    r,
                    format!("The Subset {} defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream).", s.name),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------- Gateway

fn selector_string(sel: &BTreeMap<String, String>) -> String {
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// IST0101 when no workload matches a Gateway's selector; IST0162 when a
/// server port is not a port of the Services in front of those workloads.
pub(super) fn gateway_ports(ix: &Index<'_>, out: &mut Vec<Message>) {
    for (r, gw) in gateways(ix) {
        let pods: Vec<_> = ix
            .workloads
            .iter()
            .filter(|w| labels_match(&gw.selector, w.labels))
            .collect();
        if pods.is_empty() {
            out.push(Message::new(
                codes::REFERENCED_RESOURCE_NOT_FOUND,
                r,
                format!(
                    "Referenced selector not found: {:?}",
                    selector_string(&gw.selector)
                ),
            ));
            continue;
        }
        let mut ports = BTreeSet::new();
        for svc in &ix.services {
            let Some(sel) = svc.selector else { continue };
            let Spec::Service(spec) = &svc.resource.spec else {
                continue;
            };
            if sel.is_empty()
                || !pods
                    .iter()
                    .any(|p| p.namespace == svc.namespace && labels_match(sel, p.labels))
            {
                continue;
            }
            for p in &spec.ports {
                ports.insert(p.port);
                match &p.target_port {
                    Some(crate::kube::IntOrString::Int(t)) => {
                        ports.insert(*t);
                    }
                    Some(crate::kube::IntOrString::String(_)) => {}
                    None => {}
                }
            }
        }
        for s in &gw.servers {
            if s.port.number != 0 && !ports.contains(&s.port.number) {
                out.push(Message::new(
                    codes::GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
                    r,
                    format!("The gateway is listening on a target port (port {}) that is not defined in the Service associated with its workload instances (Pod selector {}).", s.port.number, selector_string(&gw.selector)),
                ));
            }
        }
    }
}

/// IST0145: Gateways selecting the same workloads with servers on the same
/// port and overlapping hosts.
pub(super) fn conflicting_gateways(ix: &Index<'_>, out: &mut Vec<Message>) {
    let gws: Vec<_> = gateways(ix).collect();
    for (i, (r, gw)) in gws.iter().enumerate() {
        let mut conflicts = BTreeSet::new();
        let mut detail = None;
        for (j, (o, ogw)) in gws.iter().enumerate() {
            if i == j {
                continue;
            }
            // Same workloads: one selector includes the other.
            if !(labels_match(&gw.selector, &ogw.selector)
                || labels_match(&ogw.selector, &gw.selector))
            {
                continue;
            }
            for s in &gw.servers {
                for os in &ogw.servers {
                    if s.port.number == 0 || s.port.number != os.port.number {
                        continue;
                    }
                    let overlap: Vec<&String> = s
                        .hosts
                        .iter()
                        .filter(|h| {
                            os.hosts
                                .iter()
                                .any(|oh| hosts_overlap(strip_ns(h), strip_ns(oh)))
                        })
                        .collect();
                    if !overlap.is_empty() {
                        conflicts.insert(format!("{}/{}", o.namespace(), o.meta.name));
                        detail = Some((
                            s.port.number,
                            overlap
                                .iter()
                                .map(|h| h.as_str())
                                .collect::<Vec<_>>()
                                .join(","),
                        ));
                    }
                }
            }
        }
        if let Some((port, hosts)) = detail {
            out.push(Message::new(
                codes::CONFLICTING_GATEWAYS,
                r,
                format!(
                    "Conflict with gateways {} (workload selector {}, port {port}, hosts {hosts}).",
                    conflicts.into_iter().collect::<Vec<_>>().join(","),
                    selector_string(&gw.selector)
                ),
            ));
        }
    }
}

fn strip_ns(h: &str) -> &str {
    h.split_once('/').map_or(h, |(_, h)| h)
}

/// IST0101 when a server's credentialName names no Secret in the gateway
/// workload's namespace; IST0161 when the Secret lacks a certificate and key.
pub(super) fn gateway_secrets(ix: &Index<'_>, out: &mut Vec<Message>) {
    for (r, gw) in gateways(ix) {
        let pod_namespaces: BTreeSet<&str> = ix
            .workloads
            .iter()
            .filter(|w| labels_match(&gw.selector, w.labels))
            .map(|w| w.namespace)
            .collect();
        let namespaces: Vec<&str> = if pod_namespaces.is_empty() {
            vec![r.namespace()]
        } else {
            pod_namespaces.into_iter().collect()
        };
        for s in &gw.servers {
            let Some(tls) = &s.tls else { continue };
            let mut names: Vec<&String> = tls.credential_names.iter().collect();
            names.extend(tls.credential_name.iter());
            for name in names {
                if name.is_empty() || name.contains("://") {
                    continue;
                }
                for ns in &namespaces {
                    let secret = ix
                        .of_kind(Kind::Secret)
                        .find(|sr| sr.namespace() == *ns && &sr.meta.name == name);
                    match secret.map(|s| &s.spec) {
                        None => out.push(Message::new(
                            codes::REFERENCED_RESOURCE_NOT_FOUND,
                            r,
                            format!("Referenced credentialName not found: {name:?}"),
                        )),
                        Some(Spec::Secret(sec)) => {
                            let has = |k: &str| sec.pem_keys.iter().any(|x| x == k);
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                            let expired = sec.cert_not_after.is_some_and(|t| t < now);
                            let ok = ((has("tls.crt") && has("tls.key"))
                                || (has("cert") && has("key")))
                                && !expired;
                            if !ok {
                                out.push(Message::new(
                                    codes::INVALID_GATEWAY_CREDENTIAL,
                                    r,
                                    format!("The credential referenced by the Gateway {} in namespace {} is invalid, which can cause the traffic not to work as expected.", r.meta.name, r.namespace()),
                                ));
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

/// IST0138: a gateway sharing a certificate with another gateway whose
/// workloads include its own (its selector is a subset of the other's).
pub(super) fn gateway_duplicate_certificates(ix: &Index<'_>, out: &mut Vec<Message>) {
    let certs = |gw: &Gateway| -> BTreeSet<String> {
        gw.servers
            .iter()
            .filter_map(|s| s.tls.as_ref())
            .filter_map(|tls| {
                match (
                    &tls.credential_name,
                    &tls.server_certificate,
                    &tls.private_key,
                ) {
                    (Some(c), _, _) if !c.is_empty() => Some(format!("cred:{c}")),
                    (_, Some(c), Some(k)) => Some(format!("file:{c}:{k}")),
                    _ => None,
                }
            })
            .collect()
    };
    let gws: Vec<_> = gateways(ix).map(|(r, g)| (r, g, certs(g))).collect();
    for (i, (r, gw, mine)) in gws.iter().enumerate() {
        let mut names = BTreeSet::new();
        for (j, (o, ogw, theirs)) in gws.iter().enumerate() {
            if i != j
                && o.key() != r.key()
                && !mine.is_disjoint(theirs)
                && labels_match(&gw.selector, &ogw.selector)
            {
                names.insert(format!("{}/{}", o.namespace(), o.meta.name));
            }
        }
        if !names.is_empty() {
            names.insert(format!("{}/{}", r.namespace(), r.meta.name));
            out.push(Message::new(
                codes::GATEWAY_DUPLICATE_CERTIFICATE,
                r,
                format!("Duplicate certificate in multiple gateways [{}] may cause 404s if clients re-use HTTP2 connections.", names.into_iter().collect::<Vec<_>>().join(" ")),
            ));
        }
    }
}

// ---------------------------------------------------------------- ServiceEntry

/// IST0134: a ServiceEntry without addresses for TCP (or unset) protocol
/// ports, unless DNS auto-allocation is on.
pub(super) fn se_addresses(ix: &Index<'_>, out: &mut Vec<Message>) {
    let auto_allocate = ix
        .mesh
        .default_config
        .as_ref()
        .and_then(|c| c.proxy_metadata.get("ISTIO_META_DNS_AUTO_ALLOCATE"))
        .is_some_and(|v| v == "true");
    if auto_allocate {
        return;
    }
    for r in ix.of_kind(Kind::ServiceEntry) {
        let Spec::ServiceEntry(se) = &r.spec else {
            continue;
        };
        if !se.addresses.is_empty() {
            continue;
        }
        if se.ports.iter().any(|p| {
            p.protocol
                .as_deref()
                .is_none_or(|p| p.is_empty() || p.eq_ignore_ascii_case("TCP"))
        }) {
            out.push(Message::new(
                codes::SERVICE_ENTRY_ADDRESSES_REQUIRED,
                r,
                "ServiceEntry addresses are required for this protocol.",
            ));
        }
    }
}

/// A ServiceEntry's protocol for a host and port, with its export scope.
type ProtocolUse<'a> = (&'a Resource, String, Option<BTreeSet<String>>);

/// IST0177: ServiceEntries visible to the same namespaces defining one
/// host and port with different protocols.
pub(super) fn se_conflicting_protocols(ix: &Index<'_>, out: &mut Vec<Message>) {
    let mut by_key: BTreeMap<(String, u32), Vec<ProtocolUse<'_>>> = BTreeMap::new();
    for r in ix.of_kind(Kind::ServiceEntry) {
        let Spec::ServiceEntry(se) = &r.spec else {
            continue;
        };
        let scope = if se.export_to.is_empty() || se.export_to.iter().any(|e| e == "*") {
            None
        } else {
            Some(
                se.export_to
                    .iter()
                    .map(|e| {
                        if e == "." {
                            r.namespace().to_string()
                        } else {
                            e.clone()
                        }
                    })
                    .collect(),
            )
        };
        for h in &se.hosts {
            for p in &se.ports {
                let proto = p.protocol.clone().unwrap_or_default().to_ascii_uppercase();
                by_key
                    .entry((h.clone(), p.number))
                    .or_default()
                    .push((r, proto, scope.clone()));
            }
        }
    }
    for ((host, port), list) in by_key {
        for (i, (r, proto, scope)) in list.iter().enumerate() {
            let others: Vec<_> = list
                .iter()
                .enumerate()
                .filter(|(j, (o, op, os))| {
                    *j != i
                        && o.key() != r.key()
                        && op != proto
                        && match (scope, os) {
                            (None, _) | (_, None) => true,
                            (Some(a), Some(b)) => !a.is_disjoint(b),
                        }
                })
                .collect();
            if others.is_empty() {
                continue;
            }
            let mut names = vec![format!("{}/{}", r.namespace(), r.meta.name)];
            let mut protos = vec![proto.clone()];
            for (_, (o, op, _)) in others {
                names.push(format!("{}/{}", o.namespace(), o.meta.name));
                protos.push(op.clone());
            }
            names.sort();
            protos.sort();
            protos.dedup();
            out.push(Message::new(
                codes::CONFLICTING_SERVICE_ENTRY_PROTOCOL,
                r,
                format!("Multiple ServiceEntries ({}) define the same host {host:?} and port {port} with conflicting protocols ({}).", names.join(", "), protos.join(", ")),
            ));
        }
    }
}

// ---------------------------------------------------------------- Sidecar

/// IST0101 for a Sidecar selector that matches no workload; IST0110 for
/// several Sidecars selecting one workload; IST0111 for several Sidecars
/// without selector in a namespace; IST0167 for Sidecars in ambient
/// namespaces (which have no sidecars).
pub(super) fn sidecar_selectors(ix: &Index<'_>, out: &mut Vec<Message>) {
    let sidecars: Vec<(&Resource, &Sidecar)> = ix
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Sidecar(s) => Some((r, s)),
            _ => None,
        })
        .collect();
    let mut no_selector: BTreeMap<&str, Vec<&Resource>> = BTreeMap::new();
    let mut per_pod: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
    for (r, sc) in &sidecars {
        let ambient = ix.namespace(r.namespace()).is_some_and(|n| {
            n.meta
                .labels
                .get("istio.io/dataplane-mode")
                .is_some_and(|m| m == "ambient")
                && n.meta
                    .labels
                    .get("istio-injection")
                    .is_none_or(|v| v != "enabled")
                && !n.meta.labels.contains_key("istio.io/rev")
        });
        if ambient {
            out.push(Message::new(
                codes::INEFFECTIVE_POLICY,
                r,
                "The policy has no impact: Sidecar is not used in ambient mode (the namespace has istio.io/dataplane-mode=ambient).",
            ));
        }
        match &sc.workload_selector {
            None => no_selector.entry(r.namespace()).or_default().push(r),
            Some(sel) => {
                let pods = ix.workloads_matching(r.namespace(), &sel.labels);
                if pods.is_empty() {
                    out.push(Message::new(
                        codes::REFERENCED_RESOURCE_NOT_FOUND,
                        r,
                        format!(
                            "Referenced selector not found: {:?}",
                            selector_string(&sel.labels)
                        ),
                    ));
                }
                for p in pods {
                    per_pod
                        .entry(format!("{}/{}", p.namespace, p.resource.meta.name))
                        .or_default()
                        .push(r);
                }
            }
        }
    }
    for (ns, list) in no_selector {
        if list.len() > 1 {
            let names: Vec<&str> = list.iter().map(|r| r.meta.name.as_str()).collect();
            for r in &list {
                out.push(Message::new(
                    codes::MULTIPLE_SIDECARS_WITHOUT_SELECTORS,
                    r,
                    format!("The Sidecars [{}] in namespace {ns:?} have no workload selector, which can lead to undefined behavior.", names.join(" ")),
                ));
            }
        }
    }
    for (pod, list) in per_pod {
        if list.len() > 1 {
            let names: Vec<&str> = list.iter().map(|r| r.meta.name.as_str()).collect();
            for r in &list {
                out.push(Message::new(
                    codes::CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
                    r,
                    format!("The Sidecars [{}] in namespace {:?} select the same workload pod {pod:?}, which can lead to undefined behavior.", names.join(" "), r.namespace()),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------- deprecations

/// IST0002 for deprecated fields.
pub(super) fn deprecated_fields(ix: &Index<'_>, out: &mut Vec<Message>) {
    for r in ix.resources {
        match &r.spec {
            Spec::VirtualService(vs) => {
                for h in &vs.http {
                    if h.mirror_percent.is_some() {
                        out.push(Message::new(codes::DEPRECATED, r, "Deprecated: http.mirror_percent is deprecated; use http.mirrorPercentage"));
                    }
                    if h.fault
                        .as_ref()
                        .and_then(|f| f.delay.as_ref())
                        .is_some_and(|d| d.percent.is_some())
                    {
                        out.push(Message::new(
                            codes::DEPRECATED,
                            r,
                            "Deprecated: http.fault.delay.percent is deprecated; use percentage",
                        ));
                    }
                    if h.cors_policy
                        .as_ref()
                        .is_some_and(|c| !c.allow_origin.is_empty())
                    {
                        out.push(Message::new(
                            codes::DEPRECATED,
                            r,
                            "Deprecated: corsPolicy.allowOrigin is deprecated; use allowOrigins",
                        ));
                    }
                }
            }
            Spec::Sidecar(sc)
                if sc
                    .outbound_traffic_policy
                    .as_ref()
                    .is_some_and(|p| p.egress_proxy.is_some()) =>
            {
                out.push(Message::new(
                    codes::DEPRECATED,
                    r,
                    "Deprecated: outboundTrafficPolicy.egressProxy is deprecated",
                ));
            }
            Spec::DestinationRule(dr) => {
                let tps = dr
                    .traffic_policy
                    .iter()
                    .chain(dr.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()));
                for tp in tps {
                    if tp
                        .outlier_detection
                        .as_ref()
                        .is_some_and(|o| o.consecutive_errors.is_some())
                    {
                        out.push(Message::new(codes::DEPRECATED, r, "Deprecated: outlierDetection.consecutiveErrors is deprecated; use consecutive5xxErrors"));
                    }
                }
            }
            _ => {}
        }
    }
}
