"""The preference data formats as one registry, and loading rows into records (SPEC §1, §3, §6.1–§6.3, §9).

:data:`FORMAT_SPECS` holds one :class:`FormatSpec` per format (row parser, required columns, ``auto`` detector and
order, id column); :data:`FORMATS`, :data:`REQUIRED_COLUMNS`, :data:`SFT_PAIR_COLUMNS` and :data:`AUTO_ORDER` are
derived from it. :func:`load_records` and :func:`load_prompts` read a source (:mod:`prefopt.data.readers`), pick
its format (:func:`_resolve_format`), parse every row into a :class:`PreferenceRecord`, and drop and report bad rows
(:class:`DataReport`). The Anthropic HH and TL;DR helpers (:func:`tldr_prompt`, :func:`tldr_split`) live here too.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from prefopt.data.readers import _quote_bad, _quote_rows, _read_rows, _UnreadableRow
from prefopt.errors import DataError

logger = logging.getLogger(__package__)

Messages = list[dict]
Prompt = Union[str, Messages]

CHAT_ROLES = ("user", "system", "assistant")
#: Turn markers of Anthropic HH transcripts (SPEC §6.1 step 1); an HH prompt ends in :data:`HH_ASSISTANT`.
HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
#: The TL;DR prompt of SPEC §6.1 step 1, shared by the ``tldr`` and ``tldr_sft`` formats (see :func:`tldr_prompt`).
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
#: Our split name -> the openai/summarize_from_feedback ``comparisons`` split that holds it (SPEC §6.1 step 1).
TLDR_SPLITS = {"train": "train", "test": "validation"}


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
    """What :func:`load_records` read and dropped; ``bad`` holds ``(row index, reason)`` per malformed row.

    Indices are 0-based (``rows[index]``); messages and :meth:`summary` number rows from 1, like the lines of a JSONL
    file (blank lines are not rows).
    """

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



# ---------------------------------------------------------------------------------------------------------------
# Validating rows
# ---------------------------------------------------------------------------------------------------------------


class _BadRow(Exception):
    """A row-level problem: the row is dropped and reported, not raised (the message is the reason)."""



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



# ---------------------------------------------------------------------------------------------------------------
# The format registry
# ---------------------------------------------------------------------------------------------------------------


#: A row parser: one raw row -> ``(prompt, completions, rewards)``, or :class:`_BadRow` with the reason.
RowParser = Callable[[dict], tuple[Prompt, list[str], list[float]]]


def _prompt_id(row: dict) -> Any:
    return row.get("prompt_id")


@dataclass(frozen=True)
class FormatSpec:
    """One data format: its row parser, the columns it needs and how ``format="auto"`` recognises it.

    ``required`` are the columns an explicit ``format=name`` needs in the first row (``also_accepts``: columns that
    will do instead, named by ``also_hint`` in the error). ``detect`` is what ``format="auto"`` needs to see in the
    first row (default: the ``required`` columns) and ``auto_rank`` the format's place in :data:`AUTO_ORDER` (None:
    ``auto`` never picks it). ``id_of`` is where a parsed row keeps its stable id (default: ``prompt_id``).
    ``prompts_only`` formats are read by :func:`load_prompts` only (never training records, not in :data:`FORMATS`).
    """

    name: str
    parse: RowParser
    required: tuple[str, ...]
    detect: Optional[Callable[[dict], bool]] = None
    auto_rank: Optional[int] = None
    id_of: Callable[[dict], Any] = _prompt_id
    also_accepts: tuple[str, ...] = ()
    also_hint: str = ""
    prompts_only: bool = False

    def detects(self, first: dict) -> bool:
        """Whether ``format="auto"`` picks this format for a source whose first row is ``first``."""
        if self.detect is not None:
            return self.detect(first)
        return all(column in first for column in self.required)


#: Every format, in the order of :data:`FORMATS` (``prompts`` last: :func:`load_prompts` only). ``auto`` tries them by
#: ``auto_rank``. TL;DR ids are post ids, which repeat over a post's comparisons and get ``#n`` suffixes
#: (:func:`_make_ids_unique`).
FORMAT_SPECS: dict[str, FormatSpec] = {spec.name: spec for spec in (
    FormatSpec("pairs", _parse_pairs_row, ("chosen", "rejected"), auto_rank=2),
    FormatSpec("rw", _parse_rw_row, ("prompt", "completions", "rewards"), auto_rank=0),
    FormatSpec("princeton_rw", _parse_princeton_rw_row, ("prompt", "all_generated_responses", "all_rm_scores")),
    FormatSpec("sft", _parse_sft_row, ("prompt", "completion"), auto_rank=5, also_accepts=("chosen",),
               also_hint=" (or a pairs 'chosen')"),
    FormatSpec("hh", _parse_hh_row, ("chosen", "rejected"), detect=_is_hh_row, auto_rank=1),
    FormatSpec("tldr", _parse_tldr_row, ("info", "summaries", "choice"), auto_rank=3,
               id_of=lambda row: row["info"].get("id")),
    FormatSpec("tldr_sft", _parse_tldr_sft_row, ("subreddit", "title", "post", "summary"),
               detect=lambda first: "post" in first and "summary" in first, auto_rank=4,
               id_of=lambda row: row.get("id")),
    FormatSpec("prompts", _parse_prompt_row, ("prompt",), auto_rank=6, prompts_only=True),
)}


def _auto_specs(prompts_only: bool = False) -> list[FormatSpec]:
    """The formats ``format="auto"`` tries, in order (``prompts_only`` formats only for :func:`load_prompts`)."""
    specs = [spec for spec in FORMAT_SPECS.values()
             if spec.auto_rank is not None and (prompts_only or not spec.prompts_only)]
    return sorted(specs, key=lambda spec: spec.auto_rank)


#: Accepted values of ``load_records(format=...)``.
FORMATS = ("auto", *(name for name, spec in FORMAT_SPECS.items() if not spec.prompts_only))
#: Columns each explicit format needs (``pairs`` also needs ``prompt`` unless the responses are full conversations;
#: ``sft`` also accepts pairs rows, see :data:`SFT_PAIR_COLUMNS`).
REQUIRED_COLUMNS = {name: spec.required for name, spec in FORMAT_SPECS.items() if not spec.prompts_only}
#: Columns with which ``format="sft"`` reads a pairs row (its chosen response; SPEC §6.1 step 2).
SFT_PAIR_COLUMNS = FORMAT_SPECS["sft"].also_accepts
#: Order in which ``format="auto"`` tries the formats on the first row (:data:`FORMAT_SPECS` says what each needs):
#: hh before pairs, since both have ``chosen`` and ``rejected``.
AUTO_ORDER = tuple(spec.name for spec in _auto_specs())


# ---------------------------------------------------------------------------------------------------------------
# Loading records
# ---------------------------------------------------------------------------------------------------------------


def _resolve_format(format: str, rows: Sequence[Any], source: str, *, prompts_only: bool = False) -> str:
    """The format to parse with: detected from the first object row's keys, or the explicit one checked against them.

    With ``prompts_only`` (:func:`load_prompts`), rows that match no format but have a ``prompt`` are ``prompts`` rows.
    """
    first = next((row for row in rows if isinstance(row, dict)), None)
    if first is None:
        raise DataError(f"{source} has no JSON-object rows; each row must be an object such as {{prompt, chosen, rejected}}")
    columns = sorted(first)
    if format == "auto":
        for spec in _auto_specs(prompts_only):
            if spec.detects(first):
                return spec.name
        raise DataError(
            f"cannot tell the format of {source} from its columns {columns}: expected pairs (prompt, chosen, "
            "rejected), rw (prompt, completions, rewards), sft (prompt, completion), hh (chosen, rejected HH "
            "transcripts), tldr (info, summaries, choice) or tldr_sft (subreddit, title, post, summary); rename the "
            "columns or pass data.format"
        )
    spec = FORMAT_SPECS[format]
    missing = [column for column in spec.required if column not in first]
    if spec.also_accepts and all(column in first for column in spec.also_accepts):
        missing = []
    if missing:
        alternative = spec.also_hint
        raise DataError(
            f"format={format!r} needs columns {missing}{alternative} that {source} lacks (it has {columns}); fix "
            "data.format"
        )
    return format



def _row_id(row: dict, source_name: str, index: int, fmt: str = "") -> str:
    prompt_id = (FORMAT_SPECS[fmt].id_of if fmt in FORMAT_SPECS else _prompt_id)(row)
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
    """Records, their 0-based row indices, and ``(row index, reason)`` of the malformed rows."""
    parse = FORMAT_SPECS[fmt].parse
    records: list[PreferenceRecord] = []
    indices: list[int] = []
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
        indices.append(index)
    _make_ids_unique(records)
    return records, indices, bad


def _check_same_k(records: Sequence[PreferenceRecord], indices: Sequence[int], source: str) -> None:
    """Every record of one source has the same K: batches stack K completions per record (SPEC §3), so a stray
    K = 5 row among K = 4 ones would crash the trainer at whichever step first batches it, naming no row."""
    by_k: dict[int, list[int]] = {}
    for record, index in zip(records, indices):
        by_k.setdefault(len(record.completions), []).append(index)
    if len(by_k) < 2:
        return
    counts = sorted(len(rows) for rows in by_k.values())
    # The most common K is told by its count, the others by their rows; on a tie for most common, every K by rows.
    common = max(by_k, key=lambda k: len(by_k[k])) if counts[-1] > counts[-2] else None
    parts = [f"K = {k} ({len(by_k[k])} row{'s' if len(by_k[k]) > 1 else ''})" if k == common
             else f"K = {k} ({_quote_rows(by_k[k])})"
             for k in sorted(by_k)]
    found = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    raise DataError(f"{source}: rows have {found}: every row of a source must have the same number of completions")


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
    records, indices, bad = _parse_rows(rows, fmt, source_name)
    report = DataReport(source=source, n_rows=len(rows), n_kept=len(records), bad=bad, format=fmt)
    _check_bad_fraction(report, max_bad_fraction)
    if not prompts_only:
        _check_same_k(records, indices, source)
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
    ``sft``, ``hh``, ``tldr`` or ``tldr_sft`` (see the :mod:`prefopt.data` docstring; pairs and HH rows are read as
    SFT examples only when ``sft`` is asked for). ``name`` (config) and ``data_dir`` pass to
    ``datasets.load_dataset`` for Hub ids, e.g. ``load_records("Anthropic/hh-rlhf", data_dir="helpful-base",
    format="hh")``; for TL;DR comparisons pass ``name="comparisons", split=tldr_split(ours)``. ``limit`` keeps the
    first rows before validation (quick runs). Malformed rows are dropped and listed in the report; more
    than ``max_bad_fraction`` of them raises :class:`DataError`, as does an unreadable source, so that a wrong file
    or schema fails the run at once instead of training on garbage. So do kept rows with different numbers of
    completions K (rw rows of K = 4 and K = 5): the error names the source, the rows of the rarer K and every K found.
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
