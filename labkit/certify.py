"""Margin certificates for l2 robustness (§0.4).

If the logits ``f`` are ``L``-Lipschitz in l2, each difference ``f_y - f_j`` is
``√2·L``-Lipschitz, so no perturbation of l2 norm at most ``margin / (√2·L)`` can change a
correct prediction. Certified accuracy at radius ``eps`` counts the test points that are
correctly classified and whose radius exceeds ``eps``.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from . import _validate
from .runtime import resolve_device

__all__ = ["margin", "certified_radius", "lln_radius", "accuracy_at", "certified_accuracy"]


def _check_logits(logits, labels):
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating torch.Tensor of shape (N, K).")
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2, got {tuple(logits.shape)}.")
    bad = ~torch.isfinite(logits).all(1)
    if bool(bad.any()):  # an inf logit would certify an infinite radius, a NaN one a NaN radius
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"logits must be finite; rows {rows} hold NaN or inf: no certificate rests on them.")
    _validate.labels(labels, n=logits.shape[0], classes=logits.shape[1])


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``f_y(x) - max_{j≠y} f_j(x)`` per row: positive exactly when the prediction is right."""
    _check_logits(logits, labels)
    labels = labels.long()
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(1).values


def certified_radius(logits: torch.Tensor, labels: torch.Tensor, lipschitz: float) -> torch.Tensor:
    """Certified l2 radius ``max(margin, 0) / (√2 · lipschitz)`` per example (:prf:ref:`thm-margin`).

    ``lipschitz`` must be an upper bound of the l2 Lipschitz constant of the logits; a
    misclassified point gets radius 0.
    """
    L = _validate.positive(lipschitz, "lipschitz")
    return margin(logits, labels).clamp(min=0) / (math.sqrt(2.0) * L)


def lln_radius(
    logits: torch.Tensor, labels: torch.Tensor, pair_norms: torch.Tensor, lipschitz: float = 1.0
) -> torch.Tensor:
    """Pairwise certified radius for a last-layer-normalised head (§4.2.1):
    ``min_{j≠y} (f_y − f_j) / (‖ŵ_y − ŵ_j‖ · L)``, clamped at 0, where ``pair_norms[i, j] =
    ‖ŵ_i − ŵ_j‖`` and ``L`` bounds the constant of the features feeding the head. No √2 here: the
    head is not 1-Lipschitz, so the √2 rule would be unsound for it."""
    _check_logits(logits, labels)
    L = _validate.positive(lipschitz, "lipschitz")
    K = logits.shape[1]
    if not isinstance(pair_norms, torch.Tensor):
        raise TypeError(f"pair_norms must be a torch.Tensor of shape ({K}, {K}), got {type(pair_norms).__name__}.")
    if pair_norms.shape != (K, K):
        raise ValueError(f"pair_norms must be {K}×{K}, got {tuple(pair_norms.shape)}.")
    labels = labels.long()
    gaps = logits.gather(1, labels[:, None]) - logits  # f_y − f_j
    norms = pair_norms.to(logits)[labels]  # ‖ŵ_y − ŵ_j‖
    ratio = gaps / norms.clamp_min(1e-12)
    ratio = ratio.scatter(1, labels[:, None], float("inf"))
    return ratio.min(1).values.clamp(min=0) / L


def accuracy_at(radii: torch.Tensor, eps) -> list[float]:
    """The certified accuracy at each radius of ``eps`` from per-point certified ``radii`` (0 for a
    misclassified point, §0.4): the fraction of points whose radius is strictly above the radius,
    since a certificate of radius ``r`` covers the open ball ``‖δ‖ < r``. The one place this is
    computed."""
    radii = torch.as_tensor(radii)
    return [float((radii > _validate.nonneg(e, "eps")).float().mean()) for e in eps]


def certified_accuracy(model, data: Dataset, eps, lipschitz: float, *, batch_size=512, device=None):
    """Fraction of ``data`` that is correct with certified radius above ``eps`` (§0.4).

    ``eps`` may be a number (returns a float) or a list (returns ``{eps: accuracy}``).
    At ``eps = 0`` this is the clean accuracy.
    """
    scalar = not hasattr(eps, "__iter__")
    eps_values = [_validate.nonneg(e, "eps") for e in ([eps] if scalar else eps)]
    if not eps_values:
        raise ValueError("eps is an empty list: give at least one radius.")
    _validate.positive(lipschitz, "lipschitz")
    dev = resolve_device(device)
    was_training = model.training
    model.eval().to(dev)
    radii = []
    with torch.no_grad():
        for xb, yb in DataLoader(data, batch_size=batch_size, shuffle=False):
            radii.append(certified_radius(model(xb.to(dev)), yb.to(dev), lipschitz).cpu())
    model.train(was_training)
    if not radii:
        raise ValueError("data is empty.")
    r = torch.cat(radii)
    acc = dict(zip(eps_values, accuracy_at(r, eps_values)))
    return acc[eps_values[0]] if scalar else acc
