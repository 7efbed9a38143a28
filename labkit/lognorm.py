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

from . import _validate, train
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

_SLOPES = {"tanh": (0.0, 1.0), "relu": (0.0, 1.0), "sigmoid": (0.0, 0.25)}
ENUMERATION_MAX_N = 16
TRACK_MIN_N, TRACK_BLOCK = 16, 4  # above this size the inner steps follow eigenvectors (see _inner)
KRYLOV_STEPS = 12  # and the cut search judges moves by Lanczos (see _local_maxima)
_MEMORY = 5


def slope_bounds(activation) -> tuple[float, float]:
    """The closure ``[s₋, s₊]`` of ``σ'(ℝ)``: tanh and ReLU ``[0, 1]``, sigmoid ``[0, 1/4]``,
    leaky ReLU with slope α (``"leaky_relu:0.1"``, default α = 0.01) ``[α, 1]``; or a pair (s₋, s₊)."""
    if isinstance(activation, (tuple, list)):
        lo, hi = (float(v) for v in activation)
    elif isinstance(activation, str) and activation.startswith("leaky_relu"):
        _, _, alpha = activation.partition(":")
        a = float(alpha) if alpha else 0.01
        lo, hi = min(a, 1.0), max(a, 1.0)
    elif activation in _SLOPES:
        lo, hi = _SLOPES[activation]
    else:
        raise ValueError(
            f"unknown activation {activation!r}; use tanh, relu, sigmoid, "
            "'leaky_relu:ALPHA' or a pair (low, high) of slope bounds."
        )
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo or hi == 0:
        raise ValueError(f"slope bounds must satisfy 0 <= low <= high, high > 0; got ({lo}, {hi}).")
    return lo, hi


def _matrix(A) -> torch.Tensor:
    A = torch.as_tensor(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}.")
    A = A.detach().to("cpu", torch.float64)
    _validate.finite(A, "A", "its log norm is not defined")
    return A


def _top_eigs(S: torch.Tensor, b: int):
    """The ``b`` largest eigenpairs (ascending) of each symmetric matrix in the batch ``S`` (k, n, n).

    Beyond ``n = 16`` each matrix goes to LAPACK's MRRR solver (``dsyevr`` through scipy), which
    computes only the eigenvectors asked for: three to five times faster at ``n = 64–128`` than a
    full decomposition, whose eigenvectors the cutting planes and the hinge mostly discard."""
    n = S.shape[-1]
    b = min(b, n)
    if n <= TRACK_MIN_N or len(S) == 0:
        w, V = torch.linalg.eigh(S)
        return w[:, -b:], V[:, :, -b:]
    from scipy.linalg import eigh

    w = torch.empty(len(S), b, dtype=S.dtype)
    V = torch.empty(len(S), n, b, dtype=S.dtype)
    with _one_blas_thread():
        for i, Si in enumerate(S.numpy()):
            wi, Vi = eigh(Si, subset_by_index=(n - b, n - 1), driver="evr", check_finite=False)
            w[i], V[i] = torch.from_numpy(wi), torch.from_numpy(Vi)
    return w, V


_BLAS = []


def _one_blas_thread():
    """A context in which numpy/scipy's BLAS runs on one thread. Small LAPACK calls gain nothing
    from threads, and OpenBLAS threads keep spinning after a call, taking the cores from the torch
    operations that follow (measured: 3× slower Lanczos steps on two cores)."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def _top(d: torch.Tensor, M: torch.Tensor):
    """Top eigenpairs of sym(diag(d) M) for a batch of diagonals d (k, n)."""
    DM = d[:, :, None] * M
    w, V = _top_eigs(0.5 * (DM + DM.mT), 1)
    return w[:, -1], V[:, :, -1]


def _eigs_above(S: torch.Tensor, delta: float, b: int):
    """Top eigenpairs of each matrix of ``S``, at least ``b`` and, for every matrix, all those
    above ``δ`` plus one below (or all ``n``): what the hinge and its tracking basis need."""
    n = S.shape[-1]
    while True:
        w, V = _top_eigs(S, b)
        if b >= n or bool((w[:, 0] <= delta).all()):
            return w, V
        b = min(n, max(2 * b, int((w > delta).sum(1).max()) + 2))


def _pick(upper: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The vertex with entry ``s₊`` where ``upper`` is true and ``s₋`` elsewhere (exactly, in float64)."""
    f = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return torch.where(upper, f(hi), f(lo))


