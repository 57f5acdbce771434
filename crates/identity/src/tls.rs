//! rustls configurations for mesh mTLS, as Istio's sidecars verify peers:
//! the chain must lead to a mesh root, and the identity that counts is the
//! SPIFFE URI SAN, not a DNS name. A server accepts clients of the allowed
//! trust domains (and, unless told to require one, clients without a
//! certificate: PERMISSIVE over TLS); a client accepts a server only if its
//! SPIFFE id is one it expects (Istio's `subjectAltNames`, the destination's
//! service accounts), or any of the trust domains when none is named.
//! Key exchange prefers X25519MLKEM768 (rustls with aws-lc-rs), then X25519.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::SpiffeId;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Pem(&'static str, String),
    #[error("TLS: {0}")]
    Rustls(String),
}

/// A certificate chain (leaf first) and its key.
#[derive(Debug)]
pub struct Credentials {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Credentials {
    /// From PEM: the chain as the CA returned it (leaf first; a trailing root
    /// is dropped, peers have it) and a PKCS#8 key.
    pub fn from_pem(chain: &[String], key_pem: &str, roots: &[String]) -> Result<Self, TlsError> {
        let root_ders: Vec<Vec<u8>> = roots
            .iter()
            .filter_map(|r| pem::parse(r).ok().map(pem::Pem::into_contents))
            .collect();
        let mut ders = Vec::new();
        for (i, c) in chain.iter().enumerate() {
            let der = pem::parse(c)
                .map_err(|e| TlsError::Pem("certificate chain", e.to_string()))?
                .into_contents();
            if i > 0 && root_ders.contains(&der) {
                continue;
            }
            ders.push(CertificateDer::from(der));
        }
        if ders.is_empty() {
            return Err(TlsError::Pem("certificate chain", "empty".into()));
        }
        let key = pem::parse(key_pem)
            .map_err(|e| TlsError::Pem("private key", e.to_string()))?
            .into_contents();
        Ok(Credentials {
            chain: ders,
            key: PrivateKeyDer::Pkcs8(key.into()),
        })
    }
}

/// The crypto provider every mesh connection uses (aws-lc-rs; post-quantum
/// hybrid key exchange first).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A root store from PEM roots.
pub fn root_store(roots: &[String]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for r in roots {
        let der = pem::parse(r)
            .map_err(|e| TlsError::Pem("root certificate", e.to_string()))?
            .into_contents();
        store
            .add(CertificateDer::from(der))
            .map_err(|e| TlsError::Rustls(format!("root certificate: {e}")))?;
    }
    Ok(store)
}

/// The SPIFFE id in a certificate's URI SANs, if exactly one parses.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let san = c.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => u.parse::<SpiffeId>().ok(),
        _ => None,
    });
    let id = ids.next()?;
    ids.next().is_none().then_some(id)
}

fn refuse(why: String) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, why),
    ))))
}

/// A check of the peer's leaf certificate after its chain verified (SAN
/// matchers, SPIFFE ids); the error says why the peer is refused.
pub type PeerCheck = Arc<dyn Fn(&CertificateDer<'_>) -> Result<(), String> + Send + Sync>;

/// The names a certificate carries, for SAN matching and
/// `x-forwarded-client-cert`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<String>,
    /// The subject DN in RFC 4514 form (empty for SPIFFE workload certs).
    pub subject: String,
}

/// The SANs and subject of a certificate (None if it does not parse).
pub fn cert_names(cert: &CertificateDer<'_>) -> Option<CertNames> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let mut names = CertNames {
        subject: c.subject().to_string(),
        ..CertNames::default()
    };
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => names.uris.push(u.to_string()),
                GeneralName::DNSName(d) => names.dns.push(d.to_string()),
                GeneralName::RFC822Name(e) => names.emails.push(e.to_string()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.ips.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Some(names)
}

/// When a certificate stops being valid.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let t = c.validity().not_after.timestamp();
    Some(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64))
}

