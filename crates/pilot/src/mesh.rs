//! The mesh snapshot: an immutable, fully resolved view of services, routing
//! and policy that translation reads. A new one is built for every config
//! change and swapped in whole.

use std::collections::BTreeMap;

use crate::model::{Protocol, Service, host_matches, labels_match};
use crate::node::ProxyNode;
use crate::policy::DestinationPolicy;
use crate::routing::VirtualServiceRule;

/// Istio's root namespace: config here applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// A port as written in a Sidecar listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerPort {
    pub number: u32,
    pub protocol: Protocol,
    pub name: String,
}

/// `namespace/host` import from a Sidecar egress listener.
#[derive(Clone, Debug, PartialEq)]
pub struct HostImport {
    /// `*` any, `.` the Sidecar's own namespace, `~` none, or a name.
    pub namespace: String,
    /// `*`, `*.suffix`, or a host (resolved).
    pub host: String,
}

/// One Sidecar `egress` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct EgressListener {
    pub port: Option<ListenerPort>,
    pub bind: Option<String>,
    pub capture_none: bool,
    pub hosts: Vec<HostImport>,
}

/// A Sidecar resource, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarScope {
    pub namespace: String,
    pub name: String,
    pub selector: Option<BTreeMap<String, String>>,
    pub egress: Vec<EgressListener>,
    /// `outboundTrafficPolicy.mode: REGISTRY_ONLY`.
    pub registry_only: Option<bool>,
}

/// A PeerAuthentication resource, as loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerAuthnRule {
    pub namespace: String,
    pub name: String,
    pub spec: api::security::PeerAuthentication,
}

/// Mesh TLS, on when the pilot has a CA (without one there are no
/// identities and every hop stays plaintext).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshTls {
    /// meshConfig `trustDomain`.
    pub trust_domain: String,
    /// meshConfig `trustDomainAliases`: peers of these are accepted too.
    pub trust_domain_aliases: Vec<String>,
    /// meshConfig `enableAutoMtls` (default true).
    pub auto_mtls: bool,
}

impl MeshTls {
    /// The trust domain, then its aliases.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.trust_domain.as_str())
            .chain(self.trust_domain_aliases.iter().map(String::as_str))
    }

    /// `spiffe://TD/ns/NS/sa/SA` in each trust domain.
    pub fn spiffe_ids(&self, namespace: &str, service_account: &str) -> Vec<String> {
        self.trust_domains()
            .map(|td| format!("spiffe://{td}/ns/{namespace}/sa/{service_account}"))
            .collect()
    }
}

/// Everything translation needs, for every proxy.
#[derive(Clone, Debug, Default)]
pub struct Mesh {
    /// Mesh TLS (None: no CA, plaintext everywhere).
    pub tls: Option<MeshTls>,
    /// PeerAuthentications (mesh-wide ones in [`ROOT_NAMESPACE`]).
    pub peer_authentications: Vec<PeerAuthnRule>,
    /// AuthorizationPolicies (mesh-wide ones in [`ROOT_NAMESPACE`]).
    pub authorization_policies: Vec<crate::translate::authz::AuthzPolicy>,
    /// RequestAuthentications (mesh-wide ones in [`ROOT_NAMESPACE`]).
    pub request_authentications: Vec<crate::translate::jwt::JwtPolicy>,
    /// meshConfig `extensionProviders` (CUSTOM authorization's ext_authz).
    pub extension_providers: Vec<api::mesh_config::MeshExtensionProvider>,
    /// meshConfig `pathNormalization` (every HTTP connection manager).
    pub path_normalization: api::mesh_config::PathNormalization,
    /// The `jwksUri` documents the pilot fetched, by URI ([`crate::jwks`]).
    pub jwks: BTreeMap<String, String>,
    /// Sorted by hostname.
    pub services: Vec<Service>,
    pub virtual_services: Vec<VirtualServiceRule>,
    pub destination_rules: Vec<DestinationPolicy>,
    pub sidecars: Vec<SidecarScope>,
    /// Mesh-wide `outboundTrafficPolicy` (ALLOW_ANY unless set).
    pub registry_only: bool,
    /// meshConfig `accessLogFile` and its format (None: access logs off).
    pub access_log: Option<crate::translate::access_log::AccessLogConfig>,
    /// (service index, endpoint index) by endpoint address, built on first
    /// use (a mesh is not changed once built).
    endpoint_index: std::sync::OnceLock<std::collections::HashMap<String, Vec<(usize, usize)>>>,
}

impl Mesh {
    /// The mTLS mode of each port of a workload in `namespace` with `labels`,
    /// by Istio's PeerAuthentication precedence.
    pub fn mtls_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> crate::peer_authn::Effective {
        let policies: Vec<crate::peer_authn::Policy<'_>> = self
            .peer_authentications
            .iter()
            .map(|p| crate::peer_authn::Policy {
                namespace: &p.namespace,
                name: &p.name,
                spec: &p.spec,
            })
            .collect();
        crate::peer_authn::resolve(&policies, ROOT_NAMESPACE, namespace, labels)
    }

    /// The mode a client assumes for a service (Istio's
    /// `BestEffortInferServiceMTLSMode`): the namespace- or mesh-level
    /// PeerAuthentication of the service's namespace (workload and port
    /// policies are not known to the client), none for mesh-external ones.
    pub fn service_mtls_mode(&self, svc: &Service) -> Option<crate::peer_authn::Mode> {
        (!svc.mesh_external).then(|| self.mtls_for(&svc.namespace, &BTreeMap::new()).default)
    }

