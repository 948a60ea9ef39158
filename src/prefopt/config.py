"""Typed run configuration: dataclasses fed from YAML plus ``--key value`` overrides.

A training config (:class:`RunConfig`) has five sections: ``model``, ``data``, ``loss``, ``margins`` (every γ-PO
setting) and ``train``; a reward-model config (:class:`RewardModelConfig`) has ``model``, ``data`` and ``train``.
Unknown keys and bad values raise :class:`~prefopt.errors.ConfigError` with one line that says what to write
instead. An override names a field as ``--section.key value`` or, when the name is unique across sections,
``--key value``.

``train`` is :class:`TrainConfig`, a ``transformers.TrainingArguments`` subclass (TRL's ``DPOConfig`` pattern): every
``TrainingArguments`` field can be set, prefopt's own fields and defaults carry their help in ``metadata``, and the
checks (ours and ``TrainingArguments``' own) run in ``__post_init__`` and come out as one-line config errors.

The ``loss`` section holds ``name`` plus that loss's hyper-parameters, validated by the loss registry
(:data:`prefopt.losses.LOSSES`), so a config can only name hyper-parameters its loss really takes.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import yaml
from transformers import TrainingArguments

from prefopt.errors import ConfigError
from prefopt.losses import LOSSES, get_loss_spec

__all__ = [
    "ConfigError", "ModelConfig", "DataConfig", "LossConfig", "MarginConfig", "TrainConfig", "RunConfig",
    "RewardModelConfig", "load_config", "load_rm_config", "parse_overrides", "save_config",
]


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
    chat_template: Optional[str] = _help(
        "override the tokenizer's chat template: a shipped template by name (mistral_fixed, gemma2_merged_system), "
        "a file, or a Jinja string", default=None)
    gradient_checkpointing: bool = _help("recompute activations in the backward pass to save memory", default=False)

    def __post_init__(self):
        from prefopt.models import CHAT_TEMPLATES, is_jinja

        value = self.chat_template
        if value and value not in CHAT_TEMPLATES and not Path(value).expanduser().is_file() and not is_jinja(value):
            raise ConfigError(
                f"model.chat_template {value!r}: {_suggest(value, list(CHAT_TEMPLATES))}write a shipped template's "
                f"name ({', '.join(CHAT_TEMPLATES)}), the path of an existing file, or a Jinja string"
            )


@dataclass
class DataConfig:
    train: str = _help("training data: a local .json/.jsonl file or a Hugging Face dataset name", default="")
    train_split: str = _help("split of the training dataset", default="train")
    eval: Optional[str] = _help("evaluation data (same forms as train); null = no evaluation", default=None)
    eval_split: str = _help("split of the evaluation dataset", default="test")
    name: Optional[str] = _help("dataset configuration name, for Hub datasets that have several", default=None)
    data_dir: Optional[str] = _help("data_dir of a Hub dataset (Anthropic/hh-rlhf: helpful-base)", default=None)
    format: str = _help("auto, pairs, rw or princeton_rw (see prefopt.data)", default="auto")
    tokenization: typing.Literal["trl", "official"] = _help(
        "how chat records become scored tokens: trl = the prompt with the generation prompt, only the text after it "
        "scored (TRL); official = the SimPO-family scripts the Table 2/3 papers ran (empty system message, each "
        "response rendered alone with its assistant header, EOS appended; SPEC §6.4)", default="trl")
    apply_chat_template: typing.Literal["auto", "always", "never"] = _help(
        "string prompts: auto = one user turn through the chat template when the tokenizer has one, always = "
        "through it (an error without one), never = as text + response + EOS (HH / TL;DR text prompts); chat-message "
        "prompts always use the template", default="auto")
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
    """Every γ-PO setting (SPEC §5). γ0 itself is β·gamma_beta_ratio of the loss section (its one source:
    :meth:`RunConfig.gamma0`)."""

    tau: Optional[float] = _help("γ-PO τ: strength of the KL pull of the margins towards uniform (required for "
                                 "gamma_simpo / gamma_dpo)", default=None)
    queue_size: int = _help("γ-PO: FIFO queue of past reward gaps (Alg. 2)", default=2048)
    pool_size: int = _help("γ-PO: gaps per solve, the current batch included", default=256)
    iters: int = _help("γ-PO: exponentiated-gradient steps per solve", default=20)
    faithful: bool = _help("γ-PO: reproduce the official code (N(0,1)-seeded queue, eval pushes)", default=False)
    pool_across_ranks: bool = _help("γ-PO: pool the gaps of all data-parallel ranks in one solve", default=False)


def _no_accelerator() -> bool:
    import torch

    if hasattr(torch, "accelerator"):
        return not torch.accelerator.is_available()
    return not torch.cuda.is_available()


@dataclass
class TrainConfig(TrainingArguments):
    """``transformers.TrainingArguments`` with prefopt's defaults and fields (the ``train:`` section).

    Any ``TrainingArguments`` field can be set in YAML or with ``--train.<field>``; the fields declared here are
    prefopt's own or carry a prefopt default. Derived values (never written to ``config.yaml`` unless set by hand):
    ``output_dir`` = results/<experiment>/<run_name>; ``run_name`` = the loss name; ``warmup_steps`` = ``warmup_ratio``;
    ``eval_strategy`` = steps when ``eval_steps`` is set and the data has an eval split; ``save_strategy`` = steps
    when ``save_steps`` is set; ``activation_checkpointing`` = ``model.gradient_checkpointing``; ``use_cpu`` = true
    when the machine has no accelerator (and so when several CPU processes must join one gloo job).
    """

    # prefopt's own fields
    experiment: str = _help("results/<experiment>/<run_name> is the run folder", default="default")
    warmup_ratio: float = _help("fraction of the steps spent warming up (sets warmup_steps)", default=0.1)
    save_final_model: bool = _help("save the final policy (model + tokenizer) to <run>/final", default=True)
    logit_temperature: float = _help("divide policy and reference logits by this (EXO/f-PO Pythia: 0.8)", default=1.0)
    logps_chunk_size: int = _help("sequence positions per chunk in the log-prob computation", default=128)
    logps_from_hidden: bool = _help("log-probs from the backbone's hidden states through a chunked LM head, so the "
                                    "[batch, length, vocab] logits never exist; false = from the model's logits "
                                    "(also the fallback under ZeRO-3/FSDP and for unknown architectures)", default=True)
    padding_free: str = _help("pack the B·K responses of a micro-batch into one row with per-sequence position_ids: "
                              "auto = only with flash-attention (variable-length kernel), true = always (sdpa/eager "
                              "get a block-diagonal mask), false = padded rows", default="auto")
    precompute_ref_logps: bool = _help("compute reference log-probs once and cache them on disk", default=False)
    ref_cache_dir: Optional[str] = _help("cache folder for reference log-probs; null = ~/.cache/prefopt", default=None)
    margin_log_every: int = _help("write the per-pair margin log every N optimiser steps; 0 = never", default=1)
    overwrite: bool = _help("start afresh in a run folder that already holds a run (deletes its logs and checkpoints)",
                            default=False)
    quiet: bool = _help("no progress bar or log lines on the console (the run folder still gets every log)",
                        default=False)
    allow_config_change: list = _help("on resume: config keys that may differ from the resumed run's (e.g. "
                                      "train.learning_rate,loss.beta); any other change that alters the optimisation "
                                      "is refused", default_factory=list)
    # TrainingArguments fields with prefopt defaults
    output_dir: Optional[str] = _help("explicit run folder (overrides results/<experiment>/<run_name>)", default=None)
    run_name: Optional[str] = _help("run folder name; null = the loss name", default=None)
    seed: int = _help("seed of initialisation, data order and γ-PO sampling", default=42)
    learning_rate: float = _help("peak learning rate", default=5e-7)
    lr_scheduler_type: str = _help("transformers scheduler name: cosine, linear, constant, ...", default="cosine")
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
    logging_first_step: bool = _help("also log the first step", default=True)
    eval_strategy: Optional[str] = _help("no, steps or epoch; null = steps when eval_steps and data.eval are set",
                                         default=None)
    eval_steps: Optional[int] = _help("evaluate every N steps (needs data.eval); null = only at the end", default=None)
    save_strategy: Optional[str] = _help("no, steps, epoch or best; null = steps when save_steps is set", default=None)
    save_steps: Optional[int] = _help("checkpoint every N steps; null = no intermediate checkpoints", default=None)
    save_total_limit: Optional[int] = _help("keep at most N checkpoints", default=None)
    report_to: list = _help("loggers: tensorboard, wandb, none", default_factory=lambda: ["tensorboard"])
    resume_from_checkpoint: Optional[str] = _help("a checkpoint folder, or 'latest' in the run folder", default=None)
    use_cpu: Optional[bool] = _help("train on the CPU; null = only when the machine has no accelerator", default=None)
    remove_unused_columns: bool = _help("keep false: the collator needs every column", default=False)
    dataloader_num_workers: int = _help("data loader worker processes", default=0)

    #: Fields whose value prefopt derives when they are left unset; config.yaml omits them then (see the docstring).
    DERIVED: ClassVar[tuple[str, ...]] = ("output_dir", "run_name", "warmup_steps", "eval_strategy", "save_strategy",
                                          "activation_checkpointing", "gradient_checkpointing", "use_cpu")
    #: TrainingArguments fields the train section does not take, and what to write instead.
    REPLACED: ClassVar[dict[str, str]] = {
        "gradient_checkpointing": "model.gradient_checkpointing",
        "activation_checkpointing": "model.gradient_checkpointing",
    }

    def __post_init__(self):
        self.derived: set[str] = set()  # which of DERIVED were filled in by prefopt (not written to config.yaml)
        # the fields given a non-default value, before TrainingArguments normalises any (written to config.yaml)
        self.explicit: set[str] = {f.name for f in dataclasses.fields(self)
                                   if _plain(getattr(self, f.name)) != _plain(_field_default(f))}
        self._check_ranges()
        if self.run_name is None:
            self.run_name = "run"
            self.derived.add("run_name")
        if self.output_dir is None:
            self.output_dir = str(Path("results") / self.experiment / self.run_name)
            self.derived.add("output_dir")
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError("train.warmup_steps and train.warmup_ratio are both set: keep one (warmup_ratio is a "
                              "fraction of the steps, warmup_steps a count)")
        if not self.warmup_steps:
            self.warmup_steps = self.warmup_ratio  # transformers 5: a float in [0, 1) is a ratio of the total steps
            self.derived.add("warmup_steps")
        if self.eval_strategy is None:
            self.eval_strategy = "steps" if self.eval_steps else "no"
            self.derived.add("eval_strategy")
        if self.save_strategy is None:
            self.save_strategy = "steps" if self.save_steps else "no"
            self.derived.add("save_strategy")
        if self.use_cpu is None:
            # several processes and no accelerator: only use_cpu makes them one gloo job instead of separate trainings
            self.use_cpu = _no_accelerator()
            self.derived.add("use_cpu")
        if self.activation_checkpointing is None:
            self.derived.update({"activation_checkpointing", "gradient_checkpointing"})
        self.report_to = [r for r in self.report_to if r != "none"] or "none"
        try:
            super().__post_init__()
        except (ValueError, TypeError, NotImplementedError) as error:  # TrainingArguments' own checks: one line
            text = str(error).strip()
            raise ConfigError(f"train: {text.splitlines()[0] if text else type(error).__name__}") from None

    def _check_ranges(self) -> None:
        """Range checks that the types alone cannot express, before TrainingArguments sees the values."""
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        checks = [
            (self.learning_rate > 0 and math.isfinite(self.learning_rate), "train.learning_rate must be > 0"),
            (0 <= self.warmup_ratio < 1, "train.warmup_ratio must lie in [0, 1)"),
            (self.per_device_train_batch_size >= 1, "train.per_device_train_batch_size must be >= 1"),
            (self.per_device_eval_batch_size >= 1, "train.per_device_eval_batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1"),
            (self.max_steps == -1 or self.max_steps >= 1, "train.max_steps must be -1 (use epochs) or >= 1"),
            (self.num_train_epochs > 0, "train.num_train_epochs must be > 0"),
            (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "train.adam_beta1 and adam_beta2 must lie in [0, 1)"),
            (self.adam_epsilon > 0, "train.adam_epsilon must be > 0"),
            (self.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0 = no clipping)"),
            (self.logit_temperature > 0, "train.logit_temperature must be > 0"),
            (self.logps_chunk_size >= 1, "train.logps_chunk_size must be >= 1"),
            (str(self.padding_free).lower() in ("auto", "true", "false"),
             f"train.padding_free must be auto, true or false, got {self.padding_free!r}"),
            (self.logging_steps >= 1, "train.logging_steps must be >= 1"),
            (self.margin_log_every >= 0, "train.margin_log_every must be >= 0 (0 = never)"),
            (self.eval_steps is None or self.eval_steps >= 1, "train.eval_steps must be >= 1 or null"),
            (self.save_steps is None or self.save_steps >= 1, "train.save_steps must be >= 1 or null"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.padding_free = str(self.padding_free).lower()
        for key in ("experiment", "run_name"):  # results/<experiment>/<run_name> stays inside results/
            value = getattr(self, key)
            if value is not None and (value in ("", ".", "..") or "/" in value or "\\" in value):
                raise ConfigError(f"train.{key} must be a plain folder name (no '/' or '..'), got {value!r}; write "
                                  "train.output_dir for a run folder elsewhere")
        loggers = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        valid = ["none", "all", *INTEGRATION_TO_CALLBACK]
        for name in loggers:
            if name not in valid:
                raise ConfigError(f"train.report_to: unknown logger {name!r}: {_suggest(name, valid)}"
                                  f"choose from {', '.join(valid)}")

    def to_yaml_dict(self) -> dict[str, Any]:
        """The resolved section as config.yaml holds it: every field declared here (defaults filled in) and every
        other TrainingArguments field given a non-default value, minus the values prefopt derived."""
        own = set(TrainConfig.__annotations__) - {"DERIVED", "REPLACED"}
        out = {}
        for f in dataclasses.fields(self):
            if f.name in self.derived or f.name in self.REPLACED or not (f.name in own or f.name in self.explicit):
                continue
            out[f.name] = _plain(getattr(self, f.name))
        out["report_to"] = list(self.report_to) or ["none"]  # TrainingArguments turns "none" into []
        return out


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _plain(value: Any) -> Any:
    """A value as YAML can hold it (enums by value, lists of enums too)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    return value


