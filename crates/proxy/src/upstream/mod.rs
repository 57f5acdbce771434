//! The upstream side: clusters with their live host sets, load balancing,
//! connection pools, and connecting with a timeout.

pub mod address;
pub mod circuit;
pub mod cluster;
pub mod connect;
pub mod hash_lb;
pub mod host;
pub mod lb;
pub mod outlier;
pub mod pool;
pub mod priority;
pub mod slow_start;

pub use address::{UpstreamAddr, UpstreamStream};
pub use cluster::UpstreamCluster;
pub use host::Host;
