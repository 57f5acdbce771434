//! Conformance against a stock Envoy: it connects to our ADS server (SotW and
//! delta), ACKs the initial CDS/EDS/LDS/RDS, ACKs an endpoint-only push, NACKs
//! an invalid cluster (shown in the sync status) and ACKs the fix, which adds a
//! cluster (so Envoy widens its EDS subscription).
//! Skipped when no `envoy` binary is found ($ENVOY_BIN, /work/cache/venv/bin/envoy, PATH).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{DEADLINE, TestServer};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::{Message, Name};
use xds::server::{Resource, Snapshot, TypeSnapshot};
use xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

fn envoy_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("ENVOY_BIN").map(PathBuf::from),
        Some(PathBuf::from("/work/cache/venv/bin/envoy")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("envoy"))
                    .find(|p| p.exists())
            })
        })
}

fn resource<M: Message + Name + Default>(name: &str, yaml: &str) -> Resource {
    let msg: M = xds::json::from_yaml(yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
    let body = xds::json::to_any(&msg);
    Resource::with_version(name, format!("{:x}", fxhash(&body.value)), body)
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn type_snapshot(resources: Vec<Resource>) -> TypeSnapshot {
    let version = resources.iter().fold(String::new(), |v, r| {
        format!("{v}{}:{};", r.name, r.version)
    });
    TypeSnapshot {
        version: format!("{:x}", fxhash(version.as_bytes())),
        resources: std::sync::Arc::new(
            resources
                .into_iter()
                .map(|r| (r.name.clone(), std::sync::Arc::new(r)))
                .collect(),
        ),
    }
}

/// One EDS cluster behind an HTTP listener on an ephemeral port, via RDS.
/// `endpoint_port` varies the endpoints; `bad` adds a cluster Envoy must reject.
fn mesh(endpoint_port: u16, bad: bool, names: &[&str]) -> Snapshot {
    let mut clusters: Vec<Resource> = names
        .iter()
        .map(|name| {
            resource::<Cluster>(
                name,
                &format!(
                    "name: {name}\ntype: EDS\nconnect_timeout: 1s\n\
                     eds_cluster_config: {{eds_config: {{ads: {{}}, resource_api_version: V3}}}}"
                ),
            )
        })
        .collect();
    if bad {
        clusters.push(resource::<Cluster>(
            "bad",
            "name: bad\ntype: STATIC\nconnect_timeout: 0s",
        ));
    }
    let endpoints = names
        .iter()
        .map(|name| {
            resource::<ClusterLoadAssignment>(
                name,
                &format!(
                    "cluster_name: {name}\nendpoints: [{{lb_endpoints: [{{endpoint: {{address: \
                     {{socket_address: {{address: 127.0.0.1, port_value: {endpoint_port}}}}}}}}}]}}]"
                ),
            )
        })
        .collect();
    let listeners = vec![resource::<Listener>(
        "http",
        r#"
name: http
address: {socket_address: {address: 127.0.0.1, port_value: 0}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: http
      rds: {config_source: {ads: {}, resource_api_version: V3}, route_config_name: http}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"#,
    )];
    let routes = vec![resource::<RouteConfiguration>(
        "http",
        "name: http\nvirtual_hosts: [{name: all, domains: ['*'], routes: \
         [{match: {prefix: /}, route: {cluster: backend}}]}]",
    )];
    let types = [
        (CLUSTER, clusters),
        (ENDPOINT, endpoints),
        (LISTENER, listeners),
        (ROUTE, routes),
    ];
    Snapshot {
        types: types
            .into_iter()
            .map(|(u, r)| (u.to_string(), type_snapshot(r)))
            .collect(),
    }
}

fn bootstrap(xds_port: u16, delta: bool) -> String {
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"
node: {{id: "sidecar~127.0.0.1~envoy.default~default.svc.cluster.local", cluster: envoy.default}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
dynamic_resources:
  ads_config: {{api_type: {api}, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds_port}}}}}}}}}]}}]
"#
    )
}

async fn envoy_conformance(delta: bool) {
    let Some(envoy) = envoy_binary() else {
        eprintln!("no envoy binary; skipping");
        return;
    };
    let server = TestServer::start(mesh(8080, false, &["backend"])).await;
    let dir = std::env::temp_dir().join(format!("xds-envoy-{}-{delta}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bootstrap.yaml");
    std::fs::write(&config, bootstrap(server.addr.port(), delta)).unwrap();
    let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
    let _envoy = tokio::process::Command::new(envoy)
        .arg("-c")
        .arg(&config)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "info",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn envoy");
    let logs = || std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();

    let all = [CLUSTER, ENDPOINT, LISTENER, ROUTE];
    let ok = server
        .status
        .wait_until(DEADLINE * 3, |p| {
            p.len() == 1
                && all
                    .iter()
                    .all(|u| converged(&p[0], u, &mesh(8080, false, &["backend"])))
        })
        .await;
    assert!(
        ok,
        "initial sync: {:#?}\n{}",
        server.status.snapshot(),
        logs()
    );
    let before = server.proxy();
    assert_eq!(before.delta, delta);

    server.set(mesh(8081, false, &["backend"]));
    server
        .wait_acked(&mesh(8081, false, &["backend"]), &all)
        .await;
    let after = server.proxy();
    assert_eq!(
        after.types["CDS"].sent_count,
        before.types["CDS"].sent_count
    );
    assert_eq!(
        after.types["EDS"].sent_count,
        before.types["EDS"].sent_count + 1
    );

    server.set(mesh(8081, true, &["backend"]));
    let nacked = server
        .status
        .wait_until(DEADLINE, |p| {
            p.len() == 1 && p[0].types["CDS"].nack.is_some()
        })
        .await;
    assert!(nacked, "{:#?}\n{}", server.status.snapshot(), logs());
    eprintln!("Envoy's NACK: {:?}", server.proxy().types["CDS"].nack);

    server.set(mesh(8082, false, &["backend", "backend2"]));
    server
        .wait_acked(&mesh(8082, false, &["backend", "backend2"]), &all)
        .await;
    let p = server.proxy();
    assert_eq!(p.types["CDS"].nack, None);
    assert_eq!(p.types["EDS"].subscribed, ["backend", "backend2"]);
    let _ = std::fs::remove_dir_all(&dir);
    tokio::time::sleep(Duration::ZERO).await;
}

fn converged(p: &xds::status::ProxyStatus, url: &str, snapshot: &Snapshot) -> bool {
    let t = p.types.get(xds::type_url::short(url));
    t.and_then(|t| t.acked_version.as_deref()) == Some(snapshot.types[url].version.as_str())
}

#[tokio::test]
async fn stock_envoy_acks_sotw() {
    envoy_conformance(false).await;
}

#[tokio::test]
async fn stock_envoy_acks_delta() {
    envoy_conformance(true).await;
}
