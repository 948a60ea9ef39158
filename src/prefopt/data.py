"""Preference data: load, validate, tokenise and collate (SPEC §1, §3, §6.1–§6.3, §9).

Every data set the experiments read is reduced to one normalised record, :class:`PreferenceRecord`: a prompt and
K responses with K scores. Pairs (K = 2, chosen first) feed the pairwise losses and γ-PO (SPEC §2, §5); the
K-candidate "rw" rows feed EXO / f-PO (SPEC §3, §6.1 step 4); SFT examples (K = 1, the only format with fewer than two
responses) feed the SFT stage (SPEC §6.1 step 2). Supported sources:

- ``pairs``: ``{prompt, chosen, rejected}`` with string responses (HH / TL;DR after SPEC §6.1 step 1) or chat
  messages — HuggingFaceH4/ultrafeedback_binarized (SPEC §6.2) and the princeton-nlp on-policy sets (SPEC §6.3);
- ``rw``: ``{prompt, completions, rewards}``, our K-candidate JSONL (SPEC §6.1 step 4);
- ``princeton_rw``: the princeton-nlp sets read as K-candidate rows (``all_generated_responses``, ``all_rm_scores``);
- ``sft``: ``{prompt, completion}`` (string or chat-message prompt; the completion a string or one assistant message),
  or pairs rows of which only the chosen response is kept, so HH pairs train the SFT model (SPEC §6.1 step 2) — raw
  ``hh`` rows included (their prompt and chosen turn as ``hh`` splits them);
- ``hh``: Anthropic/hh-rlhf rows (load with ``data_dir="helpful-base"``), ``{chosen, rejected}`` full transcripts
  split into the shared prompt ending in ``"\\n\\nAssistant:"`` and the first differing assistant turn (SPEC §6.1
  step 1, see :func:`_parse_hh_row`);
- ``tldr``: openai/summarize_from_feedback ``comparisons`` rows ``{info, summaries, choice}`` (SPEC §6.1 step 1;
  :func:`tldr_split` maps our train/test to its train/validation), prompts built by :func:`tldr_prompt`;
- ``tldr_sft``: the filtered TL;DR SFT set (UCL-DARK/openai-tldr-filtered) ``{subreddit, title, post, summary}``
  as K = 1 records with the same prompt format.

``format="auto"`` picks the format from the first row: rw, then hh (string ``chosen`` holding ``"\\n\\nHuman:"`` and
no ``prompt`` column), pairs, tldr, tldr_sft, sft (see :data:`AUTO_ORDER`).

:func:`load_prompts` reads the prompt of each row of any of these formats (or of ``{prompt}`` rows) for the sampling
stage, and :func:`encode_prompts` gives the prompt token ids exactly as :func:`tokenize_records` builds them.

Bad rows are dropped and reported rather than silently trained on, and a run stops when too many are bad: a
schema mix-up otherwise looks like a poor result, not like an error. Tokenisation follows SPEC §1 (only response
tokens are scored, EOS included) and the two tokenizer traps SPEC §6.2 / §6.3 name: Llama-3's double BOS and
Qwen2.5's missing BOS.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from prefopt.hub import offline_from_env

logger = logging.getLogger(__name__)

Messages = list[dict]
Prompt = Union[str, Messages]

#: Accepted values of ``load_records(format=...)``.
FORMATS = ("auto", "pairs", "rw", "princeton_rw", "sft", "hh", "tldr", "tldr_sft")
#: Columns each explicit format needs (``pairs`` also needs ``prompt`` unless the responses are full conversations;
#: ``sft`` also accepts pairs rows, see :data:`SFT_PAIR_COLUMNS`).
REQUIRED_COLUMNS = {
    "pairs": ("chosen", "rejected"),
    "rw": ("prompt", "completions", "rewards"),
    "princeton_rw": ("prompt", "all_generated_responses", "all_rm_scores"),
    "sft": ("prompt", "completion"),
    "hh": ("chosen", "rejected"),
    "tldr": ("info", "summaries", "choice"),
    "tldr_sft": ("subreddit", "title", "post", "summary"),
}
#: Columns with which ``format="sft"`` reads a pairs row (its chosen response; SPEC §6.1 step 2).
SFT_PAIR_COLUMNS = ("chosen",)
#: Order in which ``format="auto"`` tries the formats on the first row (:data:`_AUTO_DETECT` says what each needs):
#: hh before pairs, since both have ``chosen`` and ``rejected``.
AUTO_ORDER = ("rw", "hh", "pairs", "tldr", "tldr_sft", "sft")
CHAT_ROLES = ("user", "system", "assistant")
#: How many malformed rows an error message or summary quotes.
QUOTED_BAD_ROWS = 5
#: Turn markers of Anthropic HH transcripts (SPEC §6.1 step 1); an HH prompt ends in :data:`HH_ASSISTANT`.
HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
#: The TL;DR prompt of SPEC §6.1 step 1, shared by the ``tldr`` and ``tldr_sft`` formats (see :func:`tldr_prompt`).
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
#: Our split name -> the openai/summarize_from_feedback ``comparisons`` split that holds it (SPEC §6.1 step 1).
TLDR_SPLITS = {"train": "train", "test": "validation"}


class DataError(ValueError):
    """A problem with the user's data or data settings; the message is one line saying what to change."""


