"""AlpacaEval 2, Arena-Hard v0.1 and MT-Bench in the small world (SPEC §8), so Tables 2 and 3 get the same columns on
a CPU: :func:`run_small_world_benchmarks`.

For every policy (and for the baseline model, the SFT model, which stands in for GPT-4-turbo / gpt-4-0314 / the
MT-Bench grader's reference) answers are generated with :func:`prefopt.sample.generate`, judged by the world's hidden
reward through each benchmark module's small-world variant, and scored with the SAME metric code as at paper scale.

Mappings relied on (all defined, and documented, in the benchmark modules; nothing is re-implemented here):

* **AlpacaEval** (:func:`prefopt.benchmarks.alpaca_eval.smallworld_annotate`): the preference (alpaca_eval's
  convention, in [1, 2], 2 = the model better) is ``1 + sigmoid((R(x, y_model) - R(x, y_base)) / T + length_bias ·
  (chars_model - chars_base))`` with the module's defaults ``T = 0.25``, ``length_bias = 0``. Instructions are the
  user turn of :meth:`SmallWorld.prompts`. Scored by :func:`alpaca_eval.compute_metrics` (raw WR ± SE and OUR LC
  fit); the official LC (``lc_win_rate``) is null: alpaca_eval's GLM needs its Hub side data and the positions in
  the 805-instruction eval set, which small-world instructions do not have.
* **Arena-Hard** (:func:`prefopt.benchmarks.arena_hard.small_world_judgements`): two games per question, positions
  swapped; the reward gap ``R(A) - R(B)`` becomes a label by :func:`arena_hard.gap_label` (``|gap| <= 0.02``: A=B;
  ``|gap| >= 0.5``: strong; else slight). Questions from :func:`arena_hard.small_world_questions`. Scored by
  :func:`arena_hard.score_judgements` (Bradley–Terry win rate vs the baseline, 100 question-bootstrap rounds).
* **MT-Bench** (:func:`prefopt.benchmarks.mt_bench.small_world_ratings`): each turn's hidden reward is mapped
  linearly onto 1–10 by :func:`mt_bench.reward_to_rating` (the reward range of ``min_words``..``max_words``-word
  answers goes to [1, 10], clipped). Two-turn questions from :func:`mt_bench.small_world_questions`; the answers
  come from :func:`mt_bench.generate_two_turn` (turn 2 sees turn 1's question and answer). Scored by
  :func:`mt_bench.score_ratings`. MT-Bench grades single answers, so the baseline takes no part in it (its answers
  are still generated and its own score written, for reference).

Decisions:

* One sampling setting for all three benchmarks (``temperature``, ``max_new_tokens``, top_k 0, top_p 1, k 1), recorded
  in every result's ``generation``. (At paper scale Arena-Hard decodes greedily; a tiny model's greedy answer is
  often degenerate, so the small world samples throughout.)
* Common random numbers: every model (policies and baseline) samples with the same seed per benchmark
  (``seed`` + a per-benchmark offset), so a policy identical to the baseline gives identical answers, AlpacaEval WR
  exactly 50 and Arena-Hard 50 (all ties).
* Prompt sets per benchmark come from their own seeds (AlpacaEval: ``world.prompts(n, seed=1000 + seed)``;
  Arena-Hard: ``small_world_questions(world, n, seed=2000 + seed)``; MT-Bench: ``small_world_questions(world, n,
  seed=seed)``, which draws from its own "mt-bench" stream), away from the demo's train/test prompts
  (``world.prompts(n_train + n_test, seed=demo seed)``); the small prompt space means some texts can still coincide.
* Layout: ``out_dir/<model>/<benchmark>.json`` (the results contract), answers beside it as
  ``<benchmark>_answers.json`` (AlpacaEval outputs list) or ``.jsonl`` (Arena-Hard / MT-Bench answer formats) with
  ``<benchmark>_answers.meta.json``, and the judge's records as ``<benchmark>_judgements.jsonl``. The baseline's
  answers go to ``out_dir/_baseline/`` (no result JSON for AlpacaEval / Arena-Hard: it is the reference there).
"""

