#!/usr/bin/env bash
# Pulse Fleet as a peer of the shared harness (copied next to the other run-*.sh by
# compare.sh). Same workload and drivers as every peer: common/lib.sh.
source "$(dirname "$0")/common/lib.sh"
ensure_venv   # the latency producer (common/latency_producer.py) needs psycopg
DB=peer_pulse_fleet
export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
METRICS="${METRICS:-drain latency trigger steady}"
PF_CONCURRENCY="${PF_CONCURRENCY:-2000}"
PF_BATCH="${PF_BATCH:-1000}"
BIN="${PULSE_FLEET_BIN:?set PULSE_FLEET_BIN to the release binary}"
pf_worker() { "$BIN" bench peer "$1" "$2" --concurrency "$PF_CONCURRENCY" --batch "$PF_BATCH"; }
WORKER=pf_worker
CLEAN_SQL="TRUNCATE fleet.jobs, fleet.stat_deltas, fleet.stats, fleet.workers"
PEER=pulse-fleet
SETTINGS="{\"concurrency\":$PF_CONCURRENCY,\"batch\":$PF_BATCH}"
export RUST_LOG=warn APP_ENV=local

if [ "${SKIP_SETUP:-0}" != 1 ] || ! q "$DB" "select 1" >/dev/null 2>&1; then
  recreate_db "$DB"
  "$BIN" migrate >/dev/null
  q "$DB" "
    -- what a trigger calls: our one way in
    CREATE FUNCTION bench_enqueue(p json) RETURNS void LANGUAGE sql AS
      \$\$ SELECT fleet.enqueue('canary', p::jsonb) \$\$;
    CREATE FUNCTION bench_backlog() RETURNS bigint LANGUAGE sql AS
      \$\$ SELECT count(*) FROM fleet.jobs WHERE state <> 'completed' \$\$;"
fi
for rep in $(seq 1 "$REPS"); do
  echo "== pulse-fleet rep $rep/$REPS"
  for m in $METRICS; do
    if [ "$m" = trigger ]; then m_trigger "$PEER"; else "m_$m" "$PEER" "$SETTINGS"; fi
  done
done
