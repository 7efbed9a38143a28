"""Check cells of the labs: ``labkit.check.<exercise>(your_answer)`` (the page *For instructors*).

Each check tests a student's function against a known answer or an invariant, with a
tolerance, and raises ``AssertionError`` saying what was expected, what came and a hint. A stub
(``raise NotImplementedError()``) fails the check with that ``NotImplementedError``, annotated
with what to do, so an unfinished lab stops at its first unfinished exercise. Checks never print
the solution.
"""

from __future__ import annotations

import math

import torch

from .attacks import fgsm, median_minimal_norm
from .certify import lln_radius as _lln_radius_reference
from .clip import PairSet
from .convex import ConvexPotentialLayer
from .lipschitz import quotient
from .lognorm import inner_step, lognorm_gradient
from .snode import SNODE, sensitivity_attack, sobolev_gradient
from .structured import expansive_step_bound

__all__ = [
    "lognorm_2",
    "certified_radius",
    "fgsm_step",
    "euler_resnet",
    "lognorm_inf",
    "rank_one_gradient",
    "controlled_inner_step",
    "quotient_gradient",
    "pair_update",
    "lambda_rule",
    "euler_step_norm",
    "cpl_step",
    "power_iteration",
    "lln_radius",
    "sobolev",
    "adjoint_step",
    "sensitivity_step",
    "l2_step",
    "attack_median",
    "switching_rule",
    "nonexpansive_step",
    "expansive_step",
    "jacobian_norm",
    "skew_field",
    "robust_curve",
    "audit_flips",
    "l2_pgd",
    "shard_runs",
]


def _call(fn, *args):
    if not callable(fn):
        raise AssertionError(f"expected a function, got {type(fn).__name__}.")
    try:
        return fn(*args)
    except NotImplementedError as err:
        err.add_note(
            f"{getattr(fn, '__name__', 'your function')} is not implemented yet: replace "
            "`raise NotImplementedError()` by your code, then run this check again."
        )
        raise


def _close(got, expected, what, hint, rtol=1e-6, atol=1e-8):
    try:
        got_t = torch.as_tensor(got, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise AssertionError(f"{what}: expected a number or tensor, got {type(got).__name__}. Hint: {hint}") from None
    exp_t = torch.as_tensor(expected, dtype=torch.float64)
    if got_t.shape != exp_t.shape:
        raise AssertionError(f"{what}: expected shape {tuple(exp_t.shape)}, got {tuple(got_t.shape)}. Hint: {hint}")
    if not torch.allclose(got_t, exp_t, rtol=rtol, atol=atol):
        err = float((got_t - exp_t).abs().max())
        raise AssertionError(f"{what}: off by up to {err:.3g} (tolerance {rtol:g} relative). Hint: {hint}")


def lognorm_2(fn) -> None:
    """Lab 0, exercise 1: ``fn(A)`` returns μ₂(A), the log norm induced by the l2 norm."""
    g = torch.Generator().manual_seed(11)
    cases = [
        torch.tensor([[-1.0, 0.0], [0.0, -3.0]], dtype=torch.float64),  # diagonal: max entry
        torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64),  # skew: zero
        torch.tensor([[-1.0, 4.0], [0.0, -1.0]], dtype=torch.float64),  # stable but expanding
    ] + [torch.randn(n, n, generator=g, dtype=torch.float64) for n in (3, 6)]
    for A in cases:
        expected = torch.linalg.eigvalsh(0.5 * (A + A.T))[-1]
        got = _call(fn, A.clone())
        _close(
            got,
            expected,
            f"μ₂ of the {A.shape[0]}×{A.shape[0]} matrix {A.tolist() if A.shape[0] == 2 else ''}".strip(),
            "μ₂(A) is the largest eigenvalue of a symmetric matrix built from A; it can be negative, "
            "and it is 0 for a skew-symmetric A.",
        )
    A = cases[2]
    h = 1e-7  # the definition as a limit: (‖I + hA‖₂ − 1)/h
    limit = (torch.linalg.matrix_norm(torch.eye(2, dtype=A.dtype) + h * A, ord=2) - 1) / h
    _close(_call(fn, A), limit, "μ₂ against its definition as a limit", "see the definition.", rtol=1e-5)


def certified_radius(fn) -> None:
    """Lab 0, exercise 2: ``fn(logits, labels, L)`` returns the l2 certified radius per example."""
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.2, 5.0]])
    labels = torch.tensor([0, 1, 2, 2])
    for L in (1.0, 2.5):
        margins = torch.tensor([2.0, 1.0, 0.0, 4.8])  # the third one is misclassified: radius 0
        expected = margins / (math.sqrt(2) * L)
        got = _call(fn, logits.clone(), labels.clone(), L)
        _close(
            got,
            expected,
            f"radii with L = {L}",
            "the radius is the margin f_y − max_{j≠y} f_j divided by √2·L, and 0 where the prediction is wrong.",
            rtol=1e-5,
        )


