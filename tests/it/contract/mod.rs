//! The backend contracts: what every `Store` and every `Queue` must do, written once
//! against `&dyn Store` and `&dyn Queue` and run against every backend.
//!
//! `store.rs` and `queue.rs` hold the suites: plain async functions that go through the
//! traits only. `contract_tests!` makes one test of each per backend, named
//! `contract::<backend>::<store|queue|shared>::<behaviour>`, and its invocation at the end
//! of this file lists every backend. The stores and queues are built from settings by
//! hookgate's own factories (`Backend::store`, `Backend::queue`), as a gateway builds
//! them. Adding a backend is:
//! - a function below that starts it for one test (or says why the test is skipped) and
//!   returns it as a `TestStore`, with a `Config::store` arm that points a config at it;
//! - one line in `contract_tests!`, marked `(shared)` when several instances share its
//!   queue (they then also run `queue::shared`).
//!
//! Time: the in-memory store runs on tokio's clock, so its suite runs with time paused
//! and waits cost nothing; the other backends keep real time, so their waits are short
//! and every assertion about time is a bound taken from when the calls were made
//! (`Moment`), which holds however slow the machine, and is exact when time is paused.

pub mod queue;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use hookgate::metrics::Metrics;
use hookgate::queue::Queue;
use hookgate::store::Store;
use tokio::time::Instant;

use crate::support::{NOWHERE, SOURCE, TestStore, config};

/// The instance name of the queue a `queue` contract test gets.
pub const INSTANCE: &str = "instance-a";

/// A backend for one test: where its state lives, kept as long as this.
pub struct Backend {
    place: TestStore,
    /// `queue.partitions` (Redis: each partition under a hash tag of its own).
    pub partitions: usize,
}

/// What a contract test's queue is opened with; everything else is hookgate's default.
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    pub retention: Duration,
    pub visibility_timeout: Duration,
    /// `queue.max_age`; `None`: hookgate's default.
    pub max_age: Option<Duration>,
}

impl Default for QueueOptions {
    /// Nothing is forgotten or taken over during a test.
    fn default() -> Self {
        QueueOptions {
            retention: Duration::from_secs(3600),
            visibility_timeout: Duration::from_secs(30),
            max_age: None,
        }
    }
}

impl Backend {
    fn on(place: TestStore) -> Backend {
        Backend {
            place,
            partitions: 1,
        }
    }

    /// The settings a gateway using this backend runs with, with a queue source.
    fn settings(&self, queue: QueueOptions) -> hookgate::Settings {
        let millis = |d: Duration| format!("\"{}ms\"", d.as_millis());
        let mut text = config()
            .store(&self.place)
            .queued()
            .route("*", NOWHERE)
            .queue_option("retention", &millis(queue.retention))
            .queue_option("visibility_timeout", &millis(queue.visibility_timeout))
            .queue_option("partitions", &self.partitions.to_string());
        if let Some(max_age) = queue.max_age {
            text = text.queue_option("max_age", &millis(max_age));
        }
        let text = text.to_string();
        hookgate::config::parse(&text, "contract.toml")
            .unwrap_or_else(|e| panic!("invalid contract config: {e}\n{text}"))
    }

    /// Whether the backend keeps the dedupe keys with the queue, so that an enqueue can
    /// write them in the same step (`Queue::dedupe_in_enqueue`): PostgreSQL only. Said
    /// here, not asked of the queue, so that losing it fails the tests that depend on it.
    pub fn holds_dedupe_keys(&self) -> bool {
        matches!(self.place, TestStore::Postgres { .. })
    }

    /// Whether an enqueue under a dedupe claim marks the claim done in the same step
    /// (`Queue::enqueue_all_claimed`): PostgreSQL, and a single Redis, whose script can
    /// touch the claim's key (a cluster keeps it in another slot).
    pub fn marks_claims_in_enqueue(&self) -> bool {
        matches!(self.place, TestStore::Postgres { .. } | TestStore::Redis(_))
    }

    /// The store, as the gateway builds it. Once per test: on the in-memory store this
    /// pauses tokio's clock, which the store keeps time by.
    pub fn store(&self) -> Arc<dyn Store> {
        if let TestStore::Memory = self.place {
            tokio::time::pause();
        }
        let settings = self.settings(QueueOptions::default());
        hookgate::store::build(&settings, metrics())
            .expect("the store builds")
            .0
    }

