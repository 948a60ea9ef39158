"""Arena-Hard v0.1: pairwise judging against a baseline and the Bradley–Terry win rate (SPEC §7 "Arena-Hard v0.1").

Pipeline: :func:`load_checkout` (the user's own checkout of arena-hard-auto at its last v0.1 layout: the judge
configuration ``config/judge_config.yaml``, the questions and the baseline's answers, all read at run time; no
prompt text of the official repository is copied here) -> ``judge_answers`` (any :class:`ArenaJudge`: an
OpenAI-compatible judge through :class:`prefopt.judges.JudgeClient`, cached, or the small world's hidden-reward
judge on a CPU) -> ``score_judgements`` (win rate in % with a bootstrap 95% interval and verdict counts).

The defaults reproduce arena-hard-auto v0.1 (its last v0.1 commit, 3071ef95d913bb5cd632641db336a3b6c7fe4bdd:
``gen_judgment.py`` and ``show_result.py`` / ``utils_math.py``); our own choices stay available as named options and
every result says which rule produced it:

- **Judge messages** (arena-hard-auto v0.1 gen_judgment.py): the config's ``system_prompt`` as the system message,
  then one user message per entry of ``prompt_template`` filled with ``str.format(question_1=..., answer_1=A,
  answer_2=B)``; the config's ``temperature`` and ``max_tokens``.
- **Two games per question, positions swapped**: game 1 shows the *baseline* as Assistant A and the model as B; game
  2 the model as A and the baseline as B.
- **Retry** (arena-hard-auto v0.1 gen_judgment.py): up to ``number_of_judgment_attempts`` calls per game. When the
  judgement so far holds no label, the judge's answer and a request to finish with a verdict label are appended to
  the conversation and it is asked again; the judgement is the answers joined, each after a newline, and the label is
  read from all of it. The request's wording is read from the checkout's ``gen_judgment.py`` (:func:`retry_request`).
  ``judge_attempts=1`` (``--judge-attempts 1``) never re-asks.
- **Verdict rule** ``"official"`` (default; arena-hard-auto v0.1 gen_judgment.py ``get_score``): every match of the
  config's ``regex_pattern`` (v0.1: two brackets around one or more of ``A B < > =``, upper case, no spaces); no match:
  no label (asked again while attempts remain); one distinct label: that label; two or more *different* labels: the
  game is dropped. A lone label outside the five (``[[A>>>B]]``) is dropped too, as show_result.py gives it weight 0.
  So ``[[a>b]]`` and ``[[ A>B ]]`` are no label. ``"last"`` (ours, ``--verdict-rule last``): among the ``[[...]]``
  tokens made only of ``A B a b < > =`` and spaces the *last* one counts and must be exactly one of the five.
- **Battles** (show_result.py): a valid game is, for the model against the baseline, a win, loss or tie; a strong
  verdict (``>>``) counts 3 battle rows, a slight one 1, a tie is one row scored ½. Dropped games are counted.
- **Bradley–Terry** by weighted logistic regression without intercept, the baseline's strength fixed at 0, solved to
  float64 precision by Newton's method (:func:`fit_bradley_terry`, general: any battles between any players). The
  win rate of model m is ``100 * sigmoid(theta_m)``, the same number as Arena-Hard's Elo-scale
  ``1 / (1 + 10 ** ((R_base - R_m) / 400))``. With battles only against the baseline it equals the weighted win
  share (strong x3, ties ½). show_result.py rounds the win rate to 2 decimals; we keep full precision.
- **Bootstrap** ``"battles"`` (default; utils_math.py ``get_bootstrap_result``): 100 rounds, each resampling the
  battle rows of all models together with replacement, drawn as ``numpy.random.RandomState(seed).choice(n, n)``
  (what ``DataFrame.sample(frac=1, replace=True)`` does under utils_math.py's ``np.random.seed(42)``; seed 42 by
  default), the interval the 2.5 / 97.5 percentiles of the bootstrap *strengths*, turned into win rates.
  ``"questions"`` (ours, ``--bootstrap questions``): resample questions, both games of a question together; it
  respects that the two games of a question are not independent and is 1.2-2x wider, so it cannot be set beside
  published Arena-Hard intervals.
- **arena-rank** (SPEC: consider it before a hand-written BT fit): not used. Version 0.1.1 requires ``jax==0.8.1``,
  ``optax`` and pins ``numpy==2.3.3``, a heavy, conflicting dependency for a convex fit of a few parameters.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

from prefopt.errors import ConfigError

LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
DEFAULT_BASELINE = "gpt-4-0314"
STRONG_WEIGHT = 3
BOOTSTRAP_ROUNDS = 100
BOOTSTRAP_SEED = 42  # arena-hard-auto v0.1 utils_math.py: np.random.seed(42)
VERDICT_RULES = ("official", "last")
BOOTSTRAP_RULES = ("battles", "questions")
V01_COMMIT = "3071ef95d913bb5cd632641db336a3b6c7fe4bdd"  # the last arena-hard-auto commit with the v0.1 layout
JUDGE_CONFIG = "config/judge_config.yaml"
# The v0.1 config's regex_pattern, used when a config has none (arena-hard-auto v0.1 config/judge_config.yaml).
OFFICIAL_PATTERN = r"\[\[([AB<>=]+)\]\]"

OFFICIAL_SOURCE = (
    "check out arena-hard-auto (github.com/lmarena/arena-hard-auto) at its last v0.1 commit "
    f"{V01_COMMIT[:12]} and pass its folder as --arena-hard-dir; it holds config/judge_config.yaml, "
    "data/arena-hard-v0.1/question.jsonl (500 questions) and data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl; "
    "this code never downloads"
)

# Our "last" rule: a [[...]] token that looks like a verdict: only A/B (any case), <, >, = and spaces inside.
_VERDICT_TOKEN = re.compile(r"\[\[([ABab<>= ]{1,20})\]\]")


# ---------------------------------------------------------------------------------------------------------------
# Verdicts and battles
# ---------------------------------------------------------------------------------------------------------------


def _check_rule(rule: str) -> None:
    if rule not in VERDICT_RULES:
        raise ConfigError(f"verdict rule must be one of {', '.join(VERDICT_RULES)}, got {rule!r}")


def verdict_status(text: str | None, rule: str = "official", pattern: str | re.Pattern | None = None
                   ) -> tuple[str | None, bool]:
    """``(verdict or None, no label found)`` of a judgement under ``rule`` (see the module doc).

    The second value says whether the judge may be asked again: under ``"official"`` only when the pattern matched
    nothing (two different labels are final: arena-hard-auto v0.1 gen_judgment.py ``get_score``); under ``"last"``
    when no verdict-like token is present."""
    _check_rule(rule)
    if not isinstance(text, str):
        return None, True
    if rule == "last":
        tokens = _VERDICT_TOKEN.findall(text)
        if not tokens:
            return None, True
        return (tokens[-1] if tokens[-1] in LABELS else None), False
    regex = re.compile(pattern or OFFICIAL_PATTERN) if not isinstance(pattern, re.Pattern) else pattern
    found = {m for m in regex.findall(text) if m != ""}
    if not found:
        return None, True
    if len(found) > 1:
        return None, False
    label = found.pop()
    return (label if label in LABELS else None), False


def parse_verdict(text: str | None, rule: str = "official", pattern: str | re.Pattern | None = None) -> str | None:
    """The verdict label of a judge's answer (one of :data:`LABELS`), or ``None`` when the game is dropped."""
    return verdict_status(text, rule, pattern)[0]


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


