//! The network RBAC filter (`envoy.filters.network.rbac`) before tcp_proxy,
//! differential against stock Envoy: on an mTLS chain, principals are the
//! client certificate's SPIFFE id (Istio's `principals` regexes) with a
//! dry-run DENY in shadow rules; on a plaintext chain, a DENY filter on the
//! peer address then an ALLOW filter on destination port, port range and
//! source range. Each connection either echoes or is closed, the same on
//! both proxies, and the `<stat_prefix>rbac.*` counters agree.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const TCP: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn issue(ca: &identity::Ca, dir: &Path, name: &str, sa: &str) {
    let key = identity::WorkloadKey::generate().unwrap();
    let id = identity::SpiffeId::new(ca.trust_domain(), "default", sa);
    let issued = ca
        .sign(
            &key.csr(&id).unwrap(),
            &id,
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), issued.chain.join("")).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key.private_key_pem()).unwrap();
    std::fs::write(dir.join("root.pem"), issued.roots.join("")).unwrap();
}

fn bootstrap(dir: &Path, tls_port: u16, plain_port: u16, echo: SocketAddr) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    let tls = format!(
        "{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, common_tls_context: {{tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}], validation_context: {{trusted_ca: {{filename: {}}}}}}}}}}}",
        p("server.pem"),
        p("server-key.pem"),
        p("root.pem")
    );
    let tcp = format!(
        "{{name: envoy.filters.network.tcp_proxy, typed_config: {{\"@type\": {TCP}, stat_prefix: echo, cluster: echo}}}}"
    );
    let mtls_rbac = format!(
        r#"{{name: envoy.filters.network.rbac, typed_config: {{"@type": {RBAC}, stat_prefix: tcp., shadow_rules_stat_prefix: istio_dry_run_deny_,
  rules: {{policies: {{
    "ns[default]-policy[a]-rule[0]": {{permissions: [{{and_rules: {{rules: [{{any: true}}]}}}}], principals: [{{and_ids: {{ids: [{{or_ids: {{ids: [{{authenticated: {{principal_name: {{safe_regex: {{regex: "spiffe://.+/ns/default/(.+/|)sa/client-a(/.+)?"}}}}}}}}]}}}}]}}}}]}},
    "ns[default]-policy[c]-rule[0]": {{permissions: [{{destination_port: {tls_port}}}], principals: [{{authenticated: {{principal_name: {{suffix: /sa/client-c}}}}}}]}}
  }}}},
  shadow_rules: {{action: DENY, policies: {{
    dry-deny-b: {{permissions: [{{any: true}}], principals: [{{authenticated: {{principal_name: {{prefix: "spiffe://cluster.local/ns/default/sa/client-b"}}}}}}]}}
  }}}}}}}}"#
    );
    let deny = format!(
        r#"{{name: envoy.filters.network.rbac, typed_config: {{"@type": {RBAC}, stat_prefix: plain_deny,
  rules: {{action: DENY, policies: {{
    deny-66: {{permissions: [{{any: true}}], principals: [{{direct_remote_ip: {{address_prefix: 127.0.0.66, prefix_len: 32}}}}]}},
    deny-authenticated: {{permissions: [{{any: true}}], principals: [{{authenticated: {{}}}}]}}
  }}}}}}}}"#
    );
    let allow = format!(
        r#"{{name: envoy.filters.network.rbac, typed_config: {{"@type": {RBAC}, stat_prefix: tcp.,
  rules: {{policies: {{
    port-and-source: {{permissions: [{{and_rules: {{rules: [{{destination_port: {plain_port}}}, {{destination_ip: {{address_prefix: 127.0.0.1, prefix_len: 32}}}}]}}}}], principals: [{{source_ip: {{address_prefix: 127.0.0.0, prefix_len: 31}}}}]}},
    range: {{permissions: [{{destination_port_range: {{start: {plain_port}, end: {}}}}}], principals: [{{remote_ip: {{address_prefix: 127.0.0.4, prefix_len: 32}}}}]}},
    not-three: {{permissions: [{{not_rule: {{any: true}}}}], principals: [{{not_id: {{direct_remote_ip: {{address_prefix: 127.0.0.3, prefix_len: 32}}}}}}]}}
  }}}}}}}}"#,
        plain_port + 1
    );
    let one = |s: String| s.replace('\n', " ");
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: tls
    address: {{socket_address: {{address: 127.0.0.1, port_value: {tls_port}}}}}
    filter_chains:
    - transport_socket: {tls}
      filters:
      - {}
      - {tcp}
  - name: plain
    address: {{socket_address: {{address: 127.0.0.1, port_value: {plain_port}}}}}
    filter_chains:
    - filters:
      - {}
      - {}
      - {tcp}
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: echo, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]}}
"#,
        one(mtls_rbac),
        one(deny),
        one(allow),
        echo.ip(),
        echo.port()
    )
}

