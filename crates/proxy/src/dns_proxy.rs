//! Istio's DNS proxying in the sidecar (`ISTIO_META_DNS_CAPTURE=true`): the
//! pod's DNS traffic is captured to 127.0.0.1:15053, answered from the name
//! table the pilot sends over NDS (Services, headless Services, ServiceEntry
//! hosts), and anything else is forwarded to the pod's own resolvers from
//! /etc/resolv.conf (the sidecar's uid is exempt from the capture).

use std::net::SocketAddr;

use prost::Message;

/// Where Istio's agent serves captured DNS.
pub const DNS_PROXY_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15053);

/// Is DNS proxying asked for (Istio's proxy metadata, set as an env var by
/// the injector from `proxyMetadata`)?
pub fn enabled() -> bool {
    std::env::var("ISTIO_META_DNS_CAPTURE").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Start the DNS proxy with an empty table (NDS fills it), forwarding to the
/// nameservers of `/etc/resolv.conf`.
pub async fn start(addr: SocketAddr) -> std::io::Result<dns::DnsServer> {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstream: Vec<SocketAddr> = dns::upstreams_from_resolv_conf(&resolv)
        .into_iter()
        // Never forward to ourselves.
        .filter(|u| u.ip() != addr.ip() || u.port() != addr.port())
        .collect();
    tracing::info!(%addr, upstream = ?upstream, "DNS proxy listening");
    dns::serve_with_upstream(addr, dns::NameTable::new(), upstream).await
}

/// The DNS table from an NDS resource.
pub fn table_from_nds(any: &prost_types::Any) -> Result<dns::NameTable, String> {
    let nds = xds::nds::NameTable::decode(any.value.as_slice())
        .map_err(|e| format!("name table: {e}"))?;
    let mut table = dns::NameTable::new();
    for (name, info) in &nds.table {
        let mut addrs = Vec::with_capacity(info.ips.len());
        for ip in &info.ips {
            addrs.push(ip.parse().map_err(|_| {
                format!("name table: table[{name:?}].ips: {ip:?} is not an IP address")
            })?);
        }
        table.insert(name, addrs);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(nds: &xds::nds::NameTable) -> prost_types::Any {
        prost_types::Any {
            type_url: xds::type_url::NAME_TABLE.into(),
            value: nds.encode_to_vec(),
        }
    }

    #[test]
    fn nds_becomes_a_table_and_bad_ips_are_refused() {
        let mut nds = xds::nds::NameTable::default();
        nds.table.insert(
            "reviews.default.svc.cluster.local".into(),
            xds::nds::NameInfo {
                ips: vec!["10.96.0.5".into(), "fd00::5".into()],
                ..Default::default()
            },
        );
        let t = table_from_nds(&any(&nds)).expect("table");
        assert_eq!(
            t.lookup("reviews.default.svc.cluster.local")
                .map(<[_]>::len),
            Some(2)
        );
        nds.table
            .get_mut("reviews.default.svc.cluster.local")
            .expect("entry")
            .ips
            .push("nope".into());
        let err = table_from_nds(&any(&nds)).expect_err("bad ip");
        assert!(err.contains("\"nope\" is not an IP address"), "{err}");
        let garbage = prost_types::Any {
            type_url: xds::type_url::NAME_TABLE.into(),
            value: vec![0xff, 0xff],
        };
        assert!(table_from_nds(&garbage).is_err());
    }
}
