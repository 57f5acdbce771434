//! `envoy.transport_sockets.tls`: an Upstream- or DownstreamTlsContext as
//! the data path runs it. Certificates and roots come inline, from files
//! (read when the config is accepted, so a missing file is a NACK naming
//! it) or by SDS secret name (Istio's `default` and `ROOTCA`, resolved by
//! the proxy's secret store when a connection needs them).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use tls::common_tls_context::ValidationContextType;
use tls::subject_alt_name_matcher::SanType;
use tls::tls_parameters::TlsProtocol;

use super::route::{StringMatch, string_match};
use crate::error::ConfigError;
use crate::tls::Built;

/// Where a certificate (or root bundle) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<T> {
    /// Read from a file or given inline (PEM).
    Pem(T),
    /// An SDS secret by name.
    Sds(String),
}

/// A certificate chain and its key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPem {
    pub chain: String,
    pub key: String,
}

/// One SAN matcher: `match_typed_subject_alt_names` (a SAN type) or the
/// older `match_subject_alt_names` (any SAN).
#[derive(Debug)]
pub struct SanMatcher {
    pub san_type: Option<SanKind>,
    pub matcher: StringMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    Dns,
    Uri,
    Email,
    Ip,
}

/// How the peer's certificate is checked.
#[derive(Debug)]
pub struct Validation {
    /// None with `accept_untrusted`: the chain is not verified.
    pub roots: Option<Source<String>>,
    /// Any one must match one of the peer's SANs (none: any certificate).
    pub san: Arc<Vec<SanMatcher>>,
}

/// The TLS versions allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub tls12: bool,
    pub tls13: bool,
}

/// Which end of the connection we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// A cluster's socket: we are the client.
    Upstream {
        /// SNI to send (empty: none).
        sni: String,
    },
    /// A filter chain's socket: we are the server.
    Downstream { require_client_certificate: bool },
}

/// A parsed TLS transport socket, with the rustls configs built from it
/// (rebuilt when a secret it uses changes).
#[derive(Debug)]
pub struct TlsSocket {
    pub side: Side,
    pub alpn: Vec<String>,
    /// None: no certificate of our own (a SIMPLE TLS client).
    pub certificate: Option<Source<CertPem>>,
    /// None: the peer is not verified (a server asks for no certificate).
    pub validation: Option<Validation>,
    pub versions: Versions,
    /// TLS 1.2 cipher suites by OpenSSL name (empty: rustls' defaults).
    pub cipher_suites: Vec<String>,
    /// Key exchange groups in order (`ecdh_curves`; empty: X25519MLKEM768,
    /// X25519, P-256, P-384).
    pub ecdh_curves: Vec<String>,
    /// Hash of the socket's wire form: equal sockets share hosts and pools.
    fingerprint: u64,
    pub(crate) built: Built,
}

impl PartialEq for TlsSocket {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for TlsSocket {}

pub const UPSTREAM_TYPE: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub const DOWNSTREAM_TYPE: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

impl TlsSocket {
    /// From an UpstreamTlsContext (a cluster's socket).
    pub fn upstream(ctx: &tls::UpstreamTlsContext) -> Result<Arc<TlsSocket>, ConfigError> {
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        let side = Side::Upstream {
            sni: ctx.sni.clone(),
        };
        Self::build(side, &common, fingerprint(ctx)).map_err(|e| e.under("common_tls_context"))
    }

    /// From a DownstreamTlsContext (a filter chain's socket).
    pub fn downstream(ctx: &tls::DownstreamTlsContext) -> Result<Arc<TlsSocket>, ConfigError> {
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        let side = Side::Downstream {
            require_client_certificate: ctx.require_client_certificate.is_some_and(|b| b.value),
        };
        let s = Self::build(side, &common, fingerprint(ctx))
            .map_err(|e| e.under("common_tls_context"))?;
        if s.certificate.is_none() {
            return Err(ConfigError::new(
                "common_tls_context.tls_certificates",
                "a server needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)",
            ));
        }
        if s.validation.is_none()
            && matches!(
                s.side,
                Side::Downstream {
                    require_client_certificate: true
                }
            )
        {
            return Err(ConfigError::new(
                "require_client_certificate",
                "requires a validation context to check client certificates against",
            ));
        }
        Ok(s)
    }

