//! Listing the queue's records (`Queue::list`): the indexes it reads (`x:<field>:<value>`
//! sorted sets, kept by the scripts that move a record, which `FACETS` is prepended to)
//! and the `LIST` script that answers one page from them. See the key layout in
//! `mod.rs`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Partition, RedisQueue, number};
use crate::queue::record::{Cursor, DeliveryList};
use crate::queue::{ListFilter, QueueError, State, Summary, UnixMillis};

/// Candidates a page of `LIST` may look at before it ends early with a cursor: one call
/// holds Redis for a few milliseconds at most, however selective the filter.
const LIST_SCAN_BUDGET: usize = 2_000;

/// The list's indexes, for the scripts that move a record (prepended to them).
/// `trim(base, key, bound)` removes from the index set `key` the entries older than
/// `bound` whose record is gone (up to 200 of the oldest at a time): an entry
/// is only ever older than the horizon because its record was forgotten, unless the
/// delivery waited past `max_age` for its first attempt or ended late, and that one's
/// record still lives and must stay listed. `filed(base, id, at, source, route, event,
/// webhook, bound, ttl)` files `id` at `at` under those four values, trimming
/// (`trim`) with `bound` ('': not this time) and
/// renewing the expiry to `ttl` ms of each set whose flag in `renew` (source, route,
/// event, webhook; each '1' or '0', nil: all) is '1' (see `Renewals`); `restate(base, record, id, from, to[, at])` moves
/// it from one state's set to another's, at its queue time (`at`, read from the record
/// when not given). `processed` has no set: most
/// records end there, so its set would be the index itself at the memory of one more
/// entry per record; a list of processed deliveries reads `index` instead.
pub(super) const FACETS: &str = r"
local function trim(base, key, bound)
  if bound == '' then return end
  local gone = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. bound, 'LIMIT', 0, 200)) do
    if redis.call('EXISTS', base .. 'd:' .. id) == 0 then gone[#gone + 1] = id end
  end
  if #gone > 0 then redis.call('ZREM', key, unpack(gone)) end
end
local function filed(base, id, at, source, route, event, webhook, bound, ttl, renew)
  for i, key in ipairs({base .. 'x:source:' .. source, base .. 'x:route:' .. route,
      base .. 'x:event:' .. event, base .. 'x:webhook:' .. webhook}) do
    redis.call('ZADD', key, at, id)
    trim(base, key, bound)
    if not renew or string.sub(renew, i, i) == '1' then redis.call('PEXPIRE', key, ttl) end
  end
end
local function restate(base, record, id, from, to, at)
  if from == to then return end
  if from and from ~= 'processed' then redis.call('ZREM', base .. 'x:state:' .. from, id) end
  if not at and to ~= 'processed' then at = redis.call('HGET', record, 'enqueued_at') end
  if at and to ~= 'processed' then redis.call('ZADD', base .. 'x:state:' .. to, at, id) end
end
";

/// One page of the list, newest first (queue time, then id, descending): candidates
/// from the smallest of the indexes given (KEYS[2..], each already narrowing the
/// filter; none: the whole index KEYS[1]), or for a search the webhook id's set
/// (KEYS[2]) and the delivery of that id. A candidate must be in the other indexes
/// given too (`ZSCORE`, cheaper than reading the record); then its record is read and
/// matched against every filter. Stops before a candidate once the page is full or the
/// budget of candidates is spent, and then returns where it stopped.
/// ARGV: record key prefix, state, source, route, event type, search (each '' for any),
/// since ms, until ms, cursor ms, cursor id ('' for none), limit, budget, 'search' or
/// 'scan'. Returns {cursor ms or '', cursor id or '', then per record its id, its queue
/// time (the index score, by which pages of several partitions merge) and the 11
/// `SUMMARY_FIELDS`}.
pub(super) const LIST: &str = r"
local want = {ARGV[2], ARGV[3], ARGV[4], ARGV[5]}
local search, since, till, cscore, cid = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local limit, budget = tonumber(ARGV[11]), tonumber(ARGV[12])
local function admits(score, id)
  local s = tonumber(score)
  if since ~= '' and s < tonumber(since) then return false end
  if till ~= '' and s >= tonumber(till) then return false end
  if cscore ~= '' then
    local c = tonumber(cscore)
    if s > c or (s == c and id >= cid) then return false end
  end
  return true
end
local out = {'', ''}
local found, scanned, last_score, last_id = 0, 0, nil, nil
local others = {}
local function consider(id, score)
  if found >= limit or scanned >= budget then
    if last_id then out[1], out[2] = last_score, last_id end
    return true
  end
  scanned = scanned + 1
  last_score, last_id = score, id
  for _, other in ipairs(others) do
    if not redis.call('ZSCORE', other, id) then return false end
  end
  local f = redis.call('HMGET', ARGV[1] .. id, 'state', 'source', 'route', 'webhook_id',
    'event_type', 'attempts', 'received_at', 'updated_at', 'next_attempt_at', 'last_status', 'last_error')
  if f[1] and (want[1] == '' or f[1] == want[1]) and (want[2] == '' or f[2] == want[2])
      and (want[3] == '' or f[3] == want[3]) and (want[4] == '' or f[5] == want[4])
      and (search == '' or id == search or f[4] == search) then
    table.insert(out, id)
    table.insert(out, score)
    for i = 1, 11 do table.insert(out, f[i] or '') end
    found = found + 1
  end
  return false
end
if ARGV[13] == 'search' then
  local cands = {}
  local got = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, budget)
  for i = 1, #got, 2 do table.insert(cands, {got[i + 1], got[i]}) end
  local own = redis.call('ZSCORE', KEYS[1], search)
  if own then table.insert(cands, {own, search}) end
  table.sort(cands, function(a, b)
    local x, y = tonumber(a[1]), tonumber(b[1])
    if x ~= y then return x > y end
    return a[2] > b[2]
  end)
  local previous = nil
  for _, c in ipairs(cands) do
    if c[2] ~= previous and admits(c[1], c[2]) and consider(c[2], c[1]) then break end
    previous = c[2]
  end
  return out
