#!/usr/bin/env bash
# Create (or reuse) .venv and install brainprep + brainnet with the test extra (which pulls the train and
# remote extras: torch, tensorboard, fsspec, aiohttp, s3fs; see the README's "What to install").
# The CPU build of torch is installed first: a plain `pip install torch` would pull a multi-GB CUDA build.
# Set BRAINPREP_TORCH to another requirement (e.g. "torch" for CUDA) to override.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q "${BRAINPREP_TORCH:-torch==2.13.0}" || python -m pip install -q \
    --index-url https://download.pytorch.org/whl/cpu "torch>=2.3"
python -m pip install -q -e ".[${BRAINPREP_EXTRAS:-test}]"
python -c "import brainprep, brainnet, torch; print(f'brainprep {brainprep.__version__}, torch {torch.__version__}')"
