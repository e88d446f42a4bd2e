//! The Redis queue's partitions (`queue.partitions`): each one a whole queue of its own
//! (ready stream, scheduled set, records, list indexes) under one hash tag, so each
//! script still touches one Redis Cluster slot while the partitions spread over the
//! cluster's primaries. Partition 0 keeps the tag `{queue}` (the key names of an
//! unpartitioned queue, so its data stays readable whatever `partitions` says); partition
//! `i > 0` uses `{queue:i}`.
//!
//! A delivery lives in one partition for good, and its id says which
//! (`IdGenerator::next_in`, `partition_of`): the worker calls and the admin API's `show`
//! and `replay` go to that partition without a search. This file also decides the
//! order in which ingress and the workers try the partitions (`Partitions::order`):
//! rotating, so none is starved, and with the partitions whose node just failed last,
//! so one node that is down delays only its own partitions. The scripts and the
//! merging of the admin answers over the partitions are `mod.rs`' and `list.rs`'.

use std::borrow::Cow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::queue::record::partition_of;

/// How long a partition whose node failed is tried last (ingress), and how often the
/// workers ask it, in a probe of its own, whether it answers again: one failed call
/// costs up to the store's `connect_timeout + timeout`, which the healthy partitions must
/// not pay on every poll.
const REST: Duration = Duration::from_secs(2);

/// One partition's keys: `<prefix>{queue}:` (partition 0) or `<prefix>{queue:i}:`,
/// followed by `ready`, `scheduled`, `dead`, `index`, and `d:` (where records' keys
/// start).
#[derive(Debug, Clone)]
pub(super) struct Partition {
    pub index: usize,
    /// `<prefix>{queue}:` or `<prefix>{queue:i}:`: every key of the partition starts so.
    pub base: String,
    pub ready: String,
    pub scheduled: String,
    pub dead: String,
    pub list_index: String,
    pub records: String,
}

impl Partition {
    pub fn new(prefix: &str, index: usize) -> Partition {
        let base = match index {
            0 => format!("{prefix}{{queue}}:"),
            i => format!("{prefix}{{queue:{i}}}:"),
        };
        Partition {
            index,
            ready: format!("{base}ready"),
            scheduled: format!("{base}scheduled"),
            dead: format!("{base}dead"),
            list_index: format!("{base}index"),
            records: format!("{base}d:"),
            base,
        }
    }

    pub fn record_key(&self, id: &str) -> String {
        [self.records.as_str(), id].concat()
    }

    pub fn history_key(&self, id: &str) -> String {
        [self.base.as_str(), "h:", id].concat()
    }
}

/// The configured partitions, where each one's `XAUTOCLAIM` scan resumes, and which
/// of them failed a moment ago.
pub(super) struct Partitions {
    prefix: String,
    all: Vec<Partition>,
    /// Where the next `XAUTOCLAIM` scan of each partition's pending entries resumes.
    claim_cursors: Vec<Mutex<String>>,
    /// Per partition: when (ms after `started`) its last `XAUTOCLAIM` scan began; 0: never.
    claim_started: Vec<AtomicU64>,
    /// The partition ingress tries first next, and the one the workers take from first.
    next_enqueue: AtomicUsize,
    next_take: AtomicUsize,
    /// Per partition: until when (ms after `started`) it rests after a failure; 0: never
    /// failed, or answered since.
    resting_until: Vec<AtomicU64>,
    /// Per partition: whether a probe (`Partitions::probe`) is under way.
    probing: Vec<AtomicBool>,
    started: Instant,
}

/// Which rotation to advance: ingress' and the workers' are kept apart so that one
/// does not skew the other's turns.
#[derive(Debug, Clone, Copy)]
pub(super) enum Turn {
    Enqueue,
    Take,
}