class _Config:
    """What :class:`RunConfig` and :class:`RewardModelConfig` share: sections, the run folder, the YAML layout."""

    SECTIONS: ClassVar[dict[str, type]] = {}
    #: run_name when none is given (None: the loss name).
    DEFAULT_RUN_NAME: ClassVar[Optional[str]] = None
    #: the stage recorded in run_info.json.
    STAGE: ClassVar[str] = "train"

    @property
    def run_dir(self) -> Path:
        return Path(self.train.output_dir)

    @property
    def stage(self) -> str:
        """The stage named in run_info.json."""
        return self.STAGE

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict in the YAML layout (loss hyper-parameters inlined, defaults filled in)."""
        out = {}
        for name in self.SECTIONS:
            if name == "train":
                out[name] = self.train.to_yaml_dict()
            elif name == "loss":
                out[name] = {"name": self.loss.name, **self.loss_hparams}
            else:
                out[name] = dataclasses.asdict(getattr(self, name))
        return out


@dataclass
class RunConfig(_Config):
    """A ``prefopt train`` / ``prefopt sft`` run: model, data, loss, margins (γ-PO) and train."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    margins: MarginConfig = field(default_factory=MarginConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def loss_hparams(self) -> dict[str, Any]:
        """The loss's hyper-parameters with defaults filled in (validated)."""
        return get_loss_spec(self.loss.name).resolve_hparams(self.loss.params)

    @property
    def stage(self) -> str:
        return "sft" if self.loss.name == "sft" else "train"

    @property
    def gamma0(self) -> float:
        """γ0 = β·gamma_beta_ratio, the mean target margin of γ-PO (SPEC §5): the one source of it."""
        return get_loss_spec(self.loss.name).gamma0(self.loss_hparams)