def fgsm_step(fn) -> None:
    """Lab 0, exercise 3: ``fn(model, x, y, eps)`` returns the FGSM image, clamped to [0, 1]."""
    g = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 16, generator=g))
    x = torch.rand(5, 1, 4, 4, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1])
    for eps in (0.0, 0.1, 0.3):
        got = _call(fn, model, x.clone(), y.clone(), eps)
        if not isinstance(got, torch.Tensor) or got.shape != x.shape:
            raise AssertionError(
                f"expected a tensor of shape {tuple(x.shape)}, got {getattr(got, 'shape', type(got).__name__)}."
            )
        if float(got.min()) < 0 or float(got.max()) > 1:
            raise AssertionError("the adversarial image leaves [0, 1]. Hint: clamp it.")
        if float((got - x).abs().max()) > eps + 1e-6:
            raise AssertionError(f"the perturbation is larger than eps = {eps} in l∞.")
        _close(
            got.detach(),
            fgsm(model, x, y, eps),
            f"FGSM image at eps = {eps}",
            "step by eps along the sign of the gradient of the loss with respect to the input.",
            rtol=1e-5,
            atol=1e-6,
        )


def euler_resnet(fn) -> None:
    """Lab 0, exercise 4: ``fn(f, x0, T, n)`` applies n Euler steps of size T/n of ẋ = f(t, x)."""
    A = torch.tensor([[-1.0, 2.0], [-2.0, -1.0]], dtype=torch.float64)
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    f = lambda t, x: x @ A.T  # noqa: E731
    for n in (1, 4, 50):
        h = 1.0 / n
        expected = x0 @ torch.linalg.matrix_power(torch.eye(2, dtype=A.dtype) + h * A, n).T
        _close(
            _call(fn, f, x0.clone(), 1.0, n),
            expected,
            f"{n} Euler steps on a linear ODE",
            "x ← x + h·f(t, x) with h = T/n, n times, t advancing by h each step.",
        )
    ft = lambda t, x: torch.ones_like(x) * t  # noqa: E731  (checks that t advances)
    _close(
        _call(fn, ft, torch.zeros(1, 1, dtype=torch.float64), 1.0, 4),
        torch.tensor([[(0 + 0.25 + 0.5 + 0.75) * 0.25]], dtype=torch.float64),
        "Euler steps on ẋ = t",
        "the k-th step evaluates f at t_k = k·h.",
    )


def lognorm_inf(fn) -> None:
    """Lab 1, exercise 1: ``fn(A)`` returns μ_∞(A), the log norm induced by the max norm."""
    g = torch.Generator().manual_seed(5)
    cases = [
        torch.tensor([[-3.0, 1.0], [2.0, -1.0]], dtype=torch.float64),  # rows: -2, 1
        torch.tensor([[0.0, -4.0], [4.0, 0.0]], dtype=torch.float64),
    ]  # skew: 4, not 0
    cases += [torch.randn(n, n, generator=g, dtype=torch.float64) for n in (3, 5)]
    for A in cases:
        expected = (A.diagonal() + A.abs().sum(1) - A.diagonal().abs()).max()
        _close(
            _call(fn, A.clone()),
            expected,
            f"μ_∞ of a {A.shape[0]}×{A.shape[0]} matrix",
            "row i contributes its diagonal entry (with its sign) plus the absolute values of "
            "the other entries of the row; take the largest row.",
        )
    A = cases[0]
    h = 1e-7
    limit = (torch.linalg.matrix_norm(torch.eye(2, dtype=A.dtype) + h * A, ord=float("inf")) - 1) / h
    _close(_call(fn, A), limit, "μ_∞ against its definition as a limit", "see the definition.", rtol=1e-5)


def rank_one_gradient(fn) -> None:
    """Lab 1, exercise 2: ``fn(D, M)`` returns the gradient of μ₂(DM) with respect to M."""
    g = torch.Generator().manual_seed(7)
    for n in (3, 6):
        M = torch.randn(n, n, generator=g, dtype=torch.float64)
        D = torch.diag((torch.rand(n, generator=g) < 0.6).double())
        D[0, 0] = 1.0
        P = torch.randn(n, n, generator=g, dtype=torch.float64)
        h = 1e-6
        mu = lambda X, D=D: torch.linalg.eigvalsh(0.5 * (D @ X + (D @ X).T))[-1]  # noqa: E731
        fd = (mu(M + h * P) - mu(M - h * P)) / (2 * h)
        G = _call(fn, D.clone(), M.clone())
        if not isinstance(G, torch.Tensor) or G.shape != M.shape:
            raise AssertionError(f"expected an {n}×{n} tensor, got {getattr(G, 'shape', type(G).__name__)}.")
        _close(
            (G * P).sum(),
            fd,
            f"directional derivative of μ₂(DM) ({n}×{n})",
            "with v the top unit eigenvector of sym(DM), μ₂ = vᵀ D M v; differentiate in M.",
            rtol=1e-5,
            atol=1e-8,
        )
        if int(torch.linalg.matrix_rank(G)) != 1:
            raise AssertionError("the gradient should have rank one.")


