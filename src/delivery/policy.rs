//! Retry policy and response classification (pure).
//!
//! Classes after Medplum's subscription worker: a **transient** failure
//! (connect error, timeout, 408, 429, 5xx) is retried with exponential backoff
//! and full jitter (AWS "Exponential Backoff and Jitter": sleep =
//! random(0, min(max, initial · 2^(attempt-1)))), honouring `Retry-After`
//! (seconds or an HTTP-date) when the server sends one; a **permanent** one
//! (any other 4xx, a refused redirect) goes to the dead-letter list at once;
//! after `max_attempts` every failure is dead.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

/// Longest `Retry-After` honoured (a larger one is capped).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What a failed attempt means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying; `retry_after` when the server asked for a delay.
    Transient {
        class: &'static str,
        retry_after: Option<Duration>,
    },
    /// Retrying will not help.
    Permanent { class: &'static str },
}

impl Failure {
    /// Stable error class stored in `last_error` (no PHI: a status class).
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Transient { class, .. } | Failure::Permanent { class } => class,
        }
    }
}

/// Classify an HTTP status (2xx is success and never reaches here).
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Failure {
    match status {
        408 => Failure::Transient {
            class: "http-408",
            retry_after,
        },
        429 => Failure::Transient {
            class: "http-429",
            retry_after,
        },
        500..=599 => Failure::Transient {
            class: "http-5xx",
            retry_after,
        },
        400..=499 => Failure::Permanent { class: "http-4xx" },
        300..=399 => Failure::Permanent {
            class: "http-redirect",
        },
        _ => Failure::Permanent {
            class: "http-unexpected",
        },
    }
}

/// Parse a `Retry-After` value: delta-seconds or an HTTP-date (RFC 9110
/// §10.2.3; the date in any of the three forms §5.6.7 says a recipient must
/// accept: IMF-fixdate, RFC 850, asctime). A date in the past means no delay;
/// anything else is `None` (the default backoff applies).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    let d = when
        .duration_since(SystemTime::from(now))
        .unwrap_or(Duration::ZERO);
    Some(d.min(MAX_RETRY_AFTER))
}

/// Backoff settings (`[delivery]`).
///
/// The delay is this small pure function of the attempt count rather than a
/// backoff crate's iterator, because of how the outbox retries: an attempt's
/// count lives in the database row (`attempts`), the next attempt time is
/// stored as `not_before`, and any worker (after a restart, too) picks the row
/// up again, so there is no live retry loop to hand a backoff object to.
/// Checked against `backon` 1.6 (`ExponentialBuilder`), the maintained choice
/// (`backoff` 0.4 is unmaintained, RUSTSEC-2025-0012): its backoff is a
/// stateful iterator (the delay before attempt n means stepping it n - 1
/// times from a fresh builder per row), its jitter adds `random(0, d)` to `d`
/// (delays in `[d, 2d)`, up to twice `max_backoff`) where this policy is full
/// jitter in `[0, d]` capped at `max_backoff`, and its random source is
/// internal, so the worker's seeded [`Jitter`] and the exact-value tests below
/// could not be kept. Adopting it would change the retry schedule and add a
/// dependency for three lines of arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The ceiling of the jitter window before attempt `attempt + 1`
    /// (`attempt` = attempts made so far, ≥ 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ms = (self.initial_backoff.as_millis() as u64).saturating_mul(1u64 << exp);
        Duration::from_millis(ms).min(self.max_backoff)
    }

    /// Full jitter: uniform in [0, ceiling]; `unit` is a random number in [0, 1).
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let c = self.ceiling(attempt).as_micros() as f64;
        Duration::from_micros((c * unit.clamp(0.0, 1.0)) as u64)
    }

    /// The delay before the next attempt, or `None` when the item is dead:
    /// permanent, or `attempts` (made so far, this one included) reached
    /// `max_attempts`. A `Retry-After` wins over the jitter when longer.
    pub fn next_delay(&self, failure: &Failure, attempts: u32, unit: f64) -> Option<Duration> {
        match failure {
            Failure::Permanent { .. } => None,
            Failure::Transient { retry_after, .. } => {
                if attempts >= self.max_attempts {
                    return None;
                }
                let jitter = self.backoff(attempts, unit);
                Some(match retry_after {
                    Some(ra) => (*ra).max(jitter),
                    None => jitter,
                })
            }
        }
    }
}

