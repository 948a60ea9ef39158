"""``make claims``: the f-PO and γ-PO papers' claims tested in the small world, with paired seeds and stated power.

Design (paired). For every seed the world, the SFT model, the K sampled candidates, the label draws and the flips are
shared by every method trained on them (:class:`prefopt.smallworld.demo.Pipeline` with one ``shared`` folder per seed
and one ``labelled`` folder per label regime); every method starts from that seed's SFT model, sees the same batches
in the same order and is sampled on the same held-out prompts with the same random stream. A claim is therefore a
per-seed *difference* between methods, computed prompt by prompt:

    score(m, p)  = win points of method m against SFT on held-out prompt p: 100 × the mean over its samples and both
                   presentation orders of 1 (win), ½ (tie), 0 (loss), judged by the hidden reward
    effect       = Σ_c w_c · mean over seeds of mean over prompts of score(c, p)      (a contrast of conditions c)

Every effect is linear in the conditions' scores (a difference, a mean of differences, a least-squares slope, a
difference of differences), so the per-prompt contrast d(p) = Σ_c w_c · score(c, p) carries all of it. Its interval
is a two-level (hierarchical) bootstrap: resample the seeds with replacement, then the prompts within each drawn seed,
and take the mean of the per-seed means; 95% percentile interval. The minimum detectable effect at the seed count used
is MDE = (z₀.₉₇₅ + z₀.₈₀) · SE ≈ 2.80 · SE (two-sided 5% test, 80% power), SE the bootstrap standard
error.

Verdicts come from the intervals, never by hand (:func:`verdict`):

* a claim that A beats B ("greater"): *supported* when the interval lies above 0, *contradicted* when it lies below 0,
  *inconclusive* otherwise (then the MDE says what size of effect this run could have seen);
* a claim that two things agree ("equivalent", claim 1): *supported* when the interval lies inside ±δ
  (:data:`EQUIVALENCE_MARGIN`), *contradicted* when it lies wholly outside it, *inconclusive* otherwise.

The tuned α of claim 2 is chosen leave-one-seed-out: the α used on seed s is the one with the best mean score on the
other seeds, so a seed's own luck never picks its α.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from prefopt.io import read_jsonl, write_json
from prefopt.smallworld.demo import METHODS, DemoSettings, Method, Pipeline
from prefopt.smallworld.world import HiddenRewardJudge, SmallWorld
from prefopt.winrate import OUTCOME_SCORE, judge_pairs_both_orders

logger = logging.getLogger(__name__)

ALPHAS = (0.01, 0.1, 0.3, 0.5, 0.9, 0.99)
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4)
TAU_RATIOS = (0.1, 0.25, 0.5, 1.0, 2.0)  # γ0/τ; γ-SimPO's γ0 = β · gamma_beta_ratio = 2 · 0.5 = 1
#: Win-rate points within which two methods count as giving the same result (claim 1's equivalence test).
EQUIVALENCE_MARGIN = 2.0
#: (z₀.₉₇₅ + z₀.₈₀): the minimum detectable effect in standard errors (two-sided 5% test, 80% power).
MDE_FACTOR = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.80)
VERDICTS = ("supported", "contradicted", "inconclusive")

# Shared hyper-parameters of the α sweeps: one β_π per setting, so that only α moves between EXO and DPO.
PREF_BETA_PI = 0.5
RW_BETA_PI, RW_BETA_R = 0.5, 0.1
SIMPO = {"beta": 2.0, "gamma_beta_ratio": 0.5}
GAMMA0 = SIMPO["beta"] * SIMPO["gamma_beta_ratio"]


# ----------------------------------------------------------------------------------------------------------------------
# Settings and the methods the claims train
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimSettings:
    """What ``make claims`` runs. The defaults are the full run; :func:`quick_settings` the reduced one."""

    out: str = "results/claims"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    alphas: tuple[float, ...] = ALPHAS
    noise_levels: tuple[float, ...] = NOISE_LEVELS
    tau_ratios: tuple[float, ...] = TAU_RATIOS
    fpo_noise: float = 0.1  # flipped labels in the pairs of the f-PO claims (1 and 2)
    near_ties: float = 0.5  # share of near-tie pairs in claim 5's ambiguous regime
    equivalence_margin: float = EQUIVALENCE_MARGIN
    bootstrap: int = 4000
    demo: DemoSettings = field(default_factory=DemoSettings)  # the world, model and training sizes

    def __post_init__(self):
        if len(self.seeds) < 2:
            raise ValueError("the claims need at least 2 seeds (the interval resamples seeds)")
        if len(self.alphas) < 2 or len(self.noise_levels) < 2 or len(self.tau_ratios) < 2:
            raise ValueError("the claims need at least 2 values of alpha, of the noise level and of γ0/τ")
        if not all(0 < a < 1 for a in self.alphas):
            raise ValueError(f"alphas must lie strictly inside (0, 1): {self.alphas}")


def quick_settings(out: str = "results/claims") -> ClaimSettings:
    """``make claims QUICK=1``: the same claims on 3 seeds, 2–3 points per sweep, 192 training and 64 held-out prompts
    (81 runs, about 4 minutes on 2 cores)."""
    demo = replace(DemoSettings(), n_train_prompts=192, n_test_prompts=64, sft_epochs=2.0)
    return ClaimSettings(out=out, seeds=(0, 1, 2), alphas=(0.01, 0.5, 0.99), noise_levels=(0.0, 0.4),
                         tau_ratios=(0.1, 0.5, 2.0), fpo_noise=0.0, bootstrap=2000, demo=demo)


def _alpha_name(prefix: str, alpha: float) -> str:
    return f"{prefix}_a{alpha:g}"


def _ratio_name(ratio: float) -> str:
    return "gamma_simpo" if ratio == 0.5 else f"gamma_simpo_r{ratio:g}"


def claim_methods(settings: ClaimSettings) -> dict[str, Method]:
    """Every method the claims train, by run name: the demo's DPO / SimPO / γ pair and the α and τ sweeps."""
    methods = {name: METHODS[name] for name in ("dpo", "gamma_dpo", "simpo", "gamma_simpo")}
    methods["exo_pref"] = Method("EXO (pref)", "pref", {"name": "exo", "beta_pi": PREF_BETA_PI, "setting": "pref"})
    methods["dpo_k_pref"] = Method("DPO (pref)", "pref", {"name": "dpo_k", "beta_pi": PREF_BETA_PI,
                                                          "setting": "pref"})
    methods["exo_rw"] = Method("EXO (rw)", "rw", {"name": "exo", "beta_pi": RW_BETA_PI, "beta_r": RW_BETA_R})
    methods["dpo_k_rw"] = Method("DPO-K (rw)", "rw", {"name": "dpo_k", "beta_pi": RW_BETA_PI, "beta_r": RW_BETA_R})
    for alpha in settings.alphas:
        methods[_alpha_name("fpo_pref", alpha)] = Method(
            f"f-PO α={alpha:g} (pref)", "pref",
            {"name": "fpo", "divergence": "alpha", "alpha": alpha, "beta_pi": PREF_BETA_PI, "setting": "pref"})
        methods[_alpha_name("fpo_rw", alpha)] = Method(
            f"f-PO α={alpha:g} (rw)", "rw",
            {"name": "fpo", "divergence": "alpha", "alpha": alpha, "beta_pi": RW_BETA_PI, "beta_r": RW_BETA_R})
        methods[_alpha_name("alphapo", alpha)] = Method(
            f"α-PO α={alpha:g} (ref-free)", "pref", {"name": "alphapo", "alpha": alpha, **SIMPO})
    for ratio in settings.tau_ratios:
        methods[_ratio_name(ratio)] = Method(f"γ-SimPO γ0/τ={ratio:g}", "pref", {"name": "gamma_simpo", **SIMPO},
                                             margins={"tau": GAMMA0 / ratio})
    return methods


