"""A small, readable training loop with checkpoints and resume (§0.1).

``fit`` trains for a number of epochs with a fixed shuffling order per epoch (seeded by
``seed + epoch``), so a run interrupted after epoch ``k`` and resumed from its checkpoint ends
with the same weights as an uninterrupted run. Checkpoints are written atomically (temporary
file, then rename) and read with ``torch.load(..., weights_only=True)``.

**Data parallel.** Under ``torchrun`` (after :func:`labkit.runtime.init_distributed`) the same
call of ``fit`` trains with PyTorch's ``DistributedDataParallel``: each of the ``W`` ranks reads its
share of every global batch of the one-process order through a ``DistributedSampler``
(:class:`ShardSampler`), ``batch_size / W`` examples per step (``batch_size`` stays the global
batch and must be divisible by ``W``), and the gradients are averaged; so with a mean loss and a
data set whose size is a multiple of the batch, ``W`` processes end with the weights of one.
Only rank 0 shows progress and writes the checkpoint (atomically); every rank resumes from it.
A custom ``step_fn`` is refused there (its forward passes would bypass the gradient averaging).
"""

from __future__ import annotations

import dataclasses
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

__all__ = [
    "History",
    "Hooks",
    "fit",
    "every_step",
    "evaluate",
    "inputs",
    "save_checkpoint",
    "load_checkpoint",
    "ShardSampler",
]


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
        raise ValueError(
            f"{path} was written for another model: missing {sorted(set(own) - set(saved))[:5]}, "
            f"unexpected {sorted(set(saved) - set(own))[:5]}."
        )
    for key, value in own.items():
        if tuple(saved[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{path} was written for another model: {key} has shape {tuple(saved[key].shape)}, "
                f"this model's {tuple(value.shape)}."
            )
    kind = state.get("optimizer_type")
    groups = [len(g["params"]) for g in state["optimizer"].get("param_groups", [])]
    if kind != type(optimizer).__name__ or groups != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(
            f"{path} was written with another optimiser ({kind}, parameter groups {groups}); "
            f"this run uses {type(optimizer).__name__}."
        )
    if set(state.get("hooks", {})) != set(stateful):
        raise ValueError(
            f"{path} carries the state of the hooks {sorted(state.get('hooks', {}))}; this run has {sorted(stateful)}."
        )


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


@dataclass(frozen=True)
class Hooks:
    """The options of :func:`fit` that act around its steps, grouped as diffrax groups a solver's:
    ``step_fn(model, xb, yb) -> (loss, out)`` replaces the default step's loss; ``after_step(model)``
    runs after each optimiser step and ``after_epoch(model, epoch, history)`` after each epoch;
    ``checkpoint`` is the path of the checkpoint that makes the run resumable; ``progress`` shows
    the bars (default: except in smoke mode), labelled ``desc``."""

    step_fn: object = None
    after_step: object = None
    after_epoch: object = None
    checkpoint: object = None
    progress: bool | None = None
    desc: str = "epoch"

    @classmethod
    def of(cls, options: dict) -> Hooks:
        """The hooks of the keywords ``options``; ``TypeError`` naming any that is not one."""
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"fit got unknown options {unknown}; the hooks are those of labkit.train.Hooks.")
        return cls(**options)


class _Resume:
    """The checkpoint of one :func:`fit` call: what it restores at the start and saves after each
    epoch (the model, the optimiser, the stateful hooks and the history)."""

    def __init__(self, path, model, optimizer, hooks: Hooks):
        self.hooks = _stateful_hooks(
            {"step_fn": hooks.step_fn, "after_step": hooks.after_step, "after_epoch": hooks.after_epoch}, path
        )
        self.path = None if path is None else _validate.writable(path, "checkpoint")
        self.model, self.optimizer = model, optimizer

    def restore(self, epochs: int, dev) -> tuple[int, History]:
        """The epoch to start from and the history so far (0 and an empty one without a checkpoint)."""
        if self.path is None or not self.path.exists():
            return 0, History()
        state = load_checkpoint(self.path, map_location=dev)
        _check_resume(state, self.path, self.model, self.optimizer, self.hooks)
        start = int(state["epoch"])
        if start > epochs:
            raise ValueError(f"checkpoint {self.path} is at epoch {start}, beyond epochs={epochs}.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, owner in self.hooks.items():
            owner.load_state_dict(state["hooks"][name])
        return start, History(**state["history"])

    def save(self, epoch: int, history: History, rank: int, world: int) -> None:
        if self.path is None:
            return
        if rank == 0:
            save_checkpoint(
                self.path,
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "optimizer_type": type(self.optimizer).__name__,
                    "hooks": {name: owner.state_dict() for name, owner in self.hooks.items()},
                    "epoch": epoch + 1,
                    "history": history.as_dict(),
                },
            )
        if world > 1:
            torch.distributed.barrier()  # no rank runs ahead of the checkpoint it would resume from


def _check_data(train_data, val_data) -> None:
    if len(train_data) == 0:
        raise ValueError("train_data is empty.")
    if val_data is not None and len(val_data) == 0:
        raise ValueError("val_data is empty: give None for no validation, or a data set with examples.")
    for name, given in (("train_data", train_data), ("val_data", val_data)):  # checked whole, before any step
        for tensor in getattr(given, "tensors", ()):
            _validate.finite(tensor, name, "training on it gives a NaN loss" if name == "train_data" else "")


