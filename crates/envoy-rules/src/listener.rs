//! Listener (LDS) rules: address, listener filters, filter chains (each
//! network filter's own rules, for the HCM and tcp_proxy we emit) and the
//! uniqueness of filter chain matches that Envoy's matching tree enforces.

use std::collections::HashSet;

use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::CodecType,
    http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};

use crate::address::{self, AddressUse};
use crate::{Path, Report, Violation, collect, decode, route};

const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";
const ROUTER_NAME: &str = "envoy.filters.http.router";

/// Every rule a listener breaks.
pub fn listener(l: &Listener) -> Vec<Violation> {
    collect(|r| {
        let root = Path::ROOT;
        address::check(
            l.address.as_ref(),
            AddressUse::Listener,
            &root.f("address"),
            r,
        );
        let lf = root.f("listener_filters");
        for (i, f) in l.listener_filters.iter().enumerate() {
            let at = lf.i(i);
            r.min_len(&at.f("name"), &f.name);
            if let Some(listener_filter::ConfigType::TypedConfig(any)) = &f.config_type
                && any.type_url.is_empty()
            {
                r.min_len(&at.f("typed_config").f("type_url"), &any.type_url);
            }
        }
        let fcs = root.f("filter_chains");
        let mut seen: HashSet<MatchKey> = HashSet::new();
        for (i, fc) in l.filter_chains.iter().enumerate() {
            let at = fcs.i(i);
            filter_chain(fc, &at, r);
            let keys = match_keys(fc.filter_chain_match.as_ref());
            if keys.iter().any(|k| seen.contains(k)) {
                r.bad(
                    &at.f("filter_chain_match"),
                    "multiple filter chains with the same matching rules are defined",
                );
            } else {
                seen.extend(keys);
            }
        }
        if let Some(fc) = &l.default_filter_chain {
            filter_chain(fc, &root.f("default_filter_chain"), r);
        }
        if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
            r.bad(&fcs, "no filter chains specified");
        }
    })
}

fn filter_chain(fc: &FilterChain, at: &Path<'_>, r: &mut Report<'_>) {
    if let Some(m) = &fc.filter_chain_match {
        let mat = at.f("filter_chain_match");
        if let Some(p) = &m.destination_port
            && !(1..=65535).contains(&p.value)
        {
            r.bad(
                &mat.f("destination_port"),
                "value must be inside range [1, 65535]",
            );
        }
        let pr = mat.f("prefix_ranges");
        for (i, c) in m.prefix_ranges.iter().enumerate() {
            address::check_cidr(c, &pr.i(i), r);
        }
    }
    let fs = at.f("filters");
    for (i, f) in fc.filters.iter().enumerate() {
        let at = fs.i(i);
        r.min_len(&at.f("name"), &f.name);
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        let tc = at.f("typed_config");
        if let Some(h) = decode::<HttpConnectionManager>(any, &tc, r) {
            hcm(&h, &tc, r);
        } else if let Some(t) = decode::<TcpProxy>(any, &tc, r) {
            tcp_proxy(&t, &tc, r);
        }
    }
}

fn hcm(h: &HttpConnectionManager, at: &Path<'_>, r: &mut Report<'_>) {
    r.min_len(&at.f("stat_prefix"), &h.stat_prefix);
    if CodecType::try_from(h.codec_type).is_err() {
        r.bad(
            &at.f("codec_type"),
            "value must be one of the defined enum values",
        );
    }
    match &h.route_specifier {
        None => r.required(&at.f("route_specifier")),
        Some(RouteSpecifier::Rds(rds)) => {
            if rds.config_source.is_none() {
                r.required(&at.f("rds").f("config_source"));
            }
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            route::check(rc, &at.f("route_config"), r);
        }
        Some(_) => {}
    }
    let hf = at.f("http_filters");
    for (i, f) in h.http_filters.iter().enumerate() {
        r.min_len(&hf.i(i).f("name"), &f.name);
    }
    if let Some(last) = h.http_filters.last() {
        let router = last.name == ROUTER_NAME
            || matches!(&last.config_type, Some(http_filter::ConfigType::TypedConfig(a))
                if a.type_url.ends_with(ROUTER_TYPE));
        if !router {
            r.bad(
                &hf.i(h.http_filters.len() - 1),
                format!(
                    "non-terminal filter named {} is the last filter in a http filter chain",
                    last.name
                ),
            );
        }
    }
}

fn tcp_proxy(t: &TcpProxy, at: &Path<'_>, r: &mut Report<'_>) {
    r.min_len(&at.f("stat_prefix"), &t.stat_prefix);
    match &t.cluster_specifier {
        None => r.required(&at.f("cluster_specifier")),
        Some(ClusterSpecifier::Cluster(c)) => r.min_len(&at.f("cluster"), c),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let wat = at.f("weighted_clusters");
            let wc = wat.f("clusters");
            if w.clusters.is_empty() {
                r.bad(&wc, "value must contain at least 1 item(s)");
            }
            for (i, c) in w.clusters.iter().enumerate() {
                r.min_len(&wc.i(i).f("name"), &c.name);
                if c.weight < 1 {
                    r.bad(
                        &wc.i(i).f("weight"),
                        "value must be greater than or equal to 1",
                    );
                }
            }
        }
    }
}

/// One leaf of Envoy's filter chain matching tree: a chain matches every
/// combination of its listed values, and two chains may not share a leaf.
#[derive(Hash, PartialEq, Eq)]
struct MatchKey {
    port: u32,
    prefix: Option<(String, u32)>,
    server_name: Option<String>,
    transport: String,
    alpn: Option<String>,
    rest: Vec<u8>,
}

fn match_keys(m: Option<&FilterChainMatch>) -> Vec<MatchKey> {
    let Some(m) = m else {
        return vec![MatchKey {
            port: 0,
            prefix: None,
            server_name: None,
            transport: String::new(),
            alpn: None,
            rest: Vec::new(),
        }];
    };
    // The criteria we do not expand take part as their encoding.
    let rest = {
        use prost::Message;
        let mut other = m.clone();
        other.destination_port = None;
        other.prefix_ranges.clear();
        other.server_names.clear();
        other.transport_protocol.clear();
        other.application_protocols.clear();
        if other == FilterChainMatch::default() {
            Vec::new()
        } else {
            other.encode_to_vec()
        }
    };
    let port = m.destination_port.as_ref().map_or(0, |p| p.value);
    let prefixes: Vec<Option<(String, u32)>> = if m.prefix_ranges.is_empty() {
        vec![None]
    } else {
        m.prefix_ranges
            .iter()
            .map(|c| {
                Some((
                    c.address_prefix.clone(),
                    c.prefix_len.as_ref().map_or(0, |l| l.value),
                ))
            })
            .collect()
    };
    let names: Vec<Option<String>> = if m.server_names.is_empty() {
        vec![None]
    } else {
        m.server_names.iter().cloned().map(Some).collect()
    };
    let alpns: Vec<Option<String>> = if m.application_protocols.is_empty() {
        vec![None]
    } else {
        m.application_protocols.iter().cloned().map(Some).collect()
    };
    let mut out = Vec::with_capacity(prefixes.len() * names.len() * alpns.len());
    for prefix in &prefixes {
        for server_name in &names {
            for alpn in &alpns {
                out.push(MatchKey {
                    port,
                    prefix: prefix.clone(),
                    server_name: server_name.clone(),
                    transport: m.transport_protocol.clone(),
                    alpn: alpn.clone(),
                    rest: rest.clone(),
                });
            }
        }
    }
    out
}
