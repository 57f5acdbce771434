//! One accepted HTTP connection as the fault modes see it: its two ends, how
//! many requests it carried (for `fail_first_per_conn`), and a way for a
//! request to end the whole connection without answering, with a FIN or a
//! TCP RST.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// What the requests of one connection share.
#[derive(Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    requests: AtomicU64,
    abort: Notify,
    reset: AtomicBool,
}

impl Conn {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            peer,
            local,
            requests: AtomicU64::new(0),
            abort: Notify::new(),
            reset: AtomicBool::new(false),
        }
    }

    /// Counts a request; returns its number on this connection (1-based).
    pub fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Relaxed) + 1
    }

    /// Asks the connection's task to drop the connection now, unanswered:
    /// with a TCP RST when `reset`, else a FIN.
    pub fn abort(&self, reset: bool) {
        self.reset.store(reset, Relaxed);
        self.abort.notify_one();
    }

    /// Resolves once a request called [`Conn::abort`].
    pub async fn aborted(&self) {
        self.abort.notified().await
    }
}

/// The TCP stream under an HTTP connection; when dropped after a resetting
/// [`Conn::abort`], it closes with SO_LINGER 0, i.e. a TCP RST.
pub struct ConnIo {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl ConnIo {
    pub fn new(stream: TcpStream, conn: Arc<Conn>) -> Self {
        Self { stream, conn }
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.conn.reset.load(Relaxed) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

/// `--refuse`: closes a just-accepted connection with a TCP RST.
pub fn refuse(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
