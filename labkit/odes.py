"""Neural ODE blocks and the Euler-step residual networks that discretise them (§0.6, §0.7).

A residual block ``x ← x + h f(t, x)`` is one explicit Euler step of the ODE ``ẋ = f(t, x)``;
a stack of ``n`` blocks with ``h = T / n`` approximates the flow ``φ_T`` of the ODE, which a
:class:`NeuralODE` computes with an adaptive solver from torchdiffeq.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _validate, activations

__all__ = ["VectorField", "NeuralODE", "EulerResNet"]


def _activation(name):
    if isinstance(name, nn.Module):
        return name
    if name not in activations.TABLE:
        raise ValueError(f"activation must be one of {sorted(activations.TABLE)} or a module, got {name!r}.")
    return activations.module(name)


class VectorField(nn.Module):
    """The vector field ``f(t, x) = σ(A x + b)`` (``hidden=None``), the form studied in
    Chapter 1, or the two-layer ``f(t, x) = W₂ σ(W₁ x + b₁) + b₂`` (§0.7)."""

    def __init__(self, dim: int, hidden: int | None = None, activation="tanh"):
        super().__init__()
        dim = _validate.positive_int(dim, "dim")
        self.dim = dim
        self.sigma = _activation(activation)
        if hidden is None:
            self.A = nn.Linear(dim, dim)
            self.out = None
        else:
            self.A = nn.Linear(dim, _validate.positive_int(hidden, "hidden"))
            self.out = nn.Linear(hidden, dim)

    def forward(self, t, x):
        h = self.sigma(self.A(x))
        return h if self.out is None else self.out(h)


class NeuralODE(nn.Module):
    """Integrate ``ẋ = f(t, x)`` from ``0`` to ``T`` with torchdiffeq; return ``x(T)`` (§0.7).

    ``method``, ``rtol`` and ``atol`` go to ``torchdiffeq.odeint``. With ``adjoint=True`` the
    gradient is computed by solving the adjoint ODE backwards (memory independent of the number
    of steps; exact only up to the solver's tolerance); with ``adjoint=False`` autograd
    differentiates through the solver's steps. ``f`` must be an ``nn.Module`` so the adjoint
    method can find its parameters.
    """

    def __init__(
        self,
        func: nn.Module,
        T: float = 1.0,
        *,
        method: str = "dopri5",
        rtol: float = 1e-6,
        atol: float = 1e-8,
        adjoint: bool = False,
        options=None,
    ):
        super().__init__()
        if not isinstance(func, nn.Module):
            raise TypeError("func must be an nn.Module f(t, x).")
        self.func = func
        self.T = _validate.positive(T, "T")
        self.method = method
        self.rtol, self.atol = _validate.positive(rtol, "rtol"), _validate.positive(atol, "atol")
        self.adjoint = bool(adjoint)
        self.options = options

    def forward(self, x, t=None):
        """``x(T)``, or the whole trajectory at the times ``t`` (first time 0) if given."""
        import torchdiffeq

        odeint = torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint
        times = torch.tensor([0.0, self.T], dtype=x.dtype, device=x.device) if t is None else t
        kwargs = dict(method=self.method, rtol=self.rtol, atol=self.atol, options=self.options)
        if self.adjoint:
            kwargs["adjoint_params"] = tuple(self.func.parameters())
        traj = odeint(self.func, x, times, **kwargs)
        return traj[-1] if t is None else traj


class EulerResNet(nn.Module):
    """``steps`` residual blocks ``x ← x + h f(t_k, x)`` with ``h = T / steps``: the explicit
    Euler discretisation of :class:`NeuralODE` with the same ``f`` (:prf:ref:`prop-euler`)."""

    def __init__(self, func: nn.Module, T: float = 1.0, steps: int = 10):
        super().__init__()
        self.func = func
        self.T = _validate.positive(T, "T")
        self.steps = _validate.positive_int(steps, "steps")

    def forward(self, x):
        h = self.T / self.steps
        for k in range(self.steps):
            x = x + h * self.func(torch.tensor(k * h, dtype=x.dtype, device=x.device), x)
        return x
