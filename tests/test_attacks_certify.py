"""labkit.attacks and labkit.certify: balls, boxes, strength, and sound certificates."""

import math
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from labkit import attacks, certify, lipschitz, train


def _trained_linear(seed=0, n=256, d=20):
    """A linear classifier trained on separable Gaussian blobs in [0, 1]^d."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.rand(3, d, generator=g) * 0.6 + 0.2
    x = (centres[y] + 0.05 * torch.randn(n, d, generator=g)).clamp(0, 1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 3))
    train.fit(model, TensorDataset(x, y), epochs=30, lr=0.05, batch_size=64, progress=False)
    return model, x, y


@pytest.fixture(scope="module")
def linear_setup():
    return _trained_linear()


@settings(max_examples=25, deadline=None)
@given(
    eps=st.floats(0.0, 0.5), norm=st.sampled_from(["linf", "l2"]), steps=st.integers(1, 8), seed=st.integers(0, 1000)
)
def test_pgd_never_leaves_ball_or_box(linear_setup, eps, norm, steps, seed):
    model, x, y = linear_setup
    xb, yb = x[:32], y[:32]
    adv = attacks.pgd(model, xb, yb, eps, norm=norm, steps=steps, generator=torch.Generator().manual_seed(seed))
    delta = (adv - xb).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


@settings(max_examples=15, deadline=None)
@given(eps=st.floats(0.0, 2.0), steps=st.integers(1, 6), seed=st.integers(0, 1000))
def test_sphere_attack_never_leaves_ball_or_box(linear_setup, eps, steps, seed):
    model, x, y = linear_setup
    adv = attacks.pgd_l2_sphere(model, x[:32], y[:32], eps, steps=steps, generator=torch.Generator().manual_seed(seed))
    assert float((adv - x[:32]).flatten(1).norm(dim=1).max()) <= eps + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_sphere_attack_lands_on_the_sphere_and_freezes_fooled_examples():
    """Inside the box (no clamping) every step ends at distance exactly eps; an example that is
    misclassified at the start is never moved again; and the attack beats random points of the sphere."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 3))
    x = 0.5 + 0.01 * torch.randn(64, 20, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    eps = 1.0  # large enough to flip some of these points, small enough to stay inside the box
    adv = attacks.pgd_l2_sphere(model, x, y, eps, steps=5, step_size=0.05, generator=torch.Generator().manual_seed(2))
    assert torch.allclose((adv - x).norm(dim=1), torch.full((64,), eps), atol=1e-5)
    start = attacks.pgd_l2_sphere(model, x, y, eps, steps=1, step_size=0.0, generator=torch.Generator().manual_seed(2))
    fooled_at_start = model(start).argmax(1) != y
    again = attacks.pgd_l2_sphere(model, x, y, eps, steps=5, step_size=0.05, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again[fooled_at_start], start[fooled_at_start])
    with torch.no_grad():
        assert int((model(adv).argmax(1) != y).sum()) > int(fooled_at_start.sum())


def test_fgsm_is_sign_step(linear_setup):
    model, x, y = linear_setup
    adv = attacks.fgsm(model, x, y, 0.1)
    assert float((adv - x).abs().max()) <= 0.1 + 1e-7
    # interior coordinates move by exactly eps, each up its own coordinate of the loss gradient
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y, reduction="sum"), xg)
    inner = (x > 0.1) & (x < 0.9) & (grad != 0)
    assert torch.allclose((adv - x)[inner], 0.1 * grad.sign()[inner], atol=1e-6)
    with torch.no_grad():
        assert float(torch.nn.functional.cross_entropy(model(adv), y)) > float(
            torch.nn.functional.cross_entropy(model(x), y)
        )


def test_attacks_hurt_more_than_noise_and_pgd_beats_fgsm(linear_setup):
    model, x, y = linear_setup
    data = TensorDataset(x, y)
    eps = [0.0, 0.05, 0.1, 0.2]
    gen = torch.Generator().manual_seed(0)
    noise = attacks.robust_accuracy(model, data, partial(attacks.gaussian_noise, generator=gen), eps, progress=False)
    f = attacks.robust_accuracy(model, data, attacks.fgsm, eps, progress=False)
    p = attacks.robust_accuracy(model, data, partial(attacks.pgd, steps=20), eps, progress=False)
    clean = train.evaluate(model, data)["accuracy"]
    assert f[0.0] == pytest.approx(clean) and p[0.0] == pytest.approx(clean) and clean > 0.95
    for e in eps[1:]:
        assert p[e] <= f[e] + 1e-9 <= noise[e] + 1e-9
    assert p[0.2] < noise[0.2] - 0.2  # a real attack is much worse than noise
    assert all(a >= b for a, b in zip(list(p.values()), list(p.values())[1:]))


