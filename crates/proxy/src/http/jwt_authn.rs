//! `envoy.filters.http.jwt_authn` as Envoy runs it: the first rule whose
//! match matches gives the requirement; tokens are taken from the
//! providers' locations and verified (format, issuer, `nbf`/`exp` with the
//! clock skew, audiences, then the signature against the JWKS: RS*, PS*,
//! ES256/384/512, EdDSA; `alg: none` is never accepted). A verified
//! token's payload goes to dynamic metadata (`payload_in_metadata`), and to
//! a header if asked; the token header is dropped unless `forward`. A
//! failure is answered 401 (403 for a wrong audience) with jwt_verify_lib's
//! message as the body and a `www-authenticate: Bearer realm=...` header.

use std::sync::OnceLock;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use aws_lc_rs::signature::{self, UnparsedPublicKey};

use super::body::ResponseBody;
use super::route_match::RequestView;
use crate::config::jwt_authn::{
    JwtAuthn, Location, Provider, PublicKey, Requirement, b64url, normalize_audience,
};
use crate::stats::{Counter, Stats};
use crate::stream_info::DynamicMetadata;

/// The dynamic metadata namespace verified payloads go to.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// The filter as configured in one HCM, with its counters.
#[derive(Debug)]
pub struct JwtFilter {
    pub config: JwtAuthn,
    stats: OnceLock<JwtStats>,
}

/// `http.<stat_prefix>.jwt_authn.*`.
#[derive(Debug, Clone)]
pub struct JwtStats {
    pub allowed: Counter,
    pub denied: Counter,
    pub cors_preflight_bypassed: Counter,
}

impl JwtFilter {
    pub fn new(config: JwtAuthn) -> JwtFilter {
        JwtFilter {
            config,
            stats: OnceLock::new(),
        }
    }

    pub fn stats(&self, registry: &Stats, hcm_prefix: &str) -> &JwtStats {
        self.stats.get_or_init(|| {
            let at = |n: &str| registry.counter(format!("http.{hcm_prefix}.jwt_authn.{n}"));
            JwtStats {
                allowed: at("allowed"),
                denied: at("denied"),
                cors_preflight_bypassed: at("cors_preflight_bypassed"),
            }
        })
    }
}

/// jwt_verify_lib's statuses that a request can end with (the message is
/// the local reply's body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure(pub &'static str);

const MISSED: Failure = Failure("Jwt is missing");
const AUDIENCE: Failure = Failure("Audiences in Jwt are not allowed");

/// A request change a verified token asks for (applied before the router).
#[derive(Debug)]
pub enum HeaderEdit {
    /// Set (Some) or remove (None) a header.
    Header(HeaderName, Option<HeaderValue>),
    /// Drop a query parameter (the token's, when not forwarded).
    RemoveParam(String),
}

/// What a verification changes: metadata and header edits.
struct Effects<'a> {
    metadata: &'a mut DynamicMetadata,
    edits: &'a mut Vec<HeaderEdit>,
}

/// Run the filter. Some(reply) ends the request.
pub(super) fn decode(
    filter: &JwtFilter,
    view: &RequestView<'_>,
    stats: &JwtStats,
    metadata: &mut DynamicMetadata,
    edits: &mut Vec<HeaderEdit>,
) -> Option<Response<ResponseBody>> {
    let config = &filter.config;
    let h = view.headers;
    if config.bypass_cors_preflight
        && view.method == Method::OPTIONS
        && h.get(header::ORIGIN).is_some_and(|v| !v.is_empty())
        && h.get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|v| !v.is_empty())
    {
        // Counted as allowed too, as Envoy does.
        stats.cors_preflight_bypassed.inc();
        stats.allowed.inc();
        return None;
    }
    let requirement = config
        .rules
        .iter()
        .find(|(m, _)| m.matches(view))
        .and_then(|(_, r)| r.as_ref());
    let Some(requirement) = requirement else {
        stats.allowed.inc();
        return None;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut fx = Effects { metadata, edits };
    match check(requirement, config, view, now, &mut fx) {
        Ok(()) => {
            stats.allowed.inc();
            None
        }
        Err(f) => {
            stats.denied.inc();
            tracing::debug!(reason = f.0, "jwt_authn: request denied");
            Some(failure_reply(f, view))
        }
    }
}

