//! What to capture: the typed form of istio-iptables' flags, with Istio's
//! injection defaults, and parsing from the `traffic.sidecar.istio.io/*` pod annotations.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::CaptureError;

/// Ports the proxy serves itself; Istio's injector always excludes them from inbound capture.
pub const ISTIO_EXCLUDED_INBOUND_PORTS: [u16; 3] = [15090, 15021, 15020];

/// How inbound traffic reaches the proxy (`sidecar.istio.io/interceptionMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InboundMode {
    /// nat `REDIRECT` to the inbound port; the proxy reads `SO_ORIGINAL_DST`.
    #[default]
    Redirect,
    /// mangle `TPROXY` to the inbound port (needs `IP_TRANSPARENT` and an ip rule/route);
    /// the original destination is the accepted socket's local address.
    Tproxy,
}

/// Which inbound ports are captured (`traffic.sidecar.istio.io/includeInboundPorts`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum InboundPorts {
    /// `"*"`: every port except the excluded ones.
    #[default]
    All,
    /// A list of ports; exclusions do not apply.
    Ports(Vec<u16>),
    /// `""`: no inbound capture at all.
    None,
}

/// What to capture, as istio-init / istio-iptables configures it.
///
/// The fields after `kube_virt_interfaces` are istio-iptables flags that pod annotations
/// do not set; their defaults are Istio's.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptureConfig {
    /// `--proxy-uid`: traffic from this uid is never captured outbound.
    pub proxy_uid: u32,
    /// `--proxy-gid`: traffic from this gid is never captured outbound.
    pub proxy_gid: u32,
    /// `-p`: outbound capture port (`virtualOutbound`).
    pub outbound_port: u16,
    /// `-z`: inbound capture port (`virtualInbound`).
    pub inbound_port: u16,
    /// `-m`: REDIRECT or TPROXY for inbound.
    pub inbound_mode: InboundMode,
    /// `-i`: destinations captured outbound; `"*"` is all, empty is none.
    pub include_outbound_cidrs: Vec<String>,
    /// `-x`: destinations never captured outbound.
    pub exclude_outbound_cidrs: Vec<String>,
    /// `-q`: destination ports captured outbound whatever the address.
    pub include_outbound_ports: Vec<u16>,
    /// `-o`: destination ports never captured outbound.
    pub exclude_outbound_ports: Vec<u16>,
    /// `-b`: inbound ports captured.
    pub include_inbound_ports: InboundPorts,
    /// `-d`: inbound ports left alone when `include_inbound_ports` is `All`.
    pub exclude_inbound_ports: Vec<u16>,
    /// `-c`: interfaces whose traffic is never touched.
    pub exclude_interfaces: Vec<String>,
    /// `-k`: interfaces (KubeVirt VMs) whose inbound traffic is treated as outbound.
    pub kube_virt_interfaces: Vec<String>,
    /// More uids excluded like `proxy_uid` (istio-iptables takes a comma list).
    pub extra_proxy_uids: Vec<u32>,
    /// More gids excluded like `proxy_gid`.
    pub extra_proxy_gids: Vec<u32>,
    /// `-t`: the HBONE tunnel port, never captured inbound.
    pub inbound_tunnel_port: u16,
    /// `--inbound-tproxy-mark`: the fwmark TPROXY sets (1337); the mark + 1 tags proxy-to-self traffic.
    pub tproxy_mark: u32,
    /// `--inbound-tproxy-route-table`, 133.
    pub tproxy_route_table: u32,
    /// Also program ip6tables (Istio: when the pod has an IPv6 address).
    pub enable_ipv6: bool,
    /// `ISTIO_META_DNS_CAPTURE`: send DNS to the agent on 15053.
    pub redirect_dns: bool,
    /// Capture DNS to every server, not just `dns_servers_*`.
    pub capture_all_dns: bool,
    /// The pod's IPv4 nameservers (from resolv.conf) captured when `redirect_dns`.
    pub dns_servers_v4: Vec<String>,
    /// The pod's IPv6 nameservers captured when `redirect_dns`.
    pub dns_servers_v6: Vec<String>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS`: only apps in these groups (names or gids) are captured (`"*"` = all).
    pub owner_groups_include: Vec<String>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`: apps in these groups are never captured outbound.
    pub owner_groups_exclude: Vec<String>,
    /// Drop conntrack-INVALID packets instead of letting them reset connections.
    pub drop_invalid: bool,
    /// The loopback range never captured outbound (`--host-ipv4-loopback-cidr`).
    pub host_ipv4_loopback_cidr: String,
    /// Not an Istio flag: recognise the proxy by uid/gid (`--uid-owner`, Istio's way). Turn
    /// off where uid 1337 does not exist, e.g. a rootless `unshare -r -n` user namespace
    /// (iptables rejects owner matches on unmapped ids), and set `proxy_mark` instead.
    pub match_owner: bool,
    /// Not an Istio flag: also recognise the proxy by this SO_MARK on its sockets (needs
    /// CAP_NET_ADMIN in the netns, which a userns root has). REDIRECT mode only.
    pub proxy_mark: Option<u32>,
}

