//! One record per request (Envoy's StreamInfo, in spirit): the downstream
//! connection, the chosen route's name, cluster and host, Envoy's response
//! flags, the response code, bytes sent and timings. It rides in the
//! response body and is complete when the body ends (or is dropped, e.g. the
//! client went away: `DC`), which is when observers (telemetry and access
//! logs, later) read it. Without observers nothing is allocated for it.

use std::sync::Arc;

use tokio::time::Instant;

use crate::downstream::Downstream;
use crate::error::ResponseFlag;

/// Envoy's response flags of one request, as a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    const ALL: [ResponseFlag; 14] = [
        ResponseFlag::DownstreamConnectionTermination,
        ResponseFlag::DelayInjected,
        ResponseFlag::FaultInjected,
        ResponseFlag::NoClusterFound,
        ResponseFlag::NoHealthyUpstream,
        ResponseFlag::NoRouteFound,
        ResponseFlag::UpstreamConnectionTermination,
        ResponseFlag::UpstreamConnectionFailure,
        ResponseFlag::UpstreamOverflow,
        ResponseFlag::UpstreamRequestTimeout,
        ResponseFlag::UpstreamRetryLimitExceeded,
        ResponseFlag::DownstreamProtocolError,
        ResponseFlag::RbacAccessDenied,
        ResponseFlag::UnauthorizedExternalService,
    ];

    pub fn set(&mut self, flag: ResponseFlag) {
        self.0 |= 1 << (flag as u32);
    }

    pub fn contains(&self, flag: ResponseFlag) -> bool {
        self.0 & (1 << (flag as u32)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The set as bits (a compact key for labelled series).
    pub fn bits(&self) -> u32 {
        self.0
    }
}

/// Envoy's `%RESPONSE_FLAGS%`: codes joined by commas, `-` when none.
impl std::fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for flag in Self::ALL.iter().filter(|fl| self.contains(**fl)) {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(flag.code())?;
            first = false;
        }
        Ok(())
    }
}

/// The record of one request.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub start: Instant,
    pub downstream: Downstream,
    /// The matched route's `name` (Envoy's `%ROUTE_NAME%`), if one matched.
    pub route_name: Option<Arc<str>>,
    /// The upstream cluster chosen (`%UPSTREAM_CLUSTER%`).
    pub cluster: Option<Arc<str>>,
    /// The upstream host (`%UPSTREAM_HOST%`).
    pub upstream_host: Option<Arc<str>>,
    pub response_code: u16,
    pub flags: ResponseFlags,
    /// Response body bytes sent downstream (`%BYTES_SENT%`).
    pub bytes_sent: u64,
    /// Request body bytes, as the request's `content-length` declared
    /// (0 for a chunked or empty body).
    pub bytes_received: u64,
    /// When the response headers were ready (`%RESPONSE_DURATION%`).
    pub response_start: Option<Instant>,
    /// When the last body byte went out, or the stream was dropped.
    pub end: Option<Instant>,
}

impl StreamInfo {
    pub fn new(downstream: Downstream) -> StreamInfo {
        StreamInfo {
            start: Instant::now(),
            downstream,
            route_name: None,
            cluster: None,
            upstream_host: None,
            response_code: 0,
            flags: ResponseFlags::default(),
            bytes_sent: 0,
            bytes_received: 0,
            response_start: None,
            end: None,
        }
    }

    /// `%DURATION%`: start to end (or to now while the stream runs).
    pub fn duration(&self) -> std::time::Duration {
        self.end.unwrap_or_else(Instant::now) - self.start
    }
}

/// Reads each finished stream's record (the hook for telemetry and access
/// logging).
pub trait StreamObserver: Send + Sync + 'static {
    fn on_stream_end(&self, info: &StreamInfo);
}

/// A request's dynamic metadata (Envoy's `filter_metadata`): per filter
/// namespace, a struct of values (JSON, protobuf Struct semantics). Filters
/// that verify or decide something write here (jwt_authn's payload, rbac's
/// shadow result); matchers of later filters read it. Empty until a filter
/// writes: no allocation on requests that never use it.
#[derive(Debug, Clone, Default)]
pub struct DynamicMetadata(Vec<(Box<str>, serde_json::Map<String, serde_json::Value>)>);

impl DynamicMetadata {
    /// The struct of one namespace, if a filter wrote to it.
    pub fn get(&self, namespace: &str) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.0
            .iter()
            .find(|(n, _)| &**n == namespace)
            .map(|(_, m)| m)
    }

    /// Set one key of a namespace (Envoy's setDynamicMetadata merges keys).
    pub fn set(&mut self, namespace: &str, key: impl Into<String>, value: serde_json::Value) {
        let map = match self.0.iter().position(|(n, _)| &**n == namespace) {
            Some(i) => &mut self.0[i].1,
            None => {
                self.0.push((namespace.into(), serde_json::Map::new()));
                &mut self.0.last_mut().expect("just pushed").1
            }
        };
        map.insert(key.into(), value);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
