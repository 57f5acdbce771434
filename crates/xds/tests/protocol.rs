//! The server's protocol rules, checked with a raw ADS client: push order,
//! stale nonces, NACKs, unrequested types, stream rejection, and delta's
//! `initial_resource_versions` / subscribe / unsubscribe.
//!
//! Absence of a response is shown without sleeping: a stream's task handles
//! requests in order, so after a request that must not be answered we send one
//! that must, and check that its answer is the next message.

mod common;

use common::{DEADLINE, TestServer, snapshot};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use xds::server::Snapshot;
use xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE, short};

fn world(tag: &str) -> Snapshot {
    snapshot(&[
        (CLUSTER, &[("a", tag), ("b", tag)]),
        (ENDPOINT, &[("a", tag), ("b", tag)]),
        (LISTENER, &[("l1", tag)]),
        (ROUTE, &[("l1", tag), ("l2", tag)]),
    ])
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

struct Sotw {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(server: &TestServer, first: DiscoveryRequest) -> Result<Sotw, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(server.endpoint())
            .await
            .expect("connect");
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(first).unwrap();
        let rx = client
            .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Sotw { tx, rx })
    }

    fn send(&self, type_url: &str, names: &[&str], ack: Option<&DiscoveryResponse>) {
        self.tx.send(request(type_url, names, ack)).unwrap();
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        let msg = tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("response in time")?;
        Ok(msg.expect("stream open"))
    }

    async fn expect(&mut self, type_url: &str) -> DiscoveryResponse {
        let response = self.next().await.expect("response");
        assert_eq!(short(&response.type_url), short(type_url));
        response
    }
}

fn request(type_url: &str, names: &[&str], ack: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: ack.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

#[tokio::test]
async fn sotw_push_order_stale_nonce_and_nack() {
    let server = TestServer::start(world("1")).await;
    let first = DiscoveryRequest {
        node: node("p1"),
        ..request(CLUSTER, &[], None)
    };
    let mut s = Sotw::open(&server, first).await.unwrap();
    let cds = s.expect(CLUSTER).await;
    assert_eq!(cds.resources.len(), 2);
    assert_eq!(cds.version_info, world("1").types[CLUSTER].version);
    s.send(LISTENER, &[], None);
    let lds = s.expect(LISTENER).await;
    s.send(ENDPOINT, &["a", "missing"], None);
    let eds = s.expect(ENDPOINT).await;
    assert_eq!(eds.resources.len(), 1, "only requested names that exist");
    s.send(ROUTE, &["l1"], None);
    let rds = s.expect(ROUTE).await;
    for r in [&cds, &lds, &eds] {
        s.send(
            &r.type_url,
            if r.type_url == ENDPOINT {
                &["a", "missing"]
            } else {
                &[]
            },
            Some(r),
        );
    }
    s.send(ROUTE, &["l1"], Some(&rds));

    server
        .wait_acked(&world("1"), &[CLUSTER, ENDPOINT, LISTENER, ROUTE])
        .await;

    // Everything changes: pushed CDS, EDS, LDS, RDS, whatever the request order was.
    server.set(world("2"));
    let cds = s.expect(CLUSTER).await;
    let eds = s.expect(ENDPOINT).await;
    let lds = s.expect(LISTENER).await;
    let rds = s.expect(ROUTE).await;
    s.send(CLUSTER, &[], Some(&cds));
    s.send(LISTENER, &[], Some(&lds));

    // A stale nonce (an older EDS response) with new names is ignored...
    let mut stale = request(ENDPOINT, &["a", "b"], Some(&eds));
    stale.response_nonce = "not-the-last".into();
    s.tx.send(stale).unwrap();
    // ...and a NACK is recorded but not answered with the same content...
    let mut nack = request(ROUTE, &["l1"], Some(&rds));
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "route l1: bad regex".into(),
        details: vec![],
    });
    s.tx.send(nack).unwrap();
    // ...while a current-nonce request with new names is answered.
    s.send(ENDPOINT, &["a", "b"], Some(&eds));
    let eds2 = s.expect(ENDPOINT).await;
    assert_eq!(eds2.resources.len(), 2);
    assert_eq!(
        eds2.version_info, eds.version_info,
        "same version, new names"
    );

    let p = server.proxy();
    assert_eq!(p.types["RDS"].nack.as_deref(), Some("route l1: bad regex"));
    assert_eq!(
        p.types["RDS"].acked_version,
        Some(world("1").types[ROUTE].version.clone())
    );
    assert_eq!(
        p.types["CDS"].acked_version,
        Some(world("2").types[CLUSTER].version.clone())
    );
    assert_eq!(p.types["EDS"].subscribed, ["a", "b"]);
}

#[tokio::test]
async fn sotw_never_pushes_unrequested_types() {
    let server = TestServer::start(world("1")).await;
    let first = DiscoveryRequest {
        node: node("p1"),
        ..request(CLUSTER, &[], None)
    };
    let mut s = Sotw::open(&server, first).await.unwrap();
    let cds = s.expect(CLUSTER).await;
    s.send(CLUSTER, &[], Some(&cds));
    server.set(world("2"));
    let cds = s.expect(CLUSTER).await;
    s.send(CLUSTER, &[], Some(&cds));
    // Had EDS been pushed it would come before this answer.
    s.send(LISTENER, &[], None);
    s.expect(LISTENER).await;
    // An empty EDS subscription is nothing, not a wildcard.
    s.send(ENDPOINT, &[], None);
    s.send(ROUTE, &["l2"], None);
    let rds = s.expect(ROUTE).await;
    assert_eq!(rds.resources.len(), 1);
}

