//! Keeping a workload's certificate: a fresh key and CSR, the CA's answer
//! published on a watch channel, renewal at half of the validity left at
//! issue (Istio's `SECRET_GRACE_PERIOD_RATIO`), and when the CA cannot be
//! reached, retries with back-off (1 s doubling to 30 s) while the current
//! certificate stays in use. The moment that certificate expires with no
//! renewal it is logged as an error (identity, serial, expiry) and
//! [`Status::Expired`] is published, for readiness; a later renewal says
//! the CA answers again (how many tries failed, whether the certificate
//! had expired) and publishes [`Status::Valid`].
//!
//! ```text
//!  fetch ──ok──▶ publish bundle, Status::Valid ──sleep until renew_at──▶ fetch
//!    └─err──▶ warn (retry in 1,2,4..30 s) ──sleep, or wake at not_after:
//!             error "expired", Status::Expired ──▶ keep retrying
//! ```
//!
//! Deadlines are on tokio's clock (a certificate's remaining validity is
//! taken from the wall clock once, when it arrives), so the timing is
//! tested with the paused clock.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::{SpiffeId, WorkloadKey, renew_at};

/// What a proxy serves with: its chain (leaf first), key and roots.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub id: SpiffeId,
    /// The leaf and the intermediates (every element of the CA's answer
    /// but the last), one PEM each.
    pub chain: Vec<String>,
    pub key_pem: String,
    /// Every root the mesh trusts (`ROOTCA`): the certificates in the last
    /// element of the CA's answer (istiod's shape: the whole trust bundle
    /// there), one PEM each.
    pub roots: Vec<String>,
    /// The leaf's serial number, lowercase hex (as `proxy-config secret`).
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Whether the workload has a certificate it can serve with (for readiness:
/// ready only when [`Status::Valid`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// No certificate yet (the first request has not succeeded).
    Pending,
    /// The published certificate is valid until `not_after`.
    Valid {
        serial: String,
        not_after: SystemTime,
    },
    /// The published certificate expired at `not_after` and the CA has not
    /// renewed it yet (it is still published: peers will refuse it).
    Expired {
        serial: String,
        not_after: SystemTime,
    },
}

impl Status {
    pub fn is_valid(&self) -> bool {
        matches!(self, Status::Valid { .. })
    }
}

