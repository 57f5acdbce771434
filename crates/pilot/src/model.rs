//! The pilot's service registry model: services (from Kubernetes Services and
//! ServiceEntries) with their ports and endpoints (from WorkloadEntries and
//! ServiceEntry endpoints), resolved to fully qualified hostnames.

use std::collections::BTreeMap;

/// Kubernetes' cluster domain; hostnames are `NAME.NAMESPACE.svc.DOMAIN`.
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// Application protocol of a service port, from its name prefix, appProtocol or
/// ServiceEntry `protocol` (Istio's rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
    Https,
    /// Unnamed or unknown: sniffed by the proxy (http_inspector).
    Auto,
}

impl Protocol {
    /// Istio's protocol selection: explicit protocol, else appProtocol, else the
    /// port name's prefix up to `-`.
    pub fn detect(explicit: Option<&str>, app_protocol: Option<&str>, name: &str) -> Protocol {
        let from = |s: &str| match s.to_ascii_lowercase().as_str() {
            "http" | "http1" | "http/1.1" => Some(Protocol::Http),
            "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
            "grpc" | "grpc-web" => Some(Protocol::Grpc),
            "tcp" | "mongo" | "mysql" | "redis" => Some(Protocol::Tcp),
            "tls" => Some(Protocol::Tls),
            "https" => Some(Protocol::Https),
            _ => None,
        };
        explicit
            .and_then(from)
            .or_else(|| app_protocol.and_then(from))
            .or_else(|| from(name.split('-').next().unwrap_or(name)))
            .unwrap_or(Protocol::Auto)
    }

    /// Served by the HTTP connection manager.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Upstream must speak HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    pub name: String,
    pub number: u32,
    pub protocol: Protocol,
    /// Where endpoints listen when they do not name the port themselves.
    pub target_port: Option<u32>,
}

/// How the proxy finds a service's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints are known to the pilot (EDS).
    Static,
    /// Endpoints are hostnames the proxy resolves (STRICT_DNS).
    Dns,
    /// Traffic goes to the address the client asked for (ORIGINAL_DST).
    Passthrough,
}

/// A workload address behind a service, with its port per service port number.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub address: String,
    /// Service port number → the endpoint's port.
    pub ports: BTreeMap<u32, u32>,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub weight: Option<u32>,
    /// Where it runs (what locality load balancing groups endpoints by).
    pub locality: Locality,
}

/// Istio's label for a locality (`region/zone/subzone`).
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// Istio's locality override label, `region.zone.subzone`.
pub const ISTIO_LOCALITY_LABEL: &str = "istio-locality";

/// A region / zone / subzone triple (Envoy's `Locality`); empty parts are unset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// `region/zone/subzone` (Istio's form; missing parts empty).
    pub fn parse(s: &str, sep: char) -> Locality {
        let mut parts = s.splitn(3, sep).map(str::to_string);
        Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    /// From the standard topology labels.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Locality {
        if let Some(l) = labels.get(ISTIO_LOCALITY_LABEL).filter(|l| !l.is_empty()) {
            return Locality::parse(l, '.');
        }
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Locality {
            region: get(REGION_LABEL),
            zone: get(ZONE_LABEL),
            subzone: get(SUBZONE_LABEL),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// `region/zone/subzone`, as Istio sorts and prints localities.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.region, self.zone, self.subzone)
    }

    /// A label of `labels`, or for the topology labels this locality's part
    /// (Istio adds them to workload labels).
    pub fn label<'a>(&'a self, labels: &'a BTreeMap<String, String>, key: &str) -> &'a str {
        if let Some(v) = labels.get(key) {
            return v;
        }
        match key {
            REGION_LABEL => &self.region,
            ZONE_LABEL => &self.zone,
            SUBZONE_LABEL => &self.subzone,
            _ => "",
        }
    }
}

/// A service in the mesh.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Fully qualified: `reviews.bookinfo.svc.cluster.local` or a ServiceEntry host.
    pub hostname: String,
    pub namespace: String,
    /// Virtual IPs (Kubernetes clusterIP, ServiceEntry addresses).
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub mesh_external: bool,
    pub endpoints: Vec<Endpoint>,
    /// Where the service was defined, for messages (`ServiceEntry ns/name`).
    pub origin: String,
    /// ServiceEntry `subjectAltNames`: identities its servers may present.
    pub subject_alt_names: Vec<String>,
    /// ServiceEntry `exportTo` / the Service's `networking.istio.io/exportTo`.
    pub export_to: crate::export::ExportTo,
}

impl Service {
    pub fn port(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// The service accounts of the endpoints serving a port, sorted.
    pub fn service_accounts(&self, port: u32) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .endpoints
            .iter()
            .filter(|ep| ep.ports.contains_key(&port))
            .filter_map(|ep| ep.service_account.as_deref())
            .filter(|sa| !sa.is_empty())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Resolve a host named in config relative to the namespace it was written in,
/// as Istio does: a short name without dots (`reviews`) becomes
/// `reviews.NS.svc.cluster.local`; anything with a dot, `*` and IPs stay as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.contains(':') {
        return host.to_string();
    }
    format!("{host}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

/// Does `host` (possibly a `*.suffix` wildcard) cover `name`?
pub fn host_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => name.ends_with(suffix),
        None => pattern == name,
    }
}

/// Do all of `selector`'s labels appear in `labels`?
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_detection_follows_istio() {
        assert_eq!(Protocol::detect(None, None, "http-web"), Protocol::Http);
        assert_eq!(Protocol::detect(None, None, "grpc"), Protocol::Grpc);
        assert_eq!(
            Protocol::detect(None, Some("http2"), "web"),
            Protocol::Http2
        );
        assert_eq!(Protocol::detect(Some("TCP"), None, "http"), Protocol::Tcp);
        assert_eq!(Protocol::detect(None, None, "web"), Protocol::Auto);
        assert_eq!(Protocol::detect(None, None, ""), Protocol::Auto);
    }

    #[test]
    fn hosts_resolve_relative_to_namespace() {
        assert_eq!(
            resolve_host("reviews", "bookinfo"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(resolve_host("reviews.prod", "bookinfo"), "reviews.prod");
        assert_eq!(resolve_host("api.example.com", "x"), "api.example.com");
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.org"));
    }
}
