//! Failing on purpose: how a request fails ([`FailWith`]) and which requests
//! fail ([`FaultPlan`]: the first K, the first K on each connection, or a
//! fraction counted exactly). The same plan comes from the command line
//! (server-wide) and from a request's own parameters; deciding is pure, the
//! counters live in [`crate::hits`].

use std::fmt;

use http::StatusCode;

/// How a failing request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailWith {
    /// `503`: the usual answer with this status.
    Status(StatusCode),
    /// `grpc-14`, `grpc-unavailable`: a trailers-only gRPC answer (HTTP 200)
    /// with this `grpc-status`.
    Grpc(tonic::Code),
    /// `close`: the connection is closed without an answer.
    Close,
    /// `rst`: the connection is reset (TCP RST) without an answer.
    Rst,
    /// `refused-stream`, `cancel`, `internal-error`: the h2 stream is reset
    /// with this code; an HTTP/1.1 request gets its connection reset instead.
    ResetStream(h2::Reason),
}

/// What `fail=` accepts, for error messages.
pub const FAIL_WANT: &str = "a status in 200..=599, grpc-N (0..=16), grpc-NAME (grpc-unavailable, \
     grpc-cancelled, ...), close, rst, refused-stream, cancel or internal-error";

/// What fraction parameters accept, for error messages.
pub const FRACTION_WANT: &str = "a fraction in 0..=1 such as 0.3 or 1/3";

/// What count parameters accept, for error messages.
pub const COUNT_WANT: &str = "a non-negative integer";

/// gRPC status names as in Envoy's `retry_on` (`resource-exhausted`), by code.
const GRPC_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

impl FailWith {
    /// Parses a `fail=` value (`FAIL_WANT` says what is accepted).
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let with = match value {
            "close" => Self::Close,
            "rst" => Self::Rst,
            "refused-stream" => Self::ResetStream(h2::Reason::REFUSED_STREAM),
            "cancel" => Self::ResetStream(h2::Reason::CANCEL),
            "internal-error" => Self::ResetStream(h2::Reason::INTERNAL_ERROR),
            _ => {
                if let Some(grpc) = value.strip_prefix("grpc-") {
                    let code = match grpc.parse::<u8>() {
                        Ok(code) => usize::from(code),
                        Err(_) => GRPC_NAMES.iter().position(|name| *name == grpc)?,
                    };
                    if code >= GRPC_NAMES.len() {
                        return None;
                    }
                    Self::Grpc(tonic::Code::from_i32(code as i32))
                } else {
                    let code = value.parse::<u16>().ok()?;
                    if !(200..=599).contains(&code) {
                        return None;
                    }
                    Self::Status(StatusCode::from_u16(code).ok()?)
                }
            }
        };
        Some(with)
    }

    /// The failure a triggered request gets when nobody said how: `503`, or
    /// `grpc-unavailable` for gRPC.
    pub fn default_for(grpc: bool) -> Self {
        if grpc {
            Self::Grpc(tonic::Code::Unavailable)
        } else {
            Self::Status(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

impl fmt::Display for FailWith {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "{}", status.as_u16()),
            Self::Grpc(code) => write!(f, "grpc-{}", GRPC_NAMES[*code as usize]),
            Self::Close => f.write_str("close"),
            Self::Rst => f.write_str("rst"),
            Self::ResetStream(reason) if *reason == h2::Reason::REFUSED_STREAM => {
                f.write_str("refused-stream")
            }
            Self::ResetStream(reason) if *reason == h2::Reason::CANCEL => f.write_str("cancel"),
            Self::ResetStream(_) => f.write_str("internal-error"),
        }
    }
}

/// A fraction `num/den` in 0..=1, kept exact so that "fail 30 %" fails
/// exactly 3 of every 10 requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    num: u64,
    den: u64,
}

