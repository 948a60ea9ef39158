"""Per-sequence log-probs of the response tokens, without a float32 ``[batch, length, vocab]`` log-softmax.

``log π(y_t | ·) = z[y_t] − logsumexp(z)`` is computed a chunk of positions at a time, in float32, from logits that may
be bf16. A naive ``log_softmax(logits.float())`` keeps a float32 copy of the logits alive for the backward pass;
with a 128k vocabulary and 2048 tokens that is 1 GiB per sequence. Here the forward keeps only the per-position
logsumexp, and the backward recomputes the softmax chunk by chunk: peak extra memory is one float32 chunk.

:func:`sequence_logps_from_hidden` goes one step further (``train.logps_from_hidden``, the default): it takes the
backbone's last hidden states and the LM head's weight, projects only the positions that predict a completion token,
a chunk at a time, and recomputes each chunk's logits in the backward. The model's ``[batch, length, vocab]`` logits
(about 2 GB in bf16 for one Llama-3 pair at 2k tokens) never exist, and prompt and padding positions cost nothing.
"""

from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor

#: Positions per chunk. 128 positions × 128k vocabulary × 4 bytes × batch rows ≈ 64 MiB per row.
DEFAULT_CHUNK_SIZE = 128


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(logits / T)[target] per position, chunked over the sequence; gradient only w.r.t. the logits."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, temperature: float, chunk_size: int) -> Tensor:
        n, length, _ = logits.shape
        compute_dtype = torch.promote_types(logits.dtype, torch.float32)  # float32 at least; float64 stays float64
        token_logps = logits.new_empty((n, length), dtype=compute_dtype)
        logsumexps = logits.new_empty((n, length), dtype=compute_dtype)
        for start in range(0, length, chunk_size):
            chunk = logits[:, start : start + chunk_size].to(compute_dtype) / temperature
            lse = torch.logsumexp(chunk, dim=-1)
            picked = chunk.gather(-1, targets[:, start : start + chunk_size, None]).squeeze(-1)
            token_logps[:, start : start + chunk_size] = picked - lse
            logsumexps[:, start : start + chunk_size] = lse
        ctx.save_for_backward(logits, targets, logsumexps)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return token_logps

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        logits, targets, logsumexps = ctx.saved_tensors
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[1], chunk_size):
            stop = start + chunk_size
            # d/dz [z_y/T − logsumexp(z/T)] = (onehot(y) − softmax(z/T)) / T
            chunk = logits[:, start:stop].to(logsumexps.dtype)
            softmax = torch.exp(chunk / temperature - logsumexps[:, start:stop, None])
            grad = -softmax
            grad.scatter_add_(-1, targets[:, start:stop, None], torch.ones_like(softmax[..., :1]))
            grad_logits[:, start:stop] = (grad * (grad_output[:, start:stop, None].to(grad.dtype) / temperature)).to(
                logits.dtype
            )
        return grad_logits, None, None, None


