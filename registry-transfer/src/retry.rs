//! When and how long to wait before trying again.

use std::future::Future;
use std::time::Duration;

use rand::Rng as _;

use crate::error::TransferError;

/// Retries of transient failures: exponential backoff with full jitter,
/// `Retry-After` honoured (up to `max_retry_after`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A registry asking for a longer pause than this gets this; the copy
    /// is better failed and rescheduled by the controller than parked.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` after `error` failed attempt
    /// `attempt` (1-based), or `None` when we must give up. `jitter` is a
    /// number in [0, 1), passed in so the decision stays testable.
    pub fn delay_after(
        &self,
        attempt: u32,
        error: &TransferError,
        jitter: f64,
    ) -> Option<Duration> {
        if !error.is_transient() || attempt >= self.max_attempts {
            return None;
        }
        if let Some(asked) = error.retry_after() {
            return Some(asked.min(self.max_retry_after));
        }
        let exponent = attempt.saturating_sub(1).min(16);
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        // Full jitter spreads the retries of many concurrent copies, but
        // never below half the ceiling, so a retry is not immediate.
        Some(ceiling.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0))
    }

    /// Runs `operation` until it succeeds, fails for good, or attempts run out.
    pub async fn run<T, F, Fut>(&self, what: &str, mut operation: F) -> Result<T, TransferError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, TransferError>>,
    {
        let mut attempt = 1;
        loop {
            match operation(attempt).await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    let jitter = rand::rng().random::<f64>();
                    match self.delay_after(attempt, &error, jitter) {
                        Some(delay) => {
                            tracing::debug!(
                                what,
                                attempt,
                                ?delay,
                                reason = error.reason(),
                                "retrying"
                            );
                            tokio::time::sleep(delay).await;
                            attempt += 1;
                        }
                        None => return Err(error),
                    }
                }
            }
        }
    }
}

/// `Retry-After` values beyond this are read as this; the policy caps
/// them further (`max_retry_after`). Keeps every later sum far from
/// overflowing, whatever number the registry sent.
pub const RETRY_AFTER_CEILING: Duration = Duration::from_secs(24 * 3600);

/// Parses `Retry-After` (RFC 9110 10.2.3): seconds, or an HTTP-date, taken
/// relative to `now` (a date in the past means "now"). Capped at
/// [`RETRY_AFTER_CEILING`]; anything else is treated as absent.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let asked = if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        // More digits than u64 holds is still "a very long time".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(asked.min(RETRY_AFTER_CEILING))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;

    fn unavailable() -> TransferError {
        TransferError::RegistryUnavailable {
            registry: "r".into(),
            detail: "503".into(),
        }
    }

    #[test]
    fn backs_off_exponentially_with_bounded_jitter() {
        let policy = RetryPolicy::default();
        let d1 = policy.delay_after(1, &unavailable(), 0.0).unwrap();
        let d2 = policy.delay_after(2, &unavailable(), 0.0).unwrap();
        let d3 = policy.delay_after(3, &unavailable(), 0.999).unwrap();
        assert_eq!(d1, Duration::from_millis(100));
        assert_eq!(d2, Duration::from_millis(200));
        assert!(d3 > Duration::from_millis(790) && d3 <= Duration::from_millis(800));
        assert_eq!(policy.delay_after(5, &unavailable(), 0.0), None);
        let capped = RetryPolicy {
            max_attempts: 100,
            ..RetryPolicy::default()
        };
        assert!(capped.delay_after(40, &unavailable(), 0.999).unwrap() <= capped.max_delay);
    }

    #[test]
    fn honours_retry_after_and_never_retries_permanent_errors() {
        let policy = RetryPolicy::default();
        let limited = TransferError::RateLimited {
            registry: "r".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            policy.delay_after(1, &limited, 0.5),
            Some(Duration::from_secs(3))
        );
        let greedy = TransferError::RateLimited {
            registry: "r".into(),
            retry_after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            policy.delay_after(1, &greedy, 0.5),
            Some(policy.max_retry_after)
        );
        let digest = Digest::parse(&format!("sha256:{}", "1".repeat(64))).unwrap();
        for permanent in [
            TransferError::Unauthorized {
                registry: "r".into(),
            },
            TransferError::Forbidden {
                registry: "r".into(),
            },
            TransferError::SourceNotFound { what: "x".into() },
            TransferError::DigestMismatch {
                expected: digest,
                actual: "y".into(),
            },
        ] {
            assert_eq!(policy.delay_after(1, &permanent, 0.5), None, "{permanent}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_caps_both() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date in the past: retry now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        // Hostile values: capped, never a panic or an overflow later.
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(RETRY_AFTER_CEILING)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now),
            Some(RETRY_AFTER_CEILING)
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(RETRY_AFTER_CEILING)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        let policy = RetryPolicy::default();
        let limited = TransferError::RateLimited {
            registry: "r".into(),
            retry_after: parse_retry_after("18446744073709551615", now),
        };
        assert_eq!(
            policy.delay_after(1, &limited, 0.5),
            Some(policy.max_retry_after)
        );
    }
}
