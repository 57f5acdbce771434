//! The `jwksUri` documents of RequestAuthentications, fetched by the pilot
//! (as istiod does) and inlined into each jwt_authn provider, so proxies
//! never fetch keys themselves. A cache keyed by URI: a document is fetched
//! when first needed and again after [`REFRESH_INTERVAL`]; a failed refresh
//! keeps the last good document; a URI never fetched successfully gets
//! [`crate::translate::jwt::FAKE_JWKS`] (every token fails, requests
//! without one still pass unless a policy asks for a principal).
//!
//! Plain `http://` URIs are fetched; `https://` needs a trust store the pilot
//! does not carry yet, so such a URI counts as a failed fetch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mesh::Mesh;

/// Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL` default.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// A fetch slower than this fails (the rule's `timeout` when set).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const MAX_BYTES: usize = 1 << 20;

#[derive(Clone)]
struct Entry {
    doc: Option<String>,
    fetched: Instant,
}

/// Fetched documents by URI.
pub struct JwksCache {
    entries: Mutex<HashMap<String, Entry>>,
    refresh: Duration,
}

impl Default for JwksCache {
    fn default() -> Self {
        JwksCache::new(REFRESH_INTERVAL)
    }
}

/// The `jwksUri`s the mesh needs (rules without inline `jwks`), with each
/// one's fetch timeout.
pub fn uris(mesh: &Mesh) -> BTreeMap<String, Duration> {
    let mut out = BTreeMap::new();
    for p in &mesh.request_authentications {
        for r in &p.spec.jwt_rules {
            if r.jwks.as_deref().is_some_and(|j| !j.is_empty()) {
                continue;
            }
            if let Some(uri) = r.jwks_uri.as_deref().filter(|u| !u.is_empty()) {
                let timeout = r
                    .timeout
                    .as_ref()
                    .map(|d| d.get())
                    .unwrap_or(DEFAULT_TIMEOUT);
                out.insert(uri.to_string(), timeout);
            }
        }
    }
    out
}

impl JwksCache {
    pub fn new(refresh: Duration) -> Self {
        JwksCache {
            entries: Mutex::new(HashMap::new()),
            refresh,
        }
    }

    /// The documents for `uris`, fetching those missing or older than the
    /// refresh interval (concurrently). URIs no longer asked for are
    /// forgotten.
    pub async fn resolve(&self, uris: &BTreeMap<String, Duration>) -> BTreeMap<String, String> {
        let now = Instant::now();
        let stale: Vec<(String, Duration)> = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.retain(|u, _| uris.contains_key(u));
            uris.iter()
                .filter(|(u, _)| {
                    entries.get(*u).is_none_or(|e| {
                        now.duration_since(e.fetched) >= self.refresh || e.doc.is_none()
                    })
                })
                .map(|(u, t)| (u.clone(), *t))
                .collect()
        };
        let fetched = futures::future::join_all(stale.iter().map(|(u, t)| async move {
            let r = tokio::time::timeout(*t, fetch(u))
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {t:?}")));
            (u.clone(), r)
        }))
        .await;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (uri, r) in fetched {
            match r {
                Ok(doc) => {
                    entries.insert(
                        uri,
                        Entry {
                            doc: Some(doc),
                            fetched: now,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(%uri, error = %e, "jwksUri fetch failed");
                    let entry = entries.entry(uri).or_insert(Entry {
                        doc: None,
                        fetched: now,
                    });
                    // Keep the last good document; retry at the next resolve.
                    if entry.doc.is_none() {
                        entry.fetched = now;
                    }
                }
            }
        }
        entries
            .iter()
            .filter_map(|(u, e)| Some((u.clone(), e.doc.clone()?)))
            .collect()
    }
}

/// GET an `http://` URI; the body must be a JWKS (`{"keys": [...]}`).
pub async fn fetch(uri: &str) -> Result<String, String> {
    let rest = uri
        .strip_prefix("http://")
        .ok_or_else(|| format!("unsupported scheme in {uri} (only http:// is fetched)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("no host in {uri}"));
    }
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: halyard-pilot\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_BYTES {
            return Err(format!("response larger than {MAX_BYTES} bytes"));
        }
    }
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated response")?;
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "non-UTF-8 headers")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("bad status line")?;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let raw = &buf[head_end + 4..];
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    let text = String::from_utf8(body).map_err(|_| "non-UTF-8 body")?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    if !v.get("keys").is_some_and(serde_json::Value::is_array) {
        return Err("not a JWKS (no `keys` array)".into());
    }
    Ok(text)
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).map_err(|_| "bad chunk")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Fill `mesh.jwks` from the cache.
pub async fn fill(cache: &JwksCache, mesh: &mut Mesh) {
    let uris = uris(mesh);
    mesh.jwks = if uris.is_empty() {
        BTreeMap::new()
    } else {
        cache.resolve(&uris).await
    };
}

/// The URIs whose document changed between two fills.
pub fn changed(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> BTreeSet<String> {
    old.keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve(responses: Vec<&'static str>) -> (String, tokio::task::JoinHandle<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut served = 0;
            for r in responses {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(r.as_bytes()).await;
                served += 1;
            }
            served
        });
        (format!("http://{addr}/jwks"), task)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"keys\":[]}";
    const CHUNKED: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"key\r\n6\r\ns\":[]}\r\n0\r\n\r\n";
    const FAIL: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";

    #[tokio::test]
    async fn fetches_plain_and_chunked_documents() {
        let (uri, task) = serve(vec![OK, CHUNKED, FAIL]).await;
        assert_eq!(fetch(&uri).await.expect("ok"), "{\"keys\":[]}");
        assert_eq!(fetch(&uri).await.expect("chunked"), "{\"keys\":[]}");
        assert!(fetch(&uri).await.unwrap_err().contains("500"));
        assert_eq!(task.await.expect("server"), 3);
        assert!(fetch("https://example.invalid/jwks").await.is_err());
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_good_document() {
        let (uri, _task) = serve(vec![OK, FAIL]).await;
        // Refresh on every resolve.
        let cache = JwksCache::new(Duration::ZERO);
        let uris: BTreeMap<String, Duration> = [(uri.clone(), Duration::from_secs(2))].into();
        assert_eq!(
            cache.resolve(&uris).await.get(&uri).map(String::as_str),
            Some("{\"keys\":[]}")
        );
        assert_eq!(
            cache.resolve(&uris).await.get(&uri).map(String::as_str),
            Some("{\"keys\":[]}")
        );
        // Unreachable: never fetched, so no document (the fake key is used).
        let gone: BTreeMap<String, Duration> = [(
            "http://127.0.0.1:1/jwks".to_string(),
            Duration::from_secs(2),
        )]
        .into();
        assert!(cache.resolve(&gone).await.is_empty());
    }
}
