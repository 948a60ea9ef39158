"""Open LLM Leaderboard v2 through EleutherAI's lm-evaluation-harness (``lm_eval``), one command per model.

The leaderboard's own numbers come from ``lm_eval``'s ``leaderboard`` task group (IFEval, BBH, MATH level 5, GPQA,
MuSR, MMLU-Pro; ``lm_eval/tasks/leaderboard/leaderboard.yaml`` in the pinned lm_eval 0.4.13). We never score
anything ourselves: :func:`run_leaderboard` calls :func:`lm_eval.simple_evaluate` and keeps its output; only the
leaderboard's *normalisation* of the raw scores (done by Hugging Face at result-parsing time, not by lm_eval) is
written here, in :func:`normalise`.

Two steps, like the other benchmarks (``prefopt.benchmarks.runner``):

- ``prefopt bench-generate MODEL open_llm_v2 --family F --out DIR`` runs lm_eval (the expensive part) and writes
  ``DIR/open_llm_v2_answers.json`` (lm_eval's output without the samples: raw results, task configs and versions,
  n-shot, sample counts, model args), ``DIR/open_llm_v2_answers.samples.jsonl`` (every logged sample, with its task)
  and the provenance sidecar ``open_llm_v2_answers.json.meta.json`` (:class:`prefopt.runs.StageRecord`);
- ``prefopt bench-score open_llm_v2 DIR/open_llm_v2_answers.json --name M --out results/M/open_llm_v2.json``
  normalises those raw scores (no judge) into the result JSON of the contract.

Run settings follow the leaderboard's reproduction instructions (https://huggingface.co/docs/leaderboards/
open_llm_leaderboard/about, "Reproducibility"): ``--tasks leaderboard``, HF backend, and for chat models
``--apply_chat_template --fewshot_as_multiturn``; here the chat template is applied when the model has one
(``chat_template="auto"``). vLLM is used when installed and a GPU is present (``backend="auto"``).

Normalisation (https://huggingface.co/docs/leaderboards/open_llm_leaderboard/normalization): each raw score ``v``
in [0, 1] is rescaled between its random-guess baseline ``b`` (the lower bound) and 1:
``100 * (v - b) / (1 - b)``, and 0 when ``v < b``.

- multiple choice: ``b = 1 / num_choices``. BBH and MuSR normalise each sub-task with its own baseline and average the
  normalised sub-tasks (unweighted); GPQA (4 choices) and MMLU-Pro (10 choices) are normalised as one task (the
  sub-tasks' raw scores pooled by size, as lm_eval's group aggregate ``weight_by_size: true`` does);
- generative (MATH level 5, IFEval): ``b = 0``, so the score is the raw score times 100. MATH uses ``exact_match``;
  IFEval is the mean of ``prompt_level_strict_acc`` and ``inst_level_strict_acc``;
- the average is the mean of the six normalised scores (null unless all six were run).

Metrics are the leaderboard's: ``acc_norm`` for BBH, GPQA and MuSR, ``acc`` for MMLU-Pro. A sub-task not in
:data:`NUM_CHOICES` (e.g. a task of your own named like the leaderboard's, ``leaderboard_bbh_<name>``) takes its
baseline from its logged samples: the mean over its questions of 1 / (that question's number of choices).
"""

from __future__ import annotations

import json
import logging
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Sequence

from prefopt.errors import ConfigError, EvalDataError, ModelError
from prefopt.io import finite_json

logger = logging.getLogger(__name__)

BENCHMARK = "open_llm_v2"
ANSWER_SUFFIX = ".json"
DEFAULT_TASKS = ("leaderboard",)
#: The six scores, in the leaderboard's column order, and their column labels.
CATEGORIES = {"ifeval": "IFEval", "bbh": "BBH", "math_lvl5": "MATH Lvl 5", "gpqa": "GPQA", "musr": "MuSR",
              "mmlu_pro": "MMLU-PRO"}
#: lm_eval metric key (``<metric>,<filter>``) of each multiple-choice / generative category.
METRIC = {"bbh": "acc_norm,none", "gpqa": "acc_norm,none", "musr": "acc_norm,none", "mmlu_pro": "acc,none",
          "math_lvl5": "exact_match,none"}