@dataclass
class RewardModelConfig(_Config):
    """A ``prefopt rm`` run: model, data and train; the Bradley–Terry loss has no hyper-parameters to configure."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    DEFAULT_RUN_NAME: ClassVar[Optional[str]] = "rm"
    STAGE: ClassVar[str] = "rm"


RunConfig.SECTIONS = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "margins": MarginConfig,
                      "train": TrainConfig}
RewardModelConfig.SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
#: The sections of a training config (kept for callers of the old module-level name).
SECTIONS = RunConfig.SECTIONS


# ----------------------------------------------------------------------------------------------------------------------
# Parsing and validation
# ----------------------------------------------------------------------------------------------------------------------


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


_HINTS: dict[type, dict[str, Any]] = {}


def _field_types(cls) -> dict[str, Any]:
    """Settable fields of a section and their types (TrainConfig: every TrainingArguments field but the replaced)."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        if issubclass(cls, TrainingArguments):  # a prefopt default keeps TrainingArguments' enum choices (optim, ...)
            for name, hint in typing.get_type_hints(TrainingArguments).items():
                if any(isinstance(a, type) and issubclass(a, enum.Enum) for a in typing.get_args(hint)):
                    hints[name] = Optional[hint] if type(None) in typing.get_args(hints[name]) else hint
        replaced = getattr(cls, "REPLACED", {})
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and f.name not in replaced}
    return _HINTS[cls]


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~"))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value or an override string to the field's type, or raise a ConfigError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X], X | Y
        members = [a for a in args if a is not type(None)]
        if type(None) in args and _is_null(value):
            return None
        choices = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
        if choices:  # an enum or its string value (optim, lr_scheduler_type, *_strategy)
            return _coerce(value, choices[0], where)
        if len(members) == 1:
            return _coerce(value, members[0], where)
        for member in members:  # a value that already has one of the types stays as it is
            plain = typing.get_origin(member) or member
            if isinstance(plain, type) and isinstance(value, plain) and not (isinstance(value, bool) and plain is int):
                return value
        return _coerce(value, members[-1] if str not in members else str, where)
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        valid = [member.value for member in annotation]
        if isinstance(value, annotation):
            return value.value
        if value in valid:
            return value
        raise ConfigError(f"{where}: {value!r} is not valid: {_suggest(str(value), valid)}choose from {', '.join(valid)}")
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


