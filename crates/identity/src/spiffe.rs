//! SPIFFE ids as Istio issues them: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.

use std::fmt;
use std::str::FromStr;

/// A workload's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not an Istio SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} is not a spiffe:// URI")]
    Scheme(String),
    #[error("{0:?} is not of the form spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT")]
    Shape(String),
    #[error("{0:?} has an invalid {1}")]
    Segment(String, &'static str),
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// The same workload in another trust domain (for `trustDomainAliases`).
    pub fn in_domain(&self, trust_domain: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.to_string(),
            ..self.clone()
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// A trust domain is a DNS-like name: letters, digits, `.`, `-`, `_`.
fn valid_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
}

/// Kubernetes names (namespaces, service accounts): DNS labels/subdomains.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [domain, "ns", ns, "sa", sa] = parts.as_slice() else {
            return Err(SpiffeIdError::Shape(s.to_string()));
        };
        if !valid_domain(domain) {
            return Err(SpiffeIdError::Segment(s.to_string(), "trust domain"));
        }
        if !valid_name(ns) {
            return Err(SpiffeIdError::Segment(s.to_string(), "namespace"));
        }
        if !valid_name(sa) {
            return Err(SpiffeIdError::Segment(s.to_string(), "service account"));
        }
        Ok(SpiffeId::new(domain, ns, sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_istio_ids() {
        let id: SpiffeId = "spiffe://cluster.local/ns/payments/sa/payments-api"
            .parse()
            .expect("parses");
        assert_eq!(
            id,
            SpiffeId::new("cluster.local", "payments", "payments-api")
        );
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/payments/sa/payments-api"
        );
        assert_eq!(
            id.in_domain("old.example").to_string(),
            "spiffe://old.example/ns/payments/sa/payments-api"
        );
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe:///ns/a/sa/b",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/a/sa/B",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} should not parse");
        }
    }
}
