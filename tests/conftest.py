"""Session-wide test fixtures: one tiny saved model (and its tokenizer) and one fake judge server for the whole run.

* ``tiny_model`` — a folder written once per session by :func:`prefopt.tiny.save_tiny` (GPT-NeoX, hidden 32, 2 layers,
  seed 0) over ``BASE_WORDS`` + :data:`TINY_WORDS`, loadable with ``from_pretrained`` like a Hub model. For tests whose
  assertions hold for *any* tiny random model (the trainer's machinery, the loss dispatch, the run scripts,
  multi-process equivalence). Tests that need particular words in the vocabulary (a reward to learn from GOOD / BAD
  words), a particular vocabulary size (sampling statistics) or a particular seed build their own model. Never write
  into this folder: every test of the session reads it.
* ``tiny_model_factory(seed)`` — the same words and sizes with another seed (one folder per seed, built on first use),
  e.g. a reference model that differs from the policy.
* ``tiny_tokenizer`` — the tokenizer saved in ``tiny_model``, loaded once (``prefopt.models.load_tokenizer``).
  Shared: do not modify it.
* ``judge_server`` — one :class:`fake_openai.FakeOpenAI` (an OpenAI-compatible chat-completions server on 127.0.0.1)
  for the session, closed at the end. Tests that set its ``rule`` or count its requests take ``fake_judge`` instead,
  the same server reset (default rule, no records) before and after the test.

``tests/`` is put on ``sys.path`` here, so ``from fake_openai import ...`` works under any pytest import mode.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from fake_openai import FakeOpenAI  # noqa: E402

from prefopt.tiny import EXAMPLE_WORDS  # noqa: E402

def pytest_collection_finish(session):
    """Freeze what collection built (torch, transformers and every test module), so that the full garbage
    collections the suite triggers skip those objects: every ``Trainer.train()`` ends in accelerate's
    ``free_memory()``, a ``gc.collect()`` that otherwise walks them all (0.5 s each, dozens of trainings)."""
    gc.collect()
    gc.freeze()


#: The shared tiny model's words beyond ``prefopt.tiny.BASE_WORDS``: the ``prefopt tiny`` example words and the few
#: words of the paper-config fixture data (tests/test_paper_configs_small.py).
TINY_WORDS = [*EXAMPLE_WORDS, "apple", "about", "sure", "here", "clear", "kind", "go", "away"]
#: The shared tiny model's size (``save_tiny`` keyword arguments besides the seed).
TINY_SIZE = {"hidden_size": 32, "num_layers": 2, "num_heads": 2}


@pytest.fixture(scope="session")
def tiny_words() -> list[str]:
    """The words (beyond ``BASE_WORDS``) the shared tiny model's tokenizer knows: write test data with these."""
    return list(TINY_WORDS)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """``factory(seed=0) -> Path``: the shared tiny model's words and size with the given seed, saved once per seed."""
    root = tmp_path_factory.mktemp("tiny_models")
    built: dict[int, Path] = {}

    def factory(seed: int = 0) -> Path:
        if seed not in built:
            from prefopt.tiny import save_tiny

            built[seed] = save_tiny(root / f"seed{seed}", TINY_WORDS, seed=seed, **TINY_SIZE)
        return built[seed]

    return factory


@pytest.fixture(scope="session")
def tiny_model(tiny_model_factory) -> Path:
    """The shared tiny model folder (seed 0). Read only."""
    return tiny_model_factory(0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    """The shared tiny model's tokenizer, loaded once from its folder as the trainer loads it
    (``prefopt.models.load_tokenizer``). Do not modify it."""
    from prefopt.models import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture(scope="session")
def judge_server():
    """One fake OpenAI-compatible judge server for the whole session (closed at the end)."""
    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture
def fake_judge(judge_server):
    """The session's judge server, reset before and after this test: default rule, no recorded requests."""
    judge_server.reset()
    yield judge_server
    judge_server.reset()
