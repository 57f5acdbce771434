//! Response shaping: the query parameters (`status`, `delay`, `size`,
//! `header`, `url`) a test uses to tell the echo how to answer, and the
//! padding that makes a body exactly `size` bytes long.

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

/// Longest `?delay=` honoured; longer delays are clamped to this.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Largest `?size=` accepted, so one request cannot make the echo allocate
/// without bound.
pub const MAX_SIZE: usize = 16 * 1024 * 1024;

/// A query parameter the echo understands but could not parse. Answered with
/// a 400 so that a typo in a test shows up as a failure, not as a silently
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
                "delay" => shaping.delay = Some(parse_delay(&value)?),
                "size" => shaping.size = Some(parse_size(&value)?),
                "header" => shaping.headers.push(parse_header(&value)?),
                "url" => shaping.urls.push(value.into_owned()),
                _ => {}
            }
        }
        Ok(shaping)
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
