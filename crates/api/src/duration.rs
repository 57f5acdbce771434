//! Istio durations: the Go `time.ParseDuration` syntax Istio accepts in YAML
//! (`"5s"`, `"1.5m"`, `"100ms"`, `"1h30m"`, `"0.5s"`), held as a `std::time::Duration`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written as a Go duration string.
///
/// Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`; a value is one or more
/// `NUMBER UNIT` pairs (`"1h30m"`); numbers may have a fraction (`"1.5s"`).
/// `"0"` alone is zero. Negative values, missing units and bare numbers
/// (`5`, not `"5s"`) are rejected. Serialises back as seconds (`"1.5s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The wrapped `std::time::Duration`.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whole milliseconds, saturating.
    pub fn as_millis_u64(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (expected e.g. \"5s\", \"100ms\", \"1.5m\", \"1h30m\")"
)]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty string"));
        }
        if s.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        if s == "0" {
            return Ok(Duration::default());
        }
        let mut rest = s;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (num, after) = rest.split_at(num_len);
            if num.is_empty() || num == "." || num.matches('.').count() > 1 {
                return Err(err("expected a number"));
            }
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            if unit.is_empty() {
                return Err(err("missing unit (ns, us, ms, s, m, h)"));
            }
            let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
                return Err(err("unknown unit (expected ns, us, ms, s, m, h)"));
            };
            let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
            let whole: u128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| err("number too large"))?
            };
            let mut nanos = whole.checked_mul(scale).ok_or_else(|| err("too large"))?;
            // Fraction: keep at most 18 digits, enough for nanosecond precision of hours.
            let mut divisor: u128 = 1;
            let mut frac_val: u128 = 0;
            for d in frac.bytes().take(18) {
                frac_val = frac_val * 10 + u128::from(d - b'0');
                divisor *= 10;
            }
            nanos = nanos
                .checked_add(frac_val * scale / divisor)
                .ok_or_else(|| err("too large"))?;
            total_nanos = total_nanos
                .checked_add(nanos)
                .ok_or_else(|| err("too large"))?;
            rest = next;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
        let sub = (total_nanos % 1_000_000_000) as u32;
        Ok(Duration(std::time::Duration::new(secs, sub)))
    }
}

impl fmt::Display for Duration {
    /// Seconds with the shortest exact fraction: `5s`, `0.1s`, `1.000000001s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"5s\" or \"100ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    fn p(s: &str) -> Result<Std, DurationError> {
        s.parse::<Duration>().map(Duration::get)
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(p("5s").unwrap(), Std::from_secs(5));
        assert_eq!(p("1.5m").unwrap(), Std::from_secs(90));
        assert_eq!(p("100ms").unwrap(), Std::from_millis(100));
        assert_eq!(p("1h").unwrap(), Std::from_secs(3600));
        assert_eq!(p("0.5s").unwrap(), Std::from_millis(500));
        assert_eq!(p(".5s").unwrap(), Std::from_millis(500));
        assert_eq!(p("1h30m").unwrap(), Std::from_secs(5400));
        assert_eq!(p("2m3.5s").unwrap(), Std::from_millis(123_500));
        assert_eq!(p("10us").unwrap(), Std::from_micros(10));
        assert_eq!(p("10µs").unwrap(), Std::from_micros(10));
        assert_eq!(p("7ns").unwrap(), Std::from_nanos(7));
        assert_eq!(p("0").unwrap(), Std::ZERO);
        assert_eq!(p("0s").unwrap(), Std::ZERO);
        assert_eq!(p("300s").unwrap(), Std::from_secs(300));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in [
            "",
            "5",
            "s",
            "-1s",
            "1x",
            "1.2.3s",
            "abc",
            "1 s",
            "5sec",
            "1e3s",
            "..s",
            "99999999999999999999999999999999999999999h",
        ] {
            let e = p(bad).expect_err(bad);
            assert!(e.to_string().contains("invalid duration"), "{e}");
        }
        assert!(p("5").unwrap_err().to_string().contains("missing unit"));
        assert!(p("-1s").unwrap_err().to_string().contains("negative"));
    }

    #[test]
    fn display_roundtrips() {
        for s in ["5s", "0.1s", "1.000000001s", "0s"] {
            assert_eq!(s.parse::<Duration>().unwrap().to_string(), s);
        }
        assert_eq!("1.5m".parse::<Duration>().unwrap().to_string(), "90s");
    }

    #[test]
    fn serde_rejects_numbers_with_message() {
        let e = serde_yaml_ng::from_str::<Duration>("5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("duration"), "{e}");
        let d: Duration = serde_yaml_ng::from_str("15s").unwrap();
        assert_eq!(d.get(), Std::from_secs(15));
    }
}
