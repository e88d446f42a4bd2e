//! The durable queue on Redis Streams, shared by every instance using the same Redis.
//!
//! The queue is split into `queue.partitions` partitions (`partition.rs`), each a whole
//! queue under a hash tag of its own, so that a Redis Cluster spreads them over its
//! primaries while every script below still touches one slot. Keys of partition 0
//! (default prefix `hookgate:`), all with its hash tag `{queue}` so they live in one
//! Redis Cluster slot and every script may touch several of them atomically; partition
//! `i > 0` has the same keys under `{queue:i}`:
//! - `hookgate:{queue}:ready`: stream of deliveries ready for an attempt (`d` = id,
//!   `r` = `<source>/<route>`), consumed by the group `workers`; an entry is acked and
//!   deleted when its attempt settles, so its length counts waiting plus in-flight work;
//! - `hookgate:{queue}:scheduled`: sorted set of ids by next attempt (ms), promoted into
//!   `ready` by `TAKE` once due;
//! - `hookgate:{queue}:d:<id>`: hash, the delivery record (state, attempts, timestamps,
//!   last status and error, stored headers and raw body, and for an `enrich` route the
//!   fetched `object` and the count of failed `fetches`; the `trace_context`, a W3C
//!   `traceparent`, when tracing was on at ingress); expires `retention` after it
//!   becomes final;
//! - `hookgate:{queue}:h:<id>`: list, the attempt history (JSON per attempt), same expiry;
//! - `hookgate:{queue}:index`: sorted set of every id by (re)queue time, for listing;
//! - `hookgate:{queue}:dead`: sorted set of `failed_final` ids by failure time, for replay;
//! - `hookgate:{queue}:x:<field>:<value>`: sorted sets of ids by (re)queue time, like
//!   `index`, one per value of each field a list filters on (`state`, `source`, `route`,
//!   `event`, `webhook`): `LIST` reads the smallest that narrows its filter instead of the
//!   whole index. The state sets follow every transition (`processed`, where most
//!   records end, has none: `index` serves it); the others are written at enqueue and
//!   replay, trimmed like `index` and expire when no longer written.
//!
//! - `hookgate:{queue}:pace:<source>/<route>[/<upstream>]`: a route upstream's `rate`
//!   bucket, the GCRA theoretical arrival time (the store's `RATE` script, on Redis'
//!   clock, so every instance shares it); expires once the bucket is full again. Only in
//!   partition 0: one bucket per upstream whatever the partition of the delivery.
//!
//! An instance renews its hold on the entries it took (`KEEP`, only if still its own);
//! entries of an instance that stopped renewing them (it died) are taken over by another
//! with `XAUTOCLAIM` after `queue.visibility_timeout`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::Script;

use super::record::{
    DeliveryList, IdGenerator, RecordBody, decode_headers, encode_headers, header_listing,
    partition_of,
};
use super::{
    Attempt, BoxFuture, ClaimDone, Deferred, Detail, Job, Lease, ListFilter, NewDelivery, Queue,
    QueueError, QueueStats, Replayed, Settlement, State, Step, UnixMillis,
};
use crate::config::RateLimitSettings;
use crate::config::{QueueSettings, RedisSettings};
use crate::metrics::Metrics;
use crate::route::RatePolicy;
use crate::store::StoreError;
use crate::store::redis::{
    RATE, RedisConnection, Unsent, dedupe_key, gcra_parameters, in_flight, millis,
};

/// The consumer group every instance's workers join.
pub const GROUP: &str = "workers";

/// Scans of the pending entries (`XAUTOCLAIM`) per visibility timeout: an entry of an
/// instance that died is taken over at most `visibility_timeout / CLAIM_SCANS` late.
const CLAIM_SCANS: u32 = 8;

/// One enqueue in this many, in each partition, trims the list indexes it writes of
/// entries past the horizon (`ENQUEUE`); the others only add. Each index is still
/// trimmed on average once per `TRIM_EVERY` of its own writes, so it holds at most
/// about that many stale entries more.
const TRIM_EVERY: u64 = 64;

mod list;
mod partition;
pub(crate) mod persistence;

use list::{FACETS, LIST, Renewals, SUMMARY_FIELDS, summary};
use partition::{Partition, Partitions, Turn};
pub use persistence::Persistence;

/// Creates the records of one or more deliveries (a fan-out route's copies) and appends
/// them to `ready`, all in one step: either every copy is stored or none is; on a single
/// Redis with the dedupe claim they were received under marked done in the same step.
/// KEYS: ready, index, the dedupe claim's key (`ready` again when there is none to
/// mark), then one record key per delivery. ARGV: now, index trim bound ('': no
/// trimming this time, see `TRIM_EVERY`), key base, index sets' expiry ms, what the
/// claim holds while in flight ('': no claim), how long it is kept done (ms), then per
/// delivery (in KEYS order) 10 values: id, source, route label, route, webhook id,
/// event type, headers, body, trace context (empty: none), which of its index sets to
/// renew the expiry of (`filed`'s `renew`). Stores nothing when `STORED` has fenced the
/// first id (it arrived after ingress was told it had not run), and nothing, returning
/// -1, when the claim is no longer held (expired, or released after a timeout): who
/// holds the key now would store the delivery a second time.
const ENQUEUE: &str = r"
if redis.call('EXISTS', ARGV[3] .. 'fence:' .. ARGV[7]) == 1 then return 0 end
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then return -1 end
local queued = ARGV[3] .. 'x:state:queued'
for i = 4, #KEYS do
  local a = 6 + (i - 4) * 10
  local id = ARGV[a + 1]
  redis.call('HSET', KEYS[i], 'state', 'queued', 'source', ARGV[a + 2], 'route', ARGV[a + 4],
    'webhook_id', ARGV[a + 5], 'event_type', ARGV[a + 6], 'headers', ARGV[a + 7], 'body', ARGV[a + 8],
    'route_label', ARGV[a + 3], 'attempts', 0, 'replays', 0, 'received_at', ARGV[1],
    'enqueued_at', ARGV[1], 'updated_at', ARGV[1])
  if ARGV[a + 9] ~= '' then redis.call('HSET', KEYS[i], 'trace_context', ARGV[a + 9]) end
  redis.call('XADD', KEYS[1], '*', 'd', id, 'r', ARGV[a + 3])
  redis.call('ZADD', KEYS[2], ARGV[1], id)
  redis.call('ZADD', queued, ARGV[1], id)
  filed(ARGV[3], id, ARGV[1], ARGV[a + 2], ARGV[a + 4], ARGV[a + 6], ARGV[a + 5], ARGV[2], ARGV[4], ARGV[a + 10])
