"""prefopt's pairwise losses agree with the installed TRL DPOTrainer's own loss code.

TRL (1.16) computes its DPO-family losses inline in ``DPOTrainer._compute_loss`` from per-token log-probs that
the model returns through TRL's fused LM head.  To run that real code on the same numbers we feed prefopt, the
test builds, entirely offline, a tiny word-level tokenizer and a tiny GPT-NeoX policy plus a perturbed copy as
the reference, lets TRL tokenize a few preference rows and collate them, and calls ``trainer.compute_loss``.
Independently of TRL, the test computes the summed completion log-probs (float64 copies of the same weights,
plain ``log_softmax`` + gather over the collated ``completion_mask``) and passes them to prefopt.

Loss settings are swapped on one trainer through the attributes ``_compute_loss`` reads on every call
(``loss_types``, ``loss_weights``, ``beta``, ``label_smoothing``).  The trainer's f-divergence option (f-DPO) is a
different method and is left at its default ("reverse_kl").

TRL 1.16's ``sigmoid`` loss ignores ``label_smoothing``, so conservative DPO (cDPO) is compared with two other
TRL loss types that use it, see ``test_cdpo_*``.
"""

import copy
import math
from types import SimpleNamespace

import pytest

pytest.importorskip("trl")

# Raised inside TRL 1.16 itself (it still calls the deprecated name), not by this test.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from prefopt.losses import dpo_loss, exo_loss, hinge_loss, ipo_loss  # noqa: E402

ROWS = [
    {"prompt": "what is the color of the sky", "chosen": " the sky is blue today", "rejected": " i do not know"},
    {"prompt": "tell me a story", "chosen": " once upon a time a fox lived in a red house", "rejected": " no thanks"},
    {"prompt": "the cat", "chosen": " sat on the mat", "rejected": " ran in the park"},
    {"prompt": "yes", "chosen": " please", "rejected": " birds fly over the green hill"},
    {"prompt": "a dog", "chosen": " ran in the park", "rejected": " sat on the mat today"},
    {"prompt": "tell me", "chosen": " no thanks", "rejected": " a story about a red fox"},
]

# TRL computes the log-probs and losses in float32, the test in float64.  Observed: at most ~1e-5 absolute on
# losses of ~50 (IPO) and ~1e-6 absolute on losses of ~1, i.e. at most a third of this tolerance.  A wrong factor
# of 2, sign, length normalisation or target changes the losses by 1e-3 to 1.
RTOL = 1e-5
ATOL = 1e-6


def _build_tokenizer():
    words = " ".join(r["prompt"] + r["chosen"] + r["rejected"] for r in ROWS).split()
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(words, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def _build_config(tokenizer):
    return GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.3,  # peaked next-token distributions, so the log-ratios are far from 0
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )


def _float64_copy(config, module):
    # A fresh (unpatched) model with the trainer's weights: TRL patches `forward` on the instances it holds.
    twin = GPTNeoXForCausalLM(config).double().eval()
    twin.load_state_dict(module.state_dict())
    return twin


