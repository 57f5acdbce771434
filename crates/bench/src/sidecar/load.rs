//! The load generator: HTTP/1.1 keep-alive or h2c connections opened inside the
//! client pod's network namespace (`local::nsconnect`), driven either open-loop
//! at a fixed rate with coordinated-omission correction (latency counted from
//! each request's *intended* send time, as wrk2, fortio and `oha
//! --latency-correction` do) or closed-loop as fast as the chain answers.
//! Every loop is bounded by a request count and a deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use super::conn::{Connection, Target};

/// How one load phase drives its connections.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// `rate` requests/s spread evenly over the connections, for `duration`.
    Open { rate: f64, duration: Duration },
    /// Back-to-back requests on every connection until `duration` is over.
    Closed { duration: Duration },
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
}

/// What one load phase measured.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LoadResult {
    /// Requests written to a connection (answered or not).
    pub sent: u64,
    /// Answered 200 with the expected body length.
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// Open loop: requests scheduled but never sent (the deadline passed first).
    pub not_sent: u64,
    pub elapsed_s: f64,
    /// Answered requests per second of elapsed time.
    pub rps: f64,
    pub latency_ms: Percentiles,
    /// Open loop: p99 of how late the pacer itself dispatched (a generator
    /// artefact included in the latencies; should be far below them).
    pub pacer_late_ms_p99: f64,
}

/// Never wait longer than this for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// An open-loop run may lag its schedule by this much before it stops sending.
const GRACE: Duration = Duration::from_secs(5);

/// Run one load phase over `connections` fresh connections.
pub fn run(target: &Target, connections: usize, load: Load) -> anyhow::Result<LoadResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(target, connections.max(1), load))
}

async fn run_async(target: &Target, n: usize, load: Load) -> anyhow::Result<LoadResult> {
    // A new connection per request opens each one in the measured request.
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(if target.per_request {
            None
        } else {
            Some(Connection::open(target).await?)
        });
    }
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(n);
    let mut pacer = None;
    match load {
        Load::Open { rate, duration } => {
            let stop = start + duration + GRACE;
            let mut txs = Vec::with_capacity(n);
            for conn in conns {
                let (tx, rx) = mpsc::unbounded_channel();
                txs.push(tx);
                tasks.push(tokio::spawn(open_worker(target.clone(), conn, rx, stop)));
            }
            let total = (rate * duration.as_secs_f64()).round() as u64;
            pacer = Some(std::thread::spawn(move || {
                pace(txs, start, rate, total, stop)
            }));
        }
        Load::Closed { duration } => {
            for conn in conns {
                tasks.push(tokio::spawn(closed_worker(
                    target.clone(),
                    conn,
                    start,
                    duration,
                )));
            }
        }
    }
    let mut total = Worker::new();
    for t in tasks {
        total.merge(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut result = total.finish(elapsed);
    if let Some(p) = pacer {
        let (not_sent, late) = p.join().map_err(|_| anyhow::anyhow!("pacer panicked"))?;
        result.not_sent += not_sent;
        result.pacer_late_ms_p99 = late;
    }
    Ok(result)
}

/// The open-loop clock, on its own thread (nanosleep with 1 µs timer slack;
/// tokio's timer wheel only has 1 ms resolution, which would itself add up to
/// a millisecond to every corrected latency): request k is due at
/// `start + k/rate` and goes to connection k mod n, which measures its latency
/// from that due time even if it is still busy with the previous one.
/// Returns (requests never dispatched, p99 of the pacer's own lateness in ms).
fn pace(
    txs: Vec<mpsc::UnboundedSender<Instant>>,
    start: Instant,
    rate: f64,
    total: u64,
    stop: Instant,
) -> (u64, f64) {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64);
    }
    let mut late =
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds");
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        let now = Instant::now();
        if now > stop || super::stopping() {
            return (total - k, quantile_ms(&late, 0.99));
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        late.saturating_record((due.elapsed().as_nanos() as u64).max(1_000));
        let _ = txs[(k % txs.len() as u64) as usize].send(due);
    }
    (0, quantile_ms(&late, 0.99))
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1e6
    }
}