@dataclass
class PreferenceRecord:
    """One prompt with K scored responses — the single shape every loss family reads (SPEC §3).

    K >= 2 for every preference format; K = 1 only for SFT examples (``completions = [response]``, ``rewards = [0.0]``,
    SPEC §6.1 step 2).

    ``id`` is stable across runs (the dataset's ``prompt_id``, else ``"<source>:<row>"``) because the per-pair
    margin logs of SPEC §9 are keyed by it. ``prompt`` is raw text (HH/TL;DR style, already ending in the assistant
    cue) or the chat messages before the responses. For pairs ``completions = [chosen, rejected]`` and ``rewards`` are
    the two scores, or ``[1.0, 0.0]`` when the data carry none (the "pref" setting of SPEC §3).
    """

    id: str
    prompt: Prompt
    completions: list[str]
    rewards: list[float]


@dataclass
class DataReport:
    """What :func:`load_records` read and dropped; ``bad`` holds ``(row index, reason)`` per malformed row."""

    source: str
    n_rows: int
    n_kept: int
    bad: list[tuple[int, str]] = field(default_factory=list)
    format: str = ""

    def summary(self) -> str:
        """One line for the run log (SPEC §9)."""
        text = f"{self.source} [{self.format}]: kept {self.n_kept} of {self.n_rows} rows"
        if self.bad:
            text += f", dropped {len(self.bad)} malformed ({_quote_bad(self.bad)})"
        return text


@dataclass
class TokenizeReport:
    """What :func:`tokenize_records` cut and dropped.

    ``n_prompt_truncated`` counts records whose prompt was cut, ``n_completion_truncated`` counts completions (over
    all K of every record) that were cut, ``dropped`` holds ``(record index, reason)``. ``bos_policy`` says how the
    leading BOS was handled: ``prepend`` (the tokenizer adds one: exactly one), ``keep`` (it does not: keep the
    template's, without duplicates) or ``none`` (no BOS token).
    """

    n_records: int = 0
    n_kept: int = 0
    n_prompt_truncated: int = 0
    n_completion_truncated: int = 0
    n_dropped: int = 0
    dropped: list[tuple[int, str]] = field(default_factory=list)
    bos_policy: str = ""

    def drop(self, index: int, reason: str) -> None:
        self.dropped.append((index, reason))
        self.n_dropped = len(self.dropped)

    def summary(self) -> str:
        """One line for the run log (SPEC §9)."""
        text = (
            f"tokenised {self.n_kept} of {self.n_records} records (BOS: {self.bos_policy}); "
            f"{self.n_prompt_truncated} prompts cut on the left, {self.n_completion_truncated} completions cut on "
            f"the right, {self.n_dropped} records dropped"
        )
        if self.dropped:
            text += f" ({_quote_bad(self.dropped, label='record')})"
        return text


def _quote_bad(bad: Sequence[tuple[int, str]], label: str = "row") -> str:
    return "; ".join(f"{label} {index}: {reason}" for index, reason in bad[:QUOTED_BAD_ROWS])


# ---------------------------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------------------------


class _BadRow(Exception):
    """A row-level problem: the row is dropped and reported, not raised (the message is the reason)."""


@dataclass
class _UnreadableRow:
    """A JSONL line that is not valid JSON: kept in place so that row indices match the file."""

    reason: str


def _short_cause(err: BaseException, limit: int = 200) -> str:
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_jsonl(path: Path, limit: Optional[int]) -> list[Any]:
    rows: list[Any] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                rows.append(_UnreadableRow(f"invalid JSON on line {line_number} ({err.msg})"))
    return rows


def _read_json(path: Path, limit: Optional[int]) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}); a .json file must hold one list of "
            "objects, a .jsonl file one object per line"
        ) from err
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not a list of rows; write a list of objects")
    return data if limit is None else data[:limit]


def _read_parquet(path: Path, limit: Optional[int]) -> list[Any]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return (table if limit is None else table.slice(0, limit)).to_pylist()


_LOCAL_READERS: dict[str, Callable[[Path, Optional[int]], list[Any]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
}


def _read_local(path: Path, limit: Optional[int]) -> list[Any]:
    reader = _LOCAL_READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"unsupported file type {path.suffix!r} for {path}: use .json (a list of objects), .jsonl or .parquet"
        )
    try:
        return reader(path, limit)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({_short_cause(err)}); re-save it as UTF-8") from err
    except OSError as err:  # permissions, a folder named like a file, a vanished network mount
        raise DataError(f"cannot read {path} ({_short_cause(err)}); check the path and its permissions") from err


def _load_hub(
    source: str, *, split: str, name: Optional[str], limit: Optional[int], data_dir: Optional[str] = None
) -> list[Any]:
    """Rows of a Hugging Face dataset (SPEC §6.1–§6.3 name them by Hub id); any failure becomes one DataError line.

    ``data_dir`` picks a folder of the dataset repository (Anthropic/hh-rlhf ``helpful-base``, SPEC §6.1 step 1).
    """
    import datasets

    try:
        with offline_from_env():
            dataset = datasets.load_dataset(source, name=name, split=split, data_dir=data_dir)
    except Exception as err:  # the datasets library raises many types for "cannot load"; all mean the same here
        where = f"config={name!r}, " + (f"data_dir={data_dir!r}, " if data_dir is not None else "")
        raise DataError(
            f"dataset {source!r} ({where}split={split!r}) not found: no such local file, and the Hub "
            f"could not load it (offline? typo? wrong split, config or data_dir?): {_short_cause(err)}"
        ) from err
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.to_list()


def _looks_like_file(source: str) -> bool:
    return Path(source).suffix.lower() in _LOCAL_READERS or source.startswith((".", "/", "~"))


