//! Istio's app-health port (15020): when the injector rewrote a pod's
//! probes, the kubelet asks `/app-health/CONTAINER/{readyz,livez,startupz}`
//! here and the sidecar runs the original probe (from `ISTIO_KUBE_APP_PROBERS`)
//! against the app from inside the pod: 200 when it passes, 500 with the
//! reason when not. Connections leave from 127.0.0.6, which capture never
//! redirects, to the pod IP (`INSTANCE_IP`) unless the probe names a host.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use probe::AppProbers;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The source address of probe connections (Envoy's inbound passthrough one).
const PROBE_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// The probes and where the app is.
#[derive(Debug)]
pub struct AppHealth {
    probers: AppProbers,
    app_host: IpAddr,
}

impl AppHealth {
    /// From the environment Istio's injector gives the sidecar; None when
    /// there are no rewritten probes.
    pub fn from_env() -> Result<Option<AppHealth>, String> {
        let Ok(json) = std::env::var(probe::APP_PROBERS_ENV) else {
            return Ok(None);
        };
        let probers: AppProbers =
            serde_json::from_str(&json).map_err(|e| format!("{}: {e}", probe::APP_PROBERS_ENV))?;
        let app_host = std::env::var("INSTANCE_IP")
            .ok()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        Ok(Some(AppHealth { probers, app_host }))
    }

    pub fn new(probers: AppProbers, app_host: IpAddr) -> AppHealth {
        AppHealth { probers, app_host }
    }

    /// Run the probe behind `path`: Ok, Err(reason), or None for an unknown path.
    pub async fn probe(&self, path: &str) -> Option<Result<(), String>> {
        let prober = self.probers.get(path)?;
        let check = match prober.check(self.app_host) {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let timeout = Duration::from_secs(prober.timeout_seconds.max(1).into());
        let run = check.run(connect);
        Some(match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(format!("timeout after {}s", timeout.as_secs())),
        })
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    if addr.ip().is_loopback() || !addr.is_ipv4() {
        return TcpStream::connect(addr).await;
    }
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((PROBE_SOURCE, 0)))?;
    socket.connect(addr).await
}

/// Serve `/app-health/...` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<AppHealth>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let health = health.clone();
                async move {
                    let resp = match health.probe(req.uri().path()).await {
                        Some(Ok(())) => reply(StatusCode::OK, String::new()),
                        Some(Err(e)) => reply(StatusCode::INTERNAL_SERVER_ERROR, e),
                        None => reply(StatusCode::NOT_FOUND, "no such probe".into()),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_the_original_probe_against_the_app() {
        let app = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = app.local_addr().expect("addr").port();
        let probers: AppProbers = serde_json::from_str(&format!(
            r#"{{"/app-health/web/livez": {{"tcpSocket": {{"port": {port}}}, "timeoutSeconds": 1}},
                "/app-health/web/readyz": {{"httpGet": {{"path": "/", "port": 1, "scheme": "HTTP"}}, "timeoutSeconds": 1}}}}"#
        ))
        .expect("json");
        let health = AppHealth::new(probers, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(health.probe("/app-health/web/livez").await, Some(Ok(())));
        let ready = health.probe("/app-health/web/readyz").await;
        assert!(
            matches!(&ready, Some(Err(e)) if e.contains("dial tcp")),
            "{ready:?}"
        );
        assert_eq!(health.probe("/app-health/other/livez").await, None);
        drop(app);
    }
}
