"""Reward–KL frontier: mean hidden reward against KL to the reference, one labelled point per run, from eval.json.

Each run is one point: x = "kl_to_reference" with "kl_to_reference_ci" as horizontal error bars, y =
"mean_hidden_reward" with "mean_hidden_reward_ci" as vertical error bars, labelled with eval.json "label". The colour
is the method's (one palette for every figure; hues by family: reference-based DPO/IPO/EXO/f-PO, reference-free
SimPO/α-PO, γ-PO, SFT) and the marker is the family's. SFT, when present, sits at KL 0 and its reward is drawn as
a dotted line.

    python figures/frontier.py results/demo/runs --out frontier.png
    python figures/frontier.py results/demo/runs/sft results/demo/runs/dpo results/demo/runs/gamma_simpo --out f.png

Runs without eval.json are skipped with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from prefopt.plots import _common as C

X_LABEL = "KL(π_θ ‖ π_ref) to the reference policy (nats per response)"
Y_LABEL = "mean hidden reward of sampled responses"


def load_eval(run_dir: str | Path) -> dict:
    """``run_dir/eval.json`` as a dict; FileNotFoundError when missing, ValueError when it is not a JSON object."""
    path = Path(run_dir) / "eval.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    ev = C.read_json(path)
    if not isinstance(ev, dict):
        raise ValueError(f"{path} is not a JSON object")
    return ev


def iter_evals(dirs: Sequence[Path]) -> Iterator[tuple[Path, str, dict]]:
    """(run folder, unique label, eval.json) of every run folder that has a readable eval.json; the others are
    skipped with a FigureWarning."""
    for run_dir, label in zip(dirs, C.unique_labels(dirs)):
        if not (run_dir / "eval.json").is_file():
            warnings.warn(f"{run_dir}: no eval.json, skipped", C.FigureWarning, stacklevel=3)
            continue
        try:
            ev = load_eval(run_dir)
        except ValueError as err:
            warnings.warn(f"{err}, skipped", C.FigureWarning, stacklevel=3)
            continue
        yield run_dir, label, ev


def _interval(value: float, ci) -> tuple[float, float]:
    """(lo, hi) of a CI, the point itself when the CI is missing or malformed."""
    try:
        lo, hi = float(ci[0]), float(ci[1])
    except (TypeError, ValueError, IndexError):
        return value, value
    return (min(lo, value), max(hi, value)) if np.isfinite(lo) and np.isfinite(hi) else (value, value)


def load_frontier(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run with an eval.json: run, method, family, label, kl, kl_lo, kl_hi, reward, reward_lo, reward_hi.

    Runs without eval.json (or without a reward or a KL in it) are skipped with a FigureWarning; SFT is put at
    KL 0. Raises ValueError naming the folders when no run is left.
    """
    dirs = C.resolve_run_dirs(run_dirs)
    rows = []
    for run_dir, label, ev in iter_evals(dirs):
        method = C.run_method(run_dir)
        family = C.method_family(method)
        reward, kl = ev.get("mean_hidden_reward"), ev.get("kl_to_reference")
        if family == "sft" and kl is None:
            kl = 0.0
        if not isinstance(reward, (int, float)) or not isinstance(kl, (int, float)):
            warnings.warn(f"{run_dir}/eval.json: no mean_hidden_reward or kl_to_reference, skipped",
                          C.FigureWarning, stacklevel=2)
            continue
        if family == "sft":  # the reference itself: KL 0 by definition
            kl, kl_ci = 0.0, None
        else:
            kl_ci = ev.get("kl_to_reference_ci")
        kl_lo, kl_hi = _interval(float(kl), kl_ci)
        r_lo, r_hi = _interval(float(reward), ev.get("mean_hidden_reward_ci"))
        rows.append(dict(run=run_dir.name, run_dir=str(run_dir), method=method, family=family, label=label,
                         kl=float(kl), kl_lo=kl_lo, kl_hi=kl_hi, reward=float(reward), reward_lo=r_lo,
                         reward_hi=r_hi, n_prompts=ev.get("n_prompts"), n_samples=ev.get("n_samples")))
    if not rows:
        raise ValueError(f"none of the run folders ({', '.join(str(d) for d in dirs)}) has a usable eval.json")
    return pd.DataFrame(rows)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


_OFFSETS = [(7, 7), (7, -7), (-7, 7), (-7, -7), (0, 11), (0, -11), (11, 0), (-11, 0),
            (18, 16), (-18, 16), (18, -18), (-18, -18), (0, 24), (0, -26), (30, 30), (-30, 30), (30, -30), (-30, -30)]


