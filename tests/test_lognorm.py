"""labkit.lognorm (Chapter 1): worst-case log norm, gradients, stabilize, the classifier and its training."""

import math

import pytest
import torch

from labkit import _stabilize, lipschitz
from labkit import lognorm as ln


def _A(n, seed):
    return torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    "activation,bounds",
    [
        ("tanh", (0, 1)),
        ("relu", (0, 1)),
        ("sigmoid", (0, 0.25)),
        ("leaky_relu:0.1", (0.1, 1)),
        ((0.2, 0.5), (0.2, 0.5)),
    ],
)
def test_slope_bounds(activation, bounds):
    assert ln.slope_bounds(activation) == pytest.approx(bounds)


@pytest.mark.parametrize("bad", ["swish", (0.5, 0.1), (-0.1, 1.0)])
def test_slope_bounds_rejects(bad):
    with pytest.raises(ValueError):
        ln.slope_bounds(bad)


@pytest.mark.parametrize("seed", range(12))
def test_fixed_point_equals_enumeration_up_to_n12(seed):
    n = [4, 6, 8, 10, 12][seed % 5]
    A = _A(n, seed)
    for act in ("tanh", "sigmoid", "leaky_relu:0.1"):
        exact, D = ln.worst_case_lognorm(A, act, method="enumerate")
        found, _ = ln.worst_case_lognorm(A, act, method="fixed_point", generator=torch.Generator().manual_seed(1))
        assert found == pytest.approx(exact, abs=1e-12)
        assert float(lipschitz.mu(D @ A)) == pytest.approx(exact, abs=1e-12)  # D* attains it


def test_worst_case_properties():
    A = _A(7, 3)
    mu_tanh, D = ln.worst_case_lognorm(A, "tanh")
    mu_sig, _ = ln.worst_case_lognorm(A, "sigmoid")
    assert mu_sig == pytest.approx(0.25 * mu_tanh)  # positive homogeneity in D
    assert mu_tanh >= 0.0  # D = 0 is admissible
    assert mu_tanh >= float(lipschitz.mu(A))  # D = I is admissible
    assert set(torch.diagonal(D).tolist()) <= {0.0, 1.0}  # a vertex


def test_lognorm_gradient_matches_finite_differences():
    A, E = _A(6, 1), _A(6, 2)
    D = torch.diag(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64))
    eps, h = 0.7, 1e-6
    mu, G = ln.lognorm_gradient(D, A + eps * E)
    P = _A(6, 3)
    f = lambda t: float(lipschitz.mu(D @ (A + (eps * E + t * P))))  # noqa: E731
    fd = (f(h) - f(-h)) / (2 * h)
    assert float((G * P).sum()) == pytest.approx(fd, rel=1e-6)
    assert mu == pytest.approx(f(0.0))
    assert torch.linalg.matrix_rank(G) == 1


def test_outer_derivative_matches_reoptimised_inner_value():
    """f(ε) = min over the unit sphere of μ₂(D(A + εE)); f'(ε) = −‖D v‖ at the inner optimum."""
    A = _A(5, 4)
    mu, D = ln.worst_case_lognorm(A, "tanh")

    def f(eps):
        _, G = ln.lognorm_gradient(D, A)
        E = -G / G.norm()
        for _ in range(3000):  # fixed point of the inner flow: E = −D v vᵀ / ‖D v‖
            _, G = ln.lognorm_gradient(D, A + eps * E)
            E_new = -G / G.norm()
            if float((E_new - E).norm()) < 1e-14:
                break
            E = E_new
        value, G = ln.lognorm_gradient(D, A + eps * E)
        return value, float(G.norm())

    eps, h = 0.3, 1e-5
    value, dv = f(eps)
    fd = (f(eps + h)[0] - f(eps - h)[0]) / (2 * h)
    assert fd == pytest.approx(-dv, rel=1e-6)
    assert dv > 0.1  # ‖D v‖ is far from 0 here, so the derivative is not trivially small


def test_inner_step_stays_on_sphere_and_descends():
    A, D = _A(6, 5), torch.eye(6, dtype=torch.float64)
    E = _A(6, 6)
    E = E / E.norm()
    mu, G = ln.lognorm_gradient(D, A + 0.5 * E)
    E1 = ln.inner_step(E, G, 1e-3)
    assert float(E1.norm()) == pytest.approx(1.0)
    assert ln.lognorm_gradient(D, A + 0.5 * E1)[0] < mu