def _vertices(n: int, lo: float, hi: float, chunk: int = 8192):
    codes = torch.arange(2**n)
    bits = torch.arange(n)
    for part in codes.split(chunk):
        yield _pick(((part[:, None] >> bits) & 1).bool(), lo, hi)


def _enumerate(M, lo, hi, keep=1):
    """The ``keep`` vertices with the largest μ₂(DM), best first: (values, diagonals)."""
    best_w = torch.empty(0, dtype=M.dtype)
    best_d = torch.empty(0, M.shape[0], dtype=M.dtype)
    for d in _vertices(M.shape[0], lo, hi):
        DM = d[:, :, None] * M
        w = torch.linalg.eigvalsh(0.5 * (DM + DM.mT))[:, -1]  # values only: 2-3x cheaper than eigh
        best_w, idx = torch.cat([best_w, w]).topk(min(keep, len(best_w) + len(w)))
        best_d = torch.cat([best_d, d])[idx]
    return best_w, best_d


def _krylov_top(d: torch.Tensor, M: torch.Tensor, x0: torch.Tensor, steps: int):
    """Top Ritz pairs of ``sym(diag(d) M)`` for a batch of diagonals ``d`` (k, n) on the Krylov
    spaces of dimension ``steps`` started at ``x0`` (k, n): Lanczos with full reorthogonalisation,
    ``O(k n² steps)`` instead of a dense eigensolver's ``O(k n³)``. The Ritz value never exceeds
    the top eigenvalue, and from a start near the top eigenvector it is accurate to many digits."""
    k, n = d.shape
    m = min(steps, n)
    Q = torch.zeros(k, n, m, dtype=M.dtype)
    q = x0 / x0.norm(dim=1, keepdim=True)
    for j in range(m):
        Q[:, :, j] = q
        if j == m - 1:
            break
        w = 0.5 * (d * (q @ M.T) + (d * q) @ M)  # sym(D M) q
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = w - torch.einsum("knj,kj->kn", Q[:, :, : j + 1], torch.einsum("knj,kn->kj", Q[:, :, : j + 1], w))
        norm = w.norm(dim=1, keepdim=True)
        q = w / norm.clamp(min=1e-300)
        if bool((norm <= 1e-12).any()):  # an invariant subspace: continue with a random orthogonal direction
            fresh = torch.randn(k, n, dtype=M.dtype, generator=torch.Generator().manual_seed(j))
            q = torch.where(norm > 1e-12, q, fresh)
            q = q - torch.einsum("knj,kj->kn", Q[:, :, : j + 1], torch.einsum("knj,kn->kj", Q[:, :, : j + 1], q))
            q = q / q.norm(dim=1, keepdim=True)
    SQ = 0.5 * (d[:, :, None] * (M @ Q) + M.mT @ (d[:, :, None] * Q))
    T = Q.mT @ SQ
    w, Z = torch.linalg.eigh(0.5 * (T + T.mT))
    return w[:, -1], (Q @ Z[:, :, -1:]).squeeze(2)


