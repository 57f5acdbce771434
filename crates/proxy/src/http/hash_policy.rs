//! The request hash of a route's `hash_policy`, as Envoy computes it for
//! RING_HASH and MAGLEV clusters: each policy's value hashed with XX_HASH 64
//! (seed 0), combined as `rotl(previous, 1) ^ next`, policies without a
//! value skipped, stopping at a `terminal` one that has a hash. A cookie
//! policy with a `ttl` and no cookie on the request generates the cookie
//! (Envoy's value: the hex xxHash64 of the connection's remote and local
//! addresses) and asks for a `Set-Cookie` on the response.

use std::borrow::Cow;
use std::fmt::Write;

use http::{HeaderMap, HeaderValue, Method, Uri};
use xxhash_rust::xxh64::xxh64;

use crate::config::cluster::LbPolicy;
use crate::config::hash_policy::{HashPolicy, HashSource};
use crate::downstream::Downstream;

/// What the hash policies made of a request.
#[derive(Debug, Default)]
pub struct RequestHash {
    /// None: no policy produced a value (the load balancer picks at random).
    pub hash: Option<u64>,
    /// A generated cookie for the response.
    pub set_cookie: Option<HeaderValue>,
}

/// The request as the hash policies read it.
pub struct HashInput<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub downstream: &'a Downstream,
}

impl RequestHash {
    /// The hash for a request to a cluster balanced by `lb_policy`: Envoy
    /// computes it only when the load balancer asks (consistent-hash
    /// policies), so other clusters get no hash and no cookie.
    pub fn compute(
        policies: Option<&[HashPolicy]>,
        lb_policy: LbPolicy,
        req: &HashInput<'_>,
    ) -> RequestHash {
        let mut out = RequestHash::default();
        let Some(policies) = policies else {
            return out;
        };
        if !matches!(
            lb_policy,
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
        ) {
            return out;
        }
        for p in policies {
            if let Some(next) = evaluate(&p.source, req, &mut out.set_cookie) {
                out.hash = Some(out.hash.map_or(0, |h| h.rotate_left(1)) ^ next);
            }
            if p.terminal && out.hash.is_some() {
                break;
            }
        }
        out
    }
}

/// Another hash for the `n`th re-pick of a retry avoiding previous hosts.
pub fn rehash(hash: u64, n: u64) -> u64 {
    xxh64(&hash.to_le_bytes(), n + 1)
}

fn evaluate(
    source: &HashSource,
    req: &HashInput<'_>,
    set_cookie: &mut Option<HeaderValue>,
) -> Option<u64> {
    match source {
        HashSource::Header(name) => header_hash(name, req),
        HashSource::Cookie { name, ttl, path } => {
            if let Some(v) = cookie(req.headers, name).filter(|v| !v.is_empty()) {
                return Some(xxh64(v.as_bytes(), 0));
            }
            let ttl = (*ttl)?;
            let d = req.downstream;
            let mut addrs = String::with_capacity(96);
            let _ = write!(addrs, "{}{}", d.peer, d.destination);
            let value = format!("{:016x}", xxh64(addrs.as_bytes(), 0));
            *set_cookie =
                HeaderValue::try_from(set_cookie_value(name, &value, path, ttl.as_secs())).ok();
            Some(xxh64(value.as_bytes(), 0))
        }
        HashSource::SourceIp => Some(xxh64(req.downstream.peer.ip().to_string().as_bytes(), 0)),
        HashSource::QueryParameter(name) => {
            let query = req.uri.query()?;
            let v = query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k) == name.as_str()).then_some(v)
            })?;
            Some(xxh64(percent_decode(v).as_bytes(), 0))
        }
    }
}

/// A header's values hashed: one as is; several sorted and chained (the
/// seed of each is the hash so far), as Envoy.
fn header_hash(name: &str, req: &HashInput<'_>) -> Option<u64> {
    let pseudo = match name {
        ":authority" => req.uri.authority().map(|a| a.as_str()).or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        }),
        ":path" => req.uri.path_and_query().map(|p| p.as_str()),
        ":method" => Some(req.method.as_str()),
        _ => None,
    };
    if let Some(v) = pseudo {
        return Some(xxh64(v.as_bytes(), 0));
    }
    let mut values = req.headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(xxh64(first.as_bytes(), 0));
    };
    let mut all: Vec<&[u8]> = [first, second]
        .into_iter()
        .chain(values)
        .map(HeaderValue::as_bytes)
        .collect();
    all.sort_unstable();
    Some(all.iter().fold(0, |seed, v| xxh64(v, seed)))
}

