//! The console's pages: one askama template each (`templates/`), and the plain values
//! they show. Templates escape every value they print (askama's HTML escaper): nothing
//! here is marked safe, so an event type, id, header, body or backend error that holds
//! HTML shows as text. This file turns queue records into those values and does no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;

use crate::queue::record::RecordBody;
use crate::queue::{Attempt, Detail, State, Summary, UnixMillis};

/// What every page's frame needs.
pub struct Chrome {
    pub title: String,
    /// `overview` or `deliveries`: the navigation entry marked current.
    pub section: &'static str,
    pub signed_in: bool,
    /// A logout button (there is none without an admin token: nobody logged in).
    pub logout: bool,
    /// The session's CSRF token, for the forms on the page.
    pub csrf: String,
    /// The page reloads itself after this many seconds; 0 never.
    pub refresh_seconds: u64,
    pub version: &'static str,
}

impl Chrome {
    pub fn new(title: impl Into<String>, section: &'static str) -> Chrome {
        Chrome {
            title: title.into(),
            section,
            signed_in: false,
            logout: false,
            csrf: String::new(),
            refresh_seconds: 0,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// A time as a page shows it: UTC text, and the instant for `console.js` to rewrite in
/// the viewer's zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Time {
    pub iso: String,
    pub text: String,
}

impl Time {
    pub fn at(at: SystemTime) -> Time {
        let iso = humantime::format_rfc3339_millis(at).to_string();
        let text = format!("{} UTC", iso[..19].replace('T', " "));
        Time { iso, text }
    }

    pub fn millis(ms: UnixMillis) -> Time {
        Time::at(UNIX_EPOCH + Duration::from_millis(ms))
    }
}

/// One `<option>` of a filter.
pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

impl Choice {
    /// "any" first, then `values`, with `current` selected; a `current` none of them is
    /// (a route a reload removed, one fan-out copy) is offered too. Shown as "any", the
    /// next Filter widened the list the page showed to every record.
    pub fn list<'a>(values: impl IntoIterator<Item = &'a str>, current: &str) -> Vec<Choice> {
        let mut choices = vec![Choice {
            value: String::new(),
            label: "any".to_owned(),
            selected: current.is_empty(),
        }];
        for value in values {
            choices.push(Choice {
                value: value.to_owned(),
                label: value.to_owned(),
                selected: value == current,
            });
        }
        if !choices.iter().any(|c| c.selected) {
            choices.push(Choice {
                value: current.to_owned(),
                label: current.to_owned(),
                selected: true,
            });
        }
        choices
    }
}

#[derive(Template)]
#[template(path = "login.html", config = "src/console/askama.toml")]
pub struct LoginPage {
    pub chrome: Chrome,
    pub csrf: String,
    /// Where to go once logged in (a console path).
    pub next: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "message.html", config = "src/console/askama.toml")]
pub struct MessagePage {
    pub chrome: Chrome,
    pub heading: String,
    pub text: String,
    pub error: bool,
    pub link_href: String,
    pub link_label: String,
}

/// A count with its label and a style class (`ok`, `warn`, `bad` or none).
pub struct Count {
    pub label: String,
    pub count: u64,
    pub class: &'static str,
}

pub struct SourceRow {
    pub name: String,
    pub total: u64,
    pub counts: Vec<Count>,
    pub rate: String,
}

pub struct RouteRow {
    pub name: String,
    pub answers: Vec<Count>,
    pub attempts: Vec<Count>,
    pub rate: String,
}

pub struct QueueCard {
    pub depth: u64,
    pub oldest_age: String,
    pub dead_letters: u64,
    pub describe: String,
    pub error: Option<String>,
}

pub struct BreakerList {
    pub help: String,
    pub list: Vec<crate::console::history::Breaker>,
}

#[derive(Template)]
#[template(path = "overview.html", config = "src/console/askama.toml")]
pub struct OverviewPage {
    pub chrome: Chrome,
    pub read_at: Time,
    pub store_ok: bool,
    pub store_detail: String,
    pub queue: Option<QueueCard>,
    pub reloaded: bool,
    pub loaded_at: Time,
    pub origin: String,
    /// "last hour", or "since start, 12m ago" for a younger process.
    pub span: String,
    pub rate_span: String,
    pub sources: Vec<SourceRow>,
    pub routes: Vec<RouteRow>,
    pub breakers: Option<BreakerList>,
    pub summary: String,
}

