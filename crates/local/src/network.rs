//! The pod network: a bridge in its own namespace (the host is untouched),
//! one namespace per pod with a veth on the bridge, Istio's capture rules for
//! pods with a sidecar, kube-proxy-style forwarding of Service VIPs, and a
//! hosts file per pod so `reviews`, `reviews.ns` and the FQDN resolve, and a
//! resolv.conf naming the mesh's DNS with a cluster's search list.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use crate::RuntimeError;
use crate::plan::{GATEWAY, POD_PREFIX_LEN, PodPlan, ServicePlan};

/// Bridge device inside the mesh namespace.
pub const BRIDGE: &str = "hybr0";

/// Names of everything one mesh creates, from its prefix.
#[derive(Clone, Debug)]
pub struct MeshNet {
    pub prefix: String,
    /// Capture meshed pods' DNS to their sidecar's DNS proxy (Istio's
    /// `ISTIO_META_DNS_CAPTURE`); only our sidecar has one.
    pub dns_capture: bool,
}

impl MeshNet {
    /// The namespace holding the bridge, the pilot and the VIP routing.
    pub fn mesh_ns(&self) -> String {
        format!("{}-mesh", self.prefix)
    }

    pub fn pod_ns(&self, pod: &PodPlan) -> String {
        format!("{}-{}-{}", self.prefix, pod.namespace, pod.name)
    }

    fn hosts_dir(netns: &str) -> PathBuf {
        PathBuf::from("/etc/netns").join(netns)
    }

    /// Create the mesh namespace and its bridge with the gateway address.
    pub fn create_mesh(&self) -> Result<(), RuntimeError> {
        let ns = self.mesh_ns();
        capture::netns::create(&ns)?;
        capture::net::create_bridge(&ns, BRIDGE, &format!("{GATEWAY}/{POD_PREFIX_LEN}"))?;
        Ok(())
    }

    /// A pod's namespace: veth on the bridge, capture rules when it has a
    /// sidecar, VIP forwarding and the hosts file.
    pub fn create_pod(
        &self,
        pod: &PodPlan,
        index: usize,
        all_pods: &[PodPlan],
        services: &[ServicePlan],
    ) -> Result<(), RuntimeError> {
        let ns = self.pod_ns(pod);
        capture::netns::create(&ns)?;
        crate::uts::create(&ns, &pod.name)?;
        capture::net::attach_pod(
            &self.mesh_ns(),
            BRIDGE,
            &ns,
            &format!("v{index}"),
            &format!("{}/{POD_PREFIX_LEN}", pod.ip),
            &GATEWAY.to_string(),
        )?;
        if pod.sidecar {
            let mut cfg = capture::CaptureConfig::from_annotations(&pod.annotations)?;
            if pod.wants_envoy().map_or(self.dns_capture, |envoy| !envoy) {
                // istio-iptables --redirect-dns, for the pod's one nameserver.
                cfg.redirect_dns = true;
                cfg.dns_servers_v4 = vec![GATEWAY.to_string()];
            }
            capture::apply(Some(&ns), &cfg)?;
        }
        iptables_restore(&ns, &service_rules(all_pods, services, true))?;
        write_hosts(&ns, pod, services)?;
        Ok(())
    }

