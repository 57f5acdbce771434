//! The pilot's debug and metrics port (15014): `/debug/syncz` (every proxy, its
//! types, versions sent and ACKed, NACK texts, and what the pre-push check
//! `dropped` from its config), `/debug/authenticationz` (each proxy's mTLS mode
//! from PeerAuthentication), `/metrics` (Prometheus: `pilot_xds_push_errors`,
//! `pilot_total_xds_internal_errors`), `/debug/configz` (loaded
//! resources and config errors), `/debug/analyze` (`istioctl analyze`'s
//! messages for the loaded config), `/debug/config_dump?proxyID=ID`, `/ready`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::{Value, json};
use xds::server::Snapshot;

use crate::discovery::Discovery;

/// What the debug endpoints read.
#[derive(Clone)]
pub struct DebugState {
    pub discovery: Arc<Discovery>,
    pub sync: xds::status::SyncStatus,
    /// Last load: resource keys and error lines.
    pub config: Arc<Mutex<ConfigReport>>,
}

/// Summary of the last config load.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConfigReport {
    pub resources: Vec<String>,
    pub errors: Vec<String>,
    pub kept_last_good: Vec<String>,
    pub loads: u64,
    /// `istioctl analyze`'s messages for the loaded config (IST codes).
    pub analysis: Vec<String>,
}

pub fn router(state: DebugState) -> axum::Router {
    axum::Router::new()
        .route("/debug/syncz", get(syncz))
        .route("/metrics", get(metrics))
        .route("/debug/configz", get(configz))
        .route("/debug/analyze", get(analyze))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/authenticationz", get(authenticationz))
        .route("/ready", get(|| async { "ok" }))
        .with_state(state)
}

async fn syncz(State(s): State<DebugState>) -> Json<Value> {
    let dropped = s.discovery.dropped();
    let mut proxies = serde_json::to_value(s.sync.snapshot()).unwrap_or(Value::Null);
    if let Some(list) = proxies.as_array_mut() {
        for p in list {
            let id = p.get("node_id").and_then(Value::as_str).unwrap_or_default();
            let d = dropped
                .get(id)
                .map_or(Value::Array(Vec::new()), |d| json!(d.as_slice()));
            // The version each type's latest snapshot has: until the stream
            // has sent it, `sent_version` lags behind (a push in flight).
            let latest = s.discovery.snapshot_for(id);
            if let (Some(snap), Some(types)) =
                (latest, p.get_mut("types").and_then(Value::as_object_mut))
            {
                for (url, t) in &snap.types {
                    if let Some(status) = types
                        .get_mut(&xds::status::type_key(url))
                        .and_then(Value::as_object_mut)
                    {
                        status.insert("latest_version".into(), json!(t.version));
                    }
                }
            }
            if let Some(obj) = p.as_object_mut() {
                obj.insert("dropped".into(), d);
            }
        }
    }
    Json(proxies)
}

/// Prometheus text: the pre-push check's drops by type, and their total
/// under Istio's name for internal xDS errors.
async fn metrics(State(s): State<DebugState>) -> impl IntoResponse {
    let counts = s.discovery.push_errors.counts();
    let mut out = String::from(
        "# HELP pilot_xds_push_errors Resource units left out of a push because Envoy would reject them.\n\
         # TYPE pilot_xds_push_errors counter\n",
    );
    for (t, n) in &counts {
        out.push_str(&format!("pilot_xds_push_errors{{type=\"{t}\"}} {n}\n"));
    }
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    out.push_str(
        "# HELP pilot_total_xds_internal_errors Total number of internal XDS errors in pilot.\n\
         # TYPE pilot_total_xds_internal_errors counter\n",
    );
    out.push_str(&format!("pilot_total_xds_internal_errors {total}\n"));
    out.push_str(&format!(
        "# HELP pilot_xds_connected Proxies with an open ADS stream.\n\
         # TYPE pilot_xds_connected gauge\npilot_xds_connected {}\n",
        s.discovery.connected()
    ));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}

async fn configz(State(s): State<DebugState>) -> Json<Value> {
    let report = s.config.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(serde_json::to_value(report).unwrap_or(Value::Null))
}