/// The list's filter form as it was submitted (so the form shows it again).
#[derive(Default)]
pub struct FilterForm {
    pub event_type: String,
    pub search: String,
    pub since: String,
    pub until: String,
}

pub struct Row {
    pub id: String,
    pub href: String,
    pub state: &'static str,
    pub received: Time,
    pub source: String,
    pub route: String,
    pub event_type: String,
    pub webhook_id: String,
    pub attempts: u32,
    pub last: String,
}

impl Row {
    pub fn of(summary: &Summary) -> Row {
        let last = match (&summary.last_error, summary.last_status) {
            (Some(error), _) => error.clone(),
            (None, Some(status)) => status.to_string(),
            (None, None) => match summary.next_attempt_at {
                Some(_) => "retry scheduled".to_owned(),
                None => String::new(),
            },
        };
        Row {
            id: summary.id.clone(),
            href: format!("/ui/deliveries/{}", summary.id),
            state: summary.state.as_str(),
            received: Time::millis(summary.received_at),
            source: summary.source.clone(),
            route: summary.route.clone(),
            event_type: summary.event_type.clone(),
            webhook_id: summary.webhook_id.clone(),
            attempts: summary.attempts,
            last,
        }
    }
}

#[derive(Template)]
#[template(path = "deliveries.html", config = "src/console/askama.toml")]
pub struct ListPage {
    pub chrome: Chrome,
    pub error: Option<String>,
    pub form: FilterForm,
    pub states: Vec<Choice>,
    pub sources: Vec<Choice>,
    pub routes: Vec<Choice>,
    pub windows: Vec<Choice>,
    pub rows: Vec<Row>,
    pub first_href: Option<String>,
    pub next_href: Option<String>,
    pub replay_href: Option<String>,
}

/// One step of a delivery's timeline.
pub struct Step {
    pub label: String,
    /// `received`, `queued`, `processing`, a final state, ...: the marker's style.
    pub kind: &'static str,
    pub at: Option<Time>,
    pub note: String,
}

pub struct AttemptRow {
    /// The attempt's number, or "n: fetch" for the fetch of an `enrich` route's object.
    pub number: String,
    pub started: Time,
    pub duration: String,
    pub status: String,
    pub result: String,
    pub error: String,
    pub answer: String,
    pub instance: String,
}

impl AttemptRow {
    fn of(a: &Attempt, result: &str) -> AttemptRow {
        AttemptRow {
            number: match a.step {
                crate::queue::Step::Deliver => a.attempt.to_string(),
                crate::queue::Step::Fetch => format!("{}: fetch", a.attempt),
            },
            started: Time::millis(a.started_at),
            duration: a
                .duration_ms
                .map_or("-".to_owned(), |ms| format!("{ms} ms")),
            status: a.status.map_or("-".to_owned(), |s| s.to_string()),
            result: result.to_owned(),
            error: a.error.clone().unwrap_or_default(),
            answer: a.answer.clone().unwrap_or_default(),
            instance: a.instance.clone(),
        }
    }
}

/// A stored body as the page shows it.
pub struct BodyView {
    pub kind: &'static str,
    pub bytes: usize,
    pub text: String,
}

