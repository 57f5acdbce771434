//! Opening a connection to an upstream host (TCP, or a Unix domain socket
//! for a pipe address), bounded by the cluster's connect_timeout, with the
//! cluster's connection stats kept.

use std::io;
use std::time::Duration;

use crate::stats::ClusterStats;
use crate::upstream::address::{UpstreamAddr, UpstreamStream};

/// Connect to `addr` within `timeout`; counts `upstream_cx_total` and
/// `upstream_cx_connect_fail`.
pub async fn connect(
    addr: &UpstreamAddr,
    timeout: Duration,
    stats: &ClusterStats,
) -> io::Result<UpstreamStream> {
    stats.upstream_cx_total.inc();
    let result = match tokio::time::timeout(timeout, UpstreamStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
    };
    if result.is_err() {
        stats.upstream_cx_connect_fail.inc();
    }
    result
}
