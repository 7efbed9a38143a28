"""Bad input, corrupt files and faults: each ends in one clear error that names the argument or the
file, and leaves the model's weights and the files on disk as they were (reliability issue)."""

import gzip
import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from labkit import attacks, certify, clip, convex, course, data, experiment, lipschitz, odes, train


def _data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 1).long())


def _model(seed=0, head=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, head))


def _weights(model):
    return [p.detach().clone() for p in model.state_dict().values()]


def _same(a, b):
    """Equal weights, wherever they live (``fit`` moves the model to the default device, CUDA on a GPU)."""
    return all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a, b))


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "fit.pt"
    train.fit(_model(), _data(), epochs=1, checkpoint=path, progress=False)
    return path


def test_a_checkpoint_of_another_head_loads_nothing(checkpoint):
    model = _model(seed=3, head=3)
    before, on_disk = _weights(model), checkpoint.read_bytes()
    with pytest.raises(ValueError, match=r"fit\.pt was written for another model: 2\.weight has shape"):
        train.fit(model, _data(), epochs=2, checkpoint=checkpoint, progress=False)
    assert _same(before, _weights(model)) and checkpoint.read_bytes() == on_disk  # all or nothing


def test_a_checkpoint_of_another_optimiser_is_refused_by_name(checkpoint):
    model = _model(seed=3)
    before = _weights(model)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"fit\.pt was written with another optimiser \(Adam.*this run uses SGD"):
        train.fit(model, _data(), epochs=2, optimizer=sgd, checkpoint=checkpoint, progress=False)
    assert _same(before, _weights(model))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip"])
def test_an_empty_truncated_or_foreign_checkpoint_names_the_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    model = _model()
    before = _weights(model)
    with pytest.raises(ValueError, match=r"bad\.pt is not a checkpoint"):
        train.fit(model, _data(), epochs=1, checkpoint=path, progress=False)
    assert _same(before, _weights(model)) and path.read_bytes() == content


def test_a_checkpoint_that_is_not_a_dict_or_lacks_fields_is_refused(tmp_path):
    listed, partial = tmp_path / "list.pt", tmp_path / "partial.pt"
    torch.save([1, 2], listed)
    torch.save({"model": {}}, partial)
    with pytest.raises(ValueError, match=r"list\.pt is not a checkpoint: it holds a list"):
        train.load_checkpoint(listed)
    with pytest.raises(ValueError, match=r"partial\.pt is not a fit checkpoint: it lacks"):
        train.fit(_model(), _data(), epochs=1, checkpoint=partial, progress=False)


