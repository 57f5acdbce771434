//! Istio's "set at most one of these fields" rules (the CRD schema's `oneOf`),
//! checked while deserialising so a violation is an error at the field's path.

use serde::{Deserialize, Deserializer};

use super::destination_rule::{ConsistentHashLb, LoadBalancerSettings};
use super::virtual_service::{Abort, Delay, HttpBody, HttpRedirect};

/// A type with mutually exclusive fields.
pub(crate) trait OneOf {
    /// `(field name, is set)` groups; at most one per group may be set.
    fn groups(&self) -> Vec<Vec<(&'static str, bool)>>;
}

/// `deserialize_with` for `Option<T>` fields whose `T` has exclusive fields.
pub(crate) fn checked<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + OneOf,
{
    let value = Option::<T>::deserialize(d)?;
    if let Some(v) = &value {
        for group in v.groups() {
            let set: Vec<&str> = group.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
            if set.len() > 1 {
                let all: Vec<String> = group.iter().map(|(n, _)| format!("`{n}`")).collect();
                return Err(serde::de::Error::custom(format!(
                    "set at most one of {} (found {})",
                    all.join(", "),
                    set.iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                )));
            }
        }
    }
    Ok(value)
}

impl OneOf for Abort {
    fn groups(&self) -> Vec<Vec<(&'static str, bool)>> {
        vec![vec![
            ("httpStatus", self.http_status.is_some()),
            ("grpcStatus", self.grpc_status.is_some()),
            ("http2Error", self.http2_error.is_some()),
        ]]
    }
}

impl OneOf for Delay {
    fn groups(&self) -> Vec<Vec<(&'static str, bool)>> {
        vec![vec![
            ("fixedDelay", self.fixed_delay.is_some()),
            ("exponentialDelay", self.exponential_delay.is_some()),
        ]]
    }
}

impl OneOf for HttpRedirect {
    fn groups(&self) -> Vec<Vec<(&'static str, bool)>> {
        vec![vec![
            ("port", self.port.is_some()),
            ("derivePort", self.derive_port.is_some()),
        ]]
    }
}

impl OneOf for HttpBody {
    fn groups(&self) -> Vec<Vec<(&'static str, bool)>> {
        vec![vec![
            ("string", self.string.is_some()),
            ("bytes", self.bytes.is_some()),
        ]]
    }
}

impl OneOf for LoadBalancerSettings {
    fn groups(&self) -> Vec<Vec<(&'static str, bool)>> {
        vec![vec![
            ("simple", self.simple.is_some()),
            ("consistentHash", self.consistent_hash.is_some()),
        ]]
    }
}

impl OneOf for ConsistentHashLb {
    fn groups(&self) -> Vec<Vec<(&'static str, bool)>> {
        vec![
            vec![
                ("httpHeaderName", self.http_header_name.is_some()),
                ("httpCookie", self.http_cookie.is_some()),
                ("useSourceIp", self.use_source_ip.is_some()),
                (
                    "httpQueryParameterName",
                    self.http_query_parameter_name.is_some(),
                ),
            ],
            vec![
                ("ringHash", self.ring_hash.is_some()),
                ("maglev", self.maglev.is_some()),
            ],
        ]
    }
}
