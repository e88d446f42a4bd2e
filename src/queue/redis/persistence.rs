//! Whether a `202` from the Redis queue survives a Redis restart. hookgate answers a
//! sender once Redis has the delivery, and a sender never retries a delivery it got a
//! `202` for; with Redis' defaults (RDB snapshots, no append-only file) a restart of
//! Redis loses every delivery acknowledged since the last snapshot. Redis' own settings
//! decide this, so they are read (`CONFIG GET append* maxmemory maxmemory-policy`, on
//! every primary of a cluster) and said out loud: a log line, `hookgate check`,
//! `/readyz` and a gauge. A Redis that evicts keys under memory pressure loses
//! deliveries without any restart: that is not durable either.

use std::collections::HashMap;

use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{ServerErrorKind, Value};

use crate::store::redis::{Conn, RedisConnection};

/// What Redis' persistence settings promise for an acknowledged write, worst first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Persistence {
    /// A `maxmemory` with a `maxmemory-policy` other than `noeviction`: under memory
    /// pressure Redis deletes keys, the queue's stream, schedule and records among them,
    /// with no restart at all.
    Evicting { policy: String },
    /// `appendonly no`: a Redis restart loses what was written since the last snapshot.
    Snapshots,
    /// The settings could not be read (Redis did not answer), or not yet.
    Unknown(String),
    /// Redis refused `CONFIG GET` (many managed services disable it, or an ACL forbids
    /// it): an answer, not a failing store, so neither counted as a store error nor asked
    /// again every few seconds (the critical `HookgateStoreErrors` fired for good).
    Refused(String),
    /// `appendonly yes` with `appendfsync everysec` or `no`: a restart of Redis, even a
    /// `kill -9`, loses nothing (Redis writes the file before it answers), a crash of the
    /// host up to one second (`everysec`) or ~30 seconds (`no`) of writes.
    AppendOnly { fsync: String },
    /// `appendonly yes` and `appendfsync always`: every acknowledged write is on disk.
    Fsynced,
}

impl Persistence {
    /// From one server's `CONFIG GET append*` answer.
    fn from_config(config: &HashMap<String, String>) -> Persistence {
        let limited = config.get("maxmemory").is_some_and(|m| m != "0");
        if let Some(policy) = config.get("maxmemory-policy")
            && limited
            && policy != "noeviction"
        {
            return Persistence::Evicting {
                policy: policy.clone(),
            };
        }
        match (
            config.get("appendonly").map(String::as_str),
            config.get("appendfsync").map(String::as_str),
        ) {
            (Some("yes"), Some("always")) => Persistence::Fsynced,
            (Some("yes"), fsync) => Persistence::AppendOnly {
                fsync: fsync.unwrap_or("unknown").to_owned(),
            },
            (Some(_), _) => Persistence::Snapshots,
            (None, _) => Persistence::Unknown("CONFIG GET answered without appendonly".into()),
        }
    }

    /// False when an acknowledged delivery can be lost on a Redis restart.
    pub fn survives_restart(&self) -> bool {
        matches!(self, Persistence::AppendOnly { .. } | Persistence::Fsynced)
    }

    /// `hookgate_queue_redis_persistence`: 0 lost on a restart, 1 survives a restart,
    /// 2 survives a host crash too, -1 unknown.
    pub fn gauge(&self) -> i64 {
        match self {
            Persistence::Evicting { .. } | Persistence::Snapshots => 0,
            Persistence::Unknown(_) | Persistence::Refused(_) => -1,
            Persistence::AppendOnly { .. } => 1,
            Persistence::Fsynced => 2,
        }
    }
}

impl std::fmt::Display for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Persistence::Evicting { policy } => write!(
                f,
                "NOT durable: Redis evicts keys when it reaches maxmemory (maxmemory-policy {policy}), deliveries already answered 202 among them; set maxmemory-policy noeviction"
            ),
            Persistence::Snapshots => f.write_str(
                "NOT durable: Redis runs without an append-only file (appendonly no), so a Redis restart loses every delivery acknowledged since its last snapshot; set appendonly yes",
            ),
            Persistence::Unknown(why) => write!(
                f,
                "unknown: Redis' persistence settings could not be read ({why}); a 202 is only as durable as its appendonly setting"
            ),
            Persistence::Refused(why) => write!(
                f,
                "unknown: Redis refuses CONFIG GET ({why}), as many managed services do; a 202 is only as durable as its appendonly setting (ask the provider whether it keeps an append-only file)"
            ),
            Persistence::AppendOnly { fsync } => write!(
                f,
                "durable across Redis restarts (appendonly yes, appendfsync {fsync}); a crash of Redis' host can lose the last {} of deliveries",
                if fsync == "no" { "~30 s" } else { "second" }
            ),
            Persistence::Fsynced => {
                f.write_str("durable (appendonly yes, appendfsync always): every 202 is on disk")
            }
        }
    }
}

