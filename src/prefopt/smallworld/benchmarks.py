"""AlpacaEval 2, Arena-Hard v0.1 and MT-Bench in the small world (SPEC §8), so Tables 2 and 3 get the same columns on
a CPU: :func:`run_small_world_benchmarks`.

The small world is a client of the benchmark modules: it brings its prompts and a judge that knows the hidden reward,
and everything else — pairing, order switching, judging, records and metrics — is the paper path's own code
(:func:`prefopt.benchmarks.alpaca_eval.annotate` / ``compute_metrics``, :func:`prefopt.benchmarks.arena_hard.
judge_answers` / ``score_judgements``, :func:`prefopt.benchmarks.mt_bench.grade_answers` / ``score_ratings``). The
three judges have the interfaces those functions ask of the LLM judges:

* **AlpacaEval** (:class:`HiddenRewardAlpacaJudge`, an :class:`~prefopt.benchmarks.alpaca_eval.AlpacaJudge`): the
  preference (alpaca_eval's convention, in [1, 2], 2 = the second output better) is ``1 + sigmoid((R(x, y_2) -
  R(x, y_1)) / T + length_bias · (chars_2 - chars_1))``, defaults ``T = 0.25``, ``length_bias = 0``. The outputs
  are shown in alpaca_eval's switched or unswitched order like the LLM judge's, and the order undone after. Scored by
  ``compute_metrics`` (raw WR ± SE and OUR LC fit); the official LC (``lc_win_rate``) is null: alpaca_eval's GLM
  needs its Hub side data and the positions in the 805-instruction eval set, which small-world instructions lack.
* **Arena-Hard** (:class:`HiddenRewardArenaJudge`, an :class:`~prefopt.benchmarks.arena_hard.ArenaJudge`): two
  games per question, positions swapped; the reward gap ``R(A) + position_bias - R(B)`` becomes a label by
  :func:`gap_label` (``|gap| <= 0.02``: A=B; ``|gap| >= 0.5``: strong; else slight), written as the judge's answer
  ``reward gap (A - B) +0.1234: [[A>B]]`` that ``parse_verdict`` reads. Questions from :func:`arena_questions`.
  Scored by ``score_judgements`` (Bradley–Terry win rate vs the baseline, 100 bootstrap rounds over battle rows,
  arena-hard-auto v0.1's rule).
* **MT-Bench** (:class:`HiddenRewardRatingJudge`, a :class:`~prefopt.benchmarks.mt_bench.RatingJudge`): each
  turn's hidden reward (for the conversation so far: the last user turn names the topic) is mapped linearly onto
  1–10 by :func:`reward_to_rating`. Two-turn questions from :func:`mt_bench_questions`; the answers come from
  ``generate_two_turn`` (turn 2 sees turn 1's question and answer). Scored by ``score_ratings``. MT-Bench grades
  single answers, so the baseline takes no part in it (its answers are still generated and its own score written).

Decisions:

* One sampling setting for all three benchmarks (``temperature``, ``max_new_tokens``, top_k 0, top_p 1, k 1), recorded
  in every result's ``generation``. (At paper scale Arena-Hard decodes greedily; a tiny model's greedy answer is
  often degenerate, so the small world samples throughout.)
* Common random numbers: every model (policies and baseline) samples with the same seed per benchmark
  (``seed`` + a per-benchmark offset), so a policy identical to the baseline gives identical answers, AlpacaEval WR
  exactly 50 and Arena-Hard 50 (all ties).
* Prompt sets per benchmark come from their own seeds (AlpacaEval: ``world.prompts(n, seed=1000 + seed)``;
  Arena-Hard: ``arena_questions(world, n, seed=2000 + seed)``; MT-Bench: ``mt_bench_questions(world, n, seed=seed)``,
  which draws from its own "mt-bench" stream), away from the demo's train/test prompts (``world.prompts(n_train +
  n_test, seed=demo seed)``); the small prompt space means some texts can still coincide.
* Layout: ``out_dir/<model>/<benchmark>.json`` (the results contract), answers beside it as
  ``<benchmark>_answers.json`` (AlpacaEval outputs list) or ``.jsonl`` (Arena-Hard / MT-Bench answer formats) with
  their provenance sidecar :func:`prefopt.runs.meta_path` (``<answers>.meta.json``, stage ``bench-generate``, as
  ``prefopt bench-generate`` writes), the judge's records as ``<benchmark>_judgements.jsonl``, and the stage's own
  record ``out_dir/run_info.json`` (stage ``bench-small``). The baseline's answers go to ``out_dir/_baseline/`` (no
  result JSON for AlpacaEval / Arena-Hard: it is the reference there).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from prefopt.benchmarks import alpaca_eval, arena_hard, mt_bench
from prefopt.benchmarks.mt_bench import Question
from prefopt.io import write_json, write_jsonl
from prefopt.runs import StageRecord, meta_path, package_versions, utc_now
from prefopt.smallworld.world import CONTEXT, OPENERS, SmallWorld, WorldConfig

logger = logging.getLogger(__name__)

BENCHMARKS = ("alpaca_eval", "arena_hard", "mt_bench")
JUDGE = "hidden-reward"
BASELINE_DIR_NAME = "_baseline"
#: Offsets added to ``seed`` per benchmark, for its prompt set (AlpacaEval, Arena-Hard) and its sampling seed.
PROMPT_SEED_OFFSET = {"alpaca_eval": 1000, "arena_hard": 2000, "mt_bench": 0}
SAMPLE_SEED_OFFSET = {"alpaca_eval": 11, "arena_hard": 22, "mt_bench": 33}
_ARENA_ANCHOR = "__small_world_baseline__"  # the baseline's player name in the BT fit (cannot clash with a model)


# ----------------------------------------------------------------------------------------------------------------------
# Prompts in each benchmark's format
# ----------------------------------------------------------------------------------------------------------------------


def arena_questions(world: SmallWorld, n: int, *, seed: int) -> list[dict]:
    """``n`` small-world prompts as Arena-Hard questions (category ``small-world``, cluster = topic)."""
    return [{"question_id": p["id"], "category": "small-world", "cluster": p["topic"],
             "turns": [{"content": p["prompt"][-1]["content"]}], "question": p["prompt"][-1]["content"]}
            for p in world.prompts(n, seed=seed)]


def mt_bench_questions(world: SmallWorld, n: int, *, seed: int = 0) -> list[Question]:
    """``n`` two-turn MT-Bench questions in the small world's prompt language (``"<opener> <context> <topic> ?"``,
    only words of the world's vocabulary): topics round-robin (balanced), turn 2 asks about the same topic with
    another opener; category = topic; ids 1..n. Deterministic in (world seed, ``seed``)."""
    rng = random.Random(f"{world.config.seed}/mt-bench/{seed}")
    topics = list(world.topics)
    questions = []
    for i in range(n):
        topic = topics[i % len(topics)]
        first, second = rng.sample(OPENERS, 2)
        turns = (f"{first} {rng.choice(CONTEXT)} {topic} ?", f"{second} {rng.choice(CONTEXT)} {topic} ?")
        questions.append(Question(i + 1, topic, turns))
    return questions


# ----------------------------------------------------------------------------------------------------------------------
# The hidden-reward judges, one per benchmark interface
# ----------------------------------------------------------------------------------------------------------------------


class HiddenRewardAlpacaJudge:
    """AlpacaEval's judge interface from the hidden reward: ``prefer(instruction, output_1, output_2)`` is ``1 +
    sigmoid((R(x, y_2) - R(x, y_1)) / temperature + length_bias · (chars_2 - chars_1))``. ``length_bias`` (logits
    per character) is a judge verbosity bias on top of the world's own ``length_weight``."""

    model = "smallworld-hidden-reward"

    def __init__(self, world: SmallWorld, *, temperature: float = 0.25, length_bias: float = 0.0):
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.world, self.temperature, self.length_bias = world, temperature, length_bias
        self.name = f"smallworld_hidden_reward(T={temperature:g},length_bias={length_bias:g})"

    def prefer(self, instruction: str, output_1: str, output_2: str) -> dict:
        gap = self.world.hidden_reward(instruction, output_2) - self.world.hidden_reward(instruction, output_1)
        logit = gap / self.temperature + self.length_bias * (len(output_2) - len(output_1))
        return {"preference": 1.0 + float(np.exp(-np.logaddexp(0.0, -logit))), "key": None, "cached": False}