def _place_labels(fig, ax, df: pd.DataFrame) -> list:
    """Label every point, choosing for each the first offset whose text box hits no other label, no point and
    stays inside the axes (else the least-overlapping one). Greedy, in order of x."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    renderer = canvas.get_renderer()
    ax_box = ax.get_window_extent(renderer)
    points = ax.transData.transform(df[["kl", "reward"]].to_numpy(dtype=float))
    from matplotlib.transforms import Bbox

    obstacles = [Bbox.from_extents(x - 6, y - 6, x + 6, y + 6) for x, y in points]
    lows = ax.transData.transform(df[["kl_lo", "reward_lo"]].to_numpy(dtype=float))
    highs = ax.transData.transform(df[["kl_hi", "reward_hi"]].to_numpy(dtype=float))
    bars = []  # error bars: better not crossed, but a label may cross one when nothing else fits
    for (x, y), (x0, y0), (x1, y1) in zip(points, lows, highs):
        bars += [Bbox.from_extents(x - 3, y0, x + 3, y1), Bbox.from_extents(x0, y - 3, x1, y + 3)]
    texts = []
    for i in np.argsort(df["kl"].to_numpy(), kind="stable"):
        row = df.iloc[i]
        best = None
        for dx, dy in _OFFSETS:
            ha = "left" if dx > 0 else ("right" if dx < 0 else "center")
            va = "bottom" if dy > 0 else ("top" if dy < 0 else "center")
            far = abs(dx) > 12 or abs(dy) > 12
            text = ax.annotate(
                row["label"], (row["kl"], row["reward"]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                fontsize=9.5, color=C.method_color(row["method"]), fontweight="bold",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75),
                arrowprops=dict(arrowstyle="-", color="0.5", lw=0.8, shrinkA=0, shrinkB=4) if far else None,
            )
            box = text.get_window_extent(renderer)
            cost = sum(_overlap(box, o) for o in obstacles) + 0.3 * sum(_overlap(box, b) for b in bars)
            outside = (max(0, ax_box.x0 - box.x0) + max(0, box.x1 - ax_box.x1)
                       + max(0, ax_box.y0 - box.y0) + max(0, box.y1 - ax_box.y1))
            cost += outside * box.height * 4
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        obstacles.append(best[2])
        texts.append(best[1])
    return texts


def plot_frontier(df: pd.DataFrame, *, title: str | None = None):
    """Mean hidden reward (y) against KL to the reference (x), CIs as error bars, one labelled point per run."""
    if df.empty:
        raise ValueError("no runs to draw")
    with C.style():
        fig = C.new_figure(9.5, 6.8)
        ax = fig.subplots()
        for _, row in df.iterrows():
            color = C.method_color(row["method"])
            ax.errorbar(
                row["kl"], row["reward"],
                xerr=[[row["kl"] - row["kl_lo"]], [row["kl_hi"] - row["kl"]]],
                yerr=[[row["reward"] - row["reward_lo"]], [row["reward_hi"] - row["reward"]]],
                fmt=C.FAMILY_MARKERS.get(row["family"], "o"), ms=13 if row["family"] == "gamma" else 9,
                color=color, mec="white", mew=0.8, ecolor=color, elinewidth=1.3, capsize=3, alpha=0.95,
                label=row["label"], zorder=3,
            )
        sft = df[df["family"] == "sft"]
        if not sft.empty:
            ax.axhline(sft["reward"].iloc[0], color=C.method_color("sft"), ls=":", lw=1.2, zorder=1)
        ax.set_xlim(left=min(0.0, df["kl_lo"].min()) - 0.06 * max(df["kl_hi"].max(), 1e-9))
        ax.margins(x=0.08, y=0.12)
        ax.set_xlabel(X_LABEL + " →")
        ax.set_ylabel(Y_LABEL + " →")
        ax.set_title(title or "Reward–KL frontier: hidden reward against KL to the reference")
        ax.text(0.99, 0.01, "error bars: 95% CI; up = better reward, right = further from the reference"
                + ("; dotted: SFT reward" if not sft.empty else ""),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8.5, color="0.35")
        handles = C.family_legend_handles(df["family"], markers=True)
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 2), frameon=False,
                   title="method family (colour: method, marker: family)", title_fontsize=9.5)
        _place_labels(fig, ax, df)
    return fig