from __future__ import annotations

import json
import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional

from prefopt.benchmarks import alpaca_eval, arena_hard, mt_bench
from prefopt.io import write_json, write_jsonl
from prefopt.smallworld.world import SmallWorld, WorldConfig

logger = logging.getLogger(__name__)

BENCHMARKS = ("alpaca_eval", "arena_hard", "mt_bench")
JUDGE = "hidden-reward"
BASELINE_DIR_NAME = "_baseline"
#: Offsets added to ``seed`` per benchmark, for its prompt set (AlpacaEval, Arena-Hard) and its sampling seed.
PROMPT_SEED_OFFSET = {"alpaca_eval": 1000, "arena_hard": 2000, "mt_bench": 0}
SAMPLE_SEED_OFFSET = {"alpaca_eval": 11, "arena_hard": 22, "mt_bench": 33}
_ARENA_ANCHOR = "__small_world_baseline__"  # the baseline's player name in the BT fit (cannot clash with a model)


def _versions() -> dict:
    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    from prefopt import __version__

    return {"prefopt": version("prefopt") or __version__, "alpaca_eval": version("alpaca_eval")}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class _Generator:
    """A loaded model + tokenizer with fixed sampling settings (one completion per prompt)."""

    def __init__(self, model_dir: Path, *, temperature: float, max_new_tokens: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"no model folder {self.model_dir}")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    def __call__(self, prompts: list, *, seed: int) -> list[str]:
        from prefopt.sample import generate

        out = generate(self.model, self.tokenizer, prompts, k=1, temperature=self.temperature, top_k=0, top_p=1.0,
                       max_new_tokens=self.max_new_tokens, seed=seed, batch_size=64, backend="hf", progress=False)
        return [texts[0] for texts in out]


def _generation_settings(benchmark: str, *, temperature: float, max_new_tokens: int, seed: int) -> dict:
    return {"model_family": "small-world", "backend": "hf", "k": 1, "temperature": temperature, "top_k": 0,
            "top_p": 1.0, "max_new_tokens": max_new_tokens, "seed": seed + SAMPLE_SEED_OFFSET[benchmark],
            "sampler": "prefopt.sample.generate"}


def _answers(gen: _Generator, world: SmallWorld, prompts: dict, *, model: str, seed: int) -> dict[str, Any]:
    """Every benchmark's answers of one model: {"alpaca_eval": outputs list, "arena_hard": {qid: text},
    "mt_bench": [fschat answers]}."""
    ae_prompts = prompts["alpaca_eval"]
    ae_texts = gen([p["prompt"] for p in ae_prompts], seed=seed + SAMPLE_SEED_OFFSET["alpaca_eval"])
    ae = alpaca_eval.make_outputs([p["prompt"][-1]["content"] for p in ae_prompts], ae_texts, model,
                                  dataset="small-world")
    ah_questions = prompts["arena_hard"]
    ah_texts = gen([[{"role": "user", "content": q["question"]}] for q in ah_questions],
                   seed=seed + SAMPLE_SEED_OFFSET["arena_hard"])
    ah = {q["question_id"]: t for q, t in zip(ah_questions, ah_texts)}
    turn = iter(range(2))

    def two_turn(convs):  # generate_two_turn calls this once per turn; each turn gets its own sampling seed
        return gen(convs, seed=seed + SAMPLE_SEED_OFFSET["mt_bench"] + 100 * next(turn))

    mt = mt_bench.generate_two_turn(prompts["mt_bench"], two_turn, model_id=model, batched=True)
    return {"alpaca_eval": ae, "arena_hard": ah, "mt_bench": mt}


def _write_answers(folder: Path, model: str, answers: dict, meta: dict) -> None:
    write_json(folder / "alpaca_eval_answers.json", answers["alpaca_eval"])
    write_jsonl(folder / "arena_hard_answers.jsonl", [
        {"question_id": qid, "answer_id": f"{model}-{qid}", "model_id": model,
         "choices": [{"index": 0, "turns": [{"content": text, "token_len": len(text.split())}]}]}
        for qid, text in answers["arena_hard"].items()])
    mt_bench.save_answers(folder / "mt_bench_answers.jsonl", answers["mt_bench"])
    for benchmark in BENCHMARKS:
        write_json(folder / f"{benchmark}_answers.meta.json", {"benchmark": benchmark, **meta[benchmark]})


