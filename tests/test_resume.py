"""Resuming a run: refused when the config changed what the checkpoint optimised, and safe with damaged
checkpoints and torn logs (a checkpoint that cannot be resumed is skipped with a warning or named in a one-line
error that says which one would work)."""

import json
import logging
import random
import shutil

import pytest
import yaml

from prefopt.config import load_config
from prefopt.errors import ConfigError
from prefopt.train import run_training

WORDS = "red blue green cat dog sun moon fast slow big small happy sad tree river stone".split()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_data")
    rng = random.Random(0)
    sentence = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    with open(root / "pairs.jsonl", "w") as handle:
        for _ in range(24):
            handle.write(json.dumps({"prompt": "tell me " + sentence(2), "chosen": sentence(3) + " .",
                                     "rejected": sentence(3) + " !"}) + "\n")
    return root / "pairs.jsonl"


def _config(tiny_model, data, run_dir, *overrides, loss=("gamma_simpo", {"beta": 2.0, "gamma_beta_ratio": 0.5})):
    name, params = loss
    tree = {"model": {"name_or_path": str(tiny_model)},
            "data": {"train": str(data), "max_length": 40, "max_prompt_length": 16},
            "loss": {"name": name, **params},
            "train": {"output_dir": str(run_dir), "max_steps": 6, "save_steps": 2, "learning_rate": 1e-3,
                      "warmup_ratio": 0.0, "report_to": "none", "per_device_train_batch_size": 2, "logging_steps": 1,
                      "seed": 3, "quiet": True}}
    if name.startswith("gamma_"):
        tree["margins"] = {"tau": 1.0, "pool_size": 8}
    return load_config(None, list(overrides), base=tree)


