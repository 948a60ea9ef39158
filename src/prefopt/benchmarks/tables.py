"""Tables 2 / 3 from benchmark result files (SPEC §6.2, §6.3, §9: tables are built only from recorded files).

``load_results(results_dir)`` reads every ``<model>/<benchmark>.json`` below a folder (the results contract);
``build_table(results, ...)`` renders rows = models and columns AE2 LC (%), AE2 WR (%), Arena-Hard WR (%, 95% CI),
MT-Bench, as Markdown or LaTeX:

* AE2 LC shows alpaca_eval's official LC win rate when the result has one (``lc_win_rate``), else OUR LC fit
  (``lc_win_rate_ours``) marked with a dagger and a footnote;
* Arena-Hard shows the Bradley–Terry win rate with its bootstrap interval as distances, ``36.5 (-2.1, +2.3)``, as
  the Arena-Hard leaderboard does;
* Open LLM Leaderboard v2 (``open_llm_v2.json``, :mod:`prefopt.benchmarks.open_llm`): when any row has one, seven
  more columns, the leaderboard's average and its six normalised scores (IFEval, BBH, MATH Lvl 5, GPQA, MuSR,
  MMLU-PRO; 0-100, the random-guess baseline at 0); tables without such results keep the four columns;
* a missing cell is "–" (LaTeX "--");
* ``reference`` rows (public numbers, e.g. SimPO's) come after ours, separated, each labelled "(public, not ours)"
  and explained in a footnote; they are never mixed with our results;
* footnotes also say which scale / judge / baseline the numbers come from (e.g. the small world's hidden reward)
  and which rule produced them (Arena-Hard's verdict rule and bootstrap, MT-Bench's rating parse, AlpacaEval's LC
  rule, as each result JSON records them; "unrecorded" for older files). Rows of one benchmark scored with different
  rules are an error (:class:`~prefopt.errors.ConfigError`) unless ``allow_mixed_rules`` (``--allow-mixed-rules``);
  then each rule gets its own footnote line naming its models.

``python -m prefopt.benchmarks.tables RESULTS_DIR [--latex] [--out FILE] [--models a,b]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from prefopt.errors import ConfigError
from prefopt.io import write_atomic

BENCHMARKS = ("alpaca_eval", "arena_hard", "mt_bench", "open_llm_v2")
COLUMNS = ("AE2 LC (%)", "AE2 WR (%)", "Arena-Hard WR (%, 95% CI)", "MT-Bench (score)")
#: The Open LLM Leaderboard v2 columns (shown when a row has an open_llm_v2 result): the metrics' ``average`` and
#: ``scores`` keys, in the leaderboard's order.
OPEN_LLM_KEYS = ("average", "ifeval", "bbh", "math_lvl5", "gpqa", "musr", "mmlu_pro")
OPEN_LLM_COLUMNS = ("OLL v2 avg", "IFEval", "BBH", "MATH Lvl 5", "GPQA", "MuSR", "MMLU-PRO")
REFERENCE_KEYS = ("alpaca_eval_lc", "alpaca_eval_wr", "arena_hard", "mt_bench", "open_llm_v2")
DAGGER_NOTE = "our LC fit; alpaca_eval's needs Hub side data"
PUBLIC_NOTE = "(public, not ours)"
MISSING = {"markdown": "–", "latex": "--"}


def load_results(results_dir: str | Path) -> list[dict]:
    """Every ``<model>/<benchmark>.json`` below ``results_dir`` (any depth) that is a benchmark result (has
    ``benchmark`` in :data:`BENCHMARKS`, ``model`` and ``metrics``), sorted by path. Answer / meta / judgement files
    are skipped by name."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder {root}")
    out = []
    for path in sorted(root.rglob("*.json")):
        if path.stem not in BENCHMARKS:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("benchmark") == path.stem and "model" in data and isinstance(
                data.get("metrics"), dict):
            data.setdefault("_path", str(path))
            out.append(data)
    return out


def _num(value: Any) -> Optional[float]:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _cells(by_bench: Mapping[str, dict]) -> tuple[list[Optional[str]], bool]:
    """The four cell texts of one model (None = missing) and whether the LC cell is our fit (dagger)."""
    ae = (by_bench.get("alpaca_eval") or {}).get("metrics", {})
    ah = (by_bench.get("arena_hard") or {}).get("metrics", {})
    mt = (by_bench.get("mt_bench") or {}).get("metrics", {})
    dagger = False
    lc = _num(ae.get("lc_win_rate"))
    if lc is not None:
        lc_text = f"{lc:.1f}"
    else:
        ours = _num(ae.get("lc_win_rate_ours"))
        lc_text, dagger = (f"{ours:.1f}", True) if ours is not None else (None, False)
    wr = _num(ae.get("win_rate"))
    ah_wr = _num(ah.get("win_rate"))
    ah_text = None
    if ah_wr is not None:
        ci = ah.get("ci") or [None, None]
        lo, hi = (_num(ci[0]), _num(ci[1])) if len(ci) == 2 else (None, None)
        ah_text = f"{ah_wr:.1f}" + (f" (-{ah_wr - lo:.1f}, +{hi - ah_wr:.1f})" if lo is not None and hi is not None
                                    else "")
    score = _num(mt.get("score"))
    return [lc_text, None if wr is None else f"{wr:.1f}", ah_text, None if score is None else f"{score:.2f}"], dagger


