"""The README's examples are doctests: what the README shows a user is what the library prints."""

import doctest
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_print_what_the_readme_says():
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 15, "the README lost its examples"
    assert result.failed == 0, f"{result.failed} README example(s) print something else than documented"
