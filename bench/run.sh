#!/usr/bin/env bash
# Whole-system load runs: Qalqan's shield side by side with nginx, on this
# machine, over loopback only. See bench/README.md for what each scenario
# measures and how to read the results.
#
#   bench/run.sh            full run: 3 rounds of 10 s per peer and scenario,
#                           1,000,000-request memory run (about 6 minutes)
#   bench/run.sh --quick    smoke run: 1 round of 3 s, 200,000-request memory run
#
# Environment:
#   THREADS=N         worker threads for qalqan and worker_processes for nginx
#                     (default 1: see "Why one thread" below)
#   QALQAN_BIN=PATH   use this binary and do not build; if it does not exist
#                     the qalqan half of every scenario is skipped, said so,
#                     and never filled in with numbers
#   SKIP_BUILD=1      do not run cargo; use target/release/qalqan as it is
#   ROUNDS=N          rounds per throughput scenario, nginx and qalqan taking
#                     turns; the tables show the median (default 3, quick 1)
#   MEM_REQUESTS=N    requests in the memory scenario (default 1000000)
#   QALQAN_LOG=FILTER the shield's diagnostics filter (default warn)
#   QUIET_WAIT=S      before each measured run, wait up to S seconds for other
#                     programs to use less than a quarter of the CPUs (default 0)
#   BENCH_MACHINE=S   machine name used in the results file name
#   RESULTS_FILE=PATH write the Markdown results here instead
#   BENCH_WORK=DIR    working files here instead of bench/work
#
# Why one thread by default: the machine this project runs on has 2 cores,
# and every run puts three programs on them: wrk (the client), the proxy under
# test and the nginx origin. With one proxy thread, one wrk thread and one
# origin worker each has roughly a core's worth of room; with more, the proxy
# steals CPU from its own load generator and the numbers measure the
# scheduler. Both peers always get the same T, and never run at the same time.
#
# Every load run here targets 127.0.0.1 only and is bounded by wrk's -d.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
WORK=${BENCH_WORK:-$BENCH/work}
LOGS=$WORK/logs

QUICK=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

# The knobs as the caller gave them, for the results file.
declare -A ENV_GIVEN=()
for v in THREADS ROUNDS MEM_REQUESTS QUIET_WAIT QALQAN_BIN SKIP_BUILD QALQAN_LOG BENCH_WORK; do
  if [[ -n ${!v:-} ]]; then ENV_GIVEN[$v]=${!v}; fi
done

THREADS=${THREADS:-1}
WRK_THREADS=1
CONNS=64
if ((QUICK)); then
  DURATION=3
  WARMUP=1
  ROUNDS=${ROUNDS:-1}
  MEM_REQUESTS=${MEM_REQUESTS:-200000}
else
  DURATION=10
  WARMUP=2
  ROUNDS=${ROUNDS:-3}
  MEM_REQUESTS=${MEM_REQUESTS:-1000000}
fi
MEM_TIME_CAP=120   # seconds, for the whole memory run of one peer
MEM_GOAL_MIB=64
# "Flat after warm-up": memory at the last sample is at most this many percent
# above the first sample taken after warm-up (the 25 % mark).
FLAT_PERCENT=10

if ! [[ ${QUIET_WAIT:-0} =~ ^[0-9]+$ ]]; then
  echo "QUIET_WAIT must be a number of seconds, got '$QUIET_WAIT'" >&2
  exit 2
fi
for v in THREADS ROUNDS MEM_REQUESTS; do
  if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then
    echo "$v must be a positive integer, got '${!v}'" >&2
    exit 2
  fi
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------
# Process bookkeeping. Every background process this script starts is in
# PIDS; the EXIT trap stops each one by its id, on success, on failure and on
# Ctrl-C alike. Background jobs of a non-interactive shell ignore SIGINT, so
# without this trap a Ctrl-C would leave nginx and qalqan running.
PIDS=()

