"""The batched NCG iteration behind :func:`labkit.snode.ncg_train` and
:func:`labkit.snode.ncg_train_ensemble` (§3.4): the same arithmetic as the reference functions of
:mod:`labkit.snode` (:func:`~labkit.snode.adjoint_gradient`, :func:`~labkit.snode.sobolev_gradient`,
:func:`~labkit.snode.cg_beta`, :func:`~labkit.snode.sensitivity`, :func:`~labkit.snode.line_search`),
up to rounding, written for ``E`` independent networks at once and with as few operator calls as the
recursions allow:

* the forward sweep keeps the trajectory, and the sensitivity sweep reuses it (no second forward,
  and the loss of the batch comes from the same trajectory);
* the gradient's outer products ``h Σ_n q_{k,n} x_{k,n}ᵀ`` of all steps are one batched product;
* the Sobolev transform is one product with the cached inverse of its ``N × N`` operator;
* β and the step η stay tensors on the device: no host synchronisation inside an iteration.

Private: the public entry points and their documentation are in :mod:`labkit.snode`.
"""

from __future__ import annotations

import functools

import torch

#: The number of bisection steps of the cross-entropy line search (as in ``snode.line_search``).
_BISECTIONS = 60


@functools.lru_cache(maxsize=16)
def _sobolev_inverse(N: int, T: float) -> torch.Tensor:
    """The inverse of the cell-centred operator ``I − ∂²`` with mirrored ghost cells on ``N`` cells of
    ``[0, T]`` (the matrix that :func:`labkit.snode.sobolev_gradient` solves with), in float64."""
    c = (N / T) ** 2
    A = torch.zeros(N, N, dtype=torch.float64)
    idx = torch.arange(N)
    A[idx, idx] = 1 + 2 * c
    A[0, 0] = A[-1, -1] = 1 + c
    A[idx[1:], idx[:-1]] = -c
    A[idx[:-1], idx[1:]] = -c
    return torch.linalg.inv(A)


