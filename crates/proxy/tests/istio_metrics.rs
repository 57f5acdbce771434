//! Istio's standard HTTP metrics from two of our proxies in a row: a client
//! sidecar (OUTBOUND listener, reporter `source`) in front of a server
//! sidecar (INBOUND listener, reporter `destination`) in front of a backend.
//! Exact counts and label values on both reporters, for a 200 and a 503.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const NODE_CLIENT: &str = "node: {id: client, metadata: {NAMESPACE: bookinfo, NAME: productpage-v1-abc, WORKLOAD_NAME: productpage-v1, CLUSTER_ID: Kubernetes, LABELS: {app: productpage, version: v1}}}\n";
const NODE_SERVER: &str = "node: {id: server, metadata: {NAMESPACE: bookinfo, NAME: reviews-v2-xyz, WORKLOAD_NAME: reviews-v2, CLUSTER_ID: Kubernetes, LABELS: {app: reviews, version: v2, service.istio.io/canonical-name: reviews-svc}}}\n";

/// `http_bootstrap` with a node and the listener's traffic_direction.
fn sidecar(node: &str, direction: &str, vhosts: &str, clusters: &[(&str, SocketAddr)]) -> String {
    let yaml = http_bootstrap("p", vhosts, clusters);
    let anchor =
        "    address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n    filter_chains:";
    assert!(yaml.contains(anchor));
    let yaml = yaml.replacen(
        anchor,
        &format!(
            "    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    traffic_direction: {direction}\n    filter_chains:"
        ),
        1,
    );
    // A cluster without endpoints answers 503 UH.
    format!(
        "{node}{yaml}  - name: \"inbound|9081||\"\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: {{cluster_name: empty, endpoints: []}}\n"
    )
}

fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<(Vec<(String, String)>, f64)> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.rsplit_once("} ")?;
        let labels: Vec<(String, String)> = labels
            .split("\",")
            .map(|kv| {
                let (k, v) = kv.split_once("=\"").expect("k=\"v\"");
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect();
        want.iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            .then(|| (labels, value.parse().expect("value")))
    })
}

async fn wait_for(
    admin: SocketAddr,
    name: &str,
    want: &[(&str, &str)],
    n: f64,
) -> Vec<(String, String)> {
    let mut text = String::new();
    for _ in 0..300 {
        text = admin_get(admin, "/stats/prometheus").await.1;
        if let Some((labels, v)) = sample(&text, name, want)
            && v == n
        {
            return labels;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {name} {want:?} = {n} in\n{text}");
}

fn values(labels: &[(String, String)]) -> Vec<&str> {
    labels.iter().map(|(_, v)| v.as_str()).collect()
}

#[tokio::test]
async fn client_and_server_sidecars_report_istio_requests() {
    let b = backend("reviews").await;
    let server = start_static(&sidecar(
        NODE_SERVER,
        "INBOUND",
        r#"- name: inbound
  domains: ["*"]
  routes:
  - match: {prefix: /broken}
    route: {cluster: "inbound|9081||"}
  - match: {prefix: /}
    route: {cluster: "inbound|9080||"}"#,
        &[("\"inbound|9080||\"", b.addr)],
    ))
    .await;
    let server_addr = server.listener_addr("http").expect("listener");
    let client = start_static(&sidecar(
        NODE_CLIENT,
        "OUTBOUND",
        r#"- name: reviews
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: "outbound|9080||reviews.bookinfo.svc.cluster.local"}"#,
        &[(
            "\"outbound|9080||reviews.bookinfo.svc.cluster.local\"",
            server_addr,
        )],
    ))
    .await;
    let http = client.listener_addr("http").expect("listener");
    for _ in 0..3 {
        assert_eq!(get(http, "reviews:9080", "/ok", &[]).await.status, 200);
    }
    assert_eq!(get(http, "reviews:9080", "/broken", &[]).await.status, 503);

    let source = wait_for(
        client.admin_addr(),
        "istio_requests_total",
        &[("reporter", "source"), ("response_code", "200")],
        3.0,
    )
    .await;
    let names: Vec<&str> = source.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names.len(), 25, "{names:?}");
    assert_eq!(
        values(&source),
        [
            "source",
            "productpage-v1",
            "productpage",
            "v1",
            "bookinfo",
            "unknown",
            "productpage",
            "v1",
            "Kubernetes",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "reviews.bookinfo.svc.cluster.local",
            "unknown",
            "unknown",
            "reviews",
            "bookinfo",
            "unknown",
            "http",
            "200",
            "",
            "-",
            "unknown",
        ]
    );
    let source_503 = wait_for(
        client.admin_addr(),
        "istio_requests_total",
        &[("reporter", "source"), ("response_code", "503")],
        1.0,
    )
    .await;
    assert!(source_503.contains(&("response_flags".into(), "-".into())));

    let dest = wait_for(
        server.admin_addr(),
        "istio_requests_total",
        &[("reporter", "destination"), ("response_code", "200")],
        3.0,
    )
    .await;
    assert_eq!(
        values(&dest),
        [
            "destination",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "reviews-v2",
            "bookinfo",
            "unknown",
            "reviews",
            "v2",
            "unknown",
            "reviews-svc",
            "v2",
            "unknown",
            "unknown",
            "Kubernetes",
            "http",
            "200",
            "",
            "-",
            "none",
        ]
    );
    let dest_503 = wait_for(
        server.admin_addr(),
        "istio_requests_total",
        &[("reporter", "destination"), ("response_code", "503")],
        1.0,
    )
    .await;
    assert!(dest_503.contains(&("response_flags".into(), "UH".into())));
    // The histograms count the same requests.
    wait_for(
        server.admin_addr(),
        "istio_request_duration_milliseconds_count",
        &[("reporter", "destination"), ("response_code", "200")],
        3.0,
    )
    .await;
    wait_for(
        client.admin_addr(),
        "istio_response_bytes_count",
        &[("reporter", "source"), ("response_code", "200")],
        3.0,
    )
    .await;
}

