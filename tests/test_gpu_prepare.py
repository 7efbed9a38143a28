"""scripts/gpu_prepare.py: the data carried to the GPU machine comes back together, or not at all."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_prepare", ROOT / "scripts" / "gpu_prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "CARRY", tmp_path / "carry")
    monkeypatch.setattr(mod, "PARTS", tmp_path / "carry" / "cifar-parts")
    monkeypatch.setenv("LABKIT_UNPACK", str(tmp_path / "unpacked"))
    return mod


def _source(tmp_path):
    src = tmp_path / "shared"
    for name in ("MNIST", "FashionMNIST"):
        (src / name / "raw").mkdir(parents=True)
        (src / name / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"not really gzip")
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 255, (30, 4, 4, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 30),
        "x_test": rng.integers(0, 255, (6, 4, 4, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 6),
    }
    np.savez(src / "cifar10-full.npz", **arrays)
    return src, arrays


def test_pack_and_unpack_give_back_the_same_arrays(tmp_path, monkeypatch):
    mod = _module(tmp_path, monkeypatch)
    src, arrays = _source(tmp_path)
    assert mod.unpack() == mod.CARRY  # nothing packed yet: the carried folder itself
    mod.pack(src, cifar=True)
    assert (mod.CARRY / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").read_bytes() == b"not really gzip"
    out = mod.unpack()
    back = np.load(out / "cifar10-full.npz")
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)
    assert (out / "FashionMNIST" / "raw").is_dir()


def test_a_missing_or_corrupt_part_is_named_and_nothing_is_written(tmp_path, monkeypatch):
    mod = _module(tmp_path, monkeypatch)
    src, _ = _source(tmp_path)
    mod.pack(src, cifar=True)
    part = mod.PARTS / "x_train_1.npz"
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(SystemExit, match="x_train_1.npz is corrupt"):
        mod.unpack()
    part.unlink()
    with pytest.raises(SystemExit, match="has not arrived yet"):
        mod.unpack()
    assert not (tmp_path / "unpacked" / "cifar10-full.npz").exists()
    with pytest.raises(SystemExit, match="missing"):
        mod.pack(tmp_path / "nowhere", cifar=False)
