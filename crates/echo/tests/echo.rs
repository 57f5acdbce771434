//! In-process tests of `halyard echo` on ephemeral ports.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{WAIT, args, get, get_untimed, h1_client, h2_client};
use echo::EchoArgs;
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// An echo with one HTTP and one TCP port on 127.0.0.1.
async fn start(service: &str, version: &str, pod: &str) -> (SocketAddr, SocketAddr) {
    let addrs = echo::serve(args(service, version, pod))
        .await
        .expect("serve");
    assert_eq!(addrs.len(), 2);
    (addrs[0], addrs[1])
}

#[tokio::test]
async fn upstreams_are_called_on_every_request() {
    let (details, _) = start("details", "v1", "details-0").await;
    let args = EchoArgs {
        tcp_ports: vec![],
        upstreams: vec![format!("http://{details}/details")],
        ..args("productpage", "v1", "productpage-0")
    };
    let addrs = echo::serve(args).await.expect("serve");
    let body: serde_json::Value = {
        let stream = tokio::net::TcpStream::connect(addrs[0])
            .await
            .expect("connect");
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let req = hyper::Request::get("/productpage")
            .header("host", "productpage")
            .header("x-request-id", "req-7")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("send");
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("json")
    };
    let call = &body["calls"][0];
    assert_eq!(call["status"], 200, "{body}");
    assert_eq!(call["body"]["service"], "details");
    assert_eq!(call["body"]["headers"]["x-request-id"], "req-7");
}

/// Reads one HTTP/1.1 response with a content-length body from `stream`.
async fn read_h1_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "connection closed mid-response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("utf-8 head");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len, "no bytes beyond the response");
    (head, body)
}

#[tokio::test]
async fn http1_and_h2c_answer_with_their_proto() {
    let (http, _) = start("reviews", "v2", "reviews-v2-abc").await;

    let a = get(
        &h1_client(),
        &format!("http://{http}/some/path?x=1&y=two"),
        &[("x-multi", "a"), ("x-multi", "b")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.headers["x-echo-service"], "reviews");
    assert_eq!(a.headers["x-echo-version"], "v2");
    assert_eq!(a.headers["x-echo-pod"], "reviews-v2-abc");
    let j = a.json();
    assert_eq!(j["service"], "reviews");
    assert_eq!(j["version"], "v2");
    assert_eq!(j["pod"], "reviews-v2-abc");
    assert_eq!(j["namespace"], "test-ns");
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/some/path?x=1&y=two");
    assert_eq!(j["host"], http.to_string());
    assert_eq!(j["proto"], "HTTP/1.1");
    assert_eq!(j["headers"]["x-multi"], "a,b");
    assert_eq!(j["local"], http.to_string());
    assert!(j["peer"].as_str().expect("peer").starts_with("127.0.0.1:"));
    assert_eq!(j["calls"], serde_json::json!([]));

    let b = get(&h2_client(), &format!("http://{http}/h2?z=1"), &[]).await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.headers["x-echo-service"], "reviews");
    let j = b.json();
    assert_eq!(j["proto"], "HTTP/2.0");
    assert_eq!(j["path"], "/h2?z=1");
    assert_eq!(j["host"], http.to_string());
}

#[tokio::test]
async fn http1_keep_alive_reuses_the_connection() {
    let (http, _) = start("echo", "v1", "").await;
    let mut stream = TcpStream::connect(http).await.expect("connect");
    let me = stream.local_addr().expect("local addr").to_string();
    for i in 0..3 {
        let req = format!("POST /n{i} HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello");
        stream.write_all(req.as_bytes()).await.expect("write");
        let (head, body) = read_h1_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let j: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(j["path"], format!("/n{i}"));
        assert_eq!(j["method"], "POST");
        assert_eq!(j["host"], "svc");
        assert_eq!(j["peer"], me, "same connection every time");
        assert_eq!(j["pod"], "");
    }
}