def _completion_logps(model, batch):
    """Summed completion log-probs, and completion token counts, split as [chosen rows; rejected rows]."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    token_logp = logp.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].double()
    summed = (token_logp * mask).sum(dim=1)
    counts = batch["completion_mask"].sum(dim=1).double()
    return summed.chunk(2), counts.chunk(2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = _build_tokenizer()
    config = _build_config(tokenizer)
    policy = GPTNeoXForCausalLM(config)
    ref = copy.deepcopy(policy)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))

    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl_dpo")),
        use_cpu=True,
        report_to=[],
        beta=0.1,
        loss_type=["sigmoid"],
        # DPOConfig defaults to bf16=True; accelerate then wraps the reference model's forward in bf16 autocast even
        # on a CPU (the policy only once training starts), and its log-probs move by ~0.05.
        bf16=False,
        activation_checkpointing=False,  # DPOConfig defaults to True; a memory setting that changes no value
        per_device_train_batch_size=len(ROWS),
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer
    )
    trainer.model.eval()
    trainer.ref_model.eval()
    features = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    assert len(features) == len(ROWS)

    s = SimpleNamespace()
    s.trainer = trainer
    s.tokenizer = tokenizer
    s.batch = trainer.data_collator(features)
    s.pair_batches = [trainer.data_collator([f]) for f in features]

    policy64 = _float64_copy(config, trainer.model)
    ref64 = _float64_copy(config, trainer.ref_model)
    (s.pc, s.pr), (s.nc, s.nr) = _completion_logps(policy64, s.batch)
    (s.rc, s.rr), _ = _completion_logps(ref64, s.batch)
    s.h = (s.pc - s.rc) - (s.pr - s.rr)
    return s


def _trl_loss(setup, batch, loss_types, *, beta, label_smoothing=0.0, loss_weights=None, train=False):
    """TRL's loss for one call of DPOTrainer.compute_loss with these settings, as a Python float.

    The attributes set here are read by ``_compute_loss`` on every call (the tests below would fail otherwise:
    they use several betas and loss types on the same trainer).
    """
    tr = setup.trainer
    tr.loss_types = list(loss_types)
    tr.loss_weights = list(loss_weights) if loss_weights is not None else [1.0] * len(loss_types)
    tr.beta = beta
    tr.label_smoothing = label_smoothing
    tr.model.train(train)
    try:
        with torch.set_grad_enabled(train):
            loss = tr.compute_loss(tr.model, batch)
    finally:
        tr.model.eval()
    return loss.detach().double().item()


def _trl_per_pair(setup, loss_types, **kw):
    """TRL's loss on each pair alone (a batch of one pair), i.e. its per-sequence loss."""
    return torch.tensor([_trl_loss(setup, b, loss_types, **kw) for b in setup.pair_batches], dtype=torch.float64)


