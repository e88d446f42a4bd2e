//! The `Store` contract: what dedupe's two-phase claims and the rate limit rely on from
//! any store, through the trait only.
//!
//! A claim holds a key in flight for its TTL; committing marks the key done for the done
//! TTL; releasing frees it. A claim that ran out and was replaced can no longer settle
//! anything (`Superseded`), while a late commit that finds the key free still marks it
//! done (the delivery did go through). Rate checks take from a GCRA bucket per client.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::join_all;
use hookgate::config::RateLimitSettings;
use hookgate::store::{ClaimState, RateDecision, Settled, Store};
use tokio::time::{sleep, sleep_until};

use super::{Moment, assert_within, timed};
use crate::support::eventually;

/// A claim or done mark that outlives any test.
const LONG: Duration = Duration::from_secs(600);
/// A claim meant to run out during the test: nothing is asserted while it may still hold.
const SHORT: Duration = Duration::from_millis(200);
/// A done mark the test waits out.
const DONE_TTL: Duration = Duration::from_secs(1);
/// Past a TTL that started at some moment: stores count in whole milliseconds.
const PAST: Duration = Duration::from_millis(2);

/// One request per second after a burst of three.
const RATE: RateLimitSettings = RateLimitSettings {
    requests_per_second: 1.0,
    burst: 3,
};
const INTERVAL: Duration = Duration::from_secs(1);

fn client(n: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, n])
}

async fn claim(store: &dyn Store, key: &str, token: &str, ttl: Duration) -> ClaimState {
    store
        .claim(key, token, ttl)
        .await
        .expect("the store answers")
}

async fn rate_check(store: &dyn Store, client: IpAddr) -> RateDecision {
    store.rate_check(client).await.expect("the store answers")
}

fn assert_in_flight(state: ClaimState) {
    assert!(matches!(state, ClaimState::InFlight { .. }), "{state:?}");
}

/// Claims `key` for `token` (for `LONG`) as soon as the claim holding it runs out, and
/// says when that claim was won.
async fn claim_once_expired(store: &dyn Store, key: &str, token: &str) -> Moment {
    eventually(format!("the claim on {key} running out"), async || {
        let (state, moment) = timed(claim(store, key, token, LONG)).await;
        match state {
            ClaimState::Won => Ok(moment),
            ClaimState::InFlight { .. } => Err("in flight"),
            ClaimState::Done => panic!("{key} is done, not in flight"),
        }
    })
    .await
}

/// A claim holds its key for its TTL, and never less: a replacement wins no sooner.
async fn old_claim_replaced(store: &dyn Store) {
    let (won, claimed) = timed(claim(store, "k", "old", SHORT)).await;
    assert_eq!(won, ClaimState::Won);
    let replaced = claim_once_expired(store, "k", "new").await;
    assert!(
        replaced.end - claimed.start >= SHORT,
        "the claim ran out after {:?} of its {SHORT:?}",
        replaced.end - claimed.start
    );
}

/// Claims `key` for `token` (for `SHORT`) and waits until that claim has run out, with
/// nobody else claiming the key meanwhile.
async fn claim_and_let_run_out(store: &dyn Store, key: &str, token: &str) {
    let (won, claimed) = timed(claim(store, key, token, SHORT)).await;
    assert_eq!(won, ClaimState::Won);
    sleep_until(claimed.end + SHORT + PAST).await;
}

/// After a commit with `DONE_TTL` made at `committed`: done, then free once it ran out.
async fn assert_done_for_the_done_ttl(store: &dyn Store, committed: Moment) {
    assert_eq!(claim(store, "k", "b", LONG).await, ClaimState::Done);
    sleep_until(committed.end + DONE_TTL + PAST).await;
    assert_eq!(claim(store, "k", "b", LONG).await, ClaimState::Won);
}

// ---------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------

pub async fn a_claim_holds_its_key_until_committed_then_done_holds_it_for_the_done_ttl(
    store: &dyn Store,
) {
    assert_eq!(claim(store, "k", "a", LONG).await, ClaimState::Won);
    assert_in_flight(claim(store, "k", "b", LONG).await);

    let (applied, committed) = timed(store.commit("k", "a", DONE_TTL)).await;

    assert_eq!(applied.unwrap(), Settled::Applied);
    assert_done_for_the_done_ttl(store, committed).await;
}

pub async fn a_released_claim_frees_its_key_for_the_next_claim(store: &dyn Store) {
    assert_eq!(claim(store, "k", "a", LONG).await, ClaimState::Won);

    assert_eq!(store.release("k", "a").await.unwrap(), Settled::Applied);

    assert_eq!(claim(store, "k", "b", LONG).await, ClaimState::Won);
}