def test_certified_points_survive_pgd_at_099_radius(linear_setup):
    model, x, y = linear_setup
    W = model[0].weight.detach()
    L = float(lipschitz.spectral_norm(W))
    with torch.no_grad():
        radius = certify.certified_radius(model(x), y, L)
    ok = radius > 0
    assert ok.sum() > 100
    xs, ys, rs = x[ok], y[ok], radius[ok]
    flipped = 0
    for xi, yi, ri in zip(xs, ys, rs):
        adv = attacks.pgd(
            model,
            xi[None],
            yi[None],
            0.99 * float(ri),
            norm="l2",
            steps=50,
            clamp=(-10.0, 10.0),
            generator=torch.Generator().manual_seed(0),
        )
        flipped += int(model(adv).argmax(1) != yi)
    assert flipped == 0
    # ... and the certificate is nearly tight for a linear model: PGD at 1.5× radius wins often
    wins = 0
    for xi, yi, ri in list(zip(xs, ys, rs))[:40]:
        adv = attacks.pgd(
            model,
            xi[None],
            yi[None],
            1.5 * math.sqrt(2) * float(ri),
            norm="l2",
            steps=50,
            clamp=(-10.0, 10.0),
            generator=torch.Generator().manual_seed(0),
        )
        wins += int(model(adv).argmax(1) != yi)
    assert wins > 0


def test_certified_radius_known_answer():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    r = certify.certified_radius(logits, labels, lipschitz=2.0)
    assert torch.allclose(r, torch.tensor([1.0 / (2 * math.sqrt(2)), 0.0]))
    assert torch.allclose(certify.margin(logits, labels), torch.tensor([1.0, -2.0]))


def test_certified_accuracy_matches_radii(linear_setup):
    model, x, y = linear_setup
    data = TensorDataset(x, y)
    L = float(lipschitz.upper_bound(model))
    acc = certify.certified_accuracy(model, data, [0.0, 0.1, 0.3], L)
    clean = train.evaluate(model, data)["accuracy"]
    assert acc[0.0] == pytest.approx(clean)
    assert acc[0.0] >= acc[0.1] >= acc[0.3]
    assert certify.certified_accuracy(model, data, 0.1, L) == acc[0.1]
    # certifying with a larger (still valid) Lipschitz bound never certifies more
    assert certify.certified_accuracy(model, data, 0.1, 2 * L) <= acc[0.1]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("attack", [attacks.fgsm, attacks.pgd, attacks.pgd_l2_sphere, attacks.gaussian_noise])
def test_attacks_reject_negative_eps(linear_setup, attack):
    model, x, y = linear_setup
    with pytest.raises(ValueError, match="eps"):
        attack(model, x[:2], y[:2], -0.1)
    with pytest.raises(ValueError, match="eps"):
        attack(model, x[:2], y[:2], float("nan"))


def test_attacks_reject_wrong_shapes_and_dtypes(linear_setup):
    model, x, y = linear_setup
    with pytest.raises(ValueError, match="labels"):
        attacks.fgsm(model, x[:4], y[:3], 0.1)
    with pytest.raises(TypeError, match="integer"):
        attacks.pgd(model, x[:4], y[:4].float(), 0.1)
    with pytest.raises(TypeError, match="floating"):
        attacks.fgsm(model, (x[:4] * 255).to(torch.uint8), y[:4], 0.1)
    with pytest.raises(ValueError, match="batch dimension"):
        attacks.fgsm(model, x[0], y[:1], 0.1)
    with pytest.raises(ValueError, match="norm"):
        attacks.pgd(model, x[:4], y[:4], 0.1, norm="l1")
    with pytest.raises(ValueError, match="steps"):
        attacks.pgd(model, x[:4], y[:4], 0.1, steps=0)


def test_attack_does_not_touch_model(linear_setup):
    model, x, y = linear_setup
    model.train()
    model.zero_grad(set_to_none=True)
    before = [p.clone() for p in model.parameters()]
    attacks.pgd(model, x[:8], y[:8], 0.1)
    assert model.training
    assert all(torch.equal(a, b) and b.grad is None and b.requires_grad for a, b in zip(before, model.parameters()))


def test_robust_accuracy_rejects_bad_input(linear_setup):
    model, x, y = linear_setup
    data = TensorDataset(x, y)
    with pytest.raises(ValueError, match="eps"):
        attacks.robust_accuracy(model, data, attacks.fgsm, [0.1, -0.2], progress=False)
    with pytest.raises(TypeError, match="callable"):
        attacks.robust_accuracy(model, data, "pgd", [0.1], progress=False)


