//! Server + client end to end, SotW and delta: initial sync, endpoint-only
//! pushes, and removals.

mod common;

use common::{TestServer, TestSink, client_config, eventually, snapshot};
use xds::server::Snapshot;
use xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

const ALL: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// Two clusters, three endpoint sets (`c` unused), one listener, two route
/// configs (`l2` unused).
fn base() -> Snapshot {
    snapshot(&[
        (CLUSTER, &[("a", "1"), ("b", "1")]),
        (ENDPOINT, &[("a", "1"), ("b", "1"), ("c", "1")]),
        (LISTENER, &[("l1", "1")]),
        (ROUTE, &[("l1", "1"), ("l2", "1")]),
    ])
}

/// Start a server and a client and wait for the initial sync to be ACKed.
async fn synced(
    delta: bool,
) -> (
    TestServer,
    std::sync::Arc<TestSink>,
    tokio::task::JoinHandle<()>,
) {
    let server = TestServer::start(base()).await;
    let sink = TestSink::new();
    let client = xds::client::spawn(client_config(&server, delta), sink.clone());
    server.wait_acked(&base(), &ALL).await;
    (server, sink, client)
}

async fn initial_sync(delta: bool) {
    let (server, sink, client) = synced(delta).await;
    assert!(sink.holds(CLUSTER, &[("a", "1"), ("b", "1")]));
    assert!(
        sink.holds(ENDPOINT, &[("a", "1"), ("b", "1")]),
        "{:?}",
        sink.names(ENDPOINT)
    );
    assert!(sink.holds(LISTENER, &[("l1", "1")]));
    assert!(sink.holds(ROUTE, &[("l1", "1")]), "{:?}", sink.names(ROUTE));
    let proxy = server.proxy();
    assert_eq!(proxy.delta, delta);
    assert_eq!(proxy.types["CDS"].subscribed, ["*"]);
    assert_eq!(proxy.types["EDS"].subscribed, ["a", "b"]);
    assert_eq!(proxy.types["RDS"].subscribed, ["l1"]);
    assert_eq!(
        sink.get(CLUSTER).unwrap().version,
        base().types[CLUSTER].version
    );
    client.abort();
}

#[tokio::test]
async fn initial_sync_sotw() {
    initial_sync(false).await;
}

#[tokio::test]
async fn initial_sync_delta() {
    initial_sync(true).await;
}

async fn endpoint_only_change(delta: bool) {
    let (server, sink, client) = synced(delta).await;
    let before = server.proxy();
    let applies_before: Vec<_> = ALL.iter().map(|u| sink.get(u).unwrap().count).collect();
    let next = snapshot(&[
        (CLUSTER, &[("a", "1"), ("b", "1")]),
        (ENDPOINT, &[("a", "2"), ("b", "1"), ("c", "1")]),
        (LISTENER, &[("l1", "1")]),
        (ROUTE, &[("l1", "1"), ("l2", "1")]),
    ]);
    server.set(next.clone());
    server.wait_acked(&next, &[ENDPOINT]).await;
    assert!(sink.holds(ENDPOINT, &[("a", "2"), ("b", "1")]));
    let after = server.proxy();
    for short in ["CDS", "LDS", "RDS"] {
        assert_eq!(
            after.types[short].sent_count, before.types[short].sent_count,
            "{short} re-sent"
        );
    }
    assert_eq!(
        after.types["EDS"].sent_count,
        before.types["EDS"].sent_count + 1
    );
    if delta {
        // Only the changed ClusterLoadAssignment travels.
        let sent = after.types["EDS"].sent_resources - before.types["EDS"].sent_resources;
        assert_eq!(sent, 1);
    }
    let applies_after: Vec<_> = ALL.iter().map(|u| sink.get(u).unwrap().count).collect();
    assert_eq!(applies_after[0], applies_before[0], "CDS applied again");
    assert_eq!(
        applies_after[1],
        applies_before[1] + 1,
        "EDS applied once more"
    );
    client.abort();
}

#[tokio::test]
async fn endpoint_only_change_pushes_only_eds_sotw() {
    endpoint_only_change(false).await;
}

#[tokio::test]
async fn endpoint_only_change_pushes_only_eds_delta() {
    endpoint_only_change(true).await;
}

async fn removal(delta: bool) {
    let (server, sink, client) = synced(delta).await;
    // Cluster b goes away (and with it its endpoints); a's endpoints vanish
    // while cluster a stays (still subscribed, so delta must say "removed").
    let next = snapshot(&[
        (CLUSTER, &[("a", "1")]),
        (ENDPOINT, &[("c", "1")]),
        (LISTENER, &[("l1", "1")]),
        (ROUTE, &[("l1", "1")]),
    ]);
    server.set(next.clone());
    server.wait_acked(&next, &[CLUSTER, ENDPOINT]).await;
    eventually("b and a's endpoints removed", || {
        sink.holds(CLUSTER, &[("a", "1")]) && sink.holds(ENDPOINT, &[])
    })
    .await;
    assert!(sink.holds(ROUTE, &[("l1", "1")]));
    eventually("EDS subscription narrowed", || {
        server.proxy().types["EDS"].subscribed == ["a"]
    })
    .await;
    // A listener removed: LDS shrinks and the route it named is dropped.
    let last = snapshot(&[(CLUSTER, &[("a", "1")]), (ROUTE, &[("l1", "1")])]);
    server.set(last.clone());
    server.wait_acked(&last, &[LISTENER]).await;
    eventually("listener gone", || sink.holds(LISTENER, &[])).await;
    client.abort();
}

#[tokio::test]
async fn removal_sotw() {
    removal(false).await;
}

#[tokio::test]
async fn removal_delta() {
    removal(true).await;
}

async fn unsubscribe_shrinks_the_sink(delta: bool) {
    let (server, sink, client) = synced(delta).await;
    // Cluster b goes; its endpoints stay in the snapshot but are no longer wanted.
    let next = snapshot(&[
        (CLUSTER, &[("a", "1")]),
        (ENDPOINT, &[("a", "1"), ("b", "1"), ("c", "1")]),
        (LISTENER, &[("l1", "1")]),
        (ROUTE, &[("l1", "1"), ("l2", "1")]),
    ]);
    server.set(next.clone());
    server.wait_acked(&next, &[CLUSTER]).await;
    eventually("b's endpoints dropped", || {
        sink.holds(ENDPOINT, &[("a", "1")])
    })
    .await;
    // No clusters at all: nothing subscribed, nothing held.
    let empty = snapshot(&[
        (ENDPOINT, &[("a", "1"), ("b", "1")]),
        (LISTENER, &[("l1", "1")]),
        (ROUTE, &[("l1", "1")]),
    ]);
    server.set(empty.clone());
    server.wait_acked(&empty, &[CLUSTER]).await;
    eventually("no endpoints held", || sink.holds(ENDPOINT, &[])).await;
    eventually("EDS unsubscribed", || {
        server.proxy().types["EDS"].subscribed.is_empty()
    })
    .await;
    client.abort();
}

#[tokio::test]
async fn unsubscribe_shrinks_the_sink_sotw() {
    unsubscribe_shrinks_the_sink(false).await;
}

#[tokio::test]
async fn unsubscribe_shrinks_the_sink_delta() {
    unsubscribe_shrinks_the_sink(true).await;
}