def _assert_close(ours, trl_value):
    torch.testing.assert_close(ours, torch.as_tensor(trl_value, dtype=torch.float64), rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------------------------
# The fixture itself: same batch layout and same log-probs as TRL, and log-ratios that exercise the losses.


def test_batch_layout_is_chosen_rows_then_rejected_rows(setup):
    ids, cmask = setup.batch["input_ids"], setup.batch["completion_mask"]
    eos = setup.tokenizer.eos_token
    for i, row in enumerate(ROWS):
        for j, text in ((i, row["chosen"]), (i + len(ROWS), row["rejected"])):
            expected = setup.tokenizer(text + eos, add_special_tokens=False)["input_ids"]
            assert ids[j][cmask[j] == 1].tolist() == expected


def test_log_probs_and_reward_metrics_match_trl(setup):
    # The metrics TRL 1.16 logs from the same call (kept in the trainer's `_metrics`, averaged in `log`) show that
    # the test's log-probs are TRL's: logps/* are the policy's summed completion log-probs, rewards/* are beta times
    # the log-ratios, rewards/margins is the mean of beta*h.
    beta = 0.3
    setup.trainer._metrics["eval"].clear()
    _trl_loss(setup, setup.batch, ["sigmoid"], beta=beta)
    m = {k: v[-1] for k, v in setup.trainer._metrics["eval"].items()}
    assert m["logps/chosen"] == pytest.approx(setup.pc.mean().item(), rel=RTOL, abs=1e-5)
    assert m["logps/rejected"] == pytest.approx(setup.pr.mean().item(), rel=RTOL, abs=1e-5)
    assert m["rewards/chosen"] == pytest.approx((beta * (setup.pc - setup.rc)).mean().item(), rel=RTOL, abs=ATOL)
    assert m["rewards/rejected"] == pytest.approx((beta * (setup.pr - setup.rr)).mean().item(), rel=RTOL, abs=ATOL)
    assert m["rewards/margins"] == pytest.approx((beta * setup.h).mean().item(), rel=RTOL, abs=ATOL)
    assert m["rewards/accuracies"] == pytest.approx((setup.h > 0).double().mean().item())


def test_log_ratios_are_informative(setup):
    # Guards the strength of the comparisons below: margins of both signs and of order 1 or more.
    assert (setup.h > 0).any() and (setup.h < 0).any()
    assert setup.h.abs().max() > 2.0
    assert (setup.h.abs() > 1e-2).all()
    assert not torch.equal(setup.nc, setup.nr)


# --------------------------------------------------------------------------------------------------------------
# Losses


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_dpo_matches_trl_sigmoid(setup, beta):
    ours = dpo_loss(setup.pc, setup.pr, setup.rc, setup.rr, beta=beta)
    assert ours.shape == setup.pc.shape
    trl_mean = _trl_loss(setup, setup.batch, ["sigmoid"], beta=beta)
    _assert_close(ours.mean(), trl_mean)
    _assert_close(ours, _trl_per_pair(setup, ["sigmoid"], beta=beta))


def test_dpo_matches_trl_sigmoid_in_train_mode(setup):
    beta = 0.2
    ours = dpo_loss(setup.pc, setup.pr, setup.rc, setup.rr, beta=beta)
    trl_mean = _trl_loss(setup, setup.batch, ["sigmoid"], beta=beta, train=True)
    _assert_close(ours.mean(), trl_mean)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_cdpo_matches_trl_sigmoid_robust_combination(setup, eps):
    # TRL's "robust" loss is R = (-(1-e) logsig(z) + e logsig(-z)) / (1-2e), its "sigmoid" S = -logsig(z).
    # With logsig(-z) = logsig(z) - z:  R = S - e z/(1-2e)  and cDPO = -(1-e) logsig(z) - e logsig(-z) = S + e z,
    # so cDPO = (2-2e) S - (1-2e) R, which TRL computes with loss_type=[sigmoid, robust] and these loss_weights.
    beta = 0.5
    ours = dpo_loss(setup.pc, setup.pr, setup.rc, setup.rr, beta=beta, label_smoothing=eps)
    kw = {"beta": beta, "label_smoothing": eps, "loss_weights": [2 - 2 * eps, -(1 - 2 * eps)]}
    trl_mean = _trl_loss(setup, setup.batch, ["sigmoid", "robust"], **kw)
    _assert_close(ours.mean(), trl_mean)
    _assert_close(ours, _trl_per_pair(setup, ["sigmoid", "robust"], **kw))
    # Label smoothing must matter here, or the comparison would not test it.
    plain = dpo_loss(setup.pc, setup.pr, setup.rc, setup.rr, beta=beta)
    assert (ours - plain).abs().max() > 1e-2


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_cdpo_matches_trl_aot_on_single_pairs(setup, eps):
    # TRL's "aot" sorts the policy and reference log-ratio differences across the batch and then applies the
    # label-smoothed sigmoid loss; on a batch of one pair the sort is the identity and it is exactly cDPO.
    beta = 0.5
    ours = dpo_loss(setup.pc, setup.pr, setup.rc, setup.rr, beta=beta, label_smoothing=eps)
    _assert_close(ours, _trl_per_pair(setup, ["aot"], beta=beta, label_smoothing=eps))


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_ipo_matches_trl_with_length_normalised_inputs(setup, tau):
    # TRL's IPO divides each summed log-ratio by its completion token count; prefopt's ipo_loss takes averaged
    # log-probs from the caller.
    ours = ipo_loss(setup.pc / setup.nc, setup.pr / setup.nr, setup.rc / setup.nc, setup.rr / setup.nr, tau=tau)
    assert ours.shape == setup.pc.shape
    trl_mean = _trl_loss(setup, setup.batch, ["ipo"], beta=tau)
    _assert_close(ours.mean(), trl_mean)
    _assert_close(ours, _trl_per_pair(setup, ["ipo"], beta=tau))


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_hinge_matches_trl(setup, beta):
    ours = hinge_loss(setup.pc, setup.pr, setup.rc, setup.rr, beta=beta)
    assert ours.shape == setup.pc.shape
    trl_mean = _trl_loss(setup, setup.batch, ["hinge"], beta=beta)
    _assert_close(ours.mean(), trl_mean)
    _assert_close(ours, _trl_per_pair(setup, ["hinge"], beta=beta))


def test_hinge_comparison_covers_the_clipped_region(setup):
    # With beta = 1 some pairs have beta*h > 1 (loss clipped to 0) and some do not.
    z = 1.0 * setup.h
    assert (z > 1).any() and (z < 1).any()


def _stacked(setup):
    policy = torch.stack([setup.pc, setup.pr], dim=1)
    ref = torch.stack([setup.rc, setup.rr], dim=1)
    return policy, ref


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("eps", [1e-3, 0.2])
def test_exo_rw_two_candidates_matches_trl_exo_pair(setup, beta, eps):
    # TRL's exo_pair is KL(q || (1-eps, eps)) with q = softmax(beta * log-ratios) over (chosen, rejected).
    # In the "rw" setting the target is softmax(targets / beta_r); targets = beta_r * log(1-eps, eps) gives
    # exactly the normalised (1-eps, eps).
    policy, ref = _stacked(setup)
    beta_r = 1.0
    targets = beta_r * torch.log(torch.tensor([[1 - eps, eps]], dtype=torch.float64)).expand(len(ROWS), 2)
    ours = exo_loss(policy, ref, targets, beta_pi=beta, beta_r=beta_r, setting="rw")
    assert ours.shape == setup.pc.shape
    trl_mean = _trl_loss(setup, setup.batch, ["exo_pair"], beta=beta, label_smoothing=eps)
    _assert_close(ours.mean(), trl_mean)
    _assert_close(ours, _trl_per_pair(setup, ["exo_pair"], beta=beta, label_smoothing=eps))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_exo_pref_matches_trl_exo_pair_up_to_its_normalisation_constant(setup, beta):
    # prefopt's "pref" target is the unnormalised p = (1, e^-10).  With Z = 1 + e^-10 and p' = p / Z the normalised
    # target (1 - eps, eps), eps = e^-10 / Z:
    #   sum_k q_k (log q_k - log p_k) = sum_k q_k (log q_k - log p'_k) - log Z * sum_k q_k = TRL(eps) - log1p(e^-10).
    policy, ref = _stacked(setup)
    small = math.exp(-10.0)
    eps = small / (1.0 + small)
    const = math.log1p(small)  # ~4.54e-5
    ours = exo_loss(policy, ref, None, beta_pi=beta, setting="pref")
    assert ours.shape == setup.pc.shape
    trl_mean = _trl_loss(setup, setup.batch, ["exo_pair"], beta=beta, label_smoothing=eps)
    trl_pairs = _trl_per_pair(setup, ["exo_pair"], beta=beta, label_smoothing=eps)
    _assert_close(ours.mean(), trl_mean - const)
    _assert_close(ours, trl_pairs - const)
    # The relative tolerance alone (1e-5 of losses ~5) would not resolve the constant; an absolute bound does:
    # TRL's float32 noise here is below 1e-5, a dropped (or doubled) constant is off by 4.5e-5.
    torch.testing.assert_close(ours, trl_pairs - const, rtol=0.0, atol=2e-5)
    # And exactly (float64, both prefopt): pref equals the rw setting with the normalised target minus the constant.
    targets = torch.log(torch.tensor([[1 - eps, eps]], dtype=torch.float64)).expand(len(ROWS), 2)
    rw = exo_loss(policy, ref, targets, beta_pi=beta, beta_r=1.0, setting="rw")
    torch.testing.assert_close(ours, rw - const, rtol=0.0, atol=1e-12)
