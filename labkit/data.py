"""Datasets: MNIST, Fashion-MNIST and CIFAR-10 as tensors (Preface, *Data*).

:func:`load` looks for the files in this order and takes the first that has them:

1. ``$LABKIT_DATA``: a folder in torchvision's layout (``MNIST/raw/*.gz``,
   ``FashionMNIST/raw/*.gz``, ``cifar-10-batches-py/``), or, for CIFAR-10, a ``.npz`` with the
   arrays ``x_train, y_train, x_test, y_test`` (the folder may hold ``cifar10*.npz``, or the
   variable may name the file itself);
2. the user's cache (``$LABKIT_CACHE``, default ``~/.cache/labkit``), where torchvision
   downloads a missing dataset when the network allows (``LABKIT_OFFLINE=1`` forbids it);
3. in ``smoke`` mode only, the small sample bundled with labkit (``labkit/samples``), built by
   ``scripts/make_sample.py`` from the official files.

Nothing is ever written into ``$LABKIT_DATA``: MNIST-format files are read directly from their
``.gz`` (or extracted) form, so a read-only copy works.
"""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from . import _validate, runtime

__all__ = ["DATASETS", "OFFICIAL", "DataNotFoundError", "load", "require_full", "sample_path", "cache_dir"]

#: name -> (torchvision class name, folder in torchvision's layout, image shape C, H, W)
DATASETS = {
    "mnist": ("MNIST", "MNIST", (1, 28, 28)),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST", (1, 28, 28)),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", (3, 32, 32)),
}
#: The official numbers of training and test images of each data set.
OFFICIAL = {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}
_ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "cifar-10": "cifar10"}


class DataNotFoundError(FileNotFoundError):
    """No source had the dataset; the message says which variable to set or what to run."""


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}.")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; labkit knows {', '.join(DATASETS)}.")
    return key


def cache_dir() -> Path:
    """The user's dataset cache: ``$LABKIT_CACHE`` or ``~/.cache/labkit``."""
    return Path(os.environ.get("LABKIT_CACHE") or Path.home() / ".cache" / "labkit")


def sample_path(name: str) -> Path:
    """The bundled smoke-mode sample of dataset ``name`` (an ``.npz`` inside labkit)."""
    return Path(__file__).parent / "samples" / f"{_canonical(name)}.npz"


def _offline() -> bool:
    return os.environ.get("LABKIT_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def _to_dataset(images: np.ndarray | torch.Tensor, labels, shape) -> TensorDataset:
    """uint8 images (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [0, 1]; int64 labels."""
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, found {x.dtype}.")
    c, h, w = shape
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[-1] == c:
        x = x.permute(0, 3, 1, 2)
    if tuple(x.shape[1:]) != (c, h, w):
        raise ValueError(f"expected images of shape (N, {c}, {h}, {w}), found {tuple(x.shape)}.")
    y = torch.as_tensor(np.asarray(labels)).to(torch.int64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"{x.shape[0]} images but labels of shape {tuple(y.shape)}.")
    _validate.labels(y, classes=10)  # all three datasets have ten classes
    return TensorDataset(x.contiguous().float().div_(255.0), y)


def _from_npz(path: Path, train: bool, shape) -> TensorDataset:
    split = "train" if train else "test"
    try:
        with np.load(path) as arrays:
            missing = {f"x_{split}", f"y_{split}"} - set(arrays.files)
            if missing:
                raise ValueError(f"{path} lacks the arrays {sorted(missing)}.")
            return _to_dataset(arrays[f"x_{split}"], arrays[f"y_{split}"], shape)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path} is not a readable .npz of CIFAR-10 arrays ({err}).") from None


def _idx_file(raw: Path, stem: str) -> Path | None:
    for candidate in (raw / stem, raw / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, without writing anything."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:  # not gzip, or cut short
        raise ValueError(
            f"{path} cannot be read as {'gzip-compressed ' if path.suffix == '.gz' else ''}IDX: {err}."
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} has a truncated IDX header ({ndim} dimensions announced).")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} bytes of data, found {body.size}.")
    return body.reshape(dims).copy()  # frombuffer is read-only; torch wants writable memory


