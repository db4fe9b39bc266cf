#!/usr/bin/env bash
# Set up and run the test suite from a fresh clone: ./scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=1 bash scripts/setup.sh
python3 -m ruff check .
python3 -m pytest "$@"