def battle_rows(judgements: Iterable[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """The battle rows of show_result.py (arena-hard-auto v0.1): ``(model, score of the model)`` per valid game, in
    record order, a strong verdict repeated 3 times; the rows the ``"battles"`` bootstrap resamples."""
    rows = []
    for j in judgements:
        result = game_outcome(j["verdict"], int(j["game"]))
        if result is not None:
            rows += [(j["model"], _score_of(result[0]))] * result[1]
    return rows


def _rows_win_rates(rows: Sequence[tuple[str, float]], baseline: str) -> dict[str, float]:
    """Bradley–Terry strengths (natural log) of the models in these battle rows, aggregated to weighted battles."""
    weights: dict[tuple[str, float], float] = {}
    for model, score in rows:
        weights[(model, score)] = weights.get((model, score), 0.0) + 1.0
    theta = fit_bradley_terry([(m, baseline, sc, w) for (m, sc), w in weights.items()], anchor=baseline)
    return {m: t - theta[baseline] for m, t in theta.items() if m != baseline}


def _bootstrap_strengths(judgements, models, baseline, rounds, seed, rule) -> dict[str, np.ndarray]:
    samples = {m: [] for m in models}
    if rule == "battles":
        # arena-hard-auto v0.1 utils_math.py get_bootstrap_result: battles.sample(frac=1.0, replace=True), 100 times,
        # from the global RandomState seeded 42; DataFrame.sample draws RandomState.choice(n, size=n, replace=True).
        rows = battle_rows(judgements)
        rs = np.random.RandomState(seed)
        for _ in range(rounds):
            pick = rs.choice(len(rows), size=len(rows), replace=True) if rows else []
            theta = _rows_win_rates([rows[k] for k in pick], baseline)
            for m in models:
                samples[m].append(theta.get(m, math.nan))
    else:
        by_question: dict[Any, list[Mapping[str, Any]]] = {}
        for j in judgements:
            by_question.setdefault(j["question_id"], []).append(j)
        qids = sorted(by_question, key=str)
        rng = np.random.default_rng(seed)
        for _ in range(rounds):
            pick = rng.integers(0, len(qids), size=len(qids))
            theta = fit_bradley_terry(judgement_battles([j for k in pick for j in by_question[qids[k]]], baseline),
                                      anchor=baseline)
            for m in models:
                samples[m].append(theta[m] - theta[baseline] if m in theta else math.nan)
    return {m: np.array(v, dtype=float) for m, v in samples.items()}


def _recorded_rule(judgements: Sequence[Mapping[str, Any]]) -> str | None:
    rules = {j.get("verdict_rule") for j in judgements}
    if len(rules) > 1:
        raise ConfigError(f"the judgements mix verdict rules {sorted(map(str, rules))}; score each rule apart")
    return rules.pop()


def score_judgements(
    judgements: Sequence[Mapping[str, Any]],
    *,
    baseline: str = DEFAULT_BASELINE,
    bootstrap: int = BOOTSTRAP_ROUNDS,
    seed: int = BOOTSTRAP_SEED,
    bootstrap_rule: str = "battles",
) -> dict:
    """Arena-Hard scores from judgement records ``{question_id, model, game (1|2), verdict (label or None)}``.

    Returns ``{"baseline", "bootstrap", "seed", "bootstrap_rule", "verdict_rule", "models": {model: {...}}}`` where
    each model has ``win_rate`` (% vs the baseline, BT fit on all data), ``ci`` ([lo, hi]: the 2.5 / 97.5
    percentiles of the bootstrap strengths as win rates), ``ci_minus``/``ci_plus`` (distances from the point
    estimate), ``win_share`` (% weighted share, equal to ``win_rate`` here), ``counts`` (per label and ``invalid``),
    ``games``, ``valid_games``, ``invalid``, ``questions``, ``battles`` (weighted: strong verdicts count 3),
    ``bootstrap_rule`` and ``verdict_rule`` (the records' ``verdict_rule``, None when they do not say).
    ``bootstrap_rule``: ``"battles"`` (official) or ``"questions"`` (ours); see the module doc."""
    if bootstrap_rule not in BOOTSTRAP_RULES:
        raise ConfigError(f"bootstrap rule must be one of {', '.join(BOOTSTRAP_RULES)}, got {bootstrap_rule!r}")
    if not judgements:
        raise ValueError("no judgements to score")
    for j in judgements:
        missing = {"question_id", "model", "game", "verdict"} - set(j)
        if missing:
            raise ValueError(f"judgement record lacks {sorted(missing)}: {dict(j)!r}")
        if j["model"] == baseline:
            raise ValueError(f"model name {baseline!r} is the baseline's")
    verdict_rule = _recorded_rule(judgements)
    models = sorted({j["model"] for j in judgements})
    point = bt_win_rates(judgements, baseline)
    boot = _bootstrap_strengths(judgements, models, baseline, bootstrap, seed, bootstrap_rule)

    out_models = {}
    for m in models:
        mine = [j for j in judgements if j["model"] == m]
        counts = {label: sum(j["verdict"] == label for j in mine) for label in LABELS}
        counts["invalid"] = sum(j["verdict"] is None for j in mine)
        battles = judgement_battles(mine, baseline)
        total = sum(b[3] for b in battles)
        share = 100.0 * sum(b[2] * b[3] for b in battles) / total if total else float("nan")
        strengths = boot[m]
        if len(strengths) and np.isfinite(strengths).all():
            # show_result.py: np.percentile of the bootstrap ratings, then the ratings' win rates
            lo, hi = (100.0 * _sigmoid(float(np.percentile(strengths, q))) for q in (2.5, 97.5))
        else:
            lo, hi = math.nan, math.nan
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
            "bootstrap_rule": bootstrap_rule,
            "verdict_rule": verdict_rule,
        }
    return {"baseline": baseline, "bootstrap": bootstrap, "seed": seed, "bootstrap_rule": bootstrap_rule,
            "verdict_rule": verdict_rule, "models": out_models}


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
# The user's arena-hard-auto checkout (v0.1 layout)
# ---------------------------------------------------------------------------------------------------------------

# Our wording, used only when a checkout's gen_judgment.py holds no retry request (recorded in the result).
FALLBACK_RETRY_REQUEST = "Please finish your judgement now and end it with one verdict label in double brackets."


def retry_request(gen_judgment: str | os.PathLike) -> str | None:
    """The user message arena-hard-auto v0.1's ``gen_judgment.py`` appends before asking again, read from the file
    (its only ``.append({"role": "user", "content": <string literal>})``), or None when there is none."""
    import ast

    try:
        tree = ast.parse(Path(gen_judgment).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"
                and len(node.args) == 1 and isinstance(node.args[0], ast.Dict)):
            continue
        fields = {k.value: v for k, v in zip(node.args[0].keys, node.args[0].values)
                  if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        role, content = fields.get("role"), fields.get("content")
        if (isinstance(role, ast.Constant) and role.value == "user" and isinstance(content, ast.Constant)
                and isinstance(content.value, str)):
            return content.value
    return None


@dataclass(frozen=True)
class JudgeConfig:
    """The judge configuration of an arena-hard-auto v0.1 checkout (``config/judge_config.yaml``), read at run time.

    ``prompt_templates``: the config's ``prompt_template`` list (one user message each); ``attempts``: its
    ``number_of_judgment_attempts``; ``retry_request``: the request gen_judgment.py appends before asking again
    (``retry_request_source`` says where it came from); ``sha256``: over the config file and the retry request, so
    an edited config is a new cache key."""

    system_prompt: str
    prompt_templates: tuple[str, ...]
    attempts: int
    temperature: float
    max_tokens: int
    regex_pattern: str
    bench_name: str
    baseline_model: str
    judge_model: str | None
    retry_request: str
    retry_request_source: str
    source: str
    sha256: str

    def messages(self, question: str, answer_a: str, answer_b: str) -> list[dict]:
        """The conversation of one game (arena-hard-auto v0.1 gen_judgment.py): system prompt, then each template
        filled with ``str.format(question_1=, answer_1=, answer_2=)``."""
        conv = [{"role": "system", "content": self.system_prompt}]
        for template in self.prompt_templates:
            try:
                user = template.format(question_1=question, answer_1=answer_a, answer_2=answer_b)
            except (KeyError, IndexError, ValueError) as error:
                raise ConfigError(f"{self.source}: prompt_template cannot be filled with question_1, answer_1, "
                                  f"answer_2 ({type(error).__name__}: {error})") from None
            conv.append({"role": "user", "content": user})
        return conv

    def record(self) -> dict:
        """What a result JSON records of the judge configuration (no prompt text)."""
        return {"source": self.source, "sha256": self.sha256, "bench_name": self.bench_name,
                "baseline_model": self.baseline_model, "judge_model_official": self.judge_model,
                "attempts": self.attempts, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "regex_pattern": self.regex_pattern, "retry_request_source": self.retry_request_source}


def load_judge_config(arena_hard_dir: str | os.PathLike) -> JudgeConfig:
    """The :class:`JudgeConfig` of an arena-hard-auto checkout at the v0.1 layout; a one-line
    :class:`~prefopt.errors.ConfigError` when the folder, the file or a field is missing or malformed."""
    import hashlib

    import yaml

    root = Path(arena_hard_dir)
    path = root / JUDGE_CONFIG
    if not root.is_dir():
        raise ConfigError(f"no arena-hard-auto checkout at {root}: {OFFICIAL_SOURCE}")
    if not path.is_file():
        newer = " (this looks like the newer v2 layout)" if (root / "config" / "arena-hard-v0.1.yaml").is_file() else ""
        raise ConfigError(f"{path} not found{newer}: {OFFICIAL_SOURCE}")
    raw = path.read_bytes()
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    missing = [k for k in ("system_prompt", "prompt_template", "number_of_judgment_attempts", "temperature",
                           "max_tokens", "bench_name", "baseline_model") if doc.get(k) is None]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)} (arena-hard-auto v0.1 judge_config.yaml fields)")
    templates = doc["prompt_template"]
    templates = [templates] if isinstance(templates, str) else templates
    if not (isinstance(doc["system_prompt"], str) and isinstance(templates, list) and templates
            and all(isinstance(t, str) for t in templates)):
        raise ConfigError(f"{path}: system_prompt must be a string and prompt_template a list of strings")
    try:
        attempts, temperature, max_tokens = (int(doc["number_of_judgment_attempts"]), float(doc["temperature"]),
                                             int(doc["max_tokens"]))
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: number_of_judgment_attempts, temperature and max_tokens must be numbers") from None
    if attempts < 1 or max_tokens < 1:
        raise ConfigError(f"{path}: number_of_judgment_attempts and max_tokens must be >= 1")
    pattern = doc.get("regex_pattern") or OFFICIAL_PATTERN
    try:
        re.compile(pattern)
    except re.error as error:
        raise ConfigError(f"{path}: regex_pattern {pattern!r} is not a regular expression ({error})") from None
    found = retry_request(root / "gen_judgment.py")
    retry, retry_source = ((found, str(root / "gen_judgment.py")) if found is not None
                           else (FALLBACK_RETRY_REQUEST, "prefopt (no retry request found in gen_judgment.py)"))
    sha = hashlib.sha256(raw + b"\0" + retry.encode("utf-8")).hexdigest()
    return JudgeConfig(system_prompt=doc["system_prompt"], prompt_templates=tuple(templates), attempts=attempts,
                       temperature=temperature, max_tokens=max_tokens, regex_pattern=str(pattern),
                       bench_name=str(doc["bench_name"]), baseline_model=str(doc["baseline_model"]),
                       judge_model=None if doc.get("judge_model") is None else str(doc["judge_model"]),
                       retry_request=retry, retry_request_source=retry_source, source=str(path), sha256=sha)


