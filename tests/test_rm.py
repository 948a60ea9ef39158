"""The reward model (SPEC §6.1 steps 3, 4 and 6) on a tiny GPT-NeoX with pad = EOS: the score is read at the last
response token by a bias-free head, Bradley–Terry training learns a systematic preference that generalises to held-out
pairs, the saved model reloads as a standard sequence-classification model, and labelling / mean reward use exactly
those scores."""

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, set_seed

from prefopt.config import ConfigError
from prefopt.data import DataError, PreferenceCollator, PreferenceRecord, load_records, tokenize_records
from prefopt.rm import (
    label_completions,
    load_reward_model,
    load_rm_config,
    mean_reward,
    pair_accuracy,
    pref_to_rw,
    reward_scores,
    run_reward_model,
    score_completions,
)
from prefopt.sample import meta_path
from prefopt.tiny import build_model, build_tokenizer

GOOD = "good happy kind bright warm yes thanks".split()
BAD = "bad sad rude dark cold no not".split()
NEUTRAL = "tree river stone cat dog sun moon red blue green".split()
MAX_LENGTH, MAX_PROMPT_LENGTH = 32, 16


def _pairs(seed, n):
    """Pairs whose chosen responses use GOOD words and rejected ones BAD words (text prompts, so EOS ends each)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "\n\nHuman: tell me about the " + " ".join(rng.sample(NEUTRAL, 2)) + " ?\n\nAssistant:"

        def response(words):
            return " ".join(rng.choice(words + NEUTRAL[:3]) for _ in range(rng.randint(2, 6))) + " ."

        rows.append({"prompt": prompt, "chosen": response(GOOD), "rejected": response(BAD)})
    return rows


def _write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Path(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny causal LM whose tokenizer pads with EOS (as Pythia does), and train / held-out pair files."""
    root = tmp_path_factory.mktemp("rm_world")
    tokenizer = build_tokenizer(GOOD + BAD + NEUTRAL)
    tokenizer.pad_token = tokenizer.eos_token
    model = build_model(tokenizer, hidden_size=32, seed=0)
    assert model.config.pad_token_id == tokenizer.eos_token_id
    model.save_pretrained(root / "sft")
    tokenizer.save_pretrained(root / "sft")
    _write_jsonl(root / "train.jsonl", _pairs(0, 96))
    _write_jsonl(root / "heldout.jsonl", _pairs(1, 48))
    return root


def _config(world, run_dir, **train):
    settings = dict(output_dir=str(run_dir), max_steps=24, learning_rate=2e-3, warmup_ratio=0.0,
                    lr_scheduler_type="constant", report_to="none", per_device_train_batch_size=8,
                    per_device_eval_batch_size=16, logging_steps=8, seed=0, quiet=True)
    settings.update(train)
    tree = {
        "model": {"name_or_path": str(world / "sft")},
        "data": {"train": str(world / "train.jsonl"), "eval": str(world / "heldout.jsonl"),
                 "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH,
                 "apply_chat_template": "never"},  # HH text prompts (SPEC §6.1), as the Table 1 RM configs say
        "train": settings,
    }
    return load_rm_config(None, [], base=tree)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rm_run") / "rm"
    config = _config(world, run_dir)
    return config, run_dir, run_reward_model(config)


def _examples(world, tokenizer, name):
    records, _ = load_records(str(world / name))
    examples, _ = tokenize_records(records, tokenizer, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH)
    return examples


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_score_is_read_at_the_last_response_token_with_right_padding_and_pad_eq_eos(world):
    tokenizer = _tokenizer(world / "sft")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(world / "sft", num_labels=1,
                                                               pad_token_id=tokenizer.pad_token_id).eval()
    examples = _examples(world, tokenizer, "train.jsonl")[:6]
    batch = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)(examples)
    lengths = batch["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1, "the batch must mix lengths so that right padding happens"

    with torch.no_grad():
        ours = reward_scores(model, batch)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    hidden, weight = out.hidden_states[-1], model.score.weight[0].detach()
    for i in range(len(ours)):
        last = int(batch["completion_mask"][i].nonzero().max())
        assert last == int(lengths[i]) - 1 and batch["input_ids"][i, last] == tokenizer.eos_token_id
        assert ours[i].item() == pytest.approx(float(hidden[i, last] @ weight), abs=1e-5)
        # the library's pooled logit skips the EOS (it equals pad) and reads the token before it
        assert out.logits[i, 0].item() == pytest.approx(float(hidden[i, last - 1] @ weight), abs=1e-5)
    assert not torch.allclose(ours, out.logits[:, 0].float(), atol=1e-4)

    # padding does not move the score: each sequence alone scores the same as in the padded batch
    for i in (0, 3):
        alone = {k: v[i : i + 1, : int(lengths[i])] for k, v in batch.items() if v.dim() == 2}
        with torch.no_grad():
            assert reward_scores(model, alone).item() == pytest.approx(ours[i].item(), abs=1e-5)


def test_head_is_linear_without_bias(world):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = _tokenizer(world / "sft")
    config = load_rm_config(None, [], base={"model": {"name_or_path": str(world / "sft")},
                                            "data": {"train": str(world / "train.jsonl")}})
    model = load_reward_model(str(world / "sft"), config, tokenizer)
    assert type(model).__name__ == "GPTNeoXForSequenceClassification"
    assert model.score.bias is None and tuple(model.score.weight.shape) == (1, model.config.hidden_size)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.eos_token_id
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                                       num_hidden_layers=1, num_attention_heads=2, num_labels=1))
    assert llama.score.bias is None and tuple(llama.score.weight.shape) == (1, 16)


