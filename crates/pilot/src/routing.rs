//! VirtualServices compiled for translation: hosts resolved to FQDNs, HTTP
//! routes as ordered (matches → weighted destinations), TCP and TLS routes
//! as ordered (L4 matches → weighted destinations). Delegates are already
//! merged into their roots ([`crate::delegate`]).

use std::collections::BTreeMap;
use std::time::Duration;

/// Istio's StringMatch, plus presence (an empty `{}` header match).
#[derive(Clone, Debug, PartialEq)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
    Present,
}

/// One `match` block of an HTTP route: every present condition must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestMatch {
    pub uri: Option<StrMatch>,
    pub method: Option<StrMatch>,
    pub authority: Option<StrMatch>,
    pub scheme: Option<StrMatch>,
    pub headers: Vec<(String, StrMatch)>,
    pub without_headers: Vec<(String, StrMatch)>,
    pub query_params: Vec<(String, StrMatch)>,
    pub ignore_uri_case: bool,
    /// Only for this listener port.
    pub port: Option<u32>,
    /// Only from workloads with these labels.
    pub source_labels: BTreeMap<String, String>,
    /// Only from this namespace.
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

/// Where a route sends a share of its traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct Destination {
    /// Fully qualified host.
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u32>,
    pub weight: u32,
    /// Header edits for the traffic sent here.
    pub headers: HeaderRules,
}

/// Istio's `headers`: edits of request and response headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderRules {
    pub request: HeaderEdits,
    pub response: HeaderEdits,
}

/// `set` overwrites, `add` appends, `remove` deletes (names as written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self == &HeaderRules::default()
    }
}

/// One entry of `http:`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpRoute {
    pub name: Option<String>,
    /// Any one must match; empty = everything.
    pub matches: Vec<RequestMatch>,
    pub destinations: Vec<Destination>,
    pub timeout: Option<Duration>,
    /// Answer with a redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    /// Answer with a fixed response instead of forwarding.
    pub direct_response: Option<DirectResponse>,
    /// Header edits for every request of the route.
    pub headers: HeaderRules,
    /// Delays and aborts to inject.
    pub fault: Option<Fault>,
    /// `retries` as written (None: Istio's default policy).
    pub retries: Option<api::networking::HttpRetry>,
    /// `rewrite`: path and authority before forwarding.
    pub rewrite: Option<Rewrite>,
    /// `mirror`/`mirrors`: where copies go, each with its share.
    pub mirrors: Vec<Mirror>,
    /// `corsPolicy` as written.
    pub cors: Option<api::networking::CorsPolicy>,
}

/// Istio's `rewrite`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Replaces the matched prefix.
    pub uri: Option<String>,
    pub authority: Option<String>,
    /// `uriRegexRewrite`: (RE2 pattern, substitution); wins over `uri`.
    pub uri_regex: Option<(String, String)>,
}

/// One mirror target and the share of requests copied to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub destination: Destination,
    pub share: Share,
}

/// Istio's `fault`, in the form Envoy's fault filter takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<(Duration, Share)>,
    pub abort: Option<(AbortCode, Share)>,
}

/// `numerator` out of `denominator` (100 or 1,000,000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub numerator: u32,
    pub denominator: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortCode {
    Http(u32),
    Grpc(u32),
}

/// `redirect`: where the Location points (unset parts keep the request's).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    pub scheme: Option<String>,
    /// `derivePort: FROM_REQUEST_PORT`: the listener port (Istio builds
    /// routes per port, so that is the request's).
    pub port_from_request: bool,
    /// 301 unless set.
    pub code: u32,
}

/// `directResponse`: status and body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DirectResponse {
    pub status: u32,
    pub body: Option<Vec<u8>>,
}

/// One `match` block of a `tcp` or `tls` route.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct L4Match {
    /// Only for this listener port.
    pub port: Option<u32>,
    /// Only to these destination IPs or CIDRs (checked by the proxy).
    pub destination_subnets: Vec<String>,
    /// `tls` only: the SNI names (exact or `*.suffix`), checked by the proxy.
    pub sni_hosts: Vec<String>,
    /// Only from workloads with these labels.
    pub source_labels: BTreeMap<String, String>,
    /// Only from this namespace.
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

impl L4Match {
    /// Istio's `matchTCP`/`matchTLS`: the static conditions, for a sidecar
    /// in `namespace` with `labels` on listener `port`.
    pub fn applies(&self, port: u32, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.port.is_none_or(|p| p == port)
            && crate::model::labels_match(&self.source_labels, labels)
            && self
                .source_namespace
                .as_ref()
                .is_none_or(|ns| ns == namespace)
            && (self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh"))
    }
}

/// One entry of `tcp:` or `tls:`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct L4Route {
    /// Any one must match; empty = everything.
    pub matches: Vec<L4Match>,
    pub destinations: Vec<Destination>,
}

/// A VirtualService.
#[derive(Clone, Debug, PartialEq)]
pub struct VirtualServiceRule {
    pub namespace: String,
    pub name: String,
    /// Resolved hosts (FQDN or wildcard).
    pub hosts: Vec<String>,
    /// `mesh` when it applies to sidecars (the default).
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<L4Route>,
    /// TLS passthrough routes, by SNI.
    pub tls: Vec<L4Route>,
    /// Which namespaces' proxies see it.
    pub export_to: crate::export::ExportTo,
}

impl VirtualServiceRule {
    /// Applies to sidecars (its gateways include `mesh`, or none are listed).
    pub fn for_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }
}
