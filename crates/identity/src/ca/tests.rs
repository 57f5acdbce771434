use super::*;
use crate::WorkloadKey;

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa)
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("pem").into_contents()
}

fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, c) = X509Certificate::from_der(der).expect("x509");
    let Ok(Some(san)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn self_signed_root_is_created_once_and_signs_workloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::from_dir(dir.path(), "cluster.local").expect("create");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(CA_KEY))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key is the owner's only");

    let key = WorkloadKey::generate().expect("key");
    let who = id("payments", "payments-api");
    let issued = ca
        .sign(&key.csr(&who).expect("csr"), &who, Duration::ZERO, now())
        .expect("signed");
    assert_eq!(issued.chain.len(), 2, "leaf and root");
    let leaf = der_of(&issued.chain[0]);
    let root = der_of(&issued.chain[1]);
    assert!(signed_by(&leaf, &root), "the leaf chains to the root");
    assert_eq!(issued.roots, vec![issued.chain[1].clone()]);
    assert_eq!(uri_sans(&leaf), [who.to_string()]);
    let (_, cert) = X509Certificate::from_der(&leaf).expect("x509");
    assert!(!cert.is_ca());
    let life = issued
        .not_after
        .duration_since(issued.not_before)
        .expect("order");
    assert_eq!(life, DEFAULT_WORKLOAD_TTL + BACKDATE);
    let eku = cert.extended_key_usage().expect("eku").expect("present");
    assert!(eku.value.server_auth && eku.value.client_auth);

    // A restart loads the same root instead of making a new one.
    let again = Ca::from_dir(dir.path(), "cluster.local").expect("load");
    assert_eq!(again.roots(), ca.roots());
}

#[test]
fn refuses_csrs_for_anything_but_the_callers_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::from_dir(dir.path(), "cluster.local").expect("create");
    let key = WorkloadKey::generate().expect("key");
    let caller = id("default", "sleep");

    // Another workload's identity.
    let other = key.csr(&id("payments", "payments-api")).expect("csr");
    assert!(matches!(
        ca.sign(&other, &caller, Duration::ZERO, now()),
        Err(SignError::Identity { .. })
    ));

    // The right identity plus an extra SAN.
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(caller.to_string().try_into().expect("uri")),
        SanType::DnsName("payments.example.com".try_into().expect("dns")),
    ];
    let kp = KeyPair::generate().expect("kp");
    let extra = params
        .serialize_request(&kp)
        .expect("csr")
        .pem()
        .expect("pem");
    let err = ca
        .sign(&extra, &caller, Duration::ZERO, now())
        .expect_err("extra SAN");
    assert!(err.to_string().contains("payments.example.com"), "{err}");

    // Garbage, and a CSR whose signature does not match its content.
    assert!(matches!(
        ca.sign("not a csr", &caller, Duration::ZERO, now()),
        Err(SignError::Malformed(_))
    ));
    let good = key.csr(&caller).expect("csr");
    let mut der = der_of(&good);
    let at = der.len() - 10;
    der[at] ^= 0xff;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    assert!(matches!(
        ca.sign(&tampered, &caller, Duration::ZERO, now()),
        Err(SignError::Malformed(_))
    ));

    // A caller from another trust domain.
    let foreign = caller.in_domain("evil.example");
    assert!(matches!(
        ca.sign(
            &key.csr(&foreign).expect("csr"),
            &foreign,
            Duration::ZERO,
            now()
        ),
        Err(SignError::TrustDomain { .. })
    ));
}

#[test]
fn ttl_is_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::from_dir(dir.path(), "cluster.local").expect("create");
    let key = WorkloadKey::generate().expect("key");
    let who = id("default", "sleep");
    let csr = key.csr(&who).expect("csr");
    let t = now();
    let long = ca
        .sign(&csr, &who, Duration::from_secs(1000 * 24 * 3600), t)
        .expect("signed");
    assert_eq!(long.not_after, t + MAX_WORKLOAD_TTL);
    let short = ca
        .sign(&csr, &who, Duration::from_secs(60), t)
        .expect("signed");
    assert_eq!(short.not_after, t + Duration::from_secs(60));
    assert_ne!(long.serial, short.serial, "serials are unique");
}