def _read_rows(
    source: str, *, split: str, name: Optional[str], limit: Optional[int], data_dir: Optional[str] = None
) -> tuple[list[Any], str]:
    """Rows and the short source name used in record ids (file name for local files, the Hub id otherwise).

    ``split``, ``name`` and ``data_dir`` only matter for Hub datasets.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return _read_local(path, limit), path.name
    if _looks_like_file(source) and not path.is_dir():
        raise DataError(f"no such local file {source!r} (resolved to {path.resolve()}); check data.train / data.eval")
    return _load_hub(source, split=split, name=name, limit=limit, data_dir=data_dir), source


# ---------------------------------------------------------------------------------------------------------------
# Validating rows
# ---------------------------------------------------------------------------------------------------------------


def _field(row: dict, key: str) -> Any:
    value = row.get(key)
    if value is None:
        raise _BadRow(f"missing field {key!r}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _BadRow(f"{what} is not a number ({type(value).__name__})")
    if not math.isfinite(value):
        raise _BadRow(f"non-finite {what} ({value!r})")
    return float(value)


def _parse_messages(value: Any, what: str) -> Messages:
    """Chat messages reduced to ``{role, content}`` (extra keys dropped: the chat template sees only these)."""
    if not isinstance(value, list) or not value:
        raise _BadRow(f"{what} is not a non-empty list of chat messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _BadRow(f"{what} message {i} is not a {{role, content}} object")
        if message["role"] not in CHAT_ROLES:
            raise _BadRow(f"{what} message {i} has role {message['role']!r} (expected one of {', '.join(CHAT_ROLES)})")
        if not isinstance(message["content"], str):
            raise _BadRow(f"{what} message {i} content is not a string")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _parse_prompt(value: Any) -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise _BadRow("empty prompt")
        return value
    if isinstance(value, list):
        return _parse_messages(value, "prompt")
    raise _BadRow(f"prompt is a {type(value).__name__}, not a string or a list of chat messages")


def _as_chat(prompt: Prompt) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _check_responses(responses: Sequence[Any], names: Sequence[str], *, allow_empty: bool = False) -> list[str]:
    for response, name in zip(responses, names):
        if not isinstance(response, str):
            raise _BadRow(f"non-string {name} response ({type(response).__name__})")
        if not allow_empty and not response.strip():
            raise _BadRow(f"empty {name} response")
    return list(responses)


def _split_conversations(row: dict, chosen: list, rejected: list) -> tuple[Prompt, list[str]]:
    """Prompt and the two final assistant turns of chat-message responses (UltraFeedback / princeton-nlp style).

    Full conversations: the prompt is their shared prefix (the string ``prompt`` column, a copy of the first user
    turn, is ignored). Assistant-turn-only lists: the prompt comes from the ``prompt`` column (a string becomes one
    user message, since the responses are chat turns and must be rendered by the chat template).
    """
    c, r = _parse_messages(chosen, "chosen"), _parse_messages(rejected, "rejected")
    _final_assistant_turn(c, "chosen")
    _final_assistant_turn(r, "rejected")
    if len(c) == 1 and len(r) == 1:
        prompt: Prompt = _as_chat(_parse_prompt(_field(row, "prompt")))
    elif c[:-1] != r[:-1]:
        raise _BadRow("prompt mismatch between chosen and rejected conversations")
    else:
        prompt = c[:-1]
    return prompt, [c[-1]["content"], r[-1]["content"]]


def _pair_rewards(row: dict) -> list[float]:
    chosen, rejected = row.get("score_chosen"), row.get("score_rejected")
    if chosen is None and rejected is None:
        return [1.0, 0.0]
    if chosen is None or rejected is None:
        raise _BadRow("score_chosen and score_rejected must be given together")
    return [_number(chosen, "score_chosen"), _number(rejected, "score_rejected")]


def _parse_pairs_row(row: dict) -> tuple[Prompt, list[str], list[float]]:
    chosen, rejected = _field(row, "chosen"), _field(row, "rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):
        prompt, responses = _split_conversations(row, chosen, rejected)
    elif isinstance(chosen, list) or isinstance(rejected, list):
        raise _BadRow("chosen and rejected must both be strings or both be lists of chat messages")
    else:
        prompt, responses = _parse_prompt(_field(row, "prompt")), [chosen, rejected]
    responses = _check_responses(responses, ("chosen", "rejected"))
    if responses[0].strip() == responses[1].strip():
        raise _BadRow("chosen and rejected responses are identical")
    return prompt, responses, _pair_rewards(row)


def _parse_candidates(row: dict, prompt: Prompt, completions_key: str, rewards_key: str):
    completions, rewards = _field(row, completions_key), _field(row, rewards_key)
    if not isinstance(completions, list) or not isinstance(rewards, list):
        raise _BadRow(f"{completions_key} and {rewards_key} must be lists")
    if len(completions) < 2:
        raise _BadRow(f"K = {len(completions)} completions; need at least 2")
    if len(completions) != len(rewards):
        raise _BadRow(f"{len(completions)} completions but {len(rewards)} rewards")
    # A sampled candidate may be empty (the model emitted EOS at once): it is a real response, scored by the reward
    # model, and tokenises to EOS alone. Human-written pairs with an empty side stay malformed (SPEC §6.1 step 1).
    completions = _check_responses(completions, [f"completion {k}" for k in range(len(completions))], allow_empty=True)
    return prompt, completions, [_number(r, f"reward {k}") for k, r in enumerate(rewards)]


def _parse_rw_row(row: dict) -> tuple[Prompt, list[str], list[float]]:
    return _parse_candidates(row, _parse_prompt(_field(row, "prompt")), "completions", "rewards")


def _parse_princeton_rw_row(row: dict) -> tuple[Prompt, list[str], list[float]]:
    """princeton-nlp rows as K candidates; responses were sampled from an instruct model, so the prompt is chat."""
    chosen = row.get("chosen")
    if isinstance(chosen, list) and len(chosen) >= 2:
        prompt: Prompt = _parse_messages(chosen, "chosen")[:-1]
    else:
        prompt = _as_chat(_parse_prompt(_field(row, "prompt")))
    return _parse_candidates(row, prompt, "all_generated_responses", "all_rm_scores")


def _final_assistant_turn(messages: Messages, name: str) -> str:
    if messages[-1]["role"] != "assistant":
        raise _BadRow(f"last {name} message is from {messages[-1]['role']!r}, not the assistant")
    return messages[-1]["content"]


def _parse_sft_row(row: dict) -> tuple[Prompt, list[str], list[float]]:
    """One SFT example, K = 1 (SPEC §6.1 step 2: MLE on the chosen response).

    ``{prompt, completion}``: the completion is a string, or a one-message assistant turn (then the prompt is chat, as
    for assistant-turn-only pairs). A pairs row keeps its chosen response only (its rejected one is not read), with the
    prompt :func:`_parse_pairs_row` would give: the ``prompt`` column, or the conversation before a chat ``chosen``.
    A raw HH row (no ``prompt``, transcript strings) keeps the prompt and chosen response :func:`_parse_hh_row` gives;
    its rejected transcript is read only to find where the two part, so an empty or identical rejected turn is fine.
    """
    if row.get("completion") is not None or row.get("chosen") is None:
        completion = _field(row, "completion")
        if isinstance(completion, list):
            messages = _parse_messages(completion, "completion")
            if len(messages) != 1:
                raise _BadRow(f"completion has {len(messages)} messages; give one assistant turn or a string")
            prompt: Prompt = _as_chat(_parse_prompt(_field(row, "prompt")))
            response = _final_assistant_turn(messages, "completion")
        else:
            prompt, response = _parse_prompt(_field(row, "prompt")), completion
        return prompt, _check_responses([response], ["completion"]), [0.0]
    chosen = row["chosen"]
    if isinstance(chosen, list):
        messages = _parse_messages(chosen, "chosen")
        response = _final_assistant_turn(messages, "chosen")
        prompt = _as_chat(_parse_prompt(_field(row, "prompt"))) if len(messages) == 1 else messages[:-1]
    elif _is_hh_row(row):  # a raw Anthropic HH row: the prompt and chosen turn ``hh`` would give (SPEC §6.1 step 2)
        end = _hh_prompt_end(chosen, row["rejected"])
        prompt, response = chosen[:end], _hh_response(chosen, end, "chosen")
    else:
        prompt, response = _parse_prompt(_field(row, "prompt")), chosen
    return prompt, _check_responses([response], ["chosen"]), [0.0]


def _parse_prompt_row(row: dict) -> tuple[Prompt, list[str], list[float]]:
    """A ``{prompt}`` row read by :func:`load_prompts` only (no responses: never a training record)."""
    return _parse_prompt(_field(row, "prompt")), [], []


# Anthropic HH and TL;DR (SPEC §6.1 step 1) ----------------------------------------------------------------------


def _is_hh_row(row: dict) -> bool:
    """HH rows: ``chosen`` and ``rejected`` transcript strings and no ``prompt`` column (pairs rows have one)."""
    chosen = row.get("chosen")
    return (row.get("prompt") is None and isinstance(chosen, str) and HH_HUMAN in chosen
            and isinstance(row.get("rejected"), str))


def _hh_prompt_end(chosen: Any, rejected: Any) -> int:
    """Where the shared HH prompt ends: just after the last ``"\\n\\nAssistant:"`` inside the two transcripts'
    longest common prefix (SPEC §6.1 step 1), so the first turn that differs is the response."""
    for transcript, name in ((chosen, "chosen"), (rejected, "rejected")):
        if not isinstance(transcript, str):
            raise _BadRow(f"{name} is a {type(transcript).__name__}, not an HH transcript string")
        if HH_ASSISTANT not in transcript:
            raise _BadRow(f"{name} transcript has no {HH_ASSISTANT!r} turn")
    cue = os.path.commonprefix([chosen, rejected]).rfind(HH_ASSISTANT)
    if cue < 0:
        raise _BadRow(f"chosen and rejected differ before their first {HH_ASSISTANT!r}: no shared prompt")
    return cue + len(HH_ASSISTANT)


def _hh_response(transcript: str, start: int, name: str) -> str:
    """The assistant turn from ``start`` up to the next ``"\\n\\nHuman:"``, stripped, with one leading space
    (the Pythia pipeline feeds ``"Assistant: text"``)."""
    text = transcript[start:]
    stop = text.find(HH_HUMAN)
    text = (text if stop < 0 else text[:stop]).strip()
    if not text:
        raise _BadRow(f"empty response ({name} assistant turn is blank)")
    return " " + text


def _parse_hh_row(row: dict) -> tuple[Prompt, list[str], list[float]]:
    """An Anthropic/hh-rlhf pair (SPEC §6.1 step 1): ``{chosen, rejected}`` full transcripts.

    The prompt is the transcripts' longest common prefix backed off to the end of its last ``"\\n\\nAssistant:"``
    (marker included, no trailing space; a text prompt, so responses get EOS). Each response is the text after the
    prompt up to (not including) the next ``"\\n\\nHuman:"``, stripped, as ``" " + text``. Malformed: a transcript
    without an assistant turn, transcripts that differ before their first one, an empty or identical response.
    """
    chosen, rejected = _field(row, "chosen"), _field(row, "rejected")
    end = _hh_prompt_end(chosen, rejected)
    responses = [_hh_response(chosen, end, "chosen"), _hh_response(rejected, end, "rejected")]
    if responses[0] == responses[1]:
        raise _BadRow("chosen and rejected responses are identical")
    return chosen[:end], responses, [1.0, 0.0]


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    """The TL;DR prompt of SPEC §6.1 step 1: ``"SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:"``.

    The fields go in verbatim (not stripped); the response that follows is ``" " + summary``. Used by the ``tldr``
    and ``tldr_sft`` formats alike, and by anything that must build the same prompt (sampling, evaluation).
    """
    return TLDR_PROMPT.format(subreddit=subreddit, title=title, post=post)


def tldr_split(ours: str) -> str:
    """The openai/summarize_from_feedback ``comparisons`` split for our split (SPEC §6.1 step 1).

    ``"train"`` -> ``"train"``, ``"test"`` -> ``"validation"`` (the comparisons set has no test split; its
    validation split is our test set). Anything else is a :class:`DataError`.
    """
    if not isinstance(ours, str) or ours not in TLDR_SPLITS:
        raise DataError(
            f"no TL;DR comparisons split for {ours!r}: use 'train' (-> train) or 'test' (-> validation)"
        )
    return TLDR_SPLITS[ours]


def _tldr_prompt_of(fields: dict) -> str:
    """:func:`tldr_prompt` from a row's (``tldr_sft``) or ``info``'s (``tldr``) subreddit, title and post."""
    post = fields.get("post")
    if post is None:  # the comparisons' news-article (CNN/DM) rows carry an article instead of a post
        raise _BadRow("missing post" + (" (a news-article row, not a Reddit post)" if fields.get("article") else ""))
    values = {}
    for key in ("subreddit", "title", "post"):
        value = fields.get(key)
        if value is None:
            raise _BadRow(f"missing {key}")
        if not isinstance(value, str):
            raise _BadRow(f"{key} is a {type(value).__name__}, not a string")
        if key != "title" and not value.strip():
            raise _BadRow(f"empty {key}")
        values[key] = value
    return tldr_prompt(**values)


def _summary_response(text: Any, name: str) -> str:
    if not isinstance(text, str):
        raise _BadRow(f"{name} text is a {type(text).__name__}, not a string")
    if not text.strip():
        raise _BadRow(f"empty response ({name} is blank)")
    return " " + text.strip()


def _parse_tldr_row(row: dict) -> tuple[Prompt, list[str], list[float]]:
    """An openai/summarize_from_feedback ``comparisons`` row (SPEC §6.1 step 1): ``{info, summaries, choice}``.

    Prompt :func:`tldr_prompt` of ``info``; responses ``" " + text.strip()`` of the two summaries, the chosen one
    (``summaries[choice]``) first, rewards ``[1, 0]``. Malformed: no post (``info.post`` is None), ``choice`` not 0
    or 1, not exactly two summaries, an empty or identical summary.
    """
    info = _field(row, "info")
    if not isinstance(info, dict):
        raise _BadRow(f"info is a {type(info).__name__}, not an object")
    prompt = _tldr_prompt_of(info)
    summaries, choice = _field(row, "summaries"), _field(row, "choice")
    if not isinstance(summaries, list) or len(summaries) != 2 or not all(isinstance(s, dict) for s in summaries):
        raise _BadRow("summaries is not a list of two {text, ...} objects")
    if isinstance(choice, bool) or not isinstance(choice, numbers.Integral) or choice not in (0, 1):
        raise _BadRow(f"choice is {choice!r}, not 0 or 1")
    texts = [_summary_response(s.get("text"), f"summary {k}") for k, s in enumerate(summaries)]
    if texts[0] == texts[1]:
        raise _BadRow("the two summaries are identical")
    choice = int(choice)
    return prompt, [texts[choice], texts[1 - choice]], [1.0, 0.0]


def _parse_tldr_sft_row(row: dict) -> tuple[Prompt, list[str], list[float]]:
    """A filtered TL;DR SFT row (UCL-DARK/openai-tldr-filtered, SPEC §6.1 step 1): ``{subreddit, title, post,
    summary}`` -> K = 1, prompt :func:`tldr_prompt`, completion ``" " + summary.strip()`` (as ``sft``)."""
    prompt = _tldr_prompt_of(row)
    return prompt, [_summary_response(_field(row, "summary"), "summary")], [0.0]


_ROW_PARSERS = {
    "pairs": _parse_pairs_row,
    "rw": _parse_rw_row,
    "princeton_rw": _parse_princeton_rw_row,
    "sft": _parse_sft_row,
    "hh": _parse_hh_row,
    "tldr": _parse_tldr_row,
    "tldr_sft": _parse_tldr_sft_row,
    "prompts": _parse_prompt_row,
}


def _has_columns(fmt: str) -> Callable[[dict], bool]:
    return lambda first: all(column in first for column in REQUIRED_COLUMNS[fmt])


#: What ``format="auto"`` needs to see in the first row to pick each format (tried in :data:`AUTO_ORDER`).
_AUTO_DETECT: dict[str, Callable[[dict], bool]] = {
    "rw": _has_columns("rw"),
    "hh": _is_hh_row,
    "pairs": _has_columns("pairs"),
    "tldr": _has_columns("tldr"),
    "tldr_sft": lambda first: "post" in first and "summary" in first,
    "sft": _has_columns("sft"),
}


def _resolve_format(format: str, rows: Sequence[Any], source: str, *, prompts_only: bool = False) -> str:
    """The format to parse with: detected from the first object row's keys, or the explicit one checked against them.

    With ``prompts_only`` (:func:`load_prompts`), rows that match no format but have a ``prompt`` are ``prompts`` rows.
    """
    first = next((row for row in rows if isinstance(row, dict)), None)
    if first is None:
        raise DataError(f"{source} has no JSON-object rows; each row must be an object such as {{prompt, chosen, rejected}}")
    columns = sorted(first)
    if format == "auto":
        for candidate in AUTO_ORDER:
            if _AUTO_DETECT[candidate](first):
                return candidate
        if prompts_only and "prompt" in first:
            return "prompts"
        raise DataError(
            f"cannot tell the format of {source} from its columns {columns}: expected pairs (prompt, chosen, "
            "rejected), rw (prompt, completions, rewards), sft (prompt, completion), hh (chosen, rejected HH "
            "transcripts), tldr (info, summaries, choice) or tldr_sft (subreddit, title, post, summary); rename the "
            "columns or pass data.format"
        )
    missing = [column for column in REQUIRED_COLUMNS[format] if column not in first]
    if format == "sft" and all(column in first for column in SFT_PAIR_COLUMNS):
        missing = []
    if missing:
        alternative = " (or a pairs 'chosen')" if format == "sft" else ""
        raise DataError(
            f"format={format!r} needs columns {missing}{alternative} that {source} lacks (it has {columns}); fix "
            "data.format"
        )
    return format


#: Where a parsed row of each format keeps its stable id (default: ``prompt_id``); TL;DR ids are post ids, which
#: repeat over a post's comparisons and get ``#n`` suffixes (:func:`_make_ids_unique`).
_ID_OF: dict[str, Callable[[dict], Any]] = {
    "tldr": lambda row: row["info"].get("id"),
    "tldr_sft": lambda row: row.get("id"),
}


def _row_id(row: dict, source_name: str, index: int, fmt: str = "") -> str:
    prompt_id = _ID_OF.get(fmt, lambda r: r.get("prompt_id"))(row)
    if isinstance(prompt_id, (str, int)) and not isinstance(prompt_id, bool) and str(prompt_id).strip():
        return str(prompt_id)
    return f"{source_name}:{index}"


def _make_ids_unique(records: list[PreferenceRecord]) -> None:
    """Suffix repeated ids with ``#n`` (in row order, so stable): SPEC §9 logs margins per pair id."""
    seen: dict[str, int] = {}
    for record in records:
        count = seen.get(record.id, 0)
        seen[record.id] = count + 1
        if count:
            record.id = f"{record.id}#{count}"
    repeated = sum(count - 1 for count in seen.values())
    if repeated:
        logger.warning("%d records repeat an earlier prompt_id; suffixed them with #n to keep ids unique", repeated)


