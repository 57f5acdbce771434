//! `halyard-bench sidecar`: the data-plane benchmark. Client pod → client
//! sidecar → server sidecar → server pod (`halyard echo`, 1 KiB answers) with
//! iptables capture, in three modes run interleaved per round (direct: no
//! sidecars; halyard: `halyard proxy`; envoy: stock Envoy from the same
//! bootstrap and pilot), each on a fresh mesh. Per run: sanity request, idle
//! RSS, warm-up, open loop at a fixed rate (latency from intended send time),
//! closed loop (max rps); CPU and memory from /proc; request counters from
//! each sidecar's admin as the no-bypass check. With `--mtls` the pair is
//! started by the benchmark from fixed bootstraps ([`static_pair`]), plaintext
//! and mTLS between them, keep-alive and a new connection per request.

pub mod cli;
pub mod conn;
pub mod load;
pub mod mesh;
pub mod pki;
pub mod probe;
pub mod report;
pub mod run;
pub mod static_pair;
pub mod summary;
pub mod svg;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use conn::Protocol;

/// Who carries the traffic between the two apps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No sidecars, no capture: the limit.
    Direct,
    /// `halyard proxy` as both sidecars.
    Halyard,
    /// Stock Envoy as both sidecars, same bootstrap and pilot.
    Envoy,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "direct" => Some(Mode::Direct),
            "halyard" => Some(Mode::Halyard),
            "envoy" => Some(Mode::Envoy),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Halyard => "halyard",
            Mode::Envoy => "envoy",
        }
    }
    pub fn has_sidecars(self) -> bool {
        self != Mode::Direct
    }
}

/// What the sidecar-to-sidecar hop carries, and how the pair is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `halyard up` with injection: capture rules, the pilot's listeners and
    /// clusters, plaintext between the sidecars (the default).
    Plaintext,
    /// The static pair ([`static_pair`]) without TLS: the baseline that
    /// isolates what mTLS costs on the same two-sidecar path.
    Static,
    /// The static pair with Istio's ISTIO_MUTUAL between the sidecars
    /// (one mesh CA, SPIFFE SAN checks both ways, STRICT inbound).
    Mtls,
}

impl Transport {
    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "plaintext" => Some(Transport::Plaintext),
            "static" => Some(Transport::Static),
            "mtls" => Some(Transport::Mtls),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Transport::Plaintext => "plaintext",
            Transport::Static => "static",
            Transport::Mtls => "mtls",
        }
    }
    /// Whether the benchmark starts the sidecars itself from fixed
    /// bootstraps (in an uninjected mesh) rather than `halyard up` injecting them.
    pub fn is_static(self) -> bool {
        self != Transport::Plaintext
    }
}

/// One measured case: every mode runs it once per round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Case {
    pub protocol: Protocol,
    pub connections: usize,
    pub transport: Transport,
    /// A new client connection per request (the handshake-cost run); with
    /// a static transport the sidecar-to-sidecar connection is new too.
    #[serde(default)]
    pub per_request: bool,
    /// The client sidecar's route carries Istio's default retry policy.
    #[serde(default)]
    pub istio_retries: bool,
}

impl Case {
    pub fn label(&self) -> String {
        format!(
            "{} c={} {}{}{}",
            self.protocol.name(),
            self.connections,
            self.transport.name(),
            if self.per_request {
                " new-conn-per-request"
            } else {
                ""
            },
            if self.istio_retries { " +retries" } else { "" }
        )
    }

    /// The direct baseline does not depend on the transport: cases that
    /// differ only in it share one direct run per round.
    pub fn direct_key(&self) -> (Protocol, usize, bool) {
        (self.protocol, self.connections, self.per_request)
    }
}

/// Everything a benchmark invocation was asked to do.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Options {
    pub cases: Vec<Case>,
    pub modes: Vec<Mode>,
    pub rounds: usize,
    /// Open-loop rate, requests/s over all connections.
    pub rate: f64,
    pub duration: Duration,
    pub max_duration: Duration,
    pub warmup: Duration,
    pub body_bytes: usize,
    pub mesh: mesh::MeshConfig,
    /// The mesh CA and workload certificates of the mTLS cases (one set for
    /// every run of either proxy).
    pub pki: Option<pki::Pki>,
}

/// Set by SIGINT/SIGTERM/SIGHUP: loops stop, the current mesh is torn down
/// (its guard drops) and the report keeps the runs finished so far.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Route SIGINT, SIGTERM and SIGHUP to [`stopping`] instead of dying with a mesh up.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Whether a stop signal arrived.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}