def test_certify_rejects_bad_input():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="lipschitz"):
        certify.certified_radius(logits, torch.tensor([0, 1, 2, 0]), 0.0)
    with pytest.raises(ValueError, match="lipschitz"):
        certify.certified_radius(logits, torch.tensor([0, 1, 2, 0]), -1.0)
    with pytest.raises(ValueError, match="3 labels|4 inputs"):
        certify.certified_radius(logits, torch.tensor([0, 1, 2]), 1.0)
    with pytest.raises(ValueError, match="0..2"):
        certify.certified_radius(logits, torch.tensor([0, 1, 3, 0]), 1.0)
    with pytest.raises(TypeError, match="integer"):
        certify.certified_radius(logits, torch.tensor([0.0, 1.0, 2.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        certify.certified_radius(torch.randn(4), torch.tensor([0, 1, 2, 0]), 1.0)
    with pytest.raises(ValueError, match="eps"):
        certify.certified_accuracy(nn.Linear(3, 3), TensorDataset(logits, torch.tensor([0, 1, 2, 0])), -0.5, 1.0)


def test_attacks_work_inside_no_grad(linear_setup):
    model, x, y = linear_setup
    with torch.no_grad():
        a = attacks.fgsm(model, x[:8], y[:8], 0.1)
    assert torch.equal(a, attacks.fgsm(model, x[:8], y[:8], 0.1))


def test_minimal_l2_brackets_the_distance_to_a_linear_boundary():
    from labkit import attacks

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0, 0]], dtype=torch.float64))
        model.bias.copy_(torch.tensor([-0.5, 0.5], dtype=torch.float64))  # the boundary is x_0 = 0.5
    x = torch.full((5, 6), 0.5, dtype=torch.float64)
    x[:, 0] = 0.5 + torch.tensor([0.01, 0.03, 0.05, 0.07, -0.02], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 0])  # the last input is misclassified already
    radii = [0.02 * k for k in range(1, 8)]
    got = attacks.minimal_l2(model, x, y, radii, steps=20)
    distance = (x[:, 0] - 0.5).abs()
    assert got[4] == 0.0
    for g, d in zip(got[:4], distance[:4]):
        assert float(d) <= float(g) <= float(d) + 0.02 + 1e-9  # the first grid radius past the boundary
    assert torch.isinf(attacks.minimal_l2(model, x[:1], y[:1], [0.005], steps=20)).all()
    with pytest.raises(ValueError, match="increasing"):
        attacks.minimal_l2(model, x, y, [0.1, 0.05])


def test_minimal_l2_bisection_finds_the_distance_to_a_linear_boundary():
    model = torch.nn.Linear(6, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1, 0, 0, 0, 0], [-1.0, -1, 0, 0, 0, 0]], dtype=torch.float64))
        model.bias.copy_(torch.tensor([-1.0, 1.0], dtype=torch.float64))  # the boundary is x_0 + x_1 = 1
    x = torch.full((5, 6), 0.5, dtype=torch.float64)
    shift = torch.tensor([0.013, 0.05, 0.11, 0.27, -0.02], dtype=torch.float64)
    x[:, 0] += shift
    x[:, 1] += shift
    y = torch.tensor([0, 0, 0, 0, 0])  # the last input is misclassified already
    distance = 2 * shift.abs() / math.sqrt(2)  # the distance to the plane x_0 + x_1 = 1
    radii = [0.125 * 2**k for k in range(4)]
    for bisections in (0, 4, 10):
        got = attacks.minimal_l2(model, x, y, radii, steps=20, bisections=bisections)
        assert got[4] == 0.0
        for g, d in zip(got[:4], distance[:4]):
            first = min(r for r in radii if r >= d)  # the grid radius that finds it
            width = first / 2**bisections  # the bracket is at most that radius, halved each time
            # sound (never below the distance), and within the bracket up to PGD's own shortfall of
            # 20 steps at a radius just past the boundary (about 1 %, measured)
            assert float(d) - 1e-9 <= float(g) <= float(d) * 1.02 + width + 1e-9
    assert torch.isinf(attacks.minimal_l2(model, x[:1], y[:1], [0.001], bisections=5)).all()
    with pytest.raises(ValueError, match="bisections"):
        attacks.minimal_l2(model, x, y, radii, bisections=-1)


def test_median_minimal_norm_leaves_out_misclassified_and_censors_failures():
    # misclassified (0) left out; failures (inf or None) rank above every norm found
    assert attacks.median_minimal_norm([0.0, 0.0, 0.3, 0.1, None, 0.2]) == pytest.approx(0.25)
    assert attacks.median_minimal_norm([0.0, 0.5, math.inf, math.inf]) == math.inf  # a censored median
    assert attacks.median_minimal_norm([0.4, 0.4, 0.4, 0.9, None]) == pytest.approx(0.4)  # ties
    assert attacks.median_minimal_norm([0.2, 0.4, math.inf, 0.0]) == pytest.approx(0.4)
    # dropping the failures (0.15) or keeping the zeros (0.2) would each give another answer
    assert attacks.median_minimal_norm([0.0, 0.0, 0.1, 0.2, 0.3, None, None]) == pytest.approx(0.3)
    assert math.isnan(attacks.median_minimal_norm([0.0, 0.0]))  # nobody correctly classified
    with pytest.raises(ValueError, match="non-negative"):
        attacks.median_minimal_norm([0.1, -0.2])


def test_accuracy_at_counts_radii_strictly_above():
    radii = torch.tensor([0.0, 0.1, 0.2, 0.2, 0.5])
    assert certify.accuracy_at(radii, [0.0, 0.1, 0.2, 0.49, 0.5]) == pytest.approx([0.8, 0.6, 0.2, 0.2, 0.0])
    assert certify.accuracy_at([0.3, 0.0], [0.3]) == [0.0]  # a certificate of radius r covers ‖δ‖ < r only
    with pytest.raises(ValueError, match="eps"):
        certify.accuracy_at(radii, [-0.1])
