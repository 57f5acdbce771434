//! Terminal network filters (`envoy.filters.network.*`). The HTTP connection
//! manager is `crate::http::connection_manager`.

pub mod rbac;
pub mod tcp_proxy;