forget_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# Stops one process we started, and its direct children (nginx workers, cache
# manager): TERM, up to 5 s for a clean exit, then KILL whatever is left.
stop_proc() {
  local pid=$1 kids i k
  kids=$(pgrep -P "$pid" 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop on TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  for k in $kids; do
    if kill -0 "$k" 2>/dev/null; then kill -KILL "$k" 2>/dev/null || true; fi
  done
  forget_pid "$pid"
}

cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop_proc "$p"; done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------------------
# Tools.

NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

ensure_tools() {
  local missing=()
  [[ -x $NGINX ]] || missing+=(nginx)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v curl >/dev/null || missing+=(curl)
  command -v python3 >/dev/null || missing+=(python3)
  ((${#missing[@]} == 0)) && return 0
  log "installing with apt-get: ${missing[*]}"
  if ((EUID != 0)); then
    die "not root: run 'sudo apt-get install -y ${missing[*]}' and try again"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  [[ -x $NGINX ]] || die "nginx still missing after apt-get"
  command -v wrk >/dev/null || die "wrk still missing after apt-get"
}

# Picks a free loopback TCP port. The kernel chooses it; the tiny window until
# the server binds it is fine on a machine where nothing else is starting.
free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# Commands exactly as run, for the results file (repo-relative paths).
COMMANDS=()
record_cmd() {
  local line
  line=$(printf '%q ' "$@")
  line=${line% }
  COMMANDS+=("${line//$ROOT\//}")
}

# ---------------------------------------------------------------------------
# Qalqan binary.

QALQAN_STATE=""   # "ok", or the reason the qalqan half is skipped
QALQAN=""
QALQAN_LOG=${QALQAN_LOG:-warn}

prepare_qalqan() {
  if [[ -n ${QALQAN_BIN:-} ]]; then
    QALQAN=$QALQAN_BIN
    if [[ -x $QALQAN ]]; then QALQAN_STATE=ok; else QALQAN_STATE="qalqan binary missing: skipped ($QALQAN)"; fi
    return 0
  fi
  QALQAN=${CARGO_TARGET_DIR:-$ROOT/target}/release/qalqan
  if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building qalqan (cargo build --release -p qalqan), log in ${LOGS//$ROOT\//}/build.log"
    if ! (cd "$ROOT" && cargo build --release -p qalqan) >"$LOGS/build.log" 2>&1; then
      tail -n 20 "$LOGS/build.log" >&2
      QALQAN_STATE="qalqan build failed: skipped (see ${LOGS//$ROOT\//}/build.log)"
      BUILD_FAILED=1
      return 0
    fi
  fi
  if [[ -x $QALQAN ]]; then QALQAN_STATE=ok; else QALQAN_STATE="qalqan binary missing: skipped ($QALQAN)"; fi
}
BUILD_FAILED=0

# ---------------------------------------------------------------------------
# nginx instances. Each one lives in its own prefix under bench/work/NAME with
# its own pid file, error log and temp paths, runs in the foreground
# (daemon off) as our background job, and never touches /etc/nginx or
# /var/log/nginx. When run as root the workers stay root: the default "nobody"
# may not be allowed to traverse the checkout to reach the temp and cache
# directories.

NGINX_USER_LINE=""
if ((EUID == 0)); then NGINX_USER_LINE="user root root;"; fi

# nginx_main DIR WORKERS: the part every nginx config here shares. The caller
# closes the http block.
nginx_main() {
  local dir=$1 workers=$2
  cat <<EOF
daemon off;
master_process on;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
$NGINX_USER_LINE

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    # wrk and the proxies keep connections open for the whole run; nginx's
    # default of 1000 requests per connection would add reconnects that the
    # qalqan side does not pay.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type text/html;
EOF
}

NGINX_PID=""
# start_nginx NAME PORT CONF_FN: writes bench/work/NAME/nginx.conf with
# `CONF_FN DIR PORT`, checks it, starts nginx and waits until PORT answers.
# (Not fed through a pipe: the right side of a pipe is a subshell, and the
# pid it starts would be lost to the cleanup trap.)
start_nginx() {
  local name=$1 port=$2 dir=$WORK/$1 old
  # Never delete a prefix under a running nginx that is not ours (someone
  # borrowing bench/work for a manual test): refuse and say who holds it.
  old=$(cat "$dir/nginx.pid" 2>/dev/null || true)
  if [[ $old =~ ^[0-9]+$ ]] && grep -qs nginx "/proc/$old/cmdline"; then
    die "$dir is in use by a running nginx (pid $old) that this run did not start; stop it, or set BENCH_WORK to another directory"
  fi
  rm -rf "$dir"
  mkdir -p "$dir/tmp"
  "$3" "$dir" "$port" >"$dir/nginx.conf"
  if ! "$NGINX" -t -q -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log"; then
    cat "$dir/error.log" >&2 || true
    die "nginx config $dir/nginx.conf does not load"
  fi
  record_cmd "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log"
  "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_http "$port" "$NGINX_PID" || {
    cat "$dir/error.log" >&2 || true
    die "nginx '$name' did not start on port $port"
  }
}

# wait_http PORT PID: up to 15 s for any HTTP answer on PORT while PID lives.
wait_http() {
  local port=$1 pid=$2 i
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------
# Origin: one nginx worker that answers from memory, the same for both peers.
# `return` with a literal body keeps the origin as cheap as it can be, so it
# takes as little CPU from the proxy under test as possible.

ORIGIN_PORT=""
BODY=$(python3 -c 'import sys
line = "Qalqan bench body: the quick brown fox jumps over the lazy dog. "
sys.stdout.write((line * 40)[:2048])')

origin_conf() {
  local dir=$1 port=$2
  nginx_main "$dir" 1
  cat <<EOF
    server {
        listen 127.0.0.1:$port;
        location = /nostore {
            add_header Cache-Control "no-store" always;
            return 200 "$BODY";
        }
        location = /cached {
            add_header Cache-Control "max-age=60" always;
            return 200 "$BODY";
        }
        location / {
            return 404;
        }
    }
}
EOF
}

start_origin() {
  ORIGIN_PORT=$(free_port)
  start_nginx origin "$ORIGIN_PORT" origin_conf
  add_config "origin (nginx, shared by both peers)" "$WORK/origin/nginx.conf"
  ORIGIN_PID=$NGINX_PID
  local size
  size=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$ORIGIN_PORT/nostore")
  [[ $size == "200 2048" ]] || die "origin /nostore answered '$size', wanted '200 2048'"
  curl -s -D - -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/cached" | tr -d '\r' |
    grep -qi '^cache-control: max-age=60' || die "origin /cached lacks Cache-Control: max-age=60"
  log "origin nginx on 127.0.0.1:$ORIGIN_PORT (pid $ORIGIN_PID)"
}

# ---------------------------------------------------------------------------
# Peer configs (nginx side). Each writes a complete nginx.conf to stdout.

nginx_upstream_block() {
  cat <<EOF
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
EOF
}

# Scenario A: plain reverse proxy with a keep-alive upstream pool.
nginx_conf_proxy() {
  local dir=$1 port=$2
  nginx_main "$dir" "$THREADS"
  nginx_upstream_block
  cat <<EOF
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# Scenario B: the same plus proxy_cache. Entries are files under the prefix;
# after warm-up they sit in the page cache, which is how nginx serves hits.
nginx_conf_cache() {
  local dir=$1 port=$2
  nginx_main "$dir" "$THREADS"
  nginx_upstream_block
  cat <<EOF
    proxy_cache_path $dir/cache levels=1:2 keys_zone=bench_cache:10m max_size=64m inactive=10m use_temp_path=off;
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench_cache;
            proxy_cache_valid 200 60s;
            add_header X-Cache-Status \$upstream_cache_status always;
        }
    }
}
EOF
}

# Scenario C: limit_req at 1 r/s per client address, no burst, 429 for the
# rest. Rejections are logged at "info", below the error_log level, because
# one log line per flood request would measure the disk, not the limiter (the
# shield, by design, never logs per flood request either).
nginx_conf_drop() {
  local dir=$1 port=$2
  nginx_main "$dir" "$THREADS"
  nginx_upstream_block
  cat <<EOF
    limit_req_zone \$binary_remote_addr zone=per_client:10m rate=1r/s;
    server {
        listen 127.0.0.1:$port;
        location / {
            limit_req zone=per_client;
            limit_req_status 429;
            limit_req_log_level info;
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# Scenario D: the client address comes from X-Forwarded-For, trusted only from
# 127.0.0.1 (the real_ip module), and the limit_req zone is keyed on it. After
# real_ip, $binary_remote_addr holds the X-Forwarded-For address, validated and
# in 4/16 bytes, which is what the shield does with --trusted-proxy too. The
# path is /cached with proxy_cache on both sides, so neither peer spends the
# run waiting on the origin.
nginx_conf_memory() {
  local dir=$1 port=$2
  nginx_main "$dir" "$THREADS"
  nginx_upstream_block
  cat <<EOF
    proxy_cache_path $dir/cache levels=1:2 keys_zone=bench_cache:10m max_size=64m inactive=10m use_temp_path=off;
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Forwarded-For;
    limit_req_zone \$binary_remote_addr zone=per_client:10m rate=1r/s;
    server {
        listen 127.0.0.1:$port;
        location / {
            limit_req zone=per_client;
            limit_req_status 429;
            limit_req_log_level info;
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench_cache;
            proxy_cache_valid 200 60s;
        }
    }
}
EOF
}

# The shield's config file for scenarios A, B and C; the whole file is this
# one heredoc so the keys are easy to adjust while the format settles.
#
# Rates are requests per second on the default route class (the only one
# here, so every path is in it). A and B use rates no client reaches: the
# shield still counts every request in its rate sketches, as it does in
# production, but refuses none, which is the fair match for an nginx that
# only proxies. (The built-in default of 20/s per address would turn a
# single-address wrk run into a drop-path run.) C uses 1/s per address with
# the repeat-offender block off, so the run measures answering 429, not
# closing blocked connections.
qalqan_conf() { # LISTEN_PORT ADMIN_PORT RATE_PER_ADDRESS RATE_PER_PREFIX BLOCK_ENABLED
  cat <<EOF
[origin]
url = "http://127.0.0.1:$ORIGIN_PORT"

[[listen]]
address = "127.0.0.1:$1"

[admin]
address = "127.0.0.1:$2"

[server]
threads = $THREADS

[[route]]
name = "default"
rate_per_address = $3
rate_per_prefix = $4

[block]
enabled = $5

# nginx runs with access_log off; so does the shield, for a like-for-like run.
[access_log]
path = ""
EOF
}
qalqan_conf_clean() { qalqan_conf "$1" "$2" 1000000000 1000000000 true; }
qalqan_conf_drop() { qalqan_conf "$1" "$2" 1 1000000 false; }

# ---------------------------------------------------------------------------
# Peers: start one, point PORT at it, stop it again.

PORT=""        # where the peer under test listens
ADMIN_PORT=""  # qalqan's admin listener
PEER_PID=""
CONFIGS=()     # "title|path" of every config used, for the results file
add_config() { # TITLE PATH
  local c
  for c in "${CONFIGS[@]}"; do
    if [[ $c == "$1|$2" ]]; then return 0; fi
  done
  CONFIGS+=("$1|$2")
}

start_nginx_peer() { # SCENARIO CONF_FUNCTION
  local name="nginx-$1" dir=$WORK/nginx-$1
  PORT=$(free_port)
  ADMIN_PORT=""
  start_nginx "$name" "$PORT" "$2"
  PEER_PID=$NGINX_PID
  add_config "nginx, scenario $1" "$dir/nginx.conf"
  log "nginx peer for $1 on 127.0.0.1:$PORT (pid $PEER_PID, worker_processes $THREADS)"
}

# start_qalqan_peer SCENARIO --config-from CONF_FN   shield --config FILE --threads T
# start_qalqan_peer SCENARIO [FLAG...]               shield --listen --upstream --admin --threads T FLAG...
# (qalqan refuses --config together with --listen, --upstream, --admin and
# --trusted-proxy; --threads is allowed with both.)
start_qalqan_peer() {
  local scn=$1 dir=$WORK/qalqan-$1
  shift
  rm -rf "$dir"
  mkdir -p "$dir"
  PORT=$(free_port)
  ADMIN_PORT=$(free_port)
  local args
  if [[ ${1:-} == --config-from ]]; then
    "$2" "$PORT" "$ADMIN_PORT" >"$dir/qalqan.toml"
    add_config "qalqan, scenario $scn" "$dir/qalqan.toml"
    args=(shield --config "$dir/qalqan.toml" --threads "$THREADS")
  else
    args=(shield --listen "127.0.0.1:$PORT" --upstream "http://127.0.0.1:$ORIGIN_PORT"
      --admin "127.0.0.1:$ADMIN_PORT" --threads "$THREADS" "$@")
  fi
  # Diagnostics at warn unless the caller chose otherwise, as nginx runs
  # with error_log warn. The shield's access log stays at its default (on,
  # sampled above 100 lines/s), see bench/README.md.
  record_cmd env QALQAN_LOG="$QALQAN_LOG" "$QALQAN" "${args[@]}"
  env QALQAN_LOG="$QALQAN_LOG" "$QALQAN" "${args[@]}" >"$dir/qalqan.log" 2>&1 &
  PEER_PID=$!
  PIDS+=("$PEER_PID")
  local i
  for ((i = 0; i < 150; i++)); do
    kill -0 "$PEER_PID" 2>/dev/null || break
    if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$ADMIN_PORT/healthz") == 200 ]] &&
      curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/"; then
      log "qalqan peer for $scn on 127.0.0.1:$PORT, admin :$ADMIN_PORT (pid $PEER_PID, --threads $THREADS)"
      return 0
    fi
    sleep 0.1
  done
  log "qalqan did not become healthy; last lines of $dir/qalqan.log:"
  tail -n 20 "$dir/qalqan.log" >&2 || true
  stop_proc "$PEER_PID"
  return 1
}

stop_peer() {
  if [[ -n $PEER_PID ]]; then stop_proc "$PEER_PID"; fi
  PEER_PID=""
}

# ---------------------------------------------------------------------------
# Checks with curl before measuring. Each prints why it failed.

http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
http_header() { # NAME curl-args...: value of response header NAME, or empty
  local name=$1
  shift
  curl -s -D - -o /dev/null --max-time 5 "$@" | tr -d '\r' |
    awk -v n="$(tr '[:upper:]' '[:lower:]' <<<"$name")" -F': ' 'tolower($1) == n { print $2; exit }'
}

check_200() { # URL [curl-args...]
  local code
  code=$(http_status "$@")
  [[ $code == 200 ]] && return 0
  echo "expected 200 from $1, got $code"
  return 1
}

# Sends the request until the cache header says hit (at most 5 tries).
check_cache_hit() { # HEADER URL
  local i v=""
  for ((i = 0; i < 5; i++)); do
    v=$(http_header "$1" "$2")
    [[ ${v,,} == hit ]] && return 0
    sleep 0.2
  done
  echo "$1 was '${v:-absent}' after 5 requests to $2, expected hit"
  return 1
}

# A 1 r/s limit with no burst rejects the second request in the same second;
# a shield with some burst allowance rejects a little later. Ten tries.
check_429() { # URL
  local i code=""
  for ((i = 0; i < 10; i++)); do
    code=$(http_status "$1")
    [[ $code == 429 ]] && return 0
  done
  echo "no 429 from $1 after 10 quick requests (last status $code)"
  return 1
}

# ---------------------------------------------------------------------------
# Measurements. Results live in R[scenario.peer.field].

declare -A R

run_wrk() { # SCENARIO PEER ROUND URL: fills R[SCENARIO.PEER.field.ROUND]
  local scn=$1 peer=$2 round=$3 url=$4 out=$LOGS/wrk-$1-$2-$3.txt
  # A short unrecorded run first, so connection pools, caches and the page
  # cache are warm on both sides before the measured run.
  note_load "$scn $peer round $round"
  wrk -t"$WRK_THREADS" -c"$CONNS" -d"${WARMUP}s" -s "$BENCH/lua/report.lua" "$url" >"$LOGS/wrk-$scn-$peer-$round-warmup.txt"
  local cmd=(wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$BENCH/lua/report.lua" "$url")
  record_cmd "${cmd[@]}"
  local before after
  before=$(cpu_snapshot)
  "${cmd[@]}" >"$out"
  after=$(cpu_snapshot)
  R[$scn.$peer.cpu.$round]=$(peer_cpu_pct "$before" "$after")
  note_load "$scn $peer round $round" after
  local line
  line=$(grep '^BENCH ' "$out") || die "wrk printed no BENCH line, see $out"
  local kv k v x=$scn.$peer
  for kv in ${line#BENCH }; do
    k=${kv%%=*}
    v=${kv#*=}
    R[$x.$k.$round]=$v
  done
  R[$x.rps.$round]=$(awk -v n="${R[$x.requests.$round]}" -v d="${R[$x.duration_us.$round]}" 'BEGIN { printf "%.0f", n / (d / 1e6) }')
  R[$x.sockerr.$round]=$((R[$x.connect_errors.$round] + R[$x.read_errors.$round] + R[$x.write_errors.$round] + R[$x.timeouts.$round]))
  log "$scn $peer round $round: ${R[$x.rps.$round]} req/s, p50 ${R[$x.p50_us.$round]} us, p99 ${R[$x.p99_us.$round]} us, non-2xx ${R[$x.non2xx.$round]}, socket errors ${R[$x.sockerr.$round]}, peer CPU ${R[$x.cpu.$round]}% of a core"
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# After all rounds: R[SCENARIO.PEER.field] is the median of rps, p50 and p99
# over the rounds (each taken on its own), the sum of the counters, and the
# per-round req/s for the notes.
summarise_rounds() { # SCENARIO PEER
  local x=$1.$2 r k vals
  [[ -n ${R[$x.rps.1]:-} ]] || return 0
  for k in rps p50_us p99_us cpu; do
    vals=""
    for ((r = 1; r <= ROUNDS; r++)); do vals+="${R[$x.$k.$r]:-} "; done
    R[$x.$k]=$(median <<<"$vals")
  done
  for k in requests non2xx sockerr; do
    R[$x.$k]=0
    for ((r = 1; r <= ROUNDS; r++)); do R[$x.$k]=$((R[$x.$k] + ${R[$x.$k.$r]:-0})); done
  done
  R[$x.rounds]=""
  for ((r = 1; r <= ROUNDS; r++)); do
    if [[ -n ${R[$x.rps.$r]:-} ]]; then R[$x.rounds]+="${R[$x.rps.$r]} "; fi
  done
}

# The machine is shared; a busy neighbour (a compiler, a fuzzer) skews one
# peer's run against the other's. Just before and just after every measured
# run, while the peer and the origin sit idle, measure for a second how busy
# the CPUs are: that is everybody else. (The load average would not do: it
# still carries this script's own previous run. Accounting for others during
# the run would not either: loopback softirq time is charged to whichever of
# our processes happens to be running, so the sums do not add up.) Above a
# quarter of the machine, warn and list the run in the results file.
LOAD_NOTES=()
BUSY_LIMIT=25
QUIET_WAIT=${QUIET_WAIT:-0}
cpu_busy_pct() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; printf "%.0f", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }'
}
# The peer's CPU time during a measured run, as a share of one core: its
# user+system ticks (process and direct children, all threads) against the
# machine's elapsed ticks from /proc/stat divided by the number of CPUs.
proc_ticks() { # PID: user+system ticks of PID and its direct children
  local total=0 p v
  for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
    v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
cpu_snapshot() { # "machine-ticks peer-ticks"
  echo "$(awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat) $(proc_ticks "$PEER_PID")"
}
peer_cpu_pct() { # BEFORE AFTER
  awk -v a="$1" -v b="$2" -v n="$(nproc)" 'BEGIN {
    split(a, x, " "); split(b, y, " "); t = (y[1] - x[1]) / n
    printf "%.0f\n", (t > 0 ? 100 * (y[2] - x[2]) / t : 0)
  }'
}

note_load() { # WHAT [after]
  local busy waited=0 when=${2:-before}
  busy=$(cpu_busy_pct)
  while [[ $when == before ]] && ((busy >= BUSY_LIMIT && waited < QUIET_WAIT)); do
    if ((waited == 0)); then log "CPUs ${busy}% busy with other work; waiting up to ${QUIET_WAIT}s for quiet"; fi
    sleep 4
    waited=$((waited + 5))
    busy=$(cpu_busy_pct)
  done
  if ((busy >= BUSY_LIMIT)); then
    log "warning: CPUs ${busy}% busy with other work just $when $1"
    LOAD_NOTES+=("$1: CPUs ${busy}% busy with other work just $when the run")
  fi
}

VERIFY_FAILED=0
skip_peer() { # SCENARIO PEER REASON
  R[$1.$2.note]=$3
  log "$1 $2: $3"
}

# One throughput scenario: ROUNDS rounds of nginx then qalqan, each started
# fresh, checked, measured and stopped, so the two never run at once and
# drift in the machine's background load hits both alike.
scenario_throughput() { # SCN PATH NGINX_CONF_FN NGINX_CHECK QALQAN_CHECK [QALQAN_ARGS...]
  local scn=$1 path=$2 nginx_conf=$3 nginx_check=$4 qalqan_check=$5 why round
  shift 5
  log "scenario $scn: ${TITLE[$scn]}"
  if [[ $QALQAN_STATE != ok ]]; then skip_peer "$scn" qalqan "$QALQAN_STATE"; fi

  for ((round = 1; round <= ROUNDS; round++)); do
    if [[ -z ${R[$scn.nginx.note]:-} ]]; then
      start_nginx_peer "$scn" "$nginx_conf"
      if why=$($nginx_check "http://127.0.0.1:$PORT$path"); then
        run_wrk "$scn" nginx "$round" "http://127.0.0.1:$PORT$path"
      else
        skip_peer "$scn" nginx "verification failed: $why"
        VERIFY_FAILED=1
      fi
      stop_peer
    fi

    if [[ -z ${R[$scn.qalqan.note]:-} ]]; then
      if ! start_qalqan_peer "$scn" "$@"; then
        skip_peer "$scn" qalqan "qalqan did not start (see bench/work/qalqan-$scn/qalqan.log)"
        VERIFY_FAILED=1
      elif why=$($qalqan_check "http://127.0.0.1:$PORT$path"); then
        run_wrk "$scn" qalqan "$round" "http://127.0.0.1:$PORT$path"
        stop_peer
      else
        skip_peer "$scn" qalqan "verification failed: $why"
        VERIFY_FAILED=1
        stop_peer
      fi
    fi
  done
  summarise_rounds "$scn" nginx
  summarise_rounds "$scn" qalqan
}

check_nginx_hit() { check_200 "$1" && check_cache_hit X-Cache-Status "$1"; }
check_qalqan_hit() { check_200 "$1" && check_cache_hit x-qalqan-cache "$1"; }
# On the miss path the shield must not be serving from its cache.
# Two clients that differ only in X-Forwarded-For must both get through, which
# also shows that the peer keys its limits on that header and not on the
# loopback address (whose single token the start-up probe has already spent).
check_xff() { # URL
  check_200 "$1" -H 'X-Forwarded-For: 198.51.100.7' &&
    check_200 "$1" -H 'X-Forwarded-For: 2001:db8::7'
}
check_qalqan_miss() {
  check_200 "$1" || return 1
  local v
  v=$(http_header x-qalqan-cache "$1")
  if [[ ${v,,} == hit || ${v,,} == stale ]]; then
    echo "x-qalqan-cache is '$v' on a no-store path"
    return 1
  fi
}

# ---------------------------------------------------------------------------
# Memory scenario.

# Sum over the process and its direct children (nginx: master, workers, cache
# manager and loader) of a /proc field in KiB.
proc_sum_kib() { # PID FILE FIELD
  local pid=$1 file=$2 field=$3 total=0 p v
  for p in "$pid" $(pgrep -P "$pid" 2>/dev/null || true); do
    v=$(awk -v f="$field:" '$1 == f { print $2; exit }' "/proc/$p/$file" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

metric_line() { # ADMIN_PORT: the tracked-clients memory line(s) of /metrics
  [[ -n $1 ]] || return 0
  curl -s --max-time 5 "http://127.0.0.1:$1/metrics" | grep '^qalqan_shield_tracked_clients_bytes' | paste -sd ';' - || true
}

sample_memory() { # PEER INDEX SENT
  local peer=$1 i=$2
  R[D.$peer.rss.$i]=$(proc_sum_kib "$PEER_PID" status VmRSS)
  R[D.$peer.pss.$i]=$(proc_sum_kib "$PEER_PID" smaps_rollup Pss)
  R[D.$peer.sent.$i]=$3
  R[D.$peer.metric.$i]=$(metric_line "$ADMIN_PORT")
  log "D $peer after $3 requests: RSS $(mib "${R[D.$peer.rss.$i]}") MiB, PSS $(mib "${R[D.$peer.pss.$i]}") MiB ${R[D.$peer.metric.$i]}"
}

# Runs a wrk command with xff.lua in the background and ends it with SIGINT as
# soon as every wrk thread has left its done file (see bench/lua/xff.lua), or
# lets it run into its own -d cap.
run_until_done() { # OUT wrk-command...
  local out=$1 wpid n
  shift
  "$@" >"$out" &
  wpid=$!
  PIDS+=("$wpid")
  while kill -0 "$wpid" 2>/dev/null; do
    n=$(find "$WORK" -maxdepth 1 -name 'xff-done.*' | wc -l)
    if ((n >= WRK_THREADS)); then
      kill -INT "$wpid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
  wait "$wpid" || true
  forget_pid "$wpid"
}

# Four wrk segments of MEM_REQUESTS/4 requests, memory sampled before the
# first and after each; all four together stop at MEM_TIME_CAP seconds.
memory_run() { # PEER
  local peer=$1 url="http://127.0.0.1:$PORT/cached"
  local quarter=$((MEM_REQUESTS / 4)) start=0 total=0 seg began now left out line
  local non2xx=0 sockerr=0 busy_us=0
  note_load "D $peer"
  sample_memory "$peer" 0 0
  began=$(date +%s)
  for seg in 1 2 3 4; do
    now=$(date +%s)
    left=$((MEM_TIME_CAP - (now - began)))
    if ((left < 1)); then
      R[D.$peer.note]="time cap of ${MEM_TIME_CAP}s reached after $total requests"
      break
    fi
    out=$LOGS/wrk-D-$peer-$seg.txt
    rm -f "$WORK/xff-done."*
    local cmd=(wrk -t"$WRK_THREADS" -c"$CONNS" -d"${left}s" -s "$BENCH/lua/xff.lua" "$url" -- "$start" "$quarter" "$WRK_THREADS" "$WORK/xff-done.")
    record_cmd "${cmd[@]}"
    run_until_done "$out" "${cmd[@]}"
    line=$(grep '^XFF ' "$out") || die "wrk printed no XFF line, see $out"
    local sent next n2 se dur
    sent=$(sed -E 's/.* sent=([0-9]+).*/\1/' <<<"$line")
    next=$(sed -E 's/.* next=([0-9]+).*/\1/' <<<"$line")
    n2=$(sed -E 's/.* non2xx=([0-9]+).*/\1/' <<<"$line")
    se=$(sed -E 's/.* socket_errors=([0-9]+).*/\1/' <<<"$line")
    dur=$(sed -E 's/.* duration_us=([0-9]+).*/\1/' <<<"$line")
    total=$((total + sent))
    non2xx=$((non2xx + n2))
    sockerr=$((sockerr + se))
    busy_us=$((busy_us + dur))
    start=$next
    sample_memory "$peer" "$seg" "$total"
    if ((sent < quarter)); then
      R[D.$peer.note]="time cap of ${MEM_TIME_CAP}s reached after $total requests"
      break
    fi
  done
  R[D.$peer.total]=$total
  R[D.$peer.non2xx]=$non2xx
  R[D.$peer.sockerr]=$sockerr
  R[D.$peer.rps]=$(awk -v n="$total" -v d="$busy_us" 'BEGIN { if (d > 0) printf "%.0f", n / (d / 1e6) }')
  R[D.$peer.hwm]=$(proc_sum_kib "$PEER_PID" status VmHWM)
}

scenario_memory() {
  log "scenario D: ${TITLE[D]}"
  local why
  start_nginx_peer D nginx_conf_memory
  if why=$(check_xff "http://127.0.0.1:$PORT/cached"); then
    memory_run nginx
  else
    skip_peer D nginx "verification failed: $why"
    VERIFY_FAILED=1
  fi
  stop_peer

  if [[ $QALQAN_STATE != ok ]]; then
    skip_peer D qalqan "$QALQAN_STATE"
    return 0
  fi
  if ! start_qalqan_peer D --trusted-proxy 127.0.0.1/32; then
    skip_peer D qalqan "qalqan did not start (see bench/work/qalqan-D/qalqan.log)"
    VERIFY_FAILED=1
    return 0
  fi
  if why=$(check_xff "http://127.0.0.1:$PORT/cached"); then
    memory_run qalqan
  else
    skip_peer D qalqan "verification failed: $why"
    VERIFY_FAILED=1
  fi
  stop_peer
}

# ---------------------------------------------------------------------------
# Report.

declare -A TITLE=(
  [A]="clean traffic, cache miss (GET /nostore, Cache-Control: no-store)"
  [B]="cache hit (GET /cached, Cache-Control: max-age=60, warmed)"
  [C]="drop path (1 r/s per client address, everything from 127.0.0.1, nearly all 429)"
  [D]="memory under $MEM_REQUESTS distinct X-Forwarded-For clients"
)

ms() { awk -v u="$1" 'BEGIN { if (u == "") print "—"; else printf "%.2f", u / 1000 }'; }
mib() { awk -v k="$1" 'BEGIN { if (k == "") print "—"; else printf "%.1f", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "n/a"; else printf "%.2f×", a / b }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }

REPORT=""
out() { REPORT+="$*"$'\n'; }

report_throughput() { # SCN
  local s=$1 p note
  out "### Scenario $s — ${TITLE[$s]}"
  out ""
  if ((ROUNDS > 1)); then
    out "Median of $ROUNDS rounds for req/s, p50 and p99; non-2xx and socket errors summed over the rounds."
    out ""
  fi
  out "| peer | req/s | p50 (ms) | p99 (ms) | non-2xx | socket errors | peer CPU (% of a core) | note |"
  out "|---|---:|---:|---:|---:|---:|---:|---|"
  for p in nginx qalqan; do
    if [[ -n ${R[$s.$p.rps]:-} ]]; then
      local rounds=""
      if ((ROUNDS > 1)); then rounds="req/s by round: ${R[$s.$p.rounds]% }"; fi
      out "| $p | ${R[$s.$p.rps]} | $(ms "${R[$s.$p.p50_us]}") | $(ms "${R[$s.$p.p99_us]}") | ${R[$s.$p.non2xx]} | ${R[$s.$p.sockerr]} | ${R[$s.$p.cpu]} | ${R[$s.$p.note]:-}$rounds |"
    else
      out "| $p | — | — | — | — | — | — | ${R[$s.$p.note]:-not run} |"
    fi
  done
  out "| **qalqan/nginx** | $(ratio "${R[$s.qalqan.rps]:-}" "${R[$s.nginx.rps]:-}") (higher is better) | $(ratio "${R[$s.qalqan.p50_us]:-}" "${R[$s.nginx.p50_us]:-}") (lower is better) | $(ratio "${R[$s.qalqan.p99_us]:-}" "${R[$s.nginx.p99_us]:-}") (lower is better) | | | | |"
  out ""
  local verdict="n/a (qalqan not measured)"
  if [[ -n ${R[$s.qalqan.rps]:-} && -n ${R[$s.nginx.rps]:-} ]]; then
    local bad=""
    # On the pass-through scenarios a non-2xx answer means the peer did
    # something else than proxying (a limit, an error), so the figures are
    # not comparable; on the drop path 429 is the point.
    if [[ $s != C ]]; then
      for p in nginx qalqan; do
        if ((R[$s.$p.non2xx] * 1000 > R[$s.$p.requests])); then
          bad+="$p answered ${R[$s.$p.non2xx]} non-2xx; "
        fi
      done
    else
      for p in nginx qalqan; do
        if ((R[$s.$p.non2xx] * 100 < R[$s.$p.requests] * 99)); then
          bad+="$p answered only ${R[$s.$p.non2xx]} of ${R[$s.$p.requests]} with 429; "
        fi
      done
    fi
    if [[ -n $bad ]]; then
      verdict="not comparable: $bad"
    elif ge "${R[$s.qalqan.rps]}" "${R[$s.nginx.rps]}" && ge "${R[$s.nginx.p99_us]}" "${R[$s.qalqan.p99_us]}"; then
      verdict="**met**"
    else
      verdict="**not met**"
    fi
  fi
  out "Goal: qalqan ≥ 1.00× nginx req/s and p99 no worse (≤ 1.00×). Verdict: $verdict"
  out ""
}

report_memory() {
  local p i
  local q=$((MEM_REQUESTS / 4))
  out "### Scenario D — ${TITLE[D]}"
  out ""
  out "Memory in MiB after N requests, each from a new client address. nginx is master + workers + cache processes;"
  out "RSS summed over them counts shared pages (code, shared-memory zones) once per process, PSS shares them out and"
  out "is the fair total. qalqan is one process; its PSS is lower than its RSS only by its share of libraries that"
  out "other programs also map."
  out ""
  out "| peer | measure | start | $q | $((2 * q)) | $((3 * q)) | $((4 * q)) | peak (VmHWM) | req/s | non-2xx | note |"
  out "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  for p in nginx qalqan; do
    local m
    for m in rss pss; do
      local row="| $p | ${m^^} |"
      for i in 0 1 2 3 4; do row+=" $(mib "${R[D.$p.$m.$i]:-}") |"; done
      if [[ $m == rss ]]; then
        row+=" $(mib "${R[D.$p.hwm]:-}") | ${R[D.$p.rps]:-—} | ${R[D.$p.non2xx]:-—} | ${R[D.$p.note]:-} |"
      else
        row+=" | | | |"
      fi
      out "$row"
    done
  done
  out ""
  if [[ -n ${R[D.qalqan.rss.0]:-} ]]; then
    out "qalqan tracked-client memory from /metrics (\`qalqan_shield_tracked_clients_bytes\`):"
    out ""
    for i in 0 1 2 3 4; do
      [[ -n ${R[D.qalqan.sent.$i]:-} ]] || continue
      out "- after ${R[D.qalqan.sent.$i]} requests: \`${R[D.qalqan.metric.$i]:-metric missing}\`"
    done
    out ""
  fi
  local verdict="n/a (qalqan not measured)"
  if [[ -n ${R[D.qalqan.rss.4]:-} ]]; then
    local peak=${R[D.qalqan.hwm]} warm=${R[D.qalqan.rss.1]} last=${R[D.qalqan.rss.4]}
    local under=0 flat=0
    if ((peak <= MEM_GOAL_MIB * 1024)); then under=1; fi
    if ((last * 100 <= warm * (100 + FLAT_PERCENT))); then flat=1; fi
    if ((under && flat)); then verdict="**met**"; else verdict="**not met**"; fi
    verdict+=" (peak $(mib "$peak") MiB; $(mib "$warm") → $(mib "$last") MiB from the 25 % mark to the end)"
    if ((MEM_REQUESTS < 1000000)); then verdict+=" — short run, the goal is stated for 1,000,000 clients"; fi
  elif [[ -n ${R[D.qalqan.rss.0]:-} ]]; then
    verdict="not met: the run did not reach $MEM_REQUESTS requests within ${MEM_TIME_CAP}s"
  fi
  out "Goal: qalqan ≤ ${MEM_GOAL_MIB} MiB in total (peak RSS) and flat after warm-up (at most ${FLAT_PERCENT} % above the 25 % mark at the end). Verdict: $verdict"
  out ""
}

machine_name() {
  if [[ -n ${BENCH_MACHINE:-} ]]; then
    echo "$BENCH_MACHINE"
    return
  fi
  local h
  h=$(hostname -s 2>/dev/null || true)
  case $h in "" | localhost | vm) echo rust-svc ;; *) echo "$h" ;; esac
}

qalqan_commit() {
  local c
  if c=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
    if [[ -n $(git -C "$ROOT" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then
      c+=" + uncommitted changes"
    fi
    echo "$c"
  else
    echo uncommitted
  fi
}

write_results() { # FILE STARTED SCRIPT-ARGS...
  local file=$1 started=$2
  shift 2
  local cpu kernel nginx_v wrk_v rustc_v
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  kernel=$(uname -srm)
  nginx_v=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
  # wrk -v prints its version with the usage text and exits 1.
  wrk_v=$({ wrk -v 2>&1 || true; } | head -n 1 | awk '{ print $1, $2 }')
  rustc_v=$(rustc --version 2>/dev/null || echo "not found")
  mkdir -p "$(dirname "$file")"
  {
    echo "# Qalqan load benchmark — $(date -u +%F) on $(machine_name)$( ((QUICK)) && echo ' (quick run)')"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| started (UTC) | $started |"
    echo "| finished (UTC) | $(date -u) |"
    echo "| CPU | ${cpu:-unknown} |"
    echo "| nproc | $(nproc) |"
    echo "| kernel | $kernel |"
    echo "| nginx | $nginx_v |"
    echo "| wrk | $wrk_v |"
    echo "| rustc | $rustc_v |"
    echo "| qalqan commit | $(qalqan_commit) |"
    echo "| qalqan binary | ${QALQAN_STATE/#ok/${QALQAN//$ROOT\//}} |"
    echo "| proxy threads (T) | $THREADS (qalqan --threads, nginx worker_processes) |"
    echo "| load | wrk -t$WRK_THREADS -c$CONNS, ${WARMUP}s warm-up then ${DURATION}s measured, $ROUNDS round(s), 127.0.0.1 only |"
    echo "| load average at start | $LOAD_AT_START (includes this script's build) |"
    echo "| origin | nginx, worker_processes 1, 2048-byte body from memory |"
    echo
    echo "Each peer ran alone: started, checked with curl, measured, stopped, then the next one."
    echo "The origin and wrk ran throughout on the same $(nproc) cores."
    echo
    if ((${#LOAD_NOTES[@]})); then
      echo "**Background load.** Other programs were using the CPU just before or after these runs, so their"
      echo "figures are less trustworthy than the rest:"
      echo
      printf -- '- %s\n' "${LOAD_NOTES[@]}"
      echo
    fi
    printf '%s' "$REPORT"
    echo "## Commands"
    echo
    echo '```sh'
    # The invocation, with the environment knobs that were set.
    local v inv=""
    for v in THREADS ROUNDS MEM_REQUESTS QUIET_WAIT QALQAN_BIN SKIP_BUILD QALQAN_LOG BENCH_WORK; do
      if [[ -n ${ENV_GIVEN[$v]:-} ]]; then inv+="$v=$(printf '%q' "${ENV_GIVEN[$v]}") "; fi
    done
    echo "${inv}bench/run.sh${*:+ $*}"
    printf '%s\n' "${COMMANDS[@]}"
    echo '```'
    echo
    echo "## Configs"
    local c
    for c in "${CONFIGS[@]}"; do
      echo
      echo "<details><summary>${c%%|*}</summary>"
      echo
      echo '```'
      sed "s|$ROOT/||g" "${c#*|}"
      echo '```'
      echo
      echo "</details>"
    done
  } >"$file"
}

# ---------------------------------------------------------------------------
# Main.

main() {
  local started
  started=$(date -u)
  LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
  mkdir -p "$LOGS"
  # One run at a time per working directory: two would share the CPUs and
  # overwrite each other's prefixes.
  exec 9>"$WORK/.lock"
  flock -n 9 || die "another bench/run.sh is using $WORK; wait for it or set BENCH_WORK"
  ensure_tools
  prepare_qalqan
  [[ $QALQAN_STATE == ok ]] || log "$QALQAN_STATE"
  start_origin

  scenario_throughput A /nostore nginx_conf_proxy check_200 check_qalqan_miss --config-from qalqan_conf_clean
  scenario_throughput B /cached nginx_conf_cache check_nginx_hit check_qalqan_hit --config-from qalqan_conf_clean
  scenario_throughput C /nostore nginx_conf_drop check_429 check_429 --config-from qalqan_conf_drop
  scenario_memory

  local s
  for s in A B C; do report_throughput "$s"; done
  report_memory

  local suffix=""
  if ((QUICK)); then suffix="-quick"; fi
  local file=${RESULTS_FILE:-$BENCH/results/$(date -u +%F)-$(machine_name)$suffix.md}
  write_results "$file" "$started" "$@"
  echo
  printf '%s' "$REPORT"
  log "results written to ${file//$ROOT\//}"

  if ((BUILD_FAILED || VERIFY_FAILED)); then
    log "some runs were skipped or failed their checks; see the notes above"
    exit 1
  fi
}

main "$@"
