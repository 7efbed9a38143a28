"""labkit.structured: the step-size rules, the orthogonal operators, the steps' Lipschitz constants
checked with exact Jacobians and an adversarial search, the presets' projections and bounds, the
hinge loss, mass preservation, and Chapter 5's experiment at smoke size."""

import math

import pytest
import torch
import torch.nn.functional as F

from labkit import attacks, lipschitz
from labkit import structured as st
from labkit.convex import GRAM_TOLERANCE, conv_matrix

GRID = [(a, S, h) for a in (0.1, 0.25, 0.5, 0.9, 1.0) for S in (1, 2, 3, 5) for h in (0.05, 0.3, 0.7, 1.0)]


@pytest.mark.parametrize("a, S, frac", GRID)
def test_switching_identity_holds_at_the_bound(a, S, frac):
    h_c = frac * 2 * a * S * 0.99  # inside (0, 2aS)
    h_e = st.expansive_step_bound(h_c, a, S)
    assert (1 + h_e / S) * st.contraction_factor(h_c / S, a) == pytest.approx(1.0, abs=1e-12)


def test_the_reference_rule_and_the_tight_factor():
    for h_c in (0.3, 0.5, 0.8, 1.0):
        assert st.expansive_step_bound(h_c) == pytest.approx(4 / math.sqrt(h_c**2 - 2 * h_c + 4) - 2, abs=1e-14)
    assert st.expansive_step_bound(0.3) == pytest.approx(0.141, abs=1e-3)
    assert st.expansive_step_bound(1.0) == pytest.approx(0.309, abs=1e-3)
    assert st.contraction_factor(0.5, 0.5) == pytest.approx(math.sqrt(0.75))
    assert st.contraction_factor(0.5, 0.5, tight=True) == pytest.approx(0.75)
    for g in torch.linspace(0, 2.5, 26).tolist():
        for a in (0.1, 0.5, 1.0):
            assert st.contraction_factor(g, a, tight=True) <= st.contraction_factor(g, a) + 1e-15
    h_e = st.flexible_step_bound(1.0, 0.5, 2)
    assert h_e == pytest.approx(0.75**-2 - 1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: st.contraction_factor(0.5, 0.0), "a, the smallest slope"),
        (lambda: st.contraction_factor(0.5, 1.5), "a, the smallest slope"),
        (lambda: st.contraction_factor(-0.1, 0.5), "g must be"),
        (lambda: st.expansive_step_bound(1.0, 0.5, 0), "substeps"),
        (lambda: st.expansive_step_bound(1.0, 0.5, 1.5), "substeps"),
        (lambda: st.expansive_step_bound(2.0, 0.5, 2), r"h_c must lie in \(0, 2aS\)"),
        (lambda: st.expansive_step_bound(0.0), r"h_c must lie"),
        (lambda: st.flexible_step_bound(4.0), r"h_c must lie in \(0, 2S\)"),
        (lambda: st.SwitchingBlock(4, conv=False, h_c=1.5), r"h_c must lie in \[0.3, 1.0\]"),
        (lambda: st.SwitchingBlock(4, conv=False, rule="free"), "rule must be"),
        (lambda: st.StructuredNet("switching", layers=3), "layers must be even"),
        (lambda: st.StructuredNet("other"), "kind must be"),
        (lambda: st.StructuredNet(in_shape=(3, 32, 32), mean=(0.5,)), "one entry per channel"),
        (lambda: st.preset("cpl"), "unknown preset"),
        (lambda: st.MassPreservingNet(3, (2, 4)), "non-decreasing and at least dim"),
        (lambda: st.hinge_loss(torch.zeros(2, 3), torch.tensor([0, 1]), 0.0), "margin"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_wrong_channel_counts_are_refused():
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, 6, 6\)"):
        st.ConvOp(4, size=(6, 6))(torch.zeros(1, 3, 6, 6))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, 6, 6\)"):
        st.OrthogonalConv2d(4, (6, 6))(torch.zeros(1, 5, 6, 6))
    model, _ = st.preset("switching", widths=(4,), layers=2, in_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"expected inputs of shape \(N, 3, 8, 8\)"):
        model(torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize("k", [1, 3])
def test_orthogonal_convolution_is_orthogonal_on_the_unrolled_matrix(k):
    op = st.OrthogonalConv2d(3, (6, 8), kernel_size=k, generator=torch.Generator().manual_seed(k))
    with torch.no_grad():
        op.kernel.mul_(20)  # far from the identity
    op = op.double()
    M = conv_matrix(lambda t: op(t, bias=False), (3, 6, 8))
    assert torch.allclose(M.T @ M, torch.eye(M.shape[0], dtype=M.dtype), atol=1e-6)
    assert (M - torch.eye(M.shape[0], dtype=M.dtype)).abs().max() > 0.1
    A = conv_matrix(op.adjoint, (3, 6, 8))
    assert torch.allclose(A, M.T, atol=1e-10)
    assert op.norm_bound() == pytest.approx(1.0, abs=1e-10)
    with op.cached():  # the cached matrices give the same map
        assert torch.allclose(conv_matrix(lambda t: op(t, bias=False), (3, 6, 8)), M, atol=1e-12)


def test_orthogonal_linear_and_the_operators_adjoints_and_bounds():
    q = st.OrthogonalLinear(7, generator=torch.Generator().manual_seed(0)).double()
    W = q.weight
    assert torch.allclose(W.T @ W, torch.eye(7, dtype=W.dtype), atol=1e-12)
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    with q.cached():  # one matrix exponential for the whole block: the same map, and the gradient reaches V
        assert torch.equal(q.weight, W) and torch.allclose(q(x), x @ W.T + q.bias, atol=1e-14)
        q.adjoint(q(x)).sum().backward()
    assert q.skew.grad is not None and q._cache is None
    conv = st.ConvOp(3, 4, (5, 5), generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        conv.weight.add_(0.3 * torch.randn(conv.weight.shape, dtype=torch.float64))
    M = conv_matrix(lambda t: conv(t, bias=False), (3, 5, 5))
    A = conv_matrix(conv.adjoint, (4, 5, 5))
    assert torch.allclose(A, M.T, atol=1e-12)
    assert conv.norm_bound() >= float(torch.linalg.matrix_norm(M, 2)) - 1e-9
    dense = st.DenseOp(5, 3, gain=2.0, generator=torch.Generator().manual_seed(2))
    assert dense.norm_bound() == pytest.approx(2.0, rel=1e-6)


def _blocks(conv, factor=1.0, rule="prescribed"):
    out = []
    for h_c in (0.3, 0.6, 1.0):
        b = st.SwitchingBlock(
            4 if conv else 12,
            conv=conv,
            size=(5, 5),
            rule=rule,
            orthogonal=True,
            normalized=True,
            h_c=h_c,
            generator=torch.Generator().manual_seed(int(10 * h_c)),
        ).double()
        with torch.no_grad():
            if rule == "prescribed":
                b.op_e.weight.mul_(5)  # then normalised back to norm 1 by the projection
            b.project()
            b.op_c.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
            b.u_e.mul_(factor)
        out.append(b)
    return out


def _worst(block, shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, *shape, generator=gen, dtype=torch.float64)
    random = st.block_jacobian_norms(block, x).max()
    searched = lipschitz.lower_bound(block, x[:16], steps=60, generator=gen)
    return float(random), searched


@pytest.mark.parametrize("conv", [False, True])
def test_certified_switching_blocks_are_1_lipschitz_and_three_times_the_step_breaks_them(conv):
    shape = (4, 5, 5) if conv else (12,)
    for block in _blocks(conv):
        random, searched = _worst(block, shape)
        assert random <= 1 + 1e-6 and searched <= 1 + 1e-6
        assert block.lipschitz_bound() <= 1 + 1e-6
    broken = [max(_worst(b, shape)) for b in _blocks(conv, factor=3.0)]
    assert max(broken) > 1.01, broken  # the same check fails when h_e is three times the bound


def test_flexible_clamps_expand_and_the_coupled_rule_does_not():
    b = st.SwitchingBlock(
        10, conv=False, rule="flexible", orthogonal=True, h_c=0.11, h_e=1.9, generator=torch.Generator().manual_seed(0)
    ).double()
    x = torch.randn(30, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert b.h_e == pytest.approx(1.9) and float(st.block_jacobian_norms(b, x).max()) > 1.5
    b.rule = "coupled"
    b.project()
    assert b.h_e == pytest.approx(st.flexible_step_bound(0.11))
    assert float(st.block_jacobian_norms(b, x).max()) <= 1 + 1e-9
    assert b.lipschitz_bound() <= 1 + 1e-9


def test_step_bounds_are_sound_for_every_kind_of_step():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 8, generator=gen, dtype=torch.float64)
    steps = [
        st.NonExpansiveStep(st.DenseOp(8, gain=1.4, generator=gen), step=1.9),
        st.NonExpansiveStep(st.OrthogonalLinear(8, generator=gen), step=1.5, a=0.5),
        st.ExpansiveStep(st.DenseOp(8, gain=1.2, generator=gen), step=0.4),
        st.ResidualStep(st.DenseOp(8, gain=1.3, generator=gen), st.DenseOp(8, generator=gen), scale=0.5),
        st.SwitchingBlock(8, conv=False, rule="flexible", generator=gen),
        st.SwitchingBlock(8, conv=False, generator=gen),
    ]
    for step in steps:
        step = step.double()
        assert float(st.block_jacobian_norms(step, x).max()) <= step.lipschitz_bound() + 1e-9, step
    with pytest.raises(ValueError, match="square operator"):
        st.ExpansiveStep(st.DenseOp(4, 6))


@pytest.mark.parametrize("name", list(st.PRESETS))
def test_every_preset_runs_and_its_bound_is_above_its_jacobians(name):
    model, recipe = st.preset(name, widths=(4, 6), layers=2, in_shape=(3, 8, 8), mean=st.CIFAR_MEAN, std=st.CIFAR_STD)
    assert set(recipe) == {"gamma", "margin", "lr", "optimizer", "nominal"}
    model = model.double().eval()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    J = torch.stack([torch.autograd.functional.jacobian(lambda t: model(t[None])[0], xi).reshape(10, -1) for xi in x])
    assert float(torch.linalg.matrix_norm(J, 2).max()) <= model.lipschitz_bound() * (1 + 1e-9)
    assert model.parameters_count() > 0 and torch.isfinite(model.penalty())


def test_certified_preset_bound_is_folded_normalisation_times_at_most_one():
    model, _ = st.preset("certified", widths=(4, 6), layers=2, in_shape=(3, 8, 8), std=st.CIFAR_STD)
    assert model.lipschitz_bound() <= (1 / min(st.CIFAR_STD)) * (1 + 1e-5)
    model, _ = st.preset("certified", widths=(4, 6), layers=2, in_shape=(3, 8, 8))
    assert model.lipschitz_bound() <= 1 + 1e-5


def _tiny(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=gen)
    y = (x[:, 0].mean((1, 2)) > x[:, 2].mean((1, 2))).long()
    return torch.utils.data.TensorDataset(x, y)


@pytest.mark.parametrize("name", ["nonexpansive", "switching", "flexible", "certified"])
def test_projections_keep_the_constraints_after_every_step(name, monkeypatch):
    model, recipe = st.preset(
        name, widths=(4,), layers=2, in_shape=(3, 8, 8), classes=2, mean=st.CIFAR_MEAN, std=st.CIFAR_STD
    )
    seen = []
    original = st.StructuredNet.project

    def checked(self):
        original(self)
        for m in self.modules():
            if isinstance(m, st.SwitchingBlock):
                if m.rule == "prescribed":
                    assert 0.3 <= m.h_c <= 1.0 and 0 <= float(m.r.detach()) <= 1
                    assert m.h_e == pytest.approx(st.expansive_step_bound(m.h_c, m.a, m.substeps), rel=1e-6)
                    if m.normalized:
                        assert m.op_e.norm_bound() <= 1 + 1e-5
                else:
                    assert 0.11 <= float(m.u_c.detach()) <= 1.89 and -1.9 <= float(m.u_e.detach()) <= 0.05
            if isinstance(m, st.NonExpansiveStep):
                assert 0 <= float(m.u.detach()) <= 1.9
            if isinstance(m, st.Lift) and m.mode == "hard":
                assert m.lipschitz_bound() <= 1 + 1e-5
            if isinstance(m, st.Head) and m.mode == "spectral":
                assert m.lipschitz_bound() <= 1 + 1e-5
            if isinstance(m, st.Head) and m.mode == "frobenius":
                assert float(m.weight.detach().norm()) <= 1 + 1e-5
        seen.append(1)

    monkeypatch.setattr(st.StructuredNet, "project", checked)
    hist = st.fit(
        model,
        _tiny(),
        2,
        margin=recipe["margin"],
        gamma=recipe["gamma"],
        lr=0.05,
        batch_size=16,
        optimizer=recipe["optimizer"],
        progress=False,
    )
    assert len(seen) == 8 and hist["restarts"] == [] and len(hist["loss"]) == 2


def test_fit_restarts_with_a_smaller_rate_when_the_loss_blows_up():
    model, _ = st.preset("resnet", widths=(4,), layers=2, in_shape=(3, 8, 8), classes=2)
    hist = st.fit(model, _tiny(), 1, lr=1e12, batch_size=16, augment=False, progress=False, restarts=12)
    assert hist["restarts"] and hist["lr"] < 1e12 and all("loss is" in r for r in hist["restarts"])
    model, _ = st.preset("resnet", widths=(4,), layers=2, in_shape=(3, 8, 8), classes=2)
    with pytest.raises(st.NonFiniteLoss):
        st.fit(model, _tiny(), 1, lr=1e30, batch_size=16, augment=False, progress=False, restarts=0)


def test_hinge_loss_sums_over_classes():
    logits = torch.tensor([[1.0, 0.5, 0.9], [0.0, 2.0, 0.0]])
    y = torch.tensor([0, 2])
    # first: max(0, .15+.5-1) + max(0, .15+.9-1) = 0 + 0.05; second: 0.15 + 2.15
    assert float(st.hinge_loss(logits, y, 0.15)) == pytest.approx((0.05 + 2.3) / 2)
    pytorch = float(F.multi_margin_loss(logits, y, margin=0.15))
    assert float(st.hinge_loss(logits, y, 0.15)) == pytest.approx(3 * pytorch)


def test_mass_preserving_net_keeps_the_sum_whatever_the_weights():
    net = st.MassPreservingNet(3, (10, 10, 15), seed=1).double()
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = net(x)
    assert (y.sum(1) - x.sum(1)).abs().max() <= 1e-12
    assert (y - x).abs().max() > 1e-2  # it does move the states
    plain = st.MassPreservingNet(3, (10, 10, 15), plain=True, seed=1).double()
    assert (plain(x).sum(1) - x.sum(1)).abs().max() > 1e-4
    x0, x1 = st.sir_data(20, seed=0)
    assert torch.allclose(x0.sum(1), torch.ones(20, dtype=torch.float64)) and (x1.sum(1) - 1).abs().max() < 1e-14
    assert torch.allclose(st.sir_field(torch.tensor([[0.5, 0.2, 0.3]])), torch.tensor([[-0.1, -0.1, 0.2]]))


def test_pgd_curve_is_monotone_starts_at_clean_accuracy_and_refuses_bad_radii():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.rand(40, 1, 3, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3
    curve = attacks.pgd_curve(model, x, y, [0.0, 0.1, 0.3, 1.0], steps=5, restarts=2)
    assert curve[0] == pytest.approx(35 / 40) and all(b <= a for a, b in zip(curve, curve[1:]))
    assert curve[-1] < curve[0]
    fresh = attacks.pgd_curve(model, x, y, [0.0, 0.1, 0.3, 1.0], steps=5, rel_step=0.025, monotone=False)
    assert fresh[0] == curve[0] and len(fresh) == 4
    with pytest.raises(ValueError, match="non-decreasing"):
        attacks.pgd_curve(model, x, y, [0.3, 0.1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_presets_train_bound_and_evaluate_on_cuda(monkeypatch):
    from labkit.chapters import ch05

    monkeypatch.setenv("LABKIT_MODE", "smoke")
    x = torch.rand(8, 3, 8, 8, device="cuda")
    for name in st.PRESETS:
        model, _ = st.preset(name, widths=(4, 6), layers=2, in_shape=(3, 8, 8), std=st.CIFAR_STD)
        model = model.cuda()
        model(x).sum().backward()
        model.project()
        cpu, _ = st.preset(name, widths=(4, 6), layers=2, in_shape=(3, 8, 8), std=st.CIFAR_STD)
        cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
        # on the GPU the convolutions' bounds come from Gram iteration: above the exact ones, by at
        # most a factor 1 + GRAM_TOLERANCE per convolution
        exact, convs = cpu.lipschitz_bound(), sum(isinstance(m, st.ConvOp) for m in model.modules())
        assert exact * (1 - 1e-5) <= model.lipschitz_bound() <= exact * (1 + GRAM_TOLERANCE) ** convs * (1 + 1e-5)
    sizes = {**ch05.sizes("smoke"), "presets": ["certified"]}
    results = ch05.run(**sizes, device="cuda", progress=False)
    ch05.verify(results)
