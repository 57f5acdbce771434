//! `envoy.filters.network.http_connection_manager`: serve one downstream
//! connection as HTTP/1.1 or h2c (codec_type AUTO picks by the preface), with
//! upgrades, handing every request to the router.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

use crate::config::listener::{Codec, HttpConnectionManager};
use crate::config::store::ConfigStore;
use crate::downstream::{Downstream, DownstreamStream};
use crate::stats::HttpStats;

use super::router;

/// What every request on one downstream connection shares.
#[derive(Debug)]
pub struct HttpContext {
    pub hcm: Arc<HttpConnectionManager>,
    pub store: Arc<ConfigStore>,
    pub downstream: Downstream,
    pub stats: HttpStats,
}

pub async fn serve(
    stream: DownstreamStream,
    downstream: Downstream,
    hcm: Arc<HttpConnectionManager>,
    store: Arc<ConfigStore>,
    mut drain: watch::Receiver<bool>,
) {
    let stats = hcm.stats(&store.stats).clone();
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let codec = hcm.codec;
    let ctx = Arc::new(HttpContext {
        hcm,
        store,
        downstream,
        stats: stats.clone(),
    });
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(router::handle(req, &ctx).await) }
    });
    let io = TokioIo::new(stream);
    // Serve until done; when the listener drains, finish in-flight requests
    // and close (HTTP/1.1: `connection: close`; h2: GOAWAY).
    macro_rules! serve_draining {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r.map_err(|e| e.to_string()),
                () = drained(&mut drain) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await.map_err(|e| e.to_string())
                }
            }
        }};
    }
    let result = match codec {
        Codec::Auto => {
            let builder = auto::Builder::new(TokioExecutor::new());
            serve_draining!(builder.serve_connection_with_upgrades(io, svc))
        }
        Codec::Http1 => serve_draining!(
            http1::Builder::new()
                .serve_connection(io, svc)
                .with_upgrades()
        ),
        Codec::Http2 => {
            serve_draining!(http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc))
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream connection ended with error");
    }
    stats.downstream_cx_active.dec();
}

/// Resolves when the listener drains (or its config is gone).
async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}
