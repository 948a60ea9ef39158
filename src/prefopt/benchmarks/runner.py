"""Run the paper-scale benchmarks end to end: generate a policy's answers, then judge them (SPEC §6.2, §6.3, §7).

Two steps, each resumable on its own and each writing the files of the benchmark results contract:

- :func:`generate_answers` loads a model + tokenizer once, takes the model family's sampling settings from
  ``eval/generation/<family>.yaml`` (:func:`prefopt.benchmarks.generation.load_generation_config`) and writes
  ``<out_dir>/<benchmark>_answers.(json|jsonl)`` in the benchmark's own format (AlpacaEval outputs list, Arena-Hard
  answer JSONL, fschat's MT-Bench model-answer JSONL) next to its ``.meta.json`` sidecar (model, family,
  settings, seed, backend, counts, time).
- :func:`score_answers` judges an answers file with the benchmark's scorer through OUR
  :class:`prefopt.judges.JudgeClient` (cached on disk, so a rerun costs nothing) and writes the result JSON of the
  contract (``scale: "paper"``), plus the raw judgements beside it (``<out>.judgements.json[l]``).

Both write the provenance sidecar of their output file, :func:`prefopt.runs.meta_path` (``<file>.meta.json``, the
:data:`prefopt.runs.RUN_INFO_KEYS` schema, stage ``bench-generate`` / ``bench-score``); the answers' one also holds
the generator settings that scoring records.

Prompts are chat messages (one user turn; MT-Bench's second turn sees the first answer) rendered with the model's own
chat template by :func:`prefopt.sample.generate` (exactly one BOS). MT-Bench samples each category at its own
temperature: questions are generated in groups of equal temperature (one :func:`generate` call per group and turn).

:func:`add_bench_parsers` registers ``prefopt bench-generate`` and ``prefopt bench-score``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from prefopt.benchmarks import alpaca_eval as ae
from prefopt.benchmarks import arena_hard as ah
from prefopt.benchmarks import mt_bench as mt
from prefopt.benchmarks import open_llm as oll
from prefopt.benchmarks.generation import BENCHMARKS, GENERATION_DIR, load_generation_config, temperature_for
from prefopt.data import DataError
from prefopt.io import finite_json, write_json, write_jsonl
from prefopt.runs import StageRecord, meta_path, package_versions, utc_now

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "eval/data"
#: The judged benchmarks (their sampling settings in eval/generation) and the Open LLM Leaderboard v2, run by lm_eval
#: with its own settings (:mod:`prefopt.benchmarks.open_llm`).
ALL_BENCHMARKS = (*BENCHMARKS, oll.BENCHMARK)
ANSWER_SUFFIX = {"alpaca_eval": ".json", "arena_hard": ".jsonl", "mt_bench": ".jsonl", oll.BENCHMARK: oll.ANSWER_SUFFIX}
ARENA_HARD_DIR_HELP = ("your checkout of arena-hard-auto at its last v0.1 commit (config/judge_config.yaml, "
                       "data/arena-hard-v0.1/); the judge prompt, questions and baseline answers are read from it")
MAKE_EVAL_DATA = "run `make eval-data` (python -m prefopt.benchmarks.eval_data --dest {dest}) to fetch it"


class BenchDataError(DataError, FileNotFoundError):
    """Evaluation data, a baseline or a question file is missing (a one-line message saying where to get it)."""


# ---------------------------------------------------------------------------------------------------------------
# Paths and small helpers
# ---------------------------------------------------------------------------------------------------------------


def _check_benchmark(benchmark: str) -> None:
    if benchmark not in ALL_BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(ALL_BENCHMARKS)}")


def answers_path(out_dir: str | os.PathLike, benchmark: str) -> Path:
    """``<out_dir>/<benchmark>_answers.json`` (AlpacaEval) or ``.jsonl`` (Arena-Hard, MT-Bench)."""
    _check_benchmark(benchmark)
    return Path(out_dir) / f"{benchmark}_answers{ANSWER_SUFFIX[benchmark]}"


def answers_meta_path(path: str | os.PathLike) -> Path:
    """The provenance and generator settings beside an answers file: :func:`prefopt.runs.meta_path`,
    ``<benchmark>_answers.json[l].meta.json``."""
    return meta_path(path)


def _sidecar(out_path: Path, what: str, suffix: str) -> Path:
    return out_path.with_name(f"{out_path.stem}.{what}{suffix}")


def _require(path: Path, what: str, data_dir: str | os.PathLike) -> Path:
    if not path.is_file():
        raise BenchDataError(f"{what} not found at {path}: {MAKE_EVAL_DATA.format(dest=data_dir)}")
    return path


def _family_file(family: str) -> Path:
    return Path(family) if family.endswith((".yaml", ".yml")) else GENERATION_DIR / f"{family}.yaml"


def _model_family(family: str) -> str:
    try:
        doc = yaml.safe_load(_family_file(family).read_text()) or {}
    except OSError:
        doc = {}
    return str(doc.get("model_family") or Path(family).stem)


def _evaluator() -> dict[str, Optional[str]]:
    return package_versions(("prefopt", "alpaca_eval"))


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------


def _sampling(settings: dict, temperature: float) -> dict:
    return {"temperature": float(temperature), "top_p": float(settings.get("top_p", 1.0)),
            "max_new_tokens": int(settings.get("max_new_tokens", 1024)),
            "stop_strings": list(settings["stop_strings"]) if settings.get("stop_strings") else None}


def _take(items: list, limit: Optional[int]) -> list:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be an integer >= 1, got {limit!r}")
    return items if limit is None else items[:limit]


def _mt_bench_dir(data_dir: str | os.PathLike) -> Path:
    d = Path(data_dir) / "mt_bench"
    _require(d / "question.jsonl", "MT-Bench questions (mt_bench/question.jsonl)", data_dir)
    return d


def generate_answers(
    model_path: str | os.PathLike,
    benchmark: str,
    *,
    family: str,
    model_name: Optional[str] = None,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    out_dir: str | os.PathLike,
    limit: Optional[int] = None,
    seed: int = 0,
    batch_size: int = 8,
    backend: str = "auto",
    arena_questions: Optional[str | os.PathLike] = None,
    arena_hard_dir: Optional[str | os.PathLike] = None,
    progress: bool = True,
    tasks: Optional[list[str]] = None,
    include_path: tuple = (),
    chat_template: str = "auto",
    dtype: str = "auto",
) -> Path:
    """Generate ``model_path``'s answers to ``benchmark`` with ``family``'s settings; returns the answers file.

    ``family``: a name under ``eval/generation`` (llama3, gemma2, mistral, qwen2) or a YAML path. ``model_name``
    (default: the model folder's name) is the generator / model id written into the answers. ``limit`` keeps the
    first N prompts (quick runs). ``arena_questions``: Arena-Hard's ``question.jsonl`` (default: the one in
    ``arena_hard_dir``, the arena-hard-auto checkout, else ``<data_dir>/arena_hard/question.jsonl``). Missing data
    raises :class:`BenchDataError` before any model loads.

    ``open_llm_v2`` runs lm_eval's leaderboard tasks instead (:func:`prefopt.benchmarks.open_llm.run_leaderboard`:
    ``tasks`` (default: the ``leaderboard`` group), ``include_path`` folders of extra task YAMLs, ``chat_template``
    auto | yes | no, ``dtype``); ``family`` is only recorded there: lm_eval's tasks fix their own generation
    settings, as on the leaderboard."""
    from prefopt import sample

    _check_benchmark(benchmark)
    if benchmark != oll.BENCHMARK and not isinstance(batch_size, int):
        raise DataError(f"batch size {batch_size!r} is for open_llm_v2 only; give an integer")
    if benchmark == oll.BENCHMARK:
        return oll.run_leaderboard(model_path, out_dir=out_dir, model_name=model_name, family=str(family),
                                   tasks=tasks or oll.DEFAULT_TASKS, include_path=include_path, limit=limit,
                                   seed=seed, batch_size=batch_size, backend=backend, chat_template=chat_template,
                                   dtype=dtype)
    settings = load_generation_config(str(family), benchmark)
    model_name = model_name or Path(str(model_path).rstrip("/")).name
    data_dir = Path(data_dir)

    # -- the prompts (checked before the model is loaded) ----------------------------------------------------------
    data_files: dict[str, str] = {}
    if benchmark == "alpaca_eval":
        path = _require(data_dir / "alpaca_eval" / "instructions.json",
                        "AlpacaEval instructions (alpaca_eval/instructions.json)", data_dir)
        records = _take(json.loads(path.read_text(encoding="utf-8")), limit)
        data_files["instructions"] = str(path)
        n_prompts = len(records)
    elif benchmark == "arena_hard":
        qpath = (Path(arena_questions) if arena_questions
                 else ah.checkout_questions_path(arena_hard_dir) if arena_hard_dir
                 else data_dir / "arena_hard" / "question.jsonl")
        try:
            questions = _take(ah.load_questions(qpath), limit)
        except FileNotFoundError as error:
            raise BenchDataError(str(error)) from None
        data_files["questions"] = str(qpath)
        n_prompts = len(questions)
    else:
        mt_dir = _mt_bench_dir(data_dir)
        mt_questions = _take(mt.load_questions(mt_dir, reference=None), limit)
        data_files["questions"] = str(mt_dir / "question.jsonl")
        n_prompts = len(mt_questions)

    chosen = sample.resolve_backend(backend, str(model_path))
    tokenizer = sample.load_tokenizer(str(model_path))
    model = str(model_path) if chosen == "vllm" else sample.load_model(str(model_path))
    record, t0 = StageRecord(answers_meta_path(answers_path(out_dir, benchmark)), "bench-generate"), time.time()

    def run(prompts: list, temperature: float) -> list[str]:
        texts = sample.generate(model, tokenizer, prompts, k=1, seed=seed, batch_size=batch_size, backend=chosen,
                                progress=progress, **_sampling(settings, temperature))
        return [t[0] for t in texts]

    out = answers_path(out_dir, benchmark)
    extra: dict[str, Any] = {}
    if benchmark == "alpaca_eval":
        texts = run([[{"role": "user", "content": r["instruction"]}] for r in records], temperature_for(settings))
        rows = ae.make_outputs([r["instruction"] for r in records], texts, model_name)
        for row, rec in zip(rows, records):
            row["dataset"] = rec.get("dataset", row["dataset"])
        ae.save_outputs(rows, out)
        counts = {"prompts": n_prompts, "answers": len(rows)}
    elif benchmark == "arena_hard":
        texts = run([[{"role": "user", "content": q["question"]}] for q in questions], temperature_for(settings))
        token_lens = {q["question_id"]: len(tokenizer(t, add_special_tokens=False)["input_ids"])
                      for q, t in zip(questions, texts)}
        ah.write_answers(out, model_name, {q["question_id"]: t for q, t in zip(questions, texts)}, token_lens)
        counts = {"prompts": n_prompts, "answers": len(texts)}
    else:
        groups: dict[float, list] = {}
        for q in mt_questions:
            groups.setdefault(temperature_for(settings, q.category), []).append(q)
        answers = []
        for temperature, group in groups.items():
            answers += mt.generate_two_turn(group, lambda convs, t=temperature: run(convs, t), model_id=model_name,
                                            batched=True)
        mt.save_answers(out, answers)
        counts = {"prompts": n_prompts, "answers": len(answers), "turns": 2 * len(answers)}
        extra["temperature_by_category_used"] = {q.category: temperature_for(settings, q.category)
                                                 for q in mt_questions}

    meta = {
        "benchmark": benchmark,
        "model_path": str(model_path),
        "model_name": model_name,
        "family": str(family),
        "model_family": _model_family(str(family)),
        "settings": settings,
        **extra,
        "seed": seed,
        "batch_size": batch_size,
        "backend": backend,
        "backend_used": chosen,
        "limit": limit,
        "counts": counts,
        "data": data_files,
        "answers": str(out),
        "seconds": round(time.time() - t0, 3),
    }
    record.finish(**meta)
    logger.info("%s: %d answers of %s -> %s", benchmark, counts["answers"], model_name, out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


def _generation_record(answers: Path) -> dict:
    meta_file = answers_meta_path(answers)
    if not meta_file.is_file():
        return {"note": f"no generator settings found ({meta_file} is missing)"}
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    keep = ("model_path", "family", "model_family", "settings", "temperature_by_category_used", "seed", "backend",
            "backend_used", "limit", "counts")
    return {k: meta[k] for k in keep if k in meta}


def _score_alpaca(answers: Path, client, *, baseline, workers, out_path: Path) -> tuple[dict, str, str]:
    try:
        baseline_rows = ae.load_baseline_outputs(baseline)
    except FileNotFoundError as error:
        raise BenchDataError(str(error)) from None
    annotator = ae.AlpacaAnnotator.load()
    annotations = ae.annotate(ae.load_outputs(answers), baseline_rows, client, annotator=annotator,
                              workers=workers)
    metrics = ae.compute_metrics(annotations, judge=client.model, template_sha256=annotator.template_sha256,
                                 our_lc=False)
    for key in ("judge", "template_sha256", "alpaca_eval_version"):
        metrics.pop(key, None)
    write_json(_sidecar(out_path, "judgements", ".json"), finite_json(annotations))
    return metrics, annotator.template_sha256, f"{ae.BASELINE_GENERATOR} ({baseline})"


def _score_arena(answers: Path, client, *, baseline, questions_path: Optional[Path], arena_hard_dir, workers,
                 out_path: Path, model_name: str, verdict_rule: str, bootstrap_rule: str,
                 judge_attempts: Optional[int]) -> tuple[dict, str, str]:
    if arena_hard_dir is None:
        raise BenchDataError(f"Arena-Hard reads its judge config, questions and baseline answers from your "
                             f"arena-hard-auto checkout: pass --arena-hard-dir DIR; {ah.OFFICIAL_SOURCE}")
    config = ah.load_judge_config(arena_hard_dir)
    questions_path = questions_path or ah.checkout_questions_path(arena_hard_dir, config.bench_name)
    baseline = Path(baseline) if baseline else ah.checkout_answers_path(arena_hard_dir, config.baseline_model,
                                                                        config.bench_name)
    try:
        questions = ah.load_questions(questions_path)
        base = ah.load_answers(baseline)
    except FileNotFoundError as error:
        raise BenchDataError(str(error).splitlines()[0]) from None
    mine = ah.load_answers(answers)
    asked = [q for q in questions if q["question_id"] in mine]
    if not asked:
        raise DataError(f"{answers} answers none of the {len(questions)} questions of {questions_path}")
    if len(asked) < len(questions):
        logger.warning("Arena-Hard: %d of %d questions answered; judging those only", len(asked), len(questions))
    records = ah.judge_answers(client, asked, {model_name: mine}, base, config=config, verdict_rule=verdict_rule,
                               attempts=judge_attempts, workers=workers)
    scored = ah.score_judgements(records, baseline=config.baseline_model, bootstrap_rule=bootstrap_rule)
    scores = scored["models"][model_name]
    metrics = {"win_rate": scores["win_rate"], "ci": scores["ci"], "counts": scores["counts"],
               "questions": scores["questions"], "questions_total": len(questions),
               **{k: scores[k] for k in ("ci_minus", "ci_plus", "games", "valid_games", "invalid", "battles")},
               "verdict_rule": verdict_rule, "bootstrap_rule": bootstrap_rule,
               "bootstrap_rounds": scored["bootstrap"], "bootstrap_seed": scored["seed"],
               "judge_attempts": judge_attempts or config.attempts,
               "games_asked_again": sum(r["attempts"] > 1 for r in records),
               "judge_config": config.record(), "questions_file": str(questions_path)}
    write_jsonl(_sidecar(out_path, "judgements", ".jsonl"), records)
    return metrics, config.sha256, f"{config.baseline_model} ({baseline})"


def _score_mt(answers: Path, client, *, data_dir, workers, out_path: Path, rating_parse: str
              ) -> tuple[dict, str, str]:
    d = _mt_bench_dir(data_dir)
    _require(d / "judge_prompts.jsonl", "MT-Bench judge prompts (mt_bench/judge_prompts.jsonl)", data_dir)
    _require(d / "reference_answer" / f"{mt.DEFAULT_REFERENCE}.jsonl",
             f"MT-Bench reference answers (mt_bench/reference_answer/{mt.DEFAULT_REFERENCE}.jsonl)", data_dir)
    questions = mt.load_questions(d)
    prompts = mt.load_judge_prompts(d)
    mine = mt.load_answers(answers)
    records = mt.grade_answers(client, questions, mine, prompts, workers=workers, progress=False,
                               rating_parse=rating_parse)
    s = mt.score_ratings(records)
    metrics = {"score": s["score"], "per_turn": s["per_turn"], "per_category": s["per_category"],
               "n_invalid": s["n_invalid"], "n": len({r["question_id"] for r in records}),
               "n_ratings": s["n_ratings"], "questions_total": len(questions), "invalid_policy": s["invalid_policy"],
               "judge_prompts_sha256": {name: p.sha256 for name, p in prompts.items()},
               "reference": mt.DEFAULT_REFERENCE, "rating_parse": s["rating_parse"]}
    write_jsonl(_sidecar(out_path, "judgements", ".jsonl"), records)
    return metrics, _sha256_file(d / "judge_prompts.jsonl"), "none (single-answer grading)"


def score_answers(
    benchmark: str,
    answers_path: str | os.PathLike,
    *,
    model_name: str,
    out_path: str | os.PathLike,
    client=None,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    baseline: Optional[str | os.PathLike] = None,
    workers: int = 8,
    arena_questions: Optional[str | os.PathLike] = None,
    arena_hard_dir: Optional[str | os.PathLike] = None,
    verdict_rule: str = "official",
    bootstrap_rule: str = "battles",
    judge_attempts: Optional[int] = None,
    rating_parse: str = "fschat",
) -> dict:
    """Judge an answers file of ``benchmark`` through ``client`` (default: ``JudgeClient()`` from the environment),
    write the contract's result JSON to ``out_path`` (and the judgements beside it) and return it.

    ``baseline``: AlpacaEval's gpt4_1106_preview outputs file or Arena-Hard's gpt-4-0314 answer JSONL (MT-Bench needs
    none). Arena-Hard needs ``arena_hard_dir``, the user's arena-hard-auto checkout (v0.1 layout): its judge config,
    and by default its questions and ``baseline_model``'s answers; ``arena_questions`` (else the file the answers
    were generated from, per their ``.meta.json``) and ``baseline`` override those two. Only the answered questions
    are judged. ``verdict_rule`` ("official" | "last"), ``bootstrap_rule`` ("battles" | "questions"),
    ``judge_attempts`` (default: the config's) and ``rating_parse`` ("fschat" | "strict", MT-Bench) pick the rules;
    the result records them. AlpacaEval: LC is alpaca_eval's or null, never our fit (``lc_win_rate_ours`` is not
    written at paper scale: it is off from the leaderboard by a median 4.7 points)."""
    _check_benchmark(benchmark)
    answers = Path(answers_path)
    if not answers.is_file():
        raise BenchDataError(f"no answers file at {answers}: run `prefopt bench-generate` first")
    out_path = Path(out_path)
    record = StageRecord(meta_path(out_path), "bench-score")
    generation = _generation_record(answers)
    if benchmark == oll.BENCHMARK:
        return _score_open_llm(answers, model_name=model_name, out_path=out_path, record=record,
                               generation=generation)
    if client is None:
        from prefopt.judges import JudgeClient

        client = JudgeClient()
    if benchmark == "alpaca_eval":
        metrics, sha, base = _score_alpaca(answers, client, baseline=baseline, workers=workers, out_path=out_path)
    elif benchmark == "arena_hard":
        qpath = arena_questions
        meta_file = answers_meta_path(answers)
        if qpath is None and meta_file.is_file():
            qpath = json.loads(meta_file.read_text(encoding="utf-8")).get("data", {}).get("questions")
        metrics, sha, base = _score_arena(answers, client, baseline=baseline, questions_path=Path(qpath) if qpath
                                          else None, arena_hard_dir=arena_hard_dir, workers=workers,
                                          out_path=out_path, model_name=model_name, verdict_rule=verdict_rule,
                                          bootstrap_rule=bootstrap_rule, judge_attempts=judge_attempts)
    else:
        metrics, sha, base = _score_mt(answers, client, data_dir=data_dir, workers=workers, out_path=out_path,
                                       rating_parse=rating_parse)
    result = finite_json({
        "benchmark": benchmark,
        "model": model_name,
        "scale": "paper",
        "metrics": metrics,
        "judge": client.model,
        "template_sha256": sha,
        "baseline": base,
        "evaluator": _evaluator(),
        "generation": generation,
        "answers": str(answers),
        "created": utc_now(),
    })
    write_json(out_path, result)
    record.finish(benchmark=benchmark, model=model_name, answers=str(answers), judge=client.model, result=str(out_path))
    return result


def _score_open_llm(answers: Path, *, model_name: str, out_path: Path, record: StageRecord, generation: dict) -> dict:
    """The Open LLM Leaderboard v2 result: lm_eval's raw scores normalised as the leaderboard does; no judge. The
    ``template_sha256`` is the hash of the lm_eval task configs that produced the scores (prompts, few-shot, metrics)."""
    metrics, run = oll.score(answers)
    doc = json.loads(answers.read_text(encoding="utf-8"))
    configs_sha = hashlib.sha256(json.dumps(doc.get("configs") or {}, sort_keys=True).encode()).hexdigest()
    result = finite_json({
        "benchmark": oll.BENCHMARK,
        "model": model_name,
        "scale": "paper",
        "metrics": metrics,
        "judge": "none (lm-eval metrics)",
        "template_sha256": configs_sha,
        "baseline": "random-guess lower bound per sub-task (Open LLM Leaderboard v2 normalisation)",
        "evaluator": package_versions(("prefopt", "lm_eval")),
        "generation": {**generation, "lm_eval": run},
        "answers": str(answers),
        "created": utc_now(),
    })
    write_json(out_path, result)
    record.finish(benchmark=oll.BENCHMARK, model=model_name, answers=str(answers), judge=result["judge"],
                  result=str(out_path))
    return result


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def _summary(benchmark: str, metrics: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.2f}"

    if benchmark == "alpaca_eval":
        return (f"WR {f(metrics.get('win_rate'))} ± {f(metrics.get('standard_error'))}, LC {f(metrics.get('lc_win_rate'))}"
                f" (ours {f(metrics.get('lc_win_rate_ours'))}), n={metrics.get('n')}")
    if benchmark == oll.BENCHMARK:
        scores = metrics.get("scores") or {}
        return (f"average {f(metrics.get('average'))}; " + ", ".join(
            f"{label} {f(scores.get(key))}" for key, label in oll.CATEGORIES.items()) + f", n={metrics.get('n')}")
    if benchmark == "arena_hard":
        lo, hi = metrics.get("ci") or (None, None)
        return f"WR {f(metrics.get('win_rate'))} [{f(lo)}, {f(hi)}], {metrics.get('questions')} questions"
    return f"score {f(metrics.get('score'))}, n={metrics.get('n')}, invalid={metrics.get('n_invalid')}"


def _cmd_generate(args) -> int:
    path = generate_answers(args.model, args.benchmark, family=args.family, model_name=args.name,
                            data_dir=args.data_dir, out_dir=args.out, limit=args.limit, seed=args.seed,
                            batch_size=args.batch_size, backend=args.backend, arena_questions=args.arena_questions,
                            arena_hard_dir=args.arena_hard_dir,
                            tasks=[t for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
                            include_path=tuple(args.include_path or ()), chat_template=args.chat_template,
                            dtype=args.dtype)
    meta = json.loads(answers_meta_path(path).read_text(encoding="utf-8"))
    print(f"{args.benchmark}: {meta['counts']['answers']} answers of {meta['model_name']} "
          f"({meta['model_family'] or 'lm-eval settings'}, {meta['backend_used']}, {meta['seconds']:.1f}s) -> {path}")
    return 0


def _cmd_score(args) -> int:
    result = score_answers(args.benchmark, args.answers, model_name=args.name, out_path=args.out,
                           data_dir=args.data_dir, baseline=args.baseline, workers=args.workers,
                           arena_questions=args.arena_questions, arena_hard_dir=args.arena_hard_dir,
                           verdict_rule=args.verdict_rule, bootstrap_rule=args.bootstrap,
                           judge_attempts=args.judge_attempts, rating_parse=args.rating_parse)
    print(f"{args.benchmark} {args.name}: {_summary(args.benchmark, result['metrics'])} "
          f"(judge {result['judge']}) -> {args.out}")
    return 0


def _batch_size(text: str) -> int | str:
    import argparse

    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch size must be an integer >= 1 or auto, got {text!r}")
    return value


def add_bench_parsers(subparsers) -> None:
    """Register ``bench-generate`` and ``bench-score`` on the ``prefopt`` CLI's subparsers."""
    gen = subparsers.add_parser("bench-generate", help="generate a model's answers to AlpacaEval 2 / Arena-Hard / "
                                                       "MT-Bench with its family's settings")
    gen.add_argument("model", metavar="MODEL", help="model folder or Hub id")
    gen.add_argument("benchmark", metavar="BENCHMARK", choices=ALL_BENCHMARKS, help=" | ".join(ALL_BENCHMARKS))
    gen.add_argument("--family", required=True,
                     help="generation settings: llama3, gemma2, mistral, qwen2 (eval/generation) or a YAML path")
    gen.add_argument("--out", required=True, help="output folder (gets <benchmark>_answers.* and .meta.json)")
    gen.add_argument("--name", default=None, help="model name in the answers (default: the model folder's name)")
    gen.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="offline eval data (default: %(default)s)")
    gen.add_argument("--limit", type=int, default=None, help="only the first N prompts (quick runs)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=_batch_size, default=8,
                     help="prompts per batch (open_llm_v2: lm_eval's batch_size, also 'auto'; default %(default)s)")
    gen.add_argument("--backend", default="auto", choices=("auto", "hf", "vllm"))
    gen.add_argument("--arena-questions", default=None,
                     help="Arena-Hard question.jsonl (default: the --arena-hard-dir checkout's, else "
                          "<data-dir>/arena_hard/question.jsonl)")
    gen.add_argument("--arena-hard-dir", default=None, help=ARENA_HARD_DIR_HELP)
    gen.add_argument("--tasks", default=None,
                     help="open_llm_v2: comma-separated lm-eval tasks (default: leaderboard, the six benchmarks)")
    gen.add_argument("--include-path", action="append", default=None, metavar="DIR",
                     help="open_llm_v2: a folder of extra lm-eval task YAMLs (repeatable)")
    gen.add_argument("--chat-template", default="auto", choices=("auto", "yes", "no"),
                     help="open_llm_v2: apply the model's chat template, few-shot as multi-turn, as the leaderboard "
                          "does for chat models (auto: when the tokenizer has one; default %(default)s)")
    gen.add_argument("--dtype", default="auto", help="open_llm_v2: the model's dtype for lm_eval (default %(default)s)")
    gen.set_defaults(func=_cmd_generate)

    score = subparsers.add_parser("bench-score", help="judge a benchmark answers file and write the result JSON")
    score.add_argument("benchmark", metavar="BENCHMARK", choices=ALL_BENCHMARKS, help=" | ".join(ALL_BENCHMARKS))
    score.add_argument("answers", metavar="ANSWERS", help="the answers file written by bench-generate")
    score.add_argument("--name", required=True, help="model name in the result")
    score.add_argument("--out", required=True, help="result JSON path, e.g. results/<model>/<benchmark>.json")
    score.add_argument("--baseline", default=None,
                       help="AlpacaEval: gpt4_1106_preview outputs JSON; Arena-Hard: gpt-4-0314 answers JSONL")
    score.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="offline eval data (default: %(default)s)")
    score.add_argument("--workers", type=int, default=8, help="parallel judge requests")
    score.add_argument("--arena-questions", default=None,
                       help="Arena-Hard question.jsonl (default: the one used at generation, else the checkout's)")
    score.add_argument("--arena-hard-dir", default=None, help=ARENA_HARD_DIR_HELP)
    score.add_argument("--verdict-rule", default="official", choices=ah.VERDICT_RULES,
                       help="Arena-Hard label rule: official (arena-hard-auto v0.1: two different labels drop the "
                            "game) or last (ours: the last label counts); default %(default)s")
    score.add_argument("--bootstrap", default="battles", choices=ah.BOOTSTRAP_RULES,
                       help="Arena-Hard interval: battles (official: resample battle rows) or questions (ours: "
                            "resample questions, wider); default %(default)s")
    score.add_argument("--judge-attempts", type=int, default=None,
                       help="Arena-Hard judge attempts per game (default: the config's number_of_judgment_attempts; "
                            "1 never re-asks)")
    score.add_argument("--rating-parse", default="fschat", choices=mt.RATING_PARSES,
                       help="MT-Bench rating parse: fschat (first [[x]], else [x]) or strict (ours: the last [[x]], "
                            "1-10); default %(default)s")
    score.set_defaults(func=_cmd_score)
