"""Fingerprints of a stage's outputs, so that a rerun trusts an output only while it is what the stage wrote.

A stage that skips itself because "its output exists" (or because its inputs' hash matches) trusts whatever is on
disk: a truncated model, a pairs file cut by hand. Instead, a finished stage records the fingerprints of its outputs
(:func:`record_outputs`) and a rerun checks them (:func:`verify_outputs`) before skipping; a downstream stage puts its
inputs' fingerprints into its own key, so that a rebuilt input that differs redoes it too.

Fingerprint format (:func:`fingerprint`), a JSON-able dict:

- a file up to :data:`FULL_HASH_LIMIT` bytes (64 MiB): ``{"size": N, "sha256": "<hex of the whole file>"}``;
- a larger file: ``{"size": N, "sampled_sha256": "<hex>"}`` — a CHEAP fingerprint, not a full hash: the sha256 of
  the size and of three 1 MiB blocks (the first, the one in the middle and the last). It catches truncation, a
  rewrite of another size, or any change in those blocks, but not a same-size change elsewhere in the file;
- a folder: ``{"files": {"<relative path>": <file fingerprint>, ...}}``, every file below it (symlinks followed),
  sorted by relative path (``/``-separated);
- a missing path: ``None``.

:func:`digest` turns any of these into one short hex string, to put into a stage key.

Command line (for the run/*.sh scripts; see run/common.sh)::

    python -m prefopt.fingerprints record MARKER OUTPUT... [--input PATH]...
    python -m prefopt.fingerprints check MARKER

``record`` writes MARKER (JSON: the fingerprints of every OUTPUT and every ``--input``); the first OUTPUT must
exist. ``check`` exits 0 when every recorded output and input still has its recorded fingerprint, and 1, with one
line on stderr saying which path changed, when one differs, is missing, or MARKER is missing or unreadable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]

#: Files up to this size are hashed in full; larger ones get the sampled fingerprint (see the module docstring).
FULL_HASH_LIMIT = 64 * 1024 * 1024
#: The size of each of the three blocks a large file's sampled fingerprint reads.
BLOCK = 1024 * 1024
#: The marker format's version (``record`` writes it, ``check`` requires it).
MARKER_VERSION = 1


def _file_fingerprint(path: Path) -> dict:
    size = path.stat().st_size
    if size <= FULL_HASH_LIMIT:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(BLOCK), b""):
                h.update(chunk)
        return {"size": size, "sha256": h.hexdigest()}
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        for offset in (0, (size - BLOCK) // 2, size - BLOCK):
            f.seek(offset)
            h.update(f.read(BLOCK))
    return {"size": size, "sampled_sha256": h.hexdigest()}


def fingerprint(path: PathLike) -> Optional[dict]:
    """The fingerprint of a file or a folder (format: the module docstring); ``None`` when ``path`` does not exist."""
    path = Path(path)
    if path.is_file():
        return _file_fingerprint(path)
    if path.is_dir():
        files = {}
        for root, dirs, names in os.walk(path, followlinks=True):
            dirs.sort()
            for name in names:
                full = Path(root) / name
                if full.is_file():
                    files[full.relative_to(path).as_posix()] = _file_fingerprint(full)
        return {"files": dict(sorted(files.items()))}
    return None


def digest(obj: Any) -> str:
    """A short hex digest of a fingerprint (or of a dict of them), for stage keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _key(path: PathLike, root: Optional[PathLike]) -> str:
    return os.path.relpath(path, os.path.normpath(root)).replace(os.sep, "/") if root is not None else os.fspath(path)


def _resolve(path: PathLike, root: Optional[PathLike]) -> Path:
    """``path`` against ``root`` when relative, ``..`` collapsed (so ``../x`` works before ``root`` exists)."""
    full = Path(root) / path if root is not None and not Path(path).is_absolute() else Path(path)
    return Path(os.path.normpath(full))


