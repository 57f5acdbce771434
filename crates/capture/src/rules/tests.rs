//! Rule-generator facts beyond the goldens in istio-testdata: Istio's injection defaults,
//! port-list shapes from Istio's newer goldens, and family splitting.

use crate::{CaptureConfig, InboundPorts};

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn injection_defaults_capture_everything_but_istio_ports() {
    let v4 = CaptureConfig::default().iptables_restore();
    let want = [
        "* nat",
        "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "COMMIT",
    ];
    for line in want {
        assert!(has(&v4, line), "missing {line:?} in\n{v4}");
    }
    assert!(!v4.contains("mangle") && !v4.contains("raw"), "{v4}");
    // The RETURNs come before the catch-all redirect.
    let pos = |s: &str| v4.find(s).unwrap();
    assert!(pos("-d 127.0.0.1/32 -j RETURN") < pos("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
    assert!(
        pos("--dports 15090,15021,15020") < pos("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
    );
}

#[test]
fn excluded_outbound_ports_return_before_self_call_rules() {
    // Istio's outbound-ports-exclude(-single) goldens: tcp and udp, multiport for lists.
    let one = CaptureConfig {
        exclude_outbound_ports: vec![22],
        ..CaptureConfig::default()
    }
    .iptables_restore();
    assert!(has(&one, "-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN"));
    assert!(has(&one, "-A ISTIO_OUTPUT -p udp --dport 22 -j RETURN"));
    let many = CaptureConfig {
        exclude_outbound_ports: vec![22, 80, 443],
        ..CaptureConfig::default()
    }
    .iptables_restore();
    let tcp = "-A ISTIO_OUTPUT -p tcp -m multiport --dports 22,80,443 -j RETURN";
    assert!(has(&many, tcp));
    assert!(has(
        &many,
        "-A ISTIO_OUTPUT -p udp -m multiport --dports 22,80,443 -j RETURN"
    ));
    assert!(many.find(tcp).unwrap() < many.find("-s 127.0.0.6/32").unwrap());
}

#[test]
fn included_outbound_ports_are_captured_whatever_the_address() {
    let v4 = CaptureConfig {
        include_outbound_cidrs: vec![],
        include_outbound_ports: vec![3306],
        ..CaptureConfig::default()
    }
    .iptables_restore();
    assert!(has(
        &v4,
        "-A ISTIO_OUTPUT -p tcp --dport 3306 -j ISTIO_REDIRECT"
    ));
    assert!(!has(&v4, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
}

#[test]
fn long_port_lists_split_at_multiport_limit() {
    let ports: Vec<u16> = (1000..1020).collect();
    let v4 = CaptureConfig {
        exclude_inbound_ports: ports,
        ..CaptureConfig::default()
    }
    .iptables_restore();
    let n = v4
        .lines()
        .filter(|l| l.starts_with("-A ISTIO_INBOUND -p tcp -m multiport"))
        .count();
    assert_eq!(n, 2, "{v4}");
    assert!(has(
        &v4,
        "-A ISTIO_INBOUND -p tcp -m multiport --dports 1015,1016,1017,1018,1019 -j RETURN"
    ));
}

#[test]
fn cidrs_go_to_their_family_and_bare_addresses_get_a_full_prefix() {
    let cfg = CaptureConfig {
        include_outbound_cidrs: vec!["10.0.0.0/8".into(), "fd00::/8".into()],
        exclude_outbound_cidrs: vec!["10.1.2.3".into(), "fd00::1".into()],
        ..CaptureConfig::default()
    };
    let (v4, v6) = (cfg.iptables_restore(), cfg.ip6tables_restore());
    assert!(has(&v4, "-A ISTIO_OUTPUT -d 10.1.2.3/32 -j RETURN"));
    assert!(has(&v4, "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT"));
    assert!(!v4.contains("fd00"));
    assert!(has(&v6, "-A ISTIO_OUTPUT -d fd00::1/128 -j RETURN"));
    assert!(has(&v6, "-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT"));
    assert!(has(&v6, "-A ISTIO_OUTPUT -d ::1/128 -j RETURN"));
    assert!(!v6.contains("10.0.0.0"));
}

#[test]
fn no_inbound_ports_means_no_prerouting_jump() {
    let v4 = CaptureConfig {
        include_inbound_ports: InboundPorts::None,
        ..CaptureConfig::default()
    }
    .iptables_restore();
    assert!(!v4.contains("PREROUTING"), "{v4}");
    assert!(has(&v4, "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN"));
}

#[test]
fn rootless_mark_replaces_owner_matching() {
    let cfg = CaptureConfig {
        match_owner: false,
        proxy_mark: Some(42),
        ..CaptureConfig::default()
    };
    cfg.validate().unwrap();
    let v4 = cfg.iptables_restore();
    assert!(
        !v4.contains("--uid-owner") && !v4.contains("--gid-owner"),
        "{v4}"
    );
    let want = [
        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark --mark 42 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m mark ! --mark 42 -j RETURN",
        "-A ISTIO_OUTPUT -m mark --mark 42 -j RETURN",
    ];
    for line in want {
        assert!(has(&v4, line), "missing {line:?} in\n{v4}");
    }
    let no_identity = CaptureConfig {
        match_owner: false,
        ..CaptureConfig::default()
    };
    assert!(no_identity.validate().is_err());
}
