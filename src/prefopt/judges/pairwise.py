"""The pairwise judging protocol: templates, the pairwise LLM judge and concurrent judging (SPEC §6.1 step 6, §8).

SPEC §6.1 step 6: the HH / TL;DR pairwise judge at temperature 0, each pair judged in both orders (see
:mod:`prefopt.winrate`). SPEC §8: the small world's :class:`~prefopt.smallworld.world.HiddenRewardJudge` and
:class:`PairwiseLLMJudge` share one interface, ``compare(prompt, response_a, response_b) -> "A" | "B" | "tie" |
"invalid"`` plus a ``name``, so the same win-rate code serves both. Every LLM call goes through
:class:`prefopt.judges.client.JudgeClient`.

The shipped templates are package data, ``prefopt/resources/templates/<name>.txt``, found with
:mod:`importlib.resources`, so a template name works from any working directory and from an installed wheel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePath
from typing import Any, Mapping, Sequence

from prefopt.errors import ConfigError, JudgeError  # noqa: F401  (JudgeError: named below; the client raises it)
from prefopt.judges.client import JudgeClient, _run_pool
from prefopt.winrate import VERDICTS, PairwiseJudge, judge_pairs_both_orders

logger = logging.getLogger(__name__)

# The shipped judge templates (SPEC §6.1 step 6), package data of prefopt.resources. A template name resolves here; a
# path works from anywhere. An importlib.resources Traversable: a Path in any unpacked install (editable or wheel).
TEMPLATE_DIR = resources.files("prefopt.resources") / "templates"
TEMPLATE_FIELDS = ("prompt", "response_a", "response_b")


class TemplateNotFoundError(ConfigError, FileNotFoundError):
    """No judge template by that name or path: a :class:`~prefopt.errors.ConfigError` (the CLI prints one line) and
    still a ``FileNotFoundError``, as before."""


def packaged_templates() -> list[str]:
    """The names of the shipped judge templates (``prefopt/resources/templates/*.txt``)."""
    return sorted(p.name[: -len(".txt")] for p in TEMPLATE_DIR.iterdir() if p.name.endswith(".txt"))


@dataclass(frozen=True)
class JudgeTemplate:
    """A pairwise judge template (``prefopt/resources/templates/*.txt``, documented in the README.md there).

    The file starts with a header block of lines beginning with ``#`` (not sent to the judge) that states the fields
    and the answer format and declares the answer label with a line ``# answer-label: <Label>``; the rest is the
    body, with the fields ``{prompt}``, ``{response_a}``, ``{response_b}``. ``sha256`` is the hash of the whole file
    text: editing any part of a template invalidates its cache entries (SPEC §7).
    """

    name: str
    body: str
    answer_label: str
    sha256: str
    path: Path  # the packaged file's Traversable (a Path unless prefopt is imported from a zip), or the given path

    @classmethod
    def load(cls, name_or_path: str | os.PathLike, *, fields: Sequence[str] = TEMPLATE_FIELDS) -> "JudgeTemplate":
        """A template by name (the packaged ``prefopt/resources/templates/<name>.txt``) or path; ``fields`` are the
        placeholders its body must hold (the pairwise judges' by default; Arena-Hard's template has its own)."""
        path = Path(name_or_path)
        if not path.is_file():
            candidate = TEMPLATE_DIR / f"{name_or_path}.txt"
            if not candidate.is_file():
                raise TemplateNotFoundError(
                    f"no judge template {str(name_or_path)!r}: not a file, nor a packaged template; packaged "
                    f"templates: {', '.join(packaged_templates())} (or pass a template file's path)"
                )
            path = candidate
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        header_end = 0
        while header_end < len(lines) and lines[header_end].startswith("#"):
            header_end += 1
        label = None
        for line in lines[:header_end]:
            m = re.match(r"#\s*answer-label\s*:\s*(\S.*?)\s*$", line, flags=re.IGNORECASE)
            if m:
                label = m.group(1)
        if not label:
            raise ConfigError(f"judge template {path} declares no '# answer-label: <Label>' header line")
        body = "\n".join(lines[header_end:]).strip("\n")
        for field in fields:
            if "{" + field + "}" not in body:
                raise ConfigError(f"judge template {path} lacks the field {{{field}}}")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return cls(name=PurePath(path.name).stem, body=body, answer_label=label, sha256=digest, path=path)

    def render(self, prompt: str, response_a: str, response_b: str) -> str:
        """The body with its fields filled in one pass (text inside a response is never substituted again)."""
        values = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
        return re.sub(r"\{(prompt|response_a|response_b)\}", lambda m: values[m.group(1)], self.body)

    def parse(self, answer: str) -> str:
        """The verdict on the answer's last non-blank line, which must be exactly ``<Label>: A``, ``<Label>: B`` or
        ``<Label>: tie`` (case-insensitive, whitespace tolerant); anything else is ``"invalid"``."""
        lines = answer.strip().splitlines()
        if not lines:
            return "invalid"
        pattern = rf"\s*{re.escape(self.answer_label)}\s*:\s*(A|B|tie)\s*"
        m = re.fullmatch(pattern, lines[-1], flags=re.IGNORECASE)
        if not m:
            return "invalid"
        verdict = m.group(1)
        return "tie" if verdict.lower() == "tie" else verdict.upper()


_ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}


def format_chat_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """A chat prompt as text for a judge template: one ``Human: …`` / ``Assistant: …`` / ``System: …`` paragraph
    per message (the HH layout of SPEC §6.1 step 1, without the trailing ``Assistant:``)."""
    if isinstance(messages, (str, bytes)) or not all(isinstance(m, Mapping) for m in messages):
        raise TypeError("a chat prompt is a sequence of {'role', 'content'} messages")
    try:
        return "\n\n".join(f"{_ROLE_NAMES.get(m['role'], str(m['role']).title())}: {m['content']}" for m in messages)
    except KeyError as exc:
        raise TypeError(f"chat message without {exc}") from None


class PairwiseLLMJudge:
    """A pairwise judge that asks an LLM through :class:`JudgeClient` (SPEC §6.1 step 6, §7).

    ``compare(prompt, response_a, response_b)`` renders the template into one user message, asks at temperature 0
    and parses the verdict strictly from the template's answer line: ``"A"``, ``"B"``, ``"tie"``, or ``"invalid"``
    for anything else (logged at debug with the answer's first characters). Endpoint failures raise
    :class:`JudgeError` rather than counting as a verdict. Same interface as ``HiddenRewardJudge`` (SPEC §8).
    """

    def __init__(self, client: JudgeClient, template: str | os.PathLike | JudgeTemplate, *, max_tokens: int = 256,
                 name: str | None = None):
        self.client = client
        self.template = template if isinstance(template, JudgeTemplate) else JudgeTemplate.load(template)
        self.max_tokens = max_tokens
        self.name = name or f"{client.model}/{self.template.name}"

    def messages(self, prompt: str | Sequence[Mapping[str, str]], response_a: str, response_b: str) -> list[dict]:
        """The one user message sent for this comparison. A chat prompt (a list of ``{"role", "content"}``
        messages, as in the small world) is written out as ``Human: …`` / ``Assistant: …`` turns."""
        if not isinstance(prompt, str):
            prompt = format_chat_prompt(prompt)
        for value, what in ((response_a, "response_a"), (response_b, "response_b")):
            if not isinstance(value, str):
                raise TypeError(f"{what} must be a str, got {type(value).__name__}")
        return [{"role": "user", "content": self.template.render(prompt, response_a, response_b)}]

    def compare(self, prompt: str, response_a: str, response_b: str) -> str:
        result = self.client.complete(
            self.messages(prompt, response_a, response_b),
            temperature=0.0,
            max_tokens=self.max_tokens,
            template_id=(self.template.name, self.template.sha256),
        )
        verdict = self.template.parse(result["content"])
        if verdict == "invalid":
            logger.debug("judge %s: unparseable verdict, answer starts %r", self.name, result["content"][:80])
        return verdict


def judge_many(
    judge: PairwiseJudge,
    comparisons: Sequence[tuple[Any, str, str]],
    *,
    workers: int = 8,
    progress: bool = True,
) -> list[str]:
    """``judge.compare`` over (prompt, response_a, response_b) triples in a thread pool; verdicts in input order.

    With a :class:`PairwiseLLMJudge` each judgement is cached as soon as it returns, so a batch that fails part-way
    (a :class:`JudgeError` after all other calls have run) resumes on a rerun without paying for what finished."""
    verdicts = _run_pool([lambda c=c: judge.compare(*c) for c in comparisons], workers=workers, progress=progress,
                         desc=getattr(judge, "name", "judge"))
    for v in verdicts:
        if v not in VERDICTS:
            raise ValueError(f"judge {getattr(judge, 'name', judge)!r} returned {v!r}, not one of {VERDICTS}")
    return verdicts


def judge_both_orders_many(
    judge: PairwiseJudge,
    pairs: Sequence[tuple[Any, str, str]],
    *,
    workers: int = 8,
    progress: bool = True,
) -> list[list[str]]:
    """Concurrent :func:`prefopt.winrate.judge_both_orders` over (prompt, policy response, baseline response)
    triples: per pair, the policy's outcomes with the policy shown first, then second (SPEC §6.1 step 6). Feed the
    result to :func:`prefopt.winrate.win_rate`."""
    return judge_pairs_both_orders(
        judge, pairs, compare_many=lambda comparisons: judge_many(judge, comparisons, workers=workers, progress=progress))
