//! Opening a TCP connection to an upstream host, bounded by the cluster's
//! connect_timeout, with the cluster's connection stats kept.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::stats::ClusterStats;

/// Connect to `addr` within `timeout`; counts `upstream_cx_total` and
/// `upstream_cx_connect_fail`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    stats: &ClusterStats,
) -> io::Result<TcpStream> {
    stats.upstream_cx_total.inc();
    let result = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
    };
    match result {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Err(e) => {
            stats.upstream_cx_connect_fail.inc();
            Err(e)
        }
    }
}
