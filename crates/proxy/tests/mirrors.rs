//! `request_mirror_policies`: a shadow copy of each picked request goes to
//! the mirror cluster with the `-shadow` host, body included, and its
//! answer never reaches the client. Compared with a stock Envoy on the same
//! bootstrap.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What the shadow backend saw: (host, path, body).
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A backend that records every request and answers 500 (a shadow's
/// answer must not matter).
async fn shadow_backend(seen: &Seen) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_string())
                            .or_else(|| req.uri().authority().map(|a| a.to_string()))
                            .unwrap_or_default();
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push((
                            host,
                            path,
                            String::from_utf8_lossy(&body).into_owned(),
                        ));
                        let mut r = Response::new(Full::new(Bytes::from_static(b"shadow")));
                        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn bootstrap(main: SocketAddr, shadow: SocketAddr) -> String {
    http_bootstrap(
        "mirrors",
        r#"- name: all
  domains: ["*"]
  routes:
  - match: {prefix: /none}
    route: {cluster: main, request_mirror_policies: [{cluster: shadow, runtime_fraction: {default_value: {numerator: 0}}}]}
  - match: {prefix: /}
    route: {cluster: main, request_mirror_policies: [{cluster: shadow, runtime_fraction: {default_value: {numerator: 100}}, trace_sampled: false}]}"#,
        &[("main", main), ("shadow", shadow)],
    )
}

async fn post(addr: SocketAddr, path: &str, body: &'static str) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", "svc:8080")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Run the cases through one proxy; what the clients got and, once the
/// shadows have landed (bounded wait), what the shadow saw.
async fn run(l: SocketAddr, seen: &Seen) -> (Vec<(u16, String)>, Vec<(String, String, String)>) {
    seen.lock().unwrap().clear();
    let mut answers = Vec::new();
    for i in 0..5 {
        let r = get(l, "svc", &format!("/get/{i}"), &[]).await;
        answers.push((r.status, r.body));
        let r = get(l, "svc", &format!("/none/{i}"), &[]).await;
        answers.push((r.status, r.body));
    }
    answers.push(post(l, "/post", "a body for both").await);
    for _ in 0..200 {
        if seen.lock().unwrap().len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Any stray /none shadow would land by now too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    (answers, got)
}

#[tokio::test]
async fn shadows_carry_the_request_and_never_the_answer_like_envoy() {
    let main = backend("main").await;
    let seen = Seen::default();
    let yaml = bootstrap(main.addr, shadow_backend(&seen).await);
    let proxy = start_static(&yaml).await;
    let (answers, got) = run(proxy.listener_addr("http").unwrap(), &seen).await;
    assert!(
        answers.iter().all(|(s, b)| *s == 200 && b == "main"),
        "the client sees only the main answer: {answers:?}"
    );
    let mut want: Vec<(String, String, String)> = (0..5)
        .map(|i| ("svc-shadow".to_string(), format!("/get/{i}"), String::new()))
        .collect();
    want.push((
        "svc-shadow:8080".to_string(),
        "/post".to_string(),
        "a body for both".to_string(),
    ));
    want.sort();
    assert_eq!(got, want);
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    assert!(
        stats.contains("cluster.shadow.upstream_rq_500: 6\n"),
        "{stats}"
    );
    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: differential half skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    let (envoy_answers, envoy_got) = run(e.listener(Some("http")).await, &seen).await;
    assert_eq!(envoy_answers, answers);
    assert_eq!(envoy_got, got);
}
