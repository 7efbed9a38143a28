"""Argument checks shared by labkit's modules: one clear error before any work is done."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch


def batch(x, y=None, *, what: str = "x") -> None:
    """``x`` a floating tensor with a batch dimension; ``y`` int64-like labels of the same length."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating tensor (images in [0, 1]), got {x.dtype}.")
    if x.ndim < 2:
        raise ValueError(f"{what} must have a batch dimension first, got shape {tuple(x.shape)}.")
    if y is not None:
        labels(y, n=x.shape[0])


def labels(y, *, n: int | None = None, classes: int | None = None) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(y).__name__}.")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"labels must be an integer tensor (int64), got {y.dtype}.")
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(y.shape)}.")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{n} inputs but {y.shape[0]} labels.")
    if classes is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"labels must lie in 0..{classes - 1}, found {int(y.min())}..{int(y.max())}.")


def nonneg(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and non-negative, got {value!r}.")
    return v


def positive(value, name: str) -> float:
    v = nonneg(value, name)
    if v == 0:
        raise ValueError(f"{name} must be positive, got {value!r}.")
    return v


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def nonneg_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    return value


def writable(path, what: str) -> Path:
    """``path`` as a ``Path`` after checking that a file can be written there (its folder is made
    if missing), so that a run of hours does not end on a path it cannot write; ``OSError`` naming
    ``what`` and the path otherwise. Temporary files that a killed atomic write left beside it
    (``.<name>.*.tmp``) are removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise OSError(f"cannot write the {what} {path}: {err.strerror or err}.") from None
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    return path


def finite(x, what: str, consequence: str = "") -> None:
    """``x`` (a tensor) holds no NaN or inf; ``ValueError`` naming ``what`` otherwise."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} holds NaN or inf{': ' + consequence if consequence else ''}.")


def in_box(x, box, what: str = "x") -> None:
    """``x`` lies in the box ``(low, high)`` (to rounding); ``ValueError`` saying where it lies and how
    images in 0..255 are fixed otherwise (clamping them into the box would move them far)."""
    lo, hi = box
    below, above = float(x.min()), float(x.max())
    if below < lo - 1e-6 or above > hi + 1e-6:
        raise ValueError(
            f"{what} lies in [{below:g}, {above:g}], outside the attack's box clamp={tuple(box)!r} "
            "(images in 0..255? divide by 255, or pass the box of your inputs as clamp)."
        )


def same_device(model, x, what: str = "x") -> None:
    """``model``'s parameters and ``x`` are on one device; ``ValueError`` naming both otherwise."""
    param = next(iter(model.parameters()), None)
    if param is not None and param.device != x.device:
        raise ValueError(
            f"the model is on {param.device} but {what} is on {x.device}: move one of them "
            f"(model.to({str(x.device)!r}) or {what}.to({str(param.device)!r}))."
        )


def labels_fit(logits, y, what: str = "labels") -> None:
    """Every label indexes a column of ``logits`` (``(N, K)``); ``ValueError`` naming the range otherwise
    (instead of an IndexError from inside the loss)."""
    if logits.ndim == 2 and y.numel() and not y.is_floating_point():
        k = logits.shape[1]
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise ValueError(
                f"{what} must lie in 0..{k - 1} for a model with {k} outputs, found {int(y.min())}..{int(y.max())}."
            )
