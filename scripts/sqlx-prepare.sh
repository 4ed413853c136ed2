#!/usr/bin/env bash
# The query data sqlx's macros check every query against when they compile
# (`.sqlx/`, committed; builds read it offline: see .cargo/config.toml).
#   scripts/sqlx-prepare.sh          regenerate .sqlx/ after changing a query or the schema
#   scripts/sqlx-prepare.sh --check  fail if .sqlx/ is not what the queries and the
#                                    migrations give (CI runs this)
# Both describe every query against a fresh database migrated with migrations/ on the
# local server (set up if none answers), with sqlx-cli (installed under
# $SQLX_CLI_ROOT, outside the clone, when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SQLX_VERSION=0.9.0
SQLX_CLI_ROOT="${SQLX_CLI_ROOT:-/var/tmp/sqlx-cli}"
export PATH="$SQLX_CLI_ROOT/bin:$PATH"
if ! cargo sqlx --version 2>/dev/null | grep -q "$SQLX_VERSION"; then
  echo "installing sqlx-cli $SQLX_VERSION into $SQLX_CLI_ROOT" >&2
  # A debug build: it only drives `cargo check`, and compiles in about half the time.
  cargo install sqlx-cli@"$SQLX_VERSION" --locked --quiet --debug --no-default-features \
    --features postgres,rustls --root "$SQLX_CLI_ROOT"
fi
server="${PULSE_TEST_SERVER:-$(scripts/ensure-postgres.sh)}"
export DATABASE_URL="$server/pf_sqlx_prepare_$$"
trap 'sqlx database drop -y >/dev/null 2>&1 || true' EXIT
sqlx database create
sqlx migrate run --source migrations >/dev/null
cargo sqlx prepare --workspace "$@" -- --all-targets --quiet
