//! Halyard's benchmarks as a library behind the `halyard-bench` binary:
//! [`pilot_bench`] measures the control plane at scale; [`report`] writes the
//! JSON, markdown and SVG results; [`sidecar`] is the data-plane benchmark
//! (halyard vs Envoy sidecars vs a direct connection).

pub mod handshake;
pub mod pilot_bench;
pub mod report;
pub mod sidecar;
