-- hookgate schema version 2: ts_ms is as stable as its body (extract() on a timestamptz
-- depends on the session's time zone), so the planner inlines it into each statement
-- instead of running a SQL function call per row (it refuses to inline a function
-- declared IMMUTABLE whose body is only STABLE). Results are unchanged.
ALTER FUNCTION ts_ms(timestamptz) STABLE;
