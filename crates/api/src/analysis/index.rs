//! What analyzers look things up in: services (Kubernetes Services and
//! ServiceEntry hosts) with their visibility, workloads (Pods and Deployment
//! pod templates) with their labels, and resources by kind.

use std::collections::BTreeMap;

use crate::kube::{PodSpec, ServicePort};
use crate::mesh_config::MeshConfig;
use crate::{Kind, Resource, Spec};

/// A host in the registry.
pub struct ServiceHost<'a> {
    /// FQDN (`name.ns.svc.cluster.local`) or the ServiceEntry host (may be a wildcard).
    pub host: String,
    pub namespace: &'a str,
    /// Namespaces that see it: `*` for all.
    pub export_to: Vec<String>,
    /// `(number, name, protocol)`.
    pub ports: Vec<(u32, Option<String>, Option<String>)>,
    /// Pod labels selected (Kubernetes Services).
    pub selector: Option<&'a BTreeMap<String, String>>,
    pub resource: &'a Resource,
}

impl ServiceHost<'_> {
    /// Whether namespace `ns` sees this host.
    pub fn visible_from(&self, ns: &str) -> bool {
        self.export_to.is_empty()
            || self
                .export_to
                .iter()
                .any(|e| e == "*" || e == ns || (e == "." && ns == self.namespace))
    }
}

/// A workload: a Pod, or the pod template of a Deployment.
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub pod: &'a PodSpec,
    pub resource: &'a Resource,
}

/// The analysis view of a set of resources.
pub struct Index<'a> {
    pub resources: &'a [Resource],
    pub mesh: &'a MeshConfig,
    pub services: Vec<ServiceHost<'a>>,
    pub workloads: Vec<Workload<'a>>,
}

impl<'a> Index<'a> {
    pub fn new(resources: &'a [Resource], mesh: &'a MeshConfig) -> Index<'a> {
        let mut services = Vec::new();
        let mut workloads = Vec::new();
        for r in resources {
            match &r.spec {
                Spec::Service(s) => {
                    let export_to = r
                        .meta
                        .annotations
                        .get("networking.istio.io/exportTo")
                        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                        .unwrap_or_default();
                    services.push(ServiceHost {
                        host: format!("{}.{}.svc.{}", r.meta.name, r.namespace(), "cluster.local"),
                        namespace: r.namespace(),
                        export_to,
                        ports: s.ports.iter().map(port_of).collect(),
                        selector: s.selector.as_ref(),
                        resource: r,
                    });
                }
                Spec::ServiceEntry(se) => {
                    for h in &se.hosts {
                        services.push(ServiceHost {
                            host: h.clone(),
                            namespace: r.namespace(),
                            export_to: se.export_to.clone(),
                            ports: se
                                .ports
                                .iter()
                                .map(|p| (p.number, p.name.clone(), p.protocol.clone()))
                                .collect(),
                            selector: None,
                            resource: r,
                        });
                    }
                }
                Spec::Pod(p) => workloads.push(Workload {
                    namespace: r.namespace(),
                    labels: &r.meta.labels,
                    annotations: &r.meta.annotations,
                    pod: p,
                    resource: r,
                }),
                Spec::Deployment(d) => workloads.push(Workload {
                    namespace: r.namespace(),
                    labels: &d.template.metadata.labels,
                    annotations: &d.template.metadata.annotations,
                    pod: &d.template.spec,
                    resource: r,
                }),
                _ => {}
            }
        }
        Index {
            resources,
            mesh,
            services,
            workloads,
        }
    }

    /// Resources of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &'a Resource> + '_ {
        self.resources.iter().filter(move |r| r.kind == kind)
    }

    /// The Namespace resource named `ns`, if present.
    pub fn namespace(&self, ns: &str) -> Option<&'a Resource> {
        self.of_kind(Kind::Namespace).find(|r| r.meta.name == ns)
    }

    /// The services `host` (as written in namespace `ns`) refers to and
    /// that `ns` can see: exact FQDN matches first, then wildcard entries.
    pub fn lookup(&self, ns: &str, host: &str) -> Vec<&ServiceHost<'a>> {
        let fqdn = resolve(ns, host);
        let exact: Vec<_> = self
            .services
            .iter()
            .filter(|s| s.host == fqdn && s.visible_from(ns))
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        self.services
            .iter()
            .filter(|s| host_matches(&s.host, &fqdn) && s.visible_from(ns))
            .collect()
    }

    /// Workloads in `ns` whose labels include all of `selector`.
    pub fn workloads_matching(
        &self,
        ns: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<&Workload<'a>> {
        self.workloads
            .iter()
            .filter(|w| w.namespace == ns && labels_match(selector, w.labels))
            .collect()
    }

    /// The mesh root namespace (`istio-system` by default).
    pub fn root_namespace(&self) -> &str {
        self.mesh.root_namespace()
    }
}

fn port_of(p: &ServicePort) -> (u32, Option<String>, Option<String>) {
    (p.port, p.name.clone(), p.protocol.clone())
}

/// A short name (no dot) as the FQDN it means in namespace `ns`.
pub fn resolve(ns: &str, host: &str) -> String {
    if host.contains('.') || host.starts_with('*') || host.is_empty() {
        host.to_string()
    } else {
        format!("{host}.{ns}.svc.cluster.local")
    }
}

/// Whether `pattern` (a host, possibly `*.suffix` or `*`) covers `host`
/// (itself possibly a wildcard, which must then be no wider).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == host || pattern == "*" {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    match host.strip_prefix('*') {
        Some(hs) => hs.ends_with(suffix),
        None => host.ends_with(suffix),
    }
}

/// Whether two hosts (either possibly wildcards) overlap.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    host_matches(a, b) || host_matches(b, a)
}

/// Whether `labels` has every pair of `selector` (an empty selector matches all).
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
