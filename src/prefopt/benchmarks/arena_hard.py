"""Arena-Hard v0.1: pairwise judging against a baseline and the Bradley–Terry win rate (SPEC §7 "Arena-Hard v0.1").

Pipeline: ``load_questions`` / ``load_answers`` (Arena-Hard's JSONL formats, from local files only) ->
``judge_answers`` (any :class:`ArenaJudge`: an OpenAI-compatible judge through :class:`prefopt.judges.JudgeClient`,
temperature 0, cached, or the small world's hidden-reward judge on a CPU) -> ``score_judgements`` (win rate in % with a
bootstrap 95% interval and verdict counts).

Conventions and decisions:

- **Two games per question, positions swapped**, Arena-Hard's own convention: game 1 shows the *baseline* as
  Assistant A and the model as B; game 2 shows the model as A and the baseline as B. Keeping the official order
  means a cached or published judgement for game g is the same request as ours, and position bias cancels either way.
- **Verdicts** are parsed strictly: among the ``[[...]]`` tokens in the judge's answer that look like a verdict
  (only the characters ``A B < > =`` and spaces inside), the *last* one is taken (the judge writes its own answer
  first, then its verdict); it must be exactly one of ``A>>B, A>B, A=B, B>A, B>>A`` or the game is invalid (``None``).
  Lookalikes such as ``[[A>>>B]]``, ``[[a>b]]`` or ``[[B<A]]`` are invalid, as is an answer without a label.
  (Official Arena-Hard instead drops a game whose answer holds two *different* labels; ours takes the last one.)
- **Battles**: each valid game is, for the model against the baseline, a win, loss or tie; a strong verdict (``>>``)
  counts 3 battles, a slight one 1, a tie is one battle scored ½ (half a win, half a loss). Invalid games are dropped
  and counted.
- **Bradley–Terry** by weighted logistic regression without intercept, the baseline's strength fixed at 0, solved to
  float64 precision by Newton's method (:func:`fit_bradley_terry`, general: any battles between any players). The
  win rate of model m against the baseline is ``100 * sigmoid(theta_m)`` (Arena-Hard's Elo-scale
  ``1 / (1 + 10 ** ((R_base - R_m) / 400))`` is the same number). With battles only between each model and the
  baseline the log-likelihood separates per model, and setting ``d/dtheta sum w_i (y_i log p + (1-y_i) log(1-p)) = 0``
  gives ``p = sum w_i y_i / sum w_i``: the BT win rate *equals the weighted win share* (strong x3, ties ½). The test
  checks this against an independent scipy fit. When a model wins (or loses) every battle the MLE is at infinity;
  a ridge of 1e-10 keeps it finite, so the win rate is then 100% (0%) up to ~1e-8.
- **Bootstrap**: 100 rounds (seeded) resampling *questions* with replacement, both games of a question together and
  the same resampled questions for every model; the interval is the 2.5% / 97.5% quantile of the bootstrap win rates,
  around the point estimate from all data. (Official v0.1 resamples individual battles; resampling questions
  respects that the two games of a question are not independent.)
- **arena-rank** (SPEC: consider it before a hand-written BT fit): not used. Version 0.1.1 requires ``jax==0.8.1``,
  ``optax`` and pins ``numpy==2.3.3`` (this environment has a newer numpy other code relies on), which is a heavy,
  conflicting dependency for a convex fit of a few parameters that numpy solves exactly in a dozen lines.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
DEFAULT_BASELINE = "gpt-4-0314"
DEFAULT_TEMPLATE = "arena_hard"
USER_SPLIT = "=== USER MESSAGE ==="
TEMPLATE_FIELDS = ("question", "answer_a", "answer_b")
STRONG_WEIGHT = 3
BOOTSTRAP_ROUNDS = 100

OFFICIAL_SOURCE = (
    "the official files come from the arena-hard-auto repository (github.com/lmarena/arena-hard-auto, formerly "
    "lm-sys/arena-hard-auto) or the Hugging Face dataset lmarena-ai/arena-hard-auto-v0.1: "
    "data/arena-hard-v0.1/question.jsonl (500 questions) and data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl "
    "(the baseline's answers); download them elsewhere and copy them here, this code never downloads"
)

# A [[...]] token that looks like a verdict: only A/B (any case), <, >, = and spaces inside.
_VERDICT_TOKEN = re.compile(r"\[\[([ABab<>= ]{1,20})\]\]")


# ---------------------------------------------------------------------------------------------------------------
# Verdicts and battles
# ---------------------------------------------------------------------------------------------------------------


def parse_verdict(text: str | None) -> str | None:
    """The verdict label of a judge's answer (one of :data:`LABELS`), or ``None`` when invalid (see module doc)."""
    if not isinstance(text, str):
        return None
    tokens = _VERDICT_TOKEN.findall(text)
    if not tokens:
        return None
    last = tokens[-1]
    return last if last in LABELS else None