def _from_idx(root: Path, folder: str, train: bool, shape) -> TensorDataset | None:
    raw = root / folder / "raw"
    prefix = "train" if train else "t10k"
    images = _idx_file(raw, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(raw, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    try:
        return _to_dataset(_read_idx(images), _read_idx(labels), shape)
    except ValueError as err:
        if str(raw) in str(err):
            raise
        raise ValueError(f"{images} and {labels}: {err}") from None


def _from_torchvision(key: str, root: Path, train: bool, download: bool) -> TensorDataset:
    import torchvision

    cls_name, _, shape = DATASETS[key]
    cls = getattr(torchvision.datasets, cls_name)
    ds = cls(str(root), train=train, download=download)
    return _to_dataset(ds.data, ds.targets, shape)


def _try_root(key: str, root: Path, train: bool) -> TensorDataset | None:
    """Load from a torchvision-layout folder or an npz, without the network; None if absent."""
    _, folder, shape = DATASETS[key]
    if root.is_file():
        return _from_npz(root, train, shape) if key == "cifar10" and root.suffix == ".npz" else None
    if not root.is_dir():
        return None
    if key == "cifar10":
        if (root / folder).is_dir():
            return _from_torchvision(key, root, train, download=False)
        for npz in sorted(root.glob("cifar10*.npz")):
            return _from_npz(npz, train, shape)
        return None
    return _from_idx(root, folder, train, shape)


def load(name: str, train: bool = True, limit: int | None = None, *, download: bool | None = None) -> TensorDataset:
    """Load a dataset as a ``TensorDataset`` of images and labels (Preface, *Data*).

    Images are float32 in [0, 1] shaped (N, C, H, W); labels are int64. ``limit`` keeps the
    first ``limit`` examples of the official order. ``download`` (default: allowed unless
    ``LABKIT_OFFLINE=1``) lets torchvision fetch a missing dataset into the cache.
    Raises :class:`DataNotFoundError` with what to do when no source has the data.
    """
    key = _canonical(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}.")
    current_mode = runtime.mode()
    if download is None:
        download = not _offline()
    tried = []
    ds = None
    env_root = os.environ.get("LABKIT_DATA", "").strip()
    if env_root:
        tried.append(f"LABKIT_DATA={env_root}")
        ds = _try_root(key, Path(env_root).expanduser(), train)
    if ds is None:
        cache = cache_dir()
        tried.append(f"the cache {cache}")
        ds = _try_root(key, cache, train)
        if ds is None and download:
            try:
                cache.mkdir(parents=True, exist_ok=True)
                ds = _from_torchvision(key, cache, train, download=True)
            except Exception as err:  # offline, DNS failure, HTTP error: fall through
                tried[-1] += f" (download failed: {type(err).__name__})"
                ds = None
    if ds is None and current_mode == "smoke":
        sample = sample_path(key)
        tried.append(f"the bundled sample {sample}")
        if sample.exists():
            ds = _from_npz(sample, train, DATASETS[key][2])
    if ds is None:
        cls_name, folder, _ = DATASETS[key]
        raise DataNotFoundError(
            f"{key} ({'train' if train else 'test'}) was not found; looked in: {'; '.join(tried)}.\n"
            f"Either set LABKIT_DATA to a folder in torchvision's layout (e.g. one holding "
            f"{folder}/"
            + ("" if key == "cifar10" else "raw/*.gz")
            + (", or a cifar10 .npz" if key == "cifar10" else "")
            + "), or download it once with network access:\n"
            f"    python -m labkit.data download {key}\n"
            f"(in smoke mode, LABKIT_MODE=smoke, the bundled sample is used instead)."
        )
    if limit is not None:
        ds = TensorDataset(*(t[:limit] for t in ds.tensors))
    return ds


def require_full(name: str, train_limit: int | None = None, test_limit: int | None = None) -> None:
    """Raise :class:`DataNotFoundError` unless :func:`load` finds the official number of training
    and test images of ``name`` (:data:`OFFICIAL`), with the limits given: a full-mode run refuses a
    subset (the CIFAR-10 sample, say) before anything is trained."""
    n_train, n_test = len(load(name, limit=train_limit)), len(load(name, train=False, limit=test_limit))
    want = OFFICIAL[_canonical(name)]
    if n_train < want[0] or n_test < want[1]:
        n = lambda v: f"{v:,}".replace(",", " ")  # noqa: E731
        raise DataNotFoundError(
            f"full mode needs all of {name} ({n(want[0])} / {n(want[1])} images) but found {n(n_train)} / {n(n_test)} "
            "(the subset in LABKIT_DATA?). Point LABKIT_DATA at a folder with the full data set (for CIFAR-10 "
            "cifar10-full.npz or cifar-10-batches-py), or run `python -m labkit.data download "
            f"{name}` on a machine with network access."
        )


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m labkit.data", description="Download datasets into labkit's cache.")
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="fetch a dataset with torchvision into the cache")
    dl.add_argument("names", nargs="+", choices=sorted(DATASETS))
    args = parser.parse_args(argv)
    for key in args.names:
        for train in (True, False):
            _from_torchvision(key, cache_dir(), train, download=True)
        print(f"{key}: ready in {cache_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
