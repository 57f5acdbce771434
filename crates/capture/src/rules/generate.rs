//! The order and shape of istio-iptables' rules: short-circuits, the inbound chains
//! (nat REDIRECT or mangle TPROXY), ISTIO_OUTPUT's exclusions then captures, DNS, and
//! TPROXY's mark bookkeeping.

use super::{DNS_CAPTURE_PORT, Family, Rules, Table, dports, host_prefix, ranges};
use crate::config::{CaptureConfig, InboundMode, InboundPorts};

pub(super) fn build(cfg: &CaptureConfig, family: Family) -> Rules {
    use Table::{Mangle, Nat};
    let v4 = family == Family::V4;
    let lo_cidr = if v4 {
        cfg.host_ipv4_loopback_cidr.as_str()
    } else {
        "::1/128"
    };
    let lo_host = if v4 { "127.0.0.1/32" } else { "::1/128" };
    let passthrough = if v4 { "127.0.0.6/32" } else { "::6/128" };
    let tproxy = cfg.inbound_mode == InboundMode::Tproxy;
    let uids: Vec<u32> = std::iter::once(cfg.proxy_uid)
        .chain(cfg.extra_proxy_uids.iter().copied())
        .collect();
    let gids: Vec<u32> = std::iter::once(cfg.proxy_gid)
        .chain(cfg.extra_proxy_gids.iter().copied())
        .collect();
    let dns_servers: Vec<String> = cfg
        .dns_servers_v4
        .iter()
        .chain(&cfg.dns_servers_v6)
        .filter_map(|s| host_prefix(s, family))
        .collect();
    let any_dns_server = !cfg.dns_servers_v4.is_empty() || !cfg.dns_servers_v6.is_empty();
    let dns = cfg.redirect_dns && (cfg.capture_all_dns || any_dns_server);
    let include = ranges(&cfg.include_outbound_cidrs, family);
    let exclude = ranges(&cfg.exclude_outbound_cidrs, family);
    let tunnel = cfg.inbound_tunnel_port;
    let mark = cfg.tproxy_mark;
    let mut r = Rules::default();

    // Interfaces left alone entirely, then KubeVirt interfaces (treated as outbound below).
    let mut short_circuit = vec![Nat];
    if tproxy {
        short_circuit.push(Mangle);
    }
    for table in short_circuit {
        for nic in &cfg.exclude_interfaces {
            r.append(table, "PREROUTING", format!("-i {nic} -j RETURN"));
            r.append(table, "OUTPUT", format!("-o {nic} -j RETURN"));
        }
    }
    for nic in &cfg.kube_virt_interfaces {
        r.insert(Nat, "PREROUTING", 1, format!("-i {nic} -j RETURN"));
    }
    if cfg.drop_invalid {
        r.append(
            Mangle,
            "PREROUTING",
            "-m conntrack --ctstate INVALID -j ISTIO_DROP",
        );
        r.append(Mangle, "ISTIO_DROP", "-j DROP");
    }

    r.append(
        Nat,
        "ISTIO_INBOUND",
        format!("-p tcp --dport {tunnel} -j RETURN"),
    );
    r.append(
        Nat,
        "ISTIO_REDIRECT",
        format!("-p tcp -j REDIRECT --to-ports {}", cfg.outbound_port),
    );
    r.append(
        Nat,
        "ISTIO_IN_REDIRECT",
        format!("-p tcp -j REDIRECT --to-ports {}", cfg.inbound_port),
    );

    inbound(&mut r, cfg, lo_host);

    // Outbound.
    r.append(Nat, "OUTPUT", "-j ISTIO_OUTPUT");
    for m in dports(&cfg.exclude_outbound_ports) {
        r.append(Nat, "ISTIO_OUTPUT", format!("-p tcp {m} -j RETURN"));
        r.append(Nat, "ISTIO_OUTPUT", format!("-p udp {m} -j RETURN"));
    }
    // The inbound passthrough cluster connects from 127.0.0.6 to the app: never capture it.
    r.append(
        Nat,
        "ISTIO_OUTPUT",
        format!("-o lo -s {passthrough} -j RETURN"),
    );
    // Who the proxy is: its uid(s) and gid(s) (Istio), and/or an SO_MARK (rootless).
    let mut proxy: Vec<(bool, String, String)> = Vec::new(); // (is uid, match, negated)
    if cfg.match_owner {
        for u in &uids {
            let (yes, no) = (
                format!("-m owner --uid-owner {u}"),
                format!("-m owner ! --uid-owner {u}"),
            );
            proxy.push((true, yes, no));
        }
        for g in &gids {
            let (yes, no) = (
                format!("-m owner --gid-owner {g}"),
                format!("-m owner ! --gid-owner {g}"),
            );
            proxy.push((false, yes, no));
        }
    }
    if let Some(m) = cfg.proxy_mark {
        proxy.push((
            false,
            format!("-m mark --mark {m}"),
            format!("-m mark ! --mark {m}"),
        ));
    }
    for (is_uid, yes, no) in &proxy {
        // The proxy calling a local non-loopback address (the app via its pod IP or a
        // VIP it resolved to itself) goes through inbound capture: app -> proxy -> proxy -> app.
        let skip = if dns && *is_uid {
            format!("-m multiport ! --dports 53,{tunnel}")
        } else {
            format!("! --dport {tunnel}")
        };
        r.append(
            Nat,
            "ISTIO_OUTPUT",
            format!("-o lo ! -d {lo_cidr} -p tcp {skip} {yes} -j ISTIO_IN_REDIRECT"),
        );
        // The app calling itself over lo is not captured, unless loopback was asked for.
        if !include.has_loopback {
            let dns_port = if dns { "-p tcp ! --dport 53 " } else { "" };
            r.append(
                Nat,
                "ISTIO_OUTPUT",
                format!("-o lo {dns_port}{no} -j RETURN"),
            );
        }
        // The proxy's own traffic is never captured (loop avoidance).
        r.append(Nat, "ISTIO_OUTPUT", format!("{yes} -j RETURN"));
    }
    owner_groups(&mut r, cfg);
    if dns {
        dns_rules(&mut r, cfg, &uids, &gids, &dns_servers);
    }
    r.append(Nat, "ISTIO_OUTPUT", format!("-d {lo_cidr} -j RETURN"));
    for cidr in &exclude.cidrs {
        r.append(Nat, "ISTIO_OUTPUT", format!("-d {cidr} -j RETURN"));
    }
    for p in &cfg.include_outbound_ports {
        r.append(
            Nat,
            "ISTIO_OUTPUT",
            format!("-p tcp --dport {p} -j ISTIO_REDIRECT"),
        );
    }
    if include.wildcard {
        r.append(Nat, "ISTIO_OUTPUT", "-j ISTIO_REDIRECT");
        for nic in &cfg.kube_virt_interfaces {
            r.insert(Nat, "PREROUTING", 1, format!("-i {nic} -j ISTIO_REDIRECT"));
        }
    } else {
        for cidr in &include.cidrs {
            for nic in &cfg.kube_virt_interfaces {
                r.insert(
                    Nat,
                    "PREROUTING",
                    1,
                    format!("-i {nic} -d {cidr} -j ISTIO_REDIRECT"),
                );
            }
            r.append(Nat, "ISTIO_OUTPUT", format!("-d {cidr} -j ISTIO_REDIRECT"));
        }
    }

    if tproxy {
        // Connections the proxy accepted via TPROXY keep their mark (CONNMARK), so replies
        // route back through lo; the proxy talking to the app over lo is tagged mark+1.
        r.append(
            Mangle,
            "PREROUTING",
            format!("-p tcp -m mark --mark {mark} -j CONNMARK --save-mark"),
        );
        r.append(
            Mangle,
            "OUTPUT",
            format!("-p tcp -o lo -m mark --mark {mark} -j RETURN"),
        );
        let owners = uids
            .iter()
            .map(|u| ("uid", *u))
            .chain(gids.iter().map(|g| ("gid", *g)));
        for (kind, id) in owners {
            r.append(
                Mangle,
                "OUTPUT",
                format!("! -d {lo_host} -p tcp -o lo -m owner --{kind}-owner {id} -j MARK --set-mark {}", mark + 1),
            );
        }
        r.append(
            Mangle,
            "OUTPUT",
            format!("-p tcp -m connmark --mark {mark} -j CONNMARK --restore-mark"),
        );
        r.insert(
            Mangle,
            "ISTIO_INBOUND",
            1,
            format!("-p tcp -m mark --mark {mark} -j RETURN"),
        );
        r.insert(
            Mangle,
            "ISTIO_INBOUND",
            2,
            format!("-p tcp -s {passthrough} -i lo -j RETURN"),
        );
        r.insert(
            Mangle,
            "ISTIO_INBOUND",
            3,
            format!("-p tcp -i lo -m mark ! --mark {} -j RETURN", mark + 1),
        );
    }
    r
}

