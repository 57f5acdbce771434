use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::{Ca, WorkloadKey};

struct Mesh {
    _dir: tempfile::TempDir,
    ca: Ca,
}

fn mesh(trust_domain: &str) -> Mesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::from_dir(dir.path(), trust_domain).expect("ca");
    Mesh { _dir: dir, ca }
}

fn td(m: &Mesh) -> Vec<String> {
    vec![m.ca.trust_domain().to_string()]
}

fn creds_at(m: &Mesh, ns: &str, sa: &str, now: SystemTime, ttl: Duration) -> Credentials {
    let key = WorkloadKey::generate().expect("key");
    let id = SpiffeId::new(m.ca.trust_domain(), ns, sa);
    let issued =
        m.ca.sign(&key.csr(&id).expect("csr"), &id, ttl, now)
            .expect("signed");
    Credentials::from_pem(&issued.chain, &key.private_key_pem(), &issued.roots).expect("creds")
}

fn creds(m: &Mesh, ns: &str, sa: &str) -> Credentials {
    creds_at(m, ns, sa, SystemTime::now(), Duration::from_secs(3600))
}

/// A client without a certificate that accepts any mesh server.
fn anonymous(roots: &[String], trust_domains: &[String]) -> Arc<ClientConfig> {
    let verifier = server_verifier(
        Some(Arc::new(root_store(roots).expect("roots"))),
        Some(spiffe_check(trust_domains, &[])),
    );
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// What each side saw of one connection.
struct Outcome {
    server: Result<Option<SpiffeId>, String>,
    client: Result<(Option<SpiffeId>, String), String>,
}

async fn handshake(server: Arc<ServerConfig>, client: Option<Arc<ClientConfig>>) -> Outcome {
    let (a, b) = tokio::io::duplex(64 << 10);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let server = tokio::spawn(async move {
        let mut s = acceptor.accept(a).await.map_err(|e| e.to_string())?;
        let peer = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(spiffe_id);
        s.write_all(b"ok").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let client = match client {
        Some(config) => {
            let connector = tokio_rustls::TlsConnector::from(config);
            let name = ServerName::try_from("outbound.mesh").expect("name");
            match connector.connect(name, b).await {
                Ok(mut c) => {
                    let peer = c
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(spiffe_id);
                    let group = c
                        .get_ref()
                        .1
                        .negotiated_key_exchange_group()
                        .map(|g| format!("{:?}", g.name()))
                        .unwrap_or_default();
                    let mut buf = [0u8; 2];
                    match c.read_exact(&mut buf).await {
                        Ok(_) => Ok((peer, group)),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        }
        None => {
            // A plaintext client: an HTTP request line where TLS is expected.
            let mut b = b;
            let _ = b.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut buf = Vec::new();
            let _ = b.read_to_end(&mut buf).await;
            Err("plaintext".into())
        }
    };
    let server = server.await.expect("server task");
    Outcome { server, client }
}

#[tokio::test]
async fn mutual_tls_between_mesh_workloads_carries_both_identities() {
    let m = mesh("cluster.local");
    let roots = m.ca.roots().to_vec();
    let server = server_config(creds(&m, "payments", "payments-api"), &roots, &td(&m), true)
        .expect("server");
    let want = SpiffeId::new("cluster.local", "payments", "payments-api");
    let client = client_config(
        creds(&m, "orders", "orders-api"),
        &roots,
        &td(&m),
        std::slice::from_ref(&want),
    )
    .expect("client");
    let out = handshake(server, Some(client)).await;
    assert_eq!(
        out.server,
        Ok(Some(SpiffeId::new("cluster.local", "orders", "orders-api")))
    );
    let (peer, group) = out.client.expect("client connected");
    assert_eq!(peer, Some(want));
    assert_eq!(group, "X25519MLKEM768", "post-quantum hybrid preferred");
}

#[tokio::test]
async fn the_client_refuses_a_server_that_is_not_the_expected_identity() {
    let m = mesh("cluster.local");
    let roots = m.ca.roots().to_vec();
    let server =
        server_config(creds(&m, "default", "impostor"), &roots, &td(&m), true).expect("server");
    let want = SpiffeId::new("cluster.local", "payments", "payments-api");
    let client =
        client_config(creds(&m, "orders", "orders-api"), &roots, &td(&m), &[want]).expect("client");
    let out = handshake(server, Some(client)).await;
    let err = out.client.expect_err("refused");
    assert!(err.contains("impostor"), "{err}");
    assert!(out.server.is_err());
}

#[tokio::test]
async fn strict_refuses_other_cas_expired_certs_other_trust_domains_and_plaintext() {
    let m = mesh("cluster.local");
    let roots = m.ca.roots().to_vec();
    let strict = || {
        server_config(creds(&m, "payments", "payments-api"), &roots, &td(&m), true).expect("server")
    };

    // A client with a certificate from another CA (that it trusts itself).
    let other = mesh("cluster.local");
    let mut both = roots.clone();
    both.extend(other.ca.roots().iter().cloned());
    let foreign =
        client_config(creds(&other, "orders", "orders-api"), &both, &td(&m), &[]).expect("client");
    assert!(
        handshake(strict(), Some(foreign)).await.server.is_err(),
        "other CA"
    );

    // An expired certificate from the right CA.
    let old = SystemTime::now() - Duration::from_secs(3 * 3600);
    let expired = client_config(
        creds_at(&m, "orders", "orders-api", old, Duration::from_secs(3600)),
        &roots,
        &td(&m),
        &[],
    )
    .expect("client");
    let out = handshake(strict(), Some(expired)).await;
    assert!(
        out.server
            .as_ref()
            .is_err_and(|e| e.to_lowercase().contains("expired")),
        "{:?}",
        out.server
    );

    // A valid certificate of another trust domain, even if its root is trusted.
    let evil = mesh("evil.example");
    let mut trusted = roots.clone();
    trusted.extend(evil.ca.roots().iter().cloned());
    let server = server_config(
        creds(&m, "payments", "payments-api"),
        &trusted,
        &td(&m),
        true,
    )
    .expect("server");
    let client = client_config(
        creds(&evil, "orders", "orders-api"),
        &trusted,
        &["cluster.local".to_string(), "evil.example".to_string()],
        &[],
    )
    .expect("client");
    let out = handshake(server, Some(client)).await;
    assert!(
        out.server
            .as_ref()
            .is_err_and(|e| e.contains("evil.example")),
        "{:?}",
        out.server
    );

    // No certificate at all, and no TLS at all.
    let anonymous = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(root_store(&roots).expect("roots"))
        .with_no_client_auth();
    assert!(
        handshake(strict(), Some(Arc::new(anonymous)))
            .await
            .server
            .is_err()
    );
    assert!(handshake(strict(), None).await.server.is_err(), "plaintext");
}

#[tokio::test]
async fn permissive_tls_lets_a_client_without_a_certificate_in() {
    let m = mesh("cluster.local");
    let roots = m.ca.roots().to_vec();
    let server = server_config(
        creds(&m, "payments", "payments-api"),
        &roots,
        &td(&m),
        false,
    )
    .expect("server");
    let out = handshake(server, Some(anonymous(&roots, &td(&m)))).await;
    assert_eq!(out.server, Ok(None), "admitted, identity unknown");
    assert!(out.client.is_ok());
}
