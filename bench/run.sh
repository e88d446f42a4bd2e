#!/usr/bin/env bash
# One load, several systems under test, one table. A benchmark, not a test: CI does not
# run it and nothing asserts on time. Run from the repository root:
#
#   bash bench/run.sh                 # defaults below; REPEAT runs per row, medians reported
#   N=100000 REPEAT=5 bash bench/run.sh
#   ROWS='nginx|hookgate memory$' bash bench/run.sh     # only rows matching this regex
#   ROWS='hookgate (memory|redis)( queue)?$' bash bench/run.sh   # queue mode next to proxy mode
#   REPEAT=12 ROWS='hookgate (memory|redis)$' bash bench/run.sh  # the Redis/memory ratio
#   BASELINE=main REPEAT=5 ROWS='hookgate (memory|redis)' bash bench/run.sh  # a change against a commit
#   LAYOUT=shared bash bench/run.sh   # the upstream sink shares the system under test's core
#   REPEAT=5 ROWS='hookgate memory($|, tracing)' bash bench/run.sh  # tracing off, on at 1.0 and at 0.01
#   INSTRUCTIONS=1 N=3000 REPEAT=3 ROWS='hookgate memory($|, tracing)' bash bench/run.sh  # counted by callgrind
#
# INSTRUCTIONS=1 runs each gateway of the hookgate rows under valgrind's callgrind and
# adds the instructions the gateway executed per request (all its threads, exporters
# included; the warm-up left out): a count that does not move with the machine's load,
# unlike req/s and CPU time, so it shows small differences on a busy machine. The
# gateway runs some 50 times slower under callgrind: use a small N, and read req/s,
# latency and CPU of such a run as meaningless.
#
# BASELINE=<git revision> builds that revision too (a git worktree, its release build kept
# in target/baseline) and runs every hookgate memory/redis run a second time on it, right
# after the run on this tree, as rows named "... (baseline)", with the ratio of each pair.
# HG_BIN=<binary> and BASELINE_BIN=<binary> use builds made elsewhere instead (e.g. of
# `cargo build --profile profiling`, whose symbols perf and callgrind can name).
#
# Rows: the sink directly; nginx (one worker, plain reverse proxy, no verification: the
# cost floor of any proxy); hookgate with the in-memory store; hookgate with Redis;
# hookgate over TLS (HTTP/1.1 and h2); and the same with 64 KiB bodies; hookgate in queue
# mode (in memory and on Redis): ingress as for the other rows, plus the end-to-end drain
# rate, from the first request sent until the sink has received every delivery; and the
# flood rows (penalty box idle/flood, v1a flood: see where they run), e.g.
# ROWS='penalty box|v1a flood' bash bench/run.sh; and hookgate in memory with OpenTelemetry
# tracing on (`[telemetry]`, spans exported to the sink, which answers them 200 like a
# collector) at sample_ratio 1.0 and 0.01, alternating with the tracing-off row, e.g.
# ROWS='hookgate memory($|, tracing)' bash bench/run.sh.
# Pinning (taskset): the system under test (the direct sink, nginx's worker, or hookgate)
# runs alone on SUT_CPU; its environment (the load generator `hookgate bench load`, the
# upstream sink the proxies forward to, and Redis) shares LOAD_CPU. So a row measures the
# proxy itself, not its neighbours; CPU spent in Redis is reported separately.
# LAYOUT=shared moves the upstream sink onto SUT_CPU too, as on a busy host where the
# gateway shares its core with the backend; LAYOUT=alone (the default) is the above.
# The ", access log" rows run nginx (a second server block of the same worker) and the
# in-memory gateway with their access logs on, written to a file; every other row runs
# both with their access logs off (hookgate with RUST_LOG=warn).
# CPU µs per request is the system-under-test process's on-CPU time (sum over its threads
# of /proc/PID/task/*/schedstat) divided by the requests it served; peak RSS is its VmHWM.
# The "hookgate postgres queue" row runs queue mode on a PostgreSQL of its own (initdb +
# pg_ctl from /usr/lib/postgresql/*/bin, as the postgres user when run as root; default,
# durable settings), on the load CPU like Redis; its store CPU is the postmaster's and
# every backend's. PG_OPTIONS adds server settings (PG_OPTIONS='-c synchronous_commit=off'
# shows what the commits' WAL flushes cost).
# Needs: nginx (Debian's nginx-light), redis-server, python3, taskset; postgresql for
# the PostgreSQL row.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-40000}            # requests per run
C=${C:-32}               # connections
BODY=${BODY:-1024}       # body bytes
BIG_BODY=${BIG_BODY:-65536}
REPEAT=${REPEAT:-3}      # runs per row; medians are reported
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}
LAYOUT=${LAYOUT:-alone}  # alone | shared: where the upstream sink runs
case $LAYOUT in
    alone) SINK_CPU=$LOAD_CPU ;;
    shared) SINK_CPU=$SUT_CPU ;;
    *) echo "LAYOUT must be alone or shared, not $LAYOUT" >&2; exit 1 ;;