def game_outcome(verdict: str | None, game: int) -> tuple[str, int] | None:
    """A game's verdict seen from the model: ``("win"|"loss"|"tie", weight)``, ``None`` when invalid.

    Game 1 shows the baseline as A and the model as B; game 2 the model as A and the baseline as B."""
    if game not in (1, 2):
        raise ValueError(f"game must be 1 or 2, got {game!r}")
    if verdict is None:
        return None
    if verdict not in LABELS:
        raise ValueError(f"verdict must be one of {LABELS} or None, got {verdict!r}")
    if verdict == "A=B":
        return "tie", 1
    weight = STRONG_WEIGHT if ">>" in verdict else 1
    a_wins = verdict.startswith("A")
    model_is_a = game == 2
    return ("win" if a_wins == model_is_a else "loss"), weight


def _score_of(result: str) -> float:
    return {"win": 1.0, "tie": 0.5, "loss": 0.0}[result]


# ---------------------------------------------------------------------------------------------------------------
# Bradley–Terry
# ---------------------------------------------------------------------------------------------------------------


def fit_bradley_terry(
    battles: Sequence[tuple[str, str, float, float]],
    *,
    anchor: str,
    ridge: float = 1e-10,
    max_iter: int = 200,
    tol: float = 1e-12,
) -> dict[str, float]:
    """Bradley–Terry strengths by weighted logistic regression (no intercept), ``anchor`` fixed at 0.

    ``battles``: ``(player_a, player_b, score_a, weight)`` with ``score_a`` in [0, 1] (1 a win of a, ½ a tie) and
    ``weight`` > 0; ``P(a beats b) = sigmoid(theta_a - theta_b)``. Maximises
    ``sum w (s log p + (1 - s) log(1 - p)) - ridge/2 |theta|^2`` by Newton's method with step halving (float64).
    Returns ``{player: theta}`` in natural-log units, the anchor included."""
    players = sorted({p for a, b, _, _ in battles for p in (a, b)} | {anchor})
    free = [p for p in players if p != anchor]
    index = {p: i for i, p in enumerate(free)}
    if not battles or not free:
        return {p: 0.0 for p in players}
    n = len(battles)
    X = np.zeros((n, len(free)))
    s = np.empty(n)
    w = np.empty(n)
    for i, (a, b, score, weight) in enumerate(battles):
        if not 0.0 <= score <= 1.0 or weight <= 0:
            raise ValueError(f"battle {i}: score must be in [0, 1] and weight > 0, got {score!r}, {weight!r}")
        if a == b:
            raise ValueError(f"battle {i}: a player cannot battle itself ({a!r})")
        if a in index:
            X[i, index[a]] += 1.0
        if b in index:
            X[i, index[b]] -= 1.0
        s[i], w[i] = score, weight

    def objective(theta):
        z = X @ theta
        # log sigmoid(z) = -logaddexp(0, -z); log(1 - sigmoid(z)) = -logaddexp(0, z)
        ll = -(w * (s * np.logaddexp(0.0, -z) + (1.0 - s) * np.logaddexp(0.0, z))).sum()
        return ll - 0.5 * ridge * theta @ theta

    theta = np.zeros(len(free))
    value = objective(theta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(X @ theta)))
        grad = X.T @ (w * (s - p)) - ridge * theta
        hess = (X * (w * p * (1.0 - p))[:, None]).T @ X + ridge * np.eye(len(free))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:
            candidate = theta + t * step
            new_value = objective(candidate)
            if new_value >= value - 1e-15 * abs(value) or t < 1e-8:
                break
            t *= 0.5
        theta, value = candidate, new_value
        if np.max(np.abs(t * step)) < tol:
            break
    out = {p: float(theta[index[p]]) for p in free}
    out[anchor] = 0.0
    return out


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def judgement_battles(judgements: Iterable[Mapping[str, Any]], baseline: str) -> list[tuple[str, str, float, float]]:
    """The battles (model, baseline, score of the model, weight) of the valid judgements."""
    battles = []
    for j in judgements:
        result = game_outcome(j["verdict"], int(j["game"]))
        if result is not None:
            battles.append((j["model"], baseline, _score_of(result[0]), float(result[1])))
    return battles