end
-- `queued` needs no trim: it holds exactly the records in that state.
trim(ARGV[3], KEYS[2], ARGV[2])
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], 'done', 'PX', ARGV[6]) end
return #KEYS - 3
";

/// Whether an enqueue that timed out stored its deliveries (1) or not (0); when not,
/// fences its first id for ARGV[1] ms, so that the enqueue, should it still reach
/// Redis after all (held in a buffer, a proxy), stores nothing: the answer stays true.
/// KEYS: the first delivery's record, its fence.
const STORED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return 0
";

/// How long a fence (`STORED`) outlives the enqueue it stops: far longer than any
/// command stays in transit.
const FENCE_TTL: Duration = Duration::from_secs(3600);

/// Promotes due retries into `ready`, then takes up to ARGV[3] entries for this
/// consumer: first (when ARGV[8] is '1') ones idle longer than the visibility timeout
/// (their instance died), then new ones. Creates the group (and stream) the first time.
/// KEYS: ready, scheduled. ARGV: group, consumer, count, now, visibility ms, claim cursor,
/// record key prefix, '1' to scan the pending entries. Returns {next cursor, id1, route1, token1, id2, ...}.
const TAKE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4], 'LIMIT', 0, 256)
for _, id in ipairs(due) do
  -- Read before anything is written: a record this node cannot read (its slot being
  -- migrated) aborts the script with nothing changed, not with the id out of
  -- `scheduled` and never in the stream.
  local route = redis.call('HGET', ARGV[7] .. id, 'route_label')
  redis.call('ZREM', KEYS[2], id)
  redis.call('XADD', KEYS[1], '*', 'd', id, 'r', route or '')
end
local count = tonumber(ARGV[3])
local out = {ARGV[6]}
local function collect(entries)
  for _, e in ipairs(entries) do
    local fields = e[2]
    if fields then
      local id, route = '', ''
      for i = 1, #fields, 2 do
        if fields[i] == 'd' then id = fields[i + 1] elseif fields[i] == 'r' then route = fields[i + 1] end
      end
      table.insert(out, id)
      table.insert(out, route)
      table.insert(out, e[1])
    end
  end
end
if count <= 0 then return out end
local function grouped(reply)
  if type(reply) ~= 'table' or not reply.err then return true end
  if not string.find(reply.err, 'NOGROUP') then error(reply) end
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  return false
end
if ARGV[8] == '1' then
  local claimed = redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[5], ARGV[6], 'COUNT', count)
  if grouped(claimed) then
    out[1] = claimed[1]
    collect(claimed[2])
  end
end
local left = count - (#out - 1) / 3
if left > 0 then
  local read = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', left, 'STREAMS', KEYS[1], '>')
  if not grouped(read) then
    read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', left, 'STREAMS', KEYS[1], '>')
  end
  if read then collect(read[1][2]) end
end
return out
";

/// Whether `entry` of `stream` is still pending to `consumer`: not taken over by
/// another instance (`XAUTOCLAIM`), not acked by an earlier run of the same settle.
/// Prepended to the scripts that act on a lease (see `Queue`'s doc).
const OWNED: &str = r"
local function owned(stream, group, entry, consumer)
  return #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) == 1
end
";

/// A record that became final (`SETTLE`, or `DEFER` past `max_age`): kept with its
/// history for `retention` ms; a dead letter is also listed in `dead` (entries older
/// than the retention trimmed) and its state set trimmed (`trim`) to the index bound,
/// both kept for `retention` ms after the newest dead letter.
const FINISHED: &str = r"
local function finished(base, record, history, dead, id, state, now, retention, bound)
  redis.call('PEXPIRE', record, retention)
  redis.call('PEXPIRE', history, retention)
  if state == 'failed_final' then
    trim(base, base .. 'x:state:failed_final', bound)
    redis.call('ZADD', dead, now, id)
    redis.call('ZREMRANGEBYSCORE', dead, '-inf', '(' .. (tonumber(now) - tonumber(retention)))
    -- Both outlive every record they list by nothing: trimmed only at the next dead
    -- letter, they kept the ids of forgotten records for good once none came.
    redis.call('PEXPIRE', base .. 'x:state:failed_final', retention)
    redis.call('PEXPIRE', dead, retention)
  end
end
";

/// Marks the record `processing`, counts the attempt, opens its history entry and
/// returns what the attempt needs; a final or vanished record just drops the entry.
/// Nothing when the entry is no longer this consumer's.
/// KEYS: record, history, ready. ARGV: now, consumer, entry id, group, key base, id.
const BEGIN: &str = r"
if not owned(KEYS[3], ARGV[4], ARGV[3], ARGV[2]) then return false end
local f = redis.call('HMGET', KEYS[1], 'state', 'source', 'route', 'webhook_id', 'event_type', 'headers',
  'body', 'enqueued_at', 'received_at', 'object', 'fetches', 'trace_context', 'attempts', 'next_attempt_at')
local state = f[1]
if not state or state == 'processed' or state == 'failed_final' then
  redis.call('XACK', KEYS[3], ARGV[4], ARGV[3])
  redis.call('XDEL', KEYS[3], ARGV[3])
  return false
end
restate(ARGV[5], KEYS[1], ARGV[6], state, 'processing', f[8])
local attempt = (tonumber(f[13]) or 0) + 1
redis.call('HSET', KEYS[1], 'attempts', attempt, 'state', 'processing', 'instance', ARGV[2], 'updated_at', ARGV[1])
if f[14] then redis.call('HDEL', KEYS[1], 'next_attempt_at') end
local entry = cjson.encode({attempt = attempt, started_at = tonumber(ARGV[1]), instance = ARGV[2]})
local index = redis.call('RPUSH', KEYS[2], entry) - 1
return {attempt, index, f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12]}
";

/// Keeps the object fetched for an `enrich` route with the record, closes the fetch
/// step in the history and opens the entry of the attempt that follows; returns its
/// index (-1 when the record is gone or the entry no longer this consumer's).
/// KEYS: record, history, ready. ARGV: object, history index, fetch step entry, next
/// entry, now, group, entry id, consumer.
const ATTACH: &str = r"
if not owned(KEYS[3], ARGV[6], ARGV[7], ARGV[8]) then return -1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'object', ARGV[1], 'updated_at', ARGV[5])
redis.pcall('LSET', KEYS[2], ARGV[2], ARGV[3])
return redis.call('RPUSH', KEYS[2], ARGV[4]) - 1
";