@pytest.mark.parametrize(
    "n,activation,seed,track",
    [
        (8, "tanh", 0, 0),
        (8, "relu", 1, 0),
        (10, "tanh", 2, 0),
        (10, "relu", 3, 0),
        (10, "tanh", 2, 2),
        (10, "relu", 4, 1),
    ],
)
def test_stabilize_reaches_the_target_minimally(n, activation, seed, track):
    """Enumeration confirms the bound; ‖Δ‖_F is within 1 % of SLSQP's best (all vertices as constraints),
    with exact inner evaluations and with tracked eigenvectors (the default above n = 16).

    Entries N(0, 4/n), so μ*(A) is of order one as for trained weights (2 to 2.7 here)."""
    A = 2 * _A(n, seed) / math.sqrt(n)
    delta = 0.5
    res = ln.stabilize(A, delta, activation, track=track)
    mu, _ = ln.worst_case_lognorm(A + res.perturbation, activation, method="enumerate")
    assert res.converged and res.exact and res.mu_before > delta
    assert mu <= delta + 1e-6 and res.mu_after == pytest.approx(mu)
    assert res.norm == pytest.approx(float(res.perturbation.norm()))
    assert res.norm <= float(A.norm()) + 1e-9  # A + Δ = 0 is feasible and costs ‖A‖_F
    _, reference = ln.stabilize_slsqp(A, delta, activation, restarts=2)
    assert reference < float("inf")
    assert res.norm <= 1.01 * reference
    # the certified lower bound is below every feasible point, and close to ours
    assert res.norm_lower_bound <= reference + 1e-9 and res.norm_lower_bound <= res.norm
    assert res.norm_lower_bound >= 0.99 * res.norm


@pytest.mark.parametrize("activation,seed", [("tanh", 0), ("relu", 1), ("sigmoid", 2)])
def test_delta_zero_has_the_closed_form(activation, seed):
    """ℓ = 0, δ = 0: the feasible set is {diagonal ≤ 0}; enumeration confirms, SLSQP finds no smaller Δ."""
    A = _A(6, seed)
    res = ln.stabilize(A, 0.0, activation)
    B = A + res.perturbation
    assert torch.count_nonzero(B - torch.diag(torch.diagonal(B))) == 0 and bool((torch.diagonal(B) <= 0).all())
    mu, _ = ln.worst_case_lognorm(B, activation, method="enumerate")
    assert res.converged and mu <= 1e-12 and res.norm_lower_bound == res.norm
    _, reference = ln.stabilize_slsqp(A, 0.0, activation, restarts=1)
    assert res.norm <= reference * (1 + 1e-6)  # SLSQP may end infeasible by its own tolerance
    # and nothing smaller is feasible: shrinking Δ by 0.1 % leaves some vertex above 0
    assert ln.worst_case_lognorm(A + 0.999 * res.perturbation, activation, method="enumerate")[0] > 0


def test_matrix_hinge_gradient_matches_finite_differences():
    """F(E) = ½ Σ_D ‖(sym(D(A + εE)) − δI)₊‖²: G·ε is its gradient, also with several eigenvalues above δ."""
    n, eps, delta = 6, 0.7, -0.2
    A, E, P = _A(n, 11), _A(n, 12), _A(n, 13)
    ds = _stabilize._random_vertices(5, n, 0.1, 1.0, torch.Generator().manual_seed(0))
    F, G, fmax = _stabilize._hinge(E, eps, A, ds, delta)
    DM = ds[:, :, None] * (A + eps * E)
    w = torch.linalg.eigvalsh(0.5 * (DM + DM.mT))
    assert int((w > delta).sum(1).max()) > 1  # the case the top-eigenvalue hinge gets wrong
    assert fmax == pytest.approx(float(w.max()))
    h = 1e-6
    fd = (_stabilize._hinge(E + h * P, eps, A, ds, delta)[0] - _stabilize._hinge(E - h * P, eps, A, ds, delta)[0]) / (
        2 * h
    )
    assert eps * float((G * P).sum()) == pytest.approx(fd, rel=1e-6)


