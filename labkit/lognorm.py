"""Log-norm control of neural ODE flows (Chapter 1; De Marinis, Guglielmi, Sicilia, Tudisco).

For the block ``ẋ = σ(Ax + b)`` the Jacobian is ``D A`` with ``D = diag(σ'(Ax + b))``, so the
flow over ``[0, T]`` is ``e^{T μ*}``-Lipschitz with ``μ* = max_D μ₂(D A)`` over diagonal ``D``
with entries in the closure of ``σ'(ℝ)`` (Chapter 0, Theorem *Lipschitz bound of a flow*).
:func:`worst_case_lognorm` computes ``μ*``; :func:`stabilize` finds a small Frobenius-norm
``Δ`` with ``μ*(A + Δ) ≤ δ`` by the paper's two-level method with cutting planes.

:class:`ODEClassifier` is a classifier of the paper's shape and :class:`StabilizeEachEpoch`
embeds the correction in training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from . import _validate

__all__ = ["slope_bounds", "worst_case_lognorm", "lognorm_gradient", "inner_step", "stabilize",
           "StabilizeResult", "stabilize_slsqp", "euler_step_bound", "ODEClassifier", "stabilize_model",
           "StabilizeEachEpoch"]

_SLOPES = {"tanh": (0.0, 1.0), "relu": (0.0, 1.0), "sigmoid": (0.0, 0.25)}
ENUMERATION_MAX_N = 16


def slope_bounds(activation) -> tuple[float, float]:
    """The closure ``[ℓ, u]`` of ``σ'(ℝ)``: tanh and ReLU ``[0, 1]``, sigmoid ``[0, 1/4]``,
    leaky ReLU with slope α (``"leaky_relu:0.1"``, default α = 0.01) ``[α, 1]``; or a pair (ℓ, u)."""
    if isinstance(activation, (tuple, list)):
        lo, hi = (float(v) for v in activation)
    elif isinstance(activation, str) and activation.startswith("leaky_relu"):
        _, _, alpha = activation.partition(":")
        a = float(alpha) if alpha else 0.01
        lo, hi = min(a, 1.0), max(a, 1.0)
    elif activation in _SLOPES:
        lo, hi = _SLOPES[activation]
    else:
        raise ValueError(f"unknown activation {activation!r}; use tanh, relu, sigmoid, "
                         "'leaky_relu:ALPHA' or a pair (low, high) of slope bounds.")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo or hi == 0:
        raise ValueError(f"slope bounds must satisfy 0 <= low <= high, high > 0; got ({lo}, {hi}).")
    return lo, hi


def _matrix(A) -> torch.Tensor:
    A = torch.as_tensor(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}.")
    A = A.detach().to(torch.float64)
    if not torch.isfinite(A).all():
        raise ValueError("A has non-finite entries.")
    return A


def _top(d: torch.Tensor, M: torch.Tensor):
    """Top eigenpairs of sym(diag(d) M) for a batch of diagonals d (k, n)."""
    DM = d[:, :, None] * M
    w, V = torch.linalg.eigh(0.5 * (DM + DM.mT))
    return w[:, -1], V[:, :, -1]


def _vertices(n: int, lo: float, hi: float, chunk: int = 8192):
    codes = torch.arange(2 ** n)
    bits = torch.arange(n)
    for part in codes.split(chunk):
        b = ((part[:, None] >> bits) & 1).to(torch.float64)
        yield lo + (hi - lo) * b


def _enumerate(M, lo, hi):
    """The vertex with the largest μ₂(DM): (value, diagonal)."""
    best, best_d = -math.inf, None
    for d in _vertices(M.shape[0], lo, hi):
        w, _ = _top(d, M)
        i = int(torch.argmax(w))
        if float(w[i]) > best:
            best, best_d = float(w[i]), d[i].clone()
    return best, best_d


def _fixed_point(M, lo, hi, restarts, generator, max_iter=100):
    """Vertex fixed point ``d_i ← u if v_i (M v)_i > 0 else ℓ`` from several starts, each
    finished by single-coordinate flips while they increase μ₂ (a 1-opt local search)."""
    n = M.shape[0]
    starts = [torch.full((n,), hi, dtype=torch.float64)]
    starts += [lo + (hi - lo) * (torch.rand(n, generator=generator, dtype=torch.float64) < 0.5).double()
               for _ in range(max(restarts - 1, 0))]
    flips = torch.eye(n, dtype=torch.bool)
    best, best_d = -math.inf, None
    for d in starts:
        mu = float(_top(d[None], M)[0][0])
        for _ in range(max_iter):
            w, V = _top(d[None], M)
            v = V[0]
            grad = v * (M @ v)  # ∂μ₂(DM)/∂d_i = v_i (M v)_i: the linearisation's best vertex
            new = torch.where(grad > 0, torch.tensor(hi, dtype=M.dtype), torch.tensor(lo, dtype=M.dtype))
            mu_new = float(_top(new[None], M)[0][0])
            if mu_new <= mu + 1e-15:
                # no gain from the fixed point: try every single flip at once
                cand = torch.where(flips, lo + hi - d, d)
                w_c, _ = _top(cand, M)
                k = int(torch.argmax(w_c))
                if float(w_c[k]) <= mu + 1e-15:
                    break
                new, mu_new = cand[k], float(w_c[k])
            d, mu = new, mu_new
        if mu > best:
            best, best_d = mu, d.clone()
    return best, best_d


def worst_case_lognorm(A, activation="tanh", *, method: str = "auto", restarts: int = 32,
                       generator=None):
    """``(μ*, D*)``: the largest ``μ₂(D A)`` over diagonal ``D`` with entries in ``[ℓ, u]``
    (:func:`slope_bounds`), and a maximiser (Chapter 1, *The worst case is a vertex*).

    ``μ₂(DA)`` is convex in ``D``, so the maximum sits at a vertex (entries ``ℓ`` or ``u``).
    ``method="enumerate"`` checks all ``2ⁿ`` vertices (exact; the default for ``n ≤ 16``);
    ``"fixed_point"`` iterates ``d_i ← u if v_i (A v)_i > 0 else ℓ`` from ``restarts`` starts and
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
        mu, d = _enumerate(M, lo, hi)
    elif method == "fixed_point":
        mu, d = _fixed_point(M, lo, hi, _validate.positive_int(restarts, "restarts"), generator)
    else:
        raise ValueError(f"method must be 'auto', 'enumerate' or 'fixed_point', got {method!r}.")
    return mu, torch.diag(d)


