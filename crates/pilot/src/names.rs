//! The names the mesh's DNS answers for, from the pilot's registry: what
//! Kubernetes' cluster DNS and Istio's DNS proxying would answer.
//!
//! - a Service with a cluster IP: its FQDN (`reviews.bookinfo.svc.cluster.local`)
//!   to that IP (clients reach it by short name through resolv.conf's search
//!   list, as in a cluster);
//! - a headless Service: its FQDN to the addresses of its ready endpoints;
//! - a ServiceEntry host (not a wildcard): its `addresses` (single IPs, not
//!   CIDR ranges), else its static endpoint IPs.
//!
//! Names with no address are left out, so they get NXDOMAIN.

use std::net::IpAddr;

use dns::NameTable;

use crate::mesh::Mesh;
use crate::model::{DOMAIN_SUFFIX, Service};

/// Every answerable service with its addresses, in hostname order.
fn entries(mesh: &Mesh) -> impl Iterator<Item = (&Service, Vec<IpAddr>)> {
    mesh.services.iter().filter_map(|svc| {
        if svc.hostname.contains('*') {
            return None;
        }
        let vips: Vec<IpAddr> = svc
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let addrs: Vec<IpAddr> =
            if !vips.is_empty() || svc.addresses.iter().any(|a| a.contains('/')) {
                vips
            } else {
                svc.endpoints
                    .iter()
                    .filter_map(|e| e.address.parse().ok())
                    .collect()
            };
        (!addrs.is_empty()).then_some((svc, addrs))
    })
}

/// The cluster resolver's table (`halyard pilot --dns`).
pub fn table(mesh: &Mesh) -> NameTable {
    let mut table = NameTable::new();
    for (svc, addrs) in entries(mesh) {
        table.insert(&svc.hostname, addrs);
    }
    table
}

/// The same names as Istio's NDS resource, for sidecars' DNS proxies.
pub fn nds(mesh: &Mesh) -> xds::nds::NameTable {
    let table = entries(mesh)
        .map(|(svc, addrs)| {
            let kube = svc.hostname.ends_with(&format!(".svc.{DOMAIN_SUFFIX}"))
                && svc.origin.starts_with("Service ");
            let info = xds::nds::NameInfo {
                ips: addrs.iter().map(ToString::to_string).collect(),
                registry: if kube {
                    "Kubernetes".into()
                } else {
                    String::new()
                },
                shortname: if kube {
                    svc.hostname.split('.').next().unwrap_or_default().into()
                } else {
                    String::new()
                },
                namespace: if kube {
                    svc.namespace.clone()
                } else {
                    String::new()
                },
                alt_hosts: Vec::new(),
            };
            (svc.hostname.clone(), info)
        })
        .collect();
    xds::nds::NameTable { table }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile;

    const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: bookinfo}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: tcp, port: 5432}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-0, namespace: bookinfo}
spec: {address: 10.44.0.7, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-1, namespace: bookinfo}
spec: {address: 10.44.0.8, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: bookinfo}
spec:
  hosts: [api.example.com, "*.wild.example.com"]
  addresses: [240.0.0.1]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: range, namespace: bookinfo}
spec:
  hosts: [range.example.com]
  addresses: [192.168.0.0/24]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: bookinfo}
spec:
  hosts: [vm.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.10.0.1}]
"#;

    #[test]
    fn services_headless_services_and_service_entries() {
        let (resources, errors) = api::load::load_str(std::path::Path::new("names.yaml"), CONFIG);
        assert!(errors.is_empty(), "{errors:?}");
        let t = table(&compile::build(&resources));
        let get = |n: &str| {
            t.lookup(n)
                .map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(
            get("reviews.bookinfo.svc.cluster.local").expect("svc"),
            ["10.96.0.10"]
        );
        assert_eq!(
            get("db.bookinfo.svc.cluster.local").expect("headless"),
            ["10.44.0.7", "10.44.0.8"]
        );
        assert_eq!(get("api.example.com").expect("se"), ["240.0.0.1"]);
        assert_eq!(get("vm.internal").expect("static se"), ["10.10.0.1"]);
        assert!(
            get("range.example.com").is_none(),
            "a CIDR is not an answer"
        );
        assert!(t.names().iter().all(|n| !n.contains('*')));

        // NDS carries the same table, with Istio's registry fields.
        let nds = nds(&compile::build(&resources));
        assert_eq!(nds.table.len(), t.len());
        for (name, info) in &nds.table {
            assert_eq!(get(name).expect("same names"), info.ips);
        }
        let reviews = &nds.table["reviews.bookinfo.svc.cluster.local"];
        assert_eq!(
            (
                reviews.registry.as_str(),
                reviews.shortname.as_str(),
                reviews.namespace.as_str()
            ),
            ("Kubernetes", "reviews", "bookinfo")
        );
        assert_eq!(nds.table["api.example.com"].registry, "");
    }
}
