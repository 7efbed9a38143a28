"""labkit.clip (Chapter 2): difference quotients, the adversarial pair update, the λ rule."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from labkit import clip, lipschitz


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def test_quotient_matches_definition_and_its_gradient_finite_differences():
    f = _mlp()
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    q = clip.quotient(f, u, v)
    assert torch.allclose(q, (f(u) - f(v)).norm(dim=1) / (u - v).norm(dim=1))
    assert torch.allclose(clip.quotient(f, u, v, squared=True), q**2)
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
    pairs = clip.PairSet.from_batch(
        x, mode="partial_random", step_size=10.0, squared=squared, generator=torch.Generator().manual_seed(4)
    )
    before = clip.quotient(f, pairs.u, pairs.v, squared=squared).detach()
    history = [before]
    for _ in range(15):
        history.append(pairs.update(f))
    for a, b in zip(history, history[1:]):
        assert bool((b >= a - 1e-12).all())
    assert float(history[-1].max()) > float(before.max())
    # each pair's step was multiplied or divided by growth = 1.3 at each of the 15 updates: it is
    # 10 · 1.3^k with k an integer of the parity of 15 in [-15, 15], and the pairs differ
    k = torch.log(pairs.step_size / 10.0) / math.log(1.3)
    assert torch.allclose(k, k.round(), atol=1e-9) and bool((k.round().remainder(2) == 1).all())
    assert float(k.round().abs().max()) <= 15 and len(torch.unique(k.round())) >= 2


def test_estimate_converges_to_the_norm_of_a_linear_map_from_below():
    torch.manual_seed(0)
    W = torch.randn(3, 6, dtype=torch.float64)
    f = nn.Linear(6, 3, bias=True).double()
    with torch.no_grad():
        f.weight.copy_(W)
    x = torch.rand(20, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pairs = clip.PairSet.from_batch(x, step_size=1.0, generator=torch.Generator().manual_seed(6))
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
    assert lipschitz.upper_bound(net) == pytest.approx(2.0, rel=1e-12)  # ‖W2‖ ‖W1‖ = √2 · √2


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
    assert s.step(0.99) == 0.0  # epoch 1: still warm-up
    assert s.step(0.99) == 0.1  # epoch 2: warm-up over, base value
    assert s.step(0.99) == 0.1  # cooldown: the rule acts every second epoch
    assert s.step(0.99) == pytest.approx(0.15)  # above target: more regularisation
    s.step(0.5)
    assert s.step(0.5) == pytest.approx(0.10)  # below target: less
    for _ in range(10):
        s.step(0.0)
    assert s.lam == 0.0  # never negative
    with pytest.raises(ValueError):
        clip.LambdaSchedule(0.1, target=1.5, increment=0.1)


# ----------------------------------------------------------------------------- loss, training, regression
def test_paper_loss_equals_a_hand_computation_on_a_tiny_batch():
    """Paper setting: cross-entropy of the sigmoid outputs + λ · squared quotient of the single
    worst pair; the term is dropped above reg_max."""
    torch.manual_seed(0)
    s = clip.SETTINGS["paper"]
    net = clip.mlp((4, 3, 2), "sigmoid", last_activation=s.last_activation).double()
    W1, b1, W2, b2 = (p.detach() for p in net.parameters())
    f = lambda z: torch.sigmoid(W2 @ torch.sigmoid(W1 @ z + b1) + b2)  # noqa: E731
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 1])
    pairs = clip.PairSet(
        torch.rand(5, 4, generator=g, dtype=torch.float64),
        torch.rand(5, 4, generator=g, dtype=torch.float64),
        squared=s.squared,
    )
    pairs.update(net)
    lam = 0.3
    ce = -sum(float(torch.log_softmax(f(x[i]), 0)[y[i]]) for i in range(3)) / 3
    q2 = max(float((f(u) - f(v)).pow(2).sum() / (u - v).pow(2).sum()) for u, v in zip(pairs.u, pairs.v))
    loss, out, reg = clip.clip_loss(net, x, y, pairs, lam, reduce=s.reduce, reg_max=s.reg_max)
    assert float(loss.detach()) == pytest.approx(ce + lam * q2, rel=1e-12)
    assert reg == pytest.approx(q2, rel=1e-12) and out.shape == (3, 2)
    dropped, _, reg2 = clip.clip_loss(net, x, y, pairs, lam, reduce=s.reduce, reg_max=0.5 * q2)
    assert float(dropped) == pytest.approx(ce, rel=1e-12) and reg2 == pytest.approx(q2)
    mean, _, _ = clip.clip_loss(net, x, y, pairs, lam, reduce="mean")
    q2_all = [float((f(u) - f(v)).pow(2).sum() / (u - v).pow(2).sum()) for u, v in zip(pairs.u, pairs.v)]
    assert float(mean) == pytest.approx(ce + lam * sum(q2_all) / 5, rel=1e-12)
    # only the parameters are differentiated: the pairs receive no gradient
    loss.backward()
    assert pairs.u.grad is None and all(p.grad is not None for p in net.parameters())


def test_mlp_matches_the_authors_layout():
    paper = clip.mlp(last_activation=True)
    assert [type(m).__name__ for m in paper] == [
        "Flatten",
        "Linear",
        "Sigmoid",
        "Linear",
        "Sigmoid",
        "Linear",
        "Sigmoid",
    ]
    assert [m.out_features for m in paper if isinstance(m, nn.Linear)] == [200, 80, 10]
    assert type(clip.mlp()[-1]) is nn.Linear
    with pytest.raises(ValueError):
        clip.mlp(activation="swish")
    with pytest.raises(ValueError):
        clip.mlp((784,))


def test_larger_lambda_gives_a_smaller_constant_on_the_regression_problem():
    """Monotonicity in λ (Chapter 2, proposition): on average over seeds the fitted network's
    Lipschitz constant falls and its training error rises as λ grows."""
    lams = (0.0, 0.03, 0.3)
    lip = {lam: 0.0 for lam in lams}
    err = {lam: 0.0 for lam in lams}
    for seed in range(3):
        x, y = clip.regression_data(20, seed=seed)
        for lam in lams:
            model, pairs = clip.fit_regression(x, y, lam, width=20, steps=400, lr=1e-2, seed=seed)
            lip[lam] += clip.grid_lipschitz(model) / 3
            err[lam] += float(torch.nn.functional.mse_loss(model(x), y)) / 3
            assert pairs.estimate() <= clip.grid_lipschitz(model, points=20001) * (1 + 1e-3) + 1e-3  # from below
    assert lip[0.0] > lip[0.03] > lip[0.3]
    assert err[0.0] < err[0.03] < err[0.3]


def test_grid_lipschitz_known_answers():
    assert clip.grid_lipschitz(lambda t: 3 * t) == pytest.approx(3.0)
    assert clip.grid_lipschitz(clip.regression_truth) == pytest.approx(torch.pi + 0.5, rel=1e-4)
    assert clip.grid_lipschitz(torch.abs, -1, 1, 2000) == pytest.approx(1.0)


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (torch.rand(3, 1, 4, 4, generator=g)[y] + 0.1 * torch.randn(n, 1, 4, 4, generator=g)).clamp(0, 1)
    return TensorDataset(x, y)


@pytest.mark.parametrize("name", ["paper", "standard"])
def test_train_runs_both_settings_and_records_its_history(name):
    tr, val = _blobs(256, 0), _blobs(64, 1)
    s = clip.SETTINGS[name]
    torch.manual_seed(0)
    model = clip.mlp((16, 12, 3), last_activation=s.last_activation)
    run = clip.fit(
        model,
        tr,
        val,
        setting=name,
        epochs=4,
        lam=0.1,
        target=0.5,
        increment=0.05,
        warmup=1,
        progress=False,
        trace_every=1,
    )
    h = run.history
    assert all(len(v) == 4 for v in h.values())
    assert h["lam"][0] == 0.0 and h["lam"][1] == 0.1  # one warm-up epoch, then λ
    assert len(run.trace) == 4 * 2 and all(t > 0 for t in run.trace)
    assert 0 <= run.best_epoch < 4 and not run.model.training
    if name == "standard":
        assert run.best_epoch == 3
    # the first epoch is the warm-up (λ = 0): a one-epoch run from the same start repeats it exactly
    torch.manual_seed(0)
    again = clip.fit(
        clip.mlp((16, 12, 3), last_activation=s.last_activation),
        tr,
        val,
        setting=name,
        epochs=1,
        lam=0.1,
        warmup=1,
        progress=False,
    )
    assert again.history["lam"] == [0.0]
    assert again.history["loss"] == h["loss"][:1] and again.history["accuracy"] == h["accuracy"][:1]


def test_train_is_reproducible_and_rejects_bad_input():
    tr, val = _blobs(128, 0), _blobs(32, 1)

    def once():
        torch.manual_seed(3)
        m = clip.mlp((16, 8, 3))
        clip.fit(m, tr, val, setting="standard", epochs=2, lam=0.1, progress=False, seed=5)
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    assert torch.equal(once(), once())
    with pytest.raises(ValueError, match="setting"):
        clip.fit(clip.mlp((16, 3)), tr, val, setting="nope", epochs=1)
    with pytest.raises(ValueError, match="lam"):
        clip.fit(clip.mlp((16, 3)), tr, val, lam=-1.0, epochs=1)
    with pytest.raises(ValueError, match="val_data"):
        clip.fit(clip.mlp((16, 3)), tr, _blobs(1, 2), epochs=1)


def test_split_and_evaluation_table():
    data = _blobs(100, 0)
    tr, val = clip.split(data, 20)
    assert len(tr) == 80 and len(val) == 20
    both = torch.cat([tr.tensors[0], val.tensors[0]]).flatten(1)
    assert torch.unique(both, dim=0).shape[0] == torch.unique(data.tensors[0].flatten(1), dim=0).shape[0]
    with pytest.raises(ValueError):
        clip.split(data, 100)
    torch.manual_seed(0)
    model = clip.mlp((16, 8, 3))
    r = clip.evaluate_robustness(model, _blobs(64, 3), attack_steps=5)
    up = r["lipschitz"]["upper"]
    assert r["pair_ascent"] <= up and r["lipschitz"]["lower"] <= up
    assert r["radii"] == [2.0] and r["norm"] == "l2"
    assert r["empirical"]["pgd_l2"][0] <= r["clean"] and r["empirical"]["pgd_sphere"][0] <= r["clean"]
