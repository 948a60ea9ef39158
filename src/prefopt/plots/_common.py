"""Shared helpers of the figures: run-folder discovery, tolerant readers, the method palette, saving, and the
command-line helpers of the ``figures/*.py`` wrappers.

Everything here reads run folders only (``results/<experiment>/runs/<run>/``: metrics.jsonl, margins.jsonl,
eval.json, config.yaml, run_info.json): the figures are drawn from files, so they work on results copied from
another machine. matplotlib and seaborn are imported only when a figure is built.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state), so building them is headless and
side-effect free: importing these modules in a notebook does not change its backend or its rcParams.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

if TYPE_CHECKING:  # matplotlib is imported only when a figure is built
    from matplotlib.figure import Figure

# Files `prefopt train` and the demo's evaluation write into a run folder (README: "The run folder"; eval.json:
# prefopt.smallworld.demo.Pipeline._evaluate).
RUN_FILES = ("metrics.jsonl", "margins.jsonl", "eval.json", "config.yaml", "run_info.json", "metrics.json")

DPI = 150


class FigureWarning(UserWarning):
    """A run folder (or part of one) was skipped; the figure is still drawn from the others."""


# ----------------------------------------------------------------------------------------------------------------------
# Methods, families and the one palette every figure uses
# ----------------------------------------------------------------------------------------------------------------------

FAMILIES = {
    "gamma": "γ-PO (dynamic margins)",
    "ref_free": "reference-free (SimPO, α-PO, ...)",
    "ref_based": "reference-based (DPO, IPO, EXO, f-PO, ...)",
    "sft": "SFT (the reference policy)",
    "other": "other",
}
# One hue per family, one shade per method; keyed by the loss names of prefopt's registry (plus sft).
METHOD_COLORS = {
    # γ-PO: warm
    "gamma_simpo": "#d62728",
    "gamma_dpo": "#ff7f0e",
    # reference-free: greens
    "simpo": "#2ca02c",
    "alphapo": "#0b6e4f",
    "cpo": "#8fbc3b",
    "orpo": "#17a589",
    # reference-based: blues and purples
    "dpo": "#1f77b4",
    "ipo": "#17becf",
    "hinge": "#6baed6",
    "rdpo": "#08306b",
    "exo": "#9467bd",
    "dpo_k": "#b39ddb",
    "fpo": "#5b2c83",
    # the reference
    "sft": "#555555",
}
METHOD_FAMILY = {
    "gamma_simpo": "gamma", "gamma_dpo": "gamma",
    "simpo": "ref_free", "alphapo": "ref_free", "cpo": "ref_free", "orpo": "ref_free",
    "dpo": "ref_based", "ipo": "ref_based", "hinge": "ref_based", "rdpo": "ref_based", "exo": "ref_based",
    "dpo_k": "ref_based", "fpo": "ref_based",
    "sft": "sft",
}
FAMILY_ORDER = ["gamma", "ref_free", "ref_based", "sft", "other"]
FAMILY_MARKERS = {"gamma": "*", "ref_free": "s", "ref_based": "o", "sft": "X", "other": "^"}
_FALLBACK = ["#8c564b", "#e377c2", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#843c39"]


def canonical_method(name: str | None) -> str | None:
    """The palette key of a method name: exact, else the longest registry name it starts with
    (``fpo_alpha_rw`` -> ``fpo``, ``gamma_simpo_tau1`` -> ``gamma_simpo``), else None."""
    if not name:
        return None
    key = str(name).strip().lower().replace("-", "_").replace("γ", "gamma_").replace("__", "_")
    if key in METHOD_COLORS:
        return key
    matches = [m for m in METHOD_COLORS if key.startswith(m + "_") or key.startswith(m)]
    return max(matches, key=len) if matches else None


def method_family(name: str | None) -> str:
    canon = canonical_method(name)
    if canon is not None:
        return METHOD_FAMILY[canon]
    key = str(name or "").lower()
    if "gamma" in key or "γ" in key:
        return "gamma"
    if "sft" in key:
        return "sft"
    return "other"


def method_color(name: str | None) -> str:
    """The colour of a method in every figure (stable for unknown names too)."""
    canon = canonical_method(name)
    if canon is not None:
        return METHOD_COLORS[canon]
    key = str(name or "")
    return _FALLBACK[sum(key.encode()) % len(_FALLBACK)]


def family_legend_handles(families: Iterable[str], *, markers: bool = False) -> list:
    """Proxy legend entries, one per family present, in the fixed family order."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    present = [f for f in FAMILY_ORDER if f in set(families)]
    reps = {f: next((m for m, fam in METHOD_FAMILY.items() if fam == f), None) for f in present}
    handles = []
    for fam in present:
        color = method_color(reps[fam]) if reps[fam] else "#7f7f7f"
        if markers:
            handles.append(Line2D([], [], ls="", marker=FAMILY_MARKERS[fam], ms=9, color=color, label=FAMILIES[fam]))
        else:
            handles.append(Patch(color=color, label=FAMILIES[fam]))
    return handles


# ----------------------------------------------------------------------------------------------------------------------
# Run folders
# ----------------------------------------------------------------------------------------------------------------------