def _local_maxima(M, lo, hi, starts, max_iter=100, flips=16, krylov: int = 0):
    """Vertex fixed point ``d_i ← s₊ if v_i (M v)_i > 0 else s₋`` from each start (rows of
    ``starts``, all advanced together), each finished by single-coordinate flips while one
    increases μ₂ (1-opt local search; only the ``flips`` coordinates whose first-order loss
    ``|v_i (M v)_i|`` is smallest are tried, all of them when ``n ≤ flips``). Every accepted move
    strictly increases μ₂. Returns the values and the local maxima.

    With ``krylov = m > 0`` the single flips (``flips`` candidates per start, each one coordinate
    away from the current vertex) are judged by :func:`_krylov_top` started from the current top
    eigenvector (m Lanczos steps) instead of dense eigensolves, and the values returned are
    recomputed exactly at the end: much faster for large n, while the vertices found are 1-opt
    for the Ritz values only (enough for the cutting planes of :func:`stabilize`, which need
    violated vertices, judged exactly)."""
    d = starts.to(M.dtype).clone()
    K, n = d.shape
    nf = min(flips, n)
    lo_t, hi_t = torch.tensor(lo, dtype=M.dtype), torch.tensor(hi, dtype=M.dtype)
    mu, v = _top(d, M)
    running = torch.arange(K)
    for _ in range(max_iter):
        if len(running) == 0:
            break
        dr, vr, mur = d[running], v[running], mu[running]
        grad = vr * (vr @ M.T)  # ∂μ₂(DM)/∂d_i = v_i (M v)_i: the linearisation's best vertex
        new = torch.where(grad > 0, hi_t, lo_t)
        w_new, v_new = _top(new, M)
        stuck = (w_new <= mur + 1e-15).nonzero().squeeze(1)
        if len(stuck) and nf:  # no gain from the fixed point: try single flips, smallest first-order loss first
            order = grad[stuck].abs().argsort(dim=1)[:, :nf]
            cand = dr[stuck][:, None, :].repeat(1, nf, 1)
            rows = torch.arange(len(stuck))[:, None]
            flipped = torch.where(dr[stuck][rows, order] > 0.5 * (lo + hi), lo_t, hi_t)
            cand[rows, torch.arange(nf)[None, :], order] = flipped
            if krylov:
                w_c, v_c = _krylov_top(cand.reshape(-1, n), M, vr[stuck].repeat_interleave(nf, dim=0), krylov)
            else:
                w_c, v_c = _top(cand.reshape(-1, n), M)
            w_c, v_c = w_c.reshape(-1, nf), v_c.reshape(-1, nf, n)
            k = w_c.argmax(1)
            pick = torch.arange(len(stuck))
            new[stuck], w_new[stuck], v_new[stuck] = cand[pick, k], w_c[pick, k], v_c[pick, k]
        moved = w_new > mur + 1e-15
        idx = running[moved]
        d[idx], mu[idx], v[idx] = new[moved], w_new[moved], v_new[moved]
        running = idx
    if krylov:
        DM = d[:, :, None] * M
        mu = torch.linalg.eigvalsh(0.5 * (DM + DM.mT))[:, -1]
    return mu, d


def _random_vertices(k, n, lo, hi, generator):
    """``k`` vertices of ``[s₋, s₊]ⁿ`` drawn uniformly (each entry ``s₋`` or ``s₊`` with probability ½)."""
    return _pick(torch.rand(k, n, generator=generator) < 0.5, lo, hi)


def _fixed_point(M, lo, hi, restarts, generator, flips=16):
    """Best local maximum from the all-``s₊`` vertex and ``restarts − 1`` random vertices."""
    n = M.shape[0]
    starts = torch.cat(
        [torch.full((1, n), hi, dtype=torch.float64), _random_vertices(max(restarts - 1, 0), n, lo, hi, generator)]
    )
    mus, ds = _local_maxima(M, lo, hi, starts, flips=flips)
    k = int(torch.argmax(mus))
    return float(mus[k]), ds[k]


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


