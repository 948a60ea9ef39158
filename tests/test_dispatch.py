"""The trainer's loss dispatch, for every registered loss: a real PreferenceTrainer on a tiny model, its per-pair
losses and rewards against the loss formula applied to log-probs computed independently here (float64 log-softmax,
by hand), with the argument wiring of each method written out below (summed or averaged, the reference, R-DPO's
lengths, γ-PO's margins).

If the trainer forgot ``policy / counts`` for SimPO, swapped R-DPO's lengths or the chosen and rejected sides, or
passed γ-PO a margin not centred on γ0, one of these fails.
"""

import copy

import pytest
import torch
from transformers import TrainingArguments

from prefopt import losses as L
from prefopt.data import PreferenceCollator, PreferenceRecord, tokenize_records
from prefopt.margins import DynamicMargins
from prefopt.models import load_model, load_tokenizer
from prefopt.tiny import EXAMPLE_WORDS
from prefopt.trainer import PreferenceTrainer

WORDS = EXAMPLE_WORDS  # in the shared tiny model's vocabulary

#: hyper-parameters for each loss, chosen so that no term is trivially 0 (alpha, label smoothing, γ)
HPARAMS = {
    "sft": {},
    "dpo": {"beta": 0.3, "label_smoothing": 0.1},
    "ipo": {"tau": 0.4},
    "hinge": {"beta": 0.2},
    "rdpo": {"beta": 0.3, "alpha": 0.05},
    "simpo": {"beta": 2.0, "gamma_beta_ratio": 0.3, "label_smoothing": 0.05},
    "cpo": {"beta": 0.4, "nll_weight": 0.5},
    "orpo": {"odds_ratio_weight": 0.3},
    "exo": {"beta_pi": 0.5, "beta_r": 0.7},
    "dpo_k": {"beta_pi": 0.6, "beta_r": 0.5},
    "fpo": {"beta_pi": 0.5, "divergence": "alpha", "alpha": 0.3, "beta_r": 0.6},
    "alphapo": {"alpha": 0.7, "beta": 2.0, "gamma_beta_ratio": 0.4},
    "gamma_simpo": {"beta": 2.0, "gamma_beta_ratio": 0.5},
    "gamma_dpo": {"beta": 0.3, "gamma_beta_ratio": 2.0},
    "simpo_hinge": {"beta": 2.0, "gamma_beta_ratio": 0.3},
}
TAU = 1.0