pub async fn claims_on_one_key_leave_every_other_key_alone(store: &dyn Store) {
    assert_eq!(claim(store, "k1", "a", LONG).await, ClaimState::Won);
    assert_eq!(claim(store, "k2", "a", LONG).await, ClaimState::Won);
    assert_eq!(claim(store, "k3", "c", LONG).await, ClaimState::Won);

    assert_eq!(
        store.commit("k1", "a", LONG).await.unwrap(),
        Settled::Applied
    );
    assert_eq!(store.release("k3", "c").await.unwrap(), Settled::Applied);

    assert_eq!(claim(store, "k1", "b", LONG).await, ClaimState::Done);
    assert_in_flight(claim(store, "k2", "b", LONG).await);
    assert_eq!(claim(store, "k3", "b", LONG).await, ClaimState::Won);
    assert_eq!(claim(store, "k4", "b", LONG).await, ClaimState::Won);
}

pub async fn a_claim_in_flight_reports_the_time_it_has_left(store: &dyn Store) {
    let (won, claimed) = timed(claim(store, "k", "a", LONG)).await;
    assert_eq!(won, ClaimState::Won);
    sleep(Duration::from_millis(100)).await;

    let (state, asked) = timed(claim(store, "k", "b", LONG)).await;

    let ClaimState::InFlight { remaining } = state else {
        panic!("a second claim must find the first in flight: {state:?}");
    };
    assert_within(
        remaining,
        LONG - (asked.end - claimed.start),
        LONG - (asked.start - claimed.end),
        "the time left",
    );
}

pub async fn a_stale_claim_cannot_commit_over_the_newer_claim_that_replaced_it(store: &dyn Store) {
    old_claim_replaced(store).await;

    let late = store.commit("k", "old", LONG).await.unwrap();

    assert_eq!(late, Settled::Superseded);
    assert_in_flight(claim(store, "k", "third", LONG).await);
    assert_eq!(
        store.commit("k", "new", LONG).await.unwrap(),
        Settled::Applied
    );
    assert_eq!(claim(store, "k", "fourth", LONG).await, ClaimState::Done);
}

pub async fn a_stale_claim_cannot_release_the_newer_claim_that_replaced_it(store: &dyn Store) {
    old_claim_replaced(store).await;

    let late = store.release("k", "old").await.unwrap();

    assert_eq!(late, Settled::Superseded);
    assert_in_flight(claim(store, "k", "third", LONG).await);
    assert_eq!(store.release("k", "new").await.unwrap(), Settled::Applied);
    assert_eq!(claim(store, "k", "fourth", LONG).await, ClaimState::Won);
}

pub async fn a_late_commit_with_nobody_else_holding_the_key_still_marks_it_done(store: &dyn Store) {
    claim_and_let_run_out(store, "k", "a").await;

    let late = store.commit("k", "a", LONG).await.unwrap();

    assert_eq!(late, Settled::Applied);
    assert_eq!(claim(store, "k", "b", LONG).await, ClaimState::Done);
}

pub async fn a_done_key_can_be_neither_released_nor_committed_again(store: &dyn Store) {
    assert_eq!(claim(store, "k", "a", LONG).await, ClaimState::Won);
    assert_eq!(
        store.commit("k", "a", LONG).await.unwrap(),
        Settled::Applied
    );

    assert_eq!(store.release("k", "a").await.unwrap(), Settled::Superseded);
    assert_eq!(store.release("k", "b").await.unwrap(), Settled::Superseded);
    assert_eq!(
        store.commit("k", "a", LONG).await.unwrap(),
        Settled::Superseded
    );
    assert_eq!(
        store.commit("k", "b", LONG).await.unwrap(),
        Settled::Superseded
    );

    assert_eq!(claim(store, "k", "c", LONG).await, ClaimState::Done);
}

// ---------------------------------------------------------------------------------
// Commits of claims that cannot have run out yet (`commit_unexpired`)
// ---------------------------------------------------------------------------------

pub async fn an_unexpired_commit_marks_its_own_claim_done_for_the_done_ttl(store: &dyn Store) {
    assert_eq!(claim(store, "k", "a", LONG).await, ClaimState::Won);

    let (applied, committed) = timed(store.commit_unexpired("k", "a", DONE_TTL)).await;

    assert_eq!(applied.unwrap(), Settled::Applied);
    // The done TTL replaced the claim's.
    assert_done_for_the_done_ttl(store, committed).await;
}

pub async fn an_unexpired_commit_whose_claim_ran_out_still_marks_the_key_done(store: &dyn Store) {
    // As when the store lost the key (evicted, flushed): nothing holds it now.
    claim_and_let_run_out(store, "k", "a").await;

    let settled = store.commit_unexpired("k", "a", LONG).await.unwrap();

    assert_eq!(settled, Settled::Applied);
    assert_eq!(claim(store, "k", "b", LONG).await, ClaimState::Done);
}

