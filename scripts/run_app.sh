#!/usr/bin/env bash
# Set up and run the Gradio app: ./scripts/run_app.sh  (then open http://127.0.0.1:7860)
# Installs into the project's .venv (see scripts/setup.sh), never into your system Python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python app.py "$@"
