//! Error types: config refusals (with the Envoy field path that was refused) and
//! data-path failures (with the Envoy response flag they are logged as).

use http::StatusCode;

/// A refused piece of config: the field path inside the resource and why.
/// Display is `path: reason`, the text that goes into a NACK or a start error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The same error seen from an enclosing message: `prefix.path`.
    pub fn under(self, prefix: &str) -> Self {
        let path = if self.path.is_empty() {
            prefix.to_string()
        } else if self.path.starts_with('[') {
            format!("{prefix}{}", self.path)
        } else {
            format!("{prefix}.{}", self.path)
        };
        ConfigError { path, ..self }
    }
}

/// Envoy's response flags (`%RESPONSE_FLAGS%`), the short codes operators know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlag {
    /// No route configured for the request.
    NoRouteFound,
    /// The route names a cluster that does not exist.
    NoClusterFound,
    /// No healthy upstream host in the cluster.
    NoHealthyUpstream,
    /// Upstream connection failure.
    UpstreamConnectionFailure,
    /// Upstream request timeout.
    UpstreamRequestTimeout,
    /// Upstream connection terminated before a response.
    UpstreamConnectionTermination,
    /// Request refused locally (e.g. an upgrade that is not configured).
    DownstreamProtocolError,
    /// The fault filter delayed the request.
    DelayInjected,
    /// The fault filter aborted the request.
    FaultInjected,
    /// The client went away before the response was complete.
    DownstreamConnectionTermination,
    /// Retries ran out while the last answer was still retriable.
    UpstreamRetryLimitExceeded,
    /// A circuit breaker refused the request or connection.
    UpstreamOverflow,
    /// Denied by the RBAC filter (`envoy.filters.http.rbac`).
    RbacAccessDenied,
    /// Denied by the external authorization service (ext_authz).
    UnauthorizedExternalService,
}

impl ResponseFlag {
    pub fn code(self) -> &'static str {
        match self {
            ResponseFlag::NoRouteFound => "NR",
            ResponseFlag::NoClusterFound => "NC",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamConnectionFailure => "UF",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::DownstreamProtocolError => "DPE",
            ResponseFlag::DelayInjected => "DI",
            ResponseFlag::FaultInjected => "FI",
            ResponseFlag::DownstreamConnectionTermination => "DC",
            ResponseFlag::UpstreamRetryLimitExceeded => "URX",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::RbacAccessDenied => "RBAC",
            ResponseFlag::UnauthorizedExternalService => "UAEX",
        }
    }
}

impl std::fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a request could not be proxied. Becomes a local reply in one place
/// (`http::router::local_reply`).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no route")]
    NoRoute,
    #[error("cluster {0} not found")]
    NoCluster(String),
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    #[error(
        "upstream connect error or disconnect/reset before headers. reset reason: {}",
        connect_failure_reason(.0)
    )]
    ConnectFailure(#[source] std::io::Error),
    #[error("upstream request timeout")]
    Timeout,
    #[error(
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    )]
    UpstreamReset(#[source] hyper::Error),
    /// A circuit breaker (max_requests, max_pending_requests) is open.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    Overflow,
    #[error("upgrade not allowed")]
    UpgradeRefused,
    /// HTTP/1.0 without `accept_http_10` (not in the subset, so always).
    #[error("Upgrade Required")]
    Http10,
}

/// Envoy's reset reason text for a failed upstream connect.
fn connect_failure_reason(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::TimedOut {
        "connection timeout"
    } else {
        "remote connection failure"
    }
}

impl RequestError {
    pub fn flag(&self) -> ResponseFlag {
        match self {
            RequestError::NoRoute => ResponseFlag::NoRouteFound,
            RequestError::NoCluster(_) => ResponseFlag::NoClusterFound,
            RequestError::NoHealthyUpstream => ResponseFlag::NoHealthyUpstream,
            RequestError::ConnectFailure(_) => ResponseFlag::UpstreamConnectionFailure,
            RequestError::Timeout => ResponseFlag::UpstreamRequestTimeout,
            RequestError::UpstreamReset(_) => ResponseFlag::UpstreamConnectionTermination,
            RequestError::Overflow => ResponseFlag::UpstreamOverflow,
            RequestError::UpgradeRefused | RequestError::Http10 => {
                ResponseFlag::DownstreamProtocolError
            }
        }
    }

    /// The status Envoy answers with for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::NoRoute => StatusCode::NOT_FOUND,
            RequestError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            RequestError::UpgradeRefused => StatusCode::FORBIDDEN,
            RequestError::Http10 => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// How an attempt failed, for a retry policy (None: not an upstream
    /// failure a retry could help with).
    pub fn failure(&self) -> Option<crate::config::retry::Failure> {
        use crate::config::retry::Failure;
        match self {
            RequestError::ConnectFailure(_) => Some(Failure::ConnectFailure),
            RequestError::UpstreamReset(e) if refused_stream(e) => Some(Failure::RefusedStream),
            RequestError::UpstreamReset(_) => Some(Failure::Reset),
            RequestError::Timeout => Some(Failure::PerTryTimeout),
            _ => None,
        }
    }

    /// Body of the local reply; Envoy sends an empty body for NR.
    pub fn body(&self) -> String {
        match self {
            RequestError::NoRoute | RequestError::NoCluster(_) => String::new(),
            other => other.to_string(),
        }
    }
}

/// Whether an h2 stream was reset with REFUSED_STREAM (the server did not
/// process it, so it is safe to send again).
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// Failures that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("reading bootstrap {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing bootstrap: {0}")]
    Parse(String),
    #[error("{0}")]
    Refused(#[from] ConfigError),
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("app health probes: {0}")]
    AppHealth(String),
}
