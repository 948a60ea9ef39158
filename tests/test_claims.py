"""`make claims` (prefopt.smallworld.claims): the statistics against closed forms, the verdicts against the intervals,
the near-tie pairing against a brute-force search, and a still smaller run than `make claims QUICK=1` end to end
(table structure, verdicts recomputed from the intervals, per-prompt scores against the judge stage's win rate, the
five figures).

The end-to-end run trains 2 seeds × 23 tiny runs (hidden 16, one layer, 16 training prompts, one step each) in
about 30 s on 2 cores; the trained policies barely move, so only the machinery is tested there, never a verdict's
direction."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest

from prefopt.smallworld.claims import (
    MDE_FACTOR, PAPER_CLAIMS, ClaimSettings, claim_methods, hierarchical_bootstrap, plan, prompt_scores, run_claims,
    slope_weights, verdict,
)
from prefopt.smallworld.demo import DemoSettings
from prefopt.smallworld.world import SmallWorld

# ----------------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------------


def test_estimate_is_the_mean_of_the_seed_means():
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=n) for n in (30, 50, 70)]  # unequal prompt counts: seeds weigh equally
    result = hierarchical_bootstrap(arrays, n_boot=200, seed=0)
    assert result["estimate"] == pytest.approx(math.fsum(a.mean() for a in arrays) / 3, abs=1e-12)
    assert result["per_seed"] == pytest.approx([a.mean() for a in arrays], abs=1e-12)
    assert result["mde"] == pytest.approx(MDE_FACTOR * result["se"], rel=1e-12)
    assert MDE_FACTOR == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    lo, hi = result["ci"]
    assert lo < result["estimate"] < hi


def test_standard_error_matches_closed_forms_at_each_level():
    rng = np.random.default_rng(2)
    # seeds differ, prompts within a seed do not: the plug-in SE of a mean of 8 seed means
    seed_values = rng.normal(size=8)
    between = hierarchical_bootstrap([np.full(40, v) for v in seed_values], n_boot=20000, seed=3)
    plug_in = seed_values.std(ddof=0) / math.sqrt(8)
    assert between["se"] == pytest.approx(plug_in, rel=0.04)
    # seeds identical, prompts vary: every drawn seed copy resamples its prompts on its own, SE = σ/√(P·S)
    prompts = rng.normal(size=64)
    within = hierarchical_bootstrap([prompts] * 8, n_boot=20000, seed=4)
    assert within["se"] == pytest.approx(prompts.std(ddof=0) / math.sqrt(64 * 8), rel=0.04)


def test_bootstrap_rejects_what_it_cannot_resample():
    with pytest.raises(ValueError, match="two seeds"):
        hierarchical_bootstrap([np.ones(5)], n_boot=10)
    with pytest.raises(ValueError, match="non-empty"):
        hierarchical_bootstrap([np.ones(5), np.array([])], n_boot=10)


@pytest.mark.parametrize("ci, kind, expected", [
    ((0.1, 3.0), "greater", "supported"),
    ((-3.0, -0.1), "greater", "contradicted"),
    ((-0.1, 3.0), "greater", "inconclusive"),
    ((0.0, 3.0), "greater", "inconclusive"),  # touching 0 is not above it
    ((-1.9, 1.9), "equivalent", "supported"),
    ((-1.0, 2.5), "equivalent", "inconclusive"),
    ((2.1, 4.0), "equivalent", "contradicted"),
    ((-4.0, -2.1), "equivalent", "contradicted"),
    ((-3.0, 3.0), "equivalent", "inconclusive"),
])
def test_verdict_follows_the_interval(ci, kind, expected):
    assert verdict(ci, kind, 2.0 if kind == "equivalent" else None) == expected


def test_verdict_rejects_bad_input():
    with pytest.raises(ValueError, match="interval"):
        verdict((1.0, 0.0), "greater")
    with pytest.raises(ValueError, match="margin"):
        verdict((0.0, 1.0), "equivalent")
    with pytest.raises(ValueError, match="greater"):
        verdict((0.0, 1.0), "less")


def test_slope_weights_read_the_change_off_a_least_squares_line():
    levels = [0.0, 0.1, 0.2, 0.3, 0.4]
    rng = np.random.default_rng(5)
    g = rng.normal(size=5)
    slope = np.polyfit(levels, g, 1)[0]
    assert float(slope_weights(levels) @ g) == pytest.approx(slope * 0.4, abs=1e-12)
    assert float(slope_weights(levels) @ np.full(5, 7.0)) == pytest.approx(0.0, abs=1e-12)  # a flat gain: no change


def test_settings_are_validated():
    with pytest.raises(ValueError, match="2 seeds"):
        ClaimSettings(seeds=(0,))
    with pytest.raises(ValueError, match="inside"):
        ClaimSettings(alphas=(0.0, 0.5))
    with pytest.raises(ValueError, match="at least 2"):
        ClaimSettings(tau_ratios=(0.5,))


def test_every_planned_run_has_a_method_and_the_sweeps_share_their_beta():
    settings = ClaimSettings()
    methods = claim_methods(settings)
    planned = {name for regime in plan(settings).values() for name in regime["methods"]}
    assert planned <= set(methods)
    assert all(len(r["methods"]) == len(set(r["methods"])) for r in plan(settings).values())  # each run trains once
    for setting in ("pref", "rw"):  # only α moves between EXO and DPO in a sweep
        betas = {methods[n].loss["beta_pi"] for n in planned if n.endswith(f"_{setting}") or f"_{setting}_a" in n}
        assert len(betas) == 1
    ratios = {round(1.0 / methods[n].margins["tau"], 6) for n in planned if n.startswith("gamma_simpo")}
    assert ratios == set(settings.tau_ratios)  # γ0 = 1, so γ0/τ = 1/τ


# ----------------------------------------------------------------------------------------------------------------------
# Near-tie pairs (SmallWorld.label)
# ----------------------------------------------------------------------------------------------------------------------


def _samples(world, n=40, k=4, seed=0):
    import random

    rng = random.Random(seed)
    prompts = world.prompts(n, seed=seed)
    return [{"prompt": p["prompt"], "completions": [world.base_response(p["prompt"], rng) for _ in range(k)]}
            for p in prompts]


def test_near_tie_pairs_are_the_closest_and_clear_pairs_the_furthest():
    world = SmallWorld()
    samples = _samples(world)
    _, pairs, stats = world.label(samples, noise=0.0, seed=1, near_ties=0.5)
    _, clear, _ = world.label(samples, noise=0.0, seed=1, near_ties=0.0)
    by_prompt = {json.dumps(s["prompt"]): s for s in samples}
    kinds = []
    for row, clear_row in zip(pairs, clear):
        candidates = dict.fromkeys(c for c in by_prompt[json.dumps(row["prompt"])]["completions"] if c.strip())
        rewards = [world.hidden_reward(row["prompt"], c) for c in candidates]
        gaps = [abs(a - b) for i, a in enumerate(rewards) for b in rewards[i + 1:]]
        gap = abs(row["true_gap"])
        assert gap == pytest.approx(min(gaps) if row["near_tie"] else max(gaps), abs=1e-5)
        if not row["near_tie"]:  # the clear pairs of f = 0.5 are, prompt for prompt, those of f = 0
            assert {row["chosen"], row["rejected"]} == {clear_row["chosen"], clear_row["rejected"]}
        kinds.append(row["near_tie"])
    assert 0 < sum(kinds) < len(kinds) and stats["near_tie_pairs"] == sum(kinds)
    assert stats["near_tie_mean_abs_gap"] < stats["clear_mean_abs_gap"]
    with pytest.raises(ValueError, match="near_ties"):
        world.label(samples, noise=0.0, seed=1, near_ties=1.5)


# ----------------------------------------------------------------------------------------------------------------------
# A tiny run end to end
# ----------------------------------------------------------------------------------------------------------------------

TINY_DEMO = replace(DemoSettings(), n_train_prompts=16, n_test_prompts=8, hidden_size=16, num_layers=1, num_heads=2,
                    sft_epochs=1.0, pref_epochs=1.0, sft_per_prompt=2, max_new_tokens=8, eval_samples=1)


@pytest.fixture(scope="module")
def tiny_claims(tmp_path_factory):
    out = tmp_path_factory.mktemp("claims")
    settings = ClaimSettings(out=str(out), seeds=(0, 1), alphas=(0.01, 0.99), noise_levels=(0.0, 0.4),
                             tau_ratios=(0.5, 2.0), fpo_noise=0.0, bootstrap=300, demo=TINY_DEMO)
    metrics = run_claims(settings, progress=False)
    from prefopt.plots import draw_claims_figures

    figures = draw_claims_figures(out)  # from metrics.json, as `prefopt claims` draws them
    return out, settings, metrics, figures



@pytest.mark.slow
def test_table_has_one_row_per_test_and_every_claim(tiny_claims):
    out, settings, metrics, _ = tiny_claims
    table = (out / "table.md").read_text()
    header = "| claim | test | regime | effect (95% CI) | MDE | verdict |"
    assert header in table
    lines = table.splitlines()
    start = lines.index(header) + 2
    body = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        body.append([cell.strip() for cell in line.strip("|").split("|")])
    assert len(body) == len(metrics["rows"]) and all(len(cells) == 6 for cells in body)
    assert sorted({int(cells[0]) for cells in body}) == sorted(PAPER_CLAIMS)
    # 4 interpolation tests, 5 tuned-α tests, 2 + 2 γ-PO pairs, 2 ambiguity tests
    assert [int(cells[0]) for cells in body].count(1) == 4 and [int(c[0]) for c in body].count(2) == 5
    for cells, row in zip(body, metrics["rows"]):
        estimate, lo, hi = map(float, re.fullmatch(r"([+-][\d.]+) \(([+-][\d.]+), ([+-][\d.]+)\)", cells[3]).groups())
        assert (estimate, lo, hi) == pytest.approx((row["estimate"], *row["ci"]), abs=0.05 + 1e-9)
        assert cells[5] == row["verdict"] == verdict(row["ci"], row["kind"], row["margin"])
    for claim in PAPER_CLAIMS:
        assert f"{claim}. {PAPER_CLAIMS[claim]} — tests:" in table


@pytest.mark.slow
def test_per_prompt_scores_agree_with_the_judge_stage(tiny_claims):
    out, settings, metrics, _ = tiny_claims
    world = SmallWorld(settings.demo.world)
    from prefopt.io import read_jsonl

    for regime, spec in plan(settings).items():
        runs = out / "seed1" / regime / "runs"
        sft = read_jsonl(runs / "sft" / "samples_test.jsonl")
        for name in spec["methods"][:3]:
            scores = prompt_scores(world, read_jsonl(runs / name / "samples_test.jsonl"), sft)
            judged = json.loads((runs / name / "eval.json").read_text())["win_rate_vs_sft"]["win_rate"]
            assert scores.mean() == pytest.approx(100 * judged, abs=1e-9), (regime, name)


@pytest.mark.slow
def test_seeds_share_sft_and_candidates_and_regimes_share_the_samples(tiny_claims):
    out, settings, _, _ = tiny_claims
    for seed in settings.seeds:
        root = out / f"seed{seed}"
        assert (root / "runs" / "sft" / "final").is_dir()  # one SFT model per seed, in the shared folder
        assert not any((root / regime / "runs" / "sft" / "final").exists() for regime in plan(settings))
        sft_samples = {(root / regime / "runs" / "sft" / "samples_test.jsonl").read_text() for regime in plan(settings)}
        assert len(sft_samples) == 1  # every regime judges against the same SFT samples


@pytest.mark.slow
def test_five_figures_and_the_metrics_file(tiny_claims):
    out, settings, metrics, figures = tiny_claims
    assert sorted(p.name for p in figures) == sorted([
        "claim1_interpolation.png", "claim2_tuned_alpha.png", "claim3_dynamic_margins.png", "claim4_noise.png",
        "claim5_ambiguity.png"])
    assert all(p.stat().st_size > 10_000 for p in figures)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["settings"]["seeds"] == [0, 1] and len(saved["rows"]) == len(metrics["rows"])
    assert {c["label"] for c in saved["curves"]["alpha_pref"]} == {"EXO", "0.01", "0.99", "DPO"}
