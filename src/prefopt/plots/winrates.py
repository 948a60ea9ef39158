"""Win rates against SFT and against the dataset's chosen responses, from each run's eval.json.

One horizontal bar per run and comparison ("win_rate_vs_sft", "win_rate_vs_chosen"): the solid segment is the share
of judgements won, the hatched segment the share tied; the black diamond is the win rate (ties count ½) with its
95% CI as error bar. Runs are sorted by win rate against SFT (best on top), runs without it by win rate against
the chosen responses. Colours are the methods' (the same palette as every other figure).

    python figures/winrates.py results/demo/runs --out winrates.png

Runs without eval.json, or whose eval.json has neither comparison, are skipped with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from prefopt.plots import _common as C

COMPARISONS = {"win_rate_vs_sft": "SFT", "win_rate_vs_chosen": "chosen responses"}


def load_winrates(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run and comparison: run, label, method, comparison, baseline, win_rate, ci_lo, ci_hi, wins, ties,
    losses, invalid, n, win_share, tie_share. Skips (with a FigureWarning) runs without eval.json or without win
    rates; raises ValueError naming the folders when none is left."""
    from prefopt.plots.frontier import iter_evals

    dirs = C.resolve_run_dirs(run_dirs)
    rows = []
    for run_dir, label, ev in iter_evals(dirs):
        found = 0
        for key, baseline in COMPARISONS.items():
            wr = ev.get(key)
            if not isinstance(wr, dict) or not isinstance(wr.get("win_rate"), (int, float)):
                continue
            n = wr.get("n") or 0
            wins, ties = wr.get("wins") or 0, wr.get("ties") or 0
            rate = float(wr["win_rate"])
            ci = wr.get("ci") or [rate, rate]
            rows.append(dict(
                run=run_dir.name, label=label, method=C.run_method(run_dir), comparison=key, baseline=baseline,
                win_rate=rate, ci_lo=min(float(ci[0]), rate), ci_hi=max(float(ci[1]), rate), wins=wins, ties=ties,
                losses=wr.get("losses"), invalid=wr.get("invalid"), n=n,
                win_share=wins / n if n else np.nan, tie_share=ties / n if n else np.nan,
            ))
            found += 1
        if not found:
            warnings.warn(f"{run_dir}/eval.json: no win rates, skipped", C.FigureWarning, stacklevel=2)
    if not rows:
        raise ValueError(f"none of the run folders ({', '.join(str(d) for d in dirs)}) has win rates in eval.json")
    return pd.DataFrame(rows)


def _order(df: pd.DataFrame) -> list[str]:
    """Labels sorted by win rate vs SFT (descending), then by win rate vs chosen for runs without the former."""
    wide = df.pivot_table(index="label", columns="comparison", values="win_rate", aggfunc="first")
    for key in COMPARISONS:
        if key not in wide:
            wide[key] = np.nan
    wide = wide.assign(_missing=wide["win_rate_vs_sft"].isna())
    wide = wide.sort_values(["_missing", "win_rate_vs_sft", "win_rate_vs_chosen"], ascending=[True, False, False])
    return list(wide.index)


def plot_winrates(df: pd.DataFrame, *, title: str | None = None):
    """Horizontal bars (wins solid, ties hatched) and win rate ± 95% CI per run, one panel per comparison."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if df.empty:
        raise ValueError("no win rates to draw")
    order = _order(df)
    comparisons = [k for k in COMPARISONS if (df["comparison"] == k).any()]
    methods = df.drop_duplicates("label").set_index("label")["method"]
    with C.style():
        fig = C.new_figure(6.2 * len(comparisons) + 0.6, 1.6 + 0.42 * len(order))
        axes = fig.subplots(1, len(comparisons), squeeze=False, sharey=True)[0]
        y = {label: i for i, label in enumerate(order)}
        for ax, key in zip(axes, comparisons):
            part = df[df["comparison"] == key].set_index("label")
            for label in order:
                i, color = y[label], C.method_color(methods[label])
                if label not in part.index:
                    baseline = key == "win_rate_vs_sft" and C.method_family(methods[label]) == "sft"
                    ax.text(0.01, i, "— (the baseline itself)" if baseline else "not evaluated", va="center",
                            ha="left", fontsize=9, color="0.45")
                    continue
                row = part.loc[label]
                win, tie = row["win_share"], row["tie_share"]
                if np.isfinite(win):
                    ax.barh(i, win, height=0.62, color=color, alpha=0.85, edgecolor=color)
                    ax.barh(i, tie, left=win, height=0.62, facecolor="white", edgecolor=color, hatch="////",
                            linewidth=1.0)
                xerr = [[row["win_rate"] - row["ci_lo"]], [row["ci_hi"] - row["win_rate"]]]
                ax.errorbar(row["win_rate"], i, xerr=xerr, fmt="D", ms=5.5, color="black", ecolor="black",
                            elinewidth=1.3, capsize=3, zorder=4)
                right = np.nanmax([row["ci_hi"], (win + tie) if np.isfinite(win) else np.nan])
                ax.text(right + 0.015, i, f"{100 * row['win_rate']:.0f}%", va="center", ha="left", fontsize=9.5)
            ax.axvline(0.5, color="0.3", ls="--", lw=1.0, zorder=1)
            ax.set_xlim(0, 1.0)
            ax.set_xticks(np.linspace(0, 1, 6))
            ax.xaxis.set_major_formatter(lambda v, _pos: f"{100 * v:.0f}%")
            ax.set_xlabel(f"share of judgements vs {COMPARISONS[key]} (both orders)")
            ax.set_title(f"Win rate vs {COMPARISONS[key]}")
            ax.grid(axis="y", visible=False)
        axes[0].set_yticks(range(len(order)), order)
        axes[0].set_ylim(len(order) - 0.5, -0.5)  # best on top
        axes[0].set_ylabel("run")
        handles = [
            Patch(facecolor="0.45", edgecolor="0.45", label="wins (bar colour: method)"),
            Patch(facecolor="white", edgecolor="0.3", hatch="////", label="ties"),
            Line2D([], [], marker="D", color="black", ms=5.5, lw=1.3, label="win rate (ties count ½) ± 95% CI"),
            Line2D([], [], color="0.3", ls="--", lw=1.0, label="50%"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)
        fig.suptitle(title or "Win rates judged against SFT and against the chosen responses")
    return fig
