"""Typed run configuration: dataclasses fed from YAML plus ``--key value`` overrides.

A config file has five sections, each a dataclass below (``model``, ``data``, ``loss``, ``margins``, ``train``).
Unknown keys and bad values raise :class:`ConfigError` with one line that says what to write instead. An override
names a field as ``--section.key value`` or, when the name is unique across sections, ``--key value``.

The ``loss`` section holds ``name`` plus that loss's hyper-parameters, validated by the loss registry
(:data:`prefopt.losses.LOSSES`), so a config can only name hyper-parameters its loss really takes.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from prefopt.losses import LOSSES, get_loss_spec


class ConfigError(ValueError):
    """A config file or override the user must change; the message says how."""


def _help(text: str, **kwargs) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class ModelConfig:
    name_or_path: str = _help("policy initialisation: a Hub name or a local folder (from_pretrained)", default="")
    ref_name_or_path: Optional[str] = _help("reference model; null = the same as name_or_path", default=None)
    revision: Optional[str] = _help("Hub revision (branch, tag or commit) of both models", default=None)
    dtype: str = _help("weights dtype: auto, bfloat16, float16 or float32", default="auto")
    attn_implementation: Optional[str] = _help("sdpa, eager or flash_attention_2 (GPU only)", default="sdpa")
    trust_remote_code: bool = _help("allow custom modelling code from the Hub", default=False)
    chat_template: Optional[str] = _help("override the tokenizer's chat template (a Jinja string or a file)", default=None)
    gradient_checkpointing: bool = _help("recompute activations in the backward pass to save memory", default=False)


@dataclass
class DataConfig:
    train: str = _help("training data: a local .json/.jsonl file or a Hugging Face dataset name", default="")
    train_split: str = _help("split of the training dataset", default="train")
    eval: Optional[str] = _help("evaluation data (same forms as train); null = no evaluation", default=None)
    eval_split: str = _help("split of the evaluation dataset", default="test")
    name: Optional[str] = _help("dataset configuration name, for Hub datasets that have several", default=None)
    data_dir: Optional[str] = _help("data_dir of a Hub dataset (Anthropic/hh-rlhf: helpful-base)", default=None)
    format: str = _help("auto, pairs, rw or princeton_rw (see prefopt.data)", default="auto")
    max_length: int = _help("maximum tokens of prompt + response; responses are cut on the right", default=1024)
    max_prompt_length: int = _help("maximum prompt tokens; prompts are cut on the left", default=512)
    max_bad_fraction: float = _help("fail when more than this fraction of rows is malformed", default=0.01)
    limit: Optional[int] = _help("use only the first N training rows (quick runs)", default=None)
    eval_limit: Optional[int] = _help("use only the first N evaluation rows", default=None)


@dataclass
class LossConfig:
    name: str = _help(f"loss name: one of {', '.join(LOSSES)}", default="")
    params: dict = _help("the loss's hyper-parameters (written directly under loss: in YAML)", default_factory=dict)


@dataclass
class MarginConfig:
    queue_size: int = _help("γ-PO: FIFO queue of past reward gaps (Alg. 2)", default=2048)
    pool_size: int = _help("γ-PO: gaps per solve, the current batch included", default=256)
    iters: int = _help("γ-PO: exponentiated-gradient steps per solve", default=20)
    faithful: bool = _help("γ-PO: reproduce the official code (N(0,1)-seeded queue, eval pushes)", default=False)
    pool_across_ranks: bool = _help("γ-PO: pool the gaps of all data-parallel ranks in one solve", default=False)


@dataclass
class TrainConfig:
    experiment: str = _help("results/<experiment>/<run_name> is the run folder", default="default")
    run_name: Optional[str] = _help("run folder name; null = the loss name", default=None)
    output_dir: Optional[str] = _help("explicit run folder (overrides results/<experiment>/<run_name>)", default=None)
    seed: int = _help("seed of initialisation, data order and γ-PO sampling", default=42)
    learning_rate: float = _help("peak learning rate", default=5e-7)
    lr_scheduler_type: str = _help("transformers scheduler name: cosine, linear, constant, ...", default="cosine")
    warmup_ratio: float = _help("fraction of the steps spent warming up", default=0.1)
    num_train_epochs: float = _help("epochs over the training data", default=1.0)
    max_steps: int = _help("stop after this many optimiser steps; -1 = use num_train_epochs", default=-1)
    per_device_train_batch_size: int = _help("prompts (pairs or groups) per device per micro-step", default=2)
    per_device_eval_batch_size: int = _help("prompts per device per evaluation step", default=4)
    gradient_accumulation_steps: int = _help("micro-steps per optimiser step", default=1)
    optim: str = _help("transformers optimiser name", default="adamw_torch")
    adam_beta1: float = _help("AdamW β1", default=0.9)
    adam_beta2: float = _help("AdamW β2", default=0.999)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    max_grad_norm: float = _help("gradient clipping norm", default=1.0)
    bf16: bool = _help("bf16 mixed precision", default=False)
    logging_steps: int = _help("log metrics every N optimiser steps", default=10)
    eval_steps: Optional[int] = _help("evaluate every N steps (needs data.eval); null = only at the end", default=None)
    save_steps: Optional[int] = _help("checkpoint every N steps; null = no intermediate checkpoints", default=None)
    save_total_limit: Optional[int] = _help("keep at most N checkpoints", default=None)
    save_final_model: bool = _help("save the final policy (model + tokenizer) to <run>/final", default=True)
    report_to: list = _help("loggers: tensorboard, wandb, none", default_factory=lambda: ["tensorboard"])
    logit_temperature: float = _help("divide policy and reference logits by this (EXO/f-PO Pythia: 0.8)", default=1.0)
    logps_chunk_size: int = _help("sequence positions per chunk in the log-prob computation", default=128)
    precompute_ref_logps: bool = _help("compute reference log-probs once and cache them on disk", default=False)
    ref_cache_dir: Optional[str] = _help("cache folder for reference log-probs; null = ~/.cache/prefopt", default=None)
    margin_log_every: int = _help("write the per-pair margin log every N optimiser steps; 0 = never", default=1)
    resume_from_checkpoint: Optional[str] = _help("a checkpoint folder, or 'latest' in the run folder", default=None)
    overwrite: bool = _help("start afresh in a run folder that already holds a run (deletes its logs and checkpoints)",
                            default=False)
    use_cpu: bool = _help("train on the CPU even when a GPU is present", default=False)
    quiet: bool = _help("no progress bar or log lines on the console (the run folder still gets every log)",
                        default=False)
    dataloader_num_workers: int = _help("data loader worker processes", default=0)


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "margins": MarginConfig,
    "train": TrainConfig,
}


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    margins: MarginConfig = field(default_factory=MarginConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        if self.train.output_dir:
            return Path(self.train.output_dir)
        return Path("results") / self.train.experiment / (self.train.run_name or self.loss.name)

    @property
    def loss_hparams(self) -> dict[str, Any]:
        """The loss's hyper-parameters with defaults filled in (validated)."""
        return get_loss_spec(self.loss.name).resolve_hparams(self.loss.params)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict in the YAML layout (loss hyper-parameters inlined and defaults filled in)."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        loss = {"name": self.loss.name, **self.loss_hparams}
        out["loss"] = loss
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Parsing and validation
# ----------------------------------------------------------------------------------------------------------------------


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value or an override string to the field's type, or raise a ConfigError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:  # YAML 1.1 reads 1e-6 as a string; accept it
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    if annotation is list or origin is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"{where} must be a list (or a comma-separated string), got {value!r}")
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return value


