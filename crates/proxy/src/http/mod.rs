//! The HTTP stack: `envoy.filters.network.http_connection_manager` serving
//! downstream HTTP/1.1 and h2c, then `envoy.filters.http.router` (the only HTTP
//! filter so far; fault, rbac and friends slot in between the two).

pub mod body;
pub mod connection_manager;
pub mod cors;
pub mod ext_authz;
pub mod fault;
pub mod hash_policy;
pub mod headers;
pub mod jwt_authn;
pub mod path_normalization;
pub mod rbac;
pub mod route_match;
pub mod router;
