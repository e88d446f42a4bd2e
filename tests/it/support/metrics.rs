//! `Scrape`: one read of `/metrics` in the Prometheus text format, and the series the
//! tests look up most.

/// One scrape of `/metrics` in the Prometheus text format.
pub struct Scrape(pub String);

impl Scrape {
    /// The value of an exact series (`name{labels}` as rendered, labels sorted), or
    /// `None` when the series does not exist.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(rest.trim().parse().expect("a sample value"))
        })
    }

    /// `hookgate_requests_total{outcome, source}`; the series is pre-created at zero.
    pub fn requests(&self, source: &str, outcome: &str) -> u64 {
        let series = format!(r#"hookgate_requests_total{{outcome="{outcome}",source="{source}"}}"#);
        self.value(&series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.0)) as u64
    }

    /// `hookgate_upstream_responses_total{class, route}`; zero when never observed.
    pub fn upstream_responses(&self, route: &str, class: &str) -> u64 {
        self.value(&format!(
            r#"hookgate_upstream_responses_total{{class="{class}",route="{route}"}}"#
        ))
        .unwrap_or(0.0) as u64
    }
}
