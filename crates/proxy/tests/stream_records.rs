//! Every HTTP stream leaves one record, read by the observers when its body
//! ends: route, cluster and host, status, Envoy's response flags (NR, FI,
//! DI), bytes sent and duration; a stream the client drops mid-body is `DC`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use proxy::stream_info::{StreamInfo, StreamObserver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Recorder(Mutex<Vec<StreamInfo>>);

impl StreamObserver for Recorder {
    fn on_stream_end(&self, info: &StreamInfo) {
        self.0.lock().expect("lock").push(info.clone());
    }
}

impl Recorder {
    async fn wait(&self, n: usize) -> Vec<StreamInfo> {
        for _ in 0..500 {
            let got = self.0.lock().expect("lock").clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} stream records");
    }
}

/// Answers headers and 5 of 1,000,000 promised bytes, then stalls.
async fn stalling_backend() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\nhello")
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn each_stream_is_recorded_when_its_body_ends() {
    let b = backend("b").await;
    let staller = stalling_backend().await;
    let yaml = http_bootstrap(
        "rec",
        r#"- name: known
  domains: [known]
  routes:
  - name: aborted
    match: {prefix: /abort}
    route: {cluster: backend}
    typed_per_filter_config:
      envoy.filters.http.fault:
        "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
        delay: {fixed_delay: 0.001s, percentage: {numerator: 100}}
        abort: {http_status: 429, percentage: {numerator: 100}}
  - name: stall
    match: {prefix: /stall}
    route: {cluster: staller}
  - name: default
    match: {prefix: /}
    route: {cluster: backend}"#,
        &[("backend", b.addr), ("staller", staller)],
    );
    let proxy = start_static(&yaml).await;
    let recorder = Arc::new(Recorder::default());
    proxy.store().add_stream_observer(recorder.clone());
    let http = proxy.listener_addr("http").expect("listener");

    assert_eq!(get(http, "known", "/x", &[]).await.status, 200);
    assert_eq!(get(http, "unknown", "/x", &[]).await.status, 404);
    assert_eq!(get(http, "known", "/abort", &[]).await.status, 429);
    let got = recorder.wait(3).await;
    let ok = &got[0];
    assert_eq!(ok.route_name.as_deref(), Some("default"));
    assert_eq!(ok.cluster.as_deref(), Some("backend"));
    assert_eq!(
        ok.upstream_host.as_deref(),
        Some(b.addr.to_string().as_str())
    );
    assert_eq!(
        (ok.response_code, ok.flags.to_string()),
        (200, "-".to_string())
    );
    assert_eq!(ok.bytes_sent, 1, "the backend answers its name");
    assert!(ok.end.is_some() && ok.response_start.is_some());
    assert_eq!(
        (got[1].response_code, got[1].flags.to_string()),
        (404, "NR".to_string())
    );
    assert!(got[1].route_name.is_none());
    let aborted = &got[2];
    assert_eq!(aborted.route_name.as_deref(), Some("aborted"));
    assert_eq!(
        (aborted.response_code, aborted.flags.to_string()),
        (429, "DI,FI".to_string())
    );
    assert_eq!(aborted.bytes_sent, "fault filter abort".len() as u64);

    // The client reads the start of a long body, then hangs up: DC.
    let mut s = tokio::net::TcpStream::connect(http).await.expect("connect");
    s.write_all(b"GET /stall HTTP/1.1\r\nhost: known\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("hello") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let got = recorder.wait(4).await;
    let cut = &got[3];
    assert_eq!(cut.route_name.as_deref(), Some("stall"));
    assert_eq!(
        (cut.response_code, cut.flags.to_string()),
        (200, "DC".to_string())
    );
    assert_eq!(cut.bytes_sent, 5);
}