/// Records a settled attempt and moves the delivery on: processed or final-failed
/// (kept for `retention`; a processed one without its body, headers and object), or
/// scheduled for its retry. A failed fetch is not an attempt: its count is taken back.
/// Acks and deletes the entry. An entry no longer this consumer's moves nothing on:
/// only the attempt's own history entry is written.
/// KEYS: record, history, ready, scheduled, dead. ARGV: group, entry id, now, new state,
/// next attempt ms, last status, last error, history index, history entry, retention ms,
/// delivery id, key base, index trim bound, '1' for a fetch, consumer.
const SETTLE: &str = r"
if not owned(KEYS[3], ARGV[1], ARGV[2], ARGV[15]) then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.pcall('LSET', KEYS[2], ARGV[8], ARGV[9]) end
  return 0
end
local cur = redis.call('HMGET', KEYS[1], 'state', 'enqueued_at')
local was = cur[1]
if was then
  if ARGV[14] == '1' then
    redis.call('HINCRBY', KEYS[1], 'attempts', -1)
    redis.call('HINCRBY', KEYS[1], 'fetches', 1)
  end
  restate(ARGV[12], KEYS[1], ARGV[11], was, ARGV[4], cur[2])
  -- One HSET and at most one HDEL for every field that changes.
  local set, gone = {'state', ARGV[4], 'updated_at', ARGV[3]}, {}
  if ARGV[6] == '' then table.insert(gone, 'last_status') else table.insert(set, 'last_status') table.insert(set, ARGV[6]) end
  if ARGV[7] == '' then table.insert(gone, 'last_error') else table.insert(set, 'last_error') table.insert(set, ARGV[7]) end
  if ARGV[4] == 'failed_retryable' then
    table.insert(set, 'next_attempt_at')
    table.insert(set, ARGV[5])
  elseif ARGV[4] == 'processed' then
    -- Delivered: only dead letters keep what a replay needs.
    for _, field in ipairs({'body', 'headers', 'object'}) do table.insert(gone, field) end
  end
  redis.call('HSET', KEYS[1], unpack(set))
  if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
  redis.pcall('LSET', KEYS[2], ARGV[8], ARGV[9])
  if ARGV[4] == 'failed_retryable' then
    redis.call('ZADD', KEYS[4], ARGV[5], ARGV[11])
  else
    finished(ARGV[12], KEYS[1], KEYS[2], KEYS[5], ARGV[11], ARGV[4], ARGV[3], ARGV[10], ARGV[13])
  end
end
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
return 1
";

/// Gives a taken delivery back at once: a fresh `ready` entry, state `queued`, and the
/// interrupted attempt (if any) closed in the history (a fetch cut short not counted).
/// Nothing but that history entry when the entry is no longer this consumer's.
/// KEYS: record, history, ready. ARGV: group, entry id, now, delivery id, history index
/// or '', history entry, route label, key base, '1' for a fetch, consumer.
const HAND_BACK: &str = r"
if not owned(KEYS[3], ARGV[1], ARGV[2], ARGV[10]) then
  if ARGV[5] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then redis.pcall('LSET', KEYS[2], ARGV[5], ARGV[6]) end
  return 0
end
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'processed' or state == 'failed_final' then return 0 end
restate(ARGV[8], KEYS[1], ARGV[4], state, 'queued')
redis.call('XADD', KEYS[3], '*', 'd', ARGV[4], 'r', ARGV[7])
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_at', ARGV[3])
if ARGV[5] ~= '' then redis.pcall('LSET', KEYS[2], ARGV[5], ARGV[6]) end
if ARGV[9] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
return 1
";

/// Gives a taken entry back to wait in `scheduled` until ARGV[3], without an attempt: the
/// record keeps its state, `next_attempt_at` is set; `TAKE` promotes it once due (one
/// taken over from an instance that died in its attempt is `processing` no longer, but
/// `queued`, as a hand back makes it). When
/// ARGV[3] is past `max_age` (ARGV[7] ms) after it was queued, dead-letters it instead
/// (as `SETTLE` does a final failure, without a history entry) and returns {2, its
/// attempts so far}. Nothing ({0}) when the entry is no longer this consumer's.
/// KEYS: record, ready, scheduled, history, dead. ARGV: group, entry id, until, id,
/// consumer, now, max_age ms, retention ms, last error, key base, index trim bound.
const DEFER: &str = r"
if not owned(KEYS[2], ARGV[1], ARGV[2], ARGV[5]) then return {0} end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'state', 'enqueued_at', 'attempts')
local state = cur[1]
if not state or state == 'processed' or state == 'failed_final' then return {0} end
if tonumber(ARGV[3]) <= (tonumber(cur[2]) or 0) + tonumber(ARGV[7]) then
  if state == 'processing' then
    restate(ARGV[10], KEYS[1], ARGV[4], state, 'queued', cur[2])
    redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_at', ARGV[6])
  end
  redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
  return {1}
end
restate(ARGV[10], KEYS[1], ARGV[4], state, 'failed_final', cur[2])
redis.call('HSET', KEYS[1], 'state', 'failed_final', 'updated_at', ARGV[6], 'last_error', ARGV[9])
redis.call('HDEL', KEYS[1], 'next_attempt_at')
finished(ARGV[10], KEYS[1], KEYS[4], KEYS[5], ARGV[4], 'failed_final', ARGV[6], ARGV[8], ARGV[11])
return {2, tonumber(cur[3]) or 0}
";

/// Renews this consumer's hold on each entry it still owns (an entry another instance
/// took over meanwhile is left alone). KEYS: ready. ARGV: group, consumer, entry ids...
const KEEP: &str = r"
local kept = 0
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #pending == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
";

/// Removes consumers (stopped instances) with nothing pending, idle for ARGV[2] ms,
/// other than ARGV[3]; a consumer that still holds entries is never removed (that would
/// drop its entries from the group). KEYS: ready. ARGV: group, idle ms, this consumer.
const PRUNE: &str = r"
local removed = 0
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[3] and tonumber(info['pending']) == 0 and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
";

/// Queues a dead letter again with a fresh attempt count and `max_age`, at the top of
/// the list. KEYS: record, history, ready, dead, index. ARGV: id, now, key base, index
/// trim bound, index horizon ms.
/// Returns {1, previous state} replayed, {0, ''} not found, {2, state} not a dead letter.
const REPLAY: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, ''} end
if state ~= 'failed_final' then return {2, state} end
redis.call('ZREM', ARGV[3] .. 'x:state:failed_final', ARGV[1])
redis.call('ZADD', ARGV[3] .. 'x:state:queued', ARGV[2], ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'source', 'route', 'event_type', 'webhook_id')
filed(ARGV[3], ARGV[1], ARGV[2], f[1] or '', f[2] or '', f[3] or '', f[4] or '', ARGV[4], ARGV[5])
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'fetches', 0, 'enqueued_at', ARGV[2], 'updated_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('HDEL', KEYS[1], 'next_attempt_at')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'd', ARGV[1], 'r', redis.call('HGET', KEYS[1], 'route_label') or '')
return {1, state}
";

