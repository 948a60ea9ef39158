"""One figure per claim of ``make claims``, drawn from ``results/claims/metrics.json`` (prefopt.smallworld.claims).

* claim1_interpolation.png — win rate against SFT along the α sweep, EXO and DPO at the ends, pref and rw panels;
  thin lines are the individual seeds (paired: same SFT model and pairs per seed), the thick line their mean with
  its 95% interval.
* claim2_tuned_alpha.png, claim3_dynamic_margins.png — the claim's effects with their intervals (forest plot), the
  equivalence band or zero line, and each verdict.
* claim4_noise.png — the γ-PO gain (dynamic − static) by flip rate, for SimPO and DPO.
* claim5_ambiguity.png — the gain without and with near-tie pairs, and along the γ0/τ sweep with the margins'
  spread on a second axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from prefopt.plots import _common as C

VERDICT_COLOURS = {"supported": "#2a9d8f", "contradicted": "#e76f51", "inconclusive": "#8d99ae"}


def _interval(ax, x, points: Sequence[dict], **style):
    mean = [p["estimate"] for p in points]
    lo = [p["estimate"] - p["ci"][0] for p in points]
    hi = [p["ci"][1] - p["estimate"] for p in points]
    ax.errorbar(x, mean, yerr=[lo, hi], capsize=3, marker="o", linewidth=2, **style)


def plot_interpolation(metrics: dict):
    curves, n = metrics["curves"], len(metrics["settings"]["seeds"])
    with C.style():
        fig = C.new_figure(11.0, 4.6)
        for i, setting in enumerate(("pref", "rw")):
            ax = fig.add_subplot(1, 2, i + 1)
            points = curves[f"alpha_{setting}"]
            x = list(range(len(points)))
            for seed in range(n):
                ax.plot(x, [p["per_seed"][seed] for p in points], color="0.75", linewidth=0.8, zorder=1)
            _interval(ax, x, points, color=C.method_color("fpo"), label="mean over seeds (95% CI)", zorder=3)
            ax.set_xticks(x, [p["label"] for p in points])
            ax.set_xlabel("α  (EXO = α → 0, DPO = α → 1)")
            ax.set_ylabel("win rate against SFT (%)")
            ax.set_title(f"f-PO α sweep, {setting} setting")
            ax.legend(loc="best")
        fig.suptitle(f"Claim 1: α interpolates between EXO and DPO ({n} seeds; grey: each seed)")
    return fig


def plot_forest(metrics: dict, claim: int, title: str):
    rows = [r for r in metrics["rows"] if r["claim"] == claim]
    with C.style():
        fig = C.new_figure(10.0, 1.2 + 0.7 * len(rows))
        ax = fig.add_subplot(1, 1, 1)
        for y, row in enumerate(rows):
            lo, hi = row["ci"]
            colour = VERDICT_COLOURS[row["verdict"]]
            ax.errorbar(row["estimate"], y, xerr=[[row["estimate"] - lo], [hi - row["estimate"]]], fmt="o",
                        capsize=4, color=colour, linewidth=2)
            ax.annotate(f"{row['verdict']} (MDE {row['mde']:.1f})", (hi, y), xytext=(6, 0),
                        textcoords="offset points", va="center", fontsize=9, color=colour)
            if row["kind"] == "equivalent":
                ax.axvspan(-row["margin"], row["margin"], color="0.92", zorder=0)
        ax.axvline(0, color="0.3", linestyle=":", linewidth=1)
        ax.set_yticks(range(len(rows)), [r["test"] for r in rows])
        ax.invert_yaxis()
        ax.margins(x=0.35)
        ax.set_xlabel("effect: win points against SFT, paired difference (95% CI over seeds, then prompts)")
        ax.set_title(title)
    return fig


def plot_noise(metrics: dict):
    curves = metrics["curves"]
    with C.style():
        fig = C.new_figure(8.0, 4.8)
        ax = fig.add_subplot(1, 1, 1)
        for i, (name, label) in enumerate((("gamma_simpo", "γ-SimPO − SimPO"), ("gamma_dpo", "γ-DPO − DPO"))):
            points = curves[f"noise_{name}"]
            x = [100 * p["noise"] + (i - 0.5) * 0.8 for p in points]  # dodged sideways to keep the bars apart
            _interval(ax, x, points, color=C.method_color(name), label=label)
        ax.axhline(0, color="0.3", linestyle=":", linewidth=1)
        ax.set_xlabel("flipped labels in the training pairs (%)")
        ax.set_ylabel("gain of dynamic margins (win points vs SFT)")
        ax.set_title(f"Claim 4: does the γ-PO gain grow with label noise? ({len(metrics['settings']['seeds'])} seeds)")
        ax.legend(loc="best")
    return fig


def plot_ambiguity(metrics: dict):
    curves = metrics["curves"]
    with C.style():
        fig = C.new_figure(11.0, 4.6)
        ax = fig.add_subplot(1, 2, 1)
        regimes = list(curves["ties_gain"])
        _interval(ax, range(len(regimes)), [curves["ties_gain"][r] for r in regimes],
                  color=C.method_color("gamma_simpo"), linestyle="none")
        ax.set_xticks(range(len(regimes)), ["clear pairs only" if r == "ties0" else "with near ties" for r in regimes])
        ax.set_xlim(-0.5, len(regimes) - 0.5)
        ax.axhline(0, color="0.3", linestyle=":", linewidth=1)
        ax.set_ylabel("γ-SimPO − SimPO (win points vs SFT)")
        ax.set_title("gain by pair regime (γ0/τ = 0.5)")
        ax = fig.add_subplot(1, 2, 2)
        points = curves["tau"]
        x = [p["ratio"] for p in points]
        _interval(ax, x, points, color=C.method_color("gamma_simpo"), label="γ-SimPO − SimPO")
        ax.axhline(0, color="0.3", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.set_xlabel("γ0/τ (near-tie regime)")
        ax.set_ylabel("gain (win points vs SFT)")
        twin = ax.twinx()
        twin.plot(x, [p["margin_sd"] for p in points], color="0.35", linestyle="--", marker="s",
                  label="sd(γ/γ0) of the margins")
        twin.set_ylabel("margin spread sd(γ/γ0)")
        twin.grid(False)
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="best")
        ax.set_title("gain and margin spread along the τ sweep")
        fig.suptitle("Claim 5: does the gain come from ambiguous pairs?")
    return fig


def draw_claims_figures(out_dir: str | Path, metrics: dict) -> list[Path]:
    """The five figures in ``out_dir/figures/``; returns the paths written."""
    figures = Path(out_dir) / "figures"
    jobs = {
        "claim1_interpolation.png": lambda: plot_interpolation(metrics),
        "claim2_tuned_alpha.png": lambda: plot_forest(metrics, 2, "Claim 2: α-PO at a tuned α against its end points"),
        "claim3_dynamic_margins.png": lambda: plot_forest(
            metrics, 3, "Claim 3: dynamic against static margins, mean over flip rates"),
        "claim4_noise.png": lambda: plot_noise(metrics),
        "claim5_ambiguity.png": lambda: plot_ambiguity(metrics),
    }
    written: list[Path] = []
    for name, build in jobs.items():
        written += C.save_figure(build(), figures / name)
    return written
