//! Transport sockets: how a listener's filter chain reads its connections and
//! how a cluster connects to an endpoint. Only `raw_buffer` (plain TCP) is
//! run today; TLS plugs in here next, and anything else is NACKed with its
//! path. A cluster's `transport_socket_matches` pick a socket per endpoint
//! from the endpoint's `envoy.transport_socket_match` metadata (how Istio
//! chooses mTLS for endpoints labelled `tlsMode: istio`).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf::{Struct, value};

use crate::error::ConfigError;

/// The socket a connection runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TransportSocket {
    /// Plain bytes (`envoy.transport_sockets.raw_buffer`; also the default).
    #[default]
    RawBuffer,
}

const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";

impl TransportSocket {
    /// `transport_socket` of a filter chain or cluster (unset = raw_buffer).
    pub fn parse(ts: Option<&core::TransportSocket>) -> Result<TransportSocket, ConfigError> {
        let Some(ts) = ts else {
            return Ok(TransportSocket::RawBuffer);
        };
        let typed_raw = matches!(&ts.config_type,
            Some(core::transport_socket::ConfigType::TypedConfig(any))
                if any.type_url.ends_with("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"));
        if typed_raw || (ts.config_type.is_none() && (ts.name == RAW_BUFFER || ts.name.is_empty()))
        {
            return Ok(TransportSocket::RawBuffer);
        }
        Err(ConfigError::new(
            "name",
            format!(
                "unsupported transport socket {} (only {RAW_BUFFER} for now)",
                ts.name
            ),
        ))
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
            socket: TransportSocket::parse(m.transport_socket.as_ref())
                .map_err(|e| e.under("transport_socket"))?,
        })
    }
}

/// The socket for an endpoint with this match metadata: the first match
/// whose criteria it meets (with its name), else the cluster's own.
pub fn transport_for<'m>(
    matches: &'m [TransportMatch],
    default: TransportSocket,
    metadata: &BTreeMap<String, String>,
) -> (Option<&'m str>, TransportSocket) {
    matches
        .iter()
        .find(|m| m.criteria.iter().all(|(k, v)| metadata.get(k) == Some(v)))
        .map_or((None, default), |m| (Some(m.name.as_str()), m.socket))
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
            TransportSocket::parse(None).expect("default"),
            TransportSocket::RawBuffer
        );
        let raw = core::TransportSocket {
            name: RAW_BUFFER.into(),
            ..Default::default()
        };
        assert!(TransportSocket::parse(Some(&raw)).is_ok());
        let tls = core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            ..Default::default()
        };
        let e = TransportSocket::parse(Some(&tls)).expect_err("tls");
        assert_eq!(
            e.to_string(),
            "name: unsupported transport socket envoy.transport_sockets.tls (only envoy.transport_sockets.raw_buffer for now)"
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
            transport_for(&matches, TransportSocket::RawBuffer, &istio).0,
            Some("tlsMode-istio")
        );
        assert_eq!(
            transport_for(&matches, TransportSocket::RawBuffer, &other).0,
            Some("plaintext")
        );
        assert_eq!(
            transport_for(&matches[..1], TransportSocket::RawBuffer, &other),
            (None, TransportSocket::RawBuffer)
        );
    }
}