impl Fraction {
    /// Parses `0.3`, `.25`, `1`, `0` (at most 9 decimals) or `1/3`.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let (num, den) = if let Some((num, den)) = value.split_once('/') {
            (digits(num)?, digits(den)?)
        } else {
            let (int, frac) = value.split_once('.').unwrap_or((value, ""));
            if (int.is_empty() && frac.is_empty()) || frac.len() > 9 {
                return None;
            }
            let int = if int.is_empty() { 0 } else { digits(int)? };
            let frac_num = if frac.is_empty() { 0 } else { digits(frac)? };
            let den = 10u64.pow(frac.len() as u32);
            (int.checked_mul(den)?.checked_add(frac_num)?, den)
        };
        (den > 0 && num <= den).then_some(Self { num, den })
    }

    /// Whether the `n`-th request (1-based) is one of the fraction: it is
    /// when `n * fraction` crosses an integer, so exactly `floor(N *
    /// fraction)` of the first N requests are (0.3: the 4th, 7th, 10th,
    /// 14th, ...; 1/2: every second).
    pub fn selects(self, n: u64) -> bool {
        let at = |n: u64| u128::from(n) * u128::from(self.num) / u128::from(self.den);
        n >= 1 && at(n) > at(n - 1)
    }
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a count (`fail_first=2`).
pub fn parse_count(value: &str) -> Option<u64> {
    digits(value.trim())
}

/// Which requests fail and how. Every trigger counts every request; a
/// request fails if any trigger picks it. A plan with `fail` and no trigger
/// fails every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub fail: Option<FailWith>,
    /// Fail requests 1..=K on the plan's counter.
    pub first: Option<u64>,
    /// Fail requests 1..=K on each connection.
    pub first_per_conn: Option<u64>,
    /// Fail this fraction of the plan's counter (see [`Fraction::selects`]).
    pub fraction: Option<Fraction>,
}

/// Which trigger of a plan picked a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Always,
    First,
    FirstPerConn,
    Fraction,
}

impl FaultPlan {
    /// Whether the plan counts on a counter of its own (`first`,
    /// `fraction`), as opposed to the connection's.
    pub fn counts(&self) -> bool {
        self.first.is_some() || self.fraction.is_some()
    }

    /// Which trigger picks the request that is the `n`-th on the plan's
    /// counter and the `conn_n`-th on its connection (both 1-based).
    pub fn trigger(&self, n: u64, conn_n: u64) -> Option<Trigger> {
        if !self.counts() && self.first_per_conn.is_none() {
            return self.fail.map(|_| Trigger::Always);
        }
        if self.first.is_some_and(|k| n <= k) {
            Some(Trigger::First)
        } else if self.first_per_conn.is_some_and(|k| conn_n <= k) {
            Some(Trigger::FirstPerConn)
        } else if self.fraction.is_some_and(|f| f.selects(n)) {
            Some(Trigger::Fraction)
        } else {
            None
        }
    }
}

impl Trigger {
    /// The name of what picked a request, as the query (`fail_first`) or the
    /// command line (`--fail-first`) spells it: the `x-echo-failed` header.
    pub fn name(self, server_wide: bool) -> &'static str {
        match (self, server_wide) {
            (Self::Always, false) => "fail",
            (Self::First, false) => "fail_first",
            (Self::FirstPerConn, false) => "fail_first_per_conn",
            (Self::Fraction, false) => "fail_fraction",
            (Self::Always, true) => "--fail",
            (Self::First, true) => "--fail-first",
            (Self::FirstPerConn, true) => "--fail-first-per-conn",
            (Self::Fraction, true) => "--fail-fraction",
        }
    }
}

/// clap value parser for `--fail`.
pub fn fail_arg(value: &str) -> Result<FailWith, String> {
    FailWith::parse(value).ok_or_else(|| format!("want {FAIL_WANT}"))
}

