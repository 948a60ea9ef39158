"""Win rates against SFT and against the dataset's chosen responses, from each run's eval.json.

    python figures/winrates.py results/demo/runs --out winrates.png

A command-line wrapper of ``prefopt.plots.draw_winrates`` (:mod:`prefopt.plots.winrates`); see figures/README.md.
"""

from __future__ import annotations

import sys
from typing import Sequence

from prefopt.plots import draw_winrates
from prefopt.plots._common import base_parser, run_main


def _build(argv: Sequence[str] | None) -> list:
    parser = base_parser(__doc__.split("\n\n")[0], "winrates.png")
    parser.add_argument("--title", default=None, help="figure title")
    args = parser.parse_args(argv)
    return draw_winrates(args.runs, args.out, title=args.title, pdf=args.pdf)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_build, argv)


if __name__ == "__main__":
    sys.exit(main())
