//! `eventually`: the one way an integration test waits for something to happen.
//!
//! A test polls a condition until it holds, with one deadline (`PATIENCE`) and one poll
//! interval for the whole suite, instead of a deadline loop of its own. A condition may
//! say what it saw instead, so that a timeout shows what never changed. Under
//! `tokio::time::pause()` the polls take no real time.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::PATIENCE;

/// How long `eventually` waits between two looks.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What one look of `eventually` found.
pub trait Condition {
    /// What `eventually` returns once the condition holds.
    type Value;

    /// The value when the condition holds; otherwise what was seen instead, if anything
    /// is worth showing in the failure.
    fn check(self) -> Result<Self::Value, Option<String>>;
}

/// Holds or not.
impl Condition for bool {
    type Value = ();

    fn check(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

/// `Some` once the awaited thing exists.
impl<T> Condition for Option<T> {
    type Value = T;

    fn check(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Ok` once it holds; `Err` says what was seen instead.
impl<T, E: fmt::Display> Condition for Result<T, E> {
    type Value = T;

    fn check(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// Looks with `probe` until its condition holds and returns the condition's value;
/// panics with `what` (and what was seen last) after `PATIENCE`.
pub async fn eventually<C: Condition>(
    what: impl fmt::Display,
    mut probe: impl AsyncFnMut() -> C,
) -> C::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match probe().await.check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => match seen {
                Some(seen) => panic!("timed out waiting: {what}; last seen: {seen}"),
                None => panic!("timed out waiting: {what}"),
            },
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