/// Depth, the age of the oldest ready entry and the dead letters within the
/// retention, on Redis' clock (stream ids are).
/// KEYS: ready, scheduled, dead. ARGV: retention ms.
/// Returns {XLEN, ZCARD, oldest entry ms or -1, now ms, dead letters}.
const STATS: &str = r"
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = -1
if #first == 1 then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('XLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), oldest, now,
  redis.call('ZCOUNT', KEYS[3], now - tonumber(ARGV[1]), '+inf')}
";

struct Scripts {
    enqueue: Script,
    stored: Script,
    take: Script,
    begin: Script,
    attach: Script,
    settle: Script,
    hand_back: Script,
    defer: Script,
    pace: Script,
    keep: Script,
    prune: Script,
    replay: Script,
    list: Script,
    stats: Script,
}

pub struct RedisQueue {
    /// Ingress' connection (the store's): an enqueue never waits behind worker traffic.
    ingress: Arc<RedisConnection>,
    /// Everything else: the workers and the admin API.
    redis: Arc<RedisConnection>,
    /// Each partition's keys (named once rather than at each call), and which one is
    /// tried first.
    partitions: Arc<Partitions>,
    consumer: String,
    visibility: Duration,
    retention: Duration,
    /// A deferral past this after the delivery was queued dead-letters it (`DEFER`).
    max_age: Duration,
    /// Index entries older than `max_age + retention` belong to forgotten records.
    index_horizon: Duration,
    ids: IdGenerator,
    /// Enqueues so far in each partition, for `TRIM_EVERY`: counted per partition, as
    /// enqueues go to the partitions in turn (with one count for all, the trims fell on
    /// some partitions only, and the others' indexes grew for good).
    enqueues: Vec<AtomicU64>,
    renewals: Renewals,
    scripts: Scripts,
    /// Redis' persistence settings, as last read by `watch_persistence`.
    persistence: Arc<Mutex<Persistence>>,
    /// `[store]`'s key prefix, under which the dedupe claims are (`enqueue_all_claimed`).
    key_prefix: String,
}

