"""Adversarial attacks and robust accuracy (§0.3).

Every attack has the signature ``attack(model, x, y, eps) -> x_adv`` (extra options as keywords),
so :func:`robust_accuracy` can sweep any of them over a list of radii. Inputs are images in the
box [0, 1]; adversarial images stay in the box and within distance ``eps`` of ``x`` in the
attack's norm. Attacks never change the model's parameters, gradients or train/eval mode.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import _validate
from .runtime import progress_enabled, resolve_device

__all__ = [
    "frozen",
    "fgsm",
    "pgd",
    "pgd_l2",
    "pgd_l2_sphere",
    "gaussian_noise",
    "robust_accuracy",
    "minimal_l2",
    "median_minimal_norm",
    "pgd_curve",
    "NORMS",
]

NORMS = ("linf", "l2")


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Context manager: evaluate ``model`` in eval mode without touching its parameters'
    gradients; the mode and the ``requires_grad`` flags are restored on exit (§0.3)."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _check(model, x, y, eps, clamp):
    _validate.batch(x, y)
    eps = _validate.nonneg(eps, "eps")
    lo, hi = clamp
    if not lo < hi:
        raise ValueError(f"clamp must be (low, high) with low < high, got {clamp!r}.")
    _validate.finite(x, "x", "an attack on it would return NaN images")
    _validate.in_box(x, clamp)
    _validate.same_device(model, x)
    return eps


def _input_grad(model, x, y):
    with torch.enable_grad():  # attacks work inside a caller's torch.no_grad() too
        x = x.detach().requires_grad_(True)
        logits = model(x)
        _validate.labels_fit(logits, y, "y")
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _rand(fn, shape, generator, like):
    """Random numbers drawn on the CPU (same stream on every device), moved to ``like``."""
    return fn(shape, generator=generator, dtype=like.dtype).to(like.device)


def fgsm(model, x, y, eps, *, clamp=(0.0, 1.0)):
    """Fast gradient sign method: one l∞ step of size ``eps`` up the loss (§0.3).

    ``x_adv = clip(x + eps · sign(∇_x loss))``.
    """
    eps = _check(model, x, y, eps, clamp)
    with frozen(model):
        grad = _input_grad(model, x, y)
    return (x + eps * grad.sign()).clamp(*clamp).detach()


def _project(delta, eps, norm):
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = torch.clamp(eps / (_flat_norm(delta) + 1e-12), max=1.0)
    return delta * scale


def pgd(
    model, x, y, eps, *, norm="linf", steps=10, step_size=None, random_start=True, clamp=(0.0, 1.0), generator=None
):
    """Projected gradient descent on the loss in an l∞ or l2 ball (:prf:ref:`alg-pgd`).

    Starts at a random point of the ball (``random_start``), takes ``steps`` steps of size
    ``step_size`` (default ``2.5 · eps / steps``) along the sign of the gradient (l∞) or the
    normalised gradient (l2), projects back onto the ball and clamps to the image box. Keeps,
    per example, the first iterate that is misclassified, so a success is never undone by a
    later step. The result is always inside the ball and the box.

    ``eps`` is a number, or a tensor of per-example radii of shape ``(N,)`` (used to attack each
    point at a fraction of its own certified radius, §4.4); ``step_size`` then scales with it.
    """
    if isinstance(eps, torch.Tensor) and eps.ndim == 1:
        _check(model, x, y, 0.0, clamp)
        if eps.shape[0] != x.shape[0] or not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
            raise ValueError(
                f"per-example eps must be {x.shape[0]} finite non-negative radii, got shape {tuple(eps.shape)}."
            )
        eps = eps.detach().to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))
        if step_size is not None:
            raise ValueError("with per-example eps the step size is 2.5 · eps / steps; leave step_size unset.")
    else:
        eps = _check(model, x, y, eps, clamp)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    steps = _validate.positive_int(steps, "steps")
    alpha = 2.5 * eps / steps if step_size is None else _validate.nonneg(step_size, "step_size")
    x = x.detach()
    if not bool(torch.as_tensor(eps).any()):
        return x.clone()
    with frozen(model):
        if random_start and norm == "linf":
            delta = eps * (2 * _rand(torch.rand, x.shape, generator, x) - 1)
        elif random_start:
            noise = _rand(torch.randn, x.shape, generator, x)
            radius = _rand(torch.rand, (x.shape[0],), generator, x).view(-1, *([1] * (x.ndim - 1))) * eps
            delta = noise / (_flat_norm(noise) + 1e-12) * radius
        else:
            delta = torch.zeros_like(x)
        x_adv = (x + delta).clamp(*clamp)
        best = x_adv.clone()
        fooled = model(x_adv).argmax(1) != y
        for _ in range(steps):
            grad = _input_grad(model, x_adv, y)
            if norm == "linf":
                step = alpha * grad.sign()
            else:
                step = alpha * grad / (_flat_norm(grad) + 1e-12)
            delta = _project(x_adv + step - x, eps, norm)
            x_adv = (x + delta).clamp(*clamp).detach()
            with torch.no_grad():
                newly = (model(x_adv).argmax(1) != y) & ~fooled
            best[~fooled] = x_adv[~fooled]
            fooled |= newly
    return best.detach()


def pgd_l2_sphere(model, x, y, eps, *, steps=7, step_size=0.5, clamp=(0.0, 1.0), generator=None):
    """The CLIP authors' l2 attack (§2.5), kept for comparison with their
    numbers; :func:`pgd` with ``norm="l2"`` is the standard one.

    Starts at a uniform random perturbation rescaled to norm ``eps``; each step adds
    ``step_size · sign(∇_x loss)`` (an l∞ step), clamps to the box and rescales the perturbation to
    norm exactly ``eps`` (the *sphere*, not the ball); examples already misclassified are frozen;
    the result is clamped to the box, so its distance from ``x`` is at most ``eps``.
    """
    eps = _check(model, x, y, eps, clamp)
    steps = _validate.positive_int(steps, "steps")
    alpha = _validate.nonneg(step_size, "step_size")
    x = x.detach()
    if eps == 0:
        return x.clone()

    def to_sphere(delta):
        return delta * (eps / (_flat_norm(delta) + 1e-12))

    with frozen(model):
        x_adv = (x + to_sphere(2 * _rand(torch.rand, x.shape, generator, x) - 1)).clamp(*clamp)
        for _ in range(steps):
            with torch.no_grad():
                active = model(x_adv).argmax(1) == y
            if not bool(active.any()):
                break
            grad = _input_grad(model, x_adv, y)
            stepped = (x_adv + alpha * grad.sign()).clamp(*clamp)
            stepped = x + to_sphere(stepped - x)
            x_adv = torch.where(active.view(-1, *([1] * (x.ndim - 1))), stepped, x_adv).detach()
    return x_adv.clamp(*clamp).detach()


def gaussian_noise(model, x, y, eps, *, clamp=(0.0, 1.0), generator=None):
    """Add Gaussian noise of standard deviation ``eps`` per pixel and clamp (not an attack on the
    model, a baseline that shows how much worse a real attack is; §0.5)."""
    eps = _check(model, x, y, eps, clamp)
    noise = _rand(torch.randn, x.shape, generator, x)
    return (x + eps * noise).clamp(*clamp).detach()


def robust_accuracy(
    model, data: Dataset, attack, eps_list, *, batch_size=256, device=None, progress=None
) -> dict[float, float]:
    """Accuracy of ``model`` on ``data`` after ``attack`` at each radius in ``eps_list``.

    ``attack`` is one of this module's attacks, or a ``functools.partial`` of one with options,
    or any callable ``attack(model, x, y, eps)``. Returns ``{eps: accuracy}`` (§0.3).
    """
    if not callable(attack):
        raise TypeError(f"attack must be callable, got {type(attack).__name__}.")
    eps_values = [_validate.nonneg(e, "eps") for e in (eps_list if hasattr(eps_list, "__iter__") else [eps_list])]
    if not eps_values:
        raise ValueError("eps_list is empty.")
    dev = resolve_device(device)
    show = progress_enabled() if progress is None else progress
    model = model.to(dev)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    correct = {e: 0 for e in eps_values}
    total = 0
    bar = tqdm(
        total=len(eps_values) * len(loader), desc=getattr(attack, "__name__", "attack"), disable=not show, leave=False
    )
    for xb, yb in loader:
        xb, yb = xb.to(dev), yb.to(dev)
        total += yb.shape[0]
        for e in eps_values:
            x_adv = attack(model, xb, yb, e)
            with torch.no_grad(), frozen(model):
                correct[e] += int((model(x_adv).argmax(1) == yb).sum())
            bar.update()
    bar.close()
    if total == 0:
        raise ValueError("data is empty.")
    return {e: correct[e] / total for e in eps_values}


def pgd_l2(model, x, y, eps, **options):
    """:func:`pgd` in the l2 ball (a named shortcut for :func:`robust_accuracy`)."""
    return pgd(model, x, y, eps, norm="l2", **options)


def minimal_l2(
    model, x, y, radii, *, steps: int = 20, bisections: int = 0, clamp=(0.0, 1.0), generator=None
) -> torch.Tensor:
    """An upper estimate of each input's minimal adversarial ℓ2 norm (§3.5), by a per-input search
    over the radius: :func:`pgd` (``norm="l2"``, ``steps`` steps) at each radius of the increasing
    grid ``radii`` until it changes the prediction away from ``y``, then ``bisections`` halvings of
    the bracket between the last radius that failed (or 0) and the smallest norm found, each a fresh
    PGD run at the bracket's midpoint, input by input. Returns the norm ``‖x_adv − x‖`` of the
    closest adversarial example found (at most the radius that found it); 0 for an input
    misclassified already, ``inf`` where no radius of the grid succeeds (the input is robust *up to
    the search's reach*, ``radii[-1]``, as far as this attack can tell). A stronger attack can only
    lower these numbers."""
    _validate.batch(x, y)
    radii = [float(_validate.positive(r, "radius")) for r in radii]
    if not radii or any(b <= a for a, b in zip(radii, radii[1:])):
        raise ValueError(f"radii must be a non-empty increasing list of positive numbers, got {radii!r}.")
    bisections = _validate.nonneg_int(bisections, "bisections")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    def attack(idx, eps):
        adv = pgd(model, x[idx], y[idx], eps, norm="l2", steps=steps, clamp=clamp, generator=gen)
        with frozen(model), torch.no_grad():
            fooled = model(adv).argmax(1) != y[idx]
        return fooled, _flat_norm(adv - x[idx]).flatten()

    with frozen(model), torch.no_grad():
        wrong = model(x).argmax(1) != y
    out = torch.where(wrong, 0.0, float("inf")).to(torch.float64)
    lo = torch.zeros_like(out)  # the largest radius known to fail, per input
    for r in radii:
        todo = torch.isinf(out)
        if not todo.any():
            break
        idx = todo.nonzero().flatten()
        fooled, dist = attack(idx, r)
        out[idx[fooled]] = dist[fooled].to(out)
        lo[idx[~fooled]] = r
    for _ in range(bisections):
        idx = (torch.isfinite(out) & (out > 0)).nonzero().flatten()
        if not len(idx):
            break
        mid = 0.5 * (torch.minimum(lo[idx], out[idx]) + out[idx])
        fooled, dist = attack(idx, mid.to(x.dtype))
        out[idx[fooled]] = torch.minimum(out[idx[fooled]], dist[fooled].to(out))
        lo[idx[~fooled]] = mid[~fooled]
    return out.to(x.dtype)


def median_minimal_norm(norms) -> float:
    """The median minimal adversarial norm of a set of attacked inputs (§3.5), from the per-input
    norms of an attack such as :func:`minimal_l2` or :func:`labkit.snode.sensitivity_attack`: 0
    marks an input misclassified already, which has no margin to measure and is left out; ``inf``
    (or ``None``, as a record stores it) an input the attack never flipped, which is kept as
    *censored*: robust at least up to the attack's reach, so it ranks above every norm found. The
    median over the correctly classified inputs is ``inf`` where more than half of them are
    censored (read: above the reach), and ``nan`` where none is correctly classified. Dropping the
    censored inputs, or keeping the zeros, would bias the median (down, and towards accuracy)."""
    values = [math.inf if v is None else float(v) for v in norms]
    if any(v < 0 or math.isnan(v) for v in values):
        raise ValueError("minimal norms must be non-negative numbers, inf or None.")
    kept = sorted(v for v in values if v > 0)
    if not kept:
        return math.nan
    n, mid = len(kept), len(kept) // 2
    return kept[mid] if n % 2 else 0.5 * (kept[mid - 1] + kept[mid])


def pgd_curve(
    model,
    x,
    y,
    radii,
    *,
    steps: int = 10,
    rel_step: float | None = None,
    restarts: int = 1,
    monotone: bool = True,
    clamp=(0.0, 1.0),
    batch_size: int = 256,
    generator=None,
) -> list[float]:
    """Accuracy of ``model`` on ``(x, y)`` under ℓ2 :func:`pgd` at each radius of ``radii`` (§5.4).

    Each attack takes ``steps`` steps of ``rel_step · ε`` (Foolbox's relative step size; default
    ``2.5 ε / steps``) from ``restarts`` random starts; a point is broken at ``ε`` when any start
    fools the model. With ``monotone`` (default) a point broken at a radius counts as broken at
    every larger one (the larger ball holds the same adversarial example), and only the points not
    yet broken are attacked: stronger and cheaper than attacking each radius afresh, which
    ``monotone=False`` does (what a paper that attacks each radius separately reports). A radius of
    0 gives the clean accuracy."""
    _validate.batch(x, y)
    eps = [_validate.nonneg(e, "radius") for e in radii]
    if not eps or any(b < a for a, b in zip(eps, eps[1:])):
        raise ValueError(f"radii must be a non-empty non-decreasing list, got {list(radii)!r}.")
    steps, restarts = _validate.positive_int(steps, "steps"), _validate.positive_int(restarts, "restarts")
    if rel_step is not None:
        rel_step = _validate.positive(rel_step, "rel_step")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    with frozen(model), torch.no_grad():
        clean = torch.cat([model(xb).argmax(1) == yb for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
    alive, out = clean.clone(), []
    for e in eps:
        ok = (alive if monotone else clean).clone()
        if e > 0:
            for _ in range(restarts):
                idx = ok.nonzero().flatten()
                for chunk in idx.split(batch_size):
                    if chunk.numel() == 0:
                        continue
                    step = None if rel_step is None else rel_step * e
                    adv = pgd(
                        model, x[chunk], y[chunk], e, norm="l2", steps=steps, step_size=step, clamp=clamp, generator=gen
                    )
                    with frozen(model), torch.no_grad():
                        ok[chunk] = model(adv).argmax(1) == y[chunk]
        if monotone:
            alive = ok
        out.append(float(ok.float().mean()))
    return out
