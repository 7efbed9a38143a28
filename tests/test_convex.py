"""Convex potential layers (Chapter 4): 1-Lipschitz by construction, and the tests can fail."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import attacks, audit, certify, data, lipschitz
from labkit import convex as cv

TOL = 1e-5


def _layers(step=2.0):
    """Every layer type, with an input shape (no batch) on which the test runs."""
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    return [
        (cv.ConvexPotentialLayer(12, 20, step=step, generator=g()), (12,)),
        (cv.ConvexPotentialLayer(24, 8, step=step, generator=g()), (24,)),
        (cv.ConvexPotentialConv2d(3, 5, step=step, generator=g()), (3, 8, 8)),
        (cv.ConvexPotentialConv2d(4, 4, stride=2, step=step, generator=g()), (4, 9, 9)),
        (cv.SLLLayer(12, 20, step=step, generator=g()), (12,)),
        (cv.SLLConv2d(3, 5, step=step, generator=g()), (3, 8, 8)),
    ]


def _max_jacobian_norm(layer, shape, n=8):
    """Largest exact Jacobian norm over random inputs and adversarially searched pairs, in eval mode."""
    layer = layer.double().eval()
    x = 2 * torch.randn((n, *shape), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    layer(x[:1])
    jac = lipschitz.lower_bound(layer, x, method="jacobian")
    pairs = lipschitz.lower_bound(layer, x, steps=60, lr=0.05, generator=torch.Generator().manual_seed(3))
    return max(jac, pairs)


@pytest.mark.parametrize("index", range(6))
def test_every_layer_is_1_lipschitz(index):
    layer, shape = _layers()[index]
    layer(torch.randn((2, *shape)))  # a training-mode pass first (moves the power vector)
    assert cv.all_active_norm(layer, shape) <= 1 + TOL
    assert _max_jacobian_norm(layer, shape) <= 1 + TOL


@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_too_long_cpl_step_is_caught(index):
    layer, shape = _layers(step=2.2)[index]
    if index == 2:
        shape = (3, 16, 16)  # on 8×8 the torus bound is ~4 % loose and hides the violation (see Chapter 4)
    layer(torch.randn((2, *shape)))
    assert cv.all_active_norm(layer, shape) > 1 + 0.05


def test_too_long_sll_step_is_caught_where_gershgorin_is_tight():
    layer = cv.SLLLayer(10, 6, step=2.2)
    with torch.no_grad():  # orthogonal rows: WWᵀ is diagonal and the Gershgorin scaling is exact
        layer.weight.copy_(torch.linalg.qr(torch.randn(10, 6))[0].T * torch.linspace(0.5, 2, 6)[:, None])
    assert cv.all_active_norm(layer, (10,)) == pytest.approx(1.2, abs=1e-6)
    layer.step = 2.0
    assert cv.all_active_norm(layer, (10,)) == pytest.approx(1.0, abs=1e-6)


def test_dense_cpl_matches_the_formula_and_the_theorem_example():
    torch.manual_seed(0)
    layer = cv.ConvexPotentialLayer(6, 9).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    W, b = layer.weight, layer.bias
    h = 2 / torch.linalg.matrix_norm(W, 2) ** 2
    expected = x - h * torch.relu(x @ W.T + b) @ W
    assert torch.allclose(layer(x), expected, atol=1e-12)
    assert layer.norm_bound() == pytest.approx(float(torch.linalg.matrix_norm(W.detach(), 2)), rel=1e-12)


def test_conv_power_iteration_matches_the_svd_of_the_unrolled_convolution():
    # seed 3: top singular values 1.3706 and 1.3573; convolutions often have far closer ones (seed 0:
    # ratio 0.9999), and then thousands of steps are not enough: one more reason for an upper bound
    layer = cv.ConvexPotentialConv2d(4, 6, generator=torch.Generator().manual_seed(3)).double()
    layer(torch.randn(1, 4, 8, 8, dtype=torch.float64))
    M = cv.conv_matrix(lambda t: layer._op(t, bias=False), (4, 8, 8))
    exact = float(torch.linalg.matrix_norm(M, 2))
    estimate = float(layer.power_norm(2000).detach())
    assert estimate <= exact * (1 + 1e-10)
    assert estimate == pytest.approx(exact, rel=1e-8)
    layer.eval()
    assert exact <= layer.norm_bound() * (1 + 1e-12)  # the evaluation norm is an upper bound
    assert layer.norm_bound() <= 1.2 * exact


def _matrices(kind):
    g = torch.Generator().manual_seed(4)
    if kind == "complex":
        return torch.randn(6, 9, 9, dtype=torch.complex128, generator=g)
    if kind == "tall":
        return torch.randn(5, 12, 4, dtype=torch.float64, generator=g)
    if kind == "wide":
        return torch.randn(5, 4, 12, dtype=torch.float32, generator=g)
    if kind == "rank one":
        u = torch.randn(3, 7, 1, dtype=torch.float64, generator=g)
        return u @ torch.randn(3, 1, 5, dtype=torch.float64, generator=g)
    A = torch.randn(4, 6, 6, dtype=torch.float64, generator=g)  # "with a zero matrix"
    A[2] = 0
    return A


@pytest.mark.parametrize("kind", ["complex", "tall", "wide", "rank one", "with a zero matrix"])
def test_gram_iteration_bounds_the_spectral_norm_from_above_within_its_tolerance(kind):
    A = _matrices(kind)
    exact = torch.linalg.matrix_norm(A.double() if not A.is_complex() else A, ord=2)
    gram = cv.spectral_norm_bound(A, method="gram")
    assert gram.dtype == torch.float64 and gram.shape == A.shape[:-2]
    assert bool((gram >= exact * (1 - 1e-12)).all())
    assert bool((gram <= exact * (1 + cv.GRAM_TOLERANCE)).all())
    assert torch.equal(cv.spectral_norm_bound(A), exact)  # "auto" on the CPU: the exact SVD
    if kind == "with a zero matrix":
        assert float(gram[2]) == 0.0


@pytest.mark.parametrize("n", [2, 17, 128])
def test_gram_iteration_overestimates_equal_singular_values_by_exactly_its_worst_case_factor(n):
    # all singular values equal (3 · an orthogonal matrix): ‖G_t‖_F^(1/2^t) = 3 · n^(1/2^(t+1))
    Q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)))[0]
    t = cv._gram_iterations(n, cv.GRAM_TOLERANCE)
    factor = n ** (1 / 2 ** (t + 1))
    assert 1 < factor <= 1 + cv.GRAM_TOLERANCE
    assert float(cv.spectral_norm_bound(3 * Q, method="gram")) == pytest.approx(3 * factor, rel=1e-12)
    loose = cv.spectral_norm_bound(3 * Q, method="gram", tolerance=0.1)  # fewer iterations, looser
    assert 3 * factor < float(loose) <= 3 * 1.1


def test_spectral_norm_bound_refuses_bad_input():
    with pytest.raises(ValueError, match="method"):
        cv.spectral_norm_bound(torch.eye(3), method="power")
    with pytest.raises(ValueError, match="batch of matrices"):
        cv.spectral_norm_bound(torch.ones(3))
    with pytest.raises(ValueError, match="tolerance"):
        cv.spectral_norm_bound(torch.eye(3), tolerance=0)


@pytest.mark.parametrize("method", ["svd", "gram"])
def test_conv_norm_bound_is_the_circular_convolution_norm_and_bounds_the_zero_padded_one(method):
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    circular = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular", bias=False).double()
    circular.weight = conv.weight
    zero_padded = float(torch.linalg.matrix_norm(cv.conv_matrix(conv, (3, 6, 6)), 2))
    torus = float(torch.linalg.matrix_norm(cv.conv_matrix(circular, (3, 8, 8)), 2))  # (6 + 2p)²
    bound = cv.conv_norm_upper_bound(conv.weight, (6, 6), 1, method=method)
    assert torus <= bound * (1 + 1e-12) and bound <= torus * (1 + cv.GRAM_TOLERANCE)
    assert zero_padded <= bound * (1 + 1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_conv_norm_bound_on_cuda_stays_on_the_device_and_bounds_the_cpu_value():
    K = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(5)) / 24
    exact = cv.conv_norm_upper_bound(K, (16, 16), 1)
    on_gpu = cv.conv_norm_upper_bound(K.cuda(), (16, 16), 1)  # Gram iteration
    assert exact * (1 - 1e-12) <= on_gpu <= exact * (1 + cv.GRAM_TOLERANCE)


@pytest.mark.parametrize("stride,size", [(1, 7), (2, 8), (2, 9)])
def test_transposed_convolution_is_the_exact_adjoint(stride, size):
    layer = cv.ConvexPotentialConv2d(3, 5, stride=stride).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    y = torch.randn_like(layer._op(x, bias=False))
    with torch.no_grad():
        lhs = (layer._op(x, bias=False) * y).sum()
        rhs = (x * layer.adjoint(y, x.shape)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-10)


def test_power_iteration_approaches_from_below():
    W = torch.randn(30, 20, dtype=torch.float64)
    layer = cv.ConvexPotentialLayer(20, 30).double()
    with torch.no_grad():
        layer.weight.copy_(W)
    exact = float(torch.linalg.matrix_norm(W, 2))
    values = [float(layer.power_norm(1).detach()) for _ in range(30)]
    assert all(v <= exact * (1 + 1e-12) for v in values)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))  # monotone
    assert values[-1] == pytest.approx(exact, rel=1e-4)


def test_eval_norm_is_cached_and_invalidated_when_the_weight_changes():
    layer = cv.ConvexPotentialLayer(5, 7).eval()
    first = layer.norm_bound()
    assert layer.norm_bound() == first
    with torch.no_grad():
        layer.weight.mul_(3.0)
    assert layer.norm_bound() == pytest.approx(3 * first, rel=1e-6)
    conv = cv.ConvexPotentialConv2d(2, 3).eval()
    conv(torch.randn(1, 2, 6, 6))
    small = conv.norm_bound()
    conv(torch.randn(1, 2, 12, 12))  # a new input size: new power vector, new bound
    assert conv.u.shape == (1, 2, 12, 12) and conv.norm_bound() != small


def test_state_dict_round_trip_keeps_the_power_vector():
    model = cv.preset("cifar", conv_depth=1, dense_depth=1, dense_hidden=16)
    model(torch.rand(2, 3, 32, 32))
    clone = cv.preset("cifar", conv_depth=1, dense_depth=1, dense_hidden=16, seed=5)
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(model(x), clone(x))


def test_sll_scaling_satisfies_the_sdp_condition():
    dense = cv.SLLLayer(10, 14).double()
    W, t = dense.weight.detach(), dense.scaling().detach()
    assert float(torch.linalg.eigvalsh(W.T @ torch.diag(t) @ W)[-1]) <= 1 + 1e-12
    conv = cv.SLLConv2d(3, 4).double()
    M = cv.conv_matrix(lambda z: conv._op(z, bias=False), (3, 6, 6))  # (4·36) × (3·36)
    T = conv.scaling().detach().repeat_interleave(36)
    assert float(torch.linalg.eigvalsh(M.T @ torch.diag(T) @ M)[-1]) <= 1 + 1e-12


@pytest.mark.parametrize("make", [lambda: cv.SLLLayer(6, 9), lambda: cv.SLLConv2d(2, 3)])
def test_sll_evaluation_scaling_is_cached_until_a_value_changes(make):
    layer = make().double()
    x = (
        torch.randn(4, 6, dtype=torch.float64)
        if isinstance(layer, cv.SLLLayer)
        else torch.randn(4, 2, 5, 5, dtype=torch.float64)
    )
    trained = layer(x)
    layer.eval()
    first = layer.scaling()
    assert layer.scaling() is first and not first.requires_grad  # cached, a constant
    assert torch.allclose(layer(x), trained, atol=1e-12)  # the same map as in training mode
    with torch.no_grad():
        layer.weight.data.mul_(1.5)  # in place: neither a new tensor nor a new storage
    assert torch.allclose(layer.scaling(), layer._compute_scaling(), atol=0)
    assert torch.allclose(layer.scaling(), first / 1.5**2, rtol=1e-9)
    before = layer.scaling()
    layer.theta.data[0] += 0.3  # one entry: a uniform shift would leave t unchanged
    assert not torch.equal(layer.scaling(), before)
    assert torch.allclose(layer.scaling(), layer._compute_scaling(), atol=0)


def test_cpl_is_sll_with_t_equal_to_one_over_norm_squared():
    cpl = cv.ConvexPotentialLayer(6, 8).double().eval()
    sll = cv.SLLLayer(6, 8).double()
    with torch.no_grad():
        sll.weight.copy_(cpl.weight), sll.bias.copy_(cpl.bias)
    sll.scaling = lambda: torch.full((8,), 1 / cpl.norm_bound() ** 2, dtype=torch.float64)
    x = torch.randn(5, 6, dtype=torch.float64)
    assert torch.allclose(sll(x), cpl(x), atol=1e-12)


@pytest.mark.parametrize(
    "module,shape",
    [
        (cv.SumPool2d(4), (2, 8, 8)),
        (cv.SumPool2d(2), (1, 6, 6)),
        (cv.ChannelPad(5), (3, 4, 4)),
        (cv.FeaturePad(20), (1, 3, 4)),
        (cv.FirstK(3), (7,)),
    ],
)
def test_norm_preserving_pieces_have_norm_one(module, shape):
    M = cv.conv_matrix(module, shape)
    assert float(torch.linalg.matrix_norm(M, 2)) == pytest.approx(1.0, abs=1e-12)


def test_average_pooling_would_shrink_margins():
    M = cv.conv_matrix(lambda t: F.avg_pool2d(t, 4), (1, 8, 8))
    assert float(torch.linalg.matrix_norm(M, 2)) == pytest.approx(0.25)


def test_lln_certificate_agrees_with_brute_force():
    gen = torch.Generator().manual_seed(0)
    head = cv.LLN(6, 5, generator=gen)
    logits = torch.randn(40, 5, generator=gen)
    y = torch.randint(0, 5, (40,), generator=gen)
    radius = certify.lln_radius(logits, y, head.pair_norms(), 2.0)
    What = head.normalized_weight().detach()
    for i in range(40):
        ratios = [(logits[i, y[i]] - logits[i, j]) / (What[y[i]] - What[j]).norm() for j in range(5) if j != y[i]]
        assert float(radius[i]) == pytest.approx(max(0.0, float(min(ratios))) / 2.0, rel=1e-6, abs=1e-9)


def test_lln_radius_is_the_exact_distance_for_a_linear_model():
    gen = torch.Generator().manual_seed(1)
    model = cv.LipschitzNet(nn.Sequential(nn.Identity()), cv.LLN(4, 3, generator=gen))
    x = torch.randn(30, 4, generator=gen)
    y = model(x).argmax(1)
    r = cv.certified_radii(model, x, y)
    What = model.head.normalized_weight().detach()
    with torch.no_grad():
        logits = model(x)
        for i in range(30):
            gaps = (logits[i, y[i]] - logits[i]) / torch.cdist(What[y[i]][None], What)[0].clamp_min(1e-12)
            gaps[y[i]] = math.inf
            j = int(gaps.argmin())
            d = (What[j] - What[y[i]]) / (What[j] - What[y[i]]).norm()
            assert model(x[i] + 0.999 * r[i] * d).argmax() == y[i]
            assert model(x[i] + 1.001 * r[i] * d).argmax() != y[i]


def test_sqrt2_rule_is_not_applied_to_an_lln_head():
    model = cv.cpl_dense(8, width=8, depth=1, hidden=4, classes=3, head="lln")
    x, y = torch.rand(10, 8), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="certifies itself"):
        cv.certified_radii(model, x, y, lipschitz=1.0)
    with pytest.raises(ValueError, match="lipschitz"):
        cv.certified_radii(cv.baseline_mlp(8, width=4, depth=1, classes=3), x, y)


def _certified_test_points(head):
    try:
        tr = data.load("mnist", limit=2000, download=False)
        te = data.load("mnist", train=False, limit=400, download=False)
    except data.DataNotFoundError:
        pytest.skip("needs MNIST in LABKIT_DATA (CI has it)")
    if len(te) < 400:
        pytest.skip("needs the real MNIST test set (the bundled sample has 100 images)")
    model = cv.cpl_dense(784, width=784, depth=2, hidden=128, head=head)
    cv.fit(model, tr, 2, progress=False)
    x, y = te.tensors
    return model.eval(), x, y, cv.certified_radii(model, x, y)


@pytest.mark.parametrize("head", ["first", "lln"])
def test_pgd_at_099_of_the_certified_radius_flips_no_certified_point(head):
    model, x, y, r = _certified_test_points(head)
    keep = r > 0
    assert int(keep.sum()) >= 200
    x, y, r = x[keep], y[keep], r[keep]
    adv = attacks.pgd(model, x, y, 0.99 * r, norm="l2", steps=50, generator=torch.Generator().manual_seed(0))
    assert bool(((adv - x).flatten(1).norm(dim=1) <= 0.99 * r * (1 + 1e-5) + 1e-7).all())
    with torch.no_grad():
        assert bool((model(adv).argmax(1) == y).all())
        # the attack is not toothless: at 3 times the radius it flips many of them
        adv3 = attacks.pgd(model, x, y, 3 * r, norm="l2", steps=50, generator=torch.Generator().manual_seed(0))
        assert float((model(adv3).argmax(1) != y).float().mean()) > 0.2


def test_margin_loss_equals_hand_computation():
    logits = torch.tensor([[2.0, 1.5, -1.0], [0.0, 0.2, 0.1]])
    y = torch.tensor([0, 2])
    m = 0.7
    hand = ((max(0, m - 2 + 1.5) + max(0, m - 2 - 1)) / 3 + (max(0, m - 0.1 + 0.0) + max(0, m - 0.1 + 0.2)) / 3) / 2
    assert float(cv.margin_loss(logits, y, m)) == pytest.approx(hand)


def test_triangular_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cv.triangular_lr(opt, 100)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert rates[0] > 0 and rates[-1] > 0
    assert max(rates) == pytest.approx(1.0, abs=0.02) and abs(rates.index(max(rates)) - 40) <= 1
    assert rates[80] == pytest.approx(1 / 20, abs=0.01) and rates[-1] < 0.01


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="non-decreasing"):
        cv.ConvexPotentialLayer(4, activation=nn.GELU())
    with pytest.raises(ValueError, match="odd"):
        cv.ConvexPotentialConv2d(3, kernel_size=4)
    with pytest.raises(ValueError, match="shape"):
        cv.ConvexPotentialLayer(4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="unknown preset"):
        cv.preset("huge")
    with pytest.raises(ValueError, match="per-example eps"):
        attacks.pgd(nn.Linear(3, 2), torch.rand(4, 3), torch.zeros(4, dtype=torch.long), torch.ones(3), norm="l2")


def test_presets_have_the_published_sizes():
    # CPL-S: 41 M parameters on CIFAR-10 (digest §1.7); the dense layers dominate
    n = sum(p.numel() for p in cv.preset("cpl-s").parameters())
    assert 41.0e6 < n < 41.8e6
    assert cv.preset_parameters("cpl-s") == n
    assert 235e6 < cv.preset_parameters("cpl-xl") < 237e6
    for name in ("mnist", "cifar"):
        for layer in ("cpl", "sll"):
            kw = {"in_shape": (1, 28, 28)} if name == "mnist" else {}
            built = sum(p.numel() for p in cv.preset(name, layer=layer).parameters())
            assert cv.preset_parameters(name, layer=layer, **kw) == built


def test_training_lowers_the_loss_and_repeats(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 4, 4, generator=gen)
    y = (x.flatten(1).sum(1) > 8).long()
    ds = torch.utils.data.TensorDataset(x, y)
    runs = []
    for _ in range(2):
        model = cv.cpl_dense(16, width=16, depth=2, hidden=16, classes=2)
        hist = cv.fit(model, ds, 6, batch_size=32, lr=1e-2, progress=False)
        runs.append((hist.loss, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0][-1] < runs[0][0][0]
    assert runs[0][0] == runs[1][0] and all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_an_in_place_weight_edit_is_followed_by_the_certificate():
    """Reliability issue, §1: edit a weight in place after an evaluation (``.data.mul_``, which
    changes neither the version counter nor the storage). The evaluation-mode step must use the
    bound of the edited weight, so every layer stays 1-Lipschitz and no certified point falls to
    an attack at 0.99 of its radius."""
    torch.manual_seed(0)
    model = cv.cpl_dense(16, width=16, depth=2, hidden=24, classes=3, seed=1).eval()
    x = torch.rand(300, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right: every point has a positive radius
    cv.certified_radii(model, x, y)  # fills the cached norm bounds
    layer = next(m for m in model.modules() if isinstance(m, cv.ConvexPotentialLayer))
    before = layer.norm_bound()
    with torch.no_grad():
        layer.weight.data.mul_(1.5)
    assert layer.norm_bound() == pytest.approx(1.5 * before, rel=1e-6)  # recomputed (float32 weights), not cached
    assert cv.all_active_norm(layer, (16,)) <= 1 + 1e-5
    r = cv.certified_radii(model, x, y)
    keep = r > 0
    assert int(keep.sum()) >= 50
    x, y, r = x[keep], y[keep], r[keep]
    adv = attacks.pgd(
        model, x, y, 0.99 * r, norm="l2", steps=50, clamp=(-10.0, 10.0), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert bool((model(adv).argmax(1) == y).all())
        flipped = attacks.pgd(
            model, x, y, 4 * r, norm="l2", steps=50, clamp=(-10.0, 10.0), generator=torch.Generator().manual_seed(0)
        )
        assert bool((model(flipped).argmax(1) != y).any())  # the attack can flip points beyond the radius
    # and an attack library the project does not write agrees: nothing flips at 0.99 of the radii
    report = audit.certificates(model, x, y, r, limit=40, steps=30, clamp=(-10.0, 10.0))
    assert report["points"] == 40 and report["flipped"] == 0, report


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_certificates_refuse_non_finite_logits(bad):
    logits = torch.tensor([[2.0, 0.0], [1.0, bad]])
    labels = torch.tensor([0, 0])
    with pytest.raises(ValueError, match=r"rows \[1\] hold NaN or inf"):
        certify.certified_radius(logits, labels, 1.0)
    with pytest.raises(ValueError, match="finite"):
        certify.lln_radius(logits, labels, torch.ones(2, 2) - torch.eye(2), 1.0)


def test_the_independent_audit_finds_an_inflated_certificate():
    """The audit is not toothless: radii three times too large (a wrong Lipschitz constant of 1/3)
    are broken by ART's AutoPGD, and the report says which points fell."""
    model = cv.cpl_dense(16, width=16, depth=2, hidden=24, classes=3, seed=1).eval()
    x = torch.rand(60, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model(x).argmax(1)
    r = cv.certified_radii(model, x, y)
    honest = audit.certificates(model, x, y, r, limit=10, steps=20, clamp=(-10.0, 10.0))
    inflated = audit.certificates(model, x, y, 4 * r, limit=10, steps=20, clamp=(-10.0, 10.0))
    assert honest["flipped"] == 0 and inflated["flipped"] > 0
    assert set(inflated["flipped_index"]) <= set(torch.nonzero(r > 0).flatten().tolist())
    assert inflated["attack"]["library"].startswith("adversarial-robustness-toolbox")
    assert inflated["attack"]["losses"] == ["cross_entropy", "difference_logits_ratio"]
    with pytest.raises(ValueError, match="radii must be 60 finite values"):
        audit.certificates(model, x, y, r[:5])


def test_jacobian_norms_are_the_exact_local_constants_and_stay_below_one_for_the_cpl_step():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(64, 12, generator=gen, dtype=torch.float64)
    for step in (2.0, 3.5):
        layer = cv.ConvexPotentialLayer(12, 30, step=step, generator=torch.Generator().manual_seed(4)).double()
        norms, active = cv.jacobian_norms(layer, x)
        assert layer.training  # the mode is restored
        layer.eval()
        for i in (0, 17, 63):
            J = torch.autograd.functional.jacobian(lambda z, layer=layer: layer(z[None])[0], x[i])
            assert float(norms[i]) == pytest.approx(float(torch.linalg.matrix_norm(J, 2)), rel=1e-9)
            pre = layer.weight.detach() @ x[i] + layer.bias.detach()
            assert int(active[i]) == int((pre > 0).sum())
        # every D between 0 and I: no local constant above the all-active one (c − 1) or 1
        assert float(norms.max()) <= max(1.0, cv.all_active_norm(layer, (12,))) + 1e-9
        if step == 2.0:
            assert float(norms.max()) <= 1 + 1e-9
        layer.train()


def test_jacobian_norms_refuse_other_layers_and_shapes():
    layer = cv.ConvexPotentialLayer(5, 7)
    with pytest.raises(ValueError, match="shape"):
        cv.jacobian_norms(layer, torch.rand(3, 4))
    with pytest.raises(TypeError, match="dense ConvexPotentialLayer"):
        cv.jacobian_norms(torch.nn.Linear(5, 5), torch.rand(3, 5))


def test_fit_speedups_keep_the_certificate_sound():
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(3)
    x = torch.rand(48, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (48,), generator=g)
    plain = cv.cpl_conv((3, 8, 8), channels=4, conv_depth=2, pool=4, dense_depth=1, dense_hidden=16, classes=4)
    fast = cv.cpl_conv((3, 8, 8), channels=4, conv_depth=2, pool=4, dense_depth=1, dense_hidden=16, classes=4)
    data = TensorDataset(x, y)
    cv.fit(plain, data, 2, batch_size=16, progress=False)
    cv.fit(fast, data, 2, batch_size=16, progress=False, speedups=("channels-last", "bf16", "cudnn-benchmark", "tf32"))
    assert all(p.dtype == torch.float32 for p in fast.parameters())  # autocast never changes the weights
    assert not torch.backends.cuda.matmul.allow_tf32  # the flags are restored
    radii = cv.certified_radii(fast, x, y)
    contiguous = cv.cpl_conv((3, 8, 8), channels=4, conv_depth=2, pool=4, dense_depth=1, dense_hidden=16, classes=4)
    contiguous.load_state_dict({k: v.contiguous() for k, v in fast.state_dict().items()})
    assert torch.allclose(radii, cv.certified_radii(contiguous, x, y), atol=1e-6)  # float32, outside autocast
    # bfloat16 training moves the weights elsewhere than float32 training, and the certificate still holds
    assert any(not torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values()))
    ok = radii > 0
    if ok.any():
        adv = attacks.pgd(fast.eval(), x[ok], y[ok], 0.99 * radii[ok], norm="l2", steps=40)
        assert bool((fast(adv).argmax(1) == y[ok]).all())
    with pytest.raises(ValueError, match="unknown speedups"):
        cv.fit(fast, data, 1, speedups=("fp8",))