impl Partitions {
    pub fn new(prefix: &str, count: usize) -> Partitions {
        let count = count.max(1);
        Partitions {
            prefix: prefix.to_owned(),
            all: (0..count).map(|i| Partition::new(prefix, i)).collect(),
            claim_cursors: (0..count).map(|_| Mutex::new("0-0".to_owned())).collect(),
            claim_started: (0..count).map(|_| AtomicU64::new(0)).collect(),
            next_enqueue: AtomicUsize::new(0),
            next_take: AtomicUsize::new(0),
            resting_until: (0..count).map(|_| AtomicU64::new(0)).collect(),
            probing: (0..count).map(|_| AtomicBool::new(false)).collect(),
            started: Instant::now(),
        }
    }

    pub fn all(&self) -> &[Partition] {
        &self.all
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// The partition a delivery lives in, by its id. One beyond the configured count
    /// (written before `partitions` was lowered) is still found for `show` and `replay`.
    pub fn of(&self, id: &str) -> Cow<'_, Partition> {
        let index = partition_of(id);
        match self.all.get(index) {
            Some(p) => Cow::Borrowed(p),
            None => Cow::Owned(Partition::new(&self.prefix, index)),
        }
    }

    /// Every partition once, in the order to try them: starting one further than the
    /// last call of the same `turn` did (so each partition is first in turn and none is
    /// starved), those resting after a failure moved to the end.
    pub fn order(&self, turn: Turn) -> Vec<usize> {
        let counter = match turn {
            Turn::Enqueue => &self.next_enqueue,
            Turn::Take => &self.next_take,
        };
        let n = self.all.len();
        let start = counter.fetch_add(1, Ordering::Relaxed) % n;
        let now = self.elapsed_ms();
        let (mut healthy, resting): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|k| (start + k) % n)
            .partition(|&i| self.resting_until[i].load(Ordering::Relaxed) <= now);
        healthy.extend(resting);
        healthy
    }

    /// Whether `partition` failed less than `REST` ago.
    pub fn resting(&self, partition: usize) -> bool {
        self.resting_until
            .get(partition)
            .is_some_and(|r| r.load(Ordering::Relaxed) > self.elapsed_ms())
    }

    /// Whether the last call to `partition` failed (resting or not): until a call
    /// succeeds, the workers take from it only by way of a probe.
    pub fn failed(&self, partition: usize) -> bool {
        self.resting_until
            .get(partition)
            .is_some_and(|r| r.load(Ordering::Relaxed) != 0)
    }

    /// Whether a probe of `partition` is due (it failed, its rest is over, and no probe
    /// is under way); if so, the caller runs one and reports it with `probed`.
    pub fn probe(&self, partition: usize) -> bool {
        self.failed(partition)
            && !self.resting(partition)
            && self.probing.get(partition).is_some_and(|p| {
                p.compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            })
    }

    /// The end of a probe `probe` allowed: recorded as any call.
    pub fn probed(&self, partition: usize, ok: bool) {
        self.record(partition, ok);
        if let Some(p) = self.probing.get(partition) {
            p.store(false, Ordering::Relaxed);
        }
    }

    /// Records how a call to `partition` went: a failure makes it rest for `REST`.
    pub fn record(&self, partition: usize, ok: bool) {
        let Some(resting) = self.resting_until.get(partition) else {
            return;
        };
        let until = if ok {
            0
        } else {
            self.elapsed_ms() + REST.as_millis() as u64
        };
        resting.store(until, Ordering::Relaxed);
    }

    pub fn claim_cursor(&self, partition: usize) -> String {
        self.claim_cursors[partition]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a take from `partition` scans its pending entries (`XAUTOCLAIM`): always
    /// while a scan is under way (its cursor is not back at the start), else once
    /// `every` has passed since the last scan began. A scan costs Redis about as much as
    /// the rest of a take, and an entry is only taken over once idle for the whole
    /// visibility timeout, so scanning on every take bought nothing but Redis time.
    pub fn claim_due(&self, partition: usize, every: Duration) -> bool {
        let now = self.elapsed_ms();
        if self.claim_cursor(partition) != "0-0" {
            return true;
        }
        let last = &self.claim_started[partition];
        let was = last.load(Ordering::Relaxed);
        if was != 0 && now.saturating_sub(was) < every.as_millis() as u64 {
            return false;
        }
        last.compare_exchange(was, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    pub fn set_claim_cursor(&self, partition: usize, cursor: String) {
        *self.claim_cursors[partition]
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = cursor;
    }

    fn elapsed_ms(&self) -> u64 {
        // At least 1, so a rest set at the start is not read as "never failed".
        self.started.elapsed().as_millis() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::record::IdGenerator;

    #[test]
    fn partition_zero_keeps_the_unpartitioned_key_names_and_the_others_have_their_own_tag() {
        let zero = Partition::new("hookgate:", 0);
        assert_eq!(zero.ready, "hookgate:{queue}:ready");
        assert_eq!(zero.record_key("dlv_1"), "hookgate:{queue}:d:dlv_1");
        assert_eq!(zero.history_key("dlv_1"), "hookgate:{queue}:h:dlv_1");
        let three = Partition::new("hookgate:", 3);
        assert_eq!(three.ready, "hookgate:{queue:3}:ready");
        assert_eq!(three.list_index, "hookgate:{queue:3}:index");
        assert_eq!(three.dead, "hookgate:{queue:3}:dead");
    }

    #[test]
    fn a_delivery_is_found_in_the_partition_its_id_names_even_past_the_configured_count() {
        let partitions = Partitions::new("p:", 4);
        let ids = IdGenerator::default();
        for index in [0, 2, 3, 9] {
            let id = ids.next_in(1, index);
            assert_eq!(partitions.of(&id).index, index);
            assert_eq!(partitions.of(&id).base, Partition::new("p:", index).base);
        }
    }

    #[test]
    fn each_partition_is_first_in_turn_and_a_failed_one_goes_last_until_it_rested() {
        let partitions = Partitions::new("p:", 3);
        let firsts: Vec<usize> = (0..6).map(|_| partitions.order(Turn::Take)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        // Ingress has its own turns.
        assert_eq!(partitions.order(Turn::Enqueue), [0, 1, 2]);

        partitions.record(1, false);
        assert!(partitions.resting(1));
        assert_eq!(partitions.order(Turn::Take), [0, 2, 1]);
        assert_eq!(partitions.order(Turn::Take), [2, 0, 1]);
        partitions.record(1, true);
        assert!(!partitions.resting(1));
        assert_eq!(partitions.order(Turn::Take), [2, 0, 1]);
    }

    #[test]
    fn a_failed_partition_is_probed_once_its_rest_is_over_one_probe_at_a_time() {
        let partitions = Partitions::new("p:", 2);
        assert!(
            !partitions.failed(0) && !partitions.probe(0),
            "healthy: no probe"
        );
        partitions.record(0, false);
        assert!(partitions.failed(0));
        assert!(!partitions.probe(0), "not while it rests");
        partitions.resting_until[0].store(1, Ordering::Relaxed);
        assert!(partitions.probe(0), "its rest is over");
        assert!(!partitions.probe(0), "one probe at a time");
        partitions.probed(0, false);
        assert!(partitions.failed(0) && partitions.resting(0));
        partitions.resting_until[0].store(1, Ordering::Relaxed);
        assert!(partitions.probe(0));
        partitions.probed(0, true);
        assert!(!partitions.failed(0) && !partitions.resting(0));
        assert!(!partitions.failed(1));
    }

    #[test]
    fn pending_entries_are_scanned_once_per_interval_and_a_scan_under_way_goes_on() {
        let partitions = Partitions::new("p:", 2);
        let every = Duration::from_secs(3600);
        assert!(partitions.claim_due(0, every), "the first take scans");
        assert!(!partitions.claim_due(0, every));
        assert!(partitions.claim_due(1, every), "each partition has its own");
        partitions.set_claim_cursor(0, "5-0".into());
        assert!(partitions.claim_due(0, every), "a scan under way goes on");
        partitions.set_claim_cursor(0, "0-0".into());
        assert!(!partitions.claim_due(0, every));
        assert!(partitions.claim_due(0, Duration::ZERO));
    }
}