esac
BASE_PORT=${BASE_PORT:-18400}
ROWS=${ROWS:-.}          # regex: which rows to run
QUEUE_WORKERS=${QUEUE_WORKERS:-64}   # queue.workers in the queue-mode rows
REDIS_STATS=${REDIS_STATS:-}        # 1: also list Redis' commands per event of each Redis row (needs redis-cli)
INSTRUCTIONS=${INSTRUCTIONS:-}      # 1: count the gateway's instructions per request (needs valgrind)
export RUST_LOG=warn

tools="nginx redis-server python3 taskset"
[ -n "$INSTRUCTIONS" ] && tools="$tools valgrind callgrind_control"
for tool in $tools; do
    command -v "$tool" >/dev/null || { echo "bench/run.sh needs $tool (nginx: apt-get install nginx-light)" >&2; exit 1; }
done

# HG_BIN=path runs that binary instead of building this tree's release build.
if [ -n "${HG_BIN:-}" ]; then
    HG=$(realpath "$HG_BIN")
else
    cargo build --release --locked -q
    HG=$PWD/target/release/hookgate
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${BASELINE:-}" ] && git worktree remove --force "$WORK/baseline" 2>/dev/null
    [ -n "${PG_BIN:-}" ] && as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1
    rm -rf "$WORK"
}
BASE_HG=${BASELINE_BIN:+$(realpath "$BASELINE_BIN")}   # a prebuilt baseline instead of BASELINE
if [ -n "${BASELINE:-}" ]; then
    git worktree add --detach -q "$WORK/baseline" "$BASELINE"
    (cd "$WORK/baseline" && CARGO_TARGET_DIR="$OLDPWD/target/baseline" cargo build --release --locked -q)
    BASE_HG=$PWD/target/baseline/release/hookgate
fi
GW_BIN=$HG   # the gateway binary run_gateway starts
trap cleanup EXIT

SINK_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
GW_PORT=$((BASE_PORT + 2))
ADMIN_PORT=$((BASE_PORT + 3))
REDIS_PORT=$((BASE_PORT + 4))
DIRECT_PORT=$((BASE_PORT + 5))
NGINX_LOG_PORT=$((BASE_PORT + 6))
PG_PORT=$((BASE_PORT + 7))

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listening on port $1" >&2
    exit 1
}

start() { # start NAME CPU CMD...: runs CMD pinned to CPU, records its pid in $LAST_PID
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

as_postgres() { # PostgreSQL refuses to run as root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# store_cpu_ns STORE: the on-CPU time of the store's server (PostgreSQL: the postmaster
# and every backend; the backends of the gateway's pool live as long as the gateway).
store_cpu_ns() {
    if [ "$1" = postgres ]; then
        for p in "$PG_PID" $(pgrep -P "$PG_PID"); do cpu_ns "$p"; echo; done | awk '{s += $1} END {printf "%d", s}'
    else
        cpu_ns "$REDIS_PID"
    fi
}

cpu_ns() { # total on-CPU nanoseconds of every thread of a process
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d", s}'
}

# REDIS_STATS=1: Redis' own count of each command per event of a Redis row (INFO
# commandstats; a script's calls count under their own names as well as in EVALSHA).
redis_reset() {
    [ -n "${REDIS_STATS:-}" ] && redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
    return 0
}
redis_stats() { # redis_stats ROW: Redis' commandstats since redis_reset, per event of the run
    [ -n "${REDIS_STATS:-}" ] || return 0
    redis-cli -p "$REDIS_PORT" info commandstats | python3 -c '
import json, re, sys
row, n = sys.argv[1], json.load(open(sys.argv[2]))["requests"]
stats = {}
for line in sys.stdin:
    m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line)
    if m and m.group(1) not in ("config", "info"):
        stats[m.group(1)] = [int(m.group(2)) / n, int(m.group(3)) / n]
print(json.dumps({"row": row, "stats": stats}))' "$1" "$WORK/run.json" >>"$WORK/redis_stats.jsonl"
}

peak_rss_kib() {
    awk '/VmHWM/ {print $2}' /proc/"$1"/status
}

# The sink measured directly, on the system-under-test core.
start direct-sink "$SUT_CPU" "$HG" bench sink --listen "127.0.0.1:$DIRECT_PORT"
DIRECT_PID=$LAST_PID
wait_port "$DIRECT_PORT"
# The upstream the proxies forward to, and Redis: environment, on the load core.
start sink "$SINK_CPU" "$HG" bench sink --listen "127.0.0.1:$SINK_PORT"
wait_port "$SINK_PORT"
start redis "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK"
REDIS_PID=$LAST_PID
wait_port "$REDIS_PORT"
PG_BIN=""
if [[ "hookgate postgres queue" =~ $ROWS ]]; then
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -x "$PG_BIN/initdb" ] || { echo "the PostgreSQL row needs postgresql (apt-get install postgresql)" >&2; exit 1; }
    mkdir -p "$WORK/pg"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$WORK" "$WORK/pg"; fi
    as_postgres "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust >/dev/null
    PG_CTL=("$PG_BIN/pg_ctl")
    if [ "$(id -u)" = 0 ]; then PG_CTL=(runuser -u postgres -- "$PG_BIN/pg_ctl"); fi
    taskset -c "$LOAD_CPU" "${PG_CTL[@]}" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
        -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 ${PG_OPTIONS:-}" start >/dev/null
    PG_PID=$(head -1 "$WORK/pg/data/postmaster.pid")
    wait_port "$PG_PORT"
