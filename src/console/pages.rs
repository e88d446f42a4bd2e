//! The console's pages, one handler each: what they read from the queue, the store, the
//! metrics and the running configuration, and how they turn it into a view.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::history::{self, DELIVERIES, REQUESTS, Series, UPSTREAM, label};
use super::views::{
    BreakerList, Choice, Count, DeliveryPage, FilterForm, ListPage, OverviewPage, QueueCard,
    ReplayPage, RouteRow, Row, SourceRow, Time,
};
use super::{Console, Reply, Visit, html, message, redirect};
use crate::admin::Query;
use crate::metrics::NO_SOURCE;
use crate::queue::record::{list_filter, parse_time};
use crate::queue::{ListFilter, Queue, Replayed, State, UnixMillis, is_delivery_id, now_millis};

/// How long the overview's reads of the store and the queue may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The overview reloads itself this often.
const REFRESH_SECONDS: u64 = 10;
/// Rows on one page of the list.
const PAGE_ROWS: usize = 50;
/// Dead letters one bulk replay takes at most.
const MAX_BULK: usize = 10_000;
/// The list's "queued within" choices.
const WINDOWS: [(&str, &str); 6] = [
    ("", "any time"),
    ("15m", "last 15 minutes"),
    ("1h", "last hour"),
    ("24h", "last 24 hours"),
    ("7d", "last 7 days"),
    ("30d", "last 30 days"),
];
/// The filter's keys, in the order links carry them.
const FILTER_KEYS: [&str; 9] = [
    "status",
    "source",
    "route",
    "upstream",
    "event_type",
    "search",
    "window",
    "since",
    "until",
];