def _hinge(E, eps, A, ds, delta, basis: int = 0):
    """Squared hinge ``H = ½ Σ_D ‖(sym(D(A + ηE)) − δI)₊‖_F²`` over the working set, its gradient
    ``G = Σ_D Σ_j r_j D v_j v_jᵀ`` in ``E`` (up to the factor η; ``r_j = (λ_j − δ)₊``) and the
    largest ``μ₂``. Every eigenvalue above ``δ`` counts, not only the top one: ``H`` has the same
    zeros as the top-eigenvalue hinge but stays differentiable where that eigenvalue is multiple,
    which is where the minimisation over ``E`` drives it (§1.6).

    With ``basis > 0`` the top eigenvectors of every vertex are returned as a fourth value,
    ``(k, n, b)`` with ``b ≥ basis`` and more than the eigenvalues above ``δ`` of any vertex (the
    start of :func:`_tracked_hinge`)."""
    DM = ds[:, :, None] * (A + eps * E)
    S = 0.5 * (DM + DM.mT)
    if S.shape[-1] > TRACK_MIN_N:  # partial decompositions (see _top_eigs)
        w_all, V_all = _eigs_above(S, delta, max(basis, 2))
        if basis:  # the basis must hold two more than the eigenvalues above δ of any vertex
            b = min(S.shape[-1], max(basis, int((w_all > delta).sum(1).max()) + 2))
            if b > w_all.shape[1]:
                w_all, V_all = _top_eigs(S, b)
            Vb = V_all[:, :, -b:]
        top, act = w_all[:, -1], w_all[:, -1] > delta
        w, V = w_all[act], V_all[act]
    elif basis:
        w_all, V_all = torch.linalg.eigh(S)
        top, act = w_all[:, -1], w_all[:, -1] > delta
        b = min(S.shape[-1], max(basis, int((w_all > delta).sum(1).max()) + 2))
        Vb = V_all[:, :, -b:]
        w, V = w_all[act], V_all[act]
    else:
        top = torch.linalg.eigvalsh(S)[:, -1]  # values first; vectors only where a constraint is violated
        act = top > delta
        if bool(act.any()):
            w, V = torch.linalg.eigh(S[act])
    fmax = float(top.max())
    if not bool(act.any()):
        out = 0.0, torch.zeros_like(E), fmax
    else:
        F, G = _hinge_terms(w, V, ds[act], delta)
        out = F, G, fmax
    return (*out, Vb) if basis else out


def _hinge_terms(w, V, d, delta):
    """``½ Σ r²`` and ``Σ r_j D v_j v_jᵀ`` from ascending eigenpairs ``(w, V)`` of active vertices ``d``."""
    r = (w - delta).clamp(min=0)
    m = max(int((r > 0).sum(1).max()), 1)  # eigenvalues come sorted: only the last m columns are active
    r, V = r[:, -m:], V[:, :, -m:]
    G = torch.einsum("ki,kij,klj->il", d, V * r[:, None, :], V)
    return 0.5 * float((r**2).sum()), G


def _tracked_hinge(E, eps, A, ds, delta, V):
    """:func:`_hinge` from a basis ``V`` (``(k, n, b)``) of each vertex's top eigenvectors at a
    nearby point, updated by one block-Krylov step with Rayleigh–Ritz: the top ``b`` Ritz pairs of
    ``sym(D M)`` on ``span[V, sym(D M) V]``. Cost ``O(k n² b)`` instead of ``O(k n³)`` for full
    decompositions. Ritz values never exceed the eigenvalues they approximate (interlacing), so
    the hinge and ``μ₂`` are underestimated, never overestimated: :func:`_inner` uses these values to
    move and the exact :func:`_hinge` to decide. Returns ``H, G, max μ₂``, the new basis and
    whether it is wide enough (its lowest Ritz value below ``δ`` for every vertex)."""
    M = A + eps * E
    dd = ds[:, :, None]

    def apply(X):  # sym(D M) X without forming the k matrices; row-major products are one GEMM each
        return 0.5 * (dd * (X.mT @ M.mT).mT + ((dd * X).mT @ M).mT)

    Q, _ = torch.linalg.qr(torch.cat([V, apply(V)], dim=2))
    T = Q.mT @ apply(Q)
    w, Z = torch.linalg.eigh(0.5 * (T + T.mT))
    b = V.shape[2]
    w, V = w[:, -b:], Q @ Z[:, :, -b:]
    fmax = float(w[:, -1].max())
    wide = b == V.shape[1] or bool((w[:, 0] < delta).all())
    act = w[:, -1] > delta
    if not bool(act.any()):
        return 0.0, torch.zeros_like(E), fmax, V, wide
    F, G = _hinge_terms(w[act], V[act], ds[act], delta)
    return F, G, fmax, V, wide


def inner_step(E, G, h):
    """One step of the projected gradient flow on the unit Frobenius sphere: move along
    ``-G + ⟨G, E⟩ E`` by ``h`` and renormalise (:prf:ref:`prop-inner`)."""
    g = -G + (G * E).sum() * E
    new = E + h * g
    return new / new.norm()


