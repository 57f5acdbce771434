//! Opening a connection to an upstream host (TCP, or a Unix domain socket
//! for a pipe address) and running its transport socket (a TLS handshake),
//! all bounded by the cluster's connect_timeout, with the cluster's
//! connection stats kept and its TCP keepalive set.

use std::io;

use crate::config::transport::TransportSocket;
use crate::upstream::address::{UpstreamAddr, UpstreamStream};
use crate::upstream::host::Host;
use crate::upstream::pool::Dial;

/// Connect to `host` over its transport socket within the dial's timeout;
/// counts `upstream_cx_total` and `upstream_cx_connect_fail`.
pub async fn connect(host: &Host, dial: &Dial<'_>) -> io::Result<UpstreamStream> {
    let (timeout, stats) = (dial.timeout, dial.stats);
    stats.upstream_cx_total.inc();
    let started = tokio::time::Instant::now();
    let open = async {
        match &host.transport {
            TransportSocket::RawBuffer => {
                let stream = UpstreamStream::connect(&host.addr).await?;
                if let UpstreamStream::Tcp(tcp) = &stream {
                    keepalive(tcp, dial)?;
                }
                Ok(stream)
            }
            TransportSocket::Tls(tls) => {
                let UpstreamAddr::Ip(ip) = &host.addr else {
                    return Err(io::Error::other("TLS to a pipe address is not supported"));
                };
                let config = tls
                    .client_config(dial.secrets, dial.verify_sni && dial.sni.is_some())
                    .map_err(io::Error::other)?;
                let UpstreamStream::Tcp(tcp) = UpstreamStream::connect(&host.addr).await? else {
                    unreachable!("an IP address connects over TCP");
                };
                keepalive(&tcp, dial)?;
                let connector = tokio_rustls::TlsConnector::from(config);
                let stream = connector
                    .connect(tls.server_name(dial.sni, ip.ip()), tcp)
                    .await
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("TLS handshake: {e}"),
                        )
                    })?;
                Ok(UpstreamStream::Tls(Box::new(stream)))
            }
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

/// The cluster's `upstream_connection_options.tcp_keepalive`, if any.
fn keepalive(tcp: &tokio::net::TcpStream, dial: &Dial<'_>) -> io::Result<()> {
    match &dial.pool.tcp_keepalive {
        Some(k) => k.apply(socket2::SockRef::from(tcp)),
        None => Ok(()),
    }
}