impl Console {
    pub(super) async fn overview(&self, visit: &Visit<'_>) -> Reply {
        let mut chrome = self.chrome(visit, "Overview", "overview");
        chrome.refresh_seconds = REFRESH_SECONDS;
        let store = tokio::time::timeout(READ_TIMEOUT, self.store.ping()).await;
        let (store_ok, store_detail) = match store {
            Ok(Ok(())) => (true, self.store.describe()),
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, "the store did not answer within 2s".to_owned()),
        };
        let queue = match &self.queue {
            Some(queue) => Some(queue_card(queue.as_ref()).await),
            None => None,
        };
        let now = tokio::time::Instant::now();
        let change = self
            .history
            .change(history::Reading::of(self.metrics.registry()), now);
        let loaded = self.live.loaded();
        let mut sources: Vec<String> = Vec::new();
        for (source, _) in &loaded.routes {
            if !sources.contains(source) {
                sources.push(source.clone());
            }
        }
        let span = if change.span >= Duration::from_secs(3500) {
            "last hour".to_owned()
        } else {
            format!("since start, {} ago", minutes(change.span))
        };
        let page = OverviewPage {
            read_at: Time::at(SystemTime::now()),
            store_ok,
            store_detail,
            queue,
            reloaded: loaded.reloaded,
            loaded_at: Time::at(loaded.at),
            origin: loaded.origin.clone(),
            span,
            rate_span: minutes(history::RATE_SPAN),
            sources: source_rows(&sources, &change),
            routes: route_rows(&loaded.routes, &change),
            breakers: history::breakers(self.metrics.registry())
                .map(|(help, list)| BreakerList { help, list }),
            summary: loaded.summary.clone(),
            chrome,
        };
        html(StatusCode::OK, &page)
    }

    pub(super) async fn deliveries(&self, visit: &Visit<'_>) -> Reply {
        let q = &visit.query;
        let loaded = self.live.loaded();
        let mut sources: Vec<&str> = Vec::new();
        let mut routes: Vec<&str> = Vec::new();
        for (source, route) in &loaded.routes {
            if !sources.contains(&source.as_str()) {
                sources.push(source);
            }
            if !routes.contains(&route.as_str()) {
                routes.push(route);
            }
        }
        let given = |key: &str| q.get(key).unwrap_or("");
        let mut page = ListPage {
            chrome: self.chrome(visit, "Deliveries", "deliveries"),
            error: None,
            form: FilterForm {
                event_type: given("event_type").to_owned(),
                search: given("search").to_owned(),
                since: local_input(given("since")),
                until: local_input(given("until")),
            },
            states: Choice::list(State::ALL.map(State::as_str), given("status")),
            sources: Choice::list(sources, given("source")),
            // `route=fan&upstream=a` is the copy `fan/a`, which the select can hold.
            routes: Choice::list(
                routes,
                &match (given("route"), given("upstream")) {
                    ("", _) | (_, "") => given("route").to_owned(),
                    (route, upstream) => format!("{route}/{upstream}"),
                },
            ),
            windows: WINDOWS
                .iter()
                .map(|(value, label)| Choice {
                    value: (*value).to_owned(),
                    label: (*label).to_owned(),
                    selected: *value == given("window"),
                })
                .collect(),
            rows: Vec::new(),
            first_href: None,
            next_href: None,
            replay_href: None,
        };
        let Some(queue) = &self.queue else {
            page.error = Some(
                "Queue mode is off: every source forwards at once (proxy mode), so no \
                 delivery is stored to show."
                    .to_owned(),
            );
            return html(StatusCode::OK, &page);
        };
        let filter = match filter_of(q, PAGE_ROWS) {
            Ok(filter) => filter,
            Err(reason) => {
                page.error = Some(reason);
                return html(StatusCode::BAD_REQUEST, &page);
            }
        };
        match queue.list(&filter).await {
            Ok(list) => {
                page.rows = list.deliveries.iter().map(Row::of).collect();
                let keep = pinned(q, &FILTER_KEYS, &filter);
                page.next_href = list.next.map(|next| {
                    let mut pairs = keep.clone();
                    pairs.push(("cursor".to_owned(), next.to_string()));
                    href("/ui/deliveries", &pairs)
                });
                if filter.after.is_some() {
                    page.first_href = Some(href("/ui/deliveries", &keep));
                }
                if filter.state == Some(State::FailedFinal) && !page.rows.is_empty() {
                    let mut pairs = pinned(q, &FILTER_KEYS[1..], &filter);
                    pairs.retain(|(k, _)| k != "status");
                    page.replay_href = Some(href("/ui/replay", &pairs));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "console: the queue could not be listed");
                page.error = Some(format!("The queue could not be read: {e}"));
                return html(StatusCode::SERVICE_UNAVAILABLE, &page);
            }
        }
        html(StatusCode::OK, &page)
    }

    pub(super) async fn delivery(&self, visit: &Visit<'_>, id: &str) -> Reply {
        let Some(queue) = &self.queue else {
            return no_queue();
        };
        if !is_delivery_id(id) {
            return not_found(id);
        }
        let with_body = visit.query.flag("body");
        match queue.show(id, with_body).await {
            Ok(Some(detail)) => {
                let notice = visit.query.flag("replayed").then(|| {
                    "Replayed: the delivery is queued again and will be attempted shortly."
                        .to_owned()
                });
                let chrome = self.chrome(visit, &format!("Delivery {id}"), "deliveries");
                html(StatusCode::OK, &DeliveryPage::of(chrome, detail, notice))
            }
            Ok(None) => not_found(id),
            Err(e) => unavailable(e),
        }
    }

    pub(super) async fn replay_one(&self, id: &str) -> Reply {
        let Some(queue) = &self.queue else {
            return no_queue();
        };
        if !is_delivery_id(id) {
            return not_found(id);
        }
        match queue.replay(id, now_millis()).await {
            Ok(Replayed::Queued { was }) => {
                tracing::info!(
                    delivery_id = id,
                    was = was.as_str(),
                    "console: delivery replayed"
                );
                redirect(&format!("/ui/deliveries/{id}?replayed=1"))
            }
            Ok(Replayed::NotFound) => not_found(id),
            Ok(Replayed::NotReplayable(state)) => message(
                StatusCode::CONFLICT,
                "Not replayed",
                &format!(
                    "Only dead letters (failed_final) can be replayed; this delivery is {state}."
                ),
            ),
            Ok(Replayed::PartitionNotTaken { partition }) => message(
                StatusCode::CONFLICT,
                "Not replayed",
                &format!(
                    "This delivery lives in partition {partition}, past queue.partitions: \
                     queued there again, it would never be taken. Raise queue.partitions \
                     above {partition} to replay it."
                ),
            ),
            Err(e) => unavailable(e),
        }
    }

    /// How many dead letters the filter matches, and a form to replay them.
    pub(super) async fn confirm_replay(&self, visit: &Visit<'_>) -> Reply {
        let Some(queue) = &self.queue else {
            return no_queue();
        };
        let filter = match dead_letters(&visit.query) {
            Ok(filter) => filter,
            Err(reason) => return message(StatusCode::BAD_REQUEST, "Bad filter", &reason),
        };
        let pairs = pinned(&visit.query, &FILTER_KEYS[1..], &filter);
        let as_of = now_millis();
        let count = match matching(queue.as_ref(), filter, as_of, MAX_BULK + 1).await {
            Ok(ids) => ids.len(),
            Err(e) => return unavailable(e),
        };
        let criteria = carried(&visit.query, &FILTER_KEYS[1..])
            .iter()
            .filter(|(k, _)| k != "status")
            .map(|(k, v)| (k.replace('_', " "), v.clone()))
            .collect();
        let mut hidden: Vec<(String, String)> = pairs.clone();
        hidden.push(("as_of".to_owned(), as_of.to_string()));
        hidden.push(("count".to_owned(), count.min(MAX_BULK).to_string()));
        let mut back = pairs;
        back.push(("status".to_owned(), State::FailedFinal.as_str().to_owned()));
        let page = ReplayPage {
            chrome: self.chrome(visit, "Replay dead letters", "deliveries"),
            count: count.min(MAX_BULK),
            more: count > MAX_BULK,
            criteria,
            hidden,
            cancel_href: href("/ui/deliveries", &back),
        };
        html(StatusCode::OK, &page)
    }

    /// Replays the dead letters the confirmation counted: those matching its filter
    /// that had failed when it was shown, at most as many as it said.
    pub(super) async fn replay_matching(&self, visit: &Visit<'_>, form: &Query) -> Reply {
        let Some(queue) = &self.queue else {
            return no_queue();
        };
        let filter = match dead_letters(form) {
            Ok(filter) => filter,
            Err(reason) => return message(StatusCode::BAD_REQUEST, "Bad filter", &reason),
        };
        let as_of = form.get("as_of").and_then(|t| t.parse().ok());
        let count = form.get("count").and_then(|n| n.parse::<usize>().ok());
        let (Some(as_of), Some(count)) = (as_of, count) else {
            return message(
                StatusCode::BAD_REQUEST,
                "Not replayed",
                "The confirmation was incomplete: open the replay from the list again.",
            );
        };
        // In a task of its own, as the API's bulk replay: run in the request's future, a
        // tab closed or a proxy timing out cut it short part-way, unanswered and unlogged.
        let queue = queue.clone();
        let replaying = tokio::spawn(async move {
            let ids = matching(queue.as_ref(), filter, as_of, count.min(MAX_BULK)).await?;
            let now = now_millis();
            let mut replayed = 0;
            for id in &ids {
                match queue.replay(id, now).await {
                    Ok(Replayed::Queued { .. }) => replayed += 1,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(replayed, confirmed = count, error = %e, "console: bulk replay stopped part-way: the store failed; replay again for the rest");
                        return Err(e);
                    }
                }
            }
            tracing::info!(
                replayed,
                confirmed = count,
                "console: dead letters replayed"
            );
            Ok(replayed)
        });
        let replayed = match replaying.await {
            Ok(Ok(replayed)) => replayed,
            Ok(Err(e)) => return unavailable(e),
            Err(e) => {
                tracing::error!(error = %e, "console: the bulk replay task failed");
                return message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Not replayed",
                    "The replay stopped on an internal error; see the log, and replay again \
                     for the rest.",
                );
            }
        };
        let mut back = carried(form, &FILTER_KEYS[1..]);
        back.retain(|(k, _)| k != "status");
        let text = match (replayed, count) {
            (1, 1) => "Replayed the dead letter: it is queued again.".to_owned(),
            (r, c) if r == c => format!("Replayed {r} dead letters: they are queued again."),
            (r, c) => format!(
                "Replayed {r} of the {c} dead letters confirmed; the others were replayed, \
                 or forgotten, meanwhile."
            ),
        };
        html(
            StatusCode::OK,
            &super::views::MessagePage {
                chrome: self.chrome(visit, "Replayed", "deliveries"),
                heading: "Dead letters replayed".to_owned(),
                text,
                error: false,
                link_href: href("/ui/deliveries", &back),
                link_label: "Back to the deliveries".to_owned(),
            },
        )
    }
}

