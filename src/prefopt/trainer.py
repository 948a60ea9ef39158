"""One preference trainer for every method, thin over ``transformers.Trainer``.

The official repositories each fork a ~1000-line copy of an old TRL trainer. Here the ecosystem keeps doing what it
does well (DeepSpeed / FSDP through accelerate, gradient accumulation, schedulers, ``report_to``, checkpoints and
``resume_from_checkpoint``) and this class adds only the preference loss:

1. one concatenated forward of the policy over all B·K responses of a micro-batch (pairs are K = 2), and one of the
   reference (or its cached log-probs, :mod:`prefopt.reference`);
2. per-sequence summed or averaged log-probs (:mod:`prefopt.forward`): by default from the backbone's hidden states
   through a chunked LM head, so the ``[B·K, T, V]`` logits never exist (``train.logps_from_hidden``), and with
   padding-free packed rows where a variable-length attention kernel runs (``train.padding_free``);
3. the loss named in the config, looked up in :data:`prefopt.losses.LOSSES` and called through its one interface
   (:class:`~prefopt.losses.PreferenceBatch` in, :class:`~prefopt.losses.LossOutput` out; no per-method branches);
4. for γ-PO, per-pair margins from :class:`prefopt.margins.DynamicMargins`, passed as ``margin_offsets``;
5. metrics in each method's own reward definition and a per-pair margin log (SPEC §9).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import nested_gather

from prefopt.forward import ForwardPlan, plan_forward, summed_logps, unwrap
from prefopt.logps import DEFAULT_CHUNK_SIZE
from prefopt.losses import LossOutput, PreferenceBatch, get_loss_spec
from prefopt.margins import DynamicMargins
from prefopt.runs import MARGIN_STATE_FILE, latest_complete_checkpoint

logger = logging.getLogger(__name__)

#: Written into every checkpoint by the main process: the training loss summed over every step so far, so that a
#: resumed run reports the whole run's mean ``train_loss`` (the Trainer's own covers only its own train() call).
LOSS_SUM_FILE = "prefopt_loss_sum.json"


class JsonlMetricsCallback(TrainerCallback):
    """Appends every log line (train and eval) to metrics.jsonl on the main process (SPEC §9)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def silence_console(trainer: Trainer) -> None:
    """``train.quiet``: drop the Trainer's progress bar and log printer (the run folder still gets every log)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)


class WholeRunLossMixin:
    """For a ``transformers.Trainer`` subclass: ``train_loss`` (the final summary, metrics.json) is the mean over every
    step of the run, also when it was resumed. The Trainer's own averages only the steps of its current ``train()``
    call, so each checkpoint records the loss summed over every step so far (:data:`LOSS_SUM_FILE`, main process)."""

    _loss_sum_before_resume: Optional[float] = None  # set by train() when it resumes

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if "train_loss" in logs and self._loss_sum_before_resume is not None:
            # the final summary of a resumed run (the Trainer has just added its last pending loss)
            logs["train_loss"] = (self._loss_sum_before_resume + self._total_loss_scalar) / max(self.state.global_step, 1)
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        # before the Trainer's own files: trainer_state.json comes last, so a checkpoint that has it has this too.
        # The losses of this call logged so far plus those not yet logged, averaged over ranks as the Trainer logs them.
        folder = self._checkpoint_folder(trial)
        pending = nested_gather(self._tr_loss, self.args.parallel_mode).mean().item()
        loss_sum = (self._loss_sum_before_resume or 0.0) + self._total_loss_scalar + pending
        if self.accelerator.is_main_process:
            (folder / LOSS_SUM_FILE).write_text(json.dumps({"global_step": self.state.global_step, "loss_sum": loss_sum}))
        super()._save_checkpoint(model, trial)

    def _checkpoint_folder(self, trial) -> Path:
        """The ``checkpoint-N`` folder the Trainer is about to save, created, for files written before its own."""
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def train(self, resume_from_checkpoint: Optional[str | bool] = None, **kwargs):
        self._loss_sum_before_resume = None
        if isinstance(resume_from_checkpoint, (str, Path)) and resume_from_checkpoint:
            loss_file = Path(resume_from_checkpoint) / LOSS_SUM_FILE
            if loss_file.is_file():
                self._loss_sum_before_resume = float(json.loads(loss_file.read_text())["loss_sum"])
            else:
                logger.warning("%s has no %s: train_loss will average only the steps run after resuming",
                               resume_from_checkpoint, LOSS_SUM_FILE)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


class PreferenceTrainer(WholeRunLossMixin, Trainer):
    """``transformers.Trainer`` with a preference loss from the registry.

    Args beyond ``Trainer``'s own:
        loss_name, loss_hparams: a registry name and its hyper-parameters (validated here).
        ref_model: the frozen reference; ``None`` when the loss is reference-free or every example carries cached
            ``ref_logps``.
        margins: a :class:`DynamicMargins` for γ-PO losses; its ``gamma0`` must be the loss's β·gamma_beta_ratio.
        pool_margins_across_ranks: solve γ-PO margins over the gaps of all data-parallel ranks at once.
        logit_temperature: divides policy and reference logits (SPEC §3, 0.8 in the EXO/f-PO Pythia configs).
        logps_from_hidden, padding_free: the forward paths (:mod:`prefopt.forward`); None = the ``args`` fields of
            the same names (``train.logps_from_hidden``, ``train.padding_free``), else true and "auto".
        margin_log_path, margin_log_every: where and how often to write the per-pair margin log (JSONL).
    """

    # compute_loss returns the micro-batch mean; the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        loss_name: str,
        loss_hparams: Optional[dict[str, Any]] = None,
        ref_model: Optional[torch.nn.Module] = None,
        margins: Optional[DynamicMargins] = None,
        pool_margins_across_ranks: bool = False,
        logit_temperature: float = 1.0,
        logps_chunk_size: int = DEFAULT_CHUNK_SIZE,
        margin_log_path: Optional[str | Path] = None,
        margin_log_every: int = 1,
        logps_from_hidden: Optional[bool] = None,
        padding_free: Optional[str] = None,
        **kwargs,
    ):
        args_ = kwargs.get("args", args[1] if len(args) > 1 else None)
        model_ = kwargs.get("model", args[0] if args else None)
        self.logps_from_hidden = bool(getattr(args_, "logps_from_hidden", True) if logps_from_hidden is None
                                      else logps_from_hidden)
        self.padding_free = str(getattr(args_, "padding_free", "auto") if padding_free is None else padding_free).lower()
        self._forward_plans: dict[str, ForwardPlan] = {}
        if args_ is not None:
            _settle_find_unused_parameters(args_, model_)
        self.loss_spec = get_loss_spec(loss_name)
        self.loss_hparams = self.loss_spec.resolve_hparams(loss_hparams)
        if self.loss_spec.dynamic_margins:
            if margins is None:
                raise ValueError(f"loss {loss_name!r} uses γ-PO dynamic margins: pass margins=DynamicMargins(...)")
            expected = self.loss_spec.gamma0(self.loss_hparams)
            if abs(margins.gamma0 - expected) > 1e-12 * max(1.0, abs(expected)):
                raise ValueError(f"margins.gamma0 = {margins.gamma0} but loss {loss_name!r} has γ0 = β·gamma_beta_ratio"
                                 f" = {expected}: build DynamicMargins with the loss's γ0")
        self.margins = margins if self.loss_spec.dynamic_margins else None
        self.pool_margins_across_ranks = pool_margins_across_ranks
        self.logit_temperature = logit_temperature
        self.logps_chunk_size = logps_chunk_size
        self.margin_log_path = Path(margin_log_path) if margin_log_path else None
        self.margin_log_every = margin_log_every
        self._stored_metrics: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        super().__init__(*args, **kwargs)
        self.ref_model = None
        if ref_model is not None:
            self.ref_model = self._prepare_reference(ref_model)

    # ------------------------------------------------------------------------------------------------------------------
    # Reference model
    # ------------------------------------------------------------------------------------------------------------------

    def _prepare_reference(self, ref_model: torch.nn.Module) -> torch.nn.Module:
        ref_model.eval()
        for parameter in ref_model.parameters():
            parameter.requires_grad_(False)
        if self.is_deepspeed_enabled:
            return _prepare_deepspeed_reference(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    # ------------------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------------------

    def _forward_plan(self, model: torch.nn.Module, role: str) -> ForwardPlan:
        """Which forward path ``model`` takes (decided on first use, logged in one line per role)."""
        if role not in self._forward_plans:
            sharded = None
            if self.is_deepspeed_enabled and getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3:
                sharded = "DeepSpeed ZeRO-3"
            elif self.is_fsdp_enabled:
                sharded = "FSDP"
            self._forward_plans[role] = plan_forward(model, logps_from_hidden=self.logps_from_hidden,
                                                     padding_free=self.padding_free, sharded=sharded, role=role)
        return self._forward_plans[role]

    def _summed_logps(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                      role: str = "policy") -> tuple[torch.Tensor, torch.Tensor]:
        return summed_logps(model, inputs, self._forward_plan(model, role), temperature=self.logit_temperature,
                            chunk_size=self.logps_chunk_size)

    def _reference_summed_logps(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if "ref_logps" in inputs:
            return inputs["ref_logps"].reshape(-1)
        if self.ref_model is None:
            raise RuntimeError(
                f"loss {self.loss_spec.name!r} needs a reference: pass ref_model or precompute ref_logps"
            )
        with torch.no_grad():
            return self._summed_logps(self.ref_model, inputs, role="reference")[0]

    def _dynamic_margins(self, reward_gaps: torch.Tensor, training: bool) -> torch.Tensor:
        if self.pool_margins_across_ranks and self.accelerator.num_processes > 1:
            gathered = self.accelerator.gather(reward_gaps.detach())
            world_gaps = list(gathered.reshape(self.accelerator.num_processes, -1))
            return self.margins(
                reward_gaps, training=training, world_gaps=world_gaps, rank=self.accelerator.process_index
            )
        return self.margins(reward_gaps, training=training)

    def preference_batch(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> PreferenceBatch:
        """The per-sequence quantities of a collated micro-batch: one forward of the policy (and of the reference,
        unless its log-probs are cached), summed log-probs and token counts ``[B, K]`` (SPEC §1)."""
        batch, k = inputs["rewards"].shape
        summed, counts = self._summed_logps(model, inputs)  # (B·K,), (B·K,)
        ref = None
        if self.loss_spec.needs_reference:
            ref = self._reference_summed_logps(inputs).view(batch, k).to(summed.dtype)
        return PreferenceBatch(policy_logps=summed.view(batch, k), lengths=counts.view(batch, k),
                               targets=inputs["rewards"], ref_logps=ref)

    def batch_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], training: bool):
        """Per-prompt losses ``[B]`` (a :class:`LossOutput`) and the per-pair quantities that metrics and the margin
        log need (``losses``, ``reward_gap``, ``margin``, ``chosen_reward``, ... each ``[B]``, detached)."""
        spec, hp = self.loss_spec, self.loss_hparams
        batch = self.preference_batch(model, inputs)
        margins = None
        if spec.dynamic_margins:  # γ-SimPO / γ-DPO (SPEC §5): margins from the detached reward gaps
            margins = self._dynamic_margins(spec.reward_gaps(batch, hp), training)
            batch = dataclasses.replace(batch, margin_offsets=margins - self.margins.gamma0)
        out: LossOutput = spec(batch, hp)
        if out.chosen_rewards is None:  # SFT: no preference, no rewards
            return out, {"losses": out.losses.detach(), "chosen_logps": batch.policy_logps[:, 0].detach()}
        rows = torch.arange(out.losses.shape[0], device=out.losses.device)
        if margins is None:
            margins = torch.full_like(out.chosen_rewards, spec.static_margin(hp))
        per_pair = {
            "losses": out.losses.detach(),
            "reward_gap": out.chosen_rewards - out.rejected_rewards,
            "margin": margins.to(out.chosen_rewards.dtype),
            "chosen_reward": out.chosen_rewards,
            "rejected_reward": out.rejected_rewards,
            "chosen_logps": batch.policy_logps[rows, out.chosen_index].detach(),
            "rejected_logps": batch.policy_logps[rows, out.rejected_index].detach(),
        }
        return out, per_pair

    def preference_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], training: bool):
        """Mean loss over the micro-batch, plus the per-pair quantities of :meth:`batch_loss`."""
        out, per_pair = self.batch_loss(model, inputs, training)
        return out.losses.mean(), per_pair

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, per_pair = self.preference_loss(model, inputs, training=model.training)
        self._record(per_pair, inputs, "train" if model.training else "eval")
        return (loss, {}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, per_pair = self.preference_loss(model, inputs, training=False)
        self._record(per_pair, inputs, "eval")
        return loss.detach(), None, None

    def _get_train_sampler(self, train_dataset=None):
        """``train.train_sampling_strategy: group_by_length`` on our list of tokenised records: the lengths are each
        record's longest prompt + response (the Trainer's own sampler looks for an ``input_ids`` column)."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if (self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, (list, tuple))
                and dataset and "completion_ids" in dataset[0]):
            from transformers.trainer_pt_utils import LengthGroupedSampler

            lengths = [max(len(f["prompt_ids"]) + len(c) for c in f["completion_ids"]) for f in dataset]
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        dataset=dataset, lengths=lengths)
        return super()._get_train_sampler(train_dataset)

    # ------------------------------------------------------------------------------------------------------------------
    # Metrics and the per-pair margin log (SPEC §9)
    # ------------------------------------------------------------------------------------------------------------------

    def _record(self, per_pair: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], mode: str) -> None:
        if "reward_gap" not in per_pair:  # SFT: no preference, no rewards
            self._store({"logps/chosen": per_pair["chosen_logps"].mean()}, mode)
            return
        gap, margin = per_pair["reward_gap"], per_pair["margin"]
        local = {
            "rewards/chosen": per_pair["chosen_reward"].mean(),
            "rewards/rejected": per_pair["rejected_reward"].mean(),
            "rewards/margins": gap.mean(),
            "rewards/accuracies": (gap > 0).float().mean(),
            "logps/chosen": per_pair["chosen_logps"].mean(),
            "logps/rejected": per_pair["rejected_logps"].mean(),
        }
        if self.loss_spec.dynamic_margins:
            local.update({
                "margins/mean": margin.mean(),
                "margins/std": margin.std(unbiased=False),
                "margins/min": margin.min(),
                "margins/max": margin.max(),
            })
        self._store(local, mode)

        if mode != "train" or not self.margin_log_path or not self.margin_log_every:
            return
        step = self.state.global_step + 1  # the optimiser step this micro-batch contributes to
        if step != 1 and step % self.margin_log_every:
            return
        columns = torch.stack(
            [inputs["index"].to(gap.dtype), gap, margin, per_pair["chosen_reward"], per_pair["rejected_reward"]], dim=1
        )
        columns = self.accelerator.gather(columns.float())
        if self.accelerator.is_main_process:
            self.margin_log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.margin_log_path, "a") as log_file:
                for index, row_gap, row_margin, chosen_reward, rejected_reward in columns.tolist():
                    log_file.write(json.dumps({
                        "step": step, "example": int(index), "reward_gap": row_gap, "margin": row_margin,
                        "chosen_reward": chosen_reward, "rejected_reward": rejected_reward,
                    }) + "\n")

    def _store(self, local: dict[str, torch.Tensor], mode: str) -> None:
        """Average each metric over the ranks now; average over the micro-steps of a logging window in :meth:`log`."""
        values = self.accelerator.gather(torch.stack([v.float() for v in local.values()])[None]).mean(dim=0)
        for name, value in zip(local, values.tolist()):
            self._stored_metrics[mode][name].append(value)

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        mode = "train" if "loss" in logs else "eval"
        prefix = "" if mode == "train" else "eval_"
        for name, values in self._stored_metrics.pop(mode, {}).items():
            logs[f"{prefix}{name}"] = sum(values) / len(values)
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------------------------
    # Resume: the γ-PO queue is part of the checkpoint
    # ------------------------------------------------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        # Written before the Trainer's own files: trainer_state.json comes last, so a checkpoint that has it also has
        # the γ-PO state. One file per rank, since per-rank queues differ (SPEC §5).
        if self.margins is not None:
            state_file = self._checkpoint_folder(trial) / MARGIN_STATE_FILE.format(rank=self.accelerator.process_index)
            torch.save(self.margins.state_dict(), state_file)
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint: Optional[str | bool] = None, **kwargs):
        if resume_from_checkpoint in (True, "latest"):
            required = [MARGIN_STATE_FILE.format(rank=self.accelerator.process_index)] if self.margins is not None else []
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir, required)
            if resume_from_checkpoint is None:
                raise FileNotFoundError(f"no checkpoint-* folder in {self.args.output_dir} to resume from")
        if resume_from_checkpoint and self.margins is not None:
            state_file = Path(resume_from_checkpoint) / MARGIN_STATE_FILE.format(rank=self.accelerator.process_index)
            if not state_file.is_file():
                raise FileNotFoundError(f"{state_file} is missing: this checkpoint has no γ-PO margin state")
            self.margins.load_state_dict(torch.load(state_file, weights_only=False))
            logger.info("restored γ-PO margin state from %s (%d gaps queued)", state_file, self.margins.queue.numel())
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