async fn analyze(State(s): State<DebugState>) -> Json<Value> {
    let report = s.config.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(json!({"messages": report.analysis}))
}

async fn config_dump(
    State(s): State<DebugState>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let Some(id) = q.get("proxyID") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "proxyID is required"})),
        );
    };
    match s.discovery.snapshot_for(id) {
        Some(snap) => (StatusCode::OK, Json(dump(&snap))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no connected proxy {id}")})),
        ),
    }
}

/// Each connected proxy's inbound mTLS mode from PeerAuthentication
/// (`?proxyID=` for one), as Istio's `/debug/authenticationz` answers.
async fn authenticationz(
    State(s): State<DebugState>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let nodes = s.discovery.proxy_nodes();
    Json(authn_report(
        &s.discovery.mesh(),
        &nodes,
        q.get("proxyID").map(String::as_str),
    ))
}

/// The report behind `/debug/authenticationz`.
fn authn_report(
    mesh: &crate::mesh::Mesh,
    nodes: &[crate::node::ProxyNode],
    only: Option<&str>,
) -> Value {
    let mode = |m: crate::peer_authn::Mode| match m {
        crate::peer_authn::Mode::Strict => "STRICT",
        crate::peer_authn::Mode::Permissive => "PERMISSIVE",
        crate::peer_authn::Mode::Disable => "DISABLE",
    };
    let list: Vec<Value> = nodes
        .iter()
        .filter(|n| only.is_none_or(|id| id == n.id))
        .map(|n| {
            let eff = mesh.mtls_for(&n.namespace, &n.labels);
            let ports: serde_json::Map<String, Value> = eff
                .ports
                .iter()
                .map(|(p, m)| (p.to_string(), json!(mode(*m))))
                .collect();
            json!({
                "proxy": n.id,
                "namespace": n.namespace,
                "mode": mode(eff.default),
                "ports": ports,
            })
        })
        .collect();
    Value::Array(list)
}

/// A snapshot as Envoy-shaped JSON, by type.
fn dump(snap: &Snapshot) -> Value {
    let mut out = serde_json::Map::new();
    for (url, t) in &snap.types {
        let items: Vec<Value> = t
            .resources
            .values()
            .map(|r| xds::json::any_to_json(&r.body).unwrap_or(Value::Null))
            .collect();
        out.insert(
            xds::type_url::short(url).to_string(),
            json!({"version": t.version, "resources": items}),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod authn_tests {
    use super::*;

    #[test]
    fn reports_each_proxys_mode_from_loaded_peer_authentications() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: payments}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: payments}
spec:
  selector: {matchLabels: {app: payments-legacy}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {"9090": {mode: DISABLE}}
"#;
        let (resources, errors) = api::load::load_str(std::path::Path::new("pa.yaml"), yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let mesh = crate::compile::build(&resources);
        let node = |id: &str, app: &str| {
            let mut n = crate::node::ProxyNode::from_node(
                &envoy_types::pb::envoy::config::core::v3::Node {
                    id: id.to_string(),
                    ..Default::default()
                },
            )
            .expect("node");
            n.labels.insert("app".into(), app.into());
            n
        };
        let nodes = [
            node(
                "sidecar~10.0.0.1~api-0.payments~payments.svc.cluster.local",
                "payments-api",
            ),
            node(
                "sidecar~10.0.0.2~legacy-0.payments~payments.svc.cluster.local",
                "payments-legacy",
            ),
            node(
                "sidecar~10.0.0.3~sleep-0.default~default.svc.cluster.local",
                "sleep",
            ),
        ];
        let report = authn_report(&mesh, &nodes, None);
        let modes: Vec<(&str, &str)> = report
            .as_array()
            .expect("list")
            .iter()
            .map(|p| {
                (
                    p["namespace"].as_str().unwrap_or(""),
                    p["mode"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            modes,
            [
                ("payments", "STRICT"),
                ("payments", "PERMISSIVE"),
                ("default", "PERMISSIVE")
            ]
        );
        assert_eq!(report[1]["ports"]["9090"], "DISABLE");
        let one = authn_report(&mesh, &nodes, Some(nodes[0].id.as_str()));
        assert_eq!(one.as_array().map(Vec::len), Some(1));
    }
}