def _inner(A, eps, E, ds, delta, *, maxit, h, theta, tol, gtol, enough=None, track: int = 0):
    """Minimise the squared hinge on the sphere from ``E``: explicit steps of the projected flow
    with step control (the step is proposed by Barzilai–Borwein from the last two iterates and
    shrunk by ``theta`` until the value decreases). Stops as soon as every constraint of the
    working set holds within ``tol``, at a stationary point (projected gradient below ``gtol``
    times the gradient), or when ``enough(E, F, G, fmax)`` says the outer level has what it needs.

    With ``track = b > 0`` the steps evaluate the hinge by :func:`_tracked_hinge` (eigenvectors
    followed from step to step, at least ``b`` per vertex) and only the stopping decision by the
    exact :func:`_hinge`: a stop seen on tracked values is confirmed exactly, or the iteration
    goes on from the exact values with a fresh basis. Either way the returned values are exact.
    Returns ``E, F, G, max μ₂`` and the last step."""

    def exact(E):
        if not track:
            return (*_hinge(E, eps, A, ds, delta), None)
        return _hinge(E, eps, A, ds, delta, basis=track)

    def evaluate(E, V):
        if V is None:
            return (*_hinge(E, eps, A, ds, delta), None)
        F, G, fmax, V, wide = _tracked_hinge(E, eps, A, ds, delta, V)
        return (F, G, fmax, V) if wide else exact(E)

    f, G, fmax, V = exact(E)
    is_exact = True
    E_prev = g_prev = None
    recent = [f]
    for _ in range(maxit):
        g = -G + (G * E).sum() * E
        if (
            fmax <= delta + tol
            or float(g.norm()) <= gtol * float(G.norm())
            or (enough is not None and enough(E, f, G, fmax))
        ):
            if is_exact:
                break
            f, G, fmax, V = exact(E)  # confirm on exact values
            is_exact, recent = True, [f]
            continue
        if E_prev is not None:
            s, y = E - E_prev, g_prev - g
            sy = float((s * y).sum())
            if sy > 0:
                h = float((s * s).sum()) / sy
        for _ in range(60):  # step control: shrink until the value decreases
            E_new = inner_step(E, G, h)
            f_new, G_new, fmax_new, V_new = evaluate(E_new, V)
            if f_new < max(recent):
                break
            h /= theta
        else:
            break
        recent = (recent + [f_new])[-_MEMORY:]
        E_prev, g_prev = E, g
        E, f, G, fmax, V = E_new, f_new, G_new, fmax_new, V_new
        is_exact = V is None
    if not is_exact:
        f, G, fmax, _ = exact(E)
    return E, f, G, fmax, h


def _lower_bound(eps, E, F, G) -> float:
    """A certified lower bound on the smallest feasible ``‖Δ‖_F`` for the working set.

    ``χ(Δ) = √(2H) = ‖(λ(sym(D(A + Δ))) − δ)₊‖`` is convex in ``Δ`` with gradient ``G/χ``, so
    every feasible ``Δ`` (``χ = 0``) satisfies ``0 ≥ χ + ⟨G/χ, Δ − ηE⟩``, hence
    ``‖Δ‖ ≥ (2H − η⟨G, E⟩)/‖G‖``. At a stationary ``E = −G/‖G‖`` this is the Newton step on ``√(2H)``."""
    g = float(G.norm())
    return (2 * F - eps * float((G * E).sum())) / g if F > 0 and g > 0 else -math.inf


def _repair(A, Delta, fmax, delta, lo):
    """Make ``A + Delta`` feasible when the largest ``μ₂`` is ``δ + ω``: scale by ``1 − ω/(δ + ω)``
    (``δ > 0``) or shift by ``−(ω/s₋) I`` (``s₋ > 0``), whichever moves less. Both act on every
    vertex alike (``μ₂`` is positively homogeneous; ``D ⪰ s₋I``), so every ``μ₂(D·)`` that was at
    most ``δ + ω`` becomes at most ``δ``: in the working set, or over all vertices when ``δ + ω``
    is the worst case. ``None`` if neither applies."""
    v = fmax - delta
    out = []
    if delta > 0:
        out.append(Delta - v / (delta + v) * (A + Delta))
    if lo > 0:
        out.append(Delta - v / lo * torch.eye(A.shape[0], dtype=A.dtype))
    return min(out, key=lambda D: float(D.norm())) if out else None


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
        """``(‖Δ‖, Δ)`` of the point ``ηE`` repaired for a worst ``μ₂`` of ``fmax`` (:func:`_repair`),
        or ``None`` when no repair applies."""
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