def bt_win_rates(judgements: Sequence[Mapping[str, Any]], baseline: str = DEFAULT_BASELINE) -> dict[str, float]:
    """Win rate (%) of every model against the baseline from the Bradley–Terry fit over these judgements."""
    models = sorted({j["model"] for j in judgements})
    theta = fit_bradley_terry(judgement_battles(judgements, baseline), anchor=baseline)
    return {m: 100.0 * _sigmoid(theta.get(m, 0.0) - theta[baseline]) if m in theta else float("nan") for m in models}


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


def score_judgements(
    judgements: Sequence[Mapping[str, Any]],
    *,
    baseline: str = DEFAULT_BASELINE,
    bootstrap: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict:
    """Arena-Hard scores from judgement records ``{question_id, model, game (1|2), verdict (label or None)}``.

    Returns ``{"baseline", "bootstrap", "seed", "models": {model: {...}}}`` where each model has ``win_rate`` (% vs
    the baseline, BT fit on all data), ``ci`` ([lo, hi], 2.5/97.5% quantiles over ``bootstrap`` question
    resamples), ``ci_minus``/``ci_plus`` (distances from the point estimate), ``win_share`` (% weighted share,
    equal to ``win_rate`` in this model-vs-baseline setting), ``counts`` (per label and ``invalid``), ``games``,
    ``valid_games``, ``invalid``, ``questions``, ``battles`` (weighted: strong verdicts count 3)."""
    if not judgements:
        raise ValueError("no judgements to score")
    for j in judgements:
        missing = {"question_id", "model", "game", "verdict"} - set(j)
        if missing:
            raise ValueError(f"judgement record lacks {sorted(missing)}: {dict(j)!r}")
        if j["model"] == baseline:
            raise ValueError(f"model name {baseline!r} is the baseline's")
    models = sorted({j["model"] for j in judgements})
    by_question: dict[Any, list[Mapping[str, Any]]] = {}
    for j in judgements:
        by_question.setdefault(j["question_id"], []).append(j)
    qids = sorted(by_question, key=str)

    point = bt_win_rates(judgements, baseline)
    rng = np.random.default_rng(seed)
    samples = {m: [] for m in models}
    for _ in range(bootstrap):
        pick = rng.integers(0, len(qids), size=len(qids))
        sample = [j for k in pick for j in by_question[qids[k]]]
        rates = bt_win_rates(sample, baseline)
        for m in models:
            if m in rates and not math.isnan(rates[m]):
                samples[m].append(rates[m])

    out_models = {}
    for m in models:
        mine = [j for j in judgements if j["model"] == m]
        counts = {label: sum(j["verdict"] == label for j in mine) for label in LABELS}
        counts["invalid"] = sum(j["verdict"] is None for j in mine)
        battles = judgement_battles(mine, baseline)
        total = sum(b[3] for b in battles)
        share = 100.0 * sum(b[2] * b[3] for b in battles) / total if total else float("nan")
        boot = np.array(samples[m], dtype=float)
        lo, hi = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))) if len(boot) else (math.nan,) * 2
        out_models[m] = {
            "win_rate": point[m],
            "ci": [lo, hi],
            "ci_minus": point[m] - lo,
            "ci_plus": hi - point[m],
            "win_share": share,
            "counts": counts,
            "games": len(mine),
            "valid_games": len(mine) - counts["invalid"],
            "invalid": counts["invalid"],
            "questions": len({j["question_id"] for j in mine}),
            "battles": total,
        }
    return {"baseline": baseline, "bootstrap": bootstrap, "seed": seed, "models": out_models}


