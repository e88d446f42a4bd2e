//! Durations written back the way a config file writes them, for `check`'s summary:
//! `72h` rather than humantime's `3days`, so a line reads like the key it came from.

use std::time::Duration;

const UNITS: [(&str, u128); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// `72h`, `1h30m`, `250ms`; whole weeks and longer in days (`7d`); `0s` for zero.
/// Parses back with humantime to the same value (below a millisecond is dropped).
pub fn written(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    const DAY: u128 = 86_400_000;
    if ms >= 7 * DAY && ms % DAY == 0 {
        return format!("{}d", ms / DAY);
    }
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_config_file_writes_them() {
        let h = |hours: u64| Duration::from_secs(hours * 3_600);
        assert_eq!(written(h(72)), "72h");
        assert_eq!(written(h(24)), "24h");
        assert_eq!(written(h(7 * 24)), "7d");
        assert_eq!(written(h(30 * 24)), "30d");
        assert_eq!(written(h(7 * 24 + 1)), "169h");
        assert_eq!(written(Duration::from_secs(90 * 60)), "1h30m");
        assert_eq!(written(Duration::from_secs(15)), "15s");
        assert_eq!(written(Duration::from_millis(1_250)), "1s250ms");
        assert_eq!(written(Duration::ZERO), "0s");
    }

    #[test]
    fn what_is_written_parses_back_to_the_same_duration() {
        for secs in [1, 59, 61, 3_599, 3_601, 86_400, 259_200, 604_800, 700_000] {
            let d = Duration::from_secs(secs);
            assert_eq!(humantime::parse_duration(&written(d)).unwrap(), d, "{secs}");
        }
    }
}
