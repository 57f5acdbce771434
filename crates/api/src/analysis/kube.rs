//! Analyzers for the Kubernetes kinds: Service port naming, Deployments
//! behind several Services, the sidecar's reserved UID, namespace injection
//! labels and pods missing their proxy, `image: auto` without injection.

use std::collections::{BTreeMap, BTreeSet};

use super::index::{Index, Workload, labels_match};
use super::{Message, codes};
use crate::kube::{IntOrString, ServiceSpec};
use crate::{Kind, Resource, Spec};

/// Namespaces Istio's analyzers leave alone.
const SYSTEM_NAMESPACES: [&str; 4] = [
    "istio-system",
    "kube-system",
    "kube-public",
    "local-path-storage",
];

/// The protocol Istio infers from a port name (`http`, `http-web`, `grpc-x`, ...).
pub fn protocol_from_port_name(name: &str) -> Option<&'static str> {
    const PROTOCOLS: [&str; 13] = [
        "http",
        "http2",
        "https",
        "grpc",
        "grpc-web",
        "mongo",
        "mysql",
        "redis",
        "tcp",
        "tls",
        "udp",
        "http_proxy",
        "h2c",
    ];
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("grpc-web") && (lower.len() == 8 || lower.as_bytes()[8] == b'-') {
        return Some("grpc-web");
    }
    let prefix = lower.split('-').next().unwrap_or("");
    PROTOCOLS.iter().find(|p| **p == prefix).copied()
}

fn services<'a>(ix: &Index<'a>) -> Vec<(&'a Resource, &'a ServiceSpec)> {
    ix.resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Service(s) => Some((r, s)),
            _ => None,
        })
        .collect()
}

/// IST0118 for ports whose name does not say the protocol (and no
/// appProtocol); IST0150 for ExternalName services with such ports.
pub(super) fn port_names(ix: &Index<'_>, out: &mut Vec<Message>) {
    for (r, svc) in services(ix) {
        if SYSTEM_NAMESPACES.contains(&r.namespace()) {
            continue;
        }
        let external = svc.service_type.as_deref() == Some("ExternalName");
        for p in &svc.ports {
            let name = p.name.as_deref().unwrap_or("");
            let inferred = p.app_protocol.is_some() || protocol_from_port_name(name).is_some();
            if external {
                let tcp = protocol_from_port_name(name).is_none_or(|p| p == "tcp");
                if tcp && p.app_protocol.is_none() {
                    out.push(Message::new(
                        codes::EXTERNAL_NAME_INVALID_PORT_NAME,
                        r,
                        "Port name for ExternalName service is invalid. Proxy may prevent tcp named ports and unmatched traffic for ports serving TCP protocol from being forwarded correctly",
                    ));
                }
                continue;
            }
            if !inferred {
                let target = match &p.target_port {
                    Some(IntOrString::Int(i)) => i.to_string(),
                    Some(IntOrString::String(s)) => s.clone(),
                    None => p.port.to_string(),
                };
                out.push(Message::new(
                    codes::PORT_NAME_NOT_UNDER_CONVENTION,
                    r,
                    format!("Port name {name} (port: {}, targetPort: {target}) doesn't follow the naming convention of Istio port.", p.port),
                ));
            }
        }
    }
}

fn deployments<'a>(ix: &'a Index<'a>) -> impl Iterator<Item = &'a Workload<'a>> + 'a {
    ix.workloads
        .iter()
        .filter(|w| w.resource.kind == Kind::Deployment)
}

/// IST0116: a Deployment behind several Services that use one port number
/// with different protocols; IST0137: several Services sending one
/// targetPort from different ports.
pub(super) fn service_association(ix: &Index<'_>, out: &mut Vec<Message>) {
    let svcs = services(ix);
    for w in deployments(ix) {
        if injection_disabled(w) {
            continue; // Not in the mesh.
        }
        let matching: Vec<_> = svcs
            .iter()
            .filter(|(r, s)| {
                r.namespace() == w.namespace
                    && s.selector
                        .as_ref()
                        .is_some_and(|sel| !sel.is_empty() && labels_match(sel, w.labels))
            })
            .collect();
        if matching.len() < 2 {
            continue;
        }
        // port -> protocol -> services
        let mut by_port: BTreeMap<u32, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        // targetPort -> port -> services
        let mut by_target: BTreeMap<String, BTreeMap<u32, BTreeSet<String>>> = BTreeMap::new();
        for (r, s) in &matching {
            for p in &s.ports {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                by_port
                    .entry(p.port)
                    .or_default()
                    .entry(proto)
                    .or_default()
                    .insert(r.meta.name.clone());
                let target = match &p.target_port {
                    Some(IntOrString::Int(i)) => i.to_string(),
                    Some(IntOrString::String(s)) => s.clone(),
                    None => p.port.to_string(),
                };
                by_target
                    .entry(target)
                    .or_default()
                    .entry(p.port)
                    .or_default()
                    .insert(r.meta.name.clone());
            }
        }
        for (port, protos) in by_port {
            if protos.len() > 1 {
                let names: BTreeSet<&String> = protos.values().flatten().collect();
                out.push(Message::new(
                    codes::DEPLOYMENT_MULTIPLE_SERVICES,
                    w.resource,
                    format!("This deployment {} is associated with multiple services using port {port} but different protocols: [{}]", w.resource.meta.name, names.into_iter().cloned().collect::<Vec<_>>().join(" ")),
                ));
            }
        }
        for (target, ports) in by_target {
            if ports.len() > 1 {
                let names: BTreeSet<&String> = ports.values().flatten().collect();
                out.push(Message::new(
                    codes::DEPLOYMENT_CONFLICTING_PORTS,
                    w.resource,
                    format!("This deployment {} is associated with multiple services [{}] using targetPort {target:?} but different ports: [{}].", w.resource.meta.name, names.into_iter().cloned().collect::<Vec<_>>().join(" "), ports.keys().map(u32::to_string).collect::<Vec<_>>().join(" ")),
                ));
            }
        }
    }
}