/// Accept a peer only with a SPIFFE id of one of `trust_domains` and, if
/// `accept` names any, one of them.
pub fn spiffe_check(trust_domains: &[String], accept: &[SpiffeId]) -> PeerCheck {
    let trust_domains = trust_domains.to_vec();
    let accept = accept.to_vec();
    Arc::new(move |cert| {
        let id = spiffe_id(cert).ok_or("peer certificate has no SPIFFE id")?;
        if !trust_domains.contains(&id.trust_domain) {
            return Err(format!(
                "peer {id} is not of trust domain {trust_domains:?}"
            ));
        }
        if !accept.is_empty() && !accept.contains(&id) {
            return Err(format!("peer {id} is none of {accept:?}"));
        }
        Ok(())
    })
}

/// Verifies a server: its chain leads to `roots` (None: any chain, Envoy's
/// ACCEPT_UNTRUSTED or no validation context), then `check`. The name the
/// client dialled is not compared: mesh identities are SANs checked by
/// `check`, as Envoy's `match_subject_alt_names` does.
struct ServerVerifier {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
    check: Option<PeerCheck>,
    /// Also require the dialled DNS name among the server's SANs.
    check_name: bool,
}

impl std::fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("verifies_chain", &self.roots.is_some())
            .field("checks_peer", &self.check.is_some())
            .finish()
    }
}

/// A server verifier (see [`ServerVerifier`]).
pub fn server_verifier(
    roots: Option<Arc<RootCertStore>>,
    check: Option<PeerCheck>,
) -> Arc<dyn ServerCertVerifier> {
    Arc::new(ServerVerifier {
        roots,
        algorithms: provider().signature_verification_algorithms,
        check,
        check_name: false,
    })
}

/// [`server_verifier`] that also checks the name dialled (SNI) against the
/// server's DNS SANs, as webpki does (Envoy's `auto_san_validation`).
pub fn server_verifier_with_name(
    roots: Option<Arc<RootCertStore>>,
    check: Option<PeerCheck>,
) -> Arc<dyn ServerCertVerifier> {
    Arc::new(ServerVerifier {
        roots,
        algorithms: provider().signature_verification_algorithms,
        check,
        check_name: true,
    })
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.check_name {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
        }
        if let Some(roots) = &self.roots {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        if let Some(check) = &self.check {
            check(end_entity).map_err(refuse)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies a client: webpki to the roots, then `check`.
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    check: Option<PeerCheck>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("mandatory", &self.inner.client_auth_mandatory())
            .field("checks_peer", &self.check.is_some())
            .finish()
    }
}

/// A client verifier: the chain must lead to `roots`; without `mandatory` a
/// client may present no certificate at all (PERMISSIVE over TLS).
pub fn client_verifier(
    roots: Arc<RootCertStore>,
    mandatory: bool,
    check: Option<PeerCheck>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let builder = if mandatory {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let inner = builder
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Arc::new(ClientVerifier { inner, check }))
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(check) = &self.check {
            check(end_entity).map_err(refuse)?;
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A sidecar's inbound TLS: its own credentials; clients must chain to
/// `roots` and be of `trust_domains`; with `require_client` false a client
/// without a certificate is let in too (its identity is then unknown).
pub fn server_config(
    creds: Credentials,
    roots: &[String],
    trust_domains: &[String],
    require_client: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = client_verifier(
        Arc::new(root_store(roots)?),
        require_client,
        Some(spiffe_check(trust_domains, &[])),
    )?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain, creds.key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A sidecar's outbound TLS to a mesh peer: its own credentials; the server
/// must chain to `roots`, be of `trust_domains` and, if `accept` names any,
/// be one of them.
pub fn client_config(
    creds: Credentials,
    roots: &[String],
    trust_domains: &[String],
    accept: &[SpiffeId],
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = server_verifier(
        Some(Arc::new(root_store(roots)?)),
        Some(spiffe_check(trust_domains, accept)),
    );
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(creds.chain, creds.key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
