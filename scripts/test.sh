#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine of this kind. Installs what the tests need
# first, so this one command is enough (it is the README's test command and CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests drive as real peers: Debian's Chromium for the challenge's
# end-to-end test; poppler-utils' pdftotext reads the evidence packages' report.pdf back.
need_apt=(chromium poppler-utils)
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
# An independent check of the atlas's hand-written OpenAPI 3.1 document.
python3 -c "import openapi_spec_validator" 2>/dev/null || python3 -m pip install -q openapi-spec-validator
# The OASIS STIX 2.1 validator and TAXII 2.1 client, run against the atlas (offline).
python3 -c "import stix2validator, taxii2client" 2>/dev/null || python3 -m pip install -q stix2-validator taxii2-client

# PostgreSQL and Redis run on every machine of this kind; tests that need them read these URLs
# and say clearly when they skip.
export QALQAN_TEST_POSTGRES="${QALQAN_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
export QALQAN_TEST_REDIS="${QALQAN_TEST_REDIS:-redis://127.0.0.1:6379}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
cargo test --workspace --doc --locked 2>&1 | tee -a "$log"

# The challenge in a real headless Chromium, against the binary the tests just built (in
# CARGO_TARGET_DIR when it is set).
cargo build -p qalqan --locked
qalqan_bin=${CARGO_TARGET_DIR:-target}/debug/qalqan
python3 tests/browser/challenge_e2e.py "$qalqan_bin" 2>&1 | tee -a "$log"
# The atlas dashboard in the same browser: log in, file an incident, switch language, with and
# without JavaScript (screenshots in target/test-artifacts/atlas/).
python3 tests/browser/atlas_e2e.py "$qalqan_bin" 2>&1 | tee -a "$log"

# The atlas's STIX export through the OASIS validator, its TAXII server through the OASIS client.
python3 tests/stix/validate.py "$qalqan_bin" 2>&1 | tee -a "$log"

# The atlas's OpenAPI document against the OpenAPI 3.1 schema (the Rust tests check that it
# names exactly the routes the router serves).
python3 - crates/atlas/src/openapi.json <<'PY' 2>&1 | tee -a "$log"
import sys
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename
spec, _ = read_from_filename(sys.argv[1])
validate(spec)
print("openapi: valid OpenAPI", spec["openapi"], "document,", len(spec["paths"]), "paths")
PY

# One closing line for the whole run, summed over every test binary.
awk '/^(test result|browser|stix):/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