/// One connection's share of the phase.
struct Worker {
    hist: Histogram<u64>,
    sent: u64,
    ok: u64,
    not_sent: u64,
    errors: BTreeMap<String, u64>,
    /// Whether the request just made was answered as expected.
    last_ok: bool,
}

impl Worker {
    fn new() -> Worker {
        Worker {
            // 1 µs .. 60 s at 3 significant digits, in nanoseconds.
            hist: Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds"),
            sent: 0,
            ok: 0,
            not_sent: 0,
            errors: BTreeMap::new(),
            last_ok: false,
        }
    }

    fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.hist.saturating_record(ns.max(1_000));
    }

    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: Worker) {
        let _ = self.hist.add(&other.hist);
        self.sent += other.sent;
        self.ok += other.ok;
        self.not_sent += other.not_sent;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn finish(self, elapsed_s: f64) -> LoadResult {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1e6;
        let latency_ms = if self.hist.is_empty() {
            Percentiles::default()
        } else {
            Percentiles {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                p9999: ms(0.9999),
                max: self.hist.max() as f64 / 1e6,
            }
        };
        LoadResult {
            sent: self.sent,
            ok: self.ok,
            errors: self.errors.values().sum(),
            error_kinds: self.errors,
            not_sent: self.not_sent,
            elapsed_s,
            rps: if elapsed_s > 0.0 {
                self.ok as f64 / elapsed_s
            } else {
                0.0
            },
            latency_ms,
            pacer_late_ms_p99: 0.0,
        }
    }
}

async fn open_worker(
    target: Target,
    mut conn: Option<Connection>,
    mut due: mpsc::UnboundedReceiver<Instant>,
    stop: Instant,
) -> Worker {
    let mut w = Worker::new();
    while let Some(intended) = due.recv().await {
        if Instant::now() > stop {
            // Drain a backlog left by a stuck chain without sending it.
            w.not_sent += 1;
            continue;
        }
        one(&target, &mut conn, &mut w).await;
        w.record_since(intended);
    }
    w
}

async fn closed_worker(
    target: Target,
    mut conn: Option<Connection>,
    start: Instant,
    duration: Duration,
) -> Worker {
    let mut w = Worker::new();
    let stop = start + duration;
    tokio::time::sleep_until(start.into()).await;
    // The count bound: no chain here answers a million requests/s.
    let cap = duration.as_secs().max(1) * 1_000_000;
    while Instant::now() < stop && w.sent < cap && !super::stopping() {
        let began = Instant::now();
        one(&target, &mut conn, &mut w).await;
        w.record_since(began);
    }
    w
}

impl Worker {
    /// Record the latency of the last request if it succeeded.
    fn record_since(&mut self, since: Instant) {
        if self.last_ok {
            self.record(since.elapsed());
        }
    }
}

/// Send one request on `conn` (opening it first if there is none: after an
/// error, or always with a new connection per request).
async fn one(target: &Target, conn: &mut Option<Connection>, w: &mut Worker) {
    w.last_ok = false;
    if conn.is_none() {
        match Connection::open(target).await {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                w.sent += 1;
                w.error(format!("connect: {}", short(&e.to_string())));
                return;
            }
        }
    }
    let Some(c) = conn.as_mut() else { return };
    w.sent += 1;
    match tokio::time::timeout(REQUEST_TIMEOUT, c.request(target)).await {
        Ok(Ok(())) => {
            w.ok += 1;
            w.last_ok = true;
            if target.per_request {
                // Dropping the sender closes the connection (client first).
                *conn = None;
            }
        }
        Ok(Err(e)) => {
            w.error(e);
            *conn = None;
        }
        Err(_) => {
            w.error("timeout".into());
            *conn = None;
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}