IFEVAL_METRICS = ("prompt_level_strict_acc,none", "inst_level_strict_acc,none")
#: Categories normalised per sub-task then averaged (the others are pooled by size, then normalised once).
PER_SUBTASK = ("bbh", "musr")
#: Number of choices per leaderboard sub-task. BBH: ``len(doc_to_choice)`` of each lm_eval 0.4.13 YAML in
#: ``lm_eval/tasks/leaderboard/bbh_mc/`` (the choices the model is scored on); MuSR (2 / 5 / 3), GPQA (4) and
#: MMLU-Pro (10): the normalisation page above.
NUM_CHOICES = {
    **{f"leaderboard_bbh_{name}": n for name, n in {
        "boolean_expressions": 2, "causal_judgement": 2, "date_understanding": 6, "disambiguation_qa": 3,
        "formal_fallacies": 2, "geometric_shapes": 11, "hyperbaton": 2, "logical_deduction_five_objects": 5,
        "logical_deduction_seven_objects": 7, "logical_deduction_three_objects": 3, "movie_recommendation": 6,
        "navigate": 2, "object_counting": 19, "penguins_in_a_table": 5, "reasoning_about_colored_objects": 18,
        "ruin_names": 6, "salient_translation_error_detection": 6, "snarks": 2, "sports_understanding": 2,
        "temporal_sequences": 4, "tracking_shuffled_objects_five_objects": 5,
        "tracking_shuffled_objects_seven_objects": 7, "tracking_shuffled_objects_three_objects": 3,
        "web_of_lies": 2}.items()},
    "leaderboard_musr_murder_mysteries": 2, "leaderboard_musr_object_placements": 5,
    "leaderboard_musr_team_allocation": 3,
    "leaderboard_gpqa_diamond": 4, "leaderboard_gpqa_extended": 4, "leaderboard_gpqa_main": 4,
    "leaderboard_mmlu_pro": 10,
}
NORMALISATION = "open_llm_leaderboard_v2"
NORMALISATION_SOURCE = "https://huggingface.co/docs/leaderboards/open_llm_leaderboard/normalization"
HUB_DATA_HINT = ("the leaderboard's datasets are read from the Hugging Face Hub (SaylorTwift/bbh, Idavidrein/gpqa "
                 "(gated: accept its terms and set HF_TOKEN), DigitalLearningGmbH/MATH-lighteval, "
                 "wis-k/instruction-following-eval, TAUR-Lab/MuSR, TIGER-Lab/MMLU-Pro): run once with network "
                 "access (unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) to fill the datasets cache")


# ---------------------------------------------------------------------------------------------------------------
# Checks before anything loads
# ---------------------------------------------------------------------------------------------------------------