def lognorm_gradient(D, M):
    """``(μ₂(DM), ∇_M μ₂(DM)) = (λ, D v vᵀ)`` with ``v`` the top unit eigenvector of
    ``sym(DM)`` (Chapter 1, *The gradient is rank one*); valid where ``λ`` is simple."""
    d = torch.diagonal(torch.as_tensor(D, dtype=torch.float64))
    w, V = _top(d[None], _matrix(M))
    v = V[0]
    return float(w[0]), torch.outer(d * v, v)


def _hinge(E, eps, A, ds, delta):
    """Squared-hinge value F and its gradient G (in E, up to the factor ε) over the working set."""
    w, V = _top(ds, A + eps * E)
    r = (w - delta).clamp(min=0)
    G = (r[:, None] * ds * V).T @ V  # Σ_k r_k (D_k v_k) v_kᵀ
    return 0.5 * float((r ** 2).sum()), G, float(w.max())


def inner_step(E, G, h):
    """One step of the projected gradient flow on the unit Frobenius sphere: move along
    ``-G + ⟨G, E⟩ E`` by ``h`` and renormalise (Chapter 1, *The inner flow*)."""
    g = -G + (G * E).sum() * E
    new = E + h * g
    return new / new.norm()


def _inner(A, eps, E, ds, delta, *, maxit, h0, theta, tol):
    """Minimise the squared hinge on the sphere; stop as soon as every constraint of the working
    set holds within ``tol`` (the hinge approaches the feasible set's boundary only in the limit)."""
    target = delta
    f, G, fmax = _hinge(E, eps, A, ds, target)
    h = h0
    for _ in range(maxit):
        g = -G + (G * E).sum() * E
        if fmax <= delta + tol or float(g.norm()) <= 1e-15:
            break
        for _ in range(60):  # step control: shrink until the value decreases
            E_new = inner_step(E, G, h)
            f_new, G_new, fmax_new = _hinge(E_new, eps, A, ds, target)
            if f_new < f:
                break
            h /= theta
        else:
            break
        E, f, G, fmax = E_new, f_new, G_new, fmax_new
        h *= theta
    return E, f, G, fmax


