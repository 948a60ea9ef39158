#!/usr/bin/env bash
# Table 3, Gemma-2-9B-it (SPEC §6.3): γ-SimPO / SimPO / DPO / γ-DPO → AlpacaEval 2, Arena-Hard, MT-Bench.
# Usage: [VAR=value ...] run/gamma_gemma2.sh   — variables: run/README.md and run/common.sh; DRY_RUN=1 prints the commands.
set -euo pipefail
# shellcheck source=run/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bench_pipeline table3 gemma2 gemma2 "gamma_simpo simpo dpo gamma_dpo"
