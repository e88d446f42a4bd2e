//! The retry policy of queue mode as pure functions over plain values: how long to wait
//! after a failed attempt (`BackoffPolicy`), which failures are retried (`RetryOn`) and
//! what follows an attempt (`decide`). Time and randomness come in as arguments.
//!
//! It reads the upstream's answer as the fact `forward` tells (`UpstreamOutcome`) and
//! imports nothing else from hookgate but the RNG, so `config` can hold these types in
//! its settings without depending on the queue's machinery.

use std::fmt;
use std::time::Duration;

use crate::random;
use crate::upstream::UpstreamOutcome;

/// `queue.backoff`: the wait after the nth failed attempt is `initial * 2^(n-1)`, capped
/// at `max`; with `jitter`, a random point in its upper half ("equal jitter"), so
/// retries of many deliveries failed together spread out yet never come sooner than half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: bool,
}

impl BackoffPolicy {
    /// The wait after failed attempt number `failed` (1 for the first). `sample` is a
    /// uniform random number in [0, 1), used only with jitter.
    pub fn delay(&self, failed: u32, sample: f64) -> Duration {
        // `initial × 2^(failed−1)`, at most `max`: past 2^63 it is `max` in any case.
        let doublings = failed.saturating_sub(1);
        let full = 1u64
            .checked_shl(doublings)
            .and_then(|factor| self.initial.as_nanos().checked_mul(u128::from(factor)))
            .map_or(self.max, |nanos| {
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            })
            .min(self.max);
        if !self.jitter {
            return full;
        }
        let half = full / 2;
        half + (full - half).mul_f64(sample.clamp(0.0, 1.0))
    }

    /// `delay`, or the pause an upstream asked for (`Retry-After`) when that is longer:
    /// never sooner than either.
    pub fn delay_at_least(&self, failed: u32, sample: f64, asked: Option<Duration>) -> Duration {
        let backoff = self.delay(failed, sample);
        asked.map_or(backoff, |asked| asked.max(backoff))
    }
}

/// `queue.retry_on`: which failed attempts are retried; everything else is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    /// Status classes by leading digit (index 1 = 1xx ... 5 = 5xx).
    classes: [bool; 6],
    codes: Vec<u16>,
    connect: bool,
    timeout: bool,
    written: Vec<String>,
}

impl RetryOn {
    /// Entries: `"5xx"` (any class 1xx..5xx), an exact status (`"429"`), `"connect"`,
    /// `"timeout"`. On error, the index of the bad entry and why.
    pub fn parse(entries: &[String]) -> Result<RetryOn, (usize, String)> {
        let mut on = RetryOn {
            classes: [false; 6],
            codes: Vec::new(),
            connect: false,
            timeout: false,
            written: entries.to_vec(),
        };
        for (i, entry) in entries.iter().enumerate() {
            let bytes = entry.as_bytes();
            match entry.as_str() {
                "connect" => on.connect = true,
                "timeout" => on.timeout = true,
                _ if bytes.len() == 3
                    && (b'1'..=b'5').contains(&bytes[0])
                    && &bytes[1..] == b"xx" =>
                {
                    on.classes[usize::from(bytes[0] - b'0')] = true;
                }
                _ => match entry.parse::<u16>() {
                    Ok(code) if (100..=999).contains(&code) && entry.len() == 3 => {
                        if (200..300).contains(&code) {
                            return Err((i, format!("{entry:?}: a 2xx answer is a success")));
                        }
                        on.codes.push(code);
                    }
                    _ => {
                        return Err((
                            i,
                            format!(
                                "{entry:?} is not \"5xx\"-style class, a status code, \"connect\" or \"timeout\""
                            ),
                        ));
                    }
                },
            }
        }
        Ok(on)
    }

    /// Whether an attempt that ended so is tried again. A redirect or 410 is a status
    /// like any other here (a queue's sender never sees it); a broken exchange counts
    /// as a connection failure; a delivered one is never retried.
    pub fn retries(&self, outcome: &UpstreamOutcome) -> bool {
        if outcome.is_delivered() {
            return false;
        }
        match (outcome, outcome.status()) {
            (_, Some(status)) => {
                let code = status.as_u16();
                // Only 1xx to 5xx are classes; a code from 600 to 999 (the HTTP crate
                // takes them) is retried only when listed itself.
                self.codes.contains(&code)
                    || self
                        .classes
                        .get(usize::from(code / 100))
                        .is_some_and(|retried| *retried)
            }
            (UpstreamOutcome::Timeout, None) => self.timeout,
            (_, None) => self.connect,
        }
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.written.join(", "))
    }
}

