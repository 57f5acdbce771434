//! Response shaping: the query parameters (`status`, `delay`, `size`,
//! `header`, `url`, and the failure parameters `fail`, `fail_first`,
//! `fail_first_per_conn`, `fail_fraction`, `key`) a test uses to tell the
//! echo how to answer, the gRPC metadata that carries the same for gRPC, and
//! the padding that makes a body exactly `size` bytes long.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::faults::{
    COUNT_WANT, FAIL_WANT, FRACTION_WANT, FailWith, FaultPlan, Fraction, parse_count,
};

/// Longest `?delay=` honoured; longer delays are clamped to this.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Largest `?size=` accepted, so one request cannot make the echo allocate
/// without bound.
pub const MAX_SIZE: usize = 16 * 1024 * 1024;

/// Longest `key=` accepted.
pub const MAX_KEY_LEN: usize = 256;

/// The parameters a gRPC call can use too. gRPC has no query string, so
/// there they come as request metadata named `x-echo-` and the query name
/// with `-` for `_` (`x-echo-fail-first`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultParam {
    Fail,
    FailFirst,
    FailFirstPerConn,
    FailFraction,
    Key,
    Delay,
}

impl FaultParam {
    const ALL: [FaultParam; 6] = [
        Self::Fail,
        Self::FailFirst,
        Self::FailFirstPerConn,
        Self::FailFraction,
        Self::Key,
        Self::Delay,
    ];

    fn name(self, spelling: Spelling) -> &'static str {
        match (spelling, self) {
            (Spelling::Query, Self::Fail) => "fail",
            (Spelling::Query, Self::FailFirst) => "fail_first",
            (Spelling::Query, Self::FailFirstPerConn) => "fail_first_per_conn",
            (Spelling::Query, Self::FailFraction) => "fail_fraction",
            (Spelling::Query, Self::Key) => "key",
            (Spelling::Query, Self::Delay) => "delay",
            (Spelling::Metadata, Self::Fail) => "x-echo-fail",
            (Spelling::Metadata, Self::FailFirst) => "x-echo-fail-first",
            (Spelling::Metadata, Self::FailFirstPerConn) => "x-echo-fail-first-per-conn",
            (Spelling::Metadata, Self::FailFraction) => "x-echo-fail-fraction",
            (Spelling::Metadata, Self::Key) => "x-echo-key",
            (Spelling::Metadata, Self::Delay) => "x-echo-delay",
        }
    }
}

/// How a request spells its parameters.
#[derive(Debug, Clone, Copy)]
enum Spelling {
    Query,
    Metadata,
}

/// A query parameter (or gRPC metadata) the echo understands but could not
/// parse. Answered with a 400 (gRPC: INVALID_ARGUMENT) so that a typo in a test shows up as a failure, not as a silently
/// ignored parameter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapingError {
    #[error("invalid status {0:?}: want an integer in 200..=599")]
    Status(String),
    #[error("invalid delay {0:?}: want a duration such as 200ms, 1s or 1.5s")]
    Delay(String),
    #[error("invalid size {0:?}: want an integer in 0..={MAX_SIZE}")]
    Size(String),
    #[error("invalid header {0:?}: want name:value with a valid header name and value")]
    Header(String),
    /// A failure parameter; `param` as the request spelt it (query
    /// parameter or gRPC metadata name).
    #[error("invalid {param} {value:?}: want {want}")]
    Fault {
        param: &'static str,
        value: String,
        want: &'static str,
    },
    #[error("{param} needs {key} too: the counter it counts on (one key per test)")]
    NeedsKey {
        param: &'static str,
        key: &'static str,
    },
}