    /// The queue of one instance (`instance` names it among those sharing the backend),
    /// as the gateway builds it.
    pub fn queue(&self, instance: &str, options: QueueOptions) -> Arc<dyn Queue> {
        let settings = self.settings(options);
        let (_, backend) = hookgate::store::build(&settings, metrics()).expect("the store builds");
        hookgate::queue::build(&settings, &backend, metrics(), instance)
            .expect("the queue builds")
            .expect("a queue source makes a queue")
    }
}

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new([SOURCE]))
}

/// When a backend acted: at some instant between `start` and `end`, the call that made
/// it act. Bounds built from it hold whatever the machine's speed; with time paused,
/// `start == end` and they are exact.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    pub start: Instant,
    pub end: Instant,
}

/// Runs `call` and says when.
pub async fn timed<T>(call: impl Future<Output = T>) -> (T, Moment) {
    let start = Instant::now();
    let value = call.await;
    (
        value,
        Moment {
            start,
            end: Instant::now(),
        },
    )
}

/// Asserts `low - slack <= value <= high + slack`, saying `what` it is.
#[track_caller]
pub fn assert_within(value: Duration, low: Duration, high: Duration, what: &str) {
    const SLACK: Duration = Duration::from_millis(2);
    assert!(
        low.saturating_sub(SLACK) <= value && value <= high + SLACK,
        "{what}: {value:?} is not within {low:?}..={high:?}"
    );
}

/// One test per contract function and backend: the store and queue suites for every
/// backend, and the `shared` suite for backends whose queue several instances share.
/// Each test builds its backend with the constructor given, or returns when the
/// constructor says the test is skipped.
macro_rules! contract_tests {
    ($($backend:ident $(($shared:ident))? => $make:expr),+ $(,)?) => {$(
        mod $backend {
            use super::*;

            mod store {
                use super::*;
                contract_tests!(@store $make;
                    a_claim_holds_its_key_until_committed_then_done_holds_it_for_the_done_ttl,
                    a_released_claim_frees_its_key_for_the_next_claim,
                    claims_on_one_key_leave_every_other_key_alone,
                    a_claim_in_flight_reports_the_time_it_has_left,
                    a_stale_claim_cannot_commit_over_the_newer_claim_that_replaced_it,
                    a_stale_claim_cannot_release_the_newer_claim_that_replaced_it,
                    a_late_commit_with_nobody_else_holding_the_key_still_marks_it_done,
                    a_done_key_can_be_neither_released_nor_committed_again,
                    an_unexpired_commit_marks_its_own_claim_done_for_the_done_ttl,
                    an_unexpired_commit_whose_claim_ran_out_still_marks_the_key_done,
                    an_unexpired_commit_that_finds_another_claim_says_superseded,
                    concurrent_claims_of_one_key_are_won_by_exactly_one,
                    the_bucket_allows_the_burst_then_one_request_per_interval,
                    a_denied_request_takes_nothing_from_the_bucket,
                    each_client_has_a_bucket_of_its_own,
                    a_new_rate_applies_from_the_next_request,
                    a_running_store_answers_ping,
                );
            }

            mod queue {
                use super::*;
                contract_tests!(@queue $make;
                    an_enqueued_delivery_is_shown_and_listed_as_queued_with_what_was_enqueued,
                    a_taken_delivery_begins_as_an_attempt_with_everything_it_was_enqueued_with,
                    the_trace_context_comes_back_with_every_attempt_and_the_history_keeps_trace_ids,
                    enqueue_all_stores_every_copy_with_its_own_record_and_lease,
                    pace_allows_the_burst_then_one_start_per_interval_per_key,
                    a_raised_rate_applies_from_the_next_start,
                    pace_asked_at_once_allows_no_more_than_the_rate,
                    a_deferred_delivery_waits_until_its_time_without_an_attempt,
                    a_deferral_past_max_age_dead_letters_the_delivery_without_an_attempt,
                    a_deferral_past_max_age_tells_the_attempts_the_delivery_had,
                    deliveries_are_taken_oldest_first_and_at_most_as_many_as_asked,
                    a_retry_is_taken_once_due_and_not_before_then_the_delivery_is_processed,
                    a_processed_delivery_keeps_its_record_but_not_its_body_or_headers,
                    a_final_failure_keeps_what_a_replay_needs_and_is_found_by_failed_since,
                    only_a_final_failure_can_be_replayed_and_a_replay_starts_counting_again,
                    a_handed_back_delivery_is_queued_again_at_once_with_the_attempt_closed,
                    a_delivery_handed_back_before_its_attempt_began_keeps_its_count,
                    a_lease_on_a_delivery_that_became_final_begins_and_hands_back_nothing,
                    listing_filters_by_state_and_source_newest_first_up_to_the_limit,
                    listing_filters_by_route_event_type_and_time_window,
                    a_search_finds_a_delivery_by_its_id_or_by_the_senders_webhook_id,
                    pages_follow_their_cursor_through_every_match_once_newest_first,
                    pages_through_many_deliveries_of_one_time_show_each_once,
                    a_replayed_dead_letter_moves_to_the_top_of_every_list_it_is_in,
                    stats_count_the_deliveries_not_yet_final_and_the_oldest_waiting,
                    an_instance_renews_its_own_leases_and_never_prunes_itself,
                    a_fetched_object_is_kept_for_every_later_attempt_and_a_failed_fetch_is_no_attempt,
                    a_fetch_that_fails_for_good_or_is_cut_short_is_no_attempt,
                    a_settle_repeated_after_it_went_through_changes_nothing,
                    a_failed_fetch_settled_twice_is_counted_once,
                    stored_says_whether_an_enqueue_stored_its_deliveries,
                    a_filter_holding_a_nul_lists_nothing,
                );
                contract_tests!(@backend $make;
                    enqueue_all_first_stores_a_delivery_only_while_its_key_is_free,
                    enqueue_all_claimed_stores_nothing_under_a_claim_no_longer_held,
                    final_records_are_forgotten_after_the_retention_and_others_are_kept,
                    a_delivery_past_max_age_and_retention_stays_listed_while_its_record_lives,
                );
            }

            $(
                mod $shared {
                    use super::*;
                    contract_tests!(@backend $make;
                        a_delivery_whose_lease_is_renewed_is_taken_over_once_renewals_stop,
                        a_lapsed_lease_taken_back_by_its_own_instance_is_the_lease_it_holds,
                        a_delivery_handed_back_is_taken_by_another_instance_at_once,
                        a_lease_taken_over_by_another_instance_can_no_longer_move_the_delivery,
                        a_delivery_taken_over_and_deferred_waits_as_queued,
                        instances_taking_at_once_never_get_the_same_delivery,
                        stopped_instances_holding_nothing_are_pruned_but_not_one_holding_a_delivery,
                    );
                }
            )?
        }
    )+};

    (@store $make:expr; $($test:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $test() {
            let Some(backend) = $make else { return };
            $crate::contract::store::$test(&*backend.store()).await;
        }
    )+};

    (@queue $make:expr; $($test:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $test() {
            let Some(backend) = $make else { return };
            let queue = backend.queue(INSTANCE, QueueOptions::default());
            $crate::contract::queue::$test(&*queue).await;
        }
    )+};

    (@backend $make:expr; $($test:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $test() {
            let Some(backend) = $make else { return };
            $crate::contract::queue::$test(&backend).await;
        }
    )+};
}

