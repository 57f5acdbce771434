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
        extension_providers: Vec::new(),
        access_log: None,
        path_normalization: Default::default(),
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

/// A token issuer and a pilot that trusts it, started in `dir`.
async fn start_with_tokens(dir: &Path) -> (TokenIssuer, std::net::SocketAddr) {
    let tokens = TokenIssuer::generate().expect("token key");
    let token_key = dir.join("sa-token.pub");
    std::fs::write(&token_key, tokens.public_pem()).expect("write");
    (tokens, start(dir, &token_key).await)
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
    let (tokens, addr) = start_with_tokens(dir.path()).await;
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
        extension_providers: Vec::new(),
        access_log: None,
        path_normalization: Default::default(),
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

/// The certificates in one element of an answer.
fn count(pem_text: &str) -> usize {
    pem::parse_many(pem_text).map_or(0, |p| p.len())
}

/// Istio's root rotation on a running pilot: the CA directory's files are
/// rewritten in three steps and the pilot reloads them, its answers carrying
/// the trust bundle and its own certificate re-issued by the new signer; a
/// broken file on the way keeps the previous CA.
#[tokio::test]
async fn the_ca_directory_is_reloaded_through_a_root_rotation() {
    use identity::ca::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
    let dir = tempfile::tempdir().expect("tempdir");
    let (tokens, addr) = start_with_tokens(dir.path()).await;
    let ca = dir.path().join("ca");
    let root_a = std::fs::read_to_string(ca.join(ROOT_CERT)).expect("root A");
    let b = dir.path().join("b");
    identity::Ca::create_plug_in(&b, "cluster.local", "Root B", SystemTime::now()).expect("B");
    let root_b = std::fs::read_to_string(b.join(ROOT_CERT)).expect("root B");
    let inter_b = std::fs::read_to_string(b.join(CA_CERT)).expect("B's intermediate");

    let me = SpiffeId::new("cluster.local", "default", "sleep");
    let token = tokens
        .issue(
            "default",
            "sleep",
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .expect("token");
    let ask = |ch: Channel| {
        let (csr, token) = (
            WorkloadKey::generate().expect("key").csr(&me).expect("csr"),
            token.clone(),
        );
        async move {
            identity::client::create_certificate(ch, &csr, &token, Duration::ZERO)
                .await
                .expect("issued")
        }
    };
    // Poll (at most 10 s) until an answer satisfies `done`.
    async fn until(
        what: &str,
        mut answer: impl AsyncFnMut() -> Vec<String>,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let a = answer().await;
            if done(&a) {
                return a;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {a:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let via_a = channel(addr, &root_a).await;
    let first = ask(via_a.clone()).await;
    assert_eq!((first.len(), count(&first[1])), (2, 1));

    // 1. Both roots, still signing with A.
    std::fs::write(ca.join(ROOT_CERT), format!("{root_a}{root_b}")).expect("write");
    let a1 = until(
        "the bundle [A, B]",
        async || ask(via_a.clone()).await,
        |a| a.len() == 2 && count(&a[1]) == 2,
    )
    .await;
    assert_eq!(a1[1], format!("{root_a}{root_b}"));

    // 2. An intermediate under B signs; the pilot's own certificate is B's.
    for f in [CA_CERT, CA_KEY, CERT_CHAIN] {
        std::fs::copy(b.join(f), ca.join(f)).expect("copy");
    }
    let a2 = until(
        "signing with B",
        async || ask(via_a.clone()).await,
        |a| a.len() == 3,
    )
    .await;
    assert_eq!(a2[1], inter_b);
    assert_eq!(count(&a2[2]), 2);
    let via_b = channel(addr, &root_b).await;
    assert_eq!(
        ask(via_b.clone()).await.len(),
        3,
        "the pilot verifies against B"
    );

    // A broken file is refused and B's intermediate keeps signing.
    std::fs::write(ca.join(CA_CERT), "not a certificate").expect("write");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ask(via_b.clone()).await[1], inter_b);
    std::fs::write(ca.join(CA_CERT), &inter_b).expect("write");

    // 3. B alone.
    std::fs::write(ca.join(ROOT_CERT), &root_b).expect("write");
    let a3 = until(
        "the bundle [B]",
        async || ask(via_b.clone()).await,
        |a| a.len() == 3 && count(&a[2]) == 1,
    )
    .await;
    assert_eq!(a3[2], root_b);
}