def test_tracked_hinge_underestimates_and_is_exact_from_an_exact_basis():
    """Ritz values never exceed the eigenvalues (interlacing): the tracked hinge is ≤ the exact one;
    from the exact top eigenvectors at the same point it reproduces F, G and max μ₂."""
    n, eps, delta = 12, 0.8, 0.2
    A, E = _A(n, 41) / math.sqrt(n), _A(n, 42)
    E = E / E.norm()
    ds = _stabilize._random_vertices(7, n, 0.0, 1.0, torch.Generator().manual_seed(5))
    F, G, fmax, V = _stabilize._hinge(E, eps, A, ds, delta, basis=3)
    assert F > 0 and V.shape[:2] == (7, n) and V.shape[2] >= 3
    F0, G0, fmax0 = _stabilize._hinge(E, eps, A, ds, delta)
    assert (F, fmax) == (pytest.approx(F0, rel=1e-12), pytest.approx(fmax0, rel=1e-12))
    assert torch.allclose(G, G0, atol=1e-12)
    Ft, Gt, fmax_t, _, wide = _stabilize._tracked_hinge(E, eps, A, ds, delta, V)
    assert wide and Ft == pytest.approx(F0, rel=1e-9) and fmax_t == pytest.approx(fmax0, rel=1e-12)
    assert torch.allclose(Gt, G0, atol=1e-9)
    P = _A(n, 43)
    for step in (1e-3, 1e-2, 1e-1):  # a moved point: never above the exact values, close for small moves
        E1 = (E + step * P) / (E + step * P).norm()
        F1, _, fmax1 = _stabilize._hinge(E1, eps, A, ds, delta)
        Ft, _, fmax_t, _, _ = _stabilize._tracked_hinge(E1, eps, A, ds, delta, V)
        assert Ft <= F1 + 1e-12 and fmax_t <= fmax1 + 1e-12
        if step <= 1e-2:
            assert Ft == pytest.approx(F1, rel=1e-3)


def test_lower_bound_and_repair_bracket_the_working_set_optimum():
    """From any infeasible E: _lower_bound ≤ the SLSQP optimum over the working set ≤ ‖repaired Δ‖."""
    n, delta = 6, 0.3
    A = 2 * _A(n, 21) / math.sqrt(n)
    ds = _stabilize._random_vertices(8, n, 0.0, 1.0, torch.Generator().manual_seed(2))
    _, optimum = ln.stabilize_slsqp(A, delta, "tanh", vertices=ds, restarts=2)
    for seed in range(5):
        E = _A(n, 30 + seed)
        E, eps = E / E.norm(), optimum * (0.3 + 0.2 * seed)
        F, G, fmax = _stabilize._hinge(E, eps, A, ds, delta)
        assert F > 0
        assert _stabilize._lower_bound(eps, E, F, G) <= optimum + 1e-9
        fixed = _stabilize._repair(A, eps * E, fmax, delta, 0.0)
        assert _stabilize._hinge(fixed / fixed.norm(), float(fixed.norm()), A, ds, delta)[2] <= delta + 1e-12
        assert float(fixed.norm()) >= optimum - 1e-9
    assert _stabilize._repair(A, 0 * A, 1.0, 0.0, 0.0) is None  # δ = 0 and ℓ = 0: no cheap repair


@pytest.mark.parametrize("bounds,delta", [((0.0, 1.0), 0.3), ((0.2, 1.0), 0.3), ((0.2, 1.0), -0.1)])
def test_repair_lowers_every_vertex_to_the_target(bounds, delta):
    """The end game's premise: repaired with the worst case over all vertices, A + Δ meets the target
    at every vertex (enumeration), and a scaling puts the worst vertex exactly on it."""
    n = 8
    lo, hi = bounds
    for seed in range(3):
        A = 2 * _A(n, 40 + seed) / math.sqrt(n)
        Delta = 0.3 * _A(n, 50 + seed) / math.sqrt(n)
        worst, d = ln.worst_case_lognorm(A + Delta, bounds, method="enumerate")
        assert worst > delta
        fixed = _stabilize._repair(A, Delta, worst, delta, lo)
        after, _ = ln.worst_case_lognorm(A + fixed, bounds, method="enumerate")
        assert after <= delta + 1e-12
        if delta > 0 and lo == 0:  # only the scaling applies: μ₂ is positively homogeneous
            assert after == pytest.approx(delta, abs=1e-12)
            assert float(_stabilize._top(torch.diagonal(d)[None], A + fixed)[0]) == pytest.approx(delta, abs=1e-12)


