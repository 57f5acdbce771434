//! What the echo's integration tests share: arguments, clients, one GET.
// Each test binary uses its own part of this.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use echo::EchoArgs;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::time::timeout;

pub const WAIT: Duration = Duration::from_secs(10);

pub type TestClient = Client<HttpConnector, Empty<Bytes>>;

/// One HTTP and one TCP port on 127.0.0.1, no upstreams, no failures.
pub fn args(service: &str, version: &str, pod: &str) -> EchoArgs {
    EchoArgs {
        ports: vec![0],
        tcp_ports: vec![0],
        bind: "127.0.0.1".parse().expect("ip"),
        service: service.into(),
        version: version.into(),
        pod: pod.into(),
        namespace: "test-ns".into(),
        upstreams: vec![],
        fail: None,
        fail_first: None,
        fail_first_per_conn: None,
        fail_fraction: None,
        delay: None,
        refuse: false,
    }
}

pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// A header as text, `""` when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().expect("ASCII header"))
    }
}

pub async fn get(client: &TestClient, url: &str, headers: &[(&str, &str)]) -> Answer {
    send(client, "GET", url, headers).await
}

pub async fn send(
    client: &TestClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    timeout(WAIT, send_untimed(client, method, url, headers))
        .await
        .expect("answer in time")
}

/// [`get`] without a timeout, for tests on tokio's paused clock: there, the
/// clock jumps to the next timer whenever the runtime waits for the network,
/// so a timeout would fire at once while a delay under test is the next
/// timer that should.
pub async fn get_untimed(client: &TestClient, url: &str, headers: &[(&str, &str)]) -> Answer {
    send_untimed(client, "GET", url, headers).await
}

async fn send_untimed(
    client: &TestClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::new()).expect("request");
    let resp = client.request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}
