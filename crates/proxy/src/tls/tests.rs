use super::*;
use crate::config::route::StringMatch;

fn names(uris: &[&str], dns: &[&str]) -> identity::tls::CertNames {
    identity::tls::CertNames {
        uris: uris.iter().map(|s| s.to_string()).collect(),
        dns: dns.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn m(kind: Option<SanKind>, matcher: StringMatch) -> SanMatcher {
    SanMatcher {
        san_type: kind,
        matcher,
    }
}

#[test]
fn san_matchers_follow_envoy() {
    let sleep = names(&["spiffe://cluster.local/ns/default/sa/sleep"], &[]);
    let prefix = [m(
        None,
        StringMatch::Prefix("spiffe://cluster.local/".into(), false),
    )];
    assert!(san_matches(&prefix, &sleep));
    let other_td = names(&["spiffe://evil.local/ns/default/sa/sleep"], &[]);
    assert!(!san_matches(&prefix, &other_td));
    // A typed matcher looks only at its SAN type.
    let dns_only = [m(
        Some(SanKind::Dns),
        StringMatch::Exact("spiffe://cluster.local/ns/default/sa/sleep".into(), false),
    )];
    assert!(!san_matches(&dns_only, &sleep));
    // Exact DNS matchers match wildcard certificates, one label deep.
    let wild = names(&[], &["*.example.com"]);
    let exact = |v: &str| [m(Some(SanKind::Dns), StringMatch::Exact(v.into(), false))];
    assert!(san_matches(&exact("api.example.com"), &wild));
    assert!(!san_matches(&exact("a.b.example.com"), &wild));
    assert!(!san_matches(&exact("example.com"), &wild));
}

#[test]
fn cipher_lists_in_envoy_syntax() {
    let list = vec![
        "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]".to_string(),
        "ECDHE-RSA-AES128-GCM-SHA256:AES128-GCM-SHA256".to_string(),
    ];
    assert_eq!(known_tls12_suites(&list), 3);
    let p = provider(&list, &[]);
    let tls12: Vec<_> = p
        .cipher_suites
        .iter()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
        .map(|s| s.suite())
        .collect();
    assert_eq!(tls12.len(), 3, "{tls12:?}");
    assert!(
        p.cipher_suites
            .iter()
            .any(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
    );
}

#[test]
fn secrets_bump_the_generation_and_configs_follow() {
    let secrets = Secrets::default();
    let ctx: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext =
        xds::json::from_yaml(
            "common_tls_context:\n  tls_certificate_sds_secret_configs: [{name: default}]\n  validation_context_sds_secret_config: {name: ROOTCA}\n",
        )
        .unwrap();
    let socket = TlsSocket::upstream(&ctx).unwrap();
    let e = socket
        .client_config(&secrets, false)
        .expect_err("nothing yet");
    assert_eq!(e, "SDS secret default not delivered yet");

    let dir = tempfile::tempdir().unwrap();
    let ca = identity::Ca::from_dir(dir.path(), "cluster.local").unwrap();
    let key = identity::WorkloadKey::generate().unwrap();
    let id = identity::SpiffeId::new("cluster.local", "default", "sleep");
    let issued = ca
        .sign(
            &key.csr(&id).unwrap(),
            &id,
            std::time::Duration::from_secs(600),
            std::time::SystemTime::now(),
        )
        .unwrap();
    let before = secrets.generation();
    secrets.set_all([
        (
            "default".to_string(),
            Secret::Certificate(CertPem {
                chain: issued.chain.join(""),
                key: key.private_key_pem(),
            }),
        ),
        ("ROOTCA".to_string(), Secret::Roots(issued.roots.join(""))),
    ]);
    assert!(secrets.generation() > before);
    let a = socket.client_config(&secrets, false).expect("built");
    let b = socket.client_config(&secrets, false).expect("cached");
    assert!(Arc::ptr_eq(&a, &b), "one build per generation");
    secrets.set("ROOTCA", Secret::Roots(issued.roots.join("")));
    let c = socket.client_config(&secrets, false).expect("rebuilt");
    assert!(!Arc::ptr_eq(&a, &c), "a secret change rebuilds");
}
