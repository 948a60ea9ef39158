"""Open LLM Leaderboard v2 through lm_eval (prefopt.benchmarks.open_llm), offline.

Tiny tasks in the leaderboard's YAML format (lm_eval task configs reading local JSON-lines files; our own invented
questions over the tiny model's words) run through ``prefopt bench-generate MODEL open_llm_v2`` / ``bench-score`` /
``bench-table`` on the real lm_eval code path (HF backend, chat template applied). The expected numbers are computed
here, independently: each choice's log-likelihood from a plain forward pass (lm_eval's protocol: the continuation is
the tail of ``encode(context + choice)`` after ``encode(context)``, ``acc_norm`` = argmax of log-likelihood / choice
length in characters, lm_eval/api/metrics.py & api/task.py), greedy generation with ``generate`` cut at the stop
string for exact match, then the leaderboard normalisation written out again below (HF's page,
https://huggingface.co/docs/leaderboards/open_llm_leaderboard/normalization: ``(v - 1/choices) / (1 - 1/choices)``,
0 below the baseline; BBH averages its normalised sub-tasks; generative tasks have baseline 0).
"""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from prefopt.benchmarks import open_llm, tables  # noqa: E402
from prefopt.cli import main  # noqa: E402

LIMIT = 3
TWO = [("is this good", "yes"), ("is this bad", "no"), ("are you kind", "yes"), ("is it clear", "no")]
THREE = [("the apple is", "good"), ("this answer is", "bad"), ("that is very", "clear"), ("go", "away")]
THREE_CHOICES = ["good", "bad", "clear"]
GEN = ["tell me about the apple", "what is good", "how are you", "who is kind"]
MAX_GEN = 3


def _mc_yaml(task: str, data: str, choices) -> str:
    return (f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(data)}\n"
            f"output_type: multiple_choice\ntest_split: test\ndoc_to_text: 'Q: {{{{input}}}} A:'\n"
            f"doc_to_target: '{{{{target}}}}'\ndoc_to_choice: {json.dumps(choices)}\nnum_fewshot: 0\n"
            f"metric_list:\n  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
            f"metadata:\n  version: 1.0\n")


def _gen_yaml(task: str, data: str) -> str:
    return (f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(data)}\n"
            f"output_type: generate_until\ntest_split: test\ndoc_to_text: 'Problem: {{{{question}}}} Answer:'\n"
            f"doc_to_target: '{{{{answer}}}}'\nnum_fewshot: 0\ngeneration_kwargs:\n  until: ['Problem:']\n"
            f"  do_sample: false\n  max_gen_toks: {MAX_GEN}\nmetric_list:\n  - metric: exact_match\n"
            f"    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n")


