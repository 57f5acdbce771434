//! Header handling shared by both directions: hop-by-hop stripping, upgrade
//! detection, `x-request-id` generation.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::listener::{ForwardClientCert, HttpConnectionManager};
use crate::tls::PeerTls;
use crate::upstream::lb::random;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
];

/// A number as a header value (`x-envoy-attempt-count`,
/// `x-envoy-upstream-service-time`): static below 100, so the common case
/// allocates nothing.
pub fn count_value(n: u64) -> HeaderValue {
    const DIGITS: &[u8; 200] = b"\
        0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    match n {
        0..=9 => HeaderValue::from_static(static_str(&DIGITS[2 * n as usize + 1..][..1])),
        10..=99 => HeaderValue::from_static(static_str(&DIGITS[2 * n as usize..][..2])),
        _ => HeaderValue::from(n),
    }
}

fn static_str(b: &'static [u8]) -> &'static str {
    std::str::from_utf8(b).unwrap_or("0")
}

/// The request's authority: the URI's (h2, absolute form), else Host.
pub fn authority<B>(req: &http::Request<B>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("")
}

/// Whether the request asks for a protocol upgrade of the given type.
pub fn is_upgrade(headers: &HeaderMap, upgrade_type: &str) -> bool {
    let connection_upgrade = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    connection_upgrade
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|u| u.eq_ignore_ascii_case(upgrade_type))
}