/// A small xorshift generator for jitter (no cryptographic use).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn seeded(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// Seeded from the clock and a salt (e.g. the endpoint's name).
    pub fn from_clock(salt: &str) -> Jitter {
        let mut s = Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64;
        for b in salt.bytes() {
            s = s.rotate_left(5) ^ u64::from(b);
        }
        Jitter::seeded(s)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(4),
        }
    }

    #[test]
    fn statuses_are_classified() {
        for s in [408, 429, 500, 502, 503, 599] {
            assert!(
                matches!(classify_status(s, None), Failure::Transient { .. }),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 409, 410, 422, 301] {
            assert!(
                matches!(classify_status(s, None), Failure::Permanent { .. }),
                "{s}"
            );
        }
        assert_eq!(classify_status(503, None).class(), "http-5xx");
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = Utc.with_ymd_and_hms(2026, 1, 15, 8, 0, 0).unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Thu, 15 Jan 2026 08:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Thu, 15 Jan 2026 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("999999999", now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_in_every_http_date_form() {
        let now = Utc.with_ymd_and_hms(2026, 1, 15, 8, 0, 0).unwrap();
        let ninety = Some(Duration::from_secs(90));
        // Seconds, with the whitespace a header value may carry.
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        // Future, in the three forms RFC 9110 §5.6.7 requires a recipient to accept.
        for v in [
            "Thu, 15 Jan 2026 08:01:30 GMT",
            "Thursday, 15-Jan-26 08:01:30 GMT",
            "Thu Jan 15 08:01:30 2026",
        ] {
            assert_eq!(parse_retry_after(v, now), ninety, "{v}");
        }
        // Past, and now: no delay.
        assert_eq!(
            parse_retry_after("Wed, 14 Jan 2026 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Thu, 15 Jan 2026 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        // Far future: capped; the edges of what an HTTP-date can say parse
        // without a panic.
        for v in [
            "Fri, 01 Jan 2100 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(parse_retry_after(v, now), Some(MAX_RETRY_AFTER), "{v}");
        }
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        // Garbage is no delay asked for.
        for v in [
            "",
            "-5",
            "1.5",
            "tomorrow",
            "Thu, 15 Jan 2026 08:01:30",
            "Thu, 15 Jan 2026 08:01:30 +0100",
            "Thu, 32 Jan 2026 08:01:30 GMT",
            "18446744073709551616",
            "Mon, 01 Jan 1900 00:00:00 GMT",
            "Sat, 01 Jan 10000 00:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(v, now), None, "{v:?}");
        }
    }

    #[test]
    fn garbage_retry_after_falls_back_to_the_default_backoff() {
        let now = Utc.with_ymd_and_hms(2026, 1, 15, 8, 0, 0).unwrap();
        let p = policy();
        for (attempts, unit) in [(1, 0.5), (2, 0.25), (3, 0.9)] {
            let garbage = classify_status(503, parse_retry_after("soon-ish", now));
            let none = classify_status(503, None);
            assert_eq!(
                p.next_delay(&garbage, attempts, unit),
                Some(p.backoff(attempts, unit))
            );
            assert_eq!(
                p.next_delay(&garbage, attempts, unit),
                p.next_delay(&none, attempts, unit)
            );
        }
        // A date in the past asks for no delay: the jitter decides.
        let past = classify_status(503, parse_retry_after("Thu, 15 Jan 2026 07:00:00 GMT", now));
        assert_eq!(
            p.next_delay(&past, 2, 0.5),
            Some(Duration::from_millis(500))
        );
        // A future date longer than the jitter wins.
        let future = classify_status(429, parse_retry_after("Thu, 15 Jan 2026 08:01:00 GMT", now));
        assert_eq!(p.next_delay(&future, 2, 0.5), Some(Duration::from_secs(60)));
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_and_caps() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_millis(500));
        assert_eq!(p.ceiling(2), Duration::from_millis(1000));
        assert_eq!(p.ceiling(4), Duration::from_millis(4000));
        assert_eq!(p.ceiling(40), Duration::from_millis(4000));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(1000));
        let mut j = Jitter::seeded(42);
        for _ in 0..1000 {
            let u = j.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(p.backoff(2, u) <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn attempts_run_out_and_permanent_is_dead_at_once() {
        let p = policy();
        let t = classify_status(500, None);
        assert!(p.next_delay(&t, 4, 0.3).is_some());
        assert_eq!(p.next_delay(&t, 5, 0.3), None);
        assert_eq!(p.next_delay(&classify_status(400, None), 1, 0.3), None);
        let ra = classify_status(429, Some(Duration::from_secs(10)));
        assert_eq!(p.next_delay(&ra, 1, 0.9), Some(Duration::from_secs(10)));
    }
}