fi

cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-body;
    proxy_temp_path $WORK/nginx-proxy;
    client_max_body_size 2m;
    client_body_buffer_size 128k;
    upstream sink { server 127.0.0.1:$SINK_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$NGINX_LOG_PORT;
        keepalive_requests 1000000;
        access_log $WORK/nginx-access.log;
        location / {
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

gateway_config() { # gateway_config FILE STORE(memory|redis) TLS(plain|tls) [DELIVERY(proxy|queue)]
    {
        echo "[server]"
        echo "listen = \"127.0.0.1:$GW_PORT\""
        if [ "$3" = tls ]; then
            echo "[server.tls]"
            echo "cert = \"$WORK/dev-cert.pem\""
            echo "key = \"$WORK/dev-key.pem\""
        fi
        echo "[admin]"
        echo "listen = \"127.0.0.1:$ADMIN_PORT\""
        echo "[limits]"
        echo "max_body_bytes = 1048576"
        echo "max_connections = 12000"      # the idle row holds 10,000
        echo "max_connections_per_ip = 0"   # every client here is 127.0.0.1
        echo "[rate_limit]"
        echo "requests_per_second = 1000000"
        echo "burst = 1000000"
        if [ "$2" = redis ]; then
            echo "[store]"
            echo "redis_url = \"redis://127.0.0.1:$REDIS_PORT/0\""
        fi
        if [ "$2" = postgres ]; then
            echo "[store]"
            echo "postgres_url = \"postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable\""
        fi
        if [ "${4:-proxy}" = queue ]; then
            echo "[queue]"
            echo "workers = $QUEUE_WORKERS"
        fi
        if [ -n "${TRACING:-}" ]; then   # a sample ratio: spans go to the sink
            echo "[telemetry]"
            echo "otlp_endpoint = \"http://127.0.0.1:$SINK_PORT\""
            echo "sample_ratio = $TRACING"
        fi
        cat <<EOF
[[sources]]
name = "openai"
path = "/webhooks/openai"
scheme = "standard-webhooks"
delivery = "${4:-proxy}"
secrets = ["whsec_aG9va2dhdGUtZGVtby1zZWNyZXQtZG8tbm90LXVzZSE="]
[[sources.routes]]
events = ["*"]
upstream = "http://127.0.0.1:$SINK_PORT/sink"
EOF
    } >"$1"
}
"$HG" dev-cert --out "$WORK" >/dev/null
: >"$WORK/results.jsonl"

# record ROW RUN CPU_BEFORE CPU_AFTER REDIS_BEFORE REDIS_AFTER PID [STARTED DRAINED]:
# one JSON line for the run in $WORK/run.json (a drain rate too when STARTED and DRAINED,
# in ns, are given).
record() {
    python3 - "$1" "$2" "$3" "$4" "$5" "$6" "$(peak_rss_kib "$7")" "$WORK/run.json" "${8:-}" "${9:-}" >>"$WORK/results.jsonl" <<'PY'
import json, os, sys
row, run, before, after, redis_before, redis_after, rss, path, started, drained = sys.argv[1:]
r = json.load(open(path))
ok = sum(c for s, c in r["statuses"].items() if s.startswith("2"))
n = max(r["requests"], 1)
line = {"row": row, "run": int(run), "rps": r["requests_per_second"],
    "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"], "max": r["latency_ms"]["max"],
    "cpu_us": (int(after) - int(before)) / 1000 / n,
    "redis_us": (int(redis_after) - int(redis_before)) / 1000 / n,
    "rss_mib": int(rss) / 1024, "ok": ok, "requests": r["requests"], "errors": r["errors"]}
if os.environ.get("INSTR"):
    line["instr"] = int(os.environ["INSTR"]) / n
if os.environ.get("DROPPED"):
    line["spans_dropped"] = float(os.environ["DROPPED"])
if started and drained:
    line["drain_rps"] = n / ((int(drained) - int(started)) / 1e9)
print(json.dumps(line))
PY
}

# measure ROW URL SUT_PID BODY [load options...]: REPEAT runs, one JSON line per run.
measure() {
    local row=$1 url=$2 pid=$3 body=$4
    shift 4
    [[ $row =~ $ROWS ]] || return 0
    # Warm up connections, pools and caches; not measured.
    taskset -c "$LOAD_CPU" "$HG" bench load --url "$url" -n 2000 -c "$C" --body-size "$body" "$@" >/dev/null
    for run in $(seq 1 "$REPEAT"); do
        local before after redis_before redis_after
        before=$(cpu_ns "$pid")
        redis_before=$(cpu_ns "$REDIS_PID")
        redis_reset
        counted=""
        [ "$pid" = "${CALLGRIND_PID:-}" ] && { callgrind_control -z "$pid" >/dev/null 2>&1; counted=1; }
        taskset -c "$LOAD_CPU" "$HG" bench load --url "$url" -n "$N" -c "$C" --body-size "$body" --json "$@" >"$WORK/run.json"
        # Tracing: the last spans leave at the next export (every second), after the
        # load; they are part of the run's cost.
        [ -n "${TRACING:-}" ] && sleep 1.5
        after=$(cpu_ns "$pid")
        redis_after=$(cpu_ns "$REDIS_PID")
        [[ $row =~ redis ]] && redis_stats "$row"
        DROPPED=${TRACING:+$(spans_dropped)} INSTR=${counted:+$(instructions "$pid")} record "$row" "$run" "$before" "$after" "$redis_before" "$redis_after" "$pid"
    done
}

# spans_dropped: the gateway's hookgate_telemetry_spans_dropped_total (tracing rows), so
# a row whose spans were dropped instead of exported says so.
spans_dropped() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^hookgate_telemetry_spans_dropped_total / {print $2}'
}

