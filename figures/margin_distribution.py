"""Per-pair reward gaps r_i and target margins γ_i over training, from each run's margins.jsonl.

    python figures/margin_distribution.py results/demo/runs/gamma_simpo results/demo/runs/simpo --out margins.png
    python figures/margin_distribution.py results/demo/runs --out margins.png      # every run folder that has one

A command-line wrapper of ``prefopt.plots.draw_margins`` (:mod:`prefopt.plots.margins`); see figures/README.md.
"""

from __future__ import annotations

import sys
from typing import Sequence

from prefopt.plots import draw_margins
from prefopt.plots._common import base_parser, run_main


def _build(argv: Sequence[str] | None) -> list:
    parser = base_parser(__doc__.split("\n\n")[0], "margins.png")
    parser.add_argument("--max-points", type=int, default=20_000,
                        help="subsample each run's margins.jsonl to at most this many rows (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the deterministic subsample (default 0)")
    parser.add_argument("--title", default=None, help="figure title")
    args = parser.parse_args(argv)
    return draw_margins(args.runs, args.out, max_points=args.max_points, seed=args.seed, title=args.title,
                        pdf=args.pdf)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_build, argv)


if __name__ == "__main__":
    sys.exit(main())
