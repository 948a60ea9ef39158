"""Preference-optimisation losses as pure functions of per-sequence log-probs.

Every function here takes per-sequence log-probabilities (already reduced over the response tokens by the caller) and
returns one loss value per example, shape ``[B]``; the caller reduces (mean over the batch, or whatever its
accumulation scheme needs). Nothing in this module touches a model, the disk, a random generator or a process group.

Notation (SPEC §1): ``S(y)`` is the *summed* log-prob of the response tokens, ``A(y) = S(y) / n`` the *averaged* one.
Each docstring says which of the two a function expects; the registry :data:`LOSSES` records it too so the trainer
can hand the right one over. The pairwise losses also take a ``length_norm`` hyper-parameter (true: A, false: S) that
overrides that convention; the :class:`LossSpec` applies it to the inputs, the functions never see it.

``margin_offset`` (a per-pair tensor ``m``) is subtracted from a pairwise loss's logit. It is how γ-PO's dynamic
margins plug into any margin-based loss (SPEC §5): with ``m_i = γ_i − γ0``, :func:`simpo_loss` becomes γ-SimPO and
:func:`dpo_loss` becomes the official γ-DPO.

Numerics: inputs are upcast to at least float32 (so bf16 log-probs are safe), everything is computed in log space,
and non-finite or mis-shaped inputs raise :class:`ValueError` instead of returning a silent NaN.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

#: log ε of the preference-setting target p = (1, ε) used by EXO and f-PO (SPEC §3): p_w = 1, p_l = e^-10, unnormalised.
PREF_TARGET_LOG_EPS = -10.0

DIVERGENCES = ("alpha", "js", "jeffreys", "hellinger", "kl_q_p", "kl_p_q")
SETTINGS = ("rw", "pref")


# ----------------------------------------------------------------------------------------------------------------------
# Input checks (shared by every loss)
# ----------------------------------------------------------------------------------------------------------------------


def _as_float(x: Tensor) -> Tensor:
    """Upcast half precision to float32; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_tensors(expected_dim: int, **tensors: Optional[Tensor]) -> None:
    """Same shape, ``expected_dim`` dimensions, all finite — or a ValueError naming the culprit."""
    shape = None
    first = None
    for name, value in tensors.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() != expected_dim:
            kind = "[B]" if expected_dim == 1 else "[B, K]"
            raise ValueError(f"{name} must have shape {kind}, got {tuple(value.shape)}")
        if shape is None:
            shape, first = value.shape, name
        elif value.shape != shape:
            raise ValueError(f"shape mismatch: {first} has shape {tuple(shape)} but {name} has {tuple(value.shape)}")
        if value.is_floating_point():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                index = bad.nonzero()[0].tolist()
                raise ValueError(f"{name} contains a non-finite value ({value[tuple(index)].item()}) at index {index}")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_alpha(alpha: Optional[float]) -> None:
    if alpha is None or not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie strictly inside (0, 1), got {alpha!r} (α→0 is kl_q_p/EXO, α→1 is kl_p_q/DPO)")


def _check_label_smoothing(label_smoothing: float) -> None:
    if not (0.0 <= label_smoothing < 0.5):
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing!r}")


def _smoothed_logistic(logits: Tensor, label_smoothing: float) -> Tensor:
    """−(1−ε)·log σ(z) − ε·log σ(−z): the DPO/cDPO form shared by every sigmoid pairwise loss (SPEC §2)."""
    loss = -F.logsigmoid(logits)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def _pairwise_logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected, margin_offset) -> Tensor:
    """h = [π(y_w) − ref(y_w)] − [π(y_l) − ref(y_l)], after checking all inputs (SPEC §1)."""
    _check_tensors(
        1,
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
        margin_offset=margin_offset,
    )
    return (_as_float(policy_chosen) - _as_float(ref_chosen)) - (_as_float(policy_rejected) - _as_float(ref_rejected))


def _minus_offset(logits: Tensor, margin_offset: Optional[Tensor]) -> Tensor:
    return logits if margin_offset is None else logits - _as_float(margin_offset).detach()


# ----------------------------------------------------------------------------------------------------------------------
# Pairwise losses (SPEC §2)
# ----------------------------------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    margin_offset: Optional[Tensor] = None,
) -> Tensor:
    """DPO (Rafailov et al. 2023, Eq. 7), with cDPO label smoothing and an optional per-pair margin.

    ``loss = −(1−ε)·log σ(β·h − m) − ε·log σ(−(β·h − m))``, ``h = (S_θ(y_w) − S_ref(y_w)) − (S_θ(y_l) − S_ref(y_l))``.

    Inputs are **summed** log-probs, each ``[B]``; ``margin_offset`` ``[B]`` (γ-DPO passes ``γ_i − γ0``, SPEC §5).
    Returns ``[B]``. ε = 0 gives plain DPO; at h = 0 and m = 0 the loss is ln 2.
    """
    _check_positive(beta=beta)
    _check_label_smoothing(label_smoothing)
    logratio = _pairwise_logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected, margin_offset)
    return _smoothed_logistic(_minus_offset(beta * logratio, margin_offset), label_smoothing)


