//! The pilot's CA end to end: `pilot::run` with a CA directory serves Istio's
//! certificate service over TLS (its own certificate from the mesh root); a
//! workload with a token for its service account gets a certificate for that
//! identity and no other.

use std::path::Path;
use std::time::{Duration, SystemTime};

use identity::{SpiffeId, TokenIssuer, WorkloadKey};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

async fn start(dir: &Path, token_key: &Path) -> std::net::SocketAddr {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let opts = pilot::PilotOptions {
        config_dir: config,
        registry_dir: None,
        xds_addr: "127.0.0.1:0".parse().expect("addr"),
        debug_addr: "127.0.0.1:0".parse().expect("addr"),
        debounce: Duration::from_millis(100),
        dns_addr: None,
        auto_allocate: false,
        push_throttle: pilot::DEFAULT_PUSH_THROTTLE,
        send_timeout: Some(pilot::DEFAULT_SEND_TIMEOUT),
        ca: Some(pilot::CaOptions {
            dir: dir.join("ca"),
            token_key: token_key.to_path_buf(),
            secure_addr: "127.0.0.1:0".parse().expect("addr"),
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: Vec::new(),
            auto_mtls: true,
            workload_ttl: Duration::from_secs(3600),
        }),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Err(e) = pilot::run(opts, Some(tx)).await {
            panic!("pilot: {e}");
        }
    });
    rx.await
        .expect("pilot started")
        .secure_addr
        .expect("TLS port")
}

async fn channel(addr: std::net::SocketAddr, root_pem: &str) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root_pem))
                .domain_name("istiod.istio-system.svc"),
        )
        .expect("tls")
        .connect()
        .await
        .expect("TLS connection to the pilot, verified against the mesh root")
}

/// The SPIFFE id of a PEM certificate.
fn spiffe_of(pem_text: &str) -> Option<SpiffeId> {
    let der = pem::parse(pem_text).expect("pem").into_contents();
    identity::tls::spiffe_id(&der.into())
}

#[tokio::test]
async fn workloads_get_certificates_for_their_own_identity_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = TokenIssuer::generate().expect("token key");
    let token_key = dir.path().join("sa-token.pub");
    std::fs::write(&token_key, tokens.public_pem()).expect("write");
    let addr = start(dir.path(), &token_key).await;
    let root = std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).expect("root");
    let ch = channel(addr, &root).await;

    let me = SpiffeId::new("cluster.local", "default", "sleep");
    let key = WorkloadKey::generate().expect("key");
    let token = tokens
        .issue(
            "default",
            "sleep",
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .expect("token");
    let chain = identity::client::create_certificate(
        ch.clone(),
        &key.csr(&me).expect("csr"),
        &token,
        Duration::ZERO,
    )
    .await
    .expect("issued");
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(spiffe_of(&chain[0]), Some(me.clone()));
    assert_eq!(chain[1].trim(), root.trim());

    // The same token, a CSR for someone else.
    let other = SpiffeId::new("cluster.local", "payments", "payments-api");
    let err = identity::client::create_certificate(
        ch.clone(),
        &key.csr(&other).expect("csr"),
        &token,
        Duration::ZERO,
    )
    .await
    .expect_err("not its identity");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

    // A token from another key, and none at all.
    let forger = TokenIssuer::generate().expect("key");
    let forged = forger
        .issue(
            "payments",
            "payments-api",
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .expect("token");
    for bad in [forged.as_str(), ""] {
        let err = identity::client::create_certificate(
            ch.clone(),
            &key.csr(&other).expect("csr"),
            bad,
            Duration::ZERO,
        )
        .await
        .expect_err("forged");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    }

    // Not a CSR.
    let err = identity::client::create_certificate(ch, "hello", &token, Duration::ZERO)
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

#[tokio::test]
async fn a_broken_ca_directory_stops_the_pilot_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    std::fs::create_dir_all(&ca).expect("mkdir");
    std::fs::write(ca.join("ca-cert.pem"), "not a certificate").expect("write");
    let token_key = dir.path().join("sa-token.pub");
    std::fs::write(&token_key, TokenIssuer::generate().expect("k").public_pem()).expect("write");
    let opts = pilot::PilotOptions {
        config_dir: dir.path().to_path_buf(),
        registry_dir: None,
        xds_addr: "127.0.0.1:0".parse().expect("addr"),
        debug_addr: "127.0.0.1:0".parse().expect("addr"),
        debounce: Duration::from_millis(100),
        dns_addr: None,
        auto_allocate: false,
        push_throttle: pilot::DEFAULT_PUSH_THROTTLE,
        send_timeout: None,
        ca: Some(pilot::CaOptions {
            dir: ca,
            token_key,
            secure_addr: "127.0.0.1:0".parse().expect("addr"),
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: Vec::new(),
            auto_mtls: true,
            workload_ttl: Duration::from_secs(3600),
        }),
    };
    let err = pilot::run(opts, None).await.expect_err("must not start");
    let text = err.to_string();
    assert!(
        text.contains("ca-key.pem") || text.contains("ca-cert.pem"),
        "{text}"
    );
}