def _parallel(model, dev, batch_size: int, step_fn):
    """``(net, rank, world)``: the model wrapped in ``DistributedDataParallel`` under ``torchrun``
    (the model itself otherwise), after checking that the global batch divides among the ranks."""
    rank, world = distributed()
    if world == 1:
        return model, rank, world
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} (the global batch) must be divisible by the {world} ranks.")
    if step_fn is not None:
        raise ValueError("a custom step_fn cannot train under DistributedDataParallel; use the default step.")
    ids = [dev.index] if dev.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids), rank, world


def _epoch_loader(train_data, epoch: int, *, seed: int, batch_size: int, rank: int, world: int) -> DataLoader:
    """The batches of ``epoch``: shuffled by a generator seeded ``seed + epoch`` (each rank's share
    of them under ``torchrun``, :class:`ShardSampler`); torch's global generator is seeded the same
    way, for dropout and other randomness in the model."""
    torch.manual_seed(seed + epoch)
    if world > 1:
        sampler = ShardSampler(train_data, world, rank, seed=seed, batch_size=batch_size)
        sampler.set_epoch(epoch)
        return DataLoader(train_data, batch_size=batch_size // world, sampler=sampler)
    gen = torch.Generator().manual_seed(seed + epoch)
    return DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=gen)


def _train_epoch(net, model, batches, dev, optimizer, loss_fn, hooks: Hooks) -> tuple[float, float]:
    """One pass over ``batches`` (a progress bar over the loader); the mean loss and accuracy."""
    model.train()
    loss_sum, correct, total = 0.0, 0, 0
    for xb, yb in batches:
        xb, yb = xb.to(dev), yb.to(dev)
        if hooks.step_fn is None:
            out = net(xb)
            if loss_fn is F.cross_entropy:  # a label past the outputs: say so, not an IndexError
                _validate.labels_fit(out, yb, "train_data's labels")
            loss = loss_fn(out, yb)
        else:
            loss, out = hooks.step_fn(model, xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if hooks.after_step is not None:
            hooks.after_step(model)
        loss_sum += loss.item() * yb.shape[0]
        correct += int((out.argmax(1) == yb).sum())
        total += yb.shape[0]
        batches.set_postfix(loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.3f}")
    return loss_sum / total, correct / total


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
    **hooks,
) -> History:
    """Train ``model`` on ``train_data`` for ``epochs`` epochs; return a :class:`History`.

    Defaults: Adam with learning rate ``lr``, cross-entropy loss. The keywords ``hooks`` are the
    options of :class:`Hooks`. Each mini-batch runs ``loss, out = step_fn(model, xb, yb)``
    (default: ``out = model(xb)``, ``loss = loss_fn(out, yb)``; a method whose loss needs more than
    the outputs, such as CLIP's pairs, passes its own), then the optimiser step. ``after_step(model)``
    is called after each optimiser step and ``after_epoch(model, epoch, history)`` after each epoch,
    when ``history`` already holds the epoch's training loss and accuracy, before validation and the
    checkpoint (later chapters use them to project or stabilise weights, to schedule or to select
    models). With ``checkpoint=path`` the state is saved after every epoch and, if the file exists
    when ``fit`` starts, training resumes from it, giving the same final weights as a run that was
    never interrupted. A hook with state of its own must say so: an object with ``state_dict()`` and
    ``load_state_dict()`` (a schedule: ``after_step=every_step(scheduler)``) has its state saved
    and restored with the rest; with a checkpoint, a hook that could hide state (a closure) is
    refused. Every argument is checked before the first step: a checkpoint of another model,
    optimiser or set of hooks is refused before anything is loaded, an unwritable checkpoint path
    before the first epoch, an empty or non-finite data set before any step. Under ``torchrun`` the
    same call trains data-parallel (the module's *Data parallel*).
    """
    hooks = Hooks.of(hooks)
    epochs = _validate.positive_int(epochs, "epochs")
    batch_size = _validate.positive_int(batch_size, "batch_size")
    _check_data(train_data, val_data)
    dev = resolve_device(device)
    model.to(dev)
    net, rank, world = _parallel(model, dev, batch_size, hooks.step_fn)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=_validate.positive(lr, "lr"))
    loss_fn = loss_fn or F.cross_entropy
    resume = _Resume(hooks.checkpoint, model, optimizer, hooks)
    start, history = resume.restore(epochs, dev)
    show = (progress_enabled() if hooks.progress is None else hooks.progress) and rank == 0
    for epoch in range(start, epochs):
        loader = _epoch_loader(train_data, epoch, seed=seed, batch_size=batch_size, rank=rank, world=world)
        bar = tqdm(loader, desc=f"{hooks.desc} {epoch + 1}/{epochs}", disable=not show, leave=False)
        loss, accuracy = _train_epoch(net, model, bar, dev, optimizer, loss_fn, hooks)
        history.loss.append(loss)
        history.accuracy.append(accuracy)
        if hooks.after_epoch is not None:
            hooks.after_epoch(model, epoch, history)
        if val_data is not None:
            metrics = evaluate(model, val_data, device=dev, loss_fn=loss_fn)
            history.val_loss.append(metrics["loss"])
            history.val_accuracy.append(metrics["accuracy"])
        resume.save(epoch, history, rank, world)
    return history