/// IST0144: pods or containers running as UID 1337 (the sidecar's).
pub(super) fn application_uid(ix: &Index<'_>, out: &mut Vec<Message>) {
    for w in &ix.workloads {
        let pod_uid = w.pod.security_context.as_ref().and_then(|s| s.run_as_user) == Some(1337);
        let container_uid = w
            .pod
            .containers
            .iter()
            .filter(|c| c.name != "istio-proxy")
            .any(|c| c.security_context.as_ref().and_then(|s| s.run_as_user) == Some(1337));
        if pod_uid || container_uid {
            out.push(Message::new(
                codes::INVALID_APPLICATION_UID,
                w.resource,
                "User ID (UID) 1337 is reserved for the sidecar proxy.",
            ));
        }
    }
}

fn injection_disabled(w: &Workload<'_>) -> bool {
    let label = w.labels.get("sidecar.istio.io/inject").map(String::as_str);
    let anno = w
        .annotations
        .get("sidecar.istio.io/inject")
        .map(String::as_str);
    label == Some("false") || anno == Some("false")
}

/// Whether pods in namespace `ns` get a sidecar (by its labels).
fn namespace_injected(ix: &Index<'_>, ns: &str) -> bool {
    ix.namespace(ns).is_some_and(|n| {
        n.meta
            .labels
            .get("istio-injection")
            .is_some_and(|v| v == "enabled")
            || n.meta.labels.contains_key("istio.io/rev")
    })
}

/// IST0102 for namespaces without injection labels, IST0123 for namespaces
/// with conflicting ones, IST0103 for pods of injected namespaces without
/// an `istio-proxy` container.
pub(super) fn injection(ix: &Index<'_>, out: &mut Vec<Message>) {
    for r in ix.of_kind(Kind::Namespace) {
        let ns = r.meta.name.as_str();
        if SYSTEM_NAMESPACES.contains(&ns) {
            continue;
        }
        let labels = &r.meta.labels;
        let legacy = labels.get("istio-injection");
        let rev = labels.get("istio.io/rev");
        let kinds: Vec<&str> = [
            ("istio-injection", legacy.is_some_and(|v| v != "disabled")),
            (
                "istio.io/rev",
                rev.is_some() && legacy.is_none_or(|v| v != "disabled"),
            ),
            (
                "istio.io/dataplane-mode",
                labels
                    .get("istio.io/dataplane-mode")
                    .is_some_and(|v| v == "ambient")
                    && legacy.is_none_or(|v| v != "disabled"),
            ),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(k, _)| k)
        .collect();
        if kinds.len() > 1 {
            out.push(Message::new(
                codes::NAMESPACE_MULTIPLE_INJECTION_LABELS,
                r,
                format!("The namespace has more than one type of injection labels [{}], which may lead to undefined behavior. Make sure only one injection label exists.", kinds.join(" ")),
            ));
            continue;
        }
        if legacy.is_none() && rev.is_none() && !labels.contains_key("istio.io/dataplane-mode") {
            out.push(Message::new(
                codes::NAMESPACE_NOT_INJECTED,
                r,
                format!("The namespace is not enabled for Istio injection. Run 'kubectl label namespace {ns} istio-injection=enabled' to enable it, or 'kubectl label namespace {ns} istio-injection=disabled' to explicitly mark it as not needing injection."),
            ));
        }
    }
    for w in &ix.workloads {
        if w.resource.kind != Kind::Pod
            || w.pod.host_network
            || !namespace_injected(ix, w.namespace)
            || injection_disabled(w)
        {
            continue;
        }
        let ns_disabled = ix.namespace(w.namespace).is_some_and(|n| {
            n.meta
                .labels
                .get("istio-injection")
                .is_some_and(|v| v == "disabled")
        });
        if ns_disabled {
            continue;
        }
        if !w.pod.containers.iter().any(|c| c.name == "istio-proxy") {
            out.push(Message::new(
                codes::POD_MISSING_PROXY,
                w.resource,
                format!("The pod {} is missing the Istio proxy. This can often be resolved by restarting or redeploying the workload.", w.resource.meta.name),
            ));
        }
    }
}

/// IST0146 (Deployment) / IST0147 (Pod): `image: auto` where no injection
/// will replace it.
pub(super) fn image_auto(ix: &Index<'_>, out: &mut Vec<Message>) {
    for w in &ix.workloads {
        if !w
            .pod
            .containers
            .iter()
            .any(|c| c.image.as_deref() == Some("auto"))
        {
            continue;
        }
        let injected = namespace_injected(ix, w.namespace)
            || w.labels
                .get("sidecar.istio.io/inject")
                .is_some_and(|v| v == "true");
        if injected && !injection_disabled(w) {
            continue;
        }
        let (code, kind) = if w.resource.kind == Kind::Pod {
            (codes::IMAGE_AUTO_WITHOUT_INJECTION_ERROR, "Pod")
        } else {
            (codes::IMAGE_AUTO_WITHOUT_INJECTION_WARNING, "Deployment")
        };
        out.push(Message::new(
            code,
            w.resource,
            format!("{kind} {} contains `image: auto` but does not match any Istio injection webhook selectors.", w.resource.meta.name),
        ));
    }
}
