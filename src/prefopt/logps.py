"""Per-sequence log-probs of the response tokens, without a float32 ``[batch, length, vocab]`` log-softmax.

``log π(y_t | ·) = z[y_t] − logsumexp(z)`` is computed a chunk of positions at a time, in float32, from logits that may
be bf16. A naive ``log_softmax(logits.float())`` keeps a float32 copy of the logits alive for the backward pass;
with a 128k vocabulary and 2048 tokens that is 1 GiB per sequence. Here the forward keeps only the per-position
logsumexp, and the backward recomputes the softmax chunk by chunk: peak extra memory is one float32 chunk.
"""

from __future__ import annotations

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
