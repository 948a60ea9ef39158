"""The figures of an experiment, drawn from its run folders only (``results/<experiment>/runs/<run>/``, the layout
``prefopt train`` and the demo's evaluation write; SPEC §9).

One function per figure, each writing a PNG at 150 dpi (``pdf=True``: also a PDF) and returning the paths written:
:func:`draw_margins`, :func:`draw_frontier`, :func:`draw_curves`, :func:`draw_winrates` (run folders) and
:func:`draw_noise_sweep` (a noise sweep's folder); :func:`draw_demo_figures` draws the demo's four and
:func:`draw_claims_figures` the five of ``make claims`` (from its metrics.json). The modules behind
them (:mod:`~prefopt.plots.margins`, :mod:`~prefopt.plots.frontier`, :mod:`~prefopt.plots.curves`,
:mod:`~prefopt.plots.winrates`, :mod:`~prefopt.plots.noise_sweep`, :mod:`~prefopt.plots.claims`) load the data
(``load_*``) and build a ``matplotlib.figure.Figure`` without pyplot (``plot_*``). matplotlib and seaborn are imported
only when a figure is built; no library stage draws: the command line (``prefopt demo``, ``prefopt figures``,
``prefopt noise-sweep``, ``prefopt claims``) and the ``figures/*.py`` scripts call these functions after the library
has written its results.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Optional, Sequence

from prefopt.plots import _common as C

logger = logging.getLogger(__name__)

#: The demo's margin figure: γ-PO's dynamic margins against SimPO's constant one and DPO's none.
MARGIN_FIGURE_METHODS = ("dpo", "simpo", "gamma_simpo", "gamma_dpo")


def draw_margins(run_dirs: Sequence[str | Path], out: str | Path, *, max_points: Optional[int] = None, seed: int = 0,
                 title: Optional[str] = None, pdf: bool = False) -> list[Path]:
    """Per-pair reward gaps and target margins over training (:mod:`prefopt.plots.margins`)."""
    from prefopt.plots import margins

    runs = margins.load_margin_runs(run_dirs, max_points=max_points or margins.MAX_POINTS, seed=seed)
    return C.save_figure(margins.plot_margin_distribution(runs, title=title), out, pdf=pdf)


def draw_frontier(run_dirs: Sequence[str | Path], out: str | Path, *, title: Optional[str] = None,
                  pdf: bool = False) -> list[Path]:
    """Mean hidden reward against KL to the reference (:mod:`prefopt.plots.frontier`)."""
    from prefopt.plots import frontier

    return C.save_figure(frontier.plot_frontier(frontier.load_frontier(run_dirs), title=title), out, pdf=pdf)


def draw_curves(run_dirs: Sequence[str | Path], out: str | Path, *, metrics: Optional[Sequence[str]] = None,
                smooth: int = 1, loss_scale: str = "relative", title: Optional[str] = None,
                pdf: bool = False) -> list[Path]:
    """Training curves from metrics.jsonl (:mod:`prefopt.plots.curves`)."""
    from prefopt.plots import curves

    fig = curves.plot_curves(curves.load_curves(run_dirs), metrics=tuple(metrics or curves.METRICS), smooth=smooth,
                             loss_scale=loss_scale, title=title)
    return C.save_figure(fig, out, pdf=pdf)


def draw_winrates(run_dirs: Sequence[str | Path], out: str | Path, *, title: Optional[str] = None,
                  pdf: bool = False) -> list[Path]:
    """Win rates against SFT and against the chosen responses (:mod:`prefopt.plots.winrates`)."""
    from prefopt.plots import winrates

    return C.save_figure(winrates.plot_winrates(winrates.load_winrates(run_dirs), title=title), out, pdf=pdf)


def draw_noise_sweep(sweep_dir: str | Path, out: str | Path, *, title: Optional[str] = None,
                     pdf: bool = False) -> list[Path]:
    """Win rate against SFT versus the fraction of flipped labels (:mod:`prefopt.plots.noise_sweep`)."""
    from prefopt.plots import noise_sweep

    fig = noise_sweep.plot_noise_sweep(noise_sweep.load_noise_sweep(sweep_dir), title=title)
    return C.save_figure(fig, out, pdf=pdf)


def draw_claims_figures(claims_dir: str | Path, metrics: Optional[dict] = None) -> list[Path]:
    """One figure per claim of ``make claims`` in ``claims_dir/figures/`` (:mod:`prefopt.plots.claims`), from its
    metrics.json unless ``metrics`` is given."""
    from prefopt.plots import claims
    from prefopt.smallworld.claims import read_metrics

    return claims.draw_claims_figures(claims_dir, metrics or read_metrics(claims_dir))


def draw_demo_figures(out_dir: str | Path, run_dirs: Sequence[str | Path]) -> list[Path]:
    """The demo's four figures in ``out_dir/figures/``: margins.png (the γ-PO story: :data:`MARGIN_FIGURE_METHODS`,
    else every trained run), frontier.png, curves.png (preference runs only, so SFT's many steps do not squash their
    axis; smoothed over 5 logs) and winrates.png. A figure that cannot be drawn is logged and skipped."""
    figures_dir = Path(out_dir) / "figures"
    runs = [Path(d) for d in run_dirs]
    trained = [d for d in runs if d.name != "sft"]
    jobs = {
        "margins.png": lambda path: draw_margins([d for d in runs if d.name in MARGIN_FIGURE_METHODS] or trained,
                                                 path),
        "frontier.png": lambda path: draw_frontier(runs, path),
        "curves.png": lambda path: draw_curves(trained, path, smooth=5),
        "winrates.png": lambda path: draw_winrates(runs, path),
    }
    drawn: list[Path] = []
    for png, draw in jobs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", C.FigureWarning)  # runs without the figure's file are expected
                drawn += draw(figures_dir / png)
        except Exception as error:  # noqa: BLE001 - one figure failing must not cost the others
            logger.warning("%s not drawn: %s", png, error)
    return drawn
