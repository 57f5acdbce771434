//! NACKs: a rejected type shows in the sync status with its error, is not sent
//! again as is, and a later good snapshot is ACKed and clears it.

mod common;

use std::time::Duration;

use common::{TestServer, TestSink, client_config, snapshot};
use xds::type_url::{CLUSTER, LISTENER};

async fn nack_then_recover(delta: bool) {
    let first = snapshot(&[(CLUSTER, &[("a", "1")]), (LISTENER, &[("l1", "1")])]);
    let server = TestServer::start(first.clone()).await;
    let sink = TestSink::new();
    sink.reject(CLUSTER, Some("cluster a: bad connect_timeout"));
    let client = xds::client::spawn(client_config(&server, delta), sink.clone());

    let nacked = server
        .status
        .wait_until(Duration::from_secs(10), |p| {
            p.len() == 1
                && p[0].types.get("CDS").and_then(|t| t.nack.as_deref())
                    == Some("cluster a: bad connect_timeout")
        })
        .await;
    assert!(nacked, "{:#?}", server.status.snapshot());
    server.wait_acked(&first, &[LISTENER]).await;
    let cds = server.proxy().types["CDS"].clone();
    assert_eq!(
        (cds.sent_count, cds.nack_count, cds.acked_version),
        (1, 1, None)
    );
    assert!(sink.get(CLUSTER).is_none(), "nothing good applied");

    sink.reject(CLUSTER, None);
    let fixed = snapshot(&[(CLUSTER, &[("a", "2")]), (LISTENER, &[("l1", "1")])]);
    server.set(fixed.clone());
    server.wait_acked(&fixed, &[CLUSTER]).await;
    let cds = server.proxy().types["CDS"].clone();
    assert_eq!(cds.nack, None);
    assert_eq!(cds.sent_count, 2, "the NACKed version was not re-sent");
    assert!(sink.holds(CLUSTER, &[("a", "2")]));
    assert!(
        server
            .status
            .all_acked(CLUSTER, &fixed.types[CLUSTER].version)
    );
    client.abort();
}

#[tokio::test]
async fn nack_is_recorded_and_cleared_sotw() {
    nack_then_recover(false).await;
}

#[tokio::test]
async fn nack_is_recorded_and_cleared_delta() {
    nack_then_recover(true).await;
}