/// A root and an intermediate in Istio's plug-in layout.
struct PlugIn {
    dir: tempfile::TempDir,
    root_key: KeyPair,
    root_params: CertificateParams,
}

fn ca_params(org: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, org);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn plug_in() -> PlugIn {
    let dir = tempfile::tempdir().expect("tempdir");
    let root_key = KeyPair::generate().expect("key");
    let root_params = ca_params("Root CA");
    let root = root_params.self_signed(&root_key).expect("root");
    let inter_key = KeyPair::generate().expect("key");
    let issuer = Issuer::from_params(&root_params, &root_key);
    let inter = ca_params("Intermediate CA")
        .signed_by(&inter_key, &issuer)
        .expect("intermediate");
    let w = |f: &str, t: String| std::fs::write(dir.path().join(f), t).expect("write");
    w(CA_CERT, inter.pem());
    w(CA_KEY, inter_key.serialize_pem());
    w(ROOT_CERT, root.pem());
    w(CERT_CHAIN, format!("{}{}", inter.pem(), root.pem()));
    PlugIn {
        dir,
        root_key,
        root_params,
    }
}

#[test]
fn plug_in_intermediate_signs_with_its_chain() {
    let p = plug_in();
    let _ = (&p.root_key, &p.root_params);
    let ca = Ca::from_dir(p.dir.path(), "cluster.local").expect("load");
    let key = WorkloadKey::generate().expect("key");
    let who = id("default", "sleep");
    let issued = ca
        .sign(&key.csr(&who).expect("csr"), &who, Duration::ZERO, now())
        .expect("signed");
    assert_eq!(issued.chain.len(), 3, "leaf, intermediate, root");
    let ders: Vec<Vec<u8>> = issued.chain.iter().map(|c| der_of(c)).collect();
    assert!(signed_by(&ders[0], &ders[1]));
    assert!(signed_by(&ders[1], &ders[2]));
    assert_eq!(issued.roots.len(), 1);
}

