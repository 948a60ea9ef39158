#!/usr/bin/env bash
# Table 2, Llama-3 Instruct (SPEC §6.2): α-PO / SimPO / DPO from Meta-Llama-3-8B-Instruct → AlpacaEval 2, Arena-Hard, MT-Bench.
# Usage: [VAR=value ...] run/llama3_instruct.sh   — variables: run/README.md and run/common.sh; DRY_RUN=1 prints the commands.
set -euo pipefail
# shellcheck source=run/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bench_pipeline table2 llama3_instruct llama3 "alphapo simpo dpo"