# instructions PID: what callgrind counted in PID (run by run_gateway) since it was zeroed.
instructions() {
    callgrind_control -d "$1" >/dev/null 2>&1
    awk '/^(summary|totals):/ {print $2; exit}' "$(ls -t "$WORK"/callgrind.out."$1".* | head -1)"
}

run_gateway() { # run_gateway ROW STORE TLS BODY [load options...]
    local row=$1 store=$2 tls=$3 body=$4
    shift 4
    [[ $row =~ $ROWS ]] || return 0
    gateway_config "$WORK/gw.toml" "$store" "$tls"
    local under=()
    [ -n "$INSTRUCTIONS" ] && under=(valgrind -q --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p")
    RUST_LOG=${GW_LOG:-warn} start gateway "$SUT_CPU" "${under[@]}" "$GW_BIN" serve --config "$WORK/gw.toml"
    local pid=$LAST_PID
    [ -n "$INSTRUCTIONS" ] && CALLGRIND_PID=$pid
    wait_port "$GW_PORT"
    local scheme=http
    [ "$tls" = tls ] && scheme=https
    measure "$row" "$scheme://127.0.0.1:$GW_PORT/webhooks/openai" "$pid" "$body" "$@"
    stop "$pid"
}

sink_requests() { # without python: a poll that takes 100 ms would end a drain late
    curl -s "http://127.0.0.1:$SINK_PORT/stats" | sed -E 's/.*"requests": *([0-9]+).*/\1/'
}

wait_sink() { # wait_sink COUNT: until the sink has received COUNT requests (10 minutes at most)
    local deadline=$(( $(date +%s) + 600 ))
    until [ "$(sink_requests)" -ge "$1" ]; do
        (( $(date +%s) < deadline )) || { echo "the sink received $(sink_requests) of $1" >&2; exit 1; }
        sleep 0.02
    done
}

# Queue mode: REPEAT runs as in measure, each from an empty queue; a run's CPU is the
# gateway's until the last delivery reached the sink (ingress and delivery together).
run_queue_gateway() { # run_queue_gateway ROW STORE
    local row=$1 store=$2
    [[ $row =~ $ROWS ]] || return 0
    gateway_config "$WORK/gw.toml" "$store" plain queue
    start gateway "$SUT_CPU" "$HG" serve --config "$WORK/gw.toml"
    local pid=$LAST_PID
    wait_port "$GW_PORT"
    local url="http://127.0.0.1:$GW_PORT/webhooks/openai"
    curl -s -X POST "http://127.0.0.1:$SINK_PORT/reset" >/dev/null
    taskset -c "$LOAD_CPU" "$HG" bench load --url "$url" -n 2000 -c "$C" --body-size "$BODY" >/dev/null
    wait_sink 2000
    for run in $(seq 1 "$REPEAT"); do
        local before after redis_before redis_after started drained
        curl -s -X POST "http://127.0.0.1:$SINK_PORT/reset" >/dev/null
        before=$(cpu_ns "$pid")
        redis_before=$(store_cpu_ns "$store")
        redis_reset
        taskset -c "$LOAD_CPU" "$HG" bench load --url "$url" -n "$N" -c "$C" --body-size "$BODY" --json >"$WORK/run.json"
        wait_sink "$N"
        drained=$(date +%s%N)
        # From the load's clock start (after signing and connecting), as its req/s is.
        started=$(sed -E 's/.*"started_unix_ns": *([0-9]+).*/\1/' "$WORK/run.json")
        after=$(cpu_ns "$pid")
        redis_after=$(store_cpu_ns "$store")
        [ "$store" = redis ] && redis_stats "$row"
        record "$row" "$run" "$before" "$after" "$redis_before" "$redis_after" "$pid" "$started" "$drained"
    done
    stop "$pid"
}

echo "hookgate bench: N=$N C=$C body=${BODY}B repeat=$REPEAT layout=$LAYOUT: load on CPU $LOAD_CPU, system under test on CPU $SUT_CPU, upstream sink on CPU $SINK_CPU" >&2

measure "direct (sink)" "http://127.0.0.1:$DIRECT_PORT/sink" "$DIRECT_PID" "$BODY"

start nginx "$SUT_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK"
NGINX_PID=$LAST_PID
wait_port "$NGINX_PORT"
# nginx's worker is the process that does the work; its master only supervises.
NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -1)
measure "nginx proxy" "http://127.0.0.1:$NGINX_PORT/sink" "$NGINX_WORKER" "$BODY"
measure "nginx proxy, access log" "http://127.0.0.1:$NGINX_LOG_PORT/sink" "$NGINX_WORKER" "$BODY"
stop "$NGINX_PID"