def test_training_learns_the_preference_and_generalises(world, trained):
    config, run_dir, metrics = trained
    assert metrics["global_step"] == 24 and math.isfinite(metrics["train"]["train_loss"])
    tokenizer = _tokenizer(world / "sft")
    heldout = _examples(world, tokenizer, "heldout.jsonl")
    set_seed(config.train.seed)  # the head's initialisation at the start of the run
    untrained = load_reward_model(str(world / "sft"), config, tokenizer).eval()
    before = pair_accuracy(untrained, heldout, tokenizer.pad_token_id)
    after = metrics["eval_accuracy"]
    assert after > 0.8 and after > before + 0.2, (before, after)

    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in logged if "loss" in row]
    assert train_rows and all({"rm/accuracy", "rm/margin", "rm/chosen", "rm/rejected"} <= row.keys()
                              for row in train_rows)
    assert train_rows[-1]["rm/margin"] > train_rows[0]["rm/margin"]
    eval_rows = [row for row in logged if "eval_rm/accuracy" in row]
    assert eval_rows and eval_rows[-1]["eval_rm/accuracy"] == metrics["eval_accuracy"]

    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["eval_accuracy"] == metrics["eval_accuracy"]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["loss"] == "bradley_terry" and info["pairs"]["train"] == {
        "n": 96, "second_preferred": 0, "tied_first_preferred": 0}
    assert load_rm_config(run_dir / "config.yaml").data.train == config.data.train  # config.yaml reloads


def test_saved_rm_reloads_as_sequence_classification_with_the_same_scores(world, trained):
    _, run_dir, metrics = trained
    final = run_dir / "final"
    weights = load_file(str(final / "model.safetensors"))
    assert "score.weight" in weights and not any(key.startswith("score.") and key != "score.weight" for key in weights)
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    assert type(model).__name__ == "GPTNeoXForSequenceClassification" and model.config.num_labels == 1
    tokenizer = _tokenizer(final)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.config.pad_token_id
    heldout = _examples(world, tokenizer, "heldout.jsonl")
    assert pair_accuracy(model, heldout, tokenizer.pad_token_id) == metrics["eval_accuracy"]
    batch = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)(heldout)
    with torch.no_grad():
        scores = reward_scores(model, batch).view(-1, 2)
    assert (scores[:, 0] - scores[:, 1]).mean().item() == pytest.approx(metrics["eval"]["eval_rm/margin"], abs=1e-4)
    assert json.loads((final / "prefopt_rm.json").read_text())["max_length"] == MAX_LENGTH


