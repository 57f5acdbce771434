//! Filter chain selection, Envoy's order: destination port, then destination
//! IP (longest prefix), then server name (SNI: exact, else the longest
//! `*.suffix`), then transport protocol, then application protocols.
//! At each level the chains that name the value win over the ones that leave
//! it unset; there is no backtracking. No match = the default_filter_chain.

use std::net::SocketAddr;

use crate::config::listener::{FilterChain, ListenerConfig};

/// What is known about a connection when choosing its chain.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo<'a> {
    /// Local address, or the original destination when restored.
    pub destination: SocketAddr,
    pub transport_protocol: &'a str,
    /// The SNI a TLS client sent (tls_inspector).
    pub server_name: Option<&'a str>,
    /// The ALPN list a TLS client offered, or what http_inspector saw.
    pub application_protocols: &'a [&'a str],
}

/// The chain to run for a connection, or None to close it.
pub fn select<'l>(
    listener: &'l ListenerConfig,
    conn: &ConnectionInfo<'_>,
) -> Option<&'l FilterChain> {
    let mut candidates: Vec<&FilterChain> = listener.filter_chains.iter().map(|c| &**c).collect();

    // Destination port.
    let port = conn.destination.port();
    candidates = narrow(candidates, |fc| match fc.matcher.destination_port {
        Some(p) if p == port => Some(1),
        Some(_) => None,
        None => Some(0),
    });

    // Destination IP: the longest matching prefix, else chains without prefixes.
    let ip = conn.destination.ip();
    candidates = narrow(candidates, |fc| {
        if fc.matcher.prefix_ranges.is_empty() {
            return Some(0);
        }
        fc.matcher
            .prefix_ranges
            .iter()
            .filter(|c| c.contains(ip))
            .map(|c| c.len as u32 + 1)
            .max()
    });

    // Server name: exact beats any wildcard, a longer `*.suffix` a shorter.
    let sni = conn.server_name.map(str::to_ascii_lowercase);
    candidates = narrow(candidates, |fc| {
        if fc.matcher.server_names.is_empty() {
            return Some(0);
        }
        let sni = sni.as_deref()?;
        fc.matcher
            .server_names
            .iter()
            .filter_map(|n| match n.strip_prefix('*') {
                None if n == sni => Some(u32::MAX),
                Some(suffix) if sni.len() > suffix.len() && sni.ends_with(suffix) => {
                    Some(suffix.len() as u32 + 1)
                }
                _ => None,
            })
            .max()
    });

    // Transport protocol.
    candidates = narrow(candidates, |fc| {
        match fc.matcher.transport_protocol.as_deref() {
            None => Some(0),
            Some(t) if t == conn.transport_protocol => Some(1),
            Some(_) => None,
        }
    });

    // Application protocols.
    candidates = narrow(candidates, |fc| {
        if fc.matcher.application_protocols.is_empty() {
            return Some(0);
        }
        fc.matcher
            .application_protocols
            .iter()
            .any(|p| conn.application_protocols.contains(&p.as_str()))
            .then_some(1)
    });

    candidates
        .first()
        .copied()
        .or(listener.default_filter_chain.as_deref())
}

/// Keep the candidates with the highest score; None scores drop out.
fn narrow(
    candidates: Vec<&FilterChain>,
    score: impl Fn(&FilterChain) -> Option<u32>,
) -> Vec<&FilterChain> {
    let scored: Vec<(u32, &FilterChain)> = candidates
        .into_iter()
        .filter_map(|fc| score(fc).map(|s| (s, fc)))
        .collect();
    let best = scored.iter().map(|(s, _)| *s).max();
    scored
        .into_iter()
        .filter(|(s, _)| Some(*s) == best)
        .map(|(_, fc)| fc)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::listener::XdsListener;

    fn chain(m: &str, name: &str) -> String {
        format!(
            "- name: {name}\n  filter_chain_match: {m}\n  filters: [{{name: t, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: {name}}}}}]\n"
        )
    }

    fn listener() -> ListenerConfig {
        let yaml = format!(
            "name: l\naddress: {{socket_address: {{address: 0.0.0.0, port_value: 15006}}}}\nfilter_chains:\n{}{}{}{}{}default_filter_chain:\n  name: default\n  filters: [{{name: t, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: d}}}}]\n",
            chain("{destination_port: 9080}", "port"),
            chain(
                "{destination_port: 9080, application_protocols: [http/1.1, h2c]}",
                "port-http"
            ),
            chain(
                "{prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}",
                "ip8"
            ),
            chain(
                "{prefix_ranges: [{address_prefix: 10.1.0.0, prefix_len: 16}]}",
                "ip16"
            ),
            chain(
                "{transport_protocol: raw_buffer, destination_port: 7000}",
                "raw"
            ),
        );
        let l: XdsListener = xds::json::from_yaml(&yaml).unwrap();
        ListenerConfig::try_from(&l).unwrap()
    }

    fn pick(l: &ListenerConfig, dst: &str, app: Option<&str>) -> String {
        let app: Vec<&str> = app.into_iter().collect();
        let conn = ConnectionInfo {
            destination: dst.parse().unwrap(),
            transport_protocol: "raw_buffer",
            server_name: None,
            application_protocols: &app,
        };
        select(l, &conn)
            .map(|fc| fc.name.clone())
            .unwrap_or_default()
    }

    #[test]
    fn envoy_order() {
        let l = listener();
        assert_eq!(pick(&l, "10.0.0.1:9080", Some("http/1.1")), "port-http");
        assert_eq!(pick(&l, "10.0.0.1:9080", None), "port");
        assert_eq!(pick(&l, "10.1.2.3:80", None), "ip16");
        assert_eq!(pick(&l, "10.2.2.3:80", None), "ip8");
        assert_eq!(pick(&l, "10.2.2.3:7000", None), "raw");
        assert_eq!(pick(&l, "192.168.0.1:80", None), "default");
    }

    #[test]
    fn server_names_exact_then_longest_wildcard() {
        let yaml = format!(
            "name: l\naddress: {{socket_address: {{address: 0.0.0.0, port_value: 443}}}}\nfilter_chains:\n{}{}{}{}",
            chain("{server_names: [api.example.com]}", "exact"),
            chain("{server_names: [\"*.example.com\"]}", "wild"),
            chain("{server_names: [\"*.eu.example.com\"]}", "eu"),
            chain("{transport_protocol: tls}", "any-tls"),
        );
        let l: XdsListener = xds::json::from_yaml(&yaml).unwrap();
        let l = ListenerConfig::try_from(&l).unwrap();
        let pick = |sni: Option<&str>| {
            let conn = ConnectionInfo {
                destination: "10.0.0.1:443".parse().unwrap(),
                transport_protocol: "tls",
                server_name: sni,
                application_protocols: &[],
            };
            select(&l, &conn)
                .map(|fc| fc.name.clone())
                .unwrap_or_default()
        };
        assert_eq!(pick(Some("API.example.com")), "exact");
        assert_eq!(pick(Some("www.example.com")), "wild");
        assert_eq!(pick(Some("a.eu.example.com")), "eu");
        assert_eq!(pick(Some("example.com")), "any-tls");
        assert_eq!(pick(None), "any-tls");
    }
}