/// Whether the connection echoed `ping` (else it was closed).
async fn echoes<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

async fn tls_echoes(dir: &Path, to: SocketAddr, client: &str) -> bool {
    let chain = std::fs::read_to_string(dir.join(format!("{client}.pem"))).unwrap();
    let key = std::fs::read_to_string(dir.join(format!("{client}-key.pem"))).unwrap();
    let creds = identity::tls::Credentials::from_pem(&[chain], &key, &[]).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(identity::tls::server_verifier(None, None))
        .with_client_auth_cert(creds.chain, creds.key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(to).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
    match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(tls) => echoes(tls).await,
        Err(_) => false,
    }
}

async fn plain_echoes(to: SocketAddr, from: &str) -> bool {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    match sock.connect(to).await {
        Ok(s) => echoes(s).await,
        Err(_) => false,
    }
}

async fn matrix(dir: &Path, tls: SocketAddr, plain: SocketAddr) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for client in ["client-a", "client-b", "client-c", "client-d"] {
        out.push((format!("mtls {client}"), tls_echoes(dir, tls, client).await));
    }
    for from in [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.66",
    ] {
        out.push((format!("plain {from}"), plain_echoes(plain, from).await));
    }
    out
}

fn rbac_stats(body: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = body
        .lines()
        .filter(|l| l.contains("rbac."))
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn network_rbac_matches_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let ca = identity::Ca::from_dir(&dir.path().join("ca"), "cluster.local").unwrap();
    for name in ["server", "client-a", "client-b", "client-c", "client-d"] {
        issue(&ca, dir.path(), name, name);
    }
    let echo = tcp_echo().await;
    let (tls_port, plain_port) = (free_port(), free_port());
    let proxy = start_static(&bootstrap(dir.path(), tls_port, plain_port, echo)).await;
    let ours = matrix(
        dir.path(),
        proxy.listener_addr("tls").unwrap(),
        proxy.listener_addr("plain").unwrap(),
    )
    .await;
    let expect = [
        ("mtls client-a", true),
        ("mtls client-b", false),
        ("mtls client-c", true),
        ("mtls client-d", false),
        ("plain 127.0.0.1", true),
        ("plain 127.0.0.2", false),
        ("plain 127.0.0.3", false),
        ("plain 127.0.0.4", true),
        ("plain 127.0.0.5", false),
        ("plain 127.0.0.66", false),
    ];
    let expect: Vec<(String, bool)> = expect.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(ours, expect);
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    let our_stats = rbac_stats(&stats);
    assert!(
        our_stats.contains(&("plain_deny.rbac.denied".to_string(), 1))
            && our_stats.contains(&("tcp.rbac.istio_dry_run_deny_.shadow_denied".to_string(), 1)),
        "{our_stats:?}"
    );
    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: differential half skipped");
        return;
    };
    let (tls_port, plain_port) = (free_port(), free_port());
    let edir = tempfile::tempdir().unwrap();
    let e = envoy::start(
        &bin,
        &bootstrap(dir.path(), tls_port, plain_port, echo),
        edir.path(),
    )
    .await;
    let theirs = matrix(
        dir.path(),
        e.listener(Some("tls")).await,
        e.listener(Some("plain")).await,
    )
    .await;
    assert_eq!(ours, theirs);
    let (_, envoy_stats) = admin_get(e.admin, "/stats").await;
    assert_eq!(our_stats, rbac_stats(&envoy_stats));
}
