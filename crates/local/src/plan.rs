//! What `halyard up` will run, computed from the manifests without touching the
//! machine: pods (one per Deployment replica and per bare Pod) with their IPs,
//! labels, commands and whether they get a sidecar; services with their VIPs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use api::{Resource, Spec, kube};

/// The pod network: the bridge holds `.1`, pods start at `.10`.
pub const POD_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 0);
pub const POD_PREFIX_LEN: u8 = 16;
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 1);
const FIRST_POD_HOST: u32 = 10;

/// A process to run in a pod (one container).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ContainerPlan {
    pub name: String,
    /// command + args; `halyard` as the program means this binary.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<kube::ContainerPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<kube::Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<kube::Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<kube::Probe>,
}

/// One pod.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PodPlan {
    pub name: String,
    pub namespace: String,
    /// The Deployment it belongs to (empty for a bare Pod).
    pub owner: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    pub sidecar: bool,
    pub containers: Vec<ContainerPlan>,
    /// Hash of the pod template: a changed Deployment replaces its pods.
    pub template_hash: String,
}

impl PodPlan {
    /// `POD.NAMESPACE`, how the CLI names pods unambiguously.
    pub fn id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// One Service as the runtime needs it: VIP and ports, for name resolution
/// and kube-proxy-style forwarding.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServicePlan {
    pub name: String,
    pub namespace: String,
    /// The cluster IP; empty for a headless Service (`clusterIP: None`).
    pub vip: String,
    pub selector: BTreeMap<String, String>,
    /// (service port, target port)
    pub ports: Vec<(u32, u32)>,
}

/// Everything to run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub pods: Vec<PodPlan>,
    pub services: Vec<ServicePlan>,
}

/// A pod's choice of sidecar proxy over the mesh's default (`halyard` or
/// `envoy`), so one mesh can mix them.
pub const PROXY_ANNOTATION: &str = "sidecar.halyard.io/proxy";

impl PodPlan {
    /// Whether the pod asks for a stock Envoy (Some(true)) or ours
    /// (Some(false)) instead of the mesh's default.
    pub fn wants_envoy(&self) -> Option<bool> {
        match self.annotations.get(PROXY_ANNOTATION).map(String::as_str) {
            Some("envoy") => Some(true),
            Some("halyard") => Some(false),
            _ => None,
        }
    }
}

