"""Reward–KL frontier: mean hidden reward against KL to the reference, one labelled point per run, from eval.json.

    python figures/frontier.py results/demo/runs --out frontier.png
    python figures/frontier.py results/demo/runs/sft results/demo/runs/dpo results/demo/runs/gamma_simpo --out f.png

A command-line wrapper of ``prefopt.plots.draw_frontier`` (:mod:`prefopt.plots.frontier`); see figures/README.md.
"""

from __future__ import annotations

import sys
from typing import Sequence

from prefopt.plots import draw_frontier
from prefopt.plots._common import base_parser, run_main


def _build(argv: Sequence[str] | None) -> list:
    parser = base_parser(__doc__.split("\n\n")[0], "frontier.png")
    parser.add_argument("--title", default=None, help="figure title")
    args = parser.parse_args(argv)
    return draw_frontier(args.runs, args.out, title=args.title, pdf=args.pdf)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_build, argv)


if __name__ == "__main__":
    sys.exit(main())
