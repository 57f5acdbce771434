//! `CaptureConfig::from_annotations`: Istio's annotation names, defaults and validation.

use std::collections::BTreeMap;

use capture::{CaptureConfig, CaptureError, InboundMode, InboundPorts};

fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn no_annotations_is_the_injection_default() {
    let cfg = CaptureConfig::from_annotations(&BTreeMap::new()).unwrap();
    assert_eq!(cfg, CaptureConfig::default());
    assert_eq!((cfg.proxy_uid, cfg.proxy_gid), (1337, 1337));
    assert_eq!((cfg.outbound_port, cfg.inbound_port), (15001, 15006));
    assert_eq!(cfg.include_outbound_cidrs, vec!["*".to_string()]);
    assert_eq!(cfg.include_inbound_ports, InboundPorts::All);
    assert_eq!(cfg.exclude_inbound_ports, vec![15090, 15021, 15020]);
    assert_eq!(cfg.inbound_mode, InboundMode::Redirect);
}

#[test]
fn every_traffic_annotation_is_read() {
    let cfg = CaptureConfig::from_annotations(&ann(&[
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0/8, 192.168.1.1",
        ),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.96.0.1/32",
        ),
        ("traffic.sidecar.istio.io/includeOutboundPorts", "3306"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "22,5432"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "8080,9090"),
        (
            "traffic.sidecar.istio.io/excludeInboundPorts",
            "9000,15021,",
        ),
        ("traffic.sidecar.istio.io/excludeInterfaces", "eth1"),
        ("traffic.sidecar.istio.io/kubevirtInterfaces", "net1,net2"),
        ("sidecar.istio.io/interceptionMode", "TPROXY"),
    ]))
    .unwrap();
    assert_eq!(
        cfg.include_outbound_cidrs,
        vec!["10.0.0.0/8", "192.168.1.1"]
    );
    assert_eq!(cfg.exclude_outbound_cidrs, vec!["10.96.0.1/32"]);
    assert_eq!(cfg.include_outbound_ports, vec![3306]);
    assert_eq!(cfg.exclude_outbound_ports, vec![22, 5432]);
    assert_eq!(
        cfg.include_inbound_ports,
        InboundPorts::Ports(vec![8080, 9090])
    );
    assert_eq!(cfg.exclude_inbound_ports, vec![15090, 15021, 15020, 9000]);
    assert_eq!(cfg.exclude_interfaces, vec!["eth1"]);
    assert_eq!(cfg.kube_virt_interfaces, vec!["net1", "net2"]);
    assert_eq!(cfg.inbound_mode, InboundMode::Tproxy);
    cfg.validate().unwrap();
}

#[test]
fn wildcard_and_empty_inbound_ports() {
    let key = "traffic.sidecar.istio.io/includeInboundPorts";
    let all = CaptureConfig::from_annotations(&ann(&[(key, "*")])).unwrap();
    assert_eq!(all.include_inbound_ports, InboundPorts::All);
    let none = CaptureConfig::from_annotations(&ann(&[(key, "")])).unwrap();
    assert_eq!(none.include_inbound_ports, InboundPorts::None);
    let out = CaptureConfig::from_annotations(&ann(&[(
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        "",
    )]))
    .unwrap();
    assert!(out.include_outbound_cidrs.is_empty());
}

#[test]
fn bad_values_name_the_annotation() {
    let cases = [
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0/33",
        ),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "*"),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "not-an-ip",
        ),
        ("traffic.sidecar.istio.io/includeOutboundPorts", "http"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "70000"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "0"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "-1"),
        ("traffic.sidecar.istio.io/excludeInterfaces", "a/b"),
        (
            "traffic.sidecar.istio.io/kubevirtInterfaces",
            "waytoolonginterfacename",
        ),
        ("sidecar.istio.io/interceptionMode", "redirect"),
    ];
    for (key, value) in cases {
        let err = CaptureConfig::from_annotations(&ann(&[(key, value)])).unwrap_err();
        assert!(matches!(&err, CaptureError::Annotation { annotation, .. } if annotation == key));
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn validate_rejects_what_code_got_wrong() {
    let bad = CaptureConfig {
        exclude_outbound_cidrs: vec!["10.0.0.0/99".into()],
        ..CaptureConfig::default()
    };
    let err = bad.validate().unwrap_err();
    assert!(err.to_string().contains("exclude_outbound_cidrs"), "{err}");
    let bad_dns = CaptureConfig {
        dns_servers_v4: vec!["::1".into()],
        ..CaptureConfig::default()
    };
    assert!(bad_dns.validate().is_err());
}