def checkout_questions_path(arena_hard_dir: str | os.PathLike, bench_name: str = "arena-hard-v0.1") -> Path:
    """``<checkout>/data/<bench_name>/question.jsonl`` (arena-hard-auto v0.1 gen_judgment.py)."""
    return Path(arena_hard_dir) / "data" / bench_name / "question.jsonl"


def checkout_answers_path(arena_hard_dir: str | os.PathLike, model: str, bench_name: str = "arena-hard-v0.1") -> Path:
    """``<checkout>/data/<bench_name>/model_answer/<model>.jsonl``."""
    return Path(arena_hard_dir) / "data" / bench_name / "model_answer" / f"{model}.jsonl"


# ---------------------------------------------------------------------------------------------------------------
# The LLM judge
# ---------------------------------------------------------------------------------------------------------------


class ArenaJudge(Protocol):
    """What :func:`judge_answers` asks of a judge: its answer for one game, the verdict label in ``[[...]]``.

    Satisfied by :class:`LLMArenaJudge` (paper scale) and the small world's
    :class:`prefopt.smallworld.benchmarks.HiddenRewardArenaJudge`. ``concurrent`` (optional, default False): the
    games may be judged in a thread pool (an LLM endpoint); otherwise they are judged in order, one at a time."""

    name: str

    def judge_game(self, question: str, answer_a: str, answer_b: str) -> Mapping[str, Any]:
        """``{"content": the judge's answer text, "cached": whether it came from a cache}``."""


