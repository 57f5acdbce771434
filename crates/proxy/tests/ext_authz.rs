//! ext_authz in Istio's CUSTOM shape (a shadow RBAC filter with the
//! `istio_ext_authz_` prefix gates the ext_authz filter through dynamic
//! metadata), gRPC service mode, against a small authorizer of our own on
//! loopback, differential against stock Envoy: allowed requests get the
//! authorizer's header changes, denials its status, body and headers (or a
//! bare 403), a slow authorizer `status_on_error`, ungated paths skip the
//! check; on a TCP chain the network filter closes refused connections.

mod common;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::rpc::Status;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Authorizer;

fn header(k: &str, v: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for Authorizer {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attrs = req.into_inner().attributes.unwrap_or_default();
        let source = attrs
            .source
            .and_then(|s| s.address)
            .map(|a| format!("{a:?}"))
            .unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http);
        let Some(http) = http else {
            // Network check: 127.0.0.2 is refused.
            let code = if source.contains("\"127.0.0.2\"") {
                7
            } else {
                0
            };
            return Ok(tonic::Response::new(CheckResponse {
                status: Some(Status {
                    code,
                    ..Default::default()
                }),
                ..Default::default()
            }));
        };
        let path = http.path.clone();
        let denied = |resp| CheckResponse {
            status: Some(Status {
                code: 7,
                ..Default::default()
            }),
            http_response: resp,
            ..Default::default()
        };
        let resp = if path.starts_with("/deny-default") {
            denied(None)
        } else if path.starts_with("/deny") {
            denied(Some(check_response::HttpResponse::DeniedResponse(
                DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: StatusCode::Unauthorized as i32,
                    }),
                    headers: vec![header("x-authz", "denied")],
                    body: format!("denied {}", http.method),
                },
            )))
        } else if path.starts_with("/slow") {
            tokio::time::sleep(Duration::from_secs(2)).await;
            denied(None)
        } else {
            CheckResponse {
                status: Some(Status::default()),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![
                        header("x-authz-ok", "yes"),
                        header("x-authz-host", &http.host),
                        header("x-authz-method", &http.method),
                    ],
                    headers_to_remove: vec!["x-remove-me".into()],
                    ..Default::default()
                })),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(resp))
    }
}

async fn authorizer() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Authorizer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

/// Answers with the request headers it got (minus the ones each proxy
/// makes up), sorted.
async fn header_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut lines: Vec<String> = req
                        .headers()
                        .iter()
                        .filter(|(k, _)| {
                            let k = k.as_str();
                            !k.starts_with("x-envoy-")
                                && !k.starts_with("x-forwarded-")
                                && k != "x-request-id"
                                // Envoy adds `content-length: 0` to a bodiless
                                // POST; the router, not ext_authz.
                                && k != "content-length"
                        })
                        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                        .collect();
                    lines.sort();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(lines.join("\n")))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NET_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const AUTHZ: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const NET_AUTHZ: &str =
    "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";

fn cluster(name: &str, a: SocketAddr, h2: bool) -> String {
    let h2 = if h2 {
        "    typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}\n"
    } else {
        ""
    };
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{h2}    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]}}\n",
        a.ip(),
        a.port()
    )
}

fn bootstrap(app: SocketAddr, echo: SocketAddr, authz: SocketAddr) -> String {
    let gate = |filter: &str| {
        format!(
            "filter_enabled_metadata: {{filter: {filter}, path: [{{key: istio_ext_authz_shadow_effective_policy_id}}], value: {{string_match: {{prefix: istio-ext-authz}}}}}}"
        )
    };
    let grpc = "grpc_service: {envoy_grpc: {cluster_name: authz, authority: authz.example}, timeout: 0.3s}, transport_api_version: V3";
    let shadow = format!(
        r#"{{name: envoy.filters.http.rbac, typed_config: {{"@type": {RBAC}, shadow_rules_stat_prefix: istio_ext_authz_, shadow_rules: {{policies: {{"istio-ext-authz-ns[foo]-policy[p]-rule[0]": {{permissions: [{{not_rule: {{url_path: {{path: {{prefix: /skip}}}}}}}}], principals: [{{any: true}}]}}}}}}}}}}"#
    );
    let authz_filter = format!(
        r#"{{name: envoy.filters.http.ext_authz, typed_config: {{"@type": {AUTHZ}, {grpc}, status_on_error: {{code: ServiceUnavailable}}, {}}}}}"#,
        gate("envoy.filters.http.rbac")
    );
    let net_shadow = format!(
        r#"{{name: envoy.filters.network.rbac, typed_config: {{"@type": {NET_RBAC}, stat_prefix: tcp., shadow_rules_stat_prefix: istio_ext_authz_, shadow_rules: {{policies: {{"istio-ext-authz-ns[foo]-policy[t]-rule[0]": {{permissions: [{{any: true}}], principals: [{{any: true}}]}}}}}}}}}}"#
    );
    let net_authz = format!(
        r#"{{name: envoy.filters.network.ext_authz, typed_config: {{"@type": {NET_AUTHZ}, stat_prefix: tcp., {grpc}, {}}}}}"#,
        gate("envoy.filters.network.rbac")
    );
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: authz_test
          http_filters:
          - {shadow}
          - {authz_filter}
          - {{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
          route_config:
            name: local
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: app}}}}]}}]
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - {net_shadow}
      - {net_authz}
      - {{name: envoy.filters.network.tcp_proxy, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: echo, cluster: echo}}}}
  clusters:
{}{}{}"#,
        cluster("app", app, false),
        cluster("echo", echo, false),
        cluster("authz", authz, true)
    )
}