async fn queue_card(queue: &dyn Queue) -> QueueCard {
    let stats = tokio::time::timeout(READ_TIMEOUT, queue.stats()).await;
    let mut card = QueueCard {
        depth: 0,
        oldest_age: String::new(),
        dead_letters: 0,
        describe: queue.describe(),
        error: None,
    };
    match stats {
        Ok(Ok(stats)) => {
            card.depth = stats.depth;
            card.dead_letters = stats.dead_letters;
            card.oldest_age = if stats.oldest_age.is_zero() {
                "none waiting".to_owned()
            } else {
                humantime::format_duration(Duration::from_secs(stats.oldest_age.as_secs()))
                    .to_string()
            };
        }
        Ok(Err(e)) => card.error = Some(e.to_string()),
        Err(_) => card.error = Some("the queue did not answer within 2s".to_owned()),
    }
    card
}

/// `5m`, `1h 0m`: a span as the page says it.
fn minutes(span: Duration) -> String {
    let minutes = span.as_secs() / 60;
    match minutes {
        0 => format!("{}s", span.as_secs()),
        m if m < 60 => format!("{m}m"),
        m => format!("{}h {}m", m / 60, m % 60),
    }
}

fn rate(per_second: f64) -> String {
    match per_second {
        0.0 => "0".to_owned(),
        r if r < 0.01 => "< 0.01".to_owned(),
        r if r < 10.0 => format!("{r:.2}"),
        r => format!("{r:.0}"),
    }
}