class LLMArenaJudge:
    """Arena-Hard's LLM judge: :meth:`JudgeConfig.messages` sent through a :class:`prefopt.judges.JudgeClient`
    (``complete`` at the config's temperature and max tokens, the config's sha256 in the cache key, so a rerun costs
    no calls), or through any callable ``messages -> answer text``, with the official retry (module doc).

    ``attempts`` overrides the config's ``number_of_judgment_attempts``; ``verdict_rule`` decides when no label was
    found."""

    def __init__(self, client: Any, config: JudgeConfig, *, verdict_rule: str = "official",
                 attempts: int | None = None):
        if not (hasattr(client, "complete") or callable(client)):
            raise TypeError("judge must be a JudgeClient (with .complete) or a callable messages -> text")
        if not isinstance(config, JudgeConfig):
            raise TypeError("config must be a JudgeConfig (load_judge_config(arena_hard_dir))")
        _check_rule(verdict_rule)
        if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1):
            raise ConfigError(f"judge attempts must be an integer >= 1, got {attempts!r}")
        self.client, self.config, self.verdict_rule = client, config, verdict_rule
        self.attempts = attempts if attempts is not None else config.attempts
        self.concurrent = hasattr(client, "complete")
        self.name = str(getattr(client, "model", None) or getattr(client, "__name__", "judge"))

    def _ask(self, messages: list[dict]) -> dict:
        if self.concurrent:
            return self.client.complete(messages, temperature=self.config.temperature,
                                        max_tokens=self.config.max_tokens,
                                        template_id=(f"arena-hard/{self.config.bench_name}", self.config.sha256))
        return {"content": self.client(messages), "cached": False}

    def judge_game(self, question: str, answer_a: str, answer_b: str) -> Mapping[str, Any]:
        conv = self.config.messages(question, answer_a, answer_b)
        judgement, cached, used = "", True, 0
        # arena-hard-auto v0.1 gen_judgment.py: judgment += "\n" + new_judgment; the label is read from all of it
        for attempt in range(self.attempts):
            res = self._ask(list(conv))
            used += 1
            cached = cached and bool(res.get("cached"))
            content = res["content"] or ""
            judgement += "\n" + content
            _, again = verdict_status(judgement, self.verdict_rule, self.config.regex_pattern)
            if not again or attempt == self.attempts - 1:
                break
            conv += [{"role": "assistant", "content": content}, {"role": "user", "content": self.config.retry_request}]
        return {"content": judgement, "cached": cached, "attempts": used}


