//! Opening a connection to an upstream host (TCP, or a Unix domain socket
//! for a pipe address), bounded by the cluster's connect_timeout, with the
//! cluster's connection stats kept.

use std::io;
use std::time::Duration;

use crate::config::transport::TransportSocket;
use crate::stats::ClusterStats;
use crate::upstream::address::UpstreamStream;
use crate::upstream::host::Host;

/// Connect to `host` over its transport socket within `timeout`; counts
/// `upstream_cx_total` and `upstream_cx_connect_fail`.
pub async fn connect(
    host: &Host,
    timeout: Duration,
    stats: &ClusterStats,
) -> io::Result<UpstreamStream> {
    stats.upstream_cx_total.inc();
    let started = tokio::time::Instant::now();
    let open = async {
        match host.transport {
            TransportSocket::RawBuffer => UpstreamStream::connect(&host.addr).await,
        }
    };
    let result = match tokio::time::timeout(timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
    };
    match &result {
        Ok(_) => stats.upstream_cx_connect_ms.record(started.elapsed()),
        Err(_) => stats.upstream_cx_connect_fail.inc(),
    }
    result
}
