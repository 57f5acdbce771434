//! Progress while `halyard up` waits: one spinner line per phase on a
//! terminal (rewritten in place), plain lines when stdout is not a TTY (a
//! line each time the count changes). Also the report of pods that did not
//! become ready.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use local::state::{MeshStatus, PodStatus, StateDir};

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

pub struct Progress {
    tty: bool,
    phase: String,
    last: String,
    tick: usize,
    started: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stdout().is_terminal(),
            phase: String::new(),
            last: String::new(),
            tick: 0,
            started: Instant::now(),
        }
    }

    /// Show `detail` for `phase`; a new phase closes the previous line.
    pub fn update(&mut self, phase: &str, detail: &str) {
        let mut out = std::io::stdout().lock();
        if phase != self.phase {
            self.finish_line(&mut out);
            self.phase = phase.to_string();
            self.started = Instant::now();
            self.last.clear();
        }
        if self.tty {
            self.tick += 1;
            let s = SPINNER[self.tick % SPINNER.len()];
            let secs = self.started.elapsed().as_secs();
            let _ = write!(out, "\r\x1b[2K{s} {phase}: {detail} ({secs}s)");
            let _ = out.flush();
        } else if detail != self.last {
            let _ = writeln!(out, "{phase}: {detail}");
        }
        self.last = detail.to_string();
    }

    /// Close the current phase's line with a check mark (on a TTY).
    pub fn done(&mut self) {
        let mut out = std::io::stdout().lock();
        self.finish_line(&mut out);
        self.phase.clear();
    }

    fn finish_line(&self, out: &mut impl Write) {
        if self.tty && !self.phase.is_empty() {
            let secs = self.started.elapsed().as_secs();
            let _ = writeln!(out, "\r\x1b[2K✓ {}: {} ({secs}s)", self.phase, self.last);
        }
    }
}

/// `5/7 pods ready (waiting for reviews-v2-0, ratings-v1-0)`.
pub fn pods_line(status: &MeshStatus) -> String {
    let ready = status.pods.iter().filter(|p| p.ready).count();
    let waiting: Vec<&str> = status
        .pods
        .iter()
        .filter(|p| !p.ready)
        .map(|p| p.name.as_str())
        .take(4)
        .collect();
    let mut line = format!("{ready}/{} pods ready", status.pods.len());
    if !waiting.is_empty() {
        line.push_str(&format!(" (waiting for {}", waiting.join(", ")));
        if status.pods.len() - ready > waiting.len() {
            line.push_str(", ...");
        }
        line.push(')');
    }
    line
}

/// Why each pod that is not ready is not: probe errors, last exit, log tail.
pub fn not_ready_report(status: &MeshStatus, state: &StateDir) -> String {
    let mut text = String::new();
    for p in status.pods.iter().filter(|p| !p.ready) {
        text.push_str(&format!(
            "  {} ({}, READY {}, {} restarts): {}\n",
            p.id,
            p.status_column(),
            p.ready_column(),
            p.restarts,
            reason(p)
        ));
        let log = state.pod_dir(&p.namespace, &p.name).join("app.log");
        for line in tail(&log, 3) {
            text.push_str(&format!("      | {line}\n"));
        }
    }
    text
}

fn reason(p: &PodStatus) -> String {
    if p.sidecar && !p.sidecar_ready {
        return "sidecar not ready (see `halyard logs POD --sidecar`)".into();
    }
    let mut why = Vec::new();
    for c in p.containers.iter().filter(|c| !c.ready) {
        let mut parts = Vec::new();
        if !c.running {
            parts.push("not running".to_string());
        }
        if let Some(e) = &c.last_probe_error {
            parts.push(e.clone());
        }
        if let Some(s) = &c.last_state {
            parts.push(format!("last stopped: {s}"));
        }
        if parts.is_empty() {
            parts.push("readiness probe has not passed yet".into());
        }
        why.push(format!("container {}: {}", c.name, parts.join("; ")));
    }
    if why.is_empty() {
        "starting".into()
    } else {
        why.join("; ")
    }
}

fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.chars().take(160).collect())
        .collect()
}
