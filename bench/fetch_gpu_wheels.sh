#!/usr/bin/env bash
# Run on a machine with registry access, before bench/gpu.sh: downloads the exact wheels of bench/gpu-wheels.txt for
# the GPU machine's Python (default CPython 3.12, manylinux x86_64) into bench/wheels/ (git-ignored; pass it to the
# GPU machine with the checkout). Usage: bash bench/fetch_gpu_wheels.sh [DEST]   (env: PYTHON, GPU_PYTHON_VERSION)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/bench/wheels}
PY=${PYTHON:-python3}
PYVER=${GPU_PYTHON_VERSION:-3.12}
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" -r "$ROOT/bench/gpu-wheels.txt"
ls -1 "$DEST"
du -sh "$DEST"
