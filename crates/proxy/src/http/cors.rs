//! The CORS filter (`envoy.filters.http.cors`) as Envoy runs it: a
//! preflight from an allowed origin is answered here; an allowed actual
//! request gets the allow-origin, credentials and expose headers on its
//! response. Requests without an `Origin` are not CORS requests.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::router::Mutations;
use crate::config::cors::CorsConfig;
use crate::stats::HttpStats;
use crate::upstream::lb::random;

/// Run the filter's request half. Some(reply) answers a preflight here.
pub(super) fn decode(
    policy: &Arc<CorsConfig>,
    req: &Request<Incoming>,
    mutations: &mut Mutations,
    stats: &HttpStats,
) -> Option<Response<ResponseBody>> {
    let origin = req.headers().get(header::ORIGIN)?;
    if origin.is_empty() || !policy.enabled.hit(random()) {
        return None;
    }
    let allowed = origin.to_str().is_ok_and(|o| policy.allows(o));
    if allowed {
        stats.cors_origin_valid.inc();
    } else {
        stats.cors_origin_invalid.inc();
    }
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|m| !m.is_empty());
    if allowed {
        // The response half adds the origin, credentials and exposed
        // headers, to the preflight's own answer too.
        mutations.cors = Some((origin.clone(), policy.clone()));
    }
    if !preflight || (!allowed && policy.forward_not_matching_preflights) {
        return None;
    }
    // Envoy's preflight answer: the policy's lists whatever the origin
    // (only the allow-origin says whether it may).
    let mut resp = Response::new(ResponseBody::local(String::new()));
    let h = resp.headers_mut();
    if policy.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    for (name, value) in [
        (header::ACCESS_CONTROL_ALLOW_METHODS, &policy.allow_methods),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, &policy.allow_headers),
        (header::ACCESS_CONTROL_MAX_AGE, &policy.max_age),
    ] {
        if let Some(v) = value {
            h.insert(name, v.clone());
        }
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Some(resp)
}

/// The response half for an allowed actual request.
pub(super) fn encode(policy: &CorsConfig, origin: &HeaderValue, h: &mut HeaderMap) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if policy.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &policy.expose_headers {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
}