#[test]
fn broken_plug_in_files_are_named() {
    let expect_err = |dir: &Path, file: &str| {
        let err = Ca::from_dir(dir, "cluster.local").expect_err("must fail");
        assert!(err.to_string().contains(file), "{err} should name {file}");
    };
    // A missing file.
    let p = plug_in();
    std::fs::remove_file(p.dir.path().join(CERT_CHAIN)).expect("rm");
    expect_err(p.dir.path(), CERT_CHAIN);

    // A key that is not the certificate's.
    let p = plug_in();
    let other = KeyPair::generate().expect("key");
    std::fs::write(p.dir.path().join(CA_KEY), other.serialize_pem()).expect("write");
    expect_err(p.dir.path(), CA_KEY);

    // A root that did not sign the chain.
    let p = plug_in();
    let stranger_key = KeyPair::generate().expect("key");
    let stranger = ca_params("Root CA")
        .self_signed(&stranger_key)
        .expect("root");
    std::fs::write(p.dir.path().join(ROOT_CERT), stranger.pem()).expect("write");
    expect_err(p.dir.path(), ROOT_CERT);

    // Garbage instead of a certificate.
    let p = plug_in();
    std::fs::write(p.dir.path().join(CA_CERT), "hello").expect("write");
    expect_err(p.dir.path(), CA_CERT);

    // A leaf certificate posing as the CA.
    let p = plug_in();
    let leaf_key = KeyPair::generate().expect("key");
    let issuer = Issuer::from_params(&p.root_params, &p.root_key);
    let leaf = CertificateParams::new(vec!["x.example".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    std::fs::write(p.dir.path().join(CA_CERT), leaf.pem()).expect("write");
    std::fs::write(p.dir.path().join(CA_KEY), leaf_key.serialize_pem()).expect("write");
    expect_err(p.dir.path(), CA_CERT);
}

/// Istio's root rotation, as the CA directory goes through it: a
/// self-signed root A; the bundle [A, B] still signing with A; an
/// intermediate under B with the bundle [A, B]; B alone.
#[test]
fn a_trust_bundle_of_two_roots_is_given_to_every_workload() {
    let a = tempfile::tempdir().expect("tempdir");
    Ca::create_self_signed(a.path(), "cluster.local", now()).expect("root A");
    let b = tempfile::tempdir().expect("tempdir");
    Ca::create_plug_in(b.path(), "cluster.local", "Root B", now()).expect("root B");
    let file =
        |d: &tempfile::TempDir, f: &str| std::fs::read_to_string(d.path().join(f)).expect("read");
    let (root_a, root_b) = (file(&a, ROOT_CERT), file(&b, ROOT_CERT));
    let key = WorkloadKey::generate().expect("key");
    let who = id("default", "sleep");
    let csr = key.csr(&who).expect("csr");
    let issuer_of = |pem_text: &str| {
        let der = der_of(pem_text);
        let (_, c) = X509Certificate::from_der(&der).expect("x509");
        c.issuer().to_string()
    };

    // 1. Both roots trusted, still signing with A.
    std::fs::write(a.path().join(ROOT_CERT), format!("{root_a}{root_b}")).expect("write");
    let ca = Ca::from_dir(a.path(), "cluster.local").expect("A with [A, B]");
    assert_eq!(ca.roots().len(), 2);
    let issued = ca.sign(&csr, &who, Duration::ZERO, now()).expect("signed");
    assert_eq!(issued.roots.len(), 2);
    let wire = issued.cert_chain();
    assert_eq!(wire.len(), 2, "leaf, then the bundle: {wire:?}");
    assert_eq!(wire[1], format!("{}{}", issued.roots[0], issued.roots[1]));
    assert!(signed_by(&der_of(&wire[0]), &der_of(&root_a)));

    // 2. Signing with an intermediate under B, both roots still trusted.
    let dir = tempfile::tempdir().expect("tempdir");
    for f in [CA_CERT, CA_KEY, CERT_CHAIN] {
        std::fs::copy(b.path().join(f), dir.path().join(f)).expect("copy");
    }
    std::fs::write(dir.path().join(ROOT_CERT), format!("{root_a}{root_b}")).expect("write");
    let ca = Ca::from_dir(dir.path(), "cluster.local").expect("B's intermediate with [A, B]");
    let issued = ca.sign(&csr, &who, Duration::ZERO, now()).expect("signed");
    let wire = issued.cert_chain();
    assert_eq!(wire.len(), 3, "leaf, intermediate, the bundle");
    let inter = file(&b, CA_CERT);
    assert_eq!(wire[1], inter);
    assert!(signed_by(&der_of(&wire[0]), &der_of(&inter)));
    assert!(issuer_of(&wire[0]).contains("Root B intermediate"));
    assert_eq!(pem::parse_many(&wire[2]).expect("pem").len(), 2);

    // 3. B alone.
    std::fs::write(dir.path().join(ROOT_CERT), &root_b).expect("write");
    let ca = Ca::from_dir(dir.path(), "cluster.local").expect("B");
    let issued = ca.sign(&csr, &who, Duration::ZERO, now()).expect("signed");
    assert_eq!(issued.roots.len(), 1);
    assert_eq!(issued.cert_chain().last(), Some(&root_b));

    // B's intermediate with only A trusted is refused, naming the bundle.
    std::fs::write(dir.path().join(ROOT_CERT), &root_a).expect("write");
    let err = Ca::from_dir(dir.path(), "cluster.local").expect_err("foreign root");
    assert!(err.to_string().contains(ROOT_CERT), "{err}");
    // So is a bundle with a certificate that is no CA.
    let leaf = &issued.chain[0];
    std::fs::write(dir.path().join(ROOT_CERT), format!("{root_b}{leaf}")).expect("write");
    let err = Ca::from_dir(dir.path(), "cluster.local").expect_err("leaf in the bundle");
    assert!(
        err.to_string().contains(ROOT_CERT) && err.to_string().contains("certificate 2 of 2"),
        "{err}"
    );
}
