//! The kubelet's prober for one container: the startup probe runs first and
//! gates the others; then liveness and readiness run side by side, each on
//! its own period. Results need `successThreshold` / `failureThreshold`
//! consecutive outcomes to flip. Readiness starts failed, liveness
//! succeeded; a startup or liveness probe that fails out asks for the
//! container to be restarted. The probe action itself is a closure, so the
//! timing is tested with tokio's paused clock.

use std::future::Future;
use std::time::Duration;

use probe::Kind;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// A probe's timing fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl From<&api::kube::Probe> for Timing {
    fn from(p: &api::kube::Probe) -> Timing {
        Timing {
            initial_delay: Duration::from_secs(p.initial_delay_or_default().into()),
            period: Duration::from_secs(p.period_or_default().into()),
            timeout: Duration::from_secs(p.timeout_or_default().into()),
            success_threshold: p.success_threshold_or_default(),
            failure_threshold: p.failure_threshold_or_default(),
        }
    }
}

/// Which probes a container has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probes {
    pub startup: Option<Timing>,
    pub liveness: Option<Timing>,
    pub readiness: Option<Timing>,
}

impl Probes {
    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.liveness.is_none() && self.readiness.is_none()
    }
}

/// What the prober says about a running container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The startup probe passed (or there is none).
    pub started: bool,
    /// The readiness probe passes (or there is none and it has started).
    pub ready: bool,
    /// Set once a startup or liveness probe failed `failureThreshold` times
    /// in a row: the container must be killed and restarted.
    pub restart: Option<String>,
    /// The last failure of any probe, as `Readiness probe failed: ...`.
    pub last_error: Option<String>,
}

/// Consecutive-outcome counting for one probe (the kubelet's worker).
#[derive(Debug)]
struct Tracker {
    timing: Timing,
    result: bool,
    run: u32,
}

impl Tracker {
    fn new(timing: Timing, initial: bool) -> Tracker {
        Tracker {
            timing,
            result: initial,
            run: 0,
        }
    }

    /// Record one outcome; returns the (possibly flipped) result.
    fn record(&mut self, ok: bool) -> bool {
        if ok == self.result {
            self.run = 0;
            return self.result;
        }
        self.run += 1;
        let needed = if ok {
            self.timing.success_threshold
        } else {
            self.timing.failure_threshold
        };
        if self.run >= needed {
            self.result = ok;
            self.run = 0;
        }
        self.result
    }
}

/// One probe run bounded by its timeout.
async fn attempt<F, Fut>(check: &F, kind: Kind, t: &Timing) -> Result<(), String>
where
    F: Fn(Kind) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    match timeout(t.timeout, check(kind)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timeout: probe did not answer within {}s",
            t.timeout.as_secs()
        )),
    }
}

