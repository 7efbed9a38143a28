"""A small, readable training loop with checkpoints and resume (§0.1).

``fit`` trains for a number of epochs with a fixed shuffling order per epoch (seeded by
``seed + epoch``), so a run interrupted after epoch ``k`` and resumed from its checkpoint ends
with the same weights as an uninterrupted run. Checkpoints are written atomically (temporary
file, then rename) and read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import _validate
from .runtime import progress_enabled, resolve_device

__all__ = ["History", "fit", "evaluate", "save_checkpoint", "load_checkpoint"]


@dataclass
class History:
    """Per-epoch training loss and accuracy (and validation metrics when given)."""

    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: list(v) for k, v in self.__dict__.items()}


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only).

    A missing file raises ``FileNotFoundError``; a file that is not such a checkpoint (truncated,
    empty, another format, pickled code) raises ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a checkpoint that labkit can load safely ({reason[:200]}).") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a checkpoint: it holds a {type(state).__name__}, not a dict.")
    return state


@torch.no_grad()
def evaluate(model, data: Dataset, *, batch_size: int = 512, device=None, loss_fn=None) -> dict:
    """Mean loss and accuracy of ``model`` on ``data`` (eval mode; the mode is restored)."""
    loss_fn = loss_fn or F.cross_entropy
    dev = resolve_device(device)
    was_training = model.training
    model.eval().to(dev)
    total, loss_sum, correct = 0, 0.0, 0
    for xb, yb in DataLoader(data, batch_size=batch_size, shuffle=False):
        xb, yb = xb.to(dev), yb.to(dev)
        out = model(xb)
        loss_sum += float(loss_fn(out, yb)) * yb.shape[0]
        correct += int((out.argmax(1) == yb).sum())
        total += yb.shape[0]
    model.train(was_training)
    if total == 0:
        raise ValueError("data is empty.")
    return {"loss": loss_sum / total, "accuracy": correct / total}


def fit(
    model,
    train_data: Dataset,
    epochs: int,
    *,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer=None,
    loss_fn=None,
    val_data: Dataset | None = None,
    device=None,
    seed: int = 0,
    checkpoint=None,
    progress: bool | None = None,
    step_fn=None,
    after_step=None,
    after_epoch=None,
    desc: str = "epoch",
) -> History:
    """Train ``model`` on ``train_data`` for ``epochs`` epochs; return a :class:`History`.

    Defaults: Adam with learning rate ``lr``, cross-entropy loss. Each mini-batch runs
    ``loss, out = step_fn(model, xb, yb)`` (default: ``out = model(xb)``, ``loss = loss_fn(out, yb)``;
    a method whose loss needs more than the outputs, such as CLIP's pairs, passes its own), then
    the optimiser step. ``after_step(model)`` is called after each optimiser step and
    ``after_epoch(model, epoch, history)`` after each epoch, when ``history`` already holds the
    epoch's training loss and accuracy, before validation and the checkpoint (later chapters use
    them to project or stabilise weights, to schedule or to select models).
    With ``checkpoint=path`` the state is saved after every epoch and, if the file exists when
    ``fit`` starts, training resumes from it, giving the same final weights as a run that was
    never interrupted, provided the hooks keep no state of their own: a learning-rate schedule's
    position, for one, is not in the checkpoint. Progress bars are shown except in smoke mode.
    """
    epochs = _validate.positive_int(epochs, "epochs")
    batch_size = _validate.positive_int(batch_size, "batch_size")
    if len(train_data) == 0:
        raise ValueError("train_data is empty.")
    dev = resolve_device(device)
    model.to(dev)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=_validate.positive(lr, "lr"))
    loss_fn = loss_fn or F.cross_entropy
    history = History()
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, map_location=dev)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"checkpoint {checkpoint} does not match this model/optimizer: {err}") from None
        history = History(**state["history"])
        start = int(state["epoch"])
        if start > epochs:
            raise ValueError(f"checkpoint {checkpoint} is at epoch {start}, beyond epochs={epochs}.")
    show = progress_enabled() if progress is None else progress
    for epoch in range(start, epochs):
        gen = torch.Generator().manual_seed(seed + epoch)
        torch.manual_seed(seed + epoch)  # dropout and other in-model randomness
        loader = DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=gen)
        model.train()
        loss_sum, correct, total = 0.0, 0, 0
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not show, leave=False)
        for xb, yb in bar:
            xb, yb = xb.to(dev), yb.to(dev)
            if step_fn is None:
                out = model(xb)
                loss = loss_fn(out, yb)
            else:
                loss, out = step_fn(model, xb, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            loss_sum += loss.item() * yb.shape[0]
            correct += int((out.argmax(1) == yb).sum())
            total += yb.shape[0]
            bar.set_postfix(loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.3f}")
        history.loss.append(loss_sum / total)
        history.accuracy.append(correct / total)
        if after_epoch is not None:
            after_epoch(model, epoch, history)
        if val_data is not None:
            metrics = evaluate(model, val_data, device=dev, loss_fn=loss_fn)
            history.val_loss.append(metrics["loss"])
            history.val_accuracy.append(metrics["accuracy"])
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "history": history.as_dict(),
                },
            )
    return history