/// Valid JSON `text` laid out two spaces per level, its tokens exactly as sent: a
/// value parsed and written again would sort its keys, keep one of two equal keys and
/// round big numbers, and this page is where an operator reads what the sender sent.
fn indented(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    let mut chars = text.chars().peekable();
    let (mut in_string, mut escaped) = (false, false);
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
                if let Some(close) = chars.next_if(|&n| n == '}' || n == ']') {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

impl BodyView {
    /// JSON pretty-printed; other text as it is; anything else as base64.
    pub fn of(body: &RecordBody) -> BodyView {
        match body {
            RecordBody::Text(text) => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => BodyView {
                    kind: "JSON",
                    bytes: text.len(),
                    text: indented(text),
                },
                Err(_) => BodyView {
                    kind: "text",
                    bytes: text.len(),
                    text: text.clone(),
                },
            },
            RecordBody::Base64(encoded) => BodyView {
                kind: "not UTF-8, shown as base64",
                bytes: encoded.len() / 4 * 3
                    - encoded.bytes().rev().take_while(|&b| b == b'=').count(),
                text: encoded.clone(),
            },
        }
    }
}

#[derive(Template)]
#[template(path = "delivery.html", config = "src/console/askama.toml")]
pub struct DeliveryPage {
    pub chrome: Chrome,
    pub notice: Option<String>,
    pub id: String,
    pub state: &'static str,
    pub source: String,
    pub route: String,
    pub event_type: String,
    pub webhook_id: String,
    pub attempts: u32,
    pub replays: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub replayable: bool,
    pub timeline: Vec<Step>,
    pub attempt_rows: Vec<AttemptRow>,
    pub header_names: Vec<String>,
    /// Whether the record still holds its body and headers (a processed one does not).
    pub payload_kept: bool,
    pub headers: Option<Vec<(String, String)>>,
    pub body: Option<BodyView>,
    pub show_href: String,
    pub hide_href: String,
}

impl DeliveryPage {
    pub fn of(chrome: Chrome, detail: Detail, notice: Option<String>) -> DeliveryPage {
        let s = &detail.summary;
        let href = format!("/ui/deliveries/{}", s.id);
        DeliveryPage {
            timeline: timeline(&detail),
            attempt_rows: detail
                .history_shown()
                .map(|(a, result)| AttemptRow::of(a, result))
                .collect(),
            chrome,
            notice,
            id: s.id.clone(),
            state: s.state.as_str(),
            source: s.source.clone(),
            route: s.route.clone(),
            event_type: s.event_type.clone(),
            webhook_id: s.webhook_id.clone(),
            attempts: s.attempts,
            replays: detail.replays,
            last_status: s.last_status,
            last_error: s.last_error.clone(),
            replayable: s.state == State::FailedFinal,
            payload_kept: !detail.header_names.is_empty(),
            header_names: detail.header_names.clone(),
            headers: detail.headers.clone(),
            body: detail.body.as_ref().map(BodyView::of),
            show_href: format!("{href}?body=1#body"),
            hide_href: href,
        }
    }
}

/// received → queued (again, for each replay) → each attempt → where it stands now.
pub fn timeline(detail: &Detail) -> Vec<Step> {
    let s = &detail.summary;
    let step = |label: String, kind, at: Option<UnixMillis>, note: String| Step {
        label,
        kind,
        at: at.map(Time::millis),
        note,
    };
    let mut steps = vec![step(
        "received and verified".to_owned(),
        "received",
        Some(s.received_at),
        String::new(),
    )];
    // A replay rewrites the queue time: the first queueing was at receipt.
    let first_queued = match detail.replays {
        0 => detail.enqueued_at,
        _ => s.received_at,
    };
    steps.push(step(
        "queued".to_owned(),
        "queued",
        Some(first_queued),
        String::new(),
    ));
    let mut replays_shown = 0;
    let replayed = |shown: u32| {
        step(
            "replayed: queued again".to_owned(),
            "queued",
            // Only the last replay's time is kept.
            (shown == detail.replays).then_some(detail.enqueued_at),
            String::new(),
        )
    };
    // A replay restarts the count: attempt 1 after an earlier attempt is the replay. A
    // fetch is not one: a failed or handed back `enrich` fetch gives its number back,
    // and the attempt after a fetch that brought the object has the fetch's number.
    let mut counted = false;
    for a in &detail.history {
        if a.attempt == 1 && counted && replays_shown < detail.replays {
            replays_shown += 1;
            steps.push(replayed(replays_shown));
            counted = false;
        }
        counted |= a.step == crate::queue::Step::Deliver;
        let note = match (&a.status, &a.error) {
            (_, Some(error)) => error.clone(),
            (Some(status), None) => format!("answered {status}"),
            (None, None) => String::new(),
        };
        let outcome = a.result.as_deref().unwrap_or("processing");
        steps.push(step(
            format!("attempt {}: {outcome}", a.attempt),
            kind_of(outcome),
            Some(a.started_at),
            note,
        ));
    }
    if detail.replays > replays_shown {
        steps.push(replayed(detail.replays));
    }
    let (label, note) = match s.state {
        State::Queued => ("waiting for a worker", String::new()),
        State::Processing => ("being attempted", String::new()),
        State::Processed => ("processed: the upstream took it", String::new()),
        State::FailedRetryable => (
            "failed, will be retried",
            s.next_attempt_at
                .map(|at| format!("next attempt at {}", Time::millis(at).text))
                .unwrap_or_default(),
        ),
        State::FailedFinal => ("failed for good: a dead letter", String::new()),
    };
    steps.push(step(
        format!("now: {label}"),
        kind_of(s.state.as_str()),
        Some(s.updated_at),
        note,
    ));
    steps
}

fn kind_of(state: &str) -> &'static str {
    match state {
        "processed" => "processed",
        "failed_retryable" => "failed_retryable",
        "failed_final" => "failed_final",
        "queued" | "handed_back" => "queued",
        _ => "processing",
    }
}

