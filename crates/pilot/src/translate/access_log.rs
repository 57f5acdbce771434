//! meshConfig `accessLogFile` / `accessLogEncoding` / `accessLogFormat` as
//! Envoy's file access logger, where Istio puts it: on every HTTP connection
//! manager and tcp_proxy, and on each listener (filtered to `NR`, a
//! connection no filter chain matched).

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, ResponseFlagFilter, access_log, access_log_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, JsonFormatOptions, SubstitutionFormatString, data_source,
    substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

/// Envoy's registered name for the file access logger.
pub const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";

/// Istio's default TEXT format (`EnvoyTextLogFormat`, Istio 1.2x).
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% \
%PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% \
%DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \
\"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" \
%UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% \
%DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON keys (`EnvoyJSONLogFormatIstio`).
pub const ISTIO_JSON_FORMAT: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// The access log the mesh asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogConfig {
    /// `accessLogFile`, e.g. `/dev/stdout`.
    pub path: String,
    pub format: AccessLogFormat,
}

/// `accessLogEncoding` with `accessLogFormat` resolved to Istio's defaults.
#[derive(Clone, Debug, PartialEq)]
pub enum AccessLogFormat {
    /// An Envoy format string, ending in a newline.
    Text(String),
    /// A JSON object whose values hold command operators.
    Json(serde_json::Map<String, serde_json::Value>),
}

impl AccessLogConfig {
    /// From meshConfig (None: `accessLogFile` unset or empty, logs off).
    /// A JSON format that is not a JSON object falls back to Istio's
    /// default keys, as Istio does.
    pub fn from_mesh_config(mc: &api::mesh_config::MeshConfig) -> Option<Self> {
        let path = mc.access_log_file.as_deref().filter(|p| !p.is_empty())?;
        let custom = mc.access_log_format.as_deref().filter(|f| !f.is_empty());
        let format = match mc.access_log_encoding {
            Some(api::mesh_config::AccessLogEncoding::Json) => AccessLogFormat::Json(
                custom
                    .and_then(|f| serde_json::from_str::<serde_json::Value>(f).ok())
                    .and_then(|v| match v {
                        serde_json::Value::Object(m) => Some(m),
                        _ => None,
                    })
                    .unwrap_or_else(|| {
                        ISTIO_JSON_FORMAT
                            .iter()
                            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                            .collect()
                    }),
            ),
            // Istio appends the newline a custom format lacks.
            _ => AccessLogFormat::Text(match custom {
                Some(f) if f.ends_with('\n') => f.to_string(),
                Some(f) => format!("{f}\n"),
                None => ISTIO_TEXT_FORMAT.to_string(),
            }),
        };
        Some(Self {
            path: path.to_string(),
            format,
        })
    }

    /// The `envoy.access_loggers.file` entry.
    pub fn access_log(&self, filter: Option<AccessLogFilter>) -> AccessLog {
        AccessLog {
            name: FILE_ACCESS_LOG.into(),
            filter,
            config_type: Some(access_log::ConfigType::TypedConfig(self.file_access_log())),
        }
    }

    fn file_access_log(&self) -> Any {
        let type_url = <FileAccessLog as prost::Name>::type_url();
        match &self.format {
            AccessLogFormat::Text(text) => {
                let fal = FileAccessLog {
                    path: self.path.clone(),
                    access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
                        SubstitutionFormatString {
                            format: Some(substitution_format_string::Format::TextFormatSource(
                                DataSource {
                                    specifier: Some(data_source::Specifier::InlineString(
                                        text.clone(),
                                    )),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        },
                    )),
                };
                Any {
                    type_url,
                    value: fal.encode_to_vec(),
                }
            }
            AccessLogFormat::Json(map) => {
                // google.protobuf.Struct is a HashMap in envoy-types: encode
                // it by hand, keys sorted, so the bytes (and the resource
                // version) are the same on every translation.
                let mut sfs = SubstitutionFormatString {
                    // Istio's `sort_properties: false` (the default).
                    json_format_options: Some(JsonFormatOptions::default()),
                    ..Default::default()
                }
                .encode_to_vec();
                length_delimited(2, &encode_struct(map), &mut sfs);
                let mut value = FileAccessLog {
                    path: self.path.clone(),
                    access_log_format: None,
                }
                .encode_to_vec();
                length_delimited(5, &sfs, &mut value);
                Any { type_url, value }
            }
        }
    }
}

/// Istio's listener-level filter: log only connections no chain matched.
pub fn no_route_filter() -> AccessLogFilter {
    AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::ResponseFlagFilter(
            ResponseFlagFilter {
                flags: vec!["NR".into()],
            },
        )),
    }
}

/// Add the access log to every listener, and to every HTTP connection
/// manager and tcp_proxy in its chains.
pub fn apply(cfg: &AccessLogConfig, listeners: &mut [Listener]) {
    for l in listeners {
        l.access_log.push(cfg.access_log(Some(no_route_filter())));
        for chain in l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.iter_mut())
        {
            for f in &mut chain.filters {
                add_to_filter(cfg, f);
            }
        }
    }
}

fn add_to_filter(cfg: &AccessLogConfig, f: &mut Filter) {
    let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
        return;
    };
    if any.type_url == <HttpConnectionManager as prost::Name>::type_url() {
        if let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
            hcm.access_log.push(cfg.access_log(None));
            any.value = hcm.encode_to_vec();
        }
    } else if any.type_url == <TcpProxy as prost::Name>::type_url()
        && let Ok(mut tp) = TcpProxy::decode(any.value.as_slice())
    {
        tp.access_log.push(cfg.access_log(None));
        any.value = tp.encode_to_vec();
    }
}