/// The style of an outcome, an upstream status class or an attempt's result.
fn class_of(label: &str) -> &'static str {
    match label {
        "forwarded" | "queued" | "2xx" | "processed" => "ok",
        "duplicate" | "unrouted" | "1xx" | "3xx" | "failed_retryable" | "in_flight" => "warn",
        _ => "bad",
    }
}

/// The series of `family` grouped by the value of label `by`, with their increase over
/// the span and their rate, by the value of label `of`.
fn grouped(
    change: &history::Change,
    family: &str,
    by: &str,
    of: &str,
) -> BTreeMap<String, (Vec<Count>, f64)> {
    let mut groups: BTreeMap<String, (Vec<Count>, f64)> = BTreeMap::new();
    for ((name, labels), increase) in &change.increase {
        if *name != family {
            continue;
        }
        let group = groups.entry(label(labels, by).to_owned()).or_default();
        let series: Series = (name, labels.clone());
        group.1 += change.rate.get(&series).copied().unwrap_or(0.0);
        let count = increase.round() as u64;
        if count > 0 {
            let what = label(labels, of);
            group.0.push(Count {
                label: what.to_owned(),
                count,
                class: class_of(what),
            });
        }
    }
    for (counts, _) in groups.values_mut() {
        counts.sort_by_key(|c| std::cmp::Reverse(c.count));
    }
    groups
}

fn source_rows(sources: &[String], change: &history::Change) -> Vec<SourceRow> {
    let mut groups = grouped(change, REQUESTS, "source", "outcome");
    let mut names: Vec<String> = sources.to_vec();
    if groups.get(NO_SOURCE).is_some_and(|(c, _)| !c.is_empty()) {
        names.push(NO_SOURCE.to_owned());
    }
    names
        .into_iter()
        .map(|name| {
            let (counts, per_second) = groups.remove(&name).unwrap_or_default();
            SourceRow {
                total: counts.iter().map(|c| c.count).sum(),
                counts,
                rate: rate(per_second),
                name: if name == NO_SOURCE {
                    "(no source: unknown path)".to_owned()
                } else {
                    name
                },
            }
        })
        .collect()
}

fn route_rows(routes: &[(String, String)], change: &history::Change) -> Vec<RouteRow> {
    let mut answers = grouped(change, UPSTREAM, "route", "class");
    let mut attempts = grouped(change, DELIVERIES, "route", "result");
    routes
        .iter()
        .map(|(source, route)| {
            let name = format!("{source}/{route}");
            let (answers, per_second) = answers.remove(&name).unwrap_or_default();
            let (attempts, _) = attempts.remove(&name).unwrap_or_default();
            RouteRow {
                name,
                answers,
                attempts,
                rate: rate(per_second),
            }
        })
        .collect()
}