def gap_label(gap: float, *, tie_margin: float, strong_margin: float) -> str:
    """A reward gap (A minus B) as an Arena-Hard verdict label: within ``tie_margin`` a tie, beyond
    ``strong_margin`` strong."""
    if not 0 <= tie_margin < strong_margin:
        raise ValueError("need 0 <= tie_margin < strong_margin")
    if abs(gap) <= tie_margin:
        return "A=B"
    strong = abs(gap) >= strong_margin
    if gap > 0:
        return "A>>B" if strong else "A>B"
    return "B>>A" if strong else "B>A"


class HiddenRewardArenaJudge:
    """Arena-Hard's judge interface from the hidden reward: the gap ``R(A) + position_bias - R(B)`` as a verdict
    label (:func:`gap_label`; the :class:`~prefopt.smallworld.world.HiddenRewardJudge` rule with a strong band),
    written into the judge's answer text."""

    name = JUDGE

    def __init__(self, world: SmallWorld, *, tie_margin: float = 0.02, strong_margin: float = 0.5,
                 position_bias: float = 0.0):
        gap_label(0.0, tie_margin=tie_margin, strong_margin=strong_margin)  # checks the margins
        self.world, self.tie_margin, self.strong_margin = world, tie_margin, strong_margin
        self.position_bias = position_bias

    def judge_game(self, question: str, answer_a: str, answer_b: str) -> dict:
        gap = self.world.hidden_reward(question, answer_a) + self.position_bias - self.world.hidden_reward(
            question, answer_b)
        label = gap_label(gap, tie_margin=self.tie_margin, strong_margin=self.strong_margin)
        return {"content": f"reward gap (A - B) {gap:+.4f}: [[{label}]]", "cached": False}


