#!/usr/bin/env bash
# Set up and run the test suite from a fresh clone: ./scripts/test.sh [pytest args]
# Installs into the project's .venv (see scripts/setup.sh), never into your system Python.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=1 bash scripts/setup.sh
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest "$@"
