//! Who this echo instance is: service, version, pod and namespace, as given on
//! the command line or by the Kubernetes downward API, plus the response
//! headers and TCP greeting derived from them once at start-up.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

static X_ECHO_SERVICE: HeaderName = HeaderName::from_static("x-echo-service");
static X_ECHO_VERSION: HeaderName = HeaderName::from_static("x-echo-version");
static X_ECHO_POD: HeaderName = HeaderName::from_static("x-echo-pod");

/// The workload identity every answer carries.
#[derive(Debug, Clone)]
pub struct Workload {
    pub service: String,
    pub version: String,
    pub pod: String,
    pub namespace: String,
    /// `x-echo-service`, `x-echo-version`, `x-echo-pod`, validated once.
    pub service_header: HeaderValue,
    pub version_header: HeaderValue,
    pub pod_header: HeaderValue,
    /// First line of every TCP echo: `hello from SERVICE VERSION POD\n`.
    pub tcp_greeting: Bytes,
}

/// A name that cannot be sent as an HTTP header value.
#[derive(Debug, thiserror::Error)]
#[error("{field} {value:?} cannot be sent as an HTTP header value")]
pub struct InvalidIdentity {
    field: &'static str,
    value: String,
}

impl Workload {
    pub fn new(
        service: String,
        version: String,
        pod: String,
        namespace: String,
    ) -> Result<Self, InvalidIdentity> {
        let header = |field: &'static str, value: &str| {
            HeaderValue::from_str(value).map_err(|_| InvalidIdentity {
                field,
                value: value.to_owned(),
            })
        };
        let service_header = header("service", &service)?;
        let version_header = header("version", &version)?;
        let pod_header = header("pod", &pod)?;
        let pod_word = if pod.is_empty() { "-" } else { pod.as_str() };
        let tcp_greeting = Bytes::from(format!("hello from {service} {version} {pod_word}\n"));
        Ok(Self {
            service,
            version,
            pod,
            namespace,
            service_header,
            version_header,
            pod_header,
            tcp_greeting,
        })
    }

    /// Sets `x-echo-service`, `x-echo-version` and `x-echo-pod`.
    pub fn insert_headers(&self, headers: &mut HeaderMap) {
        headers.insert(X_ECHO_SERVICE.clone(), self.service_header.clone());
        headers.insert(X_ECHO_VERSION.clone(), self.version_header.clone());
        headers.insert(X_ECHO_POD.clone(), self.pod_header.clone());
    }
}
