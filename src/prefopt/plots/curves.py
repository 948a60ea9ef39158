"""Training curves from each run's metrics.jsonl: loss, reward accuracy and reward margin against step.

One small-multiple panel per metric, one line per run (legend: eval.json "label", else the run folder's name). The
losses of different methods live on different scales (DPO starts at log 2, SimPO at log(1 + e^γ), IPO at 1/(4τ²),
...), so by default each run's loss is divided by its first logged value (--loss-scale relative, said in the axis
label); --loss-scale log draws raw losses on a log axis, --loss-scale raw as they are. --smooth N draws a rolling
mean over N logged steps over the faint raw curve.

    python figures/curves.py results/demo/runs --out curves.png
    python figures/curves.py results/demo/runs/dpo results/demo/runs/gamma_simpo --smooth 5 --out curves.png

Only training log lines are drawn (lines with "loss"; the final summary line with "train_loss" and evaluation lines
with "eval_loss" are left out). Runs without metrics.jsonl (e.g. a run folder that only has eval.json) are skipped
with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from prefopt.plots import _common as C

METRICS = ("loss", "rewards/accuracies", "rewards/margins")
LOSS_SCALES = ("relative", "log", "raw")
_TITLES = {
    "loss": "Training loss",
    "rewards/accuracies": "Reward accuracy",
    "rewards/margins": "Implicit reward margin",
    "rewards/chosen": "Implicit reward of chosen responses",
    "rewards/rejected": "Implicit reward of rejected responses",
    "logps/chosen": "Log-prob of chosen responses",
    "logps/rejected": "Log-prob of rejected responses",
    "margins/mean": "γ-PO target margin, batch mean",
    "margins/std": "γ-PO target margin, batch std",
    "grad_norm": "Gradient norm",
    "learning_rate": "Learning rate",
}
_YLABELS = {
    "rewards/accuracies": "share of pairs with r(y_w) > r(y_l)",
    "rewards/margins": "mean r(y_w) − r(y_l)\n(implicit reward, method's own definition)",
    "rewards/chosen": "mean r(y_w) (method's own definition)",
    "rewards/rejected": "mean r(y_l) (method's own definition)",
    "logps/chosen": "mean log π_θ(y_w | x) (nats)",
    "logps/rejected": "mean log π_θ(y_l | x) (nats)",
    "margins/mean": "mean γ_i over the logged pairs",
    "margins/std": "std of γ_i over the logged pairs",
    "grad_norm": "‖∇‖ before clipping",
    "learning_rate": "learning rate",
}
_LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class CurveRun:
    run_dir: Path
    label: str
    method: str
    data: pd.DataFrame  # training log lines: "step" plus one column per logged metric


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """The training log lines of ``run_dir/metrics.jsonl`` (those with "loss"), sorted by step, one column per
    numeric metric. A step logged twice (a resumed run) keeps its last line. FileNotFoundError when missing."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rows = [r for r in C.iter_jsonl(path) if "loss" in r and "step" in r]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame({"step": pd.Series(dtype=int)})
    df = df.apply(pd.to_numeric, errors="coerce").dropna(axis=1, how="all").dropna(subset=["step"])
    df["step"] = df["step"].astype(int)
    return df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def load_curves(run_dirs: Sequence[str | Path]) -> list[CurveRun]:
    """metrics.jsonl of every run folder (a folder of run folders expands); runs without one, or without training
    lines, are skipped with a FigureWarning. Raises ValueError naming the folders when none is left."""
    dirs = C.resolve_run_dirs(run_dirs)
    labels = C.unique_labels(dirs)
    runs = []
    for run_dir, label in zip(dirs, labels):
        if not (run_dir / "metrics.jsonl").is_file():
            warnings.warn(f"{run_dir}: no metrics.jsonl, skipped", C.FigureWarning, stacklevel=2)
            continue
        df = load_metrics(run_dir)
        if df.empty:
            warnings.warn(f"{run_dir}: metrics.jsonl has no training lines, skipped", C.FigureWarning, stacklevel=2)
            continue
        runs.append(CurveRun(run_dir, label, C.run_method(run_dir), df))
    if not runs:
        raise ValueError(f"none of the run folders ({', '.join(str(d) for d in dirs)}) has a usable metrics.jsonl")
    return runs