/// How the keeper asks the CA (the real one: [`crate::client`] over TLS).
pub trait Fetch: Send + Sync {
    fn fetch(&self, csr: String) -> impl Future<Output = Result<Vec<String>, String>> + Send;
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Never renew sooner than this after an issue: a certificate with (almost)
/// no validity left — a TTL of a second, whole-second truncation, a CA
/// whose own certificate is about to expire — would otherwise make the
/// keeper ask the CA in a tight loop.
const RENEW_MIN: Duration = Duration::from_secs(1);

/// A time for logs (RFC 3339, UTC).
fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// Validity and serial of the leaf (PEM).
fn leaf_facts(leaf: &str) -> Option<(SystemTime, SystemTime, String)> {
    use x509_parser::prelude::FromDer;
    let der = pem::parse(leaf).ok()?.into_contents();
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).ok()?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Some((
        at(c.validity().not_before.timestamp()),
        at(c.validity().not_after.timestamp()),
        c.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

/// The CA's `cert_chain` (leaf first, the trusted roots last: one element
/// holding them all, as istiod answers, or a single root) as the chain
/// (leaf and intermediates) and the roots, one PEM each.
pub fn split_answer(answer: &[String]) -> Result<(Vec<String>, Vec<String>), String> {
    let pems = |text: &str| -> Result<Vec<String>, String> {
        let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        Ok(pem::parse_many(text)
            .map_err(|e| format!("the CA answered bad PEM: {e}"))?
            .iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| pem::encode_config(p, lf))
            .collect())
    };
    let [chain @ .., bundle] = answer else {
        return Err("the CA answered no certificate".into());
    };
    if chain.is_empty() {
        return Err("the CA answered a certificate without its root".into());
    }
    let mut leaf_first = Vec::new();
    for c in chain {
        leaf_first.extend(pems(c)?);
    }
    let roots = pems(bundle)?;
    if leaf_first.is_empty() || roots.is_empty() {
        return Err("the CA answered no certificate".into());
    }
    Ok((leaf_first, roots))
}

/// Fetch, publish, renew, for ever (until `tx` has no receivers).
pub async fn keep<F: Fetch>(id: SpiffeId, fetch: F, tx: watch::Sender<Option<Arc<Bundle>>>) {
    keep_reporting(id, fetch, tx, watch::Sender::new(Status::Pending)).await;
}

/// [`keep`], also publishing whether the certificate is valid on `status`.
pub async fn keep_reporting<F: Fetch>(
    id: SpiffeId,
    fetch: F,
    tx: watch::Sender<Option<Arc<Bundle>>>,
    status: watch::Sender<Status>,
) {
    let mut retry = RETRY_FIRST;
    // When the published certificate expires, on tokio's clock.
    let mut expires: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        if tx.is_closed() {
            return;
        }
        let attempt = async {
            let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
            let csr = key.csr(&id).map_err(|e| e.to_string())?;
            let (chain, roots) = split_answer(&fetch.fetch(csr).await?)?;
            let (not_before, not_after, serial) =
                leaf_facts(&chain[0]).ok_or("the CA answered an unreadable certificate")?;
            Ok::<_, String>(Bundle {
                id: id.clone(),
                chain,
                key_pem: key.private_key_pem(),
                roots,
                serial,
                not_before,
                not_after,
            })
        };
        let fetched_at = SystemTime::now();
        match attempt.await {
            Ok(bundle) => {
                let (now, now_wall) = (Instant::now(), SystemTime::now());
                let left = |t: SystemTime| t.duration_since(now_wall).unwrap_or(Duration::ZERO);
                let renew = now
                    + left(renew_at(
                        bundle.not_before.max(fetched_at),
                        bundle.not_after,
                    ))
                    .max(RENEW_MIN);
                expires = Some(now + left(bundle.not_after));
                let was_expired = matches!(*status.borrow(), Status::Expired { .. });
                tracing::info!(
                    %id,
                    serial = %bundle.serial,
                    not_after = %rfc3339(bundle.not_after),
                    renew_in_s = (renew - now).as_secs_f32(),
                    "workload certificate"
                );
                if failures > 0 {
                    tracing::info!(
                        %id,
                        failures,
                        was_expired,
                        "workload certificate renewed: the CA answers again"
                    );
                }
                let (serial, not_after) = (bundle.serial.clone(), bundle.not_after);
                status.send_replace(if not_after > now_wall {
                    Status::Valid { serial, not_after }
                } else {
                    Status::Expired { serial, not_after }
                });
                tx.send_replace(Some(Arc::new(bundle)));
                retry = RETRY_FIRST;
                failures = 0;
                tokio::time::sleep_until(renew).await;
            }
            Err(error) => {
                failures += 1;
                let current = tx.borrow().clone();
                match &current {
                    Some(b) if matches!(*status.borrow(), Status::Expired { .. }) => {
                        tracing::error!(
                            %id,
                            serial = %b.serial,
                            expired_at = %rfc3339(b.not_after),
                            %error,
                            retry_s = retry.as_secs(),
                            "workload certificate expired and still cannot be renewed"
                        );
                    }
                    Some(b) => tracing::warn!(
                        %id,
                        %error,
                        retry_s = retry.as_secs(),
                        not_after = %rfc3339(b.not_after),
                        "certificate renewal failed; the current certificate stays in use"
                    ),
                    None => tracing::warn!(
                        %id,
                        %error,
                        retry_s = retry.as_secs(),
                        "certificate request failed"
                    ),
                }
                let wake = Instant::now() + retry;
                // Wake at the expiry too, to say so when it happens.
                if let (Some(at), Some(b)) = (expires, &current)
                    && at < wake
                    && !matches!(*status.borrow(), Status::Expired { .. })
                {
                    tokio::time::sleep_until(at).await;
                    tracing::error!(
                        %id,
                        serial = %b.serial,
                        expired_at = %rfc3339(b.not_after),
                        failures,
                        "workload certificate expired: the CA could not renew it; \
                         peers will refuse this workload until it does"
                    );
                    status.send_replace(Status::Expired {
                        serial: b.serial.clone(),
                        not_after: b.not_after,
                    });
                }
                tokio::time::sleep_until(wake).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A CA in-process that records when it was asked, and can fail: its
    /// first `failures` answers, and while it is down (seconds from the
    /// first request, on tokio's clock).
    struct Fake {
        ca: crate::Ca,
        _dir: tempfile::TempDir,
        ttl: Duration,
        failures: Mutex<u32>,
        down: Option<(u64, u64)>,
        asked: Mutex<Vec<Instant>>,
    }

    impl Fetch for &Fake {
        async fn fetch(&self, csr: String) -> Result<Vec<String>, String> {
            let now = Instant::now();
            let since = {
                let mut asked = self.asked.lock().expect("lock");
                asked.push(now);
                (now - asked[0]).as_secs()
            };
            let mut f = self.failures.lock().expect("lock");
            if *f > 0 {
                *f -= 1;
                return Err("CA unavailable".into());
            }
            if self
                .down
                .is_some_and(|(from, to)| (from..to).contains(&since))
            {
                return Err("connection refused".into());
            }
            let id = SpiffeId::new("cluster.local", "default", "sleep");
            self.ca
                .sign(&csr, &id, self.ttl, SystemTime::now())
                .map(|i| i.cert_chain())
                .map_err(|e| e.to_string())
        }
    }

    fn fake(ttl: Duration, failures: u32, down: Option<(u64, u64)>) -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        Fake {
            ca: crate::Ca::from_dir(dir.path(), "cluster.local").expect("ca"),
            _dir: dir,
            ttl,
            failures: Mutex::new(failures),
            down,
            asked: Mutex::new(Vec::new()),
        }
    }

    /// What a keeper did in a run: the seconds (from the start) at which it
    /// asked, each status change (second, "pending"/"valid"/"expired"),
    /// and what it published last.
    struct Run {
        asked: Vec<u64>,
        statuses: Vec<(u64, &'static str)>,
        last: Option<Arc<Bundle>>,
    }

    /// Run a keeper against `ca` for `d` of paused time.
    async fn run_for(ca: &Fake, d: Duration) -> Run {
        let (tx, rx) = watch::channel(None);
        let (status_tx, mut status) = watch::channel(Status::Pending);
        let id = SpiffeId::new("cluster.local", "default", "sleep");
        let start = Instant::now();
        let keeper = keep_reporting(id, ca, tx, status_tx);
        tokio::pin!(keeper);
        let mut statuses = vec![(0, "pending")];
        let end = tokio::time::sleep(d);
        tokio::pin!(end);
        loop {
            tokio::select! {
                () = &mut keeper => unreachable!("keeps going"),
                () = &mut end => break,
                Ok(()) = status.changed() => {
                    let kind = match *status.borrow_and_update() {
                        Status::Pending => "pending",
                        Status::Valid { .. } => "valid",
                        Status::Expired { .. } => "expired",
                    };
                    statuses.push(((Instant::now() - start).as_secs(), kind));
                }
            }
        }
        let asked = ca
            .asked
            .lock()
            .expect("lock")
            .iter()
            .map(|t| (*t - start).as_secs())
            .collect();
        let last = rx.borrow().clone();
        Run {
            asked,
            statuses,
            last,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_half_of_the_validity() {
        let ca = fake(Duration::from_secs(60), 0, None);
        let run = run_for(&ca, Duration::from_secs(95)).await;
        let asked = run.asked;
        // 60 s certificates (whole seconds): renewed about every 30 s.
        assert_eq!(asked.len(), 4, "{asked:?}");
        for pair in asked.windows(2) {
            assert!((29..=31).contains(&(pair[1] - pair[0])), "{asked:?}");
        }
        let bundle = run.last.expect("a certificate");
        assert_eq!(bundle.chain.len(), 1, "the leaf (the root is in roots)");
        assert_eq!(bundle.roots.len(), 1);
        assert!(bundle.key_pem.contains("PRIVATE KEY"));
        assert!(bundle.serial.len() >= 16, "{}", bundle.serial);
        assert!(run.statuses.iter().skip(1).all(|(_, s)| *s == "valid"));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_back_off_while_the_ca_is_down() {
        let ca = fake(Duration::from_secs(3600), 3, None);
        let run = run_for(&ca, Duration::from_secs(10)).await;
        assert_eq!(run.asked, [0, 1, 3, 7], "1 s, 2 s, 4 s between tries");
        assert!(run.last.is_some(), "served once the CA is back");
        assert_eq!(
            run.statuses,
            [(0, "pending"), (7, "valid")],
            "no certificate is not an expired one"
        );
    }

    /// A 10 s certificate, the CA down from 3 s to 14 s: renewal fails from
    /// about 5 s (back-off 1, 2, 4, 8 s), the certificate expires at about
    /// 10 s and that is published then (not at the next try), the CA
    /// answers the try at about 20 s and the certificate is valid again.
    #[tokio::test(start_paused = true)]
    async fn an_expiry_while_the_ca_is_down_is_published_and_cleared_when_it_returns() {
        let ca = fake(Duration::from_secs(10), 0, Some((3, 14)));
        let first_serial = {
            let run = run_for(&ca, Duration::from_secs(1)).await;
            run.last.expect("issued at once").serial.clone()
        };
        ca.asked.lock().expect("lock").clear();
        // Again from the start, now watching the whole story.
        let run = run_for(&ca, Duration::from_secs(24)).await;
        let a = &run.asked;
        assert_eq!(a.len(), 6, "{a:?}");
        assert!((4..=5).contains(&a[1]), "renewal at half of ~10 s: {a:?}");
        let gaps: Vec<u64> = a.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [1, 2, 4, 8], "back-off: {a:?}");
        let (expired_at, _) = run.statuses[2];
        assert_eq!(
            run.statuses.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            ["pending", "valid", "expired", "valid"],
            "{:?}",
            run.statuses
        );
        assert!(
            (9..=10).contains(&expired_at),
            "expired when it expired: {:?}",
            run.statuses
        );
        assert_eq!(run.statuses[3].0, a[5], "valid again at the first answer");
        let last = run.last.expect("a certificate");
        assert!(last.not_after > SystemTime::now(), "a fresh one");
        assert_ne!(last.serial, first_serial);
    }

    /// A CA whose `root-cert.pem` holds two roots: the bundle carries both,
    /// and the chain only the leaf and the intermediate.
    #[tokio::test(start_paused = true)]
    async fn every_trusted_root_of_the_answer_is_in_the_bundle() {
        let ca = fake(Duration::from_secs(60), 0, None);
        let other = tempfile::tempdir().expect("tempdir");
        crate::Ca::create_plug_in(other.path(), "cluster.local", "Root B", SystemTime::now())
            .expect("root B");
        let read = |d: &std::path::Path, f: &str| std::fs::read_to_string(d.join(f)).expect("read");
        let dir = ca._dir.path();
        let bundle = format!(
            "{}{}",
            read(dir, crate::ca::ROOT_CERT),
            read(other.path(), crate::ca::ROOT_CERT)
        );
        for f in [crate::ca::CA_CERT, crate::ca::CA_KEY, crate::ca::CERT_CHAIN] {
            std::fs::copy(other.path().join(f), dir.join(f)).expect("copy");
        }
        std::fs::write(dir.join(crate::ca::ROOT_CERT), &bundle).expect("write");
        let signing_b = crate::Ca::from_dir(dir, "cluster.local").expect("B signing, [A, B]");
        let ca = Fake {
            ca: signing_b,
            ..ca
        };
        let run = run_for(&ca, Duration::from_secs(1)).await;
        let b = run.last.expect("a certificate");
        assert_eq!(b.roots.concat(), bundle);
        assert_eq!(b.chain.len(), 2, "leaf and intermediate");
        let creds =
            crate::tls::Credentials::from_pem(&b.chain, &b.key_pem, &b.roots).expect("credentials");
        assert_eq!(creds.chain.len(), 2);
        assert_eq!(crate::tls::root_store(&b.roots).expect("store").len(), 2);
    }

    #[test]
    fn answers_are_split_into_chain_and_roots() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(split_answer(&[]).is_err());
        assert!(split_answer(&s(&["x"])).is_err(), "no root");
        assert!(split_answer(&s(&["", ""])).is_err(), "no certificate");
    }

    /// A certificate with (almost) no validity left is not renewed in a
    /// tight loop: at most once a second.
    #[tokio::test(start_paused = true)]
    async fn a_very_short_certificate_is_renewed_at_most_once_a_second() {
        let ca = fake(Duration::from_secs(1), 0, None);
        let run = run_for(&ca, Duration::from_millis(10_500)).await;
        assert!((10..=11).contains(&run.asked.len()), "{:?}", run.asked);
    }
}
