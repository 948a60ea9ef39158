"""A reduced `make demo` end to end (SPEC §8, §9): the outputs exist with the right shapes, preference optimisation
beats the SFT model under the hidden reward (the science working, seeded), and a rerun reuses every finished stage.

One demo run is shared by every test (a module fixture), on a smaller world than `make demo`'s so that the whole file
takes seconds: 128 training prompts instead of 512 (SFT: 512 responses, 1 epoch at a higher learning rate), K = 2
samples per prompt instead of 4, 16 preference steps at a higher learning rate and 32 held-out prompts; three methods
(DPO, SimPO, γ-SimPO)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from prefopt.plots import draw_demo_figures
from prefopt.smallworld.demo import DemoSettings, run_demo
from prefopt.smallworld.world import SmallWorld, HiddenRewardJudge
from prefopt.winrate import judge_both_orders, win_rate

METHODS = ("dpo", "simpo", "gamma_simpo")
N_TEST = 32  # held-out prompts, each sampled twice (eval_samples)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    settings = DemoSettings(out=str(out), n_train_prompts=128, n_test_prompts=N_TEST, k=2, sft_epochs=1.0,
                            sft_learning_rate=1e-2, pref_learning_rate=4e-3, methods=METHODS)
    metrics = run_demo(settings, progress=False)
    draw_demo_figures(out, [out / "runs" / name for name in metrics["results"]])  # what `prefopt demo` draws
    return out, settings, metrics


def test_outputs_have_the_promised_shape(demo):
    out, settings, metrics = demo
    table = (out / "table.md").read_text()
    assert f"{N_TEST} held-out prompts × 2 samples" in table
    for label in ("SFT", "DPO", "SimPO", "γ-SimPO"):
        assert f"| {label} |" in table
    saved = json.loads((out / "metrics.json").read_text())
    assert list(saved["results"]) == ["sft", *METHODS]
    for name in ["sft", *METHODS]:
        run = out / "runs" / name
        for file in ("config.yaml", "run_info.json", "metrics.jsonl", "eval.json", "samples_test.jsonl"):
            assert (run / file).is_file(), f"{name}/{file}"
        result = json.loads((run / "eval.json").read_text())
        assert result["n_prompts"] == N_TEST and result["n_samples"] == 2 * N_TEST
        assert result["win_rate_vs_chosen"]["pairs"] > 0 and result["win_rate_vs_sft"]["n"] == 2 * 2 * N_TEST
        lo, hi = result["win_rate_vs_sft"]["ci"]
        assert lo <= result["win_rate_vs_sft"]["win_rate"] <= hi
    for name in METHODS:
        assert (out / "runs" / name / "margins.jsonl").is_file()
    for png in ("margins.png", "frontier.png", "curves.png", "winrates.png"):
        assert (out / "figures" / png).stat().st_size > 10_000, png


def test_preference_optimisation_beats_sft_under_the_hidden_reward(demo):
    _, _, metrics = demo
    results = metrics["results"]
    sft_reward = results["sft"]["mean_hidden_reward"]
    for name in ("dpo", "simpo"):
        result = results[name]
        assert result["mean_hidden_reward_ci"][0] > sft_reward, (name, result["mean_hidden_reward"], sft_reward)
        assert result["win_rate_vs_sft"]["win_rate"] > 0.55, name
        assert result["kl_to_reference"] > 0  # it moved away from the reference to get there


def test_gamma_simpo_margins_follow_the_gaps(demo):
    out, _, _ = demo
    rows = [json.loads(line) for line in (out / "runs" / "gamma_simpo" / "margins.jsonl").read_text().splitlines()]
    last_step = max(r["step"] for r in rows)
    last = sorted((r["reward_gap"], r["margin"]) for r in rows if r["step"] == last_step)
    margins = [m for _, m in last]
    assert margins == sorted(margins)  # larger gap, larger margin (SPEC §5)
    assert margins[0] < 1.0 < margins[-1]  # around γ0 = β·γ/β = 2.0 × 0.5


def test_evaluation_judges_every_sample_against_the_right_baseline(demo):
    """Recompute the DPO win rate against SFT from the saved samples with an independent loop."""
    out, settings, metrics = demo
    world, judge = SmallWorld(settings.world), HiddenRewardJudge(SmallWorld(settings.world))
    policy = [json.loads(l) for l in (out / "runs" / "dpo" / "samples_test.jsonl").read_text().splitlines()]
    sft = {json.loads(l)["id"]: json.loads(l) for l in (out / "runs" / "sft" / "samples_test.jsonl").read_text().splitlines()}
    outcomes = []
    for row in policy:
        for mine, theirs in zip(row["completions"], sft[row["id"]]["completions"]):
            r_mine, r_theirs = world.hidden_reward(row["prompt"], mine), world.hidden_reward(row["prompt"], theirs)
            expected = "win" if r_mine > r_theirs else "loss" if r_mine < r_theirs else "tie"
            got = judge_both_orders(judge, row["prompt"], mine, theirs)
            assert got == [expected, expected]
            outcomes.append(got)
    assert win_rate(outcomes).win_rate == pytest.approx(metrics["results"]["dpo"]["win_rate_vs_sft"]["win_rate"])


def test_small_world_benchmarks_on_the_demo_policies(demo, capsys):
    """`prefopt bench-small`: AlpacaEval 2, Arena-Hard and MT-Bench on the demo's policies, one table."""
    from prefopt.cli import main as prefopt

    out, _, _ = demo
    assert prefopt(["bench-small", "--demo", str(out), "--out", str(out / "bench"), "--n-prompts", "8"]) == 0
    table = (out / "bench" / "table.md").read_text()
    for model in ("sft", *METHODS):
        assert f"| {model} |" in table
    dpo = json.loads((out / "bench" / "dpo" / "alpaca_eval.json").read_text())
    sft = json.loads((out / "bench" / "sft" / "alpaca_eval.json").read_text())
    assert sft["metrics"]["win_rate"] == pytest.approx(50.0)  # the baseline against itself
    assert dpo["metrics"]["win_rate"] > 55.0 and dpo["scale"] == "small" and dpo["judge"] == "hidden-reward"


