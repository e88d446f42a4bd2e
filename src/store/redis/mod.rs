//! The Redis store: dedupe claims and GCRA buckets shared by every instance.
//!
//! Each operation is one round trip touching one key, so it is valid on Redis Cluster
//! without hash tags: a claim is `SET NX PX GET` (Redis 7.0+; a Lua script on older
//! servers); a commit made well within its claim's TTL is `SET XX PX GET`; other
//! commits, releases and the GCRA check are small Lua scripts sent as `EVALSHA` (loaded
//! on first use, re-sent only after a `NOSCRIPT`), atomic because a compare-and-set
//! needs to be. The rate checks of one client that arrive before its script is sent
//! share one script run (`coalesce`). One multiplexed
//! connection per instance (`ConnectionManager`, which reconnects by itself); a cluster
//! connection is opened on first use and again after it fails, so hookgate starts, and
//! reports not ready, while Redis is down.
//!
//! Keys (with the default prefix `hookgate:`):
//! - `hookgate:dedupe:<source>:<webhook-id>` (`<webhook-id>:<body hash>` for sources
//!   whose id is unsigned, `event::KeyBinding`): `inflight:<token>` for
//!   `dedupe.in_flight_ttl`, then `done` for `dedupe.ttl`;
//! - `hookgate:rate:<client ip or /64>`: the GCRA theoretical arrival time in
//!   microseconds of Redis' clock, expiring when the bucket is full again.

mod connection;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::{ErrorKind, Script, ScriptInvocation, ServerErrorKind};

pub(crate) use self::connection::{Conn, RedisConnection, Unsent, millis};
use super::coalesce::{Groups, Seal};
use super::{BoxFuture, ClaimState, HOLDER_UNKNOWN, RateDecision, Settled, Store, StoreError};
use crate::config::{RateLimitSettings, RedisSettings};
use crate::metrics::Metrics;

/// The claim for Redis before 7.0 (no `SET NX GET`): claims `KEYS[1]` for `ARGV[1]`
/// (`inflight:<token>`) for `ARGV[2]` ms unless it exists.
/// Returns `{1}` won, `{2}` done, `{3, pttl}` in flight elsewhere.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, 0}
end
if redis.call('GET', KEYS[1]) == 'done' then
  return {2, 0}
end
return {3, redis.call('PTTL', KEYS[1])}
";

