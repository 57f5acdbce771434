//! The JWT filter (`envoy.filters.http.jwt_authn`) in Istio's shape (two
//! providers, inline JWKS, `requires_any` with `allow_missing`, payload in
//! metadata, payload header, token from a header, a param or a cookie),
//! followed by an RBAC filter on the payload metadata (requestPrincipals
//! `iss/sub`, a list claim, a nested claim), differential against stock
//! Envoy: keys are generated and tokens signed here (RS256/384/512, PS256,
//! ES256/384, EdDSA; expired, not yet valid, wrong issuer or audience, bad
//! signature, `alg: none`, unknown kid, malformed, missing), and both
//! proxies give the same status, body, `www-authenticate` and the same
//! request headers at the app, and the same jwt_authn and rbac counters.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// n and e of a PKCS#1 RSAPublicKey (DER).
fn rsa_n_e(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn len(b: &[u8], i: &mut usize) -> usize {
        let first = b[*i];
        *i += 1;
        if first < 0x80 {
            return first as usize;
        }
        let n = (first & 0x7f) as usize;
        let mut l = 0;
        for _ in 0..n {
            l = l << 8 | b[*i] as usize;
            *i += 1;
        }
        l
    }
    let mut i = 1;
    len(der, &mut i);
    let int = |i: &mut usize| {
        assert_eq!(der[*i], 2);
        *i += 1;
        let l = len(der, i);
        let v = der[*i..*i + l].to_vec();
        *i += l;
        let skip = v.iter().take_while(|b| **b == 0).count();
        v[skip..].to_vec()
    };
    let n = int(&mut i);
    let e = int(&mut i);
    (n, e)
}

struct Keys {
    rsa: RsaKeyPair,
    ec256: EcdsaKeyPair,
    ec384: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    /// Not in the JWKS.
    rogue: RsaKeyPair,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            rsa: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
            ec256: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            ec384: EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
            ed: Ed25519KeyPair::generate().unwrap(),
            rogue: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
        }
    }

    fn jwks(&self) -> String {
        let (n, e) = rsa_n_e(self.rsa.public_key().as_ref());
        let ec = |k: &EcdsaKeyPair, crv: &str, kid: &str| {
            let p = k.public_key().as_ref();
            let half = (p.len() - 1) / 2;
            format!(
                r#"{{"kty": "EC", "crv": "{crv}", "kid": "{kid}", "x": "{}", "y": "{}"}}"#,
                b64(&p[1..1 + half]),
                b64(&p[1 + half..])
            )
        };
        format!(
            r#"{{"keys": [{{"kty": "RSA", "kid": "rsa", "n": "{}", "e": "{}"}}, {}, {}, {{"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "{}"}}]}}"#,
            b64(&n),
            b64(&e),
            ec(&self.ec256, "P-256", "ec256"),
            ec(&self.ec384, "P-384", "ec384"),
            b64(self.ed.public_key().as_ref())
        )
    }

    /// A token with this header and payload, signed by `alg` (with the
    /// rogue RSA key when `rogue`).
    fn sign(&self, header: &serde_json::Value, payload: &serde_json::Value, alg: &str) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let rsa = |key: &RsaKeyPair, pad: &'static dyn signature::RsaEncoding| {
            let mut sig = vec![0; key.public_modulus_len()];
            key.sign(pad, &rng, signed.as_bytes(), &mut sig).unwrap();
            sig
        };
        let sig = match alg {
            "RS256" => rsa(&self.rsa, &signature::RSA_PKCS1_SHA256),
            "RS384" => rsa(&self.rsa, &signature::RSA_PKCS1_SHA384),
            "RS512" => rsa(&self.rsa, &signature::RSA_PKCS1_SHA512),
            "PS256" => rsa(&self.rsa, &signature::RSA_PSS_SHA256),
            "rogue" => rsa(&self.rogue, &signature::RSA_PKCS1_SHA256),
            "ES256" => self
                .ec256
                .sign(&rng, signed.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            "ES384" => self
                .ec384
                .sign(&rng, signed.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            "EdDSA" => self.ed.sign(signed.as_bytes()).as_ref().to_vec(),
            "none" => Vec::new(),
            other => panic!("alg {other}"),
        };
        format!("{signed}.{}", b64(&sig))
    }
}

const ISS: &str = "https://issuer.example";
const OTHER_ISS: &str = "https://other.example";