def _regime_name(noise: float, near_ties: Optional[float]) -> str:
    return f"noise{noise:g}" if near_ties is None else f"ties{near_ties:g}"


def plan(settings: ClaimSettings) -> dict[str, dict]:
    """The label regimes of one seed and the runs trained in each: {regime: {"noise", "near_ties", "methods"}}."""
    regimes: dict[str, dict] = {}

    def add(noise: float, near_ties: Optional[float], names: Sequence[str]):
        regime = regimes.setdefault(_regime_name(noise, near_ties),
                                    {"noise": noise, "near_ties": near_ties, "methods": []})
        regime["methods"] = list(dict.fromkeys([*regime["methods"], *names]))

    for noise in settings.noise_levels:  # claims 3 and 4
        add(noise, None, ["simpo", "gamma_simpo", "dpo", "gamma_dpo"])
    fpo = ["exo_pref", "dpo_k_pref", "exo_rw", "dpo_k_rw", "simpo"]
    for alpha in settings.alphas:  # claims 1 and 2
        fpo += [_alpha_name(prefix, alpha) for prefix in ("fpo_pref", "fpo_rw", "alphapo")]
    add(settings.fpo_noise, None, fpo)
    add(0.0, settings.near_ties, ["simpo", "gamma_simpo", *map(_ratio_name, settings.tau_ratios)])  # claim 5
    add(0.0, 0.0, ["simpo", "gamma_simpo"])
    return regimes


