//! The local runtime behind `halyard up`: a whole mesh on one Linux machine
//! with no Kubernetes. Pods are network namespaces on a bridge (in a namespace
//! of its own, so the host is untouched), with Istio's capture rules, a sidecar
//! per injected pod and the containers' commands run as processes.

pub mod container;
pub mod network;
pub mod nsconnect;
pub mod plan;
pub mod prereq;
pub mod prober;
pub mod process;
pub mod registry;
pub mod runtime;
pub mod state;
pub mod uts;

use std::path::PathBuf;

pub use runtime::{Mesh, SidecarKind, UpOptions};

/// Why the runtime could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "halyard up needs root for network namespaces and iptables: run it with sudo \
         (sudo halyard up DIR); nothing was started"
    )]
    NotRoot,
    #[error(
        "halyard up needs `{program}`, which is not on PATH: install it with \
         `apt-get install {package}` (or run scripts/demo.sh); nothing was started"
    )]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    #[error("the manifests have errors; nothing was started:\n{}", .0.join("\n"))]
    Manifests(Vec<String>),
    #[error("{0}")]
    Command(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("network: {0}")]
    Capture(#[from] capture::CaptureError),
    #[error("pod vanished while supervised")]
    Gone,
}