/// PREROUTING -> ISTIO_INBOUND, in nat (REDIRECT) or mangle (TPROXY).
fn inbound(r: &mut Rules, cfg: &CaptureConfig, lo_host: &str) {
    use Table::{Mangle, Nat};
    let tproxy = cfg.inbound_mode == InboundMode::Tproxy;
    if cfg.include_inbound_ports == InboundPorts::None {
        return;
    }
    let table = if tproxy { Mangle } else { Nat };
    if tproxy {
        let mark = cfg.tproxy_mark;
        r.append(Mangle, "ISTIO_DIVERT", format!("-j MARK --set-mark {mark}"));
        r.append(Mangle, "ISTIO_DIVERT", "-j ACCEPT");
        r.append(
            Mangle,
            "ISTIO_TPROXY",
            format!(
                "! -d {lo_host} -p tcp -j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {}",
                cfg.inbound_port
            ),
        );
    }
    r.append(table, "PREROUTING", "-p tcp -j ISTIO_INBOUND");
    let capture = |r: &mut Rules, m: &str| {
        if tproxy {
            r.append(
                Mangle,
                "ISTIO_INBOUND",
                format!("-p tcp {m}-m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT"),
            );
            r.append(
                Mangle,
                "ISTIO_INBOUND",
                format!("-p tcp {m}-j ISTIO_TPROXY"),
            );
        } else {
            r.append(
                Nat,
                "ISTIO_INBOUND",
                format!("-p tcp {m}-j ISTIO_IN_REDIRECT"),
            );
        }
    };
    match &cfg.include_inbound_ports {
        InboundPorts::All => {
            for m in dports(&cfg.exclude_inbound_ports) {
                r.append(table, "ISTIO_INBOUND", format!("-p tcp {m} -j RETURN"));
            }
            capture(r, "");
        }
        InboundPorts::Ports(ports) => {
            for p in ports {
                capture(r, &format!("--dport {p} "));
            }
        }
        InboundPorts::None => {}
    }
}

