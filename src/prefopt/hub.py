"""Hugging Face Hub access shared by the data and model loaders."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


@contextlib.contextmanager
def offline_from_env() -> Iterator[None]:
    """Honour HF_HUB_OFFLINE / HF_DATASETS_OFFLINE even when set after ``datasets`` was imported.

    ``datasets`` and ``huggingface_hub`` (which transformers asks) read these variables once, at import; a notebook or
    test that sets them later would otherwise sit through ~25-45 s of connection retries before a "not found". The
    flags are restored on exit.
    """
    if not any(os.environ.get(key, "").upper() in _TRUE_VALUES for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    targets = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
               (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved = [(module, name, getattr(module, name)) for module, name in targets if hasattr(module, name)]
    try:
        for module, name, _ in saved:
            setattr(module, name, True)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
