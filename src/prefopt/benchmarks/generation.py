"""Per-model generation settings for the benchmarks (SPEC §6.3), kept as package data in
``prefopt/resources/generation/<family>.yaml`` (found with :mod:`importlib.resources`, so a family name works from any
working directory and from an installed wheel)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

import yaml

# An importlib.resources Traversable: a Path in any unpacked install (editable or wheel).
GENERATION_DIR = resources.files("prefopt.resources") / "generation"
BENCHMARKS = ("alpaca_eval", "arena_hard", "mt_bench")


def load_generation_config(family: str, benchmark: str, *, directory: Optional[Path] = None) -> dict:
    """The sampling settings of ``benchmark`` for a model ``family`` (llama3, gemma2, mistral, qwen2, or a YAML path)."""
    directory = Path(directory) if directory else GENERATION_DIR
    path = Path(family) if family.endswith((".yaml", ".yml")) else directory / f"{family}.yaml"
    if not path.is_file():
        entries = directory.iterdir() if directory.is_dir() else ()
        known = sorted(p.name[: -len(".yaml")] for p in entries if p.name.endswith(".yaml"))
        raise ValueError(f"no generation config {path}; known model families: {', '.join(known)}")
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    settings = yaml.safe_load(path.read_text())
    if benchmark not in settings:
        raise ValueError(f"{path} has no settings for {benchmark}")
    return dict(settings[benchmark])


def temperature_for(settings: dict, category: Optional[str] = None) -> float:
    """MT-Bench samples each category at its own temperature (fschat's table); other benchmarks use one."""
    if "temperature_by_category" in settings:
        if category not in settings["temperature_by_category"]:
            raise ValueError(f"no MT-Bench temperature for category {category!r}")
        return float(settings["temperature_by_category"][category])
    return float(settings["temperature"])