def _result(benchmark: str, model: str, metrics: dict, *, baseline: str, generation: dict, extra: dict) -> dict:
    return {"benchmark": benchmark, "model": model, "scale": "small", "metrics": metrics, "judge": JUDGE,
            "template_sha256": None, "baseline": baseline, "evaluator": _versions(), "generation": generation,
            "created": _now(), **extra}


def run_small_world_benchmarks(
    policies: Mapping[str, Path],
    baseline_dir: Path,
    out_dir: Path,
    *,
    world: Optional[SmallWorld] = None,
    n_prompts: int = 64,
    seed: int = 0,
    max_new_tokens: int = 16,
    temperature: float = 0.8,
) -> dict[str, dict[str, dict]]:
    """Run the three benchmarks in the small world for every policy (see the module docstring).

    ``policies``: ``{model name: model folder}`` (``save_pretrained`` output, e.g. ``runs/<method>/final``);
    ``baseline_dir``: the baseline (SFT) model folder. Returns ``{model: {benchmark: result JSON}}`` and writes each
    result to ``out_dir/<model>/<benchmark>.json``."""
    if not policies:
        raise ValueError("no policies to evaluate")
    for name in policies:
        if not name or "/" in name or name.startswith(".") or name == BASELINE_DIR_NAME:
            raise ValueError(f"invalid model name {name!r} (used as a folder name)")
    if n_prompts < 2:
        raise ValueError("n_prompts must be >= 2 (standard errors and bootstrap intervals need two)")
    world = world or SmallWorld()
    out_dir, baseline_dir = Path(out_dir), Path(baseline_dir)
    baseline = str(baseline_dir)
    prompts = {
        "alpaca_eval": world.prompts(n_prompts, seed=seed + PROMPT_SEED_OFFSET["alpaca_eval"]),
        "arena_hard": arena_hard.small_world_questions(world, n_prompts, seed=seed + PROMPT_SEED_OFFSET["arena_hard"]),
        "mt_bench": mt_bench.small_world_questions(world, n_prompts, seed=seed + PROMPT_SEED_OFFSET["mt_bench"]),
    }
    settings = {b: _generation_settings(b, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
                for b in BENCHMARKS}
    extra = {"world": world.config.to_dict(), "n_prompts": n_prompts, "prompt_seed": None}

    def produce(name: str, model_dir: Path) -> dict:
        started = time.time()
        answers = _answers(_Generator(model_dir, temperature=temperature, max_new_tokens=max_new_tokens), world,
                           prompts, model=name, seed=seed)
        meta = {b: {"model": name, "model_dir": str(model_dir), "n": n_prompts, "generation": settings[b],
                    "world": world.config.to_dict(), "created": _now(),
                    "wall_seconds_all_benchmarks": round(time.time() - started, 3)} for b in BENCHMARKS}
        _write_answers(out_dir / (BASELINE_DIR_NAME if name == BASELINE_DIR_NAME else name), name, answers, meta)
        return answers

    base_answers = produce(BASELINE_DIR_NAME, baseline_dir)
    answers = {name: produce(name, Path(path)) for name, path in policies.items()}

    results: dict[str, dict[str, dict]] = {name: {} for name in policies}
    # --- AlpacaEval 2 ---------------------------------------------------------------------------------------------
    for name in policies:
        annotations = alpaca_eval.smallworld_annotate(world, answers[name]["alpaca_eval"], base_answers["alpaca_eval"])
        metrics = alpaca_eval.compute_metrics(annotations, judge=JUDGE, official_lc="never")
        metrics["lc_win_rate"] = None
        metrics["lc_win_rate_note"] = (
            "small world: alpaca_eval's get_length_controlled_winrate is not run (it needs df_gamed.csv from the Hub "
            "dataset tatsu-lab/alpaca_eval and positions in the 805-instruction eval set); lc_win_rate_ours is our "
            "own LC fit")
        write_jsonl(out_dir / name / "alpaca_eval_judgements.jsonl", annotations)
        results[name]["alpaca_eval"] = _result(
            "alpaca_eval", name, metrics, baseline=baseline, generation=settings["alpaca_eval"],
            extra={**extra, "prompt_seed": seed + PROMPT_SEED_OFFSET["alpaca_eval"],
                   "annotator": annotations[0]["annotator"] if annotations else None})
    # --- Arena-Hard v0.1 ------------------------------------------------------------------------------------------
    questions = prompts["arena_hard"]
    judgements = arena_hard.small_world_judgements(world, questions, {n: answers[n]["arena_hard"] for n in policies},
                                                   base_answers["arena_hard"])
    scores = arena_hard.score_judgements(judgements, baseline=_ARENA_ANCHOR, seed=seed)
    for name in policies:
        write_jsonl(out_dir / name / "arena_hard_judgements.jsonl", [j for j in judgements if j["model"] == name])
        metrics = dict(scores["models"][name])
        metrics.update(bootstrap=scores["bootstrap"], bootstrap_seed=scores["seed"],
                       label_rule="arena_hard.gap_label(tie_margin=0.02, strong_margin=0.5) on the hidden-reward gap")
        results[name]["arena_hard"] = _result(
            "arena_hard", name, metrics, baseline=baseline, generation=settings["arena_hard"],
            extra={**extra, "prompt_seed": seed + PROMPT_SEED_OFFSET["arena_hard"]})
    # --- MT-Bench -------------------------------------------------------------------------------------------------
    for name in policies:
        records = mt_bench.small_world_ratings(world, answers[name]["mt_bench"], prompts["mt_bench"])
        write_jsonl(out_dir / name / "mt_bench_judgements.jsonl", records)
        metrics = mt_bench.score_ratings(records)
        metrics["n"] = len({r["question_id"] for r in records})
        metrics["rating_rule"] = "mt_bench.reward_to_rating (hidden reward mapped linearly onto 1-10, clipped)"
        results[name]["mt_bench"] = _result(
            "mt_bench", name, metrics, baseline="none (single-answer grading)", generation=settings["mt_bench"],
            extra={**extra, "prompt_seed": seed + PROMPT_SEED_OFFSET["mt_bench"]})
    base_records = mt_bench.small_world_ratings(world, base_answers["mt_bench"], prompts["mt_bench"])
    write_json(out_dir / BASELINE_DIR_NAME / "mt_bench_score.json",
               {"model": baseline, "metrics": mt_bench.score_ratings(base_records), "judge": JUDGE})

    for name, per in results.items():
        for benchmark, result in per.items():
            write_json(out_dir / name / f"{benchmark}.json", result)
    logger.info("small-world benchmarks: %d models x %d benchmarks written to %s", len(policies), len(BENCHMARKS),
                out_dir)
    return results


def demo_policies(demo_dir: Path, methods: Optional[list[str]] = None) -> tuple[dict[str, Path], Path, SmallWorld]:
    """(policies, baseline_dir, world) of a demo output folder (``prefopt demo``): ``runs/<method>/final`` for every
    trained method (the SFT model included, as a row that sits at 50 against itself), baseline ``runs/sft/final``,
    and the world config recorded in ``world/stage.json`` (the default world when absent)."""
    demo_dir = Path(demo_dir)
    runs = demo_dir / "runs"
    found = {p.parent.name: p for p in sorted(runs.glob("*/final")) if p.is_dir()}
    if methods is not None:
        missing = [m for m in methods if m not in found]
        if missing:
            raise FileNotFoundError(f"no trained model for {missing} under {runs}")
        found = {m: found[m] for m in methods}
    baseline = runs / "sft" / "final"
    if not baseline.is_dir():
        raise FileNotFoundError(f"no SFT model at {baseline} (run prefopt demo first)")
    marker = demo_dir / "world" / "stage.json"
    config = json.loads(marker.read_text()).get("world") if marker.is_file() else None
    world = SmallWorld(WorldConfig(**config)) if config else SmallWorld()
    return found, baseline, world
