#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine of this kind. Installs what the tests need
# first, so this one command is enough (it is the README's test command and CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests drive as real peers: Debian's Chromium for the challenge's
# end-to-end test.
need_apt=(chromium)
missing=()
for pkg in "${need_apt[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# The DevTools client the browser test uses.
python3 -c "import websocket" 2>/dev/null || python3 -m pip install -q websocket-client

# PostgreSQL and Redis run on every machine of this kind; tests that need them read these URLs
# and say clearly when they skip.
export QALQAN_TEST_POSTGRES="${QALQAN_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
export QALQAN_TEST_REDIS="${QALQAN_TEST_REDIS:-redis://127.0.0.1:6379}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
cargo test --workspace --doc --locked 2>&1 | tee -a "$log"

# The challenge in a real headless Chromium, against the binary the tests just built.
cargo build -p qalqan --locked
python3 tests/browser/challenge_e2e.py target/debug/qalqan 2>&1 | tee -a "$log"

# One closing line for the whole run, summed over every test binary.
awk '/^(test result|browser):/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