def _enough(problem: StabilizeProblem, state: StabilizeState, eps: float, rtol: float):
    """The inner level's early stop: the bracket it would give is within ``rtol``."""

    def test(E, F, G, fmax):
        lb = max(state.eps_lo, _lower_bound(eps, E, F, G))
        up = problem.upper(eps, E, fmax)
        ub = state.eps_hi if up is None else min(state.eps_hi, up[0])
        return ub - lb <= rtol * ub

    return test


def _close_bracket(problem: StabilizeProblem, options: StabilizeOptions, state: StabilizeState, rtol: float) -> None:
    """The outer level (:prf:ref:`alg-stabilize`, step 3.1): Newton steps on ``√(2H)`` inside the bracket, each point
    found by the inner flow, until the bracket is within ``rtol``."""
    p, o, s = problem, options, state
    eps = min(s.eps_lo * (1 + rtol) if s.eps_lo > 0 else 0.5 * s.eps_hi, s.eps_hi)
    for _ in range(200):
        s.E, F, G, fmax, s.h = _inner(
            p.A,
            eps,
            s.E,
            s.ds,
            p.target,
            maxit=o.inner_maxit,
            h=s.h,
            theta=o.theta,
            tol=o.tol,
            gtol=o.gtol,
            enough=_enough(p, s, eps, rtol),
            track=o.track,
        )
        s.iterations += 1
        newton = -math.inf
        if fmax <= p.target + o.tol:
            if eps < s.eps_hi:
                s.eps_hi, s.E_hi = eps, s.E.clone()
        else:
            newton = _lower_bound(eps, s.E, F, G)
            s.certified = max(s.certified, newton)
            s.eps_lo = max(s.eps_lo, newton)
            up = p.upper(eps, s.E, fmax)
            if up is not None and up[0] < s.eps_hi:
                s.eps_hi, s.E_hi = up[0], up[1] / up[0]
        if s.eps_hi - s.eps_lo <= rtol * s.eps_hi:
            break
        if newton > eps * (1 + 0.1 * rtol):  # Newton from below; without a repair, step over the root
            eps = newton if p.can_repair else newton + 0.5 * rtol * s.eps_lo
        else:  # feasible, or the inner stalled: bisect
            if fmax > p.target + o.tol:
                s.eps_lo = max(s.eps_lo, eps)  # no feasible point found at eps: search above it
            eps = 0.5 * (s.eps_lo + s.eps_hi)
        eps = min(max(eps, s.eps_lo), s.eps_hi)


def _find_cuts(problem: StabilizeProblem, options: StabilizeOptions, state: StabilizeState, M, generator):
    """The cut search (:prf:ref:`alg-stabilize`, step 3.2): local maxima of ``μ₂(D M)`` from the all-``s₊`` vertex,
    the newest members of the working set and as many random vertices."""
    p, n = problem, problem.n
    starts = torch.cat(
        [
            torch.full((1, n), p.hi, dtype=p.A.dtype),
            state.ds[-options.cut_restarts :],
            _random_vertices(options.cut_restarts, n, p.lo, p.hi, generator),
        ]
    )
    return _local_maxima(M, p.lo, p.hi, starts, flips=options.cut_flips, krylov=p.krylov)


def _violated(problem: StabilizeProblem, options: StabilizeOptions, state: StabilizeState, mus, found) -> list:
    """Distinct violated vertices not yet in the working set, worst first, at most ``cuts``."""
    fresh = []
    for i in torch.argsort(mus, descending=True).tolist():
        d = found[i]
        if (
            len(fresh) < options.cuts
            and mus[i] > problem.target + options.tol
            and not any(torch.equal(d, e) for e in list(state.ds) + fresh)
        ):
            fresh.append(d)
    return fresh