def controlled_inner_step(fn) -> None:
    """Lab 1, exercise 3: ``fn(E, G, h, value, theta)`` performs one inner step with step control.

    ``value(E)`` returns (μ, G) at a point of the sphere. The step tries ``E + h g`` with
    ``g = −G + ⟨G, E⟩E``, renormalised; while μ does not decrease it divides ``h`` by ``theta``;
    it returns ``(E_new, h_new)`` with ``h_new = theta · h_accepted``.
    """
    g = torch.Generator().manual_seed(9)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    D = torch.diag(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    eps = 0.8
    value = lambda E: lognorm_gradient(D, A + eps * E)  # noqa: E731
    E = torch.randn(5, 5, generator=g, dtype=torch.float64)
    for _ in range(30):  # start near the inner optimum E = −G/‖G‖, where long steps overshoot
        E = -value(E / E.norm())[1]
    E = E / E.norm() + 0.05 * torch.randn(5, 5, generator=g, dtype=torch.float64)
    E = E / E.norm()
    mu0, G0 = value(E)
    big = next(
        h for h in (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0) if value(inner_step(E, G0, h))[0] >= mu0
    )  # a step this long overshoots
    for h0 in (0.01, big):  # a small step is accepted at once; a long one must be shrunk
        mu, G = value(E)
        h = h0
        while True:
            cand = inner_step(E, G, h)
            if value(cand)[0] < mu:
                break
            h /= 1.3
        got = _call(fn, E.clone(), G.clone(), h0, value, 1.3)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise AssertionError("return a pair (E_new, h_new).")
        E_new, h_new = got
        _close(torch.as_tensor(E_new).norm(), 1.0, "‖E_new‖_F", "renormalise onto the unit sphere.")
        _close(
            E_new,
            cand,
            f"E_new from h = {h0}",
            "step along −G + ⟨G,E⟩E, renormalise, and shrink h by theta until μ decreases.",
            rtol=1e-8,
            atol=1e-10,
        )
        _close(h_new, 1.3 * h, f"h_new from h = {h0}", "after an accepted step, grow h by theta.")


def _lab2_net():
    g = torch.Generator().manual_seed(21)
    torch.manual_seed(21)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    u = torch.rand(6, 5, generator=g, dtype=torch.float64)
    v = u + 0.3 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    return net, u, v


def _pair_grads(f, u, v):
    u = u.clone().requires_grad_(True)
    v = v.clone().requires_grad_(True)
    q = quotient(f, u, v)
    gu, gv = torch.autograd.grad(q.sum(), (u, v))
    return q.detach(), gu, gv


def quotient_gradient(fn) -> None:
    """Lab 2, exercise 1: ``fn(f, u, v)`` returns ``(q, gu, gv)``: the per-pair difference quotients
    ``‖f(u_i) − f(v_i)‖ / ‖u_i − v_i‖`` of a batch of pairs and their gradients in ``u`` and ``v``."""
    net, u, v = _lab2_net()
    W = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    lin = lambda z: z @ W.T  # noqa: E731
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    for f, x, y, name in ((lin, a, b, "the linear map diag(2, 1/2)"), (net, u, v, "a small tanh network")):
        got = _call(fn, f, x.clone(), y.clone())
        if not (isinstance(got, tuple) and len(got) == 3):
            raise AssertionError("return a triple (q, gu, gv).")
        q, gu, gv = _pair_grads(f, x, y)
        _close(
            got[0],
            q,
            f"quotients for {name}",
            "one number per pair: the norm of the output difference "
            "over the norm of the input difference (flattened, l2).",
        )
        hint = (
            "differentiate each pair's quotient with respect to its own u_i and v_i (autograd on the sum "
            "of the quotients gives all of them at once); the quotient depends on u and v only through "
            "f(u) − f(v) and u − v."
        )
        _close(got[1], gu, f"gradient in u for {name}", hint, rtol=1e-6, atol=1e-9)
        _close(got[2], gv, f"gradient in v for {name}", hint, rtol=1e-6, atol=1e-9)


def pair_update(fn) -> None:
    """Lab 2, exercise 2: ``fn(f, u, v, step, growth)`` takes one accept/reject ascent step of every
    pair and returns ``(u, v, step)``: the tentative pair ``u + step_i ∇_u q_i``, ``v + step_i ∇_v q_i``
    is kept, and ``step_i`` multiplied by ``growth``, only if its quotient increased; otherwise the
    pair stays and ``step_i`` is divided by ``growth``."""
    net, u, v = _lab2_net()
    step = torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0, 1000.0], dtype=torch.float64)
    ref = PairSet(u, v, growth=1.3)
    ref.step_size = step.clone()
    ref.update(net)
    got = _call(fn, net, u.clone(), v.clone(), step.clone(), 1.3)
    if not (isinstance(got, tuple) and len(got) == 3):
        raise AssertionError("return a triple (u, v, step).")
    accepted = (ref.step_size > step).tolist()
    if all(accepted) or not any(accepted):
        raise AssertionError("internal: the check's pairs should mix accepted and rejected steps.")
    _close(
        got[2],
        ref.step_size,
        "step sizes after the update",
        "multiply a pair's step by growth when its step was kept and divide it by growth when it was rejected.",
    )
    hint = (
        "take the tentative step with each pair's own step size along the gradient of its quotient (ascent), "
        "and keep it only where the quotient went up."
    )
    _close(got[0], ref.u, "u after the update", hint, rtol=1e-8, atol=1e-10)
    _close(got[1], ref.v, "v after the update", hint, rtol=1e-8, atol=1e-10)


def lambda_rule(fn) -> None:
    """Lab 2, exercise 3: ``fn(lam, accuracy, target, increment)`` returns the next ``λ`` of the
    target-accuracy rule: ``lam + increment`` above the target, ``max(lam − increment, 0)`` otherwise."""
    cases = [
        ((0.1, 0.99, 0.97, 0.05), 0.15),
        ((0.1, 0.90, 0.97, 0.05), 0.05),
        ((0.02, 0.5, 0.97, 0.05), 0.0),
        ((0.0, 0.98, 0.97, 0.01), 0.01),
        ((1.0, 0.97, 0.97, 0.5), 0.5),
    ]
    for args, expected in cases:
        _close(
            _call(fn, *args),
            expected,
            f"λ after lam={args[0]}, accuracy={args[1]}, target={args[2]}, increment={args[3]}",
            "more regularisation when the accuracy beats the target (strictly), "
            "less otherwise, and λ is never negative.",
        )