/// Why a delivery will not be attempted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalReason {
    NotRetryable,
    MaxAttempts,
    MaxAge,
}

impl FinalReason {
    pub fn describe(self) -> &'static str {
        match self {
            FinalReason::NotRetryable => "not retryable (queue.retry_on)",
            FinalReason::MaxAttempts => "queue.max_attempts reached",
            FinalReason::MaxAge => "queue.max_age reached",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Processed,
    Retry { delay: Duration },
    Final(FinalReason),
}

/// The pieces of `[queue]` that decide whether a failed attempt is tried again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy<'a> {
    pub retry_on: &'a RetryOn,
    pub max_attempts: u32,
    pub backoff: BackoffPolicy,
    /// No retry is scheduled to start later than this after the delivery was queued.
    pub max_age: Duration,
}

/// What follows attempt number `attempt` that ended in `outcome`, `age` after the
/// delivery was queued. A retry that would start past `max_age` is not scheduled.
pub fn decide(
    policy: &RetryPolicy<'_>,
    attempt: u32,
    outcome: &UpstreamOutcome,
    age: Duration,
    sample: f64,
) -> Verdict {
    if outcome.is_delivered() {
        return Verdict::Processed;
    }
    if !policy.retry_on.retries(outcome) {
        return Verdict::Final(FinalReason::NotRetryable);
    }
    if attempt >= policy.max_attempts {
        return Verdict::Final(FinalReason::MaxAttempts);
    }
    // An upstream that asked for a pause (`Retry-After` on a 429 or 503) gets it, never
    // a retry sooner than the backoff.
    let asked = match outcome {
        UpstreamOutcome::Answered(reply) => reply.retry_after,
        _ => None,
    };
    let delay = policy.backoff.delay_at_least(attempt, sample, asked);
    // Saturating: an upstream may ask for `Retry-After: 18446744073709549568`, and the
    // sum overflowed (the worker's task panicked, its delivery held for good).
    if age.saturating_add(delay) > policy.max_age {
        return Verdict::Final(FinalReason::MaxAge);
    }
    Verdict::Retry { delay }
}

