//! The config store as the ADS client's ResourceSink: CDS, EDS, LDS, RDS
//! applied in order make traffic flow and readiness flip; a bad resource is
//! NACKed with its name and field while its last good version keeps serving;
//! listeners come and go with LDS.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use proxy::xds_sink::StoreSink;
use proxy::{Proxy, ProxyOptions};
use xds::client::ResourceSink;
use xds::type_url;

const BOOTSTRAP: &str = r#"
node: {id: "sidecar~127.0.0.1~t.default~default.svc.cluster.local", cluster: t.default}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: xds-grpc}}]
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]
"#;

const CLUSTER: &str = "outbound|80||svc.default.svc.cluster.local";

fn one<M: prost::Message + prost::Name + Default>(
    name: &str,
    yaml: &str,
) -> BTreeMap<String, prost_types::Any> {
    let msg: M = xds::json::from_yaml(yaml).expect("resource parses");
    BTreeMap::from([(name.to_string(), xds::json::to_any(&msg))])
}

fn cds(lb_policy: &str) -> BTreeMap<String, prost_types::Any> {
    one::<Cluster>(
        CLUSTER,
        &format!(
            "name: \"{CLUSTER}\"\ntype: EDS\neds_cluster_config: {{eds_config: {{ads: {{}}, resource_api_version: V3}}}}\nlb_policy: {lb_policy}\nconnect_timeout: 1s\n"
        ),
    )
}

fn eds(addr: SocketAddr) -> BTreeMap<String, prost_types::Any> {
    one::<ClusterLoadAssignment>(
        CLUSTER,
        &format!(
            "cluster_name: \"{CLUSTER}\"\nendpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]\n",
            addr.ip(),
            addr.port()
        ),
    )
}

fn lds() -> BTreeMap<String, prost_types::Any> {
    lds_with_prefix("outbound_0.0.0.0_80")
}

