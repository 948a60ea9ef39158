"""``prefopt train``: config → data → models → :class:`PreferenceTrainer` → run folder (SPEC §9).

The run folder receives ``config.yaml`` (resolved, defaults filled in), ``run_info.json`` (git SHA, package versions,
command line, data reports), ``metrics.jsonl`` (every log line), ``margins.jsonl`` (per-pair reward gaps and margins),
checkpoints, ``final/`` (the trained policy) and ``metrics.json`` (final numbers).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import TrainerCallback

from prefopt.config import ConfigError, RunConfig, save_config
from prefopt.hub import offline_from_env
from prefopt.io import write_json
from prefopt.losses import get_loss_spec

logger = logging.getLogger("prefopt")

PACKAGES = ("prefopt", "torch", "transformers", "accelerate", "datasets", "tokenizers", "deepspeed", "trl", "numpy")


# ----------------------------------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------------------------------


def git_revision(directory: Path = Path(__file__).resolve().parent) -> dict[str, Any]:
    """The commit the code ran from and whether the work tree had uncommitted changes (None outside a checkout)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=directory, capture_output=True, text=True)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}


def package_versions() -> dict[str, Optional[str]]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class JsonlMetricsCallback(TrainerCallback):
    """Appends every log line (train and eval) to metrics.jsonl on the main process."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# Models and data
# ----------------------------------------------------------------------------------------------------------------------

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}


def _check_model_source(name_or_path: str, key: str) -> None:
    """A path-like name that does not exist is a typo, not a Hub id: say so at once instead of asking the Hub."""
    path = Path(name_or_path).expanduser()
    if name_or_path.startswith((".", "/", "~")) and not path.is_dir():
        raise ConfigError(f"{key}: no such local model folder {name_or_path!r}")


def load_tokenizer(config: RunConfig):
    from transformers import AutoTokenizer

    m = config.model
    _check_model_source(m.name_or_path, "model.name_or_path")
    if m.ref_name_or_path:
        _check_model_source(m.ref_name_or_path, "model.ref_name_or_path")
    try:
        with offline_from_env():
            tokenizer = AutoTokenizer.from_pretrained(
                m.name_or_path, revision=m.revision, trust_remote_code=m.trust_remote_code
            )
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"model.name_or_path {m.name_or_path!r} could not be loaded (not a local folder, and the Hub did not "
            f"serve it: {first_line})"
        ) from None
    if m.chat_template:
        template = Path(m.chat_template)
        tokenizer.chat_template = template.read_text() if template.is_file() else m.chat_template
    if tokenizer.pad_token_id is None:  # Llama-3 and Pythia ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(name_or_path: str, config: RunConfig, auto_class=None, **extra):
    """``auto_class.from_pretrained`` (default ``AutoModelForCausalLM``) with the config's revision, dtype and
    attention implementation; ``extra`` goes to from_pretrained (e.g. ``num_labels`` for a reward model)."""
    from transformers import AutoModelForCausalLM

    m = config.model
    kwargs = dict(revision=m.revision, trust_remote_code=m.trust_remote_code, dtype=DTYPES[m.dtype], **extra)
    if m.attn_implementation:
        kwargs["attn_implementation"] = m.attn_implementation
    with offline_from_env():
        return (auto_class or AutoModelForCausalLM).from_pretrained(name_or_path, **kwargs)


def load_causal_lm(name_or_path: str, config: RunConfig):
    return load_pretrained(name_or_path, config)


def prepare_examples(config: RunConfig, tokenizer, source: str, split: str, limit: Optional[int]):
    """Load, validate and tokenise one data source; returns (examples, {"data": ..., "tokenize": ...} summaries)."""
    from prefopt.data import load_records, tokenize_records

    d = config.data
    records, data_report = load_records(
        source, split=split, format=d.format, limit=limit, max_bad_fraction=d.max_bad_fraction, name=d.name,
        data_dir=d.data_dir,
    )
    examples, tokenize_report = tokenize_records(
        records, tokenizer, max_length=d.max_length, max_prompt_length=d.max_prompt_length
    )
    if not examples:
        raise ConfigError(f"no usable examples left in {source!r} ({split}) after validation and truncation")
    return examples, {"data": data_report.summary(), "tokenize": tokenize_report.summary()}


def attach_reference_logps(config: RunConfig, datasets: dict[str, list[dict]], collator, accelerator) -> dict:
    """Cached reference log-probs for every dataset; the reference model is loaded only on a cache miss."""
    from prefopt import reference

    t, m = config.train, config.model
    ref_name = m.ref_name_or_path or m.name_or_path
    fingerprint = reference.model_fingerprint(ref_name, m.revision)
    cache_dir = Path(t.ref_cache_dir) if t.ref_cache_dir else reference.default_cache_dir()
    ref_model, report = None, {}

    def compute(examples):
        nonlocal ref_model
        if ref_model is None:
            ref_model = load_causal_lm(ref_name, config).to(accelerator.device)
        return reference.compute_reference_logps(
            ref_model, examples, collator, batch_size=t.per_device_eval_batch_size,
            temperature=t.logit_temperature, chunk_size=t.logps_chunk_size, accelerator=accelerator,
        )

    for name, examples in datasets.items():
        key = reference.cache_key(fingerprint, examples, temperature=t.logit_temperature, dtype=m.dtype)
        table, hit = reference.load_or_compute(
            key, cache_dir, lambda: compute(examples), expected_rows=len(examples),
            is_main_process=accelerator.is_main_process, wait_for_everyone=accelerator.wait_for_everyone,
        )
        for example, row in zip(examples, table.tolist()):
            example["ref_logps"] = row
        report[name] = {"key": key, "cache_hit": hit, "path": str(cache_dir / f"{key}.pt")}
    del ref_model
    return report


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def training_arguments(config: RunConfig):
    from transformers import TrainingArguments

    t = config.train
    has_eval = config.data.eval is not None
    return TrainingArguments(
        output_dir=str(config.run_dir),
        run_name=t.run_name or config.loss.name,
        seed=t.seed,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        optim=t.optim,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=t.bf16,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps if has_eval else None,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        report_to=[r for r in t.report_to if r != "none"] or "none",
        remove_unused_columns=False,
        activation_checkpointing=config.model.gradient_checkpointing,
        # several processes and no CUDA: only use_cpu makes them one gloo job instead of separate trainings
        use_cpu=t.use_cpu or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()),
        dataloader_num_workers=t.dataloader_num_workers,
    )


def resolve_checkpoint(config: RunConfig) -> Optional[str]:
    """The checkpoint folder to resume from: ``train.resume_from_checkpoint`` as given, or for ``latest`` the newest
    complete one in the run folder; None to start fresh."""
    from prefopt.trainer import latest_complete_checkpoint

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


RUN_OUTPUTS = ("metrics.jsonl", "margins.jsonl", "metrics.json", "final", "tensorboard")


def prepare_run_dir(config: RunConfig, checkpoint: Optional[str]) -> None:
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


def start_run(config: RunConfig, config_header: str = ""):
    """What every training stage does first: the TrainingArguments (which create the distributed state), a check that
    all launched processes joined one job, the checkpoint to resume from, and the run folder with its config.yaml.
    Returns ``(training_args, state, checkpoint)``."""
    from accelerate import PartialState

    args = training_arguments(config)  # creates the distributed state: every rank knows its index from here on
    state = PartialState()
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise ConfigError(
            f"launched {launched} processes but they did not join one training ({state.num_processes} per run): on "
            f"a machine without GPUs set --train.use_cpu true"
        )
    checkpoint = resolve_checkpoint(config)
    if state.is_main_process:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        prepare_run_dir(config, checkpoint)
        save_config(config, config.run_dir / "config.yaml")
        if config_header:
            path = config.run_dir / "config.yaml"
            path.write_text(config_header + path.read_text())
    state.wait_for_everyone()
    return args, state, checkpoint


def finish_run(trainer, run_dir: Path, metrics: dict, info: dict, started: float) -> dict:
    """What every training stage does last (main process): metrics.json with the wall time, and run_info.json
    stamped finished. Returns ``metrics``."""
    metrics["wall_seconds"] = time.time() - started
    if trainer.is_world_process_zero():
        write_json(run_dir / "metrics.json", metrics)
        info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(run_dir / "run_info.json", info)
    return metrics


def silence_console(trainer) -> None:
    """``train.quiet``: drop the Trainer's progress bar and log printer (the run folder still gets every log)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)


