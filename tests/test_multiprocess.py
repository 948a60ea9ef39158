"""Data parallelism changes the wall clock, not the training: two processes with per-device batch 2 and no
accumulation follow the same loss trajectory as one process with batch 2 and two accumulation steps.

Both set-ups run the real ``prefopt train`` command (two ranks through ``torchrun``, gloo on a CPU) on a tiny GPT-NeoX
and 32 synthetic pairs, with a learning rate high enough that the trajectory moves, and the per-step log lines of
``<run>/metrics.jsonl`` and the per-pair rows of ``<run>/margins.jsonl`` are compared.

Why the two set-ups see the same examples in each optimiser step, with default settings (transformers 5.23,
accelerate 1.15):

* Order. ``Trainer`` builds a ``RandomSampler``; ``accelerator.prepare`` swaps it for accelerate's
  ``SeedableRandomSampler`` (``use_seedable_sampler`` defaults to true), seeded with ``data_seed`` or, when that is
  unset, ``torch.initial_seed()``, which ``set_seed(train.seed)`` made the same on every rank and in both set-ups.
  Every process therefore draws the same permutation and cuts it into the same batches of 2: b0, b1, b2, ...
* Sharding. With ``split_batches=False`` and ``dispatch_batches=False`` (the defaults for a map-style dataset),
  ``BatchSamplerShard`` gives rank r the batches r, r + 2, r + 4, ... So optimiser step k is b(2k) on rank 0 and
  b(2k+1) on rank 1, and in the single process the two micro-batches of step k are b(2k), b(2k+1): the same four
  pairs. (``split_batches=True`` would instead cut each batch of 2 across ranks and change the pairing.)
* Gradient. ``PreferenceTrainer.loss_is_scaled_for_ga = False``, so the Trainer divides each micro-batch mean by the
  accumulation steps: one process accumulates (g(b2k) + g(b2k+1)) / 2; DDP averages the two ranks' g over the
  ranks: the same update. There is no dropout in the tiny GPT-NeoX, so no random stream differs either.
* Logged loss. Per rank the Trainer sums the (scaled) micro-batch losses of a step and ``nested_gather(...).mean()``
  averages over ranks: (l(b2k) + l(b2k+1)) / 2 in both. The reward metrics are gathered across ranks per micro-batch
  and averaged over the micro-batches of the logging window: again the mean over the same four pairs.

So no special setting is needed for the data, and the tolerance stays tight (the two set-ups differ only in the
order of float32 additions: observed agreement ~1e-8 relative). On a machine without GPUs the processes only join one
gloo job when ``TrainingArguments(use_cpu=True)``; otherwise each trains alone on the full data and both write the
same run folder. ``prefopt train`` now sets it by itself when several processes are launched and CUDA is absent, so
these runs leave ``train.use_cpu`` at its default, and the tests assert the world size so that the silent fallback
would fail them rather than pass vacuously.

The four runs (2 losses x 2 set-ups) start together from one module fixture: their start-up is mostly single-threaded
imports, so overlapping them keeps the file at about 45-55 s on a 2-core machine instead of about 65 s one by one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

STEPS = 4
N_ROWS = 32
LOSSES = {
    "dpo": {"name": "dpo", "beta": 0.1},
    "simpo": {"name": "simpo", "beta": 2.0, "gamma_beta_ratio": 0.5},
}
# Per-step log entries compared between the two set-ups.
COMPARED = (
    "loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
)
RTOL, ATOL = 1e-4, 1e-7
TIMEOUT_S = 300

# Four `prefopt train` runs, two of them with two torchrun ranks: about a minute on 2 CPU cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model, tiny_words):
    """The session's tiny GPT-NeoX + tokenizer (tests/conftest.py), 32 synthetic pairs in its words, and one YAML
    config per loss."""
    root = tmp_path_factory.mktemp("multiprocess")
    model = tiny_model
    rng = random.Random(0)

    def text(low, high):
        return " ".join(rng.choice(tiny_words) for _ in range(rng.randint(low, high)))

    data = root / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": text(3, 8), "chosen": " " + text(2, 8), "rejected": " " + text(2, 8)}) + "\n"
            for _ in range(N_ROWS)
        )
    )
    configs = {}
    for key, loss in LOSSES.items():
        config = {
            "model": {"name_or_path": str(model)},
            "data": {"train": str(data), "max_length": 64, "max_prompt_length": 32},
            "loss": loss,
            "train": {
                "seed": 42, "learning_rate": 1e-3, "warmup_ratio": 0.0, "lr_scheduler_type": "constant",
                "max_steps": STEPS, "logging_steps": 1, "per_device_train_batch_size": 2, "report_to": ["none"],
                "save_final_model": False,  # use_cpu left unset: see the module docstring
            },
        }
        configs[key] = root / f"{key}.yaml"
        configs[key].write_text(yaml.safe_dump(config))
    return root, configs


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all sockets held open until every port is picked)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _launch(root: Path, config: Path, run: str, nproc: int, accumulation: int, port: int):
    """Start `prefopt train` on nproc processes (torchrun when nproc > 1) without waiting for it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                     "--master_addr", "127.0.0.1", "--master_port", str(port)]
    run_dir = root / run
    command = [*launcher, "-m", "prefopt.cli", "train", str(config),
               "--output_dir", str(run_dir), "--gradient_accumulation_steps", str(accumulation)]
    with open(root / f"{run}.log", "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # own process group: a timeout kills torchrun's workers too
    return process, run_dir, command


@pytest.fixture(scope="module")
def runs(setup):
    """All four runs at once: their start-up (imports) is single-threaded, so overlapping them roughly halves the
    wall time on a 2-core machine. Returns {(loss, processes): (run folder, exit status, command, log file)}."""
    root, configs = setup
    started, ports = {}, iter(_free_ports(2 * len(LOSSES)))
    try:
        for loss in LOSSES:
            started[loss, 1] = _launch(root, configs[loss], f"{loss}-1proc-ga2", 1, 2, next(ports))
            started[loss, 2] = _launch(root, configs[loss], f"{loss}-2proc-ga1", 2, 1, next(ports))
        deadline = time.monotonic() + TIMEOUT_S
        finished = {}
        for key, (process, run_dir, command) in started.items():
            try:
                status = process.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                status = None  # killed below; the test reports the log
            finished[key] = (run_dir, status, command, root / f"{run_dir.name}.log")
        return finished
    finally:  # a timeout or an interrupted session leaves no training processes behind
        for process, _, _ in started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _finished_run(runs, loss: str, nproc: int) -> Path:
    run_dir, status, command, log = runs[loss, nproc]
    assert status == 0, f"{' '.join(command)} failed ({status}):\n{log.read_text()[-6000:]}"
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["world_size"] == nproc, (
        f"{run_dir.name}: world_size {info['world_size']}, not {nproc}: the processes did not form one process group"
    )
    return run_dir


def _step_logs(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss" in row]  # the per-step training log lines, not the final summary


def _pairs_by_step(run_dir: Path) -> dict[int, dict[int, float]]:
    """{optimiser step: {example index: reward gap}} from the per-pair margin log."""
    out: dict[int, dict[int, float]] = {}
    for line in (run_dir / "margins.jsonl").read_text().splitlines():
        row = json.loads(line)
        step = out.setdefault(row["step"], {})
        assert row["example"] not in step, f"example {row['example']} twice in step {row['step']} of {run_dir.name}"
        step[row["example"]] = row["reward_gap"]
    return out


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_two_processes_match_one_process_with_doubled_accumulation(runs, loss):
    single, double = _finished_run(runs, loss, 1), _finished_run(runs, loss, 2)

    # Each optimiser step saw the same four pairs, with the same reward gaps.
    pairs_1, pairs_2 = _pairs_by_step(single), _pairs_by_step(double)
    assert sorted(pairs_1) == sorted(pairs_2) == list(range(1, STEPS + 1))
    for step in pairs_1:
        assert len(pairs_1[step]) == 4, f"step {step}: {len(pairs_1[step])} pairs instead of 2 x 2"
        assert sorted(pairs_1[step]) == sorted(pairs_2[step]), f"step {step}: the set-ups trained on other pairs"
        for example, gap in pairs_1[step].items():
            assert pairs_2[step][example] == pytest.approx(gap, rel=RTOL, abs=ATOL), f"step {step}, example {example}"
    every_example = [e for step in pairs_1.values() for e in step]
    assert len(set(every_example)) == len(every_example) == 4 * STEPS  # no pair twice within the half epoch

    # Per-step logged loss and metrics agree to float32 summation order.
    logs_1, logs_2 = _step_logs(single), _step_logs(double)
    assert [row["step"] for row in logs_1] == [row["step"] for row in logs_2] == list(range(1, STEPS + 1))
    for row_1, row_2 in zip(logs_1, logs_2):
        for key in COMPARED:
            assert row_2[key] == pytest.approx(row_1[key], rel=RTOL, abs=ATOL), f"step {row_1['step']}: {key}"

    # ... and the trajectory really moves, so that the agreement says something: every step applies a real update
    # (non-zero gradient at learning rate 1e-3), the loss changes from step to step, and for DPO, whose rewards are
    # log-ratios to the frozen reference, the rewards leave zero once the policy has taken a step.
    losses = [row["loss"] for row in logs_1]
    assert max(losses) - min(losses) > 1e-3, f"loss does not change across steps: {losses}"
    assert all(row["grad_norm"] > 1e-3 and row["learning_rate"] == pytest.approx(1e-3) for row in logs_1), logs_1
    if loss == "dpo":
        assert logs_1[0]["rewards/chosen"] == 0.0
        assert all(abs(row["rewards/chosen"]) > 1e-4 for row in logs_1[1:]), [r["rewards/chosen"] for r in logs_1]
