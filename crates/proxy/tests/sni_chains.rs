//! TLS passthrough by SNI (Istio's `tls` routes): tls_inspector reads the
//! ClientHello and the filter chain whose `server_names` match (exact, else
//! the longest `*.suffix`) proxies the still-encrypted bytes to its cluster.
//! The same bootstrap through a stock Envoy picks the same chains.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP backend that says its name as soon as a connection arrives.
async fn named(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                // Read until the client goes (closing with unread bytes
                // would reset the connection before it reads the name).
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn client_hello(sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

fn bootstrap(backends: &[(&str, SocketAddr)]) -> String {
    let chain = |m: &str, cluster: &str| {
        format!(
            "    - filter_chain_match: {m}\n      filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {cluster}, cluster: {cluster}}}}}]\n"
        )
    };
    let clusters: String = backends
        .iter()
        .map(|(name, a)| {
            format!(
                "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]}}\n",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}\nstatic_resources:\n  listeners:\n  - name: tls\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    listener_filters: [{{name: envoy.filters.listener.tls_inspector, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}}}]\n    filter_chains:\n{}{}{}{}  clusters:\n{clusters}",
        chain(
            "{server_names: [api.example.com], transport_protocol: tls}",
            "exact"
        ),
        chain(
            "{server_names: [\"*.example.com\"], transport_protocol: tls}",
            "wild"
        ),
        chain(
            "{server_names: [\"*.eu.example.com\", other.test], transport_protocol: tls}",
            "eu"
        ),
        chain("{transport_protocol: tls}", "fallback"),
    )
}

async fn which(addr: SocketAddr, sni: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&client_hello(sni)).await.unwrap();
    let mut buf = vec![0u8; 64];
    match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Ok(Err(e)) => format!("error: {}", e.kind()),
        Err(_) => "no answer".into(),
    }
}

async fn picks(addr: SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    for sni in [
        "api.example.com",
        "www.example.com",
        "a.eu.example.com",
        "other.test",
        "example.com",
        "nothing.else",
    ] {
        out.push(which(addr, sni).await);
    }
    out
}

#[tokio::test]
async fn sni_picks_the_chain_as_envoy_does() {
    let mut backends = Vec::new();
    for name in ["exact", "wild", "eu", "fallback"] {
        backends.push((name, named(name).await));
    }
    let yaml = bootstrap(&backends);
    let proxy = common::start_static(&yaml).await;
    let ours = picks(proxy.listener_addr("tls").unwrap()).await;
    assert_eq!(ours, ["exact", "wild", "eu", "eu", "fallback", "fallback"]);
    let Some(bin) = common::envoy::envoy_binary() else {
        eprintln!("no envoy binary: differential half skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = common::envoy::start(&bin, &yaml, dir.path()).await;
    assert_eq!(picks(e.listener(Some("tls")).await).await, ours);
}
