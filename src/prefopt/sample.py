"""The sampling stage: K completions per prompt from a model (SPEC §6.1 steps 4 and 6, §8).

SPEC §6.1 step 4 samples K = 4 completions per train prompt from the SFT model (temperature 0.8, top_k 0) to build
the rw data; step 6 samples 4 per unique test prompt from each policy for the judge; the small world of SPEC §8 does
the same on a CPU. ``prefopt sample`` (:func:`sample_to_jsonl`) reads the prompts of any of our data files, keeps the
unique ones, and writes ``{"prompt", "completions": [K strings]}`` JSONL rows, the rw format before scoring.

Prompts are tokenised exactly as training tokenises them (:func:`prefopt.data.encode_prompts`: the chat template
with the generation prompt for chat prompts, plain text otherwise, exactly one BOS), so the model continues the very
text it was trained to continue.

Reproducibility (``hf`` backend). Every generated sequence — sample j of prompt i — draws its randomness from its
own generator seeded from ``(seed, i, j)``. Sampling is Gumbel-max on the temperature / top-k / top-p-warped
logits, which draws from exactly the distribution that multinomial sampling draws from. So the output does not
depend on ``batch_size`` or on which prompts share a batch (up to the last-bit floating-point differences that
padding can make in the logits), sample j of prompt i is the same for every k > j, and a run is reproducible run to
run on the same device and software (a CPU and a GPU draw different numbers). Temperature 0 is greedy decoding: one
sequence per prompt, repeated K times. The ``vllm`` backend seeds each prompt's request from ``(seed, i)``: reproducible run
to run with the same vLLM version and hardware, but its samples are not those of the ``hf`` backend.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from prefopt import models
from prefopt.data import DataError, Prompt, encode_prompts, load_prompts
from prefopt.data.readers import check_source
from prefopt.data.tokenize import chat_template_applies
from prefopt.io import write_atomic
from prefopt.models import load_tokenizer  # noqa: F401  (the sampler's tokenizer: the model's own, pad = EOS)
from prefopt.runs import StageRecord, meta_path  # noqa: F401  (meta_path: the samples file's sidecar)

logger = logging.getLogger(__name__)

#: Accepted values of ``backend``: ``auto`` is vLLM when it is installed, CUDA is available and the model is given
#: by path (vLLM loads weights itself), else ``hf`` (transformers ``generate``).
BACKENDS = ("auto", "hf", "vllm")


# ---------------------------------------------------------------------------------------------------------------
# Settings, prompts and models
# ---------------------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_settings(*, k, temperature, top_k, top_p, max_new_tokens, seed, batch_size, stop_strings, backend) -> None:
    """One DataError line per wrong generation setting, raised before any model is loaded."""
    if not _is_int(k) or k < 1:
        raise DataError(f"k (completions per prompt) must be an integer >= 1, got {k!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise DataError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not _is_int(top_k) or top_k < 0:
        raise DataError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
        raise DataError(f"top_p must lie in (0, 1] (1 = off), got {top_p!r}")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise DataError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not _is_int(seed) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if stop_strings is not None and (
        isinstance(stop_strings, str) or not all(isinstance(s, str) and s for s in stop_strings)
    ):
        raise DataError(f"stop_strings must be a list of non-empty strings or None, got {stop_strings!r}")
    if backend not in BACKENDS:
        raise DataError(f"unknown sampling backend {backend!r}; use one of {', '.join(BACKENDS)}")


def resolve_backend(backend: str, model: Any = None) -> str:
    """``hf`` or ``vllm`` for a ``backend`` setting (see :data:`BACKENDS`); asking for a missing vLLM is an error."""
    if backend not in BACKENDS:
        raise DataError(f"unknown sampling backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "hf":
        return "hf"
    installed = importlib.util.find_spec("vllm") is not None
    if backend == "vllm":
        if not installed:
            raise DataError("backend 'vllm' asked for but vLLM is not installed; pip install 'prefopt[vllm]' or use hf")
        return "vllm"
    by_path = model is None or isinstance(model, (str, os.PathLike))
    return "vllm" if installed and by_path and torch.cuda.is_available() else "hf"


def render_prompts(prompts: Sequence[Prompt], tokenizer, chat_template: str = "never") -> list[list[int]]:
    """Token ids of each prompt exactly as training sees them (:func:`prefopt.data.encode_prompts`, SPEC §6.1 step 4).

    Chat prompts (lists of ``{role, content}``) go through the tokenizer's chat template with the generation prompt;
    string prompts too when ``chat_template`` (``auto``, ``always``, ``never``:
    :data:`prefopt.data.tokenize.CHAT_TEMPLATE_RULES`) says so, else they are encoded as they are; all get exactly
    one leading BOS where the tokenizer uses one.
    """
    return encode_prompts(prompts, tokenizer, chat_template=chat_template)


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of sample ``sample_index`` of prompt ``prompt_index``: a hash, so nearby seeds share no stream."""
    digest = hashlib.sha256(f"prefopt.sample:{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def load_model(name_or_path: str, *, dtype: str = "auto", device: Optional[Union[str, torch.device]] = None):
    """A causal LM for generation: :func:`prefopt.models.load_model` on ``device`` (CUDA when available), eval mode."""
    return models.load_model(name_or_path, dtype=dtype, device=device or "auto", eval_mode=True)


# ---------------------------------------------------------------------------------------------------------------
# transformers backend
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Sampled:
    """Completions per prompt and how many sequences ran into ``max_new_tokens`` (no EOS, no stop string)."""

    texts: list[list[str]]
    n_hit_max_new_tokens: int


def _logits_processors():
    from transformers import LogitsProcessor, StoppingCriteria

    class GumbelSampler(LogitsProcessor):
        """Sampling with one generator per sequence: warp the logits as HF's sampler does (temperature, then top-k,
        then top-p), add Gumbel noise, and let greedy decoding take the argmax — an exact draw from the warped
        softmax (the Gumbel-max trick) whose randomness belongs to the sequence, not to the batch."""

        def __init__(self, temperature: float, top_k: int, top_p: float, seeds: Sequence[int], device):
            from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

            self.warpers = [TemperatureLogitsWarper(float(temperature))]
            if top_k > 0:
                self.warpers.append(TopKLogitsWarper(int(top_k)))
            if top_p < 1:
                self.warpers.append(TopPLogitsWarper(float(top_p)))
            self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            scores = scores.float()
            for warp in self.warpers:
                scores = warp(input_ids, scores)
            vocab = scores.shape[-1]
            uniform = torch.stack(
                [torch.rand(vocab, generator=g, device=scores.device, dtype=torch.float32) for g in self.generators]
            )
            gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(torch.float32).tiny)))
            return scores + gumbel  # -inf (cut by top-k / top-p) stays -inf

    class StopOnStrings(StoppingCriteria):
        """Stop a sequence once its decoded new text contains a stop string (exact for any tokenizer)."""

        def __init__(self, tokenizer, stop_strings: Sequence[str], prompt_length: int):
            self.tokenizer, self.stop_strings, self.prompt_length = tokenizer, list(stop_strings), prompt_length

        def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
            texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
            hits = [any(stop in text for stop in self.stop_strings) for text in texts]
            return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)

    return GumbelSampler, StopOnStrings