/// Whether the key is then done or still the other claim's is the backend's choice (the
/// trait allows marking it done, since this copy went through); either way it stays held.
pub async fn an_unexpired_commit_that_finds_another_claim_says_superseded(store: &dyn Store) {
    // The claim of "a" was lost on the store's side and "b" claimed the key meanwhile.
    assert_eq!(claim(store, "k", "b", LONG).await, ClaimState::Won);

    let settled = store.commit_unexpired("k", "a", LONG).await.unwrap();

    assert_eq!(settled, Settled::Superseded);
    let state = claim(store, "k", "c", LONG).await;
    assert_ne!(
        state,
        ClaimState::Won,
        "the key is free after a superseded commit"
    );
}

pub async fn concurrent_claims_of_one_key_are_won_by_exactly_one(store: &dyn Store) {
    let tokens: Vec<String> = (0..20).map(|n| format!("t{n}")).collect();

    let states = join_all(tokens.iter().map(|token| claim(store, "k", token, LONG))).await;

    let won = states.iter().filter(|s| **s == ClaimState::Won).count();
    assert_eq!(won, 1, "{states:?}");
    for state in states.into_iter().filter(|s| *s != ClaimState::Won) {
        assert_in_flight(state);
    }
}

// ---------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------

pub async fn the_bucket_allows_the_burst_then_one_request_per_interval(store: &dyn Store) {
    store.set_rate(RATE);
    let (first, started) = timed(rate_check(store, client(1))).await;
    assert_eq!(first, RateDecision::Allow);
    for _ in 1..RATE.burst {
        assert_eq!(rate_check(store, client(1)).await, RateDecision::Allow);
    }

    let (over, asked) = timed(rate_check(store, client(1))).await;

    let RateDecision::Deny { retry_after } = over else {
        panic!("the request after the burst must wait: {over:?}");
    };
    // The next token comes one interval after the burst began.
    assert_within(
        retry_after,
        INTERVAL - (asked.end - started.start),
        INTERVAL - (asked.start - started.end),
        "Retry-After",
    );
    sleep(retry_after).await;
    assert_eq!(rate_check(store, client(1)).await, RateDecision::Allow);
    assert!(matches!(
        rate_check(store, client(1)).await,
        RateDecision::Deny { .. }
    ));
}

pub async fn a_denied_request_takes_nothing_from_the_bucket(store: &dyn Store) {
    store.set_rate(RateLimitSettings {
        requests_per_second: 1.0,
        burst: 1,
    });
    assert_eq!(rate_check(store, client(1)).await, RateDecision::Allow);
    let (first, denied) = timed(rate_check(store, client(1))).await;
    let RateDecision::Deny { retry_after } = first else {
        panic!("over the burst: {first:?}");
    };

    let again = rate_check(store, client(1)).await;

    let RateDecision::Deny {
        retry_after: retry_again,
    } = again
    else {
        panic!("still over the burst: {again:?}");
    };
    assert!(
        retry_again <= retry_after,
        "{retry_again:?} > {retry_after:?}"
    );
    sleep_until(denied.end + retry_after).await;
    assert_eq!(rate_check(store, client(1)).await, RateDecision::Allow);
}

pub async fn each_client_has_a_bucket_of_its_own(store: &dyn Store) {
    store.set_rate(RateLimitSettings {
        requests_per_second: 1.0,
        burst: 1,
    });
    assert_eq!(rate_check(store, client(1)).await, RateDecision::Allow);
    assert!(matches!(
        rate_check(store, client(1)).await,
        RateDecision::Deny { .. }
    ));

    assert_eq!(rate_check(store, client(2)).await, RateDecision::Allow);
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(rate_check(store, v6).await, RateDecision::Allow);
}

pub async fn a_new_rate_applies_from_the_next_request(store: &dyn Store) {
    store.set_rate(RateLimitSettings {
        requests_per_second: 1.0,
        burst: 1,
    });
    assert_eq!(rate_check(store, client(1)).await, RateDecision::Allow);
    assert!(matches!(
        rate_check(store, client(1)).await,
        RateDecision::Deny { .. }
    ));

    store.set_rate(RATE);

    for _ in 0..RATE.burst {
        assert_eq!(rate_check(store, client(2)).await, RateDecision::Allow);
    }
    assert!(matches!(
        rate_check(store, client(2)).await,
        RateDecision::Deny { .. }
    ));
}

pub async fn a_running_store_answers_ping(store: &dyn Store) {
    store.ping().await.expect("a running store answers ping");
    assert!(!store.describe().is_empty());
}
