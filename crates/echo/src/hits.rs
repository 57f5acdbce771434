//! Hit counting: how many requests this echo received and failed on purpose,
//! in total and per test-chosen `key=`, so that a test can compare what a
//! backend saw behind Envoy and behind Halyard (`GET /hits`, reset with
//! `DELETE /hits`). The same counters drive the fault plans: `--fail-first`
//! and `--fail-fraction` count on the total, `fail_first=` and
//! `fail_fraction=` on their key.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

use http::{Method, StatusCode};
use serde::Serialize;

use crate::faults::{FailWith, FaultPlan};
use crate::identity::Workload;

/// Distinct keys kept between resets; a request with a new key past this is
/// answered 400, so a runaway test cannot grow the echo without bound.
pub const MAX_KEYS: usize = 100_000;

/// The counters of one echo (all HTTP ports together).
#[derive(Debug, Default)]
pub struct Hits {
    connections: AtomicU64,
    total: AtomicU64,
    failed: AtomicU64,
    /// Only requests with a key lock this.
    keys: Mutex<HashMap<String, KeyHits>>,
}

/// The counts of one key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KeyHits {
    pub hits: u64,
    pub failed: u64,
}

/// What counting a request decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The request's number since the last reset (1-based): `x-echo-hits`.
    pub hit: u64,
    /// Its number among the requests with its key: `x-echo-key-hits`.
    pub key_hit: Option<u64>,
    pub failure: Option<Failure>,
}

/// A request picked to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub with: FailWith,
    /// The trigger that picked it (`fail_first`, `--fail-fraction`, ...):
    /// `x-echo-failed`.
    pub why: &'static str,
}

/// A request with a new key came after [`MAX_KEYS`] keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("too many distinct keys ({MAX_KEYS}) since the last reset: DELETE /hits clears them")]
pub struct TooManyKeys;

/// One request as the counters see it.
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a> {
    /// The server-wide plan (command line).
    pub server: &'a FaultPlan,
    /// The request's own plan (query or gRPC metadata).
    pub request: &'a FaultPlan,
    pub key: Option<&'a str>,
    /// The request's number on its connection (1-based).
    pub conn_n: u64,
    pub grpc: bool,
}

