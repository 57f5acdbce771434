use super::*;

/// A CA and one workload certificate, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = identity::Ca::from_dir(&dir.path().join("ca"), "cluster.local").unwrap();
        let key = identity::WorkloadKey::generate().unwrap();
        let id = identity::SpiffeId::new("cluster.local", "default", "server");
        let issued = ca
            .sign(
                &key.csr(&id).unwrap(),
                &id,
                std::time::Duration::from_secs(3600),
                std::time::SystemTime::now(),
            )
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), issued.chain.join("")).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.private_key_pem()).unwrap();
        std::fs::write(dir.path().join("root.pem"), issued.roots.join("")).unwrap();
        Pki { dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }
}

fn downstream(yaml: &str) -> Result<Arc<TlsSocket>, ConfigError> {
    let ctx: tls::DownstreamTlsContext = xds::json::from_yaml(yaml).expect("yaml");
    TlsSocket::downstream(&ctx)
}

fn upstream(yaml: &str) -> Result<Arc<TlsSocket>, ConfigError> {
    let ctx: tls::UpstreamTlsContext = xds::json::from_yaml(yaml).expect("yaml");
    TlsSocket::upstream(&ctx)
}

const SDS: &str = "sds_config: {api_config_source: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}], set_node_on_first_message_only: true, transport_api_version: V3}, initial_fetch_timeout: 0s, resource_api_version: V3}";

#[test]
fn istio_inbound_context_reads_sds_names_san_prefix_and_alpn() {
    let s = downstream(&format!(
        r#"
common_tls_context:
  tls_params: {{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3, cipher_suites: [ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, AES256-GCM-SHA384, AES128-GCM-SHA256]}}
  alpn_protocols: [h2, http/1.1]
  tls_certificate_sds_secret_configs: [{{name: default, {SDS}}}]
  combined_validation_context:
    default_validation_context: {{match_subject_alt_names: [{{prefix: "spiffe://cluster.local/"}}]}}
    validation_context_sds_secret_config: {{name: ROOTCA, {SDS}}}
require_client_certificate: true
"#
    ))
    .expect("Istio's inbound context");
    assert_eq!(
        s.side,
        Side::Downstream {
            require_client_certificate: true
        }
    );
    assert_eq!(s.alpn, ["h2", "http/1.1"]);
    assert_eq!(s.certificate, Some(Source::Sds("default".into())));
    let v = s.validation.as_ref().expect("validation");
    assert_eq!(v.roots, Some(Source::Sds("ROOTCA".into())));
    assert_eq!(v.san.len(), 1);
    assert_eq!(s.secret_names().collect::<Vec<_>>(), ["default", "ROOTCA"]);
    assert_eq!(
        s.versions,
        Versions {
            tls12: true,
            tls13: true
        }
    );
}

#[test]
fn files_are_read_when_accepted_and_a_missing_one_is_named() {
    let pki = Pki::new();
    let s = upstream(&format!(
        "common_tls_context:\n  tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}]\n  validation_context:\n    trusted_ca: {{filename: {}}}\n    match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"spiffe://cluster.local/ns/default/sa/server\"}}}}]\nsni: outbound_.9080_._.reviews.default.svc.cluster.local\n",
        pki.path("cert.pem"),
        pki.path("key.pem"),
        pki.path("root.pem")
    ))
    .expect("file-based upstream context");
    assert!(matches!(s.certificate, Some(Source::Pem(_))));
    assert_eq!(
        s.side,
        Side::Upstream {
            sni: "outbound_.9080_._.reviews.default.svc.cluster.local".into()
        }
    );
    let e = upstream(&format!(
        "common_tls_context:\n  validation_context: {{trusted_ca: {{filename: {}/nope.pem}}}}\n",
        pki.dir.path().display()
    ))
    .expect_err("missing file");
    assert_eq!(
        e.path,
        "common_tls_context.validation_context.trusted_ca.filename"
    );
    assert!(e.to_string().contains("nope.pem"), "{e}");
    // A key that is not the certificate's.
    let other = Pki::new();
    let e = upstream(&format!(
        "common_tls_context:\n  tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}]\n",
        pki.path("cert.pem"),
        other.path("key.pem"),
    ))
    .expect_err("mismatched key");
    assert!(
        e.to_string().contains("does not match the private key"),
        "{e}"
    );
}

#[test]
fn envoy_refusals_are_kept() {
    let e = upstream(
        "common_tls_context:\n  validation_context: {match_subject_alt_names: [{exact: a}]}\n",
    )
    .expect_err("SAN without CA");
    assert!(e.to_string().contains("without trusted CA"), "{e}");
    let e = downstream("common_tls_context: {alpn_protocols: [h2]}\n").expect_err("no cert");
    assert!(
        e.to_string().contains("a server needs a certificate"),
        "{e}"
    );
    let e = downstream(&format!(
        "common_tls_context:\n  tls_certificate_sds_secret_configs: [{{name: default, {SDS}}}]\nrequire_client_certificate: true\n"
    ))
    .expect_err("require without validation");
    assert_eq!(e.path, "require_client_certificate");
    let e =
        upstream("common_tls_context:\n  tls_params: {tls_maximum_protocol_version: TLSv1_1}\n")
            .expect_err("old TLS");
    assert!(e.to_string().contains("older than 1.2"), "{e}");
    // ACCEPT_UNTRUSTED keeps the SAN check but drops the chain check.
    let s = upstream("common_tls_context:\n  validation_context: {trust_chain_verification: ACCEPT_UNTRUSTED, match_subject_alt_names: [{exact: a}]}\n")
        .expect("accept untrusted");
    assert!(s.validation.as_ref().unwrap().roots.is_none());
}

#[test]
fn equal_contexts_are_one_socket_for_host_pools() {
    let a = upstream("sni: a\n").unwrap();
    let b = upstream("sni: a\n").unwrap();
    let c = upstream("sni: c\n").unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}
