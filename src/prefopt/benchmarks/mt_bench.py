"""MT-Bench single-answer grading with our judge client (SPEC §7 "MT-Bench", "Judges").

Data: 80 two-turn questions in 8 categories, fschat's judge prompts and GPT-4 reference answers, all read at run time
from the folder written by :mod:`prefopt.benchmarks.eval_data` (``eval/data/mt_bench/``); nothing of them is copied
into the repository.

Grading follows fschat's ``gen_judgment.py --mode single``: turn 1 is judged with ``single-v1`` and turn 2 with
``single-v1-multi-turn`` (the judge sees the whole conversation); questions in the math, reasoning and coding
categories use ``single-math-v1`` / ``single-math-v1-multi-turn`` with the reference answer (GPT-4's by default, as
fschat). Messages are ``[system: prompt.system_prompt, user: prompt_template filled]``; the judge runs at temperature 0
with 2048 new tokens through :meth:`prefopt.judges.JudgeClient.complete`, so every judgement is cached on disk and a
rerun never pays twice. The cache key includes the judge prompt's name and the sha256 of its JSON record.

Rating parse (:func:`parse_rating`), ``rating_parse="fschat"`` by default (fschat llm_judge/common.py
``run_judge_single``): the FIRST ``[[x]]`` (x: digits, an optional point, digits), else the first ``[x]``, read as a
Python literal; no range check, so 0 and 11 count. fschat's ``ast.literal_eval`` raises on an integer with a leading
zero (``[[07]]``) and its run stops; we count that rating invalid. ``rating_parse="strict"`` (ours,
``--rating-parse strict``): the LAST ``[[x]]``, 1 <= x <= 10, no fallback. Invalid ratings are counted and excluded
from every mean, as fschat's ``show_result.py`` drops score -1; each record and the score say which parse was used. Score = mean over all valid
(question, turn) ratings, with per-turn and per-category means (:func:`score_ratings`).

Answers use fschat's model-answer format: ``{"question_id", "model_id", "choices": [{"index": 0, "turns": [a1,
a2]}]}`` (:func:`make_answer`, :func:`save_answers`, :func:`load_answers`); :func:`generate_two_turn` produces them
from any generation function (turn 2 sees turn 1's answer).

Judges: :func:`grade_answers` asks any :class:`RatingJudge` (``rate(question, answer_turns, turn) -> rating``): at
paper scale :class:`LLMRatingJudge` (the above), in the small world (SPEC §8) the hidden reward mapped onto 1–10
(:class:`prefopt.smallworld.benchmarks.HiddenRewardRatingJudge`), so the same records and :func:`score_ratings` run
on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from prefopt.io import read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
NEED_REF_CATEGORIES = ("math", "reasoning", "coding")  # fschat's NEED_REF_CATS
DEFAULT_REFERENCE = "gpt-4"
JUDGE_MAX_TOKENS = 2048  # fschat's single-answer judge
INVALID_POLICY = "invalid ratings are counted in n_invalid and excluded from every mean (as fschat's show_result.py)"
PROMPT_FIELDS = ("name", "type", "system_prompt", "prompt_template", "description", "category", "output_format")



# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None  # reference answers per turn (math / reasoning / coding only)


def _mt_dir(data_dir: str | Path) -> Path:
    """Accept the data root (``eval/data``) or its ``mt_bench`` folder."""
    d = Path(data_dir)
    return d / "mt_bench" if (d / "mt_bench" / "question.jsonl").is_file() else d


def load_questions(data_dir: str | Path, *, reference: str | None = DEFAULT_REFERENCE) -> list[Question]:
    """The questions of ``question.jsonl``; math / reasoning / coding questions get the turns of
    ``reference_answer/<reference>.jsonl`` (``None``: no references)."""
    d = _mt_dir(data_dir)
    refs: dict[Any, tuple[str, ...]] = {}
    if reference is not None:
        for row in read_jsonl(d / "reference_answer" / f"{reference}.jsonl"):
            refs[row["question_id"]] = tuple(row["choices"][0]["turns"])
    questions = []
    for row in read_jsonl(d / "question.jsonl"):
        ref = refs.get(row["question_id"]) if row["category"] in NEED_REF_CATEGORIES else None
        if reference is not None and row["category"] in NEED_REF_CATEGORIES and ref is None:
            raise ValueError(f"question {row['question_id']} ({row['category']}) has no {reference} reference answer")
        questions.append(Question(row["question_id"], row["category"], tuple(row["turns"]), ref))
    return questions


@dataclass(frozen=True)
class JudgePrompt:
    """One record of fschat's ``judge_prompts.jsonl``."""

    name: str
    type: str
    system_prompt: str
    prompt_template: str
    description: str = ""
    category: str = ""
    output_format: str = ""

    @property
    def sha256(self) -> str:
        record = {f: getattr(self, f) for f in PROMPT_FIELDS}
        return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def messages(self, **fields: str) -> list[dict]:
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": self.prompt_template.format(**fields)}]