fn check(
    r: &Requirement,
    config: &JwtAuthn,
    view: &RequestView<'_>,
    now: u64,
    fx: &mut Effects<'_>,
) -> Result<(), Failure> {
    match r {
        Requirement::Provider(i) => {
            let p = &config.providers[*i];
            let tokens = extract(&p.locations, view);
            if tokens.is_empty() {
                return Err(MISSED);
            }
            for (token, loc) in tokens {
                verify(p, &token, now)?.apply(p, loc, fx);
            }
            Ok(())
        }
        Requirement::Any(list) => {
            let mut err = None;
            for r in list {
                match check(r, config, view, now, fx) {
                    Ok(()) => return Ok(()),
                    // A missing token says less than any other failure.
                    Err(f) if f == MISSED => {
                        err.get_or_insert(f);
                    }
                    Err(f) => {
                        err = Some(f);
                    }
                }
            }
            Err(err.unwrap_or(MISSED))
        }
        Requirement::All(list) => list
            .iter()
            .try_for_each(|r| check(r, config, view, now, fx)),
        Requirement::AllowMissing => any_provider(config, view, now, fx),
        Requirement::AllowMissingOrFailed => {
            let _ = any_provider(config, view, now, fx);
            Ok(())
        }
    }
}

/// Every token at any provider's location, each verified by the provider
/// of its issuer among those reading that location; no token is fine.
fn any_provider(
    config: &JwtAuthn,
    view: &RequestView<'_>,
    now: u64,
    fx: &mut Effects<'_>,
) -> Result<(), Failure> {
    let mut seen: Vec<&Location> = Vec::new();
    for p in &config.providers {
        for loc in &p.locations {
            if seen.iter().any(|l| same_location(l, loc)) {
                continue;
            }
            seen.push(loc);
            for (token, _) in extract(std::slice::from_ref(loc), view) {
                let iss = peek_issuer(&token);
                let provider = config.providers.iter().find(|q| {
                    q.locations.iter().any(|l| same_location(l, loc))
                        && (q.issuer.is_empty() || Some(q.issuer.as_str()) == iss.as_deref())
                });
                match provider {
                    Some(q) => verify(q, &token, now)?.apply(q, loc, fx),
                    None => {
                        // Parse errors first, then the unknown issuer.
                        parse(&token)?;
                        return Err(Failure("Jwt issuer is not configured"));
                    }
                }
            }
        }
    }
    Ok(())
}

fn same_location(a: &Location, b: &Location) -> bool {
    match (a, b) {
        (Location::Header(n, p), Location::Header(m, q)) => n == m && p == q,
        (Location::Param(a), Location::Param(b)) | (Location::Cookie(a), Location::Cookie(b)) => {
            a == b
        }
        _ => false,
    }
}

fn peek_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let v: serde_json::Value = serde_json::from_slice(&b64url(payload)?).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

/// The characters a JWT is made of (base64url and dots).
fn is_jwt_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// Tokens found at these locations, with where each was.
fn extract<'l>(locations: &'l [Location], view: &RequestView<'_>) -> Vec<(String, &'l Location)> {
    let mut out = Vec::new();
    let query = view.path.split_once('?').map(|(_, q)| q);
    for loc in locations {
        match loc {
            Location::Header(name, prefix) => {
                let Some(v) = view.headers.get(name).and_then(|v| v.to_str().ok()) else {
                    continue;
                };
                // After the prefix, the token starts at the first JWT
                // character and runs to the end of the value (Envoy).
                let t = if prefix.is_empty() {
                    v
                } else {
                    match v.find(prefix.as_str()) {
                        Some(i) => {
                            let rest = &v[i + prefix.len()..];
                            rest.find(is_jwt_char).map_or("", |j| &rest[j..])
                        }
                        None => continue,
                    }
                };
                out.push((t.to_string(), loc));
            }
            Location::Param(name) => {
                let Some(q) = query else { continue };
                for kv in q.split('&') {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    if k == name && !v.is_empty() {
                        let v = percent_decode(v);
                        out.push((v, loc));
                        break;
                    }
                }
            }
            Location::Cookie(name) => {
                for c in view.headers.get_all(header::COOKIE) {
                    let Ok(c) = c.to_str() else { continue };
                    let found = c.split(';').find_map(|kv| {
                        let (k, v) = kv.trim().split_once('=')?;
                        (k == name).then(|| v.trim_matches('"'))
                    });
                    if let Some(v) = found.filter(|v| !v.is_empty()) {
                        out.push((v.to_string(), loc));
                        break;
                    }
                }
            }
        }
    }
    out
}

fn percent_decode(v: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed token.
struct Jwt<'t> {
    alg: String,
    kid: Option<String>,
    payload: serde_json::Map<String, serde_json::Value>,
    payload_b64: &'t str,
    signed: &'t str,
    signature: Vec<u8>,
}

const ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