def test_an_unwritable_checkpoint_path_is_refused_before_the_first_epoch(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    model = _model()
    before = _weights(model)
    with pytest.raises(OSError, match=r"cannot write the checkpoint .*a file"):
        train.fit(model, _data(), epochs=1, checkpoint=blocker / "fit.pt", progress=False)
    assert _same(before, _weights(model))


def test_leftovers_of_a_killed_write_are_removed_on_the_next_start(tmp_path):
    path = tmp_path / "fit.pt"
    stale = tmp_path / ".fit.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    train.fit(_model(), _data(), epochs=1, checkpoint=path, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["fit.pt"]


def test_resume_is_exact_with_a_learning_rate_schedule(tmp_path):
    """Killed after epoch 1 and resumed: the schedule's position comes back with the checkpoint, so
    the weights are bit-identical to an uninterrupted run's."""

    def run(epochs, path=None):
        model = _model()
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        schedule = train.every_step(convex.triangular_lr(opt, 3 * 4))  # 3 epochs of 4 batches
        train.fit(
            model,
            _data(),
            epochs=epochs,
            batch_size=32,
            optimizer=opt,
            after_step=schedule,
            checkpoint=path,
            progress=False,
        )
        return _weights(model), opt.param_groups[0]["lr"]

    whole, lr_whole = run(3)
    path = tmp_path / "fit.pt"
    run(1, path)  # "killed" after the first epoch: its checkpoint is all that is left
    resumed, lr_resumed = run(3, path)
    assert _same(whole, resumed) and lr_whole == lr_resumed


def test_a_hook_that_could_hide_state_is_refused_with_a_checkpoint(tmp_path):
    calls = []
    with pytest.raises(ValueError, match="cannot save the state of after_step"):
        train.fit(
            _model(),
            _data(),
            epochs=1,
            after_step=lambda m: calls.append(1),
            checkpoint=tmp_path / "c.pt",
            progress=False,
        )
    assert calls == [] and not (tmp_path / "c.pt").exists()
    train.fit(_model(), _data(), epochs=1, after_step=lambda m: calls.append(1), progress=False)  # no checkpoint
    assert calls


def test_a_corrupt_record_names_its_file(tmp_path):
    path = tmp_path / "ch09_full.json"
    path.write_text('{"results": ')
    with pytest.raises(ValueError, match=r"ch09_full\.json is not valid JSON"):
        experiment.load_record(path)


def test_nan_training_data_is_refused_before_any_step():
    x, y = _data().tensors
    x = x.clone()
    x[3, 2] = float("nan")
    model = _model()
    before = _weights(model)
    with pytest.raises(ValueError, match="train_data holds NaN"):
        train.fit(model, TensorDataset(x, y), epochs=1, progress=False)
    assert _same(before, _weights(model))


@pytest.mark.parametrize("attack", [attacks.fgsm, attacks.pgd, attacks.pgd_l2_sphere, attacks.gaussian_noise])
def test_attacks_refuse_nan_images_and_images_outside_their_box(attack):
    model = _model()
    x, y = _data(8).tensors
    nan = x.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x holds NaN"):
        attack(model, nan, y, 0.1)
    with pytest.raises(ValueError, match=r"outside the attack's box .*divide by 255"):
        attack(model, 255 * x, y, 1.0)  # images in 0..255 would be clamped into [0, 1], far from x


def test_certified_accuracy_refuses_an_empty_list_of_radii():
    with pytest.raises(ValueError, match="empty list"):
        certify.certified_accuracy(_model(), _data(), [], 1.0)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: lipschitz.mu(torch.zeros(0, 0)), ValueError, "A is an empty 0×0 matrix"),
        (lambda: lipschitz.spectral_norm(torch.tensor([[1.0, float("nan")]])), ValueError, "W holds NaN"),
        (lambda: lipschitz.lower_bound(_model(), torch.full((4, 6), float("nan"))), ValueError, "x holds NaN"),
        (
            lambda: lipschitz.PowerIteration(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])).run(),
            ValueError,
            "NaN or inf",
        ),
        (lambda: odes.NeuralODE(odes.VectorField(2), 1.0, rtol=-1e-6), ValueError, "rtol must be"),
        (lambda: odes.NeuralODE(odes.VectorField(2), 1.0, atol=0.0), ValueError, "atol must be positive"),
        (lambda: train.evaluate(_model(), _data(), device="gpu0"), ValueError, "device='gpu0' is not a torch device"),
        (
            lambda: (
                train.fit(_model(), _data(), epochs=1, device="cuda:7")
                if not torch.cuda.is_available()
                else train.fit(_model(), _data(), epochs=1, device="nonsense")
            ),
            ValueError,
            "device=",
        ),
        (lambda: certify.certified_radius(torch.zeros(2, 3), torch.tensor([0, 1]), -1.0), ValueError, "lipschitz"),
        (lambda: certify.certified_radius(torch.zeros(2, 3), torch.tensor([0, 3]), 1.0), ValueError, "labels must lie"),
        (lambda: attacks.robust_accuracy(_model(), _data(), attacks.fgsm, []), ValueError, "eps_list is empty"),
        (lambda: attacks.pgd(_model(), _data(4).tensors[0], _data(4).tensors[1], -0.1), ValueError, "eps must be"),
        (lambda: clip.PairSet(torch.zeros(3, 2), torch.zeros(4, 2)), ValueError, "u and v must be"),
        (lambda: train.inputs(TensorDataset(torch.zeros(3, 2), torch.zeros(3)), limit=0), ValueError, "limit"),
        (
            lambda: attacks.fgsm(_model().to("meta"), *_data(4).tensors, 0.1),
            ValueError,
            r"the model is on meta but x is on cpu",
        ),
    ],
)
def test_bad_values_are_refused_with_the_argument_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _mnist_root(tmp_path, images: bytes):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (raw / f"{name}.gz").write_bytes(images)
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{name}.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2])))
    return tmp_path