def _final_check(problem: StabilizeProblem, options: StabilizeOptions, M, krylov: int = 0, generator=None):
    """The final check (:prf:ref:`alg-stabilize`, steps 3.2–3.3): every vertex for ``n ≤ 16``, else local searches
    from ``restarts`` starts (dense, unless ``krylov``: flips judged by Lanczos, for a quick look)."""
    p, n = problem, problem.n
    if p.exact:
        return _enumerate(M, p.lo, p.hi, keep=options.cuts)
    starts = torch.cat(
        [
            torch.full((1, n), p.hi, dtype=p.A.dtype),
            _random_vertices(max(options.restarts - 1, 0), n, p.lo, p.hi, generator),
        ]
    )
    return _local_maxima(M, p.lo, p.hi, starts, flips=options.cut_flips, krylov=krylov)


def _end_game(
    problem: StabilizeProblem, options: StabilizeOptions, state: StabilizeState, rnd: int, M, mus, found, checked: bool
):
    """The end game (:prf:ref:`alg-stabilize`, step 3.4; :prf:ref:`prop-repair-all`): scaling (or shifting)
    ``A + Δ`` lowers ``μ₂(D·)`` of every vertex alike, so the worst vertex over all of them decides.
    Close the bracket to ``rel_tol / 2``, find the worst vertex by the final check, and return the
    repaired ``(‖Δ‖, Δ)`` if it is within ``rel_tol`` of the certified bound. A failed try leaves
    the state as it was (but for a better certified bound); its random starts come from a
    generator of its own, and after ``k`` failed tries the next waits ``k`` rounds."""
    p, o, s = problem, options, state
    s.tries += 1
    s.next_try = rnd + s.tries
    before = (s.E, s.h, s.eps_lo, s.eps_hi, s.E_hi)
    trial = torch.Generator().manual_seed(rnd)
    if s.eps_hi - s.eps_lo > o.rel_tol / 2 * s.eps_hi:
        _close_bracket(p, o, s, o.rel_tol / 2)
        M = p.A + s.eps_hi * s.E_hi
        mus, checked = _top(found, M)[0], False  # the vertices found so far, on the new point
    for quick in [] if checked else [p.krylov, 0] if p.krylov else [0]:  # a quick look first
        more, others = _final_check(p, o, M, quick, trial)
        mus, found = torch.cat([mus, more]), torch.cat([found, others])
        if p.upper(s.eps_hi, s.E_hi, float(mus.max()))[0] > (1 + o.rel_tol) * s.certified:
            break
    worst = int(mus.argmax())
    up = p.upper(s.eps_hi, s.E_hi, float(mus[worst]))
    if up[0] <= (1 + o.rel_tol) * s.certified:  # reached only after the full check
        s.eps_hi, s.E_hi = up[0], up[1] / up[0]
        s.mu_after = float(_top(found[worst][None], p.A + up[1])[0])
        return up
    s.E, s.h, s.eps_lo, s.eps_hi, s.E_hi = before
    return None


