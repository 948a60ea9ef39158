"""Win rate against SFT versus the fraction of flipped preference labels, from a noise sweep's run folders.

Reads every ``eval.json`` below the sweep folder (``results/noise/seed<s>/noise<n>/runs/<method>/eval.json``; each
records its ``noise`` and ``seed``), averages each method's win rate against SFT over seeds, and draws one line per
method with a 95% t-interval across seeds. This is γ-PO's claim under test: robustness to noisy pairs.

    python figures/noise_sweep.py results/noise --out results/noise/noise.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prefopt.plots import _common as C

#: Two-sided 97.5% quantiles of Student's t by degrees of freedom (a 95% interval from a handful of seeds).
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def load_noise_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per (method, seed, noise): win rate against SFT, from every eval.json below ``sweep_dir``."""
    rows = []
    for path in sorted(Path(sweep_dir).glob("**/runs/*/eval.json")):
        result = C.read_json(path)
        if not result or result.get("method") == "sft" or "noise" not in result:
            continue
        rows.append({"method": result["method"], "label": result.get("label", result["method"]),
                     "seed": result.get("seed"), "noise": float(result["noise"]),
                     "win_rate": 100 * result["win_rate_vs_sft"]["win_rate"]})
    if not rows:
        raise ValueError(f"no eval.json with a noise level below {sweep_dir} (run `make noise-sweep` first)")
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean win rate per (method, noise) and the half-width of a 95% t-interval across seeds (0 for one seed)."""
    grouped = df.groupby(["method", "label", "noise"])["win_rate"]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    out["half"] = [
        T975.get(int(n) - 1, 1.96) * s / np.sqrt(n) if n > 1 else 0.0 for s, n in zip(out["std"].fillna(0), out["count"])
    ]
    return out


def plot_noise_sweep(df: pd.DataFrame, *, title: str | None = None):
    summary = summarise(df)
    seeds = int(df.groupby(["method", "noise"])["seed"].nunique().max())
    with C.style():
        fig = C.new_figure(8.0, 5.2)
        ax = fig.add_subplot(1, 1, 1)
        methods = list(dict.fromkeys(summary["method"]))
        for i, method in enumerate(methods):
            rows = summary[summary["method"] == method].sort_values("noise")
            dodge = 0.6 * (i - (len(methods) - 1) / 2)  # percentage points: keeps overlapping error bars apart
            ax.errorbar(100 * rows["noise"] + dodge, rows["mean"], yerr=rows["half"], marker="o", capsize=3,
                        linewidth=1.8, color=C.method_color(method), label=rows["label"].iloc[0])
        ax.axhline(50, color="0.4", linestyle=":", linewidth=1)
        ax.set_xlabel("flipped preference labels in the training pairs (%; methods dodged sideways to stay legible)")
        ax.set_ylabel("win rate against SFT (%, ties ½)")
        ax.set_title(title or f"Robustness to label noise ({seeds} seed{'s' * (seeds > 1)}; 95% t-interval over seeds)")
        ax.legend(loc="best", frameon=True)
    return fig