/// Whether the request asks for any upgrade at all.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Remove hop-by-hop headers (and those the Connection header names). With
/// `keep_upgrade`, `connection: upgrade` and `upgrade` stay.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = headers.get(header::CONNECTION).cloned()
        && let Ok(list) = conn.to_str()
    {
        for name in list.split(',').map(str::trim) {
            if keep_upgrade && name.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(n);
            }
        }
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        if keep_upgrade && (*name == header::CONNECTION || *name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A random UUIDv4 for `x-request-id`, as Envoy generates.
pub fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = (u128::from(random()) << 64) | u128::from(random());
    // Version 4, variant 10.
    bits = (bits & !(0xf << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [0u8; 36];
    let mut nibble = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
            continue;
        }
        let shift = 124 - 4 * nibble;
        *slot = HEX[((bits >> shift) & 0xf) as usize];
        nibble += 1;
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// `x-forwarded-client-cert` by the HCM's `forward_client_cert_details`:
/// a client's own header is dropped unless its connection is mTLS and the
/// config forwards it; over mTLS this hop's element is appended or set,
/// `By=<our URI SAN>;Hash=<client cert SHA-256>` plus the configured
/// `Subject`, `URI` and `DNS`, in Envoy's order.
pub fn forward_client_cert(h: &mut HeaderMap, hcm: &HttpConnectionManager, tls: Option<&PeerTls>) {
    let mtls = tls.and_then(|t| t.peer.as_ref().map(|p| (t, p)));
    let element = |(t, p): (&PeerTls, &crate::tls::PeerCert)| {
        let d = hcm.client_cert_details;
        let mut v = String::new();
        if let Some(by) = &t.local_uri {
            v.push_str("By=");
            v.push_str(by);
            v.push(';');
        }
        v.push_str("Hash=");
        v.push_str(&p.sha256);
        if d.subject {
            v.push_str(";Subject=\"");
            v.push_str(&p.names.subject.replace('"', "\\\""));
            v.push('"');
        }
        if d.uri {
            for u in &p.names.uris {
                v.push_str(";URI=");
                v.push_str(u);
            }
        }
        if d.dns {
            for n in &p.names.dns {
                v.push_str(";DNS=");
                v.push_str(n);
            }
        }
        HeaderValue::from_str(&v).ok()
    };
    match (hcm.forward_client_cert, mtls) {
        (ForwardClientCert::AlwaysForwardOnly, _) | (ForwardClientCert::ForwardOnly, Some(_)) => {}
        (ForwardClientCert::AppendForward, Some(m)) => {
            let previous: Vec<&str> = h
                .get_all(&X_FORWARDED_CLIENT_CERT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let mut joined = previous.join(",");
            let Some(mine) = element(m) else { return };
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(mine.to_str().unwrap_or_default());
            match HeaderValue::from_str(&joined) {
                Ok(v) => {
                    h.insert(&X_FORWARDED_CLIENT_CERT, v);
                }
                Err(_) => {
                    h.insert(&X_FORWARDED_CLIENT_CERT, mine);
                }
            }
        }
        (ForwardClientCert::SanitizeSet, Some(m)) => match element(m) {
            Some(mine) => {
                h.insert(&X_FORWARDED_CLIENT_CERT, mine);
            }
            None => {
                h.remove(&X_FORWARDED_CLIENT_CERT);
            }
        },
        _ => {
            h.remove(&X_FORWARDED_CLIENT_CERT);
        }
    }
}

/// A gRPC request (`content-type: application/grpc[+proto|...]`).
pub fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

pub static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
pub static X_ENVOY_RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
pub static X_ENVOY_RETRY_GRPC_ON: HeaderName = HeaderName::from_static("x-envoy-retry-grpc-on");
pub static X_ENVOY_MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
pub static X_ENVOY_RETRIABLE_STATUS_CODES: HeaderName =
    HeaderName::from_static("x-envoy-retriable-status-codes");
pub static X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub static X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");

/// The `x-envoy-*` headers only an internal request may carry (Envoy's
/// `cleanInternalHeaders`), and those an edge request loses besides.
const INTERNAL_ONLY: [&str; 15] = [
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
];
const EDGE_ONLY: [&str; 3] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

/// Envoy's internal request: with `use_remote_address`, the peer; else the
/// one address of `x-forwarded-for` (none, or several, is not internal);
/// internal when it is in `internal_address_config`.
pub fn is_internal(h: &HeaderMap, hcm: &HttpConnectionManager, peer: std::net::IpAddr) -> bool {
    if hcm.internal_cidrs.is_empty() {
        return false;
    }
    let ip = if hcm.use_remote_address {
        Some(peer)
    } else {
        let mut xff = h.get_all(&X_FORWARDED_FOR).iter();
        match (xff.next(), xff.next()) {
            (Some(v), None) => v
                .to_str()
                .ok()
                .filter(|s| !s.contains(','))
                .and_then(|s| s.trim().parse().ok()),
            _ => None,
        }
    };
    ip.is_some_and(|ip| hcm.internal_cidrs.iter().any(|c| c.contains(ip)))
}

/// Mark an internal request (`x-envoy-internal: true`), or drop the
/// control headers a client outside may not send (and, at the edge, the
/// downstream-identity ones). Whether the client sent any `x-envoy-*`
/// header: one pass over the names, and nothing more when none is there.
pub fn internal_headers(h: &mut HeaderMap, internal: bool, edge: bool) -> bool {
    let any = h.keys().any(|k| k.as_str().starts_with("x-envoy-"));
    if internal {
        h.insert(&X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
        return any;
    }
    if any {
        for name in INTERNAL_ONLY {
            h.remove(name);
        }
        if edge {
            for name in EDGE_ONLY {
                h.remove(name);
            }
        }
    }
    // What is left of them steers nothing.
    false
}

/// A millisecond count header, removed (`x-envoy-upstream-rq-timeout-ms`
/// and the per-try one: the router consumes them). 0 means no timeout.
pub fn take_millis(h: &mut HeaderMap, name: &HeaderName) -> Option<std::time::Duration> {
    let v = h.remove(name)?;
    let ms: u64 = v.to_str().ok()?.trim().parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_the_same_static_or_formatted() {
        for n in [0, 1, 2, 9, 10, 11, 42, 99, 100, 4096] {
            assert_eq!(count_value(n), HeaderValue::from(n), "{n}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-foo"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-bar", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-bar"));
    }

    #[test]
    fn detects_websocket_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h, "websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        let id = request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(request_id(), request_id());
    }
}
