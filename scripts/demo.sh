#!/usr/bin/env bash
# Set up .venv and run the whole pipeline end to end on the embedded synthetic dataset:
# synth -> check -> pictures -> build-patches -> train -> evaluate -> predict. Outputs: ./demo-output/
set -euo pipefail
cd "$(dirname "$0")/.."
BRAINPREP_EXTRAS=${BRAINPREP_EXTRAS:-test} bash scripts/setup.sh
. .venv/bin/activate
brainnet demo demo-output --overwrite "$@"