def _parse_scalar(text: str) -> Any:
    """An override's value as YAML would read it (numbers, booleans, null, lists), falling back to the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _build_section(name: str, values: Any) -> Any:
    cls = SECTIONS[name]
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"section {name!r} must be a mapping of keys to values, got {values!r}")
    if name == "loss":
        values = dict(values)
        loss_name = values.pop("name", "")
        params = values.pop("params", {}) or {}
        if not isinstance(params, dict):
            raise ConfigError(f"loss.params must be a mapping, got {params!r}")
        return LossConfig(name=str(loss_name), params={**params, **values})
    types = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(
                f"unknown key {name}.{key}: {_suggest(key, list(types))}valid keys in {name}: {', '.join(types)}"
            )
        kwargs[key] = _coerce(value, types[key], f"{name}.{key}")
    return cls(**kwargs)


def _apply_override(tree: dict, key: str, raw: str) -> None:
    """Set one ``--key value`` override in the nested YAML tree (before typing)."""
    if "." in key:
        section, sub = key.split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(f"unknown section in --{key}: {_suggest(section, list(SECTIONS))}sections: {', '.join(SECTIONS)}")
    else:
        owners = [s for s, cls in SECTIONS.items() if s != "loss" and key in _field_types(cls)]
        loss_name = (tree.get("loss") or {}).get("name")
        if key in (LOSSES[loss_name].hparams if loss_name in LOSSES else {}) or key == "name":
            owners.append("loss")
        if not owners:
            every = [f"{s}.{k}" for s, cls in SECTIONS.items() if s != "loss" for k in _field_types(cls)]
            flat = [k.split(".", 1)[1] for k in every]
            raise ConfigError(f"unknown option --{key}: {_suggest(key, flat)}write --section.key (sections: {', '.join(SECTIONS)})")
        if len(owners) > 1:
            raise ConfigError(f"--{key} is ambiguous ({' and '.join(owners)}): write --{owners[0]}.{key}")
        section, sub = owners[0], key
    tree.setdefault(section, {})
    if tree[section] is None:
        tree[section] = {}
    tree[section][sub] = _parse_scalar(raw)


def parse_overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``["--a.b", "1", "--c=2"]`` → ``[("a.b", "1"), ("c", "2")]``; a bare flag means ``true``."""
    pairs, i = [], 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) <= 2:
            raise ConfigError(f"expected --key value, got {token!r}")
        token = token[2:]
        if "=" in token:
            key, value = token.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = token, argv[i + 1]
            i += 2
        else:
            key, value = token, "true"
            i += 1
        pairs.append((key.replace("-", "_"), value))
    return pairs


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = (), base: Optional[dict] = None) -> RunConfig:
    """``base`` (a stage's defaults), then the YAML file section by section, then ``--key value`` overrides; typed and
    validated."""
    tree: dict = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping with sections {', '.join(SECTIONS)}")
        for section, values in (loaded or {}).items():  # per section: the file's keys win over base's defaults
            if isinstance(values, dict) and isinstance(tree.get(section), dict):
                tree[section] = {**tree[section], **values}
            else:
                tree[section] = values
    for key, raw in parse_overrides(overrides):
        _apply_override(tree, key, raw)
    unknown = [k for k in tree if k not in SECTIONS]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"unknown section {key!r}: {_suggest(key, list(SECTIONS))}sections: {', '.join(SECTIONS)}")
    config = RunConfig(**{name: _build_section(name, tree.get(name)) for name in SECTIONS})
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Range and consistency checks that the types alone cannot express."""
    m, d, t, g = config.model, config.data, config.train, config.margins
    if not m.name_or_path:
        raise ConfigError("model.name_or_path is required: a Hub name or a local model folder")
    if not d.train:
        raise ConfigError("data.train is required: a .json/.jsonl file or a Hugging Face dataset name")
    if not config.loss.name:
        raise ConfigError(f"loss.name is required: one of {', '.join(LOSSES)}")
    try:
        config.loss_hparams
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if m.dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise ConfigError(f"model.dtype must be auto, bfloat16, float16 or float32, got {m.dtype!r}")
    checks = [
        (d.max_length >= 2, "data.max_length must be >= 2"),
        (0 < d.max_prompt_length < d.max_length, "data.max_prompt_length must be > 0 and < data.max_length"),
        (0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction must lie in [0, 1]"),
        (d.limit is None or d.limit >= 1, "data.limit must be >= 1 or null"),
        (t.learning_rate > 0 and math.isfinite(t.learning_rate), "train.learning_rate must be > 0"),
        (0 <= t.warmup_ratio < 1, "train.warmup_ratio must lie in [0, 1)"),
        (t.per_device_train_batch_size >= 1, "train.per_device_train_batch_size must be >= 1"),
        (t.per_device_eval_batch_size >= 1, "train.per_device_eval_batch_size must be >= 1"),
        (t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1"),
        (t.max_steps == -1 or t.max_steps >= 1, "train.max_steps must be -1 (use epochs) or >= 1"),
        (t.num_train_epochs > 0, "train.num_train_epochs must be > 0"),
        (t.logit_temperature > 0, "train.logit_temperature must be > 0"),
        (t.logps_chunk_size >= 1, "train.logps_chunk_size must be >= 1"),
        (t.logging_steps >= 1, "train.logging_steps must be >= 1"),
        (t.margin_log_every >= 0, "train.margin_log_every must be >= 0 (0 = never)"),
        (t.eval_steps is None or t.eval_steps >= 1, "train.eval_steps must be >= 1 or null"),
        (t.save_steps is None or t.save_steps >= 1, "train.save_steps must be >= 1 or null"),
        (g.queue_size >= 1 and g.pool_size >= 1 and g.iters >= 1, "margins.queue_size, pool_size and iters must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if t.precompute_ref_logps and not get_loss_spec(config.loss.name).needs_reference:
        raise ConfigError(f"train.precompute_ref_logps: loss {config.loss.name!r} is reference-free; set it to false")


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))
