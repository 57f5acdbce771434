//! Container probes as the kubelet runs them: `httpGet` (200-399 is
//! success), `tcpSocket` (a connection opens) and `grpc`
//! (grpc.health.v1.Health/Check answers SERVING), over a TCP connection the
//! caller opens (from a pod's network namespace, or from the sidecar). Also
//! the `ISTIO_KUBE_APP_PROBERS` document Istio's injector hands the sidecar
//! when it rewrites probes to `:15020/app-health/CONTAINER/{readyz,livez,startupz}`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use api::kube::{ContainerPort, GrpcAction, HttpGetAction, IntOrString, Probe, TcpSocketAction};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// The sidecar's probe port and path prefix (Istio's).
pub const APP_HEALTH_PORT: u16 = 15020;
pub const APP_HEALTH_PREFIX: &str = "/app-health/";
/// The env var carrying the original probes to the sidecar (Istio's name).
pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";
/// What the kubelet sends as User-Agent.
const USER_AGENT: &str = "kube-probe/1.33";

/// Which of a container's probes: also the last path segment of its
/// rewritten `/app-health/CONTAINER/...` path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Startup => "startupz",
            Kind::Liveness => "livez",
            Kind::Readiness => "readyz",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }

    /// `/app-health/CONTAINER/readyz` and so on.
    pub fn app_health_path(self, container: &str) -> String {
        format!("{APP_HEALTH_PREFIX}{container}/{}", self.segment())
    }
}

/// A network probe with its address resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    Http {
        addr: SocketAddr,
        path: String,
        https: bool,
        headers: Vec<(String, String)>,
    },
    Tcp {
        addr: SocketAddr,
    },
    Grpc {
        addr: SocketAddr,
        service: String,
    },
}

impl Check {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Check::Http { addr, .. } | Check::Tcp { addr } | Check::Grpc { addr, .. } => *addr,
        }
    }

    /// The network check of `probe` (None for `exec` or an empty probe);
    /// named ports are looked up in the container's ports, a missing host is
    /// `default_host` (the pod IP, as the kubelet does).
    pub fn of(
        probe: &Probe,
        default_host: IpAddr,
        ports: &[ContainerPort],
    ) -> Result<Option<Check>, String> {
        let host = |h: &Option<String>| -> Result<IpAddr, String> {
            match h.as_deref() {
                None | Some("") => Ok(default_host),
                Some("localhost") => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                Some(h) => h
                    .parse()
                    .map_err(|_| format!("probe host {h:?} is not an IP address")),
            }
        };
        if let Some(HttpGetAction {
            path,
            port,
            host: h,
            scheme,
            http_headers,
        }) = &probe.http_get
        {
            let https = match scheme.as_deref() {
                None | Some("HTTP") => false,
                Some("HTTPS") => true,
                Some(s) => return Err(format!("httpGet scheme {s:?} is neither HTTP nor HTTPS")),
            };
            return Ok(Some(Check::Http {
                addr: SocketAddr::new(host(h)?, resolve_port(port.as_ref(), ports)?),
                path: path.clone().filter(|p| !p.is_empty()).unwrap_or("/".into()),
                https,
                headers: http_headers
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }));
        }
        if let Some(TcpSocketAction { port, host: h }) = &probe.tcp_socket {
            return Ok(Some(Check::Tcp {
                addr: SocketAddr::new(host(h)?, resolve_port(port.as_ref(), ports)?),
            }));
        }
        if let Some(GrpcAction { port, service }) = &probe.grpc {
            let port =
                u16::try_from(*port).map_err(|_| format!("grpc port {port} out of range"))?;
            return Ok(Some(Check::Grpc {
                addr: SocketAddr::new(default_host, port),
                service: service.clone().unwrap_or_default(),
            }));
        }
        Ok(None)
    }

    /// Run the check over a connection from `connect`. The caller bounds it
    /// with the probe's timeout.
    pub async fn run<C, F>(&self, connect: C) -> Result<(), String>
    where
        C: FnOnce(SocketAddr) -> F,
        F: Future<Output = std::io::Result<TcpStream>>,
    {
        let addr = self.addr();
        let stream = connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        match self {
            Check::Tcp { .. } => Ok(()),
            Check::Http { https: true, .. } => Err(format!(
                "HTTPS probes are not supported by this runtime yet ({addr})"
            )),
            Check::Http {
                path,
                headers,
                addr,
                ..
            } => http_get(stream, *addr, path, headers).await,
            Check::Grpc { service, addr } => grpc_health(stream, *addr, service).await,
        }
    }
}