fn lds_with_prefix(stat_prefix: &str) -> BTreeMap<String, prost_types::Any> {
    one::<Listener>(
        "lis",
        &r#"
name: lis
address: {socket_address: {address: 127.0.0.1, port_value: 0}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: STAT_PREFIX
      rds: {config_source: {ads: {}, resource_api_version: V3}, route_config_name: "80"}
      http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
"#
        .replace("STAT_PREFIX", stat_prefix),
    )
}

fn rds(regex: &str) -> BTreeMap<String, prost_types::Any> {
    one::<RouteConfiguration>(
        "80",
        &format!(
            "name: \"80\"\nvirtual_hosts:\n- name: svc\n  domains: [\"*\"]\n  routes:\n  - match: {{safe_regex: {{regex: \"{regex}\"}}}}\n    route: {{cluster: \"{CLUSTER}\", timeout: 0s}}\n"
        ),
    )
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn cds_eds_lds_rds_make_traffic_flow_and_bad_resources_keep_the_old() {
    let a = backend("a").await;
    let b = backend("b").await;
    let bootstrap = proxy::bootstrap::parse(BOOTSTRAP, false).unwrap();
    let proxy = Proxy::start(
        bootstrap,
        &ProxyOptions {
            ready_port: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let admin = proxy.admin_addr();
    let sink = StoreSink(proxy.store().clone());
    assert_eq!(admin_get(admin, "/ready").await.0, 503);

    sink.apply(type_url::CLUSTER, "1", &cds("ROUND_ROBIN"))
        .unwrap();
    assert_eq!(
        sink.wanted(type_url::ENDPOINT),
        Some(vec![CLUSTER.to_string()])
    );
    assert_eq!(sink.wanted(type_url::CLUSTER), None);
    sink.apply(type_url::ENDPOINT, "1", &eds(a.addr)).unwrap();
    sink.apply(type_url::LISTENER, "1", &lds()).unwrap();
    assert_eq!(sink.wanted(type_url::ROUTE), Some(vec!["80".to_string()]));
    assert!(!proxy.store().is_ready(), "RDS still missing");
    sink.apply(type_url::ROUTE, "1", &rds("/.*")).unwrap();
    tokio::time::timeout(Duration::from_secs(10), proxy.wait_ready())
        .await
        .expect("ready once the listener is bound");
    assert!(proxy.listener_addr("lis").is_some(), "bound before ready");
    assert_eq!(admin_get(admin, "/ready").await.0, 200);

    let lis = eventually("listener bound", async || proxy.listener_addr("lis")).await;
    assert_eq!(get(lis, "svc", "/x", &[]).await.body, "a");

    // A bad cluster update is NACKed with resource and field; the old one serves.
    let err = sink
        .apply(
            type_url::CLUSTER,
            "2",
            &cds("MAGLEV\nmaglev_lb_config: {table_size: 100}"),
        )
        .unwrap_err();
    assert_eq!(
        err,
        format!(
            "cluster {CLUSTER}: maglev_lb_config.table_size: must be a prime of at most 5000011, not 100"
        )
    );
    assert_eq!(get(lis, "svc", "/x", &[]).await.body, "a");

    // New endpoints take effect for the next request.
    sink.apply(type_url::ENDPOINT, "2", &eds(b.addr)).unwrap();
    assert_eq!(get(lis, "svc", "/x", &[]).await.body, "b");

    // A bad route is NACKed; the previous route config keeps routing.
    let err = sink
        .apply(type_url::ROUTE, "2", &rds("/(unclosed"))
        .unwrap_err();
    assert!(
        err.starts_with(
            "route 80: virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex"
        ),
        "{err}"
    );
    assert_eq!(get(lis, "svc", "/x", &[]).await.status, 200);

    let (_, stats) = admin_get(admin, "/stats").await;
    for line in [
        "cluster_manager.cds.update_success: 1\n",
        "cluster_manager.cds.update_rejected: 1\n",
        "listener_manager.lds.update_success: 1\n",
        "http.outbound_0.0.0.0_80.rds.80.update_success: 1\n",
        "http.outbound_0.0.0.0_80.rds.80.update_rejected: 1\n",
    ] {
        assert!(stats.contains(line), "missing {line:?} in\n{stats}");
    }
    let (_, dump) = admin_get(admin, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["configs"][1]["dynamic_active_clusters"][0]["version_info"],
        "1"
    );
    assert_eq!(dump["configs"][2]["dynamic_listeners"][0]["name"], "lis");
    assert_eq!(
        dump["configs"][4]["dynamic_endpoint_configs"][0]["version_info"],
        "2"
    );

    // Removing the listener over LDS closes it.
    sink.apply(type_url::LISTENER, "3", &BTreeMap::new())
        .unwrap();
    eventually("listener closed", async || {
        tokio::net::TcpStream::connect(lis)
            .await
            .is_err()
            .then_some(())
    })
    .await;
}

/// A proxy on the ADS bootstrap (no readiness port) with CLUSTER's CDS and
/// EDS (one endpoint, `backend`) applied.
async fn proxy_with_cluster(backend: SocketAddr) -> (Proxy, StoreSink) {
    let bootstrap = proxy::bootstrap::parse(BOOTSTRAP, false).unwrap();
    let proxy = Proxy::start(
        bootstrap,
        &ProxyOptions {
            ready_port: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sink = StoreSink(proxy.store().clone());
    sink.apply(type_url::CLUSTER, "1", &cds("ROUND_ROBIN"))
        .unwrap();
    sink.apply(type_url::ENDPOINT, "1", &eds(backend)).unwrap();
    (proxy, sink)
}

/// A listener whose address cannot be bound is NACKed with the OS error, as
/// Envoy does; the other listeners of the update are applied, and a listener
/// that moves to a taken address keeps serving where it was.
#[tokio::test]
async fn a_listener_that_cannot_bind_is_nacked_with_the_os_error() {
    let a = backend("a").await;
    let (proxy, sink) = proxy_with_cluster(a.addr).await;
    sink.apply(type_url::LISTENER, "1", &lds()).unwrap();
    sink.apply(type_url::ROUTE, "1", &rds("/.*")).unwrap();
    let lis = eventually("listener bound", async || proxy.listener_addr("lis")).await;

    // Another process holds this port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let moved = |name: &str, port: u16| {
        let mut one = lds();
        let mut l: Listener =
            prost::Message::decode(one.remove("lis").unwrap().value.as_slice()).unwrap();
        l.name = name.to_string();
        if let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
            l.address.as_mut().and_then(|a| a.address.as_mut())
        {
            sa.port_specifier = Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    u32::from(port),
                ),
            );
        }
        (name.to_string(), xds::json::to_any(&l))
    };
    let update = BTreeMap::from([moved("lis", port), moved("extra", 0)]);
    let err = sink.apply(type_url::LISTENER, "2", &update).unwrap_err();
    assert!(
        err.starts_with(&format!("listener lis: cannot bind '127.0.0.1:{port}': ")),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
    let extra = eventually("the other listener bound", async || {
        proxy.listener_addr("extra")
    })
    .await;
    assert_eq!(get(extra, "svc", "/x", &[]).await.body, "a");
    assert_eq!(proxy.listener_addr("lis"), Some(lis));
    assert_eq!(get(lis, "svc", "/x", &[]).await.body, "a");

    // A brand-new listener on the taken port is simply not there.
    let mut update = lds();
    update.extend([moved("new", port)]);
    let err = sink.apply(type_url::LISTENER, "3", &update).unwrap_err();
    assert!(err.starts_with("listener new: cannot bind"), "{err}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(proxy.listener_addr("new"), None);
    drop(taken);
}

/// A listener with two HTTP filter chains (by destination IP), the second
/// changed over LDS: only its connections drain; the unchanged chain's
/// connections keep serving (Envoy's in-place filter chain update). A change
/// outside the chains drains both.
#[tokio::test]
async fn a_filter_chain_update_drains_only_the_changed_chain() {
    let a = backend("a").await;
    let (proxy, sink) = proxy_with_cluster(a.addr).await;
    let chain = |ip: &str, prefix: &str| {
        format!(
            r#"
- filter_chain_match: {{prefix_ranges: [{{address_prefix: {ip}, prefix_len: 32}}]}}
  filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {prefix}
      rds: {{config_source: {{ads: {{}}, resource_api_version: V3}}, route_config_name: "80"}}
      http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]"#
        )
    };
    let listener = |port: u16, second: &str, timeout: &str| {
        one::<Listener>(
            "two",
            &format!(
                "name: two\naddress: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}\nlistener_filters_timeout: {timeout}\nfilter_chains:{}{}\n",
                chain("127.0.0.1", "first"),
                chain("127.0.0.2", second)
            ),
        )
    };
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    sink.apply(type_url::LISTENER, "1", &listener(port, "second", "15s"))
        .unwrap();
    sink.apply(type_url::ROUTE, "1", &rds("/.*")).unwrap();
    eventually("listener bound", async || proxy.listener_addr("two")).await;
    let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), port);
    let mut first = H1::connect(at("127.0.0.1")).await;
    let mut second = H1::connect(at("127.0.0.2")).await;
    assert_eq!(first.get("svc", "/", &[]).await.body, "a");
    assert_eq!(second.get("svc", "/", &[]).await.body, "a");

    // Only the second chain changes (same port: no rebind).
    sink.apply(type_url::LISTENER, "2", &listener(port, "second-v2", "15s"))
        .unwrap();
    eventually("the changed chain's connection to drain", async || {
        second.is_closed().then_some(())
    })
    .await;
    assert!(
        !first.is_closed(),
        "the unchanged chain's connection was drained"
    );
    assert_eq!(first.get("svc", "/again", &[]).await.body, "a");
    let mut second = H1::connect(at("127.0.0.2")).await;
    assert_eq!(second.get("svc", "/", &[]).await.body, "a");

    // A listener-level change (not only chains) drains every chain.
    sink.apply(type_url::LISTENER, "3", &listener(port, "second-v2", "10s"))
        .unwrap();
    eventually("every connection to drain", async || {
        (first.is_closed() && second.is_closed()).then_some(())
    })
    .await;
}
