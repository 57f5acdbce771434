//! The pre-push check: every translated resource against the rules a stock
//! Envoy enforces (`envoy-rules`). What fails is not sent: the smallest
//! failing unit is dropped (an endpoint, a route, a domain, a virtual host, a
//! filter chain, else the whole listener, route table, cluster or load
//! assignment), the rest of the push goes on, and each drop is reported with
//! the field, the reason and the config objects it came from.

use std::collections::{BTreeSet, HashSet};

use envoy_rules::{Violation, index_in};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use prost::{Message, Name};
use serde::Serialize;

use crate::mesh::Mesh;
use crate::translate::ProxyResources;

/// One unit left out of a push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// `LDS`, `RDS`, `CDS` or `EDS`.
    #[serde(rename = "type")]
    pub type_short: &'static str,
    /// The resource it was in.
    pub resource: String,
    /// What was dropped: `listener`, `filter_chains[2]`, `virtual_hosts[0].routes[1]`, ...
    pub unit: String,
    /// The broken rule: `field.path: reason` (relative to the resource).
    pub error: String,
    /// The config objects it came from: `Kind/namespace/name`.
    pub sources: Vec<String>,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} dropped {}: {} (from {})",
            self.type_short,
            self.resource,
            self.unit,
            self.error,
            if self.sources.is_empty() {
                "unknown config".to_string()
            } else {
                self.sources.join(", ")
            }
        )
    }
}

/// Check every resource, drop what Envoy would refuse, and say what was dropped.
pub fn sanitize(mesh: &Mesh, res: &mut ProxyResources) -> Vec<Dropped> {
    let mut dropped = Vec::new();
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    res.listeners.retain_mut(|l| {
        let keep = listener(mesh, l, &mut dropped);
        let address = l.address.as_ref().map(|a| a.encode_to_vec());
        if keep && !names.insert(l.name.clone()) {
            dropped.push(unit(
                mesh,
                "LDS",
                &l.name,
                "listener",
                "name: duplicate listener name",
                l,
            ));
            return false;
        }
        if keep
            && let Some(a) = address
            && !addresses.insert(a)
        {
            let error = "address: duplicate listener address".to_string();
            dropped.push(unit(mesh, "LDS", &l.name, "listener", &error, l));
            return false;
        }
        keep
    });
    let mut names = HashSet::new();
    res.routes.retain_mut(|rc| {
        route_configuration(mesh, rc, &mut dropped) && names.insert(rc.name.clone())
    });
    let mut names = HashSet::new();
    let mut gone = BTreeSet::new();
    res.clusters.retain_mut(|c| {
        let keep = cluster(mesh, c, &mut dropped) && names.insert(c.name.clone());
        if !keep {
            gone.insert(c.name.clone());
        }
        keep
    });
    let mut names = HashSet::new();
    res.endpoints.retain_mut(|cla| {
        !gone.contains(&cla.cluster_name)
            && load_assignment(mesh, cla, &mut dropped)
            && names.insert(cla.cluster_name.clone())
    });
    log_dropped(&dropped);
    dropped
}

/// The pre-push check of load assignments alone (an endpoint-only push).
pub fn sanitize_endpoints(mesh: &Mesh, endpoints: &mut Vec<ClusterLoadAssignment>) -> Vec<Dropped> {
    let mut dropped = Vec::new();
    endpoints.retain_mut(|cla| load_assignment(mesh, cla, &mut dropped));
    log_dropped(&dropped);
    dropped
}

fn log_dropped(dropped: &[Dropped]) {
    for d in dropped {
        tracing::warn!(
            r#type = d.type_short,
            resource = %d.resource,
            unit = %d.unit,
            error = %d.error,
            sources = %d.sources.join(", "),
            "pre-push check: dropped what Envoy would reject"
        );
    }
}

/// Repeatedly check and cut: `cut` removes the units named by the
/// violations and says what it removed, or None when only dropping the
/// whole resource will do. True = keep the (cut) resource.
fn cut_until_clean<M>(
    msg: &mut M,
    check: impl Fn(&M) -> Vec<Violation>,
    mut cut: impl FnMut(&mut M, &[Violation]) -> Option<Vec<(String, String)>>,
    mut report: impl FnMut(&M, String, String),
) -> bool {
    for _ in 0..8 {
        let violations = check(msg);
        if violations.is_empty() {
            return true;
        }
        let before = violations.clone();
        match cut(msg, &violations) {
            Some(units) if !units.is_empty() => {
                for (u, error) in units {
                    report(msg, u, error);
                }
            }
            _ => {
                report(msg, "resource".to_string(), before[0].to_string());
                return false;
            }
        }
    }
    false
}

