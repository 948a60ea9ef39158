"""One loader for every model a stage needs: tokenizers, causal LMs (policy, reference, sampler) and reward models.

Every stage (train, sft, rm, sample, label, mean-reward, bench-generate, the small world) loads through here, so a
Hub name and a local folder behave alike everywhere: one dtype table (:data:`DTYPES`), one error type
(:class:`~prefopt.errors.ModelError`, one line naming the model and the first line of the cause), the Hub's offline
flags honoured (:func:`prefopt.hub.offline_from_env`), and a path-like name that does not exist reported at once
instead of being asked of the Hub.

Tokenizers get ``pad = EOS`` when they have no pad token (Llama-3 and Pythia ship without one; padding is masked).
``model.chat_template`` replaces the tokenizer's template with a shipped one by name (:data:`CHAT_TEMPLATES`:
``mistral_fixed`` for Mistral-Instruct, SPEC §6.2; ``gemma2_merged_system`` for Gemma-2, SPEC §6.3), a file, or a
Jinja string (:func:`resolve_chat_template`).
Reward models are ``AutoModelForSequenceClassification`` with one label and a scalar ``score`` head (see
:mod:`prefopt.rm`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import torch

from prefopt.errors import ModelError
from prefopt.hub import offline_from_env

#: ``dtype`` names accepted by every loader and config (``auto``: the dtype the checkpoint was saved in).
DTYPES: dict[str, Any] = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16,
                          "float32": torch.float32}
#: What :func:`load_model` builds for each ``kind``: a causal LM, our one-label reward model (a ``score`` head read
#: at the last response token, :mod:`prefopt.rm`), or any sequence classifier as it was saved (``classifier``: e.g.
#: ArmoRM, whose remote code returns ``.score``; no label count imposed, no head check).
KINDS = ("causal_lm", "reward_model", "classifier")


#: Chat templates shipped as package data (``resources/chat_templates/<name>.jinja``), selectable by name in
#: ``model.chat_template``. Both render an assistant turn on its own and accept a system turn, which the SimPO-family
#: tokenisation needs (``data.tokenization: official``, SPEC §6.4) and the tokenizers' own templates refuse.
CHAT_TEMPLATES = {
    "mistral_fixed": "Mistral-Instruct: [INST] user [/INST] + ' answer ' + EOS, system merged into the first turn "
                     "(the template the official Mistral-Instruct runs use, SPEC §6.2)",
    "gemma2_merged_system": "Gemma-2: <start_of_turn>user/model turns, system merged into the first turn, no "
                            "alternation check (the template of the official Gemma-2 γ-PO config, SPEC §6.3)",
}


def is_jinja(text: str) -> bool:
    """True when ``text`` looks like a Jinja template rather than a name or a path."""
    return "{{" in text or "{%" in text


def resolve_chat_template(value: str) -> str:
    """The Jinja text ``model.chat_template`` names: a shipped template (:data:`CHAT_TEMPLATES`), a file, or a Jinja
    string as it is; anything else is a ModelError that lists the names."""
    if value in CHAT_TEMPLATES:
        return resources.files("prefopt.resources").joinpath("chat_templates", f"{value}.jinja").read_text()
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text()
    if is_jinja(value):
        return value
    raise ModelError(f"model.chat_template {value!r} is not a shipped template ({', '.join(CHAT_TEMPLATES)}), "
                     "an existing file, or a Jinja string")


def torch_dtype(name: str) -> Any:
    """The ``from_pretrained`` dtype for a :data:`DTYPES` name, or a ModelError listing the valid names."""
    if name not in DTYPES:
        raise ModelError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_model_source(name_or_path: Union[str, Path], what: str = "model") -> None:
    """A path-like name that does not exist is a typo, not a Hub id: say so at once instead of asking the Hub."""
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) and not Path(text).expanduser().is_dir():
        raise ModelError(f"{what}: no such local model folder {text!r}")


def load_tokenizer(name_or_path: Union[str, Path], *, revision: Optional[str] = None, trust_remote_code: bool = False,
                   chat_template: Optional[str] = None, what: str = "model"):
    """The tokenizer of a model (Hub id or folder). ``chat_template`` (a shipped template's name, a file or a Jinja
    string: :func:`resolve_chat_template`) replaces the tokenizer's own; a missing pad token becomes EOS."""
    from transformers import AutoTokenizer

    check_model_source(name_or_path, what)
    try:
        with offline_from_env():
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), revision=revision,
                                                      trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelError(f"{what} {str(name_or_path)!r} could not be loaded (not a local folder, and the Hub did not "
                         f"serve it: {_first_line(error)})") from None
    if chat_template:
        tokenizer.chat_template = resolve_chat_template(chat_template)
    if tokenizer.pad_token_id is None:  # Llama-3 and Pythia ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: Union[str, Path], *, kind: str = "causal_lm", dtype: str = "auto",
               revision: Optional[str] = None, trust_remote_code: bool = False,
               attn_implementation: Optional[str] = None, device: Optional[Union[str, torch.device]] = None,
               eval_mode: bool = False, what: str = "model", **extra):
    """``from_pretrained`` of a causal LM (``kind="causal_lm"``), a one-label reward model (``"reward_model"``) or a
    sequence classifier as saved (``"classifier"``, see :data:`KINDS`).

    ``extra`` goes to ``from_pretrained`` (e.g. ``pad_token_id``). ``device`` moves the model there (``"auto"``: CUDA
    when available, else the CPU; None: leave it where from_pretrained put it, as the Trainer wants); ``eval_mode``
    puts it in eval mode. A reward model is checked for its scalar ``score`` head.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    check_model_source(name_or_path, what)
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code, dtype=torch_dtype(dtype), **extra)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    auto_class = AutoModelForCausalLM
    if kind in ("reward_model", "classifier"):
        auto_class = AutoModelForSequenceClassification
    if kind == "reward_model":
        kwargs["num_labels"] = 1
    try:
        with offline_from_env():
            model = auto_class.from_pretrained(str(name_or_path), **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(f"{what} {str(name_or_path)!r} could not be loaded: {_first_line(error)}") from None
    if kind == "reward_model":
        from prefopt.rm import score_head

        try:
            score_head(model)
        except ValueError as error:
            raise ModelError(f"{what} {str(name_or_path)!r}: {error}") from None
    if device is not None:
        model = model.to(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    return model.eval() if eval_mode else model


def load_from_config(name_or_path: Union[str, Path], model_config, *, kind: str = "causal_lm",
                     what: str = "model.name_or_path", **extra):
    """:func:`load_model` with a config's ``model`` section (revision, dtype, attention, remote code)."""
    m = model_config
    return load_model(name_or_path, kind=kind, dtype=m.dtype, revision=m.revision,
                      trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation, what=what,
                      **extra)


def tokenizer_from_config(model_config):
    """:func:`load_tokenizer` of a config's policy, after checking the reference's folder exists too."""
    m = model_config
    if m.ref_name_or_path:
        check_model_source(m.ref_name_or_path, "model.ref_name_or_path")
    return load_tokenizer(m.name_or_path, revision=m.revision, trust_remote_code=m.trust_remote_code,
                          chat_template=m.chat_template, what="model.name_or_path")