impl Default for CaptureConfig {
    /// What Istio's sidecar injector passes to istio-init for an unannotated pod.
    fn default() -> Self {
        CaptureConfig {
            proxy_uid: 1337,
            proxy_gid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            inbound_mode: InboundMode::Redirect,
            include_outbound_cidrs: vec!["*".into()],
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_inbound_ports: InboundPorts::All,
            exclude_inbound_ports: ISTIO_EXCLUDED_INBOUND_PORTS.to_vec(),
            exclude_interfaces: Vec::new(),
            kube_virt_interfaces: Vec::new(),
            extra_proxy_uids: Vec::new(),
            extra_proxy_gids: Vec::new(),
            inbound_tunnel_port: 15008,
            tproxy_mark: 1337,
            tproxy_route_table: 133,
            enable_ipv6: false,
            redirect_dns: false,
            capture_all_dns: false,
            dns_servers_v4: Vec::new(),
            dns_servers_v6: Vec::new(),
            owner_groups_include: vec!["*".into()],
            owner_groups_exclude: Vec::new(),
            drop_invalid: false,
            host_ipv4_loopback_cidr: "127.0.0.1/32".into(),
            match_owner: true,
            proxy_mark: None,
        }
    }
}

const ANN_INCLUDE_OUT_CIDRS: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
const ANN_EXCLUDE_OUT_CIDRS: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
const ANN_INCLUDE_OUT_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
const ANN_EXCLUDE_OUT_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
const ANN_INCLUDE_IN_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
const ANN_EXCLUDE_IN_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
const ANN_EXCLUDE_IFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
const ANN_KUBEVIRT_IFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
const ANN_INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";

impl CaptureConfig {
    /// From pod annotations, with Istio's names and defaults. A bad value is an error
    /// naming the annotation.
    pub fn from_annotations(ann: &BTreeMap<String, String>) -> Result<Self, CaptureError> {
        let mut cfg = CaptureConfig::default();
        let get = |k: &str| ann.get(k).map(|v| v.trim());
        if let Some(v) = get(ANN_INCLUDE_OUT_CIDRS) {
            cfg.include_outbound_cidrs = parse_cidrs(ANN_INCLUDE_OUT_CIDRS, v, true)?;
        }
        if let Some(v) = get(ANN_EXCLUDE_OUT_CIDRS) {
            cfg.exclude_outbound_cidrs = parse_cidrs(ANN_EXCLUDE_OUT_CIDRS, v, false)?;
        }
        if let Some(v) = get(ANN_INCLUDE_OUT_PORTS) {
            cfg.include_outbound_ports = parse_ports(ANN_INCLUDE_OUT_PORTS, v)?;
        }
        if let Some(v) = get(ANN_EXCLUDE_OUT_PORTS) {
            cfg.exclude_outbound_ports = parse_ports(ANN_EXCLUDE_OUT_PORTS, v)?;
        }
        if let Some(v) = get(ANN_INCLUDE_IN_PORTS) {
            cfg.include_inbound_ports = match v {
                "*" => InboundPorts::All,
                "" => InboundPorts::None,
                _ => InboundPorts::Ports(parse_ports(ANN_INCLUDE_IN_PORTS, v)?),
            };
        }
        if let Some(v) = get(ANN_EXCLUDE_IN_PORTS) {
            for p in parse_ports(ANN_EXCLUDE_IN_PORTS, v)? {
                if !cfg.exclude_inbound_ports.contains(&p) {
                    cfg.exclude_inbound_ports.push(p);
                }
            }
        }
        if let Some(v) = get(ANN_EXCLUDE_IFACES) {
            cfg.exclude_interfaces = parse_ifaces(ANN_EXCLUDE_IFACES, v)?;
        }
        if let Some(v) = get(ANN_KUBEVIRT_IFACES) {
            cfg.kube_virt_interfaces = parse_ifaces(ANN_KUBEVIRT_IFACES, v)?;
        }
        if let Some(v) = get(ANN_INTERCEPTION_MODE) {
            cfg.inbound_mode = match v {
                "REDIRECT" => InboundMode::Redirect,
                "TPROXY" => InboundMode::Tproxy,
                other => {
                    return Err(CaptureError::Annotation {
                        annotation: ANN_INTERCEPTION_MODE.into(),
                        value: other.into(),
                        reason: "expected REDIRECT or TPROXY (NONE means: do not call capture)"
                            .into(),
                    });
                }
            };
        }
        Ok(cfg)
    }
}

fn bad(annotation: &str, value: &str, reason: String) -> CaptureError {
    CaptureError::Annotation {
        annotation: annotation.into(),
        value: value.into(),
        reason,
    }
}

fn items(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_ports(annotation: &str, v: &str) -> Result<Vec<u16>, CaptureError> {
    items(v)
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(annotation, v, format!("{p:?} is not a port (1-65535)"))),
        })
        .collect()
}

fn parse_cidrs(annotation: &str, v: &str, wildcard_ok: bool) -> Result<Vec<String>, CaptureError> {
    items(v)
        .map(|c| {
            if c == "*" {
                return if wildcard_ok {
                    Ok(c.to_string())
                } else {
                    Err(bad(annotation, v, "\"*\" is not allowed here".into()))
                };
            }
            Cidr::parse(c)
                .map(|_| c.to_string())
                .map_err(|e| bad(annotation, v, e))
        })
        .collect()
}

fn parse_ifaces(annotation: &str, v: &str) -> Result<Vec<String>, CaptureError> {
    items(v)
        .map(|i| {
            let ok = i.len() < 16
                && i.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c));
            if ok {
                Ok(i.to_string())
            } else {
                Err(bad(
                    annotation,
                    v,
                    format!("{i:?} is not an interface name"),
                ))
            }
        })
        .collect()
}

/// An address range as istio-iptables accepts it: `ADDR/LEN`, or a bare address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP range (ADDR/LEN)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?} has a bad prefix length")),
            },
        };
        Ok(Cidr { addr, len })
    }

    /// Whether the range holds a loopback address (then Istio captures calls to self).
    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}
