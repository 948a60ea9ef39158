"""The README's examples are doctests: what the README shows a user is what the library prints."""

import doctest
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_print_what_the_readme_says():
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 15, "the README lost its examples"
    assert result.failed == 0, f"{result.failed} README example(s) print something else than documented"


def test_readme_config_example_is_a_valid_config():
    import re

    import yaml

    from prefopt.config import load_config

    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README lost its config example"
    config = load_config(None, [], base=yaml.safe_load(blocks[0]))
    assert config.loss.name == "gamma_simpo" and config.margins.tau == 10.0 and config.gamma0 == 4.0
    assert config.data.train_split == "train_prefs" and config.train.bf16 is True