def sobolev_matrix(N: int, T: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(I − ∂²)⁻¹`` on ``N`` cells of ``[0, T]`` as a dense ``N × N`` matrix (computed once in
    float64 and cached), so that the Sobolev transform of a gradient is one product."""
    return _sobolev_inverse(int(N), float(T)).to(dtype=dtype, device=device)


class Batch:
    """The per-iteration constants of ``E`` networks on their batches: initial states ``x0``
    (``E × K × d``), ℓ2 targets or labels, and the network's activation, step and loss."""

    def __init__(self, x0, labels, *, h, sigma, dsigma, loss, classes, T=None):
        self.x0, self.labels, self.h, self.T = x0, labels, h, T
        self.sigma, self.dsigma, self.loss, self.classes = sigma, dsigma, loss, classes
        E, K, d = x0.shape
        if loss == "l2":
            target = torch.zeros(E, K, d, dtype=x0.dtype, device=x0.device)
            target.scatter_(2, labels.unsqueeze(2), 1.0)
            self.target = target


class Weights:
    """The per-step views of the stacked weights, made once per iteration and shared by the three
    sweeps: ``W[k]``, ``W[k]ᵀ`` (contiguous) and ``b[k]``, each ``E × …``."""

    def __init__(self, W, b):
        self.W, self.b = W, b
        self.Ws = W.unbind(1)
        self.WT = W.transpose(2, 3).contiguous().unbind(1)
        self.bs = b.unsqueeze(2).unbind(1)


def trajectory(P: Weights, B: Batch):
    """The states ``x_0 … x_N`` (a list of ``E × K × d``) and the stacked pre-activations ``Z``
    (``N × E × K × d``) of the Euler sweep."""
    x, Xs, Zs = B.x0, [B.x0], []
    for k in range(len(P.Ws)):
        z = torch.baddbmm(P.bs[k], x, P.WT[k])
        x = torch.add(x, B.sigma(z), alpha=B.h)
        Xs.append(x)
        Zs.append(z)
    return Xs, torch.stack(Zs)


def loss_gradient(xT, B: Batch):
    """``∂(mean loss)/∂x(T)`` per network, and the per-network mean loss and number correct."""
    K = xT.shape[1]
    logits = xT[:, :, : B.classes]
    correct = (logits.argmax(2) == B.labels).sum(1)
    if B.loss == "l2":
        r = xT - B.target
        return r / K, 0.5 * r.pow(2).sum(2).mean(1), correct
    logp = torch.log_softmax(logits, 2)
    loss = -logp.gather(2, B.labels.unsqueeze(2)).squeeze(2).mean(1)
    p = logp.exp()
    p.scatter_add_(2, B.labels.unsqueeze(2), -torch.ones_like(logits[:, :, :1]))
    lam = torch.zeros_like(xT)
    lam[:, :, : B.classes] = p / K
    return lam, loss, correct


def gradient(P: Weights, X, Z, lam, B: Batch, weight_decay: float):
    """The discrete adjoint gradient ``(gW, gb)`` from a trajectory (:prf:ref:`thm-discrete-adjoint`),
    the stacked states ``x_0 … x_{N−1}`` and the per-step ``σ'(z_k)``, which the sensitivity sweep
    reuses."""
    N = len(P.Ws)
    D = B.dsigma(Z)
    Ds = D.unbind(0)
    S = [None] * N
    for k in range(N - 1, -1, -1):
        S[k] = Ds[k] * lam
        lam = torch.baddbmm(lam, S[k], P.Ws[k], alpha=B.h)
    S, Xk = torch.stack(S), torch.stack(X[:-1])
    # all outer products at once: gW[e, k] = h Σ_n S[k, e, n]ᵀ X[k, e, n]
    gW = torch.matmul(S.permute(1, 0, 3, 2), Xk.transpose(0, 1)).mul_(B.h)
    gb = S.sum(2).transpose(0, 1).mul(B.h)
    if weight_decay:
        gW.add_(P.W, alpha=weight_decay * B.h)
        gb.add_(P.b, alpha=weight_decay * B.h)
    return gW, gb, Ds, Xk


#: Above this many multiply-adds the Sobolev transform on a CPU is the tridiagonal solve (``O(N)`` per
#: entry, ``4N`` small operations) rather than the product with the dense inverse (``O(N²)`` per entry):
#: at d = 196 and N = 150 the product would cost more arithmetic than the rest of an iteration.
PRODUCT_LIMIT = 5e7


def thomas(g: torch.Tensor, T: float) -> torch.Tensor:
    """``(I − ∂²_t)⁻¹ g`` along the first axis of ``g`` (``N`` cells of ``[0, T]``, Neumann conditions,
    mirrored ghost cells) by the Thomas algorithm, for all other axes at once: the solve of
    :func:`labkit.snode.sobolev_gradient`, which checks its arguments and calls this."""
    N = g.shape[0]
    if N == 1:
        return g.clone()
    c = (N / T) ** 2  # 1/h²
    diag = [1 + 2 * c] * N
    diag[0] = diag[-1] = 1 + c
    cp = [0.0] * N
    dp = torch.empty_like(g)
    cp[0] = -c / diag[0]
    dp[0] = g[0] / diag[0]
    for i in range(1, N):
        denom = diag[i] + c * cp[i - 1]
        cp[i] = -c / denom
        dp[i] = (g[i] + c * dp[i - 1]) / denom
    v = torch.empty_like(g)
    v[-1] = dp[-1]
    for i in range(N - 2, -1, -1):
        v[i] = dp[i] - cp[i] * v[i + 1]
    return v


def sobolev(g, M, mask, T: float):
    """The Sobolev transform along the cells (axis 1) of every network's gradient where ``mask``: one
    product with the cached inverse ``M`` on a GPU, or wherever it is cheap; the tridiagonal solve of
    :func:`thomas` on a CPU for large gradients."""
    E, N = g.shape[:2]
    if g.device.type == "cuda" or N * g.numel() <= PRODUCT_LIMIT:
        v = torch.matmul(M, g.reshape(E, N, -1)).view_as(g)
    else:
        v = thomas(g.transpose(0, 1), T).transpose(0, 1)
    if mask is None:
        return v
    return torch.where(mask.view(E, *([1] * (g.ndim - 1))), v, g)


def _dot(u, v):
    return (u[0] * v[0]).sum((1, 2, 3)) + (u[1] * v[1]).sum((1, 2))


def beta(rule: str, g, g_prev, d_prev):
    """The CG coefficient per network (:func:`labkit.snode.cg_beta`), as a tensor."""
    if rule == "none":
        return torch.zeros_like(g[1][:, 0, 0])
    if rule in ("fletcher-reeves", "dai-yuan"):
        num = _dot(g, g)
    else:
        y = (g[0] - g_prev[0], g[1] - g_prev[1])
        num = _dot(g, y)
    if rule in ("fletcher-reeves", "polak-ribiere"):
        den = _dot(g_prev, g_prev)
    else:
        y = (g[0] - g_prev[0], g[1] - g_prev[1])
        den = _dot(d_prev, y)
    out = torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, torch.ones_like(den), den))
    return out.clamp_min(0.0) if rule == "polak-ribiere" else out


