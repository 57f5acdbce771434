//! Shared by the Istio-files conformance tests: the configs (each file
//! `halyard validate` accepts, beside bookinfo) and the three proxy kinds.

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use pilot::mesh::Mesh;

/// `../shared/istio-testdata`, or `$HALYARD_ISTIO_TESTDATA`; None (and a
/// loud skip, as the API conformance suites do) when it is not checked out.
pub fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("HALYARD_ISTIO_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/istio-testdata")
        });
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: {} not found (Istio test data is not checked out; set HALYARD_ISTIO_TESTDATA)",
            dir.display()
        );
        None
    }
}

/// The namespace of the second sidecar, and the Sidecar resource scoping it.
const OTHER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: other}
spec:
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    hosts: ["default/*", "./*"]
  - hosts: ["*/*"]
"#;

fn files(dir: &Path, filter: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && filter(&p.file_name().unwrap_or_default().to_string_lossy())
        })
        .collect();
    out.sort();
    out
}

/// Every accepted config as (file name, mesh with bookinfo beside it), and
/// bookinfo alone first.
pub fn configs() -> Option<Vec<(String, Mesh)>> {
    let root = testdata()?;
    let bookinfo = root.join("samples/bookinfo/platform/kube/bookinfo.yaml");
    let (base, errors) = api::load::load_path(&bookinfo);
    assert!(errors.is_empty(), "bookinfo: {errors:?}");
    let (other, errors) = api::load::load_str(Path::new("other.yaml"), OTHER);
    assert!(errors.is_empty(), "{errors:?}");
    let mut candidates = files(&root.join("samples/bookinfo/networking"), |_| true);
    candidates.extend(files(&root.join("tests/testdata/config"), |_| true));
    candidates.extend(files(&root.join("istio-api/tests/testdata"), |n| {
        n.ends_with("-valid.yaml")
    }));
    let mut out = vec![("bookinfo.yaml".to_string(), {
        let all: Vec<_> = base.iter().chain(&other).cloned().collect();
        pilot::compile::build(&all)
    })];
    for file in candidates {
        let (resources, errors) = api::load::load_path(&file);
        if !errors.is_empty() || !api::validation::validate_all(&resources).errors.is_empty() {
            continue;
        }
        let all: Vec<_> = base
            .iter()
            .chain(&other)
            .chain(&resources)
            .cloned()
            .collect();
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        out.push((name, pilot::compile::build(&all)));
    }
    Some(out)
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn node(id: &str, labels: &[(&str, &str)]) -> Node {
    let mut l = Struct::default();
    for (k, v) in labels {
        l.fields.insert(k.to_string(), string(v));
    }
    let mut meta = Struct::default();
    meta.fields.insert(
        "LABELS".into(),
        Value {
            kind: Some(Kind::StructValue(l)),
        },
    );
    Node {
        id: id.into(),
        cluster: "conformance".into(),
        metadata: Some(meta),
        ..Default::default()
    }
}

/// The three proxy kinds, as (label, node).
pub fn proxies() -> Vec<(&'static str, Node)> {
    vec![
        (
            "sidecar default",
            node(
                "sidecar~10.44.0.7~productpage-v1-0.default~default.svc.cluster.local",
                &[("app", "productpage"), ("version", "v1")],
            ),
        ),
        (
            "sidecar other+Sidecar",
            node(
                "sidecar~10.44.0.8~sleep-0.other~other.svc.cluster.local",
                &[("app", "sleep")],
            ),
        ),
        (
            "router",
            node(
                "router~10.44.0.9~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local",
                &[("istio", "ingressgateway")],
            ),
        ),
    ]
}