# ---------------------------------------------------------------------------------------------------------------
# Files (Arena-Hard's JSONL formats, local only)
# ---------------------------------------------------------------------------------------------------------------


def _read_jsonl(path: str | os.PathLike, what: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Arena-Hard {what} file at {path}; expected a local JSONL file. {OFFICIAL_SOURCE}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from None
    return rows


def load_questions(path: str | os.PathLike) -> list[dict]:
    """Arena-Hard questions ``{question_id, category, cluster, turns: [{content}]}`` from a local JSONL file, in file
    order, each with an added ``question`` (the first turn's text: v0.1 questions are single-turn)."""
    rows = _read_jsonl(path, "question (question.jsonl)")
    out, seen = [], set()
    for i, row in enumerate(rows):
        try:
            qid, content = row["question_id"], row["turns"][0]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{path}: row {i} is not an Arena-Hard question (question_id, turns[0].content)") from None
        if qid in seen:
            raise ValueError(f"{path}: duplicate question_id {qid!r}")
        seen.add(qid)
        out.append({**row, "question": content})
    return out


def load_answers(path: str | os.PathLike) -> dict[str, str]:
    """``{question_id: answer text}`` from an Arena-Hard answer JSONL file (``{question_id, answer_id, model_id,
    choices: [{index, turns: [{content, token_len}]}]}``; the first choice's first turn)."""
    rows = _read_jsonl(path, "model answer (model_answer/<model>.jsonl, e.g. gpt-4-0314.jsonl)")
    out = {}
    for i, row in enumerate(rows):
        try:
            out[row["question_id"]] = row["choices"][0]["turns"][0]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{path}: row {i} is not an Arena-Hard answer (question_id, choices[0].turns[0].content)"
                             ) from None
    return out


def write_answers(path: str | os.PathLike, model_id: str, answers: Mapping[str, str],
                  token_lens: Mapping[str, int] | None = None) -> Path:
    """Write ``{question_id: text}`` as an Arena-Hard answer JSONL file (answer_id = ``{model_id}-{question_id}``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for qid, text in answers.items():
            turn = {"content": text, "token_len": int((token_lens or {}).get(qid, len(text.split())))}
            row = {"question_id": qid, "answer_id": f"{model_id}-{qid}", "model_id": model_id,
                   "choices": [{"index": 0, "turns": [turn]}]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _question_text(q: Mapping[str, Any]) -> str:
    if "question" in q:
        return q["question"]
    return q["turns"][0]["content"]


def _check_answers(questions, model_answers, baseline_answers) -> None:
    qids = [q["question_id"] for q in questions]
    missing = [q for q in qids if q not in baseline_answers]
    if missing:
        raise KeyError(f"baseline answers lack {len(missing)} questions, e.g. {missing[:3]}")
    for model, answers in model_answers.items():
        missing = [q for q in qids if q not in answers]
        if missing:
            raise KeyError(f"model {model!r} has no answer for {len(missing)} questions, e.g. {missing[:3]}")


# ---------------------------------------------------------------------------------------------------------------
# The LLM judge
# ---------------------------------------------------------------------------------------------------------------


def load_template(name_or_path: str | os.PathLike = DEFAULT_TEMPLATE):
    """The Arena-Hard judge template as a :class:`prefopt.judges.JudgeTemplate` (same file format and sha256 over the
    whole file, so editing it invalidates the cache), with Arena-Hard's fields {question}, {answer_a}, {answer_b}."""
    from prefopt.judges import JudgeTemplate

    return JudgeTemplate.load(name_or_path, fields=TEMPLATE_FIELDS)


def render_messages(template, question: str, answer_a: str, answer_b: str) -> list[dict]:
    """The chat messages for one game: the part of the body above ``=== USER MESSAGE ===`` as the system message
    (when present), the rest as the user message; fields filled in one pass (braces in answers are left alone)."""
    values = {"question": question, "answer_a": answer_a, "answer_b": answer_b}
    filled = re.sub(r"\{(question|answer_a|answer_b)\}", lambda m: values[m.group(1)], template.body)
    parts = re.split(rf"^{re.escape(USER_SPLIT)}[ \t]*$\n?", filled, maxsplit=1, flags=re.MULTILINE)
    if len(parts) == 2:
        return [{"role": "system", "content": parts[0].strip("\n")}, {"role": "user", "content": parts[1].strip("\n")}]
    return [{"role": "user", "content": filled}]