def check_model(model: str | os.PathLike) -> str:
    """``model`` as lm_eval's ``pretrained``: a local folder with a config and weights, or a Hub id ``org/name``.
    A folder without weights or a missing local path is a one-line :class:`ModelError`."""
    text = str(model)
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path} is a file, not a model folder: pass a trained run's final/ folder")
        weights = [p for pattern in ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
                   for p in path.glob(pattern)]
        if not weights:
            raise ModelError(f"{path} holds no model weights (*.safetensors or pytorch_model*.bin): pass a trained "
                             f"run's final/ folder")
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json: pass a trained run's final/ folder")
        return str(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text:
        raise ModelError(f"no model folder {path}")
    return text  # a Hub id: lm_eval / transformers resolve it


def has_chat_template(model: str) -> bool:
    """Whether a local model folder's tokenizer has a chat template (a Hub id is assumed to have one)."""
    path = Path(model)
    if not path.is_dir():
        return True
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return bool(config.get("chat_template"))


def _leaderboard_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / "leaderboard"


def task_manager(include_path: Sequence[str | os.PathLike] = ()):
    """lm_eval's :class:`TaskManager` over the leaderboard's task YAMLs plus ``include_path`` folders (your own task
    YAMLs, e.g. local data files). Indexing only these, not all of lm_eval's thousands of tasks, takes a fraction of
    a second instead of ~15 s."""
    from lm_eval.tasks import TaskManager

    paths = [_leaderboard_dir()]
    for p in include_path:
        if not Path(p).is_dir():
            raise ConfigError(f"--include-path {p} is not a folder of lm-eval task YAMLs")
        paths.append(Path(p))
    return TaskManager(include_path=[str(p) for p in paths], include_defaults=False)


def check_tasks(manager, tasks: Sequence[str]) -> list[str]:
    """The task names, each known to ``manager`` (a task, group or tag); else a one-line :class:`ConfigError`."""
    tasks = [t.strip() for t in tasks if t and t.strip()]
    if not tasks:
        raise ConfigError("no lm-eval tasks given")
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        groups = sorted(g for g in manager.all_groups if g.startswith("leaderboard"))
        raise ConfigError(f"unknown lm-eval task(s) {', '.join(unknown)}; the leaderboard's are {', '.join(groups)} "
                          f"(or their sub-tasks); add your own task YAMLs with --include-path DIR")
    return tasks


def load_task_data(manager, tasks: Sequence[str]) -> None:
    """Build the tasks once (this downloads / reads their datasets) so that missing data or a missing extra is a
    one-line error before the model is loaded; lm_eval reads the same datasets from the cache afterwards."""
    try:
        manager.load(list(tasks))
    except ImportError as error:
        raise ConfigError(f"an lm-eval task needs a package that is not installed ({error}); pip install -r "
                          f"requirements.txt (langdetect, immutabledict for IFEval; sympy, math_verify, "
                          f"antlr4-python3-runtime==4.11.0 for MATH)") from None
    except Exception as error:  # datasets / huggingface_hub / network errors: one line, naming the hint
        first = (str(error).strip().splitlines() or [""])[0][:300]
        raise EvalDataError(f"lm-eval could not load the data of {', '.join(tasks)} ({type(error).__name__}: "
                            f"{first}); {HUB_DATA_HINT}") from None


# ---------------------------------------------------------------------------------------------------------------
# Running lm_eval
# ---------------------------------------------------------------------------------------------------------------


def answers_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / f"{BENCHMARK}_answers{ANSWER_SUFFIX}"


def samples_path(answers: str | os.PathLike) -> Path:
    answers = Path(answers)
    return answers.with_name(f"{answers.stem}.samples.jsonl")


def _jsonable(obj: Any) -> Any:
    """lm_eval's output as strict JSON: numbers that are not finite -> None, anything else unknown -> str."""
    return json.loads(json.dumps(obj, default=str, allow_nan=True),
                      parse_constant=lambda _: None)


def lm_eval_version() -> Optional[str]:
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return None


def run_leaderboard(
    model_path: str | os.PathLike,
    *,
    out_dir: str | os.PathLike,
    model_name: Optional[str] = None,
    family: Optional[str] = None,
    tasks: Sequence[str] = DEFAULT_TASKS,
    include_path: Sequence[str | os.PathLike] = (),
    limit: Optional[int] = None,
    seed: int = 0,
    batch_size: int | str = "auto",
    backend: str = "auto",
    chat_template: str = "auto",
    dtype: str = "auto",
    device: Optional[str] = None,
) -> Path:
    """Run lm_eval's ``tasks`` (default: the ``leaderboard`` group) on ``model_path`` and write the answers file, its
    samples and its ``.meta.json``; returns the answers file. ``chat_template``: "auto" (apply the model's when it
    has one, as the leaderboard does for chat models), "yes" or "no"; with it, few-shot examples are multi-turn
    (``fewshot_as_multiturn``). ``limit``: the first N questions of each sub-task (quick checks; such scores are not
    comparable with the leaderboard's). Model, task names and data are checked before the model loads."""
    from prefopt import sample
    from prefopt.io import write_json
    from prefopt.runs import StageRecord, meta_path

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be an integer >= 1, got {limit!r}")
    if chat_template not in ("auto", "yes", "no"):
        raise ConfigError(f"chat_template must be auto, yes or no, got {chat_template!r}")
    pretrained = check_model(model_path)
    model_name = model_name or Path(str(model_path).rstrip("/")).name
    manager = task_manager(include_path)
    tasks = check_tasks(manager, tasks)
    load_task_data(manager, tasks)
    use_chat = chat_template == "yes" or (chat_template == "auto" and has_chat_template(pretrained))
    chosen = sample.resolve_backend(backend, pretrained)
    model_args: dict[str, Any] = {"pretrained": pretrained, "dtype": dtype}
    if chosen == "hf":  # lm_eval's HF backend defaults to "cuda"
        import torch

        model_args["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")

    out = answers_path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    record, t0 = StageRecord(meta_path(out), "bench-generate"), time.time()
    import lm_eval

    try:
        result = lm_eval.simple_evaluate(
            model=chosen, model_args=model_args, tasks=list(tasks), task_manager=manager, limit=limit,
            batch_size=batch_size, apply_chat_template=use_chat, fewshot_as_multiturn=use_chat, log_samples=True,
            random_seed=seed)
    except OSError as error:  # transformers: a Hub id that cannot be fetched, a broken folder
        raise ModelError(f"lm-eval could not load the model {pretrained}: "
                         f"{(str(error).strip().splitlines() or [''])[0][:300]}") from None
    if result is None:  # only on non-zero ranks of a multi-process run
        raise ConfigError("lm_eval returned no results (run one process per model)")
    samples = result.pop("samples", {}) or {}
    rows = [{"task": task, **_jsonable(s)} for task, items in samples.items() for s in items]
    from prefopt.io import write_jsonl

    write_jsonl(samples_path(out), rows)
    result.pop("pretty_env_info", None)
    doc = _jsonable({"model_name": model_name, "tasks": list(tasks), "lm_eval_version": lm_eval_version(),
                     "apply_chat_template": use_chat, "fewshot_as_multiturn": use_chat, **result})
    write_json(out, doc)
    n = {t: (v or {}).get("effective") for t, v in (doc.get("n-samples") or {}).items()}
    record.finish(benchmark=BENCHMARK, model_path=str(model_path), model_name=model_name, family=family,
                  model_family=None, settings={"tasks": list(tasks), "include_path": [str(p) for p in include_path],
                                               "apply_chat_template": use_chat, "fewshot_as_multiturn": use_chat,
                                               "model_args": model_args, "batch_size": batch_size,
                                               "lm_eval_version": lm_eval_version()},
                  seed=seed, batch_size=batch_size, backend=backend, backend_used=chosen, limit=limit,
                  counts={"prompts": sum(v or 0 for v in n.values()), "answers": len(rows), "subtasks": len(n)},
                  data={"tasks": list(tasks)}, answers=str(out), samples=str(samples_path(out)),
                  seconds=round(time.time() - t0, 3))
    logger.info("%s: %d samples of %s -> %s", BENCHMARK, len(rows), model_name, out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The leaderboard's normalisation (written here: lm_eval does not do it)
# ---------------------------------------------------------------------------------------------------------------


def category_of(task: str) -> Optional[str]:
    """Which of the six scores an lm_eval (sub-)task counts towards, by the leaderboard's task names."""
    if task.startswith("leaderboard_ifeval"):
        return "ifeval"
    for prefix, category in (("leaderboard_bbh_", "bbh"), ("leaderboard_math_", "math_lvl5"),
                             ("leaderboard_gpqa_", "gpqa"), ("leaderboard_musr_", "musr")):
        if task.startswith(prefix):
            return category
    if task.startswith("leaderboard_mmlu_pro"):
        return "mmlu_pro"
    return None


def normalise_within_range(value: float, lower_bound: float, higher_bound: float = 1.0) -> float:
    """The normalisation page's rule, scaled to 0-100: 0 below the random baseline, else the distance above it as a
    percentage of the headroom."""
    if value < lower_bound:
        return 0.0
    return (value - lower_bound) / (higher_bound - lower_bound) * 100.0


def _samples_baseline(rows: Sequence[dict]) -> Optional[float]:
    counts = [len(r.get("arguments") or ()) for r in rows]
    counts = [c for c in counts if c > 0]
    return sum(1.0 / c for c in counts) / len(counts) if counts else None


def _leaves(doc: dict) -> list[str]:
    groups = {g for g, subs in (doc.get("group_subtasks") or {}).items() if subs}
    return [t for t in (doc.get("results") or {}) if t not in groups]


def normalise(doc: dict, samples: Sequence[dict] = ()) -> dict:
    """The six normalised scores (0-100), their average and every sub-task's raw value, baseline and normalised
    score, from lm_eval's output ``doc`` (``results``, ``group_subtasks``, ``n-samples``) and, for sub-tasks not in
    :data:`NUM_CHOICES`, the logged ``samples`` (rows with a ``task`` key). See the module docstring for the rule."""
    results = doc.get("results") or {}
    n_samples = doc.get("n-samples") or {}
    by_task: dict[str, list[dict]] = {}
    for row in samples:
        by_task.setdefault(row.get("task"), []).append(row)
    subtasks: dict[str, dict] = {}
    for task in _leaves(doc):
        category = category_of(task)
        if category is None:
            continue
        values = results[task]
        n = (n_samples.get(task) or {}).get("effective") or values.get("sample_len")
        if category == "ifeval":
            raw = [values.get(k) for k in IFEVAL_METRICS]
            if any(v is None for v in raw):
                raise ConfigError(f"{task} has no {' / '.join(IFEVAL_METRICS)} in lm-eval's results")
            subtasks[task] = {"category": category, "metric": "mean(" + ", ".join(IFEVAL_METRICS) + ")",
                              "value": sum(raw) / 2, "baseline": 0.0, "baseline_source": "generative", "n": n}
            continue
        metric = METRIC[category]
        if values.get(metric) is None:
            raise ConfigError(f"{task} has no {metric} in lm-eval's results (the leaderboard scores {category} by it)")
        if category == "math_lvl5":
            baseline, source = 0.0, "generative"
        elif task in NUM_CHOICES:
            baseline, source = 1.0 / NUM_CHOICES[task], f"1/{NUM_CHOICES[task]} choices"
        else:
            baseline, source = _samples_baseline(by_task.get(task, ())), "samples: mean of 1/choices"
            if baseline is None:
                raise ConfigError(f"cannot normalise {task}: its number of choices is unknown and no samples were "
                                  f"logged")
        subtasks[task] = {"category": category, "metric": metric, "value": float(values[metric]),
                          "baseline": baseline, "baseline_source": source, "n": n}
    for row in subtasks.values():
        row["normalised"] = normalise_within_range(row["value"], row["baseline"])

    scores: dict[str, Optional[float]] = {}
    raw_scores: dict[str, Optional[float]] = {}
    for category in CATEGORIES:
        rows = [r for r in subtasks.values() if r["category"] == category]
        if not rows:
            scores[category] = raw_scores[category] = None
            continue
        if category in PER_SUBTASK:  # each sub-task normalised with its own baseline, then an unweighted mean
            scores[category] = sum(r["normalised"] for r in rows) / len(rows)
            raw_scores[category] = 100.0 * sum(r["value"] for r in rows) / len(rows)
        else:  # one task: sub-tasks pooled by size (lm_eval's weight_by_size group mean), then normalised once
            weights = [float(r["n"] or 1) for r in rows]
            total = sum(weights)
            value = sum(w * r["value"] for w, r in zip(weights, rows)) / total
            baseline = sum(w * r["baseline"] for w, r in zip(weights, rows)) / total
            scores[category] = normalise_within_range(value, baseline)
            raw_scores[category] = 100.0 * value
    present = [s for s in scores.values() if s is not None]
    missing = [c for c, s in scores.items() if s is None]
    return {
        "average": sum(present) / len(present) if present and not missing else None,
        "scores": scores,
        "raw": raw_scores,
        "subtasks": subtasks,
        "categories_missing": missing,
        "n": sum(int(r["n"] or 0) for r in subtasks.values()),
        "normalisation": NORMALISATION,
        "normalisation_source": NORMALISATION_SOURCE,
    }


def score(answers: str | os.PathLike) -> tuple[dict, dict]:
    """``(metrics, generation)`` of an answers file written by :func:`run_leaderboard`: the normalised scores plus
    the run's settings (lm_eval version, chat template, limit, n-shot, task versions)."""
    answers = Path(answers)
    try:
        doc = json.loads(answers.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{answers} is not an lm-eval answers file written by bench-generate: {error}") from None
    if not isinstance(doc, dict) or "results" not in doc:
        raise ConfigError(f"{answers} is not an lm-eval answers file written by bench-generate (no results)")
    rows: list[dict] = []
    sp = samples_path(answers)
    if sp.is_file():
        rows = [json.loads(line) for line in sp.read_text(encoding="utf-8").splitlines() if line.strip()]
    metrics = normalise(doc, rows)
    if not any(r is not None for r in metrics["scores"].values()):
        raise ConfigError(f"{answers} holds no leaderboard task (leaderboard_ifeval, leaderboard_bbh_*, "
                          f"leaderboard_math_*, leaderboard_gpqa_*, leaderboard_musr_*, leaderboard_mmlu_pro)")
    config = doc.get("config") or {}
    metrics.update({"lm_eval_version": doc.get("lm_eval_version"), "tasks": doc.get("tasks"),
                    "apply_chat_template": doc.get("apply_chat_template"),
                    "fewshot_as_multiturn": doc.get("fewshot_as_multiturn"), "limit": config.get("limit"),
                    "n_shot": doc.get("n-shot"), "task_versions": doc.get("versions")})
    generation = {"model_args": config.get("model_args"), "model": config.get("model"),
                  "batch_size": config.get("batch_size"), "random_seed": config.get("random_seed"),
                  "date": doc.get("date"), "transformers_version": doc.get("transformers_version")}
    return finite_json(metrics), finite_json(generation)
