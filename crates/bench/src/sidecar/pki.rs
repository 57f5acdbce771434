//! The benchmark's mesh PKI for the mTLS transport: one mesh CA (a
//! self-signed root in a temp dir, trust domain `cluster.local`) and the two
//! workloads' P-256 certificates with their SPIFFE URI SANs
//! (`spiffe://cluster.local/ns/bench/sa/client` and `.../sa/server`), as
//! files both Envoy and `halyard proxy` read. Made once per invocation, so
//! every mTLS run of either proxy uses the very same certificates.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;

/// The trust domain and namespace of the benchmark's workloads.
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "bench";

/// Certificate files on disk.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A fresh CA in `dir/ca` and certificates for service accounts
    /// `client` and `server` (valid 24 h, Istio's default workload TTL).
    pub fn create(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca = identity::Ca::from_dir(&dir.join("ca"), TRUST_DOMAIN).context("mesh CA")?;
        let now = SystemTime::now();
        for sa in ["client", "server"] {
            let key = identity::WorkloadKey::generate().context("workload key")?;
            let id = identity::SpiffeId::new(TRUST_DOMAIN, NAMESPACE, sa);
            let issued = ca
                .sign(
                    &key.csr(&id).context("CSR")?,
                    &id,
                    Duration::from_secs(24 * 3600),
                    now,
                )
                .with_context(|| format!("sign {id}"))?;
            std::fs::write(dir.join(format!("{sa}.pem")), issued.chain.join(""))?;
            std::fs::write(dir.join(format!("{sa}-key.pem")), key.private_key_pem())?;
            std::fs::write(dir.join("root.pem"), issued.roots.join(""))?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
        })
    }

    /// Path of one of the files (`client.pem`, `server-key.pem`, `root.pem`).
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A workload's SPIFFE id.
    pub fn spiffe_id(sa: &str) -> String {
        identity::SpiffeId::new(TRUST_DOMAIN, NAMESPACE, sa).to_string()
    }
}