def test_stabilize_end_game_returns_a_repaired_answer_within_rel_tol():
    """When the final check still finds violated vertices but the uniformly repaired point is within
    rel_tol of the certified bound, that point is the answer: feasible (enumeration), certified."""
    n, delta, rel_tol = 10, 0.5, 1e-2
    ended = []
    for seed in range(2):
        A = 2 * _A(n, seed) / math.sqrt(n)
        res = ln.stabilize(A, delta, "tanh", rel_tol=rel_tol, generator=torch.Generator().manual_seed(0))
        mu, _ = ln.worst_case_lognorm(A + res.perturbation, "tanh", method="enumerate")
        assert res.converged and mu <= delta + 1e-9 and res.mu_after == pytest.approx(mu)
        assert res.norm_lower_bound <= res.norm <= (1 + rel_tol) * res.norm_lower_bound
        assert res.norm == pytest.approx(float(res.perturbation.norm()))
        ended.append(res.repaired)
    assert any(ended)


def test_local_maxima_are_one_flip_optimal_and_ascend():
    n = 9
    A = _A(n, 7)
    starts = _stabilize._random_vertices(6, n, 0.0, 1.0, torch.Generator().manual_seed(3))
    mus, found = _stabilize._local_maxima(A, 0.0, 1.0, starts)
    start_mu = torch.stack([torch.tensor(float(lipschitz.mu(torch.diag(d) @ A))) for d in starts])
    assert bool((mus >= start_mu.to(mus.dtype) - 1e-12).all())
    for mu, d in zip(mus, found):
        assert set(d.tolist()) <= {0.0, 1.0}
        assert float(lipschitz.mu(torch.diag(d) @ A)) == pytest.approx(float(mu), abs=1e-12)
        for i in range(n):
            e = d.clone()
            e[i] = 1.0 - e[i]
            assert float(lipschitz.mu(torch.diag(e) @ A)) <= float(mu) + 1e-12


def test_krylov_top_is_a_lower_estimate_and_exact_from_a_near_start():
    n = 40
    M = _A(n, 8) / math.sqrt(n)
    d = _stabilize._random_vertices(5, n, 0.0, 1.0, torch.Generator().manual_seed(4))
    mu, v = _stabilize._top(d, M)
    start = v + 1e-3 * _A(5, 9)[:, :1].expand(5, n) * torch.linspace(-1, 1, n)
    w, u = _stabilize._krylov_top(d, M, start, 12)
    assert bool((w <= mu + 1e-12).all()) and torch.allclose(w, mu, atol=1e-10)
    assert torch.allclose((u * v).sum(1).abs(), torch.ones(5, dtype=mu.dtype), atol=1e-6)
    w2, _ = _stabilize._krylov_top(d, M, torch.ones(5, n, dtype=M.dtype), 3)  # few steps from a poor start: below
    assert bool((w2 <= mu + 1e-12).all()) and bool((w2 < mu - 1e-6).any())


def test_local_maxima_with_krylov_flips_ascend_and_report_exact_values():
    n = 24
    A = _A(n, 17) / math.sqrt(n)
    starts = _stabilize._random_vertices(6, n, 0.0, 1.0, torch.Generator().manual_seed(6))
    mus, found = _stabilize._local_maxima(A, 0.0, 1.0, starts, krylov=10)
    start_mu, _ = _stabilize._top(starts, A)
    exact, _ = _stabilize._top(found, A)
    assert torch.allclose(mus, exact, atol=1e-12) and bool((mus >= start_mu - 1e-12).all())
    dense, _ = _stabilize._local_maxima(A, 0.0, 1.0, starts)
    assert float(mus.max()) >= float(dense.max()) - 0.05  # as good a cut, up to the Ritz error's effect


def test_stabilize_noop_and_infeasible_targets():
    A = -3 * torch.eye(4, dtype=torch.float64)
    res = ln.stabilize(A, 0.0, "tanh")
    assert res.norm == 0.0 and res.converged and res.iterations == 0
    with pytest.raises(ValueError, match="unreachable"):
        ln.stabilize(_A(4, 0), -0.1, "tanh")
    with pytest.raises(ValueError, match="unreachable"):
        ln.stabilize(_A(4, 0), -1e-3, "relu")
    res = ln.stabilize(_A(4, 0), -0.05, "leaky_relu:0.2")  # slopes bounded below: contractivity is reachable
    mu, _ = ln.worst_case_lognorm(_A(4, 0) + res.perturbation, "leaky_relu:0.2", method="enumerate")
    assert res.converged and mu <= -0.05 + 1e-6