def load_judge_prompts(path: str | Path) -> dict[str, JudgePrompt]:
    """``judge_prompts.jsonl`` (a file, the data root or its ``mt_bench`` folder) as ``{name: JudgePrompt}``."""
    p = Path(path)
    if p.is_dir():
        p = _mt_dir(p) / "judge_prompts.jsonl"
    return {row["name"]: JudgePrompt(**{f: row.get(f, "") for f in PROMPT_FIELDS}) for row in read_jsonl(p)}


def judge_prompt_for(prompts: Mapping[str, JudgePrompt], question: Question, turn: int) -> JudgePrompt:
    """fschat's choice: ``single[-math]-v1[-multi-turn]``, math when the category needs a reference."""
    math_ = question.category in NEED_REF_CATEGORIES and question.reference is not None
    name = "single-math-v1" if math_ else "single-v1"
    if turn == 2:
        name += "-multi-turn"
    elif turn != 1:
        raise ValueError(f"MT-Bench has turns 1 and 2, not {turn}")
    if name not in prompts:
        raise KeyError(f"no judge prompt {name!r} (have {sorted(prompts)})")
    return prompts[name]


def judge_messages(prompts: Mapping[str, JudgePrompt], question: Question, answer_turns: Sequence[str],
                   turn: int) -> tuple[JudgePrompt, list[dict]]:
    """The judge prompt and the messages that grade ``turn`` (1 or 2) of an answer (fschat's fields)."""
    prompt = judge_prompt_for(prompts, question, turn)
    if turn == 1:
        fields = {"question": question.turns[0], "answer": answer_turns[0]}
    else:
        fields = {"question_1": question.turns[0], "question_2": question.turns[1],
                  "answer_1": answer_turns[0], "answer_2": answer_turns[1]}
    if prompt.name.startswith("single-math"):
        fields["ref_answer_1"] = question.reference[0]
        if turn == 2:
            fields["ref_answer_2"] = question.reference[1]
    return prompt, prompt.messages(**fields)


# ----------------------------------------------------------------------------------------------------------------------
# Answers (fschat's model-answer format) and two-turn generation
# ----------------------------------------------------------------------------------------------------------------------


def make_answer(question_id: int | str, model_id: str, turns: Sequence[str]) -> dict:
    return {"question_id": question_id, "model_id": model_id, "choices": [{"index": 0, "turns": list(turns)}]}


def answer_turns(answer: Mapping[str, Any]) -> list[str]:
    return list(answer["choices"][0]["turns"])


def save_answers(path: str | Path, answers: Iterable[Mapping[str, Any]]) -> None:
    """One answer per line (JSONL, as fschat's ``model_answer/<model>.jsonl``), sorted by question id, atomic."""
    write_jsonl(path, sorted((dict(a) for a in answers), key=lambda a: str(a["question_id"]).zfill(12)))


def load_answers(path: str | Path) -> dict[Any, dict]:
    """``{question_id: answer}``; a later line for the same question wins (as fschat)."""
    return {row["question_id"]: row for row in read_jsonl(path)}


def generate_two_turn(questions: Sequence[Question], generate_fn: Callable, *, model_id: str,
                      batched: bool = False, system_prompt: str | None = None) -> list[dict]:
    """Both turns of every question; turn 2's conversation holds turn 1's question and answer.

    ``generate_fn(messages) -> str`` for one conversation (a list of ``{"role", "content"}``); with ``batched=True``
    ``generate_fn(list_of_conversations) -> list[str]`` is called once per turn (e.g. a wrapper of
    :func:`prefopt.sample.generate` at temperature 0 taking ``texts[i][0]``)."""
    convs = [([{"role": "system", "content": system_prompt}] if system_prompt else []) for _ in questions]
    answers: list[list[str]] = [[] for _ in questions]
    for t in range(2):
        for conv, q in zip(convs, questions):
            conv.append({"role": "user", "content": q.turns[t]})
        if batched:
            outs = list(generate_fn([list(c) for c in convs]))
            if len(outs) != len(convs):
                raise ValueError(f"generate_fn returned {len(outs)} answers for {len(convs)} conversations")
        else:
            outs = [generate_fn(list(c)) for c in convs]
        for conv, ans, out in zip(convs, answers, outs):
            if not isinstance(out, str):
                raise TypeError(f"generate_fn must return str, got {type(out).__name__}")
            conv.append({"role": "assistant", "content": out})
            ans.append(out)
    return [make_answer(q.question_id, model_id, a) for q, a in zip(questions, answers)]