# --------------------------------------------------------------------------- lab 4
def _psd(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    return A @ A.T / n


def euler_step_norm(fn) -> None:
    """Lab 4, exercise 1: ``fn(Q, h)`` returns ``‖I − hQ‖₂``, the Lipschitz constant of the Euler step
    ``x ↦ x − h∇f(x)`` of the quadratic potential ``f(x) = ½ xᵀQx`` (``Q`` symmetric, ``Q ⪰ 0``)."""
    cases = [torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)), _psd(0), _psd(1, 7)]
    hint = (
        "the step is linear, x ↦ (I − hQ)x, so its constant is the spectral norm of I − hQ; with the "
        "eigenvalues λ_i of Q that is max_i |1 − hλ_i|, which is > 1 exactly when h > 2/λ_max."
    )
    for Q in cases:
        L = float(torch.linalg.eigvalsh(Q)[-1])
        for c in (0.3, 1.0, 2.0, 2.5):
            h = c / L
            expected = torch.linalg.matrix_norm(torch.eye(Q.shape[0], dtype=Q.dtype) - h * Q, ord=2)
            _close(_call(fn, Q.clone(), h), expected, f"‖I − hQ‖ at h = {c}/L", hint, rtol=1e-8)


def _cpl_reference(x, W, b):
    h = 2.0 / torch.linalg.matrix_norm(W, ord=2) ** 2
    return x - h * torch.relu(x @ W.T + b) @ W


def cpl_step(fn) -> None:
    """Lab 4, exercise 2: ``fn(x, W, b)`` returns the dense CPL ``x − (2/‖W‖₂²) Wᵀ ReLU(Wx + b)`` for a
    batch ``x`` of shape ``(N, n)``, ``W`` of shape ``(m, n)``."""
    g = torch.Generator().manual_seed(4)
    for n, m in ((6, 9), (8, 3)):
        layer = ConvexPotentialLayer(n, m, generator=g).double().eval()
        W, b = layer.weight.detach().clone(), layer.bias.detach().clone()
        x = torch.randn(5, n, generator=g, dtype=torch.float64)
        with torch.no_grad():
            expected = layer(x)
        got = _call(fn, x.clone(), W.clone(), b.clone())
        _close(
            got,
            expected,
            f"CPL output for W of shape {m}×{n}",
            "h = 2/‖W‖₂² uses the spectral norm (torch.linalg.matrix_norm(W, ord=2)), not the Frobenius "
            "norm; the batch is x (N × n), so Wx + b is x @ W.T + b and Wᵀσ(·) is σ(·) @ W.",
            rtol=1e-8,
        )


def power_iteration(fn) -> None:
    """Lab 4, exercise 3: ``fn(W, u, iters)`` runs ``iters`` power-iteration steps
    ``v ← Wu/‖Wu‖, u ← Wᵀv/‖Wᵀv‖`` from ``u`` and returns ``(sigma, u)`` with ``sigma = ‖W u‖``."""
    g = torch.Generator().manual_seed(5)
    Uq, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    Vq, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    S = torch.zeros(6, 4, dtype=torch.float64)
    S[0, 0], S[1, 1], S[2, 2], S[3, 3] = 3.0, 2.0, 1.0, 0.5
    W = Uq @ S @ Vq.T
    u0 = torch.randn(4, generator=g, dtype=torch.float64)
    u0 = u0 / u0.norm()
    hint = (
        "one step maps u to Wᵀ(Wu) and normalises; the estimate is ‖Wu‖ for the final u (not ‖WᵀWu‖, "
        "which estimates ‖W‖²)."
    )
    got = _call(fn, W.clone(), u0.clone(), 1)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise AssertionError("return a pair (sigma, u).")
    u1 = W.T @ (W @ u0)
    u1 = u1 / u1.norm()
    _close(got[1], u1, "u after one step", hint, rtol=1e-8)
    _close(got[0], (W @ u1).norm(), "sigma after one step", hint, rtol=1e-8)
    values = []
    for k in (1, 2, 5, 20, 200):
        sigma, _ = _call(fn, W.clone(), u0.clone(), k)
        values.append(float(sigma))
        if float(sigma) > 3.0 * (1 + 1e-12):
            raise AssertionError(
                f"after {k} steps the estimate {float(sigma):.6f} exceeds ‖W‖ = 3: the power "
                f"iteration approaches the norm from below. Hint: {hint}"
            )
    if any(b < a - 1e-12 for a, b in zip(values, values[1:])):
        raise AssertionError(f"the estimates {values} should not decrease with more steps. Hint: {hint}")
    _close(values[-1], 3.0, "sigma after 200 steps", hint, rtol=1e-8)


