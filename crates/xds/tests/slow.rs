//! A proxy that stops reading its stream must not hold back the others: each
//! stream has its own task and a bounded queue, so only the stalled one waits.

mod common;

use common::{TestServer, TestSink, client_config, eventually, snapshot};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use xds::type_url::{CLUSTER, LISTENER};

#[tokio::test]
async fn a_stalled_proxy_does_not_block_others() {
    // Big clusters (256 KiB each) fill the stalled stream's HTTP/2 window fast.
    let big = |round: usize| format!("{round:04}{}", "x".repeat(256 << 10));
    let world = |round: usize| {
        let tag = big(round);
        snapshot(&[
            (CLUSTER, &[("a", tag.as_str()), ("b", tag.as_str())]),
            (LISTENER, &[("l1", "1")]),
        ])
    };
    let server = TestServer::start(world(0)).await;

    // The stalled proxy: subscribes to CDS, then never reads a response.
    let mut raw = AggregatedDiscoveryServiceClient::connect(server.endpoint())
        .await
        .unwrap()
        .max_decoding_message_size(xds::server::MAX_MESSAGE_SIZE);
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "stalled".into(),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .unwrap();
    let _stalled = raw
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .unwrap();

    let sink = TestSink::new();
    let client = xds::client::spawn(client_config(&server, false), sink.clone());
    let last = 60;
    for round in 1..=last {
        server.set(world(round));
        let tag = big(round);
        eventually("the healthy proxy follows every change", || {
            sink.holds(CLUSTER, &[("a", tag.as_str()), ("b", tag.as_str())])
        })
        .await;
    }
    let stalled = server
        .status
        .snapshot()
        .into_iter()
        .find(|p| p.node_id == "stalled")
        .expect("stalled stream still registered");
    assert!(
        stalled.types["CDS"].sent_count < last as u64,
        "the stalled stream should be backed up: {:?}",
        stalled.types["CDS"]
    );
    client.abort();
}

/// A proxy that never answers (no ACK, no NACK) is dropped once the send
/// timeout passes, and only it: a healthy proxy on the same server stays.
#[tokio::test]
async fn a_proxy_that_answers_nothing_is_dropped() {
    let world = snapshot(&[(CLUSTER, &[("a", "1")]), (LISTENER, &[("l1", "1")])]);
    let server =
        TestServer::start_with_send_timeout(world, std::time::Duration::from_millis(300)).await;
    let mut raw = AggregatedDiscoveryServiceClient::connect(server.endpoint())
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "silent".into(),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .unwrap();
    let mut silent = raw
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // It reads the push but never answers it.
    assert!(silent.message().await.unwrap().is_some());
    let sink = TestSink::new();
    let client = xds::client::spawn(client_config(&server, false), sink.clone());
    eventually("the healthy proxy is served", || {
        sink.holds(CLUSTER, &[("a", "1")])
    })
    .await;
    eventually("the silent stream is dropped", || {
        let ids: Vec<String> = server
            .status
            .snapshot()
            .into_iter()
            .map(|p| p.node_id)
            .collect();
        !ids.iter().any(|id| id == "silent") && !ids.is_empty()
    })
    .await;
    // Its stream ends (the server closed it); the healthy one is still there.
    let end = silent.message().await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    drop(tx);
    client.abort();
}
