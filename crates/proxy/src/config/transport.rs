//! Transport sockets: how a listener's filter chain reads its connections and
//! how a cluster connects to an endpoint: `raw_buffer` (plain TCP) or
//! `tls` (an UpstreamTlsContext on clusters, a DownstreamTlsContext on
//! filter chains); anything else is NACKed with its path. A cluster's
//! `transport_socket_matches` pick a socket per endpoint from the
//! endpoint's `envoy.transport_socket_match` metadata (how Istio chooses
//! mTLS for endpoints labelled `tlsMode: istio`).

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf::{Struct, value};

use super::tls::{DOWNSTREAM_TYPE, TlsSocket, UPSTREAM_TYPE};
use crate::error::ConfigError;

/// The socket a connection runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TransportSocket {
    /// Plain bytes (`envoy.transport_sockets.raw_buffer`; also the default).
    #[default]
    RawBuffer,
    /// `envoy.transport_sockets.tls`.
    Tls(Arc<TlsSocket>),
}

const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";
const RAW_BUFFER_TYPE: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// Which end a socket is for: clusters connect, filter chains accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Upstream,
    Downstream,
}

impl TransportSocket {
    /// Equal for equal sockets: hosts and their pools are per (address, key).
    pub fn key(&self) -> u64 {
        match self {
            TransportSocket::RawBuffer => 0,
            TransportSocket::Tls(t) => t.fingerprint() | 1,
        }
    }

    /// `transport_socket` of a filter chain or cluster (unset = raw_buffer).
    pub fn parse(
        ts: Option<&core::TransportSocket>,
        end: End,
    ) -> Result<TransportSocket, ConfigError> {
        let Some(ts) = ts else {
            return Ok(TransportSocket::RawBuffer);
        };
        let any = match &ts.config_type {
            Some(core::transport_socket::ConfigType::TypedConfig(any)) => any,
            _ if ts.name == RAW_BUFFER || ts.name.is_empty() => {
                return Ok(TransportSocket::RawBuffer);
            }
            _ => {
                return Err(ConfigError::new(
                    "name",
                    format!(
                        "unsupported transport socket {} without typed_config (raw_buffer, or tls with an Upstream/DownstreamTlsContext)",
                        ts.name
                    ),
                ));
            }
        };
        let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
        match (type_name, end) {
            (RAW_BUFFER_TYPE, _) => Ok(TransportSocket::RawBuffer),
            (UPSTREAM_TYPE, End::Upstream) => {
                let ctx = super::decode_any(any, "typed_config")?;
                Ok(TransportSocket::Tls(
                    TlsSocket::upstream(&ctx).map_err(|e| e.under("typed_config"))?,
                ))
            }
            (DOWNSTREAM_TYPE, End::Downstream) => {
                let ctx = super::decode_any(any, "typed_config")?;
                Ok(TransportSocket::Tls(
                    TlsSocket::downstream(&ctx).map_err(|e| e.under("typed_config"))?,
                ))
            }
            (UPSTREAM_TYPE | DOWNSTREAM_TYPE, _) => Err(ConfigError::new(
                "typed_config",
                format!(
                    "{type_name} on the wrong end: clusters take an UpstreamTlsContext, filter chains a DownstreamTlsContext"
                ),
            )),
            (other, _) => Err(ConfigError::new(
                "typed_config",
                format!("unsupported transport socket type {other}"),
            )),
        }
    }
}

/// One of a cluster's `transport_socket_matches`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportMatch {
    pub name: String,
    /// Every key must be in the endpoint's match metadata with this value.
    pub criteria: BTreeMap<String, String>,
    pub socket: TransportSocket,
}

impl TryFrom<&TransportSocketMatch> for TransportMatch {
    type Error = ConfigError;

    fn try_from(m: &TransportSocketMatch) -> Result<Self, ConfigError> {
        Ok(TransportMatch {
            name: m.name.clone(),
            criteria: m
                .r#match
                .as_ref()
                .map(|s| strings(s, "match"))
                .transpose()?
                .unwrap_or_default(),
            socket: TransportSocket::parse(m.transport_socket.as_ref(), End::Upstream)
                .map_err(|e| e.under("transport_socket"))?,
        })
    }
}

/// The socket for an endpoint with this match metadata: the first match
/// whose criteria it meets (with its name), else the cluster's own.
pub fn transport_for<'m>(
    matches: &'m [TransportMatch],
    default: &'m TransportSocket,
    metadata: &BTreeMap<String, String>,
) -> (Option<&'m str>, &'m TransportSocket) {
    matches
        .iter()
        .find(|m| m.criteria.iter().all(|(k, v)| metadata.get(k) == Some(v)))
        .map_or((None, default), |m| (Some(m.name.as_str()), &m.socket))
}

/// A Struct of string values (match criteria, endpoint match metadata);
/// other values are not something a match compares.
pub fn strings(s: &Struct, at: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    s.fields
        .iter()
        .map(|(k, v)| match &v.kind {
            Some(value::Kind::StringValue(text)) => Ok((k.clone(), text.clone())),
            _ => Err(ConfigError::new(
                format!("{at}.{k}"),
                "only string values are supported",
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_buffer_is_accepted_others_are_named() {
        assert_eq!(
            TransportSocket::parse(None, End::Upstream).expect("default"),
            TransportSocket::RawBuffer
        );
        let raw = core::TransportSocket {
            name: RAW_BUFFER.into(),
            ..Default::default()
        };
        assert!(TransportSocket::parse(Some(&raw), End::Downstream).is_ok());
        let tls = core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            ..Default::default()
        };
        let e = TransportSocket::parse(Some(&tls), End::Upstream).expect_err("tls");
        assert_eq!(
            e.to_string(),
            "name: unsupported transport socket envoy.transport_sockets.tls without typed_config (raw_buffer, or tls with an Upstream/DownstreamTlsContext)"
        );
    }

    #[test]
    fn the_first_matching_criteria_pick_the_socket() {
        let m = TransportMatch {
            name: "tlsMode-istio".into(),
            criteria: [("tlsMode".to_string(), "istio".to_string())].into(),
            socket: TransportSocket::RawBuffer,
        };
        let catch_all = TransportMatch {
            name: "plaintext".into(),
            criteria: BTreeMap::new(),
            socket: TransportSocket::RawBuffer,
        };
        let matches = [m, catch_all];
        let istio: BTreeMap<String, String> = [("tlsMode".to_string(), "istio".to_string())].into();
        let other: BTreeMap<String, String> =
            [("tlsMode".to_string(), "disabled".to_string())].into();
        assert_eq!(
            transport_for(&matches, &TransportSocket::RawBuffer, &istio).0,
            Some("tlsMode-istio")
        );
        assert_eq!(
            transport_for(&matches, &TransportSocket::RawBuffer, &other).0,
            Some("plaintext")
        );
        assert_eq!(
            transport_for(&matches[..1], &TransportSocket::RawBuffer, &other),
            (None, &TransportSocket::RawBuffer)
        );
    }
}
