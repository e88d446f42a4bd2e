-- hookgate schema version 1. Applied by `hookgate migrate` (or at `serve` start) with
-- search_path set to the configured schema. Times are timestamptz; the Rust side speaks
-- Unix milliseconds through ts_ms / ms_ts.

CREATE FUNCTION ms_ts(ms bigint) RETURNS timestamptz
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT to_timestamp(ms::float8 / 1000) $$;

CREATE FUNCTION ts_ms(at timestamptz) RETURNS bigint
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT round(extract(epoch FROM at) * 1000)::bigint $$;

-- Dedupe claims (proxy and queue mode): `token` is the claim's while it is in flight,
-- NULL once the delivery is done. A row past `expires_at` counts as absent.
CREATE TABLE dedupe (
  key        text PRIMARY KEY,
  token      text,
  expires_at timestamptz NOT NULL
);
CREATE INDEX dedupe_expires_at ON dedupe (expires_at);

-- Queue mode: one row per delivery, its record and its queue entry at once.
CREATE TABLE deliveries (
  id              text PRIMARY KEY,
  state           text NOT NULL CHECK (state IN
                    ('queued', 'processing', 'processed', 'failed_retryable', 'failed_final')),
  source          text NOT NULL,
  route           text NOT NULL,
  webhook_id      text NOT NULL,
  event_type      text NOT NULL,
  attempts        integer NOT NULL DEFAULT 0,
  -- Entries in `attempts` so far: the index of the next one.
  history_len     integer NOT NULL DEFAULT 0,
  replays         integer NOT NULL DEFAULT 0,
  failed_fetches  integer NOT NULL DEFAULT 0,
  received_at     timestamptz NOT NULL,
  -- When it was queued: received, or last replayed. Lists are newest first by this.
  queued_at       timestamptz NOT NULL,
  updated_at      timestamptz NOT NULL,
  next_attempt_at timestamptz,
  last_status     integer,
  last_error      text,
  -- [[name, value], ...] as the upstream gets them; NULL once processed.
  headers         jsonb,
  -- The raw body, and an `enrich` route's fetched object; NULL once processed.
  body            bytea,
  object          bytea,
  -- The W3C traceparent of the request that brought it (tracing), if any.
  trace_context   text,
  -- When a worker may take it; NULL once final.
  due_at          timestamptz,
  lease_token     text,
  lease_owner     text,
  lease_until     timestamptz,
  -- When it became final: retention counts from here.
  final_at        timestamptz
-- Room on each page for a row's new version: a take or a lease renewal (which change
-- no indexed column) then updates in place (HOT), without new index entries.
) WITH (fillfactor = 80);
CREATE INDEX deliveries_due ON deliveries (due_at, id) WHERE due_at IS NOT NULL;
CREATE INDEX deliveries_queued ON deliveries (queued_at DESC, id DESC);
CREATE INDEX deliveries_state ON deliveries (state, queued_at DESC, id DESC);
CREATE INDEX deliveries_source ON deliveries (source, route, queued_at DESC, id DESC);
CREATE INDEX deliveries_event_type ON deliveries (event_type, queued_at DESC, id DESC);
CREATE INDEX deliveries_webhook_id ON deliveries (webhook_id);
CREATE INDEX deliveries_final ON deliveries (final_at) WHERE final_at IS NOT NULL;
CREATE INDEX deliveries_dead ON deliveries (updated_at) WHERE state = 'failed_final';

-- Each delivery's attempts (and the fetches before them), in order.
CREATE TABLE attempts (
  delivery_id text NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
  idx         integer NOT NULL,
  attempt     integer NOT NULL,
  step        text NOT NULL DEFAULT 'deliver' CHECK (step IN ('deliver', 'fetch')),
  started_at  timestamptz NOT NULL,
  duration_ms bigint,
  status      integer,
  error       text,
  result      text,
  instance    text NOT NULL,
  answer      text,
  -- The trace the attempt's span belongs to (tracing), if any.
  trace_id    text,
  PRIMARY KEY (delivery_id, idx)
);

-- Delivery rates (`route.rate`): the GCRA theoretical arrival time of each key
-- (`<source>/<route>`), shared by every instance.
CREATE TABLE paces (
  key text PRIMARY KEY,
  tat timestamptz NOT NULL
);

-- Instances that took deliveries, for `prune`.
CREATE TABLE instances (
  name      text PRIMARY KEY,
  last_seen timestamptz NOT NULL
);
