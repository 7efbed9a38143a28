"""A small, readable training loop with checkpoints and resume (§0.1).

``fit`` trains for a number of epochs with a fixed shuffling order per epoch (seeded by
``seed + epoch``), so a run interrupted after epoch ``k`` and resumed from its checkpoint ends
with the same weights as an uninterrupted run. Checkpoints are written atomically (temporary
file, then rename) and read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from . import _validate
from .runtime import distributed, progress_enabled, resolve_device

__all__ = ["History", "fit", "every_step", "evaluate", "inputs", "save_checkpoint", "load_checkpoint", "ShardSampler"]


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


class every_step:  # noqa: N801  (used like a function: fit(after_step=every_step(scheduler)))
    """An ``after_step`` hook that steps a learning-rate ``scheduler`` after every optimiser step and
    carries its state, so that :func:`fit` saves the schedule's position in its checkpoint and a
    resumed run follows the same learning rates (§0.1)."""

    def __init__(self, scheduler):
        if not (hasattr(scheduler, "step") and hasattr(scheduler, "state_dict")):
            raise TypeError(
                f"every_step needs a scheduler with step() and state_dict(), got {type(scheduler).__name__}."
            )
        self.scheduler = scheduler

    def __call__(self, model):
        self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def _stateful_hooks(hooks: dict, checkpoint) -> dict:
    """The hooks whose state a checkpoint carries: objects with ``state_dict``/``load_state_dict``
    (or bound methods of such objects). With a checkpoint, a hook that may hold state the
    checkpoint cannot see (a closure, a callable object without ``state_dict``) is refused, since a
    resumed run would silently differ."""
    stateful = {}
    for name, hook in hooks.items():
        if hook is None:
            continue
        owner = getattr(hook, "__self__", hook)
        if hasattr(owner, "state_dict") and hasattr(owner, "load_state_dict"):
            stateful[name] = owner
        elif checkpoint is not None and not (inspect.isfunction(hook) and not hook.__closure__):
            raise ValueError(
                f"fit cannot save the state of {name}={hook!r} in the checkpoint, so a resumed run could differ "
                "from an uninterrupted one: give an object with state_dict() and load_state_dict() (for a "
                "learning-rate schedule, labkit.train.every_step(scheduler)), or train without checkpoint."
            )
    return stateful


def _check_resume(state: dict, path, model, optimizer, stateful: dict) -> None:
    """Refuse a checkpoint that does not belong to this model, optimiser and hooks, before anything
    is loaded (loading is all or nothing): ``ValueError`` naming the file and the difference."""
    missing = {"model", "optimizer", "epoch", "history"} - set(state)
    if missing:
        raise ValueError(f"{path} is not a fit checkpoint: it lacks {sorted(missing)}.")
    own, saved = model.state_dict(), state["model"]
    if set(own) != set(saved):
        raise ValueError(f"{path} was written for another model: missing {sorted(set(own) - set(saved))[:5]}, "
                         f"unexpected {sorted(set(saved) - set(own))[:5]}.")  # fmt: skip
    for key, value in own.items():
        if tuple(saved[key].shape) != tuple(value.shape):
            raise ValueError(f"{path} was written for another model: {key} has shape {tuple(saved[key].shape)}, "
                             f"this model's {tuple(value.shape)}.")  # fmt: skip
    kind = state.get("optimizer_type")
    groups = [len(g["params"]) for g in state["optimizer"].get("param_groups", [])]
    if kind != type(optimizer).__name__ or groups != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(f"{path} was written with another optimiser ({kind}, parameter groups {groups}); "
                         f"this run uses {type(optimizer).__name__}.")  # fmt: skip
    if set(state.get("hooks", {})) != set(stateful):
        raise ValueError(f"{path} carries the state of the hooks {sorted(state.get('hooks', {}))}; this run has "
                         f"{sorted(stateful)}.")  # fmt: skip


class ShardSampler(DistributedSampler):
    """The ``DistributedSampler`` of :func:`fit` under ``torchrun``: each rank's share of every global
    batch of the *one-process* order of the epoch (the order of a shuffling ``DataLoader`` with the
    generator seeded ``seed + epoch``), so that ``W`` ranks with ``batch_size / W`` examples each see,
    step by step, the batches that one process sees. (PyTorch's own sampler permutes differently and
    interleaves the ranks.) The last batch is split as evenly as it goes."""

    def __init__(self, data: Dataset, world: int, rank: int, *, seed: int, batch_size: int):
        super().__init__(data, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size

    def _indices(self) -> list:
        n = len(self.dataset)
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        # built exactly as fit's one-process loader is iterated, through tqdm: tqdm.auto opens an
        # iterator of its own first, which draws from the generator and so changes the permutation
        loader = DataLoader(range(n), batch_size=max(n, 1), shuffle=True, generator=gen)
        order = torch.cat(list(tqdm(loader, disable=True)))
        return [
            i
            for batch in order.split(self.batch_size)
            for i in batch.tensor_split(self.num_replicas)[self.rank].tolist()
        ]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def inputs(data: Dataset, limit: int | None = None) -> torch.Tensor:
    """The first ``limit`` inputs (all by default) of any map-style dataset as one tensor: a
    ``TensorDataset``'s first tensor, or the stacked first elements of a ``Subset`` or any
    dataset whose items are ``(x, y)`` pairs (§0.1)."""
    n = len(data) if limit is None else min(len(data), _validate.positive_int(limit, "limit"))
    if isinstance(getattr(data, "tensors", None), tuple):
        return data.tensors[0][:n]
    if n == 0:
        raise ValueError("data is empty.")
    return torch.stack([torch.as_tensor(data[i][0]) for i in range(n)])


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
    never interrupted. A hook with state of its own must say so: an object with ``state_dict()`` and
    ``load_state_dict()`` (a schedule: ``after_step=every_step(scheduler)``) has its state saved
    and restored with the rest; with a checkpoint, a hook that could hide state (a closure) is
    refused. A checkpoint of another model, optimiser or set of hooks is refused before anything
    is loaded, and an unwritable checkpoint path before the first epoch. Progress bars are shown
    except in smoke mode.

    **Data parallel.** Under ``torchrun`` (after :func:`labkit.runtime.init_distributed`) the same
    call trains with PyTorch's ``DistributedDataParallel``: each of the ``W`` ranks reads its share
    of every global batch of the one-process order through a ``DistributedSampler``
    (:class:`ShardSampler`), ``batch_size / W`` examples per step (``batch_size`` stays the global
    batch and must be divisible by ``W``), and the gradients are averaged; so with a mean loss and a
    data set whose size is a multiple of the batch, ``W`` processes end with the weights of one. Only rank 0
    shows progress and writes the checkpoint (atomically); every rank resumes from it. A custom
    ``step_fn`` is refused there (its forward passes would bypass the gradient averaging).
    """
    epochs = _validate.positive_int(epochs, "epochs")
    batch_size = _validate.positive_int(batch_size, "batch_size")
    if len(train_data) == 0:
        raise ValueError("train_data is empty.")
    if val_data is not None and len(val_data) == 0:
        raise ValueError("val_data is empty: give None for no validation, or a data set with examples.")
    for name, given in (("train_data", train_data), ("val_data", val_data)):  # checked whole, before any step
        for tensor in getattr(given, "tensors", ()):
            _validate.finite(tensor, name, "training on it gives a NaN loss" if name == "train_data" else "")
    dev = resolve_device(device)
    model.to(dev)
    rank, world = distributed()
    net = model
    if world > 1:
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} (the global batch) must be divisible by the {world} ranks.")
        if step_fn is not None:
            raise ValueError("a custom step_fn cannot train under DistributedDataParallel; use the default step.")
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=_validate.positive(lr, "lr"))
    loss_fn = loss_fn or F.cross_entropy
    history = History()
    start = 0
    stateful = _stateful_hooks({"step_fn": step_fn, "after_step": after_step, "after_epoch": after_epoch}, checkpoint)
    if checkpoint is not None:
        checkpoint = _validate.writable(checkpoint, "checkpoint")
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, map_location=dev)
        _check_resume(state, checkpoint, model, optimizer, stateful)
        start = int(state["epoch"])
        if start > epochs:
            raise ValueError(f"checkpoint {checkpoint} is at epoch {start}, beyond epochs={epochs}.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for name, owner in stateful.items():
            owner.load_state_dict(state["hooks"][name])
        history = History(**state["history"])
    show = (progress_enabled() if progress is None else progress) and rank == 0
    for epoch in range(start, epochs):
        gen = torch.Generator().manual_seed(seed + epoch)
        torch.manual_seed(seed + epoch)  # dropout and other in-model randomness
        if world > 1:
            sampler = ShardSampler(train_data, world, rank, seed=seed, batch_size=batch_size)
            sampler.set_epoch(epoch)
            loader = DataLoader(train_data, batch_size=batch_size // world, sampler=sampler)
        else:
            loader = DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=gen)
        model.train()
        loss_sum, correct, total = 0.0, 0, 0
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not show, leave=False)
        for xb, yb in bar:
            xb, yb = xb.to(dev), yb.to(dev)
            if step_fn is None:
                out = net(xb)
                if loss_fn is F.cross_entropy:  # a label past the outputs: say so, not an IndexError
                    _validate.labels_fit(out, yb, "train_data's labels")
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
        if checkpoint is not None and rank == 0:
            save_checkpoint(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "optimizer_type": type(optimizer).__name__,
                    "hooks": {name: owner.state_dict() for name, owner in stateful.items()},
                    "epoch": epoch + 1,
                    "history": history.as_dict(),
                },
            )
        if checkpoint is not None and world > 1:
            torch.distributed.barrier()  # no rank runs ahead of the checkpoint it would resume from
    return history