def run_training(config: RunConfig, argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Train one run end to end and return its final metrics (also written to <run>/metrics.json)."""
    from prefopt.data import PreferenceCollator
    from prefopt.margins import DynamicMargins
    from prefopt.trainer import PreferenceTrainer

    started = time.time()
    spec = get_loss_spec(config.loss.name)
    run_dir = config.run_dir
    args, state, checkpoint = start_run(config)

    tokenizer = load_tokenizer(config)
    d, t = config.data, config.train
    datasets, data_reports = {}, {}
    datasets["train"], data_reports["train"] = prepare_examples(config, tokenizer, d.train, d.train_split, d.limit)
    if d.eval:
        datasets["eval"], data_reports["eval"] = prepare_examples(config, tokenizer, d.eval, d.eval_split, d.eval_limit)
    collator = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)

    info = {
        "git": git_revision(), "packages": package_versions(), "python": sys.version.split()[0],
        "platform": platform.platform(), "command": argv if argv is not None else sys.argv,
        "world_size": state.num_processes, "loss": config.loss.name, "data": data_reports,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    # On resume the policy is loaded from the checkpoint folder itself: from_pretrained converts legacy weight names,
    # which the Trainer's own state-dict reload does not (transformers 5.23 restores GPT-NeoX's `embed_out` as
    # `lm_head` only through from_pretrained, and silently keeps the initial output layer otherwise).
    policy = load_causal_lm(checkpoint or config.model.name_or_path, config)
    ref_model = None
    if spec.needs_reference and not t.precompute_ref_logps:
        ref_model = load_causal_lm(config.model.ref_name_or_path or config.model.name_or_path, config)

    margins = None
    if spec.dynamic_margins:
        g = config.margins
        seed = t.seed if g.pool_across_ranks else t.seed + state.process_index  # pooled ranks must share the RNG
        margins = DynamicMargins(
            spec.gamma0(config.loss_hparams), config.loss_hparams["margin_tau"], queue_size=g.queue_size,
            pool_size=g.pool_size, faithful=g.faithful, seed=seed, iters=g.iters,
        )

    trainer = PreferenceTrainer(
        model=policy,
        ref_model=ref_model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("eval"),
        data_collator=collator,
        processing_class=tokenizer,
        loss_name=config.loss.name,
        loss_hparams=config.loss.params,
        margins=margins,
        pool_margins_across_ranks=config.margins.pool_across_ranks,
        logit_temperature=t.logit_temperature,
        logps_chunk_size=t.logps_chunk_size,
        margin_log_path=run_dir / "margins.jsonl",
        margin_log_every=t.margin_log_every,
        callbacks=[JsonlMetricsCallback(run_dir / "metrics.jsonl")],
    )
    if t.quiet:
        silence_console(trainer)
    if spec.needs_reference and t.precompute_ref_logps:
        # With the Trainer's own accelerator (built from the launch config, DeepSpeed included): the examples are the
        # very dicts the Trainer holds, so the cached log-probs reach every batch through the collator.
        info["reference_cache"] = attach_reference_logps(config, datasets, collator, trainer.accelerator)
    if state.is_main_process:
        write_json(run_dir / "run_info.json", info)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {"train": dict(result.metrics), "global_step": trainer.state.global_step}
    if "eval" in datasets:
        metrics["eval"] = trainer.evaluate()
    if t.save_final_model:
        trainer.save_model(str(run_dir / "final"))
    return finish_run(trainer, run_dir, metrics, info, started)