def token_logps(
    logits: Tensor, targets: Tensor, *, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Tensor:
    """``log softmax(logits / temperature)`` gathered at ``targets``: ``[N, L, V]``, ``[N, L]`` → ``[N, L]``, computed
    and returned in float32 (float64 for float64 logits) whatever the logits' precision."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [N, L, V] and targets [N, L]; got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return _TokenLogProbs.apply(logits, targets.long(), float(temperature), int(chunk_size))


def sequence_logps(
    logits: Tensor,
    input_ids: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Summed log-prob ``S(y)`` of each row's completion tokens and their count ``n`` (SPEC §1).

    ``logits`` ``[N, L, V]`` are the model's outputs for ``input_ids`` ``[N, L]``; position t predicts token t+1.
    ``completion_mask`` ``[N, L]`` is 1 on the completion tokens (prompt and padding 0). ``temperature`` divides the
    logits first (the EXO/f-PO Pythia pipeline uses 0.8 for policy and reference alike, SPEC §3). Returns
    ``(summed [N], token_count [N])`` in float32 (float64 for float64 logits); the averaged log-prob is ``summed / token_count``.
    """
    targets = input_ids[:, 1:]
    per_token = token_logps(logits[:, :-1], targets, temperature=temperature, chunk_size=chunk_size)
    mask = completion_mask[:, 1:].to(per_token.dtype)
    token_count = mask.sum(dim=-1)
    if bool((token_count == 0).any()):
        empty = (token_count == 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no completion tokens after the first position: nothing to score")
    return (per_token * mask).sum(dim=-1), token_count


# ----------------------------------------------------------------------------------------------------------------------
# Log-probs from hidden states: the LM head inside the chunk loop, so the [N, L, V] logits never exist
# ----------------------------------------------------------------------------------------------------------------------


def _matmul_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the model's own LM head would multiply in: the autocast dtype when autocast is on (bf16 mixed
    precision), else the weight's dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


class _HiddenTokenLogProbs(torch.autograd.Function):
    """``log softmax(cap(h·Wᵀ + b) / T)[target]`` for the selected positions ``h`` ``[M, H]``, a chunk of rows at a
    time. The forward keeps only ``h`` and the per-position logsumexp; the backward recomputes each chunk's logits and
    returns the gradients of ``h``, ``W`` and ``b``. ``cap`` is Gemma-2's final-logit soft-capping
    (``c·tanh(z/c)``), the identity when ``softcap`` is None."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, softcap, chunk_size):
        mm_dtype = _matmul_dtype(hidden, weight)
        compute_dtype = torch.promote_types(mm_dtype, torch.float32)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(mm_dtype)
            b = None if bias is None else bias.to(compute_dtype)
            out = hidden.new_empty(hidden.shape[0], dtype=compute_dtype)
            lses = hidden.new_empty(hidden.shape[0], dtype=compute_dtype)
            for start in range(0, hidden.shape[0], chunk_size):
                stop = start + chunk_size
                z = _capped_logits(hidden[start:stop].to(mm_dtype) @ w.t(), b, softcap, compute_dtype)[0] / temperature
                lse = torch.logsumexp(z, dim=-1)
                out[start:stop] = z.gather(-1, targets[start:stop, None]).squeeze(-1) - lse
                lses[start:stop] = lse
        ctx.save_for_backward(hidden, weight, bias, targets, lses)
        ctx.temperature, ctx.softcap, ctx.chunk_size, ctx.mm_dtype = temperature, softcap, chunk_size, mm_dtype
        return out

    @staticmethod
    def backward(ctx, grad_output):
        hidden, weight, bias, targets, lses = ctx.saved_tensors
        temperature, softcap, chunk_size, mm_dtype = ctx.temperature, ctx.softcap, ctx.chunk_size, ctx.mm_dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        compute_dtype = lses.dtype
        grad_h = torch.empty_like(hidden) if need_h else None
        # W's gradient accumulates over the chunks in the weight's own dtype (float32 master weights stay float32)
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=compute_dtype, device=weight.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(mm_dtype)
            b = None if bias is None else bias.to(compute_dtype)
            for start in range(0, hidden.shape[0], chunk_size):
                stop = start + chunk_size
                h = hidden[start:stop].to(mm_dtype)
                z, tanh = _capped_logits(h @ w.t(), b, softcap, compute_dtype)
                # d/dz [z_y/T − logsumexp(z/T)] = (onehot(y) − softmax(z/T)) / T
                grad = torch.exp(z / temperature - lses[start:stop, None]).neg_()
                grad.scatter_add_(-1, targets[start:stop, None], torch.ones_like(grad[:, :1]))
                grad.mul_(grad_output[start:stop, None].to(compute_dtype) / temperature)
                if tanh is not None:  # d/dr [c·tanh(r/c)] = 1 − tanh²(r/c)
                    grad.mul_(1 - tanh * tanh)
                if need_b:
                    grad_b += grad.sum(0)
                grad = grad.to(mm_dtype)
                if need_h:
                    grad_h[start:stop] = (grad @ w).to(hidden.dtype)
                if need_w:
                    grad_w += (grad.t() @ h).to(weight.dtype)
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def _capped_logits(raw: Tensor, bias, softcap, compute_dtype) -> tuple[Tensor, Optional[Tensor]]:
    z = raw.to(compute_dtype)
    if bias is not None:
        z = z + bias
    if softcap is None:
        return z, None
    tanh = torch.tanh(z / softcap)
    return tanh * softcap, tanh


def selected_token_logps(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Optional[Tensor] = None,
    temperature: float = 1.0,
    softcap: Optional[float] = None,
    chunk_tokens: int = 1024,
) -> Tensor:
    """``log softmax(LMhead(hidden) / temperature)`` at ``targets`` for ``hidden`` ``[M, H]`` and ``targets`` ``[M]``
    (the positions to score, already selected), ``chunk_tokens`` rows at a time; float32 (float64 for float64)."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1] or weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"hidden must be [M, H], targets [M] and weight [V, H]; got {tuple(hidden.shape)}, "
                         f"{tuple(targets.shape)} and {tuple(weight.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return _HiddenTokenLogProbs.apply(hidden, weight, bias, targets.long(), float(temperature),
                                      None if softcap is None else float(softcap), max(1, int(chunk_tokens)))


