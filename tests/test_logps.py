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


# ----------------------------------------------------------------------------------------------------------------------
# From hidden states: the LM head inside the chunk loop (prefopt.logps.sequence_logps_from_hidden)
# ----------------------------------------------------------------------------------------------------------------------

from prefopt.logps import sequence_logps_from_hidden  # noqa: E402


def _reference_from_hidden(hidden, weight, bias, input_ids, completion_mask, temperature, softcap):
    """float64, written out: full logits h·Wᵀ + b (soft-capped), log_softmax, gather the next token, sum the
    completion positions."""
    z = hidden.double() @ weight.double().t()
    if bias is not None:
        z = z + bias.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    logp = torch.log_softmax(z / temperature, dim=-1)[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = completion_mask[:, 1:].double()
    return (logp * mask).sum(-1), mask.sum(-1)


def _hidden_case(seed, n=3, length=13, hidden=8, vocab=23, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(n, length, hidden, generator=generator, dtype=dtype)
    w = torch.randn(vocab, hidden, generator=generator, dtype=dtype) * 0.7
    b = torch.randn(vocab, generator=generator, dtype=dtype)
    ids = torch.randint(0, vocab, (n, length), generator=generator)
    mask = torch.zeros(n, length, dtype=torch.long)
    for row in range(n):
        start = int(torch.randint(1, length // 2, (1,), generator=generator))
        stop = int(torch.randint(start + 1, length + 1, (1,), generator=generator))
        mask[row, start:stop] = 1
    return h, w, b, ids, mask


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
@pytest.mark.parametrize("chunk_size", [1, 2, 128])
@pytest.mark.parametrize("with_bias", [False, True])
def test_hidden_path_values_and_gradients_match_float64_full_logits(softcap, temperature, chunk_size, with_bias):
    seed = int(chunk_size * 7 + temperature * 10 + (softcap or 0) + with_bias)
    h, w, b, ids, mask = _hidden_case(seed)
    b = b if with_bias else None
    leaves = [t.clone().requires_grad_(True) for t in (h, w) + ((b,) if with_bias else ())]
    summed, count = sequence_logps_from_hidden(leaves[0], leaves[1], ids, mask, bias=leaves[2] if with_bias else None,
                                               temperature=temperature, softcap=softcap, chunk_size=chunk_size)
    assert summed.dtype == torch.float32
    weights = torch.randn(summed.shape[0], generator=torch.Generator().manual_seed(seed))  # a non-uniform upstream grad
    (summed * weights).sum().backward()

    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    expected, expected_count = _reference_from_hidden(ref_leaves[0], ref_leaves[1], ref_leaves[2] if with_bias else None,
                                                      ids, mask, temperature, softcap)
    (expected * weights.double()).sum().backward()
    np.testing.assert_array_equal(count.numpy(), expected_count.numpy())
    np.testing.assert_allclose(summed.detach().numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    for ours, ref in zip(leaves, ref_leaves):
        np.testing.assert_allclose(ours.grad.numpy(), ref.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_hidden_path_gradcheck_float64_with_softcap_and_tied_weight():
    h, w, b, ids, mask = _hidden_case(11, n=2, length=6, hidden=4, vocab=7, dtype=torch.float64)
    h.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda h_, w_, b_: sequence_logps_from_hidden(h_, w_, ids, mask, bias=b_, temperature=0.8, softcap=2.0,
                                                      chunk_size=1)[0], (h, w, b))
    # tied embeddings: the same weight also embeds the inputs; both gradients accumulate into it
    embed = torch.nn.functional.embedding

    def tied(w_):
        return sequence_logps_from_hidden(torch.tanh(embed(ids, w_)), w_, ids, mask, chunk_size=2)[0]

    assert torch.autograd.gradcheck(tied, (w,))


def test_hidden_path_equals_the_logits_path_in_float32():
    h, w, b, ids, mask = _hidden_case(5, n=4, length=17, hidden=16, vocab=64)
    a = [t.clone().requires_grad_(True) for t in (h, w)]
    c = [t.clone().requires_grad_(True) for t in (h, w)]
    ours = sequence_logps_from_hidden(a[0], a[1], ids, mask, temperature=0.8, chunk_size=3)[0]
    old = sequence_logps(c[0] @ c[1].t(), ids, mask, temperature=0.8, chunk_size=3)[0]
    ours.sum().backward(), old.sum().backward()
    torch.testing.assert_close(ours, old, rtol=1e-5, atol=1e-5)
    for x, y in zip(a, c):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-5)


def test_hidden_path_under_bf16_autocast_is_close_to_float64():
    h, w, b, ids, mask = _hidden_case(6, n=2, length=12, hidden=16, vocab=40)
    w = w.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        summed, _ = sequence_logps_from_hidden(h, w, ids, mask, chunk_size=4)
    assert summed.dtype == torch.float32
    summed.sum().backward()
    assert w.grad.dtype == torch.float32
    # the same bf16-rounded operands in exact arithmetic
    expected, _ = _reference_from_hidden(h.bfloat16(), w.detach().bfloat16(), None, ids, mask, 1.0, None)
    np.testing.assert_allclose(summed.detach().numpy(), expected.numpy(), rtol=2e-3, atol=2e-2)


def test_hidden_path_rejects_empty_rows_and_bad_shapes():
    h, w, b, ids, mask = _hidden_case(7)
    mask[2] = 0
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        sequence_logps_from_hidden(h, w, ids, mask)
    with pytest.raises(ValueError, match="weight"):
        sequence_logps_from_hidden(h, w[:, :3], ids, mask)


def test_per_sequence_sums_are_the_correctly_rounded_float64_sums():
    """The hidden-state and packed paths sum per-token log-probs with index_add_; accumulated in float32, its
    sequential error on ~2000 terms of magnitude ~10 reaches ~1e-3, which DPO's small log-ratios feel. The sums must
    be the float64 sums rounded once to float32 (within half a float32 ulp)."""
    import math

    from prefopt.logps import _sum_per_sequence

    gen = torch.Generator().manual_seed(7)
    per_token = -(torch.rand(6000, generator=gen) * 20).float()  # log-probs of a 32k-vocabulary model, roughly
    owner = torch.randint(0, 3, (6000,), generator=gen)
    summed, count = _sum_per_sequence(per_token, owner, 3)
    assert summed.dtype == torch.float32 and count.tolist() == [int((owner == i).sum()) for i in range(3)]
    for i in range(3):
        exact = math.fsum(float(v) for v in per_token[owner == i].double())
        half_ulp = 0.5 * float(torch.finfo(torch.float32).eps) * 2 ** math.floor(math.log2(abs(exact)))
        assert abs(float(summed[i]) - exact) <= half_ulp
        sequential = torch.zeros(1).index_add_(0, torch.zeros(int((owner == i).sum()), dtype=torch.long),
                                               per_token[owner == i])
        assert abs(float(sequential) - exact) > abs(float(summed[i]) - exact)  # the float32 accumulation it replaces
