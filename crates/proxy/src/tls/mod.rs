//! TLS at run time: the secret store (SDS secrets by name; Istio's `default`
//! and `ROOTCA` are put there by the proxy's own certificate keeper), the
//! rustls configs each TLS socket builds from its config and secrets (built
//! on first use and again only after a secret changed, then shared by every
//! connection), and what a handshake tells the filters about the peer.

pub mod inspector;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};
use tokio::sync::watch;

use crate::config::tls::{CertPem, SanKind, SanMatcher, Side, Source, TlsSocket};

/// One SDS secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// A certificate chain (leaf first) and key (`default`).
    Certificate(CertPem),
    /// Trusted roots, PEM (`ROOTCA`).
    Roots(String),
}

/// SDS secrets by name. Reads are lock-free; every change bumps the
/// generation, so TLS sockets rebuild their configs on next use.
#[derive(Debug)]
pub struct Secrets {
    map: ArcSwap<HashMap<String, Arc<Secret>>>,
    generation: AtomicU64,
    changed: watch::Sender<u64>,
    /// Why the proxy's own workload certificate is not usable (pending or
    /// expired); None when it is, or when the proxy keeps none.
    unready: ArcSwapOption<String>,
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets {
            map: ArcSwap::default(),
            generation: AtomicU64::new(1),
            changed: watch::Sender::new(1),
            unready: ArcSwapOption::empty(),
        }
    }
}

