"""Win rate against SFT versus the fraction of flipped preference labels, from a noise sweep's run folders.

    python figures/noise_sweep.py results/noise --out results/noise/noise.png

A command-line wrapper of ``prefopt.plots.draw_noise_sweep`` (:mod:`prefopt.plots.noise_sweep`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from prefopt.plots import draw_noise_sweep
from prefopt.plots._common import run_main


def _build(argv: Sequence[str] | None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="the noise sweep's folder (results/noise)")
    parser.add_argument("--out", default="noise.png", help="output PNG (default: noise.png)")
    parser.add_argument("--pdf", action="store_true", help="also write a PDF next to the PNG")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    return draw_noise_sweep(args.sweep, args.out, title=args.title, pdf=args.pdf)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_build, argv)


if __name__ == "__main__":
    sys.exit(main())