def ipo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    tau: float,
    margin_offset: Optional[Tensor] = None,
) -> Tensor:
    """IPO (Azar et al. 2023, Eq. 17): ``loss = (h̄ − m − 1/(2τ))²``.

    Inputs are **length-averaged** log-probs ``[B]`` (h̄ uses A instead of S — the convention TRL adopted after asking
    the IPO authors, SPEC §2). τ is IPO's regulariser. Returns ``[B]``; at h̄ = 0 the loss is 1/(4τ²).
    """
    _check_positive(tau=tau)
    logratio = _pairwise_logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected, margin_offset)
    return (_minus_offset(logratio, margin_offset) - 1.0 / (2.0 * tau)) ** 2


def hinge_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    margin_offset: Optional[Tensor] = None,
) -> Tensor:
    """SLiC hinge (Zhao et al. 2023): ``loss = max(0, 1 − (β·h − m))``.

    Inputs are **summed** log-probs ``[B]``. Returns ``[B]``.
    """
    _check_positive(beta=beta)
    logratio = _pairwise_logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected, margin_offset)
    return torch.relu(1.0 - _minus_offset(beta * logratio, margin_offset))


def rdpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float,
    alpha: float,
    margin_offset: Optional[Tensor] = None,
) -> Tensor:
    """R-DPO, length-regularised DPO (Park et al. 2024): ``loss = −log σ(β·h − α·(n_w − n_l) − m)``.

    Inputs are **summed** log-probs ``[B]``; ``chosen_lengths`` / ``rejected_lengths`` are the response token counts
    ``[B]``. (The γ-PO repository passes batch sizes here, so its length term is always 0; SPEC §2.) Returns ``[B]``.
    """
    _check_positive(beta=beta)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha (R-DPO length penalty) must be a finite number >= 0, got {alpha!r}")
    logratio = _pairwise_logratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected, margin_offset)
    _check_tensors(1, policy_chosen=policy_chosen, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    length_gap = chosen_lengths.to(logratio.dtype) - rejected_lengths.to(logratio.dtype)
    return -F.logsigmoid(_minus_offset(beta * logratio - alpha * length_gap, margin_offset))


def simpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    beta: float,
    gamma_beta_ratio: float,
    label_smoothing: float = 0.0,
    margin_offset: Optional[Tensor] = None,
) -> Tensor:
    """SimPO (Meng et al. 2024, Eq. 6), reference-free: ``loss = −(1−ε)·log σ(Δ − γ − m) − ε·log σ(−(Δ − γ − m))``.

    ``Δ = β·(A_θ(y_w) − A_θ(y_l))`` and ``γ = β·gamma_beta_ratio``. Inputs are **length-averaged** log-probs ``[B]``.
    With ``margin_offset = γ_i − γ`` this is γ-SimPO, ``−log σ(Δ_i − γ_i)`` (SPEC §5). Returns ``[B]``.
    """
    _check_positive(beta=beta)
    _check_label_smoothing(label_smoothing)
    _check_tensors(1, policy_chosen=policy_chosen, policy_rejected=policy_rejected, margin_offset=margin_offset)
    reward_gap = beta * (_as_float(policy_chosen) - _as_float(policy_rejected))
    logits = _minus_offset(reward_gap - beta * gamma_beta_ratio, margin_offset)
    return _smoothed_logistic(logits, label_smoothing)


def cpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    beta: float,
    nll_weight: float = 1.0,
    label_smoothing: float = 0.0,
    margin_offset: Optional[Tensor] = None,
) -> Tensor:
    """CPO (Xu et al. 2024, Eq. 6), reference-free: ``loss = −log σ(β·(S_w − S_l) − m) − λ·S_w``.

    The second term is λ times the NLL of the chosen response. Inputs are **summed** log-probs ``[B]``;
    ``nll_weight`` is λ; label smoothing as in :func:`dpo_loss`. Returns ``[B]``.
    """
    _check_positive(beta=beta)
    _check_label_smoothing(label_smoothing)
    if not (nll_weight >= 0):
        raise ValueError(f"nll_weight must be >= 0, got {nll_weight!r}")
    _check_tensors(1, policy_chosen=policy_chosen, policy_rejected=policy_rejected, margin_offset=margin_offset)
    chosen, rejected = _as_float(policy_chosen), _as_float(policy_rejected)
    logits = _minus_offset(beta * (chosen - rejected), margin_offset)
    return _smoothed_logistic(logits, label_smoothing) - nll_weight * chosen


def simpo_hinge_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    beta: float,
    gamma_beta_ratio: float,
    margin_offset: Optional[Tensor] = None,
) -> Tensor:
    """SimPO with a hinge instead of the sigmoid (Meng et al. 2024; the ``hinge`` loss type of the SimPO repository),
    reference-free: ``loss = max(0, 1 − (β·(A_θ(y_w) − A_θ(y_l) − gamma_beta_ratio) − m))``.

    Equivalently ``max(0, 1 − (Δ − γ − m))`` with ``Δ = β·(A_w − A_l)`` and ``γ = β·gamma_beta_ratio`` as in
    :func:`simpo_loss`. Inputs are **length-averaged** log-probs ``[B]``; ``margin_offset`` ``[B]`` is subtracted from
    the logit like everywhere else. No label smoothing (SimPO's code ignores it for the hinge). Returns ``[B]``; at
    ``A_w = A_l``, γ = 0 and m = 0 the loss is exactly 1, and it is 0 once ``Δ − γ − m >= 1``.
    """
    _check_positive(beta=beta)
    if not (isinstance(gamma_beta_ratio, (int, float)) and math.isfinite(gamma_beta_ratio)):
        raise ValueError(f"gamma_beta_ratio must be a finite number, got {gamma_beta_ratio!r}")
    _check_tensors(1, policy_chosen=policy_chosen, policy_rejected=policy_rejected, margin_offset=margin_offset)
    logits = beta * (_as_float(policy_chosen) - _as_float(policy_rejected) - gamma_beta_ratio)
    return torch.relu(1.0 - _minus_offset(logits, margin_offset))


