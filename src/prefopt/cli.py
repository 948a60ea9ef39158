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


def _train(args: argparse.Namespace) -> int:
    from prefopt.config import load_config
    from prefopt.train import run_training

    config = load_config(args.config, args.overrides)
    _setup_logging()
    metrics = run_training(config, argv=["prefopt", "train", args.config, *args.overrides])
    print(f"run folder: {config.run_dir}  (steps: {metrics['global_step']}, {metrics['wall_seconds']:.1f} s)")
    return 0


def _tiny(args: argparse.Namespace) -> int:
    from prefopt.tiny import EXAMPLE_CONFIGS, write_example

    directory = write_example(args.directory)
    print(f"wrote a tiny model, data and configs to {directory}; try:")
    for name in EXAMPLE_CONFIGS:
        print(f"  prefopt train {directory / (name + '.yaml')}")
    return 0


def _setup_logging() -> None:
    import logging

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefopt", description="Offline preference optimisation: f-PO, γ-PO and their baselines."
    )
    parser.add_argument("--version", action="version", version=f"prefopt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    losses = commands.add_parser("losses", help="list the registered losses and their hyper-parameters")
    losses.add_argument("-v", "--verbose", action="store_true", help="also list each loss's hyper-parameters")
    losses.set_defaults(func=_list_losses)
    train = commands.add_parser(
        "train",
        help="train one preference-optimisation run",
        description="Train one run from a YAML config; override any field with --section.key value (or --key value "
        "when the name is unique), e.g. prefopt train cfg.yaml --loss.beta 2.5 --max_steps 10. Launch with "
        "accelerate launch -m prefopt.cli train ... for several GPUs or DeepSpeed.",
    )
    train.add_argument("config", help="YAML config file (sections: model, data, loss, margins, train)")
    train.add_argument("overrides", nargs=argparse.REMAINDER, help="--section.key value ...")
    train.set_defaults(func=_train)
    tiny = commands.add_parser("tiny", help="write a tiny model, data and configs to try `prefopt train` offline")
    tiny.add_argument("directory", help="folder to write into")
    tiny.set_defaults(func=_tiny)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from prefopt.config import ConfigError
    from prefopt.data import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError) as error:  # the user's input, not a bug: one line, no traceback
        print(f"prefopt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
