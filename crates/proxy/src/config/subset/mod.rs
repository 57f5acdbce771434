//! The contract of docs/xds-subset.md as data: which fields of which Envoy
//! messages the proxy runs. A resource is rendered to Envoy JSON (defaults
//! omitted) and walked against these tables, so anything set outside the subset
//! is refused with its field path instead of being silently ignored.

use serde_json::Value;

use crate::error::ConfigError;

/// What a field may hold.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    /// A scalar, a well-known wrapper, or a message whose content is harmless
    /// (metadata, node).
    Leaf,
    /// A message (or a list of them) with these fields.
    Msg(&'static [(&'static str, Field)]),
    /// A `google.protobuf.Any` whose `@type` must be one of these.
    Any(&'static [(&'static str, &'static [(&'static str, Field)])]),
    /// A map of extension name to `Any` (typed_extension_protocol_options).
    AnyMap(&'static [(&'static str, &'static [(&'static str, Field)])]),
}

const TYPE_PREFIX: &str = "type.googleapis.com/";

pub const SOCKET_ADDRESS: &[(&str, Field)] = &[
    ("address", Field::Leaf),
    ("port_value", Field::Leaf),
    ("protocol", Field::Leaf),
];
pub const ADDRESS: &[(&str, Field)] = &[("socket_address", Field::Msg(SOCKET_ADDRESS))];
const CIDR: &[(&str, Field)] = &[("address_prefix", Field::Leaf), ("prefix_len", Field::Leaf)];
const FILTER_CHAIN_MATCH: &[(&str, Field)] = &[
    ("destination_port", Field::Leaf),
    ("prefix_ranges", Field::Msg(CIDR)),
    ("application_protocols", Field::Leaf),
    ("transport_protocol", Field::Leaf),
];
pub const CONFIG_SOURCE: &[(&str, Field)] = &[
    ("ads", Field::Msg(&[])),
    ("resource_api_version", Field::Leaf),
    ("initial_fetch_timeout", Field::Leaf),
];
const REGEX: &[(&str, Field)] = &[("regex", Field::Leaf), ("google_re2", Field::Leaf)];
const STRING_MATCHER: &[(&str, Field)] = &[
    ("exact", Field::Leaf),
    ("prefix", Field::Leaf),
    ("suffix", Field::Leaf),
    ("contains", Field::Leaf),
    ("safe_regex", Field::Msg(REGEX)),
    ("ignore_case", Field::Leaf),
];
const HEADER_MATCHER: &[(&str, Field)] = &[
    ("name", Field::Leaf),
    ("string_match", Field::Msg(STRING_MATCHER)),
    ("present_match", Field::Leaf),
    ("invert_match", Field::Leaf),
    ("exact_match", Field::Leaf),
    ("prefix_match", Field::Leaf),
    ("suffix_match", Field::Leaf),
    ("contains_match", Field::Leaf),
    ("safe_regex_match", Field::Msg(REGEX)),
    ("treat_missing_header_as_empty", Field::Leaf),
];
const QUERY_MATCHER: &[(&str, Field)] = &[
    ("name", Field::Leaf),
    ("string_match", Field::Msg(STRING_MATCHER)),
    ("present_match", Field::Leaf),
];
const ROUTE_MATCH: &[(&str, Field)] = &[
    ("prefix", Field::Leaf),
    ("path", Field::Leaf),
    ("safe_regex", Field::Msg(REGEX)),
    ("case_sensitive", Field::Leaf),
    ("headers", Field::Msg(HEADER_MATCHER)),
    ("query_parameters", Field::Msg(QUERY_MATCHER)),
];
const CLUSTER_WEIGHT: &[(&str, Field)] = &[("name", Field::Leaf), ("weight", Field::Leaf)];
const WEIGHTED_CLUSTERS: &[(&str, Field)] = &[
    ("clusters", Field::Msg(CLUSTER_WEIGHT)),
    ("total_weight", Field::Leaf),
];
const ROUTE_ACTION: &[(&str, Field)] = &[
    ("cluster", Field::Leaf),
    ("weighted_clusters", Field::Msg(WEIGHTED_CLUSTERS)),
    ("timeout", Field::Leaf),
];
const ROUTE: &[(&str, Field)] = &[
    ("name", Field::Leaf),
    ("match", Field::Msg(ROUTE_MATCH)),
    ("route", Field::Msg(ROUTE_ACTION)),
    ("metadata", Field::Leaf),
];
const VIRTUAL_HOST: &[(&str, Field)] = &[
    ("name", Field::Leaf),
    ("domains", Field::Leaf),
    ("routes", Field::Msg(ROUTE)),
];
pub const ROUTE_CONFIGURATION: &[(&str, Field)] = &[
    ("name", Field::Leaf),
    ("virtual_hosts", Field::Msg(VIRTUAL_HOST)),
    ("validate_clusters", Field::Leaf),
];
const RDS: &[(&str, Field)] = &[
    ("config_source", Field::Msg(CONFIG_SOURCE)),
    ("route_config_name", Field::Leaf),
];
const HTTP_FILTER: &[(&str, Field)] = &[
    ("name", Field::Leaf),
    (
        "typed_config",
        Field::Any(&[("envoy.extensions.filters.http.router.v3.Router", &[])]),
    ),
];
const UPGRADE_CONFIG: &[(&str, Field)] = &[("upgrade_type", Field::Leaf), ("enabled", Field::Leaf)];
const HCM: &[(&str, Field)] = &[
    ("stat_prefix", Field::Leaf),
    ("codec_type", Field::Leaf),
    ("rds", Field::Msg(RDS)),
    ("route_config", Field::Msg(ROUTE_CONFIGURATION)),
    ("http_filters", Field::Msg(HTTP_FILTER)),
    ("upgrade_configs", Field::Msg(UPGRADE_CONFIG)),
    ("use_remote_address", Field::Leaf),
    ("normalize_path", Field::Leaf),
    ("merge_slashes", Field::Leaf),
];
const TCP_PROXY: &[(&str, Field)] = &[
    ("stat_prefix", Field::Leaf),
    ("cluster", Field::Leaf),
    ("weighted_clusters", Field::Msg(WEIGHTED_CLUSTERS)),
];
pub const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const TCP_PROXY_TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub const ORIGINAL_DST_TYPE: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
pub const HTTP_INSPECTOR_TYPE: &str =
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
pub const HTTP_PROTOCOL_OPTIONS_TYPE: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

