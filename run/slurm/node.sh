#!/usr/bin/env bash
# One node's share of run/slurm/multinode.sbatch (started by srun, one task per node): sets LAUNCH to this node's
# `accelerate launch` (machine rank = SLURM_NODEID, rendezvous at node 0) and runs the experiment script, which
# passes $LAUNCH to every train/sft/rm stage (run/common.sh). DRY_RUN=1 prints the command instead.
set -euo pipefail
RANK=${SLURM_NODEID:?node.sh runs under srun (or set SLURM_NODEID)}
NUM_PROCESSES=$((NNODES * GPUS_PER_NODE))
LAUNCH="accelerate launch --config_file $ACCELERATE_CONFIG --num_machines $NNODES --num_processes $NUM_PROCESSES"
LAUNCH+=" --machine_rank $RANK --main_process_ip $MAIN_ADDR --main_process_port $MAIN_PORT -m prefopt.cli"
COMMAND=(env "LAUNCH=$LAUNCH" bash "$SCRIPT" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${COMMAND[@]}"
  echo
else
  exec "${COMMAND[@]}"
fi
