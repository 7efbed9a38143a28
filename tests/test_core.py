"""labkit.setup, by_mode, device and the data loader."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import labkit
from labkit import data

SHARED = os.environ.get("LABKIT_DATA")


def test_the_package_reaches_every_module_and_the_command_lines_run_without_runpy_warnings():
    for name in labkit.__all__:
        assert getattr(labkit, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        labkit.nonsense  # noqa: B018
    root = Path(__file__).resolve().parents[1]
    for module in ("labkit.chapters",):
        done = subprocess.run(
            [sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and "usage" in done.stdout, done.stderr
        assert "found in sys.modules" not in done.stderr


def test_setup_prints_one_line_and_seeds(capsys, monkeypatch):
    monkeypatch.setenv("LABKIT_MODE", "smoke")
    cfg = labkit.setup(seed=7)
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    for part in (labkit.__version__, torch.__version__, "smoke", str(cfg.device), "seed 7"):
        assert part in line
    a = torch.rand(3)
    labkit.setup(seed=7, quiet=True)
    assert torch.equal(a, torch.rand(3))
    assert cfg.mode == "smoke" and cfg.seed == 7


@pytest.mark.parametrize("value,expected", [("smoke", 1), ("book", 2), ("full", 3), ("", 2), ("BOOK", 2)])
def test_by_mode(monkeypatch, value, expected):
    monkeypatch.setenv("LABKIT_MODE", value)
    assert labkit.by_mode(smoke=1, book=2, full=3) == expected


def test_by_mode_full_defaults_to_book(monkeypatch):
    monkeypatch.setenv("LABKIT_MODE", "full")
    assert labkit.by_mode(smoke=1, book=2) == 2


def test_unknown_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LABKIT_MODE", "quick")
    with pytest.raises(ValueError, match="smoke, book, full"):
        labkit.setup()


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        labkit.setup(seed=seed, quiet=True)


def test_device_override(monkeypatch):
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    assert labkit.device() == torch.device("cpu")
    monkeypatch.setenv("LABKIT_DEVICE", "tpu9")
    with pytest.raises(ValueError, match="LABKIT_DEVICE"):
        labkit.device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("LABKIT_DEVICE", "cuda")
        with pytest.raises(ValueError, match="CUDA"):
            labkit.device()


# ----------------------------------------------------------------------------- data
@pytest.mark.parametrize(
    "name,shape,first_labels",
    [
        ("mnist", (1, 28, 28), [5, 0, 4, 1, 9]),  # the official first training labels
        ("fashion_mnist", (1, 28, 28), [9, 0, 0, 3, 0]),
        ("cifar10", (3, 32, 32), [6, 9, 9, 4, 1]),
    ],
)
def test_sample_in_smoke_mode(monkeypatch, tmp_path, name, shape, first_labels):
    monkeypatch.setenv("LABKIT_MODE", "smoke")
    monkeypatch.delenv("LABKIT_DATA", raising=False)
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "empty-cache"))
    ds = data.load(name, limit=20)
    x, y = ds.tensors
    assert x.shape == (20, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    assert y[:5].tolist() == first_labels
    test = data.load(name, train=False)
    assert len(test) >= 50
    assert data.sample_path(name).stat().st_size < 500_000


def test_samples_are_small_in_all():
    total = sum(data.sample_path(n).stat().st_size for n in data.DATASETS)
    assert total < 1_000_000


@pytest.mark.skipif(not SHARED, reason="LABKIT_DATA not set (CI sets it)")
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_real_data_agrees_with_sample(monkeypatch, name):
    monkeypatch.setenv("LABKIT_MODE", "book")
    real = data.load(name, limit=40)
    with np.load(data.sample_path(name)) as s:
        k = min(40, len(s["y_train"]))
        sample_x = torch.as_tensor(s["x_train"][:k]).float() / 255
        sample_y = torch.as_tensor(s["y_train"][:k])
    assert torch.equal(real.tensors[1][:k], sample_y)
    assert torch.allclose(real.tensors[0][:k], sample_x.reshape(real.tensors[0][:k].shape), atol=1e-6)
    if name == "cifar10":  # the first cifar10*.npz in sorted order: the full set when it is there
        first = sorted(Path(os.environ["LABKIT_DATA"]).glob("cifar10*.npz"))[0]
        with np.load(first) as f:
            n_train = len(f["y_train"])
        assert n_train in (5000, 50000)
    else:
        n_train = 60000
    assert len(data.load(name)) == n_train


@pytest.mark.skipif(not SHARED, reason="LABKIT_DATA not set (CI sets it)")
def test_cifar_npz_named_directly(monkeypatch):
    npz = Path(SHARED) / "cifar10-subset.npz"
    monkeypatch.setenv("LABKIT_MODE", "book")
    monkeypatch.setenv("LABKIT_DATA", str(npz))
    ds = data.load("cifar10", train=False, limit=3)
    assert ds.tensors[0].shape == (3, 3, 32, 32)


def test_npz_folder_source(monkeypatch, tmp_path):
    """A LABKIT_DATA folder with a cifar10*.npz is read without the network."""
    shutil.copy(data.sample_path("cifar10"), tmp_path / "cifar10-mine.npz")
    monkeypatch.setenv("LABKIT_MODE", "book")
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    assert data.load("cifar10", limit=4).tensors[1].tolist() == [6, 9, 9, 4]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_data_offline_is_a_clear_error(monkeypatch, tmp_path, name):
    monkeypatch.setenv("LABKIT_MODE", "book")
    monkeypatch.setenv("LABKIT_OFFLINE", "1")
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(data.DataNotFoundError) as err:
        data.load(name)
    msg = str(err.value)
    assert "LABKIT_DATA" in msg and f"python -m labkit.data download {name}" in msg
    assert not (tmp_path / "cache").exists() and not (tmp_path / "nothing-here").exists()


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        data.load("svhn")


@pytest.mark.parametrize("limit", [-1, 2.5, "10", True])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match="limit"):
        data.load("mnist", limit=limit)


def test_bad_npz_is_named(monkeypatch, tmp_path):
    bad = tmp_path / "cifar10-bad.npz"
    np.savez(bad, x_train=np.zeros((2, 32, 32, 3), np.uint8))
    monkeypatch.setenv("LABKIT_MODE", "book")
    monkeypatch.setenv("LABKIT_DATA", str(bad))
    with pytest.raises(ValueError, match="lacks the arrays"):
        data.load("cifar10")


def _write_idx(path, array):
    import gzip
    import struct

    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_mnist_layout_is_read_without_writing(monkeypatch, tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (7, 28, 28)), np.arange(7) % 10
    _write_idx(raw / "train-images-idx3-ubyte.gz", imgs)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", labels)
    before = sorted(p.name for p in raw.iterdir())
    monkeypatch.setenv("LABKIT_MODE", "book")
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    x, y = data.load("fashion_mnist").tensors
    assert torch.allclose(x[:, 0], torch.as_tensor(imgs).float() / 255)
    assert y.tolist() == labels.tolist()
    assert sorted(p.name for p in raw.iterdir()) == before  # nothing extracted or written


def test_truncated_idx_is_a_clear_error(monkeypatch, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.zeros(3))
    import gzip

    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        content = fh.read()
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(content[:-100])
    monkeypatch.setenv("LABKIT_MODE", "book")
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="truncated"):
        data.load("mnist", train=False)


def test_live_is_false_under_labkit_static(monkeypatch):
    monkeypatch.setenv("LABKIT_STATIC", "1")
    assert not labkit.live()
    monkeypatch.delenv("LABKIT_STATIC")
    assert labkit.live()
