//! The echo's failure modes on ephemeral ports, seen by real clients:
//! counted failures (first K, per key, per connection, exact fractions),
//! dropped and reset connections, h2 stream resets with their reason, gRPC
//! statuses, delays on the paused clock, and the hit counters.

mod common;

use std::error::Error as _;
use std::net::SocketAddr;

use bytes::Bytes;
use common::{Answer, WAIT, args, get, get_untimed, h1_client, h2_client, send};
use echo::{EchoArgs, FailWith, Fraction};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// Serves `args`; returns the HTTP port.
async fn start(args: EchoArgs) -> SocketAddr {
    echo::serve(EchoArgs {
        tcp_ports: vec![],
        ..args
    })
    .await
    .expect("serve")[0]
}

async fn plain() -> SocketAddr {
    start(args("echo", "v1", "echo-0")).await
}

/// Statuses of `n` sequential GETs of `url`.
async fn statuses(url: &str, n: usize) -> Vec<u16> {
    let client = h1_client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(&client, url, &[]).await.status.as_u16());
    }
    out
}

/// Sends a raw HTTP/1.1 GET on a fresh connection and reads until the
/// server closes it.
async fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<Vec<u8>> {
    timeout(WAIT, raw_get_untimed(addr, path))
        .await
        .expect("server closes in time")
}

/// [`raw_get`] for the paused clock (see [`common::get_untimed`]).
async fn raw_get_untimed(addr: SocketAddr, path: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(answer)
}

#[tokio::test]
async fn server_wide_fail_fraction_fails_exactly_the_picked_requests() {
    let http = start(EchoArgs {
        fail_fraction: Fraction::parse("0.3"),
        ..args("echo", "v1", "bad-0")
    })
    .await;
    let client = h1_client();
    let mut failed = Vec::new();
    for n in 1..=10u64 {
        let a = get(&client, &format!("http://{http}/"), &[]).await;
        assert_eq!(a.header("x-echo-hits"), n.to_string());
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(a.header("x-echo-failed"), "--fail-fraction");
            assert_eq!(
                a.json()["pod"],
                "bad-0",
                "a failure still carries the report"
            );
            failed.push(n);
        } else {
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.header("x-echo-failed"), "");
        }
    }
    assert_eq!(failed, [4, 7, 10]);
    // Neither counted nor failed.
    assert_eq!(
        get(&client, &format!("http://{http}/healthz"), &[])
            .await
            .status,
        200
    );
    let hits = get(&client, &format!("http://{http}/hits"), &[])
        .await
        .json();
    assert_eq!(hits["hits"], 10);
    assert_eq!(hits["failed"], 3);
    assert_eq!(hits["pod"], "bad-0");
}

#[tokio::test]
async fn query_fail_fraction_counts_on_its_key_with_the_given_failure() {
    let http = plain().await;
    let url = format!("http://{http}/?fail_fraction=1/2&key=half&fail=502");
    // Keyless traffic in between does not move the key's counter.
    let client = h1_client();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(get(&client, &url, &[]).await.status.as_u16());
        get(&client, &format!("http://{http}/other"), &[]).await;
    }
    assert_eq!(got, [200, 502, 200, 502]);
}