def _expected(name, hp, S, n, R, targets, margin):
    """Losses [B] and (chosen, rejected) rewards [B] as each paper defines them, from summed log-probs S (policy) and
    R (reference), counts n, targets, and γ-PO's margins γ_i (None otherwise). Written per method on purpose."""
    A, Ar = S / n, R / n  # SPEC §1: averaged log-probs
    if name == "sft":
        return L.sft_loss(A[:, 0]), None
    if name == "dpo":
        out = L.dpo_loss(S[:, 0], S[:, 1], R[:, 0], R[:, 1], **hp)
        return out, (hp["beta"] * (S[:, 0] - R[:, 0]), hp["beta"] * (S[:, 1] - R[:, 1]))
    if name == "ipo":
        out = L.ipo_loss(A[:, 0], A[:, 1], Ar[:, 0], Ar[:, 1], **hp)
        return out, (A[:, 0] - Ar[:, 0], A[:, 1] - Ar[:, 1])
    if name == "hinge":
        out = L.hinge_loss(S[:, 0], S[:, 1], R[:, 0], R[:, 1], **hp)
        return out, (hp["beta"] * (S[:, 0] - R[:, 0]), hp["beta"] * (S[:, 1] - R[:, 1]))
    if name == "rdpo":  # the length term uses the real token counts, chosen first (SPEC §2)
        out = L.rdpo_loss(S[:, 0], S[:, 1], R[:, 0], R[:, 1], n[:, 0], n[:, 1], **hp)
        return out, (hp["beta"] * (S[:, 0] - R[:, 0]), hp["beta"] * (S[:, 1] - R[:, 1]))
    if name == "simpo":
        out = L.simpo_loss(A[:, 0], A[:, 1], **hp)
        return out, (hp["beta"] * A[:, 0], hp["beta"] * A[:, 1])
    if name == "cpo":
        out = L.cpo_loss(S[:, 0], S[:, 1], **hp)
        return out, (hp["beta"] * S[:, 0], hp["beta"] * S[:, 1])
    if name == "orpo":
        out = L.orpo_loss(A[:, 0], A[:, 1], **hp)
        return out, (A[:, 0], A[:, 1])
    if name in ("exo", "dpo_k", "fpo"):
        fn = {"exo": L.exo_loss, "dpo_k": L.dpo_k_loss, "fpo": L.fdivergence_loss}[name]
        out = fn(S, R, targets, **hp)
        rows = torch.arange(S.shape[0])
        best, worst = targets.argmax(dim=-1), targets.argmin(dim=-1)
        return out, (hp["beta_pi"] * (S - R)[rows, best], hp["beta_pi"] * (S - R)[rows, worst])
    if name == "alphapo":
        out = L.alphapo_loss(A[:, 0], A[:, 1], **hp)
        return out, (hp["beta"] * A[:, 0], hp["beta"] * A[:, 1])
    if name == "simpo_hinge":  # SimPO's reference-free hinge: max(0, 1 − β·(A_w − A_l − γ/β))
        out = torch.relu(1.0 - hp["beta"] * (A[:, 0] - A[:, 1] - hp["gamma_beta_ratio"]))
        return out, (hp["beta"] * A[:, 0], hp["beta"] * A[:, 1])
    gamma0 = hp["beta"] * hp["gamma_beta_ratio"]
    if name == "gamma_simpo":  # −log σ(Δ_i − γ_i), SPEC §5
        gap = hp["beta"] * (A[:, 0] - A[:, 1])
        return -torch.nn.functional.logsigmoid(gap - margin), (hp["beta"] * A[:, 0], hp["beta"] * A[:, 1])
    if name == "gamma_dpo":  # −log σ(β h − (γ_i − γ0)), official γ-DPO, with cDPO smoothing 0
        h = (S[:, 0] - R[:, 0]) - (S[:, 1] - R[:, 1])
        out = -torch.nn.functional.logsigmoid(hp["beta"] * h - (margin - gamma0))
        return out, (hp["beta"] * (S[:, 0] - R[:, 0]), hp["beta"] * (S[:, 1] - R[:, 1]))
    raise AssertionError(f"no expected formula written for {name!r}")


