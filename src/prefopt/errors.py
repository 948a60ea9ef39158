"""The one error family of prefopt.

Every error that the user can fix (a config value, a data row, a model folder, a judge endpoint, an evaluation
file) is a :class:`PrefoptError`. The CLI turns it into one line, ``prefopt <command>: error: <message>``, and exit
status 2; anything else is a bug and keeps its traceback. Each subclass also derives from the built-in exception it
replaced (``ValueError`` or ``RuntimeError``), so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations


class PrefoptError(Exception):
    """Base of every error whose message tells the user what to change; never a bug."""


class ConfigError(PrefoptError, ValueError):
    """A config file or override the user must change; the message says how."""


class DataError(PrefoptError, ValueError):
    """A data file, Hub dataset or row that cannot be used as given; the message names the source, row and reason."""


class ModelError(PrefoptError, ValueError):
    """A model, tokenizer or reward model that cannot be loaded (no such folder, not on the Hub, no score head)."""


class JudgeError(PrefoptError, RuntimeError):
    """A judge call failed for good: a non-retryable status, or retries exhausted (SPEC §7). Never carries the key."""


class EvalDataError(PrefoptError, RuntimeError):
    """Offline evaluation data could not be fetched, unpacked or verified."""
