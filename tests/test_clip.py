"""labkit.clip (Chapter 2): difference quotients, the adversarial pair update, the λ rule."""
import pytest
import torch
from torch import nn

from labkit import clip


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def test_quotient_matches_definition_and_its_gradient_finite_differences():
    f = _mlp()
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    q = clip.quotient(f, u, v)
    assert torch.allclose(q, (f(u) - f(v)).norm(dim=1) / (u - v).norm(dim=1))
    assert torch.allclose(clip.quotient(f, u, v, squared=True), q ** 2)
    assert float(clip.quotient(f, u, u.clone()).detach().abs().max()) == 0.0  # equal points: 0, not NaN
    uu = u.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(clip.quotient(f, uu, v).sum(), uu)
    d = torch.randn(4, 6, generator=g, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        fd = (clip.quotient(f, u + h * d, v).sum() - clip.quotient(f, u - h * d, v).sum()) / (2 * h)
    assert float((grad * d).sum()) == pytest.approx(float(fd), rel=1e-6)


@pytest.mark.parametrize("squared", [False, True])
def test_pair_update_never_decreases_a_quotient(squared):
    f = _mlp(2)
    x = torch.rand(40, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pairs = clip.PairSet.from_batch(x, mode="partial_random", step=10.0, squared=squared,
                                    generator=torch.Generator().manual_seed(4))
    before = clip.quotient(f, pairs.u, pairs.v, squared=squared).detach()
    history = [before]
    for _ in range(15):
        history.append(pairs.update(f))
    for a, b in zip(history, history[1:]):
        assert bool((b >= a - 1e-12).all())
    assert float(history[-1].max()) > float(before.max())
    assert set(torch.unique(pairs.step).tolist()) - {0.0}  # steps adapt per pair


def test_estimate_converges_to_the_norm_of_a_linear_map_from_below():
    torch.manual_seed(0)
    W = torch.randn(3, 6, dtype=torch.float64)
    f = nn.Linear(6, 3, bias=True).double()
    with torch.no_grad():
        f.weight.copy_(W)
    x = torch.rand(20, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pairs = clip.PairSet.from_batch(x, step=1.0, generator=torch.Generator().manual_seed(6))
    true = float(torch.linalg.matrix_norm(W, 2))
    estimates = []
    for _ in range(20):
        pairs.update(f, iters=5)
        estimates.append(pairs.estimate())
    assert all(e <= true * (1 + 1e-9) for e in estimates)
    assert estimates[-1] == pytest.approx(true, rel=1e-4)


def test_abs_example_estimate_is_one_while_the_layer_bound_is_two():
    """f(z) = W2 ReLU(W1 z) with W1 = (1, -1)ᵀ, W2 = (1, 1) is |z|: Lip 1, product of norms 2."""
    net = nn.Sequential(nn.Linear(1, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
    z = torch.linspace(-1, 1, 9, dtype=torch.float64)[:, None]
    assert torch.allclose(net(z), z.abs())
    pairs = clip.PairSet.from_batch(torch.linspace(-1, 1, 16, dtype=torch.float64)[:, None], mode="plain")
    for _ in range(10):
        pairs.update(net)
    assert pairs.estimate() == pytest.approx(1.0, abs=1e-9)
    layer_bound = float(torch.linalg.matrix_norm(net[0].weight.detach(), 2) * torch.linalg.matrix_norm(net[2].weight.detach(), 2))
    assert layer_bound == pytest.approx(2.0)


def test_pairset_rejects_bad_input():
    with pytest.raises(ValueError):
        clip.PairSet(torch.zeros(3, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        clip.PairSet.from_batch(torch.zeros(1, 2))
    with pytest.raises(ValueError):
        clip.PairSet.from_batch(torch.zeros(4, 2), mode="nope")
    with pytest.raises(ValueError):
        clip.PairSet(torch.zeros(3, 2), torch.ones(3, 2), growth=1.0)
    with pytest.raises(RuntimeError):
        clip.PairSet(torch.zeros(3, 2), torch.ones(3, 2)).estimate()


def test_lambda_schedule_follows_the_target_accuracy():
    s = clip.LambdaSchedule(0.1, target=0.9, increment=0.05, warmup=2, cooldown=1)
    assert s.lam == 0.0
    assert s.step(0.99) == 0.0          # epoch 1: still warm-up
    assert s.step(0.99) == 0.1          # epoch 2: warm-up over, base value
    assert s.step(0.99) == 0.1          # cooldown: the rule acts every second epoch
    assert s.step(0.99) == pytest.approx(0.15)  # above target: more regularisation
    s.step(0.5)
    assert s.step(0.5) == pytest.approx(0.10)   # below target: less
    for _ in range(10):
        s.step(0.0)
    assert s.lam == 0.0                 # never negative
    with pytest.raises(ValueError):
        clip.LambdaSchedule(0.1, target=1.5, increment=0.1)