impl Hits {
    /// Counts an accepted connection.
    pub fn connection(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    /// Counts a request and decides whether it fails. The request's own plan
    /// counts on its key; the server-wide plan on the total. When both pick
    /// the request, the request's plan says how it fails.
    pub fn record(&self, req: Counted<'_>) -> Result<Verdict, TooManyKeys> {
        let mut keys = req.key.map(|_| self.lock_keys());
        let mut entry = match (req.key, keys.as_deref_mut()) {
            (Some(key), Some(map)) => Some(entry(map, key)?),
            _ => None,
        };
        let hit = self.total.fetch_add(1, Relaxed) + 1;
        let key_hit = entry.as_deref_mut().map(|e| {
            e.hits += 1;
            e.hits
        });
        let default = FailWith::default_for(req.grpc);
        let own = req
            .request
            .trigger(key_hit.unwrap_or(hit), req.conn_n)
            .map(|t| Failure {
                with: req.request.fail.unwrap_or(default),
                why: t.name(false),
            });
        let failure = own.or_else(|| {
            req.server.trigger(hit, req.conn_n).map(|t| Failure {
                with: req.server.fail.unwrap_or(default),
                why: t.name(true),
            })
        });
        if failure.is_some() {
            self.failed.fetch_add(1, Relaxed);
            if let Some(e) = entry {
                e.failed += 1;
            }
        }
        Ok(Verdict {
            hit,
            key_hit,
            failure,
        })
    }

    /// The counts now.
    fn snapshot(&self) -> Totals {
        let keys = self.lock_keys();
        Totals {
            connections: self.connections.load(Relaxed),
            hits: self.total.load(Relaxed),
            failed: self.failed.load(Relaxed),
            keys: keys.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// Zeroes every counter and forgets every key; returns the counts before.
    fn reset(&self) -> Totals {
        let mut keys = self.lock_keys();
        Totals {
            connections: self.connections.swap(0, Relaxed),
            hits: self.total.swap(0, Relaxed),
            failed: self.failed.swap(0, Relaxed),
            keys: keys.drain().collect(),
        }
    }

    fn key(&self, key: &str, forget: bool) -> KeyHits {
        let mut keys = self.lock_keys();
        if forget {
            keys.remove(key)
        } else {
            keys.get(key).copied()
        }
        .unwrap_or_default()
    }

    /// A panic elsewhere cannot leave the counts half-updated, so a poisoned
    /// lock is still good.
    fn lock_keys(&self) -> MutexGuard<'_, HashMap<String, KeyHits>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn entry<'m>(
    map: &'m mut HashMap<String, KeyHits>,
    key: &str,
) -> Result<&'m mut KeyHits, TooManyKeys> {
    if !map.contains_key(key) {
        if map.len() >= MAX_KEYS {
            return Err(TooManyKeys);
        }
        map.insert(key.to_owned(), KeyHits::default());
    }
    map.get_mut(key).ok_or(TooManyKeys)
}

#[derive(Debug, Serialize)]
struct Totals {
    connections: u64,
    hits: u64,
    failed: u64,
    keys: BTreeMap<String, KeyHits>,
}

/// The body of a `/hits` answer.
#[derive(Serialize)]
struct HitsReport<'a, T: Serialize> {
    service: &'a str,
    version: &'a str,
    pod: &'a str,
    #[serde(flatten)]
    counts: T,
}

impl<'a, T: Serialize> HitsReport<'a, T> {
    fn new(workload: &'a Workload, counts: T) -> Self {
        Self {
            service: &workload.service,
            version: &workload.version,
            pod: &workload.pod,
            counts,
        }
    }
}

/// One key's counts in a `/hits?key=` answer.
#[derive(Serialize)]
struct KeyReport<'a> {
    key: &'a str,
    #[serde(flatten)]
    hits: KeyHits,
}

/// Answers `/hits`: `GET` reads the counters, `DELETE` resets them (and
/// answers with the counts before); `?key=K` narrows either to one key.
pub fn answer(
    hits: &Hits,
    workload: &Workload,
    method: &Method,
    query: Option<&str>,
) -> (StatusCode, String) {
    let forget = match *method {
        Method::GET => false,
        Method::DELETE => true,
        _ => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                "/hits: GET reads the counters, DELETE resets them".to_owned(),
            );
        }
    };
    let key = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == "key")
            .map(|(_, value)| value.into_owned())
    });
    let json = match key {
        Some(key) => {
            let hits = hits.key(&key, forget);
            serde_json::to_string(&HitsReport::new(workload, KeyReport { key: &key, hits }))
        }
        None if forget => serde_json::to_string(&HitsReport::new(workload, hits.reset())),
        None => serde_json::to_string(&HitsReport::new(workload, hits.snapshot())),
    };
    match json {
        Ok(json) => (StatusCode::OK, json),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Fraction;

    fn plan(first: Option<u64>, fail: Option<FailWith>) -> FaultPlan {
        FaultPlan {
            fail,
            first,
            ..FaultPlan::default()
        }
    }

    fn counted<'a>(
        server: &'a FaultPlan,
        request: &'a FaultPlan,
        key: Option<&'a str>,
    ) -> Counted<'a> {
        Counted {
            server,
            request,
            key,
            conn_n: 1,
            grpc: false,
        }
    }

    #[test]
    fn keys_count_apart_and_fail_first_per_key() {
        let hits = Hits::default();
        let none = FaultPlan::default();
        let two = plan(Some(2), None);
        let mut failed = Vec::new();
        for key in ["a", "b", "a", "b", "a", "a"] {
            let v = hits
                .record(counted(&none, &two, Some(key)))
                .expect("counted");
            failed.push(v.failure.is_some());
        }
        assert_eq!(failed, [true, true, true, true, false, false]);
        let v = hits.record(counted(&none, &none, None)).expect("counted");
        assert_eq!((v.hit, v.key_hit, v.failure), (7, None, None));

        let snap = hits.snapshot();
        assert_eq!((snap.hits, snap.failed), (7, 4));
        assert_eq!(snap.keys["a"], KeyHits { hits: 4, failed: 2 });
        assert_eq!(snap.keys["b"], KeyHits { hits: 2, failed: 2 });

        assert_eq!(hits.key("a", true), KeyHits { hits: 4, failed: 2 });
        assert_eq!(hits.key("a", false), KeyHits::default());
        let before = hits.reset();
        assert_eq!(before.hits, 7);
        assert_eq!(hits.snapshot().hits, 0);
        assert!(hits.snapshot().keys.is_empty());
    }

    #[test]
    fn server_plan_counts_on_the_total_and_request_plan_wins() {
        let hits = Hits::default();
        let server = FaultPlan {
            fail: Some(FailWith::Rst),
            fraction: Fraction::parse("1/2"),
            ..FaultPlan::default()
        };
        let none = FaultPlan::default();
        let v1 = hits.record(counted(&server, &none, None)).expect("counted");
        assert_eq!(v1.failure, None);
        let v2 = hits
            .record(counted(&server, &none, Some("k")))
            .expect("counted");
        assert_eq!(
            v2.failure,
            Some(Failure {
                with: FailWith::Rst,
                why: "--fail-fraction"
            })
        );
        assert_eq!(v2.key_hit, Some(1));
        // Both pick request 4: the request's own plan (default 503) wins.
        hits.record(counted(&server, &none, None)).expect("counted");
        let own = plan(Some(5), None);
        let v4 = hits
            .record(counted(&server, &own, Some("k")))
            .expect("counted");
        assert_eq!(
            v4.failure,
            Some(Failure {
                with: FailWith::Status(StatusCode::SERVICE_UNAVAILABLE),
                why: "fail_first"
            })
        );
        // gRPC requests default to UNAVAILABLE.
        let req = Counted {
            grpc: true,
            ..counted(&none, &own, Some("g"))
        };
        let v = hits.record(req).expect("counted");
        assert_eq!(
            v.failure.map(|f| f.with),
            Some(FailWith::Grpc(tonic::Code::Unavailable))
        );
    }

    #[test]
    fn key_limit() {
        let hits = Hits::default();
        let none = FaultPlan::default();
        {
            let mut keys = hits.lock_keys();
            for i in 0..MAX_KEYS {
                keys.insert(i.to_string(), KeyHits::default());
            }
        }
        assert_eq!(
            hits.record(counted(&none, &none, Some("new"))),
            Err(TooManyKeys)
        );
        assert!(hits.record(counted(&none, &none, Some("7"))).is_ok());
        hits.reset();
        assert!(hits.record(counted(&none, &none, Some("new"))).is_ok());
    }
}
