"""The Table 1 pipeline (SPEC §6.1) end to end through the `prefopt` command line, on HH-format data written here and
a tiny GPT-NeoX standing in for Pythia-2.8B: SFT → reward model → sample K = 4 → label → EXO (rw) → sample → pairwise
judge (a real local OpenAI-compatible server) → the reward model's mean reward."""

import json
import random

import pytest

from prefopt.cli import main as prefopt
from prefopt.scoring import completion_logps
from prefopt.tiny import save_tiny

# The whole pipeline (SFT, RM, sampling, EXO, judging) runs in the module fixture: tens of seconds on 2 CPU cores.
pytestmark = pytest.mark.slow

GOOD = "sure here is a clear and kind answer".split()
BAD = "no go away i will not".split()
TOPICS = "apple river stone cat moon tree".split()


def _hh_rows(n, rng):
    rows = []
    for _ in range(n):
        topic, other = rng.choice(TOPICS), rng.choice(TOPICS)
        shared = f"\n\nHuman: tell me about the {topic}\n\nAssistant: the {topic} ?\n\nHuman: yes the {other} please"
        good = " ".join(rng.sample(GOOD, 4)) + f" the {topic} ."
        bad = " ".join(rng.sample(BAD, 3)) + " ."
        rows.append({"chosen": f"{shared}\n\nAssistant: {good}", "rejected": f"{shared}\n\nAssistant: {bad}"})
    return rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _yaml(path, text):
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("table1")
    rng = random.Random(0)
    save_tiny(root / "pythia", GOOD + BAD + TOPICS + ["tell", "about", "please", "yes"], hidden_size=32)
    train, test = _write(root / "hh_train.jsonl", _hh_rows(64, rng)), _write(root / "hh_test.jsonl", _hh_rows(24, rng))
    common = f"""
data: {{train: {train}, eval: {test}, format: hh, max_length: 64, max_prompt_length: 40}}
train: {{per_device_train_batch_size: 8, logging_steps: 1, report_to: none, warmup_ratio: 0, seed: 1}}
"""
    steps = []

    def run(*argv):
        assert prefopt([str(a) for a in argv]) == 0, argv
        steps.append(argv[0])

    run("sft", _yaml(root / "sft.yaml", f"model: {{name_or_path: {root / 'pythia'}}}" + common),
        "--data.format", "sft", "--output_dir", root / "sft", "--num_train_epochs", 3, "--learning_rate", 3e-3)
    run("rm", _yaml(root / "rm.yaml", f"model: {{name_or_path: {root / 'sft' / 'final'}}}" + common),
        "--output_dir", root / "rm", "--num_train_epochs", 3, "--learning_rate", 1e-3)
    run("sample", root / "sft" / "final", train, root / "samples_train.jsonl", "--k", 4, "--max-new-tokens", 12)
    run("label", root / "rm" / "final", root / "samples_train.jsonl", root / "rw_train.jsonl")
    run("train", _yaml(root / "exo.yaml", f"model: {{name_or_path: {root / 'sft' / 'final'}}}" + common
                       + "loss: {name: exo, beta_pi: 0.35, beta_r: 0.1}\n"),
        "--data.train", root / "rw_train.jsonl", "--data.format", "rw", "--data.eval", "null",
        "--output_dir", root / "exo_rw", "--max_steps", 6, "--learning_rate", 1e-3, "--logit_temperature", 0.8)
    for model, out in ((root / "exo_rw" / "final", "policy_test.jsonl"), (root / "sft" / "final", "sft_test.jsonl")):
        run("sample", model, test, root / out, "--k", 1, "--max-new-tokens", 12, "--seed", 3)
    return root, steps


def test_sft_lowers_the_nll_of_chosen_responses(pipeline):
    root, _ = pipeline
    rows = [json.loads(line) for line in (root / "hh_test.jsonl").read_text().splitlines()]
    from prefopt.data import load_records

    records, _ = load_records(str(root / "hh_test.jsonl"), format="hh")
    prompts, chosen = [r.prompt for r in records], [[r.completions[0]] for r in records]
    before = completion_logps(root / "pythia", prompts, chosen)
    after = completion_logps(root / "sft" / "final", prompts, chosen)
    mean = lambda scores: sum(s[0] for s in scores) / len(scores)  # noqa: E731
    assert len(rows) == len(records) == 24
    assert mean(after) > mean(before) + 5.0  # held-out chosen responses: NLL down by several nats each