/// Istio's injection rule: the namespace has `istio-injection: enabled` (or
/// `istio.io/rev`) and the pod does not say `sidecar.istio.io/inject: "false"`;
/// a pod can also opt in with `"true"`.
fn injected(
    ns_labels: Option<&BTreeMap<String, String>>,
    pod: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> bool {
    let pod_says = pod
        .get("sidecar.istio.io/inject")
        .or_else(|| pod_labels.get("sidecar.istio.io/inject"))
        .map(String::as_str);
    match pod_says {
        Some("false") => false,
        Some("true") => true,
        _ => ns_labels.is_some_and(|l| {
            l.get("istio-injection").map(String::as_str) == Some("enabled")
                || l.contains_key("istio.io/rev")
        }),
    }
}

fn containers(spec: &kube::PodSpec) -> Vec<ContainerPlan> {
    spec.containers
        .iter()
        .map(|c| ContainerPlan {
            name: c.name.clone(),
            argv: c.command.iter().chain(c.args.iter()).cloned().collect(),
            env: c
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect(),
            ports: c.ports.clone(),
            startup_probe: c.startup_probe.clone(),
            liveness_probe: c.liveness_probe.clone(),
            readiness_probe: c.readiness_probe.clone(),
        })
        .collect()
}

fn hash_of(value: &impl serde::Serialize) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Give each pod an IP: the one it had (`previous`, by pod id) if any, else
/// the lowest free address, so running pods keep theirs across edits.
pub fn assign_ips(pods: &mut [PodPlan], previous: &BTreeMap<String, Ipv4Addr>) {
    let mut used: std::collections::BTreeSet<Ipv4Addr> = pods
        .iter()
        .filter_map(|p| previous.get(&p.id()).copied())
        .collect();
    let base = u32::from(POD_NETWORK) + FIRST_POD_HOST;
    let mut next = 0u32;
    for pod in pods.iter_mut() {
        if let Some(ip) = previous.get(&pod.id()) {
            pod.ip = *ip;
            continue;
        }
        while used.contains(&Ipv4Addr::from(base + next)) {
            next += 1;
        }
        pod.ip = Ipv4Addr::from(base + next);
        used.insert(pod.ip);
    }
}

/// Build the plan. Pod IPs are assigned in a stable order (namespace, owner,
/// replica), so the same manifests give the same addresses.
pub fn plan(resources: &[Resource]) -> Plan {
    let namespaces: BTreeMap<&str, &BTreeMap<String, String>> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::Namespace))
        .map(|r| (r.meta.name.as_str(), &r.meta.labels))
        .collect();
    let mut pods = Vec::new();
    for r in resources {
        let ns = r.namespace().to_string();
        match &r.spec {
            Spec::Deployment(d) => {
                let t = &d.template;
                let mut labels = t.metadata.labels.clone();
                if labels.is_empty() {
                    labels = d.selector.match_labels.clone();
                }
                for i in 0..d.replicas.unwrap_or(1) {
                    pods.push(PodPlan {
                        name: format!("{}-{i}", r.meta.name),
                        namespace: ns.clone(),
                        owner: r.meta.name.clone(),
                        ip: Ipv4Addr::UNSPECIFIED,
                        labels: labels.clone(),
                        annotations: t.metadata.annotations.clone(),
                        service_account: t
                            .spec
                            .service_account_name
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                        sidecar: injected(
                            namespaces.get(ns.as_str()).copied(),
                            &t.metadata.annotations,
                            &labels,
                        ),
                        containers: containers(&t.spec),
                        template_hash: hash_of(&(
                            &t.metadata.labels,
                            &t.metadata.annotations,
                            containers(&t.spec),
                        )),
                    });
                }
            }
            Spec::Pod(p) => pods.push(PodPlan {
                name: r.meta.name.clone(),
                namespace: ns.clone(),
                owner: String::new(),
                ip: Ipv4Addr::UNSPECIFIED,
                labels: r.meta.labels.clone(),
                annotations: r.meta.annotations.clone(),
                service_account: p
                    .service_account_name
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                sidecar: injected(
                    namespaces.get(ns.as_str()).copied(),
                    &r.meta.annotations,
                    &r.meta.labels,
                ),
                containers: containers(p),
                template_hash: hash_of(&(&r.meta.labels, &r.meta.annotations, containers(p))),
            }),
            _ => {}
        }
    }
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    assign_ips(&mut pods, &BTreeMap::new());
    let cluster_ips = pilot::cluster_ip::ClusterIps::allocate(resources);
    let services = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Service(s) => Some(ServicePlan {
                name: r.meta.name.clone(),
                namespace: r.namespace().to_string(),
                vip: s
                    .cluster_ip
                    .clone()
                    .filter(|ip| !ip.is_empty() && ip != "None")
                    .or_else(|| {
                        cluster_ips
                            .get(r.namespace(), &r.meta.name)
                            .map(|ip| ip.to_string())
                    })
                    .unwrap_or_default(),
                selector: s.selector.clone().unwrap_or_default(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| {
                        let target = match &p.target_port {
                            Some(kube::IntOrString::Int(n)) => *n,
                            _ => p.port,
                        };
                        (p.port, target)
                    })
                    .collect(),
            }),
            _ => None,
        })
        .collect();
    Plan { pods, services }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v1, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      serviceAccountName: web
      containers:
      - name: app
        command: [halyard, echo]
        args: [--port, "8080"]
        env: [{name: SERVICE_VERSION, value: v1}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy, namespace: shop}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata:
      labels: {app: legacy}
      annotations: {sidecar.istio.io/inject: "false"}
    spec:
      containers: [{name: app, command: [halyard, echo]}]
"#;

    #[test]
    fn deployments_become_pods_with_sidecars_by_namespace_label() {
        let (resources, errors) = api::load::load_str(std::path::Path::new("m.yaml"), MANIFESTS);
        assert!(errors.is_empty(), "{errors:?}");
        let p = plan(&resources);
        let names: Vec<String> = p.pods.iter().map(PodPlan::id).collect();
        assert_eq!(names, ["legacy-0.shop", "web-v1-0.shop", "web-v1-1.shop"]);
        assert!(!p.pods[0].sidecar);
        assert!(p.pods[1].sidecar && p.pods[2].sidecar);
        assert_eq!(p.pods[1].ip, Ipv4Addr::new(10, 44, 0, 11));
        assert_eq!(p.pods[1].service_account, "web");
        assert_eq!(
            p.pods[1].containers[0].argv,
            ["halyard", "echo", "--port", "8080"]
        );
        assert_eq!(p.services[0].ports, vec![(80, 8080)]);
        assert!(p.services[0].vip.starts_with("10."));
    }

    #[test]
    fn pilot_and_runtime_agree_on_distinct_cluster_ips() {
        // 2,000 Services without clusterIP: hashing alone would put two of
        // them on one address about 85% of the time.
        let mut yaml = String::new();
        for i in 0..2_000 {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: n{}}}\nspec:\n  ports: [{{port: 80}}]\n",
                i % 13
            ));
        }
        let (resources, errors) = api::load::load_str(std::path::Path::new("s.yaml"), &yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let p = plan(&resources);
        let mesh = pilot::compile::build(&resources);
        let vips: std::collections::BTreeSet<&str> =
            p.services.iter().map(|s| s.vip.as_str()).collect();
        assert_eq!(vips.len(), 2_000);
        for svc in &p.services {
            let host = format!("{}.{}.svc.cluster.local", svc.name, svc.namespace);
            let pilot_svc = mesh
                .services
                .iter()
                .find(|s| s.hostname == host)
                .expect("service");
            assert_eq!(
                pilot_svc.addresses,
                std::slice::from_ref(&svc.vip),
                "{host}"
            );
        }
    }
}