fn resolve_port(port: Option<&IntOrString>, ports: &[ContainerPort]) -> Result<u16, String> {
    let n = match port {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("probe port {name:?} is not a named container port"))?,
        None => return Err("probe has no port".into()),
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("probe port {n} out of range"))
}

async fn http_get(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header(http::header::USER_AGENT, USER_AGENT);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header(http::header::HOST, addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let status = resp.status().as_u16();
    // The kubelet reads (and ignores) up to 10 KiB of body.
    let _ = resp.into_body().collect().await;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

/// grpc.health.v1.Health/Check over h2c. The two messages are one string
/// field (service, 1) and one enum field (status, 1; SERVING = 1).
async fn grpc_health(stream: TcpStream, addr: SocketAddr, service: &str) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("grpc health check {addr}: {e}");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| fail(&e))?;
    tokio::spawn(conn);
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(Full::new(Bytes::from(framed)))
        .map_err(|e| fail(&e))?;
    let resp = send.send_request(req).await.map_err(|e| fail(&e))?;
    if resp.status() != http::StatusCode::OK {
        return Err(fail(&format!("HTTP status {}", resp.status())));
    }
    let collected = resp.into_body().collect().await.map_err(|e| fail(&e))?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string();
    if grpc_status != "0" {
        return Err(fail(&format!("grpc-status {grpc_status}")));
    }
    let body = collected.to_bytes();
    let status = body.get(5..).map(health_status).unwrap_or(0);
    match status {
        1 => Ok(()),
        0 => Err(fail(&"status UNKNOWN")),
        2 => Err(fail(&"status NOT_SERVING")),
        n => Err(fail(&format!("status {n}"))),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field 1 (varint) of a HealthCheckResponse; 0 (UNKNOWN) when absent.
fn health_status(msg: &[u8]) -> u64 {
    let mut i = 0;
    while i < msg.len() {
        let key = msg[i];
        i += 1;
        let mut value = 0u64;
        let mut shift = 0;
        match key & 7 {
            0 => {
                while let Some(b) = msg.get(i) {
                    i += 1;
                    value |= u64::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 || shift > 63 {
                        break;
                    }
                }
                if key >> 3 == 1 {
                    return value;
                }
            }
            2 => {
                let mut len = 0usize;
                while let Some(b) = msg.get(i) {
                    i += 1;
                    len |= usize::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 || shift > 63 {
                        break;
                    }
                }
                i = i.saturating_add(len);
            }
            _ => return 0,
        }
    }
    0
}

/// One entry of `ISTIO_KUBE_APP_PROBERS`: the original probe action (ports
/// resolved to numbers) and its timeout.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AppProber {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcAction>,
    pub timeout_seconds: u32,
}

impl AppProber {
    /// What the injector writes for `probe` of a container with `ports`;
    /// None for probes it leaves alone (`exec`).
    pub fn of(probe: &Probe, ports: &[ContainerPort]) -> Result<Option<AppProber>, String> {
        let resolved = |p: &Option<IntOrString>| -> Result<Option<IntOrString>, String> {
            Ok(Some(IntOrString::Int(u32::from(resolve_port(
                p.as_ref(),
                ports,
            )?))))
        };
        let mut out = AppProber {
            timeout_seconds: probe.timeout_or_default(),
            ..AppProber::default()
        };
        if let Some(get) = &probe.http_get {
            let mut get = get.clone();
            get.port = resolved(&get.port)?;
            get.scheme.get_or_insert_with(|| "HTTP".into());
            out.http_get = Some(get);
        } else if let Some(tcp) = &probe.tcp_socket {
            let mut tcp = tcp.clone();
            tcp.port = resolved(&tcp.port)?;
            out.tcp_socket = Some(tcp);
        } else if let Some(grpc) = &probe.grpc {
            out.grpc = Some(grpc.clone());
        } else {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// The check the sidecar runs, against `app_host` unless the probe names a host.
    pub fn check(&self, app_host: IpAddr) -> Result<Check, String> {
        let probe = Probe {
            http_get: self.http_get.clone(),
            tcp_socket: self.tcp_socket.clone(),
            grpc: self.grpc.clone(),
            ..Probe::default()
        };
        Check::of(&probe, app_host, &[])?.ok_or_else(|| "empty prober".to_string())
    }
}

/// `ISTIO_KUBE_APP_PROBERS`: rewritten path -> original probe.
pub type AppProbers = BTreeMap<String, AppProber>;

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(json: &str) -> Probe {
        serde_json::from_str(json).expect("probe json")
    }

    #[test]
    fn checks_resolve_named_ports_and_default_host() {
        let ports = [ContainerPort {
            container_port: 9080,
            name: Some("http".into()),
            protocol: None,
        }];
        let pod: IpAddr = "10.44.0.12".parse().unwrap();
        let c = Check::of(
            &probe(r#"{"httpGet": {"path": "/ready", "port": "http"}}"#),
            pod,
            &ports,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            c,
            Check::Http {
                addr: "10.44.0.12:9080".parse().unwrap(),
                path: "/ready".into(),
                https: false,
                headers: vec![],
            }
        );
        let e = Check::of(&probe(r#"{"tcpSocket": {"port": "grpc"}}"#), pod, &ports);
        assert!(e.unwrap_err().contains("not a named container port"));
        assert_eq!(
            Check::of(&probe(r#"{"exec": {"command": ["true"]}}"#), pod, &ports),
            Ok(None)
        );
    }

    #[test]
    fn app_probers_json_is_istios_shape() {
        let ports = [ContainerPort {
            container_port: 8001,
            name: Some("web".into()),
            protocol: None,
        }];
        let mut probers = AppProbers::new();
        let p = AppProber::of(
            &probe(r#"{"httpGet": {"path": "/foo", "port": "web"}, "periodSeconds": 5}"#),
            &ports,
        )
        .unwrap()
        .unwrap();
        probers.insert(Kind::Liveness.app_health_path("liveness-http"), p);
        let json = serde_json::to_string(&probers).unwrap();
        assert_eq!(
            json,
            r#"{"/app-health/liveness-http/livez":{"httpGet":{"path":"/foo","port":8001,"scheme":"HTTP"},"timeoutSeconds":1}}"#
        );
        let back: AppProbers = serde_json::from_str(&json).unwrap();
        let check = back["/app-health/liveness-http/livez"]
            .check(Ipv4Addr::LOCALHOST.into())
            .unwrap();
        assert_eq!(check.addr(), "127.0.0.1:8001".parse().unwrap());
    }

    #[test]
    fn health_response_status() {
        assert_eq!(health_status(&[0x08, 0x01]), 1);
        assert_eq!(health_status(&[0x08, 0x02]), 2);
        assert_eq!(health_status(&[]), 0);
        assert_eq!(health_status(&[0x12, 0x01, 0x41, 0x08, 0x01]), 1);
    }

    #[tokio::test]
    async fn http_tcp_and_grpc_against_local_servers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let code = if req.starts_with("GET /ok ") {
                        200
                    } else {
                        503
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let connect = |a: SocketAddr| TcpStream::connect(a);
        let ok = Check::Http {
            addr,
            path: "/ok".into(),
            https: false,
            headers: vec![("X-Probe".into(), "1".into())],
        };
        assert_eq!(ok.run(connect).await, Ok(()));
        let bad = Check::Http {
            addr,
            path: "/bad".into(),
            https: false,
            headers: vec![],
        };
        assert_eq!(
            bad.run(connect).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        assert_eq!(Check::Tcp { addr }.run(connect).await, Ok(()));
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let e = Check::Tcp { addr: closed_addr }
            .run(connect)
            .await
            .unwrap_err();
        assert!(e.starts_with("dial tcp"), "{e}");
    }
}