impl RedisQueue {
    /// The queue on `[store]`'s Redis: ingress enqueues on the store's connection, the
    /// workers and the admin API get one of their own, so a busy worker pipeline never
    /// delays a sender's answer. Does not connect yet, as the store does not.
    pub(crate) fn connect(
        store: Arc<RedisConnection>,
        redis: &RedisSettings,
        settings: &QueueSettings,
        instance: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let connection = Arc::new(RedisConnection::new(redis, metrics.clone())?);
        let persistence = Arc::new(Mutex::new(Persistence::Unknown(
            "not read yet: Redis has not answered since the start".into(),
        )));
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(watch_persistence(
                connection.clone(),
                Arc::downgrade(&persistence),
                metrics,
            ));
        }
        Ok(RedisQueue {
            ingress: store,
            redis: connection,
            partitions: Arc::new(Partitions::new(&redis.key_prefix, settings.partitions)),
            consumer: instance.to_owned(),
            visibility: settings.visibility_timeout,
            retention: settings.retention,
            max_age: settings.max_age,
            index_horizon: settings.max_age + settings.retention,
            ids: IdGenerator::default(),
            enqueues: (0..settings.partitions)
                .map(|_| AtomicU64::new(0))
                .collect(),
            renewals: Renewals::default(),
            persistence,
            key_prefix: redis.key_prefix.clone(),
            scripts: Scripts {
                enqueue: Script::new(&[FACETS, ENQUEUE].concat()),
                stored: Script::new(STORED),
                take: Script::new(TAKE),
                begin: Script::new(&[OWNED, FACETS, BEGIN].concat()),
                attach: Script::new(&[OWNED, ATTACH].concat()),
                settle: Script::new(&[OWNED, FACETS, FINISHED, SETTLE].concat()),
                hand_back: Script::new(&[OWNED, FACETS, HAND_BACK].concat()),
                defer: Script::new(&[OWNED, FACETS, FINISHED, DEFER].concat()),
                pace: Script::new(RATE),
                keep: Script::new(KEEP),
                prune: Script::new(PRUNE),
                replay: Script::new(&[FACETS, REPLAY].concat()),
                list: Script::new(LIST),
                stats: Script::new(STATS),
            },
        })
    }

    fn persistence(&self) -> Persistence {
        self.persistence.lock().expect("not poisoned").clone()
    }

    /// Stores `deliveries` (one sender delivery's copies) in partition `p` (`ENQUEUE`),
    /// with `claim` (its Redis key and what it holds in flight) marked done for `ttl` in
    /// the same step when given: `None` when that claim was no longer held, and nothing
    /// was stored.
    async fn enqueue_in(
        &self,
        p: &Partition,
        deliveries: &[NewDelivery],
        claim: Option<&(String, String, Duration)>,
    ) -> Result<Option<Vec<String>>, (StoreError, Unsent, Vec<String>)> {
        // One received_at for all: the copies of one sender delivery.
        let now = deliveries.first().map_or(0, |d| d.received_at);
        let ids: Vec<String> = deliveries
            .iter()
            .map(|_| self.ids.next_in(now, p.index))
            .collect();
        // Entries past the horizon are only memory (a listing skips ids whose record
        // is gone), so trimming them on every enqueue cost Redis time for nothing.
        let trim = self.enqueues[p.index].fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == 0;
        let horizon = if trim {
            self.index_bound(now).to_string()
        } else {
            String::new()
        };
        let mut invocation = self.scripts.enqueue.prepare_invoke();
        invocation.key(&p.ready).key(&p.list_index);
        match claim {
            Some((key, _, _)) => invocation.key(key),
            None => invocation.key(&p.ready),
        };
        for id in &ids {
            invocation.key(p.record_key(id));
        }
        invocation
            .arg(now)
            .arg(horizon)
            .arg(&p.base)
            .arg(millis(self.index_ttl()));
        match claim {
            Some((_, held, ttl)) => invocation.arg(held).arg(millis(*ttl)),
            None => invocation.arg("").arg(0),
        };
        for (id, delivery) in ids.iter().zip(deliveries) {
            let renew: String = [&delivery.source, &delivery.route, &delivery.event_type]
                .iter()
                .enumerate()
                .map(|(facet, value)| {
                    if self
                        .renewals
                        .due(p.index, facet, value, self.index_horizon / 2)
                    {
                        '1'
                    } else {
                        '0'
                    }
                })
                .chain(['1'])
                .collect();
            invocation
                .arg(id)
                .arg(&delivery.source)
                .arg(delivery.route_label())
                .arg(&delivery.route)
                .arg(&delivery.webhook_id)
                .arg(&delivery.event_type)
                .arg(encode_headers(&delivery.headers))
                .arg(delivery.body.as_ref())
                .arg(delivery.trace_context.as_deref().unwrap_or(""))
                .arg(renew);
        }
        let stored: Result<i64, _> = self.ingress.script_or_unsent("enqueue", invocation).await;
        match stored {
            Ok(-1) => Ok(None),
            Ok(_) => Ok(Some(ids)),
            Err((e, unsent)) => {
                self.renewals.forget();
                Err((e, unsent, ids))
            }
        }
    }

    /// Stores `deliveries`, with `claim` marked done when given (`enqueue_in`). All
    /// copies in one partition, so one script stores all or none. A partition whose node
    /// refused (so nothing was stored) hands over to the next; after a failure that may
    /// have stored them (a timeout), the sender gets its 503 and the ingress learns later
    /// whether they were (`stored`).
    async fn store_all(
        &self,
        deliveries: Vec<NewDelivery>,
        claim: Option<&(String, String, Duration)>,
    ) -> Result<Vec<String>, QueueError> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let mut failure = None;
        for partition in self.partitions.order(Turn::Enqueue) {
            let p = &self.partitions.all()[partition];
            match self.enqueue_in(p, &deliveries, claim).await {
                Ok(Some(ids)) => {
                    self.partitions.record(partition, true);
                    return Ok(ids);
                }
                Ok(None) => {
                    self.partitions.record(partition, true);
                    return Err(QueueError::ClaimLost);
                }
                Err((e, Unsent(true), _)) => {
                    self.partitions.record(partition, false);
                    failure = Some(e);
                }
                Err((error, Unsent(false), ids)) => {
                    self.partitions.record(partition, false);
                    return Err(QueueError::MaybeStored { ids, error });
                }
            }
        }
        Err(failure.expect("at least one partition").into())
    }

    /// Asks `partition`'s node, in a task of its own, whether it answers again (an
    /// `EXISTS` on its stream), when a probe is due (`Partitions::probe`): a take never
    /// waits for it.
    fn probe(&self, partition: usize) {
        if !self.partitions.probe(partition) {
            return;
        }
        let (redis, partitions) = (self.redis.clone(), self.partitions.clone());
        let ready = partitions.all()[partition].ready.clone();
        tokio::spawn(async move {
            let answered = redis
                .call("probe", async |conn| {
                    redis::cmd("EXISTS")
                        .arg(&ready)
                        .query_async::<i64>(conn)
                        .await
                })
                .await
                .is_ok();
            partitions.probed(partition, answered);
        });
    }

    /// Takes up to `max` deliveries from one partition (`TAKE`).
    async fn take_from(
        &self,
        partition: usize,
        max: usize,
        now: UnixMillis,
    ) -> Result<Vec<Lease>, QueueError> {
        let p = &self.partitions.all()[partition];
        let mut invocation = self.scripts.take.prepare_invoke();
        invocation
            .key(&p.ready)
            .key(&p.scheduled)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(max)
            .arg(now)
            .arg(millis(self.visibility))
            .arg(self.partitions.claim_cursor(partition))
            .arg(&p.records)
            .arg(
                if self
                    .partitions
                    .claim_due(partition, self.visibility / CLAIM_SCANS)
                {
                    "1"
                } else {
                    ""
                },
            );
        let reply: Vec<String> = self.redis.script("take", invocation).await?;
        let Some((cursor, rest)) = reply.split_first() else {
            return Ok(Vec::new());
        };
        self.partitions.set_claim_cursor(partition, cursor.clone());
        Ok(rest
            .chunks_exact(3)
            .map(|c| Lease {
                delivery_id: c[0].clone(),
                route: c[1].clone(),
                token: c[2].clone(),
            })
            .collect())
    }

    /// One partition's depth, oldest ready entry (ms, Redis' clock, -1: none), Redis'
    /// clock now and dead letters (`STATS`).
    async fn stats_of(&self, p: &Partition) -> Result<[i64; 5], QueueError> {
        let mut invocation = self.scripts.stats.prepare_invoke();
        invocation
            .key(&p.ready)
            .key(&p.scheduled)
            .key(&p.dead)
            .arg(millis(self.retention));
        let reply: Vec<i64> = self.redis.script("queue_stats", invocation).await?;
        reply.try_into().map_err(|reply| {
            QueueError::Store(StoreError::Unavailable(format!(
                "unexpected stats reply {reply:?}"
            )))
        })
    }

    /// The expiry an index set gets when written: half a horizon more than its newest
    /// entry needs, so that `Renewals` may skip renewing it for half a horizon.
    fn index_ttl(&self) -> Duration {
        self.index_horizon + self.index_horizon / 2
    }

    /// Index entries older than this belong to forgotten records.
    fn index_bound(&self, now: UnixMillis) -> UnixMillis {
        now.saturating_sub(millis(self.index_horizon))
    }
}

/// The scripts' flag for a step that is a fetch, not an attempt.
fn fetch_flag(attempt: &Attempt) -> &'static str {
    if attempt.step == Step::Fetch { "1" } else { "" }
}

fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
    text.parse().ok()
}