/// A uniform sample in [0, 1) for jitter.
pub fn jitter_sample() -> f64 {
    random::unit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamReply;
    use http::StatusCode;

    fn status(code: u16) -> UpstreamOutcome {
        match code {
            300..=399 => UpstreamOutcome::Redirect(StatusCode::from_u16(code).unwrap()),
            410 => UpstreamOutcome::Gone,
            _ => UpstreamOutcome::Answered(UpstreamReply {
                status: StatusCode::from_u16(code).unwrap(),
                content_type: None,
                body: bytes::Bytes::new(),
                retry_after: None,
            }),
        }
    }

    fn connect() -> UpstreamOutcome {
        UpstreamOutcome::Unreachable("127.0.0.1:9: refused".into())
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// `queue`'s defaults but for `max_attempts`, a one-minute `backoff.max` and `jitter`.
    struct Policy {
        retry_on: RetryOn,
        max_attempts: u32,
        backoff: BackoffPolicy,
        max_age: Duration,
    }

    fn policy(max_attempts: u32, jitter: bool) -> Policy {
        Policy {
            max_attempts,
            backoff: BackoffPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                jitter,
            },
            max_age: Duration::from_secs(3600),
            retry_on: RetryOn::parse(&strings(&["5xx", "408", "429", "connect", "timeout"]))
                .unwrap(),
        }
    }

    impl Policy {
        fn retry(&self) -> RetryPolicy<'_> {
            RetryPolicy {
                retry_on: &self.retry_on,
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                max_age: self.max_age,
            }
        }
    }

    #[test]
    fn backoff_doubles_from_initial_and_stops_at_max() {
        let b = policy(12, false).backoff;
        let secs: Vec<u64> = (1..=8).map(|n| b.delay(n, 0.5).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(1000, 0.5), Duration::from_secs(60));
        // It went on doubling past 32 failures too (it stopped at 2^31 × initial).
        let long = BackoffPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_secs(30 * 86_400),
            jitter: false,
        };
        assert_eq!(long.delay(32, 0.5), Duration::from_millis(1 << 31));
        assert_eq!(long.delay(33, 0.5), long.max);
        assert_eq!(long.delay(u32::MAX, 0.5), long.max);
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_delay() {
        let b = policy(12, true).backoff;
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(2));
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(3));
        assert!(b.delay(3, 0.999_999) <= Duration::from_secs(4));
        assert!(b.delay(100, 0.999_999) <= Duration::from_secs(60));
        for _ in 0..1000 {
            let s = jitter_sample();
            assert!((0.0..1.0).contains(&s));
        }
    }

    #[test]
    fn retry_on_classes_codes_connect_and_timeout() {
        let on = policy(3, false).retry_on;
        assert!(on.retries(&status(500)));
        assert!(on.retries(&status(503)));
        assert!(on.retries(&status(408)));
        assert!(on.retries(&status(429)));
        assert!(on.retries(&connect()));
        assert!(on.retries(&UpstreamOutcome::Timeout));
        assert!(!on.retries(&status(400)));
        assert!(!on.retries(&status(410)));
        assert!(!on.retries(&status(302)));
        assert!(!on.retries(&status(200)));
        // Codes past 599 are no class: final unless listed (they were retried as 5xx).
        assert!(!on.retries(&status(600)));
        assert!(!on.retries(&status(999)));
        let listed = RetryOn::parse(&strings(&["5xx", "599", "600"])).unwrap();
        assert!(listed.retries(&status(599)));
        // ... and can be listed (they could not be, though the README said so).
        assert!(listed.retries(&status(600)));
        assert!(!listed.retries(&status(601)));
        assert!(RetryOn::parse(&strings(&["1000"])).is_err());
        assert!(on.retries(&UpstreamOutcome::Broken("reset".into())));
        let none = RetryOn::parse(&[]).unwrap();
        assert!(!none.retries(&connect()));
    }

    #[test]
    fn retry_on_rejects_what_it_does_not_know_with_the_index() {
        assert_eq!(RetryOn::parse(&strings(&["5xx", "50x"])).unwrap_err().0, 1);
        assert!(
            RetryOn::parse(&strings(&["204"]))
                .unwrap_err()
                .1
                .contains("success")
        );
        assert!(RetryOn::parse(&strings(&["6xx"])).is_err());
        assert!(RetryOn::parse(&strings(&["1000"])).is_err());
        assert!(RetryOn::parse(&strings(&["Connect"])).is_err());
    }

    #[test]
    fn decide_follows_the_policy_in_order() {
        let owned = policy(3, false);
        let p = owned.retry();
        let young = Duration::from_secs(10);
        assert_eq!(decide(&p, 1, &status(204), young, 0.0), Verdict::Processed);
        assert_eq!(
            decide(&p, 1, &status(500), young, 0.0),
            Verdict::Retry {
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            decide(&p, 2, &UpstreamOutcome::Timeout, young, 0.0),
            Verdict::Retry {
                delay: Duration::from_secs(2)
            }
        );
        assert_eq!(
            decide(&p, 3, &status(500), young, 0.0),
            Verdict::Final(FinalReason::MaxAttempts)
        );
        assert_eq!(
            decide(&p, 1, &status(400), young, 0.0),
            Verdict::Final(FinalReason::NotRetryable)
        );
        // The next attempt would start past max_age (1 h): final now, not later.
        assert_eq!(
            decide(&p, 1, &connect(), Duration::from_secs(3600), 0.0),
            Verdict::Final(FinalReason::MaxAge)
        );
    }

    /// A 429 or 503 with `Retry-After` was retried on the backoff alone, inside the
    /// pause the backend asked for.
    #[test]
    fn a_retry_waits_at_least_what_the_upstream_asked_for() {
        let owned = policy(5, false);
        let p = owned.retry();
        let asking = |code: u16, secs: u64| match status(code) {
            UpstreamOutcome::Answered(reply) => UpstreamOutcome::Answered(UpstreamReply {
                retry_after: Some(Duration::from_secs(secs)),
                ..reply
            }),
            other => other,
        };
        let young = Duration::from_secs(10);
        let retry = |delay: u64| Verdict::Retry {
            delay: Duration::from_secs(delay),
        };
        assert_eq!(decide(&p, 1, &asking(429, 30), young, 0.0), retry(30));
        // Never sooner than the backoff (4 s after the third failure).
        assert_eq!(decide(&p, 3, &asking(503, 1), young, 0.0), retry(4));
        // Past max_age (1 h): final now.
        assert_eq!(
            decide(&p, 1, &asking(503, 7200), young, 0.0),
            Verdict::Final(FinalReason::MaxAge)
        );
        // Any pause at all, on a delivery of any age: final, not an overflow.
        assert_eq!(
            decide(&p, 1, &asking(503, u64::MAX - 2048), young * 300, 0.0),
            Verdict::Final(FinalReason::MaxAge)
        );
        // A pause asked with a final answer changes nothing.
        assert_eq!(
            decide(&p, 1, &asking(400, 30), young, 0.0),
            Verdict::Final(FinalReason::NotRetryable)
        );
    }
}
