//! Envoy xDS plumbing shared by the pilot and the proxy: type URLs, Envoy's JSON
//! shape, and the ADS transport (server and client). It knows nothing of what
//! resources mean.

pub mod bootstrap;
pub mod json;

/// Type URLs of the resources Halyard serves over ADS.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    /// Istio's NDS: the name table a sidecar's DNS proxy answers from. One
    /// unnamed resource; only proxies that ask for it get it (Envoy never does).
    pub const NAME_TABLE: &str = "type.googleapis.com/istio.networking.nds.v1.NameTable";

    /// Short name for logs and debug pages (`LDS`, `RDS`, ...).
    pub fn short(url: &str) -> &'static str {
        match url {
            LISTENER => "LDS",
            ROUTE => "RDS",
            CLUSTER => "CDS",
            ENDPOINT => "EDS",
            SECRET => "SDS",
            NAME_TABLE => "NDS",
            _ => "?",
        }
    }
}

pub mod client;
pub mod nds;
pub mod server;
pub mod status;