fn text(value: Option<&redis::Value>) -> String {
    match value {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        Some(redis::Value::Int(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn bytes(value: Option<&redis::Value>) -> Bytes {
    present(value).unwrap_or_default()
}

/// A field's bytes, `None` when the hash has no such field.
fn present(value: Option<&redis::Value>) -> Option<Bytes> {
    match value {
        Some(redis::Value::BulkString(bytes)) => Some(Bytes::from(bytes.clone())),
        _ => None,
    }
}

impl Queue for RedisQueue {
    fn enqueue(&self, delivery: NewDelivery) -> BoxFuture<'_, Result<String, QueueError>> {
        Box::pin(async move {
            let mut ids = self.enqueue_all(vec![delivery]).await?;
            ids.pop()
                .ok_or_else(|| QueueError::malformed("enqueue", "no id for the delivery"))
        })
    }

    fn enqueue_all(
        &self,
        deliveries: Vec<NewDelivery>,
    ) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        Box::pin(self.store_all(deliveries, None))
    }

    /// On a single Redis, the claim is marked done by the script that stores the
    /// deliveries: stored as two steps, an instance killed between them left the key in
    /// flight, then forgotten, and the sender's retry stored the delivery a second time
    /// (an audit's SIGKILLs did so for most kills under load). A cluster keeps the claim
    /// in another slot than the queue, which one script cannot touch: the caller
    /// commits it after, as before.
    fn enqueue_all_claimed<'a>(
        &'a self,
        deliveries: Vec<NewDelivery>,
        claim: ClaimDone<'a>,
    ) -> BoxFuture<'a, Result<(Vec<String>, bool), QueueError>> {
        Box::pin(async move {
            if !self.ingress.single() || deliveries.is_empty() {
                return Ok((self.store_all(deliveries, None).await?, false));
            }
            let claim = (
                dedupe_key(&self.key_prefix, claim.key),
                in_flight(claim.token),
                claim.ttl,
            );
            Ok((self.store_all(deliveries, Some(&claim)).await?, true))
        })
    }

    fn stored<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(async move {
            let Some(id) = ids.first() else {
                return Ok(false);
            };
            // One script stored every copy or none, in the first one's partition.
            let p = self.partitions.of(id);
            let mut invocation = self.scripts.stored.prepare_invoke();
            invocation
                .key(p.record_key(id))
                .key(format!("{}fence:{id}", p.base))
                .arg(millis(FENCE_TTL));
            let stored: i64 = self.ingress.script("stored", invocation).await?;
            Ok(stored == 1)
        })
    }

    fn take(&self, max: usize, now: UnixMillis) -> BoxFuture<'_, Result<Vec<Lease>, QueueError>> {
        Box::pin(async move {
            // From each partition in turn until `max` are taken. One whose last call
            // failed is left out (unless all failed) until a probe of its own, every
            // `REST`, finds it answering: tried in line, a node that hangs rather than
            // refusing cost each take a timeout per partition it holds, and the healthy
            // partitions were polled only between those.
            let order = self.partitions.order(Turn::Take);
            let all_failed = order.iter().all(|&p| self.partitions.failed(p));
            let (mut leases, mut answered, mut failure) = (Vec::new(), false, None);
            for partition in order {
                if leases.len() >= max {
                    break;
                }
                if self.partitions.failed(partition) && !all_failed {
                    self.probe(partition);
                    continue;
                }
                match self.take_from(partition, max - leases.len(), now).await {
                    Ok(taken) => {
                        self.partitions.record(partition, true);
                        answered = true;
                        leases.extend(taken);
                    }
                    Err(e) => {
                        self.partitions.record(partition, false);
                        failure = Some(e);
                    }
                }
            }
            match failure {
                Some(e) if !answered => Err(e),
                _ => Ok(leases),
            }
        })
    }

    fn begin<'a>(
        &'a self,
        lease: &'a Lease,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Option<Job>, QueueError>> {
        Box::pin(async move {
            let id = &lease.delivery_id;
            let p = self.partitions.of(id);
            let mut invocation = self.scripts.begin.prepare_invoke();
            invocation
                .key(p.record_key(id))
                .key(p.history_key(id))
                .key(&p.ready)
                .arg(now)
                .arg(&self.consumer)
                .arg(&lease.token)
                .arg(GROUP)
                .arg(&p.base)
                .arg(id);
            let reply: Option<Vec<redis::Value>> = self.redis.script("begin", invocation).await?;
            let Some(f) = reply else { return Ok(None) };
            if f.len() != 13 {
                return Err(QueueError::malformed(
                    id,
                    format!("begin returned {} values", f.len()),
                ));
            }
            let headers =
                decode_headers(&text(f.get(6))).map_err(|e| QueueError::malformed(id, e))?;
            Ok(Some(Job {
                lease: lease.clone(),
                attempt: number(&text(f.first())).unwrap_or(1),
                history_index: number(&text(f.get(1))).unwrap_or(0),
                delivery: NewDelivery {
                    source: text(f.get(2)),
                    route: text(f.get(3)),
                    webhook_id: text(f.get(4)),
                    event_type: text(f.get(5)),
                    headers,
                    body: bytes(f.get(7)),
                    received_at: number(&text(f.get(9))).unwrap_or(now),
                    trace_context: Some(text(f.get(12))).filter(|t| !t.is_empty()),
                },
                enqueued_at: number(&text(f.get(8))).unwrap_or(now),
                object: present(f.get(10)),
                failed_fetches: number(&text(f.get(11))).unwrap_or(0),
            }))
        })
    }

    fn settle<'a>(
        &'a self,
        job: &'a Job,
        attempt: &'a Attempt,
        settlement: Settlement,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(async move {
            let id = &job.lease.delivery_id;
            let p = self.partitions.of(id);
            let next = match settlement {
                Settlement::RetryAt(at) => at.to_string(),
                _ => String::new(),
            };
            let mut invocation = self.scripts.settle.prepare_invoke();
            invocation
                .key(p.record_key(id))
                .key(p.history_key(id))
                .key(&p.ready)
                .key(&p.scheduled)
                .key(&p.dead)
                .arg(GROUP)
                .arg(&job.lease.token)
                .arg(now)
                .arg(settlement.state().as_str())
                .arg(next)
                .arg(attempt.status.map(|s| s.to_string()).unwrap_or_default())
                .arg(attempt.error.as_deref().unwrap_or(""))
                .arg(job.history_index)
                .arg(serde_json::to_string(attempt).expect("an attempt serializes"))
                .arg(millis(self.retention))
                .arg(id)
                .arg(&p.base)
                .arg(self.index_bound(now))
                .arg(fetch_flag(attempt))
                .arg(&self.consumer);
            let moved: i64 = self.redis.script("settle", invocation).await?;
            Ok(moved == 1)
        })
    }

    fn attach<'a>(
        &'a self,
        job: &'a Job,
        fetched: &'a Attempt,
        object: Bytes,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Job, QueueError>> {
        Box::pin(async move {
            let id = &job.lease.delivery_id;
            let p = self.partitions.of(id);
            let next = Attempt::opened(job.attempt, now, &self.consumer);
            let mut invocation = self.scripts.attach.prepare_invoke();
            invocation
                .key(p.record_key(id))
                .key(p.history_key(id))
                .key(&p.ready)
                .arg(object.as_ref())
                .arg(job.history_index)
                .arg(serde_json::to_string(fetched).expect("an attempt serializes"))
                .arg(serde_json::to_string(&next).expect("an attempt serializes"))
                .arg(now)
                .arg(GROUP)
                .arg(&job.lease.token)
                .arg(&self.consumer);
            let index: i64 = self.redis.script("attach", invocation).await?;
            let history_index = u64::try_from(index).map_err(|_| QueueError::lease_lost(id))?;
            Ok(Job {
                history_index,
                object: Some(object),
                ..job.clone()
            })
        })
    }

    fn hand_back<'a>(
        &'a self,
        lease: &'a Lease,
        interrupted: Option<(&'a Job, &'a Attempt)>,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let id = &lease.delivery_id;
            let p = self.partitions.of(id);
            let (index, entry, fetch) = match interrupted {
                Some((job, attempt)) => (
                    job.history_index.to_string(),
                    serde_json::to_string(attempt).expect("an attempt serializes"),
                    fetch_flag(attempt),
                ),
                None => (String::new(), String::new(), ""),
            };
            let mut invocation = self.scripts.hand_back.prepare_invoke();
            invocation
                .key(p.record_key(id))
                .key(p.history_key(id))
                .key(&p.ready)
                .arg(GROUP)
                .arg(&lease.token)
                .arg(now)
                .arg(id)
                .arg(index)
                .arg(entry)
                .arg(&lease.route)
                .arg(&p.base)
                .arg(fetch)
                .arg(&self.consumer);
            let _: i64 = self.redis.script("hand_back", invocation).await?;
            Ok(())
        })
    }

    fn defer<'a>(
        &'a self,
        lease: &'a Lease,
        until: UnixMillis,
        now: UnixMillis,
        why: &'a str,
    ) -> BoxFuture<'a, Result<Deferred, QueueError>> {
        Box::pin(async move {
            let id = &lease.delivery_id;
            let p = self.partitions.of(id);
            let mut invocation = self.scripts.defer.prepare_invoke();
            invocation
                .key(p.record_key(id))
                .key(&p.ready)
                .key(&p.scheduled)
                .key(p.history_key(id))
                .key(&p.dead)
                .arg(GROUP)
                .arg(&lease.token)
                .arg(until)
                .arg(id)
                .arg(&self.consumer)
                .arg(now)
                .arg(millis(self.max_age))
                .arg(millis(self.retention))
                .arg(why)
                .arg(&p.base)
                .arg(self.index_bound(now));
            let done: Vec<i64> = self.redis.script("defer", invocation).await?;
            Ok(match done.as_slice() {
                [2, attempts] => Deferred::DeadLettered {
                    attempts: u32::try_from(*attempts).unwrap_or(0),
                },
                _ => Deferred::Waiting,
            })
        })
    }

    fn pace<'a>(
        &'a self,
        key: &'a str,
        rate: RatePolicy,
    ) -> BoxFuture<'a, Result<Option<Duration>, QueueError>> {
        Box::pin(async move {
            let (interval_us, tolerance_us) = gcra_parameters(RateLimitSettings {
                requests_per_second: rate.per_second,
                burst: rate.burst.get(),
            });
            // While partition 0's node is known to fail, no check waits on it: each
            // would hold a worker for the store's timeout (a node that hangs), and the
            // deliveries of every partition on routes without a `rate` behind them. A
            // probe brings it back (`probe`); until then the worker defers.
            if self.partitions.failed(0) {
                self.probe(0);
                return Err(QueueError::Store(StoreError::Unavailable(
                    "partition 0, which holds the rate buckets, failed a moment ago".into(),
                )));
            }
            let mut invocation = self.scripts.pace.prepare_invoke();
            invocation
                // One bucket per upstream for every partition (else the rate would be
                // multiplied by their number): partition 0's, the key of old.
                .key(format!("{}pace:{key}", self.partitions.all()[0].base))
                .arg(interval_us)
                .arg(tolerance_us)
                .arg(1);
            let checked: Result<i64, _> = self.redis.script("pace", invocation).await;
            self.partitions.record(0, checked.is_ok());
            let wait_us = checked?;
            Ok((wait_us > 0).then(|| Duration::from_micros(wait_us as u64)))
        })
    }

    fn keep_alive<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            // Each partition's leases in its own stream, all partitions at once: one
            // partition failing does not keep the others' from being renewed, nor delay
            // them (one after the other, the partitions of a hung node cost a timeout
            // each, and past the visibility timeout the healthy partitions' leases were
            // taken over while their attempts still ran: sent twice).
            let mut by_partition: BTreeMap<usize, Vec<&Lease>> = BTreeMap::new();
            for lease in leases {
                by_partition
                    .entry(partition_of(&lease.delivery_id))
                    .or_default()
                    .push(lease);
            }
            let renewals = by_partition
                .into_iter()
                .map(|(partition, leases)| async move {
                    let p = self.partitions.of(&leases[0].delivery_id);
                    for chunk in leases.chunks(256) {
                        let mut invocation = self.scripts.keep.prepare_invoke();
                        invocation.key(&p.ready).arg(GROUP).arg(&self.consumer);
                        for lease in chunk {
                            invocation.arg(&lease.token);
                        }
                        let kept: Result<i64, _> =
                            self.redis.script("keep_alive", invocation).await;
                        if let Err(e) = kept {
                            self.partitions.record(partition, false);
                            return Err(QueueError::from(e));
                        }
                    }
                    Ok(())
                });
            let outcomes = futures_util::future::join_all(renewals).await;
            outcomes.into_iter().find(Result::is_err).unwrap_or(Ok(()))
        })
    }

    fn prune(&self, idle: Duration) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(async move {
            let (mut removed, mut failure) = (0, None);
            for p in self.partitions.all() {
                let mut invocation = self.scripts.prune.prepare_invoke();
                invocation
                    .key(&p.ready)
                    .arg(GROUP)
                    // Not `millis`, which makes 0 (an invalid TTL) 1: idle for 0 ms is
                    // everyone, also a consumer seen this millisecond.
                    .arg(idle.as_millis() as u64)
                    .arg(&self.consumer);
                match self.redis.script::<u64>("prune", invocation).await {
                    Ok(n) => removed += n,
                    Err(e) => failure = Some(e.into()),
                }
            }
            failure.map_or(Ok(removed), Err)
        })
    }

    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<DeliveryList, QueueError>> {
        Box::pin(self.page(filter))
    }

    fn show<'a>(
        &'a self,
        id: &'a str,
        with_body: bool,
    ) -> BoxFuture<'a, Result<Option<Detail>, QueueError>> {
        Box::pin(async move {
            let p = self.partitions.of(id);
            let record = p.record_key(id);
            let history = p.history_key(id);
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET")
                .arg(&record)
                .arg(&SUMMARY_FIELDS[..])
                .arg(&["enqueued_at", "replays", "headers", "body", "object"]);
            pipe.cmd("LRANGE").arg(&history).arg(0).arg(-1);
            let (fields, entries): (Vec<redis::Value>, Vec<String>) = self
                .redis
                .call("show", async |conn| pipe.query_async(conn).await)
                .await?;
            if matches!(fields.first(), None | Some(redis::Value::Nil)) {
                return Ok(None);
            }
            let texts: Vec<String> = fields.iter().take(14).map(|v| text(Some(v))).collect();
            let summary = summary(id.to_owned(), &texts[..11])?;
            let headers = decode_headers(&texts[13]).map_err(|e| QueueError::malformed(id, e))?;
            let (header_names, header_values) = header_listing(&headers, with_body);
            let history = entries
                .iter()
                .map(|e| {
                    serde_json::from_str(e).map_err(|e| QueueError::malformed(id, e.to_string()))
                })
                .collect::<Result<Vec<Attempt>, _>>()?;
            Ok(Some(Detail {
                summary,
                enqueued_at: number(&texts[11]).unwrap_or(0),
                replays: number(&texts[12]).unwrap_or(0),
                history,
                header_names,
                headers: header_values,
                body: with_body.then(|| RecordBody::new(&bytes(fields.get(14)))),
                object: present(fields.get(15))
                    .filter(|_| with_body)
                    .map(|o| String::from_utf8_lossy(&o).into_owned()),
                body_dropped: false,
            }))
        })
    }

    fn replay<'a>(
        &'a self,
        id: &'a str,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<Replayed, QueueError>> {
        Box::pin(async move {
            let p = self.partitions.of(id);
            if p.index >= self.partitions.len() {
                return Ok(Replayed::PartitionNotTaken { partition: p.index });
            }
            let mut invocation = self.scripts.replay.prepare_invoke();
            invocation
                .key(p.record_key(id))
                .key(p.history_key(id))
                .key(&p.ready)
                .key(&p.dead)
                .key(&p.list_index)
                .arg(id)
                .arg(now)
                .arg(&p.base)
                .arg(self.index_bound(now))
                .arg(millis(self.index_ttl()));
            let (code, state): (i64, String) = self.redis.script("replay", invocation).await?;
            let state = State::parse(&state);
            Ok(match (code, state) {
                (1, Some(was)) => Replayed::Queued { was },
                (2, Some(state)) => Replayed::NotReplayable(state),
                _ => Replayed::NotFound,
            })
        })
    }

    fn failed_since(&self, since: UnixMillis) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        Box::pin(async move {
            let mut failed: Vec<(u64, String)> = Vec::new();
            for p in self.partitions.all() {
                let dead = &p.dead;
                let some: Vec<(String, u64)> = self
                    .redis
                    .call("replay", async |conn| {
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(dead)
                            .arg(since)
                            .arg("+inf")
                            .arg("WITHSCORES")
                            .query_async(conn)
                            .await
                    })
                    .await?;
                failed.extend(some.into_iter().map(|(id, at)| (at, id)));
            }
            // Oldest first over every partition, as one sorted set would answer.
            failed.sort();
            Ok(failed.into_iter().map(|(_, id)| id).collect())
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        Box::pin(async move {
            let mut stats = QueueStats {
                depth: 0,
                oldest_age: Duration::ZERO,
                dead_letters: 0,
            };
            for p in self.partitions.all() {
                let [ready, scheduled, oldest, now, dead] = self.stats_of(p).await?;
                stats.depth += (ready + scheduled).max(0) as u64;
                stats.dead_letters += dead.max(0) as u64;
                // Each partition's age on its own node's clock; the oldest over all.
                if oldest >= 0 {
                    let age = Duration::from_millis(now.saturating_sub(oldest).max(0) as u64);
                    stats.oldest_age = stats.oldest_age.max(age);
                }
            }
            Ok(stats)
        })
    }

    fn durable(&self) -> bool {
        !matches!(
            self.persistence(),
            Persistence::Snapshots | Persistence::Evicting { .. }
        )
    }

    fn describe(&self) -> String {
        format!(
            "Redis Streams ({}ready{}, group {GROUP:?}, consumer {:?}), shared by every instance; {}",
            self.partitions.all()[0].base,
            match self.partitions.len() {
                1 => String::new(),
                n => format!(" and {} more partitions", n - 1),
            },
            self.consumer,
            self.persistence()
        )
    }
}