const NETWORK_FILTER: &[(&str, Field)] = &[
    ("name", Field::Leaf),
    (
        "typed_config",
        Field::Any(&[(HCM_TYPE, HCM), (TCP_PROXY_TYPE, TCP_PROXY)]),
    ),
];
const FILTER_CHAIN: &[(&str, Field)] = &[
    ("filter_chain_match", Field::Msg(FILTER_CHAIN_MATCH)),
    ("filters", Field::Msg(NETWORK_FILTER)),
    ("name", Field::Leaf),
    ("metadata", Field::Leaf),
];
const LISTENER_FILTER: &[(&str, Field)] = &[
    ("name", Field::Leaf),
    (
        "typed_config",
        Field::Any(&[(ORIGINAL_DST_TYPE, &[]), (HTTP_INSPECTOR_TYPE, &[])]),
    ),
];
pub const LISTENER: &[(&str, Field)] = &[
    ("name", Field::Leaf),
    ("address", Field::Msg(ADDRESS)),
    ("bind_to_port", Field::Leaf),
    ("use_original_dst", Field::Leaf),
    ("traffic_direction", Field::Leaf),
    ("stat_prefix", Field::Leaf),
    ("metadata", Field::Leaf),
    ("listener_filters", Field::Msg(LISTENER_FILTER)),
    ("listener_filters_timeout", Field::Leaf),
    ("continue_on_listener_filters_timeout", Field::Leaf),
    ("filter_chains", Field::Msg(FILTER_CHAIN)),
    ("default_filter_chain", Field::Msg(FILTER_CHAIN)),
];

const ENDPOINT: &[(&str, Field)] = &[("address", Field::Msg(ADDRESS))];
const LB_ENDPOINT: &[(&str, Field)] = &[
    ("endpoint", Field::Msg(ENDPOINT)),
    ("health_status", Field::Leaf),
    ("load_balancing_weight", Field::Leaf),
    ("metadata", Field::Leaf),
];
const LOCALITY_LB_ENDPOINTS: &[(&str, Field)] = &[
    ("locality", Field::Leaf),
    ("lb_endpoints", Field::Msg(LB_ENDPOINT)),
    ("load_balancing_weight", Field::Leaf),
];
pub const CLUSTER_LOAD_ASSIGNMENT: &[(&str, Field)] = &[
    ("cluster_name", Field::Leaf),
    ("endpoints", Field::Msg(LOCALITY_LB_ENDPOINTS)),
];
const HTTP_VERSION_CONFIG: &[(&str, Field)] = &[
    ("http_protocol_options", Field::Leaf),
    ("http2_protocol_options", Field::Leaf),
];
const HTTP_PROTOCOL_OPTIONS: &[(&str, Field)] = &[
    ("explicit_http_config", Field::Msg(HTTP_VERSION_CONFIG)),
    (
        "use_downstream_protocol_config",
        Field::Msg(HTTP_VERSION_CONFIG),
    ),
    (
        "common_http_protocol_options",
        Field::Msg(&[("idle_timeout", Field::Leaf)]),
    ),
];
pub const CLUSTER: &[(&str, Field)] = &[
    ("name", Field::Leaf),
    ("alt_stat_name", Field::Leaf),
    ("type", Field::Leaf),
    (
        "eds_cluster_config",
        Field::Msg(&[
            ("eds_config", Field::Msg(CONFIG_SOURCE)),
            ("service_name", Field::Leaf),
        ]),
    ),
    ("connect_timeout", Field::Leaf),
    ("lb_policy", Field::Leaf),
    ("load_assignment", Field::Msg(CLUSTER_LOAD_ASSIGNMENT)),
    (
        "typed_extension_protocol_options",
        Field::AnyMap(&[(HTTP_PROTOCOL_OPTIONS_TYPE, HTTP_PROTOCOL_OPTIONS)]),
    ),
    ("metadata", Field::Leaf),
    (
        "common_lb_config",
        Field::Msg(&[("healthy_panic_threshold", Field::Leaf)]),
    ),
    ("dns_lookup_family", Field::Leaf),
    ("dns_refresh_rate", Field::Leaf),
];