#[tokio::test]
async fn fail_first_per_key_then_succeeds_and_hits_reset() {
    let http = plain().await;
    let client = h1_client();
    let abc = format!("http://{http}/r?fail_first=2&key=abc");
    let xyz = format!("http://{http}/r?fail_first=1&key=xyz");
    let a = get(&client, &abc, &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.header("x-echo-failed"), "fail_first");
    assert_eq!(a.header("x-echo-key-hits"), "1");
    assert_eq!(get(&client, &xyz, &[]).await.status, 503, "own counter");
    assert_eq!(get(&client, &abc, &[]).await.status, 503);
    let a = get(&client, &abc, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("x-echo-key-hits"), "3");
    assert_eq!(a.header("x-echo-hits"), "4");
    assert_eq!(get(&client, &xyz, &[]).await.status, 200);

    let hits = get(&client, &format!("http://{http}/hits"), &[]).await;
    assert_eq!(hits.header("content-type"), "application/json");
    let hits = hits.json();
    assert_eq!(hits["hits"], 5);
    assert_eq!(hits["failed"], 3);
    assert_eq!(
        hits["keys"]["abc"],
        serde_json::json!({"hits": 3, "failed": 2})
    );
    assert_eq!(
        hits["keys"]["xyz"],
        serde_json::json!({"hits": 2, "failed": 1})
    );
    let one = get(&client, &format!("http://{http}/hits?key=abc"), &[])
        .await
        .json();
    assert_eq!(one["key"], "abc");
    assert_eq!(one["hits"], 3);

    // Forgetting one key restarts its count; the others keep theirs.
    let before = send(
        &client,
        "DELETE",
        &format!("http://{http}/hits?key=abc"),
        &[],
    )
    .await;
    assert_eq!(before.json()["hits"], 3);
    assert_eq!(get(&client, &abc, &[]).await.status, 503);
    let hits = get(&client, &format!("http://{http}/hits"), &[])
        .await
        .json();
    assert_eq!(hits["keys"]["abc"]["hits"], 1);
    assert_eq!(hits["keys"]["xyz"]["hits"], 2);

    let before = send(&client, "DELETE", &format!("http://{http}/hits"), &[]).await;
    assert_eq!(before.json()["hits"], 6);
    let hits = get(&client, &format!("http://{http}/hits"), &[])
        .await
        .json();
    assert_eq!(hits["hits"], 0);
    assert_eq!(hits["keys"], serde_json::json!({}));
    let wrong = send(&client, "POST", &format!("http://{http}/hits"), &[]).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn server_wide_fail_first_restarts_after_reset() {
    let http = start(EchoArgs {
        fail_first: Some(2),
        fail: Some(FailWith::Status(StatusCode::BAD_GATEWAY)),
        ..args("echo", "v1", "p")
    })
    .await;
    let url = format!("http://{http}/");
    assert_eq!(statuses(&url, 3).await, [502, 502, 200]);
    send(&h1_client(), "DELETE", &format!("http://{http}/hits"), &[]).await;
    assert_eq!(statuses(&url, 3).await, [502, 502, 200]);
}

#[tokio::test]
async fn fail_first_per_conn_fails_each_new_connection() {
    async fn on_one_connection(addr: SocketAddr, path: &str, n: usize) -> Vec<u16> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut out = Vec::new();
        for _ in 0..n {
            let req = Request::get(path)
                .header("host", "echo")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let resp = timeout(WAIT, send.send_request(req))
                .await
                .expect("in time")
                .expect("response");
            out.push(resp.status().as_u16());
            resp.into_body().collect().await.expect("body");
        }
        out
    }
    let http = plain().await;
    for _ in 0..2 {
        let got = on_one_connection(http, "/?fail_first_per_conn=1", 3).await;
        assert_eq!(got, [503, 200, 200]);
    }
    let server = start(EchoArgs {
        fail_first_per_conn: Some(2),
        ..args("echo", "v1", "p")
    })
    .await;
    for _ in 0..2 {
        assert_eq!(on_one_connection(server, "/", 3).await, [503, 503, 200]);
    }
}

#[tokio::test]
async fn http1_close_and_rst_drop_the_connection_unanswered() {
    let http = plain().await;
    let closed = raw_get(http, "/?fail=close").await.expect("a clean close");
    assert!(closed.is_empty(), "no answer: {closed:?}");
    for rst in ["/?fail=rst", "/?fail=refused-stream", "/?fail=cancel"] {
        let err = raw_get(http, rst).await.expect_err("reset");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{rst}");
    }
    // hyper's client sees the close as an incomplete message.
    let client = h1_client();
    let req = Request::get(format!("http://{http}/?fail=close"))
        .body(Empty::new())
        .expect("request");
    let err = timeout(WAIT, client.request(req))
        .await
        .expect("in time")
        .expect_err("no answer");
    let hyper_err = err
        .source()
        .and_then(|e| e.downcast_ref::<hyper::Error>())
        .expect("a hyper error");
    assert!(hyper_err.is_incomplete_message(), "{hyper_err}");
    let hits = get(&client, &format!("http://{http}/hits"), &[])
        .await
        .json();
    assert_eq!(hits["hits"], 5);
    assert_eq!(hits["failed"], 5);
}