/// jwt_verify_lib's parse: three sections, header JSON with a known alg,
/// payload JSON with well-typed registered claims, base64url signature.
fn parse(token: &str) -> Result<Jwt<'_>, Failure> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(Failure(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(Failure(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ));
    }
    let header = b64url(h).ok_or(Failure("Jwt header is an invalid Base64url encoded"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| Failure("Jwt header is an invalid JSON"))?;
    let header = header
        .as_object()
        .ok_or(Failure("Jwt header is an invalid JSON"))?;
    let alg = header.get("alg").and_then(|a| a.as_str()).ok_or(Failure(
        "Jwt header [alg] field is required and must be a string",
    ))?;
    if !ALGS.contains(&alg) {
        return Err(Failure("Jwt header [alg] is not supported"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(serde_json::Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Failure("Jwt header [kid] field is not a string")),
    };
    let payload = b64url(p).ok_or(Failure("Jwt payload is an invalid Base64url encoded"))?;
    let payload: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|_| Failure("Jwt payload is an invalid JSON"))?;
    let serde_json::Value::Object(payload) = payload else {
        return Err(Failure("Jwt payload is an invalid JSON"));
    };
    for (claim, msg) in [
        ("iss", "Jwt payload [iss] field is not a string"),
        ("sub", "Jwt payload [sub] field is not a string"),
        ("jti", "Jwt payload [jti] field is not a string"),
    ] {
        if payload.get(claim).is_some_and(|v| !v.is_string()) {
            return Err(Failure(msg));
        }
    }
    for (claim, not_int, range) in [
        (
            "iat",
            "Jwt payload [iat] field is not an integer",
            "Jwt payload [iat] field is not a positive 64 bit integer",
        ),
        (
            "nbf",
            "Jwt payload [nbf] field is not an integer",
            "Jwt payload [nbf] field is not a positive 64 bit integer",
        ),
        (
            "exp",
            "Jwt payload [exp] field is not an integer",
            "Jwt payload [exp] field is not a positive 64 bit integer",
        ),
    ] {
        match payload.get(claim) {
            None => {}
            Some(v) if v.as_u64().is_some() => {}
            Some(v) if v.is_number() => return Err(Failure(range)),
            Some(_) => return Err(Failure(not_int)),
        }
    }
    match payload.get("aud") {
        None | Some(serde_json::Value::String(_)) => {}
        Some(serde_json::Value::Array(a)) if a.iter().all(|x| x.is_string()) => {}
        Some(_) => {
            return Err(Failure(
                "Jwt payload [aud] field is not a string or string list",
            ));
        }
    }
    let signature = b64url(s).ok_or(Failure("Jwt signature is an invalid Base64url encoded"))?;
    Ok(Jwt {
        alg: alg.to_string(),
        kid,
        payload,
        payload_b64: p,
        signed: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

/// What a verified token leaves behind.
struct Verified {
    payload: serde_json::Map<String, serde_json::Value>,
    payload_b64: String,
}

impl Verified {
    fn apply(self, p: &Provider, loc: &Location, fx: &mut Effects<'_>) {
        if !p.forward {
            match loc {
                Location::Header(name, _) => fx.edits.push(HeaderEdit::Header(name.clone(), None)),
                Location::Param(name) => fx.edits.push(HeaderEdit::RemoveParam(name.clone())),
                Location::Cookie(_) => {}
            }
        }
        if let Some(h) = &p.forward_payload_header {
            let mut v = self.payload_b64.clone();
            if p.pad_forward_payload_header {
                while !v.len().is_multiple_of(4) {
                    v.push('=');
                }
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                fx.edits.push(HeaderEdit::Header(h.clone(), Some(v)));
            }
        }
        for (h, path) in &p.claim_to_headers {
            let mut v = self.payload.get(&path[0]);
            for k in &path[1..] {
                v = v.and_then(|x| x.get(k));
            }
            let text = match v {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(serde_json::Value::Bool(b)) => b.to_string(),
                _ => continue,
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                fx.edits.push(HeaderEdit::Header(h.clone(), Some(v)));
            }
        }
        if let Some(key) = &p.payload_in_metadata {
            fx.metadata.set(
                METADATA_NAMESPACE,
                key.clone(),
                serde_json::Value::Object(self.payload),
            );
        }
    }
}

/// Verify one token for a provider, in jwt_verify_lib's order.
fn verify(p: &Provider, token: &str, now: u64) -> Result<Verified, Failure> {
    let jwt = parse(token)?;
    let iss = jwt
        .payload
        .get("iss")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if !p.issuer.is_empty() && iss != p.issuer {
        return Err(Failure("Jwt issuer is not configured"));
    }
    let claim = |c: &str| jwt.payload.get(c).and_then(|v| v.as_u64()).unwrap_or(0);
    if claim("nbf") > now.saturating_add(p.clock_skew) {
        return Err(Failure("Jwt not yet valid"));
    }
    let exp = claim("exp");
    if exp != 0 && now > exp.saturating_add(p.clock_skew) {
        return Err(Failure("Jwt is expired"));
    }
    if !p.audiences.is_empty() {
        let allowed = |a: &serde_json::Value| {
            a.as_str()
                .is_some_and(|a| p.audiences.iter().any(|x| x == normalize_audience(a)))
        };
        let ok = match jwt.payload.get("aud") {
            Some(serde_json::Value::Array(list)) => list.iter().any(allowed),
            Some(a) => allowed(a),
            None => false,
        };
        if !ok {
            return Err(AUDIENCE);
        }
    }
    let Some(keys) = &p.keys else {
        return Err(Failure("Jwks doesn't have any valid public key"));
    };
    let mut matched = false;
    for k in keys {
        if let (Some(want), Some(have)) = (&jwt.kid, &k.kid)
            && want != have
        {
            continue;
        }
        if k.alg.as_ref().is_some_and(|a| *a != jwt.alg) {
            continue;
        }
        matched = true;
        if signature_ok(&k.key, &jwt) {
            return Ok(Verified {
                payload_b64: jwt.payload_b64.to_string(),
                payload: jwt.payload,
            });
        }
    }
    if jwt.alg == "EdDSA" && jwt.signature.len() != 64 {
        return Err(Failure("Jwt ED25519 signature is wrong length"));
    }
    Err(Failure(if matched {
        "Jwt verification fails"
    } else {
        "Jwks doesn't have key to match kid or alg from Jwt"
    }))
}

fn signature_ok(key: &PublicKey, jwt: &Jwt<'_>) -> bool {
    let msg = jwt.signed.as_bytes();
    let sig = jwt.signature.as_slice();
    match (key, jwt.alg.as_str()) {
        (PublicKey::Rsa { n, e }, alg) => {
            let params: &signature::RsaParameters = match alg {
                "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return false,
            };
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, msg, sig)
                .is_ok()
        }
        (PublicKey::Ec { crv, point }, alg) => {
            let algorithm: &signature::EcdsaVerificationAlgorithm = match (alg, *crv) {
                ("ES256", "P-256") => &signature::ECDSA_P256_SHA256_FIXED,
                ("ES384", "P-384") => &signature::ECDSA_P384_SHA384_FIXED,
                ("ES512", "P-521") => &signature::ECDSA_P521_SHA512_FIXED,
                _ => return false,
            };
            UnparsedPublicKey::new(algorithm, point)
                .verify(msg, sig)
                .is_ok()
        }
        (PublicKey::Ed25519(x), "EdDSA") => UnparsedPublicKey::new(&signature::ED25519, x)
            .verify(msg, sig)
            .is_ok(),
        _ => false,
    }
}

/// Envoy's reply to a failed verification.
fn failure_reply(f: Failure, view: &RequestView<'_>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(f.0.to_string()));
    *resp.status_mut() = if f == AUDIENCE {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    let scheme = view
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http");
    // Envoy's buildOriginalUri: the path cut at 256 bytes.
    let mut end = view.path.len().min(256);
    while !view.path.is_char_boundary(end) {
        end -= 1;
    }
    let path = &view.path[..end];
    let mut realm = format!("Bearer realm=\"{scheme}://{}{path}\"", view.authority);
    if f != MISSED {
        realm.push_str(", error=\"invalid_token\"");
    }
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&realm) {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(f.0.len()));
    resp
}

/// Apply verified tokens' edits to the request.
pub(super) fn apply_edits(edits: Vec<HeaderEdit>, req: &mut http::Request<hyper::body::Incoming>) {
    for edit in edits {
        match edit {
            HeaderEdit::Header(name, Some(v)) => {
                req.headers_mut().insert(name, v);
            }
            HeaderEdit::Header(name, None) => {
                req.headers_mut().remove(name);
            }
            HeaderEdit::RemoveParam(name) => {
                let Some(pq) = req.uri().path_and_query() else {
                    continue;
                };
                let Some((path, query)) = pq.as_str().split_once('?') else {
                    continue;
                };
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name)
                    .collect();
                let new = if kept.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}?{}", kept.join("&"))
                };
                let mut parts = req.uri().clone().into_parts();
                if let Ok(pq) = new.parse() {
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
    }
}
