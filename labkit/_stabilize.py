"""The solver behind :func:`labkit.lognorm.stabilize` (§1.3), kept apart from the public module:
the extreme eigenpairs and the vertices of the box of slopes (enumeration, local maxima by flips,
Lanczos), the hinge functional and its tracked form, the inner iteration, the lower bound of the
outer problem, the repair of a target that cannot be met, and the phases of one round of the
outer bisection (closing the bracket, finding and checking cuts, the end game).

:mod:`labkit.lognorm` holds the public names (:func:`~labkit.lognorm.stabilize`, its options,
problem, state and result); the tests reach these internals to check them one by one.
"""

from __future__ import annotations

import math

import torch

from . import _validate

__all__ = ["inner_step"]

#: Above this size the inner steps follow the top eigenvectors (``TRACK_BLOCK`` more than those above δ; see _inner).
TRACK_MIN_N, TRACK_BLOCK = 16, 4

_MEMORY = 5


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
    for the Ritz values only (enough for the cutting planes of :func:`labkit.lognorm.stabilize`, which need
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


def _enough(problem, state, eps: float, rtol: float):
    """The inner level's early stop: the bracket it would give is within ``rtol``."""

    def test(E, F, G, fmax):
        lb = max(state.eps_lo, _lower_bound(eps, E, F, G))
        up = problem.upper(eps, E, fmax)
        ub = state.eps_hi if up is None else min(state.eps_hi, up[0])
        return ub - lb <= rtol * ub

    return test


def _close_bracket(problem, options, state, rtol: float) -> None:
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


def _find_cuts(problem, options, state, M, generator):
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


def _violated(problem, options, state, mus, found) -> list:
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


def _final_check(problem, options, M, krylov: int = 0, generator=None):
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


def _end_game(problem, options, state, rnd: int, M, mus, found, checked: bool):
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


def _round(problem, options, state, rnd: int, generator):
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
    s.history.append(
        {
            "round": rnd,
            "eps": s.eps_hi,
            "norm_lower_bound": s.certified,
            "mu": s.mu_after,
            "working_set": int(s.ds.shape[0]),
        }
    )
    return fresh, repaired


def _all_vertices(n, lo, hi):
    return torch.cat(list(_vertices(n, lo, hi)))
