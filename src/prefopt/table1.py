"""Table 1 of the f-PO paper from the run folders the Table 1 pipeline writes (SPEC §6.1 step 6, §9: tables are built
only from recorded files).

``prefopt table1 RESULTS_DIR`` reads, for every run folder ``<dataset>_<setting>_<method>/`` below ``RESULTS_DIR``
(``run/common.sh``'s layout, ``results/table1`` by default), its evaluation folder ``eval_<checkpoint>/``:

- ``vs_sft/winrate.json`` and ``vs_chosen/winrate.json`` (``prefopt judge``): the pairwise win rate against the SFT
  model's samples and against the dataset's chosen responses, each pair judged in both orders, ties counted as half
  a win, with its bootstrap interval; the ties' share beside it, and the official number (ties and unparseable
  verdicts as losses, the official scripts' rule);
- ``mean_reward.json`` (``prefopt mean-reward``): the reward model's mean reward of the policy's samples with its 95%
  interval (EXO's second metric); the SFT model's, ``eval/<dataset>/sft_mean_reward.json``, is the first row of each
  dataset.

A missing file is a "–" cell, never an invented number. Rows are ordered by dataset, setting (pref, rw) and method.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from prefopt.errors import EvalDataError

DATASETS = ("hh", "tldr")
SETTINGS = ("pref", "rw")
#: The methods of Table 1 in the paper's order; others found in the folder follow, sorted.
METHODS = ("fpo", "dpo", "exo")
METHOD_LABELS = {"fpo": "f-PO (α-divergence)", "dpo": "DPO", "exo": "EXO", "sft": "SFT"}
COLUMNS = ("dataset", "setting", "method", "WR vs SFT (%, 95% CI)", "ties vs SFT (%)", "official vs SFT (%)",
           "WR vs chosen (%, 95% CI)", "ties vs chosen (%)", "official vs chosen (%)", "RM reward (95% CI)")
MISSING = {"markdown": "–", "latex": "--"}
_RUN = re.compile(r"^(?P<dataset>hh|tldr)_(?P<setting>pref|rw)_(?P<method>.+)$")


def _read(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise EvalDataError(f"{path} is not readable JSON ({type(error).__name__}); rerun the stage that writes it")
    if not isinstance(data, dict):
        raise EvalDataError(f"{path} holds no JSON object; rerun the stage that writes it")
    return data


def load_table1(results_dir: str | Path, checkpoint: str = "final") -> list[dict[str, Any]]:
    """One row per (dataset, setting, method) run folder with an ``eval_<checkpoint>/`` folder, plus each dataset's
    SFT row: ``{dataset, setting, method, vs_sft, vs_chosen, reward}`` (the JSON dicts, or None when missing)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise EvalDataError(f"no results folder {root}: run the Table 1 scripts (make table1) first")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _RUN.match(folder.name)
        evaluation = folder / f"eval_{checkpoint}"
        if not match or not evaluation.is_dir():
            continue
        rows.append({**match.groupdict(), "vs_sft": _read(evaluation / "vs_sft" / "winrate.json"),
                     "vs_chosen": _read(evaluation / "vs_chosen" / "winrate.json"),
                     "reward": _read(evaluation / "mean_reward.json")})
    if not rows:
        raise EvalDataError(f"no Table 1 run folder with an eval_{checkpoint}/ folder in {root} (expected "
                            "<hh|tldr>_<pref|rw>_<method>/eval_<checkpoint>/ from run/common.sh)")
    for dataset in sorted({r["dataset"] for r in rows}):
        sft = _read(root / "eval" / dataset / "sft_mean_reward.json")
        rows.append({"dataset": dataset, "setting": "", "method": "sft", "vs_sft": None, "vs_chosen": None,
                     "reward": sft})

    def order(row):
        method = row["method"]
        rank = (-1 if method == "sft" else METHODS.index(method) if method in METHODS else len(METHODS))
        setting = SETTINGS.index(row["setting"]) if row["setting"] in SETTINGS else -1
        return DATASETS.index(row["dataset"]), setting, rank, method

    return sorted(rows, key=order)


def _pct(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{100 * value:.1f}"


def _win_cells(summary: Optional[dict], missing: str) -> list[str]:
    if not summary:
        return [missing] * 3
    low, high = summary["ci"]
    ties = summary["ties"] / summary["n"] if summary.get("n") else None
    return [f"{_pct(summary['win_rate'])} ({_pct(low)}–{_pct(high)})", _pct(ties) or missing,
            _pct(summary["official_win_rate"])]


def _reward_cell(reward: Optional[dict], missing: str) -> str:
    if not reward:
        return missing
    low, high = reward["ci"]
    return f"{reward['mean_reward']:.3f} ({low:.3f}–{high:.3f})"


def _footnotes(rows: list[dict]) -> list[str]:
    judged = [r[key] for r in rows for key in ("vs_sft", "vs_chosen") if r[key]]
    judges = sorted({str(j.get("judge")) for j in judged})
    prompts = sorted({int(j.get("n_prompts", j.get("pairs", 0))) for j in judged})
    notes = ["Win rates: each pair judged in both orders, a tie counts half; the interval is the bootstrap 95% "
             "interval over pairs. 'official' counts ties and unparseable verdicts as losses, as the official scripts "
             "do. RM reward: the reward model's mean over every sample, normal-approximation 95% interval."]
    if judges:
        notes.append(f"Judge: {', '.join(judges)}; prompts judged per cell: {', '.join(map(str, prompts))}.")
    return notes


def build_table1(rows: list[dict], *, fmt: str = "markdown") -> str:
    """The table as Markdown (``fmt="markdown"``) or a LaTeX ``tabular`` (``"latex"``), with its footnotes."""
    if fmt not in MISSING:
        raise ValueError(f"fmt must be one of {', '.join(MISSING)}, got {fmt!r}")
    missing = MISSING[fmt]
    body = []
    for row in rows:
        label = METHOD_LABELS.get(row["method"], row["method"])
        cells = [row["dataset"].upper() if row["dataset"] == "hh" else "TL;DR", row["setting"] or missing, label,
                 *_win_cells(row["vs_sft"], missing), *_win_cells(row["vs_chosen"], missing),
                 _reward_cell(row["reward"], missing)]
        if row["method"] == "sft":  # the SFT model is the baseline of the first column, not judged against itself
            cells[3:9] = [missing] * 6
        body.append(cells)
    notes = _footnotes(rows)
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines + [""] + notes) + "\n"

    def tex(text: str) -> str:
        return (text.replace("\\", "\\textbackslash{}").replace("%", "\\%").replace("&", "\\&").replace("_", "\\_")
                .replace("–", "--").replace("α", "$\\alpha$"))

    lines = ["\\begin{tabular}{lll" + "r" * (len(COLUMNS) - 3) + "}", "\\toprule",
             " & ".join(tex(c) for c in COLUMNS) + " \\\\", "\\midrule"]
    lines += [" & ".join(tex(c) for c in cells) + " \\\\" for cells in body]
    lines += ["\\bottomrule", "\\end{tabular}"] + [f"% {note}" for note in notes]
    return "\n".join(lines) + "\n"
