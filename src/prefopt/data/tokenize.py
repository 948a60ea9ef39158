"""Tokenisation of preference records exactly as training sees them (SPEC §1, §6.2, §6.3, §6.4).

Text prompts get the response plus EOS, and every prompt gets exactly one leading BOS where the tokenizer uses one
(:class:`_BosPolicy`: Llama-3's double BOS, Qwen2.5's missing BOS). Chat records follow one of two conventions,
``data.tokenization`` (:data:`TOKENIZATIONS`):

- ``trl`` (TRL's): the prompt is rendered with the generation prompt, and only the text the template adds after it
  for the assistant turn is scored; the prompt is what the model sees at inference.
- ``official``: the SimPO-family scripts that the f-PO (Table 2) and γ-PO (Table 3) papers ran (SPEC §6.4). An empty
  system message goes first when the template mentions "system" or ``<|im_start|>``; the prompt is rendered without
  the generation prompt; each response is rendered *alone* as an assistant turn (a leading BOS string removed), so
  its assistant header is scored; prompt + response are tokenised together and split where the prompt's own tokens
  end (one token earlier when the last prompt token merges with the response); BOS is put first when missing and
  EOS last when missing; a pair too long for ``max_length`` has its prompt cut to its last ``max_prompt_length``
  tokens and then, if still too long, its responses to ``max_length − max_prompt_length``. Two decisions where the
  official code cannot be followed: a tokenizer without BOS (Qwen2.5, on which the official code raises TypeError)
  strips nothing and prepends nothing; a cut prompt keeps its BOS (the official cut drops it).

:func:`encode_prompts` gives the prompt ids the sampling stage feeds the model (always with the generation prompt),
:func:`tokenize_records` and :func:`tokenize_completions` the features :class:`prefopt.data.collate.PreferenceCollator`
batches.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

from prefopt.data.formats import Messages, PreferenceRecord, Prompt
from prefopt.data.readers import _quote_bad, _short_cause
from prefopt.errors import DataError

logger = logging.getLogger(__package__)

#: The values of ``data.tokenization`` (see the module docstring; SPEC §6.4).
TOKENIZATIONS = ("trl", "official")
#: How a *string* prompt is read (``data.apply_chat_template``, ``--chat-template``; the same rule in every stage):
#: ``auto`` = as one user turn through the chat template when the tokenizer has one, else as text; ``always`` = through
#: the template (an error without one); ``never`` = as text, the response followed by EOS (HH / TL;DR prompts, SPEC §6.1,
#: are text that already ends in the assistant cue). Chat-message prompts always go through the template.
CHAT_TEMPLATE_RULES = ("auto", "always", "never")
#: What ``official`` inserts first when the template mentions a system turn (SPEC §6.4).
EMPTY_SYSTEM_MESSAGE = {"role": "system", "content": ""}
_OFFICIAL_HINT = (
    "data.tokenization: official renders each response alone as an assistant turn and may insert an empty system "
    "message; set model.chat_template to a template that allows both (mistral_fixed for Mistral-Instruct, "
    "gemma2_merged_system for Gemma-2) or use data.tokenization: trl"
)


@dataclass
class TokenizeReport:
    """What :func:`tokenize_records` cut and dropped.

    ``n_prompt_truncated`` counts records whose prompt was cut, ``n_completion_truncated`` counts completions (over
    all K of every record) that were cut, ``dropped`` holds ``(record index, reason)`` (0-based indices into the
    records; the summary numbers them from 1), ``n_identical`` how many of those were dropped because all their
    responses are the same tokens after truncation (no preference left to learn). ``bos_policy`` says how the
    leading BOS was handled: ``prepend`` (the tokenizer adds one: exactly one), ``keep`` (it does not: keep the
    template's, without duplicates) or ``none`` (no BOS token).
    """

    n_records: int = 0
    n_kept: int = 0
    n_prompt_truncated: int = 0
    n_completion_truncated: int = 0
    n_dropped: int = 0
    dropped: list[tuple[int, str]] = field(default_factory=list)
    n_identical: int = 0
    bos_policy: str = ""
    tokenization: str = "trl"

    def drop(self, index: int, reason: str) -> None:
        self.dropped.append((index, reason))
        self.n_dropped = len(self.dropped)

    def summary(self) -> str:
        """One line for the run log (SPEC §9)."""
        text = (
            f"tokenised {self.n_kept} of {self.n_records} records ({self.tokenization} convention, BOS: "
            f"{self.bos_policy}); "
            f"{self.n_prompt_truncated} prompts cut on the left, {self.n_completion_truncated} completions cut on "
            f"the right, {self.n_dropped} records dropped"
        )
        if self.n_identical:
            text += f" ({self.n_identical} with identical responses after truncation)"
        if self.dropped:
            text += f" ({_quote_bad(self.dropped, label='record')})"
        return text



def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


@dataclass(frozen=True)
class _BosPolicy:
    """Exactly one leading BOS where the model expects one (SPEC §6.2 Llama-3 trap, §6.3 Qwen2.5 has none)."""

    bos_id: Optional[int]
    prepend: bool

    @classmethod
    def of(cls, tokenizer) -> "_BosPolicy":
        bos_id = tokenizer.bos_token_id
        if bos_id is None:
            return cls(None, False)
        probe = tokenizer("a", add_special_tokens=True).input_ids
        return cls(bos_id, bool(probe) and probe[0] == bos_id)

    @property
    def name(self) -> str:
        return "none" if self.bos_id is None else ("prepend" if self.prepend else "keep")

    def apply(self, ids: list[int]) -> list[int]:
        if self.bos_id is None:
            return ids
        start = 0
        while start + 1 < len(ids) and ids[start] == ids[start + 1] == self.bos_id:
            start += 1
        ids = ids[start:]
        if self.prepend and ids[:1] != [self.bos_id]:
            ids = [self.bos_id, *ids]
        return ids


def _render_chat(tokenizer, messages: Messages, label: str, hint: str = "", **kwargs) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as err:  # jinja raises for roles a template refuses (e.g. Gemma-2 and "system")
        name = _tokenizer_name(tokenizer)
        raise DataError(f"{label}: the chat template of {name} failed: {_short_cause(err)}"
                        + (f"; {hint}" if hint else "")) from err


def _render_prompt(tokenizer, prompt: Prompt, label: str) -> str:
    """The prompt text a model sees: text as it is, chat messages through the template with the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    return _render_chat(tokenizer, prompt, label, add_generation_prompt=True)


def _render(record: PreferenceRecord, tokenizer) -> tuple[str, list[str]]:
    """Prompt text and completion texts; chat completions are the text the template adds for the assistant turn."""
    if isinstance(record.prompt, str):
        return record.prompt, list(record.completions)
    prompt_text = _render_prompt(tokenizer, record.prompt, f"record {record.id}")
    completions = []
    for completion in record.completions:
        full = _render_chat(tokenizer, [*record.prompt, {"role": "assistant", "content": completion}],
                            f"record {record.id}")
        if not full.startswith(prompt_text):
            raise DataError(
                f"record {record.id}: the chat template of {_tokenizer_name(tokenizer)} does not render the prompt as "
                "a prefix of prompt + response, so the response cannot be cut out; fix model.chat_template"
            )
        completions.append(full[len(prompt_text):])
    return prompt_text, completions


def _template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates: the default one renders chat
        template = template.get("default") or next(iter(template.values()), "")
    return template


def with_empty_system_message(messages: Messages, tokenizer) -> Messages:
    """The prompt messages with :data:`EMPTY_SYSTEM_MESSAGE` first when the first turn is not a system turn and the
    template's text mentions "system" or ``<|im_start|>`` (the SimPO-family scripts' rule, SPEC §6.4)."""
    template = _template_text(tokenizer)
    if messages and messages[0]["role"] != "system" and ("system" in template or "<|im_start|>" in template):
        return [dict(EMPTY_SYSTEM_MESSAGE), *messages]
    return list(messages)


def render_official(record: PreferenceRecord, tokenizer) -> tuple[str, list[str]]:
    """Prompt text and response texts of a chat record under ``data.tokenization: official`` (SPEC §6.4): the
    prompt (empty system message first where the rule applies) without the generation prompt, and each response
    rendered alone as an assistant turn, a leading BOS string removed (none when the tokenizer has no BOS)."""
    label = f"record {record.id}"
    prompt_text = _render_chat(tokenizer, with_empty_system_message(record.prompt, tokenizer), label,
                               hint=_OFFICIAL_HINT)
    bos = tokenizer.bos_token
    responses = []
    for completion in record.completions:
        text = _render_chat(tokenizer, [{"role": "assistant", "content": completion}], label, hint=_OFFICIAL_HINT)
        if bos and text.startswith(bos):
            text = text[len(bos):]
        responses.append(text)
    return prompt_text, responses


def split_joint(prompt_ids: list[int], full_ids: list[int]) -> tuple[list[int], list[int]]:
    """Prompt and response ids of ``enc(prompt + response)``, cut where ``enc(prompt)`` ends — one token earlier
    when the prompt's last token differs there, i.e. merged with the response's first characters (the
    SimPO-family ``build_tokenized_answer`` rule, SPEC §6.4)."""
    start = len(prompt_ids)
    if full_ids[:start] != prompt_ids:
        start -= 1
    return list(full_ids[:start]), list(full_ids[start:])


def _encode_official(prompt_ids: list[int], full_ids: Sequence[list[int]], bos: _BosPolicy, eos_id: int):
    """``(prompt_ids, completion_ids)`` of one chat record under ``official``, or a reason to drop it."""
    splits = [split_joint(prompt_ids, list(ids)) for ids in full_ids]
    prompts = {tuple(prompt) for prompt, _ in splits}
    if len(prompts) > 1:
        return None, ("the prompt tokenises differently before each response (a token merges across the boundary), "
                      "so the responses would not share one prompt")
    prompt = list(prompts.pop())
    if bos.bos_id is not None and prompt[:1] != [bos.bos_id]:
        prompt = [bos.bos_id, *prompt]
    responses = [ids if ids[-1:] == [eos_id] else [*ids, eos_id] for _, ids in splits]
    return (prompt, responses), None


def chat_template_applies(tokenizer, rule: str) -> bool:
    """Whether string prompts become one user turn of the chat template under ``rule`` (:data:`CHAT_TEMPLATE_RULES`)."""
    if rule not in CHAT_TEMPLATE_RULES:
        raise DataError(f"the chat-template rule for string prompts must be one of {', '.join(CHAT_TEMPLATE_RULES)}, "
                        f"got {rule!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if rule == "always" and not has_template:
        raise DataError(f"tokenizer {_tokenizer_name(tokenizer)} has no chat template, but string prompts are to go "
                        "through one (chat template: always); use auto or never, or set model.chat_template")
    return rule == "always" or (rule == "auto" and has_template)


def apply_prompt_rule(prompt: Prompt, wrap: bool) -> Prompt:
    """A string prompt as one user turn when ``wrap`` (see :func:`chat_template_applies`), anything else unchanged."""
    return [{"role": "user", "content": prompt}] if wrap and isinstance(prompt, str) else prompt


def _check_chat_template(prompts: Sequence[Prompt], tokenizer) -> None:
    if any(not isinstance(prompt, str) for prompt in prompts) and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"tokenizer {_tokenizer_name(tokenizer)} has no chat template; use text prompts or a tokenizer with one"
        )


def _check_tokenizer(records: Sequence[PreferenceRecord], tokenizer, tokenization: str) -> None:
    if tokenization not in TOKENIZATIONS:
        raise DataError(f"data.tokenization must be one of {', '.join(TOKENIZATIONS)}, got {tokenization!r}")
    _check_chat_template([r.prompt for r in records], tokenizer)
    if tokenizer.eos_token_id is None:
        if any(isinstance(r.prompt, str) for r in records):
            raise DataError(f"tokenizer {_tokenizer_name(tokenizer)} has no EOS token, which text prompts append to "
                            "responses; set one")
        if tokenization == "official" and records:
            raise DataError(f"tokenizer {_tokenizer_name(tokenizer)} has no EOS token, which data.tokenization: "
                            "official appends to every response; set one or use data.tokenization: trl")


def _check_lengths(max_length: int, max_prompt_length: int) -> None:
    for key, value in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{key} must be an integer >= 1, got {value!r}")
    if max_prompt_length >= max_length:
        raise DataError(
            f"max_prompt_length ({max_prompt_length}) must be < max_length ({max_length}) so every response keeps a token"
        )


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else []


def _encode_prompt_texts(tokenizer, texts: list[str], bos: _BosPolicy) -> list[list[int]]:
    """Token ids of rendered prompts with exactly one leading BOS where the model wants one: the single place where
    prompt ids are made, for training (:func:`tokenize_records`) and sampling (:func:`encode_prompts`) alike."""
    return [bos.apply(list(ids)) for ids in _encode(tokenizer, texts)]


def encode_prompts(prompts: Sequence[Prompt], tokenizer, *, chat_template: str = "never") -> list[list[int]]:
    """Token ids of each prompt exactly as :func:`tokenize_records` builds ``prompt_ids`` under ``trl`` (before
    truncation): what a model is given to continue.

    Chat prompts are rendered by the tokenizer's template with the generation prompt (SPEC §6.3); string prompts too
    when ``chat_template`` (:data:`CHAT_TEMPLATE_RULES`) says so, else they are encoded as they are; all with exactly
    one leading BOS where the tokenizer uses one (SPEC §6.2 / §6.3 BOS traps). The sampling stage feeds these ids to
    the model (SPEC §6.1 step 4).
    """
    wrap = chat_template_applies(tokenizer, chat_template)
    prompts = [apply_prompt_rule(prompt, wrap) for prompt in prompts]
    _check_chat_template(prompts, tokenizer)
    texts = [_render_prompt(tokenizer, prompt, f"prompt {i}") for i, prompt in enumerate(prompts, start=1)]
    return _encode_prompt_texts(tokenizer, texts, _BosPolicy.of(tokenizer))


def _encode_all(
    records: Sequence[PreferenceRecord], tokenizer, bos: _BosPolicy, tokenization: str = "trl"
) -> list[tuple[Optional[tuple[list[int], list[list[int]]]], Optional[str]]]:
    """``((prompt_ids, completion_ids), None)`` per record, or ``(None, reason)`` for one that cannot be split
    (``official`` only); batched tokenizer calls (fast tokenizers batch in Rust)."""
    official = [tokenization == "official" and not isinstance(r.prompt, str) for r in records]
    rendered = [render_official(r, tokenizer) if o else _render(r, tokenizer) for r, o in zip(records, official)]
    prompts = _encode(tokenizer, [prompt for prompt, _ in rendered])
    # trl: responses on their own; official: prompt + response together (SPEC §6.4), split by split_joint
    flat = _encode(tokenizer, [prompt + c if o else c for o, (prompt, completions) in zip(official, rendered)
                               for c in completions])
    out, position = [], 0
    for record, is_official, prompt_ids, (_, completions) in zip(records, official, prompts, rendered):
        ids = [list(c) for c in flat[position : position + len(completions)]]
        position += len(completions)
        if is_official:
            out.append(_encode_official(list(prompt_ids), ids, bos, tokenizer.eos_token_id))
            continue
        if isinstance(record.prompt, str):  # SPEC §1: EOS is part of the scored response
            ids = [c + [tokenizer.eos_token_id] for c in ids]
        out.append(((bos.apply(list(prompt_ids)), ids), None))
    return out


def _truncate_prompt(ids: list[int], max_prompt_length: int, bos_id: Optional[int]) -> list[int]:
    """Keep the prompt's end (the question and assistant cue sit there) and its leading BOS."""
    if len(ids) <= max_prompt_length:
        return ids
    if bos_id is not None and ids[0] == bos_id:
        return [bos_id, *ids[len(ids) - (max_prompt_length - 1):]]
    return ids[len(ids) - max_prompt_length:]


def _truncate_official(prompt_ids: list[int], completion_ids: list[list[int]], max_length: int,
                       max_prompt_length: int, bos_id: Optional[int]) -> tuple[list[int], list[list[int]]]:
    """The SimPO-family cut (SPEC §6.4): only when prompt + longest response exceeds ``max_length``, the prompt keeps
    its last ``max_prompt_length`` tokens (and, unlike the official code, its BOS); if still too long, every response
    keeps its first ``max_length − max_prompt_length``."""
    longest = max(len(c) for c in completion_ids)
    if len(prompt_ids) + longest > max_length:
        prompt_ids = _truncate_prompt(prompt_ids, max_prompt_length, bos_id)
    if len(prompt_ids) + longest > max_length:
        completion_ids = [c[: max_length - max_prompt_length] for c in completion_ids]
    return prompt_ids, completion_ids


def _truncate_trl(prompt_ids: list[int], completion_ids: list[list[int]], max_length: int, max_prompt_length: int,
                  bos_id: Optional[int]) -> tuple[list[int], list[list[int]]]:
    """Prompt cut on the left to ``max_prompt_length`` (keeping BOS), responses on the right to fill ``max_length``."""
    prompt_ids = _truncate_prompt(prompt_ids, max_prompt_length, bos_id)
    room = max_length - len(prompt_ids)
    return prompt_ids, [c[:room] for c in completion_ids]


def _pack(index, record, prompt_ids, completion_ids, *, max_length, max_prompt_length, bos, report, drop_identical,
          truncate=_truncate_trl):
    """One tokenised feature, or None (and a report entry) when the record cannot be scored or, with
    ``drop_identical``, carries no preference (K >= 2 responses all the same tokens after truncation)."""
    if any(not c for c in completion_ids):
        report.drop(index, "a completion is empty after tokenisation")
        return None
    if not prompt_ids:
        report.drop(index, "empty prompt after tokenisation (the first response token would have no context)")
        return None
    truncated, kept = truncate(prompt_ids, completion_ids, max_length, max_prompt_length, bos.bos_id)
    report.n_prompt_truncated += len(truncated) < len(prompt_ids)
    report.n_completion_truncated += sum(len(k) < len(c) for k, c in zip(kept, completion_ids))
    if drop_identical and len(kept) >= 2 and all(c == kept[0] for c in kept[1:]):
        cut = " after truncation to max_length" if any(len(k) < len(c) for k, c in zip(kept, completion_ids)) else ""
        report.drop(index, f"all {len(kept)} responses are identical{cut} (id {record.id})")
        report.n_identical += 1
        return None
    return {"index": index, "id": record.id, "prompt_ids": truncated,
            "completion_ids": kept, "rewards": [float(r) for r in record.rewards]}


def tokenize_completions(
    prompts: Sequence[Prompt], completions: Sequence[Sequence[str]], tokenizer, *, max_length: int,
    max_prompt_length: int, tokenization: str = "trl", chat_template: str = "never",
) -> list[dict]:
    """Tokenise given (prompt, completions) exactly as training does, for scoring them under a model afterwards
    (KL estimates, reward-model labels). Completions are used as they are — repeats and empty ones included, since
    they are samples, not data to validate — and nothing may be dropped: a record that would be raises DataError."""
    records = [
        PreferenceRecord(id=str(i), prompt=prompt, completions=list(group), rewards=[0.0] * len(group))
        for i, (prompt, group) in enumerate(zip(prompts, completions))
    ]
    examples, report = tokenize_records(records, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                                        drop_identical=False, tokenization=tokenization,
                                        chat_template=chat_template)
    if report.n_dropped:
        raise DataError(f"{report.n_dropped} records could not be scored: {report.summary()}")
    return examples


def tokenize_records(
    records: Sequence[PreferenceRecord], tokenizer, *, max_length: int, max_prompt_length: int,
    drop_identical: bool = True, tokenization: str = "trl", chat_template: str = "never",
) -> tuple[list[dict], TokenizeReport]:
    """Token ids of each record: ``{index, id, prompt_ids, completion_ids (K lists), rewards}`` (K = 1 for SFT).

    Chat prompts are rendered by the tokenizer's own template (SPEC §6.3: use the tokenizer's chat template) in the
    ``tokenization`` convention (:data:`TOKENIZATIONS`, module docstring). ``trl``: the response is the text the
    template adds for the assistant turn, end-of-turn tokens included; ids are built with
    ``add_special_tokens=False`` and given exactly one leading BOS where the tokenizer uses one (see
    :class:`_BosPolicy`); prompts are cut on the left to ``max_prompt_length`` (keeping BOS), responses on the right
    so prompt + response <= ``max_length``. ``official``: the SimPO-family convention and cut of SPEC §6.4. String
    prompts become one user turn of the template when ``chat_template`` (:data:`CHAT_TEMPLATE_RULES`) says so;
    otherwise they are text and get the response plus EOS under both conventions (SPEC §1).

    Dropped (and listed in the report, 1-based in its summary): records with an empty completion or prompt after
    tokenisation and, with ``drop_identical`` (the default), records of K >= 2 whose responses are all the same
    tokens after truncation — a pair cut to the same prefix carries no preference; a K-candidate row with only some
    repeats is kept. There is no max_bad_fraction here: the load-time check covers malformed rows, and a
    :class:`DataError` is raised only when every record is dropped.
    """
    _check_lengths(max_length, max_prompt_length)
    wrap = chat_template_applies(tokenizer, chat_template)
    if wrap:
        records = [dataclasses.replace(r, prompt=apply_prompt_rule(r.prompt, True)) if isinstance(r.prompt, str)
                   else r for r in records]
    _check_tokenizer(records, tokenizer, tokenization)
    bos = _BosPolicy.of(tokenizer)
    report = TokenizeReport(n_records=len(records), bos_policy=bos.name, tokenization=tokenization)
    features = []
    encoded = _encode_all(records, tokenizer, bos, tokenization)
    for index, (record, (ids, problem)) in enumerate(zip(records, encoded)):
        if problem:
            report.drop(index, f"{problem} (id {record.id})")
            continue
        official = tokenization == "official" and not isinstance(record.prompt, str)
        feature = _pack(index, record, *ids, max_length=max_length, max_prompt_length=max_prompt_length, bos=bos,
                        report=report, drop_identical=drop_identical,
                        truncate=_truncate_official if official else _truncate_trl)
        if feature is not None:
            features.append(feature)
    report.n_kept = len(features)
    if records and not features:
        raise DataError(
            f"all {len(records)} records were dropped during tokenisation "
            f"({_quote_bad(report.dropped, 'record')}); check the data and the chat template"
        )
    logger.info(report.summary())
    return features, report
