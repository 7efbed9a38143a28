"""Standalone neural ODEs (Chapter 3): exact discrete derivatives, the Sobolev transform, the line
search, NCG, the attack, and clear errors."""

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from labkit import snode


def _model(dim=7, steps=5, activation="tanh", loss="l2", classes=3, seed=0):
    m = snode.SNODE(
        dim,
        T=1.5,
        steps=steps,
        activation=activation,
        classes=classes,
        loss=loss,
        generator=torch.Generator().manual_seed(seed),
    ).double()
    with torch.no_grad():  # larger weights than the default start, so that the tests see curvature
        m.W.mul_(8.0)
        m.b.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed + 1))
    return m


def _batch(dim=7, K=4, classes=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(K, dim, generator=g, dtype=torch.float64), torch.randint(0, classes, (K,), generator=g)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softplus"])
@pytest.mark.parametrize("loss", ["l2", "cross_entropy"])
def test_adjoint_gradient_equals_autograd_and_finite_differences(activation, loss):
    m = _model(activation=activation, loss=loss)
    x0, y = _batch()
    gW, gb = snode.adjoint_gradient(m, x0, y)
    aW, ab = snode.autograd_gradient(m, x0, y)
    assert _rel(gW, aW) < 1e-10 and _rel(gb, ab) < 1e-10
    g = torch.Generator().manual_seed(5)
    dW, db = (
        torch.randn(m.W.shape, generator=g, dtype=torch.float64),
        torch.randn(m.b.shape, generator=g, dtype=torch.float64),
    )
    eps = 1e-6
    with torch.no_grad():

        def loss_at(s):
            m.W.add_(dW, alpha=s)
            m.b.add_(db, alpha=s)
            v = float(m.loss(m.flow(x0), y))
            m.W.sub_(dW, alpha=s)
            m.b.sub_(db, alpha=s)
            return v

        fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert float((gW * dW).sum() + (gb * db).sum()) == pytest.approx(fd, rel=1e-7)


def test_weight_decay_adds_its_gradient():
    m = _model()
    x0, y = _batch()
    gW, gb = snode.adjoint_gradient(m, x0, y)
    wW, wb = snode.adjoint_gradient(m, x0, y, weight_decay=0.3)
    assert torch.allclose(wW - gW, 0.3 * m.h * m.W.detach()) and torch.allclose(wb - gb, 0.3 * m.h * m.b.detach())


def test_sensitivity_equals_jvp_and_input_jacobian_equals_jacrev():
    m = _model()
    x0, _ = _batch()
    g = torch.Generator().manual_seed(3)
    dW, db = (
        torch.randn(m.W.shape, generator=g, dtype=torch.float64),
        torch.randn(m.b.shape, generator=g, dtype=torch.float64),
    )
    dx0 = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    params = {"W": m.W.detach(), "b": m.b.detach()}

    def out(W, b, x):
        return _flow(m, W, b, x)

    _, ref = torch.func.jvp(out, (params["W"], params["b"], x0), (dW, db, dx0))
    assert _rel(snode.sensitivity(m, x0, dW, db, dx0), ref) < 1e-10
    J = snode.input_jacobian(m, x0)
    for k in range(len(x0)):
        ref_J = torch.func.jacrev(lambda x: _flow(m, params["W"], params["b"], x[None])[0])(x0[k])
        assert _rel(J[k], ref_J) < 1e-10
    _, rows = snode._output_rows(m, x0, 3)  # the attack's rows by the adjoint: the same numbers
    assert _rel(rows, J[:, :3]) < 1e-10


def _flow(m, W, b, x):
    for k in range(m.steps):
        x = x + m.h * m.sigma(x @ W[k].T + b[k])
    return x


def test_output_covariance_is_xi_sigma_xi_transpose():
    m = _model()
    x0, _ = _batch()
    J = snode.input_jacobian(m, x0)
    assert torch.allclose(snode.output_covariance(m, x0, 0.25), 0.25 * J @ J.transpose(1, 2))
    S = torch.diag(torch.arange(1.0, 8.0, dtype=torch.float64))
    assert torch.allclose(snode.output_covariance(m, x0, S), J @ S @ J.transpose(1, 2))


@pytest.mark.parametrize("N", [40, 80])
def test_sobolev_gradient_of_cosines_and_constants(N):
    T = 3.0
    t = (torch.arange(N, dtype=torch.float64) + 0.5) * T / N
    for k in (1, 2, 5):
        u = torch.cos(k * math.pi * t / T)
        v = snode.sobolev_gradient(u, T)
        exact = u / (1 + (k * math.pi / T) ** 2)
        assert float((v - exact).abs().max()) < 0.2 * (k * math.pi / N) ** 2  # O(h²)
    c = torch.full((N, 2, 3), 1.7, dtype=torch.float64)
    assert torch.allclose(snode.sobolev_gradient(c, T), c, atol=1e-12)
    # along the first axis only, entry by entry
    U = torch.stack([torch.cos(math.pi * t / T), torch.ones(N, dtype=torch.float64)], 1)
    V = snode.sobolev_gradient(U, T)
    assert torch.allclose(V[:, 0], snode.sobolev_gradient(U[:, 0].contiguous(), T)) and torch.allclose(V[:, 1], U[:, 1])


def test_sobolev_gradient_is_a_descent_direction_and_smoother():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(60, 4, generator=g, dtype=torch.float64)
    v = snode.sobolev_gradient(u, 3.0)
    assert float((u * v).sum()) > 0  # (I − ∂²)⁻¹ is positive definite
    rough = lambda w: float((w[1:] - w[:-1]).pow(2).sum() / w.pow(2).sum())  # noqa: E731
    assert rough(v) < 0.1 * rough(u)


@pytest.mark.parametrize("loss", ["l2", "cross_entropy"])
def test_line_search_minimises_the_linearised_loss(loss):
    m = _model(loss=loss)
    x0, y = _batch()
    g = torch.Generator().manual_seed(4)
    d = (
        torch.randn(m.W.shape, generator=g, dtype=torch.float64),
        torch.randn(m.b.shape, generator=g, dtype=torch.float64),
    )
    xT, xi = snode._sensitivity(m, x0, *d)
    for wd in (0.0, 0.2):
        eta = snode.line_search(m, xT, xi, y, weight_decay=wd, params=(m.W.detach(), m.b.detach()), direction=d)

        def lin(e, wd=wd):
            pen = 0.5 * wd * m.h * sum(float((p + e * q).pow(2).sum()) for p, q in zip((m.W.detach(), m.b.detach()), d))
            return float(m.loss(xT + e * xi, y)) + pen

        assert lin(eta) <= min(lin(eta + s) for s in (-1e-3, 1e-3, -0.1, 0.1)) + 1e-12


def test_line_search_without_a_minimiser_stops_at_the_trust_region():
    # ξ raises every sample's true logit and lowers the others: the linearised cross-entropy falls
    # for ever as η grows, and its derivative never changes sign (the case of no minimiser).
    m = _model(loss="cross_entropy", dim=5, classes=3)
    y = torch.tensor([0, 2])
    xT = torch.zeros(2, 5, dtype=torch.float64)
    xi = torch.zeros(2, 5, dtype=torch.float64)
    xi[0, :3] = torch.tensor([1.0, -1.0, -1.0])
    xi[1, :3] = torch.tensor([-1.0, -1.0, 1.0])
    rms = math.sqrt(3.0)  # ‖ξ_n‖ on the class components, the same for both samples
    for trust in (0.5, 1.0, 4.0):
        eta = snode.line_search(m, xT, xi, y, trust=trust)
        assert eta == pytest.approx(trust / rms, rel=1e-12)  # the end of the region, not 1e18
        lin = lambda e: float(m.loss(xT + e * xi, y))  # noqa: E731
        assert lin(eta) < lin(0.5 * eta) < lin(0.0)
    assert snode.line_search(m, xT, -xi, y) == pytest.approx(-1 / rms)  # the descent side, whichever it is
    # with a minimiser inside the region the step is the root, unchanged by a wider region
    xi2 = xi.clone()
    xi2[1] = -0.5 * xi[1]
    inside = snode.line_search(m, xT, xi2, y, trust=50.0)
    assert abs(inside) < 50.0 / rms and inside == pytest.approx(snode.line_search(m, xT, xi2, y, trust=80.0))
    with pytest.raises(ValueError, match="trust"):
        snode.line_search(m, xT, xi, y, trust=0.0)


def test_cg_beta_known_answers():
    g = (torch.tensor([1.0, 2.0]), torch.tensor([2.0]))
    gp = (torch.tensor([1.0, 0.0]), torch.tensor([1.0]))
    dp = (torch.tensor([-1.0, 1.0]), torch.tensor([0.0]))
    # ⟨g,g⟩ = 9, ⟨gp,gp⟩ = 2, y = g − gp = (0, 2, 1), ⟨g,y⟩ = 6, ⟨dp,y⟩ = 2
    assert snode.cg_beta("fletcher-reeves", g, gp, dp) == pytest.approx(4.5)
    assert snode.cg_beta("polak-ribiere", g, gp, dp) == pytest.approx(3.0)
    assert snode.cg_beta("hestenes-stiefel", g, gp, dp) == pytest.approx(3.0)
    assert snode.cg_beta("dai-yuan", g, gp, dp) == pytest.approx(4.5)
    assert snode.cg_beta("none", g, gp, dp) == 0.0
    assert snode.cg_beta("fletcher-reeves", g, None, None) == 0.0  # a restart
    assert snode.cg_beta("polak-ribiere", gp, g, dp) == 0.0  # ⟨gp, gp − g⟩ = −6 < 0: clipped


def _ncg(iterations, beta="fletcher-reeves"):
    """Loss before and after one epoch of NCG on a small random problem, and the history."""
    m = snode.SNODE(16, T=3.0, steps=10, classes=3, generator=torch.Generator().manual_seed(0)).double()
    images = torch.rand(30, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(2))
    x0 = m.encode(images)
    with torch.no_grad():
        before = float(m.loss(m.flow(x0), labels))
    data = TensorDataset(images, labels)
    h = snode.ncg_train(m, data, epochs=1, batch_size=30, iterations=iterations, beta=beta, progress=False)
    with torch.no_grad():
        return before, float(m.loss(m.flow(x0), labels)), h


def test_one_ncg_iteration_lowers_the_loss():
    before, after, _ = _ncg(1)
    assert after < before


@pytest.mark.parametrize("beta", snode.BETAS)
def test_ncg_iterations_with_every_beta_lower_the_loss(beta):
    before, after, h = _ncg(3, beta)
    assert after < before and h.loss == [pytest.approx(before)]


def test_ncg_checkpoint_resumes_on_the_same_trajectory(tmp_path):
    images = torch.rand(40, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(2))
    data = TensorDataset(images, labels)

    def model():
        return snode.SNODE(9, T=1.0, steps=4, classes=3, generator=torch.Generator().manual_seed(0))

    ref = model()
    snode.ncg_train(ref, data, epochs=2, batch_size=20, iterations=2, progress=False)
    a, path = model(), tmp_path / "ncg.pt"
    snode.ncg_train(a, data, epochs=1, batch_size=20, iterations=2, progress=False, checkpoint=path)
    b = model()
    snode.ncg_train(b, data, epochs=2, batch_size=20, iterations=2, progress=False, checkpoint=path)
    assert torch.equal(b.W, ref.W) and torch.equal(b.b, ref.b)
    with pytest.raises(ValueError, match="not of this training"):
        snode.ncg_train(model(), data, epochs=2, beta="dai-yuan", progress=False, checkpoint=path)


def test_attack_norms_flip_the_prediction():
    m = _model(dim=12, steps=6, classes=3)
    x0 = -torch.rand(10, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        y = m.flow(x0)[:, :3].argmax(1)  # labels = predictions: every image starts correct
    norms, points = snode.sensitivity_attack(m, x0, y, steps=40, step_size=0.05, return_points=True)
    found = torch.isfinite(norms)
    assert found.any() and (norms[found] > 0).all()
    with torch.no_grad():
        assert (m.flow(points[found])[:, :3].argmax(1) != y[found]).all()
    assert torch.allclose((points[found] - x0[found]).norm(dim=1), norms[found])
    assert ((points >= -1) & (points <= 0)).all()
    wrong = (y + 1) % 3  # misclassified from the start: norm 0
    assert (snode.sensitivity_attack(m, x0, wrong, steps=1) == 0).all()


def test_backprop_analogue_trains_the_same_network():
    images = torch.rand(40, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(2))
    m = snode.SNODE(9, T=1.0, steps=4, classes=3)
    x0 = m.encode(images)
    before = float(m.loss(m.flow(x0), labels).detach())
    snode.fit_backprop(m, TensorDataset(images, labels), epochs=3, lr=1e-2, batch_size=20, progress=False)
    assert float(m.loss(m.flow(x0), labels).detach()) < before


def test_adaptive_gradient_approaches_the_continuous_model_not_the_euler_one():
    m = _model(steps=8)
    x0, y = _batch()
    exact = snode.adjoint_gradient(m, x0, y)[0]
    tight = snode.adaptive_gradient(m, x0, y, rtol=1e-10, atol=1e-10)[0]
    tight_bp = snode.adaptive_gradient(m, x0, y, rtol=1e-10, atol=1e-10, adjoint=False)[0]
    loose = snode.adaptive_gradient(m, x0, y, rtol=1e-2, atol=1e-2)[0]
    assert _rel(tight, tight_bp) < 1e-6  # the two continuous gradients agree at tight tolerances
    assert _rel(loose, tight) > 10 * _rel(tight, tight_bp)  # loose tolerances: an approximate gradient
    assert _rel(tight, exact) > 1e-4  # another model than the Euler network


def test_smoothness_and_downsample():
    m = snode.SNODE(4, T=2.0, steps=4, classes=2)
    with torch.no_grad():
        m.W.zero_()
        m.b.zero_()
        m.W[2:] = 1.0
    assert snode.smoothness(m) == pytest.approx(16 / 0.5)
    img = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(snode.downsample(img), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="T must be positive"):
        snode.SNODE(4, T=0.0)
    with pytest.raises(ValueError, match="steps"):
        snode.SNODE(4, steps=0)
    with pytest.raises(ValueError, match="unknown activation"):
        snode.SNODE(4, activation="gelu", classes=2)
    with pytest.raises(ValueError, match="do not fit"):
        snode.SNODE(4, classes=10)
    m = snode.SNODE(4, classes=2, steps=3)
    with pytest.raises(ValueError, match="dimension 4"):
        m.encode(torch.rand(2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"shape \(K, 4\)"):
        snode.adjoint_gradient(m, torch.rand(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="label"):
        m.target(torch.tensor([0, 2]))  # outside the encoding of two classes
    with pytest.raises(ValueError, match="unknown beta"):
        snode.cg_beta("newton", (torch.ones(1),), (torch.ones(1),), (torch.ones(1),))
    with pytest.raises(ValueError, match="unknown beta"):
        snode.ncg_train(m, TensorDataset(torch.rand(2, 1, 2, 2), torch.tensor([0, 1])), epochs=1, beta="x")
    with pytest.raises(ValueError, match="T must be"):
        snode.sobolev_gradient(torch.ones(3), -1.0)


# --- the batched NCG iteration (labkit._ncg) against the reference functions ---------------------------


def _reference_ncg(m, data, *, epochs, batch_size, iterations, beta, sobolev, weight_decay=0.0, seed=0):
    """Mini-batch NCG composed of the reference functions (labkit.snode.reference_iteration), as
    ncg_train computed it before the batched iteration."""
    from torch.utils.data import DataLoader

    for epoch in range(epochs):
        loader = DataLoader(
            data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed + epoch)
        )
        for xb, yb in loader:
            x0, memory = m.encode(xb), {}
            for _ in range(iterations):
                snode.reference_iteration(m, x0, yb, memory, beta=beta, sobolev=sobolev, weight_decay=weight_decay)


def _ncg_case(loss="l2", seed=0, n=48):
    g = torch.Generator().manual_seed(9)
    x = torch.rand(n, 1, 3, 3, generator=g, dtype=torch.float64)
    data = TensorDataset(x, torch.randint(0, 3, (n,), generator=g))
    return _model(dim=9, steps=12, loss=loss, classes=3, seed=seed), data


@pytest.mark.parametrize("loss", ["l2", "cross_entropy"])
@pytest.mark.parametrize(
    ("beta", "sobolev", "wd"),
    [
        ("fletcher-reeves", True, 0.0),
        ("polak-ribiere", False, 0.3),
        ("hestenes-stiefel", True, 0.0),
        ("dai-yuan", False, 0.0),
        ("none", True, 0.1),
    ],
)
def test_batched_ncg_equals_the_reference_iteration(loss, beta, sobolev, wd):
    ref, data = _ncg_case(loss)
    new, _ = _ncg_case(loss)
    kw = dict(epochs=1, batch_size=16, iterations=3, beta=beta, sobolev=sobolev, weight_decay=wd)
    _reference_ncg(ref, data, **kw)
    snode.ncg_train(new, data, progress=False, **kw)
    assert _rel(new.W.detach(), ref.W.detach()) < 1e-9 and _rel(new.b.detach(), ref.b.detach()) < 1e-9


def test_sobolev_product_equals_the_tridiagonal_solve():
    from labkit import _ncg

    g = torch.randn(40, 5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for N, T in ((40, 3.0), (7, 0.5)):
        M = _ncg.sobolev_matrix(N, T, dtype=torch.float64)
        u = g[:N]
        assert _rel(torch.einsum("ij,j...->i...", M, u), snode.sobolev_gradient(u, T)) < 1e-12
        v = _ncg.sobolev(u[None], M, None, T)[0]
        assert _rel(v, snode.sobolev_gradient(u, T)) < 1e-12
        big = u[:, None].expand(N, 3000, 5, 3)[None]  # past PRODUCT_LIMIT on a CPU: the tridiagonal solve, per network
        assert (
            _rel(
                _ncg.sobolev(torch.stack([big[0], 2 * big[0]]), M, torch.tensor([True, False]), T)[0],
                snode.sobolev_gradient(big[0], T),
            )
            < 1e-12
        )


def test_batched_outer_products_equal_the_loop():
    from labkit import _ncg

    m = _model(dim=7, steps=9)
    x0, y = _batch(dim=7, K=5)
    B = _ncg.Batch(x0[None], y[None], h=m.h, sigma=m.sigma, dsigma=m.dsigma, loss="l2", classes=m.classes)
    P = _ncg.Weights(m.W.detach()[None], m.b.detach()[None])
    X, Z = _ncg.trajectory(P, B)
    lam = _ncg.loss_gradient(X[-1], B)[0]
    gW, gb, _, _ = _ncg.gradient(P, X, Z, lam, B, 0.2)
    rW, rb = snode.adjoint_gradient(m, x0, y, weight_decay=0.2)  # the loop, step by step
    assert _rel(gW[0], rW) < 1e-13 and _rel(gb[0], rb) < 1e-13


def test_ensemble_equals_its_separate_trainings(tmp_path):
    cases = [(0, True), (1, True), (2, False)]  # seeds and Sobolev flags: the L² variant too
    data = _ncg_case()[1]
    singles = []
    for seed, sob in cases:
        m = _ncg_case(seed=seed)[0].float()
        snode.ncg_train(m, data, epochs=2, batch_size=16, iterations=3, sobolev=sob, seed=seed, progress=False)
        singles.append(m)
    ensemble = [_ncg_case(seed=seed)[0].float() for seed, _ in cases]
    calls = []
    hs = snode.ncg_train_ensemble(
        ensemble,
        data,
        seeds=[s for s, _ in cases],
        sobolev=[f for _, f in cases],
        epochs=2,
        batch_size=16,
        iterations=3,
        progress=False,
        after_batch=lambda i, m: calls.append(i),
    )
    for a, b in zip(ensemble, singles):
        assert _rel(a.W.detach(), b.W.detach()) < 1e-5 and _rel(a.b.detach(), b.b.detach()) < 1e-5
    assert len(hs) == 3 and len(hs[0].loss) == 2 and calls[:3] == [0, 1, 2]
    with pytest.raises(ValueError, match="one seed"):
        snode.ncg_train_ensemble(ensemble, data, seeds=[0], epochs=1)
    with pytest.raises(ValueError, match="same dim"):
        snode.ncg_train_ensemble([ensemble[0], _model(dim=4).float()], data, seeds=[0, 1], epochs=1)


def test_ensemble_checkpoint_resumes_bit_exact(tmp_path):
    data = _ncg_case()[1]
    kw = dict(seeds=[0, 1], sobolev=[True, False], batch_size=16, iterations=2, progress=False)
    ref = [_ncg_case(seed=s)[0] for s in (0, 1)]
    snode.ncg_train_ensemble(ref, data, epochs=2, **kw)
    path = tmp_path / "ens.pt"
    a = [_ncg_case(seed=s)[0] for s in (0, 1)]
    snode.ncg_train_ensemble(a, data, epochs=1, checkpoint=path, **kw)
    b = [_ncg_case(seed=s)[0] for s in (0, 1)]  # fresh networks: the checkpoint carries the weights
    hs = snode.ncg_train_ensemble(b, data, epochs=2, checkpoint=path, **kw)
    for x, y in zip(b, ref):
        assert torch.equal(x.W, y.W) and torch.equal(x.b, y.b)
    assert len(hs[1].loss) == 2
    with pytest.raises(ValueError, match="not of this training"):
        snode.ncg_train_ensemble(b, data, epochs=2, checkpoint=path, **{**kw, "seeds": [0, 2]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_iterations_equal_eager():
    data = _ncg_case()[1]
    eager, graphed = (_ncg_case()[0].float().cuda() for _ in range(2))
    kw = dict(epochs=1, batch_size=16, iterations=3, progress=False)
    snode.ncg_train(eager, data, graphs=False, **kw)
    snode.ncg_train(graphed, data, graphs=True, **kw)
    assert _rel(graphed.W.detach(), eager.W.detach()) < 1e-5
    ens = [_ncg_case(seed=s)[0].float().cuda() for s in (0, 1)]
    ref = [_ncg_case(seed=s)[0].float().cuda() for s in (0, 1)]
    snode.ncg_train_ensemble(ens, data, seeds=[0, 1], graphs=True, **kw)
    snode.ncg_train_ensemble(ref, data, seeds=[0, 1], graphs=False, **kw)
    assert all(_rel(a.W.detach(), b.W.detach()) < 1e-5 for a, b in zip(ens, ref))


def test_graphs_need_cuda():
    m, data = _ncg_case()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            snode.ncg_train(m, data, epochs=1, graphs=True, progress=False)