def test_label_completions_aligns_rewards_with_completions(world, trained, tmp_path):
    _, run_dir, _ = trained
    final = run_dir / "final"
    rows = [
        {"prompt": "\n\nHuman: tell me about the cat ?\n\nAssistant:", "completions": ["good happy .", "bad sad .",
                                                                                    "good happy .", ""]},
        {"prompt": [{"role": "user", "content": "tell me about the river"}], "completions": ["kind warm .", "rude ."],
         "prompt_id": "chat-1"},
        {"prompt": "\n\nHuman: what is the dog ?\n\nAssistant:", "completions": ["cold dark no ."]},
    ]
    samples = _write_jsonl(tmp_path / "samples.jsonl", rows)
    meta = label_completions(final, samples, tmp_path / "rw.jsonl", batch_size=3)
    labelled = [json.loads(line) for line in (tmp_path / "rw.jsonl").read_text().splitlines()]
    assert [r["completions"] for r in labelled] == [r["completions"] for r in rows]
    assert labelled[1]["prompt_id"] == "chat-1" and labelled[1]["prompt"] == rows[1]["prompt"]

    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = _tokenizer(final)
    collate = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)
    for row, out in zip(rows, labelled):
        assert len(out["rewards"]) == len(row["completions"])
        for completion, reward in zip(row["completions"], out["rewards"]):
            record = PreferenceRecord(id="x", prompt=row["prompt"], completions=[completion], rewards=[0.0])
            examples, _ = tokenize_records([record], tokenizer, max_length=MAX_LENGTH,
                                           max_prompt_length=MAX_PROMPT_LENGTH)
            with torch.no_grad():
                assert reward == pytest.approx(reward_scores(model, collate(examples)).item(), abs=1e-5)
    first = labelled[0]["rewards"]
    assert first[0] == pytest.approx(first[2], abs=1e-5) and first[0] > first[1]  # repeats agree; GOOD beats BAD

    flat = [value for row in labelled for value in row["rewards"]]
    assert meta["n_prompts"] == 3 and meta["n_completions"] == 7 and meta["k"] == [1, 2, 4]
    assert meta["reward_mean"] == pytest.approx(sum(flat) / 7)
    assert meta["max_length"] == MAX_LENGTH and json.loads(meta_path(tmp_path / "rw.jsonl").read_text()) == meta
    # the labelled file is rw data the trainer reads: an empty sampled completion is a real candidate, a row with
    # K = 1 is not a K-candidate row (malformed), and rows of different K (4 and 2 here) are refused at load time,
    # naming the rows, instead of crashing the collator mid-run
    assert "" in labelled[0]["completions"]
    with pytest.raises(DataError, match=r"K = 2 \(row 2\) and K = 4 \(row 1\)"):
        load_records(str(tmp_path / "rw.jsonl"), max_bad_fraction=1.0)
    records, report = load_records(str(_write_jsonl(tmp_path / "rw_k4.jsonl", [labelled[0], labelled[2]])),
                                   max_bad_fraction=1.0)
    assert report.format == "rw" and [r.rewards for r in records] == [labelled[0]["rewards"]]
    assert [i for i, _ in report.bad] == [1]


def test_mean_reward_is_the_mean_of_the_per_completion_scores(trained, tmp_path):
    _, run_dir, _ = trained
    rows = [{"prompt": "\n\nHuman: tell me about the sun ?\n\nAssistant:", "completions": ["good .", "bad no .",
                                                                                        "warm kind thanks ."]},
            {"prompt": "\n\nHuman: tell me about the moon ?\n\nAssistant:", "completions": ["dark .", "yes ."]}]
    samples = _write_jsonl(tmp_path / "policy.jsonl", rows)
    scores = score_completions(run_dir / "final", [r["prompt"] for r in rows], [r["completions"] for r in rows])
    flat = [value for group in scores for value in group]
    result = mean_reward(run_dir / "final", samples)
    assert result["n_completions"] == 5 and result["n_prompts"] == 2
    assert result["mean_reward"] == pytest.approx(sum(flat) / 5, abs=1e-6)
    assert result["ci"][0] < result["mean_reward"] < result["ci"][1]


def test_pref_to_rw(world, tmp_path):
    meta = pref_to_rw(str(world / "heldout.jsonl"), tmp_path / "pref_rw.jsonl")
    pairs = [json.loads(line) for line in (world / "heldout.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "pref_rw.jsonl").read_text().splitlines()]
    assert meta["n_pairs"] == len(rows) == len(pairs)
    for pair, row in zip(pairs, rows):
        assert row["prompt"] == pair["prompt"] and row["completions"] == [pair["chosen"], pair["rejected"]]
        assert row["rewards"] == [1.0, 0.0]
    records, report = load_records(str(tmp_path / "pref_rw.jsonl"))
    assert report.format == "rw" and len(records) == len(pairs) and records[0].id == "heldout.jsonl:0"


def test_reward_model_needs_pairs(world, tmp_path):
    rng = random.Random(0)
    _write_jsonl(tmp_path / "k3.jsonl", [{"prompt": "what is the cat ?", "completions": ["good .", "bad .", "no ."],
                                          "rewards": [rng.random() for _ in range(3)]} for _ in range(4)])
    config = _config(world, tmp_path / "run", max_steps=1)
    config.data.train, config.data.eval = str(tmp_path / "k3.jsonl"), None
    with pytest.raises(ConfigError, match="K = 2"):
        run_reward_model(config)
