//! Content versions for xDS resources. Protobuf maps (`filter_metadata`,
//! `typed_extension_protocol_options`, `typed_per_filter_config`, ...) encode
//! in hash-map order, so equal resources can have different bytes. The
//! version hashes the encoded bytes field by field with a schema generated
//! from Envoy's descriptor set at build time (which fields hold messages or
//! map entries): map entries are hashed in sorted order, `Any` values as
//! their own type, everything else as it is on the wire. No message is
//! decoded and no descriptor pool is held.

use std::hash::{DefaultHasher, Hasher};

/// How a field's bytes are read.
#[derive(Clone, Copy, Debug)]
enum Field {
    /// A nested message of the type at this index of [`TYPES`].
    Message(usize),
    /// One entry of a map; entries are hashed as a set.
    Map(usize),
}

include!(concat!(env!("OUT_DIR"), "/wire_schema.rs"));

/// The index of a message type in [`TYPES`].
fn type_index(full_name: &str) -> Option<usize> {
    TYPES.binary_search_by(|(n, _)| (*n).cmp(full_name)).ok()
}

/// A stable version of an encoded message of type `full_name`: equal for
/// equal messages whatever order their maps were encoded in.
pub fn stable_version(full_name: &str, bytes: &[u8]) -> String {
    let mut h = DefaultHasher::new();
    h.write(full_name.as_bytes());
    let ty = type_index(full_name);
    let mut walked = h.clone();
    if hash_message(ty, bytes, &mut walked).is_ok() {
        h = walked;
    } else {
        // Not parseable with the schema (cannot happen for what prost
        // encodes): the exact bytes still give a version.
        h.write_u8(0xff);
        h.write(bytes);
    }
    format!("{:016x}", h.finish())
}

/// Not a well-formed message.
struct Malformed;

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, Malformed> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or(Malformed)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Malformed)
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], Malformed> {
    let end = at.checked_add(n).ok_or(Malformed)?;
    let out = bytes.get(*at..end).ok_or(Malformed)?;
    *at = end;
    Ok(out)
}

/// Feed the canonical form of a message of type `ty` (None: no nested
/// messages known, so the bytes are canonical as they are) into `h`.
fn hash_message(ty: Option<usize>, bytes: &[u8], h: &mut DefaultHasher) -> Result<(), Malformed> {
    let Some(ty) = ty else {
        h.write_usize(bytes.len());
        h.write(bytes);
        return Ok(());
    };
    let (name, fields) = TYPES[ty];
    if name == "google.protobuf.Any" {
        return hash_any(bytes, h);
    }
    // (field number, entry hash) of every map entry, hashed sorted at the end.
    let mut entries: Vec<(u32, u64)> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let number = u32::try_from(key >> 3).map_err(|_| Malformed)?;
        let wire = key & 7;
        let field = fields
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .map(|i| fields[i].1);
        match wire {
            0 => {
                let v = varint(bytes, &mut at)?;
                h.write_u64(key);
                h.write_u64(v);
            }
            1 => {
                h.write_u64(key);
                h.write(take(bytes, &mut at, 8)?);
            }
            5 => {
                h.write_u64(key);
                h.write(take(bytes, &mut at, 4)?);
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).map_err(|_| Malformed)?;
                let value = take(bytes, &mut at, len)?;
                match field {
                    Some(Field::Message(child)) => {
                        h.write_u64(key);
                        hash_message(Some(child), value, h)?;
                    }
                    Some(Field::Map(entry)) => {
                        let mut eh = DefaultHasher::new();
                        hash_message(Some(entry), value, &mut eh)?;
                        entries.push((number, eh.finish()));
                    }
                    None => {
                        h.write_u64(key);
                        h.write_usize(len);
                        h.write(value);
                    }
                }
            }
            _ => return Err(Malformed),
        }
    }
    entries.sort_unstable();
    for (number, entry) in entries {
        h.write_u32(number);
        h.write_u64(entry);
    }
    h.write_u8(0);
    Ok(())
}