def _section_values(name: str, values: Any) -> dict:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"section {name!r} must be a mapping of keys to values, got {values!r}")
    return values


def _typed_kwargs(name: str, cls: type, values: dict) -> dict:
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key in getattr(cls, "REPLACED", {}):
            raise ConfigError(f"{name}.{key} is not set here: write {cls.REPLACED[key]}")
        if key not in types_:
            own = [f for f in types_ if f in getattr(cls, "__annotations__", {})] or list(types_)
            listed = ", ".join(own) + (", or any transformers.TrainingArguments field" if cls is TrainConfig else "")
            raise ConfigError(f"unknown key {name}.{key}: {_suggest(key, list(types_))}valid keys in {name}: {listed}")
        kwargs[key] = _coerce(value, types_[key], f"{name}.{key}")
    return kwargs


def _build_loss(values: dict) -> LossConfig:
    values = dict(values)
    loss_name = values.pop("name", "")
    params = values.pop("params", {}) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"loss.params must be a mapping, got {params!r}")
    if "margin_tau" in values or "margin_tau" in params:
        raise ConfigError("loss.margin_tau has moved: write margins.tau (every γ-PO setting is in the margins section)")
    params = {key: _number_or_value(value) for key, value in {**params, **values}.items()}
    return LossConfig(name=str(loss_name), params=params)