def _log_odds(avg_logps: Tensor) -> Tensor:
    """log(p / (1 − p)) with p = exp(A); A is capped just below 0 so that p = 1 stays finite."""
    avg_logps = avg_logps.clamp(max=-1e-6)
    return avg_logps - torch.log(-torch.expm1(avg_logps))


def orpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    odds_ratio_weight: float = 0.1,
    margin_offset: Optional[Tensor] = None,
) -> Tensor:
    """ORPO (Hong et al. 2024, Eq. 6–7), reference-free: ``loss = −A_w − λ·log σ(log odds(y_w) − log odds(y_l) − m)``.

    ``odds(y) = p/(1 − p)`` with ``p = exp(A_θ(y))``. Inputs are **length-averaged** log-probs ``[B]``;
    ``odds_ratio_weight`` is λ (0.1 in the paper). Returns ``[B]``.
    """
    if not (odds_ratio_weight >= 0):
        raise ValueError(f"odds_ratio_weight must be >= 0, got {odds_ratio_weight!r}")
    _check_tensors(1, policy_chosen=policy_chosen, policy_rejected=policy_rejected, margin_offset=margin_offset)
    chosen, rejected = _as_float(policy_chosen), _as_float(policy_rejected)
    logits = _minus_offset(_log_odds(chosen) - _log_odds(rejected), margin_offset)
    return -chosen - odds_ratio_weight * F.logsigmoid(logits)


def sft_loss(policy_chosen: Tensor) -> Tensor:
    """Supervised fine-tuning (SPEC §6.1 step 2): ``loss = −A_θ(y)``, the per-token NLL of the target response.

    Input: **length-averaged** log-probs ``[B]`` of the one response per prompt (the chosen one of a pair). Each
    sequence counts equally; a token-weighted batch mean would weight long responses more. Returns ``[B]``.
    """
    _check_tensors(1, policy_chosen=policy_chosen)
    return -_as_float(policy_chosen)


# ----------------------------------------------------------------------------------------------------------------------
# K-candidate losses: EXO, DPO-K and f-PO (SPEC §3, §4)
# ----------------------------------------------------------------------------------------------------------------------


def _candidate_distributions(
    policy_logps: Tensor,
    ref_logps: Optional[Tensor],
    targets: Optional[Tensor],
    *,
    beta_pi: float,
    beta_r: float,
    setting: str,
    target_floor: Optional[float],
) -> tuple[Tensor, Tensor]:
    """log q and log p over the K candidates of each prompt (SPEC §3).

    ``log q = log_softmax(β_π·(S_θ − S_ref))``. Target: ``rw``: ``log p = log_softmax(r / β_r)``, floored at
    ``target_floor`` when given (f-PO's choice, not renormalised); ``pref``: ``log p = (0, −10)`` (unnormalised).
    ``ref_logps=None`` means a reference-free score (the scores are the policy log-probs themselves).
    """
    _check_positive(beta_pi=beta_pi, beta_r=beta_r)
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    _check_tensors(2, policy_logps=policy_logps, ref_logps=ref_logps)
    batch, k = policy_logps.shape
    if k < 2:
        raise ValueError(f"need K >= 2 candidates per prompt, got K = {k}")
    if targets is not None:
        _check_tensors(2, policy_logps=policy_logps, targets=targets)
    scores = _as_float(policy_logps)
    if ref_logps is not None:
        scores = scores - _as_float(ref_logps)
    log_q = torch.log_softmax(beta_pi * scores, dim=-1)

    if setting == "pref":
        if k != 2:
            raise ValueError(f'setting="pref" takes exactly K = 2 columns (chosen, rejected), got K = {k}')
        if targets is not None and not bool((targets[:, 0] > targets[:, 1]).all()):
            raise ValueError(
                'setting="pref" expects column 0 = chosen and column 1 = rejected, but some rows have '
                "targets[:, 0] <= targets[:, 1]; swap the columns or pass targets=None"
            )
        log_p = log_q.new_tensor([0.0, PREF_TARGET_LOG_EPS]).expand(batch, 2)
    else:
        if targets is None:
            raise ValueError('setting="rw" needs targets: the reward-model scores, shape [B, K]')
        log_p = torch.log_softmax(_as_float(targets).to(log_q.dtype).detach() / beta_r, dim=-1)
        if target_floor is not None:
            log_p = log_p.clamp(min=target_floor)
    return log_q, log_p


def _xlogy_exp(log_x: Tensor, y: Tensor) -> Tensor:
    """exp(log_x)·y, written so that x → 0 gives 0 rather than 0·(−inf)."""
    return torch.exp(log_x) * y


