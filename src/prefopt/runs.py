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
        self.info["wall_seconds"] = round(self.elapsed(), 3)
        return self.update(**fields)

    def elapsed(self) -> float:
        """Seconds since the record was created (the stage's start)."""
        return time.time() - self._started

    def write(self) -> None:
        if self.is_main:
            write_json(self.path, self.info)


# ----------------------------------------------------------------------------------------------------------------------
# Training runs: run folder, config.yaml, metrics, resume
# ----------------------------------------------------------------------------------------------------------------------

#: What a training run writes into its folder besides config.yaml and run_info.json (a fresh run refuses a folder
#: that holds any of them, unless train.overwrite).
RUN_OUTPUTS = ("metrics.jsonl", "margins.jsonl", "metrics.json", "final", "tensorboard")


#: The γ-PO margin state each rank writes into a checkpoint (the queue and its random generator, SPEC §5).
MARGIN_STATE_FILE = "gamma_margins_rank{rank}.pt"
#: Config keys that change no number of the optimisation: a resumed run may change them freely (logging, saving,
#: evaluation, the run folder's name). Any other difference needs ``train.allow_config_change``.
RESUME_FREE_KEYS = frozenset(
    [f"train.{k}" for k in ("logging_steps", "logging_first_step", "report_to", "quiet", "save_steps", "save_strategy",
                            "save_total_limit", "eval_steps", "eval_strategy", "per_device_eval_batch_size",
                            "dataloader_num_workers", "resume_from_checkpoint", "overwrite", "margin_log_every",
                            "save_final_model", "allow_config_change", "run_name", "output_dir", "experiment",
                            "ref_cache_dir", "precompute_ref_logps", "logps_chunk_size")]
    + ["data.eval", "data.eval_split", "data.eval_limit"]
)


def _safetensors_problem(path: Path) -> Optional[str]:
    """Why a .safetensors file cannot be loaded (empty, truncated header), or None; reads only its header."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path.name} is empty or truncated ({path.stat().st_size} bytes)"
            size = int.from_bytes(head, "little")
            header = handle.read(size)
        if len(header) < size:
            return f"{path.name} is truncated (its header is cut)"
        json.loads(header)
    except (OSError, ValueError) as error:
        return f"{path.name} is unreadable ({type(error).__name__})"
    return None


def checkpoint_problem(checkpoint: str | os.PathLike, required: Sequence[str] = ()) -> Optional[str]:
    """What makes a ``checkpoint-N`` folder unusable for resuming, or None when it is whole: ``trainer_state.json``
    (the last file the Trainer writes) missing or unreadable, model weights missing, empty or truncated, or a file of
    ``required`` (e.g. the γ-PO margin state of every rank) missing."""
    folder = Path(checkpoint)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json: the run was interrupted while saving"
    try:
        int(json.loads(state.read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "trainer_state.json is truncated or not a Trainer state"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not any(folder.glob("pytorch_model*.bin")) and not any(folder.glob("global_step*")):
        return "no model weights (*.safetensors)"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem:
            return problem
    for name in required:
        if not (folder / name).is_file():
            return f"{name} is missing"
    return None


def latest_complete_checkpoint(output_dir: str | os.PathLike, required: Sequence[str] = ()) -> Optional[str]:
    """The highest ``checkpoint-N`` that is whole (:func:`checkpoint_problem`), so a run killed in the middle of a
    save, or a checkpoint damaged since, resumes from the newest usable one; each one skipped is logged with why."""
    checkpoints = sorted(
        (p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for checkpoint in reversed(checkpoints):
        problem = checkpoint_problem(checkpoint, required)
        if problem is None:
            return str(checkpoint)
        logger.warning("skipping %s: %s; trying the previous checkpoint", checkpoint, problem)
    return None


def required_checkpoint_files(config, world_size: int) -> list[str]:
    """The files a checkpoint of this run must hold besides the Trainer's: γ-PO's margin state of every rank."""
    from prefopt.losses import get_loss_spec

    loss = getattr(config, "loss", None)
    if loss is None or not get_loss_spec(loss.name).dynamic_margins:
        return []
    return [MARGIN_STATE_FILE.format(rank=rank) for rank in range(world_size)]


def resolve_checkpoint(config, world_size: int = 1) -> Optional[str]:
    """The checkpoint folder to resume from: ``train.resume_from_checkpoint`` as given, or for ``latest`` the newest
    whole one in the run folder; None to start fresh. A damaged checkpoint named explicitly is an error that says
    what is broken and which checkpoint would work."""
    wanted = config.train.resume_from_checkpoint
    if not wanted:
        return None
    required = required_checkpoint_files(config, world_size)
    if wanted in ("latest", "true", "True"):
        found = latest_complete_checkpoint(config.run_dir, required)
        if found is None:
            raise ConfigError(f"train.resume_from_checkpoint: latest: no whole checkpoint-* in {config.run_dir}")
        return found
    problem = checkpoint_problem(wanted, required)
    if problem:
        usable = latest_complete_checkpoint(Path(wanted).parent, required)
        hint = f"the newest whole checkpoint is {usable} (--train.resume_from_checkpoint latest)" if usable else \
            "no other checkpoint there is whole"
        raise ConfigError(f"train.resume_from_checkpoint: {wanted} cannot be resumed: {problem}; {hint}")
    return wanted


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "params":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(config, previous: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (previous value, new value)}`` for every resolved config key that differs from ``previous`` (the
    resumed run's config.yaml), ``<unset>`` where one side lacks the key."""
    old, new = _flatten(previous or {}), _flatten(config.to_dict())
    return {key: (old.get(key, "<unset>"), new.get(key, "<unset>")) for key in sorted(set(old) | set(new))
            if old.get(key, "<unset>") != new.get(key, "<unset>")}


