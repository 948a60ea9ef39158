"""γ-PO dynamic target margins (Sun et al. 2025, Algorithms 1 and 2; SPEC §5).

Each training pair i has a detached reward gap ``r_i`` (SimPO: ``Δ_i``; DPO: ``β·h_i``). γ-PO gives it a margin
``γ_i = γ0·N·p_i`` where ``p`` solves, over a pool of N gaps,

    minimise_{p ∈ simplex}  (1/N)·Σ_i −log σ(r_i − γ_i) + τ·Σ_i p_i·log(N·p_i)

so pairs the model already separates well (large ``r_i``) get larger margins, ambiguous or mislabelled ones smaller
margins, and the KL term (strength τ) keeps the allocation near uniform. The margins average exactly γ0.

The solver is the official code's exponentiated-gradient loop, including its ``1e-10`` inside the log of the KL
gradient. Its default differs from the official loop in exactly one way: it returns the iterate after ``iters``
updates, whereas the official loop computes γ at the top of each pass, before updating p, and so returns the iterate
after ``iters − 1`` updates. ``faithful=True`` returns that iterate and reproduces the official loop to float tolerance.

:func:`solve_margins` is the solver; :class:`DynamicMargins` keeps the FIFO queue of past gaps that Algorithm 2 pools
with the current batch, and its state for checkpoints.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import torch

Tensor = torch.Tensor

#: Relative fixed-point residual (max |γ − γ*| / γ0) above which the last iterate counts as not converged.
CONVERGENCE_TOLERANCE = 1e-2
#: The ``eps`` the official code adds inside the log of the KL gradient, ``τ(1 + log(N·(p_i + eps)))`` (SPEC §5).
#: Both solver modes use it, so the default differs from the official loop only in which iterate it returns.
KL_LOG_EPS = 1e-10
#: Size of the initial queue of N(0, 1) draws in the official code (``faithful=True`` only).
FAITHFUL_QUEUE_SEED_SIZE = 8


class MarginSolverWarning(UserWarning):
    """The exponentiated-gradient iteration ended far from its fixed point (γ0/τ too large for ``iters`` steps)."""


def _check_gaps(gaps: Tensor, name: str = "gaps") -> None:
    if not isinstance(gaps, torch.Tensor) or gaps.dim() != 1:
        shape = tuple(gaps.shape) if isinstance(gaps, torch.Tensor) else type(gaps).__name__
        raise ValueError(f"{name} must be a 1-D tensor of per-pair reward gaps, got {shape}")
    if gaps.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(gaps).all()):
        raise ValueError(f"{name} contains NaN or inf: the reward gaps of this batch are not finite")


def _check_hparams(gamma0: float, tau: float, iters: int) -> None:
    for key, value in (("gamma0", gamma0), ("tau", tau)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
    if not (isinstance(iters, int) and iters >= 1):
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")


def solve_margins(gaps: Tensor, *, gamma0: float, tau: float, iters: int = 20, faithful: bool = False) -> Tensor:
    """Per-pair margins γ for a pool of detached reward gaps (γ-PO Alg. 1; SPEC §5).

    Exponentiated gradient on the simplex, as in the official code: ``p`` starts uniform and is updated by
    ``p ← p·exp(−η·g) / Σ``, ``η = min(0.5/τ, 1)``, with ``g_i = τ(1 + log(N·(p_i + 1e-10))) + γ0·σ(γ_i − r_i)`` and
    ``γ_i = γ0·N·p_i`` (the ``1e-10`` is :data:`KL_LOG_EPS`, the official code's eps; computed in log space as
    ``log N + logaddexp(log p_i, log 1e-10)``). Returns ``γ0·N·p`` of one iterate: shape and dtype of ``gaps``, no
    gradient; computed in float64.

    Which iterate is the one difference between the modes. The official loop runs ``iters`` passes but computes γ at
    the top of each pass, before that pass updates p, so it returns the iterate after ``iters − 1`` updates;
    ``faithful=True`` returns exactly that iterate and so reproduces the official loop (``iters=1`` gives the uniform
    γ0). The default returns the iterate after ``iters`` updates, one step further towards the fixed point: at the
    four paper configs this changes the margins by at most ~1e-6·γ0 (measured), and by O(γ0) where it oscillates.

    Guarantees: mean γ = γ0 (exactly, up to rounding); max γ / min γ ≤ exp(γ0/τ) at every iterate; at convergence
    ``γ_i = N·γ0·softmax_i(−(γ0/τ)·σ(γ_i − r_i))``, which is increasing in ``r_i``. When the returned iterate is not
    near that fixed point, a :class:`MarginSolverWarning` is emitted. That happens once γ0/τ exceeds about 2 at τ ≈ 1,
    and earlier for large τ (γ0 = 15, τ = 10 already oscillates) or for τ < 0.5, where the step size is capped at 1;
    all four γ-PO paper configs converge to a residual below 1e-6·γ0.
    """
    _check_gaps(gaps)
    _check_hparams(gamma0, tau, iters)
    reward_gaps = gaps.detach().to(torch.float64)  # N ≤ a few hundred: float64 costs nothing and keeps mean = γ0
    n = reward_gaps.numel()
    step_size = min(0.5 / tau, 1.0)
    log_n, log_eps = math.log(n), math.log(KL_LOG_EPS)
    log_p = torch.full_like(reward_gaps, -log_n)
    # The official loop's last pass updates p after γ has been read, so that update never reaches its output.
    n_updates = iters - 1 if faithful else iters
    for _ in range(n_updates):
        margins = gamma0 * n * log_p.exp()
        log_n_p_eps = log_n + torch.logaddexp(log_p, torch.full_like(log_p, log_eps))  # log(N·(p + eps))
        grad = tau * (1.0 + log_n_p_eps) + gamma0 * torch.sigmoid(margins - reward_gaps)
        log_p = torch.log_softmax(log_p - step_size * grad, dim=0)  # = p·exp(−η g) / Σ, in log space
    margins = gamma0 * n * log_p.exp()

    fixed_point = n * gamma0 * torch.softmax(-(gamma0 / tau) * torch.sigmoid(margins - reward_gaps), dim=0)
    residual = float((margins - fixed_point).abs().max()) / gamma0
    if residual > CONVERGENCE_TOLERANCE:
        warnings.warn(
            f"γ-PO margin solver did not converge in {n_updates} updates (fixed-point residual {residual:.3g}·γ0 "
            f"with γ0 = {gamma0:.3g}, τ = {tau:.3g}); the margins oscillate. Raise tau relative to "
            f"γ0 = β·gamma_beta_ratio, or raise iters.",
            MarginSolverWarning,
            stacklevel=2,
        )
    return margins.to(device=gaps.device, dtype=gaps.dtype)


class DynamicMargins:
    """γ-PO's per-pair margins with a FIFO queue of past gaps (γ-PO Alg. 2; SPEC §5).

    Each call pools the current gaps (placed last) with up to ``pool_size − B`` gaps sampled without replacement from
    a queue of the last ``queue_size`` detached gaps, solves :func:`solve_margins` on the pool and returns the current
    pairs' margins; then the current gaps join the queue.

    Defaults are the corrected behaviour; ``faithful=True`` reproduces the official code: the queue starts with 8 draws
    of N(0, 1), evaluation calls solve and push like training ones, and the margins are the solver's iterate before
    its last update (``solve_margins(..., faithful=True)``, the official loop's output). Otherwise the queue starts
    empty and an evaluation call (``training=False``) leaves the queue and the random generator untouched, pooling
    with the newest queue entries instead of a random sample.

    Data parallel: pass ``world_gaps`` (one 1-D tensor per rank, gathered in rank order, ``world_gaps[rank]`` equal
    to ``gaps``) to pool the gaps of all ranks; every rank then solves the same pool, pushes the same gaps and, given
    the same seed, keeps an identical queue. Without it each rank keeps its own queue, as the official code does.

    ``state_dict()`` / ``load_state_dict()`` carry the queue and the generator state, so a resumed run continues
    with exactly the margins an uninterrupted one would have produced.
    """

    def __init__(
        self,
        gamma0: float,
        tau: float,
        queue_size: int = 2048,
        pool_size: int = 256,
        faithful: bool = False,
        seed: int = 0,
        iters: int = 20,
    ):
        _check_hparams(gamma0, tau, iters)
        for key, value in (("queue_size", queue_size), ("pool_size", pool_size)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        self.gamma0, self.tau, self.iters = float(gamma0), float(tau), iters
        self.queue_size, self.pool_size, self.faithful, self.seed = queue_size, pool_size, bool(faithful), seed
        self.generator = torch.Generator().manual_seed(seed)
        self.queue = torch.empty(0, dtype=torch.float64)
        if self.faithful:
            self.queue = torch.randn(FAITHFUL_QUEUE_SEED_SIZE, generator=self.generator, dtype=torch.float64)
        self.last_pool_size = 0  # how many gaps the last solve saw, for logging

    def __call__(
        self,
        gaps: Tensor,
        *,
        training: bool = True,
        world_gaps: Optional[Sequence[Tensor]] = None,
        rank: int = 0,
    ) -> Tensor:
        """Margins γ_i for this micro-batch's detached gaps ``[B]``; same shape, dtype and device as ``gaps``."""
        _check_gaps(gaps)
        if world_gaps is None:
            current, start = gaps, 0
        else:
            if not 0 <= rank < len(world_gaps):
                raise ValueError(f"rank {rank} is outside world_gaps of length {len(world_gaps)}")
            for i, rank_gaps in enumerate(world_gaps):
                _check_gaps(rank_gaps, name=f"world_gaps[{i}]")
            mine = world_gaps[rank].detach().to(gaps.device, gaps.dtype)
            if mine.shape != gaps.shape or not torch.equal(mine, gaps.detach()):
                raise ValueError(f"world_gaps[{rank}] must equal this rank's gaps (gather them in rank order)")
            current = torch.cat([g.detach().reshape(-1).cpu() for g in world_gaps])
            start = sum(int(g.numel()) for g in world_gaps[:rank])
        current = current.detach().to("cpu", torch.float64)

        update = training or self.faithful
        n_extra = min(max(self.pool_size - current.numel(), 0), self.queue.numel())
        if n_extra == 0:
            sampled = self.queue[:0]
        elif update:
            sampled = self.queue[torch.randperm(self.queue.numel(), generator=self.generator)[:n_extra]]
        else:
            sampled = self.queue[-n_extra:]  # evaluation: deterministic, consumes no randomness
        pool = torch.cat([sampled, current])
        self.last_pool_size = pool.numel()
        margins = solve_margins(
            pool, gamma0=self.gamma0, tau=self.tau, iters=self.iters, faithful=self.faithful
        )[-current.numel():]
        if update:
            self.queue = torch.cat([self.queue, current])[-self.queue_size:]
        return margins[start : start + gaps.numel()].to(device=gaps.device, dtype=gaps.dtype)

    _CONFIG_KEYS = ("gamma0", "tau", "queue_size", "pool_size", "faithful", "iters")

    def state_dict(self) -> dict:
        state = {key: getattr(self, key) for key in self._CONFIG_KEYS}
        state.update(queue=self.queue.clone(), generator_state=self.generator.get_state(), seed=self.seed)
        return state

    def load_state_dict(self, state: dict) -> None:
        mismatched = [k for k in self._CONFIG_KEYS if k in state and state[k] != getattr(self, k)]
        if mismatched:
            details = ", ".join(f"{k}: saved {state[k]!r} vs now {getattr(self, k)!r}" for k in mismatched)
            raise ValueError(f"γ-PO margin state was saved with other settings ({details}); resume with the same ones")
        self.queue = state["queue"].detach().to("cpu", torch.float64).clone()
        self.generator.set_state(state["generator_state"])
        self.seed = state.get("seed", self.seed)

    def __repr__(self) -> str:
        return (
            f"DynamicMargins(gamma0={self.gamma0}, tau={self.tau}, queue={self.queue.numel()}/{self.queue_size}, "
            f"pool_size={self.pool_size}, faithful={self.faithful})"
        )
