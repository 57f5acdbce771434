//! The downstream side as every layer sees it (a leaf module: the listener,
//! the config store, the HTTP connection manager, tcp_proxy and the stream
//! record all use it, and none of them imports another for it): the accepted
//! connection's facts, and how a listening socket is made.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
}

/// An accepted connection as the network filters read it: the socket, or
/// the plaintext inside the TLS the filter chain terminated.
#[derive(Debug)]
pub enum DownstreamStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for DownstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DownstreamStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            DownstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DownstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DownstreamStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            DownstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DownstreamStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            DownstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DownstreamStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            DownstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DownstreamStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            DownstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            DownstreamStream::Tcp(s) => s.is_write_vectored(),
            DownstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }
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