/// The token cases: (name, token).
fn tokens(k: &Keys) -> Vec<(&'static str, String)> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |iss: &str, sub: &str, extra: serde_json::Value| {
        let mut p = serde_json::json!({"iss": iss, "sub": sub, "aud": "api.example", "exp": now + 3600, "iat": now, "groups": ["dev", "admins"], "realm": {"role": "x"}});
        for (key, v) in extra.as_object().unwrap() {
            p[key] = v.clone();
        }
        p
    };
    let h = |alg: &str, kid: &str| serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let alice = claims(ISS, "alice", serde_json::json!({}));
    let good = k.sign(&h("RS256", "rsa"), &alice, "RS256");
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let other = b64(claims(ISS, "mallory", serde_json::json!({}))
            .to_string()
            .as_bytes());
        format!("{}.{}.{}", parts[0], other, parts[2])
    };
    vec![
        ("rs256", good.clone()),
        ("rs384", k.sign(&h("RS384", "rsa"), &alice, "RS384")),
        ("rs512", k.sign(&h("RS512", "rsa"), &alice, "RS512")),
        ("ps256", k.sign(&h("PS256", "rsa"), &alice, "PS256")),
        ("es256", k.sign(&h("ES256", "ec256"), &alice, "ES256")),
        ("es384", k.sign(&h("ES384", "ec384"), &alice, "ES384")),
        ("eddsa", k.sign(&h("EdDSA", "ed"), &alice, "EdDSA")),
        (
            "no-kid",
            k.sign(&serde_json::json!({"alg": "RS256"}), &alice, "RS256"),
        ),
        (
            "bob",
            k.sign(
                &h("RS256", "rsa"),
                &claims(ISS, "bob", serde_json::json!({})),
                "RS256",
            ),
        ),
        (
            "other-issuer",
            k.sign(
                &h("ES256", "ec256"),
                &claims(OTHER_ISS, "carol", serde_json::json!({})),
                "ES256",
            ),
        ),
        (
            "unknown-issuer",
            k.sign(
                &h("RS256", "rsa"),
                &claims("https://evil.example", "alice", serde_json::json!({})),
                "RS256",
            ),
        ),
        (
            "expired",
            k.sign(
                &h("RS256", "rsa"),
                &claims(ISS, "alice", serde_json::json!({"exp": now - 600})),
                "RS256",
            ),
        ),
        (
            "expired-within-skew",
            k.sign(
                &h("RS256", "rsa"),
                &claims(ISS, "alice", serde_json::json!({"exp": now - 20})),
                "RS256",
            ),
        ),
        (
            "not-yet-valid",
            k.sign(
                &h("RS256", "rsa"),
                &claims(ISS, "alice", serde_json::json!({"nbf": now + 600})),
                "RS256",
            ),
        ),
        (
            "nbf-within-skew",
            k.sign(
                &h("RS256", "rsa"),
                &claims(ISS, "alice", serde_json::json!({"nbf": now + 20})),
                "RS256",
            ),
        ),
        (
            "wrong-audience",
            k.sign(
                &h("RS256", "rsa"),
                &claims(ISS, "alice", serde_json::json!({"aud": "other.example"})),
                "RS256",
            ),
        ),
        (
            "audience-list-normalized",
            k.sign(
                &h("RS256", "rsa"),
                &claims(
                    ISS,
                    "alice",
                    serde_json::json!({"aud": ["x", "https://api.example/"]}),
                ),
                "RS256",
            ),
        ),
        (
            "no-audience",
            k.sign(
                &h("RS256", "rsa"),
                &serde_json::json!({"iss": ISS, "sub": "alice", "exp": now + 3600}),
                "RS256",
            ),
        ),
        ("bad-signature", tampered),
        ("rogue-key", k.sign(&h("RS256", "rsa"), &alice, "rogue")),
        (
            "alg-none",
            k.sign(&serde_json::json!({"alg": "none"}), &alice, "none"),
        ),
        (
            "hs256-no-key",
            format!("{}c2ln", k.sign(&h("HS256", "rsa"), &alice, "none")),
        ),
        ("unknown-kid", k.sign(&h("RS256", "nope"), &alice, "RS256")),
        (
            "two-parts",
            "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0".to_string(),
        ),
        ("bad-header", "!!!.eyJpc3MiOiJ4In0.c2ln".to_string()),
        (
            "header-not-json",
            format!("{}.eyJpc3MiOiJ4In0.c2ln", b64(b"not json")),
        ),
        (
            "exp-not-integer",
            k.sign(
                &h("RS256", "rsa"),
                &claims(ISS, "alice", serde_json::json!({"exp": "soon"})),
                "RS256",
            ),
        ),
        ("garbage", "garbage".to_string()),
    ]
}

const JWT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

