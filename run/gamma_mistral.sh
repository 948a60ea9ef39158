#!/usr/bin/env bash
# Table 3, Mistral-7B-Instruct-v0.2 (SPEC §6.3): γ-SimPO / SimPO / DPO / γ-DPO → AlpacaEval 2, Arena-Hard, MT-Bench.
# Usage: [VAR=value ...] run/gamma_mistral.sh   — variables: run/README.md and run/common.sh; DRY_RUN=1 prints the commands.
set -euo pipefail
# shellcheck source=run/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bench_pipeline table3 mistral mistral "gamma_simpo simpo dpo gamma_dpo"
