#!/usr/bin/env bash
# Runs the shared peer harness (../shared/bench/peers, read-only) with Pulse Fleet
# added as a peer, in one interleaved run: a scratch copy gets our run-pulse-fleet.sh.
# usage: bench/peers/compare.sh   PEERS="pulse-fleet graphile apalis pgqueuer" REPS=3
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SHARED="${SHARED_PEERS:-$ROOT/../shared/bench/peers}"
SCRATCH="${SCRATCH:-/var/tmp/pulse-fleet-peers}"
mkdir -p "$SCRATCH"
# Keep node_modules, .venv and Rust targets between runs; refresh the scripts.
rsync -a --exclude results --exclude logs "$SHARED/" "$SCRATCH/"
chmod -R u+w "$SCRATCH"
cp "$ROOT/bench/peers/run-pulse-fleet.sh" "$SCRATCH/"
chmod +x "$SCRATCH"/*.sh
(cd "$ROOT" && cargo build --release --quiet)
export PULSE_FLEET_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/pulse-fleet"
export PULSE_CONFIG_DIR="$ROOT/config"
# apalis-postgres checks its query macros online when DATABASE_URL is set at build time.
export SQLX_OFFLINE=true
cd "$SCRATCH"
PEERS="${PEERS:-pulse-fleet graphile apalis pgqueuer}" REPS="${REPS:-3}" ./run-all.sh