# Memory and Redis alternately, one run each time (each with a fresh gateway), so the
# machine's drift between rows measured minutes apart stays out of their ratio.
for _ in $(seq 1 "$REPEAT"); do
    for store in memory redis; do
        REPEAT=1 run_gateway "hookgate $store" "$store" plain "$BODY"
        if [ -n "$BASE_HG" ]; then
            GW_BIN=$BASE_HG REPEAT=1 run_gateway "hookgate $store (baseline)" "$store" plain "$BODY"
        fi
    done
    GW_LOG=info REPEAT=1 run_gateway "hookgate memory, access log" memory plain "$BODY"
    for ratio in 1.0 0.01; do
        TRACING=$ratio REPEAT=1 run_gateway "hookgate memory, tracing $ratio" memory plain "$BODY"
    done
done
run_queue_gateway "hookgate memory queue" memory
run_queue_gateway "hookgate redis queue" redis
run_queue_gateway "hookgate postgres queue" postgres
# A fresh gateway per run, as for the rows above: one gateway for every run remembered
# each run's deliveries, and its peak RSS grew run by run.
for _ in $(seq 1 "$REPEAT"); do
    REPEAT=1 run_gateway "hookgate memory TLS" memory tls "$BODY" --insecure
    REPEAT=1 run_gateway "hookgate memory TLS h2" memory tls "$BODY" --insecure --http2
done
measure "direct (sink) 64KiB" "http://127.0.0.1:$DIRECT_PORT/sink" "$DIRECT_PID" "$BIG_BODY"
for _ in $(seq 1 "$REPEAT"); do
    REPEAT=1 run_gateway "hookgate memory 64KiB" memory plain "$BIG_BODY"
done

