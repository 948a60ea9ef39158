#!/usr/bin/env bash
# Table 2, Mistral Base (SPEC §6.2): α-PO / SimPO / DPO from zephyr-7b-sft-full (Mistral family) → AlpacaEval 2, Arena-Hard, MT-Bench.
# Usage: [VAR=value ...] run/mistral_base.sh   — variables: run/README.md and run/common.sh; DRY_RUN=1 prints the commands.
set -euo pipefail
# shellcheck source=run/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bench_pipeline table2 mistral_base mistral "alphapo simpo dpo"
