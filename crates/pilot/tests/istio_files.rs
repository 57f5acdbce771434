//! Conformance of the translation on Istio's own files: every config in
//! `istio-testdata` that `halyard validate` accepts (bookinfo's networking
//! samples, pilot's `tests/testdata/config`, the valid documents of the API
//! validation suites), each beside bookinfo's platform manifest, translated
//! for three proxy kinds (a sidecar in `default`, a sidecar in another
//! namespace with a `Sidecar` resource, a gateway router). Every resource
//! must pass the pre-push check, and nothing may be dropped for valid input.

mod istio;

use istio::{configs, proxies};

#[test]
fn every_valid_istio_config_passes_the_pre_push_check() {
    let Some(configs) = configs() else { return };
    assert!(configs.len() >= 40, "found only {} configs", configs.len());
    let mut resources = 0usize;
    let mut failures = Vec::new();
    for (name, mesh) in &configs {
        for (kind, node) in proxies() {
            let proxy = pilot::node::ProxyNode::from_node(&node).expect("node");
            let out = pilot::translate::translate(mesh, &proxy);
            let mut report = |what: &str, v: Vec<envoy_rules::Violation>| {
                for v in v {
                    failures.push(format!("{name} [{kind}] {what}: {v}"));
                }
            };
            for l in &out.listeners {
                report(&format!("listener {}", l.name), envoy_rules::listener(l));
            }
            for r in &out.routes {
                report(
                    &format!("route {}", r.name),
                    envoy_rules::route_configuration(r),
                );
            }
            for c in &out.clusters {
                report(&format!("cluster {}", c.name), envoy_rules::cluster(c));
            }
            for e in &out.endpoints {
                report(
                    &format!("endpoints {}", e.cluster_name),
                    envoy_rules::cluster_load_assignment(e),
                );
            }
            resources +=
                out.listeners.len() + out.routes.len() + out.clusters.len() + out.endpoints.len();
            let mut checked = out.clone();
            for d in pilot::check::sanitize(mesh, &mut checked) {
                failures.push(format!("{name} [{kind}] dropped: {d}"));
            }
        }
    }
    println!(
        "pre-push check: {} configs x {} proxy kinds, {resources} resources checked",
        configs.len(),
        proxies().len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