def _fdivergence_terms(log_q: Tensor, log_p: Tensor, divergence: str, alpha: Optional[float]) -> Tensor:
    """Per-candidate terms p_i·f(q_i/p_i) of D_f(q‖p) (SPEC §4), all in log space so that no u = q/p overflows."""
    log_u = log_q - log_p
    q, p = log_q.exp(), log_p.exp()
    if divergence == "alpha":
        # p·f(u) = [p·u^{1−α} − (1−α)·q − α·p] / (α(α−1)), and p·u^{1−α} = exp(α·log p + (1−α)·log q).
        mixed = torch.exp(alpha * log_p + (1.0 - alpha) * log_q)
        return (mixed - (1.0 - alpha) * q - alpha * p) / (alpha * (alpha - 1.0))
    if divergence == "js":
        # p·f(u) = ½ q log q + ½ p log p − m log m − (terms that cancel), m = (q + p)/2; summed this is
        # ½KL(q‖m) + ½KL(p‖m).
        log_m = torch.logaddexp(log_q, log_p) - math.log(2.0)
        return 0.5 * _xlogy_exp(log_q, log_q) + 0.5 * _xlogy_exp(log_p, log_p) - _xlogy_exp(log_m, log_m)
    if divergence == "jeffreys":
        return (q - p) * log_u  # p·(u − 1)·log u
    if divergence == "hellinger":
        return q - 2.0 * torch.exp(0.5 * (log_q + log_p)) + p  # p·(√u − 1)², no ½ factor
    if divergence == "kl_q_p":
        return _xlogy_exp(log_q, log_u)  # p·u·log u = q·log(q/p)
    if divergence == "kl_p_q":
        return -p * log_u  # p·(−log u)
    raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")


def exo_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    targets: Optional[Tensor],
    *,
    beta_pi: float,
    beta_r: float = 1.0,
    setting: str = "rw",
    target_floor: Optional[float] = None,
) -> Tensor:
    """EXO (Ji et al. 2024, Eq. 9 / 16): ``loss = KL(q‖p) = Σ_i q_i·(log q_i − log p_i)``.

    ``q = softmax(β_π·(S_θ − S_ref))`` over the K candidates; ``p`` is the target of SPEC §3 (``rw``:
    ``softmax(r/β_r)``, optionally floored at ``target_floor`` — EXO's own code does not floor; ``pref``: (1, e^−10)
    with column 0 chosen). EXO's paper calls this direction "reverse KL"; it is the mode-seeking fit of q to p.

    Inputs: **summed** log-probs ``[B, K]``; ``targets`` ``[B, K]`` rewards (``rw``) or ``None`` (``pref``).
    Returns ``[B]``.
    """
    log_q, log_p = _candidate_distributions(
        policy_logps, ref_logps, targets, beta_pi=beta_pi, beta_r=beta_r, setting=setting, target_floor=target_floor
    )
    return _fdivergence_terms(log_q, log_p, "kl_q_p", None).sum(dim=-1)


def dpo_k_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    targets: Optional[Tensor],
    *,
    beta_pi: float,
    beta_r: float = 1.0,
    setting: str = "rw",
    target_floor: Optional[float] = None,
) -> Tensor:
    """DPO over K candidates (EXO paper, Eq. 10): cross-entropy ``loss = −Σ_i p_i·log q_i``.

    Same ``q`` and ``rw`` target as :func:`exo_loss`. In the ``pref`` setting ``p`` is the label vector (1, 0) itself,
    so with ``β_π = β`` this is exactly :func:`dpo_loss` (SPEC §3). Inputs: **summed** log-probs ``[B, K]``.
    Returns ``[B]``.
    """
    log_q, log_p = _candidate_distributions(
        policy_logps, ref_logps, targets, beta_pi=beta_pi, beta_r=beta_r, setting=setting, target_floor=target_floor
    )
    if setting == "pref":
        return -log_q[:, 0]
    return -(log_p.exp() * log_q).sum(dim=-1)


