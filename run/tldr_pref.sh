#!/usr/bin/env bash
# Table 1, TL;DR pref (SPEC §6.1): SFT → RM → f-PO / DPO / EXO on the preference pairs → samples → judge + mean reward.
# Usage: [VAR=value ...] run/tldr_pref.sh   — variables: run/README.md and run/common.sh; DRY_RUN=1 prints the commands.
set -euo pipefail
# shellcheck source=run/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

table1_pipeline tldr pref
