#!/usr/bin/env bash
# Create .venv (if needed) and install archivox with its test extras.
# torch is installed first, pinned, so that pip takes the CPU wheel instead of
# resolving a bare "torch" to several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test,multilingual,dask]"