def judge_answers(
    judge: Any,
    questions: Sequence[Mapping[str, Any]],
    model_answers: Mapping[str, Mapping[str, str]],
    baseline_answers: Mapping[str, str],
    *,
    config: JudgeConfig | None = None,
    verdict_rule: str = "official",
    attempts: int | None = None,
    workers: int = 8,
    progress: bool = False,
) -> list[dict]:
    """Judge every model's answer against the baseline's, two games per question (game 1: baseline = A).

    ``judge``: an :class:`ArenaJudge`, or a :class:`prefopt.judges.JudgeClient` / callable ``messages -> answer
    text``, wrapped in :class:`LLMArenaJudge` with ``config`` (required then), ``verdict_rule`` and ``attempts``.
    ``model_answers``: ``{model: {question_id: text}}``; ``baseline_answers``: ``{question_id: text}``. Returns one
    record per game, in (model, question, game) order: ``{question_id, model, game, verdict (label or None),
    verdict_rule, judgement (the raw answer), attempts, cached}``."""
    from prefopt.judges import _run_pool

    if not hasattr(judge, "judge_game"):
        if config is None:
            raise ConfigError("judging through a judge client needs the judge config: "
                              "load_judge_config(arena_hard_dir)")
        judge = LLMArenaJudge(judge, config, verdict_rule=verdict_rule, attempts=attempts)
    rule = getattr(judge, "verdict_rule", verdict_rule)
    _check_rule(rule)
    pattern = judge.config.regex_pattern if isinstance(getattr(judge, "config", None), JudgeConfig) else (
        config.regex_pattern if config is not None else None)
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
        {"question_id": qid, "model": model, "game": game, "verdict": parse_verdict(r["content"], rule, pattern),
         "verdict_rule": rule, "judgement": r["content"], "attempts": int(r.get("attempts", 1)),
         "cached": bool(r.get("cached"))}
        for (model, qid, game, _), r in zip(games, results)
    ]