def test_stabilize_progress_bar_reports_the_rounds(capsys):
    """The bar counts the rounds and ends on the result's norm and working set; off by default at small n."""
    A = 2 * _A(8, 0) / math.sqrt(8)
    quiet = ln.stabilize(A, 0.5, "tanh", generator=torch.Generator().manual_seed(0))
    assert "stabilize" not in capsys.readouterr().err
    res = ln.stabilize(A, 0.5, "tanh", progress=True, generator=torch.Generator().manual_seed(0))
    err = capsys.readouterr().err
    assert f"{res.rounds}round" in err.replace(" ", "") and f"‖Δ‖ {res.norm:.4f}" in err
    assert f"|W| {res.working_set}" in err
    assert res.norm == quiet.norm  # the bar changes nothing


def test_partial_eigensolver_matches_a_full_decomposition():
    """Beyond n = 16 the top eigenpairs come from LAPACK's MRRR solver one matrix at a time; they equal
    a full decomposition's (values to 1e-12, vectors up to sign), and the widening keeps every eigenvalue
    above δ plus one below, even where many are above."""
    n, k = 40, 6
    X = torch.randn(k, n, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    S = (X + X.mT) / (2 * math.sqrt(n))
    w_full, V_full = torch.linalg.eigh(S)
    w, V = _stabilize._top_eigs(S, 3)
    assert torch.allclose(w, w_full[:, -3:], atol=1e-12)
    assert torch.allclose((V * V_full[:, :, -3:]).sum(1).abs(), torch.ones(k, 3, dtype=S.dtype), atol=1e-10)
    delta = float(w_full[:, -9].min())  # at least 9 eigenvalues of every matrix are ≥ δ
    w, V = _stabilize._eigs_above(S, delta, 2)
    above = (w_full > delta).sum(1)
    assert w.shape[1] > int(above.max()) and bool((w[:, 0] <= delta).all())
    assert torch.allclose(w, w_full[:, -w.shape[1] :], atol=1e-12)


def test_hinge_beyond_n16_equals_the_dense_hinge():
    """The hinge from partial decompositions (n > 16) has the value, gradient, μ₂ and basis of the dense one."""
    n = 24
    A = 2 * _A(n, 3) / math.sqrt(n)
    ds = _stabilize._random_vertices(10, n, 0.0, 1.0, torch.Generator().manual_seed(1))
    E = _A(n, 4)
    E = E / E.norm()
    F, G, fmax, Vb = _stabilize._hinge(E, 0.3, A, ds, 0.4, basis=4)
    S = ds[:, :, None] * (A + 0.3 * E)
    w, V = torch.linalg.eigh(0.5 * (S + S.mT))
    r = (w - 0.4).clamp(min=0)
    assert pytest.approx(0.5 * float((r**2).sum()), rel=1e-10) == F and F > 0
    assert torch.allclose(G, torch.einsum("ki,kij,klj->il", ds, V * r[:, None, :], V), atol=1e-10)
    assert fmax == pytest.approx(float(w[:, -1].max()), abs=1e-12)
    b = Vb.shape[2]
    assert b >= max(4, int((w > 0.4).sum(1).max()) + 2)
    # the basis: orthonormal eigenvectors of the top b eigenvalues (a basis-free check: Vᵀ S V = diag(λ))
    assert torch.allclose(Vb.mT @ Vb, torch.eye(b, dtype=A.dtype).expand(10, b, b), atol=1e-10)
    assert torch.allclose(Vb.mT @ (0.5 * (S + S.mT)) @ Vb, torch.diag_embed(w[:, -b:]), atol=1e-10)


def test_stabilize_resumes_from_its_checkpoint(tmp_path):
    """A run stopped after a few rounds and resumed from its checkpoint ends exactly as an uninterrupted
    run; the checkpoint is removed on convergence, and one written for another problem is refused."""
    n = 20
    A = _A(n, 1) / math.sqrt(n)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    full = ln.stabilize(A, 0.5, generator=gen())
    path = tmp_path / "state.pt"
    part = ln.stabilize(A, 0.5, generator=gen(), checkpoint=path, max_rounds=3)
    assert not part.converged and part.rounds == 3 and path.exists()
    with pytest.raises(ValueError, match="δ=0.5"):
        ln.stabilize(A, 0.4, generator=gen(), checkpoint=path)
    with pytest.raises(ValueError, match="another matrix"):
        ln.stabilize(2 * A, 0.5, generator=gen(), checkpoint=path)
    with pytest.raises(ValueError, match="cuts"):
        ln.stabilize(A, 0.5, generator=gen(), checkpoint=path, cuts=7)
    res = ln.stabilize(A, 0.5, generator=gen(), checkpoint=path)
    assert res.converged and not path.exists()
    assert torch.equal(res.perturbation, full.perturbation) and res.rounds == full.rounds
    assert res.iterations == full.iterations and res.history == full.history
    assert res.seconds >= part.seconds > 0
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a stabilize checkpoint"):
        ln.stabilize(A, 0.5, checkpoint=path)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3), torch.zeros(3)])
