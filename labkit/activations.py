"""One table of the elementwise activations of the book (§0.3): for each name its module, its
function and derivative, and the closure ``[s₋, s₊]`` of its slopes ``σ'(ℝ)``. The slopes give the
activation's ℓ2 Lipschitz constant ``max(|s₋|, |s₊|)`` (:prf:ref:`prop-product`), the box of
diagonal Jacobians of the log-norm bound (§1.2), the largest slope of the sNODE's Euler step
(§3.5) and whether a convex potential layer may use it (non-decreasing, slope at most 1, §4.6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Activation", "TABLE", "get", "module"]


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: its ``name``, ``module`` class, function ``fn``, its
    ``derivative`` (ReLU's taken as 0 at 0) and the closure ``slopes = (s₋, s₊)`` of ``σ'(ℝ)``."""

    name: str
    module: type
    fn: Callable
    derivative: Callable
    slopes: tuple[float, float]

    @property
    def lipschitz(self) -> float:
        """The ℓ2 Lipschitz constant of the elementwise map, ``max(|s₋|, |s₊|)``."""
        return max(abs(s) for s in self.slopes)


def _dtanh(z):
    return 1 - torch.tanh(z) ** 2


def _dsigmoid(z):
    s = torch.sigmoid(z)
    return s * (1 - s)


def _drelu(z):
    return (z > 0).to(z.dtype)


#: The activations by name.
TABLE = {
    "tanh": Activation("tanh", nn.Tanh, torch.tanh, _dtanh, (0.0, 1.0)),
    "sigmoid": Activation("sigmoid", nn.Sigmoid, torch.sigmoid, _dsigmoid, (0.0, 0.25)),
    "relu": Activation("relu", nn.ReLU, torch.relu, _drelu, (0.0, 1.0)),
    "softplus": Activation("softplus", nn.Softplus, F.softplus, torch.sigmoid, (0.0, 1.0)),
}


def get(name: str) -> Activation:
    """The :class:`Activation` called ``name``; ``ValueError`` naming those of :data:`TABLE`."""
    if name not in TABLE:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(TABLE)}.")
    return TABLE[name]


def module(name: str) -> nn.Module:
    """A new module of the activation ``name``."""
    return get(name).module()