def _parse_rows(rows: Sequence[Any], fmt: str, source_name: str):
    parse = _ROW_PARSERS[fmt]
    records: list[PreferenceRecord] = []
    bad: list[tuple[int, str]] = []
    for index, row in enumerate(rows):
        try:
            if isinstance(row, _UnreadableRow):
                raise _BadRow(row.reason)
            if not isinstance(row, dict):
                raise _BadRow(f"row is a {type(row).__name__}, not an object")
            prompt, completions, rewards = parse(row)
        except _BadRow as err:
            bad.append((index, str(err)))
            continue
        records.append(PreferenceRecord(_row_id(row, source_name, index, fmt), prompt, completions, rewards))
    _make_ids_unique(records)
    return records, bad


def _check_bad_fraction(report: DataReport, max_bad_fraction: float) -> None:
    quoted = _quote_bad(report.bad)
    if report.n_kept == 0:
        raise DataError(f"all {report.n_rows} rows in {report.source} are malformed; first ones: {quoted}; fix the data")
    if len(report.bad) / report.n_rows > max_bad_fraction:
        raise DataError(
            f"{len(report.bad)} of {report.n_rows} rows in {report.source} are malformed "
            f"(> max_bad_fraction={max_bad_fraction}); first ones: {quoted}; fix the data or raise data.max_bad_fraction"
        )


