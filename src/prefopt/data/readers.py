"""Reading rows of preference data: local .json/.jsonl/.parquet files and Hub datasets (SPEC §6.1–§6.3).

Rows come back as they are stored (dicts, or an :class:`_UnreadableRow` placeholder for a JSONL line that is not JSON,
so that row indices match the file); any source that cannot be read at all becomes one :class:`DataError` line.
Also here: the bad-row bookkeeping shared by the loaders and the tokeniser (:func:`_quote_bad`, :func:`_short_cause`).
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


def _quote_bad(bad: Sequence[tuple[int, str]], label: str = "row") -> str:
    return "; ".join(f"{label} {index}: {reason}" for index, reason in bad[:QUOTED_BAD_ROWS])


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
