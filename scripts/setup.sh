#!/usr/bin/env bash
# Create (or reuse) .venv and install brainprep + brainnet with the test extra (which pulls the train and
# remote extras: torch, tensorboard, numba, fsspec, aiohttp, s3fs, botocore; see the README's "What to install").
# torch is installed first, as $BRAINPREP_TORCH (default torch==2.13.0) from pip's configured index; only if
# that install fails is torch>=2.3 taken from PyTorch's CPU wheel index (download.pytorch.org/whl/cpu).
# Which build the pin gives depends on the index: the CI and development machines' index serves a CPU
# build of 2.13.0, plain PyPI on Linux a CUDA build of several GB. For the CPU build from PyPI, install it
# into .venv first (python3 -m venv .venv && .venv/bin/pip install --index-url
# https://download.pytorch.org/whl/cpu torch) and run this with BRAINPREP_TORCH=torch, a requirement it
# then finds satisfied (see the README's "Quick start").
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