def _loss_values(run: CurveRun, scale: str) -> pd.Series | None:
    loss = run.data["loss"]
    if scale == "relative":
        first = loss.dropna()
        first = first.iloc[0] if len(first) else np.nan
        if not np.isfinite(first) or first == 0:
            warnings.warn(f"{run.run_dir}: first logged loss is {first}, cannot normalise; drawn as it is",
                          C.FigureWarning, stacklevel=3)
            return loss
        return loss / abs(first)
    if scale == "log" and (loss <= 0).any():
        warnings.warn(f"{run.run_dir}: non-positive losses are left out of the log axis", C.FigureWarning,
                      stacklevel=3)
        return loss.where(loss > 0)
    return loss


def _loss_ylabel(scale: str) -> str:
    return {
        "relative": "loss ÷ its first logged value\n(relative: each method's loss has its own scale)",
        "log": "loss (log axis; each method's loss\nhas its own scale)",
        "raw": "loss (each method's own scale)",
    }[scale]


def plot_curves(
    runs: Sequence[CurveRun], *, metrics: Sequence[str] = METRICS, smooth: int = 1, loss_scale: str = "relative",
    title: str | None = None,
):
    """One panel per metric, one line per run; ``smooth`` > 1 draws a rolling mean over the faint raw curve."""
    if not runs:
        raise ValueError("no runs to draw")
    if loss_scale not in LOSS_SCALES:
        raise ValueError(f"loss_scale must be one of {LOSS_SCALES}, got {loss_scale!r}")
    smooth = max(int(smooth), 1)
    # runs that share a method share its colour: tell them apart by line style
    seen: dict[str, int] = {}
    styles = []
    for run in runs:
        key = C.canonical_method(run.method) or run.method
        styles.append(_LINESTYLES[seen.get(key, 0) % len(_LINESTYLES)])
        seen[key] = seen.get(key, 0) + 1
    with C.style():
        fig = C.new_figure(5.0 * len(metrics) + 0.5, 4.9)
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        handles = {}
        for ax, metric in zip(axes, metrics):
            drawn = 0
            for run, ls in zip(runs, styles):
                if metric not in run.data:
                    continue
                values = _loss_values(run, loss_scale) if metric == "loss" else run.data[metric]
                steps = run.data["step"]
                color = C.method_color(run.method)
                if smooth > 1:
                    ax.plot(steps, values, color=color, lw=0.8, alpha=0.25, ls=ls)
                    values = values.rolling(smooth, min_periods=1).mean()
                (line,) = ax.plot(steps, values, color=color, lw=1.8, ls=ls, label=run.label)
                handles.setdefault(run.label, line)
                drawn += 1
            name = _TITLES.get(metric, metric)
            ax.set_title(name + (f" (rolling mean, {smooth} logs)" if smooth > 1 else ""), fontsize=11.5)
            ax.set_xlabel("training step (optimizer updates)")
            ax.set_ylabel(_loss_ylabel(loss_scale) if metric == "loss" else _YLABELS.get(metric, metric))
            if metric == "loss" and loss_scale == "log":
                from matplotlib.ticker import FuncFormatter

                ax.set_yscale("log")
                plain = FuncFormatter(lambda v, _pos: f"{v:g}")
                ax.yaxis.set_major_formatter(plain)
                ax.yaxis.set_minor_formatter(plain)
            if metric == "loss" and loss_scale == "relative":
                ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
            if metric == "rewards/accuracies":
                ax.set_ylim(-0.03, 1.03)
                ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
            if metric == "rewards/margins":
                ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
            if not drawn:
                ax.text(0.5, 0.5, f"no run logs {metric!r}", transform=ax.transAxes, ha="center", va="center",
                        color="0.4")
        fig.suptitle(title or "Training curves")
        fig.legend(handles=list(handles.values()), labels=list(handles), loc="outside lower center",
                   ncol=min(len(handles), 6), frameon=False)
    return fig
