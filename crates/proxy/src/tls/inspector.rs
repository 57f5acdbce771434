//! `envoy.filters.listener.tls_inspector`: peek at a connection's first
//! bytes; if they are a TLS ClientHello, the connection's transport
//! protocol is `tls` and its SNI and ALPN list are known for filter chain
//! matching. The bytes stay in the socket for the chosen chain's handshake
//! (or for a chain that passes TLS through untouched).

use std::time::Duration;

use rustls::server::Acceptor;
use tokio::net::TcpStream;

use crate::listener::peek::{Peek, TimedOut, peek_until, within};

/// A ClientHello fits in one TLS record (16 KiB plus its header).
const MAX_HELLO: usize = 16 * 1024 + 5;

/// What the ClientHello offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
}

/// Classify a prefix of the stream: Done(None) = not TLS.
pub fn parse(buf: &[u8]) -> Peek<Option<ClientHello>> {
    // A handshake record (22) of TLS 1.x (major version 3).
    match buf {
        [] | [0x16] => return Peek::More,
        [0x16, 0x03, ..] => {}
        _ => return Peek::Done(None),
    }
    let mut acceptor = Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Peek::Done(None),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Peek::Done(Some(ClientHello {
                sni: hello.server_name().map(str::to_string),
                alpn: hello
                    .alpn()
                    .map(|list| {
                        list.map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            }))
        }
        Ok(None) => Peek::More,
        Err(_) => Peek::Done(None),
    }
}

/// Peek until the ClientHello is read or the bytes are not TLS.
pub async fn inspect(
    stream: &TcpStream,
    timeout: Option<Duration>,
) -> Result<Option<ClientHello>, TimedOut> {
    let found = within(timeout, peek_until(stream, MAX_HELLO, parse)).await?;
    Ok(found.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, as rustls' client writes it.
    fn hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_and_waits_for_the_whole_hello() {
        let bytes = hello(
            "outbound_.9080_._.reviews.default.svc.cluster.local",
            &["istio-http/1.1", "istio"],
        );
        assert_eq!(parse(&bytes[..1]), Peek::More);
        assert_eq!(parse(&bytes[..bytes.len() / 2]), Peek::More);
        assert_eq!(
            parse(&bytes),
            Peek::Done(Some(ClientHello {
                sni: Some("outbound_.9080_._.reviews.default.svc.cluster.local".into()),
                alpn: vec!["istio-http/1.1".into(), "istio".into()],
            }))
        );
    }

    #[test]
    fn plaintext_and_garbage_are_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Peek::Done(None));
        assert_eq!(parse(b"\x16\x02\x00"), Peek::Done(None));
        assert_eq!(
            parse(b"\x16\x03\x01\x00\x05\xff\xff\xff\xff\xff"),
            Peek::Done(None)
        );
    }
}
