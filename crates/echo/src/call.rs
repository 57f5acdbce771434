//! `/call`: outbound HTTP/1.1 calls made on behalf of the request, with the
//! tracing and routing headers forwarded so that a chain of echoes shows up as
//! one trace and keeps its canary routing.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::report::CallReport;

/// Time allowed for one call, from connect to the last body byte.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest upstream body embedded in the report.
const MAX_CALL_BODY: usize = 4 * 1024 * 1024;

/// Inbound headers copied onto every outbound call.
pub const FORWARDED_HEADERS: [&str; 9] = [
    "x-request-id",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "traceparent",
    "tracestate",
    "x-canary",
];

/// The shared, pooled outbound client (HTTP/1.1 only).
pub type OutboundClient = Client<HttpConnector, Empty<Bytes>>;

pub fn outbound_client() -> OutboundClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

/// Why a call has no answer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("invalid url: {0}")]
    InvalidUrl(http::uri::InvalidUri),
    #[error("unsupported url: only http://host[:port]/path is supported")]
    UnsupportedUrl,
    #[error("invalid request: {0}")]
    Request(http::Error),
    #[error("request failed: {}", chain(.0))]
    Send(hyper_util::client::legacy::Error),
    #[error("reading body failed: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("timed out after {CALL_TIMEOUT:?}")]
    Timeout,
}

/// An error and its sources on one line: hyper's top-level messages alone
/// ("client error (Connect)") do not say what went wrong.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Makes the calls one after another, in the order given.
pub async fn call_all(
    client: &OutboundClient,
    urls: &[String],
    inbound: &HeaderMap,
) -> Vec<CallReport> {
    let mut reports = Vec::with_capacity(urls.len());
    for url in urls {
        let report = match tokio::time::timeout(CALL_TIMEOUT, call(client, url, inbound)).await {
            Ok(Ok((status, body))) => CallReport {
                url: url.clone(),
                status: Some(status),
                body: Some(body_value(body)),
                error: None,
            },
            Ok(Err(err)) => failed(url, err),
            Err(_) => failed(url, CallError::Timeout),
        };
        reports.push(report);
    }
    reports
}

fn failed(url: &str, err: CallError) -> CallReport {
    tracing::debug!(url, error = %err, "echo call failed");
    CallReport {
        url: url.to_owned(),
        status: None,
        body: None,
        error: Some(err.to_string()),
    }
}

async fn call(
    client: &OutboundClient,
    url: &str,
    inbound: &HeaderMap,
) -> Result<(u16, Bytes), CallError> {
    let uri: Uri = url.parse().map_err(CallError::InvalidUrl)?;
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.authority().is_none() {
        return Err(CallError::UnsupportedUrl);
    }
    let mut request = Request::get(uri)
        .body(Empty::new())
        .map_err(CallError::Request)?;
    let headers = request.headers_mut();
    for name in FORWARDED_HEADERS {
        for value in inbound.get_all(name) {
            headers.append(name, value.clone());
        }
    }
    let response = client.request(request).await.map_err(CallError::Send)?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_CALL_BODY)
        .collect()
        .await
        .map_err(CallError::Body)?
        .to_bytes();
    Ok((status, body))
}

/// JSON bodies are embedded as JSON, anything else as a string.
fn body_value(body: Bytes) -> serde_json::Value {
    serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(
            body_value(Bytes::from_static(br#"{"a":1}"#)),
            serde_json::json!({"a": 1})
        );
        assert_eq!(
            body_value(Bytes::from_static(b"ok")),
            serde_json::json!("ok")
        );
    }

    #[tokio::test]
    async fn bad_urls_are_reported_not_fatal() {
        let client = outbound_client();
        let urls = [
            "https://a/".to_owned(),
            "not a url".to_owned(),
            "/rel".to_owned(),
        ];
        let reports = call_all(&client, &urls, &HeaderMap::new()).await;
        assert_eq!(reports.len(), 3);
        for r in reports {
            assert!(r.status.is_none() && r.error.is_some(), "{r:?}");
        }
    }
}