/// The list's filter from the page's query: the API's parameters (`list_filter`), a
/// "queued within" window, and times from the form's `datetime-local` inputs (UTC
/// unless `console.js` rewrote them with the viewer's offset).
fn filter_of(q: &Query, limit: usize) -> Result<ListFilter, String> {
    let time = |key: &str| -> Result<Option<UnixMillis>, String> {
        match q.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(text) => form_time(text)
                .map(Some)
                .ok_or_else(|| format!("{key} {text:?} is not a time (2026-12-06T10:00:00Z)")),
        }
    };
    let (since, until) = (time("since")?, time("until")?);
    let mut filter = list_filter(
        |key| match key {
            "since" | "until" | "limit" => None,
            _ => q.get(key),
        },
        limit,
        limit,
    )
    .map_err(|reason| format!("That filter is not valid ({reason})."))?;
    filter.since = since;
    filter.until = until;
    if let Some(window) = q.get("window").filter(|w| !w.is_empty()) {
        let ago = humantime::parse_duration(window)
            .ok()
            .and_then(|ago| UnixMillis::try_from(ago.as_millis()).ok())
            .ok_or_else(|| format!("window {window:?} is not a duration"))?;
        let from = now_millis().saturating_sub(ago);
        filter.since = Some(filter.since.map_or(from, |s| s.max(from)));
    }
    Ok(filter)
}

/// The filter of a bulk replay: the list's, on dead letters only.
fn dead_letters(q: &Query) -> Result<ListFilter, String> {
    let mut filter = filter_of(q, 500)?;
    filter.state = Some(State::FailedFinal);
    filter.after = None;
    Ok(filter)
}

/// Up to `max` ids of dead letters matching `filter` that had failed by `as_of`.
async fn matching(
    queue: &dyn Queue,
    mut filter: ListFilter,
    as_of: UnixMillis,
    max: usize,
) -> Result<Vec<String>, crate::queue::QueueError> {
    let mut ids = Vec::new();
    loop {
        let page = queue.list(&filter).await?;
        for summary in page.deliveries {
            if summary.updated_at <= as_of && ids.len() < max {
                ids.push(summary.id);
            }
        }
        match page.next {
            Some(next) if ids.len() < max => filter.after = Some(next),
            _ => return Ok(ids),
        }
    }
}

/// A time from a form: RFC 3339, Unix milliseconds, or `datetime-local`'s
/// `2026-12-06T10:00[:00]` read as UTC.
fn form_time(text: &str) -> Option<UnixMillis> {
    parse_time(text).or_else(|| match text.len() {
        16 => parse_time(&format!("{text}:00Z")),
        19 => parse_time(&format!("{text}Z")),
        _ => None,
    })
}

/// A time the form sent, as a `datetime-local` input shows it (UTC; `console.js`
/// shows it in the viewer's zone).
fn local_input(text: &str) -> String {
    match form_time(text) {
        Some(ms) => Time::millis(ms).iso[..19].to_owned(),
        None => String::new(),
    }
}

/// `carried`, with a `window` turned into the `since` it stood for when this page was
/// made: the next page, or the replay this page confirms, then covers the deliveries
/// this page did, not a window that moved on meanwhile (dropping the oldest).
fn pinned(q: &Query, keys: &[&str], filter: &ListFilter) -> Vec<(String, String)> {
    let mut pairs = carried(q, keys);
    if pairs.iter().any(|(k, _)| k == "window") {
        pairs.retain(|(k, _)| k != "window" && k != "since");
        if let Some(since) = filter.since {
            pairs.push(("since".to_owned(), since.to_string()));
        }
    }
    pairs
}

/// The non-empty values of `keys` in `q`, to carry into a link.
fn carried(q: &Query, keys: &[&str]) -> Vec<(String, String)> {
    keys.iter()
        .filter_map(|key| {
            q.get(key)
                .filter(|v| !v.is_empty())
                .map(|v| ((*key).to_owned(), v.to_owned()))
        })
        .collect()
}

fn href(path: &str, pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return path.to_owned();
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{path}?{query}")
}

fn no_queue() -> Reply {
    message(
        StatusCode::NOT_FOUND,
        "No queue",
        "Queue mode is off: no delivery is stored.",
    )
}

fn not_found(id: &str) -> Reply {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!(
            "There is no delivery {id:?}: it never existed, or it was forgotten after the retention."
        ),
    )
}