/// Reads Redis' persistence settings at start (again every 5 s until Redis answers, or
/// refuses `CONFIG GET`) and
/// then every minute, since `CONFIG SET` can change them at run time; says so loudly
/// whenever a 202 could be lost on a Redis restart. Ends with the queue.
async fn watch_persistence(
    redis: Arc<RedisConnection>,
    state: std::sync::Weak<Mutex<Persistence>>,
    metrics: Arc<Metrics>,
) {
    let mut said: Option<Persistence> = None;
    loop {
        let now = persistence::read(&redis).await;
        let Some(state) = state.upgrade() else { return };
        metrics.queue_persistence("redis", now.gauge());
        let unanswered = matches!(now, Persistence::Unknown(_));
        if said.as_ref() != Some(&now) {
            match &now {
                p if p.survives_restart() => tracing::info!(persistence = %p, "redis queue"),
                p => tracing::warn!(persistence = %p, "redis queue"),
            }
            said = Some(now.clone());
        }
        *state.lock().expect("not poisoned") = now;
        drop(state);
        let pause = if unanswered { 5 } else { 60 };
        tokio::time::sleep(Duration::from_secs(pause)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_names_its_keys_under_one_hash_tag() {
        // Redis Cluster routes a script by its first key; the others (and the record keys
        // built inside TAKE and LIST) must hash to the same slot, which the partition's
        // tag (`{queue}` or `{queue:i}`, `partition.rs`) guarantees. Nothing may reach outside KEYS and the tagged prefix.
        for script in [
            ENQUEUE, STORED, TAKE, BEGIN, ATTACH, SETTLE, HAND_BACK, DEFER, KEEP, PRUNE, REPLAY,
            LIST, STATS,
        ] {
            assert!(script.contains("KEYS[1]"));
            assert!(!script.contains("KEYS[6]"));
        }
        // The index keys built inside the scripts start with the tagged base, passed in.
        for script in [
            FACETS, FINISHED, ENQUEUE, BEGIN, SETTLE, HAND_BACK, DEFER, REPLAY,
        ] {
            for (at, _) in script.match_indices("'x:") {
                assert!(script[..at].ends_with(" .. "), "{}", &script[at..]);
            }
        }
    }
}
