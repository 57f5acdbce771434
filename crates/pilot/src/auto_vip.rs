//! Istio's address auto-allocation for ServiceEntries (`ISTIO_META_DNS_AUTO_ALLOCATE`,
//! `PILOT_ENABLE_IP_AUTOALLOCATE`): a host of a ServiceEntry without
//! `addresses`, not a wildcard and not `resolution: NONE`, gets a virtual IP
//! from 240.240.0.0/16 (class E: never routed, so never someone's real
//! address). The sidecar's DNS proxy answers the host with it and the VIP gets
//! its own outbound listeners, so plain TCP to such a host is routed to it
//! instead of falling to passthrough or claiming the whole port.
//!
//! Like the cluster IP allocator: a hash of the hostname picks the first slot,
//! probing forward past taken ones, hosts placed in name order, so the result
//! depends only on the set of hosts and two hosts never share an address.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use crate::model::{Resolution, Service};

const BASE: u32 = u32::from_be_bytes([240, 240, 0, 0]);
const SIZE: u32 = 1 << 16;

/// Does `svc` get an auto-allocated address?
fn wants_one(svc: &Service) -> bool {
    svc.origin.starts_with("ServiceEntry ")
        && svc.addresses.is_empty()
        && svc.resolution != Resolution::Passthrough
        && !svc.hostname.contains('*')
}

/// Give every eligible service an address (`services` sorted by hostname).
pub fn allocate(services: &mut [Service]) {
    let mut taken: HashSet<u32> = services
        .iter()
        .flat_map(|s| &s.addresses)
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .collect();
    for svc in services.iter_mut().filter(|s| wants_one(s)) {
        let mut slot = home_slot(&svc.hostname);
        let mut tries = 0;
        while (taken.contains(&(BASE + slot)) || !usable(slot)) && tries < SIZE {
            slot = (slot + 1) % SIZE;
            tries += 1;
        }
        if tries == SIZE {
            tracing::warn!(host = %svc.hostname, "240.240.0.0/16 is full; no address allocated");
            continue;
        }
        taken.insert(BASE + slot);
        svc.addresses = vec![Ipv4Addr::from(BASE + slot).to_string()];
    }
}

/// Leave out x.x.x.0 and x.x.x.255 (Istio's allocator skips them too).
fn usable(slot: u32) -> bool {
    !matches!(slot & 0xff, 0 | 255)
}

fn home_slot(host: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in host.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % SIZE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile;

    fn mesh(yaml: &str) -> Vec<Service> {
        let (resources, errors) = api::load::load_str(std::path::Path::new("se.yaml"), yaml);
        assert!(errors.is_empty(), "{errors:?}");
        compile::build_with(
            &resources,
            &compile::BuildOptions {
                auto_allocate: true,
            },
        )
        .services
    }

    fn se(name: &str, hosts: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{hosts}]\n  ports: [{{number: 9000, name: tcp, protocol: TCP}}]\n{extra}"
        )
    }

    #[test]
    fn eligible_hosts_get_distinct_class_e_addresses() {
        let mut yaml = se("dns", "a.example.com, b.example.com", "  resolution: DNS\n");
        yaml += &se("none", "c.example.com", "  resolution: NONE\n");
        yaml += &se("wild", "\"*.example.org\"", "  resolution: DNS\n");
        yaml += &se(
            "own",
            "d.example.com",
            "  resolution: DNS\n  addresses: [10.0.0.9]\n",
        );
        yaml += &se(
            "static",
            "e.internal",
            "  resolution: STATIC\n  endpoints: [{address: 10.1.0.1}]\n",
        );
        let services = mesh(&yaml);
        let addr = |h: &str| {
            services
                .iter()
                .find(|s| s.hostname == h)
                .map(|s| s.addresses.clone())
                .expect("host")
        };
        let a = addr("a.example.com");
        assert_eq!(a.len(), 1);
        assert!(a[0].starts_with("240.240."), "{a:?}");
        assert_ne!(a, addr("b.example.com"));
        assert_eq!(addr("e.internal").len(), 1);
        assert!(addr("c.example.com").is_empty(), "NONE gets no address");
        assert!(addr("*.example.org").is_empty(), "wildcards get none");
        assert_eq!(addr("d.example.com"), ["10.0.0.9"]);
        // Without the option nothing changes.
        let (resources, _) = api::load::load_str(std::path::Path::new("se.yaml"), &yaml);
        let plain = compile::build(&resources);
        assert!(
            plain
                .services
                .iter()
                .find(|s| s.hostname == "a.example.com")
                .expect("a")
                .addresses
                .is_empty()
        );
    }

    #[test]
    fn thousands_of_hosts_never_share_an_address_and_order_does_not_matter() {
        let mut yaml = String::new();
        for i in 0..5000 {
            yaml += &se(
                &format!("se-{i}"),
                &format!("h{i}.example.com"),
                "  resolution: DNS\n",
            );
        }
        let services = mesh(&yaml);
        let addrs: HashSet<&String> = services.iter().flat_map(|s| &s.addresses).collect();
        assert_eq!(addrs.len(), 5000);
        assert!(
            addrs
                .iter()
                .all(|a| !a.ends_with(".0") && !a.ends_with(".255"))
        );
        let mut reversed: Vec<&str> = yaml.split("---\n").filter(|d| !d.is_empty()).collect();
        reversed.reverse();
        let again = mesh(
            &reversed
                .iter()
                .map(|d| format!("---\n{d}"))
                .collect::<String>(),
        );
        assert_eq!(
            services.iter().map(|s| &s.addresses).collect::<Vec<_>>(),
            again.iter().map(|s| &s.addresses).collect::<Vec<_>>()
        );
    }
}