#[tokio::test]
async fn healthz() {
    let (http, _) = start("echo", "v1", "p").await;
    let a = get(&h1_client(), &format!("http://{http}/healthz"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "ok");
}

// Paused clock: the delays pass without waiting.
#[tokio::test(start_paused = true)]
async fn status_delay_and_header_shaping() {
    let (http, _) = start("echo", "v1", "p").await;
    let client = h1_client();

    let a = get(&client, &format!("http://{http}/?status=503"), &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["service"], "echo");

    let started = Instant::now();
    let a = get_untimed(&client, &format!("http://{http}/?delay=200ms"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let started = Instant::now();
    let a = get_untimed(
        &client,
        &format!("http://{http}/?delay=0.25s&status=201"),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert!(started.elapsed() >= Duration::from_millis(250));

    let a = get(
        &client,
        &format!("http://{http}/?header=x-one:1&header=x-two:%20two%20&header=x-one:uno"),
        &[],
    )
    .await;
    let ones: Vec<_> = a.headers.get_all("x-one").iter().collect();
    assert_eq!(ones, ["1", "uno"]);
    assert_eq!(a.headers["x-two"], "two");
    assert_eq!(a.headers["x-echo-service"], "echo");

    for bad in ["status=42", "delay=forever", "size=big", "header=nocolon"] {
        let a = get(&client, &format!("http://{http}/?{bad}"), &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn size_shapes_the_body_exactly() {
    let (http, _) = start("echo", "v1", "p").await;
    let client = h1_client();
    let natural = get(&client, &format!("http://{http}/sized"), &[])
        .await
        .body
        .len();
    let mut sizes = vec![0, 1, 10, 1024, 4096, 100_000];
    // Around the boundaries between filler, spaces and the pad field. The
    // query string is part of the report, so aim a little wide.
    sizes.extend(natural..natural + 40);
    for size in sizes {
        let a = get(&client, &format!("http://{http}/sized?size={size}"), &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body.len(), size, "size={size}");
        assert_eq!(a.headers["content-length"], size.to_string());
        match a.headers["content-type"].to_str().expect("ascii") {
            "application/json" => {
                let j = a.json();
                assert_eq!(j["path"], format!("/sized?size={size}"));
            }
            "text/plain" => assert!(a.body.iter().all(|b| *b == b'x'), "size={size}"),
            other => panic!("unexpected content-type {other}"),
        }
    }
    let big = get(&client, &format!("http://{http}/sized?size=4096"), &[]).await;
    assert_eq!(big.headers["content-type"], "application/json");
    assert!(
        big.json()["pad"]
            .as_str()
            .expect("pad")
            .bytes()
            .all(|b| b == b'x')
    );
    let tiny = get(&client, &format!("http://{http}/sized?size=10"), &[]).await;
    assert_eq!(tiny.headers["content-type"], "text/plain");
    assert_eq!(tiny.body, "xxxxxxxxxx");
}

#[tokio::test]
async fn call_embeds_the_upstream_answer_and_forwards_trace_headers() {
    let (front, _) = start("productpage", "v1", "pp-1").await;
    let (back, _) = start("reviews", "v3", "rv-1").await;
    // A port that hangs up on every connection.
    let hangup = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let closed = hangup.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = hangup.accept().await {
            drop(stream);
        }
    });
    let upstream = format!("http://{back}/reviews/1?q=2");
    let encoded: String = form_urlencoded_encode(&upstream);
    let url =
        format!("http://{front}/call?url={encoded}&url=http://{closed}/&url=http://{back}/healthz");
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let a = get(
        &h1_client(),
        &url,
        &[
            ("x-request-id", "req-42"),
            ("traceparent", traceparent),
            ("x-canary", "true"),
            ("x-not-forwarded", "1"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let j = a.json();
    assert_eq!(j["service"], "productpage");
    let calls = j["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 3);

    let first = &calls[0];
    assert_eq!(first["url"], upstream);
    assert_eq!(first["status"], 200);
    assert!(first.get("error").is_none());
    let body = &first["body"];
    assert_eq!(body["service"], "reviews");
    assert_eq!(body["version"], "v3");
    assert_eq!(body["path"], "/reviews/1?q=2");
    assert_eq!(body["host"], back.to_string());
    assert_eq!(body["headers"]["x-request-id"], "req-42");
    assert_eq!(body["headers"]["traceparent"], traceparent);
    assert_eq!(body["headers"]["x-canary"], "true");
    assert!(body["headers"].get("x-not-forwarded").is_none());

    let second = &calls[1];
    assert!(second["status"].is_null());
    assert!(
        second["error"]
            .as_str()
            .expect("error")
            .contains("request failed")
    );

    assert_eq!(calls[2]["status"], 200);
    assert_eq!(calls[2]["body"], "ok");

    // Own status still shaped by status=.
    let a = get(
        &h2_client(),
        &format!("http://{front}/call?url=http://{back}/&status=502"),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.json()["calls"][0]["status"], 200);
}

fn form_urlencoded_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn tcp_echo_round_trip() {
    let (_, tcp) = start("db", "v7", "db-0").await;
    let mut stream = TcpStream::connect(tcp).await.expect("connect");
    stream.write_all(b"ping\n").await.expect("write");
    let want = b"hello from db v7 db-0\nping\n";
    let mut got = vec![0u8; want.len()];
    timeout(WAIT, stream.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, want);

    stream
        .write_all(b"more bytes \x00\xff")
        .await
        .expect("write");
    stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(rest, b"more bytes \x00\xff");
}

#[tokio::test]
async fn garbage_gets_400_or_close_and_the_server_keeps_serving() {
    let (http, _) = start("echo", "v1", "p").await;
    for garbage in [
        &b"GARBAGE\x01\x02 NOT HTTP\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let mut stream = TcpStream::connect(http).await.expect("connect");
        stream.write_all(garbage).await.expect("write");
        let mut answer = Vec::new();
        // The server must answer and/or close; a reset also counts as closed.
        let _ = timeout(WAIT, stream.read_to_end(&mut answer))
            .await
            .expect("server closes the connection in time");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || text.starts_with("HTTP/1.1 4"),
            "unexpected answer to {garbage:?}: {text}"
        );
    }
    let a = get(&h1_client(), &format!("http://{http}/after"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["path"], "/after");
    let a = get(&h2_client(), &format!("http://{http}/after"), &[]).await;
    assert_eq!(a.json()["proto"], "HTTP/2.0");
}

type GrpcClient = tonic::client::Grpc<Client<HttpConnector, tonic::body::Body>>;

fn grpc_client(addr: SocketAddr) -> GrpcClient {
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin = format!("http://{addr}").parse().expect("origin");
    tonic::client::Grpc::with_origin(h2, origin)
}

async fn grpc_echo(
    client: &mut GrpcClient,
    path: &'static str,
    message: &str,
) -> Result<tonic::Response<echo::grpc::EchoResponse>, tonic::Status> {
    timeout(WAIT, client.ready())
        .await
        .expect("in time")
        .expect("ready");
    let mut request = tonic::Request::new(echo::grpc::EchoRequest {
        message: message.into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "grpc-1".parse().expect("ascii"));
    let codec =
        tonic_prost::ProstCodec::<echo::grpc::EchoRequest, echo::grpc::EchoResponse>::default();
    timeout(
        WAIT,
        client.unary(request, http::uri::PathAndQuery::from_static(path), codec),
    )
    .await
    .expect("in time")
}

#[tokio::test]
async fn grpc_unary_echo_on_the_http_port() {
    let (http, _) = start("ratings", "v4", "ratings-0").await;
    let mut client = grpc_client(http);

    let response = grpc_echo(&mut client, echo::grpc::ECHO_PATH, "hi there")
        .await
        .expect("Echo succeeds");
    assert_eq!(
        response.metadata().get("x-echo-version").expect("header"),
        "v4"
    );
    let r = response.into_inner();
    assert_eq!(r.message, "hi there");
    assert_eq!(r.service, "ratings");
    assert_eq!(r.version, "v4");
    assert_eq!(r.pod, "ratings-0");
    assert_eq!(r.namespace, "test-ns");
    assert_eq!(r.metadata["x-request-id"], "grpc-1");
    assert_eq!(r.host, http.to_string());
    assert_eq!(r.local, http.to_string());
    assert!(r.peer.starts_with("127.0.0.1:"));

    let err = grpc_echo(&mut client, "/halyard.echo.v1.EchoService/Nope", "x")
        .await
        .expect_err("unknown method");
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    // Plain HTTP keeps working on the same port.
    let a = get(&h2_client(), &format!("http://{http}/plain"), &[]).await;
    assert_eq!(a.json()["service"], "ratings");
}