def _open_llm_cells(values: Mapping[str, Any]) -> list[Optional[str]]:
    """The seven Open LLM Leaderboard v2 cells from ``{average, ifeval, bbh, ...}`` (numbers 0-100)."""
    return [None if _num(values.get(k)) is None else f"{_num(values.get(k)):.1f}" for k in OPEN_LLM_KEYS]


def _open_llm_values(result: Optional[Mapping[str, Any]]) -> dict:
    m = (result or {}).get("metrics") or {}
    return {"average": m.get("average"), **(m.get("scores") or {})}


def _reference_cells(values: Mapping[str, Any]) -> list[Optional[str]]:
    unknown = set(values) - set(REFERENCE_KEYS)
    if unknown:
        raise ValueError(f"unknown reference keys {sorted(unknown)}; use {', '.join(REFERENCE_KEYS)}")
    cells = []
    for key in REFERENCE_KEYS[:4]:
        value = values.get(key)
        if isinstance(value, Mapping):  # {"win_rate": x, "ci": [lo, hi]} like ours
            x, ci = _num(value.get("win_rate")), value.get("ci")
            text = None if x is None else f"{x:.1f}"
            if text and ci and len(ci) == 2 and _num(ci[0]) is not None and _num(ci[1]) is not None:
                text += f" (-{x - float(ci[0]):.1f}, +{float(ci[1]) - x:.1f})"
            cells.append(text)
        else:
            x = _num(value)
            cells.append(None if x is None else (f"{x:.2f}" if key == "mt_bench" else f"{x:.1f}"))
    return cells


def _public_label(name: str) -> str:
    if PUBLIC_NOTE in name:
        return name
    if "(public)" in name:
        return name.replace("(public)", PUBLIC_NOTE)
    return f"{name} {PUBLIC_NOTE}"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--",
                  "γ": r"$\gamma$", "α": r"$\alpha$", "†": r"$^\dagger$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in text)


def scoring_rule(benchmark: str, result: Mapping[str, Any]) -> str:
    """The rule that produced a result's numbers, as its metrics record it ("unrecorded" when they do not)."""
    m = result.get("metrics") or {}

    def say(value):
        return "unrecorded" if value is None else str(value)

    if benchmark == "arena_hard":
        return f"verdict {say(m.get('verdict_rule'))}, bootstrap {say(m.get('bootstrap_rule'))}"
    if benchmark == "mt_bench":
        return f"rating parse {say(m.get('rating_parse') or m.get('rating_rule'))}"
    if benchmark == "open_llm_v2":
        limit = f", limit {m['limit']} per sub-task (not comparable)" if m.get("limit") else ""
        return (f"lm-eval {say(m.get('lm_eval_version'))}, normalisation {say(m.get('normalisation'))}, chat template "
                f"{say(m.get('apply_chat_template'))}{limit}")
    lc = "ours" if _num(m.get("lc_win_rate")) is None and _num(m.get("lc_win_rate_ours")) is not None else (
        m.get("lc_rule"))
    return f"LC {say(lc)}"


def _provenance(groups: Mapping[str, Mapping[str, dict]], allow_mixed_rules: bool) -> list[str]:
    seen: dict[tuple, list[str]] = {}
    rules: dict[str, dict[str, list[str]]] = {}
    for model, by_bench in groups.items():
        for bench in BENCHMARKS:
            r = by_bench.get(bench)
            if r:
                rule = scoring_rule(bench, r)
                rules.setdefault(bench, {}).setdefault(rule, []).append(model)
                key = (bench, r.get("scale"), str(r.get("judge")), str(r.get("baseline")), rule)
                seen.setdefault(key, []).append(model)
    for bench, by_rule in rules.items():
        if len(by_rule) > 1 and not allow_mixed_rules:
            described = "; ".join(f"{rule}: {', '.join(models)}" for rule, models in by_rule.items())
            raise ConfigError(f"{bench} rows were scored with different rules ({described}); rescore them alike or "
                              f"allow it with --allow-mixed-rules")
    lines = []
    for (bench, scale, judge, baseline, rule), models in seen.items():
        who = f" ({', '.join(models)})" if len(rules[bench]) > 1 else ""
        lines.append(f"{bench}: scale {scale}, judge {judge}, baseline {baseline}, {rule}{who}")
    return lines


