"""Log-norm control of neural ODE flows (§1.2; De Marinis, Guglielmi, Sicilia, Tudisco).

For the block ``ẋ = σ(Ax + b)`` the Jacobian is ``D A`` with ``D = diag(σ'(Ax + b))``, so the
flow over ``[0, T]`` is ``e^{T μ*}``-Lipschitz with ``μ* = max_D μ₂(D A)`` over diagonal ``D``
with entries in the closure of ``σ'(ℝ)`` (:prf:ref:`thm-uniform`).
:func:`worst_case_lognorm` computes ``μ*``; :func:`stabilize` finds a small Frobenius-norm
``Δ`` with ``μ*(A + Δ) ≤ δ`` by the two-level method of the abstract, with cutting planes.

:class:`ODEClassifier` is our reconstruction of the paper's classifier and :class:`StabilizeEachEpoch`
embeds the correction in training.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import _validate, activations, train
from ._stabilize import (
    TRACK_BLOCK,
    TRACK_MIN_N,
    _all_vertices,
    _enumerate,
    _fixed_point,
    _matrix,
    _repair,
    _round,
    _top,
    inner_step,
)
from .odes import EulerResNet, VectorField
from .runtime import progress_enabled

__all__ = [
    "slope_bounds",
    "worst_case_lognorm",
    "lognorm_gradient",
    "inner_step",
    "stabilize",
    "StabilizeResult",
    "StabilizeOptions",
    "StabilizeProblem",
    "StabilizeState",
    "stabilize_slsqp",
    "euler_step_bound",
    "ODEClassifier",
    "stabilize_model",
    "StabilizeEachEpoch",
]

ENUMERATION_MAX_N = 16
KRYLOV_STEPS = 12  # and the cut search judges moves by Lanczos (see _local_maxima)


def slope_bounds(activation) -> tuple[float, float]:
    """The closure ``[s₋, s₊]`` of ``σ'(ℝ)``: that of :data:`labkit.activations.TABLE` (tanh, ReLU
    and softplus ``[0, 1]``, sigmoid ``[0, 1/4]``), leaky ReLU with slope α (``"leaky_relu:0.1"``,
    default α = 0.01) ``[α, 1]``; or a pair (s₋, s₊)."""
    if isinstance(activation, (tuple, list)):
        lo, hi = (float(v) for v in activation)
    elif isinstance(activation, str) and activation.startswith("leaky_relu"):
        _, _, alpha = activation.partition(":")
        a = float(alpha) if alpha else 0.01
        lo, hi = min(a, 1.0), max(a, 1.0)
    elif activation in activations.TABLE:
        lo, hi = activations.get(activation).slopes
    else:
        raise ValueError(
            f"unknown activation {activation!r}; use one of {sorted(activations.TABLE)}, "
            "'leaky_relu:ALPHA' or a pair (low, high) of slope bounds."
        )
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo or hi == 0:
        raise ValueError(f"slope bounds must satisfy 0 <= low <= high, high > 0; got ({lo}, {hi}).")
    return lo, hi


def worst_case_lognorm(A, activation="tanh", *, method: str = "auto", restarts: int = 32, generator=None):
    """``(μ*, D*)``: the largest ``μ₂(D A)`` over diagonal ``D`` with entries in ``[s₋, s₊]``
    (:func:`slope_bounds`), and a maximiser (:prf:ref:`prop-vertex`).

    ``μ₂(DA)`` is convex in ``D``, so the maximum sits at a vertex (entries ``s₋`` or ``s₊``).
    ``method="enumerate"`` checks all ``2ⁿ`` vertices (exact; the default for ``n ≤ 16``);
    ``"fixed_point"`` iterates ``d_i ← s₊ if v_i (A v)_i > 0 else s₋`` from ``restarts`` starts and
    finishes with single flips, a monotone ascent that finds a local maximum, i.e. a lower
    estimate of ``μ*`` (the default for larger ``n``, where it is no certificate).
    """
    M = _matrix(A)
    lo, hi = slope_bounds(activation)
    if method == "auto":
        method = "enumerate" if M.shape[0] <= ENUMERATION_MAX_N else "fixed_point"
    if method == "enumerate":
        if M.shape[0] > 24:
            raise ValueError(f"enumeration of 2^{M.shape[0]} vertices is out of reach; use 'fixed_point'.")
        mus, ds = _enumerate(M, lo, hi)
        mu, d = float(mus[0]), ds[0]
    elif method == "fixed_point":
        mu, d = _fixed_point(M, lo, hi, _validate.positive_int(restarts, "restarts"), generator)
    else:
        raise ValueError(f"method must be 'auto', 'enumerate' or 'fixed_point', got {method!r}.")
    return mu, torch.diag(d)


def lognorm_gradient(D, M):
    """``(μ₂(DM), ∇_M μ₂(DM)) = (λ, D v vᵀ)`` with ``v`` the top unit eigenvector of
    ``sym(DM)`` (:prf:ref:`lem-rank-one`); valid where ``λ`` is simple."""
    d = torch.diagonal(torch.as_tensor(D, dtype=torch.float64))
    w, V = _top(d[None], _matrix(M))
    v = V[0]
    return float(w[0]), torch.outer(d * v, v)


@dataclass
class StabilizeResult:
    """What :func:`stabilize` found: the perturbation ``Δ`` and how it got there."""

    perturbation: torch.Tensor  # Δ, with max_D μ₂(D(A + Δ)) ≤ target
    norm: float  # ‖Δ‖_F
    mu_before: float
    mu_after: float
    target: float  # δ
    iterations: int
    rounds: int
    converged: bool
    working_set: int
    exact: bool
    norm_lower_bound: float = 0.0  # certified: no Δ with ‖Δ‖_F below it meets the target (see stabilize)
    history: list = field(default_factory=list)
    vertices: torch.Tensor | None = None  # the working set's diagonals, one row per vertex
    seconds: float = 0.0  # compute time, summed over the segments of a resumed run (see stabilize)
    repaired: bool = False  # the end game's uniform repair gave the answer (see stabilize)


@dataclass(frozen=True)
class StabilizeOptions:
    """The options of :func:`stabilize` (:prf:ref:`alg-stabilize`; the defaults are the book's).

    ``tol``: feasibility tolerance of a constraint; ``rel_tol`` and ``coarse_tol``: relative width of
    the bracket on ``‖Δ‖_F`` at the end and in the rounds that add vertices; ``max_rounds``: cutting-
    plane rounds; ``inner_maxit``, ``gtol``, ``h0``, ``theta``: the inner flow's iterations,
    stationarity test, first step and step shrink factor; ``method`` and ``restarts``: how ``μ*`` of
    the input is computed (:func:`worst_case_lognorm`) and how many starts the final check takes
    beyond ``n = 16``; ``cuts``, ``cut_restarts``, ``cut_flips``: vertices added per round, random
    starts and flips of the cut search (defaults ``max(4, n // 8)``, ``max(8, n // 8)``, 16);
    ``track``: eigenvectors followed per vertex (default 4 beyond ``n = 16``, else 0)."""

    tol: float = 1e-9
    rel_tol: float = 1e-3
    coarse_tol: float = 1e-2
    max_rounds: int = 1000
    inner_maxit: int = 500
    gtol: float = 1e-3
    h0: float = 1.0
    theta: float = 1.3
    method: str = "auto"
    restarts: int = 32
    cuts: int | None = None
    cut_restarts: int | None = None
    cut_flips: int = 16
    track: int | None = None

    def resolved(self, n: int) -> StabilizeOptions:
        """These options for an ``n × n`` problem: the size-dependent defaults filled in, checked."""
        track = self.track
        if track is None:
            track = TRACK_BLOCK if n > TRACK_MIN_N else 0
        elif track:
            _validate.positive_int(track, "track")
        cuts = max(4, n // 8) if self.cuts is None else _validate.positive_int(self.cuts, "cuts")
        cut_restarts = (
            max(8, n // 8) if self.cut_restarts is None else _validate.positive_int(self.cut_restarts, "cut_restarts")
        )
        return replace(self, track=track, cuts=cuts, cut_restarts=cut_restarts)

    def trajectory(self) -> dict:
        """The options that fix a run's trajectory: all but ``max_rounds`` (a resumed run may be given
        more rounds). A checkpoint is resumed only with the same ones."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "max_rounds"}


@dataclass(frozen=True)
class StabilizeProblem:
    """One problem of :func:`stabilize`: the matrix ``A``, the target ``δ``, the slope bounds
    ``[s₋, s₊]`` of the activation and what follows from them (an internal API; the tests use it)."""

    A: torch.Tensor
    target: float
    lo: float
    hi: float
    exact: bool  # the final check enumerates every vertex
    krylov: int  # Lanczos steps of the cut search (0: dense)

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def can_repair(self) -> bool:
        return self.target > 0 or self.lo > 0

    @property
    def feasible(self) -> torch.Tensor:
        """A feasible ``Δ``: ``A + Δ = −cI`` gives ``μ₂(D(−cI)) = −c·min(d) ≤ δ``."""
        c = max(0.0, -self.target) / self.lo if self.lo > 0 else 0.0
        return -c * torch.eye(self.n, dtype=self.A.dtype) - self.A

    def upper(self, eps, E, fmax):
        """``(‖Δ‖, Δ)`` of the point ``ηE`` repaired for a worst ``μ₂`` of ``fmax``
        (:func:`~labkit._stabilize._repair`), or ``None`` when no repair applies."""
        fixed = _repair(self.A, eps * E, fmax, self.target, self.lo) if self.can_repair else None
        return None if fixed is None else (float(fixed.norm()), fixed)


@dataclass
class StabilizeState:
    """Everything a run of :func:`stabilize` carries from round to round; its checkpoint is exactly
    this object's fields (with the problem and options it belongs to), so saving and loading cannot
    drift apart. ``ds``: the working set (one diagonal per row); ``E``: the current direction;
    ``E_hi`` and ``eps_hi``: the best feasible point ``eps_hi · E_hi``; ``eps_lo``: the bracket's lower
    end; ``certified``: the largest certified lower bound; ``rtol``: the current bracket tolerance;
    ``h``: the inner flow's step; ``round``: rounds done; ``tries``/``next_try``: the end game's
    back-off; ``seconds``: compute time of earlier segments; ``generator``: the random state."""

    ds: torch.Tensor
    E: torch.Tensor
    E_hi: torch.Tensor
    eps_lo: float
    eps_hi: float
    h: float
    certified: float
    rtol: float
    iterations: int = 0
    history: list = field(default_factory=list)
    mu_after: float = math.nan
    round: int = 0
    tries: int = 0
    next_try: int = 0
    seconds: float = 0.0
    generator: torch.Tensor | None = None

    @classmethod
    def start(cls, problem: StabilizeProblem, options: StabilizeOptions, D0, mu0) -> StabilizeState:
        """The state before the first round: the working set holds the worst vertex ``D0`` of ``A``,
        the direction is the descent direction of ``μ₂(D0 ·)``, the bracket is ``[0, ‖feasible‖]``."""
        feasible = problem.feasible
        eps_max = float(feasible.norm())
        _, G0 = lognorm_gradient(D0, problem.A)
        E = -G0 / G0.norm() if float(G0.norm()) > 0 else feasible / eps_max
        return cls(
            ds=torch.diagonal(D0)[None].clone(),
            E=E,
            E_hi=feasible / eps_max,
            eps_lo=0.0,
            eps_hi=eps_max,
            h=options.h0,
            certified=0.0,
            rtol=max(options.coarse_tol, options.rel_tol),
            mu_after=mu0,
        )

    def save(self, path, problem: StabilizeProblem, options: StabilizeOptions, *, seconds: float, generator) -> None:
        """Write the checkpoint atomically (:func:`labkit.train.save_checkpoint`) with the total
        compute time ``seconds`` and the generator's state."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state.update(seconds=seconds, generator=None if generator is None else generator.get_state())
        train.save_checkpoint(
            path,
            {
                "A": problem.A,
                "target": problem.target,
                "bounds": [problem.lo, problem.hi],
                "options": options.trajectory(),
                "state": state,
            },
        )

    @classmethod
    def read(cls, path) -> StabilizeState:
        """The state saved at ``path``, unchecked: to see how far a run got (``round``, ``ds``,
        ``eps_hi``, ``certified``, ``seconds``), not to resume it (that is :meth:`load`)."""
        saved = train.load_checkpoint(path)
        return cls(**saved["state"])

    @classmethod
    def load(cls, path, problem: StabilizeProblem, options: StabilizeOptions) -> StabilizeState:
        """The state saved at ``path``, after checking that it belongs to this problem and options;
        ``ValueError`` naming the file and the reason otherwise."""
        try:
            saved = train.load_checkpoint(path)
        except Exception as err:  # not a checkpoint at all: say so instead of a pickle traceback
            raise ValueError(f"{path} is not a stabilize checkpoint ({err}); remove it or pass another path.") from None
        names = {f.name for f in fields(cls)}
        why = None
        if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) or set(saved["state"]) != names:
            why = "it is not a stabilize checkpoint of this version"
        elif saved["A"].shape != problem.A.shape or not torch.equal(saved["A"], problem.A):
            why = "it was written for another matrix A"
        elif saved["target"] != problem.target or list(saved["bounds"]) != [problem.lo, problem.hi]:
            why = f"it was written for δ={saved['target']}, slopes {saved['bounds']}"
        elif saved["options"] != options.trajectory():
            diff = sorted(k for k, v in options.trajectory().items() if saved["options"].get(k) != v)
            why = f"it was written with other options ({', '.join(diff)})"
        if why:
            raise ValueError(f"cannot resume from {path}: {why}. Remove it or pass another checkpoint path.")
        return cls(**saved["state"])


def _problem(A, target, activation, options: dict) -> tuple[StabilizeProblem, StabilizeOptions]:
    """The checked problem and options of a call to :func:`stabilize`."""
    A = _matrix(A)
    lo, hi = slope_bounds(activation)
    delta = float(target)
    if not math.isfinite(delta):
        raise ValueError(f"target must be finite, got {target!r}.")
    if lo == 0 and delta < 0:
        raise ValueError(
            f"target δ={delta} is unreachable for {activation!r}: its slopes include 0, "
            "so D = 0 is admissible and max_D μ₂(D(A+Δ)) ≥ 0 for every Δ. Use δ ≥ 0, "
            "or an activation with slopes bounded below (leaky ReLU)."
        )
    n = A.shape[0]
    opts = StabilizeOptions(**options).resolved(n)
    exact = (opts.method == "enumerate") or (opts.method == "auto" and n <= ENUMERATION_MAX_N)
    return StabilizeProblem(A, delta, lo, hi, exact, KRYLOV_STEPS if opts.track else 0), opts


def stabilize(
    A, target, activation="tanh", *, generator=None, progress: bool | None = None, checkpoint=None, **options
) -> StabilizeResult:
    """Smallest Frobenius-norm perturbation ``Δ`` with ``max_D μ₂(D(A + Δ)) ≤ δ``, ``δ = target``
    (:prf:ref:`alg-stabilize`). ``options`` are the fields of :class:`StabilizeOptions`.

    Two levels: for a size ``η`` the *inner* level moves a direction ``E`` (``‖E‖_F = 1``) along
    the projected gradient flow of the squared hinge ``H = ½ Σ_D ‖(sym(D(A + ηE)) − δI)₊‖_F²``
    with step control; the *outer* level (:func:`~labkit._stabilize._close_bracket`) finds the
    smallest feasible ``η`` by Newton steps on ``√(2H)`` (for one active eigenvalue
    ``η + (μ₂ − δ)/‖D v‖``) inside a bracket ``[η_lo, η_hi]``. Because ``√(2H)`` is convex in ``Δ``
    the Newton point is a *certified* lower bound; an infeasible ``Δ`` is made feasible for the
    working set by a small scaling (``δ > 0``) or shift (``s₋ > 0``), which gives ``η_hi``;
    otherwise ``η_hi`` comes from inner solves that reach the target, with bisection. The maximum
    over all vertices ``D`` is handled by cutting planes: a working set grows by the worst vertices
    of the current ``A + Δ`` (:func:`~labkit._stabilize._find_cuts`,
    :func:`~labkit._stabilize._violated`) until the worst one satisfies the bound within ``tol``
    (:func:`~labkit._stabilize._final_check`). Rounds that add a vertex close the bracket to
    ``coarse_tol`` (relative), the last one to ``rel_tol``. The end game
    (:func:`~labkit._stabilize._end_game`) may end a run earlier
    by a uniform repair that makes every vertex feasible at once.

    The result's ``converged`` says the final check passed (``exact``: by enumeration, ``n ≤ 16``;
    otherwise by the vertex fixed point with restarts) for ``A + Δ`` itself or for the matrix that
    the end game repaired, and ``norm_lower_bound`` is a certified lower bound on the optimal ``‖Δ‖_F``
    (the working set is a subset of all vertices), so ``norm / norm_lower_bound − 1`` bounds the
    suboptimality: below ``rel_tol`` on convergence.

    ``track`` (default: 4 for ``n > 16``, else 0) makes the inner steps follow at least that many
    top eigenvectors per vertex by one block-Krylov step instead of dense eigensolves, and the
    cut search judge single flips by Lanczos (§1.5); all decisions are still taken on exact values.

    ``progress`` shows a bar over the rounds with the current ``‖Δ‖_F``, the certified lower
    bound, the size of the working set and the worst ``μ₂`` found (default: shown for ``n > 16``
    unless the mode is ``smoke``; see :func:`labkit.runtime.progress_enabled`).

    ``checkpoint=path`` saves the :class:`StabilizeState` after every round (atomically). If the
    file exists when ``stabilize`` starts, the run resumes from it and follows the same trajectory
    as an uninterrupted run (given a ``generator``; with ``generator=None`` the random cut starts
    come from the global generator); a checkpoint written for another matrix, target, activation
    or options is refused with a ``ValueError``. The file is removed once the run converges; a run
    stopped by ``max_rounds`` or killed leaves it for the next call. ``result.seconds`` is the
    compute time of all segments together.

    With ``s₋ = 0`` and ``δ = 0`` the answer has a closed form, returned at once: the feasible
    matrices are exactly the diagonal ones with non-positive diagonal (the single-unit vertices
    forbid every off-diagonal entry), so ``Δ`` removes all coupling.

    Raises ``ValueError`` for an unreachable target: with ``s₋ = 0`` (tanh, ReLU, sigmoid)
    ``D = 0`` is admissible and ``μ₂(0) = 0``, so ``δ < 0`` can never hold uniformly; ``TypeError``
    for an unknown option.
    """
    t_start = time.perf_counter()
    problem, opts = _problem(A, target, activation, options)
    A, delta, n = problem.A, problem.target, problem.n
    mu0, D0 = worst_case_lognorm(
        A, (problem.lo, problem.hi), method=opts.method, restarts=opts.restarts, generator=generator
    )
    if mu0 <= delta or (problem.lo == 0 and delta == 0):
        # nothing to do; or the closed form: the feasible set is {diagonal, ≤ 0} (:prf:ref:`prop-zero`)
        Delta = torch.zeros_like(A) if mu0 <= delta else torch.diag(torch.diagonal(A).clamp(max=0)) - A
        mu_after, lower = (mu0, 0.0) if mu0 <= delta else (0.0, float(Delta.norm()))
        return StabilizeResult(
            perturbation=Delta,
            norm=float(Delta.norm()),
            mu_before=mu0,
            mu_after=mu_after,
            target=delta,
            iterations=0,
            rounds=0,
            converged=True,
            working_set=0,
            exact=problem.exact,
            norm_lower_bound=lower,
            vertices=torch.diagonal(D0)[None],
            seconds=time.perf_counter() - t_start,
        )
    if checkpoint is not None and Path(checkpoint).exists():
        state = StabilizeState.load(checkpoint, problem, opts)
        if generator is not None and state.generator is not None:
            generator.set_state(state.generator)
    else:
        state = StabilizeState.start(problem, opts, D0, mu0)
    seconds_before = state.seconds
    show = (progress_enabled() and n > ENUMERATION_MAX_N) if progress is None else bool(progress)
    bar = tqdm(desc=f"stabilize n={n} δ={delta:g}", unit="round", disable=not show, leave=False, initial=state.round)
    converged, repaired = False, None
    for rnd in range(state.round + 1, opts.max_rounds + 1):
        fresh, repaired = _round(problem, opts, state, rnd, generator)
        bar.update(1)
        size = int(state.ds.shape[0]) + len(fresh)
        bar.set_postfix_str(
            f"‖Δ‖ {state.eps_hi:.4f} ≥ {state.certified:.4f}, |W| {size}, μ* {state.mu_after:.4f}, tol {state.rtol:g}",
            refresh=False,
        )
        state.E, state.round = state.E_hi.clone(), rnd
        if repaired is not None:
            converged = True
            break
        if fresh:
            state.ds = torch.cat([state.ds, torch.stack(fresh)])
        elif state.rtol > opts.rel_tol:  # feasible at the coarse tolerance: refine, then check again
            state.rtol = opts.rel_tol
        else:
            converged = True
            break
        if checkpoint is not None:
            seconds = seconds_before + time.perf_counter() - t_start
            state.save(checkpoint, problem, opts, seconds=seconds, generator=generator)
    bar.refresh()  # the final state, whatever tqdm's refresh interval skipped
    bar.close()
    if converged and checkpoint is not None and Path(checkpoint).exists():
        Path(checkpoint).unlink()
    s, Delta = state, state.eps_hi * state.E_hi
    return StabilizeResult(
        perturbation=Delta,
        norm=float(Delta.norm()),
        mu_before=mu0,
        mu_after=s.mu_after,
        target=delta,
        iterations=s.iterations,
        rounds=s.round,
        converged=converged,
        working_set=int(s.ds.shape[0]),
        exact=problem.exact,
        norm_lower_bound=s.certified,
        history=s.history,
        vertices=s.ds,
        repaired=repaired is not None,
        seconds=seconds_before + time.perf_counter() - t_start,
    )


def euler_step_bound(mu_star: float, A_norm: float, h: float, hi: float = 1.0) -> float:
    """A certified Lipschitz constant of one Euler step ``x ↦ x + h σ(Ax + b)``:
    ``‖I + hDA‖₂ ≤ sqrt(1 + 2hμ* + h² s₊² ‖A‖₂²)`` (:prf:ref:`prop-euler-step`)."""
    return math.sqrt(max(0.0, 1 + 2 * h * mu_star + (h * hi * A_norm) ** 2))


def stabilize_slsqp(
    A,
    delta,
    activation="tanh",
    *,
    vertices=None,
    restarts: int = 3,
    seed: int = 0,
    maxiter: int = 500,
    feas_tol: float = 1e-6,
):
    """Reference solution of the same problem by a general-purpose solver (scipy's SLSQP).

    Minimises ``½‖Δ‖_F²`` subject to ``μ₂(D(A + Δ)) ≤ δ`` for every ``D`` in ``vertices``
    (default: all ``2ⁿ`` vertices) with exact constraint gradients ``D v vᵀ``, from ``Δ = 0``
    and ``restarts − 1`` random starts. Returns ``(Δ, ‖Δ‖_F)`` of the best result whose
    constraints hold within ``feas_tol``, or ``(None, inf)`` if none does. Used by the tests
    and ``scripts/bench_stabilize.py`` as the baseline (§1.5).
    """
    import numpy as np
    from scipy.optimize import minimize

    M0 = _matrix(A)
    n = M0.shape[0]
    lo, hi = slope_bounds(activation)
    ds = _all_vertices(n, lo, hi) if vertices is None else torch.as_tensor(vertices, dtype=torch.float64)

    def cons(x):
        w, _ = _top(ds, M0 + torch.as_tensor(x).reshape(n, n))
        return (float(delta) - w).numpy()

    def jac(x):
        _, V = _top(ds, M0 + torch.as_tensor(x).reshape(n, n))
        return -torch.einsum("ki,kj->kij", ds * V, V).reshape(len(ds), -1).numpy()

    rng = np.random.default_rng(seed)
    scale = float(M0.norm()) / n
    best, best_norm = None, math.inf
    for r in range(restarts):
        x0 = np.zeros(n * n) if r == 0 else rng.normal(size=n * n) * 0.1 * scale
        res = minimize(
            lambda x: 0.5 * x @ x,
            x0,
            jac=lambda x: x,
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": cons, "jac": jac}],
            options={"maxiter": maxiter, "ftol": 1e-12},
        )
        if cons(res.x).min() >= -feas_tol and np.linalg.norm(res.x) < best_norm:
            best, best_norm = torch.as_tensor(res.x).reshape(n, n), float(np.linalg.norm(res.x))
    return best, best_norm


#: The relative margin by which ``ODEClassifier(unit_norm=True)`` divides beyond the exact norm, so
#: that a float32 division cannot leave a norm above 1.
UNIT_NORM_MARGIN = 1e-5


class ODEClassifier(nn.Module):
    """Linear lift → neural ODE block ``ẋ = σ(Ax + b)`` on ``[0, T]`` → linear head (§1.4).

    The block is integrated by ``steps`` explicit Euler steps (a weight-tied residual network,
    :class:`labkit.odes.EulerResNet`). With ``unit_norm=True`` the lift and head use
    ``W / (‖W‖₂ (1 + 10⁻⁵))``, the norm computed exactly in float64: their spectral norms are at
    most 1 after rounding, so they cannot undo the control of the block by growing, and the
    classifier's constant is at most the block's Euler bound (§1.4, as in De Marinis et al.'s
    related paper).
    """

    def __init__(
        self,
        in_features: int = 784,
        width: int = 12,
        classes: int = 10,
        T: float = 1.0,
        steps: int = 10,
        activation: str = "tanh",
        unit_norm: bool = False,
    ):
        super().__init__()
        self.activation = activation
        slope_bounds(activation)
        self.lift = nn.Linear(
            _validate.positive_int(in_features, "in_features"), _validate.positive_int(width, "width")
        )
        self.field = VectorField(width, activation=activation)
        self.block = EulerResNet(self.field, T, steps)
        self.head = nn.Linear(width, _validate.positive_int(classes, "classes"))
        self.unit_norm = bool(unit_norm)

    @property
    def A(self) -> torch.Tensor:
        """The block's weight matrix ``A``."""
        return self.field.A.weight

    def _linear(self, layer, z):
        W = layer.weight
        if self.unit_norm:  # the norm in float64, and a margin for the rounding of the division
            W = W / (torch.linalg.matrix_norm(W.double(), ord=2).to(W.dtype) * (1 + UNIT_NORM_MARGIN))
        return nn.functional.linear(z, W, layer.bias)

    def lift_features(self, x):
        """The lifted features of the images ``x``: the input of the ODE block."""
        return self._linear(self.lift, x.flatten(1))

    def forward(self, x):
        return self._linear(self.head, self.block(self.lift_features(x)))

    @torch.no_grad()
    def certificate(self) -> dict:
        """Certified l2 bounds: ``μ*`` of ``A``, the flow's ``e^{Tμ*}``, the Euler network's
        ``∏ sqrt(1 + 2hμ* + h²s₊²‖A‖²)`` and the whole classifier's ``‖W_head‖ · Euler · ‖W_lift‖``
        (exact ``μ*`` by enumeration up to width 16; beyond, a lower estimate, flagged)."""
        mu, _ = worst_case_lognorm(self.A, self.activation)
        _, hi = slope_bounds(self.activation)
        h, steps, T = self.block.T / self.block.steps, self.block.steps, self.block.T
        A_norm = float(torch.linalg.matrix_norm(self.A.double(), 2))
        euler = euler_step_bound(mu, A_norm, h, hi) ** steps
        norm = lambda W: 1.0 if self.unit_norm else float(torch.linalg.matrix_norm(W.double(), 2))  # noqa: E731
        return {
            "mu_star": mu,
            "flow_bound": math.exp(T * mu),
            "euler_bound": euler,
            "lipschitz_bound": norm(self.head.weight) * euler * norm(self.lift.weight),
            "exact": self.A.shape[0] <= ENUMERATION_MAX_N,
        }


def stabilize_model(model: ODEClassifier, delta: float, **options) -> StabilizeResult:
    """Replace the block's ``A`` by ``A + Δ`` from :func:`stabilize` (in place; §1.3)."""
    res = stabilize(model.A, delta, model.activation, **options)
    with torch.no_grad():
        model.A.add_(res.perturbation.to(model.A.device, model.A.dtype))
    return res


class StabilizeEachEpoch:
    """Training hook for ``labkit.train.fit(after_epoch=...)``: stabilise ``A`` after every epoch
    and record ``μ*`` before and after (§1.4).

    Why once per epoch: a correction costs many eigenproblems, and the optimiser's steps move
    ``A`` only a little within an epoch; correcting after the last epoch guarantees that the
    returned model satisfies the bound, which is what the certificate needs.
    """

    def __init__(self, delta: float, **options):
        self.delta, self.options, self.history = float(delta), {"rel_tol": 1e-4, **options}, []

    def state_dict(self) -> dict:
        """The corrections so far, so that :func:`labkit.train.fit` can resume with them."""
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])

    def __call__(self, model, epoch, history=None):
        res = stabilize_model(model, self.delta, **self.options)
        self.history.append(
            {
                "epoch": epoch + 1,
                "mu_before": res.mu_before,
                "mu_after": res.mu_after,
                "norm": res.norm,
                "converged": res.converged,
            }
        )