fn tcp_sidecar(node: &str, direction: &str, cluster: &str, to: SocketAddr) -> String {
    format!(
        r#"{node}admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: "{cluster}"}}
  clusters:
  - name: "{cluster}"
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: x, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]}}
"#,
        to.ip(),
        to.port()
    )
}

#[tokio::test]
async fn tcp_connections_and_bytes_on_both_reporters() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tcp_echo().await;
    let server = start_static(&tcp_sidecar(NODE_SERVER, "INBOUND", "inbound|9000||", echo)).await;
    let server_addr = server.listener_addr("tcp").expect("listener");
    let client = start_static(&tcp_sidecar(
        NODE_CLIENT,
        "OUTBOUND",
        "outbound|9000||db.bookinfo.svc.cluster.local",
        server_addr,
    ))
    .await;
    let addr = client.listener_addr("tcp").expect("listener");
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(&[7u8; 1000]).await.expect("write");
        let mut back = [0u8; 1000];
        s.read_exact(&mut back).await.expect("echoed");
        s.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.expect("closed");
    }
    let src = [("reporter", "source")];
    let labels = wait_for(
        client.admin_addr(),
        "istio_tcp_connections_closed_total",
        &src,
        2.0,
    )
    .await;
    assert_eq!(
        values(&labels),
        [
            "source",
            "productpage-v1",
            "productpage",
            "v1",
            "bookinfo",
            "unknown",
            "productpage",
            "v1",
            "Kubernetes",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "db.bookinfo.svc.cluster.local",
            "unknown",
            "unknown",
            "db",
            "bookinfo",
            "unknown",
            "tcp",
            "-",
            "unknown",
        ]
    );
    wait_for(
        client.admin_addr(),
        "istio_tcp_connections_opened_total",
        &src,
        2.0,
    )
    .await;
    wait_for(
        client.admin_addr(),
        "istio_tcp_received_bytes_total",
        &src,
        2000.0,
    )
    .await;
    wait_for(
        client.admin_addr(),
        "istio_tcp_sent_bytes_total",
        &src,
        2000.0,
    )
    .await;
    let dst = [("reporter", "destination")];
    let labels = wait_for(
        server.admin_addr(),
        "istio_tcp_connections_closed_total",
        &dst,
        2.0,
    )
    .await;
    assert_eq!(labels.len(), 23);
    assert!(labels.contains(&("destination_workload".into(), "reviews-v2".into())));
    assert!(labels.contains(&("connection_security_policy".into(), "none".into())));
    wait_for(
        server.admin_addr(),
        "istio_tcp_received_bytes_total",
        &dst,
        2000.0,
    )
    .await;
    wait_for(
        server.admin_addr(),
        "istio_tcp_sent_bytes_total",
        &dst,
        2000.0,
    )
    .await;
}