    fn build(
        side: Side,
        c: &tls::CommonTlsContext,
        fingerprint: u64,
    ) -> Result<Arc<TlsSocket>, ConfigError> {
        let certificate = match (
            c.tls_certificates.as_slice(),
            c.tls_certificate_sds_secret_configs.as_slice(),
        ) {
            ([], []) => None,
            ([cert], []) => Some(Source::Pem(
                cert_pem(cert).map_err(|e| e.under("tls_certificates[0]"))?,
            )),
            ([], [sds]) => Some(Source::Sds(sds_name(
                sds,
                "tls_certificate_sds_secret_configs[0]",
            )?)),
            _ => {
                return Err(ConfigError::new(
                    "tls_certificates",
                    "only one certificate (inline, file or SDS) is supported",
                ));
            }
        };
        let validation = match &c.validation_context_type {
            None => None,
            Some(ValidationContextType::ValidationContext(v)) => {
                Some(validation(v, None).map_err(|e| e.under("validation_context"))?)
            }
            Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
                Some(Validation {
                    roots: Some(Source::Sds(sds_name(
                        sds,
                        "validation_context_sds_secret_config",
                    )?)),
                    san: Arc::default(),
                })
            }
            Some(ValidationContextType::CombinedValidationContext(combined)) => {
                let sds = combined
                    .validation_context_sds_secret_config
                    .as_ref()
                    .map(|s| {
                        sds_name(
                            s,
                            "combined_validation_context.validation_context_sds_secret_config",
                        )
                    })
                    .transpose()?;
                let default = combined
                    .default_validation_context
                    .clone()
                    .unwrap_or_default();
                Some(validation(&default, sds).map_err(|e| {
                    e.under("combined_validation_context.default_validation_context")
                })?)
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "validation_context_type",
                    "only validation_context, validation_context_sds_secret_config and combined_validation_context are supported",
                ));
            }
        };
        let params = c.tls_params.clone().unwrap_or_default();
        let versions = versions(&params).map_err(|e| e.under("tls_params"))?;
        for (i, p) in c.alpn_protocols.iter().enumerate() {
            if p.is_empty() || p.len() > 255 {
                return Err(ConfigError::new(
                    format!("alpn_protocols[{i}]"),
                    "must be 1 to 255 bytes",
                ));
            }
        }
        let cipher_suites = params.cipher_suites.clone();
        let known = crate::tls::known_tls12_suites(&cipher_suites);
        if !cipher_suites.is_empty() && known == 0 && versions.tls12 && !versions.tls13 {
            return Err(ConfigError::new(
                "tls_params.cipher_suites",
                format!("none of {cipher_suites:?} is a supported TLS 1.2 cipher suite"),
            ));
        }
        for (i, c) in params.ecdh_curves.iter().enumerate() {
            if crate::tls::kx_group(c).is_none() {
                return Err(ConfigError::new(
                    format!("tls_params.ecdh_curves[{i}]"),
                    format!("unsupported curve {c} (X25519MLKEM768, X25519, P-256, P-384)"),
                ));
            }
        }
        Ok(Arc::new(TlsSocket {
            side,
            ecdh_curves: params.ecdh_curves.clone(),
            alpn: c.alpn_protocols.clone(),
            certificate,
            validation,
            versions,
            cipher_suites,
            fingerprint,
            built: Built::default(),
        }))
    }

    /// A hash of the socket's wire form.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The SDS secrets this socket needs.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let cert = match &self.certificate {
            Some(Source::Sds(n)) => Some(n.as_str()),
            _ => None,
        };
        let roots = match self.validation.as_ref().and_then(|v| v.roots.as_ref()) {
            Some(Source::Sds(n)) => Some(n.as_str()),
            _ => None,
        };
        cert.into_iter().chain(roots)
    }
}

fn fingerprint<M: prost::Message>(m: &M) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.encode_to_vec().hash(&mut h);
    h.finish()
}

fn sds_name(s: &tls::SdsSecretConfig, at: &str) -> Result<String, ConfigError> {
    if s.name.is_empty() {
        return Err(ConfigError::new(format!("{at}.name"), "required"));
    }
    Ok(s.name.clone())
}

/// A DataSource's bytes as text (a file is read now).
fn data(d: Option<&core::DataSource>, at: &str) -> Result<String, ConfigError> {
    use core::data_source::Specifier;
    let bytes = match d.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::Filename(f)) => std::fs::read(f).map_err(|e| {
            ConfigError::new(format!("{at}.filename"), format!("cannot read {f}: {e}"))
        })?,
        Some(Specifier::InlineBytes(b)) => b.clone(),
        Some(Specifier::InlineString(s)) => s.clone().into_bytes(),
        Some(_) => {
            return Err(ConfigError::new(
                at,
                "only filename, inline_bytes and inline_string are supported",
            ));
        }
        None => return Err(ConfigError::new(at, "required")),
    };
    String::from_utf8(bytes).map_err(|_| ConfigError::new(at, "not PEM text"))
}

