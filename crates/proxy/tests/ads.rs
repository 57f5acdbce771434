//! The proxy against the real ADS server (crates/xds) over gRPC, SotW and
//! delta: it becomes ready once LDS/CDS and the EDS/RDS they need arrive,
//! serves traffic, follows an endpoint push, and a NACKed listener leaves the
//! rest of the config working.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use proxy::{Proxy, ProxyOptions};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use xds::server::{AdsServer, Resource, Snapshot, SnapshotSource, TypeSnapshot};
use xds::status::SyncStatus;
use xds::type_url;

struct Source(watch::Receiver<Arc<Snapshot>>);

impl SnapshotSource for Source {
    fn subscribe(&self, _node: &Node) -> Result<watch::Receiver<Arc<Snapshot>>, tonic::Status> {
        Ok(self.0.clone())
    }
}

const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";

fn res<M: prost::Message + prost::Name + Default>(name: &str, yaml: &str) -> Resource {
    let msg: M = xds::json::from_yaml(yaml).expect("resource parses");
    Resource::new(name, xds::json::to_any(&msg))
}

fn snapshot(backend: SocketAddr, bad_listener: bool) -> Snapshot {
    let cds = res::<Cluster>(
        CLUSTER,
        &format!(
            "name: \"{CLUSTER}\"\ntype: EDS\neds_cluster_config: {{eds_config: {{ads: {{}}, resource_api_version: V3}}, service_name: \"{CLUSTER}\"}}\nconnect_timeout: 1s\n"
        ),
    );
    let eds = res::<ClusterLoadAssignment>(
        CLUSTER,
        &format!(
            "cluster_name: \"{CLUSTER}\"\nendpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]\n",
            backend.ip(),
            backend.port()
        ),
    );
    let mut listeners = vec![res::<Listener>(
        "outbound_http",
        r#"
name: outbound_http
address: {socket_address: {address: 127.0.0.1, port_value: 0}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: outbound_0.0.0.0_9080
      rds: {config_source: {ads: {}, resource_api_version: V3}, route_config_name: "9080"}
      http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
"#,
    )];
    if bad_listener {
        listeners.push(res::<Listener>(
            "bad",
            "name: bad\naddress: {socket_address: {address: 127.0.0.1, port_value: 0}}\nfilter_chains: [{filters: []}]\n",
        ));
    }
    let rds = res::<RouteConfiguration>(
        "9080",
        &format!(
            "name: \"9080\"\nvirtual_hosts: [{{name: reviews, domains: [\"*\"], routes: [{{match: {{prefix: /}}, route: {{cluster: \"{CLUSTER}\"}}}}]}}]\n"
        ),
    );
    let types = [
        (type_url::CLUSTER, vec![cds]),
        (type_url::ENDPOINT, vec![eds]),
        (type_url::LISTENER, listeners),
        (type_url::ROUTE, vec![rds]),
    ];
    Snapshot {
        types: types
            .into_iter()
            .map(|(t, r)| (t.to_string(), TypeSnapshot::from_resources(r)))
            .collect::<BTreeMap<_, _>>(),
    }
}

async fn serve(snapshot: Snapshot) -> (SocketAddr, watch::Sender<Arc<Snapshot>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(Arc::new(snapshot));
    let ads = AdsServer::new(Arc::new(Source(rx)), SyncStatus::default());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(ads.into_service())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    (addr, tx)
}

fn bootstrap(xds: SocketAddr, delta: bool) -> String {
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"
node: {{id: "sidecar~127.0.0.1~productpage.default~default.svc.cluster.local", cluster: productpage.default}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
"#,
        xds.ip(),
        xds.port()
    )
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn end_to_end(delta: bool) {
    let a = backend("a").await;
    let b = backend("b").await;
    let (xds, push) = serve(snapshot(a.addr, true)).await;
    let boot = proxy::bootstrap::parse(&bootstrap(xds, delta), false).unwrap();
    let opts = ProxyOptions {
        ready_port: Some(0),
        ..Default::default()
    };
    let proxy = Proxy::start(boot, &opts).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), proxy.wait_ready())
        .await
        .expect("ready");
    let ready = SocketAddr::from(([127, 0, 0, 1], proxy.ready_addr().unwrap().port()));
    assert_eq!(admin_get(ready, "/healthz/ready").await.0, 200);

    let lis = until("listener", async || proxy.listener_addr("outbound_http")).await;
    assert_eq!(get(lis, "reviews:9080", "/", &[]).await.body, "a");
    assert!(
        proxy.listener_addr("bad").is_none(),
        "the bad listener was NACKed"
    );
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    assert!(
        stats.contains("listener_manager.lds.update_rejected: 1\n"),
        "{stats}"
    );

    push.send_replace(Arc::new(snapshot(b.addr, false)));
    until("endpoint push", async || {
        (get(lis, "reviews:9080", "/", &[]).await.body == "b").then_some(())
    })
    .await;
    let (_, clusters) = admin_get(proxy.admin_addr(), "/clusters").await;
    assert!(
        clusters.contains(&format!("{CLUSTER}::{}::health_flags::healthy", b.addr)),
        "{clusters}"
    );
}

#[tokio::test]
async fn state_of_the_world() {
    end_to_end(false).await;
}

#[tokio::test]
async fn delta() {
    end_to_end(true).await;
}
