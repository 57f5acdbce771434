//! The workload's side: a key made in memory (never written), the CSR for
//! its SPIFFE id, and when to renew what the CA returned.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

use crate::SpiffeId;

/// A workload's private key (ECDSA P-256).
pub struct WorkloadKey {
    key: KeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("WorkloadKey(..)")
    }
}

impl WorkloadKey {
    pub fn generate() -> Result<WorkloadKey, rcgen::Error> {
        Ok(WorkloadKey {
            key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// A CSR (PEM) asking for exactly `id` as a URI SAN, as pilot-agent asks.
    pub fn csr(&self, id: &SpiffeId) -> Result<String, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.serialize_request(&self.key)?.pem()
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.key
    }

    /// The key in PKCS#8 PEM, for a TLS stack in the same process.
    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: at
/// half of its validity (Istio's default `SECRET_GRACE_PERIOD_RATIO` 0.5).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + life / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_carries_only_the_id() {
        let key = WorkloadKey::generate().expect("key");
        let id = SpiffeId::new("cluster.local", "default", "sleep");
        let pem = key.csr(&id).expect("csr");
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).expect("parses");
        assert_eq!(parsed.params.subject_alt_names.len(), 1);
        assert!(matches!(
            &parsed.params.subject_alt_names[0],
            SanType::URI(u) if u.as_str() == "spiffe://cluster.local/ns/default/sa/sleep"
        ));
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn renews_at_half_life() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(24 * 3600);
        assert_eq!(renew_at(start, end), start + Duration::from_secs(12 * 3600));
        assert_eq!(
            renew_at(end, start),
            end,
            "a reversed validity renews at once"
        );
    }
}