def _independent_logps(model, batch, k):
    """Summed log-probs and counts [B, K] in float64, by hand: log-softmax of every logit, gathered at the next token,
    summed over the completion tokens."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    logp = torch.log_softmax(logits, dim=-1)
    summed, counts = [], []
    for row in range(batch["input_ids"].shape[0]):
        total, count = 0.0, 0
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["completion_mask"][row, t]:
                total += float(logp[row, t - 1, batch["input_ids"][row, t]])
                count += 1
        summed.append(total)
        counts.append(count)
    shape = (-1, k)
    return (torch.tensor(summed, dtype=torch.float64).view(shape),
            torch.tensor(counts, dtype=torch.float64).view(shape))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_factory):
    root = tmp_path_factory.mktemp("dispatch")
    # The session's tiny model (tests/conftest.py) with two seeds: a different reference, so every log-ratio is
    # non-zero.
    policy_dir, ref_dir = tiny_model_factory(seed=1), tiny_model_factory(seed=2)
    tokenizer = load_tokenizer(policy_dir)
    assert set(WORDS) <= set(tokenizer.get_vocab())
    policy = load_model(policy_dir, dtype="float32")
    ref = load_model(ref_dir, dtype="float32")
    g = torch.Generator().manual_seed(0)

    def sentence(length):
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (length,), generator=g))

    pairs = [PreferenceRecord(id=str(i), prompt="tell me " + sentence(2),
                              completions=[sentence(2 + i % 3) + " .", sentence(4 - i % 3) + " !"], rewards=[1.0, 0.0])
             for i in range(6)]
    groups = [PreferenceRecord(id=str(i), prompt="what is " + sentence(2),
                               completions=[sentence(2 + j) + " ." for j in range(4)],
                               rewards=[float(v) for v in torch.randn(4, generator=g)]) for i in range(5)]
    collate = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)
    batches = {}
    for kind, records in (("pairs", pairs), ("groups", groups)):
        examples, _ = tokenize_records(records, tokenizer, max_length=40, max_prompt_length=16)
        batches[kind] = collate(examples)
    args = TrainingArguments(output_dir=str(root / "out"), report_to="none", use_cpu=True)
    return policy, ref, tokenizer, batches, args


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_trainer_losses_and_rewards_equal_the_formula(setup, name):
    assert set(HPARAMS) == set(L.LOSSES), "a registered loss has no entry in this test"
    policy, ref, tokenizer, batches, args = setup
    spec = L.get_loss_spec(name)
    hp = spec.resolve_hparams(HPARAMS[name])
    margins = mirror = None
    if spec.dynamic_margins:
        margins = DynamicMargins(spec.gamma0(hp), TAU, seed=5)
        mirror = copy.deepcopy(margins)
    trainer = PreferenceTrainer(model=policy, ref_model=ref if spec.needs_reference else None, args=args,
                                processing_class=tokenizer, loss_name=name, loss_hparams=HPARAMS[name],
                                margins=margins)
    batch = batches["groups" if spec.group else "pairs"]
    k = batch["rewards"].shape[1]
    policy.eval()
    with torch.no_grad():
        out, per_pair = trainer.batch_loss(policy, batch, training=True)

    S, n = _independent_logps(policy, batch, k)
    R, _ = _independent_logps(ref, batch, k)
    margin = None
    if spec.dynamic_margins:  # the margins γ-PO solves on the independent gaps, from an identical solver state
        _, (chosen_reward, rejected_reward) = _expected(name, hp, S, n, R, batch["rewards"].double(),
                                                        torch.zeros(S.shape[0], dtype=torch.float64))
        margin = mirror(chosen_reward - rejected_reward, training=True).double()
        torch.testing.assert_close(per_pair["margin"].double(), margin, rtol=1e-4, atol=1e-4)
        assert float(margin.mean()) == pytest.approx(spec.gamma0(hp), rel=1e-6)  # a pool of B gaps: mean γ0
    losses, rewards = _expected(name, hp, S, n, R, batch["rewards"].double(), margin)
    torch.testing.assert_close(out.losses.double(), losses, rtol=1e-4, atol=1e-5)
    assert out.losses.shape == (S.shape[0],)
    if rewards is None:
        assert out.chosen_rewards is None
        return
    torch.testing.assert_close(per_pair["chosen_reward"].double(), rewards[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(per_pair["rejected_reward"].double(), rewards[1], rtol=1e-4, atol=1e-5)
    static = spec.static_margin(hp)
    if not spec.dynamic_margins:
        assert torch.all(per_pair["margin"] == static)


def test_needs_reference_is_enforced_through_the_interface(setup):
    # a reference loss without reference log-probs is an error, never a silent reference-free loss
    policy, _, tokenizer, batches, args = setup
    batch = L.PreferenceBatch(policy_logps=torch.randn(3, 2), lengths=torch.full((3, 2), 4.0),
                              targets=torch.tensor([[1.0, 0.0]] * 3))
    for name, spec in L.LOSSES.items():
        hp = spec.resolve_hparams(HPARAMS[name])
        if spec.dynamic_margins:
            batch_with = L.PreferenceBatch(**{**batch.__dict__, "margin_offsets": torch.zeros(3)})
        else:
            batch_with = batch
        if spec.needs_reference:
            with pytest.raises(ValueError, match="needs reference log-probs"):
                spec(batch_with, hp)
        elif not spec.group:
            assert spec(batch_with, hp).losses.shape == (3,)


def test_gamma_po_margins_must_be_centred_on_the_losses_gamma0(setup):
    policy, _, tokenizer, _, args = setup
    with pytest.raises(ValueError, match="γ0"):
        PreferenceTrainer(model=policy, args=args, processing_class=tokenizer, loss_name="gamma_simpo",
                          loss_hparams={"beta": 2.0, "gamma_beta_ratio": 0.5}, margins=DynamicMargins(1.5, TAU))