#[derive(Template)]
#[template(path = "replay.html", config = "src/console/askama.toml")]
pub struct ReplayPage {
    pub chrome: Chrome,
    pub count: usize,
    /// More dead letters match than one replay takes.
    pub more: bool,
    /// The filter, as `(what, value)` to read.
    pub criteria: Vec<(String, String)>,
    /// The filter and the moment of confirmation, posted back.
    pub hidden: Vec<(String, String)>,
    pub cancel_href: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::record::Summary;

    fn summary(state: State) -> Summary {
        Summary {
            id: "dlv_0000000000010000000000000001".into(),
            state,
            source: "openai".into(),
            route: "0".into(),
            webhook_id: "<b>msg</b>".into(),
            event_type: "<script>alert(1)</script>".into(),
            attempts: 1,
            received_at: 1_700_000_000_000,
            updated_at: 1_700_000_001_000,
            next_attempt_at: None,
            last_status: Some(500),
            last_error: Some("the upstream answered 500: <img src=x onerror=alert(1)>".into()),
        }
    }

    fn detail(state: State, body: Option<RecordBody>) -> Detail {
        Detail {
            summary: summary(state),
            enqueued_at: 1_700_000_000_000,
            replays: 0,
            history: vec![Attempt {
                attempt: 1,
                step: Default::default(),
                started_at: 1_700_000_000_500,
                duration_ms: Some(12),
                status: Some(500),
                error: Some("<i>boom</i>".into()),
                result: Some("failed_final".into()),
                instance: "host-1".into(),
                answer: Some("<svg onload=alert(1)>".into()),
                trace_id: None,
            }],
            header_names: vec!["x-evil\"><script>".into()],
            headers: Some(vec![(
                "x-evil".into(),
                "\"><script>alert(1)</script>".into(),
            )]),
            body,
            object: None,
            body_dropped: false,
        }
    }

