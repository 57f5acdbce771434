//! Listener filters read a connection's first bytes without consuming them
//! (MSG_PEEK), so whichever filter chain is chosen sees the stream whole.

use std::io;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// The listener filters did not finish within listener_filters_timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// What a look at the bytes so far decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek<R> {
    Done(R),
    More,
}

/// Run `f` under the listener's filter timeout (None: no limit).
pub async fn within<R>(
    timeout: Option<Duration>,
    f: impl Future<Output = R>,
) -> Result<R, TimedOut> {
    match timeout {
        Some(t) => tokio::time::timeout(t, f).await.map_err(|_| TimedOut),
        None => Ok(f.await),
    }
}

/// Peek at up to `max` bytes, handing `decide` everything seen so far each
/// time more arrives, until it is done. None: the peer closed, failed, or
/// filled `max` bytes without a decision.
pub async fn peek_until<R>(
    stream: &TcpStream,
    max: usize,
    mut decide: impl FnMut(&[u8]) -> Peek<R>,
) -> Option<R> {
    let mut buf = vec![0u8; max.min(4096)];
    let mut seen = 0;
    loop {
        stream.readable().await.ok()?;
        let n = match stream.try_io(Interest::READABLE, || {
            let n = peek_raw(stream, &mut buf)?;
            if n == seen {
                // Nothing new: clear readiness and wait for more bytes.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        };
        if n == 0 {
            return None;
        }
        seen = n;
        match decide(&buf[..n]) {
            Peek::Done(r) => return Some(r),
            Peek::More if n == buf.len() && buf.len() < max => {
                // Full: look again with room for more.
                buf.resize(max.min(buf.len() * 4), 0);
                seen = 0;
            }
            Peek::More if n == buf.len() => return None,
            Peek::More => {}
        }
    }
}

fn peek_raw(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: recv with MSG_PEEK writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