#: A number as YAML 1.2 writes it; PyYAML (YAML 1.1) reads ``1e-1`` (no dot) as a string.
_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _number_or_value(value: Any) -> Any:
    """A loss hyper-parameter as written: ``1e-1`` is the number 0.1, whatever the YAML reader made of it."""
    if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        return float(value)
    return value


def _build_train(values: dict, kind: type, tree: dict) -> TrainConfig:
    """The train section, with the values prefopt derives from the other sections (run name, eval strategy,
    activation checkpointing) filled in before TrainingArguments checks the whole."""
    kwargs = _typed_kwargs("train", TrainConfig, values)
    derived = set()
    if kwargs.get("run_name") is None:
        loss_name = (tree.get("loss") or {}).get("name") if isinstance(tree.get("loss"), dict) else None
        default = kind.DEFAULT_RUN_NAME or (str(loss_name) if loss_name else None)
        if default:
            kwargs["run_name"] = default
            derived.add("run_name")
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    if "eval_strategy" not in kwargs and not data.get("eval"):
        kwargs["eval_strategy"] = "no"  # eval_steps without eval data: no evaluation (as before)
        derived.add("eval_strategy")
    model = tree.get("model") if isinstance(tree.get("model"), dict) else {}
    checkpointing = _coerce(model.get("gradient_checkpointing", False), bool, "model.gradient_checkpointing")
    kwargs["activation_checkpointing"] = checkpointing
    derived.update({"activation_checkpointing", "gradient_checkpointing"})
    train = TrainConfig(**kwargs)
    train.derived |= derived
    return train


