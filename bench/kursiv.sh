#!/usr/bin/env bash
# The Kursiv scenario: a search flood at 400 times the readers' rate against a
# small news site whose search serves about 20 requests a second. Three peers
# in turn, each in front of a fresh origin: no protection, nginx with
# per-address limit_req, and the Qalqan shield. See bench/README.md.
#
#   bench/kursiv.sh           full run: 30 s warm-up, 10 s baseline, 30 s attack
#                             per peer (about 4 minutes)
#   bench/kursiv.sh --quick   smoke run: 30 s warm-up, 5 s baseline, 10 s attack
#
# Environment:
#   THREADS=N            qalqan --threads and nginx worker_processes (default 1)
#   QALQAN_BIN=PATH      use this shield binary and do not build it
#   QALQAN_NOTE=TEXT     where that binary came from, for the results file
#   KURSIV_BIN=PATH      use this load tool and do not build it
#   SKIP_BUILD=1         do not run cargo; use the binaries in target/release
#   QALQAN_LOG=FILTER    the shield's diagnostics filter (default warn)
#   READERS=N            simulated readers (default 200)
#   READER_RATE=R        page views per second of all readers (default 5)
#   FLOOD_RATE=R         flood requests per second (default 2000, 400x)
#   FLOOD_ADDRESSES=N    flood addresses that never solve challenges (10000)
#   SOLVER_ADDRESSES=N   flood addresses that solve them (default 500)
#   FLOOD_CONCURRENCY=N  flood requests in flight at most (default 2048)
#   FLOOD_NETWORKS=W     own (default: a botnet on networks far from the readers') or readers
#                        (a farm inside the readers' own /16)
#   BENCH_MACHINE=S      machine name used in the results file name
#   RESULTS_FILE=PATH    write the Markdown results here instead
#   BENCH_WORK=DIR       working files here instead of bench/work
#
# Every process listens on and talks to 127.0.0.1 only; every phase has a
# fixed length and the flood a fixed rate and concurrency.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
WORK_ROOT=${BENCH_WORK:-$BENCH/work}
WORK=$WORK_ROOT/kursiv

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
KNOBS=(THREADS QALQAN_BIN QALQAN_NOTE KURSIV_BIN SKIP_BUILD QALQAN_LOG READERS READER_RATE FLOOD_RATE
  FLOOD_ADDRESSES SOLVER_ADDRESSES FLOOD_CONCURRENCY FLOOD_NETWORKS BENCH_WORK)
declare -A ENV_GIVEN=()
for v in "${KNOBS[@]}"; do
  if [[ -n ${!v:-} ]]; then ENV_GIVEN[$v]=${!v}; fi
done

THREADS=${THREADS:-1}
READERS=${READERS:-200}
READER_RATE=${READER_RATE:-5}
FLOOD_RATE=${FLOOD_RATE:-2000}
FLOOD_ADDRESSES=${FLOOD_ADDRESSES:-10000}
SOLVER_ADDRESSES=${SOLVER_ADDRESSES:-500}
FLOOD_CONCURRENCY=${FLOOD_CONCURRENCY:-2048}
FLOOD_NETWORKS=${FLOOD_NETWORKS:-own}
case $FLOOD_NETWORKS in
  own | readers) ;;
  *)
    echo "FLOOD_NETWORKS must be own or readers, not $FLOOD_NETWORKS" >&2
    exit 2
    ;;
esac
QALQAN_LOG=${QALQAN_LOG:-warn}
# The shield's detector learns for its first 30 s (attack.warmup) before the
# request rate alone may raise the mode, as after any restart. The warm-up
# phase gives it that time, and gives every peer's caches the same start.
WARMUP=30
if ((QUICK)); then
  BASELINE=5
  ATTACK=10
else
  BASELINE=10
  ATTACK=30
fi

for v in THREADS READERS FLOOD_ADDRESSES SOLVER_ADDRESSES FLOOD_CONCURRENCY; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
    echo "$v must be a whole number, got '${!v}'" >&2
    exit 2
  fi