/// Reads the settings of Redis, or of every primary of a cluster (the worst one counts:
/// a partition on a snapshot-only node loses its deliveries).
pub async fn read(redis: &RedisConnection) -> Persistence {
    let answers = redis
        .call("config_get", async |conn| {
            // Several patterns in one CONFIG GET: Redis 7.
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET")
                .arg("append*")
                .arg("maxmemory")
                .arg("maxmemory-policy");
            match conn {
                Conn::Single(_) => match cmd.query_async::<Value>(conn).await {
                    Err(e) if refusal(&e) => Ok(vec![Err(refused(e.code(), e.detail()))]),
                    answer => Ok(vec![Ok(answer?)]),
                },
                Conn::Cluster(cluster) => {
                    let routing =
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                    let answers = match cluster.route_command(cmd, routing).await {
                        Err(e) if refusal(&e) => {
                            return Ok(vec![Err(refused(e.code(), e.detail()))]);
                        }
                        answers => answers?,
                    };
                    let each = |answer| match answer {
                        Value::ServerError(e)
                            if matches!(
                                e.kind(),
                                Some(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
                            ) =>
                        {
                            Err(refused(Some(e.code()), e.details()))
                        }
                        answer => Ok(answer),
                    };
                    match answers {
                        Value::Map(nodes) => Ok(nodes.into_iter().map(|(_, v)| each(v)).collect()),
                        other => Ok(vec![each(other)]),
                    }
                }
            }
        })
        .await;
    match answers {
        Err(e) => Persistence::Unknown(e.to_string()),
        Ok(answers) => answers
            .into_iter()
            .map(|answer| match answer {
                Err(why) => Persistence::Refused(why),
                Ok(answer) => match redis::from_redis_value::<HashMap<String, String>>(answer) {
                    Ok(config) => Persistence::from_config(&config),
                    Err(e) => Persistence::Unknown(format!("CONFIG GET answered {e}")),
                },
            })
            .min()
            .unwrap_or_else(|| Persistence::Unknown("no primary answered".into())),
    }
}

/// An error Redis answered (an unknown or renamed command, `NOPERM`), not a failure to
/// reach it nor one that passes (`LOADING` while it starts).
fn refusal(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind::{NoPerm, ResponseError};
    matches!(e.kind(), redis::ErrorKind::Server(ResponseError | NoPerm))
}

fn refused(code: Option<&str>, detail: Option<&str>) -> String {
    match (code, detail) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(text), None) | (None, Some(text)) => text.to_owned(),
        (None, None) => "refused".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_an_append_only_file_survives_a_restart() {
        let defaults = config(&[("appendonly", "no"), ("appendfsync", "everysec")]);
        assert_eq!(Persistence::from_config(&defaults), Persistence::Snapshots);
        assert!(!Persistence::Snapshots.survives_restart());
        let aof = Persistence::from_config(&config(&[
            ("appendonly", "yes"),
            ("appendfsync", "everysec"),
        ]));
        assert!(aof.survives_restart(), "{aof}");
        assert_eq!(
            Persistence::from_config(&config(&[("appendonly", "yes"), ("appendfsync", "always")])),
            Persistence::Fsynced
        );
    }

    #[test]
    fn a_redis_that_evicts_keys_is_not_durable_whatever_its_file() {
        let evicting = config(&[
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("maxmemory", "3145728"),
            ("maxmemory-policy", "allkeys-lru"),
        ]);
        let found = Persistence::from_config(&evicting);
        assert!(matches!(found, Persistence::Evicting { .. }), "{found}");
        assert!(!found.survives_restart());
        assert_eq!(found.gauge(), 0);
        // No limit, or no eviction: the file decides.
        for (maxmemory, policy) in [("0", "allkeys-lru"), ("3145728", "noeviction")] {
            let mut settings = evicting.clone();
            settings.insert("maxmemory".into(), maxmemory.into());
            settings.insert("maxmemory-policy".into(), policy.into());
            assert_eq!(Persistence::from_config(&settings), Persistence::Fsynced);
        }
    }

    #[test]
    fn the_worst_primary_decides() {
        let nodes = [
            Persistence::Fsynced,
            Persistence::Snapshots,
            Persistence::AppendOnly {
                fsync: "everysec".into(),
            },
        ];
        assert_eq!(nodes.into_iter().min(), Some(Persistence::Snapshots));
        assert!(
            Persistence::Unknown(String::new()) < Persistence::AppendOnly { fsync: "no".into() }
        );
    }
}
