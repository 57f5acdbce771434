//! Mutual TLS between sidecars, differential against stock Envoy both ways:
//! the same bootstraps (a client sidecar's outbound clusters with an
//! UpstreamTlsContext, a server sidecar's inbound chains with a
//! DownstreamTlsContext, certificates from the mesh CA) run as Envoy or as
//! our proxy on either end. HTTP/1.1, HTTP/2 and raw TCP cross the mTLS hop;
//! the app sees the same x-forwarded-client-cert from either server; a
//! client without a certificate, with another CA's or an expired one, and
//! plaintext are refused; a server that is not the expected identity is
//! refused by either client. Skipped without an Envoy binary.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::envoy::{self, envoy_binary};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Certificates on disk: the mesh root, a server and a client workload, and
/// for the refusal cases a client of another CA and an expired client.
struct Pki {
    dir: tempfile::TempDir,
    client_der: Vec<u8>,
}

fn issue(
    ca: &identity::Ca,
    dir: &Path,
    name: &str,
    sa: &str,
    now: SystemTime,
    ttl: u64,
) -> Vec<u8> {
    let key = identity::WorkloadKey::generate().unwrap();
    let id = identity::SpiffeId::new(ca.trust_domain(), "default", sa);
    let issued = ca
        .sign(&key.csr(&id).unwrap(), &id, Duration::from_secs(ttl), now)
        .unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), issued.chain.join("")).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key.private_key_pem()).unwrap();
    std::fs::write(dir.join("root.pem"), issued.roots.join("")).unwrap();
    pem::parse(&issued.chain[0]).unwrap().into_contents()
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = identity::Ca::from_dir(&dir.path().join("ca"), "cluster.local").unwrap();
        let now = SystemTime::now();
        issue(&ca, dir.path(), "server", "server", now, 3600);
        let client_der = issue(&ca, dir.path(), "client", "client", now, 3600);
        issue(
            &ca,
            dir.path(),
            "expired",
            "client",
            now - Duration::from_secs(7200),
            3600,
        );
        let other = tempfile::tempdir().unwrap();
        let rogue = identity::Ca::from_dir(&other.path().join("ca"), "cluster.local").unwrap();
        let rogue_dir = dir.path().join("rogue");
        std::fs::create_dir(&rogue_dir).unwrap();
        issue(&rogue, &rogue_dir, "client", "client", now, 3600);
        Pki { dir, client_der }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn p(&self, f: &str) -> String {
        self.path(f).display().to_string()
    }
}

const TLS: &str = "envoy.transport_sockets.tls";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER: &str = "{name: envoy.filters.http.router, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}";
const TLS_INSPECTOR: &str = "{name: envoy.filters.listener.tls_inspector, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}";

fn addr(a: SocketAddr) -> String {
    format!(
        "{{socket_address: {{address: {}, port_value: {}}}}}",
        a.ip(),
        a.port()
    )
}

fn static_cluster(name: &str, to: SocketAddr, extra: &str) -> String {
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 2s\n{extra}    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {}}}}}]}}]}}\n",
        addr(to)
    )
}

fn hcm(prefix: &str, cluster: &str, xfcc: bool) -> String {
    let xfcc = if xfcc {
        "forward_client_cert_details: APPEND_FORWARD, set_current_client_cert_details: {subject: true, dns: true, uri: true}, "
    } else {
        ""
    };
    format!(
        "{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": {HCM}, stat_prefix: {prefix}, {xfcc}http_filters: [{ROUTER}], route_config: {{name: r, virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]}}]}}}}}}"
    )
}

fn tcp(prefix: &str, cluster: &str) -> String {
    format!(
        "{{name: envoy.filters.network.tcp_proxy, typed_config: {{\"@type\": {TCP}, stat_prefix: {prefix}, cluster: {cluster}}}}}"
    )
}