def sensitivity(P: Weights, Xk, Ds, dW, db, B: Batch):
    """``ξ(T)`` in the direction ``(dW, db)`` from the stacked states ``Xk`` and the ``σ'(z_k)`` of the
    same weights (:prf:ref:`prop-sensitivity`): the terms ``dW_k x_k + db_k`` of all steps at once, then
    the recursion ``ξ_{k+1} = ξ_k + h σ'(z_k) ⊙ (W_k ξ_k + dW_k x_k + db_k)``."""
    R = torch.matmul(Xk, dW.transpose(0, 1).transpose(2, 3)).add_(db.transpose(0, 1).unsqueeze(2))
    xi = torch.zeros_like(Xk[0])
    Rs = R.unbind(0)
    for k in range(len(P.Ws)):
        xi = torch.addcmul(xi, Ds[k], torch.baddbmm(Rs[k], xi, P.WT[k]), value=B.h)
    return xi


def step(xT, xi, B: Batch, weight_decay, params, direction, trust: float):
    """The step η per network (:func:`labkit.snode.line_search`), as a tensor: the closed form for
    the ℓ2 loss, the trust-region bisection (a fixed number of halvings) for cross-entropy."""
    K = xT.shape[1]
    if weight_decay:
        pd = weight_decay * B.h * _dot(params, direction)
        dd = weight_decay * B.h * _dot(direction, direction)
    else:
        pd = dd = torch.zeros(xT.shape[0], dtype=xT.dtype, device=xT.device)
    if B.loss == "l2":
        num = (xi * (xT - B.target)).sum((1, 2)) / K + pd
        den = xi.pow(2).sum((1, 2)) / K + dd
        return torch.where(den > 0, -num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    z, q = xT[:, :, : B.classes], xi[:, :, : B.classes]
    q_true = q.gather(2, B.labels.unsqueeze(2)).squeeze(2)

    def slope(eta):
        p = torch.softmax(z + eta.view(-1, 1, 1) * q, 2)
        return ((p * q).sum(2) - q_true).sum(1) / K + pd + eta * dd

    zero = torch.zeros_like(pd)
    s0 = slope(zero)
    rms = (q.pow(2).sum((1, 2)) / K).sqrt()
    safe = torch.where(rms > 0, rms, torch.ones_like(rms))
    edge = -torch.sign(s0) * trust / safe
    keeps = (slope(edge) > 0) == (s0 > 0)  # no sign change in the region: the end is the minimiser
    a, b = torch.minimum(zero, edge), torch.maximum(zero, edge)
    for _ in range(_BISECTIONS):
        m = 0.5 * (a + b)
        up = slope(m) > 0
        b, a = torch.where(up, m, b), torch.where(up, a, m)
    eta = torch.where(keeps, edge, 0.5 * (a + b))
    only_penalty = torch.where(dd > 0, -s0 / torch.where(dd > 0, dd, torch.ones_like(dd)), zero)
    eta = torch.where(rms == 0, only_penalty, eta)
    return torch.where(s0 == 0, zero, eta)


class State:
    """The stacked weights ``W`` (``E × N × d × d``) and ``b`` of ``E`` networks and the CG memory,
    kept in buffers of fixed address (so that a captured CUDA graph reads and writes the same ones)."""

    def __init__(self, W, b):
        self.W, self.b = W, b
        self.g_prev = (torch.zeros_like(W), torch.zeros_like(b))
        self.d_prev = (torch.zeros_like(W), torch.zeros_like(b))


def iteration(state: State, B: Batch, *, M, mask, rule: str, restart: bool, weight_decay: float, trust: float):
    """One NCG iteration of every network on its batch (:prf:ref:`alg-ncg`), in place on ``state``;
    returns the per-network loss and number correct *before* the step. ``restart`` forgets the CG
    memory (the first iteration of a batch)."""
    W, b = state.W, state.b
    P = Weights(W, b)
    X, Z = trajectory(P, B)
    lam, loss, correct = loss_gradient(X[-1], B)
    gW, gb, D, Xk = gradient(P, X, Z, lam, B, weight_decay)
    if M is not None:
        gW, gb = sobolev(gW, M, mask, B.T), sobolev(gb, M, mask, B.T)
    g = (gW, gb)
    if restart:
        d = (-gW, -gb)
    else:
        bt = beta(rule, g, state.g_prev, state.d_prev)
        d = (
            torch.addcmul(-gW, bt.view(-1, 1, 1, 1), state.d_prev[0]),
            torch.addcmul(-gb, bt.view(-1, 1, 1), state.d_prev[1]),
        )
    xi = sensitivity(P, Xk, D, d[0], d[1], B)
    eta = step(X[-1], xi, B, weight_decay, (W, b), d, trust)
    W.addcmul_(eta.view(-1, 1, 1, 1), d[0])
    b.addcmul_(eta.view(-1, 1, 1), d[1])
    for buf, new in zip((*state.g_prev, *state.d_prev), (*g, *d)):
        buf.copy_(new)
    return loss, correct


class Graphed:
    """The two variants of :func:`iteration` (a batch's first, and the others) captured as CUDA
    graphs on static buffers: :meth:`load` copies a batch into them, a call replays one variant.
    The same arithmetic as the eager iteration, without one kernel launch from Python per operation."""

    def __init__(self, state: State, B: Batch, **options):
        self.B = B
        saved = [t.clone() for t in (state.W, state.b, *state.g_prev, *state.d_prev)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up, as capture requires; its steps are undone below
            for restart in (True, False):
                iteration(state, B, restart=restart, **options)
        torch.cuda.current_stream().wait_stream(side)
        self.graphs = {}
        for restart in (True, False):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = iteration(state, B, restart=restart, **options)
            self.graphs[restart] = (graph, out)
        for buf, old in zip((state.W, state.b, *state.g_prev, *state.d_prev), saved):
            buf.copy_(old)

    def load(self, x0, labels) -> None:
        self.B.x0.copy_(x0)
        self.B.labels.copy_(labels)
        if self.B.loss == "l2":
            self.B.target.zero_().scatter_(2, self.B.labels.unsqueeze(2), 1.0)

    def __call__(self, restart: bool):
        graph, out = self.graphs[restart]
        graph.replay()
        return out
