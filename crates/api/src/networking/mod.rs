//! `networking.istio.io` spec types (v1, v1beta1 and v1alpha3 share one schema):
//! VirtualService, DestinationRule, ServiceEntry, WorkloadEntry, WorkloadGroup,
//! Sidecar, Gateway.
//!
//! Field names are Istio's camelCase in YAML and snake_case here. Every struct
//! denies unknown fields, so a typo is an error naming its path. `match` is
//! spelt `matches` in Rust. Optional scalars are `Option`, lists and maps are
//! empty when absent. Durations are [`crate::Duration`]; string matches are
//! [`StringMatch`].

mod common;
mod connection_pool;
mod destination_rule;
mod gateway;
mod one_of;
mod service_entry;
mod sidecar;
mod virtual_service;
mod workload_group;

#[cfg(test)]
mod schema_coverage;
#[cfg(test)]
mod tests;

pub use common::*;
pub use connection_pool::*;
pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;
pub use workload_group::*;
