"""Tests for prefopt.losses (SPEC sections 1-4; API contract for issue 2).

Every loss is checked against an independent float64 NumPy reference written here from the SPEC's formulas, on
fresh seeded random inputs, plus known values, limits, gradients (gradcheck), extreme inputs and input validation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from prefopt import losses as L

LOG_EPS = -10.0  # SPEC §3: pref target log p = (0, log eps), log eps = -10


# ---------------------------------------------------------------------------------------------------------------
# Independent float64 references (NumPy).
# ---------------------------------------------------------------------------------------------------------------


def np_logsig(x):
    """log sigmoid(x), stable."""
    return -np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))


def np_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def np_smoothed_sigmoid_loss(z, eps):
    # SPEC §2, DPO row: -(1-eps) log s(z) - eps log s(-z)
    return -(1.0 - eps) * np_logsig(z) - eps * np_logsig(-z)


def ref_dpo(pc, pr, rc, rr, *, beta, label_smoothing=0.0, m=0.0):
    # SPEC §1 (h), §2 DPO row; margin m subtracted inside the sigmoid (§2 last paragraph)
    h = (pc - rc) - (pr - rr)
    return np_smoothed_sigmoid_loss(beta * h - m, label_smoothing)


def ref_ipo(pc, pr, rc, rr, *, tau, m=0.0):
    # SPEC §2 IPO row (inputs are averaged log-probs)
    h = (pc - rc) - (pr - rr)
    return (h - m - 1.0 / (2.0 * tau)) ** 2


def ref_hinge(pc, pr, rc, rr, *, beta, m=0.0):
    # SPEC §2 hinge (SLiC) row
    h = (pc - rc) - (pr - rr)
    return np.maximum(0.0, 1.0 - (beta * h - m))


def ref_rdpo(pc, pr, rc, rr, nw, nl, *, beta, alpha, m=0.0):
    # SPEC §2 R-DPO row (lengths are token counts, not batch sizes)
    h = (pc - rc) - (pr - rr)
    return -np_logsig(beta * h - alpha * (nw - nl) - m)


def ref_simpo(aw, al, *, beta, gamma_beta_ratio, label_smoothing=0.0, m=0.0):
    # SPEC §1 (Delta), §2 SimPO row: gamma = beta * gamma_beta_ratio
    z = beta * (aw - al) - beta * gamma_beta_ratio - m
    return np_smoothed_sigmoid_loss(z, label_smoothing)


def ref_cpo(sw, sl, *, beta, nll_weight=1.0, label_smoothing=0.0, m=0.0):
    # SPEC §2 CPO row
    z = beta * (sw - sl) - m
    return np_smoothed_sigmoid_loss(z, label_smoothing) - nll_weight * sw


def ref_orpo(aw, al, *, odds_ratio_weight=0.1, m=0.0):
    # SPEC §2 ORPO row: odds = p/(1-p), p = exp(A)  =>  log odds = A - log(1 - exp(A))
    def logodds(a):
        return a - np.log(-np.expm1(a))

    return -aw - odds_ratio_weight * np_logsig(logodds(aw) - logodds(al) - m)


def ref_log_q(pol, ref, beta_pi):
    # SPEC §3: q = softmax(beta_pi * (S_theta - S_ref))
    return np_log_softmax(beta_pi * (pol - ref))


def ref_log_p(targets, *, setting, beta_r, target_floor, shape):
    # SPEC §3: rw: log_softmax(r / beta_r), optionally clamped below, not renormalised; pref: (0, -10)
    if setting == "pref":
        return np.broadcast_to(np.array([0.0, LOG_EPS]), shape).copy()
    lp = np_log_softmax(np.asarray(targets, dtype=np.float64) / beta_r)
    if target_floor is not None:
        lp = np.maximum(lp, target_floor)
    return lp


def ref_exo(pol, ref, tgt, *, beta_pi, beta_r=1.0, setting="rw", target_floor=None):
    # SPEC §3: EXO = KL(q || p) = sum q (log q - log p)
    lq = ref_log_q(pol, ref, beta_pi)
    lp = ref_log_p(tgt, setting=setting, beta_r=beta_r, target_floor=target_floor, shape=lq.shape)
    return (np.exp(lq) * (lq - lp)).sum(-1)


def ref_dpo_k(pol, ref, tgt, *, beta_pi, beta_r=1.0, setting="rw", target_floor=None):
    # SPEC §3: DPO-K = -sum p log q; in pref p is the label vector (1, 0) itself
    lq = ref_log_q(pol, ref, beta_pi)
    if setting == "pref":
        return -lq[:, 0]
    lp = ref_log_p(tgt, setting=setting, beta_r=beta_r, target_floor=target_floor, shape=lq.shape)
    return -(np.exp(lp) * lq).sum(-1)


def ref_f(divergence, logu, alpha=None):
    # SPEC §4 table of generators f(u)
    u = np.exp(logu)
    if divergence == "alpha":
        return (np.exp((1.0 - alpha) * logu) - (1.0 - alpha) * u - alpha) / (alpha * (alpha - 1.0))
    if divergence == "js":
        return 0.5 * u * logu - ((u + 1.0) / 2.0) * np.log((u + 1.0) / 2.0)
    if divergence == "jeffreys":
        return (u - 1.0) * logu
    if divergence == "hellinger":
        return (np.sqrt(u) - 1.0) ** 2
    if divergence == "kl_q_p":
        return u * logu
    if divergence == "kl_p_q":
        return -logu
    raise AssertionError(divergence)


def ref_fdiv(pol, ref, tgt, *, divergence, alpha=None, beta_pi, beta_r=1.0, setting="rw", target_floor=-10.0):
    # SPEC §4: D_f(q || p) = sum_i p_i f(u_i), u_i = exp(log q_i - log p_i)
    lq = ref_log_q(pol, ref, beta_pi)
    lp = ref_log_p(tgt, setting=setting, beta_r=beta_r, target_floor=target_floor, shape=lq.shape)
    return (np.exp(lp) * ref_f(divergence, lq - lp, alpha)).sum(-1)


def ref_alphapo(aw, al, *, alpha, beta, gamma_beta_ratio, m=0.0):
    # SPEC §4 reference-free alpha-PO: z_w = beta (A_w - gamma/beta) - m, z_l = beta A_l, target (1, e^-10)
    z = np.stack([beta * (aw - gamma_beta_ratio) - m, beta * al], axis=-1)
    lq = np_log_softmax(z)
    lp = np.broadcast_to(np.array([0.0, LOG_EPS]), lq.shape)
    return (np.exp(lp) * ref_f("alpha", lq - lp, alpha)).sum(-1)


# ---------------------------------------------------------------------------------------------------------------
# Case table: how to build inputs for each loss and how to call implementation and reference.
# ---------------------------------------------------------------------------------------------------------------


def gen_pair_ref(rng, B, averaged=False):
    """Policy/reference log-probs for chosen/rejected; summed (default) or averaged."""
    if averaged:
        pc, pr = -rng.uniform(0.3, 3.0, B), -rng.uniform(0.3, 3.0, B)
        rc, rr = pc + rng.normal(0, 0.4, B), pr + rng.normal(0, 0.4, B)
    else:
        pc, pr = -rng.uniform(20, 120, B), -rng.uniform(20, 120, B)
        rc, rr = pc + rng.normal(0, 6, B), pr + rng.normal(0, 6, B)
    return dict(pc=pc, pr=pr, rc=rc, rr=rr)


@dataclass
class Case:
    name: str
    kind: str  # "pair_ref", "pair_ref_avg", "rdpo", "pair_sum", "pair_avg", "group"
    kwargs: dict
    setting: str = "rw"
    margin: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def id(self):
        kw = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.name}[{kw}{',m' if self.margin else ''}]"

    # which inputs are policy log-probs (get requires_grad in gradient tests)
    @property
    def policy_keys(self):
        return ("pol",) if self.kind == "group" else ("pc", "pr")

    def make(self, rng, B, K=2):
        if self.kind in ("pair_ref", "pair_ref_avg"):
            d = gen_pair_ref(rng, B, averaged=self.kind == "pair_ref_avg")
        elif self.kind == "rdpo":
            d = gen_pair_ref(rng, B)
            d["nw"] = rng.integers(3, 300, B).astype(np.float64)
            d["nl"] = rng.integers(3, 300, B).astype(np.float64)
        elif self.kind == "pair_sum":
            d = dict(pc=-rng.uniform(5, 60, B), pr=-rng.uniform(5, 60, B))
        elif self.kind == "pair_avg":
            d = dict(pc=-rng.uniform(0.1, 3.0, B), pr=-rng.uniform(0.1, 3.0, B))
        elif self.kind == "group":
            K = 2 if self.setting == "pref" else K
            pol = -rng.uniform(20, 120, (B, K))
            d = dict(pol=pol, ref=pol + rng.normal(0, 3, (B, K)))
            d["tgt"] = None if self.setting == "pref" else rng.normal(0, 1, (B, K))
        else:
            raise AssertionError(self.kind)
        if self.margin:
            d["m"] = rng.normal(0, 1, B)
        return d

    def positional(self):
        return {
            "pair_ref": ("pc", "pr", "rc", "rr"),
            "pair_ref_avg": ("pc", "pr", "rc", "rr"),
            "rdpo": ("pc", "pr", "rc", "rr", "nw", "nl"),
            "pair_sum": ("pc", "pr"),
            "pair_avg": ("pc", "pr"),
            "group": ("pol", "ref", "tgt"),
        }[self.kind]

    def call(self, t, **override):
        """Call the implementation on a dict of tensors (None allowed for 'tgt'/'m')."""
        fn = getattr(L, FN_NAMES[self.name])
        args = [t[k] for k in self.positional()]
        kw = dict(self.kwargs)
        if self.kind == "group":
            kw["setting"] = self.setting
        elif t.get("m") is not None:
            kw["margin_offset"] = t["m"]
        kw.update(override)
        return fn(*args, **kw)

    def reference(self, d):
        args = [d[k] for k in self.positional()]
        kw = dict(self.kwargs)
        if self.kind == "group":
            kw["setting"] = self.setting
        elif d.get("m") is not None:
            kw["m"] = d["m"]
        return REFS[self.name](*args, **kw)


FN_NAMES = dict(
    dpo="dpo_loss", ipo="ipo_loss", hinge="hinge_loss", rdpo="rdpo_loss", simpo="simpo_loss", cpo="cpo_loss",
    orpo="orpo_loss", exo="exo_loss", dpo_k="dpo_k_loss", fdiv="fdivergence_loss", alphapo="alphapo_loss",
)
REFS = dict(
    dpo=ref_dpo, ipo=ref_ipo, hinge=ref_hinge, rdpo=ref_rdpo, simpo=ref_simpo, cpo=ref_cpo, orpo=ref_orpo,
    exo=ref_exo, dpo_k=ref_dpo_k, fdiv=ref_fdiv, alphapo=ref_alphapo,
)
DIVERGENCES = ("alpha", "js", "jeffreys", "hellinger", "kl_q_p", "kl_p_q")


def _reference_cases():
    c = []
    for beta, eps in [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)]:
        c.append(Case("dpo", "pair_ref", dict(beta=beta, label_smoothing=eps)))
    c.append(Case("dpo", "pair_ref", dict(beta=0.3), margin=True))
    c.append(Case("dpo", "pair_ref", dict(beta=0.3, label_smoothing=0.1), margin=True))
    for tau in (0.1, 1.0):
        c.append(Case("ipo", "pair_ref_avg", dict(tau=tau)))
    c.append(Case("ipo", "pair_ref_avg", dict(tau=0.5), margin=True))
    for beta in (0.1, 1.0):
        c.append(Case("hinge", "pair_ref", dict(beta=beta)))
    c.append(Case("hinge", "pair_ref", dict(beta=0.2), margin=True))
    for alpha in (0.0, 0.01):
        c.append(Case("rdpo", "rdpo", dict(beta=0.1, alpha=alpha)))
    c.append(Case("rdpo", "rdpo", dict(beta=0.2, alpha=0.005), margin=True))
    for eps in (0.0, 0.15):
        c.append(Case("simpo", "pair_avg", dict(beta=2.0, gamma_beta_ratio=0.5, label_smoothing=eps)))
    c.append(Case("simpo", "pair_avg", dict(beta=2.5, gamma_beta_ratio=0.1), margin=True))
    c.append(Case("cpo", "pair_sum", dict(beta=0.1)))
    c.append(Case("cpo", "pair_sum", dict(beta=0.1, nll_weight=0.3, label_smoothing=0.1)))
    c.append(Case("cpo", "pair_sum", dict(beta=0.2, nll_weight=0.0), margin=True))
    c.append(Case("orpo", "pair_avg", dict()))
    c.append(Case("orpo", "pair_avg", dict(odds_ratio_weight=1.0)))
    c.append(Case("orpo", "pair_avg", dict(odds_ratio_weight=0.5), margin=True))
    for name in ("exo", "dpo_k"):
        c.append(Case(name, "group", dict(beta_pi=0.5, beta_r=0.5)))  # default target_floor (None)
        c.append(Case(name, "group", dict(beta_pi=0.35, beta_r=0.1, target_floor=None)))
        c.append(Case(name, "group", dict(beta_pi=0.35, beta_r=0.1, target_floor=-10.0)))
        c.append(Case(name, "group", dict(beta_pi=0.5, beta_r=1.0, target_floor=-2.0)))
        c.append(Case(name, "group", dict(beta_pi=0.5), setting="pref"))
        c.append(Case(name, "group", dict(beta_pi=0.1), setting="pref"))
    for div in DIVERGENCES:
        alphas = (0.1, 0.5, 0.9) if div == "alpha" else (None,)
        for a in alphas:
            akw = dict(divergence=div) if a is None else dict(divergence=div, alpha=a)
            c.append(Case("fdiv", "group", dict(akw, beta_pi=0.35, beta_r=0.1)))  # default floor -10
            c.append(Case("fdiv", "group", dict(akw, beta_pi=0.5, beta_r=1.0, target_floor=None)))
            c.append(Case("fdiv", "group", dict(akw, beta_pi=0.5, beta_r=0.2, target_floor=-3.0)))
            c.append(Case("fdiv", "group", dict(akw, beta_pi=0.5), setting="pref"))
    for a in (0.1, 0.5, 0.99):
        c.append(Case("alphapo", "pair_avg", dict(alpha=a, beta=2.0, gamma_beta_ratio=0.5)))
    c.append(Case("alphapo", "pair_avg", dict(alpha=0.9, beta=2.5, gamma_beta_ratio=0.1), margin=True))
    return c


REF_CASES = _reference_cases()


def one_case_per_loss():
    """A representative case per loss (and per divergence / setting) for gradient, extreme and validation tests."""
    c = [
        Case("dpo", "pair_ref", dict(beta=0.1, label_smoothing=0.1)),
        Case("ipo", "pair_ref_avg", dict(tau=0.1)),
        Case("hinge", "pair_ref", dict(beta=0.1)),
        Case("rdpo", "rdpo", dict(beta=0.1, alpha=0.01)),
        Case("simpo", "pair_avg", dict(beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.1)),
        Case("cpo", "pair_sum", dict(beta=0.1)),
        Case("orpo", "pair_avg", dict(odds_ratio_weight=0.5)),
        Case("alphapo", "pair_avg", dict(alpha=0.5, beta=2.0, gamma_beta_ratio=0.5)),
    ]
    for name in ("exo", "dpo_k"):
        c.append(Case(name, "group", dict(beta_pi=0.5, beta_r=0.1, target_floor=-10.0)))
        c.append(Case(name, "group", dict(beta_pi=0.5), setting="pref"))
    for div in DIVERGENCES:
        akw = dict(divergence=div, alpha=0.3) if div == "alpha" else dict(divergence=div)
        c.append(Case("fdiv", "group", dict(akw, beta_pi=0.5, beta_r=0.1)))
        c.append(Case("fdiv", "group", dict(akw, beta_pi=0.5), setting="pref"))
    return c


LOSS_CASES = one_case_per_loss()
PAIRWISE_CASES = [c for c in LOSS_CASES if c.kind != "group"]
GROUP_CASES = [c for c in LOSS_CASES if c.kind == "group"]


def to_t(d, dtype=torch.float64, grad_keys=()):
    out = {}
    for k, v in d.items():
        if v is None:
            out[k] = None
        else:
            out[k] = torch.tensor(np.asarray(v), dtype=dtype, requires_grad=k in grad_keys)
    return out


# ---------------------------------------------------------------------------------------------------------------
# 1. Every loss vs its float64 reference.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", REF_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("B,K", [(1, 2), (5, 3), (33, 6)])
def test_matches_float64_reference(case, B, K):
    rng = np.random.default_rng([B, K, len(case.id), sum(map(ord, case.id))])
    d = case.make(rng, B, K)
    out = case.call(to_t(d))
    expected = case.reference(d)
    assert out.shape == (B,)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c.id)
def test_float32_inputs_close_to_reference_and_float32_output(case):
    rng = np.random.default_rng(sum(map(ord, case.id)))
    d = case.make(rng, 7, 4)
    out = case.call(to_t(d, torch.float32))
    assert out.dtype == torch.float32
    # the reference is evaluated on the float32-rounded inputs
    d32 = {k: (None if v is None else np.asarray(v, np.float32).astype(np.float64)) for k, v in d.items()}
    np.testing.assert_allclose(out.numpy(), case.reference(d32), rtol=2e-4, atol=2e-4)


def test_rdpo_accepts_integer_lengths():
    rng = np.random.default_rng(11)
    case = Case("rdpo", "rdpo", dict(beta=0.1, alpha=0.02))
    d = case.make(rng, 6)
    t = to_t(d)
    t["nw"], t["nl"] = t["nw"].long(), t["nl"].long()
    np.testing.assert_allclose(case.call(t).numpy(), case.reference(d), rtol=1e-9, atol=1e-10)


def test_rdpo_length_term_actually_uses_lengths():
    # SPEC §2: the gamma-PO repo's R-DPO uses batch sizes (margin always 0); ours must depend on n_w - n_l.
    rng = np.random.default_rng(12)
    case = Case("rdpo", "rdpo", dict(beta=0.1, alpha=0.05))
    d = case.make(rng, 4)
    d["nw"] = np.array([10.0, 100.0, 50.0, 7.0])
    d["nl"] = np.array([100.0, 10.0, 50.0, 70.0])
    out = case.call(to_t(d)).numpy()
    no_len = ref_dpo(d["pc"], d["pr"], d["rc"], d["rr"], beta=0.1)
    assert np.all(np.abs(out[[0, 1, 3]] - no_len[[0, 1, 3]]) > 1e-3)
    np.testing.assert_allclose(out[2], no_len[2], rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# 2. Known values and identities.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("beta", [0.01, 0.5, 3.0])
def test_dpo_zero_margin_is_ln2(beta, eps):
    rng = np.random.default_rng(1)
    pc, pr = -rng.uniform(10, 50, 5), -rng.uniform(10, 50, 5)
    off = rng.normal(0, 3, 5)
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    # h = (pc - (pc + off)) - (pr - (pr + off)) = 0
    out = L.dpo_loss(t(pc), t(pr), t(pc + off), t(pr + off), beta=beta, label_smoothing=eps)
    np.testing.assert_allclose(out.numpy(), math.log(2.0), rtol=1e-12)


@pytest.mark.parametrize("beta,gbr", [(2.0, 0.5), (2.5, 0.55), (10.0, 0.4)])
def test_simpo_at_delta_equal_gamma_is_ln2(beta, gbr):
    al = -np.array([0.3, 1.2, 2.5])
    aw = al + gbr  # Delta = beta * gbr = gamma
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    for eps in (0.0, 0.2):
        out = L.simpo_loss(t(aw), t(al), beta=beta, gamma_beta_ratio=gbr, label_smoothing=eps)
        np.testing.assert_allclose(out.numpy(), math.log(2.0), rtol=1e-12)


@pytest.mark.parametrize("tau", [0.01, 0.1, 0.5, 2.0])
def test_ipo_at_zero_h_is_one_over_four_tau_squared(tau):
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    a = np.array([-0.5, -1.7, -2.2])
    out = L.ipo_loss(t(a), t(a - 0.3), t(a + 0.1), t(a - 0.2), tau=tau)  # h = -0.1 - (-0.1) = 0
    np.testing.assert_allclose(out.numpy(), 1.0 / (4 * tau**2), rtol=1e-10)


def test_hinge_known_values():
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    z = torch.zeros(4, dtype=torch.float64)
    # beta*h = beta*pc with everything else zero
    out = L.hinge_loss(t([-20.0, 0.0, 5.0, 20.0]), z, z, z, beta=0.1)
    np.testing.assert_allclose(out.numpy(), [3.0, 1.0, 0.5, 0.0], atol=1e-12)


@pytest.mark.parametrize("B", [1, 4, 17])
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_k_pref_equals_dpo(B, beta):
    # SPEC §3: in pref p = (1, 0) exactly, so DPO-K with beta_pi = beta is DPO.
    rng = np.random.default_rng([B, int(beta * 10)])
    d = gen_pair_ref(rng, B)
    t = to_t(d)
    dpo = L.dpo_loss(t["pc"], t["pr"], t["rc"], t["rr"], beta=beta)
    pol = torch.stack([t["pc"], t["pr"]], -1)
    ref = torch.stack([t["rc"], t["rr"]], -1)
    dk = L.dpo_k_loss(pol, ref, None, beta_pi=beta, setting="pref")
    np.testing.assert_allclose(dk.numpy(), dpo.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["exo", "dpo_k", "fdiv"])
def test_pref_targets_given_in_right_order_equal_none(name):
    rng = np.random.default_rng(3)
    kw = dict(beta_pi=0.5, setting="pref")
    if name == "fdiv":
        kw["divergence"] = "js"
    fn = getattr(L, FN_NAMES[name])
    pol = torch.tensor(-rng.uniform(5, 30, (6, 2)))
    ref = torch.tensor(-rng.uniform(5, 30, (6, 2)))
    tg = torch.tensor([[1.0, 0.0]] * 6, dtype=torch.float64)
    np.testing.assert_allclose(fn(pol, ref, tg, **kw).numpy(), fn(pol, ref, None, **kw).numpy(), rtol=1e-13)


@pytest.mark.parametrize("setting,floor", [("rw", None), ("rw", -10.0), ("rw", -2.0), ("pref", None)])
@pytest.mark.parametrize("K", [2, 4])
def test_fdiv_kl_q_p_equals_exo(setting, floor, K):
    rng = np.random.default_rng([K, 0 if floor is None else int(-floor)])
    K = 2 if setting == "pref" else K
    pol = torch.tensor(-rng.uniform(5, 30, (5, K)))
    ref = torch.tensor(-rng.uniform(5, 30, (5, K)))
    tg = None if setting == "pref" else torch.tensor(rng.normal(0, 1, (5, K)))
    kw = dict(beta_pi=0.4, beta_r=0.2, setting=setting, target_floor=floor)
    a = L.fdivergence_loss(pol, ref, tg, divergence="kl_q_p", **kw)
    b = L.exo_loss(pol, ref, tg, **kw)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("floor", [None, -10.0, -2.0])
def test_fdiv_kl_p_q_is_dpo_k_plus_constant(floor):
    # contract: kl_p_q = -sum p log q + sum p log p (rw)
    rng = np.random.default_rng(5)
    pol, ref = -rng.uniform(5, 30, (6, 3)), -rng.uniform(5, 30, (6, 3))
    tg = rng.normal(0, 1, (6, 3))
    kw = dict(beta_pi=0.4, beta_r=0.3, setting="rw", target_floor=floor)
    t = lambda x: torch.tensor(x)
    a = L.fdivergence_loss(t(pol), t(ref), t(tg), divergence="kl_p_q", **kw).numpy()
    b = L.dpo_k_loss(t(pol), t(ref), t(tg), **kw).numpy()
    lp = ref_log_p(tg, setting="rw", beta_r=0.3, target_floor=floor, shape=(6, 3))
    np.testing.assert_allclose(a, b + (np.exp(lp) * lp).sum(-1), rtol=1e-10, atol=1e-12)


def test_target_floor_defaults():
    # contract: exo/dpo_k default target_floor=None, fdivergence default -10.0
    rng = np.random.default_rng(6)
    pol, ref = torch.tensor(-rng.uniform(5, 30, (4, 4))), torch.tensor(-rng.uniform(5, 30, (4, 4)))
    tg = torch.tensor(rng.normal(0, 3, (4, 4)))  # with beta_r = 0.1 some log p are far below -10
    kw = dict(beta_pi=0.5, beta_r=0.1)
    for fn in (L.exo_loss, L.dpo_k_loss):
        np.testing.assert_allclose(fn(pol, ref, tg, **kw), fn(pol, ref, tg, target_floor=None, **kw), rtol=1e-13)
        assert not torch.allclose(fn(pol, ref, tg, **kw), fn(pol, ref, tg, target_floor=-10.0, **kw))
    f = L.fdivergence_loss
    np.testing.assert_allclose(
        f(pol, ref, tg, divergence="js", **kw), f(pol, ref, tg, divergence="js", target_floor=-10.0, **kw), rtol=1e-13
    )
    assert not torch.allclose(
        f(pol, ref, tg, divergence="js", **kw), f(pol, ref, tg, divergence="js", target_floor=None, **kw)
    )


def test_exo_is_zero_when_q_equals_normalised_p():
    # KL(q || p) = 0 iff q = p (normalised target, no floor): beta_pi * s = r / beta_r
    rng = np.random.default_rng(7)
    r = rng.normal(0, 1, (3, 5))
    ref = -rng.uniform(5, 30, (3, 5))
    pol = ref + (r / 0.5) / 2.0  # beta_pi = 2, beta_r = 0.5
    t = lambda x: torch.tensor(x)
    out = L.exo_loss(t(pol), t(ref), t(r), beta_pi=2.0, beta_r=0.5)
    np.testing.assert_allclose(out.numpy(), 0.0, atol=1e-12)


@pytest.mark.parametrize("K", [2, 3, 6])
def test_js_equals_mixture_kl_form(K):
    # SPEC §4: JS = 1/2 KL(q||m) + 1/2 KL(p||m), m = (p+q)/2, for normalised p (rw, no floor)
    rng = np.random.default_rng(K)
    pol, ref = -rng.uniform(5, 30, (8, K)), -rng.uniform(5, 30, (8, K))
    tg = rng.normal(0, 1, (8, K))
    t = lambda x: torch.tensor(x)
    out = L.fdivergence_loss(
        t(pol), t(ref), t(tg), divergence="js", beta_pi=0.3, beta_r=0.5, setting="rw", target_floor=None
    ).numpy()
    q = np.exp(ref_log_q(pol, ref, 0.3))
    p = np.exp(np_log_softmax(tg / 0.5))
    m = (p + q) / 2
    expected = 0.5 * (q * np.log(q / m)).sum(-1) + 0.5 * (p * np.log(p / m)).sum(-1)
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-12)


def _pref_margin_loss(fn_of_d):
    """Return L(d) and dL/dd as Python floats, d = logit margin, via autograd."""

    def both(d):
        dt = torch.tensor(float(d), dtype=torch.float64, requires_grad=True)
        loss = fn_of_d(dt)
        (g,) = torch.autograd.grad(loss, dt)
        return float(loss.detach()), float(g)

    return both


def fdiv_of_margin(divergence, alpha=None):
    # q = softmax(d, 0) with beta_pi = 1 and zero reference => logit margin d
    def f(d):
        pol = torch.stack([d, torch.zeros_like(d)]).reshape(1, 2)
        ref = torch.zeros(1, 2, dtype=torch.float64)
        kw = dict(divergence=divergence, beta_pi=1.0, setting="pref")
        if alpha is not None:
            kw["alpha"] = alpha
        return L.fdivergence_loss(pol, ref, None, **kw)[0]

    return f


def alphapo_of_margin(alpha, beta=2.0, gbr=0.5):
    # Delta - gamma = d  <=>  A_w - A_l = d / beta + gbr
    def f(d):
        aw = (-1.0 + d / beta + gbr).reshape(1)
        al = torch.tensor([-1.0], dtype=torch.float64)
        return L.alphapo_loss(aw, al, alpha=alpha, beta=beta, gamma_beta_ratio=gbr)[0]

    return f


def exo_of_margin(d):
    pol = torch.stack([d, torch.zeros_like(d)]).reshape(1, 2)
    return L.exo_loss(pol, torch.zeros(1, 2, dtype=torch.float64), None, beta_pi=1.0, setting="pref")[0]


@pytest.mark.parametrize("which", ["fdiv", "alphapo"])
def test_alpha_099_zero_margin_loss_and_slope(which):
    # SPEC §4: at alpha = 0.99 and zero margin the pairwise pref loss is ~0.6972 and its slope ~ -0.5015
    fn = fdiv_of_margin("alpha", 0.99) if which == "fdiv" else alphapo_of_margin(0.99)
    loss, slope = _pref_margin_loss(fn)(0.0)
    assert abs(loss - 0.6972) < 3e-4
    assert abs(slope - (-0.5015)) < 3e-4
    # and compare with the float64 reference to many more digits
    lq = np_log_softmax(np.array([0.0, 0.0]))
    lu = lq - np.array([0.0, LOG_EPS])
    assert loss == pytest.approx((np.exp([0.0, LOG_EPS]) * ref_f("alpha", lu, 0.99)).sum(), rel=1e-10)
    # differs visibly from DPO's ln 2 / -0.5
    assert loss - math.log(2) > 3e-3 and slope < -0.501


MINIMISER_FNS = (
    [(f"fdiv-alpha{a}", fdiv_of_margin("alpha", a)) for a in (0.1, 0.5, 0.9)]
    + [(f"alphapo-alpha{a}", alphapo_of_margin(a)) for a in (0.1, 0.5, 0.9)]
    + [(f"fdiv-{d}", fdiv_of_margin(d)) for d in ("js", "jeffreys", "hellinger", "kl_q_p", "kl_p_q")]
    + [("exo", exo_of_margin)]
)


@pytest.mark.parametrize("name,fn", MINIMISER_FNS, ids=[n for n, _ in MINIMISER_FNS])
def test_pref_minimiser_is_margin_10(name, fn):
    # SPEC §4: with target (1, e^-10) the minimiser over the margin is exactly 10 (q proportional to p).
    both = _pref_margin_loss(fn)
    g = lambda d: both(d)[1]
    assert g(5.0) < 0 < g(15.0)
    root = brentq(g, 5.0, 15.0, xtol=1e-10)
    assert abs(root - 10.0) < 1e-3
    # it is a minimum, not just a stationary point
    assert both(10.0)[0] < both(9.0)[0] and both(10.0)[0] < both(11.0)[0]


def _group_inputs(rng, B, K, setting):
    pol = -rng.uniform(5, 30, (B, K))
    ref = pol + rng.normal(0, 2, (B, K))
    tg = None if setting == "pref" else rng.normal(0, 1, (B, K))
    return pol, ref, tg


@pytest.mark.parametrize("alpha", [1e-4, 1e-6])
@pytest.mark.parametrize("setting,floor,K", [("rw", -10.0, 3), ("rw", None, 4), ("pref", None, 2)])
def test_alpha_to_zero_gives_exo(alpha, setting, floor, K):
    # SPEC §4 / contract: alpha -> 0 => kl_q_p + sum(p) - sum(q); gradients wrt policy log-probs equal EXO's
    rng = np.random.default_rng([K, int(-math.log10(alpha))])
    pol, ref, tg = _group_inputs(rng, 6, K, setting)
    kw = dict(beta_pi=0.5, beta_r=0.2, setting=setting, target_floor=floor)
    tg_t = None if tg is None else torch.tensor(tg)
    x1 = torch.tensor(pol, requires_grad=True)
    x2 = torch.tensor(pol, requires_grad=True)
    fa = L.fdivergence_loss(x1, torch.tensor(ref), tg_t, divergence="alpha", alpha=alpha, **kw)
    exo = L.exo_loss(x2, torch.tensor(ref), tg_t, **kw)
    lp = ref_log_p(tg, setting=setting, beta_r=0.2, target_floor=floor, shape=pol.shape)
    limit = exo.detach().numpy() + np.exp(lp).sum(-1) - 1.0
    # first-order correction: alpha * sum p u log^2(u) / 2 (~ 36 alpha for the loss, ~ 7 alpha for the gradient
    # on these inputs, by the float64 reference); tolerances leave ~3x room
    np.testing.assert_allclose(fa.detach().numpy(), limit, atol=100 * alpha + 1e-7, rtol=0)
    (g1,) = torch.autograd.grad(fa.sum(), x1)
    (g2,) = torch.autograd.grad(exo.sum(), x2)
    gtol = 30 * alpha + 1e-6
    np.testing.assert_allclose(g1.numpy(), g2.numpy(), atol=gtol, rtol=0)
    # the tolerance is meaningful: gradients are O(1)
    assert np.max(np.abs(g2.numpy())) > 0.5


@pytest.mark.parametrize("setting,floor,K", [("rw", -10.0, 3), ("rw", None, 4), ("pref", None, 2)])
def test_alpha_to_one_gives_dpo_form(setting, floor, K):
    # SPEC §4 / contract: alpha -> 1 => kl_p_q + sum(q) - sum(p); gradient ~ DPO-K's
    alpha = 0.9999
    rng = np.random.default_rng([K, 99])
    pol, ref, tg = _group_inputs(rng, 6, K, setting)
    kw = dict(beta_pi=0.5, beta_r=0.2, setting=setting, target_floor=floor)
    tg_t = None if tg is None else torch.tensor(tg)
    x1 = torch.tensor(pol, requires_grad=True)
    x2 = torch.tensor(pol, requires_grad=True)
    fa = L.fdivergence_loss(x1, torch.tensor(ref), tg_t, divergence="alpha", alpha=alpha, **kw)
    kl_pq = L.fdivergence_loss(x2, torch.tensor(ref), tg_t, divergence="kl_p_q", **kw)
    lp = ref_log_p(tg, setting=setting, beta_r=0.2, target_floor=floor, shape=pol.shape)
    limit = kl_pq.detach().numpy() + 1.0 - np.exp(lp).sum(-1)
    np.testing.assert_allclose(fa.detach().numpy(), limit, atol=5e-3, rtol=0)
    (g1,) = torch.autograd.grad(fa.sum(), x1)
    (g2,) = torch.autograd.grad(kl_pq.sum(), x2)
    np.testing.assert_allclose(g1.numpy(), g2.numpy(), atol=5e-3, rtol=0)
    # and the gradient is close to DPO-K's (p = (1, 0) in pref: differs by ~ beta_pi * e^-10)
    x3 = torch.tensor(pol, requires_grad=True)
    dk = L.dpo_k_loss(x3, torch.tensor(ref), tg_t, **kw)
    (g3,) = torch.autograd.grad(dk.sum(), x3)
    np.testing.assert_allclose(g1.numpy(), g3.numpy(), atol=5e-3, rtol=0)


def test_alpha_to_one_pref_gradient_close_to_dpo():
    rng = np.random.default_rng(21)
    d = gen_pair_ref(rng, 8)
    t = to_t(d, grad_keys=("pc", "pr"))
    beta = 0.1
    dpo = L.dpo_loss(t["pc"], t["pr"], t["rc"], t["rr"], beta=beta)
    gd = torch.autograd.grad(dpo.sum(), (t["pc"], t["pr"]))
    t2 = to_t(d, grad_keys=("pc", "pr"))
    pol = torch.stack([t2["pc"], t2["pr"]], -1)
    ref = torch.stack([t2["rc"], t2["rr"]], -1)
    fa = L.fdivergence_loss(pol, ref, None, divergence="alpha", alpha=0.9999, beta_pi=beta, setting="pref")
    ga = torch.autograd.grad(fa.sum(), (t2["pc"], t2["pr"]))
    for a, b in zip(ga, gd):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-4, rtol=0)
    np.testing.assert_allclose(fa.detach().numpy(), dpo.detach().numpy(), atol=2e-3, rtol=0)


@pytest.mark.parametrize("beta,gbr", [(2.0, 0.5), (2.5, 0.1)])
def test_alphapo_alpha_to_one_approaches_simpo(beta, gbr):
    rng = np.random.default_rng(int(beta * 10))
    aw, al = -rng.uniform(0.3, 2.5, 10), -rng.uniform(0.3, 2.5, 10)
    m = rng.normal(0, 0.5, 10)
    t = lambda x: torch.tensor(x)
    simpo = L.simpo_loss(t(aw), t(al), beta=beta, gamma_beta_ratio=gbr, margin_offset=t(m)).numpy()
    errs = []
    for alpha in (0.99, 0.9999):
        a = L.alphapo_loss(t(aw), t(al), alpha=alpha, beta=beta, gamma_beta_ratio=gbr, margin_offset=t(m)).numpy()
        errs.append(np.max(np.abs(a - simpo)))
    assert errs[1] < errs[0]
    assert errs[1] < 2e-3  # remaining gap: O(1 - alpha) plus the e^-10 label terms
    # exact alpha -> 1 limit: kl_p_q + sum q - sum p with p = (1, e^-10), q_w = sigmoid(Delta - gamma - m)
    z = beta * (aw - al) - beta * gbr - m
    eps = math.exp(LOG_EPS)
    limit = -np_logsig(z) + eps * (LOG_EPS - np_logsig(-z)) + 1.0 - (1.0 + eps)
    # the O(1 - alpha) remainder is ~ (1 - alpha) * log^2(q_w) / 2 -> grows with |z|
    assert np.all(np.abs(a - limit) <= 1e-4 * (1.0 + z**2))


def test_alphapo_equals_fdiv_alpha_pref_on_simpo_scores():
    # SPEC §4: alpha-PO is the alpha-divergence on q = softmax(z_w, z_l) with target (1, e^-10)
    rng = np.random.default_rng(31)
    aw, al, m = -rng.uniform(0.3, 2.5, 9), -rng.uniform(0.3, 2.5, 9), rng.normal(0, 1, 9)
    beta, gbr, alpha = 2.0, 0.5, 0.7
    t = lambda x: torch.tensor(x)
    a = L.alphapo_loss(t(aw), t(al), alpha=alpha, beta=beta, gamma_beta_ratio=gbr, margin_offset=t(m))
    pol = t(np.stack([beta * (aw - gbr) - m, beta * al], -1))
    f = L.fdivergence_loss(pol, torch.zeros_like(pol), None, divergence="alpha", alpha=alpha, beta_pi=1.0,
                           setting="pref")
    np.testing.assert_allclose(a.numpy(), f.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in PAIRWISE_CASES], ids=lambda c: c.id)
def test_margin_offset_shifts_the_logit(case):
    # contract: margin_offset m is subtracted from the logit -> a constant m raises the loss (for a loss that is
    # decreasing in the logit) and matches the reference
    rng = np.random.default_rng(sum(map(ord, case.id)) + 1)
    d = case.make(rng, 6)
    d["m"] = np.full(6, 0.7)
    out = case.call(to_t(d)).numpy()
    np.testing.assert_allclose(out, case.reference(d), rtol=1e-9, atol=1e-10)
    # monotonicity holds without label smoothing (with eps > 0 the loss has a minimum at z = log((1-eps)/eps))
    no_ls = {"label_smoothing": 0.0} if "label_smoothing" in case.kwargs else {}
    out = case.call(to_t(d), **no_ls).numpy()
    base = case.call(to_t(dict(d, m=None)), **no_ls).numpy()
    assert np.all(out >= base - 1e-12) and np.any(out > base + 1e-6)


# ---------------------------------------------------------------------------------------------------------------
# 3. Gradients.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c.id)
def test_gradcheck_float64(case):
    rng = np.random.default_rng(sum(map(ord, case.id)) + 2)
    d = case.make(rng, 3, 3)
    if case.name == "hinge":  # stay away from the kink at beta*h = 1
        h = (d["pc"] - d["rc"]) - (d["pr"] - d["rr"])
        d["pc"] = d["pc"] + np.where(np.abs(0.1 * h - 1) < 0.5, 15.0, 0.0)
    t = to_t(d)
    keys = case.policy_keys
    xs = tuple(t[k].clone().requires_grad_(True) for k in keys)

    def f(*xs_):
        tt = dict(t)
        tt.update(zip(keys, xs_))
        return case.call(tt)

    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c.id)
def test_policy_gradient_finite_and_nonzero(case):
    # the loss must still be differentiable wrt policy when reference tensors do not require grad,
    # and the policy gradient must be nonzero for a generic input
    rng = np.random.default_rng(sum(map(ord, case.id)) + 3)
    d = case.make(rng, 4, 3)
    t = to_t(d, grad_keys=case.policy_keys)
    out = case.call(t)
    grads = torch.autograd.grad(out.sum(), [t[k] for k in case.policy_keys])
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


# ---------------------------------------------------------------------------------------------------------------
# 4. Extreme inputs.
# ---------------------------------------------------------------------------------------------------------------


def extreme_inputs(case, scenario, rng, B=4, K=3):
    d = case.make(rng, B, K)
    if scenario == "logp_1e4":
        for k in ("pc", "pr", "rc", "rr", "pol", "ref"):
            if k in d:
                d[k] = -1e4 + (d[k] - d[k].mean()) * 0.01 - rng.uniform(0, 1, np.shape(d[k]))
    elif scenario in ("diff_plus", "diff_minus"):
        s = 1.0 if scenario == "diff_plus" else -1.0
        if case.kind == "group":
            d["ref"] = np.zeros_like(d["pol"])
            d["pol"] = np.zeros_like(d["pol"])
            d["pol"][:, 0] = s * 1e3 / case.kwargs["beta_pi"]
        elif case.kind in ("pair_avg",):  # averaged log-probs must stay < 0 for ORPO
            base = -0.5 - rng.uniform(0, 0.5, B)
            if s > 0:
                d["pc"], d["pr"] = base, base - 1e3
            else:
                d["pc"], d["pr"] = base - 1e3, base
        else:
            base = -rng.uniform(5, 10, B)
            d["pc"], d["pr"] = base + (0 if s > 0 else -1e3), base + (-1e3 if s > 0 else 0)
            d["rc"], d["rr"] = base, base
    elif scenario in ("offset_plus", "offset_minus"):
        d["m"] = np.full(B, 1e3 if scenario == "offset_plus" else -1e3)
    else:
        raise AssertionError(scenario)
    return d


SCENARIOS_ALL = ["logp_1e4", "diff_plus", "diff_minus"]
SCENARIOS_PAIR = ["offset_plus", "offset_minus"]
EXTREME_PARAMS = [(c, s) for c in LOSS_CASES for s in SCENARIOS_ALL] + [
    (c, s) for c in PAIRWISE_CASES for s in SCENARIOS_PAIR
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case,scenario", EXTREME_PARAMS, ids=[f"{c.id}-{s}" for c, s in EXTREME_PARAMS])
def test_extreme_inputs_finite(case, scenario, dtype):
    rng = np.random.default_rng(sum(map(ord, case.id + scenario)))
    d = extreme_inputs(case, scenario, rng)
    t = to_t(d, dtype, grad_keys=case.policy_keys)
    out = case.call(t)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == (4,)
    assert torch.isfinite(out).all(), out
    grads = torch.autograd.grad(out.sum(), [t[k] for k in case.policy_keys])
    for g in grads:
        assert torch.isfinite(g).all(), g
    if dtype == torch.float64:
        # and still correct: the float64 reference is stable for these inputs
        np.testing.assert_allclose(out.detach().numpy(), case.reference(d), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c.id)
def test_bf16_inputs_give_float32_close_to_reference(case):
    rng = np.random.default_rng(sum(map(ord, case.id)) + 4)
    d = case.make(rng, 5, 3)
    t = to_t(d, torch.bfloat16, grad_keys=case.policy_keys)
    out = case.call(t)
    assert out.dtype == torch.float32
    # reference on the bf16-rounded inputs, computed in float64: upcasting must happen before arithmetic
    d16 = {k: (None if v is None else torch.tensor(v).to(torch.bfloat16).double().numpy()) for k, v in d.items()}
    np.testing.assert_allclose(out.detach().numpy(), case.reference(d16), rtol=1e-3, atol=1e-3)
    grads = torch.autograd.grad(out.sum(), [t[k] for k in case.policy_keys])
    assert all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------------------------
# 5. Invalid inputs.
# ---------------------------------------------------------------------------------------------------------------

SHAPE_RE = r"(?i)shape|size|dimension|match|same"
NONFINITE_RE = r"(?i)nan|finite|inf"
POSITIVE_RE = r"(?i)beta|tau|positive|> ?0"
ALPHA_RE = r"(?i)alpha"


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c.id)
def test_shape_mismatch_raises(case):
    rng = np.random.default_rng(8)
    d = case.make(rng, 4, 3)
    d_big = case.make(rng, 5, 3)
    keys = [k for k in case.positional() if d[k] is not None]
    for k in keys[1:]:  # mismatch of each later argument against the first
        dd = dict(d)
        dd[k] = d_big[k]
        with pytest.raises(ValueError, match=SHAPE_RE):
            case.call(to_t(dd))
    if case.kind != "group":
        dd = dict(d, m=np.zeros(5))
        with pytest.raises(ValueError, match=SHAPE_RE):
            case.call(to_t(dd))
    else:
        # [B, K] vs [B, K+1]
        dd = dict(d)
        dd["ref"] = np.concatenate([d["ref"], d["ref"][:, :1]], axis=1)
        with pytest.raises(ValueError, match=SHAPE_RE):
            case.call(to_t(dd))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c.id)
def test_nonfinite_input_raises(case, bad):
    rng = np.random.default_rng(9)
    d = case.make(rng, 4, 3)
    if case.kind != "group":
        d["m"] = np.zeros(4)
    for k in [k for k, v in d.items() if v is not None]:
        dd = {kk: (None if v is None else np.array(v, dtype=np.float64)) for kk, v in d.items()}
        dd[k].flat[1] = bad
        with pytest.raises(ValueError, match=NONFINITE_RE):
            case.call(to_t(dd))


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, 1.5, None])
def test_alpha_out_of_range_raises(alpha):
    pol = torch.tensor([[-3.0, -4.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=ALPHA_RE):
        L.fdivergence_loss(pol, pol - 1, None, divergence="alpha", alpha=alpha, beta_pi=0.5, setting="pref")
    with pytest.raises(ValueError, match=ALPHA_RE):
        L.fdivergence_loss(pol, pol - 1, torch.zeros_like(pol), divergence="alpha", alpha=alpha, beta_pi=0.5)
    if alpha is not None:
        a = torch.tensor([-1.0, -2.0], dtype=torch.float64)
        with pytest.raises(ValueError, match=ALPHA_RE):
            L.alphapo_loss(a, a - 0.5, alpha=alpha, beta=2.0, gamma_beta_ratio=0.5)


BAD_SCALE = []
for _c in LOSS_CASES:
    for _k in ("beta", "tau", "beta_pi", "beta_r"):
        if _k in _c.kwargs:
            for _v in (0.0, -0.1):
                BAD_SCALE.append((_c, _k, _v))


@pytest.mark.parametrize("case,key,value", BAD_SCALE, ids=[f"{c.id}-{k}={v}" for c, k, v in BAD_SCALE])
def test_nonpositive_scale_raises(case, key, value):
    d = case.make(np.random.default_rng(10), 3, 3)
    with pytest.raises(ValueError, match=POSITIVE_RE):
        case.call(to_t(d), **{key: value})


@pytest.mark.parametrize("case", [c for c in GROUP_CASES if c.setting == "rw"], ids=lambda c: c.id)
def test_k_below_two_raises(case):
    d = case.make(np.random.default_rng(11), 3, 3)
    d = {k: v[:, :1] for k, v in d.items()}
    with pytest.raises(ValueError, match=r"K|candidate|at least 2|>= ?2|two"):
        case.call(to_t(d))


@pytest.mark.parametrize("case", [c for c in GROUP_CASES if c.setting == "pref"], ids=lambda c: c.id)
@pytest.mark.parametrize("K", [1, 3])
def test_pref_with_k_not_two_raises(case, K):
    rng = np.random.default_rng(12)
    pol = torch.tensor(-rng.uniform(5, 30, (3, K)))
    with pytest.raises(ValueError, match=r"(?i)pref|K|2|two|candidate"):
        case.call(dict(pol=pol, ref=pol - 1.0, tgt=None))


@pytest.mark.parametrize("case", [c for c in GROUP_CASES if c.setting == "pref"], ids=lambda c: c.id)
@pytest.mark.parametrize("tg", [[[0.0, 1.0]], [[1.0, 0.0], [-1.0, 2.0]]], ids=["swapped", "one-row-swapped"])
def test_pref_targets_swapped_raise(case, tg):
    tg_t = torch.tensor(tg, dtype=torch.float64)
    pol = torch.full(tg_t.shape, -5.0, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"(?i)swap|column|chosen|reject|order|target"):
        case.call(dict(pol=pol, ref=pol - 1.0, tgt=tg_t))


@pytest.mark.parametrize("divergence", ["kl", "KL_Q_P", "tv", ""])
def test_unknown_divergence_raises(divergence):
    pol = torch.tensor([[-3.0, -4.0, -5.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"(?i)divergence|unknown"):
        L.fdivergence_loss(pol, pol - 1, torch.zeros_like(pol), divergence=divergence, beta_pi=0.5)


@pytest.mark.parametrize("name", ["exo", "dpo_k", "fdiv"])
def test_unknown_setting_raises(name):
    pol = torch.tensor([[-3.0, -4.0]], dtype=torch.float64)
    kw = dict(beta_pi=0.5, setting="pairwise")
    if name == "fdiv":
        kw["divergence"] = "js"
    with pytest.raises(ValueError, match=r"(?i)setting|rw|pref"):
        getattr(L, FN_NAMES[name])(pol, pol - 1, torch.zeros_like(pol), **kw)


def test_rw_without_targets_raises():
    pol = torch.tensor([[-3.0, -4.0, -2.0]], dtype=torch.float64)
    for fn, kw in ((L.exo_loss, {}), (L.dpo_k_loss, {}), (L.fdivergence_loss, dict(divergence="js"))):
        with pytest.raises(ValueError):
            fn(pol, pol - 1, None, beta_pi=0.5, setting="rw", **kw)


# ---------------------------------------------------------------------------------------------------------------
# 6. Registry.
# ---------------------------------------------------------------------------------------------------------------

ALL_NAMES = {"sft", "dpo", "ipo", "hinge", "rdpo", "simpo", "cpo", "orpo", "exo", "dpo_k", "fpo", "alphapo",
             "gamma_simpo", "gamma_dpo", "simpo_hinge"}


def test_registry_names():
    assert set(L.LOSSES) == ALL_NAMES
    for n in ALL_NAMES:
        assert L.get_loss_spec(n) is L.LOSSES[n]


@pytest.mark.parametrize("name", sorted(ALL_NAMES))
def test_registry_flags_agree_with_the_functions(name):
    # The registry's description of each loss must match what its function takes (the wiring itself — summed or
    # averaged inputs, lengths, margins — is checked end to end in tests/test_dispatch.py).
    import inspect

    spec = L.get_loss_spec(name)
    params = inspect.signature(spec.fn).parameters
    positional = [p for p, v in params.items() if v.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert spec.inputs in L.INPUT_KINDS
    assert spec.needs_reference is any(p.startswith("ref") for p in positional), positional
    assert (spec.inputs == "group") is ("targets" in positional)
    assert (spec.inputs == "pair_lengths") is ("chosen_lengths" in positional)
    assert (spec.inputs == "single") is (len(positional) == 1)
    assert ("margin_offset" in params) is (spec.inputs in ("pair", "pair_lengths"))
    assert set(spec.margin_hparams) <= set(spec.hparams) and not set(spec.margin_hparams) & set(params)
    assert set(spec.loss_kwargs(spec.resolve_hparams(_good_hparams(name)))) <= set(params)


def _good_hparams(name):
    spec = L.get_loss_spec(name)
    given = dict(GOOD_HPARAMS.get(name, {}))
    return {**{k: 0.5 for k, hp in spec.hparams.items() if hp.default is L.REQUIRED}, **given}


def test_registry_fns_are_the_loss_functions():
    expected = dict(sft=L.sft_loss, dpo=L.dpo_loss, ipo=L.ipo_loss, hinge=L.hinge_loss, rdpo=L.rdpo_loss, simpo=L.simpo_loss,
                    cpo=L.cpo_loss, orpo=L.orpo_loss, exo=L.exo_loss, dpo_k=L.dpo_k_loss, fpo=L.fdivergence_loss,
                    alphapo=L.alphapo_loss, simpo_hinge=L.simpo_hinge_loss)
    for n, fn in expected.items():
        assert L.get_loss_spec(n).fn is fn, n


@pytest.mark.parametrize("bad", ["dpoo", "simp0", "nonsense"])
def test_get_loss_spec_unknown_lists_valid_names(bad):
    with pytest.raises(ValueError) as ei:
        L.get_loss_spec(bad)
    msg = str(ei.value)
    for n in ALL_NAMES:
        assert re.search(rf"\b{re.escape(n)}\b", msg), (n, msg)


def test_get_loss_spec_suggests_close_name():
    with pytest.raises(ValueError, match=r"(?i)did you mean.*\bdpo\b") as ei:
        L.get_loss_spec("dpoo")
    assert "dpo" in str(ei.value)


# resolve_hparams: contract — fills defaults, rejects unknown / missing / out-of-range values.
GOOD_HPARAMS = {
    "dpo": dict(beta=0.1),
    "ipo": dict(tau=0.1),
    "hinge": dict(beta=0.1),
    "simpo": dict(beta=2.0, gamma_beta_ratio=0.5),
    "exo": dict(beta_pi=0.5),
    "dpo_k": dict(beta_pi=0.5),
    "fpo": dict(beta_pi=0.5, divergence="alpha", alpha=0.1),
    "alphapo": dict(alpha=0.99, beta=2.0, gamma_beta_ratio=0.5),
    "simpo_hinge": dict(beta=2.0, gamma_beta_ratio=0.5),
}


@pytest.mark.parametrize("name", sorted(GOOD_HPARAMS))
def test_resolve_hparams_fills_defaults_and_keeps_given(name):
    spec = L.get_loss_spec(name)
    out = spec.resolve_hparams(dict(GOOD_HPARAMS[name]))
    for k, v in GOOD_HPARAMS[name].items():
        assert out[k] == v
    # defaults documented in the contract
    expected_defaults = {
        "dpo": dict(label_smoothing=0.0),
        "simpo": dict(label_smoothing=0.0),
        "exo": dict(beta_r=1.0, setting="rw", target_floor=None),
        "dpo_k": dict(beta_r=1.0, setting="rw", target_floor=None),
        "fpo": dict(beta_r=1.0, setting="rw", target_floor=-10.0),
    }.get(name, {})
    for k, v in expected_defaults.items():
        assert k in out and out[k] == v, (k, out)


@pytest.mark.parametrize("name", sorted(GOOD_HPARAMS))
def test_resolve_hparams_rejects_unknown_key(name):
    with pytest.raises(ValueError, match="bogus_key"):
        L.get_loss_spec(name).resolve_hparams(dict(GOOD_HPARAMS[name], bogus_key=1.0))


@pytest.mark.parametrize(
    "name,drop",
    [("dpo", "beta"), ("ipo", "tau"), ("hinge", "beta"), ("simpo", "beta"), ("simpo", "gamma_beta_ratio"),
     ("exo", "beta_pi"), ("fpo", "divergence"), ("fpo", "beta_pi"), ("alphapo", "alpha"),
     ("simpo_hinge", "beta"), ("simpo_hinge", "gamma_beta_ratio")],
)
def test_resolve_hparams_rejects_missing_required(name, drop):
    hp = dict(GOOD_HPARAMS[name])
    del hp[drop]
    with pytest.raises(ValueError, match=drop):
        L.get_loss_spec(name).resolve_hparams(hp)


@pytest.mark.parametrize(
    "name,key,value",
    [("dpo", "beta", 0.0), ("dpo", "beta", -1.0), ("ipo", "tau", 0.0), ("hinge", "beta", -0.1),
     ("simpo", "beta", 0.0), ("exo", "beta_pi", 0.0), ("exo", "beta_r", -1.0), ("dpo_k", "beta_pi", -0.5),
     ("fpo", "alpha", 1.5), ("fpo", "alpha", 0.0), ("fpo", "divergence", "kl"), ("exo", "setting", "pairwise"),
     ("alphapo", "alpha", 0.0), ("alphapo", "alpha", 1.0), ("alphapo", "alpha", -0.5), ("alphapo", "beta", 0.0),
     ("simpo_hinge", "beta", 0.0), ("simpo_hinge", "gamma_beta_ratio", float("nan"))],
)
def test_resolve_hparams_rejects_out_of_range(name, key, value):
    with pytest.raises(ValueError, match=key):
        L.get_loss_spec(name).resolve_hparams(dict(GOOD_HPARAMS[name], **{key: value}))


def test_registry_defaults_agree_with_function_signatures():
    import inspect

    for name in ALL_NAMES:
        spec = L.get_loss_spec(name)
        params = inspect.signature(spec.fn).parameters
        resolved_keys = set(spec.hparams)
        for k in resolved_keys & set(params):
            pd = params[k].default
            if pd is inspect.Parameter.empty:
                continue
            hd = spec.hparams[k].default
            if hd is L.REQUIRED:
                continue
            assert hd == pd or (hd is None and pd is None), (name, k, hd, pd)


# ----------------------------------------------------------------------------------------------------------------------
# The f-PO repository's reference-free `exo` branch has a misplaced parenthesis that makes it symmetric in chosen and
# rejected (SPEC §4). Ours must not be: swapping the two sides must change every preference loss, and a better-
# separated pair must cost less.
# ----------------------------------------------------------------------------------------------------------------------
_ASYMMETRY_CASES = {
    "alphapo": lambda c, r: L.alphapo_loss(c, r, alpha=0.5, beta=2.0, gamma_beta_ratio=0.5),
    "simpo": lambda c, r: L.simpo_loss(c, r, beta=2.0, gamma_beta_ratio=0.5),
    "simpo_hinge": lambda c, r: L.simpo_hinge_loss(c, r, beta=2.0, gamma_beta_ratio=0.5),
    "exo_pref": lambda c, r: L.exo_loss(torch.stack([c, r], 1), torch.zeros(c.shape[0], 2, dtype=c.dtype), None,
                                        beta_pi=1.0, setting="pref"),
    "fpo_alpha_pref": lambda c, r: L.fdivergence_loss(torch.stack([c, r], 1), torch.zeros(c.shape[0], 2, dtype=c.dtype),
                                                      None, divergence="alpha", alpha=0.3, beta_pi=1.0, setting="pref"),
    "fpo_js_pref": lambda c, r: L.fdivergence_loss(torch.stack([c, r], 1), torch.zeros(c.shape[0], 2, dtype=c.dtype),
                                                   None, divergence="js", beta_pi=1.0, setting="pref"),
}


@pytest.mark.parametrize("name", list(_ASYMMETRY_CASES))
def test_chosen_and_rejected_are_not_interchangeable(name):
    loss_fn = _ASYMMETRY_CASES[name]
    rng = np.random.default_rng(7)
    chosen = torch.tensor(rng.uniform(-2.0, -0.5, size=16))
    rejected = chosen - torch.tensor(rng.uniform(0.5, 3.0, size=16))  # chosen is more likely in every pair
    right_way, swapped = loss_fn(chosen, rejected), loss_fn(rejected, chosen)
    assert torch.all(right_way < swapped), "swapping chosen and rejected must raise the loss of a well-ordered pair"


def test_sft_loss_is_the_negative_averaged_log_prob_and_checks_its_input():
    rng = np.random.default_rng(11)
    averaged = rng.uniform(-5.0, -0.1, size=9)
    np.testing.assert_allclose(L.sft_loss(torch.tensor(averaged)).numpy(), -averaged, rtol=0, atol=0)
    assert L.get_loss_spec("sft").inputs == "single" and L.get_loss_spec("dpo").inputs == "pair"
    with pytest.raises(ValueError, match="non-finite"):
        L.sft_loss(torch.tensor([float("nan")]))



# ----------------------------------------------------------------------------------------------------------------------
# simpo_hinge (SimPO repository's `hinge` loss type) and the `length_norm` hyper-parameter (γ-PO repository's
# `length_norm` / averaged cpo). References below are written by hand in float64 from the formulas, on fresh inputs
# drawn from seeded torch.Generators, and fed through the registry from *summed* log-probs and token counts, i.e. the
# way the trainer calls every loss.
# ----------------------------------------------------------------------------------------------------------------------

LENGTH_NORM_LOSSES = {"dpo", "gamma_dpo", "cpo", "simpo", "gamma_simpo", "alphapo", "hinge", "rdpo", "ipo",
                      "simpo_hinge"}

#: hyper-parameters with no term trivially zero, per loss, for the length_norm tests below
LN_HPARAMS = {
    "sft": {},
    "dpo": {"beta": 0.3, "label_smoothing": 0.1},
    "gamma_dpo": {"beta": 0.3, "gamma_beta_ratio": 2.0, "label_smoothing": 0.05},
    "ipo": {"tau": 0.4},
    "hinge": {"beta": 0.2},
    "rdpo": {"beta": 0.3, "alpha": 0.05},
    "simpo": {"beta": 2.0, "gamma_beta_ratio": 0.3, "label_smoothing": 0.05},
    "gamma_simpo": {"beta": 2.0, "gamma_beta_ratio": 0.5},
    "cpo": {"beta": 0.4, "nll_weight": 0.5, "label_smoothing": 0.1},
    "orpo": {"odds_ratio_weight": 0.3},
    "alphapo": {"alpha": 0.7, "beta": 2.0, "gamma_beta_ratio": 0.4},
    "simpo_hinge": {"beta": 2.5, "gamma_beta_ratio": 0.3},
    "exo": {"beta_pi": 0.5, "beta_r": 0.7},
    "dpo_k": {"beta_pi": 0.6, "beta_r": 0.5},
    "fpo": {"beta_pi": 0.5, "divergence": "alpha", "alpha": 0.3, "beta_r": 0.6},
}


def _summed_batch(seed, B=7, K=2, margins=False):
    """A PreferenceBatch of summed log-probs S = n·A (float64) with integer token counts n in [1, 40]."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(1, 41, (B, K), generator=g).double()
    avg = -torch.rand(B, K, generator=g, dtype=torch.float64) * 3.0 - 0.05  # A in (-3.05, -0.05)
    avg_ref = avg + 0.4 * torch.randn(B, K, generator=g, dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0]] * B, dtype=torch.float64) if K == 2 else torch.randn(B, K, generator=g,
                                                                                          dtype=torch.float64)
    offsets = 0.5 * torch.randn(B, generator=g, dtype=torch.float64) if margins else None
    return L.PreferenceBatch(policy_logps=avg * n, lengths=n, targets=targets, ref_logps=avg_ref * n,
                             margin_offsets=offsets)


