//! Content versions for xDS resources. Protobuf maps (`Struct.fields`,
//! `filter_metadata`, `typed_extension_protocol_options`) encode in hash-map
//! order, so equal resources can have different bytes; this hashes the decoded
//! message with map entries sorted, looking inside `Any`.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, OnceLock};

use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};

/// Entries kept before the memo starts over (a few per distinct resource).
const MEMO_LIMIT: usize = 1 << 20;

/// A stable version of an encoded message of type `full_name`. The same bytes
/// recur for every proxy that gets the resource, so the (costly) decode is
/// memoised by a hash of the exact bytes.
pub fn stable_version(full_name: &str, bytes: &[u8]) -> String {
    static MEMO: OnceLock<Mutex<HashMap<(u64, usize), String>>> = OnceLock::new();
    let key = {
        let mut h = DefaultHasher::new();
        full_name.hash(&mut h);
        bytes.hash(&mut h);
        (h.finish(), bytes.len())
    };
    let memo = MEMO.get_or_init(Default::default);
    if let Some(v) = memo.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return v.clone();
    }
    let version = decode_and_hash(full_name, bytes);
    let mut m = memo.lock().unwrap_or_else(|e| e.into_inner());
    if m.len() >= MEMO_LIMIT {
        m.clear();
    }
    m.insert(key, version.clone());
    version
}

fn decode_and_hash(full_name: &str, bytes: &[u8]) -> String {
    let mut h = DefaultHasher::new();
    match xds::json::pool().get_message_by_name(full_name) {
        Some(desc) => match DynamicMessage::decode(desc, bytes) {
            Ok(msg) => hash_message(&msg, &mut h),
            Err(_) => bytes.hash(&mut h),
        },
        None => bytes.hash(&mut h),
    }
    format!("{:016x}", h.finish())
}

fn hash_message(msg: &DynamicMessage, h: &mut DefaultHasher) {
    let desc = msg.descriptor();
    if desc.full_name() == "google.protobuf.Any" {
        let url = msg.get_field_by_name("type_url");
        let value = msg.get_field_by_name("value");
        if let (Some(Value::String(url)), Some(Value::Bytes(bytes))) =
            (url.as_deref(), value.as_deref())
        {
            let name = url.rsplit('/').next().unwrap_or_default();
            url.hash(h);
            stable_version(name, bytes).hash(h);
            return;
        }
    }
    for (field, value) in msg.fields() {
        field.number().hash(h);
        hash_value(value, h);
    }
}

fn hash_value(v: &Value, h: &mut DefaultHasher) {
    match v {
        Value::Bool(b) => b.hash(h),
        Value::I32(n) | Value::EnumNumber(n) => n.hash(h),
        Value::I64(n) => n.hash(h),
        Value::U32(n) => n.hash(h),
        Value::U64(n) => n.hash(h),
        Value::F32(f) => f.to_bits().hash(h),
        Value::F64(f) => f.to_bits().hash(h),
        Value::String(s) => s.hash(h),
        Value::Bytes(b) => b.hash(h),
        Value::Message(m) => hash_message(m, h),
        Value::List(items) => {
            items.len().hash(h);
            for i in items {
                hash_value(i, h);
            }
        }
        Value::Map(map) => {
            let mut entries: Vec<(&MapKey, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            entries.len().hash(h);
            for (k, v) in entries {
                hash_key(k, h);
                hash_value(v, h);
            }
        }
    }
}

fn hash_key(k: &MapKey, h: &mut DefaultHasher) {
    match k {
        MapKey::Bool(b) => b.hash(h),
        MapKey::I32(n) => n.hash(h),
        MapKey::I64(n) => n.hash(h),
        MapKey::U32(n) => n.hash(h),
        MapKey::U64(n) => n.hash(h),
        MapKey::String(s) => s.hash(h),
    }
}
