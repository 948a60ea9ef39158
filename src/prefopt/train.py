"""``prefopt train`` / ``prefopt sft``: config → data → models → :class:`PreferenceTrainer` → run folder (SPEC §9).

The run folder (:mod:`prefopt.runs`) receives ``config.yaml`` (resolved, defaults filled in), ``run_info.json``
(provenance, data reports, reference-cache key), ``metrics.jsonl`` (every log line), ``margins.jsonl`` (per-pair reward
gaps and margins), checkpoints, ``final/`` (the trained policy) and ``metrics.json`` (final numbers).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from prefopt.config import ConfigError, RunConfig
from prefopt.losses import get_loss_spec
from prefopt.models import load_from_config, tokenizer_from_config
from prefopt.runs import finish_run, start_run

logger = logging.getLogger("prefopt")


# ----------------------------------------------------------------------------------------------------------------------
# Data and the cached reference
# ----------------------------------------------------------------------------------------------------------------------


def prepare_examples(config: RunConfig, tokenizer, source: str, split: str, limit: Optional[int]):
    """Load, validate and tokenise one data source; returns (examples, {"data": ..., "tokenize": ...} summaries)."""
    from prefopt.data import load_records, tokenize_records

    d = config.data
    records, data_report = load_records(
        source, split=split, format=d.format, limit=limit, max_bad_fraction=d.max_bad_fraction, name=d.name,
        data_dir=d.data_dir,
    )
    examples, tokenize_report = tokenize_records(
        records, tokenizer, max_length=d.max_length, max_prompt_length=d.max_prompt_length,
        tokenization=d.tokenization, chat_template=d.apply_chat_template,
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
            ref_model = load_from_config(ref_name, m, what="model.ref_name_or_path").to(accelerator.device)
        return reference.compute_reference_logps(
            ref_model, examples, collator, batch_size=t.per_device_eval_batch_size,
            temperature=t.logit_temperature, chunk_size=t.logps_chunk_size, accelerator=accelerator,
            logps_from_hidden=t.logps_from_hidden, padding_free=t.padding_free,
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


def prepare_datasets(config, tokenizer) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The tokenised train (and eval) examples of a config, and their data / truncation reports."""
    d = config.data
    datasets, reports = {}, {}
    datasets["train"], reports["train"] = prepare_examples(config, tokenizer, d.train, d.train_split, d.limit)
    if d.eval:
        datasets["eval"], reports["eval"] = prepare_examples(config, tokenizer, d.eval, d.eval_split, d.eval_limit)
    return datasets, reports


def build_margins(config: RunConfig, process_index: int):
    """γ-PO's :class:`~prefopt.margins.DynamicMargins` from the margins section, with γ0 from :attr:`RunConfig.gamma0`
    (None for a loss without dynamic margins)."""
    from prefopt.margins import DynamicMargins

    if not get_loss_spec(config.loss.name).dynamic_margins:
        return None
    g, seed = config.margins, config.train.seed
    seed = seed if g.pool_across_ranks else seed + process_index  # pooled ranks must share the RNG
    return DynamicMargins(config.gamma0, g.tau, queue_size=g.queue_size, pool_size=g.pool_size,
                          faithful=g.faithful, seed=seed, iters=g.iters)


def run_training(config: RunConfig, argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Train one run end to end and return its final metrics (also written to <run>/metrics.json)."""
    from prefopt.data import PreferenceCollator
    from prefopt.trainer import JsonlMetricsCallback, PreferenceTrainer, silence_console

    spec = get_loss_spec(config.loss.name)
    run_dir, t = config.run_dir, config.train
    state, checkpoint, record = start_run(config, command=argv)

    tokenizer = tokenizer_from_config(config.model)
    datasets, data_reports = prepare_datasets(config, tokenizer)
    collator = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)

    # On resume the policy is loaded from the checkpoint folder itself: from_pretrained converts legacy weight names,
    # which the Trainer's own state-dict reload does not (transformers 5.23 restores GPT-NeoX's `embed_out` as
    # `lm_head` only through from_pretrained, and silently keeps the initial output layer otherwise).
    policy = load_from_config(checkpoint or config.model.name_or_path, config.model)
    ref_model = None
    if spec.needs_reference and not t.precompute_ref_logps:
        ref_model = load_from_config(config.model.ref_name_or_path or config.model.name_or_path, config.model,
                                     what="model.ref_name_or_path")

    trainer = PreferenceTrainer(
        model=policy,
        ref_model=ref_model,
        args=t,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("eval"),
        data_collator=collator,
        processing_class=tokenizer,
        loss_name=config.loss.name,
        loss_hparams=config.loss.params,
        margins=build_margins(config, state.process_index),
        pool_margins_across_ranks=config.margins.pool_across_ranks,
        logit_temperature=t.logit_temperature,
        logps_chunk_size=t.logps_chunk_size,
        margin_log_path=run_dir / "margins.jsonl",
        margin_log_every=t.margin_log_every,
        callbacks=[JsonlMetricsCallback(run_dir / "metrics.jsonl")],
    )
    if t.quiet:
        silence_console(trainer)
    info = {"loss": config.loss.name, "data": data_reports}
    if spec.needs_reference and t.precompute_ref_logps:
        # With the Trainer's own accelerator (built from the launch config, DeepSpeed included): the examples are the
        # very dicts the Trainer holds, so the cached log-probs reach every batch through the collator.
        info["reference_cache"] = attach_reference_logps(config, datasets, collator, trainer.accelerator)
    record.update(**info)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {"train": dict(result.metrics), "global_step": trainer.state.global_step}
    if "eval" in datasets:
        metrics["eval"] = trainer.evaluate()
    if t.save_final_model:
        trainer.save_model(str(run_dir / "final"))
    return finish_run(trainer, record, metrics)