fn unavailable(e: impl std::fmt::Display) -> Reply {
    tracing::warn!(error = %e, "console: queue operation failed");
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Queue unavailable",
        &format!("The queue could not be reached: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Outcome;

    #[test]
    fn form_times_are_rfc3339_or_datetime_local_as_utc() {
        assert_eq!(form_time("2023-11-14T22:13"), Some(1_699_999_980_000));
        assert_eq!(form_time("2023-11-14T22:13:20"), Some(1_700_000_000_000));
        assert_eq!(
            form_time("2023-11-14T22:13:20.000Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(form_time("noon"), None);
        assert_eq!(
            local_input("2023-11-14T22:13:20.000Z"),
            "2023-11-14T22:13:20"
        );
        assert_eq!(local_input(""), "");
        // Past the year 9999 a time is refused, not formatted (that panicked).
        assert_eq!(local_input("253402300800000"), "");
        assert!(
            filter_of(&Query::parse("since=253402300800000"), 50)
                .unwrap_err()
                .contains("since")
        );
    }

    #[test]
    fn a_window_narrows_since_and_bad_values_are_named() {
        let q = Query::parse("window=1h&status=failed_final&source=");
        let filter = filter_of(&q, 50).unwrap();
        let hour_ago = now_millis() - 3_600_000;
        assert!(filter.since.unwrap().abs_diff(hour_ago) < 60_000);
        assert_eq!(filter.state, Some(State::FailedFinal));
        assert_eq!(filter.source, None);
        assert_eq!(filter.limit, 50);
        assert!(
            filter_of(&Query::parse("since=noon"), 50)
                .unwrap_err()
                .contains("since")
        );
        assert!(
            filter_of(&Query::parse("window=soon"), 50)
                .unwrap_err()
                .contains("window")
        );
        // Too long to be a window (it wrapped to an arbitrary `since`).
        assert!(
            filter_of(&Query::parse("window=500000000000000h"), 50)
                .unwrap_err()
                .contains("window")
        );
        assert!(
            filter_of(&Query::parse("status=lost"), 50)
                .unwrap_err()
                .contains("unknown_status")
        );
    }

    #[test]
    fn links_carry_the_filter_encoded() {
        let q = Query::parse("status=failed_final&search=a%26b&cursor=x&source=");
        let pairs = carried(&q, &FILTER_KEYS);
        assert_eq!(
            href("/ui/deliveries", &pairs),
            "/ui/deliveries?status=failed_final&search=a%26b"
        );
        assert_eq!(href("/ui/deliveries", &[]), "/ui/deliveries");
        // A fan-out route's upstream stays in the links (page 2 lost it).
        let q = Query::parse("route=r&upstream=a");
        assert_eq!(
            href("/ui/deliveries", &carried(&q, &FILTER_KEYS)),
            "/ui/deliveries?route=r&upstream=a"
        );
    }

    /// The next page and the replay confirmed cover what this page did: a window is
    /// carried as the `since` it stood for (it moved on with each request, so a replay
    /// confirmed a while ago dropped its oldest dead letters).
    #[test]
    fn links_carry_a_window_as_the_since_it_stood_for() {
        let q = Query::parse("status=failed_final&window=1h&since=5&source=openai");
        let filter = filter_of(&q, 50).unwrap();
        let since = filter.since.unwrap().to_string();
        assert_eq!(
            pinned(&q, &FILTER_KEYS, &filter),
            [
                ("status".to_owned(), "failed_final".to_owned()),
                ("source".to_owned(), "openai".to_owned()),
                ("since".to_owned(), since),
            ]
        );
        let without = Query::parse("since=5");
        assert_eq!(
            pinned(&without, &FILTER_KEYS, &filter_of(&without, 50).unwrap()),
            [("since".to_owned(), "5".to_owned())]
        );
    }

    #[test]
    fn outcomes_are_styled_by_what_they_mean() {
        assert_eq!(class_of(Outcome::Forwarded.label()), "ok");
        assert_eq!(class_of(Outcome::Duplicate.label()), "warn");
        assert_eq!(class_of(Outcome::InvalidSignature.label()), "bad");
        assert_eq!(class_of("5xx"), "bad");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(0.001), "< 0.01");
        assert_eq!(rate(2.345), "2.35");
        assert_eq!(minutes(Duration::from_secs(3700)), "1h 1m");
    }
}
