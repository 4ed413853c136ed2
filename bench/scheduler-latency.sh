#!/usr/bin/env bash
# Why the scheduler's tick loop is ours and not tokio-cron-scheduler's (ARCHITECTURE.md,
# "Schedules"): how long after each tick of a per-second schedule each one acts, over
# 20 s. Ours: from the tick to the job's row (enqueued); tokio-cron-scheduler: from the
# tick to its callback (before any enqueue). Needs a built target/release/pulse-fleet.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER="${PULSE_TEST_SERVER:-$(scripts/ensure-postgres.sh)}"
DB=pf_scheduler_latency
psql -X -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
export DATABASE_URL="$SERVER/$DB" APP_ENV=local RUST_LOG=warn
BIN="${CARGO_TARGET_DIR:-target}/release/pulse-fleet"
"$BIN" migrate >/dev/null
PULSE__SCHEDULES__PROBE__CRON="* * * * * *" PULSE__SCHEDULES__PROBE__JOB=canary \
  timeout 21 "$BIN" scheduler >/dev/null 2>&1 || true
psql -X -q -At "$DATABASE_URL" -c "
  WITH d AS (SELECT extract(epoch FROM created_at - substr(idempotency_key, 7)::timestamptz) * 1000 AS ms
             FROM fleet.jobs WHERE idempotency_key LIKE 'probe:%')
  SELECT format('ours, ''* * * * * *'' for 20 s: %s ticks, enqueued after the tick ms: min %s p50 %s mean %s max %s',
                count(*), round(min(ms)::numeric, 1), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
                round(avg(ms)::numeric, 1), round(max(ms)::numeric, 1)) FROM d"
psql -X -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB"
cargo run --quiet --release --manifest-path bench/scheduler-latency/Cargo.toml