def record_outputs(paths: Iterable[PathLike], root: Optional[PathLike] = None) -> dict[str, Optional[dict]]:
    """``{path: fingerprint}`` of each path, keyed relative to ``root`` when given (paths are then resolved against
    ``root`` when relative), as given otherwise. Store it; :func:`verify_outputs` checks it later."""
    out = {}
    for p in paths:
        out[_key(_resolve(p, root), root)] = fingerprint(_resolve(p, root))
    return out


def describe_change(name: str, recorded: Optional[dict], current: Optional[dict]) -> str:
    """One line saying how ``name`` changed between two fingerprints."""
    if current is None:
        return f"{name} is missing"
    if recorded is None:
        return f"{name} appeared (absent when recorded)"
    if "files" in recorded and "files" in current:
        old, new = recorded["files"], current["files"]
        for rel in sorted(set(old) | set(new)):
            if rel not in new:
                return f"{name}/{rel} is missing"
            if rel not in old:
                return f"{name}/{rel} is new"
            if old[rel] != new[rel]:
                return describe_change(f"{name}/{rel}", old[rel], new[rel])
    if recorded.get("size") != current.get("size"):
        return f"{name} changed size: {recorded.get('size')} -> {current.get('size')} bytes"
    return f"{name} changed content"


def verify_outputs(recorded: Optional[dict], root: Optional[PathLike] = None) -> Optional[str]:
    """``None`` when every path in ``recorded`` (from :func:`record_outputs`) still has its fingerprint, else one line
    saying which path changed first. An empty or absent record never verifies (there is nothing to trust)."""
    if not recorded or not isinstance(recorded, dict):
        return "no output fingerprints recorded"
    for name, fp in recorded.items():
        current = fingerprint(_resolve(name, root))
        if current != fp:
            return describe_change(name, fp, current)
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Markers for the shell scripts
# ----------------------------------------------------------------------------------------------------------------------


def write_marker(marker: PathLike, outputs: Sequence[PathLike], inputs: Sequence[PathLike] = ()) -> dict:
    """Record ``outputs`` (the first must exist) and ``inputs`` into ``marker`` (JSON, written atomically)."""
    if not outputs:
        raise ValueError("record needs at least one output")
    if not Path(outputs[0]).exists():
        raise FileNotFoundError(f"output {os.fspath(outputs[0])} does not exist: nothing to record")
    data = {"version": MARKER_VERSION, "outputs": record_outputs(outputs), "inputs": record_outputs(inputs)}
    marker = Path(marker)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, marker)
    return data


def check_marker(marker: PathLike) -> Optional[str]:
    """``None`` when ``marker``'s outputs and inputs are unchanged, else one line saying what is stale."""
    marker = Path(marker)
    if not marker.is_file():
        return f"no marker {os.fspath(marker)}"
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable marker {os.fspath(marker)}: {e}"
    if not isinstance(data, dict) or data.get("version") != MARKER_VERSION:
        return f"marker {os.fspath(marker)} has an unknown format"
    problem = verify_outputs(data.get("outputs"))
    if problem:
        return f"output {problem}"
    if data.get("inputs"):
        problem = verify_outputs(data["inputs"])
        if problem:
            return f"input {problem}"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefopt.fingerprints", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="write MARKER with the fingerprints of OUTPUT... (and --input ...)")
    rec.add_argument("marker")
    rec.add_argument("outputs", nargs="+")
    rec.add_argument("--input", dest="inputs", action="append", default=[], help="an input of the stage (repeatable)")
    chk = sub.add_parser("check", help="exit 0 when MARKER's outputs and inputs are unchanged, 1 (and why) otherwise")
    chk.add_argument("marker")
    chk.add_argument("--quiet", action="store_true", help="print nothing")
    fp = sub.add_parser("show", help="print the fingerprint of each PATH as JSON")
    fp.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "record":
        try:
            write_marker(args.marker, args.outputs, args.inputs)
        except (OSError, ValueError) as e:
            print(f"fingerprints: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "check":
        problem = check_marker(args.marker)
        if problem:
            if not args.quiet:
                print(f"stale: {problem}", file=sys.stderr)
            return 1
        return 0
    print(json.dumps({p: fingerprint(p) for p in args.paths}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
