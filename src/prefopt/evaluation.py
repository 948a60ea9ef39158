"""The pairwise judging stage of Table 1 (SPEC §6.1 step 6): a policy's samples against a baseline, judged in both
orders, with ties and unparseable verdicts reported apart from losses.

The baseline is either another model's samples (SFT: ``{prompt, completions}`` rows, its first completion per
prompt) or a preference data set's chosen responses (any pairs file :func:`prefopt.data.load_records` reads). The
official scripts judge 100 prompts; which ones, and the judge's identity, are written next to the numbers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional, Sequence

from prefopt.data import DataError, load_records
from prefopt.io import read_jsonl, write_json, write_jsonl
from prefopt.runs import StageRecord
from prefopt.winrate import WinRate, win_rate


def _prompt_key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def load_baseline(path: str | Path, kind: str, *, split: str = "test", name: Optional[str] = None,
                  data_dir: Optional[str] = None, format: str = "auto") -> dict[str, str]:
    """prompt → baseline response: ``kind="samples"`` (first completion of each row of a samples JSONL) or
    ``"chosen"`` (pairs data: a local file or a Hub dataset by name, with ``split``, ``name`` = its configuration,
    ``data_dir`` and ``format``, read as every stage reads data)."""
    if kind == "samples":
        rows = read_jsonl(path)
        return {_prompt_key(r["prompt"]): r["completions"][0] for r in rows if r.get("completions")}
    if kind == "chosen":
        records, _ = load_records(str(path), split=split, name=name, data_dir=data_dir, format=format,
                                  max_bad_fraction=1.0)
        return {_prompt_key(r.prompt): r.completions[0] for r in records}
    raise DataError(f"baseline kind must be 'samples' or 'chosen', got {kind!r}")


def judge_win_rate(
    judge,
    triples: Sequence[tuple[Any, str, str]],
    *,
    seed: int = 0,
    workers: int = 8,
    progress: bool = True,
) -> tuple[list[list[str]], WinRate]:
    """Judge (prompt, policy response, baseline response) triples in both orders, concurrently
    (:func:`prefopt.judges.judge_both_orders_many`), and aggregate them (:func:`prefopt.winrate.win_rate`, bootstrap
    seeded by ``seed``): (the outcomes of each pair, the win rate). The one path from judged pairs to a win rate, for
    an LLM judge at paper scale and the small world's hidden-reward judge alike."""
    from prefopt.judges import judge_both_orders_many

    outcomes = judge_both_orders_many(judge, triples, workers=workers, progress=progress)
    return outcomes, win_rate(outcomes, seed=seed)


def judge_against_baseline(
    judge,
    policy_samples: str | Path,
    baseline: str | Path,
    out_dir: str | Path,
    *,
    baseline_kind: str = "samples",
    n_prompts: Optional[int] = 100,
    seed: int = 0,
    workers: int = 8,
    command: Optional[Sequence[str]] = None,
    baseline_source: Optional[dict] = None,
) -> dict:
    """Judge ``n_prompts`` prompts (a seeded sample of those both sides answered) in both orders; write
    ``judgements.jsonl`` (every verdict), ``winrate.json`` (summary) and ``run_info.json`` (the provenance record of
    :mod:`prefopt.runs`) to ``out_dir``; return the summary. ``baseline_source`` (``split``, ``name``, ``data_dir``,
    ``format``) says how a ``chosen`` baseline given by Hub name is read (:func:`load_baseline`)."""
    record = StageRecord(Path(out_dir) / "run_info.json", "judge", command=command)
    policy = {_prompt_key(r["prompt"]): (r["prompt"], r["completions"][0]) for r in read_jsonl(policy_samples)
              if r.get("completions")}
    reference = load_baseline(baseline, baseline_kind, **(baseline_source or {}))
    shared = sorted(set(policy) & set(reference))
    if not shared:
        raise DataError(f"{policy_samples} and {baseline} have no prompt in common: nothing to judge")
    if n_prompts is not None and n_prompts < len(shared):
        shared = sorted(random.Random(seed).sample(shared, n_prompts))
    triples = [(policy[key][0], policy[key][1], reference[key]) for key in shared]
    outcomes, rate = judge_win_rate(judge, triples, seed=seed, workers=workers)
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "judgements.jsonl", [
        {"prompt": prompt, "policy": mine, "baseline": theirs, "policy_first": first, "policy_second": second}
        for (prompt, mine, theirs), (first, second) in zip(triples, outcomes)
    ])
    summary = {
        **rate.to_dict(),
        "judge": getattr(judge, "name", type(judge).__name__),
        "baseline": str(baseline), "baseline_kind": baseline_kind, "policy_samples": str(policy_samples),
        "n_prompts": len(shared), "seed": seed,
    }
    template = getattr(judge, "template", None)
    if template is not None:
        summary["template"] = {"name": getattr(template, "name", None), "sha256": getattr(template, "sha256", None)}
    write_json(out_dir / "winrate.json", summary)
    record.finish(judge=summary["judge"], template=summary.get("template"), policy_samples=str(policy_samples),
                  baseline=str(baseline), baseline_kind=baseline_kind, n_prompts=len(shared), seed=seed)
    return summary
