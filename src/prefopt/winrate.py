"""Pairwise win rates from judge verdicts, each pair judged in both orders (SPEC §6.1 step 6, §7, §8).

A judge answers ``"A"``, ``"B"``, ``"tie"`` or ``"invalid"`` (unparseable) for (prompt, response A, response B).
Every pair (policy response, baseline response) is judged twice, once with the policy shown first and once second,
so a judge's position bias cancels. Each of the two judgements counts on its own:

- ``win_rate``: wins count 1, ties ½, losses and invalid verdicts 0, averaged over all judgements;
- ``official_win_rate``: the official EXO/f-PO script's number, where ties and unparseable verdicts count as losses;
- a 95% interval from a bootstrap over prompts (both judgements of a pair move together), fixed seed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

VERDICTS = ("A", "B", "tie", "invalid")


class PairwiseJudge(Protocol):
    name: str

    def compare(self, prompt, response_a: str, response_b: str) -> str:
        """One of ``"A"``, ``"B"``, ``"tie"``, ``"invalid"``."""


def outcome(verdict: str, policy_position: str) -> str:
    """A verdict seen from the policy's side: ``win``, ``loss``, ``tie`` or ``invalid``."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    if verdict in ("tie", "invalid"):
        return verdict
    return "win" if verdict == policy_position else "loss"


@dataclass
class WinRate:
    win_rate: float
    ci: tuple[float, float]
    official_win_rate: float
    wins: int
    ties: int
    losses: int
    invalid: int
    n: int  # judgements (2 per pair)
    pairs: int

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ci"] = list(self.ci)
        return out


#: Points of one judgement for the policy: what every win rate here averages.
OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0, "invalid": 0.0}


def win_rate(pair_outcomes: Sequence[Sequence[str]], *, bootstrap: int = 1000, seed: int = 0) -> WinRate:
    """Aggregate per-pair outcomes (each a sequence of the judgements of one pair, e.g. both orders)."""
    if not pair_outcomes:
        raise ValueError("no judged pairs")
    flat = [o for pair in pair_outcomes for o in pair]
    unknown = set(flat) - set(OUTCOME_SCORE)
    if unknown:
        raise ValueError(f"unknown outcomes {sorted(unknown)}; expected win, tie, loss or invalid")
    pair_scores = [(sum(OUTCOME_SCORE[o] for o in pair), len(pair)) for pair in pair_outcomes]

    def rate(sample):
        return sum(s for s, _ in sample) / sum(n for _, n in sample)

    rng = random.Random(seed)
    rates = sorted(rate([rng.choice(pair_scores) for _ in pair_scores]) for _ in range(bootstrap))
    lo, hi = rates[int(0.025 * (bootstrap - 1))], rates[int(round(0.975 * (bootstrap - 1)))]
    return WinRate(
        win_rate=rate(pair_scores),
        ci=(lo, hi),
        official_win_rate=flat.count("win") / len(flat),
        wins=flat.count("win"),
        ties=flat.count("tie"),
        losses=flat.count("loss"),
        invalid=flat.count("invalid"),
        n=len(flat),
        pairs=len(pair_outcomes),
    )


def judge_pairs_both_orders(
    judge: PairwiseJudge,
    pairs: Sequence[tuple[Any, str, str]],
    *,
    compare_many: Optional[Callable[[list[tuple[Any, str, str]]], Sequence[str]]] = None,
) -> list[list[str]]:
    """Every (prompt, policy response, baseline response) pair judged in both orders: per pair, the policy's
    outcomes with the policy shown first, then second (SPEC §6.1 step 6). Feed the result to :func:`win_rate`.

    ``compare_many`` (comparisons -> verdicts, in order) runs the ``2 × len(pairs)`` comparisons, e.g. concurrently
    (:func:`prefopt.judges.judge_both_orders_many`); by default ``judge.compare`` is called on each in turn."""
    comparisons = []
    for prompt, policy, baseline in pairs:
        comparisons += [(prompt, policy, baseline), (prompt, baseline, policy)]
    if compare_many is None:
        verdicts = [judge.compare(*c) for c in comparisons]
    else:
        verdicts = list(compare_many(comparisons))
    return [[outcome(verdicts[2 * i], "A"), outcome(verdicts[2 * i + 1], "B")] for i in range(len(pairs))]


def judge_both_orders(judge: PairwiseJudge, prompt, policy_response: str, baseline_response: str) -> list[str]:
    """The two judgements of one pair, as outcomes for the policy: policy shown first, then second."""
    return judge_pairs_both_orders(judge, [(prompt, policy_response, baseline_response)])[0]


def mean_and_ci(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Mean with a normal-approximation 95% interval (values are i.i.d. samples: one per generated response)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, (mean, mean)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = 1.96 * (variance / n) ** 0.5
    return mean, (mean - half, mean + half)
