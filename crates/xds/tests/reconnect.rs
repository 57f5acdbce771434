//! Reconnects: the control plane goes away and comes back on the same port; the
//! client retries with backoff and resyncs. Delta resyncs send only what changed.

mod common;

use common::{TestServer, TestSink, client_config, eventually, snapshot};
use xds::server::Snapshot;
use xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

const ALL: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

fn world(b: &str) -> Snapshot {
    snapshot(&[
        (CLUSTER, &[("a", "1"), ("b", b)]),
        (ENDPOINT, &[("a", "1"), ("b", "1")]),
        (LISTENER, &[("l1", "1")]),
        (ROUTE, &[("l1", "1")]),
    ])
}

async fn reconnect(delta: bool) {
    let server = TestServer::start(world("1")).await;
    let addr = server.addr;
    let sink = TestSink::new();
    let client = xds::client::spawn(client_config(&server, delta), sink.clone());
    server.wait_acked(&world("1"), &ALL).await;
    server.stop().await;

    // While it is down, the sink keeps what it had.
    assert!(sink.holds(CLUSTER, &[("a", "1"), ("b", "1")]));
    let server = TestServer::start_on(addr, world("2")).await;
    server.wait_acked(&world("2"), &ALL).await;
    eventually("cluster b updated", || {
        sink.holds(CLUSTER, &[("a", "1"), ("b", "2")])
    })
    .await;
    assert!(sink.holds(ENDPOINT, &[("a", "1"), ("b", "1")]));
    assert!(sink.holds(ROUTE, &[("l1", "1")]));

    let proxy = server.proxy();
    let sent = |short: &str| proxy.types[short].sent_resources;
    if delta {
        // initial_resource_versions: only cluster b changed while away.
        assert_eq!(
            (sent("CDS"), sent("EDS"), sent("LDS"), sent("RDS")),
            (1, 0, 0, 0)
        );
    } else {
        assert_eq!(
            (sent("CDS"), sent("EDS"), sent("LDS"), sent("RDS")),
            (2, 2, 1, 1)
        );
    }
    client.abort();
}

#[tokio::test]
async fn reconnect_resyncs_sotw() {
    reconnect(false).await;
}

#[tokio::test]
async fn reconnect_resyncs_delta_without_resending_unchanged() {
    reconnect(true).await;
}

#[tokio::test]
async fn client_waits_for_a_server_that_starts_late() {
    // Reserve a port, free it, and start the client before any server is there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let sink = TestSink::new();
    let client = xds::client::spawn(common::client_config_for(addr, true), sink.clone());
    let server = TestServer::start_on(addr, world("1")).await;
    server.wait_acked(&world("1"), &ALL).await;
    assert!(sink.holds(LISTENER, &[("l1", "1")]));
    client.abort();
}
