"""Padding-free micro-batches: the B·K right-padded rows of :class:`prefopt.data.PreferenceCollator`, packed into
one row with per-sequence ``position_ids`` (``train.padding_free``).

Packed rows carry no attention mask: transformers reads the sequence boundaries from the ``position_ids`` (each
sequence restarts at 0). Flash-attention (``flash_attention_2``/``_3``) then runs its variable-length kernel over
the boundaries and does no work on padding; ``sdpa`` and ``eager`` build a block-diagonal causal mask instead, which
is exact but attends over the whole packed row (B·K times the padded attention work), so ``auto`` packs only where a
variable-length kernel runs. The per-sequence log-probs are those of the padded path (tests/test_packing.py).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def pack_rows(input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> dict:
    """Pack right-padded rows ``[N, T]`` into one row ``[1, Σ lengths]``.

    Returns ``input_ids``, ``position_ids`` (0 … length−1 per sequence), ``completion_mask`` and ``sequence_ids``
    (which of the N rows each position came from), all ``[1, P]``, and ``num_sequences`` N.
    """
    keep = attention_mask.bool()
    lengths = keep.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError(f"rows {(lengths == 0).nonzero().flatten().tolist()} are empty: nothing to pack")
    width = torch.arange(keep.shape[1], device=keep.device)
    if not bool((keep == (width[None, :] < lengths[:, None])).all()):
        raise ValueError("pack_rows needs right-padded rows (attention_mask 1…1 0…0)")
    n = input_ids.shape[0]
    sequence_ids = torch.repeat_interleave(torch.arange(n, device=input_ids.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    position_ids = torch.arange(sequence_ids.shape[0], device=input_ids.device) - starts[sequence_ids]
    return {
        "input_ids": input_ids[keep][None],
        "position_ids": position_ids[None],
        "completion_mask": completion_mask[keep][None],
        "sequence_ids": sequence_ids[None],
        "num_sequences": n,
    }


def padding_fraction(attention_mask: Tensor) -> float:
    """Share of the padded batch's positions that are padding (what packing saves)."""
    return 1.0 - float(attention_mask.sum()) / max(1, attention_mask.numel())