def test_reward_model_and_labels(pipeline):
    root, _ = pipeline
    metrics = json.loads((root / "rm" / "metrics.json").read_text())
    assert metrics["eval_accuracy"] > 0.8  # held-out pairs, good words vs bad words
    labelled = [json.loads(line) for line in (root / "rw_train.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (root / "samples_train.jsonl").read_text().splitlines()]
    unique_prompts = {json.loads(line)["chosen"].rsplit("\n\nAssistant:", 1)[0]
                      for line in (root / "hh_train.jsonl").read_text().splitlines()}
    assert len(labelled) == len(samples) == len(unique_prompts) > 20  # sampling keeps unique prompts
    for row, sample in zip(labelled, samples):
        assert row["completions"] == sample["completions"] and len(row["rewards"]) == 4


def test_policy_trained_on_rm_labels_and_judged_against_sft(pipeline, tmp_path, monkeypatch, fake_judge):
    root, steps = pipeline
    assert steps == ["sft", "rm", "sample", "label", "train", "sample", "sample"]
    assert json.loads((root / "exo_rw" / "metrics.json").read_text())["global_step"] == 6

    server = fake_judge  # the paid judge's stand-in (tests/conftest.py): it prefers the longer response
    monkeypatch.setenv("PREFOPT_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("PREFOPT_JUDGE_MODEL", "judge-test")
    monkeypatch.setenv("PREFOPT_JUDGE_API_KEY", "sk-test-not-a-key")
    monkeypatch.setenv("PREFOPT_JUDGE_CACHE", str(tmp_path / "cache"))
    argv = ["judge", root / "policy_test.jsonl", root / "sft_test.jsonl", tmp_path / "vs_sft", "--n-prompts", 10]
    assert prefopt([str(a) for a in argv]) == 0
    calls = server.count()
    assert prefopt([str(a) for a in argv]) == 0 and server.count() == calls  # a rerun pays for nothing

    summary = json.loads((tmp_path / "vs_sft" / "winrate.json").read_text())
    judgements = [json.loads(line) for line in (tmp_path / "vs_sft" / "judgements.jsonl").read_text().splitlines()]
    # 10 prompts × both orders, minus the orderings that render identically (policy sample == SFT sample): one call
    distinct = {(json.dumps(j["prompt"]), a, b) for j in judgements
                for a, b in ((j["policy"], j["baseline"]), (j["baseline"], j["policy"]))}
    assert calls == len(distinct) <= 20
    assert summary["pairs"] == len(judgements) == 10 and summary["n"] == 20
    # the same rule applied here independently: longer policy response wins both orders, equal lengths tie
    expected = []
    for j in judgements:
        rule = "win" if len(j["policy"]) > len(j["baseline"]) else "loss" if len(j["policy"]) < len(j["baseline"]) else "tie"
        expected += [rule, rule]
        assert [j["policy_first"], j["policy_second"]] == [rule, rule]
    assert summary["win_rate"] == pytest.approx(sum({"win": 1, "tie": 0.5, "loss": 0}[o] for o in expected) / 20)
    assert "sk-test-not-a-key" not in (tmp_path / "vs_sft" / "winrate.json").read_text()

    argv = ["mean-reward", root / "rm" / "final", root / "policy_test.jsonl", "--out", tmp_path / "mean.json"]
    assert prefopt([str(a) for a in argv]) == 0
    result = json.loads((tmp_path / "mean.json").read_text())
    policy_rows = (root / "policy_test.jsonl").read_text().splitlines()
    assert result["n_completions"] == len(policy_rows) > 10  # one sample per unique test prompt
    assert result["ci"][0] <= result["mean_reward"] <= result["ci"][1]


def test_every_stage_records_the_same_provenance_schema(pipeline, tmp_path, monkeypatch, fake_judge):
    """SPEC §9: every stage's output carries one provenance schema (prefopt.runs): run_info.json in a folder
    output, <file>.meta.json beside a file output."""
    from prefopt.runs import RUN_INFO_KEYS, RUN_INFO_SCHEMA

    root, _ = pipeline
    monkeypatch.setenv("PREFOPT_JUDGE_BASE_URL", fake_judge.url)
    monkeypatch.setenv("PREFOPT_JUDGE_MODEL", "judge-test")
    monkeypatch.setenv("PREFOPT_JUDGE_CACHE", str(tmp_path / "cache"))
    judged = tmp_path / "judged"
    assert prefopt(["judge", str(root / "policy_test.jsonl"), str(root / "sft_test.jsonl"), str(judged),
                    "--n-prompts", "4"]) == 0
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "tell me", "chosen": "sure .", "rejected": "no ."}] * 3)
    assert prefopt(["pref-to-rw", str(pairs), str(tmp_path / "pref_rw.jsonl")]) == 0
    assert prefopt(["mean-reward", str(root / "rm" / "final"), str(root / "policy_test.jsonl"),
                    "--out", str(tmp_path / "mean.json")]) == 0
    records = {
        "sft": root / "sft" / "run_info.json", "rm": root / "rm" / "run_info.json",
        "train": root / "exo_rw" / "run_info.json", "sample": root / "samples_train.jsonl.meta.json",
        "label": root / "rw_train.jsonl.meta.json", "judge": judged / "run_info.json",
        "pref-to-rw": tmp_path / "pref_rw.jsonl.meta.json", "mean-reward": tmp_path / "mean.json.meta.json",
    }
    for stage, path in records.items():
        info = json.loads(path.read_text())
        assert set(RUN_INFO_KEYS) <= set(info), (stage, sorted(set(RUN_INFO_KEYS) - set(info)))
        assert info["schema"] == RUN_INFO_SCHEMA and info["stage"] == stage, (stage, info["stage"])
        assert info["git"].keys() == {"sha", "dirty"} and info["packages"]["torch"] and info["world_size"] == 1
        assert info["started"].endswith("+00:00") and info["finished"].endswith("+00:00"), stage  # UTC
        assert info["started"] <= info["finished"] and info["wall_seconds"] >= 0
        assert info["command"][0] == "prefopt" and info["host"], stage
