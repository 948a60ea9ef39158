#!/usr/bin/env bash
# Table 1, HH rw, K = 4 (SPEC §6.1): SFT → RM → SFT samples labelled by the RM → f-PO / DPO / EXO → samples → judge + mean reward.
# Usage: [VAR=value ...] run/hh_rw.sh   — variables: run/README.md and run/common.sh; DRY_RUN=1 prints the commands.
set -euo pipefail
# shellcheck source=run/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

table1_pipeline hh rw
