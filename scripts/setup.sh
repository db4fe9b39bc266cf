#!/usr/bin/env bash
# Install everything DeltaEdit needs (idempotent). DEV=1 adds the test tools and Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [ "${DEV:-0}" = "1" ]; then
  $PY -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; browser tests will be skipped" >&2
    else
      echo "warning: chromium missing (sudo apt-get install chromium); browser tests will be skipped" >&2
    fi
  fi
fi