    /// The endpoints at `address`, as (service, endpoint) indices into
    /// `services` (a proxy's inbound ports come from these).
    pub fn endpoints_at(&self, address: &str) -> &[(usize, usize)] {
        let index = self.endpoint_index.get_or_init(|| {
            let mut index: std::collections::HashMap<String, Vec<(usize, usize)>> =
                std::collections::HashMap::new();
            for (si, svc) in self.services.iter().enumerate() {
                for (ei, ep) in svc.endpoints.iter().enumerate() {
                    index.entry(ep.address.clone()).or_default().push((si, ei));
                }
            }
            index
        });
        index.get(address).map_or(&[], Vec::as_slice)
    }

    /// The Sidecar that applies to a proxy: a selector match in its namespace,
    /// else its namespace's selector-less one, else the root namespace's.
    pub fn sidecar_for(&self, proxy: &ProxyNode) -> Option<&SidecarScope> {
        let ns = proxy.namespace.as_str();
        self.sidecars
            .iter()
            .find(|s| {
                s.namespace == ns
                    && s.selector
                        .as_ref()
                        .is_some_and(|sel| labels_match(sel, &proxy.labels))
            })
            .or_else(|| {
                self.sidecars
                    .iter()
                    .find(|s| s.namespace == ns && s.selector.is_none())
            })
            .or_else(|| {
                self.sidecars
                    .iter()
                    .find(|s| s.namespace == ROOT_NAMESPACE && s.selector.is_none())
            })
    }

    pub fn service(&self, host: &str) -> Option<&Service> {
        self.services
            .binary_search_by(|s| s.hostname.as_str().cmp(host))
            .ok()
            .map(|i| &self.services[i])
    }

    /// The DestinationRule for a host as Istio picks it: the client's namespace
    /// first (whatever its `exportTo`), then the service's namespace, then
    /// the root namespace, there only rules not private to their namespace
    /// and only if exported to the client's; an exact host beats a wildcard.
    pub fn destination_rule(
        &self,
        host: &str,
        client_ns: &str,
        svc_ns: &str,
    ) -> Option<&DestinationPolicy> {
        let pick = |ns: &str, exported_only: bool| {
            let mut in_ns = self
                .destination_rules
                .iter()
                .filter(|r| r.namespace == ns)
                .filter(move |r| !exported_only || !r.export_to.private_to(&r.namespace));
            in_ns
                .clone()
                .find(|r| r.host == host)
                .or_else(|| in_ns.find(|r| host_matches(&r.host, host)))
        };
        let exported = |ns: &str| pick(ns, true).filter(|r| r.export_to.visible_to(client_ns));
        pick(client_ns, false)
            .or_else(|| exported(svc_ns))
            .or_else(|| exported(ROOT_NAMESPACE))
    }

    /// VirtualServices for sidecars in `namespace` that name this host, in
    /// Istio's order: those private to the namespace, then those exported
    /// to it by name, then public ones; oldest-defined first within each.
    pub fn virtual_services_seen_by<'a>(
        &'a self,
        host: &'a str,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a VirtualServiceRule> + 'a {
        let class = move |vs: &VirtualServiceRule| {
            if vs.export_to.is_public() {
                2
            } else if vs.namespace == namespace {
                0
            } else {
                1
            }
        };
        let mut seen: Vec<&VirtualServiceRule> = self
            .virtual_services_for(host)
            .filter(|vs| vs.export_to.visible_to(namespace))
            .collect();
        seen.sort_by_key(|vs| class(vs));
        seen.into_iter()
    }

    /// VirtualServices for sidecars that name this host, oldest-defined first.
    pub fn virtual_services_for<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = &'a VirtualServiceRule> + 'a {
        self.virtual_services
            .iter()
            .filter(|vs| vs.for_mesh())
            .filter(move |vs| vs.hosts.iter().any(|h| host_matches(h, host)))
    }

    /// Does any config depend on a proxy's labels (a Sidecar selector, a
    /// route match on source labels, with mesh TLS a workload-level
    /// PeerAuthentication)? If not, proxies differing only in
    /// labels get the same config.
    pub fn label_sensitive(&self) -> bool {
        self.sidecars.iter().any(|s| s.selector.is_some())
            || self.authorization_policies.iter().any(|p| {
                p.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| !s.match_labels.is_empty())
            })
            || self.request_authentications.iter().any(|p| {
                p.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| !s.match_labels.is_empty())
            })
            || (self.tls.is_some()
                && self.peer_authentications.iter().any(|p| {
                    p.spec
                        .selector
                        .as_ref()
                        .is_some_and(|s| !s.match_labels.is_empty())
                }))
            || self
                .virtual_services
                .iter()
                .flat_map(|vs| &vs.http)
                .flat_map(|h| &h.matches)
                .any(|m| !m.source_labels.is_empty())
            || self
                .virtual_services
                .iter()
                .flat_map(|vs| vs.tcp.iter().chain(&vs.tls))
                .flat_map(|r| &r.matches)
                .any(|m| !m.source_labels.is_empty())
    }

    /// Is this service imported by the egress listener (or, with no Sidecar, at all)?
    /// (Its `exportTo` is checked apart, against the proxy's namespace.)
    pub fn imports(egress: Option<&EgressListener>, sidecar_ns: &str, svc: &Service) -> bool {
        let Some(egress) = egress else { return true };
        egress.hosts.iter().any(|imp| {
            let ns_ok = match imp.namespace.as_str() {
                "*" => true,
                "." => svc.namespace == sidecar_ns,
                "~" => false,
                ns => svc.namespace == ns,
            };
            ns_ok && host_matches(&imp.host, &svc.hostname)
        })
    }
}
