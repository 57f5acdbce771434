//! Stock Envoy gets its workload certificate the way Istio's does: `halyard
//! agent` asks the pilot's CA (over TLS, with the service-account token) and
//! serves `default` and `ROOTCA` over SDS on a Unix socket. Our proxy keeps
//! its own (`halyard proxy --token`, no agent). Either listener then
//! requires mTLS with that identity: a mesh client sees the sidecar as
//! `spiffe://cluster.local/ns/default/sa/sleep`, a client without a
//! certificate is refused, and `halyard proxy-config secret` shows both.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Proc, free_port, halyard, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sds() -> serde_json::Value {
    serde_json::json!({
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]
        }
    })
}

/// A static listener that needs mTLS with the SDS secrets `default` and `ROOTCA`.
fn mtls_listeners(port: u16) -> serde_json::Value {
    serde_json::json!({
        "static_resources": {
            "listeners": [{
                "name": "mtls",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": sds()}],
                                "combined_validation_context": {
                                    "default_validation_context": {},
                                    "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": sds()}
                                }
                            }
                        }
                    },
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "mtls",
                            "route_config": {"virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "hello from envoy"}}}]
                            }]},
                            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                        }
                    }]
                }]
            }]
        }
    })
}

#[test]
fn envoy_with_the_agent_and_our_proxy_serve_mtls_with_a_ca_certificate() {
    let Some(envoy) = common::envoy() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let d = |p: &str| dir.path().join(p);
    let s = |p: &std::path::Path| p.to_str().expect("utf8").to_string();
    // A token signing key, and tokens for the two workloads.
    let ok = halyard()
        .args(["token", "--key", &s(&d("sa.key")), "--new-key"])
        .output()
        .expect("token key");
    assert!(ok.status.success(), "{ok:?}");
    let token = |sa: &str| {
        let out = halyard()
            .args(["token", "--key", &s(&d("sa.key")), "--namespace", "default"])
            .args(["--service-account", sa])
            .output()
            .expect("token");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    };
    std::fs::write(d("sleep.token"), token("sleep")).expect("write");
    std::fs::create_dir_all(d("config")).expect("mkdir");

    let (xds, debug, secure) = (
        free_port(&["127.0.0.1"]),
        free_port(&["127.0.0.1"]),
        free_port(&["127.0.0.1"]),
    );
    let _pilot = Proc::spawn(
        "pilot",
        halyard()
            .args([
                "pilot",
                "--config",
                &s(&d("config")),
                "--ca-dir",
                &s(&d("ca")),
            ])
            .args(["--token-key", &s(&d("sa.key.pub"))])
            .args(["--xds", &format!("127.0.0.1:{xds}")])
            .args(["--debug", &format!("127.0.0.1:{debug}")])
            .args(["--secure-xds", &format!("127.0.0.1:{secure}")]),
        dir.path(),
    );
    wait_for("the pilot's root", Duration::from_secs(20), || {
        d("ca/root-cert.pem").exists().then_some(())
    });
    // Stock Envoy with `halyard agent`, then our proxy keeping its own
    // certificate: the same bootstrap, the same checks.
    for ours in [false, true] {
        check_sidecar(ours, &envoy, dir.path(), xds, secure, &token);
    }
}

