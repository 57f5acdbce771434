//! Route retry policies as Istio builds them (`route/retry`): its default
//! policy when a VirtualService route sets no `retries`, the VirtualService's
//! `retries` over that default, none for `attempts: 0`, and the inbound
//! route's reset-only policy.

use api::networking::HttpRetry;
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy,
    retry_policy::{RetryBackOff, RetryHostPredicate, RetryPriority, retry_host_predicate},
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::common::{any, duration};

/// Istio's default `retry_on`.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// The registered name of the previous-hosts retry predicate.
pub const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
/// The registered name of the previous-priorities retry priority.
pub const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";

/// `retry_host_predicate: [previous_hosts]`: retries prefer hosts not yet tried.
fn previous_hosts() -> RetryHostPredicate {
    RetryHostPredicate {
        name: PREVIOUS_HOSTS.into(),
        config_type: Some(retry_host_predicate::ConfigType::TypedConfig(any(
            &PreviousHostsPredicate {},
        ))),
    }
}

/// Istio's default policy: 2 retries on connect failure, refused stream,
/// gRPC unavailable/cancelled and 503, 5 host selection attempts, and
/// (unless the route hashes consistently, where retries must stay on the
/// hashed host) the previous-hosts predicate.
fn default_policy(consistent_hash: bool) -> RetryPolicy {
    RetryPolicy {
        num_retries: Some(UInt32Value { value: 2 }),
        retry_on: DEFAULT_RETRY_ON.into(),
        retriable_status_codes: vec![503],
        host_selection_retry_max_attempts: 5,
        retry_host_predicate: if consistent_hash {
            Vec::new()
        } else {
            vec![previous_hosts()]
        },
        ..Default::default()
    }
}

/// A route's retry policy from its `retries` (`ConvertPolicy`): None set
/// gives the default; `attempts <= 0` gives no policy at all; otherwise the
/// default with `attempts`, `retryOn` (bare HTTP status codes become
/// `retriable_status_codes`, plus the `retriable-status-codes` token when
/// the list lacks it), `perTryTimeout`, `retryIgnorePreviousHosts`,
/// `retryRemoteLocalities` and `backoff` laid over it.
pub fn policy(retries: Option<&HttpRetry>, consistent_hash: bool) -> Option<RetryPolicy> {
    let mut out = default_policy(consistent_hash);
    let Some(r) = retries else {
        return Some(out);
    };
    if r.attempts <= 0 {
        return None;
    }
    out.num_retries = Some(UInt32Value {
        value: r.attempts as u32,
    });
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.is_empty()) {
        let (tokens, codes) = parse_retry_on(on);
        out.retry_on = tokens;
        out.retriable_status_codes = codes;
        if !out.retriable_status_codes.is_empty()
            && !out.retry_on.contains("retriable-status-codes")
        {
            out.retry_on.push_str(",retriable-status-codes");
        }
    }
    if let Some(t) = r.per_try_timeout {
        out.per_try_timeout = Some(duration(t.get()));
    }
    if let Some(ignore) = r.retry_ignore_previous_hosts {
        out.retry_host_predicate = if ignore {
            vec![previous_hosts()]
        } else {
            Vec::new()
        };
    }
    if r.retry_remote_localities == Some(true) {
        out.retry_priority = Some(RetryPriority {
            name: PREVIOUS_PRIORITIES.into(),
            config_type: Some(
                envoy_types::pb::envoy::config::route::v3::retry_policy::retry_priority::ConfigType::TypedConfig(
                    any(&PreviousPrioritiesConfig { update_frequency: 2 }),
                ),
            ),
        });
    }
    if let Some(b) = r.backoff {
        out.retry_back_off = Some(RetryBackOff {
            base_interval: Some(duration(b.get())),
            ..Default::default()
        });
    }
    Some(out)
}

/// Istio's inbound route policy (1.24+): retry twice, only when the
/// connection to the app was reset before the request went out.
pub fn inbound() -> RetryPolicy {
    RetryPolicy {
        retry_on: "reset-before-request".into(),
        num_retries: Some(UInt32Value { value: 2 }),
        ..Default::default()
    }
}

/// `retryOn` split into Envoy's token list and the HTTP status codes in
/// it (tokens trimmed, empty ones dropped, order kept).
fn parse_retry_on(on: &str) -> (String, Vec<u32>) {
    let mut tokens = Vec::new();
    let mut codes = Vec::new();
    for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(code) if api::validation::is_http_status(code) => codes.push(code),
            _ => tokens.push(part),
        }
    }
    (tokens.join(","), codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(attempts: i32, on: Option<&str>) -> HttpRetry {
        HttpRetry {
            attempts,
            retry_on: on.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn unset_is_istios_default_and_zero_attempts_is_none() {
        let p = policy(None, false).expect("default");
        assert_eq!(p.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(p.num_retries, Some(UInt32Value { value: 2 }));
        assert_eq!(p.retriable_status_codes, vec![503]);
        assert_eq!(p.host_selection_retry_max_attempts, 5);
        assert_eq!(p.retry_host_predicate[0].name, PREVIOUS_HOSTS);
        assert!(
            policy(None, true)
                .expect("hash")
                .retry_host_predicate
                .is_empty()
        );
        assert_eq!(policy(Some(&retry(0, Some("5xx"))), false), None);
    }

    #[test]
    fn status_codes_in_retry_on_become_retriable_status_codes() {
        let p = policy(Some(&retry(3, Some("5xx, 503,gateway-error,429"))), false).expect("p");
        assert_eq!(p.retry_on, "5xx,gateway-error,retriable-status-codes");
        assert_eq!(p.retriable_status_codes, vec![503, 429]);
        // Only codes: Istio's leading comma stays (Envoy ignores empty tokens).
        let p = policy(Some(&retry(1, Some("503"))), false).expect("p");
        assert_eq!(p.retry_on, ",retriable-status-codes");
        // No codes: the list is as written and the default 503 is gone.
        let p = policy(Some(&retry(3, Some("connect-failure"))), false).expect("p");
        assert_eq!(p.retry_on, "connect-failure");
        assert!(p.retriable_status_codes.is_empty());
        // Attempts alone keep the default conditions.
        let p = policy(Some(&retry(4, None)), false).expect("p");
        assert_eq!(p.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(p.retriable_status_codes, vec![503]);
    }

    #[test]
    fn ignore_previous_hosts_and_remote_localities() {
        let r = HttpRetry {
            attempts: 2,
            retry_ignore_previous_hosts: Some(false),
            retry_remote_localities: Some(true),
            ..Default::default()
        };
        let p = policy(Some(&r), false).expect("p");
        assert!(p.retry_host_predicate.is_empty());
        assert_eq!(
            p.retry_priority.as_ref().map(|r| r.name.as_str()),
            Some(PREVIOUS_PRIORITIES)
        );
        let r = HttpRetry {
            retry_ignore_previous_hosts: Some(true),
            ..r
        };
        // An explicit true brings the predicate back even under a hash.
        assert_eq!(
            policy(Some(&r), true)
                .expect("p")
                .retry_host_predicate
                .len(),
            1
        );
    }
}
