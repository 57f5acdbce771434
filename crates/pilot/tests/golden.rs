//! Golden tests for the pure translation: each `golden/CASE/` holds
//! `config.yaml` (Istio + Kubernetes YAML), `node.json` (the Envoy node) and
//! `expected.json` (Envoy JSON by type), and optionally `mesh.yaml` (a
//! MeshConfig): its presence stands for a pilot with a CA, so the case is
//! translated with mesh TLS (trust domain, aliases, auto-mTLS from it).
//! `UPDATE_GOLDEN=1 cargo test -p pilot --test golden` rewrites the
//! expectations; review the diff.

mod common;

use std::path::Path;

use pilot::node::ProxyNode;
use pilot::translate::translate;
use serde_json::json;

fn run_case(dir: &Path) {
    // Every case is config Istio's validation accepts.
    let (resources, _) = api::load::load_path(&dir.join("config.yaml"));
    let errors = api::validation::validate_all(&resources).errors;
    assert!(errors.is_empty(), "{}: {errors:#?}", dir.display());
    let (mesh, node) = common::golden_case(dir);
    let proxy = ProxyNode::from_node(&node).expect("valid node");
    let out = translate(&mesh, &proxy);
    let actual = json!({
        "listeners": out.listeners.iter().map(xds::json::to_json).collect::<Vec<_>>(),
        "routes": out.routes.iter().map(xds::json::to_json).collect::<Vec<_>>(),
        "clusters": out.clusters.iter().map(xds::json::to_json).collect::<Vec<_>>(),
        "endpoints": out.endpoints.iter().map(xds::json::to_json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&actual).expect("json") + "\n";
    let expected_path = dir.join("expected.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &text).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
        panic!(
            "{} missing: run with UPDATE_GOLDEN=1",
            expected_path.display()
        )
    });
    if expected != text {
        let diff: Vec<String> = expected
            .lines()
            .zip(text.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .map(|(i, (a, b))| format!("line {}:\n  expected: {a}\n  actual:   {b}", i + 1))
            .collect();
        panic!(
            "{} differs from the translation (UPDATE_GOLDEN=1 to accept):\n{}",
            expected_path.display(),
            diff.join("\n")
        );
    }
}

#[test]
fn golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("golden dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 2);
    for case in cases {
        run_case(&case);
    }
}