# Floods of requests that fail verification (bench/floods.py), on the in-memory gateway
# trusting the load core as a proxy (so X-Forwarded-For names a new client per request):
# "penalty box idle" is the load alone; "penalty box flood" first fills the penalty box
# with PENALTY_CLIENTS distinct failing clients, then runs the load while FLOOD_RATE more
# new failing clients per second keep coming. The two alternate, a fresh gateway each.
# "v1a flood" is the gateway's CPU per request for requests carrying 170 v1a entries.
PENALTY_CLIENTS=${PENALTY_CLIENTS:-100000}
FLOOD_RATE=${FLOOD_RATE:-1000}
V1A_FLOOD=${V1A_FLOOD:-20000}
flood_gateway() { # flood_gateway [PENALTY_BOX_LINE]: a fresh gateway for the flood rows, its pid in $LAST_PID
    gateway_config "$WORK/gw.toml" memory plain
    sed -i 's|^\[rate_limit\]$|[rate_limit]\ntrusted_proxies = ["127.0.0.1/32"]|' "$WORK/gw.toml"
    sed -i 's|^secrets = \["\(.*\)"\]$|secrets = ["\1", "whpk_SeSUDAZ3d2HWtX6BOCdmMmpc0l7Q/Nu+2u/bsRF9Vc4="]|' "$WORK/gw.toml"
    printf '[penalty_box]\nwindow = "10m"\n%s\n' "${1:-}" >>"$WORK/gw.toml"
    start gateway "$SUT_CPU" "$HG" serve --config "$WORK/gw.toml"
    wait_port "$GW_PORT"
}
if [[ "hookgate memory, penalty box idle" =~ $ROWS || "hookgate memory, penalty box flood" =~ $ROWS ]]; then
    for _ in $(seq 1 "$REPEAT"); do
        flood_gateway
        REPEAT=1 measure "hookgate memory, penalty box idle" "http://127.0.0.1:$GW_PORT/webhooks/openai" "$LAST_PID" "$BODY"
        stop "$LAST_PID"
        flood_gateway
        pid=$LAST_PID
        taskset -c "$LOAD_CPU" python3 bench/floods.py 127.0.0.1 "$GW_PORT" clients --count "$PENALTY_CLIENTS" >&2
        echo "penalty box clients tracked: $(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^hookgate_penalty_box_clients / {print $2}')" >&2
        taskset -c "$LOAD_CPU" python3 bench/floods.py 127.0.0.1 "$GW_PORT" clients --first "$PENALTY_CLIENTS" \
            --count $((FLOOD_RATE * 600)) --rate "$FLOOD_RATE" --connections 1 >/dev/null &
        flood=$!
        REPEAT=1 measure "hookgate memory, penalty box flood" "http://127.0.0.1:$GW_PORT/webhooks/openai" "$pid" "$BODY"
        kill "$flood" 2>/dev/null || true
        wait "$flood" 2>/dev/null || true
        stop "$pid"
    done
fi
V1A_LINE=""
if [[ "v1a flood" =~ $ROWS ]]; then
    flood_gateway "max_failures = 0" # one client: boxed, it would cost nothing at all
    pid=$LAST_PID
    taskset -c "$LOAD_CPU" python3 bench/floods.py 127.0.0.1 "$GW_PORT" v1a --count 2000 >/dev/null
    before=$(cpu_ns "$pid")
    sent=$(taskset -c "$LOAD_CPU" python3 bench/floods.py 127.0.0.1 "$GW_PORT" v1a --count "$V1A_FLOOD")
    after=$(cpu_ns "$pid")
    V1A_LINE="v1a flood ($sent; 170 entries each, all answered 400): gateway CPU $(( (after - before) / V1A_FLOOD / 1000 )) µs per request"
    stop "$pid"
fi

# Memory with 10,000 idle connections, and whether a delivery is still served meanwhile.
IDLE_LINE=""
if [[ "idle connections" =~ $ROWS ]]; then
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    (( $(ulimit -n) > 10100 )) || { echo "need an open-file limit above 10100 for the idle row" >&2; exit 1; }
    gateway_config "$WORK/gw.toml" memory plain
    start gateway "$SUT_CPU" "$HG" serve --config "$WORK/gw.toml"
    IDLE_GW_PID=$LAST_PID
    wait_port "$GW_PORT"
    # (coproc IDLE also sets $IDLE_PID, hence the gateway's pid is IDLE_GW_PID)
    coproc IDLE { taskset -c "$LOAD_CPU" python3 bench/idle_connections.py 127.0.0.1 "$GW_PORT" -n 10000; }
    read -r idle_ready <&"${IDLE[0]}"
    started=$(date +%s%N)
    status=$("$HG" sign --secret whsec_aG9va2dhdGUtZGVtby1zZWNyZXQtZG8tbm90LXVzZSE= --type response.completed \
        --send "http://127.0.0.1:$GW_PORT/webhooks/openai" | grep '^HTTP' || true)
    took_ms=$(( ($(date +%s%N) - started) / 1000000 ))
    rss=$(awk '/VmRSS/ {print $2}' /proc/"$IDLE_GW_PID"/status)
    IDLE_LINE="$idle_ready idle connections: gateway RSS $((rss / 1024)) MiB; a delivery sent meanwhile: $status in ${took_ms} ms (including the signing tool's start)"
    exec {IDLE[1]}>&-
    stop "$IDLE_GW_PID"