def lln_radius(fn) -> None:
    """Lab 4, exercise 4: ``fn(logits, labels, W_hat)`` returns the pairwise certified radius of an LLN
    head, ``max(0, min_{j≠y} (f_y − f_j)/‖ŵ_y − ŵ_j‖)`` per example (features 1-Lipschitz)."""
    g = torch.Generator().manual_seed(6)
    W = torch.randn(4, 5, generator=g, dtype=torch.float64)
    W_hat = W / W.norm(dim=1, keepdim=True)
    logits = torch.randn(12, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (12,), generator=g)
    expected = _lln_radius_reference(logits, labels, torch.cdist(W_hat, W_hat), 1.0)
    _close(
        _call(fn, logits.clone(), labels.clone(), W_hat.clone()),
        expected,
        "pairwise radii",
        "for each example and each other class j, divide the logit gap f_y − f_j by ‖ŵ_y − ŵ_j‖ (not by "
        "√2), take the smallest over j ≠ y, and give 0 to misclassified examples.",
        rtol=1e-8,
    )


def sobolev(fn) -> None:
    """Lab 3, exercise 1: ``fn(u, T)`` returns the Sobolev gradient ``(I − ∂²_t)⁻¹ u`` (Neumann) of
    values ``u`` at the midpoints of the ``N`` cells of ``[0, T]`` (:prf:ref:`prop-sobolev`)."""
    hint = (
        "solve v_k − (v_{k+1} − 2v_k + v_{k−1})/h² = u_k with v_{−1} = v_0 and v_N = v_{N−1} "
        "(a tridiagonal system; torch.linalg.solve on the N × N matrix is fine)."
    )
    g = torch.Generator().manual_seed(11)
    for N, T in ((12, 3.0), (40, 1.5)):
        u = torch.randn(N, generator=g, dtype=torch.float64)
        _close(
            _call(fn, u.clone(), T),
            sobolev_gradient(u, T),
            f"the Sobolev gradient (N = {N}, T = {T})",
            hint,
            rtol=1e-8,
            atol=1e-10,
        )
    c = torch.full((20,), 2.5, dtype=torch.float64)
    _close(_call(fn, c.clone(), 2.0), c, "the Sobolev gradient of a constant", "constants are kept (Neumann).")


