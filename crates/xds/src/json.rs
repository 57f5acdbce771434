//! Envoy's JSON/YAML shape for xDS messages (snake_case names, `@type` on `Any`),
//! through prost-reflect and the descriptor set that ships with `envoy-types`.

use std::sync::OnceLock;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

/// The descriptor set `envoy-types` was generated from (Envoy, xDS, udpa, google.protobuf).
static ENVOY_DESCRIPTORS: &[u8] = include_bytes!("../descriptors/envoy-types.bin");

/// Errors converting between Envoy JSON/YAML and protobuf messages.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("unknown message type {0}")]
    UnknownType(String),
    #[error("{0}")]
    Decode(String),
}

/// The pool of every Envoy message type we know, decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(ENVOY_DESCRIPTORS).expect("envoy-types descriptor set decodes")
    })
}

fn descriptor(full_name: &str) -> Result<prost_reflect::MessageDescriptor, JsonError> {
    pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| JsonError::UnknownType(full_name.to_string()))
}

/// A message as Envoy prints it (`/config_dump`, `envoy -c`): snake_case field names.
pub fn to_json<M: Message + Name>(msg: &M) -> serde_json::Value {
    let bytes = msg.encode_to_vec();
    bytes_to_json(&M::full_name(), &bytes).unwrap_or(serde_json::Value::Null)
}

/// Encoded bytes of the named message type, as Envoy JSON.
pub fn bytes_to_json(full_name: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    let desc = descriptor(full_name)?;
    let dynamic =
        DynamicMessage::decode(desc, bytes).map_err(|e| JsonError::Decode(e.to_string()))?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| JsonError::Decode(e.to_string()))
}

/// `Any` as Envoy JSON (`{"@type": ..., fields...}`).
pub fn any_to_json(any: &prost_types::Any) -> Result<serde_json::Value, JsonError> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let mut value = bytes_to_json(name, &any.value)?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert(
            "@type".into(),
            serde_json::Value::String(any.type_url.clone()),
        );
    }
    Ok(value)
}

/// Parse Envoy JSON (either snake_case or camelCase names) into a message. Unknown
/// fields are an error, with the path of the offending field in the message.
pub fn from_json<M: Message + Name + Default>(value: &serde_json::Value) -> Result<M, JsonError> {
    let desc = descriptor(&M::full_name())?;
    let text = value.to_string();
    let mut de = serde_json::Deserializer::from_str(&text);
    let opts = DeserializeOptions::new().deny_unknown_fields(true);
    let dynamic = DynamicMessage::deserialize_with_options(desc, &mut de, &opts)
        .map_err(|e| JsonError::Decode(e.to_string()))?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| JsonError::Decode(e.to_string()))
}

/// Parse Envoy YAML (as accepted by `envoy -c file.yaml`) into a message.
pub fn from_yaml<M: Message + Name + Default>(text: &str) -> Result<M, JsonError> {
    let value: serde_json::Value =
        serde_yaml_ng::from_str(text).map_err(|e| JsonError::Decode(e.to_string()))?;
    from_json(&value)
}

/// Pack a message into `Any` with its type URL.
pub fn to_any<M: Message + Name>(msg: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
    use envoy_types::pb::envoy::config::listener::v3::Listener;

    #[test]
    fn bootstrap_with_typed_config_round_trips() {
        let yaml = r#"
node: {id: "sidecar~1.2.3.4~a.ns~ns.svc.cluster.local", cluster: c}
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 1}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: x
          route_config: {name: r}
"#;
        let b: Bootstrap = from_yaml(yaml).expect("parses");
        let json = to_json(&b);
        let l = &json["static_resources"]["listeners"][0];
        assert_eq!(l["address"]["socket_address"]["port_value"], 1);
        let tc = &l["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(tc["stat_prefix"], "x");
        let again: Bootstrap = from_json(&json).expect("round trip");
        assert_eq!(again, b);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = from_yaml::<Listener>("name: l\nbogus_field: 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus_field"), "{err}");
    }
}
