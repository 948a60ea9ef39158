"""Per-pair reward gaps r_i and target margins γ_i over training, from each run's margins.jsonl.

One row per run:
  left:  the distribution of the implicit reward gaps r_i in the early / middle / late third of training (violins),
         with the mean target margin (γ0) and r = 0 marked, and the share of pairs with r_i > 0 per phase;
  right: γ_i against r_i, one dot per logged pair, coloured by training step. γ-PO (γ-SimPO, γ-DPO): γ_i rises with
         r_i around a mean of γ0; SimPO / α-PO: a flat line at γ; DPO-style methods: 0.

    python figures/margin_distribution.py results/demo/runs/gamma_simpo results/demo/runs/simpo --out margins.png
    python figures/margin_distribution.py results/demo/runs --out margins.png      # every run folder that has one

Runs without margins.jsonl (SFT, ...) are skipped with a warning. Logs with more than --max-points rows are
subsampled deterministically (fixed seed) before anything is drawn.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from prefopt.plots import _common as C

MAX_POINTS = 20_000
PHASES = ("early", "middle", "late")
COLUMNS = ("step", "example", "reward_gap", "margin", "chosen_reward", "rejected_reward")
GAP_LABEL = "implicit reward gap r_i (method's own definition)"
MARGIN_LABEL = "target margin γ_i (reward units)"


@dataclass
class MarginRun:
    run_dir: Path
    label: str
    method: str
    gamma0: float | None  # β·gamma_beta_ratio from config.yaml (0 for DPO-style runs), None if unknown
    data: pd.DataFrame  # one row per logged pair (after subsampling), with a "phase" column
    n_rows: int  # rows in margins.jsonl before subsampling


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def load_margins(run_dir: str | Path, *, max_points: int = MAX_POINTS, seed: int = 0) -> pd.DataFrame:
    """The rows of ``run_dir/margins.jsonl`` as a DataFrame (columns: step, example, reward_gap, margin,
    chosen_reward, rejected_reward, phase), at most ``max_points`` of them.

    Longer logs are subsampled uniformly without replacement by line, with a fixed seed, so the same file always
    gives the same points; only the chosen lines are parsed. ``df.attrs["n_rows"]`` holds the file's row count.
    Raises FileNotFoundError when the file is missing.
    """
    path = Path(run_dir) / "margins.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, "rb") as fh:
        n_rows = sum(1 for line in fh if line.strip())
    keep = None
    if n_rows > max_points:
        keep = np.zeros(n_rows, dtype=bool)
        keep[np.random.default_rng(seed).choice(n_rows, size=max_points, replace=False)] = True
    rows, bad, index = [], 0, 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            take = keep is None or keep[index]
            index += 1
            if not take:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append([obj.get(c) for c in COLUMNS])
    if bad:
        warnings.warn(f"{path}: skipped {bad} malformed line(s)", C.FigureWarning, stacklevel=2)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df = df.dropna(subset=["step", "reward_gap", "margin"])
    df = df[np.isfinite(df["reward_gap"]) & np.isfinite(df["margin"])].reset_index(drop=True)
    df["step"] = df["step"].astype(int)
    df["phase"] = training_phases(df["step"])
    df.attrs["n_rows"] = n_rows
    return df


def training_phases(steps: pd.Series, names: Sequence[str] = PHASES) -> pd.Categorical:
    """Early / middle / late: equal thirds of the logged step range (fewer bins when fewer steps were logged)."""
    steps = pd.Series(steps)
    if steps.empty:
        return pd.Categorical([], categories=list(names))
    lo, hi = steps.min(), steps.max()
    n = min(len(names), steps.nunique())
    if n <= 1:
        return pd.Categorical([names[0]] * len(steps), categories=list(names[:1]))
    use = [names[0], names[-1]] if n == 2 else list(names[:n])
    edges = np.linspace(lo, hi, n + 1)
    codes = np.clip(np.searchsorted(edges, steps.to_numpy(), side="right") - 1, 0, n - 1)
    return pd.Categorical.from_codes(codes, categories=use)


def load_margin_runs(
    run_dirs: Sequence[str | Path], *, max_points: int = MAX_POINTS, seed: int = 0
) -> list[MarginRun]:
    """margins.jsonl of every run folder (a folder of run folders expands); a run without one, or with an empty one,
    is skipped with a FigureWarning. Raises ValueError naming the folders when none is left."""
    dirs = C.resolve_run_dirs(run_dirs)
    labels = C.unique_labels(dirs)
    runs = []
    for run_dir, label in zip(dirs, labels):
        if not (run_dir / "margins.jsonl").is_file():
            warnings.warn(f"{run_dir}: no margins.jsonl, skipped", C.FigureWarning, stacklevel=2)
            continue
        df = load_margins(run_dir, max_points=max_points, seed=seed)
        if df.empty:
            warnings.warn(f"{run_dir}: margins.jsonl has no usable rows, skipped", C.FigureWarning, stacklevel=2)
            continue
        runs.append(MarginRun(run_dir, label, C.run_method(run_dir), C.target_margin(run_dir), df, df.attrs["n_rows"]))
    if not runs:
        raise ValueError(f"none of the run folders ({', '.join(str(d) for d in dirs)}) has a usable margins.jsonl")
    return runs


# ----------------------------------------------------------------------------------------------------------------------
# Plotting
# ----------------------------------------------------------------------------------------------------------------------


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.ptp(y) <= 1e-9 * max(1.0, np.abs(y).max()) or np.ptp(x) == 0:
        return None
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def margin_summary(run: MarginRun) -> str:
    """One line saying what the margins do: adaptive (with the rank correlation to the gap), constant, or none."""
    gap, margin = run.data["reward_gap"].to_numpy(), run.data["margin"].to_numpy()
    rho = _spearman(gap, margin)
    if rho is not None:
        trend = "γ_i rises with r_i" if rho > 0.3 else ("γ_i falls with r_i" if rho < -0.3 else "no clear trend")
        return (f"per-pair margins: {trend} (Spearman ρ = {rho:+.2f}), "
                f"γ_i in [{margin.min():.3g}, {margin.max():.3g}]")
    value = float(np.median(margin))
    return "no target margin (γ = 0)" if abs(value) < 1e-12 else f"constant margin γ = {value:.2f}"


def _gamma_line(run: MarginRun) -> tuple[float, str]:
    if run.gamma0 is not None:
        if run.gamma0 == 0:
            return 0.0, "γ = 0 (no target margin)"
        return run.gamma0, f"γ0 = β·(γ/β) = {run.gamma0:.2f} (mean margin)"
    mean = float(run.data["margin"].mean())
    return mean, f"mean logged γ_i = {mean:.2f}"


def _draw_gap_violins(ax, run: MarginRun, color) -> None:
    import seaborn as sns

    df = run.data
    phases = [p for p in df["phase"].cat.categories if (df["phase"] == p).any()]
    palette = sns.light_palette(color, n_colors=len(phases) + 2)[2:] if len(phases) > 1 else [color]
    names = []
    for phase in phases:
        at = df.loc[df["phase"] == phase]
        names.append(f"{phase}: steps {at['step'].min()}–{at['step'].max()}\n"
                     f"n = {len(at)}, r_i > 0: {100 * (at['reward_gap'] > 0).mean():.0f}%")
    plot_df = pd.DataFrame({"phase": df["phase"].map(dict(zip(phases, names))).astype(str), "gap": df["reward_gap"]})
    sns.violinplot(
        data=plot_df, x="phase", y="gap", hue="phase", order=names, hue_order=names, palette=palette, ax=ax,
        inner="quart", cut=0, density_norm="width", linewidth=1.0, legend=False,
    )
    ax.axhline(0.0, color="0.35", lw=1.0, ls="-", zorder=0.5, label="r_i = 0 (below: pair ranked wrong)")
    g, g_label = _gamma_line(run)
    if g != 0.0:
        ax.axhline(g, color="black", lw=1.3, ls="--", label=g_label)
    # headroom above the data for the legend, so that it never covers a violin
    ymin, ymax = min(df["reward_gap"].min(), 0.0, g), max(df["reward_gap"].max(), g)
    span = (ymax - ymin) or 1.0
    ax.set_ylim(ymin - 0.05 * span, ymax + 0.22 * span)
    ax.legend(loc="upper left", ncol=2, fontsize=8.5, framealpha=0.9)
    ax.set_xlabel("training phase (equal thirds of the logged steps)")
    ax.set_ylabel(GAP_LABEL)
    ax.set_title(f"{run.label}: reward gaps by training phase", loc="left")


def _draw_margin_scatter(fig, ax, run: MarginRun) -> None:
    from matplotlib.colors import Normalize

    df = run.data
    norm = Normalize(df["step"].min(), max(df["step"].max(), df["step"].min() + 1))
    size = float(np.clip(4000 / max(len(df), 1), 3, 28))
    df = df.sample(frac=1.0, random_state=0)  # draw order shuffled: late steps must not hide early ones
    points = ax.scatter(df["reward_gap"], df["margin"], c=df["step"], cmap="viridis", norm=norm, s=size, alpha=0.75,
                        linewidths=0, rasterized=len(df) > 2000)
    g, g_label = _gamma_line(run)
    ax.axhline(g, color="black", lw=1.3, ls="--", label=g_label)
    ax.axvline(0.0, color="0.35", lw=1.0, label="r_i = 0")
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.85)
    ax.text(0.02, 0.97, margin_summary(run), transform=ax.transAxes, ha="left", va="top", fontsize=9,
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.7", alpha=0.9))
    lo, hi = df["margin"].min(), df["margin"].max()
    if hi - lo > 1e-6 * max(abs(g), 1.0):  # per-pair margins: zoom on their spread
        span = hi - lo
        ax.set_ylim(min(lo, g) - 0.15 * span, max(hi, g) + 0.3 * span)
    else:  # a constant margin: show it against 0 rather than on a microscopic scale
        span = max(abs(g), 0.5)
        ax.set_ylim(min(g, 0.0) - 0.3 * span, max(g, 0.0) + 0.5 * span)
    ax.set_xlabel(GAP_LABEL)
    ax.set_ylabel(MARGIN_LABEL)
    shown = f"{len(df):,} of {run.n_rows:,} pairs" if run.n_rows > len(df) else f"{len(df):,} pairs"
    ax.set_title(f"{run.label}: margin γ_i vs gap r_i ({shown})", loc="left")
    cbar = fig.colorbar(points, ax=ax, pad=0.01, fraction=0.05)
    cbar.set_label("training step")


def plot_margin_distribution(runs: Sequence[MarginRun], *, title: str | None = None):
    """One row per run: gap violins per training phase (left), γ_i vs r_i coloured by step (right)."""
    if not runs:
        raise ValueError("no runs to draw")
    with C.style():
        fig = C.new_figure(15, 1.0 + 4.0 * len(runs))
        axes = fig.subplots(len(runs), 2, squeeze=False, width_ratios=[1, 1.25])
        for (left, right), run in zip(axes, runs):
            _draw_gap_violins(left, run, C.method_color(run.method))
            _draw_margin_scatter(fig, right, run)
        fig.suptitle(title or "Per-pair reward gaps r_i and target margins γ_i over training")
    return fig


def plot_margins_at_steps(run: MarginRun, steps: Sequence[int] | None = None, *, n_steps: int = 4):
    """γ_i against r_i at a few logged steps of one run (default: ``n_steps`` steps spread over training), one
    line per step, sorted by the gap: for γ-PO each line rises, and its pool mean is γ0."""
    from matplotlib import colormaps

    df = run.data
    logged = np.sort(df["step"].unique())
    if steps is None:
        steps = logged[np.unique(np.linspace(0, len(logged) - 1, min(n_steps, len(logged))).round().astype(int))]
    steps = [int(s) for s in steps if s in set(logged)]
    if not steps:
        raise ValueError(f"{run.run_dir}: none of the requested steps is in margins.jsonl")
    cmap = colormaps["viridis"]
    with C.style():
        fig = C.new_figure(8.5, 5.2)
        ax = fig.subplots()
        for i, step in enumerate(steps):
            at = df[df["step"] == step].sort_values("reward_gap")
            ax.plot(at["reward_gap"], at["margin"], marker="o", ms=4, lw=1.2,
                    color=cmap(i / max(len(steps) - 1, 1)), label=f"step {step} ({len(at)} pairs)")
        g, g_label = _gamma_line(run)
        ax.axhline(g, color="black", lw=1.3, ls="--", label=g_label)
        ax.axvline(0.0, color="0.35", lw=1.0)
        ax.set_xlabel(GAP_LABEL)
        ax.set_ylabel(MARGIN_LABEL)
        ax.set_title(f"{run.label}: γ_i vs r_i at {len(steps)} logged steps")
        ax.legend(loc="best", fontsize=9, framealpha=0.85)
    return fig