def _build_section(name: str, cls: type, values: Any, kind: type, tree: dict) -> Any:
    values = _section_values(name, values)
    if name == "loss":
        return _build_loss(values)
    if name == "train":
        return _build_train(values, kind, tree)
    return cls(**_typed_kwargs(name, cls, values))


def _apply_override(tree: dict, key: str, raw: str, sections: dict[str, type]) -> None:
    """Set one ``--key value`` override in the nested YAML tree (before typing)."""
    if "." in key:
        section, sub = key.split(".", 1)
        if section not in sections:
            raise ConfigError(f"unknown section in --{key}: {_suggest(section, list(sections))}sections: {', '.join(sections)}")
    else:
        owners = [s for s, cls in sections.items() if s != "loss" and key in _field_types(cls)]
        loss_name = (tree.get("loss") or {}).get("name")
        if "loss" in sections and (key in (LOSSES[loss_name].hparams if loss_name in LOSSES else {}) or key == "name"):
            owners.append("loss")
        if not owners:
            flat = [k for s, cls in sections.items() if s != "loss" for k in _field_types(cls)]
            raise ConfigError(f"unknown option --{key}: {_suggest(key, flat)}write --section.key (sections: {', '.join(sections)})")
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key written twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {seen[key]} and line {key_node.start_mark.line + 1}): "
                    "the second would silently replace the first; merge them", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_tree(path: Optional[str | Path], base: Optional[dict], sections: dict[str, type]) -> dict:
    tree: dict = dict(base or {})
    if path is None:
        return tree
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping with sections {', '.join(sections)}")
    for section, values in (loaded or {}).items():  # per section: the file's keys win over base's defaults
        if isinstance(values, dict) and isinstance(tree.get(section), dict):
            tree[section] = {**tree[section], **values}
        else:
            tree[section] = values
    return tree


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = (), base: Optional[dict] = None,
                kind: type = RunConfig):
    """``base`` (a stage's defaults), then the YAML file section by section, then ``--key value`` overrides; typed and
    validated. ``kind`` is :class:`RunConfig` (train, sft) or :class:`RewardModelConfig` (rm)."""
    sections = kind.SECTIONS
    tree = _read_tree(path, base, sections)
    for key, raw in parse_overrides(overrides):
        _apply_override(tree, key, raw, sections)
    unknown = [k for k in tree if k not in sections]
    if unknown:
        key = unknown[0]
        if kind is RewardModelConfig and key in RunConfig.SECTIONS:
            raise ConfigError(f"a reward-model config has no {key!r} section (the loss is Bradley–Terry): remove it")
        raise ConfigError(f"unknown section {key!r}: {_suggest(key, list(sections))}sections: {', '.join(sections)}")
    typed = {}
    for name in [s for s in sections if s != "train"] + ["train"]:  # train last: it derives values from the others
        typed[name] = _build_section(name, sections[name], tree.get(name), kind, tree)
    config = kind(**typed)
    validate(config)
    return config


