//! `LogGate`: at most one log line per interval for an event a client can cause at will
//! (a failed TLS handshake), so that a flood of them cannot flood the log. The line
//! that gets through says how many were held back since the last one; the metrics
//! count every event regardless.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogGate {
    interval: Duration,
    state: Mutex<Gate>,
}

struct Gate {
    /// When the last line was let through.
    last: Option<Instant>,
    /// Events held back since then.
    held_back: u64,
}

impl LogGate {
    pub const fn new(interval: Duration) -> LogGate {
        LogGate {
            interval,
            state: Mutex::new(Gate {
                last: None,
                held_back: 0,
            }),
        }
    }

    /// `Some(held back since the last line)` when this event may be logged at `now`;
    /// `None` when it is held back (and counted).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut gate = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match gate.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                gate.held_back += 1;
                None
            }
            _ => {
                gate.last = Some(now);
                Some(std::mem::take(&mut gate.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_gets_through_and_says_how_many_were_held_back() {
        let gate = LogGate::new(Duration::from_secs(1));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(gate.admit(at(0)), Some(0));
        assert_eq!(gate.admit(at(10)), None);
        assert_eq!(gate.admit(at(999)), None);
        assert_eq!(gate.admit(at(1_000)), Some(2));
        assert_eq!(gate.admit(at(1_500)), None);
        assert_eq!(gate.admit(at(5_000)), Some(1));
        assert_eq!(gate.admit(at(6_000)), Some(0));
    }
}