def _adjoint_case(seed=12, K=5, d=6):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, d, generator=g, dtype=torch.float64)
    x = -torch.rand(K, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    lam = torch.randn(K, d, generator=g, dtype=torch.float64)
    return W, x, x @ W.T + b, lam


def adjoint_step(fn) -> None:
    """Lab 3, exercise 2: ``fn(lam_next, x_k, z_k, W_k, h)`` returns ``(lam_k, gW_k, gb_k)`` for
    ``x_{k+1} = x_k + h tanh(z_k)``, ``z_k = x_k W_kᵀ + b_k`` (rows are samples): one step of the
    discrete adjoint (:prf:ref:`thm-discrete-adjoint`)."""
    W, x, z, lam = _adjoint_case()
    h = 0.1
    q = (1 - torch.tanh(z) ** 2) * lam
    expected = (lam + h * q @ W, h * q.T @ x, h * q.sum(0))
    got = _call(fn, lam.clone(), x.clone(), z.clone(), W.clone(), h)
    if not (isinstance(got, tuple) and len(got) == 3):
        raise AssertionError("return a triple (lam_k, gW_k, gb_k).")
    hints = (
        "λ_k = λ_{k+1} + h W_kᵀ(σ'(z_k) ⊙ λ_{k+1}); with samples in rows that is lam + h * (s @ W).",
        "gW_k = h Σ_n s_n x_nᵀ with s = σ'(z_k) ⊙ λ_{k+1}: h * s.T @ x.",
        "gb_k = h Σ_n s_n: sum over the samples.",
    )
    for what, a, e, hint in zip(("lam_k", "gW_k", "gb_k"), got, expected, hints):
        _close(a, e, what, hint, rtol=1e-9, atol=1e-12)


def sensitivity_step(fn) -> None:
    """Lab 3, exercise 3: ``fn(xi_k, x_k, z_k, W_k, dW_k, db_k, h)`` returns ``ξ_{k+1}``, one step of
    the sensitivity recursion for ``tanh`` (:prf:ref:`prop-sensitivity`)."""
    W, x, z, xi = _adjoint_case(seed=13)
    g = torch.Generator().manual_seed(14)
    dW = torch.randn(W.shape, generator=g, dtype=torch.float64)
    db = torch.randn(W.shape[0], generator=g, dtype=torch.float64)
    h = 0.2
    b = z - x @ W.T

    def step(W_, b_, x_):  # the Euler step; its derivative in the direction is the answer
        return x_ + h * torch.tanh(x_ @ W_.T + b_)

    _, expected = torch.func.jvp(step, (W, b, x), (dW, db.expand_as(b), xi))
    got = _call(fn, xi.clone(), x.clone(), z.clone(), W.clone(), dW.clone(), db.clone(), h)
    _close(
        got,
        expected,
        "ξ_{k+1}",
        "ξ_{k+1} = ξ_k + h σ'(z_k) ⊙ (W_k ξ_k + dW_k x_k + db_k), samples in rows.",
        rtol=1e-9,
        atol=1e-12,
    )


def l2_step(fn) -> None:
    """Lab 3, exercise 4: ``fn(xT, xi, target)`` returns the step ``η`` that minimises
    ``(1/K) Σ ½‖x_n + η ξ_n − ŷ_n‖²`` (:prf:ref:`prop-line-search`)."""
    g = torch.Generator().manual_seed(15)
    xT, xi, y = (torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(3))
    expected = -float((xi * (xT - y)).sum() / (xi * xi).sum())
    got = _call(fn, xT.clone(), xi.clone(), y.clone())
    _close(
        got,
        expected,
        "η",
        "the loss is a quadratic in η: set its derivative ⟨ξ, x + ηξ − ŷ⟩ to zero.",
        rtol=1e-9,
        atol=1e-12,
    )


def attack_median(fn) -> None:
    """Lab 3, exercise 5: ``fn(model, x0, labels)`` runs :func:`labkit.snode.sensitivity_attack`
    with its defaults and returns ``(median, flipped)``: the median minimal norm over the correctly
    classified inputs, an input never flipped counted as above the attack's reach, and the fraction
    of those inputs that the attack flipped (:func:`labkit.attacks.median_minimal_norm`)."""
    model = SNODE(16, T=2.0, steps=8, classes=4, generator=torch.Generator().manual_seed(25)).double()
    with torch.no_grad():
        model.W.mul_(4.0)  # 3 of the 10 correctly classified inputs resist the attack: their norm is inf
    x0 = -torch.rand(12, 16, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    with torch.no_grad():
        labels = model.flow(x0)[:, :4].argmax(1)
    labels[[2, 7]] = (labels[[2, 7]] + 1) % 4  # two inputs misclassified: their norm is 0
    norms = sensitivity_attack(model, x0, labels)
    correct = norms[norms > 0]
    got = _call(fn, model, x0.clone(), labels.clone())
    if not (isinstance(got, tuple) and len(got) == 2):
        raise AssertionError("return a pair (median, flipped).")
    _close(
        got[1],
        float(torch.isfinite(correct).float().mean()),
        "flipped",
        "the fraction of the correctly classified inputs (norm > 0) whose norm is finite.",
    )
    hint = (
        "leave out the misclassified inputs (norm 0) and keep those never flipped as inf: they rank above every "
        "norm found; for an even count take the mean of the two middle values (torch.median takes the lower)."
    )
    _close(got[0], median_minimal_norm(norms.tolist()), "median", hint)


def switching_rule(fn) -> None:
    """Lab 5, exercise 1: ``fn(h_c, a, S)`` returns the largest expansive step ``h_e`` for which ``S``
    sub-steps of (expansive ``h_e/S``, non-expansive ``h_c/S``) are 1-Lipschitz by the paper's
    factor (:prf:ref:`thm-switching`)."""
    hint = (
        "set (1 + h_e/S) · √(1 − 2a·h_c/S + (h_c/S)²) = 1 and solve for h_e; for a = ½, S = 2 it is "
        "4/√(h_c² − 2h_c + 4) − 2."
    )
    for h_c, a, S in ((0.3, 0.5, 2), (1.0, 0.5, 2), (0.7, 0.25, 3), (0.2, 1.0, 1), (1.5, 0.9, 4)):
        _close(
            _call(fn, h_c, a, S),
            expansive_step_bound(h_c, a, S),
            f"h_e at h_c = {h_c}, a = {a}, S = {S}",
            hint,
            rtol=1e-9,
        )


def _step_case(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    A = torch.linalg.qr(torch.randn(6, 5, generator=g, dtype=torch.float64))[0]
    b = torch.randn(6, generator=g, dtype=torch.float64)
    return x, A, b


def _leaky(z, a):
    return torch.where(z > 0, z, a * z)


def nonexpansive_step(fn) -> None:
    """Lab 5, exercise 2: ``fn(x, A, b, g, a)`` returns ``x − g Aᵀσ(Ax + b)`` for a batch ``x`` of
    shape ``(N, n)``, ``A`` of shape ``(m, n)`` and σ = LeakyReLU with slope ``a``
    (:prf:ref:`lem-nonexpansive`)."""
    x, A, b = _step_case(30)
    for g, a in ((0.5, 0.5), (1.2, 0.1)):
        expected = x - g * _leaky(x @ A.T + b, a) @ A
        _close(
            _call(fn, x.clone(), A.clone(), b.clone(), g, a),
            expected,
            f"the step at g = {g}, a = {a}",
            "rows are samples: the pre-activation is x @ A.T + b, LeakyReLU keeps positive entries and multiplies "
            "negative ones by a, and Aᵀ applied to rows is (…) @ A.",
            rtol=1e-9,
        )


def expansive_step(fn) -> None:
    """Lab 5, exercise 3: ``fn(x, A, b, tau, a)`` returns ``x + τσ(Ax + b)`` for a batch ``x`` of shape
    ``(N, n)``, a square ``A`` and σ = LeakyReLU with slope ``a`` (:prf:ref:`lem-expansive`)."""
    g = torch.Generator().manual_seed(31)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    for tau, a in ((0.3, 0.5), (0.05, 0.2)):
        expected = x + tau * _leaky(x @ A.T + b, a)
        _close(
            _call(fn, x.clone(), A.clone(), b.clone(), tau, a),
            expected,
            f"the step at τ = {tau}, a = {a}",
            "no Aᵀ here: the increment is τ · LeakyReLU(x @ A.T + b).",
            rtol=1e-9,
        )


def jacobian_norm(fn) -> None:
    """Lab 5, exercise 4: ``fn(f, x)`` returns the spectral norm ``‖J_f(x)‖₂`` of the Jacobian of a map
    ``f`` from vectors to vectors at one point ``x``."""
    g = torch.Generator().manual_seed(32)
    W = torch.randn(4, 6, generator=g, dtype=torch.float64)
    x = torch.randn(6, generator=g, dtype=torch.float64)
    hint = (
        "torch.autograd.functional.jacobian(f, x) gives the matrix J; its spectral norm is "
        "torch.linalg.matrix_norm(J, ord=2), the largest singular value (not the Frobenius norm)."
    )
    _close(_call(fn, lambda t: W @ t, x.clone()), torch.linalg.matrix_norm(W, 2), "‖W‖₂ for f(x) = Wx", hint)

    def f(t):
        return torch.tanh(W @ t) * 2

    J = torch.autograd.functional.jacobian(f, x)
    _close(_call(fn, f, x.clone()), torch.linalg.matrix_norm(J, 2), "‖J_f(x)‖₂ for f(x) = 2 tanh(Wx)", hint)


def skew_field(fn) -> None:
    """Lab 5, exercise 5: ``fn(entries, n)`` builds, for each row of ``entries`` (``n(n−1)/2`` values,
    in the order of ``torch.triu_indices(n, n, 1)``), the skew-symmetric ``G = U − Uᵀ`` with ``U``
    strictly upper triangular holding the entries, and returns ``G 𝟙`` (shape ``(N, n)``), an
    increment whose entries sum to zero (:prf:ref:`prop-linear-invariant`)."""
    g = torch.Generator().manual_seed(33)
    n = 5
    entries = torch.randn(6, n * (n - 1) // 2, generator=g, dtype=torch.float64)
    rows, cols = torch.triu_indices(n, n, 1)
    U = torch.zeros(6, n, n, dtype=torch.float64)
    U[:, rows, cols] = entries
    expected = (U - U.transpose(1, 2)).sum(2)
    got = _call(fn, entries.clone(), n)
    _close(
        got,
        expected,
        "G 𝟙",
        "put the entries above the diagonal (torch.triu_indices(n, n, 1)), subtract the "
        "transpose, and sum each row (G @ ones).",
        rtol=1e-9,
    )
    total = torch.as_tensor(got, dtype=torch.float64).sum(1)
    if float(total.abs().max()) > 1e-12:
        raise AssertionError("the entries of G 𝟙 must sum to zero for a skew-symmetric G.")


def _as_list(got, what, hint):
    try:
        return [float(v) for v in got]
    except (TypeError, ValueError):
        raise AssertionError(f"{what}: expected a list of numbers, got {type(got).__name__}. Hint: {hint}") from None


def robust_curve(fn) -> None:
    """Lab 6, exercise 1: ``fn(predict, robust, x, y, radii)`` returns the robust accuracy at each of
    the increasing ``radii``, where ``robust(x, y, ε)`` (a boolean mask) is called only on the points
    still robust at the radius below, starting from the correctly classified ones (the protocol's
    monotone curves, :prf:ref:`def-protocol`)."""
    g = torch.Generator().manual_seed(40)
    x = torch.rand(40, 3, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0.3).long()
    predict = lambda t: (t[:, 0] > 0.35).long()  # noqa: E731  (a few points misclassified)
    score = torch.rand(40, generator=g, dtype=torch.float64)
    noise = torch.rand(40, 1, generator=g, dtype=torch.float64)
    index = {tuple(row.tolist()): i for i, row in enumerate(x)}
    radii = [0.1, 0.3, 0.5, 0.7]

    def attack_log(log):
        def robust(xs, ys, eps):  # not monotone on its own: a point may "recover" at a larger radius
            log.append(len(xs))
            i = torch.tensor([index[tuple(row.tolist())] for row in xs], dtype=torch.long)
            return (score[i] > eps) != (noise[i, 0] > 0.85)

        return robust

    expected, seen = [], []
    ok = predict(x) == y
    robust = attack_log(seen)
    for e in radii:
        idx = torch.nonzero(ok).flatten()
        if idx.numel():
            ok[idx] = robust(x[idx], y[idx], e)
        expected.append(float(ok.double().mean()))
    calls = []
    hint = (
        "start from the correctly classified points, attack at each radius only the points still robust at the "
        "one below, and divide by the number of all points."
    )
    got = _as_list(_call(fn, predict, attack_log(calls), x.clone(), y.clone(), radii), "the curve", hint)
    _close(got, expected, "robust accuracy at the radii", hint, rtol=1e-6, atol=1e-6)  # float32 means are fine
    if calls != seen:
        raise AssertionError(
            f"the attack was called on {calls} points at the successive radii, expected {seen}. Hint: {hint}"
        )


def _linear_case():
    g = torch.Generator().manual_seed(41)
    W = torch.randn(4, 6, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    x = torch.randn(60, 6, generator=g, dtype=torch.float64)
    return W, b, x


def _to_boundary(W, b, x, y):
    """The exact ℓ2 distance of each row of ``x`` from the decision boundary of ``argmax(Wx + b)`` around
    class ``y``, and the unit direction that reaches it."""
    z = x @ W.T + b
    gaps = z.gather(1, y[:, None]) - z  # (N, K), zero at y
    rows = W[y][:, None, :] - W[None, :, :]  # (N, K, n): w_y − w_j
    norms = rows.norm(dim=2).clamp_min(1e-300)
    dist = (gaps / norms).masked_fill(torch.nn.functional.one_hot(y, W.shape[0]).bool(), math.inf)
    d, j = dist.min(1)
    direction = -rows[torch.arange(len(y)), j] / norms[torch.arange(len(y)), j][:, None]
    return d, direction


def audit_flips(fn) -> None:
    """Lab 6, exercise 2: ``fn(predict, attack, x, y, radii)`` returns the indices (ascending, a
    ``LongTensor``) of the certified points (``radii > 0``) whose prediction ``attack(x, y, eps)``
    changes from ``y`` with per-point ``eps = 0.99 · radii`` (the soundness audit,
    :prf:ref:`prop-audit`)."""
    W, b, x = _linear_case()
    predict = lambda t: (t @ W.T + b).argmax(1)  # noqa: E731
    y = predict(x)
    y[:8] = (y[:8] + 1) % W.shape[0]  # eight misclassified points: radius 0, never certified

    def attack(xs, ys, eps):  # the exact attack of a linear classifier: towards the nearest boundary, by eps
        eps = torch.as_tensor(eps, dtype=xs.dtype).reshape(-1)
        if eps.shape != (len(xs),):
            raise AssertionError(f"the attack takes one radius per point ({len(xs)}), got shape {tuple(eps.shape)}.")
        return xs + eps[:, None] * _to_boundary(W, b, xs, ys)[1]  # flips exactly the points with eps > distance

    d, _ = _to_boundary(W, b, x, y)
    hint = (
        "attack only the points with a positive radius, each at 0.99 of its own radius, and return the indices "
        "(torch.nonzero(...).flatten()) of those whose prediction is no longer y."
    )
    sound = torch.where(torch.arange(len(y)) < 8, 0.0, d * 0.7)
    for name, radii in (
        ("sound radii", sound),
        ("radii a hair above the true distances", d * 1.005),
        ("doubled radii", 2 * sound),
    ):
        radii = torch.where(torch.arange(len(y)) < 8, torch.zeros_like(radii), radii)
        cert = torch.nonzero(radii > 0).flatten()
        flipped = predict(attack(x[cert], y[cert], 0.99 * radii[cert])) != y[cert]
        expected = cert[flipped]
        got = _call(fn, predict, attack, x.clone(), y.clone(), radii.clone())
        if not isinstance(got, torch.Tensor) or got.dtype not in (torch.long, torch.int64, torch.int32):
            raise AssertionError(f"{name}: expected a tensor of indices, got {type(got).__name__}. Hint: {hint}")
        got = got.flatten().sort().values
        if not torch.equal(got.long(), expected):
            first = f"first ones {got[:5].tolist()} against {expected[:5].tolist()}"
            raise AssertionError(
                f"{name}: expected {len(expected)} flipped certified points, got {len(got)} ({first}). Hint: {hint}"
            )


def l2_pgd(fn) -> None:
    """Lab 6, exercise 3: ``fn(model, x, y, eps, steps, step)`` returns the last iterate of ℓ2 PGD on
    the cross-entropy from the clean point: ``steps`` times a step of length ``step`` along each
    example's normalised gradient, then the projection of the perturbation onto the ℓ2 ball of
    radius ``eps`` and the clamp to ``[0, 1]`` (the structure-preserving paper's evaluation attack
    with ``step = 0.025 ε``, §6.5)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    g = torch.Generator().manual_seed(42)
    x = torch.rand(10, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=g)

    def reference(eps, steps, step):
        adv = x.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = adv + step * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                delta = adv - x
                delta = delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(eps)).clamp(max=1.0)
                adv = (x + delta).clamp(0.0, 1.0)
        return adv.detach()

    hint = (
        "per example: step along grad / ‖grad‖ (the ℓ2 norm of each row), then scale the perturbation back "
        "to norm eps if it is longer, then clamp to [0, 1]; start from x itself, no random start."
    )
    for eps, steps, step in ((0.5, 10, 0.025 * 0.5), (0.5, 10, 0.125), (2.0, 6, 1.0)):
        got = _call(fn, model, x.clone(), y.clone(), eps, steps, step)
        if isinstance(got, torch.Tensor):
            got = got.detach()
        _close(
            got,
            reference(eps, steps, step),
            f"the iterate at eps = {eps}, {steps} steps of {step:g}",
            hint,
            rtol=1e-7,
            atol=1e-9,
        )


def shard_runs(fn) -> None:
    """Lab 6, exercise 4: ``fn(runs, i, n)`` returns part ``i`` (``1 ≤ i ≤ n``) of ``n`` of the list
    ``runs`` such that the ``n`` parts together hold every run exactly once and their sizes differ by
    at most one (what ``python -m labkit.chapters ch06 --shard i/n`` needs, §6.8)."""
    hint = (
        "every run in exactly one part, parts of sizes ⌊R/n⌋ or ⌈R/n⌉, and i counts from 1; runs[i - 1::n] is "
        "one answer."
    )
    for total in (0, 1, 7, 12, 23):
        runs = [("mnist", f"m{k}", k % 3) for k in range(total)]
        for n in (1, 2, 3, 5, 8):
            parts = [_call(fn, list(runs), i, n) for i in range(1, n + 1)]
            if not all(isinstance(part, list) for part in parts):
                raise AssertionError(f"expected lists of runs. Hint: {hint}")
            flat = [run for part in parts for run in part]
            if sorted(flat) != sorted(runs):
                raise AssertionError(
                    f"{total} runs in {n} parts: the parts hold {len(flat)} runs ({len(set(flat))} "
                    f"distinct), not each of the {total} once. Hint: {hint}"
                )
            sizes = [len(part) for part in parts]
            if sizes and max(sizes) - min(sizes) > 1:
                raise AssertionError(f"{total} runs in {n} parts: sizes {sizes} differ by more than one. Hint: {hint}")