fn listener(mesh: &Mesh, l: &mut Listener, out: &mut Vec<Dropped>) -> bool {
    let name = l.name.clone();
    let mut reports: Vec<(String, String, Vec<String>)> = Vec::new();
    let keep = cut_until_clean(
        l,
        envoy_rules::listener,
        |l, vs| {
            let mut idx: Vec<(usize, String)> = Vec::new();
            for v in vs {
                let i = v.index_under("filter_chains")?;
                if !idx.iter().any(|(j, _)| *j == i) {
                    idx.push((i, v.to_string()));
                }
            }
            if idx.len() >= l.filter_chains.len() && l.default_filter_chain.is_none() {
                return None;
            }
            idx.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
            let mut units = Vec::new();
            for (i, error) in idx {
                let chain = l.filter_chains.remove(i);
                let sources = chain_sources(mesh, &chain);
                reports.push((format!("filter_chains[{i}]"), error.clone(), sources));
                units.push((format!("filter_chains[{i}]"), error));
            }
            Some(units)
        },
        |_, _, _| {},
    );
    for (u, error, sources) in reports {
        out.push(Dropped {
            type_short: "LDS",
            resource: name.clone(),
            unit: u,
            error,
            sources,
        });
    }
    if !keep {
        let error = envoy_rules::listener(l)
            .first()
            .map_or_else(|| "unfixable".to_string(), |v| v.to_string());
        out.push(unit(mesh, "LDS", &name, "listener", &error, l));
    }
    keep
}

fn route_configuration(mesh: &Mesh, rc: &mut RouteConfiguration, out: &mut Vec<Dropped>) -> bool {
    let name = rc.name.clone();
    let mut drops: Vec<(String, String, Vec<String>)> = Vec::new();
    let keep = cut_until_clean(
        rc,
        envoy_rules::route_configuration,
        |rc, vs| {
            // (vhost, Some(route) | None, Some(domain)) to remove, last first.
            let mut cuts: Vec<(usize, Option<usize>, Option<usize>, String)> = Vec::new();
            for v in vs {
                let vi = v.index_under("virtual_hosts")?;
                let rest = v.path.split_once(']').map_or("", |(_, r)| r);
                let rest = rest.strip_prefix('.').unwrap_or(rest);
                let ri = index_in(rest, "routes");
                let di = index_in(rest, "domains").filter(|_| ri.is_none());
                cuts.push((vi, ri, di, v.to_string()));
            }
            cuts.sort_by_key(|c| std::cmp::Reverse((c.0, c.1, c.2)));
            cuts.dedup_by(|a, b| (a.0, a.1, a.2) == (b.0, b.1, b.2));
            let mut units = Vec::new();
            let mut whole: BTreeSet<usize> = BTreeSet::new();
            for (vi, ri, di, error) in cuts {
                if whole.contains(&vi) {
                    continue;
                }
                let vh = &mut rc.virtual_hosts[vi];
                let host = vh.name.clone();
                let u = match (ri, di) {
                    (Some(ri), _) => {
                        vh.routes.remove(ri);
                        format!("virtual_hosts[{vi}].routes[{ri}]")
                    }
                    (None, Some(di)) if vh.domains.len() > 1 => {
                        vh.domains.remove(di);
                        format!("virtual_hosts[{vi}].domains[{di}]")
                    }
                    _ => {
                        whole.insert(vi);
                        format!("virtual_hosts[{vi}]")
                    }
                };
                drops.push((u.clone(), error.clone(), vhost_sources(mesh, &host)));
                units.push((u, error));
            }
            for vi in whole.into_iter().rev() {
                rc.virtual_hosts.remove(vi);
            }
            Some(units)
        },
        |_, _, _| {},
    );
    for (u, error, sources) in drops {
        out.push(Dropped {
            type_short: "RDS",
            resource: name.clone(),
            unit: u,
            error,
            sources,
        });
    }
    if !keep {
        let error = envoy_rules::route_configuration(rc)
            .first()
            .map_or_else(|| "unfixable".to_string(), |v| v.to_string());
        let sources = rc
            .virtual_hosts
            .iter()
            .flat_map(|vh| vhost_sources(mesh, &vh.name))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        out.push(Dropped {
            type_short: "RDS",
            resource: name,
            unit: "route_configuration".into(),
            error,
            sources,
        });
    }
    keep
}

