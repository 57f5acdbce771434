//! What the pre-push check costs next to translation: the generated mesh of
//! `halyard-bench pilot` at M services, one sidecar per namespace, each
//! translated and then checked, repeated; reported as the check's time over
//! translation's (the push work the check adds).

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;

use super::mesh_config::{MeshFiles, NAMESPACES};

/// Time spent translating and checking every namespace's sidecar.
#[derive(Debug)]
pub struct CheckCost {
    pub services: usize,
    pub resources: usize,
    pub translate: Duration,
    pub check: Duration,
}

impl CheckCost {
    /// Check time over translation time.
    pub fn ratio(&self) -> f64 {
        self.check.as_secs_f64() / self.translate.as_secs_f64().max(1e-9)
    }
}

pub fn run(services: usize, endpoints: usize, rounds: usize) -> anyhow::Result<CheckCost> {
    let files = MeshFiles::create(services, endpoints, false)?;
    let (resources, errors) = api::load::load_dir(files.dir());
    anyhow::ensure!(errors.is_empty(), "generated mesh has errors: {errors:?}");
    let mesh = pilot::compile::build(&resources);
    let proxies: Vec<pilot::node::ProxyNode> = (0..NAMESPACES)
        .map(|i| {
            let ns = format!("ns-{i}");
            pilot::node::ProxyNode::from_node(&Node {
                id: format!("sidecar~10.1.0.{i}~app-0.{ns}~{ns}.svc.cluster.local"),
                ..Default::default()
            })
        })
        .collect::<Result<_, _>>()?;
    let mut cost = CheckCost {
        services,
        resources: 0,
        translate: Duration::ZERO,
        check: Duration::ZERO,
    };
    for _ in 0..rounds.max(1) {
        for proxy in &proxies {
            let start = Instant::now();
            let mut res = pilot::translate::translate(&mesh, proxy);
            let translated = Instant::now();
            let dropped = pilot::check::sanitize(&mesh, &mut res);
            cost.check += translated.elapsed();
            cost.translate += translated - start;
            anyhow::ensure!(dropped.is_empty(), "the check dropped {dropped:?}");
            cost.resources =
                res.clusters.len() + res.endpoints.len() + res.listeners.len() + res.routes.len();
        }
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_a_small_mesh() {
        let cost = super::run(20, 2, 1).expect("run");
        assert!(cost.resources > 20, "{cost:?}");
        assert!(cost.translate > std::time::Duration::ZERO);
    }
}