impl Secrets {
    /// Add or replace a secret.
    pub fn set(&self, name: &str, secret: Secret) {
        let secret = Arc::new(secret);
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(name.to_string(), secret.clone());
            m
        });
        self.bump();
    }

    /// Replace several at once (a certificate and its roots rotate together).
    pub fn set_all(&self, secrets: impl IntoIterator<Item = (String, Secret)>) {
        let secrets: Vec<(String, Arc<Secret>)> =
            secrets.into_iter().map(|(n, s)| (n, Arc::new(s))).collect();
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.extend(secrets.iter().cloned());
            m
        });
        self.bump();
    }

    fn bump(&self) {
        let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.changed.send_replace(g);
    }

    /// A secret by name; the names pilot-agent serves from files
    /// (`file-cert:CERT~KEY`, `file-root:CA` or `file-root:system`) are
    /// read when asked for.
    pub fn get(&self, name: &str) -> Option<Arc<Secret>> {
        if let Some(s) = self.map.load().get(name) {
            return Some(s.clone());
        }
        file_secret(name).and_then(Result::ok).map(Arc::new)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every secret, for the admin config dump.
    pub fn all(&self) -> Vec<(String, Arc<Secret>)> {
        let mut v: Vec<_> = self
            .map
            .load()
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Report the workload certificate unusable (None: usable again);
    /// readiness says so until it is.
    pub fn set_unready(&self, why: Option<String>) {
        self.unready.store(why.map(Arc::new));
    }

    pub fn unready(&self) -> Option<Arc<String>> {
        self.unready.load_full()
    }

    /// Resolves on the next change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// The system trust store (Debian's bundle), for `file-root:system`.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Istio's file-backed SDS names (pilot-agent reads the files).
pub fn file_secret(name: &str) -> Option<Result<Secret, String>> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{name}: {p}: {e}"));
    if let Some(paths) = name.strip_prefix("file-cert:") {
        let (cert, key) = paths.split_once('~')?;
        return Some((|| {
            Ok(Secret::Certificate(CertPem {
                chain: read(cert)?,
                key: read(key)?,
            }))
        })());
    }
    let path = name.strip_prefix("file-root:")?;
    let path = if path == "system" { SYSTEM_ROOTS } else { path };
    Some(read(path).map(Secret::Roots))
}

/// Why a secret is not there: its file failed, or SDS has not sent it.
fn missing(name: &str) -> String {
    match file_secret(name) {
        Some(Err(e)) => e,
        _ => format!("SDS secret {name} not delivered yet"),
    }
}

/// A socket's rustls configs for one secret generation.
#[derive(Debug)]
struct Configs {
    generation: u64,
    result: Result<Prepared, String>,
    /// When our certificate expires: the configs (and the TLS sessions
    /// they would resume) are rebuilt then, so a peer sees the expired
    /// certificate in a full handshake instead of resuming past it.
    expires: Option<std::time::SystemTime>,
}

#[derive(Debug)]
enum Prepared {
    /// Without, and with, the SNI checked against the server's DNS SANs.
    Client(Arc<ClientConfig>, Arc<ClientConfig>),
    Server {
        /// Index i negotiates `alpn[i]`; the last one negotiates none.
        by_alpn: Vec<Arc<ServerConfig>>,
        /// Our certificate's URI SAN (`By=` of x-forwarded-client-cert).
        local_uri: Option<Arc<str>>,
    },
}

/// The cache inside a [`TlsSocket`].
#[derive(Debug, Default)]
pub struct Built(ArcSwapOption<Configs>);

/// What a server handshake needs: the config, and our own URI SAN.
pub struct ServerSide {
    pub config: Arc<ServerConfig>,
    pub local_uri: Option<Arc<str>>,
}

impl TlsSocket {
    fn configs(&self, secrets: &Secrets) -> Arc<Configs> {
        let generation = secrets.generation();
        if let Some(c) = self.built.0.load_full()
            && c.generation == generation
            && c.expires.is_none_or(|t| std::time::SystemTime::now() < t)
        {
            return c;
        }
        let (result, expires) = match build(self, secrets) {
            Ok((p, expires)) => (Ok(p), expires),
            Err(e) => (Err(e), None),
        };
        // Already expired: built once more, not again until a secret changes.
        let expires = expires.filter(|t| std::time::SystemTime::now() < *t);
        let configs = Arc::new(Configs {
            generation,
            result,
            expires,
        });
        self.built.0.store(Some(configs.clone()));
        configs
    }

    /// The client config (an upstream socket), or why there is none yet
    /// (an SDS secret not delivered, a bad certificate).
    pub fn client_config(
        &self,
        secrets: &Secrets,
        check_name: bool,
    ) -> Result<Arc<ClientConfig>, String> {
        match &self.configs(secrets).result {
            Ok(Prepared::Client(plain, named)) => {
                Ok(if check_name { named } else { plain }.clone())
            }
            Ok(Prepared::Server { .. }) => Err("a downstream TLS context on a cluster".into()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The server config for a connection whose client offered `offered`
    /// ALPN protocols: the first of ours the client offers is negotiated
    /// (BoringSSL's server preference); none in common negotiates none.
    pub fn server_config(
        &self,
        secrets: &Secrets,
        offered: &[String],
    ) -> Result<ServerSide, String> {
        match &self.configs(secrets).result {
            Ok(Prepared::Server { by_alpn, local_uri }) => {
                let i = self
                    .alpn
                    .iter()
                    .position(|p| offered.iter().any(|o| o == p))
                    .unwrap_or(self.alpn.len());
                Ok(ServerSide {
                    config: by_alpn[i].clone(),
                    local_uri: local_uri.clone(),
                })
            }
            Ok(Prepared::Client(..)) => Err("an upstream TLS context on a listener".into()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The name to present: the request's (auto_sni), else the configured
    /// SNI, else the address, for which rustls sends no SNI.
    pub fn server_name(&self, request: Option<&str>, ip: std::net::IpAddr) -> ServerName<'static> {
        let configured = match &self.side {
            Side::Upstream { sni } if !sni.is_empty() => Some(sni.as_str()),
            _ => None,
        };
        request
            .or(configured)
            .and_then(|n| ServerName::try_from(n.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
    }
}

fn pem_certs(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let parsed = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    let certs: Vec<_> = parsed
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err("no CERTIFICATE in PEM".into());
    }
    Ok(certs)
}

fn pem_key(text: &str) -> Result<PrivateKeyDer<'static>, String> {
    let parsed = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    let p = parsed
        .into_iter()
        .find(|p| p.tag().ends_with("PRIVATE KEY"))
        .ok_or("no PRIVATE KEY in PEM")?;
    let der = p.contents().to_vec();
    Ok(match p.tag() {
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(der.into()),
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(der.into()),
        _ => PrivateKeyDer::Pkcs8(der.into()),
    })
}

/// A certificate and key that rustls can serve with (checked when a config
/// with them inline or in files is accepted).
pub fn check_cert_pem(c: &CertPem) -> Result<(), String> {
    let chain = pem_certs(&c.chain)?;
    let key = pem_key(&c.key).map_err(|e| format!("private_key: {e}"))?;
    let provider = provider(&[], &[]);
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("private_key: {e}"))?;
    rustls::sign::CertifiedKey::new(chain, signing)
        .keys_match()
        .map_err(|e| format!("does not match the private key: {e}"))
}

/// A root bundle rustls can verify with.
pub fn check_roots_pem(text: &str) -> Result<(), String> {
    roots(text).map(|_| ())
}

fn roots(text: &str) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for c in pem_certs(text)? {
        store.add(c).map_err(|e| format!("root certificate: {e}"))?;
    }
    Ok(Arc::new(store))
}

/// OpenSSL names of the TLS 1.2 suites rustls runs.
const TLS12_SUITES: &[(&str, rustls::CipherSuite)] = &[
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// The names in an Envoy cipher list (`A:B`, `[A|B]` groups of equal
/// preference), each of them known or not.
fn suite_names(list: &[String]) -> impl Iterator<Item = (&str, Option<rustls::CipherSuite>)> {
    list.iter()
        .flat_map(|s| s.trim_matches(|c| c == '[' || c == ']').split(['|', ':']))
        .map(|n| {
            let known = TLS12_SUITES
                .iter()
                .find(|(name, _)| *name == n)
                .map(|(_, s)| *s);
            (n, known)
        })
}

/// How many of the named suites rustls runs (TLS 1.2 only: Envoy's
/// cipher_suites do not touch TLS 1.3).
pub fn known_tls12_suites(list: &[String]) -> usize {
    suite_names(list).filter(|(_, s)| s.is_some()).count()
}

/// A key exchange group by its Envoy/BoringSSL name.
pub fn kx_group(name: &str) -> Option<&'static dyn rustls::crypto::SupportedKxGroup> {
    use rustls::crypto::aws_lc_rs::kx_group as g;
    Some(match name {
        "X25519MLKEM768" => g::X25519MLKEM768,
        "X25519" => g::X25519,
        "P-256" => g::SECP256R1,
        "P-384" => g::SECP384R1,
        _ => return None,
    })
}

/// aws-lc-rs (post-quantum hybrid key exchange first), with the TLS 1.2
/// suites narrowed to `cipher_suites` when given.
fn provider(cipher_suites: &[String], curves: &[String]) -> CryptoProvider {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    if !curves.is_empty() {
        p.kx_groups = curves.iter().filter_map(|c| kx_group(c)).collect();
    }
    if known_tls12_suites(cipher_suites) > 0 {
        let wanted: Vec<rustls::CipherSuite> =
            suite_names(cipher_suites).filter_map(|(_, s)| s).collect();
        p.cipher_suites.retain(|s: &SupportedCipherSuite| match s {
            SupportedCipherSuite::Tls12(_) => wanted.contains(&s.suite()),
            SupportedCipherSuite::Tls13(_) => true,
        });
    }
    p
}

fn versions(s: &TlsSocket) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if s.versions.tls13 {
        v.push(&rustls::version::TLS13);
    }
    if s.versions.tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// Envoy's SAN matching: any matcher against any SAN of its type (all
/// types for the untyped ones); an exact DNS matcher also matches a
/// wildcard DNS SAN (`*.example.com` covers `a.example.com`).
fn san_matches(matchers: &[SanMatcher], names: &identity::tls::CertNames) -> bool {
    let dns = |m: &SanMatcher| {
        names.dns.iter().any(|d| {
            m.matcher.matches(d)
                || match (&m.matcher, d.strip_prefix("*.")) {
                    (crate::config::route::StringMatch::Exact(want, _), Some(suffix)) => want
                        .split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                    _ => false,
                }
        })
    };
    let any = |list: &[String], m: &SanMatcher| list.iter().any(|v| m.matcher.matches(v));
    matchers.iter().any(|m| match m.san_type {
        Some(SanKind::Dns) => dns(m),
        Some(SanKind::Uri) => any(&names.uris, m),
        Some(SanKind::Email) => any(&names.emails, m),
        Some(SanKind::Ip) => any(&names.ips, m),
        None => dns(m) || any(&names.uris, m) || any(&names.emails, m) || any(&names.ips, m),
    })
}

fn san_check(matchers: &Arc<Vec<SanMatcher>>) -> Option<identity::tls::PeerCheck> {
    if matchers.is_empty() {
        return None;
    }
    let matchers = matchers.clone();
    Some(Arc::new(move |cert: &CertificateDer<'_>| {
        let names = identity::tls::cert_names(cert).ok_or("unreadable peer certificate")?;
        if san_matches(&matchers, &names) {
            Ok(())
        } else {
            Err(format!(
                "peer certificate SANs {:?} match none of the subject alt name matchers",
                names.uris.iter().chain(&names.dns).collect::<Vec<_>>()
            ))
        }
    }))
}

fn resolve_cert(s: &Source<CertPem>, secrets: &Secrets) -> Result<CertPem, String> {
    match s {
        Source::Pem(c) => Ok(c.clone()),
        Source::Sds(name) => match secrets.get(name).as_deref() {
            Some(Secret::Certificate(c)) => Ok(c.clone()),
            Some(Secret::Roots(_)) => Err(format!(
                "SDS secret {name} is a validation context, not a certificate"
            )),
            None => Err(missing(name)),
        },
    }
}

fn resolve_roots(s: &Source<String>, secrets: &Secrets) -> Result<Arc<RootCertStore>, String> {
    match s {
        Source::Pem(p) => roots(p),
        Source::Sds(name) => match secrets.get(name).as_deref() {
            Some(Secret::Roots(p)) => roots(p),
            Some(Secret::Certificate(_)) => Err(format!(
                "SDS secret {name} is a certificate, not a validation context"
            )),
            None => Err(missing(name)),
        },
    }
}

/// The configs, and when the certificate they serve expires.
fn build(
    s: &TlsSocket,
    secrets: &Secrets,
) -> Result<(Prepared, Option<std::time::SystemTime>), String> {
    let provider = Arc::new(provider(&s.cipher_suites, &s.ecdh_curves));
    let versions = versions(s);
    let alpn: Vec<Vec<u8>> = s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let cert = s
        .certificate
        .as_ref()
        .map(|c| resolve_cert(c, secrets))
        .transpose()?;
    let expires = cert
        .as_ref()
        .and_then(|c| pem_certs(&c.chain).ok())
        .and_then(|chain| chain.first().and_then(identity::tls::not_after));
    let keyed =
        |c: &CertPem| -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
            Ok((pem_certs(&c.chain)?, pem_key(&c.key)?))
        };
    match &s.side {
        Side::Upstream { .. } => {
            let (roots, check) = match &s.validation {
                None => (None, None),
                Some(v) => (
                    v.roots
                        .as_ref()
                        .map(|r| resolve_roots(r, secrets))
                        .transpose()?,
                    san_check(&v.san),
                ),
            };
            let client = |verifier| -> Result<Arc<ClientConfig>, String> {
                let builder = ClientConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&versions)
                    .map_err(|e| e.to_string())?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier);
                let mut config = match &cert {
                    None => builder.with_no_client_auth(),
                    Some(c) => {
                        let (chain, key) = keyed(c)?;
                        builder
                            .with_client_auth_cert(chain, key)
                            .map_err(|e| format!("certificate: {e}"))?
                    }
                };
                // SNI goes out whenever the name dialled is a DNS name
                // (configured, or the request's); never for an address.
                config.alpn_protocols = alpn.clone();
                Ok(Arc::new(config))
            };
            Ok((
                Prepared::Client(
                    client(identity::tls::server_verifier(roots.clone(), check.clone()))?,
                    client(identity::tls::server_verifier_with_name(roots, check))?,
                ),
                expires,
            ))
        }
        Side::Downstream {
            require_client_certificate,
        } => {
            let c = cert.ok_or("a server needs a certificate")?;
            let (chain, key) = keyed(&c)?;
            let local_uri = chain
                .first()
                .and_then(identity::tls::cert_names)
                .and_then(|n| n.uris.into_iter().next())
                .map(Arc::from);
            let builder = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&versions)
                .map_err(|e| e.to_string())?;
            let builder = match &s.validation {
                None => builder.with_no_client_auth(),
                Some(v) => {
                    let Some(r) = &v.roots else {
                        return Err(
                            "a server verifies client certificates only against a trusted CA"
                                .into(),
                        );
                    };
                    let roots = resolve_roots(r, secrets)?;
                    let verifier = identity::tls::client_verifier(
                        roots,
                        *require_client_certificate,
                        san_check(&v.san),
                    )
                    .map_err(|e| e.to_string())?;
                    builder.with_client_cert_verifier(verifier)
                }
            };
            let base = builder
                .with_single_cert(chain, key)
                .map_err(|e| format!("certificate: {e}"))?;
            let mut by_alpn = Vec::with_capacity(alpn.len() + 1);
            for p in &alpn {
                let mut c = base.clone();
                c.alpn_protocols = vec![p.clone()];
                by_alpn.push(Arc::new(c));
            }
            by_alpn.push(Arc::new(base));
            Ok((Prepared::Server { by_alpn, local_uri }, expires))
        }
    }
}

/// What a downstream TLS handshake established, for the filters.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// Our certificate's URI SAN.
    pub local_uri: Option<Arc<str>>,
    /// The client's certificate, if it sent one.
    pub peer: Option<PeerCert>,
    pub alpn: Option<String>,
    pub sni: Option<String>,
}

/// The verified client certificate.
#[derive(Debug, Clone)]
pub struct PeerCert {
    pub names: identity::tls::CertNames,
    /// SHA-256 of the DER certificate, lowercase hex (`Hash=` of XFCC).
    pub sha256: String,
}

impl PeerCert {
    pub fn from_der(der: &CertificateDer<'_>) -> PeerCert {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        PeerCert {
            names: identity::tls::cert_names(der).unwrap_or_default(),
            sha256,
        }
    }
}

#[cfg(test)]
mod tests;
