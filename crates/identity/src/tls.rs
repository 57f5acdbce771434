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

/// Checks a peer's SPIFFE id against trust domains and, optionally, a list.
#[derive(Debug, Clone)]
struct Policy {
    trust_domains: Vec<String>,
    /// Empty: any id of the trust domains.
    accept: Vec<SpiffeId>,
}

impl Policy {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), Error> {
        let id =
            spiffe_id(cert).ok_or_else(|| refuse("peer certificate has no SPIFFE id".into()))?;
        if !self.trust_domains.contains(&id.trust_domain) {
            return Err(refuse(format!(
                "peer {id} is not of trust domain {:?}",
                self.trust_domains
            )));
        }
        if !self.accept.is_empty() && !self.accept.contains(&id) {
            return Err(refuse(format!("peer {id} is none of {:?}", self.accept)));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    policy: Policy,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        self.policy.check(end_entity)?;
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

#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: Policy,
}

impl ClientCertVerifier for SpiffeClientVerifier {
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
        self.policy.check(end_entity)?;
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
    let provider = provider();
    let store = Arc::new(root_store(roots)?);
    let builder = WebPkiClientVerifier::builder_with_provider(store, provider.clone());
    let builder = if require_client {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let inner = builder
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let verifier = Arc::new(SpiffeClientVerifier {
        inner,
        policy: Policy {
            trust_domains: trust_domains.to_vec(),
            accept: Vec::new(),
        },
    });
    let config = ServerConfig::builder_with_provider(provider)
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
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: Arc::new(root_store(roots)?),
        algorithms: provider.signature_verification_algorithms,
        policy: Policy {
            trust_domains: trust_domains.to_vec(),
            accept: accept.to_vec(),
        },
    });
    let config = ClientConfig::builder_with_provider(provider)
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
