"""Typed config: YAML + overrides, and a one-line error that says what to write for every bad input."""

import pytest
import yaml

from prefopt.config import ConfigError, load_config, parse_overrides, save_config

BASE = {
    "model": {"name_or_path": "some/model"},
    "data": {"train": "train.jsonl"},
    "loss": {"name": "simpo", "beta": 2.0, "gamma_beta_ratio": 0.5},
}


def _write(tmp_path, tree, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def test_yaml_loads_with_defaults_and_loss_hyperparameters(tmp_path):
    config = load_config(_write(tmp_path, BASE))
    assert config.model.name_or_path == "some/model"
    assert config.train.learning_rate == 5e-7 and config.train.seed == 42
    assert config.loss_hparams == {"beta": 2.0, "gamma_beta_ratio": 0.5, "label_smoothing": 0.0}
    assert str(config.run_dir) == "results/default/simpo"


def test_yaml_1_1_float_strings_are_numbers(tmp_path):
    # PyYAML reads 1e-6 (no dot) as a string: a classic source of "learning_rate must be float" crashes
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE) + "train:\n  learning_rate: 1e-6\n")
    assert load_config(path).train.learning_rate == pytest.approx(1e-6)


def test_resolved_config_round_trips(tmp_path):
    config = load_config(_write(tmp_path, BASE), ["--train.max_steps", "7", "--report_to", "none"])
    save_config(config, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again.to_dict() == config.to_dict()
    assert again.train.max_steps == 7 and again.train.report_to == ["none"]


@pytest.mark.parametrize(
    "overrides, check",
    [
        (["--loss.beta", "2.5"], lambda c: c.loss_hparams["beta"] == 2.5),
        (["--beta", "3"], lambda c: c.loss_hparams["beta"] == 3),  # unique loss hyper-parameter, flat form
        (["--learning_rate", "1e-6"], lambda c: c.train.learning_rate == 1e-6),
        (["--max_steps=3"], lambda c: c.train.max_steps == 3),
        (["--bf16"], lambda c: c.train.bf16 is True),  # a bare flag means true
        (["--model.ref_name_or_path", "null"], lambda c: c.model.ref_name_or_path is None),
        (["--report_to", "tensorboard,wandb"], lambda c: c.train.report_to == ["tensorboard", "wandb"]),
        (["--loss.name", "dpo", "--loss.beta", "0.1", "--loss.gamma_beta_ratio", "null"], None),
    ],
)
def test_overrides(tmp_path, overrides, check):
    if check is None:  # switching to a loss that does not take gamma_beta_ratio must fail, naming the key
        with pytest.raises(ConfigError, match="gamma_beta_ratio"):
            load_config(_write(tmp_path, BASE), overrides)
        return
    assert check(load_config(_write(tmp_path, BASE), overrides))


@pytest.mark.parametrize(
    "tree_patch, overrides, message",
    [
        ({"train": {"learnig_rate": 1e-6}}, [], r"unknown key train\.learnig_rate: did you mean 'learning_rate'"),
        ({"trian": {}}, [], r"unknown section 'trian': did you mean 'train'"),
        ({}, ["--learnig_rate", "1e-6"], r"unknown option --learnig_rate: did you mean 'learning_rate'"),
        ({}, ["--name", "x"], r"--name is ambiguous .*write --data\.name"),
        ({}, ["--train.learning_rate", "fast"], r"train\.learning_rate must be a number, got 'fast'"),
        ({}, ["--per_device_train_batch_size", "1.5"], r"must be an integer"),
        ({}, ["--learning_rate", "-1"], r"learning_rate must be > 0"),
        ({}, ["--max_prompt_length", "2048"], r"max_prompt_length must be > 0 and < data\.max_length"),
        ({}, ["--loss.name", "simpoo"], r"unknown loss 'simpoo'\. Did you mean 'simpo'"),
        ({}, ["--loss.bta", "2"], r"does not take 'bta' \(did you mean 'beta'\?\)"),
        ({}, ["--loss.beta", "0"], r"beta must be > 0"),
        ({}, ["--precompute_ref_logps"], r"reference-free; set it to false"),
        ({"model": {"name_or_path": ""}}, [], r"model\.name_or_path is required"),
        ({}, ["--bf16", "maybe"], r"bf16 must be true or false"),
        ({}, ["learning_rate", "1"], r"expected --key value"),
    ],
)
def test_bad_input_gives_one_line_that_says_what_to_write(tmp_path, tree_patch, overrides, message):
    tree = {**BASE, **tree_patch}
    with pytest.raises(ConfigError, match=message) as error:
        load_config(_write(tmp_path, tree), overrides)
    assert "\n" not in str(error.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(scalar)


def test_alpha_out_of_range_for_fpo(tmp_path):
    tree = {**BASE, "loss": {"name": "fpo", "beta_pi": 0.5, "divergence": "alpha", "alpha": 1.0}}
    with pytest.raises(ConfigError, match=r"alpha must be null or in the open interval \(0, 1\)"):
        load_config(_write(tmp_path, tree))
    tree["loss"].pop("alpha")
    with pytest.raises(ConfigError, match="divergence 'alpha' needs alpha"):
        load_config(_write(tmp_path, tree))


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b", "1", "--c=2", "--flag", "--d-e", "x"]) == [
        ("a.b", "1"), ("c", "2"), ("flag", "true"), ("d_e", "x"),
    ]
