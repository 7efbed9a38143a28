"""CLIP: Lipschitz regularisation by adversarially updated input pairs (Chapter 2; Bungert,
Raab, Roith, Schwinn, Tenbrinck).

The Lipschitz constant ``sup ‖f(x) − f(x')‖ / ‖x − x'‖`` is replaced by its maximum over a
finite set of pairs, :class:`PairSet`, which is moved by gradient ascent on the difference
quotient after every mini-batch (Algorithm 1); the training loss adds ``λ`` times that estimate
(Algorithm 2), and ``λ`` follows a target accuracy (:class:`LambdaSchedule`).
"""
from __future__ import annotations

import torch

from . import _validate
from .lipschitz import quotient

__all__ = ["quotient", "PairSet", "LambdaSchedule"]  # quotient: labkit.lipschitz.quotient, re-exported


class PairSet:
    """The pairs ``X_Lip`` with their per-pair step sizes (Chapter 2, Algorithm 1).

    ``update`` takes ``iters`` steps of gradient ascent on each pair's quotient (squared if
    ``squared``): a tentative step ``u + τ_p ∇_u``, ``v + τ_p ∇_v`` is *accepted per pair* only
    if that pair's quotient increased, and then ``τ_p`` is multiplied by ``growth``; otherwise
    the pair stays and ``τ_p`` is divided by ``growth``. So no accepted step ever lowers a
    quotient. The estimate is :meth:`estimate`: the largest quotient, a lower bound on the
    Lipschitz constant of the current network (it can never certify robustness).
    """

    def __init__(self, u: torch.Tensor, v: torch.Tensor, *, step: float = 1.0, growth: float = 1.3,
                 squared: bool = False, clamp: tuple[float, float] | None = None):
        if u.shape != v.shape or u.ndim < 2 or u.shape[0] == 0:
            raise ValueError(f"u and v must be non-empty batches of the same shape, got {tuple(u.shape)} "
                             f"and {tuple(v.shape)}.")
        self.u, self.v = u.detach().clone(), v.detach().clone()
        self.step = torch.full((u.shape[0],), _validate.positive(step, "step"), dtype=u.dtype, device=u.device)
        self.growth = _validate.positive(growth, "growth")
        if self.growth <= 1:
            raise ValueError(f"growth must exceed 1, got {growth}.")
        self.squared, self.clamp = bool(squared), clamp
        self.value: torch.Tensor | None = None  # the quotients at the last update

    @classmethod
    def from_batch(cls, x: torch.Tensor, *, mode: str = "partial_random", noise: float = 0.1,
                   generator=None, **options) -> "PairSet":
        """Pairs from a batch of inputs, as the authors' ``u_v_init``: ``"plain"`` pairs the first
        half with the second, ``"partial_random"`` pairs the second half ``u`` with
        ``u + U[0, noise)``, ``"noise"`` draws both from ``U[0, noise)``."""
        x = x.detach()
        half = x.shape[0] // 2
        if half == 0:
            raise ValueError("need a batch of at least two inputs to form pairs.")
        rand = lambda: noise * torch.rand(x[half:2 * half].shape, generator=generator).to(x)  # noqa: E731
        if mode == "plain":
            u, v = x[:half], x[half:2 * half]
        elif mode == "partial_random":
            u = x[half:2 * half]
            v = u + rand()
        elif mode == "noise":
            u, v = rand(), rand()
        else:
            raise ValueError(f"mode must be 'plain', 'partial_random' or 'noise', got {mode!r}.")
        return cls(u, v, **options)

    def __len__(self) -> int:
        return self.u.shape[0]

    def _values(self, model, u, v):
        return quotient(model, u, v, squared=self.squared)

    def update(self, model, iters: int = 1) -> torch.Tensor:
        """``iters`` accept/reject ascent steps; returns the quotients afterwards (detached)."""
        from .attacks import _frozen

        with _frozen(model):
            with torch.no_grad():
                best = self._values(model, self.u, self.v)
            for _ in range(_validate.positive_int(iters, "iters")):
                u = self.u.clone().requires_grad_(True)
                v = self.v.clone().requires_grad_(True)
                gu, gv = torch.autograd.grad(self._values(model, u, v).sum(), (u, v))
                shape = (-1,) + (1,) * (u.ndim - 1)
                tu = self.u + self.step.view(shape) * gu
                tv = self.v + self.step.view(shape) * gv
                if self.clamp is not None:
                    tu, tv = tu.clamp(*self.clamp), tv.clamp(*self.clamp)
                with torch.no_grad():
                    new = self._values(model, tu, tv)
                ok = new > best
                self.u = torch.where(ok.view(shape), tu, self.u).detach()
                self.v = torch.where(ok.view(shape), tv, self.v).detach()
                best = torch.where(ok, new, best)
                self.step = torch.where(ok, self.step * self.growth, self.step / self.growth)
        self.value = best.detach()
        return self.value

    def estimate(self) -> float:
        """The largest quotient (not squared) at the last update: a lower bound of Lip(f)."""
        if self.value is None:
            raise RuntimeError("call update(model) first.")
        v = float(self.value.max())
        return v ** 0.5 if self.squared else v

    def worst(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair with the largest quotient at the last update, as batches of one."""
        if self.value is None:
            raise RuntimeError("call update(model) first.")
        k = int(self.value.argmax())
        return self.u[k:k + 1], self.v[k:k + 1]


class LambdaSchedule:
    """The ``λ`` rule by a target accuracy (a discrepancy principle; Chapter 2): after each epoch,
    ``λ += increment`` if the measured accuracy exceeds ``target``, else ``λ = max(λ − increment, 0)``;
    ``λ = warmup_value`` during the first ``warmup`` epochs, and the rule acts every ``cooldown + 1``
    epochs. ``step(accuracy)`` returns the ``λ`` for the next epoch."""

    def __init__(self, lam: float, target: float, increment: float, *, warmup: int = 0,
                 warmup_value: float = 0.0, cooldown: int = 0):
        self.base = _validate.nonneg(lam, "lam")
        self.target = float(target)
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"target is an accuracy in [0, 1], got {target}.")
        self.increment = _validate.nonneg(increment, "increment")
        self.warmup, self.cooldown = int(warmup), int(cooldown)
        if self.warmup < 0 or self.cooldown < 0:
            raise ValueError("warmup and cooldown must be non-negative.")
        self.warmup_value = _validate.nonneg(warmup_value, "warmup_value")
        self.epoch, self._since = 0, 0
        self.lam = self.warmup_value if self.warmup > 0 else self.base
        self.history = [self.lam]

    def step(self, accuracy: float) -> float:
        self.epoch += 1
        if self.epoch < self.warmup:
            self.lam = self.warmup_value
        elif self.epoch == self.warmup:
            self.lam = self.base
        else:
            self._since += 1
            if self._since > self.cooldown:
                self._since = 0
                self.lam = self.lam + self.increment if accuracy > self.target else max(self.lam - self.increment, 0.0)
        self.history.append(self.lam)
        return self.lam