/// How the request asked to be answered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shaping {
    /// `?status=503`: the response status (default 200).
    pub status: Option<StatusCode>,
    /// `?delay=200ms`: time to wait before answering, at most [`MAX_DELAY`].
    pub delay: Option<Duration>,
    /// `?size=1024`: exact length of the response body in bytes.
    pub size: Option<usize>,
    /// `?header=name:value` (repeatable): extra response headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `?url=...` (repeatable): outbound calls, used by `/call` only.
    pub urls: Vec<String>,
    /// `?fail=`, `?fail_first=`, `?fail_first_per_conn=`, `?fail_fraction=`:
    /// the request's own failure plan.
    pub fault: FaultPlan,
    /// `?key=abc`: the counter `fail_first` and `fail_fraction` count on,
    /// also reported per key by `/hits`.
    pub key: Option<String>,
}

impl Shaping {
    /// Parses a (still percent-encoded) query string. Unknown parameters are
    /// ignored, so cache-busting parameters and the like are harmless.
    pub fn from_query(query: Option<&str>) -> Result<Self, ShapingError> {
        let mut shaping = Shaping::default();
        let Some(query) = query else {
            return Ok(shaping);
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "status" => shaping.status = Some(parse_status(&value)?),
                "size" => shaping.size = Some(parse_size(&value)?),
                "header" => shaping.headers.push(parse_header(&value)?),
                "url" => shaping.urls.push(value.into_owned()),
                name => {
                    let param = FaultParam::ALL
                        .into_iter()
                        .find(|p| p.name(Spelling::Query) == name);
                    if let Some(param) = param {
                        shaping.set_fault_param(param, Spelling::Query, &value)?;
                    }
                }
            }
        }
        shaping.check_key(Spelling::Query)?;
        Ok(shaping)
    }

    /// Reads the parameters of a gRPC call from its metadata
    /// (`x-echo-fail`, ...); errors name the metadata.
    pub fn from_grpc_metadata(headers: &HeaderMap) -> Result<Self, ShapingError> {
        let mut shaping = Shaping::default();
        for param in FaultParam::ALL {
            let name = param.name(Spelling::Metadata);
            let Some(value) = headers.get(name) else {
                continue;
            };
            let value = value.to_str().map_err(|_| ShapingError::Fault {
                param: name,
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                want: "visible ASCII",
            })?;
            shaping.set_fault_param(param, Spelling::Metadata, value)?;
        }
        shaping.check_key(Spelling::Metadata)?;
        Ok(shaping)
    }

    fn set_fault_param(
        &mut self,
        param: FaultParam,
        spelling: Spelling,
        value: &str,
    ) -> Result<(), ShapingError> {
        let invalid = |want| ShapingError::Fault {
            param: param.name(spelling),
            value: value.to_owned(),
            want,
        };
        let count = || parse_count(value).ok_or_else(|| invalid(COUNT_WANT));
        match param {
            FaultParam::Delay => self.delay = Some(parse_delay(value)?),
            FaultParam::Fail => {
                self.fault.fail = Some(FailWith::parse(value).ok_or_else(|| invalid(FAIL_WANT))?);
            }
            FaultParam::FailFirst => self.fault.first = Some(count()?),
            FaultParam::FailFirstPerConn => self.fault.first_per_conn = Some(count()?),
            FaultParam::FailFraction => {
                let fraction = Fraction::parse(value).ok_or_else(|| invalid(FRACTION_WANT))?;
                self.fault.fraction = Some(fraction);
            }
            FaultParam::Key => {
                if value.is_empty() || value.len() > MAX_KEY_LEN {
                    return Err(invalid("a non-empty key of at most 256 bytes"));
                }
                self.key = Some(value.to_owned());
            }
        }
        Ok(())
    }

    /// `fail_first` and `fail_fraction` count on their key: without one,
    /// every test sharing the echo would count on the same counter.
    fn check_key(&self, spelling: Spelling) -> Result<(), ShapingError> {
        if self.key.is_some() {
            return Ok(());
        }
        let param = if self.fault.first.is_some() {
            FaultParam::FailFirst
        } else if self.fault.fraction.is_some() {
            FaultParam::FailFraction
        } else {
            return Ok(());
        };
        Err(ShapingError::NeedsKey {
            param: param.name(spelling),
            key: FaultParam::Key.name(spelling),
        })
    }
}