def _offline(monkeypatch, cache):
    """No Hub: the environment and the already-imported libraries' copies of it (read at their import time)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))


@pytest.fixture(scope="module")
def expected_model(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return tok, model


def _context(tok, text: str) -> str:
    # lm_eval with apply_chat_template: the prompt is one user turn rendered with the model's template, ready for
    # the assistant; it begins with the BOS text, so lm_eval encodes it without adding special tokens.
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def _loglikelihood(tok, model, context: str, continuation: str) -> float:
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    return float(sum(logits[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def _acc_norm(tok, model, rows, choices) -> float:
    hits = []
    for question, target in rows[:LIMIT]:
        context = _context(tok, f"Q: {question} A:")
        scores = [_loglikelihood(tok, model, context, c) / len(c) for c in choices]
        hits.append(float(max(range(len(choices)), key=lambda i: (scores[i], -i)) == choices.index(target)))
    return sum(hits) / len(hits)


def _greedy(tok, model, question: str) -> str:
    ids = tok(_context(tok, f"Problem: {question} Answer:"), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=MAX_GEN, do_sample=False, pad_token_id=tok.pad_token_id
                             or tok.eos_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return text.split("Problem:")[0]


def _normalise(value: float, choices: int) -> float:
    lower = 1.0 / choices
    return 0.0 if value < lower else 100.0 * (value - lower) / (1.0 - lower)


@pytest.fixture(scope="module")
def leaderboard_run(tiny_model, expected_model, tmp_path_factory):
    tok, model = expected_model
    root = tmp_path_factory.mktemp("oll")
    tasks = root / "tasks"
    tasks.mkdir()
    answers = [_greedy(tok, model, q) for q in GEN]
    # the first and third targets are the greedy answers, the others a phrase the model did not produce
    decoy = "apple apple apple"
    gen_rows = [{"question": q, "answer": a if i in (0, 2) else decoy} for i, (q, a) in enumerate(zip(GEN, answers))]
    data = {"two": [{"input": q, "target": t} for q, t in TWO], "three": [{"input": q, "target": t} for q, t in THREE],
            "gen": gen_rows}
    for name, rows in data.items():
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "two.yaml").write_text(_mc_yaml("leaderboard_bbh_prefopt_two", str(tasks / "two.jsonl"), ["yes", "no"]))
    (tasks / "three.yaml").write_text(_mc_yaml("leaderboard_bbh_prefopt_three", str(tasks / "three.jsonl"),
                                               THREE_CHOICES))
    (tasks / "gen.yaml").write_text(_gen_yaml("leaderboard_math_prefopt_hard", str(tasks / "gen.jsonl")))
    expected = {"two": _acc_norm(tok, model, TWO, ["yes", "no"]), "three": _acc_norm(tok, model, THREE, THREE_CHOICES),
                "gen": sum(float(r["answer"] == a) for r, a in zip(gen_rows, answers)) / len(gen_rows)}
    expected["gen"] = sum(float(r["answer"] == a) for r, a in list(zip(gen_rows, answers))[:LIMIT]) / LIMIT
    mp = pytest.MonkeyPatch()
    _offline(mp, root / "cache")
    try:
        out, results = root / "bench" / "tiny", root / "results"
        rc = main(["bench-generate", str(tiny_model), "open_llm_v2", "--family", "llama3", "--out", str(out),
                   "--tasks", "leaderboard_bbh_prefopt_two,leaderboard_bbh_prefopt_three,leaderboard_math_prefopt_hard",
                   "--include-path", str(tasks), "--limit", str(LIMIT), "--batch-size", "2", "--backend", "hf",
                   "--name", "tiny"])
        assert rc == 0
        score_rc = main(["bench-score", "open_llm_v2", str(out / "open_llm_v2_answers.json"), "--name", "tiny",
                         "--out", str(results / "tiny" / "open_llm_v2.json")])
        assert score_rc == 0
    finally:
        mp.undo()
    return {"model": expected_model, "root": root, "out": out, "results": results, "expected": expected, "answers": answers, "tasks": tasks}


def test_scores_match_independent_forward_passes(leaderboard_run):
    run = leaderboard_run
    doc = json.loads((run["out"] / "open_llm_v2_answers.json").read_text())
    raw = doc["results"]
    exp = run["expected"]
    assert raw["leaderboard_bbh_prefopt_two"]["acc_norm,none"] == pytest.approx(exp["two"], abs=1e-9)
    assert raw["leaderboard_bbh_prefopt_three"]["acc_norm,none"] == pytest.approx(exp["three"], abs=1e-9)
    assert raw["leaderboard_math_prefopt_hard"]["exact_match,none"] == pytest.approx(exp["gen"], abs=1e-9)
    assert exp["gen"] == pytest.approx(2 / 3)  # the two greedy targets among the first three questions
    assert doc["apply_chat_template"] is True and doc["config"]["limit"] == LIMIT

    result = json.loads((run["results"] / "tiny" / "open_llm_v2.json").read_text())
    m = result["metrics"]
    bbh = (_normalise(exp["two"], 2) + _normalise(exp["three"], 3)) / 2
    assert m["scores"]["bbh"] == pytest.approx(bbh, abs=1e-9)
    assert m["scores"]["math_lvl5"] == pytest.approx(100 * exp["gen"], abs=1e-9)
    assert m["subtasks"]["leaderboard_bbh_prefopt_three"]["baseline"] == pytest.approx(1 / 3)
    assert m["average"] is None and set(m["categories_missing"]) == {"ifeval", "gpqa", "musr", "mmlu_pro"}
    assert m["n"] == 3 * LIMIT and m["limit"] == LIMIT
    # the contract's fields and provenance, like the judged benchmarks
    assert result["benchmark"] == "open_llm_v2" and result["model"] == "tiny" and result["scale"] == "paper"
    assert result["evaluator"]["lm_eval"] == open_llm.lm_eval_version() == "0.4.13"
    assert result["generation"]["backend_used"] == "hf" and result["generation"]["limit"] == LIMIT
    meta = json.loads((run["out"] / "open_llm_v2_answers.json.meta.json").read_text())
    assert meta["stage"] == "bench-generate" and meta["finished"] and meta["counts"]["answers"] == 3 * LIMIT
    assert json.loads((run["results"] / "tiny" / "open_llm_v2.json.meta.json").read_text())["stage"] == "bench-score"
    samples = [json.loads(line) for line in (run["out"] / "open_llm_v2_answers.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * LIMIT
    # each logged choice log-likelihood is the one of our own forward pass over the chat-templated prompt
    tok, model = run["model"]
    two = [s for s in samples if s["task"] == "leaderboard_bbh_prefopt_two"]
    ours = [[_loglikelihood(tok, model, _context(tok, f"Q: {q} A:"), c) for c in ("yes", "no")] for q, _ in TWO[:LIMIT]]
    theirs = [[resp[0] for resp in s["filtered_resps"]] for s in sorted(two, key=lambda s: s["doc_id"])]
    assert sum(theirs, []) == pytest.approx(sum(ours, []), abs=1e-4)


def test_bench_table_shows_the_six_scores(leaderboard_run, capsys):
    run = leaderboard_run
    assert main(["bench-table", str(run["results"])]) == 0
    table = capsys.readouterr().out
    header, row = table.splitlines()[0], [line for line in table.splitlines() if line.startswith("| tiny")][0]
    for column in (*tables.COLUMNS, *tables.OPEN_LLM_COLUMNS):
        assert column in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    m = json.loads((run["results"] / "tiny" / "open_llm_v2.json").read_text())["metrics"]
    assert cells[5] == "–" and cells[7] == f"{m['scores']['bbh']:.1f}" and cells[8] == f"{m['scores']['math_lvl5']:.1f}"
    assert "open_llm_v2: scale paper" in table and f"limit {LIMIT} per sub-task" in table


def test_normalisation_of_a_full_leaderboard_result():
    # a result shaped like lm_eval's for the six leaderboard groups (numbers invented); expected by hand from HF's rule
    doc = {"results": {"leaderboard_ifeval": {"prompt_level_strict_acc,none": 0.5, "inst_level_strict_acc,none": 0.6},
                       "leaderboard_bbh_navigate": {"acc_norm,none": 0.75},
                       "leaderboard_bbh_geometric_shapes": {"acc_norm,none": 0.05},
                       "leaderboard_math_algebra_hard": {"exact_match,none": 0.2},
                       "leaderboard_math_geometry_hard": {"exact_match,none": 0.05},
                       "leaderboard_gpqa_diamond": {"acc_norm,none": 0.4},
                       "leaderboard_gpqa_main": {"acc_norm,none": 0.25},
                       "leaderboard_musr_team_allocation": {"acc_norm,none": 0.5},
                       "leaderboard_mmlu_pro": {"acc,none": 0.28},
                       "leaderboard_gpqa": {"acc_norm,none": 0.3}},
           "group_subtasks": {"leaderboard_gpqa": ["leaderboard_gpqa_diamond", "leaderboard_gpqa_main"]},
           "n-samples": {"leaderboard_math_algebra_hard": {"effective": 300},
                         "leaderboard_math_geometry_hard": {"effective": 100},
                         "leaderboard_gpqa_diamond": {"effective": 100}, "leaderboard_gpqa_main": {"effective": 300}}}
    m = open_llm.normalise(doc)
    expected = {"ifeval": 55.0, "bbh": (50.0 + 0.0) / 2, "math_lvl5": 100 * (0.2 * 300 + 0.05 * 100) / 400,
                "gpqa": 100 * ((0.4 * 100 + 0.25 * 300) / 400 - 0.25) / 0.75, "musr": 100 * (0.5 - 1 / 3) / (2 / 3),
                "mmlu_pro": 100 * (0.28 - 0.1) / 0.9}
    for key, value in expected.items():
        assert m["scores"][key] == pytest.approx(value, abs=1e-9), key
    assert m["average"] == pytest.approx(sum(expected.values()) / 6, abs=1e-9) and m["categories_missing"] == []


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prefopt bench-generate: error:"), err
    for needle in needles:
        assert needle in err, err


def test_bad_input_is_one_line(tiny_model, tmp_path, monkeypatch, capsys):
    _offline(monkeypatch, tmp_path / "cache")
    base = ["open_llm_v2", "--family", "llama3", "--out", str(tmp_path / "out")]
    empty = tmp_path / "no_weights"
    empty.mkdir()
    for f in tiny_model.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, empty / f.name)
    _one_line_error(capsys, ["bench-generate", str(empty), *base], "no model weights")
    _one_line_error(capsys, ["bench-generate", str(tiny_model), *base, "--tasks", "leaderboard_no_such_task"],
                    "unknown lm-eval task(s) leaderboard_no_such_task", "leaderboard_bbh")
    # GPQA's data set is on the Hub only: offline and with an empty cache, one line naming the fix
    _one_line_error(capsys, ["bench-generate", str(tiny_model), *base, "--tasks", "leaderboard_gpqa_diamond"],
                    "could not load the data of leaderboard_gpqa_diamond", "HF_DATASETS_OFFLINE")
    assert not (tmp_path / "out" / "open_llm_v2_answers.json").exists()
