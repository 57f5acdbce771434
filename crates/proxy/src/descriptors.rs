//! Envoy's JSON/YAML shape for the two places the proxy needs it (reading the
//! bootstrap, rendering `/config_dump`), with a descriptor pool decoded for the
//! call and freed after it: the pool costs ~50 MB, which a sidecar should not
//! keep resident for a file it reads once and a debug page.

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

/// The descriptor set `envoy-types` was generated from (the same file `xds` uses).
static ENVOY_DESCRIPTORS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../xds/descriptors/envoy-types.bin"
));

/// The part of it the proxy reads and renders (bootstrap, xDS resources and
/// the supported filters' typed configs, with their imports), cut by build.rs.
static PROXY_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/proxy-descriptors.bin"));

/// A descriptor pool for the duration of one job.
pub struct Descriptors {
    pool: DescriptorPool,
}

impl std::fmt::Debug for Descriptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Descriptors")
    }
}

impl Descriptors {
    /// Run `f` with a freshly decoded pool of the types the proxy supports,
    /// then free it and hand the memory back to the OS.
    pub fn with<R>(f: impl FnOnce(&Descriptors) -> R) -> R {
        Self::with_set(PROXY_DESCRIPTORS, f)
    }

    /// The same with every Envoy type: for configs the small pool cannot
    /// read, so that an unsupported type is reported by name, not as unknown.
    pub fn with_all<R>(f: impl FnOnce(&Descriptors) -> R) -> R {
        Self::with_set(ENVOY_DESCRIPTORS, f)
    }

    fn with_set<R>(set: &[u8], f: impl FnOnce(&Descriptors) -> R) -> R {
        let descriptors = Descriptors {
            pool: DescriptorPool::decode(set).expect("envoy-types descriptor set decodes"),
        };
        let result = f(&descriptors);
        drop(descriptors);
        release_free_memory();
        result
    }

    /// Parse Envoy YAML (or JSON, a subset of YAML) into a message; unknown
    /// fields are an error naming the field.
    pub fn from_yaml<M: Message + Name + Default>(&self, text: &str) -> Result<M, String> {
        let value: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        self.from_json(&value)
    }

    pub fn from_json<M: Message + Name + Default>(
        &self,
        value: &serde_json::Value,
    ) -> Result<M, String> {
        let desc = self
            .pool
            .get_message_by_name(&M::full_name())
            .ok_or_else(|| format!("unknown message type {}", M::full_name()))?;
        let dynamic = DynamicMessage::deserialize_with_options(
            desc,
            value,
            &DeserializeOptions::new().deny_unknown_fields(true),
        )
        .map_err(|e| e.to_string())?;
        M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| e.to_string())
    }

    /// A message as Envoy prints it (snake_case names, defaults omitted).
    pub fn to_json<M: Message + Name>(&self, msg: &M) -> serde_json::Value {
        let Some(desc) = self.pool.get_message_by_name(&M::full_name()) else {
            return serde_json::Value::Null;
        };
        let Ok(dynamic) = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()) else {
            return serde_json::Value::Null;
        };
        let opts = SerializeOptions::new()
            .use_proto_field_name(true)
            .skip_default_fields(true);
        dynamic
            .serialize_with_options(serde_json::value::Serializer, &opts)
            .unwrap_or(serde_json::Value::Null)
    }
}

/// Return freed heap to the OS (glibc keeps it otherwise).
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory at the top of the heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::Listener;

    #[test]
    fn round_trips_and_names_unknown_fields() {
        Descriptors::with(|d| {
            let l: Listener = d.from_yaml("name: l\nstat_prefix: s\n").unwrap();
            assert_eq!(
                d.to_json(&l),
                serde_json::json!({"name": "l", "stat_prefix": "s"})
            );
            let err = d.from_yaml::<Listener>("name: l\nbogus: 1\n").unwrap_err();
            assert!(err.contains("bogus"), "{err}");
        });
    }
}
