#!/usr/bin/env bash
# The GPU size of bench/trainer_vs_trl.py (Llama-3.2-1B-shaped random model, bf16, gradient checkpointing, 2k-token
# pairs) for prefopt's PreferenceTrainer and TRL's DPOTrainer, on a bare CUDA machine with no network: its Python
# needs torch (CUDA), transformers and accelerate; TRL, datasets and their pure-Python dependencies come from the
# wheels bench/fetch_gpu_wheels.sh downloaded into bench/wheels/, installed with pip --no-index into a temporary
# folder (nothing is installed into the machine's Python). Prints the Markdown table; JSON in
# results/bench/gpu.json (and in $OUT when that is set). Budget: under 8 minutes on one H100.
# Usage: bash bench/gpu.sh [extra trainer_vs_trl.py arguments, e.g. --steps 12]   (env: PYTHON, WHEELS)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$ROOT/bench/wheels}
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "bench/gpu.sh: no wheels in $WHEELS; run bash bench/fetch_gpu_wheels.sh on a machine with registry access" >&2
  exit 2
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device visible to torch')"
TARGET=$(mktemp -d "${TMPDIR:-/tmp}/prefopt-bench-XXXXXX")
trap 'rm -rf "$TARGET"' EXIT
"$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$TARGET" "$WHEELS"/*.whl
export PYTHONPATH="$TARGET:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
"$PY" -c "import trl, datasets, prefopt.train; print('bench/gpu.sh: trl', trl.__version__, '· datasets', datasets.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
OUTPUT=results/bench/gpu.json
status=0
timeout "${BENCH_TIMEOUT:-470}" "$PY" bench/trainer_vs_trl.py --sizes gpu --warmup 3 --output "$OUTPUT" "$@" || status=$?
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp -f "$OUTPUT" "$OUT/" 2>/dev/null || true
  cp -f results/bench/work/*.log "$OUT/" 2>/dev/null || true
fi
exit $status
