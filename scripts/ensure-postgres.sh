#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432: starts the local cluster
# if it is down, installs PostgreSQL (Debian packages) if it is missing. Prints the
# server URL to use (without a database) on stdout; everything else goes to stderr.
set -euo pipefail
HOST=127.0.0.1 PORT=5432
URL_TRUST="postgres://postgres@$HOST:$PORT"
URL_PASSWORD="postgres://postgres:postgres@$HOST:$PORT"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

answers() { command -v psql >/dev/null && psql -X -q "$1/postgres" -c "select 1" >/dev/null 2>&1; }
listening() { command -v pg_isready >/dev/null && pg_isready -q -h "$HOST" -p "$PORT"; }

start_clusters() {
  command -v pg_lsclusters >/dev/null || return 1
  local v
  for v in $(ls /etc/postgresql 2>/dev/null); do
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$v" main start >&2 2>&1 || true
  done
  for _ in $(seq 1 50); do listening && return 0; sleep 0.2; done
  return 1
}

if ! listening; then
  echo "PostgreSQL is not answering on $HOST:$PORT; starting it" >&2
  if ! start_clusters; then
    echo "installing PostgreSQL from Debian's packages" >&2
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-contrib >&2
    start_clusters || { echo "could not start PostgreSQL" >&2; exit 1; }
  fi
fi

if answers "$URL_TRUST"; then echo "$URL_TRUST"; exit 0; fi
if answers "$URL_PASSWORD"; then echo "$URL_PASSWORD"; exit 0; fi
# A fresh Debian install authenticates TCP by password: give postgres a local one.
echo "setting a local password for the postgres role" >&2
$SUDO su postgres -c "psql -X -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >&2
answers "$URL_PASSWORD" || { echo "cannot log in to PostgreSQL on $HOST:$PORT" >&2; exit 1; }
echo "$URL_PASSWORD"