#[tokio::test]
async fn streams_without_node_or_refused_by_the_source_are_rejected() {
    let server = TestServer::start(world("1")).await;
    let mut s = Sotw::open(&server, request(CLUSTER, &[], None))
        .await
        .unwrap();
    assert_eq!(
        s.next().await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let first = DiscoveryRequest {
        node: node("rejected"),
        ..request(CLUSTER, &[], None)
    };
    let mut s = Sotw::open(&server, first).await.unwrap();
    assert_eq!(
        s.next().await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    assert!(server.status.snapshot().is_empty());
}

struct Delta {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(server: &TestServer, first: DeltaDiscoveryRequest) -> Delta {
        let mut client = AggregatedDiscoveryServiceClient::connect(server.endpoint())
            .await
            .expect("connect");
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(first).unwrap();
        let rx = client
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        Delta { tx, rx }
    }

    fn send(&self, type_url: &str, subscribe: &[&str], unsubscribe: &[&str]) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: type_url.into(),
                resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
                resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            })
            .unwrap();
    }

    fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            })
            .unwrap();
    }

    /// The next response: its type, (name, version) of resources, and removed names.
    async fn expect(&mut self, type_url: &str) -> (DeltaDiscoveryResponse, Vec<(String, String)>) {
        let msg = tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("in time");
        let response = msg.expect("ok").expect("open");
        assert_eq!(short(&response.type_url), short(type_url));
        let items = response
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        (response, items)
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn delta_honours_initial_versions_and_subscriptions() {
    let server = TestServer::start(world("1")).await;
    let first = DeltaDiscoveryRequest {
        node: node("p1"),
        type_url: CLUSTER.into(),
        initial_resource_versions: [("a", "1"), ("b", "0"), ("gone", "1")]
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let mut d = Delta::open(&server, first).await;
    let (cds, items) = d.expect(CLUSTER).await;
    assert_eq!(items, pairs(&[("b", "1")]), "a is current, b is stale");
    assert_eq!(cds.removed_resources, ["gone"]);
    assert_eq!(cds.system_version_info, world("1").types[CLUSTER].version);
    d.ack(&cds);

    // LDS with everything already held: still answered (empty), so init completes.
    d.tx.send(DeltaDiscoveryRequest {
        type_url: LISTENER.into(),
        initial_resource_versions: [("l1".to_string(), "1".to_string())].into(),
        ..Default::default()
    })
    .unwrap();
    let (lds, items) = d.expect(LISTENER).await;
    assert!(items.is_empty() && lds.removed_resources.is_empty());
    d.ack(&lds);

    // EDS by name; unsubscribing and resubscribing sends it again.
    d.send(ENDPOINT, &["a"], &[]);
    let (eds, items) = d.expect(ENDPOINT).await;
    assert_eq!(items, pairs(&[("a", "1")]));
    d.ack(&eds);
    d.send(ENDPOINT, &["b"], &["a"]);
    let (eds, items) = d.expect(ENDPOINT).await;
    assert_eq!(items, pairs(&[("b", "1")]));
    d.ack(&eds);
    d.send(ENDPOINT, &["a"], &[]);
    let (eds, items) = d.expect(ENDPOINT).await;
    assert_eq!(items, pairs(&[("a", "1")]));
    d.ack(&eds);
    server.wait_acked(&world("1"), &[ENDPOINT]).await;

    // A change pushes only what changed, in order; RDS was never asked for.
    server.set(snapshot(&[
        (CLUSTER, &[("a", "1")]),
        (ENDPOINT, &[("a", "1"), ("b", "2")]),
        (LISTENER, &[("l1", "2")]),
    ]));
    let (cds, items) = d.expect(CLUSTER).await;
    assert!(items.is_empty());
    assert_eq!(cds.removed_resources, ["b"]);
    let (_, items) = d.expect(ENDPOINT).await;
    assert_eq!(items, pairs(&[("b", "2")]));
    let (_, items) = d.expect(LISTENER).await;
    assert_eq!(items, pairs(&[("l1", "2")]));
    let p = server.proxy();
    assert_eq!(
        p.types["CDS"].acked_version,
        Some(world("1").types[CLUSTER].version.clone())
    );
    assert!(!p.types.contains_key("RDS"));
}

/// A proxy resuming (a restarted server) that holds part of the config gets
/// exactly the rest: wildcard resources it lacks, named ones it asked for
/// and lacks, and nothing it already holds at the current version.
#[tokio::test]
async fn delta_resume_sends_only_what_the_proxy_lacks() {
    let server = TestServer::start(world("1")).await;
    let first = DeltaDiscoveryRequest {
        node: node("p1"),
        type_url: CLUSTER.into(),
        initial_resource_versions: [("a".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let mut d = Delta::open(&server, first).await;
    let (cds, items) = d.expect(CLUSTER).await;
    assert_eq!(items, pairs(&[("b", "1")]), "b is missing from the proxy");
    assert!(cds.removed_resources.is_empty());
    d.ack(&cds);
    d.tx.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_subscribe: vec!["a".into(), "b".into()],
        initial_resource_versions: [("b".to_string(), "1".to_string())].into(),
        ..Default::default()
    })
    .unwrap();
    let (eds, items) = d.expect(ENDPOINT).await;
    assert_eq!(items, pairs(&[("a", "1")]));
    d.ack(&eds);
    // A later change still diffs from what it holds.
    server.set(snapshot(&[
        (CLUSTER, &[("a", "1"), ("b", "2")]),
        (ENDPOINT, &[("a", "1"), ("b", "1")]),
    ]));
    let (_, items) = d.expect(CLUSTER).await;
    assert_eq!(items, pairs(&[("b", "2")]));
}
