#!/usr/bin/env bash
# Where a drain's time goes (issue 14, part 6). Starts a PostgreSQL cluster of its own
# (this machine's settings: autovacuum off, shared_buffers 128 MB, fsync on) with
# pg_stat_statements loaded, runs `pulse-fleet bench queue --only drain` on it once
# plain and once under `perf record -a`, and prints:
#   - the drain rate of each run;
#   - the statements by total time (pg_stat_statements);
#   - CPU samples by process (the database's backends against the worker);
#   - the top functions of each side.
# usage: bench/drain-profile.sh [JOBS] (default 100000). Needs perf and a release build.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"   # the binary reads config/ from here
JOBS="${1:-100000}"
BIN="${PULSE_FLEET_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/pulse-fleet}"
[ -x "$BIN" ] || { echo "build the release binary first ($BIN)" >&2; exit 1; }
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
PORT="${PORT:-55439}"
DIR="$(mktemp -d /var/tmp/pulse-drain-profile.XXXX)"
# PostgreSQL refuses to run as root: as root, the cluster belongs to `postgres`.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
trap 'as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT

as_pg "$PGBIN/initdb" -D "$DIR/data" -U postgres -A trust >/dev/null
as_pg tee -a "$DIR/data/postgresql.conf" >/dev/null <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
autovacuum = off
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
EOF
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/data/log" -w start >/dev/null
SQL="psql -X -q -h 127.0.0.1 -p $PORT -U postgres"
DB=pulse_fleet_drain
export APP_ENV=local RUST_LOG=warn DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/$DB"
$SQL -d postgres -c "CREATE DATABASE $DB" >/dev/null
"$BIN" migrate >/dev/null
$SQL -d "$DB" -c "CREATE EXTENSION pg_stat_statements" >/dev/null

# The jobs are enqueued first, as the peer harness does (one fleet.enqueue per row, as
# a trigger would); only the drain is timed and profiled.
enqueue() {
  $SQL -d "$DB" -c "TRUNCATE fleet.jobs, fleet.stat_deltas, fleet.stats, fleet.workers" \
    -c "SELECT count(fleet.enqueue('canary', jsonb_build_object('i', i))) FROM generate_series(1, $JOBS) i" \
    -c "VACUUM ANALYZE" >/dev/null
  $SQL -d "$DB" -c "SELECT pg_stat_statements_reset()" -c "SELECT pg_stat_reset_shared('wal')" >/dev/null
}
# The drain, after what its arguments say to run it under (nothing, or perf).
drain() { "$@" "$BIN" bench peer drain "$JOBS" --concurrency "${CONCURRENCY:-2000}" --batch "${BATCH:-1000}" | grep RESULT; }

echo "== plain run"
enqueue
drain
echo "== under perf record -a -g"
enqueue
drain perf record -a -g -o "$DIR/perf.data" -- 2>"$DIR/perf.err"

echo "== statements by total time (pg_stat_statements, the profiled drain)"
$SQL -d "$DB" -c "
  SELECT calls, round(total_exec_time::numeric, 1) AS total_ms,
         round((total_exec_time / calls)::numeric, 3) AS mean_ms, rows,
         round((1000 * total_exec_time / $JOBS)::numeric, 2) AS us_per_job,
         left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query
  FROM pg_stat_statements WHERE calls > 0
  ORDER BY total_exec_time DESC LIMIT 12"
$SQL -d "$DB" -c "SELECT wal_records, pg_size_pretty(wal_bytes) AS wal, round(wal_bytes / $JOBS.0) AS wal_bytes_per_job FROM pg_stat_wal"

echo "== CPU samples by process"
perf report -i "$DIR/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8 || true
echo "== top functions in the database"
perf report -i "$DIR/perf.data" --no-children --comm postgres --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25 || true
echo "== top functions in the worker"
perf report -i "$DIR/perf.data" --no-children --comm pulse-fleet,tokio-rt-worker --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25 || true