def scored_positions(completion_mask: Tensor, sequence_ids: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Which positions t of ``[N, L]`` rows predict a scored token t+1: a boolean ``[N, L-1]`` and, for each, the
    sequence it belongs to (the row; for packed rows the ``sequence_ids`` entry)."""
    scored = completion_mask[:, 1:].bool()
    if sequence_ids is None:
        owner = torch.arange(completion_mask.shape[0], device=completion_mask.device)[:, None].expand_as(scored)
    else:  # packed: a position never predicts the first token of the next sequence
        scored = scored & (sequence_ids[:, 1:] == sequence_ids[:, :-1])
        owner = sequence_ids[:, 1:]
    return scored, owner


def _sum_per_sequence(per_token: Tensor, owner: Tensor, num_sequences: int) -> tuple[Tensor, Tensor]:
    """Per-sequence sums of per-token log-probs, accumulated in float64 and returned in ``per_token``'s dtype.

    ``index_add_`` adds one token after the other. In float32 its rounding error on a sum of ~500 log-probs of
    magnitude ~10 (a 32k vocabulary) reaches ~1e-3, the size of DPO's log-ratio h after one small step, so the error
    shows in the loss. Measured on a random GPT-NeoX (vocabulary 32768, 4 rows of 1024 tokens, 524 scored each) over 6
    AdamW steps at lr 1e-5, the largest |loss − the same run in float64| was 3.2e-4 with float32 accumulation, 6.8e-6
    with float64 accumulation, and 5.4e-5 for the padded logits path (:func:`sequence_logps`). The float64 sum is
    rounded once to float32, so the result is the correctly rounded sum."""
    summed = per_token.new_zeros(num_sequences, dtype=torch.float64).index_add_(0, owner, per_token.double())
    summed = summed.to(per_token.dtype)
    token_count = per_token.new_zeros(num_sequences).index_add_(0, owner, torch.ones_like(per_token))
    if bool((token_count == 0).any()):
        empty = (token_count == 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no completion tokens after the first position: nothing to score")
    return summed, token_count


def sequence_logps_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    input_ids: Tensor,
    completion_mask: Tensor,
    *,
    bias: Optional[Tensor] = None,
    temperature: float = 1.0,
    softcap: Optional[float] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sequence_ids: Optional[Tensor] = None,
    num_sequences: Optional[int] = None,
) -> tuple[Tensor, Tensor]:
    """:func:`sequence_logps` from the last hidden states ``[N, L, H]`` and the LM head (``weight`` ``[V, H]``,
    optional ``bias``, Gemma-2 ``softcap``) instead of the logits: only the positions that predict a completion token
    are projected, ``chunk_size × (number of sequences)`` of them at a time, so neither the ``[N, L, V]`` logits nor
    a float32 copy of them ever exists. Packed rows (several sequences in one row) pass ``sequence_ids`` ``[N, L]``
    (0 … S−1) and ``num_sequences`` S; the results are per sequence then."""
    scored, owner = scored_positions(completion_mask, sequence_ids)
    n = completion_mask.shape[0] if sequence_ids is None else int(num_sequences)
    selected = hidden[:, :-1][scored]
    per_token = selected_token_logps(selected, weight, input_ids[:, 1:][scored], bias=bias, temperature=temperature,
                                     softcap=softcap, chunk_tokens=chunk_size * n)
    return _sum_per_sequence(per_token, owner[scored], n)


def packed_sequence_logps(
    logits: Tensor,
    input_ids: Tensor,
    completion_mask: Tensor,
    sequence_ids: Tensor,
    num_sequences: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """:func:`sequence_logps` for packed rows (the logits path): per-sequence sums over ``sequence_ids``."""
    scored, owner = scored_positions(completion_mask, sequence_ids)
    per_token = token_logps(logits[:, :-1], input_ids[:, 1:], temperature=temperature, chunk_size=chunk_size)
    return _sum_per_sequence(per_token[scored], owner[scored], num_sequences)
