"""One forward of a causal LM over a collated micro-batch, to per-sequence summed log-probs (policy and reference).

Two choices, made once per model and logged in one line (:func:`plan_forward`):

* **log-probs from hidden states** (``train.logps_from_hidden``, default true): the model runs with
  ``logits_to_keep`` set to no position, so its LM head projects nothing; a forward hook on the backbone
  (``model.get_decoder()``) takes the last hidden states, and :func:`prefopt.logps.sequence_logps_from_hidden`
  applies the LM head (``model.get_output_embeddings()``, tied or not, Gemma-2's soft-capping included) chunk by
  chunk to the positions that predict a completion token. The call still goes through the wrapped model (DDP,
  DeepSpeed), so hooks, gradient synchronisation and gradient checkpointing work as usual. Fallback to the model's
  logits when the LM head's weight is sharded (DeepSpeed ZeRO-3, FSDP) or the architecture is not known to compute
  its logits as ``lm_head(last hidden state)``.
* **padding-free** (``train.padding_free``: auto, true, false): :func:`prefopt.packing.pack_rows` packs the B·K rows
  into one with per-sequence ``position_ids``. ``auto`` packs only with a flash-attention implementation (a
  variable-length kernel); ``true`` packs with any implementation (``sdpa``/``eager`` get a block-diagonal mask).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Optional

import torch

from prefopt.logps import DEFAULT_CHUNK_SIZE, packed_sequence_logps, sequence_logps, sequence_logps_from_hidden
from prefopt.packing import pack_rows

logger = logging.getLogger(__name__)

#: Architectures whose causal-LM forward is ``lm_head(backbone(x).last_hidden_state)`` (Gemma-2: then soft-capped),
#: with no other logit scaling: the hidden-state path reproduces their logits exactly.
HIDDEN_PATH_MODEL_TYPES = frozenset({
    "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo2",
})
PADDING_FREE_CHOICES = ("auto", "true", "false")


@dataclasses.dataclass(frozen=True)
class ForwardPlan:
    from_hidden: bool
    packed: bool
    description: str


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / DeepSpeed / torch.compile wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            break
    return model


def _accepts(model: torch.nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def hidden_path_problem(model: torch.nn.Module) -> Optional[str]:
    """Why the hidden-state path cannot reproduce this model's logits, or None when it can."""
    inner = unwrap(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type not in HIDDEN_PATH_MODEL_TYPES:
        return f"model type {model_type!r} is not known to compute its logits as lm_head(last hidden state)"
    if not _accepts(inner, "logits_to_keep"):
        return f"{type(inner).__name__}.forward takes no logits_to_keep"
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return f"its output embedding is {type(head).__name__}, not a plain Linear LM head"
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if decoder is None or decoder is inner:
        return "it has no separate backbone module (get_decoder)"
    return None


def _attn_implementation(model: torch.nn.Module) -> str:
    config = getattr(unwrap(model), "config", None)
    return str(getattr(config, "_attn_implementation", None) or getattr(config, "attn_implementation", None) or "eager")


def plan_forward(model: torch.nn.Module, *, logps_from_hidden: bool = True, padding_free: str = "auto",
                 sharded: Optional[str] = None, role: str = "policy") -> ForwardPlan:
    """Decide the two paths for ``model`` and log them in one line. ``sharded`` names a parameter sharding (e.g.
    "DeepSpeed ZeRO-3") under which the LM head's weight is not whole outside the forward: logits path then."""
    padding_free = str(padding_free).lower()
    if padding_free not in PADDING_FREE_CHOICES:
        raise ValueError(f"padding_free must be one of {', '.join(PADDING_FREE_CHOICES)}, got {padding_free!r}")
    parts = []
    from_hidden = False
    if not logps_from_hidden:
        parts.append("log-probs from the model's logits (train.logps_from_hidden false)")
    elif sharded:
        parts.append(f"log-probs from the model's logits: {sharded} shards the LM head (hidden-state path off)")
    else:
        problem = hidden_path_problem(model)
        from_hidden = problem is None
        parts.append("log-probs from hidden states (chunked LM head; logits never materialised)" if from_hidden
                     else f"log-probs from the model's logits: {problem}")
    attn = _attn_implementation(model)
    varlen = "flash" in attn
    packed = False
    if padding_free == "false":
        parts.append("padded rows (train.padding_free false)")
    elif not _accepts(unwrap(model), "position_ids"):
        parts.append("padded rows (the model's forward takes no position_ids)")
    elif varlen:
        packed = True
        parts.append(f"padding-free packed rows ({attn} variable-length attention)")
    elif padding_free == "true":
        packed = True
        parts.append(f"padding-free packed rows ({attn} with a block-diagonal mask: exact, but attention spans the "
                     "whole packed row)")
    else:
        parts.append(f"padded rows (attention {attn!r} has no variable-length kernel; train.padding_free true packs "
                     "with a block-diagonal mask)")
    plan = ForwardPlan(from_hidden=from_hidden, packed=packed, description="; ".join(parts))
    logger.info("prefopt %s forward: %s", role, plan.description)
    return plan


def summed_logps(model: torch.nn.Module, inputs: dict, plan: ForwardPlan, *, temperature: float = 1.0,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs and token counts ``[B·K]`` of a collated micro-batch (row order kept)."""
    input_ids, completion_mask = inputs["input_ids"], inputs["completion_mask"]
    packed = None
    if plan.packed:
        packed = pack_rows(input_ids, inputs["attention_mask"], completion_mask)
        call = {"input_ids": packed["input_ids"], "position_ids": packed["position_ids"]}
        input_ids, completion_mask = packed["input_ids"], packed["completion_mask"]
    else:
        call = {"input_ids": input_ids, "attention_mask": inputs["attention_mask"]}
    seq = {} if packed is None else {"sequence_ids": packed["sequence_ids"], "num_sequences": packed["num_sequences"]}

    if not plan.from_hidden:
        logits = model(**call, use_cache=False).logits
        if packed is None:
            return sequence_logps(logits, input_ids, completion_mask, temperature=temperature, chunk_size=chunk_size)
        return packed_sequence_logps(logits, input_ids, completion_mask, temperature=temperature,
                                     chunk_size=chunk_size, **seq)

    inner = unwrap(model)
    captured: list[torch.Tensor] = []
    handle = inner.get_decoder().register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        # no position is projected by the model's own LM head: its logits are [rows, 0, V]
        model(**call, use_cache=False, logits_to_keep=torch.zeros_like(input_ids, dtype=torch.bool))
    finally:
        handle.remove()
    head = inner.get_output_embeddings()
    softcap = getattr(inner.config, "final_logit_softcapping", None)
    return sequence_logps_from_hidden(
        captured[-1], head.weight, input_ids, completion_mask, bias=head.bias, temperature=temperature,
        softcap=softcap, chunk_size=chunk_size, **seq,
    )