fn parse_status(value: &str) -> Result<StatusCode, ShapingError> {
    value
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| ShapingError::Status(value.to_owned()))
}

/// Parses `250ms`, `1s`, `1.5s`, `2m`, or `0`. Clamped to [`MAX_DELAY`].
pub fn parse_delay(value: &str) -> Result<Duration, ShapingError> {
    let err = || ShapingError::Delay(value.to_owned());
    let trimmed = value.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let (number, unit_secs) = if let Some(n) = trimmed.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = trimmed.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = trimmed.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(err());
    };
    let number: f64 = number.parse().map_err(|_| err())?;
    if !number.is_finite() || number < 0.0 {
        return Err(err());
    }
    let secs = (number * unit_secs).min(MAX_DELAY.as_secs_f64());
    Ok(Duration::from_secs_f64(secs))
}

fn parse_size(value: &str) -> Result<usize, ShapingError> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|size| *size <= MAX_SIZE)
        .ok_or_else(|| ShapingError::Size(value.to_owned()))
}

fn parse_header(value: &str) -> Result<(HeaderName, HeaderValue), ShapingError> {
    let err = || ShapingError::Header(value.to_owned());
    let (name, val) = value.split_once(':').ok_or_else(err)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| err())?;
    let val = HeaderValue::from_str(val.trim()).map_err(|_| err())?;
    Ok((name, val))
}

/// What a sized body is: still JSON, or plain filler because the JSON did not
/// fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Filler,
}

/// `,"pad":""` — the bytes a pad field costs before its content.
const PAD_OVERHEAD: usize = 9;

