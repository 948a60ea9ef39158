#!/usr/bin/env bash
# Table 3, Qwen2.5-7B-Instruct (SPEC §6.3): on-policy UltraFeedback data (prefopt onpolicy) → γ-SimPO / SimPO / DPO /
# γ-DPO → AlpacaEval 2, Arena-Hard, MT-Bench.
# Usage: [VAR=value ...] run/gamma_qwen2.sh   — variables: run/README.md and run/common.sh; DRY_RUN=1 prints the commands.
#   ONPOLICY_ARGS  extra flags for prefopt onpolicy (e.g. "--backend vllm --limit 1000"; defaults: SimPO's recipe)
set -euo pipefail
# shellcheck source=run/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# 1. The γ-PO paper's unreleased "self-built on-policy UltraFeedback" data: SimPO's recipe on Qwen2.5 (resumable)
onpolicy_data="$RESULTS/table3/qwen2_onpolicy.jsonl"
read -r -a onpolicy_args <<< "${ONPOLICY_ARGS:-}"
step "onpolicy qwen2" "$onpolicy_data" -- \
    "${PREFOPT_CMD[@]}" onpolicy Qwen/Qwen2.5-7B-Instruct "$onpolicy_data" "${onpolicy_args[@]}"

# 2. Train on it and benchmark
BENCH_TRAIN_ARGS=(--data.train "$onpolicy_data")
bench_pipeline table3 qwen2 qwen2 "gamma_simpo simpo dpo gamma_dpo"
