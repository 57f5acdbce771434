//! Filters named after the Envoy filters they implement
//! (`envoy.filters.network.*`; HTTP filters live under `crate::http`).

pub mod network;
