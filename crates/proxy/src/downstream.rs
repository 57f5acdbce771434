//! The downstream side as every layer sees it (a leaf module: the listener,
//! the config store, the HTTP connection manager, tcp_proxy and the stream
//! record all use it, and none of them imports another for it): the accepted
//! connection's facts, and how a listening socket is made.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpStream;

use crate::tls::PeerTls;

/// Facts about an accepted downstream connection that the filters use.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub peer: SocketAddr,
    /// The address the client connected to (original destination if restored).
    pub destination: SocketAddr,
    /// Set when the original_dst filter restored a destination.
    pub original_dst: Option<SocketAddr>,
    /// Set when the filter chain terminated TLS.
    pub tls: Option<Arc<PeerTls>>,
    /// The listener's `traffic_direction` (Istio's metrics read it: INBOUND
    /// reports as the destination, OUTBOUND as the source).
    pub direction: TrafficDirection,
}

/// A listener's `traffic_direction`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TrafficDirection {
    #[default]
    Unspecified,
    Inbound,
    Outbound,
}

impl TrafficDirection {
    /// From Envoy's enum value (1 INBOUND, 2 OUTBOUND).
    pub fn from_xds(v: i32) -> Self {
        match v {
            1 => TrafficDirection::Inbound,
            2 => TrafficDirection::Outbound,
            _ => TrafficDirection::Unspecified,
        }
    }
}

/// An accepted connection as the network filters read it: the socket, or
/// the plaintext inside the TLS the filter chain terminated.
#[derive(Debug)]
pub enum DownstreamStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

crate::io_enum::forward_io!(DownstreamStream { Tcp, Tls });

/// [`bind`] without a runtime: the socket is listening (so the port is
/// taken and connections queue) and non-blocking.
pub fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(true);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
