"""Lipschitz constants: logarithmic norms, spectral norms, lower and upper bounds (§0.2).

A network's l2 Lipschitz constant ``L`` lies between two computable numbers: a *lower bound*
found by searching for inputs where the network stretches distances most (:func:`lower_bound`),
and an *upper bound* such as the product of the layers' norms (:func:`upper_bound`). The gap
between the two is the subject of Chapter 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from . import _validate, activations

__all__ = [
    "mu",
    "spectral_norm",
    "PowerIteration",
    "PowerIterationReport",
    "quotient",
    "lower_bound",
    "upper_bound",
    "ACTIVATION_LIPSCHITZ",
]


def _square(A, name="A") -> torch.Tensor:
    A = torch.as_tensor(A)
    if not A.is_floating_point():
        A = A.double()
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(A.shape)}.")
    if A.shape[0] == 0:
        raise ValueError(f"{name} is an empty 0×0 matrix; its log norm is not defined.")
    _validate.finite(A, name, "its log norm is not defined")
    return A


def mu(A, p=2) -> torch.Tensor:
    """Logarithmic norm ``μ_p(A) = lim_{h↓0} (‖I + hA‖_p − 1)/h`` (:prf:ref:`def-lognorm`).

    Closed forms: ``μ_1`` is the largest column sum ``a_jj + Σ_{i≠j} |a_ij|``, ``μ_∞`` the
    largest row sum ``a_ii + Σ_{j≠i} |a_ij|``, and ``μ_2`` the largest eigenvalue of the
    symmetric part ``(A + Aᵀ)/2``. Unlike a norm it can be negative. Returns a 0-d tensor that
    is differentiable in ``A``. ``p`` is 1, 2 or ``inf`` (``float('inf')`` or ``'inf'``).
    """
    A = _square(A)
    if p in (float("inf"), "inf", math.inf):
        p = "inf"
    if p not in (1, 2, "inf"):
        raise ValueError(f"p must be 1, 2 or inf, got {p!r}.")
    if p == 2:
        return torch.linalg.eigvalsh(0.5 * (A + A.T))[-1]
    M = A if p == "inf" else A.T  # rows of M are the rows (inf) or the columns (1) of A
    off = M.abs().sum(1) - M.diagonal().abs()
    return (M.diagonal() + off).max()


def spectral_norm(W) -> torch.Tensor:
    """Exact spectral norm ``‖W‖_2`` (largest singular value) of a matrix (§0.2).

    For a convolution this is *not* the norm of its reshaped kernel: use a
    :class:`PowerIteration` on the convolution operator at the real input size instead.
    """
    W = torch.as_tensor(W)
    if W.ndim != 2:
        raise ValueError(
            f"spectral_norm needs a matrix, got shape {tuple(W.shape)}; for a "
            "convolution use PowerIteration on the operator itself."
        )
    _validate.finite(W, "W", "its spectral norm is not defined")
    return torch.linalg.matrix_norm(W if W.is_floating_point() else W.double(), ord=2)


@dataclass
class PowerIterationReport:
    """Outcome of :meth:`PowerIteration.run`: estimate, iterations, convergence, history."""

    sigma: float
    iterations: int
    converged: bool
    rel_change: float
    history: list = field(default_factory=list)


class PowerIteration:
    """Power iteration for the largest singular value of a linear operator (§0.2).

    ``op`` is a matrix or a function ``x -> W x`` acting on tensors of shape ``shape``; for a
    function, ``adjoint`` is ``y -> Wᵀ y``. The unit vector ``u`` persists between calls to
    :meth:`run`, so a few steps per training step follow a slowly changing ``W`` (warm start).
    The estimate approaches ``‖W‖_2`` from below: it is a lower bound, never an upper one.
    """

    def __init__(self, op, adjoint=None, shape=None, *, generator=None, dtype=None, device=None):
        if isinstance(op, torch.Tensor):
            if op.ndim != 2:
                raise ValueError(f"a matrix operator must be 2-D, got shape {tuple(op.shape)}.")
            W = op
            self.op, self.adjoint = (lambda x: W @ x), (lambda y: W.T @ y)
            shape = (W.shape[1],)
            dtype, device = W.dtype, W.device
        else:
            if not callable(op) or not callable(adjoint) or shape is None:
                raise TypeError("give a matrix, or op and adjoint functions with the input shape.")
            self.op, self.adjoint = op, adjoint
        u = torch.randn(tuple(shape), generator=generator, dtype=dtype or torch.get_default_dtype())
        self.u = (u / u.norm()).to(device) if device is not None else u / u.norm()
        self.sigma = 0.0
        self.iterations = 0

    @torch.no_grad()
    def run(self, max_iter: int = 100, tol: float = 1e-7) -> PowerIterationReport:
        """Iterate until the estimate changes by less than ``tol`` (relative) or ``max_iter``."""
        max_iter = _validate.positive_int(max_iter, "max_iter")
        tol = _validate.nonneg(tol, "tol")
        history, converged, rel = [], False, float("inf")
        for _ in range(max_iter):
            v = self.op(self.u)
            sigma = float(v.norm())
            if not math.isfinite(sigma):
                raise ValueError("the operator returned NaN or inf: check its weights and the start vector.")
            if sigma == 0.0:
                raise ValueError(
                    "the operator maps the current vector to zero; restart with "
                    "another generator or check the operator."
                )
            u = self.adjoint(v / sigma)
            self.u = u / u.norm()
            rel = abs(sigma - self.sigma) / sigma
            self.sigma = sigma
            self.iterations += 1
            history.append(sigma)
            if rel < tol:
                converged = True
                break
        return PowerIterationReport(self.sigma, len(history), converged, rel, history)


#: Lipschitz constants (l2, elementwise) of activations that :func:`upper_bound` accepts.
ACTIVATION_LIPSCHITZ = {
    **{a.module: (lambda m, a=a: a.lipschitz) for a in activations.TABLE.values()},  # the named ones
    nn.LeakyReLU: lambda m: max(1.0, abs(m.negative_slope)),
    nn.ELU: lambda m: max(1.0, m.alpha),
    nn.GELU: lambda m: 1.13,
    nn.Identity: lambda m: 1.0,
    nn.Flatten: lambda m: 1.0,
    nn.Dropout: lambda m: 1.0,
}


def upper_bound(model: nn.Module) -> float:
    """Product of the layers' l2 Lipschitz constants of a sequential model (:prf:ref:`prop-product`).

    Linear layers contribute their exact spectral norm, activations their slope bound from
    :data:`ACTIVATION_LIPSCHITZ`; nested ``nn.Sequential`` blocks are multiplied through. The
    product is a valid upper bound and usually a loose one. Other modules raise ``TypeError``.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"upper_bound needs an nn.Sequential, got {type(model).__name__}.")
    bound = 1.0
    for layer in model:
        if isinstance(layer, nn.Sequential):
            bound *= upper_bound(layer)
        elif isinstance(layer, nn.Linear):
            bound *= float(spectral_norm(layer.weight.detach()))
        elif type(layer) in ACTIVATION_LIPSCHITZ:
            bound *= ACTIVATION_LIPSCHITZ[type(layer)](layer)
        else:
            raise TypeError(
                f"upper_bound does not know the Lipschitz constant of {type(layer).__name__}; "
                f"it handles Linear, nested Sequential and {', '.join(t.__name__ for t in ACTIVATION_LIPSCHITZ)}."
            )
    return bound