def test_non_square_rejected(bad):
    with pytest.raises(ValueError, match="square"):
        ln.worst_case_lognorm(bad)
    with pytest.raises(ValueError, match="square"):
        ln.stabilize(bad, 0.0)


def test_euler_step_bound_tends_to_the_flow_bound():
    """(1 + 2hμ* + h²‖A‖²)^(N/2) → e^{Tμ*} as h = T/N → 0, and it bounds ‖I + hDA‖ for every D."""
    mu, a = 0.3, 2.0
    assert ln.euler_step_bound(mu, a, 1e-4) ** 10000 == pytest.approx(math.exp(mu), rel=1e-3)
    A = _A(5, 7)
    mu_star, _ = ln.worst_case_lognorm(A, "tanh")
    A_norm = float(torch.linalg.matrix_norm(A, 2))
    for code in range(32):
        d = torch.tensor([(code >> i) & 1 for i in range(5)], dtype=torch.float64)
        for h in (0.05, 0.5):
            step = float(torch.linalg.matrix_norm(torch.eye(5, dtype=torch.float64) + h * torch.diag(d) @ A, 2))
            assert step <= ln.euler_step_bound(mu_star, A_norm, h) + 1e-12


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_classifier_certificate_and_stabilized_training(device):
    """Training with the hook keeps the block at the target, on the CPU and on a GPU (stabilize works
    on a float64 CPU copy of A; the correction goes back to A's device)."""
    from torch.utils.data import TensorDataset

    from labkit import train

    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 4, 4, generator=g)
    y = (x.flatten(1).mean(1) > 0.5).long()
    torch.manual_seed(0)
    model = ln.ODEClassifier(in_features=16, width=6, classes=2, T=1.0, steps=5)
    hook = ln.StabilizeEachEpoch(0.2)
    train.fit(
        model, TensorDataset(x, y), epochs=2, batch_size=32, lr=0.05, after_epoch=hook, progress=False, device=device
    )
    assert model.A.device.type == device
    assert [h["epoch"] for h in hook.history] == [1, 2] and all(h["converged"] for h in hook.history)
    cert = model.certificate()
    assert cert["exact"] and cert["mu_star"] <= 0.2 + 1e-6  # holds for the returned float32 weights too
    assert cert["flow_bound"] == pytest.approx(math.exp(cert["mu_star"]))
    # the certificate bounds what an attack on pairs can find, for the block and the classifier
    block = model.block
    z = torch.randn(16, 6, generator=g).to(device)
    assert lipschitz.lower_bound(block, z, steps=60, generator=g) <= cert["euler_bound"] * (1 + 1e-6)
    xs = torch.rand(16, 1, 4, 4, generator=g).to(device)
    assert lipschitz.lower_bound(model, xs, steps=60, generator=g) <= cert["lipschitz_bound"] * (1 + 1e-6)


def test_unit_norm_layers():
    torch.manual_seed(0)
    model = ln.ODEClassifier(in_features=8, width=4, classes=3, unit_norm=True)
    with torch.no_grad():
        model.lift.weight.mul_(50)
    cert = model.certificate()
    assert cert["lipschitz_bound"] == pytest.approx(cert["euler_bound"])
    x = torch.randn(5, 8)
    J = torch.autograd.functional.jacobian(lambda v: model._linear(model.lift, v), x[:1]).reshape(4, 8)
    norm = float(torch.linalg.matrix_norm(J.double(), 2))
    assert 1 - 2 * ln.UNIT_NORM_MARGIN <= norm <= 1.0  # at most 1 after rounding, by the margin