def reward_to_rating(world: SmallWorld, reward: float) -> float:
    """Linear map of the hidden reward onto 1–10: the reward range of answers of ``min_words``..``max_words`` words,
    ``[-1 + w·min_words, 1 + w·max_words]`` (w = ``length_weight``), goes to [1, 10]; outside it is clipped (an empty
    answer, reward −1, rates 1; a longer-than-max answer at most 10)."""
    c = world.config
    lo, hi = -1.0 + c.length_weight * c.min_words, 1.0 + c.length_weight * c.max_words
    return min(10.0, max(1.0, 1.0 + 9.0 * (reward - lo) / (hi - lo)))


class HiddenRewardRatingJudge:
    """MT-Bench's judge interface from the hidden reward: turn t is rated :func:`reward_to_rating` of its answer's
    reward for the conversation so far (the last user turn names the topic); the reward is kept in the record."""

    name = JUDGE

    def __init__(self, world: SmallWorld):
        self.world = world

    def rate(self, question: Question, answer_turns: Sequence[str], turn: int) -> dict:
        conv: list[dict] = []
        for t in range(turn):
            conv.append({"role": "user", "content": question.turns[t]})
            if t < turn - 1:
                conv.append({"role": "assistant", "content": answer_turns[t]})
        reward = self.world.hidden_reward(conv, answer_turns[turn - 1])
        return {"rating": reward_to_rating(self.world, reward), "reward": reward, "judgment": None,
                "judge_prompt": None, "cached": False}


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------


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


def _answers(gen: _Generator, prompts: dict, *, model: str, seed: int) -> dict[str, Any]:
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


def _answer_files(folder: Path) -> dict[str, Path]:
    return {"alpaca_eval": folder / "alpaca_eval_answers.json", "arena_hard": folder / "arena_hard_answers.jsonl",
            "mt_bench": folder / "mt_bench_answers.jsonl"}


def _write_answers(files: Mapping[str, Path], model: str, answers: dict) -> None:
    alpaca_eval.save_outputs(answers["alpaca_eval"], files["alpaca_eval"])
    arena_hard.write_answers(files["arena_hard"], model, answers["arena_hard"])
    mt_bench.save_answers(files["mt_bench"], answers["mt_bench"])


def _result(benchmark: str, model: str, metrics: dict, *, baseline: str, generation: dict, extra: dict) -> dict:
    return {"benchmark": benchmark, "model": model, "scale": "small", "metrics": metrics, "judge": JUDGE,
            "template_sha256": None, "baseline": baseline, "evaluator": package_versions(("prefopt", "alpaca_eval")),
            "generation": generation, "created": utc_now(), **extra}