end
local min = since == '' and '-inf' or since
local max = till == '' and '+inf' or ('(' .. till)
if cscore ~= '' and (till == '' or tonumber(cscore) < tonumber(till)) then max = cscore end
local key, smallest = KEYS[1], nil
for i = 2, #KEYS do
  local n = redis.call('ZCOUNT', KEYS[i], min, max)
  if not smallest or n < smallest then key, smallest = KEYS[i], n end
end
if smallest == 0 then return out end
for i = 2, #KEYS do
  if KEYS[i] ~= key then table.insert(others, KEYS[i]) end
end
-- A page resumes right after its cursor by rank: by score, it re-read every entry of
-- the cursor's queue time already shown (a bulk replay gives thousands one time, in
-- every partition), uncounted by the budget, so a deep page walked all of them. The
-- cursor's place is found without writing (the script must work on a Redis at its
-- memory limit): past the entries of later times, a binary search among those of its
-- time, which come by id descending, for the first one older than it (the cursor need
-- not be in the set: another partition's delivery). Not past `until`: the ranks after
-- the cursor are then outside the window, which the score path skips by its bounds.
local start = nil
if cid ~= '' and (till == '' or tonumber(cscore) < tonumber(till)) then
  local lo = redis.call('ZCOUNT', key, '(' .. cscore, '+inf')
  local hi = lo + redis.call('ZCOUNT', key, cscore, cscore)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if redis.call('ZREVRANGE', key, mid, mid)[1] >= cid then lo = mid + 1 else hi = mid end
  end
  start = lo
end
-- Walks batches from `fetch(position)` (ids and scores, newest first) until the page
-- is done; `floor` ends the walk at the first entry older than the window.
local function walk(fetch, floor)
  local position = 0
  while true do
    local batch = fetch(position)
    if #batch == 0 then return end
    for i = 1, #batch, 2 do
      if floor and tonumber(batch[i + 1]) < floor then return end
      if admits(batch[i + 1], batch[i]) and consider(batch[i], batch[i + 1]) then return end
    end
    position = position + #batch / 2
  end
end
if start then
  walk(function(p) return redis.call('ZREVRANGE', key, start + p, start + p + 255, 'WITHSCORES') end,
    since ~= '' and tonumber(since) or nil)
else
  walk(function(p)
    return redis.call('ZREVRANGEBYSCORE', key, max, min, 'WITHSCORES', 'LIMIT', p, 256)
  end, nil)
end
return out
";

/// When this instance last renewed the expiry of each source, route and event type
/// index set (`filed`): one of them is written by most enqueues, and renewing it every
/// time cost a Redis call per set and delivery. A set is given `index_ttl`, half a
/// horizon more than its newest entry needs, and renewed once that half has passed;
/// the webhook id's set, new with nearly every delivery, is renewed every time.
#[derive(Default)]
pub(super) struct Renewals(Mutex<HashMap<(usize, usize, String), Instant>>);

impl Renewals {
    /// Sets remembered at most: past it, every set is renewed again once.
    const CAPACITY: usize = 4096;

    /// Whether the set of `value` for `facet` in `partition` is to be renewed now (and
    /// if so, notes that it is).
    pub(super) fn due(&self, partition: usize, facet: usize, value: &str, every: Duration) -> bool {
        let mut renewed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = (partition, facet, value.to_owned());
        if renewed
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < every)
        {
            return false;
        }
        if renewed.len() >= Self::CAPACITY {
            renewed.clear();
        }
        renewed.insert(key, now);
        true
    }

    /// After an enqueue that may not have run: every set is renewed again next time.
    pub(super) fn forget(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

pub(super) fn summary(id: String, f: &[String]) -> Result<Summary, QueueError> {
    let state = State::parse(&f[0])
        .ok_or_else(|| QueueError::malformed(&id, format!("state {:?}", f[0])))?;
    Ok(Summary {
        state,
        source: f[1].clone(),
        route: f[2].clone(),
        webhook_id: f[3].clone(),
        event_type: f[4].clone(),
        attempts: number(&f[5]).unwrap_or(0),
        received_at: number(&f[6]).unwrap_or(0),
        updated_at: number(&f[7]).unwrap_or(0),
        next_attempt_at: number(&f[8]),
        last_status: number(&f[9]),
        last_error: Some(f[10].clone()).filter(|e| !e.is_empty()),
        id,
    })
}

/// The record fields `LIST` returns after the id, in order.
pub(super) const SUMMARY_FIELDS: [&str; 11] = [
    "state",
    "source",
    "route",
    "webhook_id",
    "event_type",
    "attempts",
    "received_at",
    "updated_at",
    "next_attempt_at",
    "last_status",
    "last_error",
];

impl RedisQueue {
    /// One page of `filter`'s list over every partition: each partition's page (`LIST`),
    /// merged (`merge`).
    pub(super) async fn page(&self, filter: &ListFilter) -> Result<DeliveryList, QueueError> {
        let mut pages = Vec::with_capacity(self.partitions.len());
        for p in self.partitions.all() {
            pages.push(self.page_in(p, filter).await?);
        }
        Ok(merge(pages, filter.limit))
    }

    /// One page of `filter`'s list in partition `p`, each record with its position.
    async fn page_in(&self, p: &Partition, filter: &ListFilter) -> Result<Page, QueueError> {
        // The index of the records whose `field` is `value` (as `FACETS` names it).
        let facet_key =
            |field: &str, value: &str| [p.base.as_str(), "x:", field, ":", value].concat();
        let mut invocation = self.scripts.list.prepare_invoke();
        invocation.key(&p.list_index);
        match &filter.search {
            Some(q) => {
                invocation.key(facet_key("webhook", q));
            }
            None => {
                // `processed` has no set of its own (see `FACETS`).
                let state = filter.state.filter(|s| *s != State::Processed);
                let facets = [
                    ("state", state.map(State::as_str)),
                    ("source", filter.source.as_deref()),
                    ("route", filter.route.as_deref()),
                    ("event", filter.event_type.as_deref()),
                ];
                for (field, value) in facets {
                    if let Some(value) = value {
                        invocation.key(facet_key(field, value));
                    }
                }
            }
        }
        let text = |n: Option<UnixMillis>| n.map(|n| n.to_string()).unwrap_or_default();
        invocation
            .arg(&p.records)
            .arg(filter.state.map(State::as_str).unwrap_or(""))
            .arg(filter.source.as_deref().unwrap_or(""))
            .arg(filter.route.as_deref().unwrap_or(""))
            .arg(filter.event_type.as_deref().unwrap_or(""))
            .arg(filter.search.as_deref().unwrap_or(""))
            .arg(text(filter.since))
            .arg(text(filter.until))
            .arg(text(filter.after.as_ref().map(|c| c.queued_at)))
            .arg(filter.after.as_ref().map_or("", |c| c.id.as_str()))
            .arg(filter.limit)
            .arg(LIST_SCAN_BUDGET)
            .arg(if filter.search.is_some() {
                "search"
            } else {
                "scan"
            });
        let reply: Vec<String> = self.redis.script("list", invocation).await?;
        let [cursor_at, cursor_id, rows @ ..] = &reply[..] else {
            return Err(QueueError::malformed(
                "list",
                format!("{} values", reply.len()),
            ));
        };
        let next = match (cursor_at.parse::<f64>(), cursor_id.is_empty()) {
            (Ok(at), false) => Some(Cursor {
                queued_at: at as UnixMillis,
                id: cursor_id.clone(),
            }),
            _ => None,
        };
        let rows = rows
            .chunks_exact(2 + SUMMARY_FIELDS.len())
            .map(|c| {
                let at = c[1]
                    .parse::<f64>()
                    .map_err(|_| QueueError::malformed(&c[0], "list score"))?;
                Ok((at as UnixMillis, summary(c[0].clone(), &c[2..])?))
            })
            .collect::<Result<_, QueueError>>()?;
        Ok(Page { rows, next })
    }
}

/// One partition's page: its records with their queue time, newest first, and where it
/// stopped (`DeliveryList::next`).
struct Page {
    rows: Vec<(UnixMillis, Summary)>,
    next: Option<Cursor>,
}

/// The pages of every partition for one filter as one page in the list's order.
///
/// A partition that ended early (`next`) has looked at everything down to its cursor
/// (the last record it looked at) and nothing below it, so the merged page may only
/// hold records down to the highest such cursor (where the least progress was made);
/// records below it are dropped here and found again on the next page, which starts
/// there. Within that, the newest `limit`
/// records are the page, and the last of them is the cursor when there were more.
/// Following `next` thus still yields every match once, never one twice.
fn merge(pages: Vec<Page>, limit: usize) -> DeliveryList {
    let position = |c: &Cursor| (c.queued_at, c.id.clone());
    let bound = pages
        .iter()
        .filter_map(|p| p.next.as_ref())
        .max_by_key(|c| position(c))
        .cloned();
    let mut rows: Vec<(UnixMillis, Summary)> = pages
        .into_iter()
        .flat_map(|p| p.rows)
        .filter(|(at, s)| {
            bound
                .as_ref()
                .is_none_or(|b| (*at, s.id.as_str()) >= (b.queued_at, b.id.as_str()))
        })
        .collect();
    rows.sort_by(|(a, x), (b, y)| (b, &y.id).cmp(&(a, &x.id)));
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(at, s)| Cursor {
            queued_at: *at,
            id: s.id.clone(),
        })
    } else {
        bound
    };
    DeliveryList {
        deliveries: rows.into_iter().map(|(_, s)| s).collect(),
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: UnixMillis, id: &str) -> (UnixMillis, Summary) {
        let fields: Vec<String> = ["queued", "s", "r", "w", "e", "0", "0", "0", "", "", ""]
            .map(str::to_owned)
            .to_vec();
        (at, summary(id.to_owned(), &fields).expect("a summary"))
    }

    fn ids(list: &DeliveryList) -> Vec<&str> {
        list.deliveries.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn pages_of_partitions_merge_newest_first_and_the_cursor_is_the_last_record_shown() {
        let a = Page {
            rows: vec![row(9, "a9"), row(5, "a5"), row(1, "a1")],
            next: None,
        };
        let b = Page {
            rows: vec![row(8, "b8"), row(5, "b5")],
            next: None,
        };
        let merged = merge(vec![a, b], 3);
        assert_eq!(ids(&merged), ["a9", "b8", "b5"]);
        let next = merged.next.expect("more records");
        assert_eq!((next.queued_at, next.id.as_str()), (5, "b5"));
    }

    #[test]
    fn a_record_at_the_cursor_of_its_own_partition_is_on_the_page() {
        // Each partition stopped after its newest record, which is its cursor.
        let at_own_cursor = |at, id: &str| Page {
            rows: vec![row(at, id)],
            next: Some(Cursor {
                queued_at: at,
                id: id.into(),
            }),
        };
        let merged = merge(vec![at_own_cursor(9, "a9"), at_own_cursor(8, "b8")], 1);
        assert_eq!(ids(&merged), ["a9"]);
        assert_eq!(merged.next.map(|c| c.id), Some("a9".to_owned()));
    }

    #[test]
    fn a_partition_that_ended_early_bounds_the_merged_page_at_its_cursor() {
        // Partition b looked at everything down to 6 and stopped: records of a below 6
        // wait for the next page, which starts there.
        let a = Page {
            rows: vec![row(9, "a9"), row(5, "a5")],
            next: None,
        };
        let b = Page {
            rows: vec![row(8, "b8")],
            next: Some(Cursor {
                queued_at: 6,
                id: "b6".into(),
            }),
        };
        let merged = merge(vec![a, b], 10);
        assert_eq!(ids(&merged), ["a9", "b8"]);
        assert_eq!(merged.next.map(|c| c.id), Some("b6".to_owned()));
        let done = merge(
            vec![Page {
                rows: vec![row(1, "a1")],
                next: None,
            }],
            10,
        );
        assert_eq!(ids(&done), ["a1"]);
        assert_eq!(done.next, None);
    }

    #[test]
    fn an_index_set_is_renewed_once_per_interval_and_again_after_a_failed_enqueue() {
        let renewals = Renewals::default();
        let hour = Duration::from_secs(3600);
        assert!(renewals.due(0, 0, "github", hour));
        assert!(!renewals.due(0, 0, "github", hour));
        assert!(renewals.due(1, 0, "github", hour), "per partition");
        assert!(renewals.due(0, 1, "github", hour), "per facet");
        assert!(renewals.due(0, 0, "github", Duration::ZERO));
        renewals.forget();
        assert!(renewals.due(0, 0, "github", hour));
    }
}