/// The RST_STREAM reason somewhere in an error's chain.
fn h2_reason(err: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        cause = err.source();
    }
    None
}

#[tokio::test]
async fn h2_stream_resets_carry_their_reason_and_spare_the_connection() {
    let http = plain().await;
    let stream = TcpStream::connect(http).await.expect("connect");
    let (mut send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let request = |path: &str| {
        Request::get(format!("http://{http}{path}"))
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    for (fail, reason) in [
        ("refused-stream", h2::Reason::REFUSED_STREAM),
        ("cancel", h2::Reason::CANCEL),
        ("internal-error", h2::Reason::INTERNAL_ERROR),
    ] {
        let err = timeout(WAIT, send.send_request(request(&format!("/?fail={fail}"))))
            .await
            .expect("in time")
            .expect_err("reset");
        assert_eq!(h2_reason(&err), Some(reason), "{fail}: {err}");
    }
    // Same connection, still good.
    let ok = timeout(WAIT, send.send_request(request("/after")))
        .await
        .expect("in time")
        .expect("answer");
    assert_eq!(ok.status(), StatusCode::OK);
    ok.into_body().collect().await.expect("body");

    // fail=close takes the whole connection down.
    let err = timeout(WAIT, send.send_request(request("/?fail=close")))
        .await
        .expect("in time")
        .expect_err("no answer");
    assert!(h2_reason(&err).is_none(), "not a stream reset: {err}");
    timeout(WAIT, conn)
        .await
        .expect("connection ends in time")
        .expect("task")
        .ok();
    assert!(send.is_closed());
}

#[tokio::test]
async fn refuse_resets_every_connection() {
    let addrs = echo::serve(EchoArgs {
        refuse: true,
        ..args("echo", "v1", "p")
    })
    .await
    .expect("serve");
    for addr in &addrs {
        match raw_get(*addr, "/").await {
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset),
            Ok(answer) => panic!("{addr}: answered {answer:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn delay_flag_and_query_on_the_paused_clock() {
    let http = start(EchoArgs {
        delay: Some(std::time::Duration::from_secs(5)),
        ..args("echo", "v1", "p")
    })
    .await;
    let client = h2_client();
    let started = Instant::now();
    let a = get_untimed(&client, &format!("http://{http}/slow"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));

    let started = Instant::now();
    get_untimed(&client, &format!("http://{http}/?delay=1s"), &[]).await;
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_secs(1), "{took:?}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "?delay= wins: {took:?}"
    );

    // A delayed failure: slow, then reset.
    let started = Instant::now();
    let err = raw_get_untimed(http, "/?delay=2s&fail=rst")
        .await
        .expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn attempt_count_and_bad_parameters() {
    let http = plain().await;
    let client = h1_client();
    let a = get(
        &client,
        &format!("http://{http}/"),
        &[("x-envoy-attempt-count", "3")],
    )
    .await;
    assert_eq!(a.header("x-echo-attempt-count"), "3");
    assert_eq!(a.json()["headers"]["x-envoy-attempt-count"], "3");

    for (query, names) in [
        ("fail=reset", "fail"),
        ("fail_first=2", "key"),
        ("fail_first=two&key=k", "fail_first"),
        ("fail_first_per_conn=-1", "fail_first_per_conn"),
        ("fail_fraction=1.5&key=k", "fail_fraction"),
        ("key=", "key"),
    ] {
        let a = get(&client, &format!("http://{http}/?{query}"), &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}");
        let text = String::from_utf8_lossy(&a.body);
        assert!(text.contains(names), "{query}: {text}");
    }
    let hits = get(&client, &format!("http://{http}/hits"), &[])
        .await
        .json();
    assert_eq!(hits["hits"], 1, "rejected requests are not counted");
}

type GrpcClient = tonic::client::Grpc<
    Client<hyper_util::client::legacy::connect::HttpConnector, tonic::body::Body>,
>;

async fn grpc_call(
    addr: SocketAddr,
    metadata: &[(&'static str, &str)],
) -> Result<tonic::Response<echo::grpc::EchoResponse>, tonic::Status> {
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin = format!("http://{addr}").parse().expect("origin");
    let mut client: GrpcClient = tonic::client::Grpc::with_origin(h2, origin);
    timeout(WAIT, client.ready())
        .await
        .expect("in time")
        .expect("ready");
    let mut request = tonic::Request::new(echo::grpc::EchoRequest {
        message: "hi".into(),
    });
    for (name, value) in metadata {
        request
            .metadata_mut()
            .insert(*name, value.parse().expect("ascii"));
    }
    let codec =
        tonic_prost::ProstCodec::<echo::grpc::EchoRequest, echo::grpc::EchoResponse>::default();
    let path = http::uri::PathAndQuery::from_static(echo::grpc::ECHO_PATH);
    timeout(WAIT, client.unary(request, path, codec))
        .await
        .expect("in time")
}

#[tokio::test]
async fn grpc_failures_come_from_metadata() {
    let http = plain().await;
    for (fail, code) in [
        ("grpc-14", tonic::Code::Unavailable),
        ("grpc-resource-exhausted", tonic::Code::ResourceExhausted),
        ("grpc-deadline-exceeded", tonic::Code::DeadlineExceeded),
        ("grpc-internal", tonic::Code::Internal),
        ("grpc-cancelled", tonic::Code::Cancelled),
    ] {
        let err = grpc_call(http, &[("x-echo-fail", fail)])
            .await
            .expect_err("fails");
        assert_eq!(err.code(), code, "{fail}");
        assert_eq!(err.metadata().get("x-echo-failed").expect("marked"), "fail");
        assert_eq!(
            err.metadata().get("x-echo-pod").expect("identity"),
            "echo-0"
        );
    }

    // First two with key g fail UNAVAILABLE (the gRPC default), then OK.
    let keyed = [("x-echo-fail-first", "2"), ("x-echo-key", "g")];
    for _ in 0..2 {
        let err = grpc_call(http, &keyed).await.expect_err("fails");
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
    let ok = grpc_call(http, &keyed).await.expect("third succeeds");
    assert_eq!(ok.metadata().get("x-echo-key-hits").expect("count"), "3");
    assert_eq!(ok.into_inner().message, "hi");

    // An HTTP status instead: gRPC clients map 503 to UNAVAILABLE.
    let err = grpc_call(http, &[("x-echo-fail", "503")])
        .await
        .expect_err("fails");
    assert_eq!(err.code(), tonic::Code::Unavailable);

    let err = grpc_call(http, &[("x-echo-fail-first", "2")])
        .await
        .expect_err("no key");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("x-echo-key"), "{}", err.message());

    let hits = get(&h1_client(), &format!("http://{http}/hits"), &[])
        .await
        .json();
    assert_eq!(hits["hits"], 9);
    assert_eq!(hits["failed"], 8);
    assert_eq!(hits["keys"]["g"]["failed"], 2);
}

#[tokio::test]
async fn grpc_server_wide_failures_default_to_unavailable() {
    let http = start(EchoArgs {
        fail_first: Some(1),
        ..args("echo", "v1", "p")
    })
    .await;
    let err = grpc_call(http, &[]).await.expect_err("first fails");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(
        err.metadata().get("x-echo-failed").expect("marked"),
        "--fail-first"
    );
    grpc_call(http, &[]).await.expect("second succeeds");
    let a: Answer = get(&h1_client(), &format!("http://{http}/"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("x-echo-hits"), "3");
}