/// Makes `json` (a compact JSON object, `{...}`) exactly `size` bytes long:
///
/// * room for a pad field: `,"pad":"xxx…"` is added before the closing brace;
/// * a few bytes too short for that: trailing spaces (still valid JSON);
/// * smaller than the JSON itself: `size` bytes of `x`, sent as text/plain.
pub fn fit_body(mut json: Vec<u8>, size: Option<usize>) -> (Vec<u8>, BodyKind) {
    let Some(size) = size else {
        return (json, BodyKind::Json);
    };
    let len = json.len();
    if size < len || json.last() != Some(&b'}') {
        return (vec![b'x'; size], BodyKind::Filler);
    }
    if size >= len + PAD_OVERHEAD {
        let pad = size - len - PAD_OVERHEAD;
        json.pop();
        json.reserve_exact(PAD_OVERHEAD + pad + 1);
        json.extend_from_slice(b",\"pad\":\"");
        json.resize(json.len() + pad, b'x');
        json.extend_from_slice(b"\"}");
    } else {
        json.resize(size, b' ');
    }
    (json, BodyKind::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays() {
        assert_eq!(parse_delay("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_delay("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_delay("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("2m"), Ok(MAX_DELAY));
        assert_eq!(parse_delay("3600s"), Ok(MAX_DELAY));
        for bad in ["", "5", "s", "-1s", "1h", "NaNs", "infs", "1.5.s"] {
            assert!(parse_delay(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn query() {
        let s = Shaping::from_query(Some(
            "status=503&delay=10ms&size=10&header=x-a:%20b&header=x-c:d:e&url=http%3A%2F%2Fa%3A1%2Fp%3Fq%3D1&other=1",
        ))
        .expect("valid query");
        assert_eq!(s.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(s.delay, Some(Duration::from_millis(10)));
        assert_eq!(s.size, Some(10));
        assert_eq!(s.headers.len(), 2);
        assert_eq!(s.headers[0].0, "x-a");
        assert_eq!(s.headers[0].1, "b");
        assert_eq!(s.headers[1].1, "d:e");
        assert_eq!(s.urls, ["http://a:1/p?q=1"]);
        assert_eq!(Shaping::from_query(None), Ok(Shaping::default()));
    }

    #[test]
    fn bad_query_values() {
        for q in [
            "status=99",
            "status=600",
            "status=abc",
            "size=-1",
            "size=99999999999",
            "header=novalue",
            "header=bad%20name:v",
            "header=x:bad%0Avalue",
            "delay=soon",
        ] {
            assert!(
                Shaping::from_query(Some(q)).is_err(),
                "{q:?} should be rejected"
            );
        }
    }

    #[test]
    fn fault_query() {
        let s = Shaping::from_query(Some(
            "fail=close&fail_first=2&fail_first_per_conn=1&fail_fraction=1%2F3&key=t-1&delay=5ms",
        ))
        .expect("valid query");
        assert_eq!(s.fault.fail, Some(FailWith::Close));
        assert_eq!(s.fault.first, Some(2));
        assert_eq!(s.fault.first_per_conn, Some(1));
        assert_eq!(s.fault.fraction, Fraction::parse("1/3"));
        assert_eq!(s.key.as_deref(), Some("t-1"));
        assert_eq!(s.delay, Some(Duration::from_millis(5)));

        // Per-connection counting and plain `fail` need no key.
        assert!(Shaping::from_query(Some("fail_first_per_conn=1")).is_ok());
        assert!(Shaping::from_query(Some("fail=503")).is_ok());
        assert_eq!(
            Shaping::from_query(Some("fail_first=2")),
            Err(ShapingError::NeedsKey {
                param: "fail_first",
                key: "key"
            })
        );
        let err = Shaping::from_query(Some("fail=reset")).expect_err("bad fail");
        assert!(
            err.to_string().starts_with("invalid fail \"reset\": want"),
            "{err}"
        );
        for q in [
            "fail_first=-1&key=a",
            "fail_first=x&key=a",
            "fail_first_per_conn=1.5",
            "fail_fraction=1.5&key=a",
            "fail_fraction=0.5",
            "fail=grpc-99",
            "key=",
        ] {
            assert!(
                Shaping::from_query(Some(q)).is_err(),
                "{q:?} should be rejected"
            );
        }
    }

    #[test]
    fn fault_metadata() {
        let mut h = HeaderMap::new();
        h.insert("x-echo-fail", "grpc-unavailable".parse().expect("value"));
        h.insert("x-echo-fail-first", "2".parse().expect("value"));
        h.insert("x-echo-key", "g".parse().expect("value"));
        h.insert("x-echo-delay", "1s".parse().expect("value"));
        let s = Shaping::from_grpc_metadata(&h).expect("valid metadata");
        assert_eq!(s.fault.fail, Some(FailWith::Grpc(tonic::Code::Unavailable)));
        assert_eq!(s.fault.first, Some(2));
        assert_eq!(s.key.as_deref(), Some("g"));
        assert_eq!(s.delay, Some(Duration::from_secs(1)));

        h.remove("x-echo-key");
        let err = Shaping::from_grpc_metadata(&h).expect_err("no key");
        assert_eq!(
            err.to_string(),
            "x-echo-fail-first needs x-echo-key too: the counter it counts on (one key per test)"
        );
        h.insert("x-echo-fail-fraction", "lots".parse().expect("value"));
        let err = Shaping::from_grpc_metadata(&h).expect_err("bad fraction");
        assert!(
            err.to_string().starts_with("invalid x-echo-fail-fraction"),
            "{err}"
        );
    }

    #[test]
    fn fit_body_is_exact_and_valid() {
        let json = br#"{"a":"b"}"#.to_vec();
        assert_eq!(fit_body(json.clone(), None), (json.clone(), BodyKind::Json));
        for size in 0..64 {
            let (body, kind) = fit_body(json.clone(), Some(size));
            assert_eq!(body.len(), size);
            if size >= json.len() {
                assert_eq!(kind, BodyKind::Json);
                let v: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
                assert_eq!(v["a"], "b");
            } else {
                assert_eq!(kind, BodyKind::Filler);
                assert!(body.iter().all(|b| *b == b'x'));
            }
        }
        let (body, _) = fit_body(json.clone(), Some(json.len() + PAD_OVERHEAD + 3));
        assert_eq!(body, br#"{"a":"b","pad":"xxx"}"#);
    }
}
