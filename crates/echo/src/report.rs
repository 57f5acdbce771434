//! The JSON body every echo answer carries. Field order here is the order on
//! the wire.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

/// The body of an echo answer.
#[derive(Debug, Serialize)]
pub struct EchoReport<'a> {
    pub service: &'a str,
    pub version: &'a str,
    pub pod: &'a str,
    pub namespace: &'a str,
    pub method: &'a str,
    /// Path and query exactly as received.
    pub path: &'a str,
    pub host: &'a str,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub proto: &'static str,
    /// Request headers, lower-case names, repeated values joined by `,`.
    pub headers: BTreeMap<&'a str, String>,
    /// The TCP peer (for a sidecar-fronted echo: the sidecar).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Answers of the outbound calls made by `/call`, in order.
    pub calls: Vec<CallReport>,
}

/// One outbound call made by `/call`.
#[derive(Debug, Serialize)]
pub struct CallReport {
    pub url: String,
    /// The upstream status, `null` if no response arrived.
    pub status: Option<u16>,
    /// The upstream body: parsed if it is JSON, else a string; `null` if no
    /// response arrived.
    pub body: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Request headers as the report shows them.
pub fn header_map(headers: &http::HeaderMap) -> BTreeMap<&str, String> {
    let mut out: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        out.entry(name.as_str())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_headers_are_joined() {
        let mut h = http::HeaderMap::new();
        h.append("x-a", "1".parse().expect("value"));
        h.append("x-a", "2".parse().expect("value"));
        h.append("x-b", "3".parse().expect("value"));
        let m = header_map(&h);
        assert_eq!(m["x-a"], "1,2");
        assert_eq!(m["x-b"], "3");
    }
}
