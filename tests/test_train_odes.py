"""labkit.train (fit, evaluate, checkpoints, resume) and labkit.odes (neural ODE, Euler ResNet)."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from labkit import odes, train


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 1).long()
    return TensorDataset(x, y)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


def test_fit_learns_and_evaluates():
    data = _data()
    model = _model()
    hist = train.fit(model, data, epochs=15, lr=0.02, batch_size=32, val_data=data, progress=False)
    assert len(hist.loss) == 15 and len(hist.val_accuracy) == 15
    assert hist.loss[-1] < hist.loss[0]
    assert train.evaluate(model, data)["accuracy"] > 0.9


def test_resume_gives_the_same_result(tmp_path):
    data = _data()
    straight = _model()
    train.fit(straight, data, epochs=4, batch_size=32, progress=False)
    ckpt = tmp_path / "run" / "ckpt.pt"
    interrupted = _model()
    train.fit(interrupted, data, epochs=2, batch_size=32, checkpoint=ckpt, progress=False)
    resumed = _model(seed=123)  # a fresh process would build a fresh model
    hist = train.fit(resumed, data, epochs=4, batch_size=32, checkpoint=ckpt, progress=False)
    assert len(hist.loss) == 4
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [p.name for p in ckpt.parent.iterdir()] == ["ckpt.pt"]  # no temporary files left


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    train.save_checkpoint(path, {"w": torch.ones(2)})

    def broken_save(obj, fh):
        fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, {"w": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(train.load_checkpoint(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"f": print}, path)
    with pytest.raises(ValueError, match="evil.pt.*not a checkpoint"):
        train.load_checkpoint(path)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "c.pt"
    train.fit(_model(), _data(), epochs=1, checkpoint=ckpt, progress=False)
    other = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="another model"):
        train.fit(other, _data(), epochs=2, checkpoint=ckpt, progress=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"epochs": 0}, "epochs"), ({"epochs": 1, "batch_size": 0}, "batch_size"), ({"epochs": 1, "lr": -1.0}, "lr")],
)
def test_fit_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train.fit(_model(), _data(), **kwargs)


def test_fit_refuses_an_empty_or_non_finite_validation_set_before_any_step():
    from torch.utils.data import TensorDataset

    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    empty = TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="val_data is empty"):
        train.fit(model, _data(), epochs=1, val_data=empty, progress=False)
    x, y = _data().tensors
    bad = TensorDataset(torch.full_like(x[:4], float("nan")), y[:4])
    with pytest.raises(ValueError, match="val_data"):
        train.fit(model, _data(), epochs=1, val_data=bad, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no step was taken


# ----------------------------------------------------------------------------- odes
def test_euler_resnet_converges_to_the_flow_at_first_order():
    torch.manual_seed(0)
    f = odes.VectorField(3, hidden=8).double()
    x0 = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        exact = odes.NeuralODE(f, 1.0, rtol=1e-11, atol=1e-12)(x0)
        errs = [float((odes.EulerResNet(f, 1.0, n)(x0) - exact).norm()) for n in (20, 40, 80)]
    assert 1.8 < errs[0] / errs[1] < 2.2 and 1.8 < errs[1] / errs[2] < 2.2


def test_linear_field_matches_matrix_exponential():
    f = nn.Module()
    A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)

    class Linear(nn.Module):
        def forward(self, t, x):
            return x @ A.T

    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    out = odes.NeuralODE(Linear(), 1.5, rtol=1e-10, atol=1e-12)(x0)
    assert torch.allclose(out, x0 @ torch.linalg.matrix_exp(1.5 * A).T, atol=1e-8)
    del f


def test_adjoint_direct_and_finite_differences_agree_in_float64():
    torch.manual_seed(1)
    f = odes.VectorField(4, activation="tanh").double()
    x0 = torch.randn(3, 4, dtype=torch.float64)
    grads = {}
    for adjoint in (False, True):
        f.zero_grad()
        node = odes.NeuralODE(f, 1.0, rtol=1e-10, atol=1e-10, adjoint=adjoint)
        node(x0).pow(2).sum().backward()
        grads[adjoint] = f.A.weight.grad.clone()
    # central finite differences in one weight direction
    E = torch.randn(4, 4, dtype=torch.float64)
    h = 1e-5
    node = odes.NeuralODE(f, 1.0, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        f.A.weight += h * E
        up = float(node(x0).pow(2).sum())
        f.A.weight -= 2 * h * E
        down = float(node(x0).pow(2).sum())
        f.A.weight += h * E
    fd = (up - down) / (2 * h)
    for adjoint in (False, True):
        assert float((grads[adjoint] * E).sum()) == pytest.approx(fd, rel=1e-6)
    assert torch.allclose(grads[False], grads[True], rtol=1e-6, atol=1e-9)


def test_trajectory_output_and_bad_arguments():
    f = odes.VectorField(2)
    traj = odes.NeuralODE(f, 1.0)(torch.zeros(1, 2), t=torch.linspace(0, 1, 5))
    assert traj.shape == (5, 1, 2)
    with pytest.raises(ValueError, match="activation"):
        odes.VectorField(2, activation="swish2")
    with pytest.raises(ValueError, match="^T must be"):
        odes.NeuralODE(f, -1.0)
    with pytest.raises(ValueError, match="steps"):
        odes.EulerResNet(f, 1.0, 0)
    with pytest.raises(TypeError, match="nn.Module"):
        odes.NeuralODE(lambda t, x: x)