fi

python3 - "$WORK/results.jsonl" "$N" "$C" "$BODY" "$REPEAT" "$LOAD_CPU" "$SUT_CPU" "$SINK_CPU" <<'PY'
import json, statistics, sys, collections, platform, datetime, os
path, n, c, body, repeat, load_cpu, sut_cpu, sink_cpu = sys.argv[1:]
rows = collections.OrderedDict()
for line in open(path):
    r = json.loads(line)
    rows.setdefault(r["row"], []).append(r)
med = {name: {k: statistics.median(x[k] for x in runs) for k in ("rps", "p50", "p99", "max", "cpu_us", "redis_us", "rss_mib")}
       | {"ok": sum(x["ok"] for x in runs), "requests": sum(x["requests"] for x in runs), "errors": sum(x["errors"] for x in runs)}
       for name, runs in rows.items()}
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"{datetime.date.today()} · {model} · {os.cpu_count()} CPUs · load generator pinned to CPU {load_cpu}, "
      + (f"system under test alone on CPU {sut_cpu} (upstream sink and Redis share CPU {load_cpu})" if sink_cpu == load_cpu
         else f"system under test and the upstream sink share CPU {sut_cpu} (Redis on CPU {load_cpu})")
      + f" · {n} requests × {repeat} runs per row, "
      f"{c} connections, HTTP/1.1 unless noted, {body}-byte bodies unless noted; medians")
print()
print("| row | req/s | p50 ms | p99 ms | max ms | peak RSS MiB | CPU µs/req | store CPU µs/req | vs nginx | vs direct | 2xx/answered (errors) |")
# Queue rows: req/s and latency are ingress (202 answers); CPU covers ingress and delivery.
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
if not med:
    sys.exit(0)
nginx = med.get("nginx proxy", {}).get("rps")
for name, m in med.items():
    direct = med.get("direct (sink) 64KiB" if "64KiB" in name else "direct (sink)", {}).get("rps")
    vs_nginx = f"{m['rps'] / nginx:.2f}×" if nginx and "64KiB" not in name else "–"
    vs_direct = f"{m['rps'] / direct:.2f}×" if direct else "–"
    print(f"| {name} | {m['rps']:.0f} | {m['p50']:.3f} | {m['p99']:.3f} | {m['max']:.2f} | {m['rss_mib']:.1f} | "
          f"{m['cpu_us']:.1f} | {m['redis_us']:.1f} | {vs_nginx} | {vs_direct} | {m['ok']}/{m['requests']} ({m['errors']}) |")
if "hookgate memory" in med and "hookgate redis" in med:
    mem, red = med["hookgate memory"], med["hookgate redis"]
    print()
    print(f"Redis store against the in-memory store: {red['rps'] / mem['rps']:.2f}× the throughput, "
          f"{mem['cpu_us'] / red['cpu_us']:.2f}× by the gateway's CPU per request (medians)")
    # Each Redis run follows a memory run: the ratio of each such pair keeps the
    # machine's drift (minutes long) out of it; their spread shows the noise.
    order = [json.loads(line) for line in open(path)]
    mem_runs = [r for r in order if r["row"] == "hookgate memory"]
    red_runs = [r for r in order if r["row"] == "hookgate redis"]
    pairs = list(zip(mem_runs, red_runs))
    if len(pairs) >= 3:
        rps = sorted(b["rps"] / a["rps"] for a, b in pairs)
        cpu = sorted(a["cpu_us"] / b["cpu_us"] for a, b in pairs)
        q = lambda xs, f: xs[min(len(xs) - 1, int(f * len(xs)))]
        print(f"{len(pairs)} alternating pairs, Redis/memory: throughput median {statistics.median(rps):.2f}× "
              f"(quartiles {q(rps, 0.25):.2f}-{q(rps, 0.75):.2f}, range {rps[0]:.2f}-{rps[-1]:.2f}); "
              f"gateway CPU median {statistics.median(cpu):.2f}× (range {cpu[0]:.2f}-{cpu[-1]:.2f})")
