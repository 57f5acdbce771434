//! Workload identity, shared by the control plane (the CA that signs) and the
//! data plane (the workload that asks): SPIFFE ids in Istio's shape, the mesh
//! CA, certificate signing requests, and when to renew.
//!
//! ```text
//!  workload: WorkloadKey::generate ─ csr(id) ──▶ Ca::sign(csr, proven id, ttl)
//!            ◀── Issued { chain: leaf + intermediates, roots } ──┘
//!            renew at half of the validity (Istio's SECRET_GRACE_PERIOD_RATIO)
//! ```

pub mod ca;
pub mod client;
pub mod keeper;
pub mod proto;
pub mod spiffe;
pub mod tls;
pub mod token;
pub mod workload;

pub use ca::{Ca, CaError, Issued, SignError};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use token::{LocalTokens, ServiceAccount, TokenError, TokenIssuer, TokenVerifier};
pub use workload::{WorkloadKey, renew_at};
