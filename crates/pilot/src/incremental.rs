//! Work proportional to what changed: when a new mesh differs from the last
//! one only in the endpoints of EDS services (a pod came or went, an address
//! moved), each proxy config keeps its clusters, listeners and routes as they
//! are, and only the load assignments of the changed services are rebuilt —
//! once per distinct config, not once per proxy, and not for the whole mesh.

use std::collections::BTreeSet;

use crate::mesh::Mesh;
use crate::model::{Resolution, Service};

/// The hostnames whose endpoints changed, when nothing else did (None: some
/// other part of the mesh changed, translate in full).
pub fn endpoint_only_change(old: &Mesh, new: &Mesh) -> Option<BTreeSet<String>> {
    if old.registry_only != new.registry_only
        || old.tls != new.tls
        || old.sidecars != new.sidecars
        || old.virtual_services != new.virtual_services
        || old.destination_rules != new.destination_rules
        || old.peer_authentications != new.peer_authentications
        || old.authorization_policies != new.authorization_policies
        || old.request_authentications != new.request_authentications
        || old.extension_providers != new.extension_providers
        || old.path_normalization != new.path_normalization
        || old.jwks != new.jwks
        || old.access_log != new.access_log
        || old.services.len() != new.services.len()
    {
        return None;
    }
    let mut hosts = BTreeSet::new();
    for (a, b) in old.services.iter().zip(&new.services) {
        if a.endpoints == b.endpoints {
            if a != b {
                return None;
            }
            continue;
        }
        // Only EDS services carry endpoints outside their clusters; DNS
        // clusters embed theirs. With mesh TLS the clusters name the
        // endpoints' service accounts (the servers' SPIFFE ids).
        let sans_moved = new.tls.is_some()
            && a.ports
                .iter()
                .any(|p| a.service_accounts(p.number) != b.service_accounts(p.number));
        if !same_but_endpoints(a, b) || a.resolution != Resolution::Static || sans_moved {
            return None;
        }
        hosts.insert(b.hostname.clone());
    }
    Some(hosts)
}

fn same_but_endpoints(a: &Service, b: &Service) -> bool {
    a.hostname == b.hostname
        && a.namespace == b.namespace
        && a.addresses == b.addresses
        && a.ports == b.ports
        && a.resolution == b.resolution
        && a.mesh_external == b.mesh_external
        && a.origin == b.origin
        && a.subject_alt_names == b.subject_alt_names
}

/// `outbound|PORT|SUBSET|HOST` as (port, subset, host).
pub fn parse_outbound(name: &str) -> Option<(u32, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    Some((port, subset, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(yaml: &str) -> Mesh {
        let (resources, errors) = api::load::load_str(std::path::Path::new("t.yaml"), yaml);
        assert!(errors.is_empty(), "{errors:?}");
        crate::compile::build(&resources)
    }

    const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-1, namespace: bookinfo}
spec: {address: ADDRESS, labels: {app: ratings}}
"#;

    #[test]
    fn endpoint_moves_are_endpoint_only() {
        let a = mesh(&BASE.replace("ADDRESS", "10.0.0.7"));
        let b = mesh(&BASE.replace("ADDRESS", "10.0.0.8"));
        let hosts = endpoint_only_change(&a, &b).expect("endpoint-only");
        assert_eq!(
            hosts.into_iter().collect::<Vec<_>>(),
            ["ratings.bookinfo.svc.cluster.local"]
        );
        assert_eq!(endpoint_only_change(&a, &a).map(|h| h.len()), Some(0));
    }

    #[test]
    fn other_changes_are_not() {
        let a = mesh(&BASE.replace("ADDRESS", "10.0.0.7"));
        let ports = BASE
            .replace("ADDRESS", "10.0.0.7")
            .replace("port: 9080", "port: 9081");
        assert!(endpoint_only_change(&a, &mesh(&ports)).is_none());
        let vs = format!(
            "{}---\n{}",
            BASE.replace("ADDRESS", "10.0.0.7"),
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: bookinfo}
spec:
  hosts: [ratings]
  http: [{route: [{destination: {host: ratings}}], timeout: 3s}]
"#
        );
        assert!(endpoint_only_change(&a, &mesh(&vs)).is_none());
    }

    #[test]
    fn outbound_names_parse() {
        assert_eq!(
            parse_outbound("outbound|9080|v1|reviews.bookinfo.svc.cluster.local"),
            Some((9080, "v1", "reviews.bookinfo.svc.cluster.local"))
        );
        assert_eq!(parse_outbound("inbound|9080||"), None);
    }
}