def fdivergence_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    targets: Optional[Tensor],
    *,
    divergence: str,
    alpha: Optional[float] = None,
    beta_pi: float,
    beta_r: float = 1.0,
    setting: str = "rw",
    target_floor: Optional[float] = -10.0,
) -> Tensor:
    """f-PO (Han et al. 2025, Eq. 7): ``loss = D_f(q‖p) = Σ_i p_i·f(q_i / p_i)`` over the K candidates.

    ``q`` and ``p`` are those of :func:`exo_loss`, except that the ``rw`` target is floored at −10 by default
    (f-PO's code; pass ``target_floor=None`` for EXO's unfloored target). ``divergence`` picks f (SPEC §4):

    ============  =====================================================  ===================================
    name          f(u)                                                   note
    ============  =====================================================  ===================================
    ``alpha``     (u^{1−α} − (1−α)u − α) / (α(α−1)),  α ∈ (0, 1)         α→0: ``kl_q_p``; α→1: ``kl_p_q``
    ``js``        ½u·log u − ((u+1)/2)·log((u+1)/2)                      Jensen–Shannon
    ``jeffreys``  (u − 1)·log u                                          KL(q‖p) + KL(p‖q)
    ``hellinger`` (√u − 1)²                                              squared Hellinger, no ½
    ``kl_q_p``    u·log u                                                = EXO (mode-seeking)
    ``kl_p_q``    −log u                                                 = DPO-K + const (mass-covering)
    ============  =====================================================  ===================================

    The full f, constants included, is used: at α = 0.99, zero margin, pref target the loss is ≈ 0.6972, and every
    divergence is minimised at a margin of exactly 10 under the pref target. Inputs: **summed** log-probs ``[B, K]``.
    Returns ``[B]``.
    """
    if divergence not in DIVERGENCES:
        close = difflib.get_close_matches(str(divergence), DIVERGENCES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown divergence {divergence!r}{hint}; choose one of {', '.join(DIVERGENCES)}")
    if divergence == "alpha":
        _check_alpha(alpha)
    log_q, log_p = _candidate_distributions(
        policy_logps, ref_logps, targets, beta_pi=beta_pi, beta_r=beta_r, setting=setting, target_floor=target_floor
    )
    return _fdivergence_terms(log_q, log_p, divergence, alpha).sum(dim=-1)


def alphapo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    alpha: float,
    beta: float,
    gamma_beta_ratio: float,
    margin_offset: Optional[Tensor] = None,
) -> Tensor:
    """Reference-free α-PO, the f-PO loss of the Llama-3 / Mistral configs (SPEC §4).

    Scores ``z_w = β·(A_θ(y_w) − gamma_beta_ratio) − m`` and ``z_l = β·A_θ(y_l)``, ``q = softmax(z_w, z_l)`` so that
    ``q_w = σ(Δ − γ − m)``; target (1, e^−10); loss = α-divergence ``D_α(q‖p)`` of :func:`fdivergence_loss`.
    As α → 1 it tends to SimPO (up to the e^−10 label). Inputs are **length-averaged** log-probs ``[B]``.
    Returns ``[B]``.
    """
    _check_alpha(alpha)
    _check_positive(beta=beta)
    _check_tensors(1, policy_chosen=policy_chosen, policy_rejected=policy_rejected, margin_offset=margin_offset)
    chosen_score = _minus_offset(beta * (_as_float(policy_chosen) - gamma_beta_ratio), margin_offset)
    rejected_score = beta * _as_float(policy_rejected)
    scores = torch.stack([chosen_score, rejected_score], dim=-1)
    return fdivergence_loss(scores, None, None, divergence="alpha", alpha=alpha, beta_pi=1.0, setting="pref")