/// `google.protobuf.Any`: the type URL, then the value as that type.
fn hash_any(bytes: &[u8], h: &mut DefaultHasher) -> Result<(), Malformed> {
    let (mut url, mut value): (&[u8], &[u8]) = (&[], &[]);
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        if key & 7 != 2 {
            return Err(Malformed);
        }
        let len = usize::try_from(varint(bytes, &mut at)?).map_err(|_| Malformed)?;
        let field = take(bytes, &mut at, len)?;
        match key >> 3 {
            1 => url = field,
            2 => value = field,
            _ => return Err(Malformed),
        }
    }
    let url = std::str::from_utf8(url).map_err(|_| Malformed)?;
    h.write_usize(url.len());
    h.write(url.as_bytes());
    let inner = url.rsplit('/').next().and_then(type_index);
    hash_message(inner, value, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
    use envoy_types::pb::google::protobuf::{Any, Struct};
    use prost::{Message, Name};
    use std::collections::HashMap;

    fn metadata(keys: &[&str]) -> Metadata {
        Metadata {
            filter_metadata: keys
                .iter()
                .map(|k| (k.to_string(), Struct::default()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    fn any_of<M: Message + Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    /// A cluster whose maps (its own and one inside an `Any`) have many entries.
    fn cluster() -> Cluster {
        let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        Cluster {
            name: "outbound|80||a".into(),
            metadata: Some(metadata(&keys)),
            typed_extension_protocol_options: keys
                .iter()
                .map(|k| (k.to_string(), any_of(&metadata(&keys))))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn map_order_does_not_change_the_version() {
        let name = Cluster::full_name();
        let first = cluster().encode_to_vec();
        let want = stable_version(&name, &first);
        let mut orders_differed = false;
        for _ in 0..20 {
            let bytes = cluster().encode_to_vec();
            orders_differed |= bytes != first;
            assert_eq!(stable_version(&name, &bytes), want);
        }
        assert!(
            orders_differed,
            "hash maps never changed order: the test proves nothing"
        );
    }

    #[test]
    fn content_and_order_of_lists_do_change_it() {
        let name = RouteConfiguration::full_name();
        let route = |n: &str| Route {
            name: n.into(),
            ..Default::default()
        };
        let rc = |routes: Vec<Route>| RouteConfiguration {
            name: "80".into(),
            virtual_hosts: vec![VirtualHost {
                name: "a".into(),
                routes,
                ..Default::default()
            }],
            ..Default::default()
        };
        let ab = stable_version(&name, &rc(vec![route("a"), route("b")]).encode_to_vec());
        let ba = stable_version(&name, &rc(vec![route("b"), route("a")]).encode_to_vec());
        let ac = stable_version(&name, &rc(vec![route("a"), route("c")]).encode_to_vec());
        assert_ne!(ab, ba);
        assert_ne!(ab, ac);
        // A map value's content counts too.
        let mut c = cluster();
        let other = cluster();
        c.metadata = Some(metadata(&["k0"]));
        assert_ne!(
            stable_version(&Cluster::full_name(), &c.encode_to_vec()),
            stable_version(&Cluster::full_name(), &other.encode_to_vec())
        );
    }

    #[test]
    fn unknown_types_and_bad_bytes_still_get_a_version() {
        assert_eq!(
            stable_version("no.such.Type", b"\x0a\x01x"),
            stable_version("no.such.Type", b"\x0a\x01x")
        );
        let bad = stable_version(&Cluster::full_name(), b"\x0a\xff");
        assert_eq!(bad.len(), 16);
        assert_ne!(bad, stable_version(&Cluster::full_name(), b"\x0a\xfe"));
    }

    #[test]
    fn schema_knows_envoy_types() {
        assert!(type_index("envoy.config.cluster.v3.Cluster").is_some());
        assert!(type_index("google.protobuf.Any").is_some());
        assert!(TYPES.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    }
}