fn length_delimited(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// google.protobuf.Struct, keys sorted.
fn encode_struct(map: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let mut entry = Vec::new();
        length_delimited(1, k.as_bytes(), &mut entry);
        length_delimited(2, &encode_value(&map[k]), &mut entry);
        length_delimited(1, &entry, &mut out);
    }
    out
}

/// google.protobuf.Value.
fn encode_value(v: &serde_json::Value) -> Vec<u8> {
    use serde_json::Value as J;
    let mut out = Vec::new();
    match v {
        J::Null => {
            encode_key(1, WireType::Varint, &mut out);
            encode_varint(0, &mut out);
        }
        J::Number(n) => {
            encode_key(2, WireType::SixtyFourBit, &mut out);
            out.extend_from_slice(&n.as_f64().unwrap_or_default().to_le_bytes());
        }
        J::String(s) => length_delimited(3, s.as_bytes(), &mut out),
        J::Bool(b) => {
            encode_key(4, WireType::Varint, &mut out);
            encode_varint(u64::from(*b), &mut out);
        }
        J::Object(m) => length_delimited(5, &encode_struct(m), &mut out),
        J::Array(items) => {
            let mut list = Vec::new();
            for item in items {
                length_delimited(1, &encode_value(item), &mut list);
            }
            length_delimited(6, &list, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, value::Kind};

    fn mesh(yaml: &str) -> api::mesh_config::MeshConfig {
        serde_yaml_ng::from_str(yaml).expect("mesh config")
    }

    fn decode(cfg: &AccessLogConfig) -> FileAccessLog {
        let Some(access_log::ConfigType::TypedConfig(any)) = cfg.access_log(None).config_type
        else {
            panic!("typed config")
        };
        FileAccessLog::decode(any.value.as_slice()).expect("FileAccessLog")
    }

    #[test]
    fn every_hcm_tcp_proxy_and_listener_gets_it() {
        use crate::translate::common::any;
        use envoy_types::pb::envoy::config::listener::v3::FilterChain;
        let cfg = AccessLogConfig::from_mesh_config(&mesh("accessLogFile: /dev/stdout")).unwrap();
        let chain = FilterChain {
            filters: vec![
                Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(
                        &HttpConnectionManager::default(),
                    ))),
                },
                Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&TcpProxy::default()))),
                },
            ],
            ..Default::default()
        };
        let mut listeners = vec![Listener {
            filter_chains: vec![chain.clone()],
            default_filter_chain: Some(chain),
            ..Default::default()
        }];
        apply(&cfg, &mut listeners);
        let l = &listeners[0];
        assert_eq!(l.access_log, vec![cfg.access_log(Some(no_route_filter()))]);
        for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            let typed = |i: usize| match &chain.filters[i].config_type {
                Some(filter::ConfigType::TypedConfig(a)) => a.value.clone(),
                _ => panic!("typed"),
            };
            let hcm = HttpConnectionManager::decode(typed(0).as_slice()).unwrap();
            assert_eq!(hcm.access_log, vec![cfg.access_log(None)]);
            let tp = TcpProxy::decode(typed(1).as_slice()).unwrap();
            assert_eq!(tp.access_log, vec![cfg.access_log(None)]);
        }
    }

    #[test]
    fn off_without_a_file() {
        assert_eq!(AccessLogConfig::from_mesh_config(&mesh("{}")), None);
        assert_eq!(
            AccessLogConfig::from_mesh_config(&mesh("accessLogFile: ''")),
            None
        );
    }

    #[test]
    fn text_default_and_custom() {
        let cfg = AccessLogConfig::from_mesh_config(&mesh("accessLogFile: /dev/stdout")).unwrap();
        assert_eq!(cfg.format, AccessLogFormat::Text(ISTIO_TEXT_FORMAT.into()));
        let cfg = AccessLogConfig::from_mesh_config(&mesh(
            "accessLogFile: /tmp/a\naccessLogFormat: '%PROTOCOL%'",
        ))
        .unwrap();
        assert_eq!(cfg.format, AccessLogFormat::Text("%PROTOCOL%\n".into()));
        assert_eq!(decode(&cfg).path, "/tmp/a");
    }

    #[test]
    fn json_round_trips_and_is_deterministic() {
        let cfg = AccessLogConfig::from_mesh_config(&mesh(
            "accessLogFile: /dev/stdout\naccessLogEncoding: JSON",
        ))
        .unwrap();
        let fal = decode(&cfg);
        let Some(file_access_log::AccessLogFormat::LogFormat(sfs)) = fal.access_log_format else {
            panic!("log_format")
        };
        let Some(substitution_format_string::Format::JsonFormat(Struct { fields })) = sfs.format
        else {
            panic!("json_format")
        };
        assert_eq!(fields.len(), 24);
        for (k, v) in ISTIO_JSON_FORMAT {
            assert_eq!(fields[k].kind, Some(Kind::StringValue(v.into())), "{k}");
        }
        assert_eq!(cfg.file_access_log(), cfg.file_access_log());
        // Not an object: Istio's default keys.
        let bad = AccessLogConfig::from_mesh_config(&mesh(
            "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\naccessLogFormat: '[]'",
        ))
        .unwrap();
        assert_eq!(bad.format, cfg.format);
    }
}
