"""run/slurm/multinode.sbatch: a dry run prints one `accelerate launch` per node with the rendezvous from Slurm's
variables, and the multi-node ZeRO-3 accelerate config is a valid ZeRO-3 config."""

import os
import shlex
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_prints_one_launch_per_node():
    env = {**os.environ, "DRY_RUN": "1", "SLURM_NNODES": "3", "SLURM_JOB_NODELIST": "gpu-a,gpu-b,gpu-c",
           "GPUS_PER_NODE": "4", "MAIN_PORT": "29611"}
    out = subprocess.run(["bash", "run/slurm/multinode.sbatch", "run/llama3_base.sh"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 3
    for rank, command in enumerate(commands):
        launch = shlex.split(command[1].removeprefix("LAUNCH="))
        assert command[0] == "env" and command[2:] == ["bash", "run/llama3_base.sh"]
        assert launch[:2] == ["accelerate", "launch"] and launch[-2:] == ["-m", "prefopt.cli"]
        option = {launch[i]: launch[i + 1] for i in range(2, len(launch) - 2, 2)}
        assert option == {"--config_file": "accelerate_configs/deepspeed_zero3_multinode.yaml", "--num_machines": "3",
                          "--num_processes": "12", "--machine_rank": str(rank), "--main_process_ip": "gpu-a",
                          "--main_process_port": "29611"}


def test_multinode_config_is_zero3_over_several_machines():
    config = yaml.safe_load((ROOT / "accelerate_configs" / "deepspeed_zero3_multinode.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == 3
    assert config["num_machines"] > 1 and config["rdzv_backend"] == "c10d"
    assert config["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
    single = yaml.safe_load((ROOT / "accelerate_configs" / "deepspeed_zero3.yaml").read_text())
    same = {k for k in single if k not in ("num_machines", "num_processes", "rdzv_backend", "same_network")}
    assert all(config[k] == single[k] for k in same)
