//! Test helpers: tiny hyper backends on ephemeral ports that say who they are,
//! a TCP echo server, and HTTP/1.1 and h2c clients.
#![allow(dead_code)]

pub mod envoy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend: answers every request with its name as the body and echoes
/// what it saw in `x-seen-*` headers.
pub struct Backend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
}

pub async fn backend(name: &'static str) -> Backend {
    backend_at(name, "127.0.0.1:0").await
}

pub async fn backend_at(name: &'static str, bind: &str) -> Backend {
    let l = TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    r.fetch_add(1, Ordering::SeqCst);
                    async move { Ok::<_, Infallible>(answer(name, req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Backend {
        addr,
        connections,
        requests,
    }
}

fn answer(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_string())
        })
        .unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(name.to_string())));
    let h = resp.headers_mut();
    h.insert("x-backend", name.parse().unwrap());
    h.insert("x-seen-host", host.parse().unwrap());
    let path = req.uri().path_and_query().unwrap().as_str();
    h.insert("x-seen-path", path.parse().unwrap());
    h.insert(
        "x-seen-version",
        format!("{:?}", req.version()).parse().unwrap(),
    );
    if let Some(id) = req.headers().get("x-request-id") {
        h.insert("x-seen-request-id", id.clone());
    }
    if let Some(v) = req.headers().get("x-forwarded-client-cert") {
        h.insert("x-seen-xfcc", v.clone());
    }
    if let Some(v) = req.headers().get("x-envoy-original-path") {
        h.insert("x-seen-original-path", v.clone());
    }
    resp
}

/// A TCP server that echoes what it reads.
pub async fn tcp_echo() -> SocketAddr {
    tcp_echo_at("127.0.0.1:0").await
}

pub async fn tcp_echo_at(bind: &str) -> SocketAddr {
    let l = TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The answer to one request.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// One HTTP/1.1 keep-alive connection to the proxy.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        H1::over(TcpStream::connect(addr).await.unwrap()).await
    }

    pub async fn over(s: TcpStream) -> H1 {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        H1 { sender }
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut b = Request::get(path).header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.sender.ready().await.unwrap();
        let resp = self
            .sender
            .send_request(b.body(Empty::new()).unwrap())
            .await
            .unwrap();
        reply(resp).await
    }
}

/// One GET on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    H1::connect(addr).await.get(host, path, headers).await
}

/// One GET over h2c (prior knowledge) on a fresh connection.
pub async fn get_h2(addr: SocketAddr, authority: &str, path: &str) -> Reply {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{authority}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    reply(resp).await
}

async fn reply(resp: Response<Incoming>) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// GET an admin path; (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = get(addr, "admin", path, &[]).await;
    (r.status, r.body)
}

/// A backend that accepts WebSocket-style upgrades (101) and then echoes bytes.
pub async fn upgrade_echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|mut req: Request<Incoming>| async move {
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on_upgrade.await {
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                    let resp = Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", "websocket")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// A server that accepts connections and reads requests but never answers.
pub async fn silent_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A static bootstrap: listener `http` on 127.0.0.1:0 with one HCM
/// (`stat_prefix`, the fault filter then the router) whose inline routes are
/// `virtual_hosts` (YAML list, indented from column 0), and a STATIC
/// cluster per (name, address).
pub fn http_bootstrap(
    stat_prefix: &str,
    virtual_hosts: &str,
    clusters: &[(&str, SocketAddr)],
) -> String {
    let vhosts: String = virtual_hosts
        .lines()
        .map(|l| format!("            {l}\n"))
        .collect();
    let clusters: String = clusters
        .iter()
        .map(|(name, addr)| {
            format!(
                "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]}}\n",
                addr.ip(),
                addr.port()
            )
        })
        .collect();
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
          stat_prefix: {stat_prefix}
          http_filters:
          - {{name: envoy.filters.http.fault, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}}}}
          - {{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
          route_config:
            name: local
            virtual_hosts:
{vhosts}  clusters:
{clusters}"#
    )
}

/// Start a proxy from a static bootstrap (YAML), without a readiness port.
pub async fn start_static(yaml: &str) -> proxy::Proxy {
    proxy::Proxy::start(
        xds::json::from_yaml(yaml).expect("bootstrap parses"),
        &proxy::ProxyOptions {
            ready_port: None,
            ..proxy::ProxyOptions::default()
        },
    )
    .await
    .expect("proxy starts")
}
