"""One lifecycle for every stage that writes results (SPEC §9): provenance, resolved config, metrics and resume.

Every stage — train, sft, rm, sample, label, pref-to-rw, judge, bench-generate, bench-score, the small-world demo —
records where its output came from in one schema, :data:`RUN_INFO_KEYS`, written by :class:`StageRecord`:

- a stage whose output is a folder (a training run, a judge's output folder) writes ``<folder>/run_info.json``;
- a stage whose output is one file writes the sidecar ``<file>.meta.json`` (:func:`meta_path`), since several such
  files share a folder.

Both hold the same keys: ``schema`` (this format's version), ``stage``, ``command`` (argv), ``git`` (``sha`` and
``dirty``), ``packages`` (versions of :data:`PACKAGES`), ``python``, ``platform``, ``host``, ``world_size``, ``started``
and ``finished`` (UTC, ISO 8601, ``finished`` null until the stage ends) and ``wall_seconds``; a stage adds its own
fields beside them (data reports, settings, counts) and may not overwrite these. Every file is written atomically.

Training runs (:func:`start_run`, :func:`finish_run`) also get the resolved ``config.yaml``, ``metrics.jsonl``
(every log line, :class:`prefopt.trainer.JsonlMetricsCallback`), ``metrics.json`` (the final numbers), and resume
from the newest complete checkpoint (:func:`resolve_checkpoint`, :func:`prepare_run_dir`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Sequence

from prefopt.errors import ConfigError
from prefopt.io import write_json

logger = logging.getLogger(__name__)

#: Version of the provenance format; bump it when a key changes meaning.
RUN_INFO_SCHEMA = 1
#: The keys every provenance record holds (see the module docstring); stage-specific fields sit beside them.
RUN_INFO_KEYS = ("schema", "stage", "command", "git", "packages", "python", "platform", "host", "world_size",
                 "started", "finished", "wall_seconds")
#: Packages whose versions every record lists (None when not installed).
PACKAGES = ("prefopt", "torch", "transformers", "accelerate", "datasets", "tokenizers", "deepspeed", "trl", "numpy",
            "alpaca_eval", "fschat", "vllm")


def utc_now() -> str:
    """The current time as ISO 8601 UTC to the second, e.g. ``2026-12-01T20:15:03+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_revision(directory: Path = Path(__file__).resolve().parent) -> dict[str, Any]:
    """The commit the code ran from and whether the work tree had uncommitted changes (None outside a checkout)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=directory, capture_output=True, text=True)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, Optional[str]]:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_info(stage: str, *, command: Optional[Sequence[str]] = None, world_size: int = 1) -> dict[str, Any]:
    """A fresh provenance record of ``stage`` (every key of :data:`RUN_INFO_KEYS`; ``finished`` still null)."""
    return {
        "schema": RUN_INFO_SCHEMA,
        "stage": stage,
        "command": list(command) if command is not None else list(sys.argv),
        "git": git_revision(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "world_size": int(world_size),
        "started": utc_now(),
        "finished": None,
        "wall_seconds": None,
    }


def meta_path(out_path: str | os.PathLike) -> Path:
    """The provenance sidecar ``<out>.meta.json`` of a stage whose output is one file."""
    return Path(f"{os.fspath(out_path)}.meta.json")


class StageRecord:
    """The provenance record of one stage's output, kept in memory and written atomically at ``path``.

    ``path`` is ``<folder>/run_info.json`` for folder outputs or :func:`meta_path` of a file output. Only the main
    process writes (``is_main``). :meth:`update` adds stage fields and rewrites the file; :meth:`finish` stamps
    ``finished`` and ``wall_seconds``. Stage fields may not reuse a key of :data:`RUN_INFO_KEYS`.
    """

    def __init__(self, path: str | os.PathLike, stage: str, *, command: Optional[Sequence[str]] = None,
                 world_size: int = 1, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self.info = run_info(stage, command=command, world_size=world_size)
        self._started = time.time()

    def update(self, **fields: Any) -> dict[str, Any]:
        reserved = sorted(set(fields) & set(RUN_INFO_KEYS))
        if reserved:
            raise ValueError(f"stage fields may not overwrite the provenance keys {reserved}")
        self.info.update(fields)
        self.write()
        return self.info

    def finish(self, **fields: Any) -> dict[str, Any]:
        self.info["finished"] = utc_now()
        self.info["wall_seconds"] = round(time.time() - self._started, 3)
        return self.update(**fields)

    def write(self) -> None:
        if self.is_main:
            write_json(self.path, self.info)


# ----------------------------------------------------------------------------------------------------------------------
# Training runs: run folder, config.yaml, metrics, resume
# ----------------------------------------------------------------------------------------------------------------------

#: What a training run writes into its folder besides config.yaml and run_info.json (a fresh run refuses a folder
#: that holds any of them, unless train.overwrite).
RUN_OUTPUTS = ("metrics.jsonl", "margins.jsonl", "metrics.json", "final", "tensorboard")


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> Optional[str]:
    """The highest ``checkpoint-N`` that was written to the end (``trainer_state.json`` is the last file the Trainer
    writes), so a run killed in the middle of a save resumes from the previous, whole checkpoint."""
    checkpoints = sorted(
        (p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for checkpoint in reversed(checkpoints):
        if (checkpoint / "trainer_state.json").is_file():
            return str(checkpoint)
        logger.warning("skipping %s: incomplete (no trainer_state.json), the run was interrupted while saving", checkpoint)
    return None


def resolve_checkpoint(config) -> Optional[str]:
    """The checkpoint folder to resume from: ``train.resume_from_checkpoint`` as given, or for ``latest`` the newest
    complete one in the run folder; None to start fresh."""
    wanted = config.train.resume_from_checkpoint
    if not wanted:
        return None
    if wanted in ("latest", "true", "True"):
        found = latest_complete_checkpoint(config.run_dir)
        if found is None:
            raise ConfigError(f"train.resume_from_checkpoint: latest: no complete checkpoint-* in {config.run_dir}")
        return found
    if not (Path(wanted) / "trainer_state.json").is_file():
        raise ConfigError(f"train.resume_from_checkpoint: {wanted!r} is not a complete checkpoint folder")
    return wanted


def prepare_run_dir(config, checkpoint: Optional[str]) -> None:
    """Never mix two runs in one folder (main process only).

    A fresh run refuses a folder that already holds a run unless ``train.overwrite``; a resumed run keeps the folder
    and trims the JSONL logs back to the checkpoint's step, so the steps redone after resuming are not logged twice.
    """
    run_dir = config.run_dir
    existing = [p for p in run_dir.glob("*") if p.name in RUN_OUTPUTS or p.name.startswith("checkpoint-")]
    if checkpoint is None and existing:
        if not config.train.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run ({', '.join(sorted(p.name for p in existing)[:4])}); resume it with "
                f"--train.resume_from_checkpoint latest, choose another --train.run_name, or pass --train.overwrite"
            )
        for path in existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if checkpoint is not None:
        step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
        for name in ("metrics.jsonl", "margins.jsonl"):
            log = run_dir / name
            if log.is_file():
                kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= step]
                log.write_text("".join(line + "\n" for line in kept))


def start_run(config, command: Optional[Sequence[str]] = None, config_header: str = ""):
    """What every training stage does first: a check that all launched processes joined one job (the config's
    TrainingArguments created the distributed state), the checkpoint to resume from, and the run folder with its
    config.yaml and run_info.json. Returns ``(state, checkpoint, record)``, ``record`` the run's :class:`StageRecord`."""
    from accelerate import PartialState

    from prefopt.config import save_config

    state = PartialState()
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise ConfigError(
            f"launched {launched} processes but they did not join one training ({state.num_processes} per run): on "
            f"a machine without GPUs set --train.use_cpu true"
        )
    checkpoint = resolve_checkpoint(config)
    record = StageRecord(config.run_dir / "run_info.json", config.stage, command=command,
                         world_size=state.num_processes, is_main=state.is_main_process)
    if state.is_main_process:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        prepare_run_dir(config, checkpoint)
        save_config(config, config.run_dir / "config.yaml", header=config_header)
    state.wait_for_everyone()
    return state, checkpoint, record


def finish_run(trainer, record: StageRecord, metrics: dict) -> dict:
    """What every training stage does last: metrics.json with the wall time, and run_info.json stamped finished
    (main process). Returns ``metrics``."""
    metrics["wall_seconds"] = time.time() - record._started
    if trainer.is_world_process_zero():
        write_json(record.path.parent / "metrics.json", metrics)
    record.finish()
    return metrics

