//! SO_ORIGINAL_DST hand-off, for real: in a private network namespace (root
//! and iptables needed; skipped otherwise), iptables REDIRECTs a client's
//! connections to `virtualOutbound`, which hands each to the listener for its
//! original destination, or passes it through to the original destination.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;
use proxy::{Proxy, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CLIENT: &str = "10.1.2.10";
/// Traffic from here is captured as inbound (port 15006).
const INBOUND_CLIENT: &str = "10.1.2.11";
const SERVICE: &str = "10.1.2.3";

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

/// Move this thread into a fresh network namespace with capture rules.
fn private_netns() -> bool {
    // SAFETY: unshare only changes this thread's namespaces.
    if unsafe { libc::getuid() } != 0 || !sh("command -v iptables >/dev/null") {
        return false;
    }
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return false;
    }
    sh("ip link set lo up")
        && sh(&format!("ip addr add {SERVICE}/32 dev lo"))
        && sh(&format!("ip addr add {CLIENT}/32 dev lo"))
        && sh(&format!("ip addr add {INBOUND_CLIENT}/32 dev lo"))
        && sh(&format!(
            "iptables -t nat -A OUTPUT -p tcp -s {CLIENT} -j REDIRECT --to-ports 15001"
        ))
        && sh(&format!(
            "iptables -t nat -A OUTPUT -p tcp -s {INBOUND_CLIENT} -j REDIRECT --to-ports 15006"
        ))
}

async fn connect_from_client(dst: &str) -> TcpStream {
    connect_from(CLIENT, dst).await
}

async fn connect_from(src: &str, dst: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(dst.parse::<SocketAddr>().unwrap())
        .await
        .unwrap()
}

fn hcm(prefix: &str, cluster: &str) -> String {
    format!(
        r#"
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
          route_config: {{name: r, virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]}}]}}
"#
    )
}

async fn scenario() {
    let local_b = backend("b").await;
    let _on_service_80 = backend_at("a", &format!("{SERVICE}:80")).await;
    let _on_service_83 = backend_at("d", &format!("{SERVICE}:83")).await;
    tcp_echo_at(&format!("{SERVICE}:81")).await;
    let yaml = format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15001}}}}
    use_original_dst: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: PassthroughCluster, cluster: PassthroughCluster}}
  - name: virtualInbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15006}}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}
    - name: envoy.filters.listener.http_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}
    filter_chains:
    - filter_chain_match: {{destination_port: 84, transport_protocol: raw_buffer, application_protocols: [http/1.1, h2c]}}
      filters:{}
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: InboundPassthroughCluster, cluster: PassthroughCluster}}
  - name: {SERVICE}_80
    address: {{socket_address: {{address: {SERVICE}, port_value: 80}}}}
    bind_to_port: false
    filter_chains:
    - filters:{}
  - name: 0.0.0.0_83
    address: {{socket_address: {{address: 0.0.0.0, port_value: 83}}}}
    bind_to_port: false
    filter_chains:
    - filters:{}
  clusters:
  - name: b
    type: STATIC
    load_assignment: {{cluster_name: b, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]}}
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
"#,
        hcm("inbound_84", "b"),
        hcm("outbound_80", "b"),
        hcm("outbound_83", "PassthroughCluster"),
        local_b.addr.port()
    );
    let bootstrap = proxy::bootstrap::parse(&yaml, false).unwrap();
    let opts = ProxyOptions {
        ready_port: None,
        ..Default::default()
    };
    let proxy = Proxy::start(bootstrap, &opts).await.unwrap();
    assert!(proxy.listener_addr("virtualOutbound").is_some());
    assert!(
        proxy.listener_addr(&format!("{SERVICE}_80")).is_none(),
        "bind_to_port: false"
    );

    // Exact ip:port listener: its HCM routes to cluster b (not the real 10.1.2.3:80).
    let mut c = H1::over(connect_from_client(&format!("{SERVICE}:80")).await).await;
    assert_eq!(c.get("svc", "/", &[]).await.body, "b");

    // No listener for :81: passthrough (tcp_proxy to the original destination).
    let mut s = connect_from_client(&format!("{SERVICE}:81")).await;
    s.write_all(b"raw tcp").await.unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"raw tcp");

    // Inbound capture: no hand-off, but the restored destination port picks
    // the filter chain; other ports pass through to the original destination.
    let mut c = H1::over(connect_from(INBOUND_CLIENT, &format!("{SERVICE}:84")).await).await;
    assert_eq!(c.get("svc", "/", &[]).await.body, "b");
    let mut c = H1::over(connect_from(INBOUND_CLIENT, &format!("{SERVICE}:83")).await).await;
    assert_eq!(c.get("svc", "/", &[]).await.body, "d");

    // Wildcard 0.0.0.0:83 listener, HTTP to an ORIGINAL_DST cluster.
    let mut c = H1::over(connect_from_client(&format!("{SERVICE}:83")).await).await;
    assert_eq!(c.get("svc", "/", &[]).await.body, "d");
}

#[test]
fn original_dst_hand_off_and_passthrough() {
    let ran = std::thread::spawn(|| {
        if !private_netns() {
            return false;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario());
        true
    })
    .join()
    .expect("scenario passed");
    if !ran {
        eprintln!("skipped: needs root, iptables and network namespaces");
    }
}
