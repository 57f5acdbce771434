//! Halyard's benchmarks as a library behind the `halyard-bench` binary:
//! [`pilot_bench`] measures the control plane at scale; [`report`] writes the
//! JSON, markdown and SVG results. The data-plane benchmark is meant to join
//! as a sibling module and subcommand.

pub mod pilot_bench;
pub mod report;