@pytest.mark.parametrize(
    "images,match",
    [
        (b"plain bytes, not gzip", r"train-images-idx3-ubyte\.gz cannot be read as gzip-compressed IDX"),
        (gzip.compress(bytes([0, 0, 8, 3, 0, 0]), mtime=0), r"train-images-idx3-ubyte\.gz has a truncated IDX header"),
        (gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2]), mtime=0), "is truncated"),
        (gzip.compress(bytes([1, 2, 3, 4, 5]), mtime=0), "is not an IDX file"),
    ],
)
def test_a_broken_mnist_file_is_named(tmp_path, monkeypatch, images, match):
    monkeypatch.setenv("LABKIT_DATA", str(_mnist_root(tmp_path, images)))
    with pytest.raises(ValueError, match=match):
        data.load("mnist", limit=2, download=False)


def test_a_truncated_cifar_npz_is_named(tmp_path, monkeypatch):
    path = tmp_path / "cifar10-test.npz"
    path.write_bytes(b"PK\x03\x04 cut short")
    monkeypatch.setenv("LABKIT_DATA", str(path))
    with pytest.raises(ValueError, match=r"cifar10-test\.npz is not a readable \.npz"):
        data.load("cifar10", limit=2, download=False)


def test_a_notebook_that_is_not_json_is_named(tmp_path):
    labs = tmp_path / "labs"
    labs.mkdir()
    (labs / "lab09_broken.ipynb").write_text("{ not json")
    out = tmp_path / "out"
    with pytest.raises(course.MarkerError, match=r"lab09_broken\.ipynb is not a readable notebook"):
        course.write_editions(out, labs)
    assert not out.exists() or not any(out.iterdir())


def test_lln_radius_refuses_a_list_and_evaluation_an_empty_test_set():
    logits, labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    with pytest.raises(TypeError, match=r"pair_norms must be a torch\.Tensor"):
        certify.lln_radius(logits, labels, [[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="test is empty"):
        convex.evaluate_robustness(
            _model(), TensorDataset(torch.zeros(0, 6), torch.zeros(0).long()), [0.5], lipschitz=1.0
        )


def test_clip_trains_on_a_subset_as_on_a_tensor_dataset():
    from torch.utils.data import Subset

    full = _data(200)
    x, y = full.tensors
    runs = []
    for tr, val in (
        (Subset(full, range(160)), Subset(full, range(160, 200))),
        (TensorDataset(x[:160], y[:160]), TensorDataset(x[160:], y[160:])),
    ):
        torch.manual_seed(0)
        model = clip.mlp((6, 8, 2))
        clip.fit(model, tr, val, setting="standard", epochs=1, lam=0.1, progress=False)
        runs.append(_weights(model))
    assert _same(*runs)
    assert torch.equal(train.inputs(Subset(full, range(5))), x[:5])
    with pytest.raises(TypeError, match="split needs a TensorDataset"):
        clip.split(Subset(full, range(50)), 10)


def test_labels_outside_the_classes_in_a_data_file_are_refused(tmp_path, monkeypatch):
    images = gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(2 * 28 * 28))
    root = _mnist_root(tmp_path, images)
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):  # label 12 in a ten-class set
        (root / "MNIST" / "raw" / f"{name}.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 12])))
    monkeypatch.setenv("LABKIT_DATA", str(root))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: labels must lie in 0\.\.9, found 1\.\.12"):
        data.load("mnist", download=False)


def test_labels_beyond_the_model_outputs_are_named_before_any_step():
    x, y = _data().tensors
    y = y.clone()
    y[5] = 7  # the model has two outputs
    model = _model()
    before = _weights(model)
    with pytest.raises(ValueError, match=r"train_data's labels must lie in 0\.\.1 .* found 0\.\.7"):
        train.fit(model, TensorDataset(x, y), epochs=1, progress=False)
    assert _same(before, _weights(model))
    with pytest.raises(ValueError, match=r"y must lie in 0\.\.1"):
        attacks.fgsm(model, x[:8], y[:8], 0.1)