# ----------------------------------------------------------------------------------------------------------------------
# Registry: configs name a loss by string
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter of a loss: its default (``REQUIRED`` if none) and the check its value must pass."""

    default: Any
    check: Callable[[Any], bool]
    rule: str  # what a valid value looks like, for the error message
    help: str = ""
    #: False: when not given, the key is left out of the resolved dict (its default is the loss's own convention,
    #: read back by the LossSpec itself); used by ``length_norm`` so that existing resolved dicts stay unchanged
    filled: bool = True


REQUIRED = object()

_positive = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0, "> 0")
_nonneg = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0, ">= 0")
_finite = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), "a finite number")
_open_unit = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1, "in the open interval (0, 1)")
_smoothing = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 0.5, "in [0, 0.5)")
_setting = (lambda v: v in SETTINGS, f"one of {SETTINGS}")
_divergence = (lambda v: v in DIVERGENCES, f"one of {DIVERGENCES}")
_floor = (lambda v: v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v < 0), "null or a number < 0")
_bool = (lambda v: isinstance(v, bool), "true or false")

#: The hyper-parameter that picks averaged (A = S/n) or summed (S) log-probs; handled by :class:`LossSpec` itself.
LENGTH_NORM = "length_norm"


def _length_norm_hparam(averaged: bool) -> HParam:
    convention = "averaged" if averaged else "summed"
    return HParam(
        default=averaged,
        check=_bool[0],
        rule=_bool[1],
        help=(f"true: feed length-averaged log-probs A = S/n, false: summed S (default: this loss's own convention, "
              f"{convention}); true reproduces the γ-PO repository's length_norm (its XPOTrainer defaults to true "
              f"for DPO / γ-DPO) and its averaged cpo"),
        filled=False,
    )


def _hp(default: Any, rule: tuple, help: str = "") -> HParam:
    return HParam(default=default, check=rule[0], rule=rule[1], help=help)


_BETA = _hp(REQUIRED, _positive, "inverse temperature β of the implicit reward")
_LABEL_SMOOTHING = _hp(0.0, _smoothing, "ε of cDPO: probability that a label is flipped")
_GAMMA_BETA_RATIO = _hp(REQUIRED, _finite, "target margin γ divided by β (SimPO)")
_K_CANDIDATE = {
    "beta_pi": _hp(REQUIRED, _positive, "β_π: inverse temperature of the policy distribution over candidates"),
    "beta_r": _hp(1.0, _positive, "β_r: temperature of the reward target softmax (rw setting)"),
    "setting": _hp("rw", _setting, "rw: reward-model scores over K candidates; pref: one (chosen, rejected) pair"),
}


@dataclass(frozen=True)
class PreferenceBatch:
    """The per-sequence quantities of one micro-batch that every loss reads (SPEC §1): B prompts, K responses each.

    Pairs have K = 2 with the chosen response first; K-candidate groups carry their scores in ``targets``; SFT reads
    the first response only. Every tensor is ``[B, K]`` unless said otherwise.

    policy_logps: summed log-probs S_θ(y) of the policy.
    lengths: response token counts n (the divisor of the averaged log-prob A = S/n).
    targets: the rewards or labels of the responses (pairs: ``[1, 0]``; rw: reward-model scores).
    ref_logps: summed log-probs S_ref(y) of the reference; None for reference-free losses.
    margin_offsets: ``[B]``, γ-PO's per-pair offsets γ_i − γ0 (SPEC §5); None otherwise.
    """

    policy_logps: Tensor
    lengths: Tensor
    targets: Tensor
    ref_logps: Optional[Tensor] = None
    margin_offsets: Optional[Tensor] = None


@dataclass(frozen=True)
class LossOutput:
    """What :meth:`LossSpec.__call__` returns, in the way torchtune's ``DPOLoss.forward`` returns
    ``(losses, chosen_rewards, rejected_rewards)``.

    losses: ``[B]``, one loss per prompt (the caller reduces).
    chosen_rewards, rejected_rewards: ``[B]``, detached, in the method's own implicit-reward definition (SPEC §1),
        of the preferred and dispreferred response (K-candidate groups: the best and worst by ``targets``); None
        for SFT, which has no preference.
    chosen_index, rejected_index: ``[B]`` long, which of the K responses those are (pairs: 0 and 1).
    """

    losses: Tensor
    chosen_rewards: Optional[Tensor] = None
    rejected_rewards: Optional[Tensor] = None
    chosen_index: Optional[Tensor] = None
    rejected_index: Optional[Tensor] = None


#: The three shapes of data a loss reads, and how its pure function is called on a (prepared) batch:
#: ``pair``: fn(policy_chosen, policy_rejected[, ref_chosen, ref_rejected], **hp, margin_offset=...), K = 2;
#: ``pair_lengths``: the same plus (chosen_lengths, rejected_lengths) after the reference (R-DPO);
#: ``group``: fn(policy_logps, ref_logps, targets, **hp) on [B, K];  ``single``: fn(policy_chosen) on the first response.
INPUT_KINDS = ("pair", "pair_lengths", "group", "single")


@dataclass(frozen=True)
class LossSpec:
    """What the trainer needs to know about a loss, so that no ``if name == ...`` chain is needed anywhere."""

    name: str
    fn: Callable[..., Tensor]
    needs_reference: bool
    averaged_inputs: bool  # the loss's own convention: True: the function takes A(y) = S(y)/n; False: S(y)
    inputs: str  # one of INPUT_KINDS
    hparams: dict[str, HParam] = field(default_factory=dict)
    dynamic_margins: bool = False  # γ-PO: the caller passes margin_offsets from DynamicMargins (SPEC §5)
    #: hyper-parameters that configure the margins, not the function (γ-DPO's gamma_beta_ratio sets γ0 only)
    margin_hparams: tuple[str, ...] = ()
    reward_scale: Optional[str] = "beta"  # hyper-parameter that scales the implicit reward (None: scale 1)
    description: str = ""

    @property
    def group(self) -> bool:
        """True when the loss takes [B, K] candidate groups (EXO, DPO-K, f-PO)."""
        return self.inputs == "group"

    @property
    def takes_length_norm(self) -> bool:
        """True when the loss accepts the ``length_norm`` hyper-parameter (averaged or summed inputs)."""
        return LENGTH_NORM in self.hparams

    def averages(self, resolved: Optional[dict[str, Any]] = None) -> bool:
        """Whether the function receives averaged log-probs A = S/n (True) or summed S (False): ``length_norm`` when
        given, else the loss's own convention :attr:`averaged_inputs`."""
        resolved = resolved or {}
        if LENGTH_NORM not in resolved:
            return self.averaged_inputs
        if not self.takes_length_norm:
            raise ValueError(f"loss {self.name!r} does not take {LENGTH_NORM!r} (its inputs are fixed)")
        value = resolved[LENGTH_NORM]
        if not _bool[0](value):
            raise ValueError(f"loss {self.name!r}: {LENGTH_NORM} must be {_bool[1]}, got {value!r}")
        return value

    def resolve_hparams(self, values: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Defaults filled in; unknown, missing or out-of-range values raise a ValueError that says what to write."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(self.hparams))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, list(self.hparams), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"loss {self.name!r} does not take {', '.join(hints)}; its hyper-parameters are: "
                f"{', '.join(self.hparams) or 'none'}"
            )
        resolved = {}
        for key, spec in self.hparams.items():
            if key not in values:
                if spec.default is REQUIRED:
                    raise ValueError(f"loss {self.name!r} needs {key!r} ({spec.help}; {spec.rule})")
                if spec.filled:
                    resolved[key] = spec.default
                continue
            value = values[key]
            if not spec.check(value):
                raise ValueError(f"loss {self.name!r}: {key} must be {spec.rule}, got {value!r}")
            resolved[key] = value
        if resolved.get("divergence") == "alpha" and resolved.get("alpha") is None:
            raise ValueError(f"loss {self.name!r}: divergence 'alpha' needs alpha in the open interval (0, 1)")
        return resolved

    def loss_kwargs(self, resolved: dict[str, Any]) -> dict[str, Any]:
        """The resolved hyper-parameters that :attr:`fn` takes as keywords (all but :attr:`margin_hparams` and
        ``length_norm``, which the spec applies to the inputs itself)."""
        return {k: v for k, v in resolved.items() if k not in self.margin_hparams and k != LENGTH_NORM}

    def implicit_rewards(self, resolved: dict[str, Any], policy_logps: Tensor, ref_logps: Optional[Tensor]) -> Tensor:
        """Each method's own implicit reward (SPEC §1): scale·(policy − reference), or scale·policy when
        reference-free, where scale is β (β_π for the K-candidate losses). Detached: for logging and γ-PO gaps.
        Takes the log-probs the function takes: averaged when :meth:`averages` ``(resolved)``, else summed (what
        :meth:`__call__` and :meth:`reward_gaps` pass, so the rewards follow the chosen convention)."""
        scale = float(resolved[self.reward_scale]) if self.reward_scale else 1.0
        score = policy_logps if ref_logps is None else policy_logps - ref_logps
        return scale * score.detach()

    def static_margin(self, resolved: dict[str, Any]) -> float:
        """The fixed target margin γ = β·gamma_beta_ratio of SimPO-style losses (0 for losses without one)."""
        if "gamma_beta_ratio" not in resolved:
            return 0.0
        return float(resolved["beta"]) * float(resolved["gamma_beta_ratio"])

    def gamma0(self, resolved: dict[str, Any]) -> float:
        """γ0 = β·gamma_beta_ratio, the mean target margin of γ-PO (SPEC §5)."""
        if not self.dynamic_margins:
            raise ValueError(f"loss {self.name!r} has no dynamic margins")
        return self.static_margin(resolved)

    # -- the one loss interface: a PreferenceBatch in, a LossOutput out ------------------------------------------

    def _inputs(self, batch: PreferenceBatch, resolved: dict[str, Any]) -> tuple[Tensor, Optional[Tensor]]:
        """Policy and reference log-probs ``[B, K]`` as the function takes them (SPEC §1: A = S/n when
        :meth:`averages` ``(resolved)``, else the summed S)."""
        policy, ref = batch.policy_logps, batch.ref_logps
        if self.needs_reference and ref is None:
            raise ValueError(f"loss {self.name!r} needs reference log-probs (batch.ref_logps)")
        ref = ref.to(policy.dtype) if self.needs_reference else None
        if self.averages(resolved):
            lengths = batch.lengths.to(policy.dtype)
            policy, ref = policy / lengths, (ref / lengths if ref is not None else None)
        return policy, ref

    def reward_gaps(self, batch: PreferenceBatch, resolved: dict[str, Any]) -> Tensor:
        """``[B]`` detached r_w − r_l of each pair in the method's own reward (γ-PO's gaps r_i, SPEC §5)."""
        policy, ref = self._inputs(batch, resolved)
        self._check_pairs(policy)
        rewards = self.implicit_rewards(resolved, policy, ref)  # [B, 2]
        return rewards[:, 0] - rewards[:, 1]

    def _check_pairs(self, policy: Tensor) -> None:
        if policy.shape[1] != 2:
            raise ValueError(f"loss {self.name!r} takes (chosen, rejected) pairs, but the data has K = {policy.shape[1]}")

    def __call__(self, batch: PreferenceBatch, resolved: dict[str, Any]) -> LossOutput:
        """Per-prompt losses and the method's own rewards for one batch; ``resolved`` from :meth:`resolve_hparams`."""
        policy, ref = self._inputs(batch, resolved)  # (B, K)
        kwargs = self.loss_kwargs(resolved)
        if self.inputs == "single":  # SFT: only the first response of each prompt is a target
            return LossOutput(self.fn(policy[:, 0], **kwargs))
        if self.dynamic_margins and batch.margin_offsets is None:
            raise ValueError(f"loss {self.name!r} uses γ-PO dynamic margins: pass batch.margin_offsets")
        rows = torch.arange(policy.shape[0], device=policy.device)
        if self.inputs == "group":
            losses = self.fn(policy, ref, batch.targets, **kwargs)
            chosen = batch.targets.argmax(dim=-1)  # best and worst candidate by the target, for the rewards
            rejected = batch.targets.argmin(dim=-1)
        else:
            self._check_pairs(policy)
            args = [policy[:, 0], policy[:, 1]]
            if ref is not None:
                args += [ref[:, 0], ref[:, 1]]
            if self.inputs == "pair_lengths":
                args += [batch.lengths[:, 0], batch.lengths[:, 1]]
            losses = self.fn(*args, margin_offset=batch.margin_offsets, **kwargs)
            chosen = torch.zeros_like(rows)
            rejected = torch.ones_like(rows)
        rewards = self.implicit_rewards(resolved, policy, ref)  # (B, K)
        return LossOutput(losses, rewards[rows, chosen], rewards[rows, rejected], chosen, rejected)


