//! Golden cases (tests/golden/<case>/): the config, the node, and
//! `mesh.yaml` when the case runs with the pilot's mesh TLS (a CA).
#![allow(dead_code)]

use std::path::Path;

use envoy_types::pb::envoy::config::core::v3::Node;
use serde_json::Value;

/// The mesh compiled from `config.yaml` (TLS on when `mesh.yaml` is there)
/// and the Envoy node of `node.json`.
pub fn golden_case(dir: &Path) -> (pilot::mesh::Mesh, Node) {
    let (resources, errors) = api::load::load_path(&dir.join("config.yaml"));
    assert!(errors.is_empty(), "{}: {errors:?}", dir.display());
    let mut mesh = pilot::compile::build(&resources);
    let mesh_yaml = dir.join("mesh.yaml");
    if mesh_yaml.exists() {
        let mc = api::mesh_config::load_mesh_config(&mesh_yaml).expect("mesh.yaml");
        mesh.tls = Some(pilot::mesh::MeshTls {
            trust_domain: mc.trust_domain().to_string(),
            trust_domain_aliases: mc.trust_domain_aliases.clone(),
            auto_mtls: mc.enable_auto_mtls.unwrap_or(true),
        });
        mesh.extension_providers = mc.extension_providers.clone();
        mesh.path_normalization = mc.path_normalization();
        mesh.access_log = pilot::translate::access_log::AccessLogConfig::from_mesh_config(&mc);
    }
    let node: Node = xds::json::from_json(
        &serde_json::from_str::<Value>(
            &std::fs::read_to_string(dir.join("node.json")).expect("node.json"),
        )
        .expect("node.json is JSON"),
    )
    .expect("node.json is an Envoy node");
    (mesh, node)
}
