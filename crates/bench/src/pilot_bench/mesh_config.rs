//! The generated mesh the pilot loads: M Kubernetes Services (`svc-i` in
//! ns-0..ns-9, port 8080 named http), K WorkloadEntries each (version v1/v2),
//! and for every tenth service a DestinationRule (subsets v1, v2) and a
//! VirtualService splitting 90/10. One file per service, so an edit rewrites
//! one small file (atomically: write a temporary, then rename).

use std::fmt::Write as _;
use std::path::Path;

/// Namespaces the services (and the simulated proxies) live in.
pub const NAMESPACES: usize = 10;

/// The namespace of service `i`.
pub fn namespace_of(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

/// Whether service `i` has a DestinationRule and a VirtualService.
pub fn has_routing(i: usize) -> bool {
    i.is_multiple_of(10)
}

/// The config directory and what each service's file currently says.
pub struct MeshFiles {
    dir: tempfile::TempDir,
    endpoints: usize,
    /// Per service: address generation of endpoint 0 and the v1 weight.
    state: Vec<(u32, u32)>,
}

impl MeshFiles {
    /// Write the whole mesh into a new temporary directory; with `scoped`,
    /// each namespace also gets a Sidecar whose egress imports only its own
    /// namespace (`./*`, `istio-system/*`), the user's lever to shrink config.
    pub fn create(services: usize, endpoints: usize, scoped: bool) -> std::io::Result<MeshFiles> {
        let dir = tempfile::Builder::new()
            .prefix("halyard-bench-mesh-")
            .tempdir()?;
        let files = MeshFiles {
            dir,
            endpoints,
            state: vec![(0, 90); services],
        };
        for i in 0..services {
            files.write(i)?;
        }
        if scoped {
            let mut y = String::new();
            for ns in 0..NAMESPACES {
                let _ = write!(
                    y,
                    "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\n\
                     metadata: {{name: default, namespace: ns-{ns}}}\n\
                     spec:\n  egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n"
                );
            }
            std::fs::write(files.dir.path().join("sidecars.yaml"), y)?;
        }
        Ok(files)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn services(&self) -> usize {
        self.state.len()
    }

    /// Total bytes of YAML on disk.
    pub fn bytes(&self) -> u64 {
        (0..self.services())
            .map(|i| self.render(i).len() as u64)
            .sum()
    }

    /// Move endpoint 0 of service `i` to a new address (an EDS-only change).
    pub fn move_endpoint(&mut self, i: usize) -> std::io::Result<()> {
        self.state[i].0 = (self.state[i].0 + 1) % 4;
        self.write(i)
    }

    /// Flip service `i`'s split between 90/10 and 80/20 (an RDS-only change).
    /// Only for services with routing.
    pub fn shift_weights(&mut self, i: usize) -> std::io::Result<()> {
        assert!(has_routing(i), "svc-{i} has no VirtualService");
        self.state[i].1 = if self.state[i].1 == 90 { 80 } else { 90 };
        self.write(i)
    }

    fn write(&self, i: usize) -> std::io::Result<()> {
        let tmp = self.dir.path().join(format!(".svc-{i}.tmp"));
        std::fs::write(&tmp, self.render(i))?;
        std::fs::rename(&tmp, self.dir.path().join(format!("svc-{i}.yaml")))
    }

    fn render(&self, i: usize) -> String {
        let ns = namespace_of(i);
        let host = format!("svc-{i}.{ns}.svc.cluster.local");
        let (generation, weight) = self.state[i];
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: {ns}}}\n\
             spec:\n  clusterIP: 10.96.{}.{}\n  selector: {{app: svc-{i}}}\n  \
             ports: [{{name: http, port: 8080}}]\n",
            (i >> 8) & 255,
            i & 255
        );
        for k in 0..self.endpoints {
            let idx = i * self.endpoints + k;
            let generation = if k == 0 { generation as usize } else { 0 };
            let _ = write!(
                y,
                "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
                 metadata: {{name: svc-{i}-{k}, namespace: {ns}}}\n\
                 spec: {{address: 10.{}.{}.{}, labels: {{app: svc-{i}, version: v{}}}}}\n",
                ((idx >> 16) & 15) | (generation << 4),
                (idx >> 8) & 255,
                idx & 255,
                k % 2 + 1
            );
        }
        if has_routing(i) {
            let _ = write!(
                y,
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                 metadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  host: {host}\n  subsets:\n  \
                 - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n\
                 ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                 metadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  http:\n  \
                 - route:\n    - destination: {{host: {host}, subset: v1}}\n      weight: {weight}\n    \
                 - destination: {{host: {host}, subset: v2}}\n      weight: {}\n",
                100 - weight
            );
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_mesh_loads_cleanly_and_compiles() {
        let mut files = MeshFiles::create(20, 3, false).expect("write mesh");
        let (resources, errors) = api::load::load_path(files.dir());
        assert!(errors.is_empty(), "{errors:?}");
        // 20 Services, 60 WorkloadEntries, 2 DestinationRules, 2 VirtualServices.
        assert_eq!(resources.len(), 84);
        let mesh = pilot::compile::build(&resources);
        let before = format!("{mesh:?}");
        assert!(before.contains("svc-19.ns-9.svc.cluster.local"));
        files.move_endpoint(3).expect("edit");
        files.shift_weights(10).expect("edit");
        let (resources, errors) = api::load::load_path(files.dir());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(resources.len(), 84);
        assert_ne!(format!("{:?}", pilot::compile::build(&resources)), before);
    }

    #[test]
    fn scoped_mesh_has_a_sidecar_per_namespace() {
        let files = MeshFiles::create(20, 3, true).expect("write mesh");
        let (resources, errors) = api::load::load_path(files.dir());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(resources.len(), 84 + NAMESPACES);
    }
}