/// The server sidecar's DownstreamTlsContext: mesh root, SAN in the trust
/// domain, client certificate required (STRICT).
fn downstream_tls(pki: &Pki) -> String {
    format!(
        "{{name: {TLS}, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, common_tls_context: {{alpn_protocols: [h2, http/1.1], tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}], validation_context: {{trusted_ca: {{filename: {}}}, match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: \"spiffe://cluster.local/\"}}}}]}}}}}}}}",
        pki.p("server.pem"),
        pki.p("server-key.pem"),
        pki.p("root.pem")
    )
}

/// A client sidecar's UpstreamTlsContext to a server of identity `sa`.
fn upstream_tls(pki: &Pki, sa: &str, alpn: &str) -> String {
    format!(
        "    transport_socket: {{name: {TLS}, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: outbound_.80_._.server.default.svc.cluster.local, common_tls_context: {{alpn_protocols: [{alpn}], tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}], validation_context: {{trusted_ca: {{filename: {}}}, match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"spiffe://cluster.local/ns/default/sa/{sa}\"}}}}]}}}}}}}}\n",
        pki.p("client.pem"),
        pki.p("client-key.pem"),
        pki.p("root.pem")
    )
}

const H2: &str = "    typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}\n";
const SAME_AS_DOWNSTREAM: &str = "    typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, use_downstream_protocol_config: {http_protocol_options: {}, http2_protocol_options: {}}}}\n";
const LOOPBACK: &str = "{socket_address: {address: 127.0.0.1, port_value: 0}}";

/// Inbound: `strict` (HTTP), `strict_tcp`, and `permissive` (TLS or
/// plaintext on one port, told apart by tls_inspector).
fn server_yaml(pki: &Pki, app: SocketAddr, echo: SocketAddr) -> String {
    let tls = downstream_tls(pki);
    format!(
        r#"
admin: {{address: {LOOPBACK}}}
static_resources:
  listeners:
  - name: strict
    address: {LOOPBACK}
    filter_chains:
    - transport_socket: {tls}
      filters: [{http}]
  - name: strict_tcp
    address: {LOOPBACK}
    filter_chains:
    - transport_socket: {tls}
      filters: [{tcp}]
  - name: permissive
    address: {LOOPBACK}
    listener_filters: [{TLS_INSPECTOR}]
    filter_chains:
    - filter_chain_match: {{transport_protocol: tls}}
      transport_socket: {tls}
      filters: [{http}]
    - filter_chain_match: {{transport_protocol: raw_buffer}}
      filters: [{http}]
  clusters:
{app_cluster}{echo_cluster}"#,
        http = hcm("inbound", "app", true),
        tcp = tcp("inbound_tcp", "echo"),
        app_cluster = static_cluster("app", app, SAME_AS_DOWNSTREAM),
        echo_cluster = static_cluster("echo", echo, ""),
    )
}

/// Outbound: plaintext from the app, mTLS to the server sidecar.
fn client_yaml(pki: &Pki, strict: SocketAddr, strict_tcp: SocketAddr) -> String {
    let http_tls = upstream_tls(pki, "server", "istio-http/1.1");
    let h2_tls = format!("{}{H2}", upstream_tls(pki, "server", "istio-h2"));
    let tcp_tls = upstream_tls(pki, "server", "istio-peer-exchange, istio");
    let wrong = upstream_tls(pki, "nobody", "istio-http/1.1");
    format!(
        r#"
admin: {{address: {LOOPBACK}}}
static_resources:
  listeners:
  - name: out_http
    address: {LOOPBACK}
    filter_chains: [{{filters: [{http}]}}]
  - name: out_h2
    address: {LOOPBACK}
    filter_chains: [{{filters: [{h2}]}}]
  - name: out_tcp
    address: {LOOPBACK}
    filter_chains: [{{filters: [{tcp}]}}]
  - name: out_wrong
    address: {LOOPBACK}
    filter_chains: [{{filters: [{wrong_hcm}]}}]
  clusters:
{c1}{c2}{c3}{c4}"#,
        http = hcm("outbound", "server_http", false),
        h2 = hcm("outbound_h2", "server_h2", false),
        tcp = tcp("outbound_tcp", "server_tcp"),
        wrong_hcm = hcm("outbound_wrong", "server_wrong", false),
        c1 = static_cluster("server_http", strict, &http_tls),
        c2 = static_cluster("server_h2", strict, &h2_tls),
        c3 = static_cluster("server_tcp", strict_tcp, &tcp_tls),
        c4 = static_cluster("server_wrong", strict, &wrong),
    )
}

