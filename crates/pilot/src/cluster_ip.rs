//! Cluster IPs for Services whose manifest leaves `clusterIP` out: the local
//! runtime has no API server to allocate them, so the pilot and `halyard up`
//! both run this one allocator over the same Services and read the same answer.
//!
//! Each Service starts at a slot hashed from `namespace/name` in 10.96.0.0/12
//! and probes forward past slots already taken, so two Services never share an
//! address. Explicit cluster IPs (and any ServiceEntry address inside the
//! range) are reserved first. Services are placed in `namespace/name` order,
//! so the result depends only on the set of Services, never on file order; a
//! Service keeps its address when others are added unless a newcomer that
//! sorts before it hashes onto the same slot.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use api::{Resource, Spec};

/// 10.96.0.0/12: Kubernetes' default service range.
const BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const SIZE: u32 = 1 << 20;

/// Allocated addresses by `(namespace, name)` of each Service without one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterIps {
    allocated: BTreeMap<(String, String), Ipv4Addr>,
}

impl ClusterIps {
    /// Allocate an address for every Service among `resources` that needs one
    /// (no `clusterIP`, not headless, not ExternalName).
    pub fn allocate(resources: &[Resource]) -> ClusterIps {
        let mut taken: HashSet<u32> = HashSet::new();
        let mut wanted: Vec<(String, String)> = Vec::new();
        for r in resources {
            match &r.spec {
                Spec::Service(s) => {
                    let explicit: Vec<&String> =
                        s.cluster_ip.iter().chain(s.cluster_ips.iter()).collect();
                    for ip in &explicit {
                        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                            taken.insert(u32::from(ip));
                        }
                    }
                    let has_own = explicit.iter().any(|ip| !ip.is_empty());
                    if !has_own && s.external_name.is_none() {
                        wanted.push((r.namespace().to_string(), r.meta.name.clone()));
                    }
                }
                Spec::ServiceEntry(se) => {
                    for a in &se.addresses {
                        if let Ok(ip) = a.parse::<Ipv4Addr>() {
                            taken.insert(u32::from(ip));
                        }
                    }
                }
                _ => {}
            }
        }
        wanted.sort();
        wanted.dedup();
        let mut allocated = BTreeMap::new();
        for (ns, name) in wanted {
            let mut slot = home_slot(&ns, &name);
            // The range has a million slots; a mesh never fills it, but bound
            // the probe anyway so a full range cannot loop forever.
            let mut tries = 0;
            while taken.contains(&(BASE + slot)) && tries < SIZE {
                slot = next_slot(slot);
                tries += 1;
            }
            taken.insert(BASE + slot);
            allocated.insert((ns, name), Ipv4Addr::from(BASE + slot));
        }
        ClusterIps { allocated }
    }

    /// The allocated address of Service `namespace/name`, if it got one.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.allocated
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    pub fn len(&self) -> usize {
        self.allocated.len()
    }

    pub fn is_empty(&self) -> bool {
        self.allocated.is_empty()
    }
}

/// The first slot tried for a Service: FNV-1a of `namespace/name` (stable
/// across builds and platforms), skipping the network (.0) and broadcast
/// addresses of the range.
fn home_slot(namespace: &str, name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % (SIZE - 2)) + 1
}

fn next_slot(slot: u32) -> u32 {
    if slot + 1 >= SIZE - 1 { 1 } else { slot + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(n: usize, extra: &str) -> Vec<Resource> {
        let mut yaml = String::new();
        for i in 0..n {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: ns-{}}}\nspec:\n  ports: [{{port: 80}}]\n",
                i % 7
            ));
        }
        yaml.push_str(extra);
        let (res, errors) = api::load::load_str(std::path::Path::new("s.yaml"), &yaml);
        assert!(errors.is_empty(), "{errors:?}");
        res
    }

    #[test]
    fn ten_thousand_services_never_share_an_address() {
        let res = services(10_000, "");
        let ips = ClusterIps::allocate(&res);
        assert_eq!(ips.len(), 10_000);
        let distinct: HashSet<Ipv4Addr> = ips.allocated.values().copied().collect();
        assert_eq!(distinct.len(), 10_000);
        // With 10,000 services in a million slots, hashing alone collides
        // (birthday bound): probing must have moved some of them.
        let homes: HashSet<u32> = ips
            .allocated
            .keys()
            .map(|(ns, n)| home_slot(ns, n))
            .collect();
        assert!(
            homes.len() < 10_000,
            "expected hash collisions to exercise probing"
        );
        for ip in distinct {
            let o = ip.octets();
            assert_eq!(o[0], 10);
            assert!((96..112).contains(&o[1]), "{ip} outside 10.96.0.0/12");
        }
    }

    #[test]
    fn order_of_resources_does_not_matter() {
        let mut res = services(2_000, "");
        let a = ClusterIps::allocate(&res);
        res.reverse();
        assert_eq!(a, ClusterIps::allocate(&res));
    }

    #[test]
    fn explicit_addresses_are_reserved_and_headless_skipped() {
        // Find the address svc-0 would get, then pin another Service to it.
        let plain = ClusterIps::allocate(&services(1, ""));
        let home = plain.get("ns-0", "svc-0").expect("allocated");
        let extra = format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: pinned, namespace: a}}\nspec:\n  clusterIP: {home}\n  ports: [{{port: 80}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: headless, namespace: a}}\nspec:\n  clusterIP: None\n  ports: [{{port: 80}}]\n"
        );
        let ips = ClusterIps::allocate(&services(1, &extra));
        let moved = ips.get("ns-0", "svc-0").expect("allocated");
        assert_ne!(moved, home);
        assert_eq!(ips.get("a", "pinned"), None);
        assert_eq!(ips.get("a", "headless"), None);
    }
}
