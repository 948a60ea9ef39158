"""One preference trainer for every method, thin over ``transformers.Trainer``.

The official repositories each fork a ~1000-line copy of an old TRL trainer. Here the ecosystem keeps doing what it
does well (DeepSpeed / FSDP through accelerate, gradient accumulation, schedulers, ``report_to``, checkpoints and
``resume_from_checkpoint``) and this class adds only the preference loss:

1. one concatenated forward of the policy over all B·K responses of a micro-batch (pairs are K = 2), and one of the
   reference (or its cached log-probs, :mod:`prefopt.reference`);
2. per-sequence summed or averaged log-probs from :func:`prefopt.logps.sequence_logps`;
3. the loss named in the config, looked up in :data:`prefopt.losses.LOSSES` (no per-method branches here);
4. for γ-PO, per-pair margins from :class:`prefopt.margins.DynamicMargins`, passed as ``margin_offset``;
5. metrics in each method's own reward definition and a per-pair margin log (SPEC §9).
"""

from __future__ import annotations

import copy
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import Trainer

from prefopt.logps import DEFAULT_CHUNK_SIZE, sequence_logps
from prefopt.losses import get_loss_spec
from prefopt.margins import DynamicMargins

logger = logging.getLogger(__name__)

MARGIN_STATE_FILE = "gamma_margins_rank{rank}.pt"


def latest_complete_checkpoint(output_dir: str | Path) -> Optional[str]:
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


class PreferenceTrainer(Trainer):
    """``transformers.Trainer`` with a preference loss from the registry.

    Args beyond ``Trainer``'s own:
        loss_name, loss_hparams: a registry name and its hyper-parameters (validated here).
        ref_model: the frozen reference; ``None`` when the loss is reference-free or every example carries cached
            ``ref_logps``.
        margins: a :class:`DynamicMargins` for γ-PO losses.
        pool_margins_across_ranks: solve γ-PO margins over the gaps of all data-parallel ranks at once.
        logit_temperature: divides policy and reference logits (SPEC §3, 0.8 in the EXO/f-PO Pythia configs).
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
        **kwargs,
    ):
        self.loss_spec = get_loss_spec(loss_name)
        self.loss_hparams = self.loss_spec.resolve_hparams(loss_hparams)
        self.loss_kwargs = self.loss_spec.loss_kwargs(self.loss_hparams)
        if self.loss_spec.dynamic_margins and margins is None:
            raise ValueError(f"loss {loss_name!r} uses γ-PO dynamic margins: pass margins=DynamicMargins(...)")
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

    def _summed_logps(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
        return sequence_logps(
            logits,
            inputs["input_ids"],
            inputs["completion_mask"],
            temperature=self.logit_temperature,
            chunk_size=self.logps_chunk_size,
        )

    def _reference_summed_logps(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if "ref_logps" in inputs:
            return inputs["ref_logps"].reshape(-1)
        if self.ref_model is None:
            raise RuntimeError(
                f"loss {self.loss_spec.name!r} needs a reference: pass ref_model or precompute ref_logps"
            )
        with torch.no_grad():
            return self._summed_logps(self.ref_model, inputs)[0]

    def _dynamic_margins(self, reward_gaps: torch.Tensor, training: bool) -> torch.Tensor:
        if self.pool_margins_across_ranks and self.accelerator.num_processes > 1:
            gathered = self.accelerator.gather(reward_gaps.detach())
            world_gaps = list(gathered.reshape(self.accelerator.num_processes, -1))
            return self.margins(
                reward_gaps, training=training, world_gaps=world_gaps, rank=self.accelerator.process_index
            )
        return self.margins(reward_gaps, training=training)

    def preference_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], training: bool):
        """Mean loss over the micro-batch, plus the per-pair quantities that metrics and the margin log need."""
        spec, hp = self.loss_spec, self.loss_hparams
        batch, k = inputs["rewards"].shape
        summed, counts = self._summed_logps(model, inputs)
        policy, counts = summed.view(batch, k), counts.view(batch, k)
        ref = None
        if spec.needs_reference:
            ref = self._reference_summed_logps(inputs).view(batch, k).to(policy.dtype)
        if spec.averaged_inputs:  # SPEC §1: A(y) = S(y)/n
            policy = policy / counts
            ref = ref / counts if ref is not None else None
        rewards = spec.implicit_rewards(hp, policy, ref)  # [B, K], detached

        if spec.single_response:  # SFT: only the first response of each prompt is a target
            losses = spec.fn(policy[:, 0], **self.loss_kwargs)
            return losses.mean(), {"chosen_logps": summed.view(batch, k)[:, 0].detach()}

        margins = None
        if spec.group:
            losses = spec.fn(policy, ref, inputs["rewards"], **self.loss_kwargs)
            chosen = inputs["rewards"].argmax(dim=-1)  # best and worst candidate by the target, for logging
            rejected = inputs["rewards"].argmin(dim=-1)
        else:
            if k != 2:
                raise ValueError(f"loss {spec.name!r} takes (chosen, rejected) pairs, but the data has K = {k}")
            args = [policy[:, 0], policy[:, 1]]
            if ref is not None:
                args += [ref[:, 0], ref[:, 1]]
            if spec.needs_lengths:
                args += [counts[:, 0], counts[:, 1]]
            margin_offset = None
            if spec.dynamic_margins:
                margins = self._dynamic_margins(rewards[:, 0] - rewards[:, 1], training)
                margin_offset = margins - spec.gamma0(hp)  # γ-SimPO / γ-DPO (SPEC §5)
            losses = spec.fn(*args, margin_offset=margin_offset, **self.loss_kwargs)
            chosen = torch.zeros(batch, dtype=torch.long, device=policy.device)
            rejected = torch.ones(batch, dtype=torch.long, device=policy.device)

        rows = torch.arange(batch, device=policy.device)
        chosen_rewards, rejected_rewards = rewards[rows, chosen], rewards[rows, rejected]
        if margins is None:
            margins = torch.full_like(chosen_rewards, spec.static_margin(hp))
        per_pair = {
            "reward_gap": chosen_rewards - rejected_rewards,
            "margin": margins.to(chosen_rewards.dtype),
            "chosen_reward": chosen_rewards,
            "rejected_reward": rejected_rewards,
            "chosen_logps": summed.view(batch, k)[rows, chosen].detach(),
            "rejected_logps": summed.view(batch, k)[rows, rejected].detach(),
        }
        return losses.mean(), per_pair

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
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            state_file = folder / MARGIN_STATE_FILE.format(rank=self.accelerator.process_index)
            torch.save(self.margins.state_dict(), state_file)
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint: Optional[str | bool] = None, **kwargs):
        if resume_from_checkpoint in (True, "latest"):
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise FileNotFoundError(f"no checkpoint-* folder in {self.args.output_dir} to resume from")
        if resume_from_checkpoint and self.margins is not None:
            state_file = Path(resume_from_checkpoint) / MARGIN_STATE_FILE.format(rank=self.accelerator.process_index)
            if not state_file.is_file():
                raise FileNotFoundError(f"{state_file} is missing: this checkpoint has no γ-PO margin state")
            self.margins.load_state_dict(torch.load(state_file, weights_only=False))
            logger.info("restored γ-PO margin state from %s (%d gaps queued)", state_file, self.margins.queue.numel())
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


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
