//! One client connection of the load generator, HTTP/1.1 keep-alive or h2c
//! (prior knowledge), opened from inside a pod's network namespace so the
//! pod's capture rules apply to it exactly as to the app's own sockets.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The HTTP protocol the client speaks to the (captured) service address.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "http1" | "h1" | "http/1.1" => Some(Protocol::Http1),
            "http2" | "h2" | "h2c" => Some(Protocol::Http2),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

/// Sockets made inside a network namespace by one thread that joined it
/// (a socket belongs to the namespace it was created in), so opening a
/// connection costs a channel round trip, not a thread (the handshake-cost
/// run opens one per request).
#[derive(Debug)]
pub struct NsSockets {
    tx: mpsc::Sender<(bool, mpsc::SyncSender<std::io::Result<OwnedFd>>)>,
}

impl NsSockets {
    pub fn new(netns: &str) -> std::io::Result<Arc<NsSockets>> {
        let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
        let (tx, rx) = mpsc::channel::<(bool, mpsc::SyncSender<std::io::Result<OwnedFd>>)>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd affects only this thread,
            // which only makes sockets and ends when the sender is dropped.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            let _ = ready_tx.send(if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            });
            if rc != 0 {
                return;
            }
            while let Ok((v4, reply)) = rx.recv() {
                let family = if v4 { libc::AF_INET } else { libc::AF_INET6 };
                // SAFETY: socket(2) with constant arguments; the fd is owned below.
                let fd = unsafe {
                    libc::socket(
                        family,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    )
                };
                let _ = reply.send(if fd < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    // SAFETY: a fresh fd nobody else owns.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                });
            }
        });
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("netns socket thread died"))??;
        Ok(Arc::new(NsSockets { tx }))
    }

    /// A new non-blocking TCP socket in the namespace.
    fn socket(&self, v4: bool) -> std::io::Result<OwnedFd> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send((v4, reply))
            .map_err(|_| std::io::Error::other("netns socket thread gone"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("netns socket thread gone"))?
    }
}

/// Where requests go and what a good answer looks like.
#[derive(Clone, Debug)]
pub struct Target {
    /// The client pod's network namespace.
    pub netns: String,
    /// Makes the sockets inside `netns`.
    pub sockets: Arc<NsSockets>,
    /// The service's cluster IP and port (captured by the client sidecar).
    pub addr: SocketAddr,
    /// Host / :authority, e.g. `server.bench:8080`.
    pub authority: String,
    /// Path and query, e.g. `/?size=1024`.
    pub path: String,
    pub protocol: Protocol,
    /// The body length a 200 must have.
    pub body_len: usize,
    /// Close the connection after every request and open a new one.
    pub per_request: bool,
}

type Send1 = http1::SendRequest<Empty<Bytes>>;
type Send2 = http2::SendRequest<Empty<Bytes>>;

/// An open connection.
pub enum Connection {
    Http1(Send1),
    Http2(Send2),
}

/// Details of one answer (for the sanity request).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    /// The body, when asked to keep it.
    pub body: Bytes,
    pub body_len: usize,
}

async fn tcp(sockets: &NsSockets, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    let fd = sockets.socket(addr.is_ipv4())?;
    // SAFETY: a fresh non-blocking TCP socket, owned from here on.
    let socket = unsafe { tokio::net::TcpSocket::from_raw_fd(fd.into_raw_fd()) };
    let stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connect to {addr} timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Connection {
    pub async fn open(target: &Target) -> anyhow::Result<Connection> {
        let io = TokioIo::new(tcp(&target.sockets, target.addr).await?);
        Ok(match target.protocol {
            Protocol::Http1 => {
                let (send, conn) = http1::handshake(io).await?;
                tokio::spawn(conn);
                Connection::Http1(send)
            }
            Protocol::Http2 => {
                let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Connection::Http2(send)
            }
        })
    }

    /// One GET; Err(kind) unless it is a 200 with the expected body length.
    pub async fn request(&mut self, target: &Target) -> Result<(), String> {
        let (status, len) = self
            .exchange(target, false)
            .await
            .map(|a| (a.status, a.body_len))?;
        if status != 200 {
            return Err(format!("status {status}"));
        }
        if len != target.body_len {
            return Err(format!("body {len} bytes"));
        }
        Ok(())
    }

    /// One GET, returning the whole answer (`keep` = keep the body bytes).
    pub async fn exchange(&mut self, target: &Target, keep: bool) -> Result<Answer, String> {
        let builder = hyper::Request::get(match self {
            Connection::Http1(_) => target.path.clone(),
            Connection::Http2(_) => format!("http://{}{}", target.authority, target.path),
        });
        let builder = match self {
            Connection::Http1(_) => builder.header(hyper::header::HOST, &target.authority),
            Connection::Http2(_) => builder,
        };
        let req = builder.body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = match self {
            Connection::Http1(s) => {
                s.ready().await.map_err(|e| kind("ready", &e))?;
                s.send_request(req).await
            }
            Connection::Http2(s) => {
                s.ready().await.map_err(|e| kind("ready", &e))?;
                s.send_request(req).await
            }
        }
        .map_err(|e| kind("send", &e))?;
        let status = resp.status().as_u16();
        let (parts, mut body) = resp.into_parts();
        let mut kept = Vec::new();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| kind("body", &e))?;
            if let Some(data) = frame.data_ref() {
                len += data.len();
                if keep {
                    kept.extend_from_slice(data);
                }
            }
        }
        Ok(Answer {
            status,
            headers: parts.headers,
            body: Bytes::from(kept),
            body_len: len,
        })
    }
}

fn kind(stage: &str, e: &hyper::Error) -> String {
    let mut s = format!("{stage}: {e}");
    s.truncate(80);
    s
}

/// GET `path` from `addr` inside `netns` over HTTP/1.1 (admin endpoints); the body as text.
pub fn get_text(netns: &str, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let target = Target {
        netns: netns.to_string(),
        sockets: NsSockets::new(netns)?,
        addr,
        authority: addr.to_string(),
        path: path.to_string(),
        protocol: Protocol::Http1,
        body_len: 0,
        per_request: false,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut c = Connection::open(&target).await?;
        let a = tokio::time::timeout(Duration::from_secs(5), c.exchange(&target, true))
            .await?
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(a.status == 200, "GET {path}: status {}", a.status);
        Ok(String::from_utf8_lossy(&a.body).into_owned())
    })
}

/// One request with the whole answer, for the sanity check before a run.
pub fn fetch(target: &Target) -> anyhow::Result<Answer> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut c = Connection::open(target).await?;
        tokio::time::timeout(Duration::from_secs(5), c.exchange(target, true))
            .await?
            .map_err(anyhow::Error::msg)
    })
}
