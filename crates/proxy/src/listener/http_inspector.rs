//! `envoy.filters.listener.http_inspector`: peek at the first bytes of a
//! connection (without consuming them) to tell HTTP/1.x from h2c prior
//! knowledge, for `filter_chain_match.application_protocols`.

use std::time::Duration;

use tokio::net::TcpStream;

use super::peek::{Peek, TimedOut, peek_until, within};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Envoy's http_inspector gives up after this many bytes.
const MAX_PEEK: usize = 8192;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http10,
    H2c,
    NotHttp,
    /// Need more bytes.
    Unknown,
}

impl Detected {
    /// The ALPN-style name Envoy gives it.
    pub fn protocol(self) -> Option<&'static str> {
        match self {
            Detected::Http1 => Some("http/1.1"),
            Detected::Http10 => Some("http/1.0"),
            Detected::H2c => Some("h2c"),
            _ => None,
        }
    }
}

/// Classify a prefix of the stream.
pub fn detect(buf: &[u8]) -> Detected {
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Detected::H2c;
    }
    if H2_PREFACE.starts_with(buf) {
        return Detected::Unknown;
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        let plausible = buf.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        return if plausible && buf.len() < MAX_PEEK {
            Detected::Unknown
        } else {
            Detected::NotHttp
        };
    };
    let line = &buf[..end];
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Detected::NotHttp;
    };
    if method.is_empty() || !method.iter().all(|b| b.is_ascii_uppercase()) {
        return Detected::NotHttp;
    }
    match version {
        b"HTTP/1.1" => Detected::Http1,
        b"HTTP/1.0" => Detected::Http10,
        _ => Detected::NotHttp,
    }
}

/// Peek until the protocol is known or the peer stops sending; `timeout`
/// None waits as long as it takes.
pub async fn inspect(
    stream: &TcpStream,
    timeout: Option<Duration>,
) -> Result<Option<&'static str>, TimedOut> {
    let found = within(
        timeout,
        peek_until(stream, MAX_PEEK, |buf| match detect(buf) {
            Detected::Unknown => Peek::More,
            d => Peek::Done(d.protocol()),
        }),
    )
    .await?;
    Ok(found.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_http1_h2c_and_others() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\nHost: a\r\n"), Detected::Http1);
        assert_eq!(detect(b"GET /x HTTP/1.0\r\n"), Detected::Http10);
        assert_eq!(detect(H2_PREFACE), Detected::H2c);
        assert_eq!(detect(b"PRI * HT"), Detected::Unknown);
        assert_eq!(detect(b"GET / HT"), Detected::Unknown);
        assert_eq!(detect(b"\x16\x03\x01\x02"), Detected::NotHttp);
        assert_eq!(detect(b"hello world\r\n"), Detected::NotHttp);
    }
}
