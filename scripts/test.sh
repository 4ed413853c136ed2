#!/usr/bin/env bash
# Every test, against a local PostgreSQL (set up if none answers). Each test makes
# and drops its own database on that server.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DATABASE_URL:-}" ]; then
  export DATABASE_URL="$(scripts/ensure-postgres.sh)/postgres"
fi
# The Procfile test runs the formation under honcho, as the README says to.
export PULSE_HONCHO="${PULSE_HONCHO:-$(scripts/ensure-honcho.sh)}"
# The console's tests drive Debian's Chromium through chromedriver (installed if missing).
scripts/ensure-chromium.sh
cargo test --workspace --quiet "$@"
