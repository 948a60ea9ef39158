"""Reading rows of preference data: local .json/.jsonl/.parquet files and Hub datasets (SPEC §6.1–§6.3).

Rows come back as they are stored (dicts, or an :class:`_UnreadableRow` placeholder for a JSONL line that is not JSON,
so that row indices match the file); any source that cannot be read at all becomes one :class:`DataError` line.
Also here: the bad-row bookkeeping shared by the loaders and the tokeniser (:func:`_quote_bad`, :func:`_short_cause`;
row indices are 0-based in reports and 1-based in messages, so "row 1" is a JSONL file's first row), and the guard
the writing stages use against overwriting their input or an existing file (:func:`check_output_path`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from prefopt.errors import DataError
from prefopt.hub import offline_from_env

#: How many malformed rows an error message or summary quotes.
QUOTED_BAD_ROWS = 5


def _row_number(index: int) -> int:
    """The 1-based row number a message shows for the 0-based ``index`` (row 1 is a JSONL file's first row)."""
    return index + 1


def _quote_bad(bad: Sequence[tuple[int, str]], label: str = "row") -> str:
    """The first :data:`QUOTED_BAD_ROWS` of ``(0-based index, reason)`` pairs, numbered from 1 like lines."""
    return "; ".join(f"{label} {_row_number(index)}: {reason}" for index, reason in bad[:QUOTED_BAD_ROWS])


def _quote_rows(indices: Sequence[int]) -> str:
    """``row 37`` / ``rows 3, 9, 12`` (1-based; the first :data:`QUOTED_BAD_ROWS`, then how many more)."""
    shown = ", ".join(str(_row_number(i)) for i in indices[:QUOTED_BAD_ROWS])
    more = f" and {len(indices) - QUOTED_BAD_ROWS} more" if len(indices) > QUOTED_BAD_ROWS else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"


def check_output_path(out: str | Path, inputs: Sequence[str | Path], *, overwrite: bool, what: str) -> Path:
    """Refuse to write ``out`` over one of ``inputs`` (always) or over an existing file (unless ``overwrite``).

    Returns ``out`` expanded. ``inputs`` that are not local files (Hub ids) are ignored; "the same file" is decided on
    resolved paths and, for existing files, :func:`os.path.samefile` (symlinks and hard links included).
    """
    import os

    path = Path(out).expanduser()
    for source in inputs:
        src = Path(source).expanduser()
        if not src.is_file():
            continue
        same = src.resolve() == path.resolve() or (path.exists() and os.path.samefile(src, path))
        if same:
            raise DataError(f"{what}: the output {out} is the input {source}; write to another file")
    if path.is_dir():
        raise DataError(f"{what}: the output {out} is a folder; give a file path")
    if path.exists() and not overwrite:
        raise DataError(f"{what}: the output {out} already exists; pass --overwrite to replace it")
    return path


@dataclass
class _UnreadableRow:
    """A JSONL line that is not valid JSON: kept in place so that row indices match the file."""

    reason: str


def _short_cause(err: BaseException, limit: int = 200) -> str:
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_jsonl(path: Path, limit: Optional[int]) -> list[Any]:
    rows: list[Any] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                rows.append(_UnreadableRow(f"invalid JSON on line {line_number} ({err.msg})"))
    return rows


def _read_json(path: Path, limit: Optional[int]) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}); a .json file must hold one list of "
            "objects, a .jsonl file one object per line"
        ) from err
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not a list of rows; write a list of objects")
    return data if limit is None else data[:limit]


def _read_parquet(path: Path, limit: Optional[int]) -> list[Any]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return (table if limit is None else table.slice(0, limit)).to_pylist()


_LOCAL_READERS: dict[str, Callable[[Path, Optional[int]], list[Any]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
}


def _read_local(path: Path, limit: Optional[int]) -> list[Any]:
    reader = _LOCAL_READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"unsupported file type {path.suffix!r} for {path}: use .json (a list of objects), .jsonl or .parquet"
        )
    try:
        return reader(path, limit)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({_short_cause(err)}); re-save it as UTF-8") from err
    except OSError as err:  # permissions, a folder named like a file, a vanished network mount
        raise DataError(f"cannot read {path} ({_short_cause(err)}); check the path and its permissions") from err


def _load_hub(
    source: str, *, split: str, name: Optional[str], limit: Optional[int], data_dir: Optional[str] = None
) -> list[Any]:
    """Rows of a Hugging Face dataset (SPEC §6.1–§6.3 name them by Hub id); any failure becomes one DataError line.

    ``data_dir`` picks a folder of the dataset repository (Anthropic/hh-rlhf ``helpful-base``, SPEC §6.1 step 1).
    """
    import datasets

    try:
        with offline_from_env():
            dataset = datasets.load_dataset(source, name=name, split=split, data_dir=data_dir)
    except Exception as err:  # the datasets library raises many types for "cannot load"; all mean the same here
        where = f"config={name!r}, " + (f"data_dir={data_dir!r}, " if data_dir is not None else "")
        raise DataError(
            f"dataset {source!r} ({where}split={split!r}) not found: no such local file, and the Hub "
            f"could not load it (offline? typo? wrong split, config or data_dir?): {_short_cause(err)}"
        ) from err
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.to_list()


def _looks_like_file(source: str) -> bool:
    return Path(source).suffix.lower() in _LOCAL_READERS or source.startswith((".", "/", "~"))


def check_source(source: str, what: str) -> None:
    """Fail at once, naming ``what``, when ``source`` names a local file that does not exist; anything else is a data
    file, a Hub dataset name or a local dataset folder in the Hub's layout, which ``datasets.load_dataset`` reads."""
    path = Path(source).expanduser()
    if _looks_like_file(source) and not path.is_file() and not path.is_dir():
        raise DataError(f"no such {what} file {source!r} (resolved to {path.resolve()})")


def _read_rows(
    source: str, *, split: str, name: Optional[str], limit: Optional[int], data_dir: Optional[str] = None
) -> tuple[list[Any], str]:
    """Rows and the short source name used in record ids (file name for local files, the Hub id otherwise).

    ``split``, ``name`` and ``data_dir`` only matter for Hub datasets.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return _read_local(path, limit), path.name
    if _looks_like_file(source) and not path.is_dir():
        raise DataError(f"no such local file {source!r} (resolved to {path.resolve()}); check data.train / data.eval")
    return _load_hub(source, split=split, name=name, limit=limit, data_dir=data_dir), source
