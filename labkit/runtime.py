"""Runtime: run mode, device, seeds and progress bars (Preface, *Modes*).

Every labkit module takes these from here, so nothing imports upward from ``labkit/__init__``.
Start every notebook with::

    import labkit
    cfg = labkit.setup()

which seeds every random generator, picks the device and prints one line that says what runs.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from ._version import __version__

__all__ = [
    "MODES",
    "Config",
    "by_mode",
    "device",
    "distributed",
    "init_distributed",
    "live",
    "mode",
    "progress_enabled",
    "resolve_device",
    "seed_everything",
    "setup",
]

#: The three run modes (Preface, *Modes*): sizes and budgets grow from left to right.
MODES = ("smoke", "book", "full")
_DEFAULT_MODE = "book"


def mode() -> str:
    """The current run mode, read from the environment variable ``LABKIT_MODE``.

    ``smoke`` is for tests and CI (tiny sizes, bundled data), ``book`` (the default) for building
    the book and running labs on a laptop, ``full`` for paper-scale runs on a GPU
    (Preface, *Modes*). An unknown value raises ``ValueError`` naming the allowed ones.
    """
    value = os.environ.get("LABKIT_MODE", "").strip().lower() or _DEFAULT_MODE
    if value not in MODES:
        raise ValueError(
            f"LABKIT_MODE={os.environ.get('LABKIT_MODE')!r} is not a mode; "
            f"use one of {', '.join(MODES)} (default {_DEFAULT_MODE})."
        )
    return value


_UNSET = object()


def by_mode(smoke, book, full=_UNSET):
    """Return the value that belongs to the current mode (Preface, *Modes*).

    Notebooks never branch on the mode by hand; they ask for sizes, e.g.
    ``epochs = labkit.by_mode(smoke=1, book=3, full=20)``. ``full`` defaults to ``book``.
    """
    m = mode()
    if m == "smoke":
        return smoke
    if m == "book" or full is _UNSET:
        return book
    return full


def device() -> torch.device:
    """The compute device: ``LABKIT_DEVICE`` if set, else CUDA when available, else the CPU."""
    requested = os.environ.get("LABKIT_DEVICE", "").strip()
    if requested:
        try:
            dev = torch.device(requested)
        except RuntimeError as err:
            raise ValueError(f"LABKIT_DEVICE={requested!r} is not a torch device ({err}).") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"LABKIT_DEVICE={requested!r} asks for CUDA, but none is available here.")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(requested=None) -> torch.device:
    """The device a function runs on: ``requested`` (a ``torch.device`` or a string such as
    ``"cpu"``) if given, else :func:`device`. A string that names no device, or CUDA where there
    is none, raises ``ValueError`` naming the argument."""
    if requested is None:
        return device()
    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={requested!r} is not a torch device ({err}).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={requested!r} asks for CUDA, but none is available here.")
    return dev


def _checked_seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and CUDA) with ``seed``."""
    seed = _checked_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Config:
    """What :func:`setup` chose: run mode, device, seed and versions."""

    mode: str
    device: torch.device
    seed: int
    version: str = __version__
    torch_version: str = torch.__version__

    def __str__(self) -> str:
        return (
            f"labkit {self.version} | torch {self.torch_version} | mode {self.mode} | "
            f"device {self.device} | seed {self.seed}"
        )


def setup(seed: int = 0, *, quiet: bool = False) -> Config:
    """Seed everything, pick the device and read the mode; print one line (Preface, *Modes*).

    Returns a :class:`Config`. ``LABKIT_MODE`` and ``LABKIT_DEVICE`` are validated here, so a
    typo fails at the first cell of a notebook, not half-way through a run.
    """
    cfg = Config(mode=mode(), device=device(), seed=_checked_seed(seed))
    seed_everything(seed)
    if not quiet:
        print(cfg)
    return cfg


def live() -> bool:
    """Whether a notebook runs in a live session, where a widget can be moved: false when
    ``LABKIT_STATIC=1``, which the book's build and the tests set (a machine that executes a
    notebook cannot move a slider, and executing widgets there can hang its client, nbclient
    issue 312)."""
    return os.environ.get("LABKIT_STATIC", "").strip() not in ("1", "true", "yes")


def progress_enabled() -> bool:
    """Progress bars are shown in ``book`` and ``full`` mode and hidden in ``smoke`` mode."""
    return mode() != "smoke"


def distributed() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from ``torch.distributed`` when a process group is
    initialised (under ``torchrun``, see :func:`init_distributed`), else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment):
    NCCL on GPUs, each rank on the GPU ``LOCAL_RANK``, gloo on CPUs. Without ``torchrun`` it does
    nothing. Returns :func:`distributed`'s ``(rank, world_size)``. No launcher of labkit's own:
    ``torchrun`` starts the processes and ``torch.distributed`` is the engine (README, *Modes*)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device().type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return distributed()