#: Config attributes of mixture-of-experts models: an expert that no token of a micro-batch is routed to gets no
#: gradient, so DDP must look for unused parameters.
_MOE_CONFIG_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def unused_parameter_risk(model: Optional[torch.nn.Module]) -> Optional[str]:
    """Why a step of this model might leave a trainable parameter without a gradient (None: every one is used)."""
    if model is None:
        return "no model given"
    config = getattr(unwrap(model), "config", None)
    for key in _MOE_CONFIG_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return f"{key}={value}: a mixture-of-experts expert that no token is routed to gets no gradient"
    return None


def _settle_find_unused_parameters(args, model) -> None:
    """``ddp_find_unused_parameters=False`` unless set by hand or a step may leave a parameter unused.

    Every preference loss uses every response's log-probs, and the log-probs use every layer, the embeddings and the
    LM head (the hidden-state path included: the head's weight gets its gradient from the chunked function). So on
    a dense model no trainable parameter goes without a gradient, and the Trainer's default (``True`` without
    gradient checkpointing) only costs DDP an extra traversal of the autograd graph each step and a warning."""
    if getattr(args, "ddp_find_unused_parameters", None) is not None:
        return
    risk = unused_parameter_risk(model)
    if risk is None:
        args.ddp_find_unused_parameters = False
    else:
        logger.info("DDP find_unused_parameters left to the Trainer's default: %s", risk)


def _prepare_deepspeed_reference(ref_model: torch.nn.Module, accelerator) -> torch.nn.Module:
    """Wrap the frozen reference in an inference-only DeepSpeed engine: ZeRO-3 shards it like the policy, other
    stages keep a full copy per GPU (stage 0). Same approach as TRL's reference handling."""
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") != 3:
        zero["stage"] = 0
    hidden = getattr(getattr(ref_model, "config", None), "hidden_size", None)
    if hidden and zero.get("stage") == 3:
        for key, value in (
            ("reduce_bucket_size", hidden * hidden),
            ("stage3_param_persistence_threshold", 10 * hidden),
            ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
        ):
            if zero.get(key) == "auto":
                zero[key] = value
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    engine, *_ = deepspeed.initialize(model=ref_model, config=config)
    engine.eval()
    return engine
