//! The pilot's debug and metrics port (15014): `/debug/syncz` (every proxy, its
//! types, versions sent and ACKed, NACK texts), `/debug/configz` (loaded
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
        .route("/debug/configz", get(configz))
        .route("/debug/analyze", get(analyze))
        .route("/debug/config_dump", get(config_dump))
        .route("/ready", get(|| async { "ok" }))
        .with_state(state)
}

async fn syncz(State(s): State<DebugState>) -> Json<Value> {
    Json(serde_json::to_value(s.sync.snapshot()).unwrap_or(Value::Null))
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
