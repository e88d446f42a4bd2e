//! The overview's figures over time, from the gateway's own metrics: Prometheus counters
//! only count up since start, so a sampler keeps a reading of the counters the overview
//! shows once a minute for an hour, and "last hour" and "per second" are differences
//! between now and a kept reading. Nothing here is exported to Prometheus; a dashboard
//! computes the same from the scraped series.
//!
//! The series read are those the overview names (`TRACKED`), found by name in the
//! registry, so a family another part registers later (`hookgate_breaker_state`, for
//! one) is shown as soon as it exists without this file knowing its code.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus::Registry;
use prometheus::proto::MetricFamily;
use tokio::time::Instant;

/// Requests by `source` and `outcome`.
pub const REQUESTS: &str = "hookgate_requests_total";
/// Upstream answers by `route` and `class`.
pub const UPSTREAM: &str = "hookgate_upstream_responses_total";
/// Queue-mode attempts by `route` and `result`.
pub const DELIVERIES: &str = "hookgate_deliveries_total";
/// Circuit breakers by route, when the gateway has them.
pub const BREAKERS: &str = "hookgate_breaker_state";

const TRACKED: [&str; 3] = [REQUESTS, UPSTREAM, DELIVERIES];

/// How often the counters are read, and how long readings are kept.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);
const KEEP: Duration = Duration::from_secs(3600);
/// The span a rate is computed over, at least (the newest reading this old).
pub const RATE_SPAN: Duration = Duration::from_secs(300);

/// One series: its family and its labels, sorted by name.
pub type Series = (&'static str, Vec<(String, String)>);

/// Counter values at one moment.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub values: BTreeMap<Series, f64>,
}

impl Reading {
    /// The tracked counters of `registry` now.
    pub fn of(registry: &Registry) -> Reading {
        let mut values = BTreeMap::new();
        for family in registry.gather() {
            let Some(name) = TRACKED.into_iter().find(|n| *n == family.name()) else {
                continue;
            };
            for metric in family.get_metric() {
                values.insert((name, labels(metric)), metric.get_counter().get_value());
            }
        }
        Reading { values }
    }

    pub fn get(&self, series: &Series) -> f64 {
        self.values.get(series).copied().unwrap_or(0.0)
    }
}

fn labels(metric: &prometheus::proto::Metric) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = metric
        .get_label()
        .iter()
        .map(|l| (l.name().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    labels
}

/// The value of label `name` in `labels`, or "".
pub fn label<'a>(labels: &'a [(String, String)], name: &str) -> &'a str {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
}

/// The readings of the last hour, oldest first.
#[derive(Default)]
pub struct History {
    readings: Mutex<VecDeque<(Instant, Reading)>>,
}

/// What changed between a kept reading and now.
#[derive(Debug, Clone)]
pub struct Change {
    pub now: Reading,
    /// The increase of each series over `span`.
    pub increase: BTreeMap<Series, f64>,
    /// How long the increase was counted over: an hour, or since start when shorter.
    pub span: Duration,
    /// Per-second rates over about `RATE_SPAN`.
    pub rate: BTreeMap<Series, f64>,
}

impl History {
    pub fn record(&self, at: Instant, reading: Reading) {
        let mut readings = self.lock();
        while readings
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > KEEP + SAMPLE_EVERY)
        {
            readings.pop_front();
        }
        readings.push_back((at, reading));
    }

    /// The last hour's increase (since the oldest reading within the hour) and recent
    /// rates, against `now` read at `at`.
    pub fn change(&self, now: Reading, at: Instant) -> Change {
        let readings = self.lock();
        let hour_ago = readings
            .iter()
            .find(|(t, _)| at.duration_since(*t) <= KEEP)
            .or(readings.front());
        let recent = readings
            .iter()
            .rev()
            .find(|(t, _)| at.duration_since(*t) >= RATE_SPAN)
            .or(readings.front());
        let diff = |base: Option<&(Instant, Reading)>| -> (BTreeMap<Series, f64>, Duration) {
            let Some((t, base)) = base else {
                return (BTreeMap::new(), Duration::ZERO);
            };
            let increase = now
                .values
                .iter()
                .map(|(series, value)| {
                    // A counter only goes down when the process restarted: count from 0.
                    let before = base.get(series);
                    let delta = if *value >= before {
                        value - before
                    } else {
                        *value
                    };
                    (series.clone(), delta)
                })
                .collect();
            (increase, at.duration_since(*t))
        };
        let (increase, span) = diff(hour_ago);
        let (recent_increase, recent_span) = diff(recent);
        let seconds = recent_span.as_secs_f64();
        let rate = recent_increase
            .into_iter()
            .map(|(series, delta)| {
                let per_second = if seconds > 0.0 { delta / seconds } else { 0.0 };
                (series, per_second)
            })
            .collect();
        Change {
            now,
            increase,
            span,
            rate,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Reading)>> {
        self.readings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One breaker as `hookgate_breaker_state` tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    /// Its labels other than `state`, as `name=value` text (the route, usually).
    pub name: String,
    /// The state: the `state` label of the series whose value is 1 when the family
    /// labels states that way, else the gauge's value with the family's help text.
    pub state: String,
}

/// The breakers the registry knows, when a `hookgate_breaker_state` family exists.
pub fn breakers(registry: &Registry) -> Option<(String, Vec<Breaker>)> {
    let family: MetricFamily = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == BREAKERS)?;
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for metric in family.get_metric() {
        let labels = labels(metric);
        let name = labels
            .iter()
            .filter(|(n, _)| n != "state")
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let value = metric.get_gauge().get_value();
        match labels.iter().find(|(n, _)| n == "state") {
            Some((_, state)) if value >= 1.0 => {
                found.insert(name, state.clone());
            }
            Some(_) => {
                found.entry(name).or_default();
            }
            // hookgate's own gauge: 0 closed, 1 open, 2 half-open (`breaker`).
            None => {
                let state = match value {
                    0.0 => "closed".to_owned(),
                    1.0 => "open".to_owned(),
                    2.0 => "half-open".to_owned(),
                    other => format!("{other}"),
                };
                found.insert(name, state);
            }
        }
    }
    let breakers = found
        .into_iter()
        .map(|(name, state)| Breaker { name, state })
        .collect();
    Some((family.help().to_owned(), breakers))
}