fn check_sidecar(
    ours: bool,
    envoy: &std::path::Path,
    dir: &std::path::Path,
    xds: u16,
    secure: u16,
    token: &dyn Fn(&str) -> String,
) {
    let d = |p: &str| dir.join(p);
    let s = |p: &std::path::Path| p.to_str().expect("utf8").to_string();
    let who = if ours {
        "halyard proxy"
    } else {
        "envoy + agent"
    };
    let socket = s(&d("var/run/secrets/workload-spiffe-uds/socket"));
    let _agent = (!ours).then(|| {
        Proc::spawn(
            "agent",
            halyard()
                .args(["agent", "--ca-address", &format!("127.0.0.1:{secure}")])
                .args(["--ca-root", &s(&d("ca/root-cert.pem"))])
                .args(["--token", &s(&d("sleep.token"))])
                .args(["--namespace", "default", "--service-account", "sleep"])
                .args(["--socket", &socket]),
            dir,
        )
    });
    let (admin, port) = (free_port(&["127.0.0.1"]), free_port(&["127.0.0.1"]));
    // Istio's sds-grpc cluster from `halyard bootstrap --sds-socket`, plus a
    // static mTLS listener whose secrets come from it.
    let out = halyard()
        .args([
            "bootstrap",
            "--node-id",
            "sidecar~10.0.0.1~sleep-0.default~default.svc.cluster.local",
        ])
        .args([
            "--xds",
            &format!("127.0.0.1:{xds}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(["--interception-mode", "NONE", "--sds-socket", &socket])
        .output()
        .expect("bootstrap");
    assert!(out.status.success(), "{out:?}");
    let mut generated: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let listener = mtls_listeners(port)["static_resources"]["listeners"].clone();
    generated["static_resources"]["listeners"] = listener;
    // A DestinationRule SIMPLE cluster as the pilot emits it: roots by
    // pilot-agent's file name, fetched over SDS like the workload's.
    let file_root = format!("file-root:{}", s(&d("ca/root-cert.pem")));
    if let Some(clusters) = generated["static_resources"]["clusters"].as_array_mut() {
        clusters.push(serde_json::json!({
            "name": "external",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "external", "endpoints": []},
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": {
                        "validation_context_sds_secret_config": {"name": file_root, "sds_config": sds()}
                    }
                }
            }
        }));
    }
    std::fs::write(d("envoy.json"), generated.to_string()).expect("write");
    let _sidecar = if ours {
        Proc::spawn(
            "halyard proxy",
            halyard()
                .args([
                    "proxy",
                    "--bootstrap",
                    &s(&d("envoy.json")),
                    "--no-ready-port",
                ])
                .args(["--ca-address", &format!("127.0.0.1:{secure}")])
                .args(["--ca-root", &s(&d("ca/root-cert.pem"))])
                .args(["--token", &s(&d("sleep.token"))])
                .args(["--namespace", "default", "--service-account", "sleep"]),
            dir,
        )
    } else {
        Proc::spawn(
            "envoy",
            std::process::Command::new(envoy)
                .args(["-c", &s(&d("envoy.json")), "--base-id"])
                .arg(format!("{}", port))
                .args(["-l", "warning"]),
            dir,
        )
    };

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let token = |sa: &str| token(sa);
    let root = std::fs::read_to_string(d("ca/root-cert.pem")).expect("root");
    // A mesh client's certificate, from the same CA.
    let client_creds = rt.block_on(async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{secure}"))
                .expect("endpoint")
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(&root))
                        .domain_name("istiod.istio-system.svc"),
                )
                .expect("tls")
                .connect()
                .await
                .expect("connect to the CA");
        let key = identity::WorkloadKey::generate().expect("key");
        let me = identity::SpiffeId::new("cluster.local", "default", "client");
        let chain = identity::client::create_certificate(
            channel,
            &key.csr(&me).expect("csr"),
            &token("client"),
            Duration::ZERO,
        )
        .await
        .expect("client certificate");
        identity::tls::Credentials::from_pem(
            &chain,
            &key.private_key_pem(),
            std::slice::from_ref(&root),
        )
        .expect("creds")
    });
    let sleep = identity::SpiffeId::new("cluster.local", "default", "sleep");
    let config = identity::tls::client_config(
        client_creds,
        std::slice::from_ref(&root),
        &["cluster.local".to_string()],
        std::slice::from_ref(&sleep),
    )
    .expect("client config");
    let connect = |config: Arc<rustls_config::ClientConfig>| {
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            let name =
                rustls_config::pki_types::ServerName::try_from("sleep.default").expect("name");
            let mut tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(identity::tls::spiffe_id);
            let group = tls
                .get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()));
            eprintln!("key exchange with {who}: {group:?}");
            tls.write_all(b"GET / HTTP/1.1\r\nHost: sleep\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            // Envoy may close without close_notify after its response.
            let mut body = Vec::new();
            match tls.read_to_end(&mut body).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !body.is_empty() => {}
                Err(e) => return Err(e.to_string()),
            }
            Ok::<_, String>((peer, String::from_utf8_lossy(&body).to_string()))
        })
    };
    // The listener serves once both secrets are there.
    let (peer, body) = wait_for(
        &format!("{who} serving mTLS with SDS secrets"),
        Duration::from_secs(30),
        || match connect(config.clone()) {
            Ok((peer, body)) if body.contains("hello") => Some((peer, body)),
            other => {
                eprintln!("not yet: {other:?}");
                None
            }
        },
    );
    assert_eq!(peer, Some(sleep), "{who}");
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with("hello from envoy"),
        "{who}: {body}"
    );

    // What Envoy holds, as `istioctl proxy-config secret` shows it.
    let rows = secret_rows(admin).expect("proxy-config secret --output json");
    let by_name = |n: &str| {
        rows.as_array()
            .and_then(|r| r.iter().find(|r| r["resource_name"] == n))
            .cloned()
            .unwrap_or_else(|| panic!("no {n} in {rows}"))
    };
    let default = by_name("default");
    assert_eq!(default["type"], "Cert Chain");
    assert_eq!(default["valid_cert"], true);
    assert_eq!(
        default["identity"],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert!(
        default["serial_number"]
            .as_str()
            .is_some_and(|s| s.len() >= 16),
        "{default}"
    );
    let root = by_name("ROOTCA");
    assert_eq!(root["type"], "CA");
    assert_eq!(root["valid_cert"], true);
    if !ours {
        // The agent read the file-backed name Envoy asked for (ours reads
        // it itself when a connection needs it).
        let file = wait_for(
            "the agent to serve the file root",
            Duration::from_secs(10),
            || {
                let rows = secret_rows(admin)?;
                rows.as_array()?
                    .iter()
                    .find(|r| r["resource_name"] == file_root.as_str())
                    .cloned()
            },
        );
        assert_eq!(
            (file["type"].as_str(), file["valid_cert"].as_bool()),
            (Some("CA"), Some(true)),
            "{file}"
        );
    }
    let table = halyard()
        .args([
            "proxy-config",
            "secret",
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .output()
        .expect("proxy-config");
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.starts_with("RESOURCE NAME") && table.contains("ROOTCA"),
        "{table}"
    );

    // Without a client certificate Envoy refuses.
    let anonymous = rustls_config::ClientConfig::builder_with_provider(identity::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    let refused = connect(Arc::new(anonymous));
    assert!(
        refused.as_ref().map_or(true, |(_, b)| b.is_empty()),
        "{who}: {refused:?}"
    );
}

use tokio_rustls::rustls as rustls_config;

/// `halyard proxy-config secret --admin 127.0.0.1:PORT --output json`.
fn secret_rows(admin: u16) -> Option<serde_json::Value> {
    let out = halyard()
        .args(["proxy-config", "secret", "--admin"])
        .arg(format!("127.0.0.1:{admin}"))
        .args(["--output", "json"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Accepts any server (only to show that the server is the one refusing).
#[derive(Debug)]
struct AcceptAny;

impl rustls_config::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_config::pki_types::CertificateDer<'_>,
        _: &[rustls_config::pki_types::CertificateDer<'_>],
        _: &rustls_config::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_config::pki_types::UnixTime,
    ) -> Result<rustls_config::client::danger::ServerCertVerified, rustls_config::Error> {
        Ok(rustls_config::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_config::pki_types::CertificateDer<'_>,
        d: &rustls_config::DigitallySignedStruct,
    ) -> Result<rustls_config::client::danger::HandshakeSignatureValid, rustls_config::Error> {
        rustls_config::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &identity::tls::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_config::pki_types::CertificateDer<'_>,
        d: &rustls_config::DigitallySignedStruct,
    ) -> Result<rustls_config::client::danger::HandshakeSignatureValid, rustls_config::Error> {
        rustls_config::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &identity::tls::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls_config::SignatureScheme> {
        identity::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