    #[test]
    fn times_read_as_utc_and_carry_the_instant() {
        let t = Time::millis(1_700_000_000_123);
        assert_eq!(t.iso, "2023-11-14T22:13:20.123Z");
        assert_eq!(t.text, "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn everything_from_a_delivery_is_escaped_on_its_page() {
        let body = RecordBody::new(br#"{"html":"</pre><script>alert(1)</script>"}"#);
        let page = DeliveryPage::of(
            Chrome::new("Delivery", "deliveries"),
            detail(State::FailedFinal, Some(body)),
            None,
        );
        let html = page.render().unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(!html.contains("<svg"), "{html}");
        assert!(!html.contains("<i>boom"), "{html}");
        assert!(!html.contains("<b>msg"), "{html}");
        // askama writes numeric entities.
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{html}"
        );
        assert!(html.contains("&#60;/pre&#62;"), "{html}");
        assert!(html.contains("Replay"), "a dead letter can be replayed");
        // Only first-party script files: no inline script at all.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains(r#"<script src="/ui/static/console.js"#));
    }

    /// A filter value the form has no option for (a route a reload removed, one fan-out
    /// copy) is offered and kept: shown as "any", the next Filter listed everything.
    #[test]
    fn a_filter_value_without_its_option_is_offered_and_kept() {
        let choices = Choice::list(["billing", "fan"], "fan/a");
        let selected: Vec<_> = choices.iter().filter(|c| c.selected).collect();
        assert_eq!(selected.len(), 1);
        assert_eq!(selected[0].value, "fan/a");
        assert_eq!(Choice::list(["billing"], "billing").len(), 2);
        assert!(Choice::list(["billing"], "")[0].selected);
    }

    #[test]
    fn a_list_row_is_escaped_and_links_to_its_delivery() {
        let page = ListPage {
            chrome: Chrome::new("Deliveries", "deliveries"),
            error: None,
            form: FilterForm {
                event_type: "\"><script>alert(1)</script>".into(),
                ..FilterForm::default()
            },
            states: Choice::list(State::ALL.map(State::as_str), "failed_final"),
            sources: Choice::list(["<b>"], ""),
            routes: Vec::new(),
            windows: Vec::new(),
            rows: vec![Row::of(&summary(State::FailedFinal))],
            first_href: None,
            next_href: Some("/ui/deliveries?cursor=1-dlv_x&status=failed_final".into()),
            replay_href: None,
        };
        let html = page.render().unwrap();
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(html.contains(r#"href="/ui/deliveries/dlv_0000000000010000000000000001""#));
        assert!(
            html.contains("cursor=1-dlv_x&#38;status=failed_final"),
            "{html}"
        );
        assert!(html.contains(r#"<option value="failed_final" selected>"#));
    }

    #[test]
    fn a_json_body_is_pretty_printed_and_other_bytes_are_base64() {
        let json = BodyView::of(&RecordBody::new(br#"{"a":1}"#));
        assert_eq!(
            (json.kind, json.text.as_str()),
            ("JSON", "{\n  \"a\": 1\n}")
        );
        let text = BodyView::of(&RecordBody::new(b"a=1"));
        assert_eq!((text.kind, text.text.as_str()), ("text", "a=1"));
        let binary = BodyView::of(&RecordBody::new(b"\xff\xfe\xfd"));
        assert_eq!((binary.text.as_str(), binary.bytes), ("//79", 3));
        // Padding is no byte (1 byte was shown as 3).
        let one = BodyView::of(&RecordBody::new(b"\xff"));
        assert_eq!((one.text.as_str(), one.bytes), ("/w==", 1));
    }

    /// The body as the sender sent it, only laid out: key order, both of two equal keys,
    /// numbers' digits, escapes and empty containers kept.
    #[test]
    fn a_json_body_is_laid_out_with_its_tokens_as_sent() {
        let sent = r#"{"z":12345678901234567890123,"a":1.10,"a":[],"s":"x\"y,{:}", "o":{ },"l":[1, {"k":null}]}"#;
        let shown = BodyView::of(&RecordBody::new(sent.as_bytes())).text;
        assert_eq!(
            shown,
            "{\n  \"z\": 12345678901234567890123,\n  \"a\": 1.10,\n  \"a\": [],\n  \
             \"s\": \"x\\\"y,{:}\",\n  \"o\": {},\n  \"l\": [\n    1,\n    {\n      \
             \"k\": null\n    }\n  ]\n}"
        );
    }

    #[test]
    fn the_timeline_tells_receipt_queueing_attempts_replays_and_the_state_now() {
        let mut d = detail(State::Processed, None);
        d.replays = 1;
        d.enqueued_at = 1_700_000_002_000;
        d.history.push(Attempt {
            attempt: 1,
            started_at: 1_700_000_002_100,
            duration_ms: Some(3),
            status: Some(200),
            result: Some("processed".into()),
            ..Attempt::default()
        });
        let labels: Vec<String> = timeline(&d).into_iter().map(|s| s.label).collect();
        assert_eq!(
            labels,
            [
                "received and verified",
                "queued",
                "attempt 1: failed_final",
                "replayed: queued again",
                "attempt 1: processed",
                "now: processed: the upstream took it"
            ]
        );
        let fresh = detail(State::Queued, None);
        let mut fresh = fresh;
        fresh.history.clear();
        let labels: Vec<String> = timeline(&fresh).into_iter().map(|s| s.label).collect();
        assert_eq!(
            labels,
            [
                "received and verified",
                "queued",
                "now: waiting for a worker"
            ]
        );
    }

    /// An `enrich` route's fetches share the attempt's number, and a failed fetch gives
    /// it back: none of them is a replay (each showed one, with none made).
    #[test]
    fn an_enrich_routes_fetches_are_no_replays() {
        let mut d = detail(State::Processed, None);
        let step = |step, status, result: &str| Attempt {
            attempt: 1,
            step,
            status: Some(status),
            result: Some(result.into()),
            ..Attempt::default()
        };
        d.history = vec![
            step(crate::queue::Step::Fetch, 500, "failed_retryable"),
            step(crate::queue::Step::Fetch, 200, "fetched"),
            step(crate::queue::Step::Deliver, 500, "failed_final"),
        ];
        let labels =
            |d: &Detail| -> Vec<String> { timeline(d).into_iter().map(|s| s.label).collect() };
        assert!(
            !labels(&d).iter().any(|l| l.starts_with("replayed")),
            "{:?}",
            labels(&d)
        );
        // Replayed once: its fetch and attempt follow the one replay.
        d.replays = 1;
        d.history
            .push(step(crate::queue::Step::Fetch, 200, "fetched"));
        d.history
            .push(step(crate::queue::Step::Deliver, 200, "processed"));
        let shown = labels(&d);
        assert_eq!(
            shown.iter().filter(|l| l.starts_with("replayed")).count(),
            1,
            "{shown:?}"
        );
        assert_eq!(shown[5], "replayed: queued again", "{shown:?}");
    }
}