def _eos_ids(model, tokenizer) -> list[int]:
    """Tokens that end a response: the tokenizer's EOS and the model's generation EOS ids (end-of-turn tokens)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = [configured] if isinstance(configured, int) else list(configured or [])
    ids = [tokenizer.eos_token_id, *configured]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _generation_config(model, tokenizer, max_new_tokens: int):
    """(config, EOS ids, pad id) for greedy decoding of at most ``max_new_tokens``; sampling is our logits processor.
    Knobs a model's
    generation_config.json may set (repetition penalty, n-gram blocking, minimum length) are pinned to neutral, so
    the samples follow the settings written to the meta file and nothing else."""
    from transformers import GenerationConfig

    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, num_return_sequences=1, use_cache=True,
        eos_token_id=eos or None, pad_token_id=pad, repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0,
    ), eos, pad


def _left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, length - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, length - len(ids):] = 1
    return input_ids.to(device), attention_mask.to(device)


def _finish(tokens: list[int], tokenizer, eos: Sequence[int], stop_strings, max_new_tokens: int) -> tuple[str, bool]:
    """Decoded new text (up to the first EOS and before the first stop string) and whether it ran out of tokens."""
    ended = next((i for i, token in enumerate(tokens) if token in eos), None)
    text = tokenizer.decode(tokens[:ended], skip_special_tokens=True)
    stops = [text.find(stop) for stop in stop_strings or () if stop in text]
    if stops:
        text = text[: min(stops)]
    return text.strip(), ended is None and not stops and len(tokens) >= max_new_tokens


def _generate_hf(model, tokenizer, prompt_ids, *, k, temperature, top_k, top_p, max_new_tokens, seed, batch_size,
                 stop_strings, progress=True) -> _Sampled:
    GumbelSampler, StopOnStrings = _logits_processors()
    from transformers import LogitsProcessorList, StoppingCriteriaList

    greedy = temperature == 0
    samples = 1 if greedy else k
    rows = [(i, j) for i in range(len(prompt_ids)) for j in range(samples)]
    # Longest prompts first: batches of similar length pad little, and an out-of-memory error shows up at once.
    order = sorted(range(len(rows)), key=lambda r: -len(prompt_ids[rows[r][0]]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    config, eos, pad = _generation_config(model, tokenizer, max_new_tokens)
    device = next(model.parameters()).device
    texts: list[list[str]] = [[""] * samples for _ in prompt_ids]
    n_hit = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc="sampling", unit="batch", disable=not progress):
                input_ids, attention_mask = _left_pad([prompt_ids[rows[r][0]] for r in batch], pad, device)
                processors = None if greedy else LogitsProcessorList(
                    [GumbelSampler(temperature, top_k, top_p, [row_seed(seed, *rows[r]) for r in batch], device)]
                )
                criteria = StoppingCriteriaList([StopOnStrings(tokenizer, stop_strings, input_ids.shape[1])]) \
                    if stop_strings else None
                output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                        logits_processor=processors, stopping_criteria=criteria)
                for r, tokens in zip(batch, output[:, input_ids.shape[1]:].tolist()):
                    i, j = rows[r]
                    texts[i][j], hit = _finish(tokens, tokenizer, eos, stop_strings, max_new_tokens)
                    n_hit += hit
    finally:
        model.train(was_training)
    if greedy:
        texts = [group * k for group in texts]
        n_hit *= k
    return _Sampled(texts, n_hit)


# ---------------------------------------------------------------------------------------------------------------
# vLLM backend (GPU only; never imported unless asked for)
# ---------------------------------------------------------------------------------------------------------------


def _generate_vllm(model_path: str, prompt_ids, *, k, temperature, top_k, top_p, max_new_tokens, seed, stop_strings,
                   dtype: str = "auto") -> _Sampled:
    from vllm import LLM, SamplingParams

    greedy = temperature == 0
    llm = LLM(model=str(model_path), dtype=dtype, seed=seed)
    params = [
        SamplingParams(n=1 if greedy else k, temperature=float(temperature), top_k=top_k if top_k > 0 else -1,
                       top_p=float(top_p), max_tokens=max_new_tokens, seed=row_seed(seed, i, 0),
                       stop=list(stop_strings) if stop_strings else None, skip_special_tokens=True)
        for i in range(len(prompt_ids))
    ]
    outputs = llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], sampling_params=params,
                           use_tqdm=True)
    texts = [[choice.text.strip() for choice in output.outputs] for output in outputs]
    n_hit = sum(choice.finish_reason == "length" for output in outputs for choice in output.outputs)
    if greedy:
        texts, n_hit = [group * k for group in texts], n_hit * k
    return _Sampled(texts, n_hit)


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


def _sample(model, tokenizer, prompts, *, k, temperature, top_k, top_p, max_new_tokens, seed, batch_size,
            stop_strings, backend, dtype="auto", progress=True, chat_template="never") -> tuple[_Sampled, str]:
    _check_settings(k=k, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                    batch_size=batch_size, stop_strings=stop_strings, backend=backend)
    chosen = resolve_backend(backend, model)
    prompt_ids = render_prompts(list(prompts), tokenizer, chat_template)
    empty = [i for i, ids in enumerate(prompt_ids) if not ids]
    if empty:
        raise DataError(f"prompt {empty[0]} is empty after tokenisation; the model needs at least one prompt token")
    if not prompt_ids:
        return _Sampled([], 0), chosen
    settings = dict(k=k, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                    seed=seed, stop_strings=stop_strings)
    if chosen == "vllm":
        if not isinstance(model, (str, os.PathLike)):
            raise DataError("backend 'vllm' loads the weights itself: pass the model's path, not a loaded model")
        return _generate_vllm(model, prompt_ids, dtype=dtype, **settings), chosen
    if isinstance(model, (str, os.PathLike)):
        model = load_model(str(model), dtype=dtype)
    return _generate_hf(model, tokenizer, prompt_ids, batch_size=batch_size, progress=progress, **settings), chosen


def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    k: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    stop_strings: Optional[list[str]] = None,
    backend: str = "auto",
    progress: bool = True,
    chat_template: str = "never",
) -> list[list[str]]:
    """K completions per prompt, in prompt order (SPEC §6.1 step 4; §8).

    ``model`` is a loaded causal LM or a model path (the ``vllm`` backend needs a path). Prompts are text or chat
    messages, tokenised by :func:`render_prompts` (string prompts by the ``chat_template`` rule) and left-padded. ``temperature`` 0 is greedy decoding (the K
    completions are then one completion repeated), ``top_k`` 0 and ``top_p`` 1 are off; a completion ends at EOS (the
    tokenizer's or the model's generation EOS ids), at ``max_new_tokens`` new tokens, or just before the first of
    ``stop_strings`` (which is cut off). Only the new tokens are decoded, special tokens skipped and whitespace
    stripped. ``batch_size`` counts sequences (prompt × sample) per forward pass. The result is reproducible for a
    fixed ``seed`` and, with the ``hf`` backend, independent of ``batch_size`` and batch composition (see the module
    docstring). A progress bar runs over the batches unless ``progress=False``.
    """
    sampled, _ = _sample(model, tokenizer, prompts, k=k, temperature=temperature, top_k=top_k, top_p=top_p,
                         max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, stop_strings=stop_strings,
                         backend=backend, progress=progress, chat_template=chat_template)
    return sampled.texts


def _prompt_key(prompt: Prompt) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def unique_prompts(prompts: Sequence[Prompt]) -> list[Prompt]:
    """Prompts without repeats, in first-seen order (SPEC §6.1 step 6 samples unique test prompts)."""
    seen: dict[str, Prompt] = {}
    for prompt in prompts:
        seen.setdefault(_prompt_key(prompt), prompt)
    return list(seen.values())


def sample_to_jsonl(
    model_path: str,
    prompts_path: str,
    out_path: str,
    *,
    k: int,
    temperature: float,
    top_k: int,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    limit: Optional[int] = None,
    dtype: str = "auto",
    stop_strings: Optional[list[str]] = None,
    backend: str = "auto",
    command: Optional[Sequence[str]] = None,
    split: str = "train",
    name: Optional[str] = None,
    data_dir: Optional[str] = None,
    format: str = "auto",
    chat_template: str = "auto",
) -> dict:
    """The ``prefopt sample`` stage (SPEC §6.1 steps 4 and 6): K completions for each unique prompt of a data source.

    ``prompts_path`` is a local .json/.jsonl/.parquet file or a Hub dataset by name (with ``split``, ``name`` = its
    configuration and ``data_dir``, as every stage reads data), whose rows are in any of our data formats
    (``format``, default auto-detected), or ``{prompt}`` rows; the prompt of each row is read as training reads it
    (:func:`prefopt.data.load_prompts`). String prompts go through the model's chat template by the ``chat_template``
    rule (default ``auto``: when the tokenizer has one; ``never`` for HH / TL;DR text prompts). Repeated prompts
    are kept once, in first-seen order, and ``limit`` keeps the first ``limit`` unique prompts. The model and its
    tokenizer are loaded with ``from_pretrained``. ``out_path`` receives one JSON row ``{"prompt", "completions"}`` per
    prompt and ``<out_path>.meta.json`` the provenance record (:mod:`prefopt.runs`) with the settings, model, prompt
    counts, resolved backend and wall time; both are written atomically (a temporary file renamed into place). Returns the meta dict.
    """
    record = StageRecord(meta_path(Path(out_path).expanduser()), "sample", command=command)
    _check_settings(k=k, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                    batch_size=batch_size, stop_strings=stop_strings, backend=backend)
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise DataError(f"limit must be an integer >= 1 or None, got {limit!r}")
    models.torch_dtype(dtype)  # an unknown dtype fails before any work
    check_source(str(prompts_path), "prompts")
    prompts, report = load_prompts(str(prompts_path), split=split, name=name, data_dir=data_dir, format=format)
    unique = unique_prompts(prompts)
    kept = unique if limit is None else unique[:limit]
    logger.info("%d prompts in %s, %d unique, sampling %d x %d", len(prompts), prompts_path, len(unique), len(kept), k)

    chosen = resolve_backend(backend, str(model_path))
    tokenizer = load_tokenizer(str(model_path))
    chat_template_applies(tokenizer, chat_template)  # a wrong rule fails before the model is loaded
    model = str(model_path) if chosen == "vllm" else load_model(str(model_path), dtype=dtype)
    sampled, chosen = _sample(model, tokenizer, kept, k=k, temperature=temperature, top_k=top_k, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                              stop_strings=stop_strings, backend=chosen, dtype=dtype, chat_template=chat_template)
    out = Path(out_path).expanduser()
    rows = (json.dumps({"prompt": prompt, "completions": texts}, ensure_ascii=False) + "\n"
            for prompt, texts in zip(kept, sampled.texts))
    write_atomic(out, "".join(rows))
    meta = record.finish(
        model=str(model_path), prompts=str(prompts_path), split=split, data_config=name, data_dir=data_dir,
        format=format, chat_template=chat_template, out=str(out_path), data=report.summary(),
        n_rows=report.n_rows, n_bad_rows=len(report.bad), n_unique_prompts=len(unique), n_prompts=len(kept), k=k,
        n_completions=len(kept) * k, n_hit_max_new_tokens=sampled.n_hit_max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, limit=limit,
        dtype=dtype, stop_strings=stop_strings, backend=chosen,
        device="vllm" if chosen == "vllm" else str(next(model.parameters()).device),
    )
    logger.info("wrote %d prompts x %d completions to %s (%.1f s, backend %s)", len(kept), k, out,
                meta["wall_seconds"], chosen)
    return meta
