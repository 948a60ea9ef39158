"""The stages that make every paper table complete at paper scale (SPEC §6.1 step 6, §6.3): data by name in every
stage, the chat-template rule for string prompts, `prefopt table1`, and `prefopt onpolicy` (SimPO's on-policy recipe)
on a tiny policy and a tiny reward model.

Hub names cannot be reached here; a local dataset folder in the Hub's layout goes through the same
``datasets.load_dataset(source, name=..., data_dir=..., split=...)`` call a Hub name does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prefopt.cli import main as prefopt
from prefopt.data import DataError, PreferenceRecord, tokenize_records
from prefopt.winrate import win_rate

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------------
# String prompts and the chat template: one rule in every stage
# ----------------------------------------------------------------------------------------------------------------------


def test_string_prompts_follow_the_chat_template_rule(tiny_tokenizer):
    from prefopt.tiny import build_tokenizer

    text = PreferenceRecord(id="t", prompt="what is the answer ?", completions=["yes .", "no ."], rewards=[1.0, 0.0])
    chat = PreferenceRecord(id="c", prompt=[{"role": "user", "content": "what is the answer ?"}],
                            completions=["yes .", "no ."], rewards=[1.0, 0.0])
    lengths = dict(max_length=64, max_prompt_length=32)
    (as_chat,), _ = tokenize_records([chat], tiny_tokenizer, **lengths)
    for rule in ("auto", "always"):  # the tokenizer has a template: the string becomes one user turn
        (wrapped,), _ = tokenize_records([text], tiny_tokenizer, chat_template=rule, **lengths)
        assert (wrapped["prompt_ids"], wrapped["completion_ids"]) == (as_chat["prompt_ids"], as_chat["completion_ids"])
    (raw,), _ = tokenize_records([text], tiny_tokenizer, chat_template="never", **lengths)
    encode = lambda s: tiny_tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert raw["completion_ids"][0] == encode("yes .") + [tiny_tokenizer.eos_token_id]  # text: response + EOS
    assert encode("what is the answer ?") == [t for t in raw["prompt_ids"] if t != tiny_tokenizer.bos_token_id]
    bare = build_tokenizer(chat_template=None)
    (auto_bare,), _ = tokenize_records([text], bare, chat_template="auto", **lengths)
    (never_bare,), _ = tokenize_records([text], bare, chat_template="never", **lengths)
    assert auto_bare == never_bare  # auto without a template is text
    with pytest.raises(DataError, match="no chat template.*chat template: always") as error:
        tokenize_records([text], bare, chat_template="always", **lengths)
    assert "\n" not in str(error.value)


def test_config_rule_and_bad_value(tmp_path):
    from prefopt.config import load_config
    from prefopt.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: x}\ndata: {train: t.jsonl}\nloss: {name: dpo, beta: 0.1}\n")
    assert load_config(path).data.apply_chat_template == "auto"
    assert load_config(path, ["--data.apply_chat_template", "never"]).data.apply_chat_template == "never"
    with pytest.raises(ConfigError, match="data.apply_chat_template must be one of 'auto', 'always', 'never'"):
        load_config(path, ["--data.apply_chat_template", "sometimes"])


def test_every_table1_config_reads_its_text_prompts_as_text():
    from prefopt.config import load_config, load_rm_config

    for path in sorted((ROOT / "training_configs" / "table1").glob("*/*.yaml")):
        config = load_rm_config(path) if path.stem == "rm" else load_config(
            path, base={"loss": {"name": "sft"}, "data": {"format": "sft"}} if path.stem == "sft" else None)
        assert config.data.apply_chat_template == "never", path


# ----------------------------------------------------------------------------------------------------------------------
# Data by name: a dataset folder in the Hub's layout, through datasets.load_dataset, in the sample and label stages
# ----------------------------------------------------------------------------------------------------------------------


def _hh_row(question: str, good: str, bad: str) -> dict:
    return {"chosen": f"\n\nHuman: {question}\n\nAssistant: {good}",
            "rejected": f"\n\nHuman: {question}\n\nAssistant: {bad}"}


def test_sample_and_label_read_a_dataset_by_name_with_data_dir_and_split(tiny_model, tmp_path):
    repo = tmp_path / "hh_like"  # Anthropic/hh-rlhf's layout: <data_dir>/<split>.jsonl
    (repo / "helpful-base").mkdir(parents=True)
    train = [_hh_row("what is the answer ?", "yes .", "no ."), _hh_row("tell me a story ?", "good .", "bad .")]
    test = [_hh_row("how is it ?", "very good .", "not good .")]
    for split, rows in (("train", train), ("test", test)):
        (repo / "helpful-base" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "samples.jsonl"
    assert prefopt(["sample", str(tiny_model), str(repo), str(out), "--data-dir", "helpful-base", "--split", "test",
                    "--format", "hh", "--k", "2", "--max-new-tokens", "4", "--chat-template", "never"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["\n\nHuman: how is it ?\n\nAssistant:"]  # the test split, HH-split
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert (meta["split"], meta["data_dir"], meta["format"], meta["chat_template"]) == ("test", "helpful-base", "hh",
                                                                                       "never")
    # the same samples as a Hub-layout dataset: label reads {prompt, completions} rows by name and split too
    samples_repo = tmp_path / "samples_like"
    samples_repo.mkdir()
    (samples_repo / "validation.jsonl").write_text(out.read_text())
    rm_dir = _tiny_reward_model(tmp_path / "rm")
    labelled = tmp_path / "labelled.jsonl"
    assert prefopt(["label", str(rm_dir), str(samples_repo), str(labelled), "--split", "validation"]) == 0
    (row,) = [json.loads(line) for line in labelled.read_text().splitlines()]
    assert row["completions"] == rows[0]["completions"] and len(row["rewards"]) == 2


# ----------------------------------------------------------------------------------------------------------------------
# prefopt table1
# ----------------------------------------------------------------------------------------------------------------------


def _winrate(outcomes, judge="gpt-4-0613"):
    rate = win_rate(outcomes, seed=0)
    return {**rate.to_dict(), "judge": judge, "n_prompts": len(outcomes)}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_table1_from_run_folders(tmp_path, capsys):
    root = tmp_path / "table1"
    outcomes = {"hh_pref_fpo": [["win", "win"], ["tie", "loss"], ["win", "invalid"], ["loss", "loss"]],
                "hh_pref_dpo": [["loss", "win"], ["tie", "tie"]]}
    for run, pairs in outcomes.items():
        ev = root / run / "eval_final"
        _write(ev / "vs_sft" / "winrate.json", _winrate(pairs))
        _write(ev / "mean_reward.json", {"mean_reward": 0.25, "ci": [0.125, 0.375]})
    _write(root / "hh_pref_fpo" / "eval_final" / "vs_chosen" / "winrate.json", _winrate([["loss", "tie"]]))
    _write(root / "eval" / "hh" / "sft_mean_reward.json", {"mean_reward": -0.5, "ci": [-0.75, -0.25]})
    (root / "hh_sft").mkdir()  # a stage folder without evaluation is no row

    assert prefopt(["table1", str(root), "--out", str(tmp_path / "t.md")]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("| HH")]
    assert [line.split(" | ")[2] for line in lines] == ["SFT", "f-PO (α-divergence)", "DPO"]  # SFT, then paper order
    cells = {line.split(" | ")[2]: [c.strip(" |") for c in line.split(" | ")] for line in lines}
    fpo = cells["f-PO (α-divergence)"]
    # f-PO vs SFT, by hand: 8 judgements, 3 wins + 1 tie = 3.5 / 8 = 43.75 %; 1 tie of 8 = 12.5 %; official 3 / 8
    assert fpo[3].startswith("43.8 (") and fpo[4] == "12.5" and fpo[5] == "37.5"
    assert fpo[6].startswith("25.0 (") and fpo[7] == "50.0" and fpo[8] == "0.0"  # vs chosen: a loss and a tie
    assert fpo[9] == "0.250 (0.125–0.375)"
    dpo = cells["DPO"]
    assert dpo[3].startswith("50.0 (") and dpo[6:9] == ["–", "–", "–"]  # no vs-chosen judgements: missing, not 0
    assert cells["SFT"][3:9] == ["–"] * 6 and cells["SFT"][9] == "-0.500 (-0.750–-0.250)"
    low, high = (float(v) for v in fpo[3].split("(")[1].rstrip(")").split("–"))
    assert 0 <= low <= 43.75 <= high <= 100
    assert "Judge: gpt-4-0613" in text and (tmp_path / "t.md").read_text() == text.split("wrote ")[0]
    assert prefopt(["table1", str(root), "--latex"]) == 0
    latex = capsys.readouterr().out
    assert latex.startswith("\\begin{tabular}") and "43.8 (" in latex and "\\%" in latex and "--" in latex


def test_table1_without_runs_is_one_line(tmp_path, capsys):
    assert prefopt(["table1", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no Table 1 run folder" in err and "\n" not in err
    assert prefopt(["table1", str(tmp_path / "nothing")]) == 2
    assert "no results folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# prefopt onpolicy
# ----------------------------------------------------------------------------------------------------------------------


def _tiny_reward_model(folder: Path, seed: int = 1) -> Path:
    """A one-label GPT-NeoX sequence classifier with the tiny tokenizer (its HH chat template included)."""
    if folder.is_dir():
        return folder
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    from conftest import TINY_WORDS
    from prefopt.tiny import build_tokenizer

    tokenizer = build_tokenizer(TINY_WORDS)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=256, num_labels=1,
                           pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    GPTNeoXForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _prompts_file(path: Path, n: int) -> Path:
    words = ["answer", "story", "question", "thanks", "hello", "yes", "no", "good"]
    rows = [{"prompt": f"tell me {words[i % 8]} {words[(3 * i + 1) % 8]} {i} ?"} for i in range(n)]
    rows.append(dict(rows[0]))  # a repeated prompt is sampled once
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _independent_scores(rm_dir: Path, prompt: str, responses: list[str]) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    scores = []
    for response in responses:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}], tokenize=False)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            scores.append(float(model(ids).logits[0, 0]))
    return scores


ONPOLICY = ["--n", "3", "--max-new-tokens", "6", "--temperature", "1.0", "--top-p", "1.0", "--no-trust-remote-code"]


def test_onpolicy_writes_armorm_rows_best_and_worst_by_the_reward_model(tiny_model, tmp_path):
    import hashlib

    rm_dir = _tiny_reward_model(tmp_path / "rm")
    prompts = _prompts_file(tmp_path / "prompts.jsonl", 5)
    out = tmp_path / "onpolicy.jsonl"
    assert prefopt(["onpolicy", str(tiny_model), str(out), "--prompts", str(prompts), "--rm", str(rm_dir),
                    "--chunk-size", "2", *ONPOLICY]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected_prompts = sorted({json.loads(line)["prompt"] for line in prompts.read_text().splitlines()})
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["n_prompts"] == 5 and meta["n_rows"] + meta["n_dropped_identical"] + meta["n_dropped_tied"] == 5
    assert [r["prompt"] for r in rows] == [p for p in expected_prompts if p in {r["prompt"] for r in rows}]
    assert len(rows) >= 3  # random responses of 6 tokens are rarely all the same
    for row in rows:
        assert set(row) == {"prompt_id", "prompt", "all_generated_responses", "all_rm_scores", "chosen", "rejected"}
        assert row["prompt_id"] == hashlib.sha256(row["prompt"].encode()).hexdigest()
        scores = _independent_scores(rm_dir, row["prompt"], row["all_generated_responses"])
        assert row["all_rm_scores"] == pytest.approx(scores, abs=1e-5)
        best = max(range(3), key=lambda i: (scores[i], -i))
        worst = min(range(3), key=lambda i: (scores[i], i))
        user = {"role": "user", "content": row["prompt"]}
        assert row["chosen"] == [user, {"role": "assistant", "content": row["all_generated_responses"][best]}]
        assert row["rejected"] == [user, {"role": "assistant", "content": row["all_generated_responses"][worst]}]
    assert not Path(f"{out}.partial.jsonl").exists() and not Path(f"{out}.partial.json").exists()
    # the rows train as they are: the pairs loader reads them
    from prefopt.data import load_records

    records, report = load_records(str(out), format="pairs")
    assert len(records) == len(rows) and not report.bad


def test_onpolicy_greedy_responses_are_all_identical_and_nothing_is_left(tiny_model, tmp_path, capsys):
    rm_dir = _tiny_reward_model(tmp_path / "rm")
    prompts = _prompts_file(tmp_path / "prompts.jsonl", 3)
    code = prefopt(["onpolicy", str(tiny_model), str(tmp_path / "o.jsonl"), "--prompts", str(prompts), "--rm",
                    str(rm_dir), "--n", "2", "--max-new-tokens", "4", "--temperature", "0", "--no-trust-remote-code"])
    assert code == 2 and "no prompt of" in capsys.readouterr().err


def test_onpolicy_killed_run_resumes_to_the_uninterrupted_result(tiny_model, tmp_path):
    rm_dir = _tiny_reward_model(tmp_path / "rm")
    prompts = _prompts_file(tmp_path / "prompts.jsonl", 10)
    args = ["--prompts", str(prompts), "--rm", str(rm_dir), "--chunk-size", "1", *ONPOLICY]
    whole = tmp_path / "whole.jsonl"
    assert prefopt(["onpolicy", str(tiny_model), str(whole), *args]) == 0

    out = tmp_path / "killed.jsonl"
    partial = Path(f"{out}.partial.jsonl")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "prefopt.cli", "onpolicy", str(tiny_model), str(out), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.is_file() and len(partial.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(partial.read_text().splitlines())
    assert 2 <= done < 10 and not out.exists()
    # another setting is refused, naming it; the same command continues and equals the uninterrupted run
    assert prefopt(["onpolicy", str(tiny_model), str(out), *args, "--n", "4"]) == 2  # the last --n wins
    assert prefopt(["onpolicy", str(tiny_model), str(out), *args]) == 0
    assert out.read_text() == whole.read_text()
    assert json.loads(Path(f"{out}.meta.json").read_text())["n_prompts"] == 10


def test_onpolicy_bad_input_is_one_line(tiny_model, tmp_path, capsys):
    rm_dir = _tiny_reward_model(tmp_path / "rm")
    prompts = _prompts_file(tmp_path / "prompts.jsonl", 2)
    capsys.readouterr()  # the reward model's save
    cases = [(["--n", "1"], "n (responses per prompt) must be an integer >= 2"),
             (["--prompts", str(tmp_path / "missing.jsonl")], "no such prompts file"),
             (["--rm", str(tmp_path / "no_rm")], "reward model")]
    for extra, message in cases:
        argv = ["onpolicy", str(tiny_model), str(tmp_path / "x.jsonl"), "--prompts", str(prompts), "--rm", str(rm_dir),
                "--no-trust-remote-code", "--max-new-tokens", "2", *extra]
        assert prefopt(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