for store in ("memory", "redis"):
    this, base = rows.get(f"hookgate {store}"), rows.get(f"hookgate {store} (baseline)")
    if this and base:
        rps = sorted(a["rps"] / b["rps"] for a, b in zip(this, base))
        cpu = sorted(a["cpu_us"] / b["cpu_us"] for a, b in zip(this, base))
        print()
        print(f"{store}: this tree against the baseline, {len(rps)} alternating pairs: throughput median "
              f"{statistics.median(rps):.2f}x (range {rps[0]:.2f}-{rps[-1]:.2f}x), CPU per request median "
              f"{statistics.median(cpu):.2f}x (range {cpu[0]:.2f}-{cpu[-1]:.2f}x)")
logged = [(name, med.get(name), med.get(f"{name}, access log")) for name in ("hookgate memory", "nginx proxy")]
logged = [(name, off, on) for name, off, on in logged if off and on]
if logged:
    print()
    print("Access log on against off (CPU per request, medians): " + "; ".join(
        f"{name} +{on['cpu_us'] - off['cpu_us']:.1f} µs/req ({on['rps'] / off['rps']:.2f}× the throughput)"
        for name, off, on in logged))
for ratio in ("1.0", "0.01"):
    off, on = rows.get("hookgate memory"), rows.get(f"hookgate memory, tracing {ratio}")
    if off and on:
        rps = sorted(b["rps"] / a["rps"] for a, b in zip(off, on))
        cpu = sorted(b["cpu_us"] / a["cpu_us"] for a, b in zip(off, on))
        print()
        dropped = sum(x.get("spans_dropped", 0) for x in on)
        print(f"tracing at sample_ratio {ratio} against tracing off, {len(rps)} alternating pairs: throughput "
              f"median {statistics.median(rps):.2f}x (range {rps[0]:.2f}-{rps[-1]:.2f}x), CPU per request "
              f"median {statistics.median(cpu):.2f}x (range {cpu[0]:.2f}-{cpu[-1]:.2f}x); "
              f"spans dropped in all: {dropped:.0f}")
counted = {name: statistics.median(x["instr"] for x in runs) for name, runs in rows.items() if "instr" in runs[0]}
if counted:
    print()
    print("| row | gateway instructions per request (callgrind; median of runs) | vs hookgate memory |")
    print("|---|---:|---:|")
    for name, instr in counted.items():
        base = counted.get("hookgate memory")
        print(f"| {name} | {instr:,.0f} | {f'{instr / base:.3f}×' if base else '–'} |")
idle, flood = rows.get("hookgate memory, penalty box idle"), rows.get("hookgate memory, penalty box flood")
if idle and flood:
    ratios = sorted(f["p99"] / i["p99"] for i, f in zip(idle, flood))
    print()
    print(f"penalty box full and flooded against idle, {len(ratios)} alternating pairs: legitimate p99 "
          f"median {statistics.median(ratios):.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f}x), "
          f"p50 {statistics.median(f['p50'] for f in flood):.3f} vs {statistics.median(i['p50'] for i in idle):.3f} ms")
drains = {name: statistics.median(x["drain_rps"] for x in runs) for name, runs in rows.items() if "drain_rps" in runs[0]}
if drains:
    print()
    print("| queue row | end-to-end drain to the sink, deliveries/s (the load's clock start → last delivery received) |")
    print("|---|---:|")
    for name, rate in drains.items():
        print(f"| {name} | {rate:.0f} |")
PY
if [ -s "$WORK/redis_stats.jsonl" ]; then
    echo
    python3 - "$WORK/redis_stats.jsonl" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["row"], []).append(r["stats"])
print("| row | Redis command | calls per event | Redis µs per event | µs per call |")
print("|---|---|---:|---:|---:|")
for row, runs in rows.items():
    names = sorted({c for run in runs for c in run}, key=lambda c: -statistics.median(run.get(c, [0, 0])[1] for run in runs))
    total_calls = 0
    for c in names:
        calls = statistics.median(run.get(c, [0, 0])[0] for run in runs)
        us = statistics.median(run.get(c, [0, 0])[1] for run in runs)
        total_calls += calls
        print(f"| {row} | {c} | {calls:.2f} | {us:.1f} | {us / calls if calls else 0:.1f} |")
    # A script's own calls count under their names and again in its EVALSHA's time.
    print(f"| {row} | all commands, scripts' own included | {total_calls:.2f} | | |")
PY
fi
[ -n "$IDLE_LINE" ] && { echo; echo "$IDLE_LINE"; }
[ -n "$V1A_LINE" ] && { echo; echo "$V1A_LINE"; }
exit 0