def load_rm_config(path: Optional[str | Path] = None, overrides: Sequence[str] = (),
                   base: Optional[dict] = None) -> RewardModelConfig:
    """:func:`load_config` for a reward-model run (``prefopt rm``): no loss section, run name ``rm`` by default."""
    return load_config(path, overrides, base=base, kind=RewardModelConfig)


def validate(config: _Config) -> None:
    """Consistency checks across sections."""
    m, d = config.model, config.data
    if not m.name_or_path:
        raise ConfigError("model.name_or_path is required: a Hub name or a local model folder")
    if not d.train:
        raise ConfigError("data.train is required: a .json/.jsonl file or a Hugging Face dataset name")
    if m.dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise ConfigError(f"model.dtype must be auto, bfloat16, float16 or float32, got {m.dtype!r}")
    checks = [
        (d.max_length >= 2, "data.max_length must be >= 2"),
        (0 < d.max_prompt_length < d.max_length, "data.max_prompt_length must be > 0 and < data.max_length"),
        (0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction must lie in [0, 1]"),
        (d.limit is None or d.limit >= 1, "data.limit must be >= 1 or null"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if not isinstance(config, RunConfig):
        return
    if not config.loss.name:
        raise ConfigError(f"loss.name is required: one of {', '.join(LOSSES)}")
    try:
        config.loss_hparams
    except ValueError as error:
        raise ConfigError(str(error)) from None
    spec = get_loss_spec(config.loss.name)
    g = config.margins
    if not (g.queue_size >= 1 and g.pool_size >= 1 and g.iters >= 1):
        raise ConfigError("margins.queue_size, pool_size and iters must be >= 1")
    if spec.dynamic_margins and g.tau is None:
        raise ConfigError(f"loss {config.loss.name!r} uses γ-PO dynamic margins: set margins.tau (τ > 0)")
    if g.tau is not None and not (math.isfinite(g.tau) and g.tau > 0):
        raise ConfigError(f"margins.tau must be a finite number > 0, got {g.tau!r}")
    if g.tau is not None and not spec.dynamic_margins:
        raise ConfigError(f"margins.tau is set but loss {config.loss.name!r} has no dynamic margins: remove it, or "
                          "use gamma_simpo / gamma_dpo")
    if config.train.precompute_ref_logps and not spec.needs_reference:
        raise ConfigError(f"train.precompute_ref_logps: loss {config.loss.name!r} is reference-free; set it to false")


def save_config(config: _Config, path: str | os.PathLike, header: str = "") -> None:
    Path(path).write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))
