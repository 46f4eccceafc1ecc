#!/usr/bin/env bash
# Set up .venv and run the linters and the whole test suite (the command README.md and .ci/run use).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -q "$@"