@pytest.fixture(scope="module")
def finished(tiny_model, data, tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 2, 4 and 6 (copied per test before damaging it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_training(_config(tiny_model, data, run_dir))
    return run_dir


@pytest.fixture
def run_copy(finished, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target


def test_resume_with_a_changed_optimisation_setting_is_refused_before_anything_is_touched(tiny_model, data, run_copy):
    before = {p.name: p.read_bytes() for p in run_copy.glob("*.json*")} | {"config.yaml": (run_copy / "config.yaml").read_bytes()}
    for change in (["--loss.beta", "2.5"], ["--train.learning_rate", "2e-3"], ["--train.seed", "4"],
                   ["--margins.tau", "2.0"], ["--data.train", str(data.parent / "other.jsonl")]):
        key = change[0].lstrip("-")
        with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')}.*--train\.allow_config_change {key}") as error:
            run_training(_config(tiny_model, data, run_copy, "--resume_from_checkpoint", "latest", *change))
        assert "\n" not in str(error.value)
    after = {p.name: p.read_bytes() for p in run_copy.glob("*.json*")} | {"config.yaml": (run_copy / "config.yaml").read_bytes()}
    assert after == before  # config.yaml not rewritten, logs not trimmed
    assert not (run_copy / "config_history").exists()


def test_an_allowed_change_resumes_and_the_old_config_is_kept(tiny_model, data, run_copy):
    old = (run_copy / "config.yaml").read_text()
    config = _config(tiny_model, data, run_copy, "--resume_from_checkpoint", str(run_copy / "checkpoint-4"),
                     "--train.learning_rate", "2e-3", "--train.allow_config_change", "train.learning_rate",
                     "--train.logging_steps", "2")  # logging settings may change freely
    run_training(config)
    history = sorted((run_copy / "config_history").glob("config-*.yaml"))
    assert len(history) == 1 and history[0].read_text().endswith(old)
    assert "train.learning_rate: 0.001 -> 0.002" in history[0].read_text().splitlines()[0]
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["train"]["learning_rate"] == 2e-3


def _damage(run_dir, how):
    latest = run_dir / "checkpoint-6"
    if how == "truncated trainer_state.json":
        text = (latest / "trainer_state.json").read_text()
        (latest / "trainer_state.json").write_text(text[: len(text) // 2])
        return "trainer_state.json is truncated"
    if how == "empty model.safetensors":
        (latest / "model.safetensors").write_bytes(b"")
        return "model.safetensors is empty"
    if how == "deleted margin state":
        (latest / "gamma_margins_rank0.pt").unlink()
        return "gamma_margins_rank0.pt is missing"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated trainer_state.json", "empty model.safetensors", "deleted margin state"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tiny_model, data, run_copy, how, caplog):
    problem = _damage(run_copy, how)
    shutil.rmtree(run_copy / "final")
    with caplog.at_level(logging.WARNING, logger="prefopt"):
        metrics = run_training(_config(tiny_model, data, run_copy, "--resume_from_checkpoint", "latest"))
    assert metrics["global_step"] == 6 and (run_copy / "final" / "model.safetensors").is_file()
    assert any("checkpoint-6" in r.getMessage() and problem in r.getMessage() for r in caplog.records), caplog.text
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed from step 4: steps 5 and 6 logged once


@pytest.mark.parametrize("how", ["truncated trainer_state.json", "empty model.safetensors", "deleted margin state"])
def test_a_damaged_checkpoint_named_explicitly_is_a_one_line_error_naming_one_that_works(tiny_model, data, run_copy,
                                                                                          how):
    problem = _damage(run_copy, how)
    with pytest.raises(ConfigError, match=rf"{problem}.*newest whole checkpoint is .*checkpoint-4") as error:
        run_training(_config(tiny_model, data, run_copy, "--resume_from_checkpoint", str(run_copy / "checkpoint-6")))
    assert "\n" not in str(error.value)


def test_a_torn_last_log_line_is_dropped_on_resume(tiny_model, data, run_copy, caplog):
    for name in ("margins.jsonl", "metrics.jsonl"):
        with open(run_copy / name, "a") as handle:
            handle.write('{"step": 7, "exam')  # a run killed while writing
    with caplog.at_level(logging.WARNING, logger="prefopt"):
        run_training(_config(tiny_model, data, run_copy, "--resume_from_checkpoint", str(run_copy / "checkpoint-4")))
    for name in ("margins.jsonl", "metrics.jsonl"):
        rows = [json.loads(line) for line in (run_copy / name).read_text().splitlines()]  # every line parses
        assert max(r["step"] for r in rows) == 6
    assert "unreadable line" in caplog.text


def test_train_loss_after_resume_is_the_whole_runs_mean(tiny_model, data, finished, run_copy, tmp_path):
    whole = json.loads((finished / "metrics.json").read_text())["train"]["train_loss"]
    logged = [json.loads(line)["loss"] for line in (finished / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert whole == pytest.approx(sum(logged) / len(logged), rel=1e-6)  # logging_steps 1: every step logged
    resumed = run_training(_config(tiny_model, data, run_copy, "--resume_from_checkpoint",
                                   str(run_copy / "checkpoint-2")))
    assert resumed["train"]["train_loss"] == pytest.approx(whole, rel=1e-6)  # not the mean of steps 3-6 only
    assert json.loads((run_copy / "metrics.json").read_text())["train"]["train_loss"] == pytest.approx(whole, rel=1e-6)

    # the reward model's trainer reports it the same way
    from prefopt.rm import run_reward_model
    from prefopt.config import load_rm_config

    def rm_config(run_dir, *overrides):
        tree = {"model": {"name_or_path": str(tiny_model)},
                "data": {"train": str(data), "max_length": 40, "max_prompt_length": 16},
                "train": {"output_dir": str(run_dir), "max_steps": 4, "save_steps": 2, "learning_rate": 1e-3,
                          "warmup_ratio": 0.0, "report_to": "none", "per_device_train_batch_size": 2,
                          "logging_steps": 1, "seed": 3, "quiet": True}}
        return load_rm_config(None, list(overrides), base=tree)

    rm_whole = run_reward_model(rm_config(tmp_path / "rm"))["train"]["train_loss"]
    shutil.copytree(tmp_path / "rm", tmp_path / "rm_again")
    rm_resumed = run_reward_model(rm_config(tmp_path / "rm_again", "--resume_from_checkpoint",
                                            str(tmp_path / "rm_again" / "checkpoint-2")))["train"]["train_loss"]
    assert rm_resumed == pytest.approx(rm_whole, rel=1e-5)