/// Marks `KEYS[1]` done for `ARGV[2]` ms if it still holds `ARGV[1]` or has expired;
/// never overwrites a newer claim. Returns 1 when applied.
const COMMIT: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or current == false then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
return 0
";

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`. Returns 1 when applied.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// GCRA on Redis' own clock (instances' clocks may differ), for `ARGV[3]` requests of
/// one client arriving together: exactly what that many single checks in a row would
/// answer. `ARGV[1]` is the emission interval and `ARGV[2]` the burst tolerance, both
/// in microseconds. Returns 0 when all are allowed; else the microseconds the first
/// denied request must wait, as a plain integer when none is allowed, or
/// `{allowed, wait}` when only the first `allowed` are (a table reply costs Redis more
/// than the rest of the script's bookkeeping, so the common answers are integers).
/// A denial leaves the bucket as it is, so every denied request of the group waits the
/// same. `%d` because Lua's own number to string conversion keeps 14 digits, and
/// microseconds since 1970 have 16.
pub(crate) const RATE: &str = r"
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local interval, requests = tonumber(ARGV[1]), tonumber(ARGV[3])
if tat > now + tonumber(ARGV[2]) + interval then
  tat = now + tonumber(ARGV[2])
end
local allowed = math.min(requests, math.floor((ARGV[2] - (tat - now)) / interval) + 1)
if allowed <= 0 then
  return tat - now - ARGV[2]
end
tat = tat + allowed * interval
redis.call('PSETEX', KEYS[1], math.ceil((tat - now) / 1000), string.format('%d', tat))
if allowed == requests then
  return 0
end
return {allowed, tat - now - ARGV[2]}
";

pub struct RedisStore {
    redis: Arc<RedisConnection>,
    prefix: String,
    /// GCRA emission interval (1 / rate) and burst tolerance, in microseconds.
    interval_us: AtomicU64,
    tolerance_us: AtomicU64,
    scripts: Scripts,
    /// Rate checks of one client that arrive together share one script run.
    rate_groups: Arc<Groups<IpAddr, Result<RateDecision, StoreError>>>,
    /// Set once Redis has refused `SET NX GET` (before 7.0): claims then use `CLAIM`.
    legacy_claim: AtomicBool,
    description: String,
}

struct Scripts {
    claim: Script,
    commit: Script,
    release: Script,
    rate: Script,
}

impl RedisStore {
    /// Whether `error` is a server too old for `SET ... GET` refusing it (`NX GET` before
    /// 7.0, `GET` at all before 6.2); remembered, so claims and commits go through the
    /// scripts from then on.
    fn refuses_set_get(&self, error: &StoreError) -> bool {
        let refused = matches!(error, StoreError::Unavailable(e) if e.contains("syntax error"));
        if refused && !self.legacy_claim.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis before 7.0: claims and commits use Lua scripts");
        }
        refused
    }

    /// Creates the store on its own connection, without connecting.
    pub fn new(
        settings: &RedisSettings,
        rate: RateLimitSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let (interval_us, tolerance_us) = gcra_parameters(rate);
        Ok(RedisStore {
            redis: Arc::new(RedisConnection::new(settings, metrics)?),
            prefix: settings.key_prefix.clone(),
            interval_us: AtomicU64::new(interval_us),
            tolerance_us: AtomicU64::new(tolerance_us),
            scripts: Scripts {
                claim: Script::new(CLAIM),
                commit: Script::new(COMMIT),
                release: Script::new(RELEASE),
                rate: Script::new(RATE),
            },
            rate_groups: Arc::default(),
            legacy_claim: AtomicBool::new(false),
            description: format!(
                "{} (shared by every instance using it; key prefix {:?})",
                settings.target, settings.key_prefix
            ),
        })
    }

    /// The connection, for the queue on the same Redis (`store::Backend`).
    pub(crate) fn connection(&self) -> Arc<RedisConnection> {
        self.redis.clone()
    }

    /// Claims with the Lua script from now on, as on Redis before 7.0 (which refuses
    /// `SET NX GET`); lets the tests hold both claim paths to one contract.
    pub fn use_script_claims(&self) {
        self.legacy_claim.store(true, Ordering::Relaxed);
    }

    /// Takes the requests of `group` from `client`'s GCRA bucket in one script run,
    /// the group closed as the script is sent: their decisions, in order.
    async fn take(
        &self,
        client: IpAddr,
        group: RateGroup,
    ) -> Vec<Result<RateDecision, StoreError>> {
        let rate = Arc::new(RateRun {
            sha: self.scripts.rate.get_hash().to_owned(),
            key: format!("{}rate:{client}", self.prefix),
            interval_us: self.interval_us.load(Ordering::Relaxed),
            tolerance_us: self.tolerance_us.load(Ordering::Relaxed),
        });
        let command = || {
            let (rate, group) = (rate.clone(), group.clone());
            move || rate.command(group.close())
        };
        let reply = self
            .call("rate_check", async |conn| {
                match conn.send_built(command()).await {
                    // The group is closed by now: the retry carries the same size.
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        self.scripts.rate.load_async(conn).await?;
                        conn.send_built(command()).await
                    }
                    reply => reply,
                }
            })
            .await
            .and_then(|reply| {
                RateReply::parse(&reply).ok_or_else(|| {
                    StoreError::Unavailable(format!("unexpected rate check reply {reply:?}"))
                })
            });
        let requests = group.close();
        match reply {
            Ok(reply) => (0..requests).map(|i| Ok(reply.decision(i))).collect(),
            Err(e) => vec![Err(e); requests],
        }
    }

    fn dedupe_key(&self, key: &str) -> String {
        dedupe_key(&self.prefix, key)
    }

    async fn call<T>(
        &self,
        op: &str,
        request: impl AsyncFnOnce(&mut Conn<'_>) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.redis.call(op, request).await
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        op: &str,
        invocation: ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.redis.script(op, invocation).await
    }
}

/// What a dedupe key holds while a claim does, before the claim's token.
const IN_FLIGHT: &str = "inflight:";

/// The value of a dedupe key while `token`'s claim holds it.
/// The Redis key of the dedupe claim `key` (`<source>:<id>`) under `prefix`.
pub(crate) fn dedupe_key(prefix: &str, key: &str) -> String {
    [prefix, "dedupe:", key].concat()
}

/// What a claim of `token` holds while in flight.
pub(crate) fn in_flight(token: &str) -> String {
    [IN_FLIGHT, token].concat()
}

impl Store for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<ClaimState, StoreError>> {
        Box::pin(async move {
            let key = self.dedupe_key(key);
            let value = in_flight(token);
            if !self.legacy_claim.load(Ordering::Relaxed) {
                // `SET NX GET`: one command, no script, batched with other requests'.
                let mut set = redis::cmd("SET");
                set.arg(&key)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .arg("GET");
                let reply = self
                    .call("claim", async |conn| {
                        set.query_async::<Option<Vec<u8>>>(conn).await
                    })
                    .await;
                match reply {
                    Ok(None) => return Ok(ClaimState::Won),
                    Ok(Some(previous)) if previous == b"done" => return Ok(ClaimState::Done),
                    // In flight elsewhere (rare): the script below asks again in one
                    // step, answering how long that claim has left, or that it was
                    // committed meanwhile (a separate PTTL then read the done key's
                    // 72 h as a claim's), or claiming it if it was released.
                    Ok(Some(_)) => {}
                    // Redis before 7.0 refuses NX together with GET: use the script.
                    Err(e) if self.refuses_set_get(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            let mut invocation = self.scripts.claim.prepare_invoke();
            invocation.key(&key).arg(&value).arg(millis(ttl));
            let reply: Vec<i64> = match self.script("claim", invocation).await {
                Ok(reply) => reply,
                // The first answer already said another claim holds the key: this one
                // failing leaves that true, so a copy is not let through (`on_error =
                // "allow"` forwarded it beside the one in flight). How long the other
                // claim lasts is not known: ask the sender to come back soon.
                Err(_) if !self.legacy_claim.load(Ordering::Relaxed) => {
                    return Ok(ClaimState::InFlight {
                        remaining: HOLDER_UNKNOWN,
                    });
                }
                Err(e) => return Err(e),
            };
            Ok(match reply.as_slice() {
                [1, ..] => ClaimState::Won,
                [2, ..] => ClaimState::Done,
                [3, pttl] => ClaimState::InFlight {
                    remaining: Duration::from_millis((*pttl).max(0) as u64),
                },
                other => {
                    return Err(StoreError::Unavailable(format!(
                        "unexpected claim reply {other:?}"
                    )));
                }
            })
        })
    }

    fn commit<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Settled, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.scripts.commit.prepare_invoke();
            invocation
                .key(self.dedupe_key(key))
                .arg(in_flight(token))
                .arg(millis(ttl));
            let applied: i64 = self.script("commit", invocation).await?;
            Ok(Settled::of(applied == 1))
        })
    }

    /// `SET XX PX GET`: one plain command instead of the script, since the key still
    /// holds this claim. Should it have vanished (evicted, flushed), the script marks
    /// it done; should it hold something else, it is done now anyway (see the trait).
    fn commit_unexpired<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Settled, StoreError>> {
        Box::pin(async move {
            // `SET ... GET` needs Redis 6.2; a server that refused `SET NX GET` (before
            // 7.0) commits through the script, as does one that refuses this.
            if self.legacy_claim.load(Ordering::Relaxed) {
                return self.commit(key, token, ttl).await;
            }
            let mut set = redis::cmd("SET");
            set.arg(self.dedupe_key(key))
                .arg("done")
                .arg("XX")
                .arg("PX")
                .arg(millis(ttl))
                .arg("GET");
            let previous: Option<Vec<u8>> = match self
                .call("commit", async |conn| set.query_async(conn).await)
                .await
            {
                Err(e) if self.refuses_set_get(&e) => return self.commit(key, token, ttl).await,
                reply => reply?,
            };
            match previous {
                Some(previous)
                    if previous.strip_prefix(IN_FLIGHT.as_bytes()) == Some(token.as_bytes()) =>
                {
                    Ok(Settled::Applied)
                }
                Some(_) => Ok(Settled::Superseded),
                None => self.commit(key, token, ttl).await,
            }
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Settled, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.scripts.release.prepare_invoke();
            invocation.key(self.dedupe_key(key)).arg(in_flight(token));
            let applied: i64 = self.script("release", invocation).await?;
            Ok(Settled::of(applied == 1))
        })
    }

    fn rate_check(&self, client: IpAddr) -> BoxFuture<'_, Result<RateDecision, StoreError>> {
        Box::pin(
            self.rate_groups
                .join(client, move |group| self.take(client, group)),
        )
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.call("ping", async |conn| {
                redis::cmd("PING").query_async::<String>(conn).await
            })
            .await
            .map(|_| ())
        })
    }

    /// Buckets in Redis keep their state: only the parameters of the next check change.
    fn set_rate(&self, rate: RateLimitSettings) {
        let (interval_us, tolerance_us) = gcra_parameters(rate);
        self.interval_us.store(interval_us, Ordering::Relaxed);
        self.tolerance_us.store(tolerance_us, Ordering::Relaxed);
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// The rate checks of one client that share a script run.
type RateGroup = Seal<IpAddr, Result<RateDecision, StoreError>>;

/// One run of the rate script, short of the group's size.
struct RateRun {
    sha: String,
    key: String,
    interval_us: u64,
    tolerance_us: u64,
}

impl RateRun {
    fn command(&self, requests: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha)
            .arg(1)
            .arg(&self.key)
            .arg(self.interval_us)
            .arg(self.tolerance_us)
            .arg(requests);
        cmd
    }
}

