"""Training curves from each run's metrics.jsonl: loss, reward accuracy and reward margin against step.

    python figures/curves.py results/demo/runs --out curves.png
    python figures/curves.py results/demo/runs/dpo results/demo/runs/gamma_simpo --smooth 5 --out curves.png

A command-line wrapper of ``prefopt.plots.draw_curves`` (:mod:`prefopt.plots.curves`); see figures/README.md.
"""

from __future__ import annotations

import sys
from typing import Sequence

from prefopt.plots import draw_curves
from prefopt.plots.curves import LOSS_SCALES, METRICS
from prefopt.plots._common import base_parser, run_main


def _build(argv: Sequence[str] | None) -> list:
    parser = base_parser(__doc__.split("\n\n")[0], "curves.png")
    parser.add_argument("--smooth", type=int, default=1, metavar="N",
                        help="rolling mean over N logged steps (default 1: no smoothing)")
    parser.add_argument("--loss-scale", choices=LOSS_SCALES, default="relative",
                        help="relative: divide each run's loss by its first value (default); log: log axis; raw")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS),
                        help=f"metrics.jsonl keys to draw, one panel each (default: {' '.join(METRICS)})")
    parser.add_argument("--title", default=None, help="figure title")
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error("--smooth must be at least 1")
    return draw_curves(args.runs, args.out, metrics=args.metrics, smooth=args.smooth, loss_scale=args.loss_scale,
                       title=args.title, pdf=args.pdf)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_build, argv)


if __name__ == "__main__":
    sys.exit(main())
