//! The downstream side as every layer sees it (a leaf module: the listener,
//! the config store, the HTTP connection manager, tcp_proxy and the stream
//! record all use it, and none of them imports another for it): the accepted
//! connection's facts, and how a listening socket is made.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Facts about an accepted downstream connection that the filters use.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    pub peer: SocketAddr,
    /// The address the client connected to (original destination if restored).
    pub destination: SocketAddr,
    /// Set when the original_dst filter restored a destination.
    pub original_dst: Option<SocketAddr>,
}

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