/// The first cookie `name` of the request's `Cookie` headers, unquoted.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim_start().split_once('=')?;
            (k == name).then(|| {
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

/// Envoy's `makeSetCookieValue` with httponly: `name="value"`, then
/// `; Max-Age=` unless zero, `; Path=` unless empty, `; HttpOnly`.
pub fn set_cookie_value(name: &str, value: &str, path: &str, max_age: u64) -> String {
    let mut s = format!("{name}=\"{value}\"");
    if max_age != 0 {
        let _ = write!(s, "; Max-Age={max_age}");
    }
    if !path.is_empty() {
        let _ = write!(s, "; Path={path}");
    }
    s.push_str("; HttpOnly");
    s
}

/// `%XX` escapes decoded (and `+` left as is, as Envoy's decoder).
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hash_policy::parse;
    use envoy_types::pb::envoy::config::route::v3::RouteAction;

    fn policies(yaml: &str) -> std::sync::Arc<[HashPolicy]> {
        let a: RouteAction =
            xds::json::from_yaml(&format!("cluster: c\nhash_policy: {yaml}")).expect("parses");
        parse(&a.hash_policy).unwrap().unwrap()
    }

    fn downstream(peer: &str) -> Downstream {
        Downstream {
            peer: peer.parse().unwrap(),
            destination: "10.0.0.9:8080".parse().unwrap(),
            original_dst: None,
            tls: None,
            direction: Default::default(),
        }
    }

    const RING: LbPolicy = LbPolicy::RingHash {
        min_size: 1024,
        max_size: 1024,
    };

    fn hash(p: &[HashPolicy], uri: &str, headers: &[(&str, &str)], peer: &str) -> RequestHash {
        let uri: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let d = downstream(peer);
        let input = HashInput {
            method: &Method::GET,
            uri: &uri,
            headers: &h,
            downstream: &d,
        };
        RequestHash::compute(Some(p), RING, &input)
    }

    #[test]
    fn each_source_hashes_its_value() {
        let x = |s: &str| Some(xxh64(s.as_bytes(), 0));
        let p = policies("[{header: {header_name: X-User}}]");
        assert_eq!(hash(&p, "/", &[("x-user", "a")], "1.1.1.1:1").hash, x("a"));
        assert_eq!(hash(&p, "/", &[], "1.1.1.1:1").hash, None);
        let p = policies("[{query_parameter: {name: user}}]");
        assert_eq!(
            hash(&p, "/p?x=1&user=b%20c", &[], "1.1.1.1:1").hash,
            x("b c")
        );
        let p = policies("[{connection_properties: {source_ip: true}}]");
        assert_eq!(hash(&p, "/", &[], "1.2.3.4:5").hash, x("1.2.3.4"));
        let p = policies("[{cookie: {name: session}}]");
        let r = hash(&p, "/", &[("cookie", "a=1; session=\"s1\"")], "1.1.1.1:1");
        assert_eq!((r.hash, r.set_cookie), (x("s1"), None));
        // No ttl: no cookie generated.
        assert_eq!(hash(&p, "/", &[], "1.1.1.1:1").hash, None);
    }

    #[test]
    fn generates_a_cookie_with_a_ttl() {
        let p = policies("[{cookie: {name: session, path: /, ttl: 3600s}}]");
        let r = hash(&p, "/", &[], "1.1.1.1:1000");
        let value = format!("{:016x}", xxh64(b"1.1.1.1:100010.0.0.9:8080", 0));
        assert_eq!(r.hash, Some(xxh64(value.as_bytes(), 0)));
        assert_eq!(
            r.set_cookie.unwrap(),
            format!("session=\"{value}\"; Max-Age=3600; Path=/; HttpOnly")
        );
    }

    #[test]
    fn combines_skips_and_stops_at_terminal() {
        let x = |s: &str| xxh64(s.as_bytes(), 0);
        let p = policies("[{header: {header_name: a}}, {header: {header_name: b}}]");
        let both = hash(&p, "/", &[("a", "1"), ("b", "2")], "1.1.1.1:1").hash;
        assert_eq!(both, Some(x("1").rotate_left(1) ^ x("2")));
        assert_eq!(hash(&p, "/", &[("b", "2")], "1.1.1.1:1").hash, Some(x("2")));
        let p =
            policies("[{header: {header_name: a}, terminal: true}, {header: {header_name: b}}]");
        assert_eq!(
            hash(&p, "/", &[("a", "1"), ("b", "2")], "1.1.1.1:1").hash,
            Some(x("1"))
        );
        // Not a consistent-hash cluster: nothing computed.
        let uri: Uri = "/".parse().unwrap();
        let (h, d) = (HeaderMap::new(), downstream("1.1.1.1:1"));
        let input = HashInput {
            method: &Method::GET,
            uri: &uri,
            headers: &h,
            downstream: &d,
        };
        let p = policies("[{connection_properties: {source_ip: true}}]");
        assert!(
            RequestHash::compute(Some(&p), LbPolicy::RoundRobin, &input)
                .hash
                .is_none()
        );
    }

    #[test]
    fn refuses_what_is_not_implemented() {
        for (yaml, msg) in [
            (
                "[{filter_state: {key: k}}]",
                "hash_policy[0].filter_state: unsupported field",
            ),
            (
                "[{}]",
                "hash_policy[0]: one of header, cookie, connection_properties or query_parameter required",
            ),
            (
                "[{cookie: {name: \"\"}}]",
                "hash_policy[0].cookie.name: not a cookie name",
            ),
        ] {
            let a: RouteAction =
                xds::json::from_yaml(&format!("cluster: c\nhash_policy: {yaml}")).expect("parses");
            assert_eq!(parse(&a.hash_policy).unwrap_err().to_string(), msg);
        }
    }
}
