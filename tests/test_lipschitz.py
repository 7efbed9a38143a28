"""labkit.lipschitz: log norms, spectral norms, power iteration, lower and upper bounds."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from labkit import lipschitz as lip

# entries below 1e-100 in size become 0: LAPACK's eigvals (the test's own reference for the
# spectral abscissa) fails to converge on matrices mixing 1 with entries like 1e-258
matrices = st.integers(1, 6).flatmap(
    lambda n: arrays(
        np.float64, (n, n), elements=st.floats(-10, 10, allow_nan=False).map(lambda x: x if abs(x) > 1e-100 else 0.0)
    )
)


def _lognorm_by_limit(A, p, h=1e-7):
    I = torch.eye(A.shape[0], dtype=A.dtype)
    ords = {1: 1, 2: 2, "inf": float("inf")}
    return (torch.linalg.matrix_norm(I + h * A, ord=ords[p]) - 1) / h


@settings(max_examples=60, deadline=None)
@given(matrices)
def test_lognorm_closed_forms(A):
    A = torch.as_tensor(A)
    sym = 0.5 * (A + A.T)
    assert math.isclose(float(lip.mu(A, 2)), float(np.linalg.eigvalsh(sym.numpy())[-1]), abs_tol=1e-9)
    col = max(A[j, j] + sum(abs(A[i, j]) for i in range(len(A)) if i != j) for j in range(len(A)))
    row = max(A[i, i] + sum(abs(A[i, j]) for j in range(len(A)) if j != i) for i in range(len(A)))
    assert math.isclose(float(lip.mu(A, 1)), float(col), abs_tol=1e-9)
    assert math.isclose(float(lip.mu(A, float("inf"))), float(row), abs_tol=1e-9)
    # bounded by the induced norms, and by the spectral abscissa from above
    assert float(lip.mu(A, 2)) <= float(torch.linalg.matrix_norm(A, 2)) + 1e-9
    assert float(torch.linalg.eigvals(A).real.max()) <= float(lip.mu(A, 2)) + 1e-7


@pytest.mark.parametrize("p", [1, 2, "inf"])
def test_lognorm_is_the_limit_of_its_definition(p):
    A = torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(lip.mu(A, p)) == pytest.approx(float(_lognorm_by_limit(A, p)), rel=1e-5, abs=1e-6)


def test_lognorm_bounds_the_matrix_exponential():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        A = torch.randn(4, 4, generator=g, dtype=torch.float64) - 1.0
        mu = float(lip.mu(A))
        for t in (0.1, 0.5, 2.0):
            assert float(torch.linalg.matrix_norm(torch.linalg.matrix_exp(t * A), 2)) <= math.exp(t * mu) * (1 + 1e-12)


def test_lognorm_known_values_and_gradient():
    A = torch.tensor([[-1.0, 4.0], [0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    mu = lip.mu(A)
    assert mu.item() == pytest.approx(1.0)  # -1 + |4|/2: stable matrix, expanding at t = 0
    mu.backward()  # gradient of the top eigenvalue: v vᵀ for the top eigenvector v
    v = torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2)
    assert torch.allclose(A.grad, torch.outer(v, v), atol=1e-10)
    skew = torch.tensor([[0.0, 3.0], [-3.0, 0.0]])
    assert float(lip.mu(skew)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3), torch.zeros(3), torch.zeros(2, 2, 2)])
def test_lognorm_rejects_non_square(bad):
    with pytest.raises(ValueError, match="square"):
        lip.mu(bad)


def test_lognorm_rejects_bad_p_and_nan():
    with pytest.raises(ValueError, match="p must be"):
        lip.mu(torch.eye(2), p=3)
    with pytest.raises(ValueError, match="A holds NaN or inf"):
        lip.mu(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]))


def test_spectral_norm_and_power_iteration_agree_with_torch():
    g = torch.Generator().manual_seed(3)
    for shape in [(5, 5), (20, 7), (7, 30)]:
        W = torch.randn(*shape, generator=g, dtype=torch.float64)
        exact = float(torch.linalg.matrix_norm(W, ord=2))
        assert float(lip.spectral_norm(W)) == pytest.approx(exact, rel=1e-12)
        pi = lip.PowerIteration(W, generator=g)
        rep = pi.run(max_iter=5000, tol=1e-13)
        assert rep.converged and rep.iterations == len(rep.history)
        assert rep.sigma == pytest.approx(exact, rel=1e-6)
        assert all(s <= exact * (1 + 1e-12) for s in rep.history)  # approaches from below
        assert all(b >= a - 1e-12 for a, b in zip(rep.history, rep.history[1:]))  # monotone


def test_power_iteration_state_persists():
    W = torch.randn(30, 30, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pi = lip.PowerIteration(W, generator=torch.Generator().manual_seed(0))
    first = pi.run(max_iter=3, tol=0)
    assert not first.converged and first.iterations == 3
    again = pi.run(max_iter=2000, tol=1e-12)
    assert pi.iterations == 3 + again.iterations
    assert again.sigma == pytest.approx(float(torch.linalg.matrix_norm(W, 2)), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_iteration_on_an_operator(seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False).double()
    op = lambda x: conv(x)  # noqa: E731
    adj = lambda y: torch.nn.functional.conv_transpose2d(y, conv.weight, padding=1)  # noqa: E731
    pi = lip.PowerIteration(
        op, adj, shape=(1, 2, 6, 6), dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    report = pi.run(max_iter=20000, tol=1e-13)
    sigma = report.sigma
    # the exact operator norm from the dense matrix of the convolution
    basis = torch.eye(72, dtype=torch.float64).reshape(72, 1, 2, 6, 6)
    with torch.no_grad():
        M = torch.stack([conv(b).flatten() for b in basis], 1)
    assert report.converged
    assert sigma == pytest.approx(float(torch.linalg.matrix_norm(M, 2)), rel=1e-6)


def test_power_iteration_bad_input():
    with pytest.raises(ValueError):
        lip.PowerIteration(torch.zeros(3))
    with pytest.raises(TypeError):
        lip.PowerIteration(lambda x: x)
    with pytest.raises(ValueError, match="zero"):
        lip.PowerIteration(torch.zeros(3, 3)).run()
    with pytest.raises(ValueError, match="max_iter"):
        lip.PowerIteration(torch.eye(3)).run(max_iter=0)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Sequential(nn.Linear(8, 3))
    )


def test_upper_bound_is_product_and_dominates_lower_bounds():
    model = _mlp()
    expected = 1.0
    for layer in (model[1], model[3], model[5][0]):
        expected *= float(torch.linalg.matrix_norm(layer.weight.detach(), 2))
    up = lip.upper_bound(model)
    assert up == pytest.approx(expected, rel=1e-6)
    x = torch.rand(16, 1, 3, 4, generator=torch.Generator().manual_seed(5))
    lo_pairs = lip.lower_bound(model, x, steps=100, generator=torch.Generator().manual_seed(0))
    lo_jac = lip.lower_bound(model, x, method="jacobian")
    assert 0 < lo_pairs <= up * (1 + 1e-6) and 0 < lo_jac <= up * (1 + 1e-6)


def test_lower_bound_exact_for_a_linear_map():
    """For f(x) = W x, L = ‖W‖₂; both lower bounds reach it (Jacobian exactly, pairs nearly)."""
    torch.manual_seed(6)
    lin = nn.Linear(10, 4).double()
    exact = float(torch.linalg.matrix_norm(lin.weight.detach(), 2))
    x = torch.rand(8, 10, dtype=torch.float64)
    assert lip.lower_bound(lin, x, method="jacobian") == pytest.approx(exact, rel=1e-10)
    pairs = lip.lower_bound(lin, x, steps=300, lr=0.02, generator=torch.Generator().manual_seed(1))
    assert 0.98 * exact <= pairs <= exact * (1 + 1e-9)
    # the ascent beats random pairs by far
    a, b = torch.rand(8, 10, dtype=torch.float64), torch.rand(8, 10, dtype=torch.float64)
    with torch.no_grad():
        rand_q = float(((lin(a) - lin(b)).norm(dim=1) / (a - b).norm(dim=1)).max())
    assert pairs > rand_q


def test_lower_bound_leaves_model_untouched():
    model = _mlp().train()
    before = [p.clone() for p in model.parameters()]
    lip.lower_bound(model, torch.rand(4, 12), steps=5)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, model.parameters()))


def test_upper_bound_rejects_unknown_layers():
    with pytest.raises(TypeError, match="Conv2d"):
        lip.upper_bound(nn.Sequential(nn.Conv2d(1, 1, 3)))
    with pytest.raises(TypeError, match="nn.Sequential"):
        lip.upper_bound(nn.Linear(2, 2))


def test_lower_bound_bad_method():
    with pytest.raises(ValueError, match="method"):
        lip.lower_bound(nn.Linear(2, 2), torch.rand(3, 2), method="random")


def test_spectral_norm_rejects_kernels():
    with pytest.raises(ValueError, match="convolution"):
        lip.spectral_norm(torch.zeros(3, 3, 3, 3))
