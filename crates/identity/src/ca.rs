//! The mesh CA. It signs with a key and certificate in Istio's plug-in layout
//! (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem` in one
//! directory); when the directory has none of them it creates a self-signed
//! root there in the same layout (key file 0600), so a restarted pilot keeps
//! its root. A CSR is signed only for the identity the caller proved.
//!
//! `root-cert.pem` is the trust bundle: it may hold several roots (during a
//! root rotation, the old and the new), of which one signed `ca-cert.pem`'s
//! chain; every workload is given all of them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::SpiffeId;

/// The four files of Istio's plug-in CA layout.
pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// Istio's default workload certificate lifetime (`DEFAULT_WORKLOAD_CERT_TTL`).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a workload may ask for (`MAX_WORKLOAD_CERT_TTL`, 90 days).
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// A self-signed root's lifetime (Istio's `CITADEL_SELF_SIGNED_CA_CERT_TTL`).
pub const SELF_SIGNED_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// An intermediate's lifetime from [`Ca::create_plug_in`] (Istio's
/// `tools/certs` default: a year).
pub const INTERMEDIATE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Issued certificates start this long before "now", for clock skew.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why the CA cannot start; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: missing (the plug-in CA needs {CA_CERT}, {CA_KEY}, {ROOT_CERT} and {CERT_CHAIN})", .0.display())]
    Missing(PathBuf),
    #[error("{}: {}", .0.display(), .1)]
    Io(PathBuf, std::io::Error),
    #[error("{}: {}", .0.display(), .1)]
    Invalid(PathBuf, String),
    #[error("creating the CA: {0}")]
    Create(String),
}

/// Why a CSR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("malformed CSR: {0}")]
    Malformed(String),
    #[error("CSR asks for {asked:?} but the caller is {caller}")]
    Identity { asked: Vec<String>, caller: String },
    #[error("caller {caller} is not in trust domain {trust_domain}")]
    TrustDomain {
        caller: String,
        trust_domain: String,
    },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A signed workload certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf, then the CA's chain up to and including the root (the
    /// order Istio's `CreateCertificate` answers in).
    pub chain: Vec<String>,
    /// Every root the mesh trusts (`ROOTCA`).
    pub roots: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Serial number, hex.
    pub serial: String,
}

impl Issued {
    /// The answer's `cert_chain` in istiod's shape: the leaf, the
    /// intermediates, and last one element holding every trusted root (the
    /// whole `root-cert.pem` bundle), so a workload takes the last element as
    /// its `ROOTCA`.
    pub fn cert_chain(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .chain
            .iter()
            .filter(|c| !self.roots.contains(c))
            .cloned()
            .collect();
        out.push(self.roots.concat());
        out
    }
}

/// The signing CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate and its intermediates (PEM), excluding the root.
    path: Vec<String>,
    /// The root that signed the last of `path` (or the signing cert itself).
    root: Option<String>,
    roots: Vec<String>,
    trust_domain: String,
    /// The signing certificate's own expiry: no leaf outlives it.
    not_after: SystemTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("path", &self.path.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CaError::Missing(path.to_path_buf()),
        _ => CaError::Io(path.to_path_buf(), e),
    })
}

/// Every certificate in a PEM file, as (PEM text, DER).
fn certs(path: &Path, text: &str) -> Result<Vec<(String, Vec<u8>)>, CaError> {
    let pems = pem::parse_many(text)
        .map_err(|e| CaError::Invalid(path.to_path_buf(), format!("bad PEM: {e}")))?;
    let mut out = Vec::new();
    for p in pems.into_iter().filter(|p| p.tag() == "CERTIFICATE") {
        X509Certificate::from_der(p.contents()).map_err(|e| {
            CaError::Invalid(path.to_path_buf(), format!("not an X.509 certificate: {e}"))
        })?;
        let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        out.push((pem::encode_config(&p, lf), p.into_contents()));
    }
    if out.is_empty() {
        return Err(CaError::Invalid(
            path.to_path_buf(),
            "no certificate in the file".into(),
        ));
    }
    Ok(out)
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    // Already checked by `certs`.
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .unwrap_or_else(|_| unreachable!("certificate parsed before"))
}

fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    let (c, p) = (parse(child), parse(parent));
    c.issuer() == p.subject() && c.verify_signature(Some(p.public_key())).is_ok()
}

impl Ca {
    /// The CA in `dir`: Istio's plug-in files if present, else a new
    /// self-signed root for `trust_domain` written there.
    pub fn from_dir(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        let any = [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN]
            .iter()
            .any(|f| dir.join(f).exists());
        if !any {
            Self::create_self_signed(dir, trust_domain, SystemTime::now())?;
        }
        Self::load(dir, trust_domain)
    }

