#!/usr/bin/env bash
# Install everything DeltaEdit needs into the project's own virtual environment, ./.venv
# (idempotent; your system Python is left alone). DEV=1 adds the test tools and Debian's chromium.
# PYTHON picks the interpreter the venv is made from (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the project virtual environment .venv (from ${PYTHON:-python3})" >&2
  "${PYTHON:-python3}" -m venv .venv
fi
PY=.venv/bin/python
$PY -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [ "${DEV:-0}" = "1" ]; then
  $PY -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
      echo "setup: installing Debian's chromium for the browser tests (apt-get)" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; browser tests will be skipped" >&2
    else
      echo "warning: chromium missing (sudo apt-get install chromium); browser tests will be skipped" >&2
    fi
  fi
fi