/// Outbound capture filtered by the app's group (`ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`).
fn owner_groups(r: &mut Rules, cfg: &CaptureConfig) {
    let include: Vec<&String> = cfg
        .owner_groups_include
        .iter()
        .filter(|g| !g.trim().is_empty())
        .collect();
    if !include.is_empty() && !include.iter().any(|g| g.trim() == "*") {
        let m: Vec<String> = include
            .iter()
            .map(|g| format!("-m owner ! --gid-owner {}", g.trim()))
            .collect();
        r.append(
            Table::Nat,
            "ISTIO_OUTPUT",
            format!("{} -j RETURN", m.join(" ")),
        );
    }
    for g in cfg
        .owner_groups_exclude
        .iter()
        .map(|g| g.trim())
        .filter(|g| !g.is_empty())
    {
        r.append(
            Table::Nat,
            "ISTIO_OUTPUT",
            format!("-m owner --gid-owner {g} -j RETURN"),
        );
    }
}

/// DNS to the agent (:15053) in nat, and conntrack zones in raw so that the agent's
/// upstream queries and the app's queries do not collide.
fn dns_rules(r: &mut Rules, cfg: &CaptureConfig, uids: &[u32], gids: &[u32], servers: &[String]) {
    use Table::{Nat, Raw};
    let port = DNS_CAPTURE_PORT;
    if cfg.capture_all_dns || !servers.is_empty() {
        r.append(Nat, "ISTIO_OUTPUT", "-j ISTIO_OUTPUT_DNS");
        if cfg.capture_all_dns {
            r.append(
                Nat,
                "ISTIO_OUTPUT_DNS",
                format!("-p tcp --dport 53 -j REDIRECT --to-ports {port}"),
            );
            r.append(
                Nat,
                "ISTIO_OUTPUT_DNS",
                format!("-p udp --dport 53 -j REDIRECT --to-port {port}"),
            );
        } else {
            for s in servers {
                r.append(
                    Nat,
                    "ISTIO_OUTPUT_DNS",
                    format!("-p tcp --dport 53 -d {s} -j REDIRECT --to-ports {port}"),
                );
            }
            for s in servers {
                r.append(
                    Nat,
                    "ISTIO_OUTPUT_DNS",
                    format!("-p udp --dport 53 -d {s} -j REDIRECT --to-port {port}"),
                );
            }
        }
    }
    r.append(Raw, "OUTPUT", "-j ISTIO_OUTPUT_DNS");
    let owners = uids
        .iter()
        .map(|u| ("uid", *u))
        .chain(gids.iter().map(|g| ("gid", *g)));
    for (kind, id) in owners {
        r.append(
            Raw,
            "ISTIO_OUTPUT_DNS",
            format!("-p udp --dport 53 -m owner --{kind}-owner {id} -j CT --zone 1"),
        );
        r.append(
            Raw,
            "ISTIO_OUTPUT_DNS",
            format!("-p udp --sport {port} -m owner --{kind}-owner {id} -j CT --zone 2"),
        );
    }
    if cfg.capture_all_dns {
        r.append(Raw, "PREROUTING", "-j ISTIO_INBOUND");
        r.append(Raw, "ISTIO_OUTPUT_DNS", "-p udp --dport 53 -j CT --zone 2");
        r.append(Raw, "ISTIO_INBOUND", "-p udp --sport 53 -j CT --zone 1");
    } else if !servers.is_empty() {
        r.append(Raw, "PREROUTING", "-j ISTIO_INBOUND");
        for s in servers {
            r.append(
                Raw,
                "ISTIO_OUTPUT_DNS",
                format!("-p udp --dport 53 -d {s} -j CT --zone 2"),
            );
            r.append(
                Raw,
                "ISTIO_INBOUND",
                format!("-p udp --sport 53 -s {s} -j CT --zone 1"),
            );
        }
    }
}