/// Status, the authorizer's header on a denial, body.
type Seen = (u16, String, String);

async fn send(to: SocketAddr, method: &str, path: &str) -> Seen {
    let s = tokio::net::TcpStream::connect(to).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "svc")
        .header("x-remove-me", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let authz = resp
        .headers()
        .get("x-authz")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, authz, String::from_utf8_lossy(&body).into_owned())
}

async fn tcp_echoes(to: SocketAddr, from: &str) -> bool {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let Ok(mut s) = sock.connect(to).await else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

async fn matrix(http: SocketAddr, tcp: SocketAddr) -> (Vec<(String, Seen)>, Vec<(String, bool)>) {
    let mut out = Vec::new();
    for (method, path) in [
        ("GET", "/ok"),
        ("POST", "/ok?x=1"),
        ("GET", "/deny"),
        ("DELETE", "/deny/x"),
        ("GET", "/deny-default"),
        ("GET", "/skip/deny"),
        ("GET", "/slow"),
    ] {
        out.push((format!("{method} {path}"), send(http, method, path).await));
    }
    let mut tcp_out = Vec::new();
    for from in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        tcp_out.push((from.to_string(), tcp_echoes(tcp, from).await));
    }
    (out, tcp_out)
}

fn authz_stats(body: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = body
        .lines()
        .filter(|l| l.starts_with("http.authz_test.ext_authz."))
        .filter(|l| {
            ["ok", "denied", "error", "disabled", "failure_mode_allowed"]
                .iter()
                .any(|n| l.starts_with(&format!("http.authz_test.ext_authz.{n}:")))
        })
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn ext_authz_custom_matches_envoy() {
    let (app, echo, authz) = (header_echo().await, tcp_echo().await, authorizer().await);
    let yaml = bootstrap(app, echo, authz);
    let proxy = start_static(&yaml).await;
    let ours = matrix(
        proxy.listener_addr("http").unwrap(),
        proxy.listener_addr("tcp").unwrap(),
    )
    .await;
    let find = |k: &str| ours.0.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let ok = find("GET /ok");
    assert_eq!(ok.0, 200);
    assert!(
        ok.2.contains("x-authz-ok: yes") && !ok.2.contains("x-remove-me"),
        "{ok:?}"
    );
    assert_eq!(
        find("GET /deny"),
        (401, "denied".into(), "denied GET".into())
    );
    assert_eq!(find("GET /deny-default").0, 403);
    assert_eq!(find("GET /skip/deny").0, 200, "ungated: no check");
    assert_eq!(find("GET /slow").0, 503, "status_on_error");
    assert_eq!(
        ours.1,
        vec![
            ("127.0.0.1".to_string(), true),
            ("127.0.0.2".to_string(), false),
            ("127.0.0.3".to_string(), true)
        ]
    );
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    let our_stats = authz_stats(&stats);
    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: differential half skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    let theirs = matrix(
        e.listener(Some("http")).await,
        e.listener(Some("tcp")).await,
    )
    .await;
    assert_eq!(ours, theirs);
    let (_, envoy_stats) = admin_get(e.admin, "/stats").await;
    assert_eq!(our_stats, authz_stats(&envoy_stats));
    eprintln!("stats {our_stats:?}");
    for l in envoy_stats
        .lines()
        .filter(|l| l.contains("ext_authz") && !l.starts_with("http."))
    {
        eprintln!("ENVOY {l}");
    }
    for l in stats
        .lines()
        .filter(|l| l.contains("ext_authz") && !l.starts_with("http."))
    {
        eprintln!("OURS {l}");
    }
}
