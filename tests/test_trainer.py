"""The preference trainer on a tiny GPT-NeoX built locally: every loss trains, accumulation and resume are exact,
the cached reference equals the live one, and bad input stops the run with one line (SPEC §1-§5, §9)."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefopt.cli import main as cli_main
from prefopt.config import load_config
from prefopt.losses import LOSSES
from prefopt.tiny import EXAMPLE_WORDS
from prefopt.train import run_training

WORDS = EXAMPLE_WORDS  # in the shared tiny model's vocabulary

LOSS_PARAMS = {
    "sft": {},
    "dpo": {"beta": 0.1},
    "ipo": {"tau": 0.1},
    "hinge": {"beta": 0.1},
    "rdpo": {"beta": 0.1, "alpha": 0.01},
    "simpo": {"beta": 2.0, "gamma_beta_ratio": 0.5},
    "cpo": {"beta": 0.1},
    "orpo": {"odds_ratio_weight": 0.1},
    "exo": {"beta_pi": 0.5, "beta_r": 0.5},
    "dpo_k": {"beta_pi": 0.5, "beta_r": 0.5},
    "fpo": {"beta_pi": 0.5, "divergence": "alpha", "alpha": 0.1},
    "alphapo": {"alpha": 0.9, "beta": 2.0, "gamma_beta_ratio": 0.5},
    "gamma_simpo": {"beta": 2.0, "gamma_beta_ratio": 0.5},
    "gamma_dpo": {"beta": 0.1, "gamma_beta_ratio": 0.5},
    "simpo_hinge": {"beta": 2.0, "gamma_beta_ratio": 0.5},
}
#: γ-PO's τ (the margins section) of the dynamic-margin losses above.
MARGIN_TAU = 1.0


def _sentence(rng, low, high, end):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) + f" {end}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model, tiny_tokenizer):
    """The session's tiny model (tests/conftest.py, linked as ``model``) and data files in our formats (chat-message
    pairs, text pairs, K = 4 rw groups) written with words its tokenizer knows."""
    assert set(WORDS) <= set(tiny_tokenizer.get_vocab())
    root = tmp_path_factory.mktemp("world")
    (root / "model").symlink_to(tiny_model, target_is_directory=True)
    rng = random.Random(0)
    with open(root / "pairs.jsonl", "w") as handle:
        for _ in range(32):
            prompt = [{"role": "user", "content": "tell me what is " + _sentence(rng, 1, 3, "?")}]
            handle.write(json.dumps({"prompt": prompt, "chosen": _sentence(rng, 2, 6, "."),
                                     "rejected": _sentence(rng, 2, 6, "!")}) + "\n")
    with open(root / "eval.jsonl", "w") as handle:
        for _ in range(8):
            handle.write(json.dumps({"prompt": "what is " + _sentence(rng, 1, 2, "?"),
                                     "chosen": _sentence(rng, 2, 5, "."), "rejected": _sentence(rng, 2, 5, "!")}) + "\n")
    with open(root / "rw.jsonl", "w") as handle:
        for _ in range(16):
            handle.write(json.dumps({"prompt": "what is " + _sentence(rng, 1, 2, "?"),
                                     "completions": [_sentence(rng, 2, 5, ".") for _ in range(4)],
                                     "rewards": [rng.gauss(0, 1) for _ in range(4)]}) + "\n")
    return root


def _config(world, run_dir, loss="dpo", data="pairs.jsonl", **train):
    settings = dict(output_dir=str(run_dir), max_steps=3, learning_rate=1e-3, warmup_ratio=0.0, report_to="none",
                    per_device_train_batch_size=4, logging_steps=1, seed=3)
    settings.update(train)
    tree = {
        "model": {"name_or_path": str(world / "model")},
        "data": {"train": str(world / data), "max_length": 48, "max_prompt_length": 24},
        "loss": {"name": loss, **LOSS_PARAMS[loss]},
        "train": settings,
    }
    if LOSSES[loss].dynamic_margins:
        tree["margins"] = {"tau": MARGIN_TAU}
    return load_config(None, [], base=tree)


def _weights(run_dir):
    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("loss", list(LOSS_PARAMS))
def test_every_registered_loss_trains(world, tmp_path, loss):
    assert set(LOSS_PARAMS) == set(LOSSES), "a registered loss is missing from this test"
    data = "rw.jsonl" if LOSSES[loss].group else "pairs.jsonl"
    metrics = run_training(_config(world, tmp_path / loss, loss, data))
    assert metrics["global_step"] == 3 and math.isfinite(metrics["train"]["train_loss"])

    initial, trained = load_file(str(world / "model" / "model.safetensors")), _weights(tmp_path / loss)
    changed = [name for name in initial if not torch.equal(initial[name], trained[name])]
    assert len(changed) > len(initial) // 2, f"only {len(changed)} of {len(initial)} tensors moved"

    logged = [row for row in _jsonl(tmp_path / loss / "metrics.jsonl") if "loss" in row]
    assert len(logged) == 3 and all(math.isfinite(row["loss"]) for row in logged)
    reward_keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
    for key in ("logps/chosen",) if LOSSES[loss].inputs == "single" else (*reward_keys, "logps/chosen"):
        assert key in logged[0], key
    assert (tmp_path / loss / "config.yaml").is_file()
    info = json.loads((tmp_path / loss / "run_info.json").read_text())
    assert info["packages"]["torch"] and info["git"].keys() == {"sha", "dirty"} and info["loss"] == loss


def test_margin_log_and_gamma_po_metrics(world, tmp_path):
    config = _config(world, tmp_path / "g", "gamma_simpo", max_steps=4, margin_log_every=2)
    run_training(config)
    rows = _jsonl(tmp_path / "g" / "margins.jsonl")
    assert sorted({row["step"] for row in rows}) == [1, 2, 4]  # step 1 always, then every 2nd
    assert all(len([r for r in rows if r["step"] == s]) == 4 for s in (1, 2, 4))  # one row per pair
    gamma0 = 2.0 * 0.5
    for step in (1, 2, 4):
        margins = [r["margin"] for r in rows if r["step"] == step]
        gaps = [r["reward_gap"] for r in rows if r["step"] == step]
        assert all(r["reward_gap"] == pytest.approx(r["chosen_reward"] - r["rejected_reward"], abs=1e-5)
                   for r in rows if r["step"] == step)
        # larger gap, larger margin (SPEC §5); margins average γ0 over the pool, so they straddle it
        by_gap = [m for _, m in sorted(zip(gaps, margins))]
        assert by_gap == sorted(by_gap)
        assert min(margins) < gamma0 * 1.5 and max(margins) > gamma0 * 0.5
    logged = [row for row in _jsonl(tmp_path / "g" / "metrics.jsonl") if "loss" in row]
    assert all({"margins/mean", "margins/std", "margins/min", "margins/max"} <= row.keys() for row in logged)
    assert {row["example"] for row in rows} <= set(range(32))


def test_evaluation_does_not_touch_the_gamma_queue(world, tmp_path):
    config = _config(world, tmp_path / "e", "gamma_simpo", max_steps=4, save_steps=4,
                     per_device_eval_batch_size=4, eval_steps=2)
    config.data.eval = str(world / "eval.jsonl")
    metrics = run_training(config)
    state = torch.load(tmp_path / "e" / "checkpoint-4" / "gamma_margins_rank0.pt", weights_only=False)
    assert state["queue"].numel() == 4 * 4  # 4 training steps × 4 pairs; 2 evaluations pushed nothing
    assert "eval_rewards/margins" in metrics["eval"] and "eval_margins/mean" in metrics["eval"]


def test_gradient_accumulation_is_equivalent_to_a_larger_batch(world, tmp_path):
    # Plain SGD, so the update is the averaged gradient itself and no optimiser state can hide a difference.
    common = dict(max_steps=1, learning_rate=0.5, optim="sgd", max_grad_norm=1e9)
    run_training(_config(world, tmp_path / "big", "simpo", per_device_train_batch_size=8, **common))
    run_training(_config(world, tmp_path / "acc", "simpo", per_device_train_batch_size=1,
                         gradient_accumulation_steps=8, **common))
    initial, big, accumulated = load_file(str(world / "model" / "model.safetensors")), _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    moved = max((big[n] - initial[n]).abs().max().item() for n in big)
    assert moved > 1e-3
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=0, atol=1e-6)


def test_cached_reference_matches_live_reference_and_is_reused(world, tmp_path):
    live = run_training(_config(world, tmp_path / "live", "dpo", max_steps=3))
    cache = tmp_path / "cache"
    first = _config(world, tmp_path / "cached", "dpo", max_steps=3, precompute_ref_logps=True, ref_cache_dir=str(cache))
    run_training(first)
    info = json.loads((tmp_path / "cached" / "run_info.json").read_text())
    assert info["reference_cache"]["train"]["cache_hit"] is False and len(list(cache.glob("*.pt"))) == 1

    rerun = _config(world, tmp_path / "rerun", "dpo", max_steps=3, precompute_ref_logps=True, ref_cache_dir=str(cache))
    run_training(rerun)
    info = json.loads((tmp_path / "rerun" / "run_info.json").read_text())
    assert info["reference_cache"]["train"]["cache_hit"] is True

    live_losses = [r["loss"] for r in _jsonl(tmp_path / "live" / "metrics.jsonl") if "loss" in r]
    for run in ("cached", "rerun"):
        losses = [r["loss"] for r in _jsonl(tmp_path / run / "metrics.jsonl") if "loss" in r]
        assert losses == pytest.approx(live_losses, rel=1e-5, abs=1e-6)
        for name, value in _weights(tmp_path / "live").items():
            torch.testing.assert_close(_weights(tmp_path / run)[name], value, rtol=1e-4, atol=1e-6)
    assert live_losses[0] == pytest.approx(math.log(2), abs=1e-6) and live_losses[-1] != live_losses[0]

    # another temperature changes the reference log-probs: it must get its own cache entry
    other = _config(world, tmp_path / "t08", "dpo", max_steps=1, precompute_ref_logps=True, ref_cache_dir=str(cache),
                    logit_temperature=0.8)
    run_training(other)
    assert len(list(cache.glob("*.pt"))) == 2


def _cli(world, run_dir, *overrides, loss="gamma_simpo"):
    args = ["--model.name_or_path", str(world / "model"), "--data.train", str(world / "pairs.jsonl"),
            "--data.max_length", "48", "--data.max_prompt_length", "24", "--loss.name", loss]
    for key, value in LOSS_PARAMS[loss].items():
        args += [f"--loss.{key}", str(value)]
    if LOSSES[loss].dynamic_margins:
        args += ["--margins.tau", str(MARGIN_TAU)]
    args += ["--output_dir", str(run_dir), "--learning_rate", "1e-3", "--warmup_ratio", "0", "--report_to", "none",
             "--per_device_train_batch_size", "2", "--logging_steps", "1", "--seed", "5", *overrides]
    return args


@pytest.mark.slow  # three `prefopt train` processes of 20 steps
def test_killed_run_resumes_to_the_same_weights_and_gamma_queue(world, tmp_path):
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    steps = ["--max_steps", "20", "--save_steps", "3", "--margins.pool_size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    prefopt = [sys.executable, "-m", "prefopt.cli", "train", str(config)]

    subprocess.run([*prefopt, *_cli(world, tmp_path / "whole", *steps)], check=True, env=env, capture_output=True)

    # The same run, killed with SIGKILL as soon as its first checkpoint is complete, then resumed.
    victim = subprocess.Popen([*prefopt, *_cli(world, tmp_path / "killed", *steps)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = tmp_path / "killed" / "checkpoint-3" / "trainer_state.json"
    deadline = time.time() + 120
    while not first_checkpoint.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "final").exists()
    subprocess.run([*prefopt, *_cli(world, tmp_path / "killed", *steps, "--resume_from_checkpoint", "latest")],
                   check=True, env=env, capture_output=True)

    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0)
    # the steps redone after resuming are logged once: the killed run's rows past its checkpoint were trimmed
    logged_steps = [row["step"] for row in _jsonl(tmp_path / "killed" / "metrics.jsonl") if "loss" in row]
    assert logged_steps == list(range(1, 21))
    assert sorted({row["step"] for row in _jsonl(tmp_path / "killed" / "margins.jsonl")}) == list(range(1, 21))
    queues = [torch.load(tmp_path / run / "checkpoint-18" / "gamma_margins_rank0.pt", weights_only=False)
              for run in ("whole", "killed")]
    assert queues[0]["queue"].numel() == 18 * 2
    assert torch.equal(queues[0]["queue"], queues[1]["queue"])
    assert torch.equal(queues[0]["generator_state"], queues[1]["generator_state"])
    # metrics.json's train_loss is the whole run's mean, not that of the steps after resuming
    means = [json.loads((tmp_path / run / "metrics.json").read_text())["train"]["train_loss"] for run in ("whole", "killed")]
    logged = [row["loss"] for row in _jsonl(tmp_path / "whole" / "metrics.jsonl") if "loss" in row]  # every step
    assert means[0] == pytest.approx(sum(logged) / len(logged), rel=1e-6)
    assert means[1] == pytest.approx(means[0], rel=1e-6)


def _run_cli_expecting_error(capsys, argv):
    code = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_config_key_is_one_line_with_a_suggestion(world, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  learnig_rate: 1.0e-6\n")
    err = _run_cli_expecting_error(capsys, ["train", str(config), *_cli(world, tmp_path / "r")])
    assert "did you mean 'learning_rate'" in err


def test_bad_data_rows_are_reported_with_their_index(world, tmp_path, capsys):
    rows = _jsonl(world / "pairs.jsonl")[:10]
    rows[3]["rejected"] = "   "
    rows[6]["rejected"] = rows[6]["chosen"]
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    err = _run_cli_expecting_error(capsys, ["train", str(config), *_cli(world, tmp_path / "r"),
                                            "--data.train", str(data)])
    assert "row 4" in err and "row 7" in err and "max_bad_fraction" in err  # 1-based, like line numbers
    assert not (tmp_path / "r" / "final").exists()


def test_missing_dataset_and_model_are_one_line(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    err = _run_cli_expecting_error(capsys, ["train", str(config), *_cli(world, tmp_path / "r"),
                                            "--data.train", str(tmp_path / "nope.jsonl")])
    assert "nope.jsonl" in err
    err = _run_cli_expecting_error(capsys, ["train", str(config), *_cli(world, tmp_path / "r"),
                                            "--model.name_or_path", "no-such-org/no-such-model"])
    assert "no-such-org/no-such-model" in err and "could not be loaded" in err
    err = _run_cli_expecting_error(capsys, ["train", str(config), *_cli(world, tmp_path / "r"),
                                            "--model.name_or_path", str(tmp_path / "no-model-here")])
    assert "no such local model folder" in err


def test_a_second_run_never_mixes_into_an_existing_run_folder(world, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    argv = ["train", str(config), *_cli(world, tmp_path / "r", loss="dpo"), "--max_steps", "2"]
    assert cli_main(argv) == 0
    capsys.readouterr()  # the first run's progress bars
    err = _run_cli_expecting_error(capsys, argv)
    assert "already holds a run" in err and "--train.overwrite" in err
    assert cli_main([*argv, "--max_steps", "3", "--overwrite"]) == 0
    assert [row["step"] for row in _jsonl(tmp_path / "r" / "metrics.jsonl") if "loss" in row] == [1, 2, 3]


def test_prefopt_tiny_writes_configs_that_train(tmp_path, capsys):
    from prefopt.tiny import EXAMPLE_CONFIGS

    assert cli_main(["tiny", str(tmp_path / "ex")]) == 0
    for name in EXAMPLE_CONFIGS:
        config = load_config(tmp_path / "ex" / f"{name}.yaml")
        assert Path(config.data.train).is_file() and Path(config.model.name_or_path).is_dir()
    assert cli_main(["train", str(tmp_path / "ex" / "fpo_alpha_rw.yaml"), "--max_steps", "2"]) == 0
    run = tmp_path / "ex" / "runs" / "fpo_alpha_rw"
    assert [row["step"] for row in _jsonl(run / "metrics.jsonl") if "loss" in row] == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2


# ----------------------------------------------------------------------------------------------------------------------
# Forward paths (train.logps_from_hidden, train.padding_free), length grouping, DDP find_unused_parameters
# ----------------------------------------------------------------------------------------------------------------------


def test_hidden_state_and_packed_paths_train_to_the_weights_of_the_logits_path(world, tmp_path, caplog):
    """Plain SGD, three steps, a live reference: the three forward paths move the weights identically (float32)."""
    common = dict(max_steps=3, learning_rate=0.5, optim="sgd", max_grad_norm=1e9, logit_temperature=0.8)
    with caplog.at_level("INFO", logger="prefopt.forward"):
        run_training(_config(world, tmp_path / "logits", "dpo", logps_from_hidden=False, padding_free="false", **common))
        run_training(_config(world, tmp_path / "hidden", "dpo", **common))
        run_training(_config(world, tmp_path / "packed", "dpo", padding_free="true", **common))
    lines = [r.getMessage() for r in caplog.records if r.name == "prefopt.forward"]
    assert any("policy forward: log-probs from the model's logits (train.logps_from_hidden false)" in l for l in lines)
    assert any("policy forward: log-probs from hidden states" in l and "padded rows" in l for l in lines)
    assert any("reference forward: log-probs from hidden states" in l and "padding-free" in l for l in lines)
    initial, old = load_file(str(world / "model" / "model.safetensors")), _weights(tmp_path / "logits")
    assert max((old[n] - initial[n]).abs().max().item() for n in old) > 1e-3
    for run in ("hidden", "packed"):
        new = _weights(tmp_path / run)
        for name in old:
            torch.testing.assert_close(new[name], old[name], rtol=1e-5, atol=1e-5, msg=f"{run} {name}")


@pytest.mark.parametrize("value,message", [("sometimes", "train.padding_free must be auto, true or false"),
                                           ("maybe", "train.logps_from_hidden must be true or false")])
def test_forward_path_fields_reject_bad_values_in_one_line(world, tmp_path, value, message):
    from prefopt.config import ConfigError

    key = "padding_free" if "padding" in message else "logps_from_hidden"
    with pytest.raises(ConfigError, match=message) as error:
        _config(world, tmp_path / "bad", "dpo", **{key: value})
    assert "\n" not in str(error.value)
    assert _config(world, tmp_path / "ok", "dpo", padding_free=True).train.padding_free == "true"


def test_length_grouped_batches_and_find_unused_parameters(world, tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    from prefopt.trainer import PreferenceTrainer, unused_parameter_risk

    config = _config(world, tmp_path / "grouped", "simpo", max_steps=2, train_sampling_strategy="group_by_length")
    assert config.train.ddp_find_unused_parameters is None
    seen = []
    original = PreferenceTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append(self.args.ddp_find_unused_parameters)
        return original(self, model, inputs, *args, **kwargs)

    PreferenceTrainer.compute_loss = spy
    try:
        run_training(config)
    finally:
        PreferenceTrainer.compute_loss = original
    assert seen and set(seen) == {False}  # a dense model: every parameter gets a gradient every step
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert unused_parameter_risk(model) is None
    model.config.num_local_experts = 8  # what a Mixtral config says
    assert "mixture-of-experts" in unused_parameter_risk(model)