def check_resume_config(config, checkpoint: str) -> dict[str, tuple[Any, Any]]:
    """Compare the config of a resumed run with the one that wrote its checkpoints (the run folder's config.yaml),
    before anything in the folder is touched. Changes to what alters the optimisation (model, data, loss, margins,
    learning rate, schedule, seed, batch, ...) are refused unless ``train.allow_config_change`` names them; logging,
    saving and evaluation settings may change. Returns every change (for the config history)."""
    import yaml

    path = config.run_dir / "config.yaml"
    if not path.is_file():
        logger.warning("resuming %s, which has no config.yaml: the config cannot be compared with the checkpoint's",
                       checkpoint)
        return {}
    changes = config_changes(config, yaml.safe_load(path.read_text()))
    allowed = set(config.train.allow_config_change)
    refused = {k: v for k, v in changes.items() if k not in RESUME_FREE_KEYS and k not in allowed}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(
            f"resuming {checkpoint} with a different config ({listed}): these change the optimisation of a run "
            f"that started with the old values. Resume with the old values, or allow them with "
            f"--train.allow_config_change {','.join(refused)}"
        )
    return changes


def _keep_config_history(run_dir: Path, changes: dict, step: int) -> None:
    """Before config.yaml is replaced on resume, keep the old one as config_history/config-<k>.yaml."""
    history = run_dir / "config_history"
    history.mkdir(exist_ok=True)
    k = 1 + sum(1 for _ in history.glob("config-*.yaml"))
    header = (f"# config.yaml of {run_dir} until {utc_now()}, when the run resumed from step {step} with: "
              + "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()) + "\n")
    (history / f"config-{k}.yaml").write_text(header + (run_dir / "config.yaml").read_text())


def _trim_log(log: Path, step: int) -> None:
    """Keep the lines of a JSONL log up to ``step``; a torn (half-written) line is dropped with a warning."""
    kept, torn = [], 0
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            torn += 1
            continue
        if row.get("step", 0) <= step:
            kept.append(line)
    if torn:
        logger.warning("%s: dropped %d unreadable line(s) (a run killed while writing)", log, torn)
    log.write_text("".join(line + "\n" for line in kept))


def prepare_run_dir(config, checkpoint: Optional[str], changes: Optional[dict] = None) -> None:
    """Never mix two runs in one folder (main process only).

    A fresh run refuses a folder that already holds a run unless ``train.overwrite``; a resumed run keeps the folder,
    keeps the replaced config.yaml in ``config_history/`` when the config changed, and trims the JSONL logs back to
    the checkpoint's step, so the steps redone after resuming are not logged twice.
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
        if changes and (run_dir / "config.yaml").is_file():
            _keep_config_history(run_dir, changes, step)
        for name in ("metrics.jsonl", "margins.jsonl"):
            log = run_dir / name
            if log.is_file():
                _trim_log(log, step)


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
    checkpoint = resolve_checkpoint(config, state.num_processes)
    changes = check_resume_config(config, checkpoint) if checkpoint else {}  # before the folder is touched
    record = StageRecord(config.run_dir / "run_info.json", config.stage, command=command,
                         world_size=state.num_processes, is_main=state.is_main_process)
    if state.is_main_process:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        prepare_run_dir(config, checkpoint, changes)
        save_config(config, config.run_dir / "config.yaml", header=config_header)
    state.wait_for_everyone()
    return state, checkpoint, record


def finish_run(trainer, record: StageRecord, metrics: dict) -> dict:
    """What every training stage does last: metrics.json with the wall time, and run_info.json stamped finished
    (main process). Returns ``metrics``."""
    metrics["wall_seconds"] = record.elapsed()
    if trainer.is_world_process_zero():
        write_json(record.path.parent / "metrics.json", metrics)
    record.finish()
    return metrics