/// What the rate script answered for a group: the first `allowed` requests may pass,
/// the others must wait `wait_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RateReply {
    allowed: usize,
    wait_us: u64,
}

impl RateReply {
    fn parse(reply: &redis::Value) -> Option<RateReply> {
        use redis::Value::{Array, Int};
        let (allowed, wait_us) = match reply {
            Int(0) => (usize::MAX, 0),
            Int(wait) => (0, *wait),
            Array(pair) => match pair.as_slice() {
                [Int(allowed), Int(wait)] => (usize::try_from(*allowed).ok()?, *wait),
                _ => return None,
            },
            _ => return None,
        };
        Some(RateReply {
            allowed,
            wait_us: u64::try_from(wait_us).ok()?,
        })
    }

    /// The decision for the `index`th request of the group (0 is the first).
    fn decision(self, index: usize) -> RateDecision {
        if index < self.allowed {
            RateDecision::Allow
        } else {
            RateDecision::Deny {
                retry_after: Duration::from_micros(self.wait_us),
            }
        }
    }
}

/// GCRA's emission interval (1 / rate) and burst tolerance, in microseconds.
pub(crate) fn gcra_parameters(rate: RateLimitSettings) -> (u64, u64) {
    let interval_us = (super::gcra(rate.requests_per_second, 1).0.as_micros() as u64).max(1);
    (
        interval_us,
        interval_us * u64::from(rate.burst.saturating_sub(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_touch_exactly_one_key() {
        // Redis Cluster routes a script by its keys: every script must name one.
        for script in [CLAIM, COMMIT, RELEASE, RATE] {
            assert!(script.contains("KEYS[1]"));
            assert!(!script.contains("KEYS[2]"));
        }
        assert!(CLAIM.contains("'done'") && COMMIT.contains("'done'"));
    }

    #[test]
    fn rate_replies_decide_each_request_of_a_group_in_order() {
        use redis::Value::{Array, Int, Nil};
        let deny = |us| RateDecision::Deny {
            retry_after: Duration::from_micros(us),
        };
        let all = RateReply::parse(&Int(0)).unwrap();
        assert!((0..1000).all(|i| all.decision(i) == RateDecision::Allow));
        let none = RateReply::parse(&Int(250)).unwrap();
        assert_eq!(none.decision(0), deny(250));
        let some = RateReply::parse(&Array(vec![Int(2), Int(40)])).unwrap();
        let decisions: Vec<_> = (0..4).map(|i| some.decision(i)).collect();
        assert_eq!(
            decisions,
            [RateDecision::Allow, RateDecision::Allow, deny(40), deny(40)]
        );
        for odd in [
            Nil,
            Int(-1),
            Array(vec![Int(1)]),
            Array(vec![Int(-1), Int(5)]),
        ] {
            assert_eq!(RateReply::parse(&odd), None, "{odd:?}");
        }
    }
}
