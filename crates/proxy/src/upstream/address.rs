//! Where an upstream host lives: a TCP socket address, or a Unix domain
//! socket path (Envoy's `pipe` address, what Istio sends for `unix://`
//! endpoints), and the stream a connection to either gives.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::{TcpStream, UnixStream};

/// An upstream host's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    Ip(SocketAddr),
    Pipe(PathBuf),
}

impl From<SocketAddr> for UpstreamAddr {
    fn from(a: SocketAddr) -> Self {
        UpstreamAddr::Ip(a)
    }
}

impl std::fmt::Display for UpstreamAddr {
    /// `IP:PORT`, or the socket path (as Envoy's `/clusters` shows a pipe).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddr::Ip(a) => write!(f, "{a}"),
            UpstreamAddr::Pipe(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A connected upstream stream.
#[derive(Debug)]
pub enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// Open a connection (TCP_NODELAY on TCP).
    pub async fn connect(addr: &UpstreamAddr) -> io::Result<UpstreamStream> {
        match addr {
            UpstreamAddr::Ip(a) => {
                let s = TcpStream::connect(a).await?;
                let _ = s.set_nodelay(true);
                Ok(UpstreamStream::Tcp(s))
            }
            UpstreamAddr::Pipe(p) => Ok(UpstreamStream::Unix(UnixStream::connect(p).await?)),
        }
    }
}

crate::io_enum::forward_io!(UpstreamStream { Tcp, Unix, Tls });
