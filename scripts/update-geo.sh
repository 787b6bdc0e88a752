#!/usr/bin/env bash
# Re-fetches the country and ASN data from the npm registry and rebuilds the compact files in
# data/geo/ (embedded into the `qalqan` binary at the next build).
#
#   ./scripts/update-geo.sh                 # newest versions on npm
#   COUNTRY_VERSION=2.3.2026061719 ASN_VERSION=2.3.2026061719 ./scripts/update-geo.sh
#   OUT=/var/lib/qalqan/geo ./scripts/update-geo.sh   # fresher files for `[geo] dir`, repo untouched
#
# Needs node/npm and cargo. Nothing is run from the packages (--ignore-scripts): they only carry
# data files.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTRY_PKG=@ip-location-db/geo-whois-asn-country-mmdb
ASN_PKG=@ip-location-db/asn
OUT="${OUT:-data/geo}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Build the converter first, so a failed compile leaves the data untouched.
cargo build --release -p qalqan --locked
qalqan="$PWD/target/release/qalqan"

(
  cd "$tmp"
  npm init -y >/dev/null
  npm install --ignore-scripts --no-audit --no-fund \
    "$COUNTRY_PKG${COUNTRY_VERSION:+@$COUNTRY_VERSION}" \
    "$ASN_PKG${ASN_VERSION:+@$ASN_VERSION}"
)
mods="$tmp/node_modules"
version() { node -p "require('$mods/$1/package.json').version"; }
cv=$(version "$COUNTRY_PKG")
av=$(version "$ASN_PKG")

"$qalqan" geo build \
  --country-mmdb "$mods/$COUNTRY_PKG/geo-whois-asn-country.mmdb" \
  --asn-csv-v4 "$mods/$ASN_PKG/asn-ipv4.csv" \
  --asn-csv-v6 "$mods/$ASN_PKG/asn-ipv6.csv" \
  --out "$tmp/out" \
  --note "country: npm $COUNTRY_PKG $cv, CC0-1.0; source data CC BY 4.0 by NRO (https://www.nro.net)" \
  --note "ASN: npm $ASN_PKG $av, CC BY 4.0 by RouteViews (https://www.routeviews.org), DB-IP (https://db-ip.com) and NRO (https://www.nro.net)" \
  --note "converted by qalqan geo build (scripts/update-geo.sh); see data/geo/README.md"

mkdir -p "$OUT"
mv "$tmp/out/country.txt.gz" "$tmp/out/asn.txt.gz" "$OUT/"
ls -l "$OUT"/*.txt.gz
"$qalqan" geo lookup --dir "$OUT" 1.1.1.1 8.8.8.8 95.56.0.1 2001:4860:4860::8888

echo
echo "Fetched $COUNTRY_PKG $cv and $ASN_PKG $av on $(date -u +%Y-%m-%d)."
if [ "$OUT" = data/geo ]; then
  echo "Update the versions and the date in data/geo/README.md, then rebuild qalqan to embed the new data."
fi
