#!/usr/bin/env bash
# The Redis store against the in-memory store, measured alternately: PAIRS times, one
# run with memory then one with Redis, each with a fresh gateway (and a fresh Redis), the
# same load and pinning as bench/run.sh. Alternating keeps the machine's drift out of the
# ratio, which rows measured minutes apart do not. A benchmark, not a test.
#
#   bash bench/alternate.sh            # PAIRS=3 N=40000 C=32
#
# Prints one line per run and the ratios per pair (throughput, and gateway CPU µs/req).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-3}
N=${N:-40000}
C=${C:-32}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}
BASE_PORT=${BASE_PORT:-18500}
export RUST_LOG=warn
cargo build --release --locked -q
HG=$PWD/target/release/hookgate
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
SINK_PORT=$BASE_PORT GW_PORT=$((BASE_PORT + 2)) ADMIN_PORT=$((BASE_PORT + 3)) REDIS_PORT=$((BASE_PORT + 4))

wait_port() {
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "nothing listening on port $1" >&2; exit 1
}
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%d", s}'; }

taskset -c "$LOAD_CPU" "$HG" bench sink --listen "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 &
wait_port "$SINK_PORT"

run() { # run memory|redis: prints "store rps p99 gateway_us redis_us"
    local store=$1 redis_pid=""
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\n[admin]\nlisten = "127.0.0.1:%s"\n' "$GW_PORT" "$ADMIN_PORT"
        printf '[limits]\nmax_body_bytes = 1048576\nmax_connections_per_ip = 0\n'
        printf '[rate_limit]\nrequests_per_second = 1000000\nburst = 1000000\n'
        [ "$store" = redis ] && printf '[store]\nredis_url = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT"
        printf '[[sources]]\nname = "openai"\npath = "/webhooks/openai"\nscheme = "standard-webhooks"\n'
        printf 'secrets = ["whsec_aG9va2dhdGUtZGVtby1zZWNyZXQtZG8tbm90LXVzZSE="]\n'
        printf '[[sources.routes]]\nevents = ["*"]\nupstream = "http://127.0.0.1:%s/sink"\n' "$SINK_PORT"
    } >"$WORK/gw.toml"
    if [ "$store" = redis ]; then
        taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
        redis_pid=$!
        wait_port "$REDIS_PORT"
    fi
    taskset -c "$SUT_CPU" "$HG" serve --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
    local gw=$!
    wait_port "$GW_PORT"
    local url="http://127.0.0.1:$GW_PORT/webhooks/openai"
    taskset -c "$LOAD_CPU" "$HG" bench load --url "$url" -n 2000 -c "$C" >/dev/null
    local before redis_before=0 after redis_after=0
    before=$(cpu_ns "$gw"); [ -n "$redis_pid" ] && redis_before=$(cpu_ns "$redis_pid")
    taskset -c "$LOAD_CPU" "$HG" bench load --url "$url" -n "$N" -c "$C" --json >"$WORK/run.json"
    after=$(cpu_ns "$gw"); [ -n "$redis_pid" ] && redis_after=$(cpu_ns "$redis_pid")
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1])); n = max(r["requests"], 1)
ok = sum(c for s, c in r["statuses"].items() if s.startswith("2"))
assert ok == n, "only %d of %d answered 2xx" % (ok, n)
print(sys.argv[2], round(r["requests_per_second"]), r["latency_ms"]["p99"],
      round((int(sys.argv[4]) - int(sys.argv[3])) / 1000 / n, 1),
      round((int(sys.argv[6]) - int(sys.argv[5])) / 1000 / n, 1))
' "$WORK/run.json" "$store" "$before" "$after" "$redis_before" "$redis_after"
    kill "$gw"; wait "$gw" 2>/dev/null || true
    if [ -n "$redis_pid" ]; then kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; fi
}

echo "store req/s p99_ms gateway_cpu_us/req redis_cpu_us/req   (N=$N C=$C, load on CPU $LOAD_CPU, gateway on CPU $SUT_CPU)"
for pair in $(seq 1 "$PAIRS"); do
    m=$(run memory); echo "$m"
    r=$(run redis); echo "$r"
    python3 -c '
import sys
m, r = sys.argv[1].split(), sys.argv[2].split()
print(f"pair {sys.argv[3]}: Redis/memory throughput {int(r[1]) / int(m[1]):.2f}x, gateway CPU memory/Redis {float(m[3]) / float(r[3]):.2f}x")
' "$m" "$r" "$pair"
done
