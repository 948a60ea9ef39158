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
    # report_to "none" is TrainingArguments' empty list, and is written back as ["none"]
    assert again.train.max_steps == 7 and again.train.report_to == [] and again.to_dict()["train"]["report_to"] == ["none"]


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
        # TrainingArguments' own fields, checked before the Trainer sees them (issue: tracebacks before)
        ({}, ["--optim", "adamw_torchh"], r"train\.optim: 'adamw_torchh' is not valid: did you mean 'adamw_torch'"),
        ({}, ["--lr_scheduler_type", "cosinee"], r"train\.lr_scheduler_type: 'cosinee' is not valid: did you mean 'cosine'"),
        ({}, ["--report_to", "wandbb"], r"train\.report_to: unknown logger 'wandbb': did you mean 'wandb'"),
        ({}, ["--adam_beta1", "3"], r"adam_beta1 and adam_beta2 must lie in \[0, 1\)"),
        ({}, ["--train.eval_strategy", "sometimes"], r"train\.eval_strategy: 'sometimes' is not valid"),
        ({}, ["--train.fp16", "--bf16"], r"^train: At most one of fp16 and bf16"),  # TrainingArguments' own message
        ({}, ["--train.gradient_checkpointing", "true"], r"write model\.gradient_checkpointing"),
        ({}, ["--train.warmup_steps", "5"], r"warmup_steps and train\.warmup_ratio are both set"),
        ({"loss": {**BASE["loss"], "margin_tau": 1.0}}, [], r"loss\.margin_tau has moved: write margins\.tau"),
        ({"loss": {"name": "gamma_simpo", "beta": 2.0, "gamma_beta_ratio": 0.5}}, [], r"set margins\.tau"),
        ({}, ["--margins.tau", "1.0"], r"margins\.tau is set but loss 'simpo' has no dynamic margins"),
        ({}, ["--max_grad_norm", "-1"], r"train\.max_grad_norm must be >= 0"),
        ({}, ["--weight_decay", "-5"], r"train\.weight_decay must be >= 0"),
        ({}, ["--run_name", "../../../x"], r"train\.run_name must be a plain folder name"),
        ({}, ["--experiment", "/etc"], r"train\.experiment must be a plain folder name"),
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


def test_every_training_arguments_field_is_reachable(tmp_path):
    # the train section is a TrainingArguments: fields prefopt does not mention are settable all the same
    config = load_config(_write(tmp_path, BASE), ["--train.dataloader_drop_last", "true", "--train.adam_epsilon",
                                                  "1e-6", "--train.warmup_ratio", "0", "--train.warmup_steps", "3"])
    assert config.train.dataloader_drop_last is True and config.train.adam_epsilon == 1e-6
    assert config.train.warmup_steps == 3
    from transformers import TrainingArguments

    assert isinstance(config.train, TrainingArguments)
    save_config(config, tmp_path / "resolved.yaml")  # a hand-set TrainingArguments field is part of config.yaml
    resolved = yaml.safe_load((tmp_path / "resolved.yaml").read_text())["train"]
    assert resolved["dataloader_drop_last"] is True and resolved["warmup_steps"] == 3
    assert "output_dir" not in resolved and "eval_strategy" not in resolved  # derived, not hand-set


def test_derived_training_arguments():
    base = {**BASE, "data": {"train": "t.jsonl", "eval": "e.jsonl"}}
    config = load_config(None, ["--eval_steps", "5", "--save_steps", "7", "--warmup_ratio", "0.25"], base=base)
    t = config.train
    assert (t.eval_strategy.value, t.save_strategy.value, t.warmup_steps) == ("steps", "steps", 0.25)
    assert t.output_dir == "results/default/simpo" and t.run_name == "simpo"
    no_eval = load_config(None, ["--eval_steps", "5"], base=BASE)  # no eval data: no evaluation
    assert no_eval.train.eval_strategy.value == "no" and no_eval.train.save_strategy.value == "no"
    checkpointing = load_config(None, ["--model.gradient_checkpointing", "true"], base=BASE)
    assert checkpointing.train.activation_checkpointing is True


def test_gamma_po_settings_live_in_the_margins_section_and_gamma0_has_one_source():
    tree = {**BASE, "loss": {"name": "gamma_simpo", "beta": 2.5, "gamma_beta_ratio": 0.4}, "margins": {"tau": 3.0}}
    config = load_config(None, [], base=tree)
    assert config.margins.tau == 3.0 and config.gamma0 == pytest.approx(2.5 * 0.4)
    from prefopt.train import build_margins

    margins = build_margins(config, process_index=0)
    assert margins.gamma0 == pytest.approx(1.0) and margins.tau == 3.0


def test_reward_model_config_has_no_loss_section(tmp_path):
    from prefopt.config import RewardModelConfig, load_rm_config

    rm = load_rm_config(None, [], base={"model": BASE["model"], "data": BASE["data"]})
    assert isinstance(rm, RewardModelConfig) and not hasattr(rm, "loss") and str(rm.run_dir) == "results/default/rm"
    with pytest.raises(ConfigError, match=r"reward-model config has no 'loss' section"):
        load_rm_config(None, [], base=BASE)
    save_config(rm, tmp_path / "rm.yaml")
    assert set(yaml.safe_load((tmp_path / "rm.yaml").read_text())) == {"model", "data", "train"}


def test_every_float_form_is_a_number_everywhere(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-1 as a string; a loss hyper-parameter written so is the number all the same
    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {train: t.jsonl}\nloss: {name: dpo, beta: 1e-1}\n"
                    "train: {learning_rate: 5e-7, max_grad_norm: 1e0}\nmargins: {}\n")
    config = load_config(path)
    assert config.loss_hparams["beta"] == 0.1 and config.train.learning_rate == 5e-7 and config.train.max_grad_norm == 1
    assert load_config(path, ["--loss.beta", "2E-1"]).loss_hparams["beta"] == 0.2
    assert load_config(path, ["--beta", ".5"]).loss_hparams["beta"] == 0.5
    path.write_text(path.read_text().replace("{name: dpo, beta: 1e-1}", "{name: fpo, beta_pi: 1e-1, divergence: js}"))
    fpo = load_config(path)
    assert fpo.loss_hparams["divergence"] == "js" and fpo.loss_hparams["beta_pi"] == 0.1  # names stay names


def test_a_section_or_key_written_twice_is_refused(tmp_path):
    for text, key in (("train: {seed: 1}\ntrain: {seed: 2}\n", "train"), ("train:\n  seed: 1\n  seed: 2\n", "seed")):
        path = tmp_path / "dup.yaml"
        path.write_text(yaml.safe_dump(BASE) + text)
        with pytest.raises(ConfigError, match=rf"duplicate key '{key}'.*line \d+ and line \d+") as error:
            load_config(path)
        assert "\n" not in str(error.value)
