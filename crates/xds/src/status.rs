//! Per-stream xDS sync state — what each connected proxy was sent, ACKed and
//! NACKed, per type — for the pilot's `/debug/syncz` and for tests that wait for
//! convergence. Not on the hot path: a std `Mutex`, never held across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::server::Subscription;
use tokio::sync::watch;

/// Sync state of every connected ADS stream. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct SyncStatus {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Bumped on every change, so waiters wake without polling.
    generation: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    next_stream_id: u64,
    proxies: BTreeMap<u64, ProxyStatus>,
}

/// One connected ADS stream.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    pub stream_id: u64,
    pub node_id: String,
    pub delta: bool,
    /// RFC 3339, UTC.
    pub connected_at: String,
    /// Keyed by short name (`CDS`, `EDS`, `LDS`, `RDS`, `SDS`; the type URL otherwise).
    pub types: BTreeMap<String, TypeStatus>,
}

/// A stream's subscription to one type, shared with the stream (no copy of
/// the names per stream); serialized as a list, `*` first for a wildcard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscribed(pub Subscription);

impl Subscribed {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_list(&self) -> Vec<String> {
        self.0.to_list()
    }
}

impl<const N: usize> PartialEq<[&str; N]> for Subscribed {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.to_list()
            .iter()
            .map(String::as_str)
            .eq(other.iter().copied())
    }
}

impl Serialize for Subscribed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .wildcard
                .then_some("*")
                .into_iter()
                .chain(self.0.names.iter().map(|n| &**n)),
        )
    }
}

/// One type URL on one stream.
#[derive(Clone, Debug, Serialize)]
pub struct TypeStatus {
    pub type_url: String,
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub acked_version: Option<String>,
    /// Error text of the last NACK, cleared by a later ACK.
    pub nack: Option<String>,
    /// Subscribed names; `*` stands for a wildcard subscription.
    pub subscribed: Subscribed,
    /// Responses sent for this type.
    pub sent_count: u64,
    pub ack_count: u64,
    pub nack_count: u64,
    /// Resource bodies sent for this type (delta sends only changed ones).
    pub sent_resources: u64,
}

impl TypeStatus {
    fn new(type_url: &str) -> Self {
        TypeStatus {
            type_url: type_url.to_string(),
            sent_version: None,
            sent_nonce: None,
            acked_version: None,
            nack: None,
            subscribed: Subscribed::default(),
            sent_count: 0,
            ack_count: 0,
            nack_count: 0,
            sent_resources: 0,
        }
    }
}

impl Default for SyncStatus {
    fn default() -> Self {
        SyncStatus {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                generation: watch::channel(0).0,
            }),
        }
    }
}

impl SyncStatus {
    /// Every connected stream, ordered by stream id.
    pub fn snapshot(&self) -> Vec<ProxyStatus> {
        self.lock().proxies.values().cloned().collect()
    }

    /// One stream, if still connected.
    pub fn proxy(&self, stream_id: u64) -> Option<ProxyStatus> {
        self.lock().proxies.get(&stream_id).cloned()
    }

    /// Wakes on every change of any stream's state (subscriptions, sends,
    /// ACKs): for watchers that act on what proxies subscribe to.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Every name some connected stream subscribes to for `type_url`.
    pub fn subscribed_names(&self, type_url: &str) -> std::collections::BTreeSet<String> {
        let key = type_key(type_url);
        self.lock()
            .proxies
            .values()
            .filter_map(|p| p.types.get(&key))
            .flat_map(|t| t.subscribed.to_list())
            .filter(|n| n != "*")
            .collect()
    }

    /// True when every connected proxy that subscribes to names of `type_url`
    /// (or was sent some) has ACKed `version` for it. Vacuously true when none
    /// does: check the count too.
    pub fn all_acked(&self, type_url: &str, version: &str) -> bool {
        let key = type_key(type_url);
        self.lock()
            .proxies
            .values()
            .filter_map(|p| p.types.get(&key))
            .filter(|t| !t.subscribed.is_empty() || t.sent_version.is_some())
            .all(|t| t.acked_version.as_deref() == Some(version))
    }

