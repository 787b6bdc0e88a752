#!/usr/bin/env bash
# Work per request, counted rather than timed: the shield and nginx each run under valgrind's
# callgrind while wrk sends them requests on loopback, and the instructions their process ran
# during the load are divided by the requests served. Unlike req/s this does not move with
# what else the machine is doing, so it shows small changes a noisy VM hides. (It counts
# user-space instructions only; the kernel's share is the same for both peers when they make
# the same system calls, which `strace -c` can confirm.)
#
#   bench/callgrind.sh              cache miss (proxy_pass) and drop path (429), both peers
#   CACHE=1 bench/callgrind.sh      the same under cachegrind's simulated caches: instructions
#                                   and first-level data-cache misses per request
#
# With CACHE=1 each peer runs twice, for SECONDS_PER_RUN and for three times that, and the
# difference of the two runs' counts over the difference of their requests is what a request
# costs, start-up cancelled out (cachegrind cannot be reset mid-run as callgrind can). The
# caches are valgrind's model of this machine's (first level 32 KiB per kind), not measured ones:
# they show where a peer's memory use per request differs, not cycles.
#
# Environment: QALQAN_BIN=PATH (default target/release/qalqan, built when missing),
# SECONDS_PER_RUN=N (default 8), KEEP=DIR (copy the profiles there for callgrind_annotate or
# cg_annotate), CACHE=1 (see above).
# Installs valgrind, nginx and wrk with apt-get when missing.
# Every load run targets 127.0.0.1 only and is bounded by wrk's -d.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QALQAN=${QALQAN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/qalqan}
SECS=${SECONDS_PER_RUN:-8}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

missing=()
for t in valgrind nginx wrk curl python3; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
  ((EUID == 0)) || { echo "missing: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ ! -x $QALQAN ]]; then
  (cd "$ROOT" && cargo build --release -p qalqan)
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # PORT
  local i
  for ((i = 0; i < 200; i++)); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0
    sleep 0.2
  done
  echo "nothing answered on port $1" >&2
  return 1
}

# nginx_conf NAME PORT MASTER BODY: a complete nginx.conf (BODY goes in the http block).
nginx_conf() {
  local d=$WORK/$1
  mkdir -p "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
daemon off;
master_process $3;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
$( ((EUID == 0)) && echo "user root root;")
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_requests 1000000;
    default_type text/html;
    $4
}
EOF
  echo "$d"
}

# The origin, as in bench/run.sh: a 2048-byte body from memory, Cache-Control: no-store.
ORIGIN=$(port)
body=$(python3 -c 'import sys; sys.stdout.write(("Qalqan bench body: the quick brown fox jumps over the lazy dog. " * 40)[:2048])')
d=$(nginx_conf origin "$ORIGIN" on "server { listen 127.0.0.1:$ORIGIN;
        location = /nostore { add_header Cache-Control \"no-store\" always; return 200 \"$body\"; } }")
nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log" &
PIDS+=($!)
wait_http "$ORIGIN"

UPSTREAM="upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; keepalive_requests 1000000; }"
PASS='proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";'

# load PORT SECS: wrk against PORT for SECS seconds; prints the requests served.
load() {
  wrk -t1 -c16 -d"${2}s" "http://127.0.0.1:$1/nostore" | awk '/requests in/ {print $1}'
}

# measure LABEL PORT CMD...: runs CMD under callgrind, loads PORT, prints instructions/request.
measure() {
  if [[ ${CACHE:-} == 1 ]]; then
    measure_cache "$@"
    return
  fi
  local label=$1 p=$2 out=$WORK/cg.$1 pid n total
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$WORK/$label.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_http "$p"
  callgrind_control -z "$pid" >/dev/null 2>&1
  n=$(load "$p" "$SECS")
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # The dump made on request holds the counts since the reset; nginx may write more than one.
  total=$(for f in "$out".*; do callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}'; done | sort -n | tail -1)
  printf '%-28s %9d requests  %7d instructions per request\n' "$label" "$n" $((total / n))
  if [[ -n ${KEEP:-} ]]; then
    mkdir -p "$KEEP"
    cp "$out".* "$KEEP/"
  fi
}

# measure_cache LABEL PORT CMD...: two runs of CMD under cachegrind (see CACHE=1 above); prints
# instructions and first-level data-cache read and write misses per request.
measure_cache() {
  local label=$1 p=$2 secs out pid n totals=()
  shift 2
  for secs in "$SECS" $((SECS * 3)); do
    out=$WORK/cg.$label.$secs
    valgrind --tool=cachegrind --cache-sim=yes --cachegrind-out-file="$out" "$@" >"$WORK/$label.$secs.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "$p"
    n=$(load "$p" "$secs")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # "PROGRAM TOTALS" lists Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw, each with a percentage.
    totals+=("$n $(cg_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen {gsub(/\([^)]*\)|,/, ""); print $1, $5, $8; seen = 1}')")
    if [[ -n ${KEEP:-} ]]; then
      mkdir -p "$KEEP"
      cp "$out" "$KEEP/"
    fi
  done
  python3 - "$label" "${totals[@]}" <<'PY'
import sys
label, short, long = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
n = int(long[0]) - int(short[0])
ir, rd, wr = ((int(b) - int(a)) / n for a, b in zip(short[1:], long[1:]))
print(f"{label:<28} {n:9d} requests  {ir:7.0f} instructions  {rd:5.1f} D1 read + {wr:5.1f} write misses per request")
PY
}

for scen in miss drop; do
  np=$(port)
  qp=$(port)
  ap=$(port)
  if [[ $scen == miss ]]; then
    zone=""
    limit=""
    rates="rate_per_address = 1000000000
rate_per_prefix = 1000000000"
  else
    zone='limit_req_zone $binary_remote_addr zone=per_client:10m rate=1r/s;'
    limit='limit_req zone=per_client; limit_req_status 429; limit_req_log_level info;'
    rates="rate_per_address = 1
rate_per_prefix = 1000000"
  fi
  d=$(nginx_conf "nginx-$scen" "$np" off "$UPSTREAM $zone server { listen 127.0.0.1:$np; location / { $limit $PASS } }")
  measure "nginx $scen" "$np" nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log"
  cat >"$WORK/q-$scen.toml" <<EOF
[origin]
url = "http://127.0.0.1:$ORIGIN"
[[listen]]
address = "127.0.0.1:$qp"
[admin]
address = "127.0.0.1:$ap"
[server]
threads = 1
[[route]]
name = "default"
$rates
[block]
enabled = false
[access_log]
path = ""
EOF
  measure "qalqan $scen" "$qp" "$QALQAN" shield --config "$WORK/q-$scen.toml"
done
