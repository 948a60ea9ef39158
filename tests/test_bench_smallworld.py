"""Small-world benchmarks (prefopt.smallworld.benchmarks) and the Table 2/3 builder (prefopt.benchmarks.tables)."""

from __future__ import annotations

import json

import pytest

from prefopt.benchmarks import tables
from prefopt.runs import RUN_INFO_KEYS, meta_path
from prefopt.smallworld import benchmarks as smallworld
from prefopt.smallworld.world import SmallWorld
from prefopt.tiny import build_model

CONTRACT_KEYS = {"benchmark", "model", "scale", "metrics", "judge", "template_sha256", "baseline", "evaluator",
                 "generation", "created"}
METRIC_KEYS = {
    "alpaca_eval": {"win_rate", "standard_error", "lc_win_rate", "lc_win_rate_note", "lc_win_rate_ours", "n",
                    "avg_length"},
    "arena_hard": {"win_rate", "ci", "counts", "questions"},
    "mt_bench": {"score", "per_turn", "per_category", "n_invalid", "n"},
}
N = 8


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    world = SmallWorld()
    tokenizer = world.tokenizer()
    dirs = {}
    for name, seed in (("sft", 0), ("other", 1)):
        model = build_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, max_position_embeddings=128,
                            seed=seed)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs[name] = root / name
    out = root / "out"
    results = smallworld.run_small_world_benchmarks({"same": dirs["sft"], "other": dirs["other"]}, dirs["sft"], out,
                                                    world=world, n_prompts=N, seed=0, max_new_tokens=8)
    return out, results


def test_results_files_follow_the_contract(bench):
    out, results = bench
    assert set(results) == {"same", "other"}
    for model in results:
        for benchmark in smallworld.BENCHMARKS:
            path = out / model / f"{benchmark}.json"
            assert path.is_file()
            data = json.loads(path.read_text())
            assert CONTRACT_KEYS <= set(data)
            assert METRIC_KEYS[benchmark] <= set(data["metrics"])
            assert data["benchmark"] == benchmark and data["model"] == model
            assert data["scale"] == "small" and data["judge"] == "hidden-reward"
            assert data["generation"]["model_family"] == "small-world"
            assert data["generation"]["max_new_tokens"] == 8 and data["generation"]["temperature"] == 0.8
            assert "prefopt" in data["evaluator"] and "alpaca_eval" in data["evaluator"]
            answers = out / model / f"{benchmark}_answers.{'json' if benchmark == 'alpaca_eval' else 'jsonl'}"
            meta = json.loads(meta_path(answers).read_text())
            assert set(RUN_INFO_KEYS) <= set(meta) and meta["stage"] == "bench-generate" and meta["finished"]
            assert meta["benchmark"] == benchmark and meta["generation"] == data["generation"]
        ae = results[model]["alpaca_eval"]["metrics"]
        assert 0 <= ae["win_rate"] <= 100 and 0 <= ae["lc_win_rate_ours"] <= 100
        assert ae["lc_win_rate"] is None and ae["n"] == N
        ah = results[model]["arena_hard"]["metrics"]
        assert 0 <= ah["win_rate"] <= 100 and ah["ci"][0] <= ah["win_rate"] + 1e-9 <= ah["ci"][1] + 2e-9
        assert ah["questions"] == N and sum(ah["counts"].values()) == 2 * N
        mt = results[model]["mt_bench"]["metrics"]
        assert 1 <= mt["score"] <= 10 and set(mt["per_turn"]) == {"1", "2"} and mt["n"] == N
    answers = json.loads((out / "other" / "alpaca_eval_answers.json").read_text())
    assert len(answers) == N and all(a["generator"] == "other" for a in answers)
    stage = json.loads((out / "run_info.json").read_text())
    assert set(RUN_INFO_KEYS) <= set(stage) and stage["stage"] == "bench-small" and stage["wall_seconds"] >= 0
    assert stage["n_prompts"] == N and set(stage["policies"]) == {"same", "other"}


def test_identical_policy_scores_fifty(bench):
    _, results = bench
    same = results["same"]
    assert same["alpaca_eval"]["metrics"]["win_rate"] == pytest.approx(50.0, abs=1e-9)
    assert same["alpaca_eval"]["metrics"]["lc_win_rate_ours"] == pytest.approx(50.0, abs=1e-6)
    assert same["arena_hard"]["metrics"]["win_rate"] == pytest.approx(50.0, abs=1e-6)
    assert same["arena_hard"]["metrics"]["counts"]["A=B"] == 2 * N