# ----------------------------------------------------------------------------------------------------------------------
# Grading
# ----------------------------------------------------------------------------------------------------------------------

RATING_PARSES = ("fschat", "strict")
_RATING = re.compile(r"\[\[\s*([0-9]+(?:\.[0-9]+)?)\s*\]\]")
# fschat llm_judge/common.py one_score_pattern and one_score_pattern_backup (Unicode \d, as there)
_FSCHAT_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_FSCHAT_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
_PY_INT = re.compile(r"(?:0+|[1-9][0-9]*)", re.ASCII)
_PY_FLOAT = re.compile(r"[0-9]+\.[0-9]*", re.ASCII)


def _python_number(token: str) -> float | None:
    """``ast.literal_eval`` of a matched token as fschat applies it, None where it raises (leading-zero integers,
    non-ASCII digits)."""
    if _PY_INT.fullmatch(token) or _PY_FLOAT.fullmatch(token):
        return float(token)
    return None


def parse_rating(text: str | None, rule: str = "fschat") -> float | None:
    """The rating of a judge's answer under ``rule`` (see the module doc), None when invalid."""
    if rule not in RATING_PARSES:
        from prefopt.errors import ConfigError

        raise ConfigError(f"rating parse must be one of {', '.join(RATING_PARSES)}, got {rule!r}")
    if not isinstance(text, str):
        return None
    if rule == "fschat":
        match = _FSCHAT_RATING.search(text) or _FSCHAT_RATING_BACKUP.search(text)
        return _python_number(match.group(1)) if match else None
    found = _RATING.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if 1.0 <= value <= 10.0 and math.isfinite(value) else None


class RatingJudge(Protocol):
    """What :func:`grade_answers` asks of a judge: a rating of one turn of an answer.

    ``rate(question, answer_turns, turn)`` returns ``{"rating": 1..10 or None (invalid), "judgment": the judge's text
    or None, "judge_prompt": its prompt's name or None, "cached": bool}`` plus any extra fields for the record.
    ``name`` is recorded as the record's ``judge``; ``concurrent`` (optional, default False): turns may be graded in a
    thread pool. Satisfied by :class:`LLMRatingJudge` (paper scale) and the small world's
    :class:`prefopt.smallworld.benchmarks.HiddenRewardRatingJudge`."""

    name: str

    def rate(self, question: Question, answer_turns: Sequence[str], turn: int) -> Mapping[str, Any]:
        ...


class LLMRatingJudge:
    """fschat's single-answer grading through a :class:`prefopt.judges.JudgeClient`: the judge prompt of the turn
    (:func:`judge_messages`) at temperature 0, cached under the prompt's name and sha256, rating by
    :func:`parse_rating`."""

    concurrent = True

    def __init__(self, client, prompts: Mapping[str, JudgePrompt], *, max_tokens: int = JUDGE_MAX_TOKENS,
                 rating_parse: str = "fschat"):
        parse_rating(None, rating_parse)  # checks the rule
        self.client, self.prompts, self.max_tokens, self.rating_parse = client, prompts, max_tokens, rating_parse
        self.name = client.model

    def rate(self, question: Question, answer_turns: Sequence[str], turn: int) -> Mapping[str, Any]:
        prompt, messages = judge_messages(self.prompts, question, answer_turns, turn)
        res = self.client.complete(messages, temperature=0.0, max_tokens=self.max_tokens,
                                   template_id=(f"mt-bench/{prompt.name}", prompt.sha256))
        rating = parse_rating(res["content"], self.rating_parse)
        if rating is None:
            logger.debug("MT-Bench q%s turn %d: invalid rating, answer starts %r", question.question_id, turn,
                         res["content"][:80])
        return {"rating": rating, "judgment": res["content"], "judge_prompt": prompt.name,
                "cached": bool(res.get("cached")), "rating_parse": self.rating_parse}