def _logsig(x):
    """log σ(x) in float64, stable, by hand (not through torch.nn.functional)."""
    x = np.asarray(x, dtype=np.float64)
    return np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))


def test_length_norm_is_registered_exactly_on_the_pairwise_losses():
    taking = {name for name, spec in L.LOSSES.items() if spec.takes_length_norm}
    assert taking == LENGTH_NORM_LOSSES
    for name in LENGTH_NORM_LOSSES:
        spec = L.LOSSES[name]
        assert spec.hparams["length_norm"].default is spec.averaged_inputs, name  # the loss's own convention
        assert "γ-PO" in spec.hparams["length_norm"].help and "XPOTrainer" in spec.hparams["length_norm"].help
    conventions = {name: spec.averaged_inputs for name, spec in L.LOSSES.items()}
    assert conventions == {"sft": True, "dpo": False, "ipo": True, "hinge": False, "rdpo": False, "simpo": True,
                           "cpo": False, "orpo": True, "exo": False, "dpo_k": False, "fpo": False, "alphapo": True,
                           "gamma_simpo": True, "gamma_dpo": False, "simpo_hinge": True}


def test_simpo_hinge_registry_entry():
    spec = L.get_loss_spec("simpo_hinge")
    assert spec.fn is L.simpo_hinge_loss and spec.inputs == "pair" and not spec.needs_reference
    assert spec.averaged_inputs and not spec.dynamic_margins and spec.reward_scale == "beta"
    assert set(spec.hparams) == {"beta", "gamma_beta_ratio", "length_norm"}
    with pytest.raises(ValueError, match="label_smoothing"):  # SimPO ignores label smoothing for its hinge
        spec.resolve_hparams({"beta": 2.0, "gamma_beta_ratio": 0.5, "label_smoothing": 0.1})
    assert spec.static_margin(spec.resolve_hparams({"beta": 2.0, "gamma_beta_ratio": 0.25})) == 0.5
    assert L.simpo_hinge_loss.__doc__ and "hinge" in L.simpo_hinge_loss.__doc__


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simpo_hinge_through_the_registry_matches_the_hand_formula(seed):
    g = torch.Generator().manual_seed(100 + seed)
    beta = float(torch.rand(1, generator=g)) * 4 + 0.5
    ratio = float(torch.rand(1, generator=g)) * 1.0 - 0.2
    batch = _summed_batch(200 + seed, B=11)
    spec = L.get_loss_spec("simpo_hinge")
    hp = spec.resolve_hparams({"beta": beta, "gamma_beta_ratio": ratio})
    out = spec(batch, hp)

    S, n = batch.policy_logps.numpy(), batch.lengths.numpy()
    A = S / n
    expected = np.maximum(0.0, 1.0 - beta * (A[:, 0] - A[:, 1] - ratio))
    np.testing.assert_allclose(out.losses.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.chosen_rewards.numpy(), beta * A[:, 0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(out.rejected_rewards.numpy(), beta * A[:, 1], rtol=1e-12, atol=0)
    # the pure function on averaged inputs is the same thing; a margin offset m is subtracted from the logit
    direct = L.simpo_hinge_loss(torch.tensor(A[:, 0]), torch.tensor(A[:, 1]), beta=beta, gamma_beta_ratio=ratio)
    np.testing.assert_allclose(direct.numpy(), expected, rtol=1e-12, atol=1e-12)
    m = torch.randn(A.shape[0], generator=g, dtype=torch.float64)
    shifted = L.simpo_hinge_loss(torch.tensor(A[:, 0]), torch.tensor(A[:, 1]), beta=beta, gamma_beta_ratio=ratio,
                                 margin_offset=m)
    np.testing.assert_allclose(shifted.numpy(), np.maximum(0.0, 1.0 - (beta * (A[:, 0] - A[:, 1] - ratio) - m.numpy())),
                               rtol=1e-12, atol=1e-12)


def test_simpo_hinge_known_values_and_gradient():
    spec = L.get_loss_spec("simpo_hinge")
    # equal averaged log-probs (S/n: -6/4 = -3/2) and γ/β = 0: exactly 1, whatever β
    batch = L.PreferenceBatch(policy_logps=torch.tensor([[-6.0, -3.0], [-1.0, -1.0]], dtype=torch.float64),
                              lengths=torch.tensor([[4.0, 2.0], [5.0, 5.0]], dtype=torch.float64),
                              targets=torch.tensor([[1.0, 0.0]] * 2, dtype=torch.float64))
    for beta in (0.1, 1.0, 7.5):
        assert spec(batch, spec.resolve_hparams({"beta": beta, "gamma_beta_ratio": 0.0})).losses.tolist() == [1.0, 1.0]
    # β·(A_w − A_l − γ/β) = 2·(−1 − (−2) − 0.25) = 1.5 >= 1: zero loss and zero gradient; below 1: slope −β
    chosen = torch.tensor([-1.0, -1.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-2.0, -1.1], dtype=torch.float64, requires_grad=True)
    loss = L.simpo_hinge_loss(chosen, rejected, beta=2.0, gamma_beta_ratio=0.25)
    assert loss[0].item() == 0.0 and loss[1].item() == pytest.approx(1.0 - 2.0 * (0.1 - 0.25), abs=1e-12)
    loss.sum().backward()
    assert chosen.grad.tolist() == [0.0, -2.0] and rejected.grad.tolist() == [0.0, 2.0]
    # bf16 inputs are upcast, bad inputs raise
    assert L.simpo_hinge_loss(chosen.detach().bfloat16(), rejected.detach().bfloat16(), beta=2.0,
                              gamma_beta_ratio=0.25).dtype == torch.float32
    with pytest.raises(ValueError, match="beta"):
        L.simpo_hinge_loss(chosen, rejected, beta=0.0, gamma_beta_ratio=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        L.simpo_hinge_loss(torch.tensor([float("nan")]), torch.tensor([-1.0]), beta=1.0, gamma_beta_ratio=0.0)
    with pytest.raises(ValueError, match="shape"):
        L.simpo_hinge_loss(torch.zeros(3), torch.zeros(2), beta=1.0, gamma_beta_ratio=0.0)


def _conventional_call(name, hp, batch):
    """The pure function called explicitly on the loss's *conventional* inputs (S, or A = S/n), no registry."""
    spec = L.LOSSES[name]
    S, R, n = batch.policy_logps, batch.ref_logps, batch.lengths
    P, Q = (S / n, R / n) if spec.averaged_inputs else (S, R)
    kw = {k: v for k, v in hp.items() if k not in spec.margin_hparams}
    m = {"margin_offset": batch.margin_offsets}
    if name == "sft":
        return L.sft_loss(P[:, 0])
    if spec.group:
        return spec.fn(P, Q, batch.targets, **kw)
    if name == "rdpo":
        return L.rdpo_loss(P[:, 0], P[:, 1], Q[:, 0], Q[:, 1], n[:, 0], n[:, 1], **kw, **m)
    if spec.needs_reference:
        return spec.fn(P[:, 0], P[:, 1], Q[:, 0], Q[:, 1], **kw, **m)
    return spec.fn(P[:, 0], P[:, 1], **kw, **m)


@pytest.mark.parametrize("name", sorted(LN_HPARAMS))
def test_default_inputs_are_unchanged_for_every_loss(name):
    assert set(LN_HPARAMS) == set(L.LOSSES), "a registered loss has no entry in LN_HPARAMS"
    spec = L.LOSSES[name]
    batch = _summed_batch(300, B=6, K=4 if spec.group else 2, margins=spec.dynamic_margins)
    hp = spec.resolve_hparams(LN_HPARAMS[name])
    assert "length_norm" not in hp  # resolved dicts of existing configs stay exactly as they were
    assert spec.averages(hp) is spec.averaged_inputs
    expected = _conventional_call(name, hp, batch)
    torch.testing.assert_close(spec(batch, hp).losses, expected, rtol=0, atol=0)
    if spec.takes_length_norm:  # spelling the convention out changes nothing either
        explicit = spec.resolve_hparams({**LN_HPARAMS[name], "length_norm": spec.averaged_inputs})
        assert explicit["length_norm"] is spec.averaged_inputs and "length_norm" not in spec.loss_kwargs(explicit)
        torch.testing.assert_close(spec(batch, explicit).losses, expected, rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["dpo", "gamma_dpo"])
def test_length_norm_true_on_dpo_uses_averaged_log_ratios(seed, name):
    spec = L.LOSSES[name]
    batch = _summed_batch(400 + seed, margins=spec.dynamic_margins)
    hp = spec.resolve_hparams({**LN_HPARAMS[name], "length_norm": True})
    beta, eps = hp["beta"], hp["label_smoothing"]
    out = spec(batch, hp)

    S, R, n = batch.policy_logps.numpy(), batch.ref_logps.numpy(), batch.lengths.numpy()
    A, Ar = S / n, R / n
    m = batch.margin_offsets.numpy() if batch.margin_offsets is not None else 0.0
    z = beta * ((A[:, 0] - Ar[:, 0]) - (A[:, 1] - Ar[:, 1])) - m
    expected = -(1 - eps) * _logsig(z) - eps * _logsig(-z)
    np.testing.assert_allclose(out.losses.numpy(), expected, rtol=1e-12, atol=1e-12)
    # (c) the rewards follow the averaged convention too, and so do γ-PO's reward gaps
    np.testing.assert_allclose(out.chosen_rewards.numpy(), beta * (A[:, 0] - Ar[:, 0]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.rejected_rewards.numpy(), beta * (A[:, 1] - Ar[:, 1]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(spec.reward_gaps(batch, hp).numpy(),
                               beta * ((A[:, 0] - Ar[:, 0]) - (A[:, 1] - Ar[:, 1])), rtol=1e-12, atol=1e-12)
    # the default is still the summed DPO of the paper
    default = spec.resolve_hparams(LN_HPARAMS[name])
    z_summed = beta * ((S[:, 0] - R[:, 0]) - (S[:, 1] - R[:, 1])) - m
    np.testing.assert_allclose(spec(batch, default).losses.numpy(), -(1 - eps) * _logsig(z_summed)
                               - eps * _logsig(-z_summed), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(spec.reward_gaps(batch, default).numpy(),
                               beta * ((S[:, 0] - R[:, 0]) - (S[:, 1] - R[:, 1])), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_length_norm_true_on_cpo_is_the_gamma_po_repositorys_averaged_cpo(seed):
    spec = L.LOSSES["cpo"]
    batch = _summed_batch(500 + seed)
    hp = spec.resolve_hparams({"beta": 0.7, "nll_weight": 0.4, "length_norm": True})
    out = spec(batch, hp)
    A = (batch.policy_logps / batch.lengths).numpy()
    expected = -_logsig(0.7 * (A[:, 0] - A[:, 1])) - 0.4 * A[:, 0]
    np.testing.assert_allclose(out.losses.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.chosen_rewards.numpy(), 0.7 * A[:, 0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(out.rejected_rewards.numpy(), 0.7 * A[:, 1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["simpo", "gamma_simpo", "simpo_hinge"])
def test_length_norm_false_on_simpo_uses_summed_log_probs(name):
    spec = L.LOSSES[name]
    batch = _summed_batch(600, margins=spec.dynamic_margins)
    hp = spec.resolve_hparams({**LN_HPARAMS[name], "length_norm": False})
    beta, ratio, eps = hp["beta"], hp["gamma_beta_ratio"], hp.get("label_smoothing", 0.0)
    out = spec(batch, hp)
    S = batch.policy_logps.numpy()
    m = batch.margin_offsets.numpy() if batch.margin_offsets is not None else 0.0
    z = beta * (S[:, 0] - S[:, 1]) - beta * ratio - m
    if name == "simpo_hinge":
        expected = np.maximum(0.0, 1.0 - z)
    else:
        expected = -(1 - eps) * _logsig(z) - eps * _logsig(-z)
    np.testing.assert_allclose(out.losses.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.chosen_rewards.numpy(), beta * S[:, 0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(out.rejected_rewards.numpy(), beta * S[:, 1], rtol=1e-12, atol=0)
    if spec.dynamic_margins:
        np.testing.assert_allclose(spec.reward_gaps(batch, hp).numpy(), beta * (S[:, 0] - S[:, 1]), rtol=1e-12)


def test_length_norm_flips_the_other_pairwise_losses():
    batch = _summed_batch(700)
    S, R, n = batch.policy_logps.numpy(), batch.ref_logps.numpy(), batch.lengths.numpy()
    A, Ar = S / n, R / n
    # R-DPO on averaged log-ratios: the length penalty still uses the token counts
    spec = L.LOSSES["rdpo"]
    out = spec(batch, spec.resolve_hparams({"beta": 0.3, "alpha": 0.05, "length_norm": True}))
    h = (A[:, 0] - Ar[:, 0]) - (A[:, 1] - Ar[:, 1])
    np.testing.assert_allclose(out.losses.numpy(), -_logsig(0.3 * h - 0.05 * (n[:, 0] - n[:, 1])), rtol=1e-12)
    np.testing.assert_allclose(out.chosen_rewards.numpy(), 0.3 * (A[:, 0] - Ar[:, 0]), rtol=1e-12)
    # SLiC hinge on averaged log-ratios
    spec = L.LOSSES["hinge"]
    out = spec(batch, spec.resolve_hparams({"beta": 0.2, "length_norm": True}))
    np.testing.assert_allclose(out.losses.numpy(), np.maximum(0.0, 1.0 - 0.2 * h), rtol=1e-12, atol=1e-12)
    # IPO on summed log-ratios (the IPO paper's own h); its reward is unscaled
    spec = L.LOSSES["ipo"]
    out = spec(batch, spec.resolve_hparams({"tau": 0.4, "length_norm": False}))
    hs = (S[:, 0] - R[:, 0]) - (S[:, 1] - R[:, 1])
    np.testing.assert_allclose(out.losses.numpy(), (hs - 1.0 / 0.8) ** 2, rtol=1e-12)
    np.testing.assert_allclose(out.chosen_rewards.numpy(), S[:, 0] - R[:, 0], rtol=1e-12)
    # α-PO on summed log-probs: q_w = softmax(β(S_w − γ/β), β S_l)
    spec = L.LOSSES["alphapo"]
    summed = spec(batch, spec.resolve_hparams({"alpha": 0.7, "beta": 2.0, "gamma_beta_ratio": 0.4,
                                               "length_norm": False}))
    explicit = L.alphapo_loss(batch.policy_logps[:, 0], batch.policy_logps[:, 1], alpha=0.7, beta=2.0,
                              gamma_beta_ratio=0.4)
    torch.testing.assert_close(summed.losses, explicit, rtol=0, atol=0)
    np.testing.assert_allclose(summed.chosen_rewards.numpy(), 2.0 * S[:, 0], rtol=1e-12)


@pytest.mark.parametrize("bad", ["yes", "true", 1, 0, 1.0, None, [True]])
@pytest.mark.parametrize("name", ["dpo", "simpo", "cpo", "simpo_hinge"])
def test_length_norm_must_be_a_bool(name, bad):
    spec = L.LOSSES[name]
    with pytest.raises(ValueError, match=r"length_norm.*true or false"):
        spec.resolve_hparams({**LN_HPARAMS[name], "length_norm": bad})
    # a hand-built resolved dict is checked too, before any input is touched
    with pytest.raises(ValueError, match="length_norm"):
        spec.averages({**spec.resolve_hparams(LN_HPARAMS[name]), "length_norm": bad})


@pytest.mark.parametrize("name", ["fpo", "exo", "dpo_k", "sft", "orpo"])
def test_length_norm_is_unknown_to_the_group_and_single_losses(name):
    spec = L.LOSSES[name]
    with pytest.raises(ValueError, match=r"does not take 'length_norm'"):
        spec.resolve_hparams({**LN_HPARAMS[name], "length_norm": True})
    with pytest.raises(ValueError, match="length_norm"):
        spec.averages({**spec.resolve_hparams(LN_HPARAMS[name]), "length_norm": True})


def test_resolve_hparams_rejects_bad_length_norm_with_the_exact_message():
    with pytest.raises(ValueError, match=r"length_norm") as ei:
        L.get_loss_spec("dpo").resolve_hparams({"beta": 0.1, "length_norm": "yes"})
    assert "true or false" in str(ei.value) and "'yes'" in str(ei.value)
    with pytest.raises(ValueError, match=r"does not take 'length_norm'"):
        L.get_loss_spec("fpo").resolve_hparams({"beta_pi": 0.5, "divergence": "js", "length_norm": False})


def test_loss_listing_shows_the_convention(capsys):
    from argparse import Namespace

    from prefopt.cli import _list_losses

    assert _list_losses(Namespace(verbose=False)) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "summed log-probs (length_norm)" in lines["dpo"] and "averaged log-probs (length_norm)" in lines["simpo"]
    assert "averaged log-probs (length_norm)" in lines["simpo_hinge"]
    assert "summed log-probs," in lines["fpo"] and "length_norm" not in lines["fpo"]
    assert "averaged log-probs," in lines["orpo"] and "length_norm" not in lines["sft"]