contract_tests! {
    memory => memory(),
    redis(shared) => redis().await,
    redis_cluster(shared) => redis_cluster().await,
    postgres(shared) => postgres().await,
    redis_cluster_partitioned(shared) => redis_cluster_partitioned().await,
}

/// Nothing to start: the in-memory store and queue of this process.
fn memory() -> Option<Backend> {
    Some(Backend::on(TestStore::Memory))
}

/// A `redis-server` of this test's own.
async fn redis() -> Option<Backend> {
    TestStore::redis().await.map(Backend::on)
}

/// The shared PostgreSQL server, in a schema of this test's own; the schema is made by
/// the migrations, as `hookgate serve` makes it.
async fn postgres() -> Option<Backend> {
    let store = TestStore::postgres()?;
    let backend = Backend::on(store);
    let settings = backend.settings(QueueOptions::default());
    hookgate::store::prepare(&settings)
        .await
        .expect("the migrations apply");
    Some(backend)
}

/// The shared three-node Redis Cluster, under a key prefix of this test's own.
async fn redis_cluster() -> Option<Backend> {
    TestStore::shared_cluster().await.map(Backend::on)
}

/// The shared Redis Cluster, its queue in six partitions (two per node, as far as the
/// slots of their hash tags fall so), under a key prefix of this test's own.
async fn redis_cluster_partitioned() -> Option<Backend> {
    let mut backend = redis_cluster().await?;
    backend.partitions = 6;
    Some(backend)
}
