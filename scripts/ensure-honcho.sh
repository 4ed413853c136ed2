#!/usr/bin/env bash
# Makes sure honcho (Python's Procfile runner, which the Procfile test runs) is
# installed: the one on PATH, or one in a virtualenv outside the clone (installing
# Debian's python3-venv first if need be). Prints the honcho command on stdout.
set -euo pipefail
VENV="${HONCHO_VENV:-/var/tmp/pulse-honcho}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if command -v honcho >/dev/null; then command -v honcho; exit 0; fi
if [ -x "$VENV/bin/honcho" ]; then echo "$VENV/bin/honcho"; exit 0; fi
echo "installing honcho into $VENV" >&2
if ! python3 -m venv "$VENV" >&2 2>&1; then
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >&2
  python3 -m venv "$VENV" >&2
fi
"$VENV/bin/pip" install --quiet honcho >&2
echo "$VENV/bin/honcho"