def grade_answers(judge, questions: Sequence[Question], answers: Mapping[Any, Mapping[str, Any]] | Sequence[Mapping],
                  prompts: Mapping[str, JudgePrompt] | None = None, *, max_tokens: int = JUDGE_MAX_TOKENS,
                  workers: int = 8, progress: bool = True, rating_parse: str = "fschat") -> list[dict]:
    """Grade both turns of every answered question with ``judge``: a :class:`RatingJudge`, or a
    :class:`prefopt.judges.JudgeClient` graded with ``prompts`` (:class:`LLMRatingJudge`).

    Returns one record per (question, turn): ``{"question_id", "model_id", "category", "turn", "rating" (float or
    None = invalid), "judge", "judge_prompt", "judgment", "cached"}`` plus the judge's extra fields
    (:class:`LLMRatingJudge` adds ``rating_parse``, the parse used: ``rating_parse``). Questions without an answer
    are skipped (and logged)."""
    from prefopt.judges import _run_pool

    if not hasattr(judge, "rate"):
        if prompts is None:
            raise ValueError("grading through a judge client needs the judge prompts (load_judge_prompts)")
        judge = LLMRatingJudge(judge, prompts, max_tokens=max_tokens, rating_parse=rating_parse)
    if not isinstance(answers, Mapping):
        answers = {a["question_id"]: a for a in answers}
    jobs = []
    missing = 0
    for q in questions:
        ans = answers.get(q.question_id)
        if ans is None:
            missing += 1
            continue
        jobs += [(q, ans, turn) for turn in (1, 2)]
    if missing:
        logger.warning("MT-Bench: %d of %d questions have no answer; they are not graded", missing, len(questions))
    results = _run_pool([lambda q=q, a=a, t=t: judge.rate(q, answer_turns(a), t) for q, a, t in jobs],
                        workers=workers if getattr(judge, "concurrent", False) else 1, progress=progress,
                        desc="mt-bench judge")
    records = []
    for (q, ans, turn), res in zip(jobs, results):
        extra = {k: v for k, v in res.items() if k not in ("rating", "judgment", "judge_prompt", "cached")}
        records.append({"question_id": q.question_id, "model_id": ans.get("model_id"), "category": q.category,
                        "turn": turn, "rating": res["rating"], **extra, "judge": judge.name,
                        "judge_prompt": res.get("judge_prompt"), "judgment": res.get("judgment"),
                        "cached": bool(res.get("cached"))})
    return records


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_ratings(records: Iterable[Mapping[str, Any]]) -> dict:
    """MT-Bench score from per-(question, turn) records with ``rating`` (None = invalid), ``category``, ``turn``.

    Returns ``{"score", "n_ratings" (valid), "n_invalid", "per_turn": {"1": mean, "2": mean}, "per_category":
    {category: mean}, "n_per_category": {category: valid count}, "invalid_policy", "rating_parse"}``; a mean over no
    valid rating is None. ``rating_parse`` is the records' (None when they do not say); records of different parses
    raise :class:`~prefopt.errors.ConfigError`. Categories: MT-Bench's eight in their usual order, then any others (small world topics) sorted."""
    records = list(records)
    parses = {r.get("rating_parse") for r in records}
    if len(parses) > 1:
        from prefopt.errors import ConfigError

        raise ConfigError(f"the ratings mix parses {sorted(map(str, parses))}; score each parse apart")
    valid, invalid = [], 0
    by_turn: dict[str, list[float]] = {}
    by_cat: dict[str, list[float]] = {}
    for r in records:
        turn, cat = str(r["turn"]), r["category"]
        by_turn.setdefault(turn, [])
        by_cat.setdefault(cat, [])
        rating = r["rating"]
        if rating is None:
            invalid += 1
            continue
        valid.append(float(rating))
        by_turn[turn].append(float(rating))
        by_cat[cat].append(float(rating))
    order = [c for c in CATEGORIES if c in by_cat] + sorted(c for c in by_cat if c not in CATEGORIES)
    return {
        "score": _mean(valid),
        "n_ratings": len(valid),
        "n_invalid": invalid,
        "per_turn": {t: _mean(by_turn[t]) for t in sorted(by_turn, key=lambda s: (len(s), s))},
        "per_category": {c: _mean(by_cat[c]) for c in order},
        "n_per_category": {c: len(by_cat[c]) for c in order},
        "invalid_policy": INVALID_POLICY,
        "rating_parse": parses.pop() if parses else None,
    }