# ----------------------------------------------------------------------------------------------------------------------
# Statistics: the two-level bootstrap, the MDE and the verdict
# ----------------------------------------------------------------------------------------------------------------------


def hierarchical_bootstrap(per_seed: Sequence[np.ndarray], *, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """Estimate, 95% percentile interval and standard error of the mean over seeds of the per-seed mean of
    ``per_seed[s]`` (one value per prompt), resampling seeds and then prompts within each drawn seed.

    Returns ``{"estimate", "ci": [lo, hi], "se", "mde", "per_seed"}``; ``estimate`` is the plain mean of the seed
    means (not the bootstrap mean)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in per_seed]
    if len(arrays) < 2 or any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise ValueError("need at least two seeds, each with a non-empty 1-D array of per-prompt values")
    seed_means = np.array([a.mean() for a in arrays])
    rng = np.random.default_rng(seed)
    n_seeds = len(arrays)
    picks = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # level 1: the seeds of each replicate
    slot_means = np.empty((n_boot, n_seeds))
    for s, values in enumerate(arrays):  # level 2: every drawn copy of seed s resamples its own prompts
        rows, slots = np.nonzero(picks == s)
        draws = rng.integers(0, values.size, size=(rows.size, values.size))
        slot_means[rows, slots] = values[draws].mean(axis=1)
    replicates = slot_means.mean(axis=1)
    lo, hi = np.quantile(replicates, [0.025, 0.975])
    se = float(replicates.std(ddof=1))
    return {"estimate": float(seed_means.mean()), "ci": [float(lo), float(hi)], "se": se,
            "mde": MDE_FACTOR * se, "per_seed": [float(m) for m in seed_means]}


def verdict(ci: Sequence[float], kind: str, margin: Optional[float] = None) -> str:
    """The verdict an interval gives: see the module docstring. ``kind`` is "greater" or "equivalent" (with a
    ``margin`` δ > 0)."""
    lo, hi = float(ci[0]), float(ci[1])
    if not lo <= hi:
        raise ValueError(f"not an interval: {ci!r}")
    if kind == "greater":
        return "supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
    if kind == "equivalent":
        if margin is None or margin <= 0:
            raise ValueError("an equivalence verdict needs a margin > 0")
        if -margin < lo and hi < margin:
            return "supported"
        return "contradicted" if lo > margin or hi < -margin else "inconclusive"
    raise ValueError(f"unknown claim kind {kind!r}: 'greater' or 'equivalent'")


def slope_weights(levels: Sequence[float]) -> np.ndarray:
    """Weights w with Σ w_k g_k = (least-squares slope of g on ``levels``) × (max − min level): the change of g
    across the range, read off the fitted line."""
    x = np.asarray(levels, dtype=np.float64)
    centred = x - x.mean()
    return centred / (centred ** 2).sum() * (x.max() - x.min())


# ----------------------------------------------------------------------------------------------------------------------
# Per-prompt scores from the run folders
# ----------------------------------------------------------------------------------------------------------------------


def prompt_scores(world: SmallWorld, policy_rows: Sequence[dict], sft_rows: Sequence[dict]) -> np.ndarray:
    """Win points (0–100) of a policy against SFT per held-out prompt: its j-th sample against SFT's j-th, judged by
    the hidden reward in both orders (win 1, tie ½), averaged over samples and orders — the judge stage's rule
    (:mod:`prefopt.winrate`), per prompt."""
    judge = HiddenRewardJudge(world)
    sft = {row["id"]: row["completions"] for row in sft_rows}
    scores = []
    for row in policy_rows:
        pairs = [(row["prompt"], mine, theirs) for mine, theirs in zip(row["completions"], sft[row["id"]], strict=True)]
        outcomes = [o for pair in judge_pairs_both_orders(judge, pairs) for o in pair]
        scores.append(100 * sum(OUTCOME_SCORE[o] for o in outcomes) / len(outcomes))
    return np.array(scores)


def margin_spread(run_dir: Path, gamma0: float = GAMMA0) -> Optional[float]:
    """Standard deviation of γ_i/γ0 over every pair a γ-PO run logged (margins.jsonl); None without the file.
    The mean of γ_i/γ0 over a solved pool is 1, so this is the margins' relative spread."""
    path = run_dir / "margins.jsonl"
    if not path.is_file():
        return None
    values = np.array([row["margin"] / gamma0 for row in read_jsonl(path) if row.get("margin") is not None])
    return float(values.std()) if values.size else None


# ----------------------------------------------------------------------------------------------------------------------
# The claims
# ----------------------------------------------------------------------------------------------------------------------

#: The papers' own statements, for the table (paraphrased).
PAPER_CLAIMS = {
    1: "f-PO: the α-divergence interpolates between EXO (α → 0) and DPO (α → 1)",
    2: "f-PO: α-PO at a tuned α beats both EXO and DPO",
    3: "γ-PO: dynamic per-pair margins beat a static margin on average",
    4: "γ-PO: the gain grows with label noise",
    5: "γ-PO: the gain comes from ambiguous (near-tie) pairs",
}


class ClaimData:
    """Per-prompt scores ``[seed][regime][method] -> np.ndarray`` and margin spreads, read from the run folders."""

    def __init__(self, settings: ClaimSettings):
        self.s = settings
        self.world = SmallWorld(settings.demo.world)
        self.scores: dict[int, dict[str, dict[str, np.ndarray]]] = {}
        self.spread: dict[int, dict[str, dict[str, Optional[float]]]] = {}
        root = Path(settings.out)
        for seed in settings.seeds:
            self.scores[seed], self.spread[seed] = {}, {}
            for regime, spec in plan(settings).items():
                folder = root / f"seed{seed}" / regime / "runs"
                sft_rows = read_jsonl(folder / "sft" / "samples_test.jsonl")
                self.scores[seed][regime] = {
                    name: prompt_scores(self.world, read_jsonl(folder / name / "samples_test.jsonl"), sft_rows)
                    for name in spec["methods"]
                }
                self.spread[seed][regime] = {name: margin_spread(folder / name) for name in spec["methods"]
                                             if name.startswith("gamma_simpo")}

    def contrast(self, terms: Sequence[tuple[float, str, Any]]) -> list[np.ndarray]:
        """Per seed, the per-prompt Σ w · score(regime, method) of ``terms`` = [(w, regime, method), ...]; a method
        may be a callable ``seed -> name`` (claim 2's leave-one-seed-out α)."""
        out = []
        for seed in self.s.seeds:
            total = 0.0
            for weight, regime, method in terms:
                name = method(seed) if callable(method) else method
                total = total + weight * self.scores[seed][regime][name]
            out.append(np.asarray(total, dtype=np.float64))
        return out

    def seed_mean(self, seed: int, regime: str, names: Sequence[str]) -> dict[str, float]:
        return {name: float(self.scores[seed][regime][name].mean()) for name in names}


def evaluate_claims(data: ClaimData) -> tuple[list[dict], dict]:
    """Every test of every claim (one row each) and the curves the figures draw."""
    s = data.s

    def boot(per_seed, k):  # k seeds the resampling: every row and curve point gets its own, reproducibly
        return hierarchical_bootstrap(per_seed, n_boot=s.bootstrap, seed=k)

    fpo_regime = _regime_name(s.fpo_noise, None)
    ties_regime, clear_regime = _regime_name(0.0, s.near_ties), _regime_name(0.0, 0.0)
    rows: list[dict] = []
    curves: dict[str, Any] = {}

    def add(claim: int, test: str, regime: str, terms, kind: str = "greater", **extra):
        result = boot(data.contrast(terms), len(rows))
        margin = s.equivalence_margin if kind == "equivalent" else None
        rows.append({"claim": claim, "test": test, "regime": regime, "kind": kind, "margin": margin, **result,
                     "verdict": verdict(result["ci"], kind, margin), **extra})

    flips = f"{100 * s.fpo_noise:.0f}% flipped labels"
    # -- 1. interpolation: α = min ↔ EXO, α = max ↔ DPO, both settings ---------------------------------------------
    a_lo, a_hi = min(s.alphas), max(s.alphas)
    for setting in ("pref", "rw"):
        exo, dpo = f"exo_{setting}", f"dpo_k_{setting}"
        span = boot(data.contrast([(1, fpo_regime, dpo), (-1, fpo_regime, exo)]), 100 + len(rows))
        regime = f"{setting}, {flips}; DPO − EXO = {span['estimate']:+.1f} ({span['ci'][0]:+.1f}, {span['ci'][1]:+.1f})"
        add(1, f"f-PO α={a_lo:g} − EXO ({setting})", regime,
            [(1, fpo_regime, _alpha_name(f"fpo_{setting}", a_lo)), (-1, fpo_regime, exo)], "equivalent")
        add(1, f"f-PO α={a_hi:g} − DPO ({setting})", regime,
            [(1, fpo_regime, _alpha_name(f"fpo_{setting}", a_hi)), (-1, fpo_regime, dpo)], "equivalent")
        points = [("EXO", 0.0, exo), *[(f"{a:g}", a, _alpha_name(f"fpo_{setting}", a)) for a in s.alphas],
                  ("DPO", 1.0, dpo)]
        curves[f"alpha_{setting}"] = [
            {"label": label, "alpha": x, **boot(data.contrast([(1, fpo_regime, name)]), 200 + i)}
            for i, (label, x, name) in enumerate(points)
        ]

    # -- 2. tuned α beats both end points (and the reference-free α-PO beats SimPO) -----------------------------------
    tuned: dict[str, dict[int, float]] = {}
    for prefix, opponents in (("fpo_pref", ["exo_pref", "dpo_k_pref"]), ("fpo_rw", ["exo_rw", "dpo_k_rw"]),
                              ("alphapo", ["simpo"])):
        names = [_alpha_name(prefix, a) for a in s.alphas]
        means = {seed: data.seed_mean(seed, fpo_regime, names) for seed in s.seeds}
        choice = {}
        for seed in s.seeds:  # leave-one-seed-out: the best α on the other seeds
            others = [means[o] for o in s.seeds if o != seed]
            best = max(names, key=lambda n: (np.mean([m[n] for m in others]), n))
            choice[seed] = s.alphas[names.index(best)]
        tuned[prefix] = choice
        def pick(seed, prefix=prefix, choice=choice):  # the run of seed's leave-one-seed-out α
            return _alpha_name(prefix, choice[seed])

        picked = ", ".join(f"{a:g}×{list(choice.values()).count(a)}" for a in sorted(set(choice.values())))
        for opponent in opponents:
            label = data_label(opponent)
            add(2, f"{data_label(prefix)} at tuned α − {label}", f"{flips}; α chosen leave-one-seed-out: {picked}",
                [(1, fpo_regime, pick), (-1, fpo_regime, opponent)], tuned_alpha={str(k): v for k, v in choice.items()})
    curves["tuned_alpha"] = tuned

    # -- 3. dynamic beats static margins, on average over the flip rates -----------------------------------------------
    noise_regimes = [_regime_name(n, None) for n in s.noise_levels]
    levels = ", ".join(f"{100 * n:.0f}" for n in s.noise_levels)
    pairs = (("gamma_simpo", "simpo", "γ-SimPO − SimPO"), ("gamma_dpo", "dpo", "γ-DPO − DPO"))
    k = len(noise_regimes)
    for dynamic, static, label in pairs:
        terms = [t for r in noise_regimes for t in ((1 / k, r, dynamic), (-1 / k, r, static))]
        add(3, f"{label}, mean over flip rates", f"random pairs, {levels}% flipped labels", terms)

    # -- 4. the gain grows with label noise ---------------------------------------------------------------------------
    weights = slope_weights(s.noise_levels)
    for dynamic, static, label in pairs:
        terms = [t for w, r in zip(weights, noise_regimes) for t in ((w, r, dynamic), (-w, r, static))]
        add(4, f"{label}: change of the gain from {100 * min(s.noise_levels):.0f}% to "
               f"{100 * max(s.noise_levels):.0f}% flips (fitted slope)", f"random pairs, {levels}% flipped labels",
            terms)
        curves[f"noise_{dynamic}"] = [
            {"noise": n, **boot(data.contrast([(1, r, dynamic), (-1, r, static)]), 300 + i)}
            for i, (n, r) in enumerate(zip(s.noise_levels, noise_regimes))
        ]

    # -- 5. the gain comes from ambiguous pairs; and it moves with the margins' spread --------------------------------
    add(5, "(γ-SimPO − SimPO) with near ties − without",
        f"no flips; {100 * s.near_ties:.0f}% near-tie pairs vs clear pairs only (γ0/τ = 0.5)",
        [(1, ties_regime, "gamma_simpo"), (-1, ties_regime, "simpo"),
         (-1, clear_regime, "gamma_simpo"), (1, clear_regime, "simpo")])
    r_lo, r_hi = min(s.tau_ratios), max(s.tau_ratios)
    spreads = {ratio: [data.spread[seed][ties_regime][_ratio_name(ratio)] for seed in s.seeds]
               for ratio in s.tau_ratios}
    mean_spread = {ratio: float(np.mean([v for v in values if v is not None] or [np.nan]))
                   for ratio, values in spreads.items()}
    add(5, f"γ-SimPO at γ0/τ={r_hi:g} − at γ0/τ={r_lo:g}",
        f"no flips, {100 * s.near_ties:.0f}% near ties; sd(γ/γ0) {mean_spread[r_lo]:.2f} → {mean_spread[r_hi]:.2f}",
        [(1, ties_regime, _ratio_name(r_hi)), (-1, ties_regime, _ratio_name(r_lo))])
    curves["tau"] = [
        {"ratio": ratio, "margin_sd": mean_spread[ratio],
         **boot(data.contrast([(1, ties_regime, _ratio_name(ratio)), (-1, ties_regime, "simpo")]), 400 + i)}
        for i, ratio in enumerate(s.tau_ratios)
    ]
    curves["ties_gain"] = {
        regime: boot(data.contrast([(1, regime, "gamma_simpo"), (-1, regime, "simpo")]), 500 + i)
        for i, regime in enumerate((clear_regime, ties_regime))
    }
    return rows, curves


def data_label(name: str) -> str:
    return {"fpo_pref": "f-PO (pref)", "fpo_rw": "f-PO (rw)", "alphapo": "α-PO (ref-free)", "exo_pref": "EXO",
            "dpo_k_pref": "DPO", "exo_rw": "EXO", "dpo_k_rw": "DPO-K", "simpo": "SimPO"}.get(name, name)


def seed_spread(data: ClaimData) -> list[dict]:
    """Why seeds disagree: per method of the noise sweep, the spread across seeds of its win rate against SFT and of
    its difference from its static twin, beside the within-seed (prompt) standard error of one seed's win rate."""
    s, out = data.s, []
    for regime in (_regime_name(n, None) for n in s.noise_levels):
        for name in ("simpo", "gamma_simpo", "dpo", "gamma_dpo"):
            twin = {"gamma_simpo": "simpo", "gamma_dpo": "dpo"}.get(name)
            per_seed = [data.scores[seed][regime][name] for seed in s.seeds]
            wins = np.array([scores.mean() for scores in per_seed])
            within = np.array([scores.std(ddof=1) / np.sqrt(scores.size) for scores in per_seed])
            row = {"regime": regime, "method": name, "win_rate_by_seed": wins.round(1).tolist(),
                   "between_seed_sd": float(wins.std(ddof=1)), "within_seed_se": float(within.mean())}
            if twin:
                diffs = np.array([(data.scores[seed][regime][name] - data.scores[seed][regime][twin]).mean()
                                  for seed in s.seeds])
                row["paired_difference_sd"] = float(diffs.std(ddof=1))
            out.append(row)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Running and the table
# ----------------------------------------------------------------------------------------------------------------------


def train_all(settings: ClaimSettings, *, progress: bool = True) -> dict[str, float]:
    """Every (seed, regime) pipeline of :func:`plan`; each stage is skipped when already done. Returns the wall time
    of each seed in seconds."""
    methods = claim_methods(settings)
    regimes = plan(settings)
    total = len(settings.seeds) * sum(len(r["methods"]) for r in regimes.values())
    bar = tqdm(total=total, desc="claims", unit="run", disable=not progress)
    timings = {}
    # Every Trainer.train() ends in accelerate's free_memory(), a full gc.collect() that walks torch's and
    # transformers' objects: 0.4 s per run, hundreds of runs. Freezing what is alive now (the imported libraries) keeps
    # them out of those collections; everything allocated later is still collected.
    import prefopt.train  # noqa: F401 - torch, transformers and accelerate, imported before the freeze
    import prefopt.trainer  # noqa: F401 - the Trainer module, which prefopt.train imports only when it trains

    gc.collect()
    gc.freeze()
    for seed in settings.seeds:
        started = time.time()
        shared = Path(settings.out) / f"seed{seed}"
        for regime, spec in regimes.items():
            demo = replace(settings.demo, seed=seed, noise=spec["noise"], near_ties=spec["near_ties"],
                           methods=tuple(spec["methods"]), out=str(shared))
            bar.set_postfix_str(f"seed {seed}, {regime}")
            Pipeline(demo, shared=shared, labelled=shared / regime, methods=methods).run(progress=False)
            bar.update(len(spec["methods"]))
        timings[f"seed{seed}"] = time.time() - started
    bar.close()
    return timings


def _fmt_ci(row: dict) -> str:
    lo, hi = row["ci"]
    return f"{row['estimate']:+.1f} ({lo:+.1f}, {hi:+.1f})"


def render_table(rows: Sequence[dict], settings: ClaimSettings, spread: Sequence[dict] = ()) -> str:
    n = len(settings.seeds)
    lines = [
        f"# Paper claims in the small world ({n} paired seeds)",
        "",
        "Effect: win points against SFT (hidden-reward judge, both orders, ties ½), a paired per-prompt difference "
        "between methods trained from the same SFT model on the same pairs, averaged over prompts and then seeds; "
        "95% interval from a bootstrap over seeds and then prompts within seed; MDE = the smallest effect this "
        f"run detects with 80% power (2.80 × SE). Verdicts follow from the interval: for \"A beats B\" supported "
        "when it lies above 0, contradicted below 0; for \"A equals B\" supported inside "
        f"±{settings.equivalence_margin:g} points, contradicted wholly outside; inconclusive otherwise.",
        "",
        "| claim | test | regime | effect (95% CI) | MDE | verdict |",
        "|---|---|---|---|---:|---|",
    ]
    for row in rows:
        lines.append(f"| {row['claim']} | {row['test']} | {row['regime']} | {_fmt_ci(row)} | {row['mde']:.1f} | "
                     f"{row['verdict']} |")
    lines += ["", "The papers' claims:", ""]
    for claim, text in PAPER_CLAIMS.items():
        verdicts = [r["verdict"] for r in rows if r["claim"] == claim]
        tally = ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS if verdicts.count(v))
        lines.append(f"{claim}. {text} — tests: {tally}.")
    if spread:
        lines += ["", "Seed-to-seed spread of the win rate against SFT (points): between seeds (SD of the seed means), "
                      "within one seed (SE over its prompts), and of the paired difference from the static twin.", "",
                  "| regime | method | between-seed SD | within-seed SE | paired-difference SD |",
                  "|---|---|---:|---:|---:|"]
        for row in spread:
            paired = f"{row['paired_difference_sd']:.1f}" if "paired_difference_sd" in row else "—"
            lines.append(f"| {row['regime']} | {row['method']} | {row['between_seed_sd']:.1f} | "
                         f"{row['within_seed_se']:.1f} | {paired} |")
    return "\n".join(lines) + "\n"


def run_claims(settings: ClaimSettings, *, progress: bool = True) -> dict:
    """Train (or reuse) every run, then write ``table.md`` and ``metrics.json`` in ``settings.out``; returns the
    metrics. The figures are the caller's (:func:`prefopt.plots.draw_claims_figures` reads metrics.json)."""
    started = time.time()
    out = Path(settings.out)
    timings = train_all(settings, progress=progress)
    data = ClaimData(settings)
    rows, curves = evaluate_claims(data)
    spread = seed_spread(data)
    (out / "table.md").write_text(render_table(rows, settings, spread))
    metrics = {"settings": asdict(settings), "rows": rows, "curves": curves, "seed_spread": spread,
               "timings_seconds": timings, "wall_seconds": time.time() - started}
    write_json(out / "metrics.json", metrics)
    return metrics


def read_metrics(out: str | Path) -> dict:
    path = Path(out) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run `make claims` first)")
    return json.loads(path.read_text())
