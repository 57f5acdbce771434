//! `envoy.filters.http.ext_authz` and `envoy.filters.network.ext_authz`
//! config (Istio's CUSTOM action), gRPC service mode: the authorizer's
//! cluster, authority and timeout, what happens when it fails, and the
//! dynamic-metadata gate Istio puts on it (the filter runs only for requests
//! an `istio_ext_authz_` shadow RBAC policy matched).

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as http_authz;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3 as net_authz;

use super::matcher::MetadataMatcher;
use crate::error::ConfigError;

pub const HTTP_FILTER_TYPE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
pub const NETWORK_FILTER_TYPE: &str = "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";

/// Envoy's default check timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct ExtAuthz {
    /// The authorizer's cluster (`envoy_grpc.cluster_name`).
    pub cluster: String,
    /// `:authority` of the check calls (default: the cluster name).
    pub authority: String,
    pub timeout: Duration,
    pub failure_mode_allow: bool,
    /// The status of a failed check (HTTP; default 403).
    pub status_on_error: u16,
    /// Run only when this matches the request's (connection's) metadata.
    pub enabled_metadata: Option<MetadataMatcher>,
    /// `stat_prefix` (network: required; HTTP: optional extra prefix).
    pub stat_prefix: String,
    pub include_peer_certificate: bool,
}

fn grpc(g: Option<&core::GrpcService>) -> Result<(String, String, Duration), ConfigError> {
    let Some(g) = g else {
        return Err(ConfigError::new("grpc_service", "required"));
    };
    let Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(e)) = &g.target_specifier else {
        return Err(ConfigError::new(
            "grpc_service.google_grpc",
            "not supported (use envoy_grpc)",
        ));
    };
    if e.cluster_name.is_empty() {
        return Err(ConfigError::new(
            "grpc_service.envoy_grpc.cluster_name",
            "required",
        ));
    }
    let timeout = g
        .timeout
        .as_ref()
        .map(|d| super::duration(d, "grpc_service.timeout"))
        .transpose()?
        .unwrap_or(DEFAULT_TIMEOUT);
    let authority = if e.authority.is_empty() {
        e.cluster_name.clone()
    } else {
        e.authority.clone()
    };
    Ok((e.cluster_name.clone(), authority, timeout))
}

fn v3(version: i32) -> Result<(), ConfigError> {
    if version != core::ApiVersion::V3 as i32 {
        return Err(ConfigError::new(
            "transport_api_version",
            "only V3 is supported",
        ));
    }
    Ok(())
}

fn gate(
    m: Option<&envoy_types::pb::envoy::r#type::matcher::v3::MetadataMatcher>,
) -> Result<Option<MetadataMatcher>, ConfigError> {
    m.map(MetadataMatcher::try_from)
        .transpose()
        .map_err(|e| e.under("filter_enabled_metadata"))
}

impl TryFrom<&http_authz::ExtAuthz> for ExtAuthz {
    type Error = ConfigError;

    fn try_from(a: &http_authz::ExtAuthz) -> Result<Self, ConfigError> {
        use http_authz::ext_authz::Services;
        v3(a.transport_api_version)?;
        let g = match &a.services {
            Some(Services::GrpcService(g)) => Some(g),
            Some(Services::HttpService(_)) => {
                return Err(ConfigError::new(
                    "http_service",
                    "not supported (use grpc_service)",
                ));
            }
            None => None,
        };
        let (cluster, authority, timeout) = grpc(g)?;
        if a.with_request_body.is_some() {
            return Err(ConfigError::new("with_request_body", "not supported"));
        }
        let status_on_error = match &a.status_on_error {
            None => 403,
            Some(s) if s.code == 0 => 403,
            Some(s) => u16::try_from(s.code)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| ConfigError::new("status_on_error.code", "not an HTTP status"))?,
        };
        Ok(ExtAuthz {
            cluster,
            authority,
            timeout,
            failure_mode_allow: a.failure_mode_allow,
            status_on_error,
            enabled_metadata: gate(a.filter_enabled_metadata.as_ref())?,
            stat_prefix: a.stat_prefix.clone(),
            include_peer_certificate: a.include_peer_certificate,
        })
    }
}

impl TryFrom<&net_authz::ExtAuthz> for ExtAuthz {
    type Error = ConfigError;

    fn try_from(a: &net_authz::ExtAuthz) -> Result<Self, ConfigError> {
        v3(a.transport_api_version)?;
        let (cluster, authority, timeout) = grpc(a.grpc_service.as_ref())?;
        Ok(ExtAuthz {
            cluster,
            authority,
            timeout,
            failure_mode_allow: a.failure_mode_allow,
            status_on_error: 403,
            enabled_metadata: gate(a.filter_enabled_metadata.as_ref())?,
            stat_prefix: a.stat_prefix.clone(),
            include_peer_certificate: a.include_peer_certificate,
        })
    }
}