fn cluster(mesh: &Mesh, c: &mut Cluster, out: &mut Vec<Dropped>) -> bool {
    let name = c.name.clone();
    let sources = cluster_sources(mesh, &name);
    let mut drops = Vec::new();
    let keep = cut_until_clean(
        c,
        envoy_rules::cluster,
        |c, vs| {
            let la = c.load_assignment.as_mut()?;
            let mut units = Vec::new();
            let mut cuts = Vec::new();
            for v in vs {
                let rest = v.path.strip_prefix("load_assignment.")?;
                cuts.push((endpoint_index(rest)?, v.to_string()));
            }
            cuts.sort_by_key(|c| std::cmp::Reverse(c.0));
            cuts.dedup_by(|a, b| a.0 == b.0);
            for ((li, ei), error) in cuts {
                la.endpoints[li].lb_endpoints.remove(ei);
                units.push((
                    format!("load_assignment.endpoints[{li}].lb_endpoints[{ei}]"),
                    error,
                ));
            }
            la.endpoints.retain(|l| !l.lb_endpoints.is_empty());
            Some(units)
        },
        |_, u, error| drops.push((u, error)),
    );
    for (u, error) in drops {
        let u = if u == "resource" {
            "cluster".to_string()
        } else {
            u
        };
        out.push(Dropped {
            type_short: "CDS",
            resource: name.clone(),
            unit: u,
            error,
            sources: sources.clone(),
        });
    }
    keep
}

fn load_assignment(mesh: &Mesh, cla: &mut ClusterLoadAssignment, out: &mut Vec<Dropped>) -> bool {
    let name = cla.cluster_name.clone();
    let sources = cluster_sources(mesh, &name);
    let mut drops = Vec::new();
    let keep = cut_until_clean(
        cla,
        envoy_rules::cluster_load_assignment,
        |cla, vs| {
            let mut cuts = Vec::new();
            for v in vs {
                cuts.push((endpoint_index(&v.path)?, v.to_string()));
            }
            cuts.sort_by_key(|c| std::cmp::Reverse(c.0));
            cuts.dedup_by(|a, b| a.0 == b.0);
            let mut units = Vec::new();
            for ((li, ei), error) in cuts {
                cla.endpoints[li].lb_endpoints.remove(ei);
                units.push((format!("endpoints[{li}].lb_endpoints[{ei}]"), error));
            }
            cla.endpoints.retain(|l| !l.lb_endpoints.is_empty());
            Some(units)
        },
        |_, u, error| drops.push((u, error)),
    );
    for (u, error) in drops {
        let u = if u == "resource" {
            "cluster_load_assignment".to_string()
        } else {
            u
        };
        out.push(Dropped {
            type_short: "EDS",
            resource: name.clone(),
            unit: u,
            error,
            sources: sources.clone(),
        });
    }
    keep
}

/// `endpoints[L].lb_endpoints[E]...` as (L, E).
fn endpoint_index(path: &str) -> Option<(usize, usize)> {
    let li = index_in(path, "endpoints")?;
    let rest = path.split_once("].")?.1;
    Some((li, index_in(rest, "lb_endpoints")?))
}

/// The whole listener dropped, blamed on every service it serves.
fn unit(
    mesh: &Mesh,
    type_short: &'static str,
    resource: &str,
    unit: &str,
    error: &str,
    l: &Listener,
) -> Dropped {
    let sources = l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.iter())
        .flat_map(|c| chain_sources(mesh, c))
        .chain(address_sources(mesh, l))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    Dropped {
        type_short,
        resource: resource.to_string(),
        unit: unit.to_string(),
        error: error.to_string(),
        sources,
    }
}

/// `Kind ns/name` (a Service's origin) as `Kind/ns/name`.
fn object(origin: &str) -> String {
    origin.replacen(' ', "/", 1)
}

/// The config behind a cluster `outbound|PORT|SUBSET|HOST`: the service
/// and, for a subset, the DestinationRule that defines it.
fn cluster_sources(mesh: &Mesh, cluster: &str) -> Vec<String> {
    let mut parts = cluster.split('|');
    let (Some("outbound"), Some(_), Some(subset), Some(host)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(svc) = mesh.service(host) {
        out.push(object(&svc.origin));
        if !subset.is_empty()
            && let Some(dr) = mesh.destination_rule(host, &svc.namespace, &svc.namespace)
        {
            out.push(format!("DestinationRule/{}/{}", dr.namespace, dr.name));
        }
    }
    out
}

/// The config behind a virtual host `HOST:PORT`: the service and the
/// VirtualServices for it.
fn vhost_sources(mesh: &Mesh, vhost: &str) -> Vec<String> {
    let host = vhost.rsplit_once(':').map_or(vhost, |(h, _)| h);
    let mut out: Vec<String> = mesh
        .service(host)
        .map(|s| object(&s.origin))
        .into_iter()
        .collect();
    out.extend(
        mesh.virtual_services_for(host)
            .map(|vs| format!("VirtualService/{}/{}", vs.namespace, vs.name)),
    );
    out
}

/// The config behind a filter chain: the services of the clusters it sends to.
fn chain_sources(mesh: &Mesh, chain: &FilterChain) -> Vec<String> {
    let mut out = Vec::new();
    for f in &chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if any.type_url.ends_with(TcpProxy::full_name().as_str())
            && let Ok(t) = TcpProxy::decode(any.value.as_slice())
        {
            match &t.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => out.extend(cluster_sources(mesh, c)),
                Some(ClusterSpecifier::WeightedClusters(w)) => {
                    for c in &w.clusters {
                        out.extend(cluster_sources(mesh, &c.name));
                    }
                }
                None => {}
            }
        }
    }
    out
}

