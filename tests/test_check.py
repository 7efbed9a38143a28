"""labkit.check: every check rejects a stub and typical wrong answers, and accepts right ones."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labkit import certify, check, lipschitz
from labkit import lognorm as ln


def stub(*args):
    raise NotImplementedError()


def _inner_ok(E, G, h, value, theta):
    from labkit.lognorm import inner_step

    mu = value(E)[0]
    while True:
        cand = inner_step(E, G, h)
        if value(cand)[0] < mu:
            return cand, theta * h
        h /= theta


def _quotient_grad(f, u, v):
    u = u.clone().requires_grad_(True)
    v = v.clone().requires_grad_(True)
    q = lipschitz.quotient(f, u, v)
    gu, gv = torch.autograd.grad(q.sum(), (u, v))
    return q.detach(), gu, gv


def _pair_update(f, u, v, step, growth, ascent=1.0, rule="increase"):
    q, gu, gv = _quotient_grad(f, u, v)
    tu, tv = u + ascent * step[:, None] * gu, v + ascent * step[:, None] * gv
    new = lipschitz.quotient(f, tu, tv).detach()
    ok = new > q if rule == "increase" else torch.ones_like(new, dtype=torch.bool)
    return (
        torch.where(ok[:, None], tu, u),
        torch.where(ok[:, None], tv, v),
        torch.where(ok, step * growth, step / growth),
    )


def _lognorm_2(A):  # from the definition: the largest eigenvalue of the symmetric part, by NumPy
    return float(np.linalg.eigvalsh(0.5 * (A + A.T).numpy())[-1])


def _lognorm_inf(A):  # the largest row sum a_ii + Σ_{j≠i} |a_ij|, written out
    return max(
        float(A[i, i]) + sum(abs(float(A[i, j])) for j in range(A.shape[1]) if j != i) for i in range(A.shape[0])
    )


def _rank_one(D, M):  # d λ_max(sym(DM)) / dM = D v vᵀ with v the top eigenvector (NumPy)
    S = 0.5 * (D @ M + (D @ M).T)
    v = torch.as_tensor(np.linalg.eigh(S.numpy())[1][:, -1])
    return torch.outer(D @ v, v)


def _radius(logits, labels, L):  # max(f_y − max_{j≠y} f_j, 0) / (√2 L), one example at a time
    out = []
    for row, y in zip(logits, labels):
        others = [float(v) for j, v in enumerate(row) if j != int(y)]
        out.append(max(float(row[int(y)]) - max(others), 0.0) / (math.sqrt(2) * L))
    return torch.tensor(out, dtype=logits.dtype)


def _fgsm(model, x, y, eps):  # one signed step up the summed cross-entropy, then the box
    return _fgsm_no_clamp(model, x, y, eps).clamp(0, 1)


RIGHT = {
    "quotient_gradient": _quotient_grad,
    "pair_update": _pair_update,
    "lambda_rule": lambda lam, acc, target, inc: lam + inc if acc > target else max(lam - inc, 0.0),
    "lognorm_inf": _lognorm_inf,
    "rank_one_gradient": _rank_one,
    "controlled_inner_step": _inner_ok,
    "lognorm_2": _lognorm_2,
    "certified_radius": _radius,
    "fgsm_step": _fgsm,
    "euler_resnet": lambda f, x0, T, n: _euler(f, x0, T, n, advance=True),
}


def _euler(f, x0, T, n, advance=True):
    h, x = T / n, x0
    for k in range(n):
        x = x + h * f(k * h if advance else 0.0, x)
    return x


def _fgsm_no_clamp(model, x, y, eps):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return (x + eps * g.sign()).detach()


def _sq_grad(f, u, v):
    q, gu, gv = _quotient_grad(f, u, v)
    return q, 2 * q[:, None] * gu, 2 * q[:, None] * gv


def _power(W, u, iters):
    for _ in range(iters):
        u = W.T @ (W @ u)
        u = u / u.norm()
    return (W @ u).norm(), u


def _lln(lo, y, W_hat):  # min over j ≠ y of (f_y − f_j) / ‖ŵ_y − ŵ_j‖, at least 0, one example at a time
    out = []
    for row, label in zip(lo, y):
        k = int(label)
        out.append(
            max(
                min(
                    float(row[k] - row[j]) / float((W_hat[k] - W_hat[j]).norm()) for j in range(row.shape[0]) if j != k
                ),
                0.0,
            )
        )
    return torch.tensor(out, dtype=lo.dtype)


RIGHT.update(
    {
        "euler_step_norm": lambda Q, h: torch.linalg.matrix_norm(torch.eye(Q.shape[0], dtype=Q.dtype) - h * Q, ord=2),
        "cpl_step": lambda x, W, b: x - 2 / torch.linalg.matrix_norm(W, 2) ** 2 * torch.relu(x @ W.T + b) @ W,
        "power_iteration": _power,
        "lln_radius": _lln,
    }
)


def _sobolev_dense(u, T, neumann=True, shift=1.0):
    N = u.shape[0]
    c = (N / T) ** 2
    L = torch.diag(torch.full((N,), -2.0 * c, dtype=u.dtype)) + torch.diag(torch.full((N - 1,), c, dtype=u.dtype), 1)
    L = L + torch.diag(torch.full((N - 1,), c, dtype=u.dtype), -1)
    if neumann:
        L[0, 0] = L[-1, -1] = -c
    return torch.linalg.solve(shift * torch.eye(N, dtype=u.dtype) - L, u)


def _adjoint(lam, x, z, W, h, transpose=False, scale=1.0):
    q = (1 - torch.tanh(z) ** 2) * lam
    return lam + h * q @ (W.T if transpose else W), scale * h * q.T @ x, h * q.sum(0)


def _sens(xi, x, z, W, dW, db, h, with_dW=True):
    rhs = xi @ W.T + (x @ dW.T if with_dW else 0) + db
    return xi + h * (1 - torch.tanh(z) ** 2) * rhs


def _median(model, x0, y, keep_zeros=False, drop_inf=False, lower=False):
    from labkit import snode

    n = snode.sensitivity_attack(model, x0, y)
    kept = n if keep_zeros else n[n > 0]
    if drop_inf:
        kept = kept[torch.isfinite(kept)]
    kept = kept.sort().values
    k = len(kept)
    median = kept[(k - 1) // 2] if lower or k % 2 else (kept[k // 2 - 1] + kept[k // 2]) / 2
    return float(median), float(torch.isfinite(n[n > 0]).float().mean())


RIGHT.update(
    {
        "sobolev": _sobolev_dense,
        "adjoint_step": _adjoint,
        "sensitivity_step": _sens,
        "l2_step": lambda xT, xi, y: -float((xi * (xT - y)).sum() / (xi * xi).sum()),
        "attack_median": _median,
    }
)

WRONG = {
    "sobolev": [
        lambda u, T: _sobolev_dense(u, T, neumann=False),  # Dirichlet ends
        lambda u, T: u,  # the L² gradient
        lambda u, T: _sobolev_dense(u, T, shift=2.0),
    ],
    "adjoint_step": [
        lambda *a: _adjoint(*a, transpose=True),  # W instead of Wᵀ
        lambda *a: _adjoint(*a, scale=1 / a[-1]),  # forgets h
        lambda lam, x, z, W, h: (lam + h * lam @ W, h * lam.T @ x, h * lam.sum(0)),  # forgets σ'
    ],
    "sensitivity_step": [
        lambda *a: _sens(*a, with_dW=False),
        lambda xi, x, z, W, dW, db, h: xi + h * (xi @ W.T + x @ dW.T + db),  # forgets σ'
        lambda xi, x, z, W, dW, db, h: xi,
    ],
    "l2_step": [
        lambda xT, xi, y: float((xi * (xT - y)).sum() / (xi * xi).sum()),  # sign
        lambda xT, xi, y: -float((xi * (xT - y)).sum()),  # no normalisation
        lambda xT, xi, y: 1.0,
    ],
    "attack_median": [
        lambda m, x0, y: (_median(m, x0, y, drop_inf=True)[0], _median(m, x0, y)[1]),  # failures dropped
        lambda m, x0, y: (_median(m, x0, y, keep_zeros=True)[0], _median(m, x0, y)[1]),  # zeros kept
        lambda m, x0, y: _median(m, x0, y, lower=True),  # torch.median's lower middle value
        lambda m, x0, y: (_median(m, x0, y)[0], 1.0),
        lambda m, x0, y: (_median(m, x0, y)[0], 7 / 12),  # the fraction of all inputs
        lambda m, x0, y: (0.0, _median(m, x0, y)[1]),
    ],
    "euler_step_norm": [
        lambda Q, h: 1 - h * torch.linalg.eigvalsh(Q)[-1],  # signed, one end
        lambda Q, h: torch.linalg.matrix_norm(torch.eye(Q.shape[0], dtype=Q.dtype) + h * Q, ord=2),
        lambda Q, h: torch.ones((), dtype=Q.dtype),
    ],
    "cpl_step": [
        lambda x, W, b: x - 1 / torch.linalg.matrix_norm(W, 2) ** 2 * torch.relu(x @ W.T + b) @ W,  # h = 1/‖W‖²
        lambda x, W, b: x - 2 / torch.linalg.matrix_norm(W) ** 2 * torch.relu(x @ W.T + b) @ W,  # Frobenius
        lambda x, W, b: x - 2 / torch.linalg.matrix_norm(W, 2) ** 2 * (x @ W.T + b) @ W,
    ],  # no ReLU
    "power_iteration": [
        lambda W, u, k: ((W.T @ W @ _power(W, u, k)[1]).norm(), _power(W, u, k)[1]),  # σ²
        lambda W, u, k: ((W @ u).norm(), u),  # no steps
        lambda W, u, k: (_power(W, u, k)[0] * 1.001, _power(W, u, k)[1]),
    ],  # above
    "lln_radius": [
        lambda lo, y, W_hat: _lln(lo, y, W_hat) / math.sqrt(2),
        lambda lo, y, W_hat: certify.certified_radius(lo, y, 1.0),  # √2 rule
        lambda lo, y, W_hat: -_lln(-lo, y, W_hat),
    ],
    "quotient_gradient": [
        _sq_grad,  # gradient of q²
        lambda f, u, v: (_quotient_grad(f, u, v)[0] ** 2, *_quotient_grad(f, u, v)[1:]),
        lambda f, u, v: (_quotient_grad(f, u, v)[0], _quotient_grad(f, u, v)[1], _quotient_grad(f, u, v)[1]),
    ],  # gv = gu
    "pair_update": [
        lambda *a: _pair_update(*a, ascent=-1.0),  # descent
        lambda *a: _pair_update(*a, rule="always"),  # no rejection
        lambda f, u, v, step, growth: (*_pair_update(f, u, v, step, growth)[:2], step),
    ],
    "lambda_rule": [
        lambda lam, acc, target, inc: lam - inc if acc > target else lam + inc,  # reversed
        lambda lam, acc, target, inc: lam + inc if acc > target else lam - inc,  # can go negative
        lambda lam, acc, target, inc: lam + inc if acc >= target else max(lam - inc, 0.0),
    ],
    "lognorm_inf": [
        lambda A: torch.linalg.matrix_norm(A, float("inf")),  # the norm itself
        lambda A: lipschitz.mu(A, 1),  # columns, not rows
        lambda A: lipschitz.mu(A, 2),
    ],
    "rank_one_gradient": [
        lambda D, M: ln.lognorm_gradient(D, M)[1].T,  # transposed
        lambda D, M: torch.outer(*[torch.linalg.eigh(0.5 * (D @ M + (D @ M).T))[1][:, -1]] * 2),
        lambda D, M: D @ M,
    ],
    "controlled_inner_step": [
        lambda E, G, h, value, theta: (E - h * G, theta * h),  # not renormalised
        lambda E, G, h, value, theta: (ln.inner_step(E, G, h), theta * h),  # no control
        lambda E, G, h, value, theta: (_inner_ok(E, G, h, value, theta)[0], h),
    ],
    "lognorm_2": [
        lambda A: torch.linalg.matrix_norm(A, 2),  # a norm, not a log norm
        lambda A: torch.linalg.eigvals(A).real.max(),  # the spectral abscissa
        lambda A: torch.zeros(()),
    ],
    "certified_radius": [
        lambda lo, y, L: certify.margin(lo, y) / L,  # forgets √2
        lambda lo, y, L: certify.margin(lo, y) / (math.sqrt(2) * L),  # negative radii
        lambda lo, y, L: torch.zeros(lo.shape[0]),
    ],
    "fgsm_step": [
        _fgsm_no_clamp,
        lambda m, x, y, eps: (x - eps * torch.ones_like(x)).clamp(0, 1),
        lambda m, x, y, eps: x.clone(),
    ],
    "euler_resnet": [
        lambda f, x0, T, n: _euler(f, x0, T, n, advance=False),
        lambda f, x0, T, n: x0 + T * f(0.0, x0),
        lambda f, x0, T, n: x0,
    ],
}


def _leaky(z, a):
    return torch.where(z > 0, z, a * z)


def _skew(entries, n, transpose=False, sign=-1):
    rows, cols = torch.triu_indices(n, n, 1)
    U = torch.zeros(entries.shape[0], n, n, dtype=entries.dtype)
    U[:, rows, cols] = entries
    G = U + sign * U.transpose(1, 2)
    return G.sum(1) if transpose else G.sum(2)


def _jac_norm(f, x, ord=2):
    return torch.linalg.matrix_norm(torch.autograd.functional.jacobian(f, x), ord=ord)


RIGHT.update(
    {
        "switching_rule": lambda h, a, S: S * (1 / math.sqrt(1 - 2 * a * h / S + (h / S) ** 2) - 1),
        "nonexpansive_step": lambda x, A, b, g, a: x - g * _leaky(x @ A.T + b, a) @ A,
        "expansive_step": lambda x, A, b, tau, a: x + tau * _leaky(x @ A.T + b, a),
        "jacobian_norm": _jac_norm,
        "skew_field": _skew,
    }
)
WRONG.update(
    {
        "switching_rule": [
            lambda h, a, S: 1 / math.sqrt(1 - 2 * a * h / S + (h / S) ** 2) - 1,  # forgot the factor S
            lambda h, a, S: S * (1 / math.sqrt(1 - 2 * a * h + h**2) - 1),  # the whole step, not the sub-step
            lambda h, a, S: 4 / math.sqrt(h**2 - 2 * h + 4) - 2,  # the a = ½, S = 2 rule everywhere
        ],
        "nonexpansive_step": [
            lambda x, A, b, g, a: x - g * torch.relu(x @ A.T + b) @ A,  # ReLU, not leaky
            lambda x, A, b, g, a: x + g * _leaky(x @ A.T + b, a) @ A,  # ascent
            lambda x, A, b, g, a: x - g * _leaky(x @ A.T, a) @ A,  # no bias
        ],
        "expansive_step": [
            lambda x, A, b, tau, a: x + tau * torch.relu(x @ A.T + b),
            lambda x, A, b, tau, a: x + tau * _leaky(x @ A + b, a),  # A, not Aᵀ, on rows
            lambda x, A, b, tau, a: x - tau * _leaky(x @ A.T + b, a),
        ],
        "jacobian_norm": [
            lambda f, x: _jac_norm(f, x, ord="fro"),
            lambda f, x: (f(x + 1e-3 * torch.ones_like(x)) - f(x)).norm() / (1e-3 * x.numel() ** 0.5),  # one pair
            lambda f, x: torch.linalg.matrix_norm(torch.autograd.functional.jacobian(f, x), ord=1),
        ],
        "skew_field": [
            lambda e, n: _skew(e, n, sign=1),  # symmetric
            lambda e, n: _skew(e, n, transpose=True),  # column sums: −G𝟙
            lambda e, n: _skew(e, n, sign=0),  # only the upper part
        ],
    }
)


def _curve(predict, robust, x, y, radii, *, start_all=False, chain=True, per_robust=False):
    ok = torch.ones(len(y), dtype=torch.bool) if start_all else predict(x) == y
    clean, out = ok.clone(), []
    for e in radii:
        base = ok if chain else clean.clone()
        idx = torch.nonzero(base).flatten()
        if idx.numel():
            base[idx] = robust(x[idx], y[idx], e)
        out.append(float(base[idx].double().mean()) if per_robust and idx.numel() else float(base.double().mean()))
    return out


def _audit(predict, attack, x, y, radii, *, fraction=0.99, every=False):
    idx = torch.arange(len(y)) if every else torch.nonzero(radii > 0).flatten()
    flipped = predict(attack(x[idx], y[idx], fraction * radii[idx])) != y[idx]
    return idx[flipped]


def _pgd(model, x, y, eps, steps, step, *, project=True, sign=False, batch_norm=False, clamp=True):
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y, reduction="sum"), adv)
        with torch.no_grad():
            if sign:
                direction = grad.sign()
            elif batch_norm:
                direction = grad / grad.norm()
            else:
                direction = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            adv = adv + step * direction
            delta = adv - x
            if project:
                delta = delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(eps)).clamp(max=1.0)
            adv = (x + delta).clamp(0.0, 1.0) if clamp else x + delta
    return adv.detach()


def _chunks(runs, i, n):
    size = len(runs) // n  # the remainder is lost
    return list(runs[(i - 1) * size : i * size])


RIGHT.update(
    {
        "robust_curve": _curve,
        "audit_flips": _audit,
        "l2_pgd": _pgd,
        "shard_runs": lambda runs, i, n: runs[i - 1 :: n],
    }
)
WRONG.update(
    {
        "robust_curve": [
            lambda *a: _curve(*a, chain=False),  # each radius on its own: not monotone
            lambda *a: _curve(*a, start_all=True),  # misclassified points counted as robust
            lambda *a: _curve(*a, per_robust=True),  # divided by the points attacked, not by all
        ],
        "audit_flips": [
            lambda *a: _audit(*a, fraction=1.0),  # at the radius itself, where the bound may be tight
            lambda *a: _audit(*a, every=True),  # misclassified points are not certified
            lambda *a: int(len(_audit(*a))),  # a count, not the indices
        ],
        "l2_pgd": [
            lambda *a: _pgd(*a, project=False),
            lambda *a: _pgd(*a, sign=True),  # an ℓ∞ step
            lambda *a: _pgd(*a, batch_norm=True),  # one norm for the whole batch
        ],
        "shard_runs": [
            lambda runs, i, n: runs[i::n],  # i counted from 0
            _chunks,
            lambda runs, i, n: runs[(i - 1) * -(-len(runs) // n) : i * -(-len(runs) // n)],  # 12 in 5: 3, 3, 3, 3, 0
        ],
    }
)


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_check_accepts_the_right_answer(name):
    getattr(check, name)(RIGHT[name])


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_check_rejects_a_stub_with_a_hint(name):
    with pytest.raises(NotImplementedError) as err:
        getattr(check, name)(stub)
    assert any("not implemented yet" in note for note in getattr(err.value, "__notes__", []))


@pytest.mark.parametrize("name,k", [(n, k) for n in sorted(WRONG) for k in range(3)])
def test_check_rejects_wrong_answers(name, k):
    with pytest.raises(AssertionError) as err:
        getattr(check, name)(WRONG[name][k])
    assert "Hint" in str(err.value) or "expected" in str(err.value) or "leaves" in str(err.value)


def test_checks_cover_every_public_check():
    assert sorted(check.__all__) == sorted(RIGHT)


def test_check_rejects_non_callables():
    with pytest.raises(AssertionError, match="function"):
        check.lognorm_2(3.0)
