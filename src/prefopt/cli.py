"""The ``prefopt`` command line. Each subcommand is a thin wrapper over the library."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from prefopt import __version__


def _list_losses(args: argparse.Namespace) -> int:
    from prefopt.losses import LOSSES, REQUIRED

    for spec in LOSSES.values():
        inputs = "averaged" if spec.averaged_inputs else "summed"
        shape = "[B, K] groups" if spec.group else "pairs"
        flags = [shape, f"{inputs} log-probs", "reference" if spec.needs_reference else "reference-free"]
        if spec.dynamic_margins:
            flags.append("γ-PO dynamic margins")
        print(f"{spec.name:<12} {spec.description}  ({', '.join(flags)})")
        if args.verbose:
            for key, hp in spec.hparams.items():
                default = "required" if hp.default is REQUIRED else f"default {hp.default!r}"
                print(f"    {key:<18} {default:<16} {hp.rule}; {hp.help}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefopt", description="Offline preference optimisation: f-PO, γ-PO and their baselines."
    )
    parser.add_argument("--version", action="version", version=f"prefopt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    losses = commands.add_parser("losses", help="list the registered losses and their hyper-parameters")
    losses.add_argument("-v", "--verbose", action="store_true", help="also list each loss's hyper-parameters")
    losses.set_defaults(func=_list_losses)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