/// Services whose VIP is the listener's address.
fn address_sources(mesh: &Mesh, l: &Listener) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    let Some(Address::SocketAddress(sa)) = l.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return Vec::new();
    };
    mesh.services
        .iter()
        .filter(|s| s.addresses.contains(&sa.address))
        .map(|s| object(&s.origin))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<M: Message + Name + Default>(text: &str) -> M {
        xds::json::from_yaml(text).expect("test resource parses")
    }

    fn cla(name: &str, ports: &[u32]) -> ClusterLoadAssignment {
        let eps: Vec<String> = ports
            .iter()
            .map(|p| format!("{{endpoint: {{address: {{socket_address: {{address: 10.0.0.1, port_value: {p}}}}}}}}}"))
            .collect();
        yaml(&format!(
            "cluster_name: \"{name}\"\nendpoints: [{{lb_endpoints: [{}]}}]\n",
            eps.join(", ")
        ))
    }

    fn eds_cluster(name: &str, connect_timeout: &str) -> Cluster {
        yaml(&format!(
            "name: \"{name}\"\ntype: EDS\neds_cluster_config: {{eds_config: {{ads: {{}}}}}}\nconnect_timeout: {connect_timeout}\n"
        ))
    }

    fn listener_named(name: &str, port: u32) -> Listener {
        yaml(&format!(
            r#"
name: "{name}"
address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: x
      cluster: good
"#
        ))
    }

    /// Bad units of every type: each is cut at its smallest failing unit,
    /// reported with type, resource, unit and field, and the rest is kept.
    #[test]
    fn the_smallest_failing_unit_is_dropped_and_reported() {
        let routes: RouteConfiguration = yaml(
            r#"
name: "80"
virtual_hosts:
- name: "a:80"
  domains: ["a", "a:80"]
  routes:
  - match: {prefix: /}
    route: {cluster: good}
  - match: {safe_regex: {regex: "/(unclosed"}}
    route: {cluster: good}
- name: "b:80"
  domains: ["b"]
  routes: [{match: {prefix: /}, route: {cluster: good}}]
"#,
        );
        let mut res = ProxyResources {
            clusters: vec![eds_cluster("good", "1s"), eds_cluster("bad", "0s")],
            endpoints: vec![cla("good", &[80, 70000]), cla("bad", &[80])],
            listeners: vec![
                listener_named("l1", 80),
                listener_named("l1", 81),
                listener_named("l2", 80),
                listener_named("l3", 82),
            ],
            routes: vec![routes],
        };
        let dropped = sanitize(&Mesh::default(), &mut res);
        let summary: Vec<(&str, &str, &str)> = dropped
            .iter()
            .map(|d| (d.type_short, d.resource.as_str(), d.unit.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("LDS", "l1", "listener"),
                ("LDS", "l2", "listener"),
                ("RDS", "80", "virtual_hosts[0].routes[1]"),
                ("CDS", "bad", "cluster"),
                ("EDS", "good", "endpoints[0].lb_endpoints[1]"),
            ],
            "{dropped:#?}"
        );
        assert!(dropped[0].error.contains("duplicate listener name"));
        assert!(dropped[1].error.contains("duplicate listener address"));
        assert!(dropped[2].error.contains("regex"), "{}", dropped[2].error);
        assert!(
            dropped[3].error.starts_with("connect_timeout"),
            "{}",
            dropped[3].error
        );
        assert!(dropped[4].error.contains("65535"), "{}", dropped[4].error);

        let names: Vec<&str> = res.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["l1", "l3"]);
        assert_eq!(res.routes[0].virtual_hosts.len(), 2);
        assert_eq!(res.routes[0].virtual_hosts[0].routes.len(), 1);
        assert_eq!(res.clusters.len(), 1);
        // The dropped cluster's endpoints go with it; the other keeps its good one.
        assert_eq!(res.endpoints.len(), 1);
        assert_eq!(res.endpoints[0].endpoints[0].lb_endpoints.len(), 1);
        // What is left passes every rule.
        assert!(sanitize(&Mesh::default(), &mut res).is_empty());
    }
}