@dataclass
class StabilizeResult:
    """What :func:`stabilize` found: the perturbation and how it got there."""

    delta_matrix: torch.Tensor
    norm: float
    mu_before: float
    mu_after: float
    target: float
    iterations: int
    rounds: int
    converged: bool
    working_set: int
    exact: bool
    history: list = field(default_factory=list)
    vertices: torch.Tensor | None = None  # the working set's diagonals, one row per vertex


def stabilize(A, delta, activation="tanh", *, tol: float = 1e-9, rel_tol: float = 1e-6,
              max_rounds: int = 60, inner_maxit: int = 300, h0: float = 1.0, theta: float = 1.3,
              method: str = "auto", restarts: int = 32, generator=None) -> StabilizeResult:
    """Smallest Frobenius-norm ``Δ`` with ``max_D μ₂(D(A + Δ)) ≤ δ`` (Chapter 1, Algorithm 1).

    Two levels: for a size ``ε`` the *inner* level moves a direction ``E`` (``‖E‖_F = 1``) along
    the projected gradient flow of the squared hinge ``½ Σ_D (μ₂(D(A + εE)) − δ)₊²`` with step
    control; the *outer* level finds the smallest feasible ``ε`` by Newton steps
    ``ε ← ε + (f(ε) − δ)/‖D v‖`` safeguarded by bisection. The maximum over all vertices ``D``
    is handled by cutting planes: a working set of vertices grows by the worst vertex of the
    current ``A + Δ`` until that worst vertex satisfies the bound (within ``tol``). ``converged``
    says the final check passed; ``exact`` says it was by enumeration (``n ≤ 16``).

    Raises ``ValueError`` for an unreachable target: with ``ℓ = 0`` (tanh, ReLU, sigmoid)
    ``D = 0`` is admissible and ``μ₂(0) = 0``, so ``δ < 0`` can never hold uniformly.
    """
    A = _matrix(A)
    n = A.shape[0]
    lo, hi = slope_bounds(activation)
    delta = float(delta)
    if not math.isfinite(delta):
        raise ValueError(f"delta must be finite, got {delta!r}.")
    if lo == 0 and delta < 0:
        raise ValueError(f"target delta={delta} is unreachable for {activation!r}: its slopes include 0, "
                         "so D = 0 is admissible and max_D μ₂(D(A+Δ)) ≥ 0 for every Δ. Use delta ≥ 0, "
                         "or an activation with slopes bounded below (leaky ReLU).")
    worst = lambda M: worst_case_lognorm(M, (lo, hi), method=method, restarts=restarts,  # noqa: E731
                                          generator=generator)
    exact = (method == "enumerate") or (method == "auto" and n <= ENUMERATION_MAX_N)
    mu0, D0 = worst(A)
    zero = torch.zeros_like(A)
    if mu0 <= delta:
        return StabilizeResult(zero, 0.0, mu0, mu0, delta, 0, 0, True, 0, exact, [], torch.diagonal(D0)[None])
    # a feasible point: A + Δ = -c I gives μ₂(D(-cI)) = -c·min(d) ≤ δ
    c = max(0.0, -delta) / lo if lo > 0 else 0.0
    feasible = -c * torch.eye(n, dtype=A.dtype) - A
    eps_max = float(feasible.norm())
    ds = torch.diagonal(D0)[None].clone()
    _, G0 = lognorm_gradient(D0, A)
    E = -G0 / G0.norm() if float(G0.norm()) > 0 else feasible / eps_max
    eps_lo, eps_hi, E_hi = 0.0, eps_max, feasible / eps_max
    iterations, history, converged, mu_after = 0, [], False, mu0
    for rounds in range(1, max_rounds + 1):
        # check that the current upper end is still feasible for the enlarged working set
        _, _, fmax = _hinge(E_hi, eps_hi, A, ds, delta)
        if fmax > delta + tol:
            eps_hi, E_hi = eps_max, feasible / eps_max
        eps = min(max(eps_lo, 1e-12) * 1.01 if eps_lo > 0 else eps_hi / 2, eps_hi)
        for _ in range(200):  # outer: Newton with a bisection safeguard
            E, F, G, fmax = _inner(A, eps, E, ds, delta, maxit=inner_maxit, h0=h0, theta=theta, tol=tol)
            iterations += 1
            if fmax <= delta + tol:
                eps_hi, E_hi = eps, E.clone()
            else:
                eps_lo = eps
            if eps_hi - eps_lo <= rel_tol * eps_hi:
                break
            if fmax <= delta + tol:  # feasible side: the inner stopped early, f is not informative
                eps = 0.5 * (eps_lo + eps_hi)
                continue
            w, V = _top(ds, A + eps * E)
            k = int(torch.argmax(w))
            slope = float((ds[k] * V[k]).norm())  # |f'(ε)| = ‖D v‖ for the active vertex
            # Newton from the infeasible side, lengthened by half so that it brackets the root
            # (f is convex-decreasing near ε*, so plain Newton creeps up from below forever)
            step = eps + 1.5 * (fmax - delta) / slope if slope > 0 else math.inf
            eps = step if eps_lo < step < eps_hi else 0.5 * (eps_lo + eps_hi)
        mu_after, D_w = worst(A + eps_hi * E_hi)
        history.append({"round": rounds, "eps": eps_hi, "mu": mu_after, "working_set": int(ds.shape[0])})
        if mu_after <= delta + tol:
            converged = True
            break
        ds = torch.cat([ds, torch.diagonal(D_w)[None]])
        E = E_hi.clone()
    Delta = eps_hi * E_hi
    return StabilizeResult(Delta, float(Delta.norm()), mu0, mu_after, delta, iterations, rounds,
                           converged, int(ds.shape[0]), exact, history, ds)


