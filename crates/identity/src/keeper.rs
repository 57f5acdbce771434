//! Keeping a workload's certificate: a fresh key and CSR, the CA's answer
//! published on a watch channel, renewal at half of the validity left at
//! issue (Istio's `SECRET_GRACE_PERIOD_RATIO`), and when the CA cannot be
//! reached, retries with back-off (1 s doubling to 30 s) while the current
//! certificate stays in use; one that expires meanwhile is logged.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::{SpiffeId, WorkloadKey, renew_at};

/// What a proxy serves with: its chain (leaf first), key and roots.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub id: SpiffeId,
    pub chain: Vec<String>,
    pub key_pem: String,
    /// The mesh root(s) (`ROOTCA`): the last certificate of the CA's answer.
    pub roots: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// How the keeper asks the CA (the real one: [`crate::client`] over TLS).
pub trait Fetch: Send + Sync {
    fn fetch(&self, csr: String) -> impl Future<Output = Result<Vec<String>, String>> + Send;
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Validity of the leaf (PEM).
fn validity(leaf: &str) -> Option<(SystemTime, SystemTime)> {
    use x509_parser::prelude::FromDer;
    let der = pem::parse(leaf).ok()?.into_contents();
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).ok()?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Some((
        at(c.validity().not_before.timestamp()),
        at(c.validity().not_after.timestamp()),
    ))
}

/// Fetch, publish, renew, for ever (until `tx` has no receivers).
pub async fn keep<F: Fetch>(id: SpiffeId, fetch: F, tx: watch::Sender<Option<Arc<Bundle>>>) {
    let mut retry = RETRY_FIRST;
    loop {
        if tx.is_closed() {
            return;
        }
        let attempt = async {
            let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
            let csr = key.csr(&id).map_err(|e| e.to_string())?;
            let chain = fetch.fetch(csr).await?;
            let leaf = chain.first().ok_or("the CA answered no certificate")?;
            let (not_before, not_after) =
                validity(leaf).ok_or("the CA answered an unreadable certificate")?;
            let roots = chain.last().cloned().into_iter().collect();
            Ok::<_, String>(Bundle {
                id: id.clone(),
                chain,
                key_pem: key.private_key_pem(),
                roots,
                not_before,
                not_after,
            })
        };
        let fetched_at = SystemTime::now();
        match attempt.await {
            Ok(bundle) => {
                let renew = renew_at(bundle.not_before.max(fetched_at), bundle.not_after);
                tracing::info!(%id, valid_until = ?bundle.not_after, "workload certificate");
                tx.send_replace(Some(Arc::new(bundle)));
                retry = RETRY_FIRST;
                let wait = renew
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                let expired = tx
                    .borrow()
                    .as_ref()
                    .is_some_and(|b| b.not_after <= SystemTime::now());
                if expired {
                    tracing::error!(%id, %error, "workload certificate expired and cannot be renewed");
                } else {
                    tracing::warn!(%id, %error, retry_s = retry.as_secs(), "certificate request failed");
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A CA in-process that records when it was asked, and can fail.
    struct Fake {
        ca: crate::Ca,
        _dir: tempfile::TempDir,
        ttl: Duration,
        failures: Mutex<u32>,
        asked: Mutex<Vec<tokio::time::Instant>>,
    }

    impl Fetch for &Fake {
        async fn fetch(&self, csr: String) -> Result<Vec<String>, String> {
            self.asked
                .lock()
                .expect("lock")
                .push(tokio::time::Instant::now());
            let mut f = self.failures.lock().expect("lock");
            if *f > 0 {
                *f -= 1;
                return Err("CA unavailable".into());
            }
            let id = SpiffeId::new("cluster.local", "default", "sleep");
            self.ca
                .sign(&csr, &id, self.ttl, SystemTime::now())
                .map(|i| i.chain)
                .map_err(|e| e.to_string())
        }
    }

    fn fake(ttl: Duration, failures: u32) -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        Fake {
            ca: crate::Ca::from_dir(dir.path(), "cluster.local").expect("ca"),
            _dir: dir,
            ttl,
            failures: Mutex::new(failures),
            asked: Mutex::new(Vec::new()),
        }
    }

    /// Run a keeper against `ca` for `d` of paused time; the seconds (from
    /// the start) at which it asked, and what it published last.
    async fn run_for(ca: &Fake, d: Duration) -> (Vec<u64>, Option<Arc<Bundle>>) {
        let (tx, rx) = watch::channel(None);
        let id = SpiffeId::new("cluster.local", "default", "sleep");
        let start = tokio::time::Instant::now();
        let keeper = keep(id, ca, tx);
        tokio::pin!(keeper);
        tokio::select! {
            () = &mut keeper => unreachable!("keeps going"),
            () = tokio::time::sleep(d) => {}
        }
        let asked = ca
            .asked
            .lock()
            .expect("lock")
            .iter()
            .map(|t| (*t - start).as_secs())
            .collect();
        let last = rx.borrow().clone();
        (asked, last)
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_half_of_the_validity() {
        let ca = fake(Duration::from_secs(60), 0);
        let (asked, last) = run_for(&ca, Duration::from_secs(95)).await;
        // 60 s certificates (whole seconds): renewed about every 30 s.
        assert_eq!(asked.len(), 4, "{asked:?}");
        for pair in asked.windows(2) {
            assert!((29..=31).contains(&(pair[1] - pair[0])), "{asked:?}");
        }
        let bundle = last.expect("a certificate");
        assert_eq!(bundle.chain.len(), 2);
        assert_eq!(bundle.roots.len(), 1);
        assert!(bundle.key_pem.contains("PRIVATE KEY"));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_back_off_while_the_ca_is_down() {
        let ca = fake(Duration::from_secs(3600), 3);
        let (asked, last) = run_for(&ca, Duration::from_secs(10)).await;
        assert_eq!(asked, [0, 1, 3, 7], "1 s, 2 s, 4 s between tries");
        assert!(last.is_some(), "served once the CA is back");
    }
}
