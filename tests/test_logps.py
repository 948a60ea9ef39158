"""Chunked per-sequence log-probs against a plain float64 log-softmax written here (SPEC §1)."""

import numpy as np
import pytest
import torch

from prefopt.logps import sequence_logps, token_logps


def _reference_sequence_logps(logits, input_ids, completion_mask, temperature):
    """float64 NumPy: Σ_t log softmax(z_t / T)[y_{t+1}] over completion positions, and the token count."""
    z = logits.detach().double().numpy() / temperature
    z = z - z.max(axis=-1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    ids, mask = input_ids.numpy(), completion_mask.numpy().astype(float)
    n, length = ids.shape
    summed, count = np.zeros(n), np.zeros(n)
    for row in range(n):
        for t in range(length - 1):
            if mask[row, t + 1]:
                summed[row] += log_softmax[row, t, ids[row, t + 1]]
                count[row] += 1
    return summed, count


def _batch(rng, n=3, length=11, vocab=17):
    logits = torch.tensor(rng.normal(scale=3.0, size=(n, length, vocab)))
    input_ids = torch.tensor(rng.integers(0, vocab, size=(n, length)))
    completion_mask = torch.zeros(n, length, dtype=torch.long)
    for row in range(n):  # prompt of random length, then completion, then right padding
        start = int(rng.integers(1, length // 2))
        stop = int(rng.integers(start + 1, length + 1))
        completion_mask[row, start:stop] = 1
    return logits, input_ids, completion_mask


@pytest.mark.parametrize("chunk_size", [1, 3, 128])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_matches_float64_reference(chunk_size, temperature):
    rng = np.random.default_rng(chunk_size * 10 + int(temperature * 10))
    logits, input_ids, completion_mask = _batch(rng)
    summed, count = sequence_logps(
        logits, input_ids, completion_mask, temperature=temperature, chunk_size=chunk_size
    )
    expected_summed, expected_count = _reference_sequence_logps(logits, input_ids, completion_mask, temperature)
    np.testing.assert_allclose(summed.numpy(), expected_summed, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(count.numpy(), expected_count)


def test_gradcheck_float64():
    rng = np.random.default_rng(1)
    logits, input_ids, completion_mask = _batch(rng, n=2, length=6, vocab=5)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: sequence_logps(z, input_ids, completion_mask, temperature=0.8, chunk_size=2)[0], (logits,)
    )


def test_bf16_logits_give_float32_values_and_gradients_close_to_float64():
    rng = np.random.default_rng(2)
    logits64, input_ids, completion_mask = _batch(rng, n=4, length=20, vocab=50)
    logits_bf16 = logits64.to(torch.bfloat16).requires_grad_(True)
    summed, _ = sequence_logps(logits_bf16, input_ids, completion_mask, chunk_size=7)
    assert summed.dtype == torch.float32
    summed.sum().backward()
    assert logits_bf16.grad.dtype == torch.bfloat16

    rounded = logits_bf16.detach().double().requires_grad_(True)  # same bf16 values, exact arithmetic
    expected = torch.log_softmax(rounded[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    (expected * completion_mask[:, 1:]).sum().backward()
    np.testing.assert_allclose(summed.detach().numpy(), (expected * completion_mask[:, 1:]).sum(-1).detach().numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(logits_bf16.grad.double().numpy(), rounded.grad.numpy(), atol=1e-2)


def test_masked_positions_get_no_gradient():
    rng = np.random.default_rng(3)
    logits, input_ids, completion_mask = _batch(rng)
    logits.requires_grad_(True)
    sequence_logps(logits, input_ids, completion_mask)[0].sum().backward()
    # position t predicts token t+1: only positions whose next token is a completion token receive gradient
    predicts_completion = torch.zeros_like(completion_mask, dtype=torch.bool)
    predicts_completion[:, :-1] = completion_mask[:, 1:].bool()
    assert torch.all(logits.grad[~predicts_completion] == 0)
    assert torch.all(logits.grad[predicts_completion].abs().sum(-1) > 0)


def test_row_without_completion_is_an_error():
    rng = np.random.default_rng(4)
    logits, input_ids, completion_mask = _batch(rng)
    completion_mask[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        sequence_logps(logits, input_ids, completion_mask)


def test_bad_shapes_and_temperature():
    logits = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="logits must be"):
        token_logps(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        token_logps(logits, torch.zeros(2, 5, dtype=torch.long), temperature=0.0)