def euler_step_bound(mu_star: float, A_norm: float, h: float, hi: float = 1.0) -> float:
    """A certified Lipschitz constant of one Euler step ``x ↦ x + h σ(Ax + b)``:
    ``‖I + hDA‖₂ ≤ sqrt(1 + 2hμ* + h² u² ‖A‖₂²)`` (Chapter 1, *Euler map versus flow*)."""
    return math.sqrt(max(0.0, 1 + 2 * h * mu_star + (h * hi * A_norm) ** 2))


def _all_vertices(n, lo, hi):
    return torch.cat(list(_vertices(n, lo, hi)))


def stabilize_slsqp(A, delta, activation="tanh", *, vertices=None, restarts: int = 3, seed: int = 0,
                    maxiter: int = 500, feas_tol: float = 1e-6):
    """Reference solution of the same problem by a general-purpose solver (scipy's SLSQP).

    Minimises ``½‖Δ‖_F²`` subject to ``μ₂(D(A + Δ)) ≤ δ`` for every ``D`` in ``vertices``
    (default: all ``2ⁿ`` vertices) with exact constraint gradients ``D v vᵀ``, from ``Δ = 0``
    and ``restarts − 1`` random starts. Returns ``(Δ, ‖Δ‖_F)`` of the best result whose
    constraints hold within ``feas_tol``, or ``(None, inf)`` if none does. Used by the tests
    and ``scripts/bench_stabilize.py`` as the baseline (Chapter 1, *Reproduction*).
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
        res = minimize(lambda x: 0.5 * x @ x, x0, jac=lambda x: x, method="SLSQP",
                       constraints=[{"type": "ineq", "fun": cons, "jac": jac}],
                       options={"maxiter": maxiter, "ftol": 1e-12})
        if cons(res.x).min() >= -feas_tol and np.linalg.norm(res.x) < best_norm:
            best, best_norm = torch.as_tensor(res.x).reshape(n, n), float(np.linalg.norm(res.x))
    return best, best_norm


class ODEClassifier(nn.Module):
    """Linear lift → neural ODE block ``ẋ = σ(Ax + b)`` on ``[0, T]`` → linear head (Chapter 1).

    The block is integrated by ``steps`` explicit Euler steps (a weight-tied residual network,
    :class:`labkit.odes.EulerResNet`). With ``unit_norm=True`` the lift and head use
    ``W / ‖W‖₂`` so they cannot undo the control of the block by growing (Chapter 1, *Pitfalls*).
    """

    def __init__(self, in_features: int = 784, width: int = 12, classes: int = 10, T: float = 1.0,
                 steps: int = 10, activation: str = "tanh", unit_norm: bool = False):
        super().__init__()
        from .odes import EulerResNet, VectorField

        self.activation = activation
        slope_bounds(activation)
        self.lift = nn.Linear(_validate.positive_int(in_features, "in_features"),
                              _validate.positive_int(width, "width"))
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
        if self.unit_norm:
            W = W / torch.linalg.matrix_norm(W, ord=2)
        return nn.functional.linear(z, W, layer.bias)

    def forward(self, x):
        return self._linear(self.head, self.block(self._linear(self.lift, x.flatten(1))))

    @torch.no_grad()
    def certificate(self) -> dict:
        """Certified l2 bounds: ``μ*`` of ``A``, the flow's ``e^{Tμ*}``, the Euler network's
        ``∏ sqrt(1 + 2hμ* + h²u²‖A‖²)`` and the whole classifier's ``‖W_head‖ · Euler · ‖W_lift‖``
        (exact ``μ*`` by enumeration up to width 16; beyond, a lower estimate, flagged)."""
        mu, _ = worst_case_lognorm(self.A, self.activation)
        _, hi = slope_bounds(self.activation)
        h, steps, T = self.block.t1 / self.block.steps, self.block.steps, self.block.t1
        A_norm = float(torch.linalg.matrix_norm(self.A.double(), 2))
        euler = euler_step_bound(mu, A_norm, h, hi) ** steps
        norm = lambda W: 1.0 if self.unit_norm else float(torch.linalg.matrix_norm(W.double(), 2))  # noqa: E731
        return {"mu_star": mu, "flow_bound": math.exp(T * mu), "euler_bound": euler,
                "lipschitz_bound": norm(self.head.weight) * euler * norm(self.lift.weight),
                "exact": self.A.shape[0] <= ENUMERATION_MAX_N}


def stabilize_model(model: ODEClassifier, delta: float, **options) -> StabilizeResult:
    """Replace the block's ``A`` by ``A + Δ`` from :func:`stabilize` (in place; Chapter 1)."""
    res = stabilize(model.A, delta, model.activation, **options)
    with torch.no_grad():
        model.A.add_(res.delta_matrix.to(model.A.dtype))
    return res


class StabilizeEachEpoch:
    """Training hook for ``labkit.train.fit(after_epoch=...)``: stabilise ``A`` after every epoch
    and record ``μ*`` before and after (Chapter 1, *Stabilised training*).

    Why once per epoch: a correction costs many eigenproblems, and the optimiser's steps move
    ``A`` only a little within an epoch; correcting after the last epoch guarantees that the
    returned model satisfies the bound, which is what the certificate needs.
    """

    def __init__(self, delta: float, **options):
        self.delta, self.options, self.history = float(delta), {"rel_tol": 1e-4, **options}, []

    def __call__(self, model, epoch):
        res = stabilize_model(model, self.delta, **self.options)
        self.history.append({"epoch": epoch + 1, "mu_before": res.mu_before, "mu_after": res.mu_after,
                             "norm": res.norm, "converged": res.converged})