def test_rerun_reuses_finished_stages_and_redoes_changed_ones(demo):
    out, settings, metrics = demo
    markers = sorted(out.glob("**/stage.json"))
    before = {p: p.stat().st_mtime_ns for p in markers}
    table = (out / "table.md").read_text()
    again = run_demo(settings, progress=False)
    assert {p: p.stat().st_mtime_ns for p in markers} == before  # nothing was redone
    assert (out / "table.md").read_text() == table and again["results"] == metrics["results"]

    # other label noise: world, SFT and samples are reused, labels and the method runs are redone
    noisier = run_demo(replace(settings, noise=0.3, methods=("dpo",)), progress=False)
    for stage in ("world", "runs/sft", "samples"):
        assert (out / stage / "stage.json").stat().st_mtime_ns == before[out / stage / "stage.json"]
    assert (out / "data" / "stage.json").stat().st_mtime_ns != before[out / "data" / "stage.json"]
    assert noisier["label_stats"]["train"]["flipped"] > metrics["label_stats"]["train"]["flipped"]


def test_changed_outputs_redo_their_stage_and_a_retrained_model_its_evaluation(demo, tmp_path, monkeypatch, caplog):
    """Stale results are not trusted (on a copy of the fixture's folder, which the other tests share): (a) a cut pairs
    file or a truncated model.safetensors redoes the stage that wrote it (and, when the rebuilt output differs, every
    stage that read it); (b) a run retrained on other data (its stage.json deleted) gets its evaluation redone, so the
    table shows the new model's numbers."""
    import logging
    import shutil

    from prefopt.fingerprints import fingerprint
    from prefopt.smallworld import demo as demo_module

    out, settings, _ = demo
    copy = tmp_path / "demo"
    shutil.copytree(out, copy)
    settings = replace(settings, out=str(copy), methods=("dpo", "simpo"))
    # settle the copy on these settings first (the rerun test above relabels the shared folder at another noise)
    metrics = run_demo(settings, progress=False)
    table = (copy / "table.md").read_text()
    pairs = copy / "data" / "pref_train.jsonl"
    lines = pairs.read_text().splitlines(keepends=True)
    model = copy / "runs" / "dpo" / "final" / "model.safetensors"
    model_fp = fingerprint(model.parent)
    stamp = lambda p: (copy / p / "stage.json").stat().st_mtime_ns
    before = {p: stamp(p) for p in ("data", "runs/dpo", "runs/dpo/eval", "runs/simpo", "runs/simpo/eval")}

    # (a) cut the pairs file to half its lines, truncate DPO's model
    pairs.write_text("".join(lines[: len(lines) // 2]))
    model.write_bytes(model.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="prefopt.smallworld.demo"):
        again = run_demo(settings, progress=False)
    assert pairs.read_text().splitlines(keepends=True) == lines  # the label stage was redone
    assert stamp("data") != before["data"]
    assert stamp("runs/dpo") != before["runs/dpo"] and model.stat().st_size > 1000  # DPO retrained
    assert any("pref_train.jsonl changed size" in r.message for r in caplog.records), caplog.text
    assert any("model.safetensors changed size" in r.message for r in caplog.records), caplog.text
    if fingerprint(model.parent) != model_fp:  # the retrained model differs: its evaluation is redone
        assert stamp("runs/dpo/eval") != before["runs/dpo/eval"]
    else:  # the same model again: its evaluation still holds, and the table is the same
        assert (copy / "table.md").read_text() == table
    assert stamp("runs/simpo") == before["runs/simpo"]  # relabelled pairs are identical: SimPO is kept
    assert again["results"]["simpo"] == metrics["results"]["simpo"]

    # (b) DPO retrained on the first quarter of its pairs (its stage.json deleted): its evaluation follows
    (copy / "runs" / "dpo" / "stage.json").unlink()
    eval_before = stamp("runs/dpo/eval")
    train = demo_module.Pipeline._train

    def train_on_fewer_rows(self, folder, model_path, data, *args, **kwargs):
        if folder.name == "dpo":
            fewer = tmp_path / "pref_train_quarter.jsonl"
            fewer.write_text("".join(Path(data).read_text().splitlines(keepends=True)[: len(lines) // 4]))
            data = fewer
        return train(self, folder, model_path, data, *args, **kwargs)

    monkeypatch.setattr(demo_module.Pipeline, "_train", train_on_fewer_rows)
    retrained = run_demo(settings, progress=False)
    assert stamp("runs/dpo/eval") != eval_before
    assert retrained["results"]["dpo"] != again["results"]["dpo"]
    assert json.loads((copy / "runs" / "dpo" / "eval.json").read_text()) == retrained["results"]["dpo"]
    assert (copy / "table.md").read_text() != table
    assert stamp("runs/simpo/eval") == before["runs/simpo/eval"]