    /// Wait until `pred` holds over the connected streams, or `timeout` passes.
    /// Returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ProxyStatus]) -> bool,
    ) -> bool {
        let mut changes = self.inner.generation.subscribe();
        let check = async {
            loop {
                changes.borrow_and_update();
                if pred(&self.snapshot()) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, check).await.is_ok() && pred(&self.snapshot())
    }

    pub(crate) fn register(&self, node_id: &str, delta: bool) -> u64 {
        let id = {
            let mut state = self.lock();
            state.next_stream_id += 1;
            let id = state.next_stream_id;
            state.proxies.insert(
                id,
                ProxyStatus {
                    stream_id: id,
                    node_id: node_id.to_string(),
                    delta,
                    connected_at: rfc3339(SystemTime::now()),
                    types: BTreeMap::new(),
                },
            );
            id
        };
        self.bump();
        id
    }

    pub(crate) fn unregister(&self, stream_id: u64) {
        self.lock().proxies.remove(&stream_id);
        self.bump();
    }

    pub(crate) fn subscribed(&self, stream_id: u64, type_url: &str, names: Subscription) {
        self.update(stream_id, type_url, |t| t.subscribed = Subscribed(names));
    }

    pub(crate) fn sent(
        &self,
        stream_id: u64,
        type_url: &str,
        version: &str,
        nonce: &str,
        resources: usize,
    ) {
        self.update(stream_id, type_url, |t| {
            t.sent_version = Some(version.to_string());
            t.sent_nonce = Some(nonce.to_string());
            t.sent_count += 1;
            t.sent_resources += resources as u64;
        });
    }

    pub(crate) fn acked(&self, stream_id: u64, type_url: &str, version: &str) {
        self.update(stream_id, type_url, |t| {
            t.acked_version = Some(version.to_string());
            t.nack = None;
            t.ack_count += 1;
        });
    }

    pub(crate) fn nacked(&self, stream_id: u64, type_url: &str, error: &str) {
        self.update(stream_id, type_url, |t| {
            t.nack = Some(error.to_string());
            t.nack_count += 1;
        });
    }

    fn update(&self, stream_id: u64, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        {
            let mut state = self.lock();
            let Some(proxy) = state.proxies.get_mut(&stream_id) else {
                return;
            };
            let entry = proxy
                .types
                .entry(type_key(type_url))
                .or_insert_with(|| TypeStatus::new(type_url));
            f(entry);
        }
        self.bump();
    }

    fn bump(&self) {
        self.inner.generation.send_modify(|g| *g += 1);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The key a type is shown under: its short name, or the URL for unknown types.
pub fn type_key(type_url: &str) -> String {
    match crate::type_url::short(type_url) {
        "?" => type_url.to_string(),
        short => short.to_string(),
    }
}

/// `2026-11-26T17:00:00Z` from a system time (UTC, whole seconds).
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_url::{CLUSTER, LISTENER};

    #[test]
    fn rfc3339_formats_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_712_400);
        assert_eq!(rfc3339(t), "2026-11-26T17:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn ack_clears_nack_and_all_acked_tracks_subscribers() {
        let status = SyncStatus::default();
        let a = status.register("a", false);
        let b = status.register("b", true);
        status.sent(a, CLUSTER, "v1", "1", 2);
        status.nacked(a, CLUSTER, "bad cluster");
        assert_eq!(
            status.proxy(a).unwrap().types["CDS"].nack.as_deref(),
            Some("bad cluster")
        );
        assert!(!status.all_acked(CLUSTER, "v1"));
        status.acked(a, CLUSTER, "v1");
        let cds = &status.proxy(a).unwrap().types["CDS"];
        assert_eq!(
            (cds.nack.clone(), cds.ack_count, cds.nack_count),
            (None, 1, 1)
        );
        // b never asked for CDS, so it does not hold convergence back.
        assert!(status.all_acked(CLUSTER, "v1"));
        let all = Subscription {
            wildcard: true,
            ..Default::default()
        };
        status.subscribed(b, LISTENER, all);
        assert!(!status.all_acked(LISTENER, "v1"));
        status.unregister(b);
        assert_eq!(status.snapshot().len(), 1);
    }

    #[tokio::test]
    async fn wait_until_wakes_on_change() {
        let status = SyncStatus::default();
        let waiter = {
            let status = status.clone();
            tokio::spawn(async move {
                status
                    .wait_until(Duration::from_secs(10), |p| p.len() == 1)
                    .await
            })
        };
        status.register("a", false);
        assert!(waiter.await.unwrap());
        assert!(
            !status
                .wait_until(Duration::from_millis(10), |p| p.is_empty())
                .await
        );
    }
}
