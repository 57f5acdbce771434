//! Connecting from this process into a pod's network namespace: a short-lived
//! thread joins the namespace (setns), opens the socket there and hands it
//! back. Used for readiness probes and for port-forwards from the host.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Open a TCP connection to `addr` from inside the named network namespace.
pub fn connect(netns: &str, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let path = format!("/run/netns/{netns}");
    let ns = File::open(&path)?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this thread,
        // which exits right after opening the socket.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        TcpStream::connect_timeout(&addr, timeout)
    })
    .join()
    .map_err(|_| std::io::Error::other("netns connect thread panicked"))?
}

/// A plain HTTP/1.0 GET from inside the namespace; returns the status code.
pub fn http_status(netns: &str, addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = connect(netns, addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let head = std::str::from_utf8(&buf[..n]).unwrap_or_default();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer {head:?}")))
}

/// GET a JSON document from inside the namespace (HTTP/1.1, connection close).
pub fn http_json(netns: &str, addr: SocketAddr, path: &str) -> std::io::Result<serde_json::Value> {
    let mut s = connect(netns, addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| std::io::Error::other("no HTTP body"))?;
    serde_json::from_str(body).map_err(std::io::Error::other)
}