class ArenaJudge(Protocol):
    """What :func:`judge_answers` asks of a judge: its answer for one game, the verdict label in ``[[...]]``.

    Satisfied by :class:`LLMArenaJudge` (paper scale) and the small world's
    :class:`prefopt.smallworld.benchmarks.HiddenRewardArenaJudge`. ``concurrent`` (optional, default False): the
    games may be judged in a thread pool (an LLM endpoint); otherwise they are judged in order, one at a time."""

    name: str

    def judge_game(self, question: str, answer_a: str, answer_b: str) -> Mapping[str, Any]:
        """``{"content": the judge's answer text, "cached": whether it came from a cache}``."""


class LLMArenaJudge:
    """Arena-Hard's LLM judge: the template's messages (:func:`render_messages`) sent through a
    :class:`prefopt.judges.JudgeClient` (``complete`` at temperature 0, the template's (name, sha256) in the cache key,
    so a rerun costs no calls), or through any callable ``messages -> answer text``."""

    def __init__(self, client: Any, template: Any = DEFAULT_TEMPLATE, *, max_tokens: int = 4096):
        if not (hasattr(client, "complete") or callable(client)):
            raise TypeError("judge must be a JudgeClient (with .complete) or a callable messages -> text")
        self.client, self.max_tokens = client, max_tokens
        self.template = template if hasattr(template, "body") else load_template(template)
        self.concurrent = hasattr(client, "complete")
        self.name = str(getattr(client, "model", None) or getattr(client, "__name__", "judge"))

    def judge_game(self, question: str, answer_a: str, answer_b: str) -> Mapping[str, Any]:
        messages = render_messages(self.template, question, answer_a, answer_b)
        if self.concurrent:
            return self.client.complete(messages, temperature=0.0, max_tokens=self.max_tokens,
                                        template_id=(self.template.name, self.template.sha256))
        return {"content": self.client(messages), "cached": False}


def judge_answers(
    judge: Any,
    questions: Sequence[Mapping[str, Any]],
    model_answers: Mapping[str, Mapping[str, str]],
    baseline_answers: Mapping[str, str],
    *,
    template: Any = DEFAULT_TEMPLATE,
    max_tokens: int = 4096,
    workers: int = 8,
    progress: bool = False,
) -> list[dict]:
    """Judge every model's answer against the baseline's, two games per question (game 1: baseline = A).

    ``judge``: an :class:`ArenaJudge`, or a :class:`prefopt.judges.JudgeClient` / callable ``messages -> answer
    text``, wrapped in :class:`LLMArenaJudge` with ``template`` and ``max_tokens``. ``model_answers``: ``{model:
    {question_id: text}}``; ``baseline_answers``: ``{question_id: text}``. Returns one record per game, in (model,
    question, game) order: ``{question_id, model, game, verdict (label or None), judgement (the raw answer),
    cached}``."""
    from prefopt.judges import _run_pool

    if not hasattr(judge, "judge_game"):
        judge = LLMArenaJudge(judge, template, max_tokens=max_tokens)
    _check_answers(questions, model_answers, baseline_answers)
    games = []
    for model in model_answers:
        for q in questions:
            qid, text = q["question_id"], _question_text(q)
            mine, base = model_answers[model][qid], baseline_answers[qid]
            games += [(model, qid, 1, (text, base, mine)), (model, qid, 2, (text, mine, base))]
    calls = [lambda shown=shown: judge.judge_game(*shown) for *_, shown in games]
    results = _run_pool(calls, workers=workers if getattr(judge, "concurrent", False) else 1, progress=progress,
                        desc="arena-hard")
    return [
        {"question_id": qid, "model": model, "game": game, "verdict": parse_verdict(r["content"]),
         "judgement": r["content"], "cached": bool(r.get("cached"))}
        for (model, qid, game, _), r in zip(games, results)
    ]
