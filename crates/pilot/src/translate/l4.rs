//! VirtualService `tcp` and `tls` routes as outbound filter chains, as
//! Istio builds them (`buildSidecarOutboundTCPTLSFilterChainOpts`): TLS
//! chains by SNI (`server_names`) and destination subnets first, then TCP
//! chains by destination subnets, each a tcp_proxy to one cluster or to
//! weighted clusters.

use std::collections::BTreeSet;

use crate::mesh::Mesh;
use crate::model::{Protocol, Service};
use crate::node::ProxyNode;
use crate::routing::{Destination, L4Route};

use super::cluster::outbound_name;

/// One filter chain: its match and where it sends the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Chain {
    /// SNI names (exact or `*.suffix`); empty = any.
    pub server_names: Vec<String>,
    /// Destination IPs or CIDRs; empty = the listener's own (its VIP).
    pub prefix_ranges: Vec<String>,
    /// (cluster, weight); one entry is a plain cluster.
    pub clusters: Vec<(String, u32)>,
}

impl L4Chain {
    fn key(&self) -> (Vec<String>, Vec<String>) {
        let mut names = self.server_names.clone();
        names.sort();
        let mut ranges = self.prefix_ranges.clone();
        ranges.sort();
        (names, ranges)
    }

    /// Matches every connection the listener gets.
    pub fn catch_all(&self) -> bool {
        self.server_names.is_empty() && self.prefix_ranges.is_empty()
    }
}

/// Does any VirtualService this proxy sees for the service have tcp or tls
/// routes? (If not, the service keeps its plain tcp_proxy listener.)
pub fn routed(mesh: &Mesh, proxy: &ProxyNode, svc: &Service) -> bool {
    mesh.virtual_services_seen_by(&svc.hostname, &proxy.namespace)
        .any(|vs| !vs.tcp.is_empty() || !vs.tls.is_empty())
}

/// The chains of one service on `port`. `wildcard`: the listener is
/// `0.0.0.0:PORT`, shared with other services, so a TLS port without a
/// matching tls route is told apart by its hostname as SNI, and the
/// service's own catch-all is left to the caller.
pub fn chains(
    mesh: &Mesh,
    proxy: &ProxyNode,
    svc: &Service,
    port: u32,
    protocol: Protocol,
    wildcard: bool,
) -> Vec<L4Chain> {
    let vses: Vec<_> = mesh
        .virtual_services_seen_by(&svc.hostname, &proxy.namespace)
        .collect();
    let applies = |r: &&L4Route| r.matches.is_empty();
    let own = || vec![(outbound_name(port, "", &svc.hostname), 100)];
    let mut out: Vec<L4Chain> = Vec::new();
    if matches!(protocol, Protocol::Tls | Protocol::Https) {
        // Istio skips a match whose runtime predicates (SNI, subnets) an
        // earlier one already covers: it could never be reached.
        let mut handled = BTreeSet::new();
        for route in vses.iter().flat_map(|vs| &vs.tls) {
            for m in route
                .matches
                .iter()
                .filter(|m| m.applies(port, &proxy.namespace, &proxy.labels))
            {
                let chain = L4Chain {
                    server_names: m.sni_hosts.clone(),
                    prefix_ranges: m.destination_subnets.clone(),
                    clusters: clusters(mesh, &route.destinations, port),
                };
                if handled.insert(chain.key()) {
                    out.push(chain);
                }
            }
        }
        if out.is_empty() {
            out.push(L4Chain {
                server_names: if wildcard {
                    vec![svc.hostname.clone()]
                } else {
                    Vec::new()
                },
                prefix_ranges: Vec::new(),
                clusters: own(),
            });
        }
    }
    let mut default_added = false;
    'routes: for route in vses.iter().flat_map(|vs| &vs.tcp) {
        let to = clusters(mesh, &route.destinations, port);
        if applies(&route) {
            out.push(chain_to(Vec::new(), to));
            default_added = true;
            break;
        }
        let mut subnets = Vec::new();
        for m in route
            .matches
            .iter()
            .filter(|m| m.applies(port, &proxy.namespace, &proxy.labels))
        {
            // A match without subnets takes everything: the last chain.
            if m.destination_subnets.is_empty() {
                out.push(chain_to(Vec::new(), to));
                default_added = true;
                break 'routes;
            }
            subnets.extend(m.destination_subnets.iter().cloned());
        }
        if !subnets.is_empty() {
            out.push(chain_to(subnets, to));
        }
    }
    if !default_added && !wildcard {
        out.push(chain_to(Vec::new(), own()));
    }
    dedup(out)
}

/// Drop chains whose match an earlier chain has (Envoy rejects a listener
/// with two equal matches; Istio keeps the first).
pub fn dedup(chains: Vec<L4Chain>) -> Vec<L4Chain> {
    let mut seen = BTreeSet::new();
    chains
        .into_iter()
        .filter(|c| seen.insert(c.key()))
        .collect()
}

fn chain_to(prefix_ranges: Vec<String>, clusters: Vec<(String, u32)>) -> L4Chain {
    L4Chain {
        server_names: Vec::new(),
        prefix_ranges,
        clusters,
    }
}

/// Istio's `buildOutboundNetworkFilters`: one destination is its cluster
/// (its weight ignored); several are weighted clusters, zero weights left out.
fn clusters(mesh: &Mesh, dests: &[Destination], port: u32) -> Vec<(String, u32)> {
    let name = |d: &Destination| super::route::destination_cluster(mesh, d, port);
    match dests {
        [one] => vec![(name(one), 100)],
        many => many
            .iter()
            .filter(|d| d.weight > 0)
            .map(|d| (name(d), d.weight))
            .collect(),
    }
}
