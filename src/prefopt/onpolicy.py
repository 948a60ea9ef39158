"""``prefopt onpolicy``: SimPO's on-policy preference data for a new instruct model (SPEC §6.3, §6.4; the recipe
behind princeton-nlp's ``*-ultrafeedback-armorm`` sets and γ-PO's unreleased Qwen2.5 data).

The recipe of SimPO's ``on_policy_data_gen/`` scripts:

1. the unique prompts of UltraFeedback (``HuggingFaceH4/ultrafeedback_binarized``, ``train_prefs``), sorted;
2. N responses per prompt from the model, each prompt as one user turn through the model's chat template with the
   generation prompt; temperature 0.8, top_p 0.95, at most 4096 new tokens (the official scripts run N = 5 decodes
   with seeds 13, 21, 42, 79, 100; we draw the N samples from one seeded sampler, :mod:`prefopt.sample`: the same
   distribution, other draws);
3. prompts whose N responses are all identical are dropped;
4. every response is scored by a reward model (``RLHFlow/ArmoRM-Llama3-8B-v0.1`` by default, which needs
   ``trust_remote_code``; any sequence classifier with one score per sequence): the conversation [user prompt,
   assistant response] through the *reward model's* chat template, one sequence per forward by default, the score
   being the model output's ``score`` (ArmoRM) or its single logit;
5. chosen = the first highest-scoring response, rejected = the first lowest-scoring one. Where every score is equal
   the official code writes chosen == rejected; we drop the prompt instead (such a row carries no preference and
   every trainer here refuses it) and count it.

Rows are written in the schema of ``princeton-nlp/llama3-ultrafeedback-armorm``: ``prompt_id`` (the SHA-256 of the
prompt text, as UltraFeedback's), ``prompt``, ``all_generated_responses``, ``all_rm_scores``, ``chosen`` and
``rejected`` (each [user, assistant] messages), so ``format: pairs`` (or ``princeton_rw``) trains on them.

Resumable: prompts are processed in chunks of ``chunk_size``; each finished chunk is appended to
``<out>.partial.jsonl`` (flushed and synced) next to ``<out>.partial.json`` (the settings). A killed run started again
with the same command keeps every finished chunk and redoes only the rest; each chunk's sampling seed depends on the
chunk's position alone, so the result equals an uninterrupted run's. Other settings than the partial file's are
refused (``--overwrite`` starts afresh). The finished file and its ``<out>.meta.json`` provenance are written
atomically at the end, and the partial files removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from prefopt.data import DataError, Prompt, load_prompts
from prefopt.data.readers import check_output_path, check_source
from prefopt.io import write_atomic, write_jsonl
from prefopt.runs import StageRecord, meta_path

logger = logging.getLogger(__name__)

#: SimPO's on-policy decoding and annotation defaults (on_policy_data_gen/decode.py, reward_model_annotate.py).
DEFAULTS = {"prompts": "HuggingFaceH4/ultrafeedback_binarized", "split": "train_prefs", "n": 5, "temperature": 0.8,
            "top_p": 0.95, "max_new_tokens": 4096, "reward_model": "RLHFlow/ArmoRM-Llama3-8B-v0.1"}
#: The settings a partial file must share with the run that continues it.
RESUME_KEYS = ("model", "prompts", "split", "data_config", "data_dir", "reward_model", "n", "temperature", "top_p",
               "max_new_tokens", "seed", "chunk_size", "limit")


def prompt_id(prompt: Prompt) -> str:
    """SHA-256 hex digest of the prompt text (UltraFeedback's ``prompt_id``); of its JSON for chat messages."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_text_prompt(prompt: Prompt) -> Prompt:
    """A single user turn's text (the schema's string ``prompt``); longer conversations stay messages."""
    if isinstance(prompt, list) and len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    return prompt


def _messages(prompt: Prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def binarize(scores: Sequence[float]) -> Optional[tuple[int, int]]:
    """(chosen, rejected) indices: the first highest and the first lowest score; None when all scores are equal."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    return None if scores[best] == scores[worst] else (best, worst)


class RewardScorer:
    """Scores of [user prompt, assistant response] conversations under a sequence-classification reward model,
    rendered by the reward model's own chat template (SimPO's ``reward_model_annotate.py``)."""

    def __init__(self, name_or_path: str, *, trust_remote_code: bool, dtype: str = "auto", batch_size: int = 1,
                 device: Optional[str] = None):
        from prefopt.models import load_model, load_tokenizer

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"rm batch size must be an integer >= 1, got {batch_size!r}")
        self.name = str(name_or_path)
        self.tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code, what="reward model")
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(f"reward model {self.name!r}: its tokenizer has no chat template to render the "
                            "[user, assistant] conversation with")
        self.model = load_model(name_or_path, kind="classifier", dtype=dtype, trust_remote_code=trust_remote_code,
                                device=device or "auto", eval_mode=True, what="reward model")
        self.batch_size = batch_size
        self.device = next(self.model.parameters()).device

    def _ids(self, prompt: Prompt, response: str) -> list[int]:
        text = self.tokenizer.apply_chat_template([*_messages(prompt), {"role": "assistant", "content": response}],
                                                  tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _scores(self, output, n: int) -> list[float]:
        score = getattr(output, "score", None)
        if score is None:
            logits = output.logits
            if logits.dim() != 2 or logits.shape[-1] != 1:
                raise DataError(f"reward model {self.name!r} gives {tuple(logits.shape[1:])} logits per sequence; "
                                "onpolicy needs one score (a one-label head, or a model whose output has .score)")
            score = logits[:, 0]
        return [float(v) for v in score.float().reshape(n, -1)[:, 0]]

    @torch.no_grad()
    def __call__(self, pairs: Sequence[tuple[Prompt, str]]) -> list[float]:
        sequences = [self._ids(prompt, response) for prompt, response in pairs]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[float] = []
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start:start + self.batch_size]
            length = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
            for row, ids in enumerate(batch):
                input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, :len(ids)] = 1
            kwargs = {"attention_mask": attention_mask.to(self.device)} if len(batch) > 1 else {}
            out += self._scores(self.model(input_ids.to(self.device), **kwargs), len(batch))
        return out


def _read_partial(path: Path) -> list[dict]:
    """Rows of a partial file, a torn last line (the kill came mid-write) dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _append(path: Path, rows: Sequence[dict]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def build_onpolicy(
    model_path: str,
    out_path: str,
    *,
    prompts: str = DEFAULTS["prompts"],
    split: str = DEFAULTS["split"],
    name: Optional[str] = None,
    data_dir: Optional[str] = None,
    format: str = "auto",
    reward_model: str = DEFAULTS["reward_model"],
    trust_remote_code: bool = True,
    n: int = DEFAULTS["n"],
    temperature: float = DEFAULTS["temperature"],
    top_p: float = DEFAULTS["top_p"],
    max_new_tokens: int = DEFAULTS["max_new_tokens"],
    seed: int = 0,
    batch_size: int = 16,
    rm_batch_size: int = 1,
    chunk_size: int = 256,
    limit: Optional[int] = None,
    backend: str = "auto",
    dtype: str = "auto",
    rm_dtype: str = "auto",
    overwrite: bool = False,
    command: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """The on-policy data set of the module docstring, written to ``out_path`` (JSONL); returns the meta dict."""
    from prefopt import sample
    from prefopt.models import check_model_source, load_tokenizer

    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise DataError(f"n (responses per prompt) must be an integer >= 2 to pick a chosen and a rejected one, got {n!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise DataError(f"chunk size must be an integer >= 1, got {chunk_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be an integer >= 1 or None, got {limit!r}")
    out = Path(out_path).expanduser()
    partial, state_file = Path(f"{out}.partial.jsonl"), Path(f"{out}.partial.json")
    check_output_path(out, [prompts], overwrite=overwrite, what="onpolicy")
    check_source(str(prompts), "prompts")
    check_model_source(model_path, "model")  # a typo'd folder fails before hours of sampling, not after
    check_model_source(reward_model, "reward model")
    settings = {"model": str(model_path), "prompts": str(prompts), "split": split, "data_config": name,
                "data_dir": data_dir, "reward_model": str(reward_model), "n": n, "temperature": temperature,
                "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed, "chunk_size": chunk_size,
                "limit": limit}
    if overwrite:
        partial.unlink(missing_ok=True)
        state_file.unlink(missing_ok=True)
    if state_file.is_file():
        saved = json.loads(state_file.read_text(encoding="utf-8"))
        changed = [k for k in RESUME_KEYS if saved.get(k) != settings[k]]
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} then, {settings[k]!r} now" for k in changed)
            raise DataError(f"onpolicy: {partial} was started with other settings ({details}); rerun with those, or "
                            "pass --overwrite to start afresh")
    record = StageRecord(meta_path(out), "onpolicy", command=command)

    loaded, report = load_prompts(str(prompts), split=split, name=name, data_dir=data_dir, format=format)
    unique = sorted(sample.unique_prompts([_as_text_prompt(p) for p in loaded]),
                    key=lambda p: p if isinstance(p, str) else json.dumps(p, sort_keys=True))  # SimPO sorts them
    kept = unique if limit is None else unique[:limit]
    chunks = [kept[start:start + chunk_size] for start in range(0, len(kept), chunk_size)]
    if not state_file.is_file():
        partial.unlink(missing_ok=True)
        write_atomic(state_file, json.dumps(settings, indent=1))

    # Keep the finished chunks of an interrupted run. A chunk's rows go to the partial file in one write, so the
    # chunk is finished when the row of its last prompt is there (a torn write loses that last row first).
    done_rows = _read_partial(partial)
    indices = {r["prompt_index"] for r in done_rows}
    finished = 0
    while finished < len(chunks) and min((finished + 1) * chunk_size, len(kept)) - 1 in indices:
        finished += 1
    done_rows = [r for r in done_rows if r["prompt_index"] < finished * chunk_size]
    write_jsonl(partial, done_rows)
    if finished:
        logger.info("onpolicy: resuming after %d of %d chunks (%s)", finished, len(chunks), partial)

    if finished < len(chunks):
        chosen_backend = sample.resolve_backend(backend, str(model_path))
        tokenizer = load_tokenizer(str(model_path))
        policy = str(model_path) if chosen_backend == "vllm" else sample.load_model(str(model_path), dtype=dtype)
        scorer = RewardScorer(reward_model, trust_remote_code=trust_remote_code, dtype=rm_dtype,
                              batch_size=rm_batch_size)
        for c in tqdm(range(finished, len(chunks)), desc="onpolicy chunks", initial=finished, total=len(chunks)):
            chunk = chunks[c]
            texts = sample.generate(policy, tokenizer, chunk, k=n, temperature=temperature, top_k=0, top_p=top_p,
                                    max_new_tokens=max_new_tokens, seed=sample.row_seed(seed, c, 0) % 2**31,
                                    batch_size=batch_size, backend=chosen_backend, progress=False,
                                    chat_template="always")
            varied = [(i, p, t) for i, (p, t) in enumerate(zip(chunk, texts)) if len(set(t)) > 1]
            scores = scorer([(p, response) for _, p, t in varied for response in t])
            rows, position = [], 0
            for i, prompt in enumerate(chunk):
                index = c * chunk_size + i
                if not varied or varied[0][0] != i:
                    rows.append({"prompt_index": index, "dropped": "identical responses"})
                    continue
                _, _, responses = varied.pop(0)
                row_scores = scores[position:position + n]
                position += n
                pick = binarize(row_scores)
                if pick is None:
                    rows.append({"prompt_index": index, "dropped": "all scores equal"})
                    continue
                rows.append({"prompt_index": index, "prompt_id": prompt_id(prompt), "prompt": prompt,
                             "all_generated_responses": responses, "all_rm_scores": row_scores,
                             "chosen": [*_messages(prompt), {"role": "assistant", "content": responses[pick[0]]}],
                             "rejected": [*_messages(prompt), {"role": "assistant", "content": responses[pick[1]]}]})
            _append(partial, rows)

    rows = _read_partial(partial)
    kept_rows = [{k: v for k, v in r.items() if k != "prompt_index"} for r in rows if "dropped" not in r]
    if not kept_rows:
        raise DataError(f"onpolicy: no prompt of {prompts!r} gave a preference (all responses identical or tied)")
    write_jsonl(out, kept_rows)
    scores = [s for r in kept_rows for s in r["all_rm_scores"]]
    meta = record.finish(
        **settings, out=str(out), data=report.summary(), n_unique_prompts=len(unique), n_prompts=len(kept),
        n_rows=len(kept_rows), n_dropped_identical=sum(r.get("dropped") == "identical responses" for r in rows),
        n_dropped_tied=sum(r.get("dropped") == "all scores equal" for r in rows), rm_batch_size=rm_batch_size,
        backend=backend, score_mean=sum(scores) / len(scores), score_min=min(scores), score_max=max(scores),
    )
    partial.unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)
    logger.info("onpolicy: wrote %d rows to %s (%d prompts; %d dropped as identical, %d as tied)", len(kept_rows), out,
                len(kept), meta["n_dropped_identical"], meta["n_dropped_tied"])
    return meta
