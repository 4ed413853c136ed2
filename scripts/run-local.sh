#!/usr/bin/env bash
# The whole fleet in one process on a local PostgreSQL (set up if none answers):
# migrations, workers for every queue, the scheduler and the web process on
# http://127.0.0.1:8080 (the operators' console at /, /internal/health, /metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DATABASE_URL:-}" ]; then
  SERVER="$(scripts/ensure-postgres.sh)"
  psql -X -q "$SERVER/postgres" -c "CREATE DATABASE pulse_fleet" >/dev/null 2>&1 || true
  export DATABASE_URL="$SERVER/pulse_fleet"
fi
export APP_ENV="${APP_ENV:-local}"
# Local signing secrets for the webhooks (real deployments set their own).
export PULSE__STRIPE__WEBHOOK_SECRETS="${PULSE__STRIPE__WEBHOOK_SECRETS:-whsec_local_dev}"
export PULSE__WATCHERS__WEBHOOK_SECRET="${PULSE__WATCHERS__WEBHOOK_SECRET:-local-dev-secret}"
# The operator credential of the console and /metrics (user any, password this).
export PULSE__WEB__OPERATOR_TOKEN="${PULSE__WEB__OPERATOR_TOKEN:-local-operator}"
echo "console: http://127.0.0.1:8080/ (any user name, password: $PULSE__WEB__OPERATOR_TOKEN)" >&2
cargo build --release --quiet
# Local sealing key (tokens of the demo's broker connection are stored sealed) and the
# local OAuth client's secret (config/local.toml [brokers.clients.schwab]).
export PULSE_SECRETS_KEY="${PULSE_SECRETS_KEY:-bG9jYWwtZGV2LWtleS1ub3QtZm9yLXByb2R1Y3Rpb24=}"
export PULSE_LOCAL_OAUTH_SECRET="${PULSE_LOCAL_OAUTH_SECRET:-local-client-secret}"
# The demo desk's paper-venue credential (the paper venue accepts any key).
export PULSE_DEMO_PAPER_SECRET="${PULSE_DEMO_PAPER_SECRET:-local-paper-secret}"
exec "${CARGO_TARGET_DIR:-target}/release/pulse-fleet" all --demo "$@"
