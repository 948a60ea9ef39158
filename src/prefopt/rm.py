"""The reward model of the Table 1 pipeline (SPEC §6.1 steps 3, 4 and 6): train it, label samples, score policies.

The model is a causal-LM backbone with a scalar head, saved and loaded as a standard Hugging Face
``AutoModelForSequenceClassification`` with ``num_labels=1``. For GPT-NeoX (Pythia) and Llama the head is
``score = nn.Linear(hidden_size, 1, bias=False)`` (transformers 5.23: ``GPTNeoXForSequenceClassification`` and
``GenericForSequenceClassification``), so the SPEC's "linear head without bias" is the library's own head, and an RM
trained here loads anywhere ``AutoModelForSequenceClassification`` does. It is initialised from a causal-LM folder
(the SFT model, SPEC §6.1 step 3): the backbone weights are loaded, the LM head is dropped and ``score`` is new.

**Where the score is read.** :func:`reward_scores` reads the head's output at the **last response token** of each
sequence — the last position where ``completion_mask`` is 1, i.e. the EOS that ends every text-prompt response
(SPEC §1) — and never uses the library's pooled logit, which it takes at the rightmost token that is not
``pad_token_id``: with pad = EOS (Pythia, Llama-3) that skips the response's own EOS, and with left padding or a
pad token inside a response it reads elsewhere still.

**Training** (:func:`run_reward_model`, ``prefopt rm``): its own config, :class:`prefopt.config.RewardModelConfig`
(``model``, ``data`` and ``train`` sections; no loss section: the loss is Bradley–Terry, −log σ(r_w − r_l)), and the
run folder of :mod:`prefopt.runs` like ``prefopt train`` (``config.yaml``, ``run_info.json``, ``metrics.jsonl``,
``final/``, ``metrics.json``), on preference pairs (K = 2) of any of our pairs formats; the run name defaults to
``rm``. In each pair the preferred response is the one with the higher reward, the first one on a tie, so pairs rows
(``[1, 0]`` or their ``score_chosen``/``score_rejected``) prefer the chosen response and K = 2 rw rows their
higher-scored one. ``model.ref_name_or_path`` and the log-prob settings of ``train`` play no part.

**Labelling** (:func:`label_completions`, ``prefopt label``) scores the ``{prompt, completions}`` rows of the sample
stage into ``{prompt, completions, rewards}`` rw rows (SPEC §6.1 step 4); :func:`pref_to_rw` turns pairs into the
"pref" setting's rw rows; :func:`mean_reward` is EXO's second metric, the RM's mean reward of a policy's samples
(SPEC §6.1 step 6). All of them tokenise exactly as training does (:func:`prefopt.data.tokenize_records`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from transformers import Trainer

from prefopt.config import ConfigError, RewardModelConfig, load_rm_config  # noqa: F401  (load_rm_config: public here)
from prefopt.data import DataError, PreferenceCollator, Prompt, load_records, tokenize_completions
from prefopt.io import write_atomic, write_json
from prefopt.models import load_from_config, load_model, load_tokenizer, tokenizer_from_config
from prefopt.runs import StageRecord, finish_run, meta_path, start_run
from prefopt.trainer import WholeRunLossMixin

logger = logging.getLogger(__name__)

#: Run name of a reward-model run when ``train.run_name`` is not set (results/<experiment>/rm).
RM_RUN_NAME = RewardModelConfig.DEFAULT_RUN_NAME
#: Written next to the saved RM: how it reads its score and the lengths it was trained with.
RM_INFO_FILE = "prefopt_rm.json"
#: Lengths used when an RM folder has no :data:`RM_INFO_FILE` (the ``data`` section's defaults).
DEFAULT_MAX_LENGTH, DEFAULT_MAX_PROMPT_LENGTH = 1024, 512
_CONFIG_HEADER = "# prefopt reward-model run (prefopt.rm.run_reward_model): Bradley-Terry loss on pairs.\n"


# ----------------------------------------------------------------------------------------------------------------------
# The score
# ----------------------------------------------------------------------------------------------------------------------


def score_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The ``score`` head of a sequence-classification model, through DDP / DeepSpeed / ``torch.compile`` wrappers."""
    inner = model
    for _ in range(8):
        if isinstance(getattr(inner, "module", None), torch.nn.Module):  # DDP, DeepSpeedEngine
            inner = inner.module
        elif isinstance(getattr(inner, "_orig_mod", None), torch.nn.Module):  # torch.compile
            inner = inner._orig_mod
        else:
            break
    head = getattr(inner, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ValueError(
            f"{type(inner).__name__} has no scalar `score` head (nn.Linear(hidden, 1)): load the reward model with "
            "AutoModelForSequenceClassification.from_pretrained(..., num_labels=1)"
        )
    return head


def last_response_index(completion_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the last position where ``completion_mask`` is 1 (the response's last token, EOS for text prompts)."""
    mask = completion_mask.bool()
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=-1).values
    if bool((last < 0).any()):
        rows = (last < 0).nonzero().flatten().tolist()[:5]
        raise ValueError(f"rows {rows} have no response token (completion_mask is all 0): nothing to score")
    return last


def reward_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reward of each of the N sequences of a collated batch, shape ``[N]`` (float32, differentiable).

    One forward of the whole model (so DDP / DeepSpeed wrappers and mixed-precision autocast apply as in any
    forward); the head's per-position output is taken with a forward hook on ``score`` and read at
    :func:`last_response_index`, which equals ``score(last_hidden_state[i, last_i])``. The library's pooled logit
    (rightmost token that is not ``pad_token_id``) is ignored.
    """
    head = score_head(model)
    last = last_response_index(batch["completion_mask"])
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the score head ran {len(captured)} times in one forward; expected exactly once")
    per_position = captured[0]  # [N, L, 1]
    rows = torch.arange(per_position.shape[0], device=per_position.device)
    return per_position[rows, last.to(per_position.device), 0].float()


def preferred_index(rewards: torch.Tensor) -> torch.Tensor:
    """Per pair ([B, 2] rewards), the preferred response: the higher reward, the first one on a tie."""
    return rewards.argmax(dim=-1)  # torch.argmax returns the first maximal index


def pair_gaps(scores: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r_w − r_l, r_w, r_l) of each pair from the ``[B·2]`` scores of a batch and its ``[B, 2]`` rewards."""
    batch, k = rewards.shape
    if k != 2:
        raise ValueError(f"the reward model trains on pairs (K = 2), got K = {k}")
    scores = scores.view(batch, 2)
    winner = preferred_index(rewards).to(scores.device)
    rows = torch.arange(batch, device=scores.device)
    chosen, rejected = scores[rows, winner], scores[rows, 1 - winner]
    return chosen - rejected, chosen, rejected


def bradley_terry_loss(gap: torch.Tensor) -> torch.Tensor:
    """−log σ(r_w − r_l), mean over pairs."""
    return -F.logsigmoid(gap).mean()


@torch.no_grad()
def pair_accuracy(model: torch.nn.Module, examples: Sequence[dict], pad_token_id: int, *, batch_size: int = 32) -> float:
    """Fraction of tokenised pairs whose preferred response scores strictly higher (the RM's eval accuracy)."""
    collate = PreferenceCollator(pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(examples), batch_size):
        batch = collate(list(examples[start : start + batch_size]))
        batch = {key: value.to(device) for key, value in batch.items()}
        gap, _, _ = pair_gaps(reward_scores(model, batch), batch["rewards"])
        correct += int((gap > 0).sum())
    return correct / len(examples)


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


def load_reward_model(name_or_path: str, config: RewardModelConfig, tokenizer):
    """``AutoModelForSequenceClassification`` with one label from a causal-LM folder (new ``score`` head) or an RM
    folder, with ``pad_token_id`` set so that the library's forward accepts batches (its pooled logit is unused)."""
    return load_from_config(name_or_path, config.model, kind="reward_model", pad_token_id=tokenizer.pad_token_id)


def _load_rm_for_scoring(rm_path: str | Path, dtype: str, device: Optional[str]):
    tokenizer = load_tokenizer(str(rm_path), what="reward model")
    model = load_model(str(rm_path), kind="reward_model", dtype=dtype, device=device or "auto", eval_mode=True,
                       what="reward model")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def _rm_info(rm_path: str | Path) -> dict:
    info_file = Path(rm_path) / RM_INFO_FILE
    return json.loads(info_file.read_text()) if info_file.is_file() else {}


def _lengths(rm_path: str | Path, max_length: Optional[int], max_prompt_length: Optional[int]) -> tuple[int, int]:
    """Explicit lengths, else those the RM was trained with (its :data:`RM_INFO_FILE`), else the data defaults."""
    info = _rm_info(rm_path)
    return (max_length or info.get("max_length", DEFAULT_MAX_LENGTH),
            max_prompt_length or info.get("max_prompt_length", DEFAULT_MAX_PROMPT_LENGTH))


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


class RewardTrainer(WholeRunLossMixin, Trainer):
    """``transformers.Trainer`` whose loss is Bradley–Terry on the reward model's last-response-token scores.

    Logs ``rm/accuracy`` (fraction of pairs with r_w > r_l), ``rm/margin`` (mean r_w − r_l), ``rm/chosen`` and
    ``rm/rejected`` (mean scores), ``eval_``-prefixed in evaluation; they are exact over the pairs of each logging
    window (or of the whole evaluation), summed over micro-batches and ranks before dividing.
    """

    # compute_loss returns the micro-batch mean; the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        self._sums: dict[str, torch.Tensor] = {}
        super().__init__(*args, **kwargs)

    def reward_loss(self, model, inputs):
        gap, chosen, rejected = pair_gaps(reward_scores(model, inputs), inputs["rewards"])
        return bradley_terry_loss(gap), gap.detach(), chosen.detach(), rejected.detach()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, gap, chosen, rejected = self.reward_loss(model, inputs)
        self._accumulate(gap, chosen, rejected, "train" if model.training else "eval")
        return (loss, {"reward_gap": gap}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, gap, chosen, rejected = self.reward_loss(model, inputs)
        self._accumulate(gap, chosen, rejected, "eval")
        return loss.detach(), None, None

    def _accumulate(self, gap, chosen, rejected, mode: str) -> None:
        local = torch.stack([(gap > 0).sum().float(), gap.sum(), chosen.sum(), rejected.sum(),
                             torch.tensor(float(gap.numel()), device=gap.device)])
        total = self.accelerator.gather(local[None].float()).sum(dim=0).cpu()
        self._sums[mode] = self._sums.get(mode, torch.zeros(5)) + total

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else ("train" if "loss" in logs else None)
        sums = self._sums.pop(mode, None) if mode else None
        if sums is not None and sums[4] > 0:
            prefix = "eval_" if mode == "eval" else ""
            correct, gap, chosen, rejected, n = sums.tolist()
            logs.update({f"{prefix}rm/accuracy": correct / n, f"{prefix}rm/margin": gap / n,
                         f"{prefix}rm/chosen": chosen / n, f"{prefix}rm/rejected": rejected / n})
        super().log(logs, start_time)


def _pair_counts(examples: Sequence[dict]) -> dict[str, int]:
    second = sum(e["rewards"][1] > e["rewards"][0] for e in examples)
    tied = sum(e["rewards"][1] == e["rewards"][0] for e in examples)
    return {"n": len(examples), "second_preferred": int(second), "tied_first_preferred": int(tied)}


def run_reward_model(config: RewardModelConfig, argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Train a reward model end to end (SPEC §6.1 step 3) and return its final metrics (also in <run>/metrics.json).

    ``metrics["eval_accuracy"]`` is the fraction of ``data.eval`` pairs ranked right by the final model (r_w > r_l).
    The run folder is laid out like ``prefopt train``'s; ``final/`` holds the sequence-classification model, its
    tokenizer and :data:`RM_INFO_FILE`.
    """
    from transformers import set_seed

    from prefopt.train import prepare_datasets
    from prefopt.trainer import JsonlMetricsCallback, silence_console

    run_dir, d, t = config.run_dir, config.data, config.train
    state, checkpoint, record = start_run(config, command=argv, config_header=_CONFIG_HEADER)

    tokenizer = tokenizer_from_config(config.model)
    datasets, data_reports = prepare_datasets(config, tokenizer)
    for name, examples in datasets.items():
        ks = sorted({len(e["completion_ids"]) for e in examples})
        if ks != [2]:
            source = d.train if name == "train" else d.eval
            raise ConfigError(
                f"the reward model trains on preference pairs (K = 2), but {source!r} has K = {ks}: use pairs data "
                "({prompt, chosen, rejected}) or rw rows with two completions"
            )

    set_seed(t.seed)  # the new score head's initialisation
    model = load_reward_model(checkpoint or config.model.name_or_path, config, tokenizer)
    trainer = RewardTrainer(
        model=model,
        args=t,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("eval"),
        data_collator=PreferenceCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[JsonlMetricsCallback(run_dir / "metrics.jsonl")],
    )
    if t.quiet:
        silence_console(trainer)
    record.update(loss="bradley_terry", data=data_reports,
                  pairs={name: _pair_counts(examples) for name, examples in datasets.items()})
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics: dict[str, Any] = {"train": dict(result.metrics), "global_step": trainer.state.global_step}
    if "eval" in datasets:
        metrics["eval"] = trainer.evaluate()
        metrics["eval_accuracy"] = metrics["eval"]["eval_rm/accuracy"]
    if t.save_final_model:
        final = run_dir / "final"
        trainer.save_model(str(final))
        if trainer.is_world_process_zero():
            write_json(final / RM_INFO_FILE, {
                "score": "score head (nn.Linear(hidden, 1)) at the last response token (last completion_mask == 1)",
                "loss": "bradley_terry", "max_length": d.max_length, "max_prompt_length": d.max_prompt_length,
                "tokenization": d.tokenization, "apply_chat_template": d.apply_chat_template,
                "base_model": config.model.name_or_path,
            })
    return finish_run(trainer, record, metrics)


# ----------------------------------------------------------------------------------------------------------------------
# Scoring, labelling and the mean-reward metric
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def score_completions(
    rm_path: str | Path,
    prompts: Sequence[Prompt],
    completions: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    max_length: Optional[int] = None,
    max_prompt_length: Optional[int] = None,
    dtype: str = "float32",
    device: Optional[str] = None,
    chat_template: Optional[str] = None,
) -> list[list[float]]:
    """The RM's reward of each completion, shaped like ``completions`` (any K per prompt, repeats allowed).

    Tokenised exactly as training (:func:`prefopt.data.tokenize_records`; lengths, ``data.tokenization`` and the
    string-prompt rule default to those the RM was trained with, recorded in its :data:`RM_INFO_FILE`: an RM without
    that file, e.g. one from the Hub, gets ``auto``, one trained before the rule was recorded ``never``), each completion scored as its own sequence, ``batch_size`` sequences per forward, longest first.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    max_length, max_prompt_length = _lengths(rm_path, max_length, max_prompt_length)
    info = _rm_info(rm_path)
    tokenizer, model = _load_rm_for_scoring(rm_path, dtype, device)
    examples = tokenize_completions(prompts, completions, tokenizer, max_length=max_length,
                                    max_prompt_length=max_prompt_length,
                                    tokenization=info.get("tokenization", "trl"),
                                    chat_template=chat_template or info.get("apply_chat_template",
                                                                            "never" if info else "auto"))
    flat = [{"index": j, "prompt_ids": e["prompt_ids"], "completion_ids": [c], "rewards": [0.0]}
            for e in examples for j, c in enumerate(e["completion_ids"])]
    order = sorted(range(len(flat)), key=lambda j: -(len(flat[j]["prompt_ids"]) + len(flat[j]["completion_ids"][0])))
    collate = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    values: list[float] = [math.nan] * len(flat)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([flat[j] for j in chunk])
        scores = reward_scores(model, {key: value.to(device) for key, value in batch.items()})
        for j, value in zip(chunk, scores.tolist()):
            values[j] = value
    out, position = [], 0
    for group in completions:
        out.append(values[position : position + len(group)])
        position += len(group)
    return out


def _check_sample_row(row: Any, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be an object {{prompt, completions}}")
    prompt, completions = row.get("prompt"), row.get("completions")
    if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
        raise DataError(f"{where}: prompt must be a non-empty string or a list of chat messages")
    if not isinstance(completions, list) or not completions or not all(isinstance(c, str) for c in completions):
        raise DataError(f"{where}: completions must be a non-empty list of strings")
    return row


def _read_samples(path: str | Path, *, split: str = "train", name: Optional[str] = None,
                  data_dir: Optional[str] = None) -> list[dict]:
    """The ``{prompt, completions}`` rows of a samples JSONL (the sample stage's output), or of a Hub dataset by name
    (``split``, ``name`` = its configuration, ``data_dir``) with those columns; any bad row is an error, since a
    dropped row would shift the labels."""
    from prefopt.data.readers import _read_rows, check_source

    check_source(str(path), "samples")
    local = Path(path).expanduser()
    if not local.is_file():
        rows = [_check_sample_row(row, f"{path} row {i}") for i, row in
                enumerate(_read_rows(str(path), split=split, name=name, limit=None, data_dir=data_dir)[0], start=1)]
        if not rows:
            raise DataError(f"{path} has no rows")
        return rows
    path = local
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {line_number}: invalid JSON ({err.msg})") from None
            rows.append(_check_sample_row(row, f"{path} line {line_number}"))
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def _summary(values: Sequence[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    return {"reward_mean": mean, "reward_std": (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5,
            "reward_min": min(values), "reward_max": max(values)}


def label_completions(
    rm_path: str | Path,
    samples_path: str | Path,
    out_path: str | Path,
    *,
    batch_size: int = 32,
    max_length: Optional[int] = None,
    max_prompt_length: Optional[int] = None,
    dtype: str = "float32",
    device: Optional[str] = None,
    command: Optional[Sequence[str]] = None,
    overwrite: bool = False,
    split: str = "train",
    name: Optional[str] = None,
    data_dir: Optional[str] = None,
    chat_template: Optional[str] = None,
) -> dict[str, Any]:
    """The ``prefopt label`` stage (SPEC §6.1 step 4): score every completion of a samples file with the RM.

    ``samples_path`` may also be a Hub dataset by name (``split``, ``name``, ``data_dir``). String prompts follow
    ``chat_template`` (auto / always / never); None = the rule the RM was trained with (see
    :func:`score_completions`).

    ``samples_path`` holds ``{prompt, completions}`` JSONL rows (the sample stage's output; completions may repeat).
    ``out_path`` receives the same rows, in order, with ``rewards`` aligned to ``completions`` (other keys kept, an
    existing ``rewards`` replaced), and ``<out_path>.meta.json`` the provenance record (:mod:`prefopt.runs`) with
    the RM, counts and reward statistics; both written atomically. ``max_length`` / ``max_prompt_length`` default to the RM's training lengths. Returns the meta dict.
    ``out_path`` may never be ``samples_path``, nor an existing file unless ``overwrite`` (DataError).
    """
    from prefopt.data.readers import check_output_path

    check_output_path(out_path, [samples_path], overwrite=overwrite, what="label")
    record = StageRecord(meta_path(Path(out_path).expanduser()), "label", command=command)
    rows = _read_samples(samples_path, split=split, name=name, data_dir=data_dir)
    max_length, max_prompt_length = _lengths(rm_path, max_length, max_prompt_length)
    rewards = score_completions(rm_path, [r["prompt"] for r in rows], [r["completions"] for r in rows],
                                batch_size=batch_size, max_length=max_length, max_prompt_length=max_prompt_length,
                                dtype=dtype, device=device, chat_template=chat_template)
    out = Path(out_path).expanduser()
    text = "".join(json.dumps({**row, "rewards": scores}, ensure_ascii=False) + "\n" for row, scores in zip(rows, rewards))
    write_atomic(out, text)
    flat = [value for scores in rewards for value in scores]
    ks = sorted({len(r["completions"]) for r in rows})
    meta = record.finish(
        rm=str(rm_path), samples=str(samples_path), out=str(out_path), n_prompts=len(rows), n_completions=len(flat),
        k=ks[0] if len(ks) == 1 else ks, **_summary(flat), max_length=max_length, max_prompt_length=max_prompt_length,
        batch_size=batch_size, dtype=dtype,
    )
    logger.info("labelled %d completions of %d prompts into %s (mean reward %.4f)", len(flat), len(rows), out,
                meta["reward_mean"])
    return meta


def pref_to_rw(
    pairs_path: str,
    out_path: str | Path,
    *,
    split: str = "train",
    name: Optional[str] = None,
    limit: Optional[int] = None,
    max_bad_fraction: float = 0.01,
    command: Optional[Sequence[str]] = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The "pref" setting's rw data (SPEC §6.1 step 4): ``{prompt, chosen, rejected}`` pairs (any of our pairs
    formats, validated by :func:`prefopt.data.load_records`) → ``{prompt_id, prompt, completions: [chosen,
    rejected], rewards: [1.0, 0.0]}`` JSONL (dataset scores, if any, are not carried over), plus
    ``<out_path>.meta.json`` (the provenance record of :mod:`prefopt.runs`); both atomic. Returns the meta dict.
    ``out_path`` may never be ``pairs_path``, nor an existing file unless ``overwrite`` (DataError)."""
    from prefopt.data.readers import check_output_path

    check_output_path(out_path, [pairs_path], overwrite=overwrite, what="pref-to-rw")
    record = StageRecord(meta_path(Path(out_path).expanduser()), "pref-to-rw", command=command)
    records, report = load_records(pairs_path, split=split, format="pairs", limit=limit,
                                   max_bad_fraction=max_bad_fraction, name=name)
    out = Path(out_path).expanduser()
    text = "".join(json.dumps({"prompt_id": r.id, "prompt": r.prompt, "completions": list(r.completions),
                               "rewards": [1.0, 0.0]}, ensure_ascii=False) + "\n" for r in records)
    write_atomic(out, text)
    return record.finish(pairs=str(pairs_path), out=str(out_path), data=report.summary(), n_rows=report.n_rows,
                         n_pairs=len(records), n_bad_rows=len(report.bad))


def mean_reward(
    rm_path: str | Path,
    samples_path: str | Path,
    *,
    batch_size: int = 32,
    max_length: Optional[int] = None,
    max_prompt_length: Optional[int] = None,
    dtype: str = "float32",
    device: Optional[str] = None,
) -> dict[str, Any]:
    """EXO's second metric (SPEC §6.1 step 6): the RM's mean reward over every completion of a policy's samples file,
    with a normal-approximation 95% interval (:func:`prefopt.winrate.mean_and_ci`, one value per completion)."""
    from prefopt.winrate import mean_and_ci

    rows = _read_samples(samples_path)
    rewards = score_completions(rm_path, [r["prompt"] for r in rows], [r["completions"] for r in rows],
                                batch_size=batch_size, max_length=max_length, max_prompt_length=max_prompt_length,
                                dtype=dtype, device=device)
    flat = [value for scores in rewards for value in scores]
    mean, ci = mean_and_ci(flat)
    return {"rm": str(rm_path), "samples": str(samples_path), "mean_reward": mean, "ci": list(ci),
            "std": _summary(flat)["reward_std"], "n_prompts": len(rows), "n_completions": len(flat)}