def _spec(name, fn, *, reference, averaged, inputs="pair", dynamic=False, margin_hparams=(), scale="beta",
          length_norm=False, description="", **hparams):
    """One registry entry; ``length_norm=True`` adds the ``length_norm`` hyper-parameter (default: ``averaged``)."""
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {inputs!r}")
    if length_norm:
        if inputs not in ("pair", "pair_lengths"):
            raise ValueError(f"{LENGTH_NORM} is for pairwise losses, not {inputs!r} ones ({name})")
        hparams[LENGTH_NORM] = _length_norm_hparam(averaged)
    return LossSpec(
        name=name,
        fn=fn,
        needs_reference=reference,
        averaged_inputs=averaged,
        inputs=inputs,
        hparams=hparams,
        dynamic_margins=dynamic,
        margin_hparams=tuple(margin_hparams),
        reward_scale=scale,
        description=description,
    )


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in [
        _spec("sft", sft_loss, reference=False, averaged=True, inputs="single", scale=None,
              description="supervised fine-tuning: NLL of the chosen response"),
        _spec("dpo", dpo_loss, reference=True, averaged=False, length_norm=True, beta=_BETA,
              label_smoothing=_LABEL_SMOOTHING, description="DPO / cDPO, sigmoid of β·h"),
        _spec("ipo", ipo_loss, reference=True, averaged=True, length_norm=True, scale=None,
              tau=_hp(REQUIRED, _positive, "IPO regulariser τ"),
              description="IPO, squared loss on averaged log-ratios"),
        _spec("hinge", hinge_loss, reference=True, averaged=False, length_norm=True, beta=_BETA,
              description="SLiC hinge on β·h"),
        _spec("rdpo", rdpo_loss, reference=True, averaged=False, length_norm=True, inputs="pair_lengths", beta=_BETA,
              alpha=_hp(REQUIRED, _nonneg, "R-DPO length penalty α per token of length difference"),
              description="length-regularised DPO"),
        _spec("simpo", simpo_loss, reference=False, averaged=True, length_norm=True, beta=_BETA,
              gamma_beta_ratio=_GAMMA_BETA_RATIO, label_smoothing=_LABEL_SMOOTHING,
              description="SimPO, reference-free, averaged log-probs"),
        _spec("cpo", cpo_loss, reference=False, averaged=False, length_norm=True, beta=_BETA,
              nll_weight=_hp(1.0, _nonneg, "λ: weight of the chosen NLL term"), label_smoothing=_LABEL_SMOOTHING,
              description="CPO, reference-free sigmoid + NLL"),
        _spec("orpo", orpo_loss, reference=False, averaged=True, scale=None,
              odds_ratio_weight=_hp(0.1, _nonneg, "λ: weight of the odds-ratio term"),
              description="ORPO, NLL + odds-ratio term"),
        _spec("exo", exo_loss, reference=True, averaged=False, inputs="group", scale="beta_pi", **_K_CANDIDATE,
              target_floor=_hp(None, _floor, "floor of log p in the rw setting (null: EXO's unfloored target)"),
              description="EXO, KL(q‖p) over K candidates"),
        _spec("dpo_k", dpo_k_loss, reference=True, averaged=False, inputs="group", scale="beta_pi", **_K_CANDIDATE,
              target_floor=_hp(None, _floor, "floor of log p in the rw setting"),
              description="DPO over K candidates, cross-entropy −Σ p log q"),
        _spec("fpo", fdivergence_loss, reference=True, averaged=False, inputs="group", scale="beta_pi", **_K_CANDIDATE,
              divergence=_hp(REQUIRED, _divergence, "which f-divergence"),
              alpha=_hp(None, (lambda v: v is None or _open_unit[0](v), "null or in the open interval (0, 1)"),
                        "α of the α-divergence (divergence: alpha only)"),
              target_floor=_hp(-10.0, _floor, "floor of log p in the rw setting (f-PO code: -10)"),
              description="f-PO, D_f(q‖p) over K candidates"),
        _spec("alphapo", alphapo_loss, reference=False, averaged=True, length_norm=True,
              alpha=_hp(REQUIRED, _open_unit, "α of the α-divergence"), beta=_BETA,
              gamma_beta_ratio=_GAMMA_BETA_RATIO, description="reference-free α-PO (f-PO LLM configs)"),
        _spec("gamma_simpo", simpo_loss, reference=False, averaged=True, length_norm=True, dynamic=True, beta=_BETA,
              gamma_beta_ratio=_GAMMA_BETA_RATIO, label_smoothing=_LABEL_SMOOTHING,
              description="γ-SimPO: SimPO with dynamic per-pair margins (τ: margins.tau)"),
        _spec("gamma_dpo", dpo_loss, reference=True, averaged=False, length_norm=True, dynamic=True,
              margin_hparams=("gamma_beta_ratio",), beta=_BETA, gamma_beta_ratio=_GAMMA_BETA_RATIO,
              label_smoothing=_LABEL_SMOOTHING,
              description="γ-DPO: DPO with zero-mean dynamic margin offsets γ_i − γ0 (τ: margins.tau)"),
        _spec("simpo_hinge", simpo_hinge_loss, reference=False, averaged=True, length_norm=True, beta=_BETA,
              gamma_beta_ratio=_GAMMA_BETA_RATIO,
              description="SimPO with a hinge, max(0, 1 − β·(A_w − A_l − γ/β)) (SimPO repository's hinge)"),
    ]
}


def get_loss_spec(name: str) -> LossSpec:
    """The registry entry for ``name``, or a ValueError that lists the valid names."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(LOSSES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown loss {name!r}.{hint} Valid losses: {', '.join(LOSSES)}") from None