fn cert_pem(c: &tls::TlsCertificate) -> Result<CertPem, ConfigError> {
    let pem = CertPem {
        chain: data(c.certificate_chain.as_ref(), "certificate_chain")?,
        key: data(c.private_key.as_ref(), "private_key")?,
    };
    crate::tls::check_cert_pem(&pem).map_err(|e| ConfigError::new("certificate_chain", e))?;
    Ok(pem)
}

fn validation(
    v: &tls::CertificateValidationContext,
    sds_roots: Option<String>,
) -> Result<Validation, ConfigError> {
    use tls::certificate_validation_context::TrustChainVerification;
    let accept_untrusted =
        v.trust_chain_verification == TrustChainVerification::AcceptUntrusted as i32;
    let inline = v
        .trusted_ca
        .as_ref()
        .map(|d| data(Some(d), "trusted_ca"))
        .transpose()?;
    if let Some(pem) = &inline {
        crate::tls::check_roots_pem(pem).map_err(|e| ConfigError::new("trusted_ca", e))?;
    }
    let roots = match (inline, sds_roots) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "trusted_ca",
                "set both inline and by SDS; give one",
            ));
        }
        (Some(pem), None) => Some(Source::Pem(pem)),
        (None, Some(name)) => Some(Source::Sds(name)),
        (None, None) => None,
    };
    let mut san = Vec::new();
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        let at = format!("match_typed_subject_alt_names[{i}]");
        let kind = match SanType::try_from(m.san_type) {
            Ok(SanType::Dns) => SanKind::Dns,
            Ok(SanType::Uri) => SanKind::Uri,
            Ok(SanType::Email) => SanKind::Email,
            Ok(SanType::IpAddress) => SanKind::Ip,
            _ => {
                return Err(ConfigError::new(
                    format!("{at}.san_type"),
                    "must be DNS, URI, EMAIL or IP_ADDRESS",
                ));
            }
        };
        let matcher = m
            .matcher
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{at}.matcher"), "required"))
            .and_then(|s| string_match(s).map_err(|e| e.under(&format!("{at}.matcher"))))?;
        san.push(SanMatcher {
            san_type: Some(kind),
            matcher,
        });
    }
    #[allow(deprecated)] // Istio still sends the untyped form.
    let untyped = &v.match_subject_alt_names;
    for (i, m) in untyped.iter().enumerate() {
        let matcher =
            string_match(m).map_err(|e| e.under(&format!("match_subject_alt_names[{i}]")))?;
        san.push(SanMatcher {
            san_type: None,
            matcher,
        });
    }
    if roots.is_none() && !accept_untrusted && !san.is_empty() {
        // Envoy refuses SAN checks without a CA to anchor them.
        return Err(ConfigError::new(
            "match_subject_alt_names",
            "SAN-based verification of peer certificates without trusted CA is insecure and not allowed",
        ));
    }
    Ok(Validation {
        roots: if accept_untrusted { None } else { roots },
        san: Arc::new(san),
    })
}

fn versions(p: &tls::TlsParameters) -> Result<Versions, ConfigError> {
    let v = |n: i32, at: &str| {
        TlsProtocol::try_from(n)
            .map_err(|_| ConfigError::new(at, format!("unknown TLS version {n}")))
    };
    let min = v(
        p.tls_minimum_protocol_version,
        "tls_minimum_protocol_version",
    )?;
    let max = v(
        p.tls_maximum_protocol_version,
        "tls_maximum_protocol_version",
    )?;
    // TLS_AUTO: Envoy's defaults are 1.2 (min) and 1.3 (max) either side;
    // rustls runs nothing older than 1.2, so a lower minimum means 1.2.
    let rank = |t: TlsProtocol, auto: u8| match t {
        TlsProtocol::TlsAuto => auto,
        TlsProtocol::TlSv10 => 10,
        TlsProtocol::TlSv11 => 11,
        TlsProtocol::TlSv12 => 12,
        TlsProtocol::TlSv13 => 13,
    };
    let (lo, hi) = (rank(min, 12), rank(max, 13));
    if hi < 12 {
        return Err(ConfigError::new(
            "tls_maximum_protocol_version",
            "TLS older than 1.2 is not supported",
        ));
    }
    if lo > hi {
        return Err(ConfigError::new(
            "tls_minimum_protocol_version",
            "is above tls_maximum_protocol_version",
        ));
    }
    Ok(Versions {
        tls12: lo <= 12,
        tls13: hi >= 13,
    })
}

#[cfg(test)]
mod tests;