# ----------------------------------------------------------------------------------------------------------------------
# The three benchmarks
# ----------------------------------------------------------------------------------------------------------------------


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
    stage = StageRecord(out_dir / "run_info.json", "bench-small")
    stage.update(policies={n: str(p) for n, p in policies.items()}, baseline=baseline, n_prompts=n_prompts,
                 seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, world=world.config.to_dict(),
                 judge=JUDGE)
    prompts = {
        "alpaca_eval": world.prompts(n_prompts, seed=seed + PROMPT_SEED_OFFSET["alpaca_eval"]),
        "arena_hard": arena_questions(world, n_prompts, seed=seed + PROMPT_SEED_OFFSET["arena_hard"]),
        "mt_bench": mt_bench_questions(world, n_prompts, seed=seed + PROMPT_SEED_OFFSET["mt_bench"]),
    }
    settings = {b: _generation_settings(b, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
                for b in BENCHMARKS}
    extra = {"world": world.config.to_dict(), "n_prompts": n_prompts, "prompt_seed": None}

    def produce(name: str, model_dir: Path) -> dict:
        files = _answer_files(out_dir / name)
        records = {b: StageRecord(meta_path(files[b]), "bench-generate") for b in BENCHMARKS}
        answers = _answers(_Generator(model_dir, temperature=temperature, max_new_tokens=max_new_tokens), prompts,
                           model=name, seed=seed)
        _write_answers(files, name, answers)
        for b in BENCHMARKS:  # the three benchmarks' answers are generated together: one wall time for all
            records[b].finish(benchmark=b, model=name, model_dir=str(model_dir), n=n_prompts,
                              generation=settings[b], world=world.config.to_dict(), answers=str(files[b]))
        return answers

    base_answers = produce(BASELINE_DIR_NAME, baseline_dir)
    answers = {name: produce(name, Path(path)) for name, path in policies.items()}

    results: dict[str, dict[str, dict]] = {name: {} for name in policies}
    # --- AlpacaEval 2 ---------------------------------------------------------------------------------------------
    ae_judge = HiddenRewardAlpacaJudge(world)
    for name in policies:
        annotations = alpaca_eval.annotate(answers[name]["alpaca_eval"], base_answers["alpaca_eval"], ae_judge)
        metrics = alpaca_eval.compute_metrics(annotations, judge=JUDGE, official_lc="never")
        metrics["lc_win_rate"] = None
        metrics["lc_win_rate_note"] = (
            "small world: alpaca_eval's get_length_controlled_winrate is not run (it needs df_gamed.csv from the Hub "
            "dataset tatsu-lab/alpaca_eval and positions in the 805-instruction eval set); lc_win_rate_ours is our "
            "own LC fit")
        write_jsonl(out_dir / name / "alpaca_eval_judgements.jsonl", annotations)
        results[name]["alpaca_eval"] = _result(
            "alpaca_eval", name, metrics, baseline=baseline, generation=settings["alpaca_eval"],
            extra={**extra, "prompt_seed": seed + PROMPT_SEED_OFFSET["alpaca_eval"], "annotator": ae_judge.name})
    # --- Arena-Hard v0.1 ------------------------------------------------------------------------------------------
    ah_judge = HiddenRewardArenaJudge(world)
    judgements = arena_hard.judge_answers(ah_judge, prompts["arena_hard"],
                                          {n: answers[n]["arena_hard"] for n in policies}, base_answers["arena_hard"])
    scores = arena_hard.score_judgements(judgements, baseline=_ARENA_ANCHOR, seed=seed)
    for name in policies:
        write_jsonl(out_dir / name / "arena_hard_judgements.jsonl", [j for j in judgements if j["model"] == name])
        metrics = dict(scores["models"][name])
        metrics.update(bootstrap=scores["bootstrap"], bootstrap_seed=scores["seed"],
                       label_rule=f"gap_label(tie_margin={ah_judge.tie_margin:g}, "
                                  f"strong_margin={ah_judge.strong_margin:g}) on the hidden-reward gap")
        results[name]["arena_hard"] = _result(
            "arena_hard", name, metrics, baseline=baseline, generation=settings["arena_hard"],
            extra={**extra, "prompt_seed": seed + PROMPT_SEED_OFFSET["arena_hard"]})
    # --- MT-Bench -------------------------------------------------------------------------------------------------
    mt_judge = HiddenRewardRatingJudge(world)
    for name in policies:
        records = mt_bench.grade_answers(mt_judge, prompts["mt_bench"], answers[name]["mt_bench"], progress=False)
        write_jsonl(out_dir / name / "mt_bench_judgements.jsonl", records)
        metrics = mt_bench.score_ratings(records)
        metrics["n"] = len({r["question_id"] for r in records})
        metrics["rating_rule"] = "reward_to_rating (hidden reward mapped linearly onto 1-10, clipped)"
        results[name]["mt_bench"] = _result(
            "mt_bench", name, metrics, baseline="none (single-answer grading)", generation=settings["mt_bench"],
            extra={**extra, "prompt_seed": seed + PROMPT_SEED_OFFSET["mt_bench"]})
    base_records = mt_bench.grade_answers(mt_judge, prompts["mt_bench"], base_answers["mt_bench"], progress=False)
    write_json(out_dir / BASELINE_DIR_NAME / "mt_bench_score.json",
               {"model": baseline, "metrics": mt_bench.score_ratings(base_records), "judge": JUDGE})

    for name, per in results.items():
        for benchmark, result in per.items():
            write_json(out_dir / name / f"{benchmark}.json", result)
    stage.finish(results={name: sorted(per) for name, per in results.items()})
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