def build_table(
    results: Sequence[Mapping[str, Any]],
    *,
    models: Optional[Sequence[str]] = None,
    reference: Optional[Mapping[str, Mapping[str, Any]]] = None,
    fmt: str = "markdown",
    allow_mixed_rules: bool = False,
) -> str:
    """The table (see the module docstring). ``models`` picks and orders the rows (default: every model, in the order
    first seen); a requested model without results gets a row of "–". ``reference``: ``{row label: {alpaca_eval_lc,
    alpaca_eval_wr, arena_hard, mt_bench, open_llm_v2: {average, ifeval, ...}}}`` public numbers shown in separate
    rows marked "(public, not ours)".
    ``allow_mixed_rules``: accept rows of one benchmark scored with different rules (each footnoted)."""
    if fmt not in MISSING:
        raise ValueError(f"fmt must be 'markdown' or 'latex', got {fmt!r}")
    groups: dict[str, dict[str, dict]] = {}
    for r in results:
        groups.setdefault(str(r["model"]), {})[r["benchmark"]] = dict(r)
    order = list(models) if models is not None else list(groups)
    with_oll = any("open_llm_v2" in groups.get(name, {}) for name in order)
    columns = COLUMNS + (OPEN_LLM_COLUMNS if with_oll else ())
    rows, any_dagger = [], False
    for name in order:
        cells, dagger = _cells(groups.get(name, {}))
        any_dagger |= dagger
        if dagger:
            cells[0] = cells[0] + "†"
        if with_oll:
            cells += _open_llm_cells(_open_llm_values(groups.get(name, {}).get("open_llm_v2")))
        rows.append([name, *cells])
    ref_rows = [[_public_label(label), *_reference_cells(values),
                 *(_open_llm_cells(values.get("open_llm_v2") or {}) if with_oll else [])]
                for label, values in (reference or {}).items()]

    notes = []
    if any_dagger:
        notes.append(f"† {DAGGER_NOTE}.")
    if ref_rows:
        notes.append(f"Rows marked {PUBLIC_NOTE}: published numbers shown for scale; not produced by this code.")
    notes += _provenance({n: groups[n] for n in order if n in groups}, allow_mixed_rules)
    missing = MISSING[fmt]
    header = ["Model", *columns]

    if fmt == "markdown":
        def line(cells):
            return "| " + " | ".join(missing if c is None else c for c in cells) + " |"

        out = [line(header), "|" + "|".join(["---"] + [":---:"] * len(columns)) + "|"]
        out += [line(r) for r in rows]
        if ref_rows:
            out.append(line([f"*{PUBLIC_NOTE}*"] + [""] * len(columns)))
            out += [line(r) for r in ref_rows]
        if notes:
            out.append("")
            out += notes
        return "\n".join(out) + "\n"

    def tex_line(cells):
        return " & ".join(missing if c is None else latex_escape(c) for c in cells) + r" \\"

    ncol = len(header)
    out = [r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\hline", tex_line(header), r"\hline"]
    out += [tex_line(r) for r in rows]
    if ref_rows:
        out.append(r"\hline")
        out += [tex_line(r) for r in ref_rows]
    out.append(r"\hline")
    out += [rf"\multicolumn{{{ncol}}}{{l}}{{\footnotesize {latex_escape(n)}}} \\" for n in notes]
    out.append(r"\end{tabular}")
    return "\n".join(out) + "\n"


def _reference_arg(value: Optional[str]) -> Optional[dict]:
    if value is None:
        return None
    path = Path(value)
    return json.loads(path.read_text(encoding="utf-8") if path.is_file() else value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefopt.benchmarks.tables",
                                     description="Table 2/3 (AE2 LC, AE2 WR, Arena-Hard, MT-Bench) from result files")
    parser.add_argument("results_dir", help="folder holding <model>/<benchmark>.json result files (any depth)")
    parser.add_argument("--latex", action="store_true", help="LaTeX tabular instead of Markdown")
    parser.add_argument("--out", help="write the table to this file instead of stdout")
    parser.add_argument("--models", help="comma-separated models, in row order (default: all)")
    parser.add_argument("--reference", help="public numbers as JSON (a file or a literal): {label: {alpaca_eval_lc, "
                                            "alpaca_eval_wr, arena_hard, mt_bench}}")
    parser.add_argument("--allow-mixed-rules", action="store_true",
                        help="accept rows of one benchmark scored with different rules (each footnoted)")
    args = parser.parse_args(argv)
    try:
        results = load_results(args.results_dir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not results:
        print(f"error: no <model>/<benchmark>.json results below {args.results_dir}", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    try:
        table = build_table(results, models=models, reference=_reference_arg(args.reference),
                            fmt="latex" if args.latex else "markdown", allow_mixed_rules=args.allow_mixed_rules)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out:
        write_atomic(args.out, table)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
