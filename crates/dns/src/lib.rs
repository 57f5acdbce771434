//! DNS for the mesh, as Kubernetes' cluster DNS and Istio's DNS proxying give
//! it: a [`NameTable`] of every Service and ServiceEntry host with its
//! addresses, and a server ([`serve`]) that answers A and AAAA queries from it
//! at once. Names the table does not know get NXDOMAIN straight away when
//! there is no upstream (the cluster resolver), or are forwarded to the
//! upstream resolver (a sidecar's DNS proxy), SERVFAIL if it does not answer.
//! All DNS wire parsing and encoding is hickory-proto's.

mod answer;
mod server;
mod table;

pub use answer::{Reply, answer, respond, servfail};
pub use server::{DnsServer, serve, serve_with_upstream, upstreams_from_resolv_conf};
pub use table::NameTable;

/// Istio's DNS proxy answers with a 30 s TTL.
pub const TTL: u32 = 30;
