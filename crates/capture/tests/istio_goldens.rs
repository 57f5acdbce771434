//! Istio's own istio-iptables goldens (tools/istio-iptables/pkg/capture/testdata, from
//! /work/shared/istio-testdata) against our generator. Each case sets the same flags as
//! Istio's TestIptables table; the harness records `iptables-save`, `ip6tables-save`, the
//! v4 restore input, the v6 one when IPv6 is on, then `iptables-save` (+ `ip6tables-save`).

use std::path::PathBuf;

use capture::{CaptureConfig, InboundMode, InboundPorts};

fn golden_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/istio-testdata/tools/istio-iptables/pkg/capture/testdata");
    dir.is_dir().then_some(dir)
}

/// Istio's test base config: nothing included, uid/gid 1337, default ports.
fn base() -> CaptureConfig {
    CaptureConfig {
        include_outbound_cidrs: vec![],
        include_inbound_ports: InboundPorts::None,
        exclude_inbound_ports: vec![],
        ..CaptureConfig::default()
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn uid34_gid12(c: &mut CaptureConfig) {
    c.proxy_uid = 3;
    c.extra_proxy_uids = vec![4];
    c.proxy_gid = 1;
    c.extra_proxy_gids = vec![2];
}

fn dns_v4(c: &mut CaptureConfig) {
    c.redirect_dns = true;
    c.dns_servers_v4 = strs(&["127.0.0.53"]);
}

type Case = (&'static str, fn(&mut CaptureConfig));

fn cases() -> Vec<Case> {
    vec![
        ("empty", |_| {}),
        ("ipv6-empty-inbound-ports", |c| c.enable_ipv6 = true),
        ("ip-range", |c| {
            c.exclude_outbound_cidrs = strs(&["1.1.0.0/16"]);
            c.include_outbound_cidrs = strs(&["9.9.0.0/16"]);
            dns_v4(c);
            uid34_gid12(c);
        }),
        ("tproxy", |c| {
            c.inbound_mode = InboundMode::Tproxy;
            c.include_inbound_ports = InboundPorts::All;
            c.exclude_outbound_cidrs = strs(&["1.1.0.0/16"]);
            c.include_outbound_cidrs = strs(&["9.9.0.0/16"]);
            dns_v4(c);
            c.exclude_interfaces = strs(&["not-istio-nic"]);
            c.enable_ipv6 = true;
        }),
        ("ipv6-inbound-ports", |c| {
            c.include_inbound_ports = InboundPorts::Ports(vec![4000, 5000]);
            c.enable_ipv6 = true;
        }),
        ("ipv6-virt-interfaces", |c| {
            c.include_inbound_ports = InboundPorts::Ports(vec![4000, 5000]);
            c.kube_virt_interfaces = strs(&["eth0", "eth1"]);
            c.enable_ipv6 = true;
        }),
        ("ipv6-ipnets", |c| {
            c.include_inbound_ports = InboundPorts::Ports(vec![4000, 5000]);
            c.exclude_inbound_ports = vec![6000, 7000];
            c.kube_virt_interfaces = strs(&["eth0", "eth1"]);
            c.exclude_outbound_cidrs = strs(&["2001:db8::/32"]);
            c.include_outbound_cidrs = strs(&["2001:db8::/32"]);
            c.enable_ipv6 = true;
        }),
        ("ipv6-uid-gid", |c| {
            c.include_inbound_ports = InboundPorts::Ports(vec![4000, 5000]);
            c.exclude_inbound_ports = vec![6000, 7000];
            c.kube_virt_interfaces = strs(&["eth0", "eth1"]);
            uid34_gid12(c);
            c.enable_ipv6 = true;
            c.exclude_outbound_cidrs = strs(&["2001:db8::/32"]);
            c.include_outbound_cidrs = strs(&["2001:db8::/32"]);
        }),
        ("ipv6-outbound-ports", |c| {
            c.include_outbound_ports = vec![32000, 31000];
            c.enable_ipv6 = true;
        }),
        ("kube-virt-interfaces", |c| {
            c.kube_virt_interfaces = strs(&["eth1", "eth2"]);
            c.include_outbound_cidrs = strs(&["*"]);
        }),
        ("ipnets", |c| {
            c.include_outbound_cidrs = strs(&["10.0.0.0/8"])
        }),
        ("ipnets-with-kube-virt-interfaces", |c| {
            c.kube_virt_interfaces = strs(&["eth1", "eth2"]);
            c.include_outbound_cidrs = strs(&["10.0.0.0/8"]);
        }),
        ("inbound-ports-include", |c| {
            c.include_inbound_ports = InboundPorts::Ports(vec![32000, 31000]);
        }),
        ("inbound-ports-wildcard", |c| {
            c.include_inbound_ports = InboundPorts::All
        }),
        ("inbound-ports-tproxy", |c| {
            c.include_inbound_ports = InboundPorts::Ports(vec![32000, 31000]);
            c.inbound_mode = InboundMode::Tproxy;
        }),
        ("inbound-ports-wildcard-tproxy", |c| {
            c.include_inbound_ports = InboundPorts::All;
            c.inbound_mode = InboundMode::Tproxy;
        }),
        ("dns-uid-gid", |c| {
            dns_v4(c);
            c.dns_servers_v6 = strs(&["::127.0.0.53"]);
            uid34_gid12(c);
            c.enable_ipv6 = true;
        }),
        ("ipv6-dns-uid-gid", |c| {
            c.enable_ipv6 = true;
            c.redirect_dns = true; // no servers and not capture-all: Istio turns DNS off
            uid34_gid12(c);
        }),
        ("outbound-owner-groups", |c| {
            c.owner_groups_include = strs(&["java", "202"])
        }),
        ("outbound-owner-groups-exclude", |c| {
            c.owner_groups_exclude = strs(&["888", "ftp"])
        }),
        ("ipv6-dns-outbound-owner-groups", |c| {
            c.enable_ipv6 = true;
            c.redirect_dns = true;
            c.owner_groups_include = strs(&["java", "202"]);
        }),
        ("ipv6-dns-outbound-owner-groups-exclude", |c| {
            c.enable_ipv6 = true;
            c.redirect_dns = true;
            c.owner_groups_exclude = strs(&["888", "ftp"]);
        }),
        ("outbound-ports-include", |c| {
            c.include_outbound_ports = vec![32000, 31000]
        }),
        ("loopback-outbound-iprange", |c| {
            c.include_outbound_cidrs = strs(&["127.1.2.3/32"]);
            dns_v4(c);
            uid34_gid12(c);
        }),
        ("basic-exclude-nic", |c| {
            c.exclude_interfaces = strs(&["not-istio-nic"])
        }),
        ("drop-invalid", |c| c.drop_invalid = true),
        ("host-ipv4-loopback-cidr", |c| {
            c.host_ipv4_loopback_cidr = "127.0.0.1/8".into()
        }),
    ]
}

/// What Istio's recording harness would have captured for this config.
fn recorded(cfg: &CaptureConfig) -> String {
    let mut s = String::from("iptables-save\nip6tables-save\n");
    s.push_str(&cfg.iptables_restore());
    if cfg.enable_ipv6 {
        s.push_str(&cfg.ip6tables_restore());
    }
    s.push_str("iptables-save\n");
    if cfg.enable_ipv6 {
        s.push_str("ip6tables-save\n");
    }
    s
}

fn lines(s: &str) -> Vec<&str> {
    s.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn istio_goldens() {
    let Some(dir) = golden_dir() else {
        eprintln!("SKIP: istio-testdata not found next to the repo");
        return;
    };
    let mut goldens: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".golden").map(str::to_string))
        .collect();
    goldens.sort();
    let cases = cases();
    let (mut matched, mut failures, mut unsupported) = (0, Vec::new(), Vec::new());
    for name in &goldens {
        let Some((_, set)) = cases.iter().find(|(n, _)| n == name) else {
            unsupported.push(name.clone());
            continue;
        };
        let mut cfg = base();
        set(&mut cfg);
        let want = std::fs::read_to_string(dir.join(format!("{name}.golden"))).unwrap();
        let got = recorded(&cfg);
        if lines(&want) == lines(&got) {
            matched += 1;
        } else {
            failures.push(format!("--- {name}: want\n{want}\n--- got\n{got}"));
        }
    }
    println!("istio goldens matched: {matched}/{}", goldens.len());
    println!("no case for: {unsupported:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        unsupported.is_empty(),
        "goldens without a case: {unsupported:?}"
    );
}