def test_table_markdown_and_latex(bench):
    out, _ = bench
    results = tables.load_results(out)
    assert {(r["model"], r["benchmark"]) for r in results} == {
        (m, b) for m in ("same", "other") for b in smallworld.BENCHMARKS}
    reference = {"SimPO (public)": {"alpaca_eval_lc": 53.7, "alpaca_eval_wr": 47.5, "arena_hard": 36.5}}
    md = tables.build_table(results, models=["same", "other"], reference=reference)
    lines = md.splitlines()
    for column in tables.COLUMNS:
        assert column in lines[0]
    rows = [l for l in lines if l.startswith("| same") or l.startswith("| other")]
    assert len(rows) == 2 and "50.0†" in rows[0]
    assert tables.DAGGER_NOTE in md
    public = [l for l in lines if "SimPO" in l]
    assert public and "(public, not ours)" in public[0] and "53.7" in public[0] and "–" in public[0]
    tex = tables.build_table(results, reference=reference, fmt="latex")
    tex_lines = tex.strip().splitlines()
    assert tex_lines[0].startswith(r"\begin{tabular}") and tex_lines[-1] == r"\end{tabular}"
    body = [l for l in tex_lines[1:-1] if l != r"\hline"]
    assert all(l.endswith(r"\\") for l in body)
    data_rows = [l for l in body if not l.startswith(r"\multicolumn")]
    assert len(data_rows) == 1 + 2 + 1 and all(l.count(" & ") == 4 for l in data_rows)
    assert r"$^\dagger$" in tex and "(public, not ours)" in tex


def test_table_official_lc_missing_cells_and_cli(tmp_path, capsys):
    base = {"scale": "paper", "judge": "gpt-4", "baseline": "b", "template_sha256": None, "evaluator": {},
            "generation": {}, "created": "now"}
    ae = dict(base, benchmark="alpaca_eval", model="m_1",
              metrics={"win_rate": 40.0, "standard_error": 1.0, "lc_win_rate": 45.25, "lc_win_rate_note": "",
                       "lc_win_rate_ours": 44.0, "n": 805, "avg_length": 1.0})
    (tmp_path / "m_1").mkdir()
    (tmp_path / "m_1" / "alpaca_eval.json").write_text(json.dumps(ae))
    (tmp_path / "m_1" / "alpaca_eval_answers.json").write_text("[]")
    table = tables.build_table(tables.load_results(tmp_path))
    row = [l for l in table.splitlines() if l.startswith("| m_1")][0]
    assert "45.2" in row and "†" not in table and row.count("–") == 2
    assert tables.main([str(tmp_path), "--latex"]) == 0
    assert r"m\_1" in capsys.readouterr().out
    target = tmp_path / "t.md"
    assert tables.main([str(tmp_path), "--out", str(target)]) == 0 and "| m_1" in target.read_text()


def test_table_names_rules_and_refuses_mixed_rules(tmp_path, capsys):
    base = {"scale": "paper", "judge": "gpt-4", "baseline": "b", "template_sha256": None, "evaluator": {},
            "generation": {}, "created": "now"}
    for model, verdict, bootstrap in (("m_a", "official", "battles"), ("m_b", "last", "questions")):
        (tmp_path / model).mkdir()
        (tmp_path / model / "arena_hard.json").write_text(json.dumps(dict(
            base, benchmark="arena_hard", model=model,
            metrics={"win_rate": 40.0, "ci": [38.0, 42.5], "verdict_rule": verdict, "bootstrap_rule": bootstrap})))
    results = tables.load_results(tmp_path)
    with pytest.raises(tables.ConfigError, match="arena_hard rows were scored with different rules.*m_b"):
        tables.build_table(results)
    assert tables.main([str(tmp_path)]) == 2 and "--allow-mixed-rules" in capsys.readouterr().err
    mixed = tables.build_table(results, allow_mixed_rules=True)
    assert "verdict official, bootstrap battles (m_a)" in mixed and "verdict last, bootstrap questions (m_b)" in mixed
    one = tables.build_table([r for r in results if r["model"] == "m_a"])
    assert "40.0 (-2.0, +2.5)" in one and "verdict official, bootstrap battles" in one and "(m_a)" not in one