fn filters(jwks: &str) -> String {
    let jwks = serde_json::to_string(jwks).unwrap();
    let jwt = format!(
        r#"{{name: envoy.filters.http.jwt_authn, typed_config: {{"@type": {JWT},
  providers: {{
    origins-0: {{issuer: "{ISS}", audiences: [api.example], local_jwks: {{inline_string: {jwks}}},
      from_headers: [{{name: Authorization, value_prefix: "Bearer "}}, {{name: x-jwt}}], from_params: [token], from_cookies: [session],
      forward_payload_header: x-jwt-payload, payload_in_metadata: payload, claim_to_headers: [{{header_name: x-sub, claim_name: sub}}, {{header_name: x-role, claim_name: realm.role}}]}},
    origins-1: {{issuer: "{OTHER_ISS}", local_jwks: {{inline_string: {jwks}}}, forward: true, payload_in_metadata: payload}}
  }},
  rules: [{{match: {{prefix: /}}, requires: {{requires_any: {{requirements: [{{provider_name: origins-0}}, {{provider_name: origins-1}}, {{allow_missing: {{}}}}]}}}}}}],
  bypass_cors_preflight: true}}}}"#
    );
    let rbac = format!(
        r#"{{name: envoy.filters.http.rbac, typed_config: {{"@type": {RBAC}, rules: {{policies: {{
    "ns[foo]-policy[open]-rule[0]": {{permissions: [{{not_rule: {{or_rules: {{rules: [{{url_path: {{path: {{prefix: /secure}}}}}}, {{url_path: {{path: {{prefix: /group}}}}}}, {{url_path: {{path: {{prefix: /nested}}}}}}]}}}}}}], principals: [{{any: true}}]}},
    "ns[foo]-policy[secure]-rule[0]": {{permissions: [{{url_path: {{path: {{prefix: /secure}}}}}}],
      principals: [{{and_ids: {{ids: [
        {{metadata: {{filter: envoy.filters.http.jwt_authn, path: [{{key: payload}}, {{key: iss}}], value: {{string_match: {{exact: "{ISS}"}}}}}}}},
        {{metadata: {{filter: envoy.filters.http.jwt_authn, path: [{{key: payload}}, {{key: sub}}], value: {{string_match: {{exact: alice}}}}}}}}]}}}}]}},
    "ns[foo]-policy[group]-rule[0]": {{permissions: [{{url_path: {{path: {{prefix: /group}}}}}}],
      principals: [{{metadata: {{filter: envoy.filters.http.jwt_authn, path: [{{key: payload}}, {{key: groups}}], value: {{list_match: {{one_of: {{string_match: {{exact: admins}}}}}}}}}}}}]}},
    "ns[foo]-policy[nested]-rule[0]": {{permissions: [{{url_path: {{path: {{prefix: /nested}}}}}}],
      principals: [{{metadata: {{filter: envoy.filters.http.jwt_authn, path: [{{key: payload}}, {{key: realm}}, {{key: role}}], value: {{string_match: {{exact: x}}}}}}}}]}}
  }}}}}}}}"#
    );
    format!(
        "          - {}\n          - {}\n",
        jwt.replace('\n', " "),
        rbac.replace('\n', " ")
    )
}

fn bootstrap(jwks: &str, backend: SocketAddr) -> String {
    let vhosts = "- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /}\n    route: {cluster: backend}";
    http_bootstrap("jwt", vhosts, &[("backend", backend)]).replace(
        "          - {name: envoy.filters.http.fault, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}}\n",
        &filters(jwks),
    )
}

/// A backend that answers with the request headers it got (minus the ones
/// each proxy makes up), sorted, one per line.
async fn header_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut lines: Vec<String> = req
                        .headers()
                        .iter()
                        .filter(|(k, _)| {
                            let k = k.as_str();
                            !k.starts_with("x-envoy-")
                                && !k.starts_with("x-forwarded-")
                                && k != "x-request-id"
                                && k != "content-length"
                        })
                        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                        .collect();
                    lines.sort();
                    lines.insert(0, format!("path: {}", req.uri()));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(lines.join("\n")))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// (name, method, path, headers).
type Case<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, String)>);

/// Status, www-authenticate, body.
type Seen = (u16, String, String);

async fn send(to: SocketAddr, method: &str, path: &str, headers: &[(&str, String)]) -> Seen {
    let s = tokio::net::TcpStream::connect(to).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "svc");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = tx
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, www, String::from_utf8_lossy(&body).into_owned())
}