/// Wall-clock time of a monotonic instant, for "since" labels.
pub fn wall(at: Instant) -> SystemTime {
    SystemTime::now() - Instant::now().saturating_duration_since(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, IntGaugeVec, Opts};

    fn registry() -> (Registry, IntCounterVec) {
        let registry = Registry::new();
        let requests =
            IntCounterVec::new(Opts::new(REQUESTS, "requests"), &["source", "outcome"]).unwrap();
        registry.register(Box::new(requests.clone())).unwrap();
        (registry, requests)
    }

    fn series(outcome: &str) -> Series {
        (
            REQUESTS,
            vec![
                ("outcome".to_owned(), outcome.to_owned()),
                ("source".to_owned(), "openai".to_owned()),
            ],
        )
    }

    #[test]
    fn the_last_hour_counts_from_the_oldest_reading_within_it() {
        let (registry, requests) = registry();
        let history = History::default();
        let t0 = Instant::now();
        let forwarded = requests.with_label_values(&["openai", "forwarded"]);
        forwarded.inc_by(5);
        history.record(t0, Reading::of(&registry));
        forwarded.inc_by(10);
        history.record(t0 + Duration::from_secs(600), Reading::of(&registry));
        forwarded.inc_by(30);

        let change = history.change(Reading::of(&registry), t0 + Duration::from_secs(900));
        assert_eq!(change.increase[&series("forwarded")], 40.0);
        assert_eq!(change.span, Duration::from_secs(900));
        // Rates over the newest reading at least RATE_SPAN old: 30 in 300 s.
        assert_eq!(change.rate[&series("forwarded")], 0.1);

        let later = t0 + Duration::from_secs(4000);
        let change = history.change(Reading::of(&registry), later);
        assert_eq!(
            change.increase[&series("forwarded")],
            30.0,
            "the older one is out"
        );
    }

    #[test]
    fn readings_older_than_an_hour_are_dropped() {
        let (registry, _) = registry();
        let history = History::default();
        let t0 = Instant::now();
        for minute in 0..200 {
            history.record(t0 + SAMPLE_EVERY * minute, Reading::of(&registry));
        }
        assert!(history.lock().len() <= 62, "{}", history.lock().len());
    }

    #[test]
    fn breakers_read_one_hot_state_labels_or_plain_values() {
        let (registry, _) = registry();
        assert_eq!(breakers(&registry), None);
        let states =
            IntGaugeVec::new(Opts::new(BREAKERS, "breaker states"), &["route", "state"]).unwrap();
        registry.register(Box::new(states.clone())).unwrap();
        states.with_label_values(&["openai/0", "closed"]).set(0);
        states.with_label_values(&["openai/0", "open"]).set(1);
        states.with_label_values(&["openai/1", "closed"]).set(1);
        let (help, found) = breakers(&registry).unwrap();
        assert_eq!(help, "breaker states");
        assert_eq!(
            found,
            [
                Breaker {
                    name: "route=openai/0".into(),
                    state: "open".into()
                },
                Breaker {
                    name: "route=openai/1".into(),
                    state: "closed".into()
                },
            ]
        );
    }

    #[test]
    fn breakers_read_hookgates_numeric_states() {
        let (registry, _) = registry();
        let states =
            IntGaugeVec::new(Opts::new(BREAKERS, "states"), &["route", "upstream"]).unwrap();
        registry.register(Box::new(states.clone())).unwrap();
        states.with_label_values(&["openai/b", "0"]).set(0);
        states.with_label_values(&["openai/b", "audit"]).set(1);
        states.with_label_values(&["openai/c", "0"]).set(2);
        let (_, found) = breakers(&registry).unwrap();
        let states: Vec<(&str, &str)> = found
            .iter()
            .map(|b| (b.name.as_str(), b.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("route=openai/b upstream=0", "closed"),
                ("route=openai/b upstream=audit", "open"),
                ("route=openai/c upstream=0", "half-open"),
            ]
        );
    }
}