    /// Load Istio's plug-in layout from `dir`, checking that the key is the
    /// CA certificate's, that it may sign, and that it chains to a root.
    pub fn load(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let root_path = dir.join(ROOT_CERT);
        let chain_path = dir.join(CERT_CHAIN);
        let cert_text = read(&cert_path)?;
        let key_text = read(&key_path)?;
        let root_text = read(&root_path)?;
        let chain_text = read(&chain_path)?;
        let ca = certs(&cert_path, &cert_text)?.remove(0);
        let roots = certs(&root_path, &root_text)?;
        if let Some(i) = roots.iter().position(|(_, der)| !parse(der).is_ca()) {
            return Err(CaError::Invalid(
                root_path,
                format!(
                    "certificate {} of {} is not a CA certificate (basicConstraints CA:FALSE)",
                    i + 1,
                    roots.len()
                ),
            ));
        }
        let chain = certs(&chain_path, &chain_text)?;
        let key = KeyPair::from_pem(&key_text)
            .map_err(|e| CaError::Invalid(key_path.clone(), format!("not a private key: {e}")))?;
        let cert = parse(&ca.1);
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Invalid(
                key_path,
                format!("the key does not belong to the certificate in {CA_CERT}"),
            ));
        }
        if !cert.is_ca() {
            return Err(CaError::Invalid(
                cert_path,
                "not a CA certificate (basicConstraints CA:FALSE)".into(),
            ));
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        // The path from the signing certificate towards the root.
        let is_root = |der: &[u8]| roots.iter().any(|(_, r)| r == der);
        let mut path = vec![ca.clone()];
        for c in chain {
            if c.1 != ca.1 && !is_root(&c.1) {
                path.push(c);
            }
        }
        for pair in path.windows(2) {
            if !signed_by(&pair[0].1, &pair[1].1) {
                return Err(CaError::Invalid(
                    chain_path,
                    "the certificates do not chain (each must be signed by the next)".into(),
                ));
            }
        }
        let last = &path[path.len() - 1].1;
        let root = roots
            .iter()
            .find(|(_, r)| r == last || signed_by(last, r))
            .ok_or_else(|| {
                CaError::Invalid(
                    root_path.clone(),
                    format!(
                        "none of its {} root(s) signed the CA chain of {CA_CERT}",
                        roots.len()
                    ),
                )
            })?;
        let root = (root.1 != *last).then(|| root.0.clone());
        let issuer = Issuer::from_ca_cert_pem(&ca.0, key)
            .map_err(|e| CaError::Invalid(cert_path, e.to_string()))?;
        Ok(Ca {
            issuer,
            path: path.into_iter().map(|(p, _)| p).collect(),
            root,
            roots: roots.into_iter().map(|(p, _)| p).collect(),
            trust_domain: trust_domain.to_string(),
            not_after,
        })
    }

    /// Write a new self-signed root into `dir` in the plug-in layout.
    pub fn create_self_signed(
        dir: &Path,
        trust_domain: &str,
        now: SystemTime,
    ) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|e| CaError::Io(dir.to_path_buf(), e))?;
        let (key, params) = ca_params(trust_domain, None, now, SELF_SIGNED_ROOT_TTL)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Create(e.to_string()))?;
        write_private(&dir.join(CA_KEY), &key.serialize_pem())?;
        for f in [CA_CERT, ROOT_CERT, CERT_CHAIN] {
            let p = dir.join(f);
            std::fs::write(&p, cert.pem()).map_err(|e| CaError::Io(p, e))?;
        }
        Ok(())
    }

    /// Write a new root (common name `name`) and an intermediate CA under it
    /// into `dir` (which must not hold a key yet) in Istio's plug-in layout,
    /// as Istio's `tools/certs` makefiles make a cluster's `cacerts`:
    /// `ca-cert.pem` and `ca-key.pem` (0600) the intermediate,
    /// `cert-chain.pem` the intermediate then the root, `root-cert.pem` the
    /// root. The root's key is not kept. The new root for a root rotation:
    /// see docs/identity.md.
    pub fn create_plug_in(
        dir: &Path,
        trust_domain: &str,
        name: &str,
        now: SystemTime,
    ) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|e| CaError::Io(dir.to_path_buf(), e))?;
        let (root_key, root_params) =
            ca_params(trust_domain, Some(name), now, SELF_SIGNED_ROOT_TTL)?;
        let root = root_params
            .self_signed(&root_key)
            .map_err(|e| CaError::Create(e.to_string()))?;
        let (key, params) = ca_params(
            trust_domain,
            Some(&format!("{name} intermediate")),
            now,
            INTERMEDIATE_TTL,
        )?;
        let issuer = Issuer::from_params(&root_params, &root_key);
        let inter = params
            .signed_by(&key, &issuer)
            .map_err(|e| CaError::Create(e.to_string()))?;
        write_private(&dir.join(CA_KEY), &key.serialize_pem())?;
        for (f, text) in [
            (CA_CERT, inter.pem()),
            (CERT_CHAIN, format!("{}{}", inter.pem(), root.pem())),
            (ROOT_CERT, root.pem()),
        ] {
            let p = dir.join(f);
            std::fs::write(&p, text).map_err(|e| CaError::Io(p, e))?;
        }
        Ok(())
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The signing certificate's subject (`ca-cert.pem`), for logs.
    pub fn signer(&self) -> String {
        pem::parse(&self.path[0])
            .ok()
            .and_then(|p| {
                X509Certificate::from_der(p.contents())
                    .ok()
                    .map(|(_, c)| c.subject().to_string())
            })
            .unwrap_or_default()
    }

    /// Every root the mesh trusts, PEM.
    pub fn roots(&self) -> &[String] {
        &self.roots
    }

    /// Sign `csr_pem` for `caller` (the identity it proved), valid for `ttl`
    /// (capped at [`MAX_WORKLOAD_TTL`] and the CA's own expiry). The CSR must
    /// ask for exactly the caller's SPIFFE id and nothing else.
    pub fn sign(
        &self,
        csr_pem: &str,
        caller: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Issued, SignError> {
        if caller.trust_domain != self.trust_domain {
            return Err(SignError::TrustDomain {
                caller: caller.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::Malformed(e.to_string()))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [caller.to_string()] {
            return Err(SignError::Identity {
                asked,
                caller: caller.to_string(),
            });
        }
        self.issue(&csr.public_key, csr.params.subject_alt_names, ttl, now)
    }

    /// A serving certificate for the CA's own process (the pilot on 15012):
    /// `id` plus DNS names, for `key`. Not reachable by a CSR.
    pub fn issue_serving(
        &self,
        key: &crate::WorkloadKey,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Issued, SignError> {
        let mut sans = vec![SanType::URI(
            id.to_string()
                .try_into()
                .map_err(|e: rcgen::Error| SignError::Sign(e.to_string()))?,
        )];
        for name in dns_names {
            sans.push(SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| SignError::Sign(e.to_string()))?,
            ));
        }
        self.issue(key.key_pair(), sans, ttl, now)
    }

    fn issue(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        sans: Vec<SanType>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Issued, SignError> {
        let ttl = if ttl.is_zero() {
            DEFAULT_WORKLOAD_TTL
        } else {
            ttl.min(MAX_WORKLOAD_TTL)
        };
        let not_before = now - BACKDATE;
        let not_after = (now + ttl).min(self.not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let serial = serial(public_key.der_bytes());
        params.serial_number = Some(serial.clone());
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        let mut chain = vec![cert.pem()];
        chain.extend(self.path.iter().cloned());
        chain.extend(self.root.iter().cloned());
        Ok(Issued {
            chain,
            roots: self.roots.clone(),
            not_before,
            not_after,
            serial: serial.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

/// A fresh P-256 key and the parameters of a CA certificate for it:
/// organization `trust_domain` (and common name `name`), valid from `now`
/// (back-dated) for `ttl`.
fn ca_params(
    trust_domain: &str,
    name: Option<&str>,
    now: SystemTime,
    ttl: Duration,
) -> Result<(KeyPair, CertificateParams), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Create(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    if let Some(name) = name {
        dn.push(DnType::CommonName, name);
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = name.is_some();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ttl).into();
    params.serial_number = Some(serial(key.public_key_raw()));
    Ok((key, params))
}

/// A unique positive serial: time, a process counter and the key, hashed.
fn serial(public_key: &[u8]) -> SerialNumber {
    use std::hash::{Hash, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = Vec::with_capacity(16);
    for round in 0..2u8 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            round,
            SystemTime::now(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::process::id(),
            public_key,
        )
            .hash(&mut h);
        bytes.extend_from_slice(&h.finish().to_be_bytes());
    }
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// Create `path` readable by its owner only, then write `text`.
fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CaError::Io(path.to_path_buf(), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| CaError::Io(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests;