async fn matrix(to: SocketAddr, tokens: &[(&'static str, String)]) -> Vec<(String, Seen)> {
    let mut out = Vec::new();
    let mut push = |name: String, seen: Seen| out.push((name, seen));
    for path in ["/anything?q=1", "/secure", "/group", "/nested"] {
        push(format!("{path} no token"), send(to, "GET", path, &[]).await);
        for (name, t) in tokens {
            let bearer = vec![("authorization", format!("Bearer {t}"))];
            push(
                format!("{path} {name} bearer"),
                send(to, "GET", path, &bearer).await,
            );
        }
    }
    let (_, good) = &tokens[0];
    let (_, expired) = tokens.iter().find(|(n, _)| *n == "expired").unwrap();
    let (_, other) = tokens.iter().find(|(n, _)| *n == "other-issuer").unwrap();
    let cases: Vec<Case> = vec![
        (
            "x-jwt header",
            "GET",
            "/secure",
            vec![("x-jwt", good.clone())],
        ),
        (
            "param",
            "GET",
            &*Box::leak(format!("/secure?token={good}").into_boxed_str()),
            vec![],
        ),
        (
            "cookie",
            "GET",
            "/secure",
            vec![("cookie", format!("a=b; session={good}"))],
        ),
        (
            "lowercase bearer",
            "GET",
            "/secure",
            vec![("authorization", format!("bearer {good}"))],
        ),
        (
            "access_token default param unused",
            "GET",
            &*Box::leak(format!("/secure?access_token={good}").into_boxed_str()),
            vec![],
        ),
        (
            "two tokens, second expired",
            "GET",
            "/anything",
            vec![
                ("authorization", format!("Bearer {good}")),
                ("x-jwt", expired.clone()),
            ],
        ),
        (
            "other issuer forwarded",
            "GET",
            "/anything",
            vec![("authorization", format!("Bearer {other}"))],
        ),
        (
            "expired, cors preflight",
            "OPTIONS",
            "/anything",
            vec![
                ("authorization", format!("Bearer {expired}")),
                ("origin", "https://a".into()),
                ("access-control-request-method", "GET".into()),
            ],
        ),
        (
            "expired, options without preflight",
            "OPTIONS",
            "/anything",
            vec![("authorization", format!("Bearer {expired}"))],
        ),
        (
            "token with trailing junk",
            "GET",
            "/secure",
            vec![("authorization", format!("Bearer {good} junk"))],
        ),
    ];
    for (name, method, path, headers) in cases {
        push(name.to_string(), send(to, method, path, &headers).await);
    }
    out
}

fn stats_of(body: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = body
        .lines()
        .filter(|l| {
            l.contains(".rbac.")
                || l.contains(".jwt_authn.allowed")
                || l.contains(".jwt_authn.denied")
                || l.contains("cors_preflight_bypassed")
        })
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn jwt_authn_matches_envoy() {
    let keys = Keys::new();
    let tokens = tokens(&keys);
    let app = header_echo().await;
    let yaml = bootstrap(&keys.jwks(), app);
    let proxy = start_static(&yaml).await;
    let ours = matrix(proxy.listener_addr("http").unwrap(), &tokens).await;
    let find = |d: &str| ours.iter().find(|(k, _)| k == d).unwrap().1.clone();
    assert_eq!(find("/secure rs256 bearer").0, 200);
    assert!(
        !find("/secure rs256 bearer").2.contains("authorization"),
        "the token is not forwarded"
    );
    assert!(find("/secure rs256 bearer").2.contains("x-sub: alice"));
    assert_eq!(find("/secure no token").0, 403);
    assert_eq!(find("/secure bob bearer").0, 403);
    assert_eq!(
        find("/anything?q=1 expired bearer"),
        (
            401,
            "Bearer realm=\"http://svc/anything?q=1\", error=\"invalid_token\"".into(),
            "Jwt is expired".into()
        )
    );
    assert_eq!(find("/anything?q=1 alg-none bearer").0, 401);
    assert_eq!(
        find("/anything?q=1 bad-signature bearer").2,
        "Jwt verification fails"
    );
    let (_, stats) = admin_get(proxy.admin_addr(), "/stats").await;
    let our_stats = stats_of(&stats);
    let Some(bin) = envoy::envoy_binary() else {
        eprintln!("no envoy binary: differential half skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let e = envoy::start(&bin, &yaml, dir.path()).await;
    let theirs = matrix(e.listener(Some("http")).await, &tokens).await;
    let differ: Vec<_> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("{}:\n  ours  {:?}\n  envoy {:?}", a.0, a.1, b.1))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} differ:\n{}",
        differ.len(),
        ours.len(),
        differ.join("\n")
    );
    let (_, envoy_stats) = admin_get(e.admin, "/stats").await;
    assert_eq!(our_stats, stats_of(&envoy_stats));
    eprintln!("{} requests identical; stats {our_stats:?}", ours.len());
}