/// One end, run by Envoy or by our proxy.
enum Side {
    /// The dir holds its bootstrap while it runs.
    Envoy(envoy::Envoy, #[allow(dead_code)] tempfile::TempDir),
    Halyard(proxy::Proxy),
}

impl Side {
    async fn start(envoy_bin: Option<&Path>, yaml: &str) -> Side {
        match envoy_bin {
            Some(bin) => {
                let dir = tempfile::tempdir().unwrap();
                Side::Envoy(envoy::start(bin, yaml, dir.path()).await, dir)
            }
            None => Side::Halyard(start_static(yaml).await),
        }
    }

    async fn listener(&self, name: &str) -> SocketAddr {
        match self {
            Side::Envoy(e, _) => e.listener(Some(name)).await,
            Side::Halyard(p) => p.listener_addr(name).expect("listener"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Side::Envoy(..) => "envoy",
            Side::Halyard(_) => "halyard",
        }
    }
}

/// A direct TLS client: `cert` names the client certificate files (None:
/// no certificate); it trusts any server (the server is under test).
async fn tls_client(
    pki: &Pki,
    to: SocketAddr,
    cert: Option<(&str, &str)>,
) -> Result<String, String> {
    let builder = rustls::ClientConfig::builder_with_provider(identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(identity::tls::server_verifier(None, None));
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some((c, k)) => {
            let chain = std::fs::read_to_string(pki.path(c)).unwrap();
            let creds = identity::tls::Credentials::from_pem(
                &[chain],
                &std::fs::read_to_string(pki.path(k)).unwrap(),
                &[],
            )
            .unwrap();
            builder
                .with_client_auth_cert(creds.chain, creds.key)
                .unwrap()
        }
    };
    let tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: server\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    // TLS 1.3 client auth fails after the client's handshake finishes: the
    // refusal arrives as an alert (an error) or a close without an answer.
    match tokio::time::timeout(Duration::from_secs(5), tls.read_to_string(&mut out)).await {
        Ok(Ok(_)) if out.starts_with("HTTP/1.1 200") => Ok(out),
        Ok(Ok(_)) => Err(format!("no answer: {out:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// What one server end did for the client end's requests.
#[derive(Debug, PartialEq)]
struct Seen {
    http: (u16, String),
    xfcc: String,
    h2_version: String,
    tcp: String,
    wrong_san: u16,
}

async fn through(client: &Side) -> Seen {
    let r = get(client.listener("out_http").await, "server", "/", &[]).await;
    let xfcc = r
        .headers
        .get("x-seen-xfcc")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let h2 = get_h2(client.listener("out_h2").await, "server", "/").await;
    let mut s = TcpStream::connect(client.listener("out_tcp").await)
        .await
        .unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    let tcp = match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => String::from_utf8_lossy(&buf).into_owned(),
        other => format!("{other:?}"),
    };
    let wrong = get(client.listener("out_wrong").await, "server", "/", &[]).await;
    Seen {
        http: (r.status, r.body),
        xfcc,
        h2_version: h2
            .headers
            .get("x-seen-version")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| format!("status {}", h2.status)),
        tcp,
        wrong_san: wrong.status,
    }
}

/// The refusals a STRICT server owes, and PERMISSIVE's plaintext.
async fn refusals(pki: &Pki, server: &Side) {
    let who = server.name();
    let strict = server.listener("strict").await;
    assert!(
        tls_client(pki, strict, Some(("client.pem", "client-key.pem")))
            .await
            .is_ok(),
        "{who}: a mesh client is let in"
    );
    for (case, cert) in [
        ("no certificate", None),
        (
            "another CA",
            Some(("rogue/client.pem", "rogue/client-key.pem")),
        ),
        (
            "an expired certificate",
            Some(("expired.pem", "expired-key.pem")),
        ),
    ] {
        let r = tls_client(pki, strict, cert).await;
        assert!(r.is_err(), "{who}: a client with {case} got {r:?}");
    }
    let plain = raw(strict, "GET / HTTP/1.1\r\nhost: server\r\n\r\n").await;
    assert!(
        !plain.starts_with("HTTP/1.1 200"),
        "{who}: plaintext under STRICT got {plain:?}"
    );

    // PERMISSIVE: plaintext is served, and a client's own XFCC is dropped.
    let permissive = server.listener("permissive").await;
    let r = get(
        permissive,
        "server",
        "/",
        &[(
            "x-forwarded-client-cert",
            "By=spiffe://evil;URI=spiffe://cluster.local/ns/default/sa/admin",
        )],
    )
    .await;
    assert_eq!(r.status, 200, "{who}: plaintext under PERMISSIVE");
    assert!(
        r.headers.get("x-seen-xfcc").is_none(),
        "{who}: forged XFCC forwarded: {:?}",
        r.headers
    );
    assert!(
        tls_client(pki, permissive, Some(("client.pem", "client-key.pem")))
            .await
            .is_ok(),
        "{who}: mTLS under PERMISSIVE"
    );
}

/// Raw bytes in, whatever comes back (or an empty string on close).
async fn raw(to: SocketAddr, request: &str) -> String {
    let Ok(mut s) = TcpStream::connect(to).await else {
        return String::new();
    };
    let _ = s.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn sha256_hex(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_between_halyard_and_stock_envoy_both_ways() {
    let Some(bin) = envoy_binary() else {
        eprintln!("no envoy binary; skipping");
        return;
    };
    let pki = Pki::new();
    let app = backend("app").await;
    let echo = tcp_echo().await;
    let expected = Seen {
        http: (200, "app".into()),
        xfcc: format!(
            "By=spiffe://cluster.local/ns/default/sa/server;Hash={};Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/client",
            sha256_hex(&pki.client_der)
        ),
        h2_version: "HTTP/2.0".into(),
        tcp: "ping".into(),
        wrong_san: 503,
    };
    for (client_envoy, server_envoy) in [(true, false), (false, true), (false, false), (true, true)]
    {
        let server = Side::start(
            server_envoy.then_some(bin.as_path()),
            &server_yaml(&pki, app.addr, echo),
        )
        .await;
        let client_yaml = client_yaml(
            &pki,
            server.listener("strict").await,
            server.listener("strict_tcp").await,
        );
        let client = Side::start(client_envoy.then_some(bin.as_path()), &client_yaml).await;
        let seen = through(&client).await;
        assert_eq!(
            seen,
            expected,
            "{} client -> {} server",
            client.name(),
            server.name()
        );
        // The key exchange the server end counted: rustls clients (ours)
        // offer the post-quantum hybrid first and every server here takes
        // it; Envoy 1.40's client offers X25519 and P-256 only (its
        // ecdh_curves did not change its ClientHello), so X25519.
        let counted = match &server {
            Side::Envoy(e, _) => e.stats(".ssl.curves.").await,
            Side::Halyard(p) => {
                let (_, body) = admin_get(p.admin_addr(), "/stats").await;
                body.lines()
                    .filter(|l| l.contains(".ssl.curves."))
                    .filter_map(|l| {
                        let (k, v) = l.split_once(": ")?;
                        Some((k.to_string(), v.trim().parse::<u64>().ok()?))
                    })
                    .collect()
            }
        };
        let want = if client_envoy {
            ".X25519"
        } else {
            ".X25519MLKEM768"
        };
        let negotiated: Vec<_> = counted
            .iter()
            .filter(|(k, v)| k.starts_with("listener.") && *v > 0)
            .collect();
        assert!(
            !negotiated.is_empty() && negotiated.iter().all(|(k, _)| k.ends_with(want)),
            "{} client -> {} server negotiated {negotiated:?}",
            client.name(),
            server.name()
        );
        if !client_envoy {
            refusals(&pki, &server).await;
        }
    }
}

/// DestinationRule SIMPLE as the pilot emits it for an external host
/// without `sni`: roots by pilot-agent's file SDS name, `auto_sni` and
/// `auto_san_validation`. Our client sends the request's host as SNI and
/// checks it against the server's DNS SANs, against Envoy and ours alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tls_takes_sni_from_the_request_and_checks_it() {
    let Some(bin) = envoy_binary() else {
        eprintln!("no envoy binary; skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = identity::Ca::from_dir(&dir.path().join("ca"), "cluster.local").unwrap();
    let key = identity::WorkloadKey::generate().unwrap();
    let issued = ca
        .issue_serving(
            &key,
            &identity::SpiffeId::new("cluster.local", "ext", "api"),
            &["api.payments.example".to_string()],
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    std::fs::write(p("api.pem"), issued.chain.join("")).unwrap();
    std::fs::write(p("api-key.pem"), key.private_key_pem()).unwrap();
    std::fs::write(p("root.pem"), issued.roots.join("")).unwrap();
    let app = backend("api").await;
    let server_yaml = format!(
        r#"
admin: {{address: {LOOPBACK}}}
static_resources:
  listeners:
  - name: https
    address: {LOOPBACK}
    filter_chains:
    - transport_socket: {{name: {TLS}, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {{tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]}}}}}}
      filters: [{http}]
  clusters:
{app_cluster}"#,
        cert = p("api.pem"),
        key = p("api-key.pem"),
        http = hcm("api", "app", false),
        app_cluster = static_cluster("app", app.addr, ""),
    );
    for server_envoy in [true, false] {
        let server = Side::start(server_envoy.then_some(bin.as_path()), &server_yaml).await;
        let to = server.listener("https").await;
        let sds = format!(
            "{{name: \"file-root:{}\", sds_config: {{api_config_source: {{api_type: GRPC, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: sds-grpc}}}}]}}, resource_api_version: V3}}}}",
            p("root.pem")
        );
        let client_yaml = format!(
            r#"
admin: {{address: {LOOPBACK}}}
static_resources:
  listeners:
  - name: out
    address: {LOOPBACK}
    filter_chains: [{{filters: [{http}]}}]
  clusters:
{cluster}"#,
            http = hcm("out", "api", false),
            cluster = static_cluster(
                "api",
                to,
                &format!(
                    "    transport_socket: {{name: {TLS}, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, common_tls_context: {{validation_context_sds_secret_config: {sds}}}}}}}\n    typed_extension_protocol_options: {{envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {{\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {{http_protocol_options: {{}}}}, upstream_http_protocol_options: {{auto_sni: true, auto_san_validation: true}}}}}}\n"
                )
            ),
        );
        let client = start_static(&client_yaml).await;
        let out = client.listener_addr("out").unwrap();
        let ok = get(out, "api.payments.example", "/", &[]).await;
        assert_eq!(
            (ok.status, ok.body.as_str()),
            (200, "api"),
            "to {}",
            server.name()
        );
        let wrong = get(out, "other.example", "/", &[]).await;
        assert_eq!(
            wrong.status,
            503,
            "a name the certificate lacks, to {}",
            server.name()
        );
        // The pooled connection for one name is not reused for another.
        let again = get(out, "api.payments.example", "/", &[]).await;
        assert_eq!(again.status, 200, "to {}", server.name());
    }
}