/// Probe a container that started at `started_at` until it must be
/// restarted (the task is aborted when the container stops), publishing
/// every change on `tx`.
pub async fn run<F, Fut>(probes: Probes, started_at: Instant, check: F, tx: watch::Sender<Health>)
where
    F: Fn(Kind) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let note = |kind: Kind, r: &Result<(), String>| {
        if let Err(e) = r {
            let msg = format!("{} probe failed: {e}", kind.name());
            tx.send_if_modified(|h| {
                let changed = h.last_error.as_deref() != Some(msg.as_str());
                h.last_error = Some(msg.clone());
                changed
            });
        }
    };
    tx.send_replace(Health {
        started: probes.startup.is_none(),
        ready: probes.startup.is_none() && probes.readiness.is_none(),
        restart: None,
        last_error: None,
    });
    if let Some(t) = probes.startup {
        sleep_until(started_at + t.initial_delay).await;
        // Startup has no success threshold above 1: one success starts it.
        let mut tracker = Tracker::new(t, false);
        let mut failures = 0;
        loop {
            let r = attempt(&check, Kind::Startup, &t).await;
            note(Kind::Startup, &r);
            if tracker.record(r.is_ok()) {
                break;
            }
            failures += 1;
            if failures >= t.failure_threshold {
                let why = r.err().unwrap_or_default();
                tx.send_modify(|h| {
                    h.restart = Some(format!("Startup probe failed: {why}"));
                });
                return;
            }
            sleep(t.period).await;
        }
        tx.send_modify(|h| {
            h.started = true;
            h.ready = probes.readiness.is_none();
        });
    }
    let liveness = async {
        let Some(t) = probes.liveness else {
            return std::future::pending::<()>().await;
        };
        sleep_until(started_at + t.initial_delay).await;
        let mut tracker = Tracker::new(t, true);
        loop {
            let r = attempt(&check, Kind::Liveness, &t).await;
            note(Kind::Liveness, &r);
            if !tracker.record(r.is_ok()) {
                let why = r.err().unwrap_or_default();
                tx.send_modify(|h| {
                    h.restart = Some(format!("Liveness probe failed: {why}"));
                });
                return;
            }
            sleep(t.period).await;
        }
    };
    let readiness = async {
        let Some(t) = probes.readiness else {
            return std::future::pending::<()>().await;
        };
        sleep_until(started_at + t.initial_delay).await;
        let mut tracker = Tracker::new(t, false);
        loop {
            let r = attempt(&check, Kind::Readiness, &t).await;
            note(Kind::Readiness, &r);
            let ready = tracker.record(r.is_ok());
            tx.send_if_modified(|h| std::mem::replace(&mut h.ready, ready) != ready);
            sleep(t.period).await;
        }
    };
    tokio::select! {
        () = liveness => {}
        () = readiness => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    fn timing(period: u64, failure: u32, success: u32) -> Timing {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(period),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    /// Per kind, the outcomes still to give.
    type Outcomes = Vec<(Kind, VecDeque<bool>)>;

    /// A scripted probe: per kind, the outcomes to give (then the last one
    /// forever), and the (kind, time since start) of every call.
    #[derive(Clone, Default)]
    struct Script {
        outcomes: Arc<Mutex<Outcomes>>,
        calls: Arc<Mutex<Vec<(Kind, u64)>>>,
    }

    impl Script {
        fn with(self, kind: Kind, outcomes: &[bool]) -> Script {
            self.outcomes
                .lock()
                .expect("lock")
                .push((kind, outcomes.iter().copied().collect()));
            self
        }

        fn check(
            &self,
            start: Instant,
        ) -> impl Fn(Kind) -> std::future::Ready<Result<(), String>> + use<> {
            let s = self.clone();
            move |kind| {
                s.calls
                    .lock()
                    .expect("lock")
                    .push((kind, start.elapsed().as_secs()));
                let mut o = s.outcomes.lock().expect("lock");
                let q = &mut o.iter_mut().find(|(k, _)| *k == kind).expect("kind").1;
                let ok = if q.len() > 1 {
                    q.pop_front().unwrap_or(true)
                } else {
                    q.front().copied().unwrap_or(true)
                };
                std::future::ready(if ok { Ok(()) } else { Err("boom".into()) })
            }
        }

        fn calls(&self, kind: Kind) -> Vec<u64> {
            self.calls
                .lock()
                .expect("lock")
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, t)| *t)
                .collect()
        }
    }

    fn spawn(probes: Probes, script: &Script) -> watch::Receiver<Health> {
        let start = Instant::now();
        let (tx, rx) = watch::channel(Health::default());
        tokio::spawn(run(probes, start, script.check(start), tx));
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn no_probes_means_started_and_ready() {
        let rx = spawn(Probes::default(), &Script::default());
        tokio::task::yield_now().await;
        let h = rx.borrow().clone();
        assert!(h.started && h.ready && h.restart.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_needs_thresholds_to_flip() {
        // fail, ok, ok (ready at the 2nd success), fail, fail, fail (unready), ok...
        let script = Script::default().with(
            Kind::Readiness,
            &[false, true, true, false, false, false, true],
        );
        let probes = Probes {
            readiness: Some(timing(2, 3, 2)),
            ..Probes::default()
        };
        let mut rx = spawn(probes, &script);
        let start = Instant::now();
        rx.wait_for(|h| h.ready).await.expect("ready");
        let ready_at = start.elapsed().as_secs();
        rx.wait_for(|h| !h.ready).await.expect("unready");
        let seen = [(true, ready_at), (false, start.elapsed().as_secs())];
        // Ready after the probes at 2 s and 4 s; unready after those at 6, 8, 10 s.
        assert_eq!(seen, [(true, 4), (false, 10)]);
        assert_eq!(script.calls(Kind::Readiness)[..6], [0, 2, 4, 6, 8, 10]);
        assert_eq!(
            rx.borrow().last_error.as_deref(),
            Some("Readiness probe failed: boom")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn startup_gates_liveness_and_readiness() {
        let script = Script::default()
            .with(Kind::Startup, &[false, false, true])
            .with(Kind::Liveness, &[true])
            .with(Kind::Readiness, &[true]);
        let probes = Probes {
            startup: Some(timing(5, 10, 1)),
            liveness: Some(timing(10, 3, 1)),
            readiness: Some(Timing {
                initial_delay: Duration::from_secs(3),
                ..timing(10, 3, 1)
            }),
        };
        let mut rx = spawn(probes, &script);
        rx.wait_for(|h| h.started).await.expect("started");
        rx.wait_for(|h| h.ready).await.expect("ready");
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(script.calls(Kind::Startup), [0, 5, 10]);
        // Both begin once startup passed at 10 s (their initial delays are over).
        assert_eq!(script.calls(Kind::Readiness)[0], 10);
        assert_eq!(script.calls(Kind::Liveness)[..3], [10, 20, 30]);
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_failures_ask_for_a_restart() {
        let script =
            Script::default().with(Kind::Liveness, &[true, false, true, false, false, false]);
        let probes = Probes {
            liveness: Some(timing(1, 3, 1)),
            ..Probes::default()
        };
        let mut rx = spawn(probes, &script);
        let start = Instant::now();
        rx.wait_for(|h| h.restart.is_some()).await.expect("restart");
        // One failure at 1 s is forgiven; three in a row (3, 4, 5 s) are not.
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(
            rx.borrow().restart.as_deref(),
            Some("Liveness probe failed: boom")
        );
        assert!(rx.borrow().ready, "no readiness probe: ready while alive");
    }

    #[tokio::test(start_paused = true)]
    async fn startup_that_never_passes_restarts_and_slow_probes_time_out() {
        let probes = Probes {
            startup: Some(timing(2, 3, 1)),
            ..Probes::default()
        };
        let start = Instant::now();
        let (tx, mut rx) = watch::channel(Health::default());
        // Never answers: every attempt hits the 1 s timeout.
        tokio::spawn(run(
            probes,
            start,
            |_| std::future::pending::<Result<(), String>>(),
            tx,
        ));
        rx.wait_for(|h| h.restart.is_some()).await.expect("restart");
        // Attempts at 0, 3, 6 s, each timing out after 1 s.
        assert_eq!(start.elapsed(), Duration::from_secs(7));
        let h = rx.borrow().clone();
        assert!(!h.started && !h.ready);
        assert!(
            h.restart.as_deref().unwrap_or_default().contains("timeout"),
            "{h:?}"
        );
    }
}
