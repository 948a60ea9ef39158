#!/usr/bin/env bash
# Table 2, Mistral Instruct (SPEC §6.2): α-PO / SimPO / DPO from Mistral-7B-Instruct-v0.2 → AlpacaEval 2, Arena-Hard, MT-Bench.
# Usage: [VAR=value ...] run/mistral_instruct.sh   — variables: run/README.md and run/common.sh; DRY_RUN=1 prints the commands.
set -euo pipefail
# shellcheck source=run/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bench_pipeline table2 mistral_instruct mistral "alphapo simpo dpo"