def _check_load_args(format: str, limit: Optional[int], max_bad_fraction: float) -> None:
    if format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; use one of {', '.join(FORMATS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be an integer >= 1 or None, got {limit!r}")
    if not (isinstance(max_bad_fraction, numbers.Real) and 0 <= max_bad_fraction <= 1):
        raise DataError(f"max_bad_fraction must lie in [0, 1], got {max_bad_fraction!r}")


def _load(source, *, split, format, limit, max_bad_fraction, name, prompts_only=False, data_dir=None):
    _check_load_args(format, limit, max_bad_fraction)
    rows, source_name = _read_rows(source, split=split, name=name, limit=limit, data_dir=data_dir)
    if not rows:
        raise DataError(f"{source} (split={split!r}) has no rows; point the data setting at a non-empty file or split")
    fmt = _resolve_format(format, rows, source, prompts_only=prompts_only)
    records, bad = _parse_rows(rows, fmt, source_name)
    report = DataReport(source=source, n_rows=len(rows), n_kept=len(records), bad=bad, format=fmt)
    _check_bad_fraction(report, max_bad_fraction)
    (logger.warning if bad else logger.info)(report.summary())
    return records, report


def load_records(
    source: str,
    *,
    split: str = "train",
    format: str = "auto",
    limit: Optional[int] = None,
    max_bad_fraction: float = 0.01,
    name: Optional[str] = None,
    data_dir: Optional[str] = None,
) -> tuple[list[PreferenceRecord], DataReport]:
    """Read ``source`` (a local .json/.jsonl/.parquet file, else a Hub dataset id) into normalised records.

    ``format`` is ``auto`` (from the first row, see :data:`AUTO_ORDER`), ``pairs``, ``rw``, ``princeton_rw``,
    ``sft``, ``hh``, ``tldr`` or ``tldr_sft`` (see the module docstring; pairs and HH rows are read as SFT examples
    only when ``sft`` is asked for). ``name`` (config) and ``data_dir`` pass to ``datasets.load_dataset`` for Hub
    ids, e.g. ``load_records("Anthropic/hh-rlhf", data_dir="helpful-base", format="hh")``; for TL;DR comparisons
    pass ``name="comparisons", split=tldr_split(ours)``. ``limit``
    keeps the first rows before validation (quick runs). Malformed rows are dropped and listed in the report; more
    than ``max_bad_fraction`` of them raises :class:`DataError`, as does an unreadable source, so that a wrong file
    or schema fails the run at once instead of training on garbage.
    """
    return _load(source, split=split, format=format, limit=limit, max_bad_fraction=max_bad_fraction, name=name,
                 data_dir=data_dir)


def load_prompts(
    source: str,
    *,
    split: str = "train",
    format: str = "auto",
    limit: Optional[int] = None,
    max_bad_fraction: float = 0.01,
    name: Optional[str] = None,
    data_dir: Optional[str] = None,
) -> tuple[list[Prompt], DataReport]:
    """The prompt of every row of ``source``, in row order, for the sampling stage (SPEC §6.1 steps 4 and 6).

    Rows of any training format give the prompt :func:`load_records` would train on (a chat conversation's prefix,
    a string prompt made chat when the responses are chat turns), so that samples are drawn from the prompts the
    data mean; rows with just a ``prompt`` (a string or chat messages) are read as they are. Rows are validated as
    their format requires, and dropped and reported as in :func:`load_records`. Duplicates are kept.
    """
    records, report = _load(source, split=split, format=format, limit=limit, max_bad_fraction=max_bad_fraction,
                            name=name, prompts_only=True, data_dir=data_dir)
    return [record.prompt for record in records], report


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------------------------


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


def _render_chat(tokenizer, messages: Messages, label: str, **kwargs) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as err:  # jinja raises for roles a template refuses (e.g. Gemma-2 and "system")
        name = _tokenizer_name(tokenizer)
        raise DataError(f"{label}: the chat template of {name} failed: {_short_cause(err)}") from err


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


def _check_chat_template(prompts: Sequence[Prompt], tokenizer) -> None:
    if any(not isinstance(prompt, str) for prompt in prompts) and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"tokenizer {_tokenizer_name(tokenizer)} has no chat template; use text prompts or a tokenizer with one"
        )


def _check_tokenizer(records: Sequence[PreferenceRecord], tokenizer) -> None:
    _check_chat_template([r.prompt for r in records], tokenizer)
    if any(isinstance(r.prompt, str) for r in records) and tokenizer.eos_token_id is None:
        raise DataError(
            f"tokenizer {_tokenizer_name(tokenizer)} has no EOS token, which text prompts append to responses; set one"
        )


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


def encode_prompts(prompts: Sequence[Prompt], tokenizer) -> list[list[int]]:
    """Token ids of each prompt exactly as :func:`tokenize_records` builds ``prompt_ids`` (before truncation).

    Text prompts are encoded as they are, chat prompts rendered by the tokenizer's template with the generation
    prompt (SPEC §6.3), both with exactly one leading BOS where the tokenizer uses one (SPEC §6.2 / §6.3 BOS traps);
    the sampling stage feeds these ids to the model (SPEC §6.1 step 4).
    """
    _check_chat_template(prompts, tokenizer)
    texts = [_render_prompt(tokenizer, prompt, f"prompt {i}") for i, prompt in enumerate(prompts)]
    return _encode_prompt_texts(tokenizer, texts, _BosPolicy.of(tokenizer))


def _encode_all(
    records: Sequence[PreferenceRecord], tokenizer, bos: _BosPolicy
) -> list[tuple[list[int], list[list[int]]]]:
    """Token ids of every prompt and completion, in two batched tokenizer calls (fast tokenizers batch in Rust)."""
    rendered = [_render(record, tokenizer) for record in records]
    prompts = _encode_prompt_texts(tokenizer, [prompt for prompt, _ in rendered], bos)
    flat = _encode(tokenizer, [c for _, completions in rendered for c in completions])
    out, position = [], 0
    for record, prompt_ids, (_, completions) in zip(records, prompts, rendered):
        ids = [list(c) for c in flat[position : position + len(completions)]]
        if isinstance(record.prompt, str):  # SPEC §1: EOS is part of the scored response
            ids = [c + [tokenizer.eos_token_id] for c in ids]
        out.append((list(prompt_ids), ids))
        position += len(completions)
    return out


def _truncate_prompt(ids: list[int], max_prompt_length: int, bos_id: Optional[int]) -> list[int]:
    """Keep the prompt's end (the question and assistant cue sit there) and its leading BOS."""
    if len(ids) <= max_prompt_length:
        return ids
    if bos_id is not None and ids[0] == bos_id:
        return [bos_id, *ids[len(ids) - (max_prompt_length - 1):]]
    return ids[len(ids) - max_prompt_length:]


def _pack(index, record, prompt_ids, completion_ids, *, max_length, max_prompt_length, bos, report):
    """One tokenised feature, or None (and a report entry) when the record cannot be scored."""
    if any(not c for c in completion_ids):
        report.drop(index, "a completion is empty after tokenisation")
        return None
    truncated = _truncate_prompt(prompt_ids, max_prompt_length, bos.bos_id)
    report.n_prompt_truncated += len(truncated) < len(prompt_ids)
    if not truncated:
        report.drop(index, "empty prompt after tokenisation (the first response token would have no context)")
        return None
    room = max_length - len(truncated)
    report.n_completion_truncated += sum(len(c) > room for c in completion_ids)
    return {"index": index, "id": record.id, "prompt_ids": truncated,
            "completion_ids": [c[:room] for c in completion_ids], "rewards": [float(r) for r in record.rewards]}


def tokenize_completions(
    prompts: Sequence[Prompt], completions: Sequence[Sequence[str]], tokenizer, *, max_length: int,
    max_prompt_length: int,
) -> list[dict]:
    """Tokenise given (prompt, completions) exactly as training does, for scoring them under a model afterwards
    (KL estimates, reward-model labels). Completions are used as they are — repeats and empty ones included, since
    they are samples, not data to validate — and nothing may be dropped: a record that would be raises DataError."""
    records = [
        PreferenceRecord(id=str(i), prompt=prompt, completions=list(group), rewards=[0.0] * len(group))
        for i, (prompt, group) in enumerate(zip(prompts, completions))
    ]
    examples, report = tokenize_records(records, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    if report.n_dropped:
        raise DataError(f"{report.n_dropped} records could not be scored: {report.summary()}")
    return examples


def tokenize_records(
    records: Sequence[PreferenceRecord], tokenizer, *, max_length: int, max_prompt_length: int
) -> tuple[list[dict], TokenizeReport]:
    """Token ids of each record: ``{index, id, prompt_ids, completion_ids (K lists), rewards}`` (K = 1 for SFT).

    Chat prompts are rendered by the tokenizer's own template (SPEC §6.3: use the tokenizer's chat template) and the
    response is the text the template adds for the assistant turn, end-of-turn tokens included; text prompts get
    the response plus EOS (SPEC §1). Ids are built with ``add_special_tokens=False`` and then given exactly one
    leading BOS where the tokenizer uses one (see :class:`_BosPolicy`). Prompts are cut on the left to
    ``max_prompt_length`` (keeping BOS), responses on the right so prompt + response <= ``max_length``.
    """
    _check_lengths(max_length, max_prompt_length)
    _check_tokenizer(records, tokenizer)
    bos = _BosPolicy.of(tokenizer)
    report = TokenizeReport(n_records=len(records), bos_policy=bos.name)
    features = []
    encoded = _encode_all(records, tokenizer, bos)
    for index, (record, (prompt_ids, completion_ids)) in enumerate(zip(records, encoded)):
        feature = _pack(index, record, prompt_ids, completion_ids, max_length=max_length,
                        max_prompt_length=max_prompt_length, bos=bos, report=report)
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


# ---------------------------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------------------------


def _per_record_matrix(features: Sequence[dict], key: str, k: int) -> torch.Tensor:
    for b, feature in enumerate(features):
        if len(feature[key]) != k:
            raise ValueError(f"feature {b} has {len(feature[key])} {key} for {k} completions")
    return torch.tensor([[float(v) for v in feature[key]] for feature in features], dtype=torch.float32)


class PreferenceCollator:
    """Stacks tokenised records into one right-padded batch of B·K sequences, record-major.

    Row ``b*K + k`` is record b's completion k, so the losses reshape per-sequence log-probs to ``[B, K]`` (chosen
    at k = 0 for pairs, SPEC §2/§3; K = 1 for SFT examples, one row per record, SPEC §6.1 step 2).
    ``completion_mask`` is 1 exactly on response tokens, the only ones scored (SPEC §1); masks are built from
    lengths, never by comparing with ``pad_token_id``, so pad = EOS is safe.
    ``ref_logps`` (precomputed reference log-probs) pass through when every feature has them.
    """

    def __init__(self, pad_token_id: int):
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be an integer >= 0, got {pad_token_id!r}; set tokenizer.pad_token")
        self.pad_token_id = pad_token_id

    @staticmethod
    def _common_k(features: Sequence[dict]) -> int:
        ks = {len(feature["completion_ids"]) for feature in features}
        if len(ks) != 1:
            raise ValueError(f"features in one batch must have the same number of completions K, got K in {sorted(ks)}")
        return ks.pop()

    def _sequences(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        rows = [(f["prompt_ids"], c) for f in features for c in f["completion_ids"]]
        length = max(len(p) + len(c) for p, c in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (prompt, completion) in enumerate(rows):
            end = len(prompt) + len(completion)
            input_ids[i, :end] = torch.tensor([*prompt, *completion], dtype=torch.long)
            attention_mask[i, :end] = 1
            completion_mask[i, len(prompt):end] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of features")
        k = self._common_k(features)
        batch = self._sequences(features)
        batch["rewards"] = _per_record_matrix(features, "rewards", k)
        batch["index"] = torch.tensor([int(f["index"]) for f in features], dtype=torch.long)
        has_ref = ["ref_logps" in f for f in features]
        if any(has_ref) and not all(has_ref):
            raise ValueError(f"ref_logps present in {sum(has_ref)} of {len(features)} features; all or none must have them")
        if all(has_ref):
            batch["ref_logps"] = _per_record_matrix(features, "ref_logps", k)
        return batch