const GRPC_SERVICE: &[(&str, Field)] = &[
    ("envoy_grpc", Field::Msg(&[("cluster_name", Field::Leaf)])),
    ("timeout", Field::Leaf),
];
const API_CONFIG_SOURCE: &[(&str, Field)] = &[
    ("api_type", Field::Leaf),
    ("transport_api_version", Field::Leaf),
    ("grpc_services", Field::Msg(GRPC_SERVICE)),
    ("set_node_on_first_message_only", Field::Leaf),
];
pub const BOOTSTRAP: &[(&str, Field)] = &[
    ("node", Field::Leaf),
    (
        "admin",
        Field::Msg(&[
            ("address", Field::Msg(ADDRESS)),
            ("access_log", Field::Leaf),
        ]),
    ),
    (
        "static_resources",
        Field::Msg(&[
            ("listeners", Field::Msg(LISTENER)),
            ("clusters", Field::Msg(CLUSTER)),
        ]),
    ),
    (
        "dynamic_resources",
        Field::Msg(&[
            ("ads_config", Field::Msg(API_CONFIG_SOURCE)),
            ("cds_config", Field::Msg(CONFIG_SOURCE)),
            ("lds_config", Field::Msg(CONFIG_SOURCE)),
        ]),
    ),
];

/// Check `value` (Envoy JSON of a message) against `schema`; the error names the
/// first field outside the subset, relative to the message.
pub fn check(value: &Value, schema: &'static [(&'static str, Field)]) -> Result<(), ConfigError> {
    check_msg(value, schema, "")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn check_msg(
    value: &Value,
    schema: &'static [(&'static str, Field)],
    path: &str,
) -> Result<(), ConfigError> {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_msg(item, schema, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, v) in map {
                if key == "@type" {
                    continue;
                }
                let here = join(path, key);
                let Some((_, field)) = schema.iter().find(|(k, _)| k == key) else {
                    return Err(ConfigError::new(here, "unsupported field"));
                };
                check_field(v, *field, &here)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_field(value: &Value, field: Field, path: &str) -> Result<(), ConfigError> {
    match field {
        Field::Leaf => Ok(()),
        Field::Msg(schema) => check_msg(value, schema, path),
        Field::Any(types) => check_any(value, types, path),
        Field::AnyMap(types) => {
            if let Value::Object(map) = value {
                for (k, v) in map {
                    check_any(v, types, &format!("{path}[\"{k}\"]"))?;
                }
            }
            Ok(())
        }
    }
}

fn check_any(
    value: &Value,
    types: &'static [(&'static str, &'static [(&'static str, Field)])],
    path: &str,
) -> Result<(), ConfigError> {
    if let Value::Array(items) = value {
        for (i, item) in items.iter().enumerate() {
            check_any(item, types, &format!("{path}[{i}]"))?;
        }
        return Ok(());
    }
    let url = value.get("@type").and_then(Value::as_str).unwrap_or("");
    let name = url.strip_prefix(TYPE_PREFIX).unwrap_or(url);
    match types.iter().find(|(t, _)| *t == name) {
        Some((_, schema)) => check_msg(value, schema, path),
        None => Err(ConfigError::new(path, format!("unsupported type {name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_first_unsupported_field() {
        let l = json!({"name": "l", "filter_chains": [{"filters": [{"name": "x",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"}}]}]});
        let err = check(&l, LISTENER).unwrap_err();
        assert_eq!(
            err.to_string(),
            "filter_chains[0].filters[0].typed_config: unsupported type envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
        );
        let l = json!({"name": "l", "per_connection_buffer_limit_bytes": 5});
        assert_eq!(
            check(&l, LISTENER).unwrap_err().path,
            "per_connection_buffer_limit_bytes"
        );
    }

    #[test]
    fn accepts_subset_fields() {
        let c = json!({"name": "c", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}},
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}});
        check(&c, CLUSTER).unwrap();
    }
}