def _round(problem: StabilizeProblem, options: StabilizeOptions, state: StabilizeState, rnd: int, generator):
    """One cutting-plane round (:prf:ref:`alg-stabilize`, step 3): make the bracket's upper end
    feasible for the enlarged working set, close the bracket, look for violated vertices (the cut
    search, then the final check if it finds none), and try the end game when its repair is cheap.
    Records the round in ``state.history``; returns the fresh violated vertices and the end game's
    repaired ``(‖Δ‖, Δ)`` (or ``None``)."""
    p, o, s = problem, options, state
    _, _, fmax = _hinge(s.E_hi, s.eps_hi, p.A, s.ds, p.target)
    if fmax > p.target + o.tol:
        up = p.upper(s.eps_hi, s.E_hi, fmax)
        feasible = p.feasible
        eps_max = float(feasible.norm())
        s.eps_hi, s.E_hi = (eps_max, feasible / eps_max) if up is None else (up[0], up[1] / up[0])
    _close_bracket(p, o, s, s.rtol)
    M = p.A + s.eps_hi * s.E_hi
    mus, found = _find_cuts(p, o, s, M, generator)
    fresh, s.mu_after, checked = _violated(p, o, s, mus, found), float(mus.max()), False
    if not fresh:  # nothing violated that the cut search sees: the final check
        mus, found = _final_check(p, o, M, generator=generator)
        fresh, s.mu_after, checked = _violated(p, o, s, mus, found), float(mus.max()), True
    repaired = None
    cheap = fresh and p.can_repair and rnd >= s.next_try
    if cheap and p.upper(s.eps_hi, s.E_hi, s.mu_after)[0] <= (1 + o.rel_tol / 2) * s.eps_hi:
        repaired = _end_game(p, o, s, rnd, M, mus, found, checked)
        if repaired is not None:
            fresh = []
    s.history.append({"round": rnd, "eps": s.eps_hi, "norm_lower_bound": s.certified, "mu": s.mu_after,
                      "working_set": int(s.ds.shape[0])})  # fmt: skip
    return fresh, repaired


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
    with step control; the *outer* level (:func:`_close_bracket`) finds the smallest feasible ``η``
    by Newton steps on ``√(2H)`` (for one active eigenvalue ``η + (μ₂ − δ)/‖D v‖``) inside a bracket
    ``[η_lo, η_hi]``. Because ``√(2H)`` is convex in ``Δ`` the Newton point is a *certified*
    lower bound; an infeasible ``Δ`` is made feasible for the working set by a small scaling
    (``δ > 0``) or shift (``s₋ > 0``), which gives ``η_hi``; otherwise ``η_hi`` comes from inner
    solves that reach the target, with bisection. The maximum over all vertices ``D`` is handled
    by cutting planes: a working set grows by the worst vertices of the current ``A + Δ``
    (:func:`_find_cuts`, :func:`_violated`) until the worst one satisfies the bound within ``tol``
    (:func:`_final_check`). Rounds that add a vertex close the bracket to ``coarse_tol``
    (relative), the last one to ``rel_tol``. The end game (:func:`_end_game`) may end a run earlier
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
    mu0, D0 = worst_case_lognorm(A, (problem.lo, problem.hi), method=opts.method, restarts=opts.restarts,
                                 generator=generator)  # fmt: skip
    if mu0 <= delta or (problem.lo == 0 and delta == 0):
        # nothing to do; or the closed form: the feasible set is {diagonal, ≤ 0} (:prf:ref:`prop-zero`)
        Delta = torch.zeros_like(A) if mu0 <= delta else torch.diag(torch.diagonal(A).clamp(max=0)) - A
        mu_after, lower = (mu0, 0.0) if mu0 <= delta else (0.0, float(Delta.norm()))
        return StabilizeResult(perturbation=Delta, norm=float(Delta.norm()), mu_before=mu0, mu_after=mu_after,
                               target=delta, iterations=0, rounds=0, converged=True, working_set=0,
                               exact=problem.exact, norm_lower_bound=lower, vertices=torch.diagonal(D0)[None],
                               seconds=time.perf_counter() - t_start)  # fmt: skip
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
        bar.set_postfix_str(f"‖Δ‖ {state.eps_hi:.4f} ≥ {state.certified:.4f}, |W| {size}, μ* {state.mu_after:.4f}, "
                            f"tol {state.rtol:g}", refresh=False)  # fmt: skip
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
    return StabilizeResult(perturbation=Delta, norm=float(Delta.norm()), mu_before=mu0, mu_after=s.mu_after,
                           target=delta, iterations=s.iterations, rounds=s.round, converged=converged,
                           working_set=int(s.ds.shape[0]), exact=problem.exact, norm_lower_bound=s.certified,
                           history=s.history, vertices=s.ds, repaired=repaired is not None,
                           seconds=seconds_before + time.perf_counter() - t_start)  # fmt: skip


def euler_step_bound(mu_star: float, A_norm: float, h: float, hi: float = 1.0) -> float:
    """A certified Lipschitz constant of one Euler step ``x ↦ x + h σ(Ax + b)``:
    ``‖I + hDA‖₂ ≤ sqrt(1 + 2hμ* + h² s₊² ‖A‖₂²)`` (:prf:ref:`prop-euler-step`)."""
    return math.sqrt(max(0.0, 1 + 2 * h * mu_star + (h * hi * A_norm) ** 2))


def _all_vertices(n, lo, hi):
    return torch.cat(list(_vertices(n, lo, hi)))


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

    def forward(self, x):
        return self._linear(self.head, self.block(self._linear(self.lift, x.flatten(1))))

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