done
for v in READER_RATE FLOOD_RATE; do
  if ! [[ ${!v} =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    echo "$v must be a number, got '${!v}'" >&2
    exit 2
  fi
done

log() { printf '[kursiv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------
# Process bookkeeping, as in bench/run.sh: every background process is in
# PIDS and the EXIT trap stops each one by its id, also on Ctrl-C.
PIDS=()

forget_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# TERM, up to 5 s for a clean exit, then KILL; also the direct children
# (nginx workers).
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
# Tools and binaries.

NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

ensure_tools() {
  local missing=()
  [[ -x $NGINX ]] || missing+=(nginx)
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
}

COMMANDS=()
record_cmd() {
  local line
  line=$(printf '%q ' "$@")
  line=${line% }
  COMMANDS+=("${line//$ROOT\//}")
}

QALQAN=""
KURSIV=""
prepare_binaries() {
  local release=${CARGO_TARGET_DIR:-$ROOT/target}/release
  QALQAN=${QALQAN_BIN:-$release/qalqan}
  KURSIV=${KURSIV_BIN:-$release/qalqan-bench-kursiv}
  local pkgs=()
  [[ -n ${QALQAN_BIN:-} ]] || pkgs+=(-p qalqan)
  [[ -n ${KURSIV_BIN:-} ]] || pkgs+=(-p qalqan-bench-kursiv)
  if [[ -z ${SKIP_BUILD:-} ]] && ((${#pkgs[@]})); then
    log "building (cargo build --release ${pkgs[*]}), log in ${WORK//$ROOT\//}/build.log"
    record_cmd cargo build --release "${pkgs[@]}"
    if ! (cd "$ROOT" && cargo build --release "${pkgs[@]}") >"$WORK/build.log" 2>&1; then
      tail -n 20 "$WORK/build.log" >&2
      die "build failed (see ${WORK//$ROOT\//}/build.log)"
    fi
  fi
  [[ -x $QALQAN ]] || die "no shield binary at $QALQAN"
  [[ -x $KURSIV ]] || die "no load tool at $KURSIV"
}

free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# wait_http PORT PID: up to 15 s for any HTTP answer on PORT while PID lives.
wait_http() {
  local port=$1 pid=$2 i
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/__stats" && return 0
    sleep 0.1
  done
  return 1
}

CONFIGS=() # "title|path" of every config used, for the results file

# ---------------------------------------------------------------------------
# The origin: a fresh one for each peer, so no peer inherits another's queue.

ORIGIN_PORT=""
ORIGIN_PID=""
start_origin() { # PEER
  local dir=$WORK/$1 i
  mkdir -p "$dir"
  rm -f "$dir/origin.port"
  local cmd=("$KURSIV" origin --listen 127.0.0.1:0 --port-file "$dir/origin.port"
    --workers 1 --search-ms 50 --article-ms 2 --backlog 128 --queue-timeout 10 --max-runtime 900)
  record_cmd "${cmd[@]}"
  "${cmd[@]}" >"$dir/origin.log" 2>&1 &
  ORIGIN_PID=$!
  PIDS+=("$ORIGIN_PID")
  for ((i = 0; i < 100; i++)); do
    [[ -s $dir/origin.port ]] && break
    kill -0 "$ORIGIN_PID" 2>/dev/null || break
    sleep 0.1
  done
  ORIGIN_PORT=$(tr -d '[:space:]' <"$dir/origin.port" 2>/dev/null || true)
  [[ $ORIGIN_PORT =~ ^[0-9]+$ ]] || die "origin did not start (see $dir/origin.log)"
  wait_http "$ORIGIN_PORT" "$ORIGIN_PID" || die "origin does not answer (see $dir/origin.log)"
  log "origin for $1 on 127.0.0.1:$ORIGIN_PORT (pid $ORIGIN_PID)"
}

# ---------------------------------------------------------------------------
# Peers.

PORT=""
ADMIN_PORT=""
PEER_PID=""

NGINX_USER_LINE=""
if ((EUID == 0)); then NGINX_USER_LINE="user root root;"; fi

# nginx as an admin would set it up from the common guides ("Rate Limiting
# with NGINX"): the client address from X-Forwarded-For, trusted from
# loopback only, and limit_req per address at 10 r/s with a burst of 20 served
# without delay. No proxy_cache: the peer is "nginx with limit_req".
nginx_conf() { # DIR PORT
  local dir=$1 port=$2
  cat <<EOF
daemon off;
master_process on;
worker_processes $THREADS;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
$NGINX_USER_LINE

# Each proxied request holds two connections (client and origin); the flood
# keeps up to 2048 requests in flight.
worker_rlimit_nofile 16384;
events {
    worker_connections 8192;
}

http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
    default_type text/html;

    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
    }

    set_real_ip_from 127.0.0.0/8;
    real_ip_header X-Forwarded-For;
    limit_req_zone \$binary_remote_addr zone=per_ip:10m rate=10r/s;

    server {
        listen 127.0.0.1:$port;
        location / {
            limit_req zone=per_ip burst=20 nodelay;
            limit_req_status 429;
            limit_req_log_level info;
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
}

# The shield on its defaults, plus what any deployment behind a proxy sets:
# trusted_proxies. Attack mode is automatic; nothing forces it.
qalqan_conf() { # DIR PORT ADMIN_PORT
  cat <<EOF
[server]
threads = $THREADS

[[listen]]
address = "127.0.0.1:$2"

[admin]
address = "127.0.0.1:$3"

[origin]
url = "http://127.0.0.1:$ORIGIN_PORT"

[client]
trusted_proxies = ["127.0.0.0/8"]

[access_log]
path = "$1/access.log"

[attack]
episodes_path = "$1/episodes.jsonl"
EOF
}

start_peer() { # PEER
  local peer=$1 dir=$WORK/$1 i
  ADMIN_PORT=""
  PEER_PID=""
  case $peer in
    none)
      PORT=$ORIGIN_PORT
      ;;
    nginx)
      PORT=$(free_port)
      mkdir -p "$dir/tmp"
      nginx_conf "$dir" "$PORT" >"$dir/nginx.conf"
      CONFIGS+=("nginx (limit_req)|$dir/nginx.conf")
      "$NGINX" -t -q -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" ||
        die "nginx config $dir/nginx.conf does not load"
      record_cmd "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log"
      "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" &
      PEER_PID=$!
      PIDS+=("$PEER_PID")
      ;;
    qalqan)
      PORT=$(free_port)
      ADMIN_PORT=$(free_port)
      qalqan_conf "$dir" "$PORT" "$ADMIN_PORT" >"$dir/qalqan.toml"
      CONFIGS+=("qalqan|$dir/qalqan.toml")
      "$QALQAN" config check "$dir/qalqan.toml" >"$dir/config-check.txt" 2>&1 ||
        die "qalqan config check failed: $(cat "$dir/config-check.txt")"
      record_cmd env QALQAN_LOG="$QALQAN_LOG" "$QALQAN" shield --config "$dir/qalqan.toml"
      env QALQAN_LOG="$QALQAN_LOG" "$QALQAN" shield --config "$dir/qalqan.toml" >"$dir/qalqan.log" 2>&1 &
      PEER_PID=$!
      PIDS+=("$PEER_PID")
      ;;
  esac
  # The peer must answer an article with the article before the run starts.
  for ((i = 0; i < 150; i++)); do
    if [[ -n $PEER_PID ]] && ! kill -0 "$PEER_PID" 2>/dev/null; then break; fi
    if curl -s --max-time 2 -H 'X-Forwarded-For: 192.0.2.1' "http://127.0.0.1:$PORT/article/1" |
      grep -q '<article id="a1">'; then
      log "peer $peer on 127.0.0.1:$PORT${ADMIN_PORT:+, admin :$ADMIN_PORT}${PEER_PID:+ (pid $PEER_PID)}"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$dir"/*.log >&2 || true
  die "peer $peer did not serve /article/1"
}

run_peer() { # PEER
  local peer=$1 dir=$WORK/$1
  rm -rf "$dir"
  mkdir -p "$dir"
  start_origin "$peer"
  start_peer "$peer"
  local cmd=("$KURSIV" load --peer "$peer" --target "http://127.0.0.1:$PORT"
    --origin "http://127.0.0.1:$ORIGIN_PORT"
    --readers "$READERS" --reader-rate "$READER_RATE"
    --flood-rate "$FLOOD_RATE" --flood-addresses "$FLOOD_ADDRESSES"
    --solver-addresses "$SOLVER_ADDRESSES" --flood-concurrency "$FLOOD_CONCURRENCY"
    --flood-networks "$FLOOD_NETWORKS"
    --warmup "$WARMUP" --baseline "$BASELINE" --attack "$ATTACK"
    --out "$dir/timeline.json")
  if [[ -n $ADMIN_PORT ]]; then cmd+=(--admin "http://127.0.0.1:$ADMIN_PORT"); fi
  record_cmd "${cmd[@]}"
  log "peer $peer: $((WARMUP + BASELINE + ATTACK)) s of load"
  "${cmd[@]}" 2>"$dir/load.log" || {
    cat "$dir/load.log" >&2
    die "load run against $peer failed"
  }
  tail -n 1 "$dir/load.log" >&2
  if [[ $peer == qalqan ]]; then
    curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$dir/metrics.txt" || true
  fi
  if [[ -n $PEER_PID ]]; then stop_proc "$PEER_PID"; fi
  stop_proc "$ORIGIN_PID"
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
    if [[ -n $(git -C "$ROOT" status --porcelain -- crates bench/kursiv Cargo.toml Cargo.lock 2>/dev/null) ]]; then
      c+=" + uncommitted changes"
    fi
    echo "$c"
  else
    echo unknown
  fi
}

main() {
  local started load_start
  started=$(date -u)
  load_start=$(uptime)
  mkdir -p "$WORK"
  # One bench at a time per working directory (shared with bench/run.sh):
  # two would share the CPUs.
  exec 9>"$WORK_ROOT/.lock"
  flock -n 9 || die "another benchmark is using $WORK_ROOT; wait for it or set BENCH_WORK"
  ensure_tools
  prepare_binaries

  local peer
  for peer in none nginx qalqan; do run_peer "$peer"; done

  local load_end body
  load_end=$(uptime)
  body=$("$KURSIV" report "$WORK/none/timeline.json" "$WORK/nginx/timeline.json" "$WORK/qalqan/timeline.json")
  record_cmd "$KURSIV" report "$WORK/none/timeline.json" "$WORK/nginx/timeline.json" "$WORK/qalqan/timeline.json"

  local suffix=""
  if ((QUICK)); then suffix="-quick"; fi
  local file=${RESULTS_FILE:-$BENCH/results/$(date -u +%F)-$(machine_name)-kursiv$suffix.md}
  mkdir -p "$(dirname "$file")"
  local cpu
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  {
    echo "# Kursiv scenario — $(date -u +%F) on $(machine_name)$( ((QUICK)) && echo ' (quick run)')"
    echo
    echo "A search flood at $(awk -v f="$FLOOD_RATE" -v r="$READER_RATE" 'BEGIN { printf "%.0f", f / r }')× the readers' rate against a site whose search"
    echo "serves about 20 requests a second; three peers in turn, each in front of a fresh origin."
    echo "Scaled down to a 2-core machine: readers $READER_RATE page views/s, flood $FLOOD_RATE req/s."
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| started (UTC) | $started |"
    echo "| finished (UTC) | $(date -u) |"
    echo "| CPU | ${cpu:-unknown} |"
    echo "| nproc | $(nproc) |"
    echo "| kernel | $(uname -srm) |"
    echo "| nginx | $("$NGINX" -v 2>&1 | sed 's/^nginx version: //') |"
    echo "| rustc | $(rustc --version 2>/dev/null || echo 'not found') |"
    echo "| qalqan commit | $(qalqan_commit) (of the working tree) |"
    echo "| qalqan binary | ${QALQAN//$ROOT\//}${QALQAN_NOTE:+ — $QALQAN_NOTE} |"
    echo "| proxy threads | $THREADS (qalqan \`threads\`, nginx \`worker_processes\`) |"
    echo "| origin | \`qalqan-bench-kursiv origin\`: 1 worker; search 50 ms of it, article 2 ms; backlog 128 (then 503), 10 s wait (then 504) |"
    echo "| uptime at start | $load_start |"
    echo "| uptime at end | $load_end |"
    echo
    echo "Other programs (compilers of other engineers) may have used the same two cores during the run;"
    echo "the load averages above say how busy the machine was."
    echo
    printf '%s\n\n' "$body"
    echo "## Commands"
    echo
    echo '```sh'
    local v inv=""
    for v in "${KNOBS[@]}"; do
      if [[ -n ${ENV_GIVEN[$v]:-} ]]; then inv+="$v=$(printf '%q' "${ENV_GIVEN[$v]}") "; fi
    done
    echo "${inv}bench/kursiv.sh${*:+ $*}"
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
  echo
  printf '%s\n' "$body"
  log "results written to ${file//$ROOT\//}"
}

main "$@"