    /// Services or pods changed: rewrite a running pod's names and VIP rules.
    pub fn refresh_pod(
        &self,
        pod: &PodPlan,
        all_pods: &[PodPlan],
        services: &[ServicePlan],
    ) -> Result<(), RuntimeError> {
        let ns = self.pod_ns(pod);
        let flush = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "iptables",
                "-w",
                "-t",
                "nat",
                "-F",
                "HALYARD_SERVICES",
            ])
            .output()
            .map_err(|e| RuntimeError::Command(format!("iptables in {ns}: {e}")))?;
        if !flush.status.success() {
            return Err(RuntimeError::Command(format!(
                "iptables -F HALYARD_SERVICES in {ns}: {}",
                String::from_utf8_lossy(&flush.stderr).trim()
            )));
        }
        iptables_restore(&ns, &service_rules(all_pods, services, false))?;
        write_hosts(&ns, pod, services)
    }

    pub fn delete_pod(&self, pod: &PodPlan) -> Result<(), RuntimeError> {
        let ns = self.pod_ns(pod);
        let _ = std::fs::remove_dir_all(Self::hosts_dir(&ns));
        crate::uts::delete(&ns);
        capture::netns::delete(&ns)?;
        Ok(())
    }

    /// Remove every namespace and hosts file with this mesh's prefix (also
    /// those a crashed run left behind).
    pub fn teardown(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let mine = |n: &str| n.starts_with(&format!("{}-", self.prefix));
        for ns in capture::netns::list().into_iter().filter(|n| mine(n)) {
            crate::process::kill_all_in(&ns);
            if capture::netns::delete(&ns).is_ok() {
                removed.push(ns);
            }
        }
        crate::uts::teardown(&self.prefix);
        if let Ok(entries) = std::fs::read_dir("/etc/netns") {
            for e in entries.flatten() {
                if mine(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        removed
    }
}

/// kube-proxy in miniature: DNAT each Service VIP:port to its pods, spread at
/// random. Lives after Istio's ISTIO_OUTPUT jump, so a sidecar's capture wins
/// and only pods without one (or the sidecar itself) are forwarded here.
fn service_rules(pods: &[PodPlan], services: &[ServicePlan], jump: bool) -> String {
    let mut rules = String::from("*nat\n");
    if jump {
        rules.push_str(":HALYARD_SERVICES - [0:0]\n-A OUTPUT -p tcp -j HALYARD_SERVICES\n");
    }
    // Headless Services have no VIP: DNS answers with their pods instead.
    for svc in services.iter().filter(|s| !s.vip.is_empty()) {
        let backends: Vec<&PodPlan> = pods
            .iter()
            .filter(|p| {
                p.namespace == svc.namespace
                    && !svc.selector.is_empty()
                    && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect();
        for (port, target) in &svc.ports {
            let n = backends.len();
            for (i, pod) in backends.iter().enumerate() {
                let pick = if i + 1 < n {
                    format!(
                        " -m statistic --mode random --probability {:.6}",
                        1.0 / (n - i) as f64
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    rules,
                    "-A HALYARD_SERVICES -d {}/32 -p tcp --dport {port}{pick} -j DNAT --to-destination {}:{target}",
                    svc.vip, pod.ip
                );
            }
        }
    }
    rules.push_str("COMMIT\n");
    rules
}

fn iptables_restore(ns: &str, rules: &str) -> Result<(), RuntimeError> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| RuntimeError::Command(format!("iptables-restore in {ns}: {e}")))?;
    if let Some(stdin) = child.stdin.as_mut() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| RuntimeError::Command(format!("iptables-restore in {ns}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| RuntimeError::Command(format!("iptables-restore in {ns}: {e}")))?;
    if !out.status.success() {
        return Err(RuntimeError::Command(format!(
            "iptables-restore in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `/etc/netns/NS/hosts`, bind-mounted over /etc/hosts by `ip netns exec`.
fn write_hosts(ns: &str, pod: &PodPlan, services: &[ServicePlan]) -> Result<(), RuntimeError> {
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for svc in services.iter().filter(|s| !s.vip.is_empty()) {
        let fqdn = format!(
            "{}.{}.svc.{}",
            svc.name,
            svc.namespace,
            pilot::model::DOMAIN_SUFFIX
        );
        let mut aliases = vec![
            fqdn,
            format!("{}.{}.svc", svc.name, svc.namespace),
            format!("{}.{}", svc.name, svc.namespace),
        ];
        if svc.namespace == pod.namespace {
            aliases.push(svc.name.clone());
        }
        names.entry(svc.vip.clone()).or_default().extend(aliases);
    }
    let mut text = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{}\t{}\n",
        pod.ip, pod.name
    );
    for (ip, aliases) in names {
        let _ = writeln!(text, "{ip}\t{}", aliases.join(" "));
    }
    let dir = MeshNet::hosts_dir(ns);
    std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::Io(dir.clone(), e))?;
    let path = dir.join("hosts");
    std::fs::write(&path, text).map_err(|e| RuntimeError::Io(path, e))?;
    let path = dir.join("resolv.conf");
    std::fs::write(&path, resolv_conf(&pod.namespace)).map_err(|e| RuntimeError::Io(path, e))?;
    Ok(())
}

/// What the kubelet writes for a ClusterFirst pod: the cluster DNS, the
/// search list of the pod's namespace, `ndots:5`.
fn resolv_conf(namespace: &str) -> String {
    let suffix = pilot::model::DOMAIN_SUFFIX;
    format!(
        "nameserver {GATEWAY}\nsearch {namespace}.svc.{suffix} svc.{suffix} {suffix}\noptions ndots:5\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pod(name: &str, ip: u8, app: &str) -> PodPlan {
        PodPlan {
            name: name.into(),
            namespace: "shop".into(),
            owner: String::new(),
            ip: Ipv4Addr::new(10, 44, 0, ip),
            labels: [("app".to_string(), app.to_string())].into(),
            annotations: BTreeMap::new(),
            service_account: "default".into(),
            sidecar: true,
            containers: vec![],
            template_hash: String::new(),
        }
    }

    #[test]
    fn vips_spread_over_matching_pods() {
        let pods = [
            pod("a-0", 10, "web"),
            pod("a-1", 11, "web"),
            pod("b-0", 12, "db"),
        ];
        let svc = ServicePlan {
            name: "web".into(),
            namespace: "shop".into(),
            vip: "10.96.1.2".into(),
            selector: [("app".to_string(), "web".to_string())].into(),
            ports: vec![(80, 8080)],
        };
        let rules = service_rules(&pods, &[svc], true);
        assert!(rules.contains("-d 10.96.1.2/32 -p tcp --dport 80 -m statistic --mode random --probability 0.500000 -j DNAT --to-destination 10.44.0.10:8080"), "{rules}");
        assert!(
            rules.contains(
                "-d 10.96.1.2/32 -p tcp --dport 80 -j DNAT --to-destination 10.44.0.11:8080"
            ),
            "{rules}"
        );
        assert!(!rules.contains("10.44.0.12"));
    }

    #[test]
    fn resolv_conf_is_a_cluster_first_pods() {
        assert_eq!(
            resolv_conf("shop"),
            "nameserver 10.44.0.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
    }
}
