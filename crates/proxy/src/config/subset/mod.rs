//! The contract of docs/xds-subset.md as data: which fields of which Envoy
//! messages the proxy runs. A resource's protobuf encoding is walked against
//! these tables (no descriptor pool needed), so anything set outside the
//! subset is refused with its field path instead of being silently ignored.

mod tables;

pub use tables::{BOOTSTRAP, CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION};

use crate::error::ConfigError;

pub const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const TCP_PROXY_TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub const ORIGINAL_DST_TYPE: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
pub const HTTP_INSPECTOR_TYPE: &str =
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
pub const TLS_INSPECTOR_TYPE: &str =
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
pub const HTTP_PROTOCOL_OPTIONS_TYPE: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// What a field may hold.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    /// A scalar, a well-known wrapper, or a message whose content is harmless
    /// (metadata, node, locality).
    Leaf,
    /// A message (or a list of them) with these fields.
    Msg(&'static Schema),
    /// A `google.protobuf.Any` whose type must be one of these.
    Any(&'static [(&'static str, &'static Schema)]),
    /// A map of extension name to `Any` (typed_extension_protocol_options).
    AnyMap(&'static [(&'static str, &'static Schema)]),
}

/// The supported fields of one message type.
#[derive(Debug)]
pub struct Schema {
    pub message: &'static str,
    /// (name, number, repeated, what it may hold).
    pub allowed: &'static [(&'static str, u32, bool, Field)],
    /// Every field of the message, to name the refused ones.
    pub names: &'static [(u32, &'static str)],
}

/// Check a message against `schema`; the error names the first field outside
/// the subset, relative to the message.
pub fn check<M: prost::Message>(msg: &M, schema: &'static Schema) -> Result<(), ConfigError> {
    walk(&msg.encode_to_vec(), schema, "")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn malformed(path: &str) -> ConfigError {
    ConfigError::new(path, "malformed protobuf")
}

fn varint(buf: &mut &[u8], path: &str) -> Result<u64, ConfigError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or_else(|| malformed(path))?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed(path))
}

fn take<'a>(buf: &mut &'a [u8], n: usize, path: &str) -> Result<&'a [u8], ConfigError> {
    if buf.len() < n {
        return Err(malformed(path));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// The fields of one encoded message: (number, length-delimited payload).
fn fields<'a>(mut buf: &'a [u8], path: &str) -> Result<Vec<(u32, &'a [u8])>, ConfigError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf, path)?;
        let number = (key >> 3) as u32;
        let payload: &[u8] = match key & 7 {
            0 => {
                varint(&mut buf, path)?;
                &[]
            }
            1 => take(&mut buf, 8, path).map(|_| &[][..])?,
            2 => {
                let len = varint(&mut buf, path)? as usize;
                take(&mut buf, len, path)?
            }
            5 => take(&mut buf, 4, path).map(|_| &[][..])?,
            _ => return Err(malformed(path)),
        };
        out.push((number, payload));
    }
    Ok(out)
}

fn walk(buf: &[u8], schema: &'static Schema, path: &str) -> Result<(), ConfigError> {
    let fields = fields(buf, path)?;
    for (i, (number, payload)) in fields.iter().enumerate() {
        let Some((name, _, repeated, field)) = schema.allowed.iter().find(|e| e.1 == *number)
        else {
            let name = schema
                .names
                .iter()
                .find(|(n, _)| n == number)
                .map_or_else(|| format!("field {number}"), |(_, n)| n.to_string());
            return Err(ConfigError::new(join(path, &name), "unsupported field"));
        };
        let here = || {
            let base = join(path, name);
            if *repeated {
                let index = fields[..i].iter().filter(|(n, _)| n == number).count();
                format!("{base}[{index}]")
            } else {
                base
            }
        };
        match field {
            Field::Leaf => {}
            Field::Msg(sub) => walk(payload, sub, &here())?,
            Field::Any(types) => check_any(payload, types, &here())?,
            Field::AnyMap(types) => {
                let entry = self::fields(payload, path)?;
                let key = entry
                    .iter()
                    .find(|(n, _)| *n == 1)
                    .map(|(_, k)| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                let value = entry
                    .iter()
                    .find(|(n, _)| *n == 2)
                    .map_or(&[][..], |(_, v)| v);
                check_any(value, types, &format!("{}[\"{key}\"]", join(path, name)))?;
            }
        }
    }
    Ok(())
}

fn check_any(
    buf: &[u8],
    types: &'static [(&'static str, &'static Schema)],
    path: &str,
) -> Result<(), ConfigError> {
    let fields = fields(buf, path)?;
    let url = fields
        .iter()
        .find(|(n, _)| *n == 1)
        .map(|(_, u)| String::from_utf8_lossy(u).into_owned())
        .unwrap_or_default();
    let value = fields
        .iter()
        .find(|(n, _)| *n == 2)
        .map_or(&[][..], |(_, v)| v);
    let name = url.rsplit('/').next().unwrap_or_default();
    match types.iter().find(|(t, _)| *t == name) {
        Some((_, schema)) => walk(value, schema, path),
        None => Err(ConfigError::new(path, format!("unsupported type {name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::Listener;

    #[test]
    fn names_the_first_unsupported_field() {
        let l: Listener = xds::json::from_yaml(
            r#"
name: l
filter_chains:
- filters:
  - name: x
    typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy}
"#,
        )
        .unwrap();
        assert_eq!(
            check(&l, &LISTENER).unwrap_err().to_string(),
            "filter_chains[0].filters[0].typed_config: unsupported type envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
        );
        let l: Listener =
            xds::json::from_yaml("name: l\nper_connection_buffer_limit_bytes: 5").unwrap();
        assert_eq!(
            check(&l, &LISTENER).unwrap_err().path,
            "per_connection_buffer_limit_bytes"
        );
        let l: Listener = xds::json::from_yaml(
            "name: l\nfilter_chains: [{name: a}, {name: b, use_proxy_proto: true}]",
        )
        .unwrap();
        assert_eq!(
            check(&l, &LISTENER).unwrap_err().path,
            "filter_chains[1].use_proxy_proto"
        );
    }

    #[test]
    fn accepts_subset_fields() {
        let c: Cluster = xds::json::from_yaml(
            r#"
name: c
type: EDS
eds_cluster_config: {eds_config: {ads: {}}}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {http2_protocol_options: {}}
"#,
        )
        .unwrap();
        check(&c, &CLUSTER).unwrap();
        let c: Cluster = xds::json::from_yaml(
            r#"
name: c
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: {idle_timeout: 1s, max_headers_count: 10}
"#,
        )
        .unwrap();
        assert_eq!(
            check(&c, &CLUSTER).unwrap_err().to_string(),
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].common_http_protocol_options.max_headers_count: unsupported field"
        );
    }

    /// The generated numbers and names agree with Envoy's descriptors.
    #[test]
    fn tables_match_the_descriptors() {
        let pool = xds::json::pool();
        for schema in tables::ALL {
            let msg = pool
                .get_message_by_name(schema.message)
                .unwrap_or_else(|| panic!("{} not in the descriptors", schema.message));
            for (name, number, repeated, _) in schema.allowed {
                let f = msg
                    .get_field_by_name(name)
                    .unwrap_or_else(|| panic!("{}.{name} missing", schema.message));
                assert_eq!(f.number(), *number, "{}.{name}", schema.message);
                assert_eq!(f.is_list(), *repeated, "{}.{name}", schema.message);
            }
            assert_eq!(schema.names.len(), msg.fields().len(), "{}", schema.message);
        }
    }
}