def _has_run_files(path: Path) -> bool:
    return any((path / f).is_file() for f in RUN_FILES)


def resolve_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders named on the command line; a folder holding run folders (``results/<exp>/runs``) expands to them.

    Raises ValueError naming the folder when a path does not exist or holds no run files at all.
    """
    if not paths:
        raise ValueError("no run folders given")
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ValueError(f"{path}: no such run folder")
        if _has_run_files(path):
            runs.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and _has_run_files(p))
        if not children:
            raise ValueError(
                f"{path} is not a run folder: it holds none of {', '.join(RUN_FILES)} (nor run folders that do)"
            )
        runs.extend(sorted(children, key=lambda p: (FAMILY_ORDER.index(method_family(run_method(p))), p.name)))
    return runs


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def iter_jsonl(path: Path) -> Iterator[dict]:
    """The objects of a JSONL file; blank lines are skipped, and so is a malformed (e.g. half-written) line, with
    one warning per file."""
    bad = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(obj, dict):
                yield obj
    if bad:
        warnings.warn(f"{path}: skipped {bad} malformed line(s)", FigureWarning, stacklevel=2)


def _config_loss(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        import yaml

        config = yaml.safe_load(path.read_text()) or {}
    except Exception:  # noqa: BLE001 - a broken config must not stop a figure
        return {}
    loss = config.get("loss") if isinstance(config, dict) else None
    return loss if isinstance(loss, dict) else {}


def run_method(run_dir: Path) -> str:
    """The method of a run: eval.json "method", else run_info.json "loss", else config.yaml loss.name, else the
    folder name."""
    run_dir = Path(run_dir)
    ev = read_json(run_dir / "eval.json") or {}
    if isinstance(ev.get("method"), str) and ev["method"]:
        return ev["method"]
    info = read_json(run_dir / "run_info.json") or {}
    if isinstance(info.get("loss"), str) and info["loss"]:
        return info["loss"]
    name = _config_loss(run_dir).get("name")
    if isinstance(name, str) and name:
        return name
    return run_dir.name


def run_label(run_dir: Path) -> str:
    """The display name of a run: eval.json "label", else the run folder's name."""
    ev = read_json(Path(run_dir) / "eval.json") or {}
    label = ev.get("label")
    return label if isinstance(label, str) and label else Path(run_dir).name


def unique_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Display labels, made unique by appending the folder name where two runs share one."""
    labels = [run_label(d) for d in run_dirs]
    return [f"{lab} ({Path(d).name})" if labels.count(lab) > 1 else lab for lab, d in zip(labels, run_dirs)]


def target_margin(run_dir: Path) -> float | None:
    """γ0 = β·gamma_beta_ratio from the run's config.yaml for SimPO/γ-PO/α-PO-style runs, 0 for margin-free
    methods, None when the config does not say."""
    loss = _config_loss(run_dir)
    if not loss:
        return None
    beta, ratio = loss.get("beta"), loss.get("gamma_beta_ratio")
    if isinstance(beta, (int, float)) and isinstance(ratio, (int, float)):
        return float(beta) * float(ratio)
    return 0.0 if "gamma_beta_ratio" not in loss else None


# ----------------------------------------------------------------------------------------------------------------------
# Style and output
# ----------------------------------------------------------------------------------------------------------------------


@contextmanager
def style() -> Iterator[None]:
    """seaborn's whitegrid look with readable font sizes, applied only while a figure is built."""
    import matplotlib
    import seaborn as sns

    rc = dict(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=1.0))
    rc.update({
        "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
        "legend.fontsize": 9.5, "figure.titlesize": 14, "figure.dpi": DPI, "savefig.dpi": DPI,
        "axes.titleweight": "bold", "figure.titleweight": "bold",
    })
    with matplotlib.rc_context(rc):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with constrained (tight) layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, out: str | Path, *, pdf: bool = False) -> list[Path]:
    """Write ``out`` as PNG at 150 dpi (and the same name with .pdf when asked); returns the paths written."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        out = out.with_suffix(".png") if out.suffix else out.with_name(out.name + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png")
    written = [out]
    if pdf:
        fig.savefig(out.with_suffix(".pdf"), format="pdf")
        written.append(out.with_suffix(".pdf"))
    return written


def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR",
        help="run folders (results/<experiment>/runs/<method>), or a folder of run folders (results/<experiment>/runs)",
    )
    parser.add_argument("--out", default=default_out, help=f"output PNG (default: {default_out})")
    parser.add_argument("--pdf", action="store_true", help="also write a PDF next to the PNG")
    return parser


def run_main(build, argv: Sequence[str] | None) -> int:
    """Shared body of every script's main(): warnings go to stderr as one line each, a ValueError (no usable run
    folder) exits with its message."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FigureWarning)
        try:
            written = build(argv)
        except ValueError as err:
            for w in caught:
                if issubclass(w.category, FigureWarning):
                    print(f"warning: {w.message}", file=sys.stderr)
            raise SystemExit(f"error: {err}") from None
    for w in caught:
        if issubclass(w.category, FigureWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
    return 0

