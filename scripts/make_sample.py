"""Build the smoke-mode samples bundled in labkit/samples from the official dataset files.

    LABKIT_DATA=/path/to/data python scripts/make_sample.py

Each sample holds the first examples of the official train and test order (so a smoke-mode
``labkit.data.load(name, limit=k)`` agrees with the real data for k up to the sample size),
as uint8 arrays ``x_train, y_train, x_test, y_test`` in a compressed ``.npz``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SIZES = {"mnist": (300, 100), "fashion_mnist": (300, 100), "cifar10": (100, 50)}


def main() -> int:
    os.environ["LABKIT_OFFLINE"] = "1"
    os.environ["LABKIT_MODE"] = "book"  # never read the bundled sample itself
    from labkit import data

    out = ROOT / "labkit" / "samples"
    out.mkdir(exist_ok=True)
    for name, (n_train, n_test) in SIZES.items():
        arrays = {}
        for split, train, n in (("train", True, n_train), ("test", False, n_test)):
            x, y = data.load(name, train=train, limit=n).tensors
            arrays[f"x_{split}"] = (x * 255).round().to(dtype=__import__("torch").uint8).numpy()
            arrays[f"y_{split}"] = y.numpy()
        target = out / f"{name}.npz"
        np.savez_compressed(target, **arrays)
        print(f"{target.relative_to(ROOT)}: {n_train}+{n_test} images, {target.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