def _jacobian_norms(f, x):
    """Exact ‖J_f(x_i)‖_2 for each example of the batch ``x``."""
    norms = []
    for xi in x:
        J = torch.autograd.functional.jacobian(lambda z: f(z.unsqueeze(0)).squeeze(0), xi)
        J = J.reshape(-1, xi.numel())
        norms.append(torch.linalg.matrix_norm(J, ord=2))
    return torch.stack(norms)


def quotient(f, u: torch.Tensor, v: torch.Tensor, *, squared: bool = False) -> torch.Tensor:
    """Per-pair difference quotient ``‖f(u) − f(v)‖₂ / ‖u − v‖₂`` (inputs and outputs flattened),
    or its square; every value is a lower bound of the Lipschitz constant. Pairs with ``u = v``
    give 0, not NaN (§0.2; CLIP's pairs in §2.3)."""
    if u.shape != v.shape or u.ndim < 2:
        raise ValueError(f"u and v must be batches of the same shape, got {tuple(u.shape)} and {tuple(v.shape)}.")
    num = (f(u) - f(v)).flatten(1).pow(2).sum(1)
    den = (u - v).flatten(1).pow(2).sum(1)
    q2 = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
    return q2 if squared else q2.clamp_min(1e-30).sqrt() * (q2 > 0)


def lower_bound(
    f,
    x: torch.Tensor,
    *,
    method: str = "pairs",
    steps: int = 50,
    lr: float = 0.01,
    init_radius: float = 0.05,
    generator=None,
) -> float:
    """A lower bound on the l2 Lipschitz constant of ``f`` near the inputs ``x`` (§0.2).

    ``method="pairs"``: start from pairs ``(x_i, x_i + small noise)`` and run gradient ascent on
    the difference quotient ``‖f(a) − f(b)‖ / ‖a − b‖`` over both points (Adam, ``steps``
    steps); return the largest quotient met on the way. ``method="jacobian"``: the largest
    exact spectral norm of the input–output Jacobian over the batch. Both are attained values
    of a quantity whose supremum is ``L``, so both are lower bounds; random sampling alone
    finds far smaller values (§0.11).
    """
    _validate.batch(x)
    _validate.finite(x, "x", "no lower bound can come from such inputs")
    if method not in ("pairs", "jacobian"):
        raise ValueError(f"method must be 'pairs' or 'jacobian', got {method!r}.")
    was_training = getattr(f, "training", None)
    if isinstance(f, nn.Module):
        f.eval()
        params = [(p, p.requires_grad) for p in f.parameters()]
        for p, _ in params:
            p.requires_grad_(False)
    try:
        x = x.detach()
        if method == "jacobian":
            return float(_jacobian_norms(f, x).max())
        steps = _validate.positive_int(steps, "steps")
        _validate.positive(init_radius, "init_radius")
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        a = x.clone().requires_grad_(True)
        b = (x + init_radius * noise / noise.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))).requires_grad_(
            True
        )
        opt = torch.optim.Adam([a, b], lr=_validate.positive(lr, "lr"))
        best = 0.0
        for _ in range(steps + 1):
            q = quotient(f, a, b)
            best = max(best, float(q.detach().max()))
            opt.zero_grad()
            (-q.sum()).backward()
            opt.step()
        return best
    finally:
        if isinstance(f, nn.Module):
            for p, flag in params:
                p.requires_grad_(flag)
            f.train(was_training)
