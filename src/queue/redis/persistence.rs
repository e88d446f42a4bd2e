//! Whether a delivery answered `202` survives a restart of the queue's Redis: its
//! persistence settings, read at start with `CONFIG GET appendonly` and `appendfsync`
//! (a managed Redis may refuse `CONFIG`: then hookgate cannot tell, and says so).
//!
//! Redis writes its append-only file before it answers, so with `appendonly yes` a
//! crash of Redis itself keeps every acknowledged write (it is in the operating
//! system's cache); only `appendfsync always` also keeps them through a crash of the
//! machine. Without the append-only file, a restart loses everything since the last
//! RDB snapshot (minutes, by default), and the senders never retry what got a `202`.

use super::RedisConnection;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// `CONFIG GET` was refused or answered something else.
    Unknown,
    /// `appendonly yes`, `appendfsync always`.
    Durable,
    /// `appendonly yes` with `everysec` or `no`: a crash of the machine (not of Redis)
    /// may lose the last second (or more) of accepted deliveries.
    MachineCrash,
    /// `appendonly no`: a Redis restart loses what was accepted since the last snapshot.
    Restart,
}

impl Persistence {
    pub fn from_config(appendonly: &str, appendfsync: &str) -> Persistence {
        match (appendonly, appendfsync) {
            ("yes", "always") => Persistence::Durable,
            ("yes", _) => Persistence::MachineCrash,
            ("no", _) => Persistence::Restart,
            _ => Persistence::Unknown,
        }
    }

    /// Whether a 202 is lost by a restart of Redis (the loud case).
    pub fn loses_on_restart(self) -> bool {
        self == Persistence::Restart
    }

    /// The value of `hookgate_queue_durable`.
    pub fn gauge(self) -> i64 {
        match self {
            Persistence::Durable => 1,
            Persistence::MachineCrash | Persistence::Restart => 0,
            Persistence::Unknown => -1,
        }
    }

    /// What it means for an accepted delivery, and what to change.
    pub fn says(self) -> &'static str {
        match self {
            Persistence::Durable => {
                "Redis persistence: appendonly yes, appendfsync always: an accepted delivery survives any restart"
            }
            Persistence::MachineCrash => {
                "Redis persistence: appendonly yes without appendfsync always: a crash of the \
                 machine may lose the last second of accepted deliveries (set appendfsync always)"
            }
            Persistence::Restart => {
                "Redis persistence: appendonly no: A REDIS RESTART LOSES every delivery accepted \
                 since the last snapshot (set appendonly yes, appendfsync always)"
            }
            Persistence::Unknown => {
                "Redis persistence: unknown (CONFIG GET refused): make sure appendonly yes and \
                 appendfsync always, or a Redis restart may lose accepted deliveries"
            }
        }
    }
}

/// What `hookgate check` prints: Redis' persistence as `[store]` reaches it, or why
/// it could not be read.
pub async fn check(settings: &crate::config::RedisSettings) -> String {
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(std::iter::empty::<&str>()));
    match RedisConnection::new(settings, metrics) {
        Ok(redis) => match read(&redis).await {
            Ok(persistence) => persistence.says().to_owned(),
            Err(e) => format!("Redis persistence: unknown ({e})"),
        },
        Err(e) => format!("Redis persistence: unknown ({e})"),
    }
}

/// Asks Redis. `Unknown` when it refuses `CONFIG`; an error when it does not answer.
pub(crate) async fn read(redis: &RedisConnection) -> Result<Persistence, StoreError> {
    let get = |name: &'static str| async move {
        redis
            .call("config", async |conn| {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async::<redis::Value>(conn)
                    .await
            })
            .await
    };
    let value = |reply: &redis::Value| -> Option<String> {
        use redis::Value::{Array, BulkString, Map, SimpleString};
        let text = |v: &redis::Value| match v {
            BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        match reply {
            Array(pair) if pair.len() == 2 => text(&pair[1]),
            Map(pairs) if pairs.len() == 1 => text(&pairs[0].1),
            _ => None,
        }
    };
    let (Ok(appendonly), Ok(appendfsync)) = (get("appendonly").await, get("appendfsync").await)
    else {
        // Refused (a managed Redis) or failed: ping tells the two apart.
        return redis
            .call("ping", async |conn| {
                redis::cmd("PING").query_async::<String>(conn).await
            })
            .await
            .map(|_| Persistence::Unknown);
    };
    Ok(match (value(&appendonly), value(&appendfsync)) {
        (Some(only), Some(fsync)) => Persistence::from_config(&only, &fsync),
        _ => Persistence::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_appendfsync_always_with_the_append_only_file_is_durable() {
        use Persistence::*;
        assert_eq!(Persistence::from_config("yes", "always"), Durable);
        assert_eq!(Persistence::from_config("yes", "everysec"), MachineCrash);
        assert_eq!(Persistence::from_config("yes", "no"), MachineCrash);
        assert_eq!(Persistence::from_config("no", "always"), Restart);
        assert_eq!(Persistence::from_config("", ""), Unknown);
        assert!(Restart.loses_on_restart() && !MachineCrash.loses_on_restart());
        assert_eq!(
            [Durable, MachineCrash, Restart, Unknown].map(Persistence::gauge),
            [1, 0, 0, -1]
        );
    }
}
