//! `envoy.filters.network.tcp_proxy`: pick a cluster (weighted), pick a host,
//! connect within connect_timeout (within the cluster's max_connections; the
//! connect result goes to outlier detection), then copy bytes both ways until
//! either side closes.

use std::sync::Arc;

use crate::config::listener::TcpProxy;
use crate::config::store::ConfigStore;
use crate::downstream::{Downstream, DownstreamStream};
use crate::upstream::circuit::Resource;
use crate::upstream::connect::connect;
use crate::upstream::host::ActiveRequest;
use crate::upstream::lb::random;
use crate::upstream::outlier::Outcome;
use crate::upstream::pool::ConnectionGuard;

pub async fn proxy(
    mut downstream: DownstreamStream,
    conn: Downstream,
    config: Arc<TcpProxy>,
    store: Arc<ConfigStore>,
) {
    let stats = config.stats(&store.stats);
    stats.downstream_cx_total.inc();
    let cluster_name = config.clusters.pick(random());
    let Some(cluster) = store.load().clusters.get(cluster_name).cloned() else {
        tracing::debug!(cluster = cluster_name, "tcp_proxy: no such cluster");
        stats.downstream_cx_no_route.inc();
        return;
    };
    let Some(host) = cluster.pick(conn.original_dst) else {
        cluster.stats.upstream_cx_none_healthy.inc();
        tracing::debug!(
            cluster = cluster_name,
            "tcp_proxy: no healthy upstream (UH)"
        );
        return;
    };
    // max_connections: over it, the downstream is closed (UO).
    let Some(permit) = cluster.breakers.try_acquire(Resource::Connection) else {
        cluster.stats.upstream_cx_overflow.inc();
        tracing::debug!(
            cluster = cluster_name,
            "tcp_proxy: max_connections reached (UO)"
        );
        return;
    };
    host.cx_total.inc();
    let dial = crate::upstream::pool::Dial {
        timeout: cluster.config.connect_timeout,
        stats: &cluster.stats,
        secrets: &store.secrets,
        sni: None,
        verify_sni: false,
        breakers: &cluster.breakers,
        pool: &cluster.config.pool,
    };
    let mut upstream = match connect(&host, &dial).await {
        Ok(s) => s,
        Err(e) => {
            host.cx_connect_fail.inc();
            let outcome = if e.kind() == std::io::ErrorKind::TimedOut {
                Outcome::LocalOriginTimeout
            } else {
                Outcome::LocalOriginConnectFailed
            };
            cluster.report(&host, outcome);
            tracing::debug!(cluster = cluster_name, host = %host.addr, error = %e, "tcp_proxy: connect failed (UF)");
            return;
        }
    };
    cluster.report(&host, Outcome::LocalOriginConnectSuccessFinal);
    let _cx = ConnectionGuard::new(&host, &cluster.stats, Some(permit));
    let _active = ActiveRequest::new(host.clone(), cluster.stats.upstream_rq_active.clone());
    let istio = store
        .istio_metrics
        .get()
        .and_then(|m| m.tcp(&conn, cluster_name));
    if let Some(s) = &istio {
        s.opened.inc();
    }
    let copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    if let Some(s) = istio {
        // (from the downstream, to the downstream)
        if let Ok((received, sent)) = copied {
            s.received.add(received as i64);
            s.sent.add(sent as i64);
        }
        s.closed.inc();
    }
}