/// clap value parser for `--fail-fraction`.
pub fn fraction_arg(value: &str) -> Result<Fraction, String> {
    Fraction::parse(value).ok_or_else(|| format!("want {FRACTION_WANT}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_values() {
        let ok = [
            ("503", FailWith::Status(StatusCode::SERVICE_UNAVAILABLE)),
            (" 200 ", FailWith::Status(StatusCode::OK)),
            ("grpc-14", FailWith::Grpc(tonic::Code::Unavailable)),
            ("grpc-unavailable", FailWith::Grpc(tonic::Code::Unavailable)),
            (
                "grpc-resource-exhausted",
                FailWith::Grpc(tonic::Code::ResourceExhausted),
            ),
            ("grpc-0", FailWith::Grpc(tonic::Code::Ok)),
            ("grpc-16", FailWith::Grpc(tonic::Code::Unauthenticated)),
            ("close", FailWith::Close),
            ("rst", FailWith::Rst),
            (
                "refused-stream",
                FailWith::ResetStream(h2::Reason::REFUSED_STREAM),
            ),
            ("cancel", FailWith::ResetStream(h2::Reason::CANCEL)),
            (
                "internal-error",
                FailWith::ResetStream(h2::Reason::INTERNAL_ERROR),
            ),
        ];
        for (text, want) in ok {
            assert_eq!(FailWith::parse(text), Some(want), "{text:?}");
            // Display gives back a value parse accepts.
            assert_eq!(FailWith::parse(&want.to_string()), Some(want), "{want}");
        }
        for bad in [
            "",
            "99",
            "600",
            "abc",
            "grpc-17",
            "grpc-",
            "grpc-nope",
            "grpc--1",
            "reset",
            "CLOSE",
        ] {
            assert_eq!(FailWith::parse(bad), None, "{bad:?} should be rejected");
        }
    }

    #[test]
    fn fractions() {
        let f = |s| Fraction::parse(s).map(|f| (f.num, f.den));
        assert_eq!(f("0.3"), Some((3, 10)));
        assert_eq!(f(".25"), Some((25, 100)));
        assert_eq!(f("1"), Some((1, 1)));
        assert_eq!(f("1.0"), Some((10, 10)));
        assert_eq!(f("0"), Some((0, 1)));
        assert_eq!(f("1/3"), Some((1, 3)));
        for bad in [
            "",
            ".",
            "1.5",
            "2",
            "-0.5",
            "0.1234567890",
            "1/0",
            "4/3",
            "a",
            "0.3x",
            "1/-3",
            "+1",
        ] {
            assert_eq!(f(bad), None, "{bad:?} should be rejected");
        }
    }

    #[test]
    fn fraction_counts_exactly() {
        let picked = |s: &str, upto: u64| -> Vec<u64> {
            let f = Fraction::parse(s).expect("fraction");
            (1..=upto).filter(|n| f.selects(*n)).collect()
        };
        assert_eq!(picked("0.3", 20), [4, 7, 10, 14, 17, 20]);
        assert_eq!(picked("0.5", 6), [2, 4, 6]);
        assert_eq!(picked("1/3", 9), [3, 6, 9]);
        assert_eq!(picked("1", 3), [1, 2, 3]);
        assert!(picked("0", 100).is_empty());
        let f = Fraction::parse("0.37").expect("fraction");
        for n in [1, 10, 99, 1000, 12345] {
            let count = (1..=n).filter(|i| f.selects(*i)).count() as u64;
            assert_eq!(count, n * 37 / 100, "first {n}");
        }
        assert!(!f.selects(0));
    }

    #[test]
    fn triggers() {
        let plan = FaultPlan::default();
        assert_eq!(plan.trigger(1, 1), None);

        let always = FaultPlan {
            fail: Some(FailWith::Close),
            ..FaultPlan::default()
        };
        assert_eq!(always.trigger(7, 3), Some(Trigger::Always));

        let first = FaultPlan {
            first: Some(2),
            ..FaultPlan::default()
        };
        let got: Vec<_> = (1..=4).map(|n| first.trigger(n, 1)).collect();
        assert_eq!(
            got,
            [Some(Trigger::First), Some(Trigger::First), None, None]
        );

        let per_conn = FaultPlan {
            first_per_conn: Some(1),
            ..FaultPlan::default()
        };
        assert_eq!(per_conn.trigger(5, 1), Some(Trigger::FirstPerConn));
        assert_eq!(per_conn.trigger(6, 2), None);
        assert!(!per_conn.counts());

        // Any trigger fails the request.
        let both = FaultPlan {
            first: Some(1),
            fraction: Fraction::parse("1/2"),
            ..FaultPlan::default()
        };
        let got: Vec<_> = (1..=4).map(|n| both.trigger(n, n).is_some()).collect();
        assert_eq!(got, [true, true, false, true]);
    }
}
