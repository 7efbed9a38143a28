"""Standalone neural ODEs (§3.2): the whole classifier is one ODE in the input space,
``ẋ = σ(W(t)x + b(t))``, trained by nonlinear conjugate gradients with Sobolev gradients and
exact line searches from the sensitivity equation (§3.2–§3.4).

Everything is *discretise-then-optimise*: the network is the explicit Euler scheme on the uniform
grid of ``[0, T]`` with one weight matrix and bias per cell, and :func:`adjoint_gradient`,
:func:`sensitivity` and :func:`input_jacobian` are the exact derivatives of that discrete map,
written out as recursions (:prf:ref:`thm-discrete-adjoint`, :prf:ref:`prop-sensitivity`).
:func:`adaptive_gradient` is the optimise-then-discretise counterpart through ``torchdiffeq``,
kept to show what it costs in accuracy (§3.6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import _ncg as _ncg_engine
from . import _validate, activations
from .runtime import progress_enabled
from .train import History, fit, load_checkpoint, save_checkpoint

__all__ = [
    "BETAS",
    "SNODE",
    "downsample",
    "adjoint_gradient",
    "autograd_gradient",
    "sobolev_gradient",
    "sensitivity",
    "input_jacobian",
    "output_covariance",
    "line_search",
    "cg_beta",
    "NCGOptions",
    "ncg_train",
    "ncg_train_ensemble",
    "reference_iteration",
    "fit_backprop",
    "sensitivity_attack",
    "smoothness",
    "adaptive_gradient",
    "lipschitz_bound",
    "OnImages",
]


#: The conjugate-gradient coefficients of :func:`cg_beta` (§3.4).
BETAS = ("fletcher-reeves", "polak-ribiere", "hestenes-stiefel", "dai-yuan", "none")
LOSSES = ("l2", "cross_entropy")


class SNODE(nn.Module):
    """The standalone neural ODE ``ẋ = σ(W(t)x + b(t))`` on ``[0, T]`` in ``ℝ^dim`` (§3.2), with
    one ``W`` (``dim × dim``) and ``b`` per cell of the uniform grid (``W``: ``steps × dim × dim``,
    ``b``: ``steps × dim``), solved by explicit Euler: ``x_{k+1} = x_k + h σ(W_k x_k + b_k)``,
    ``h = T/steps``. No layer comes before or after the ODE.

    Images enter through :meth:`encode`: flattened, background 0 and foreground −1, so that with a
    non-negative activation (ẋ ≥ 0) every state can still rise to the targets 0 and 1 (pitfall 2
    of §3.8). The prediction is the arg-max of the first ``classes`` components of ``x(T)``
    (:meth:`forward` returns them). ``loss="l2"`` (the reference code's) regresses the whole
    final state on the one-hot target embedded in ``ℝ^dim`` (:meth:`target`); ``"cross_entropy"``
    uses the first ``classes`` components as logits. The weights start smooth in ``t``: normal
    entries of standard deviation ``1/dim`` at the integer times, interpolated linearly."""

    def __init__(
        self,
        dim: int,
        *,
        T: float = 3.0,
        steps: int = 150,
        activation: str = "tanh",
        classes: int = 10,
        loss: str = "l2",
        generator=None,
    ):
        super().__init__()
        self.dim = _validate.positive_int(dim, "dim")
        self.T = float(_validate.positive(T, "T"))
        self.steps = _validate.positive_int(steps, "steps")
        self.classes = _validate.positive_int(classes, "classes")
        if self.classes > self.dim:
            raise ValueError(f"classes = {classes} do not fit in a state of dimension {dim}.")
        if activation not in activations.TABLE:
            raise ValueError(f"unknown activation {activation!r}; use one of {sorted(activations.TABLE)}.")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use one of {LOSSES}.")
        self.activation, self.loss_kind = activation, loss
        act = activations.get(activation)
        self.sigma, self.dsigma = act.fn, act.derivative
        knots = math.ceil(self.T) + 1
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        W_knots = torch.randn(knots, dim, dim, generator=gen) / dim
        b_knots = torch.randn(knots, dim, generator=gen) / dim
        mid = (torch.arange(self.steps, dtype=torch.float64) + 0.5) * self.h
        self.W = nn.Parameter(_interpolate(W_knots, mid).float())
        self.b = nn.Parameter(_interpolate(b_knots, mid).float())

    @property
    def h(self) -> float:
        """The step size ``T / steps``."""
        return self.T / self.steps

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The initial state of images in ``[0, 1]``: flattened, ``x(0) = −image`` (background 0,
        foreground −1)."""
        _validate.batch(images, what="images")
        x = images.flatten(1)
        if x.shape[1] != self.dim:
            raise ValueError(f"images have {x.shape[1]} pixels; the sNODE has dimension {self.dim}.")
        return -x.to(self.W.dtype)

    def target(self, labels: torch.Tensor) -> torch.Tensor:
        """The ℓ2 target of ``labels``: the one-hot vector of the class in the first ``classes``
        components, zeros in the other ``dim − classes``."""
        _validate.labels(labels, classes=self.classes)
        y = torch.zeros(len(labels), self.dim, dtype=self.W.dtype, device=self.W.device)
        y[torch.arange(len(labels)), labels.to(y.device)] = 1.0
        return y

    def flow(self, x0: torch.Tensor) -> torch.Tensor:
        """``x(T)`` from the initial states ``x0`` (``K × dim``), by the Euler scheme."""
        x = _state(self, x0)
        for k in range(self.steps):
            x = x + self.h * self.sigma(x @ self.W[k].T + self.b[k])
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits: the first ``classes`` components of ``x(T)`` from images."""
        return self.flow(self.encode(images))[:, : self.classes]

    def loss(self, xT: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean loss of final states: ``½‖x(T) − ŷ‖²`` (``l2``) or cross-entropy on the first
        ``classes`` components."""
        if self.loss_kind == "l2":
            return 0.5 * (xT - self.target(labels)).pow(2).sum(1).mean()
        _validate.labels(labels, classes=self.classes)
        return F.cross_entropy(xT[:, : self.classes], labels.to(xT.device))


def _interpolate(knots: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of values at the integer times ``0, 1, …`` to times ``t``."""
    i = t.floor().long().clamp(0, len(knots) - 2)
    w = (t - i).to(knots.dtype).view(-1, *([1] * (knots.ndim - 1)))
    return (1 - w) * knots[i] + w * knots[i + 1]


def _state(model: SNODE, x0: torch.Tensor) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor) or x0.ndim != 2 or x0.shape[1] != model.dim:
        raise ValueError(f"x0 must be a batch of states of shape (K, {model.dim}), got {getattr(x0, 'shape', x0)}.")
    return x0.to(dtype=model.W.dtype, device=model.W.device)


def downsample(images: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Block averages of ``factor × factor`` pixels (MNIST 28×28 → 14×14 for ``factor=2``, §3.5)."""
    _validate.batch(images, what="images")
    factor = _validate.positive_int(factor, "factor")
    if images.ndim != 4 or images.shape[-1] % factor or images.shape[-2] % factor:
        raise ValueError(f"images must be (N, C, H, W) with H and W divisible by {factor}, got {tuple(images.shape)}.")
    return F.avg_pool2d(images, factor)


@torch.no_grad()
def _trajectory(model: SNODE, x0: torch.Tensor):
    """States ``x_0 … x_N`` (``N+1 × K × dim``) and pre-activations ``z_k = W_k x_k + b_k``."""
    x = _state(model, x0)
    W, b, h = model.W.detach(), model.b.detach(), model.h
    X = torch.empty(model.steps + 1, *x.shape, dtype=x.dtype, device=x.device)
    Z = torch.empty(model.steps, *x.shape, dtype=x.dtype, device=x.device)
    X[0] = x
    for k in range(model.steps):
        Z[k] = torch.addmm(b[k], X[k], W[k].T)
        X[k + 1] = X[k] + h * model.sigma(Z[k])
    return X, Z


def _loss_gradient(model: SNODE, xT: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``∂(mean loss)/∂x(T)``, one row per sample."""
    K = xT.shape[0]
    if model.loss_kind == "l2":
        return (xT - model.target(labels)) / K
    _validate.labels(labels, classes=model.classes)
    p = torch.softmax(xT[:, : model.classes], 1)
    p[torch.arange(K), labels.to(p.device)] -= 1.0
    out = torch.zeros_like(xT)
    out[:, : model.classes] = p / K
    return out


def adjoint_gradient(model: SNODE, x0: torch.Tensor, target: torch.Tensor, *, weight_decay: float = 0.0):
    """The exact gradient ``(gW, gb)`` of the mean loss of :class:`SNODE` at the initial states
    ``x0`` with labels ``target``, by the discrete adjoint recursion (:prf:ref:`thm-discrete-adjoint`):
    ``λ_N = ∂loss/∂x_N``, ``λ_k = λ_{k+1} + h W_kᵀ(σ'(z_k) ⊙ λ_{k+1})``,
    ``gW_k = h Σ (σ'(z_k) ⊙ λ_{k+1}) x_kᵀ`` and ``gb_k = h Σ σ'(z_k) ⊙ λ_{k+1}``, written out
    (no autograd). ``weight_decay`` μ adds the gradient ``μ h (W_k, b_k)`` of
    ``(μ/2) Σ_k h (‖W_k‖² + ‖b_k‖²)``, the discrete ``(μ/2)∫‖W‖² + ‖b‖² dt``."""
    X, Z = _trajectory(model, x0)
    lam = _loss_gradient(model, X[-1], target)
    W, h = model.W.detach(), model.h
    gW, gb = torch.empty_like(W), torch.empty_like(model.b.detach())
    for k in range(model.steps - 1, -1, -1):
        s = model.dsigma(Z[k]) * lam
        gW[k] = h * (s.T @ X[k])
        gb[k] = h * s.sum(0)
        lam = torch.addmm(lam, s, W[k], alpha=h)
    wd = float(_validate.nonneg(weight_decay, "weight_decay"))
    if wd:
        gW += wd * h * W
        gb += wd * h * model.b.detach()
    return gW, gb


def autograd_gradient(model: SNODE, x0: torch.Tensor, target: torch.Tensor):
    """The same gradient as :func:`adjoint_gradient` by PyTorch's reverse mode through
    :meth:`SNODE.flow` (the reference of its tests and of ``scripts/bench_snode.py``)."""
    W, b = model.W, model.b
    loss = model.loss(model.flow(x0), target)
    gW, gb = torch.autograd.grad(loss, (W, b))
    return gW, gb


def sobolev_gradient(g: torch.Tensor, T: float) -> torch.Tensor:
    """The ``W^{1,2}(0, T)`` representative ``v = (I − ∂²_t)⁻¹ u`` with Neumann conditions of an
    ``L²`` gradient ``u`` sampled along the first axis of ``g`` at the midpoints of the ``N`` cells
    of ``[0, T]`` (:prf:ref:`prop-sobolev`): the cell-centred finite-difference Laplacian with
    mirrored ghost cells, solved by the Thomas algorithm for all other axes at once (``O(N · size)``).
    Constants are kept; ``cos(kπt/T)`` is divided by ``1 + (kπ/T)² + O(h²)``."""
    T = float(_validate.positive(T, "T"))
    if not isinstance(g, torch.Tensor) or g.ndim < 1 or g.shape[0] < 1:
        raise ValueError("g must be a tensor whose first axis holds the values on the grid's cells.")
    return _ncg_engine.thomas(g, T)


@torch.no_grad()
def _sensitivity(model: SNODE, x0, dW=None, db=None, dx0=None):
    x = _state(model, x0)
    xi = torch.zeros_like(x) if dx0 is None else _state(model, dx0).clone()
    W, b, h = model.W.detach(), model.b.detach(), model.h
    for name, d, ref in (("dW", dW, W), ("db", db, b)):
        if d is not None and d.shape != ref.shape:
            raise ValueError(f"{name} must have the shape {tuple(ref.shape)} of the weights, got {tuple(d.shape)}.")
    for k in range(model.steps):
        z = torch.addmm(b[k], x, W[k].T)
        rhs = xi @ W[k].T
        if dW is not None:
            rhs = rhs + x @ dW[k].T.to(x.dtype)
        if db is not None:
            rhs = rhs + db[k].to(x.dtype)
        xi = xi + h * model.dsigma(z) * rhs
        x = x + h * model.sigma(z)
    return x, xi


def sensitivity(model: SNODE, x0: torch.Tensor, dW=None, db=None, dx0=None) -> torch.Tensor:
    """``ξ(T)``, the directional derivative of ``x(T)`` in the direction ``(dW, db, dx0)`` (any of
    them ``None`` for zero), by the discrete sensitivity recursion
    ``ξ_{k+1} = ξ_k + h σ'(z_k) ⊙ (W_k ξ_k + dW_k x_k + db_k)``, ``ξ_0 = dx0``
    (:prf:ref:`prop-sensitivity`)."""
    return _sensitivity(model, x0, dW, db, dx0)[1]


@torch.no_grad()
def input_jacobian(model: SNODE, x0: torch.Tensor) -> torch.Tensor:
    """``Ξ(T) = ∂x(T)/∂x(0)`` for each initial state (``K × dim × dim``), by the matrix sensitivity
    recursion ``Ξ_{k+1} = Ξ_k + h diag(σ'(z_k)) W_k Ξ_k``, ``Ξ_0 = I`` (:prf:ref:`prop-sensitivity`)."""
    x = _state(model, x0)
    K, d = x.shape
    Xi = torch.eye(d, dtype=x.dtype, device=x.device).expand(K, d, d).clone()
    W, b, h = model.W.detach(), model.b.detach(), model.h
    for k in range(model.steps):
        z = torch.addmm(b[k], x, W[k].T)
        Xi = Xi + h * model.dsigma(z)[:, :, None] * (W[k] @ Xi)
        x = x + h * model.sigma(z)
    return Xi


@torch.no_grad()
def _output_rows(model: SNODE, x0: torch.Tensor, rows: int):
    """``x(T)`` and the first ``rows`` rows of ``Ξ(T)`` (``K × rows × dim``) by the adjoint
    recursion, one backward sweep for all rows: cheaper than :func:`input_jacobian` when
    ``rows ≪ dim``."""
    X, Z = _trajectory(model, x0)
    K, d = X.shape[1:]
    lam = torch.zeros(K, rows, d, dtype=X.dtype, device=X.device)
    lam[:, torch.arange(rows), torch.arange(rows)] = 1.0
    W, h = model.W.detach(), model.h
    for k in range(model.steps - 1, -1, -1):
        lam = lam + h * (model.dsigma(Z[k])[:, None, :] * lam) @ W[k]
    return X[-1], lam


def output_covariance(model: SNODE, x0: torch.Tensor, cov) -> torch.Tensor:
    """The linearised covariance ``Ξ(T) Σ Ξ(T)ᵀ`` of ``x(T)`` under input noise of covariance
    ``Σ`` (a ``dim × dim`` matrix, or a number for ``σ² I``), per initial state (§3.5)."""
    Xi = input_jacobian(model, x0)
    if isinstance(cov, (int, float)):
        return float(_validate.nonneg(cov, "cov")) * Xi @ Xi.transpose(1, 2)
    return Xi @ cov.to(Xi.dtype) @ Xi.transpose(1, 2)


def line_search(
    model: SNODE, xT, xi, labels, *, weight_decay: float = 0.0, params=None, direction=None, trust: float = 1.0
) -> float:
    """The step ``η`` that minimises the loss of the *linearised* output ``x(T) + η ξ(T)``
    (:prf:ref:`prop-line-search`). For the ℓ2 loss it is the closed form
    ``η = −(⟨ξ, x − ŷ⟩/K + μ h⟨θ, d⟩)/(‖ξ‖²/K + μ h‖d‖²)`` (``θ = params``, ``d = direction``, the
    weight-decay terms only when ``weight_decay = μ > 0``), and 0 where the denominator vanishes
    (the quadratic is then flat or linear and has no minimiser). For cross-entropy the linearised
    loss is convex in ``η`` but need not have a minimiser (it can decrease for ever), so the step
    minimises it over the trust region ``|η| ≤ trust / ρ``, with ``ρ`` the root mean square over
    the batch of ``‖ξ_n‖`` on the class components: the root of its derivative by bisection where
    that lies inside, else the end of the region in the descent direction."""
    wd = float(_validate.nonneg(weight_decay, "weight_decay"))
    trust = float(_validate.positive(trust, "trust"))
    K = xT.shape[0]
    pd = dd = 0.0
    if wd:
        if params is None or direction is None:
            raise ValueError("weight_decay needs the params and the direction.")
        pd = wd * model.h * sum(float((p * d).sum()) for p, d in zip(params, direction))
        dd = wd * model.h * sum(float((d * d).sum()) for d in direction)
    if model.loss_kind == "l2":
        num = float((xi * (xT - model.target(labels))).sum()) / K + pd
        den = float((xi * xi).sum()) / K + dd
        return 0.0 if den <= 0 else -num / den
    labels = labels.to(xT.device)
    z, q = xT[:, : model.classes], xi[:, : model.classes]

    def slope(eta):
        p = torch.softmax(z + eta * q, 1)
        return float(((p * q).sum(1) - q[torch.arange(K), labels]).sum()) / K + pd + eta * dd

    s0 = slope(0.0)
    rms = math.sqrt(float(q.pow(2).sum()) / K)
    if s0 == 0 or (rms == 0 and dd == 0):
        return 0.0
    if rms == 0:  # the loss term does not move: only the penalty's quadratic is left
        return -s0 / dd
    edge = -math.copysign(trust / rms, s0)  # the end of the region in the descent direction
    if (slope(edge) > 0) == (s0 > 0):  # the slope keeps its sign: the minimiser is the end
        return edge
    a, b = sorted((0.0, edge))
    for _ in range(60):  # the slope is non-decreasing and changes sign in [a, b]
        m = 0.5 * (a + b)
        if slope(m) > 0:
            b = m
        else:
            a = m
    return 0.5 * (a + b)


def _dot(u, v) -> float:
    return sum(float((a * b).sum()) for a, b in zip(u, v))


def cg_beta(rule: str, g, g_prev, d_prev) -> float:
    """The nonlinear conjugate-gradient coefficient ``β`` of the new gradient ``g`` (tuples of
    tensors) with the previous gradient and direction (§3.4): Fletcher–Reeves
    ``⟨g, g⟩/⟨g₋, g₋⟩``; Polak–Ribière ``max(0, ⟨g, g − g₋⟩/⟨g₋, g₋⟩)``; Hestenes–Stiefel
    ``⟨g, g − g₋⟩/⟨d₋, g − g₋⟩``; Dai–Yuan ``⟨g, g⟩/⟨d₋, g − g₋⟩``; ``none`` 0 (steepest descent).
    ``g_prev=None`` (a restart) gives 0; so does a zero denominator."""
    if rule not in BETAS:
        raise ValueError(f"unknown beta {rule!r}; use one of {BETAS}.")
    if rule == "none" or g_prev is None:
        return 0.0
    y = [a - b for a, b in zip(g, g_prev)]
    if rule == "fletcher-reeves":
        num, den = _dot(g, g), _dot(g_prev, g_prev)
    elif rule == "polak-ribiere":
        num, den = _dot(g, y), _dot(g_prev, g_prev)
    elif rule == "hestenes-stiefel":
        num, den = _dot(g, y), _dot(d_prev, y)
    else:
        num, den = _dot(g, g), _dot(d_prev, y)
    beta = 0.0 if den == 0 else num / den
    return max(beta, 0.0) if rule == "polak-ribiere" else beta


@dataclass(frozen=True)
class NCGOptions:
    """The options of :func:`ncg_train` and :func:`ncg_train_ensemble` besides the networks, the
    data, the epochs, the seeds and the gradients: ``batch_size`` images per batch, ``iterations``
    per batch, the rule ``beta`` of :data:`BETAS`, ``weight_decay``, ``progress`` bars (labelled
    ``desc``), a ``checkpoint`` path, the hook ``after_batch`` and ``graphs`` (CUDA graphs; default:
    on when the networks are on a CUDA device). Checked when made."""

    batch_size: int = 100
    iterations: int = 6
    beta: str = "fletcher-reeves"
    weight_decay: float = 0.0
    progress: bool | None = None
    checkpoint: object = None
    after_batch: object = None
    desc: str = "NCG epoch"
    graphs: bool | None = None

    def __post_init__(self):
        _validate.positive_int(self.batch_size, "batch_size")
        _validate.positive_int(self.iterations, "iterations")
        if self.beta not in BETAS:
            raise ValueError(f"unknown beta {self.beta!r}; use one of {BETAS}.")
        _validate.nonneg(self.weight_decay, "weight_decay")


def ncg_train(model: SNODE, data: Dataset, *, epochs: int, sobolev: bool = True, seed: int = 0, **options) -> History:
    """Mini-batch nonlinear conjugate gradients (:prf:ref:`alg-ncg`): for every batch of images
    the CG memory restarts, then ``iterations`` times: the exact gradient by the discrete adjoint,
    its Sobolev representative (``sobolev``), the direction ``d = −g + β d₋`` (``beta``: a rule of
    :data:`BETAS`), the sensitivity ``ξ(T)`` of the output in that direction and the step of
    :func:`line_search`. ``options``: those of :class:`NCGOptions` (batch size 100 and 6 iterations
    by default). Returns a :class:`~labkit.train.History` (per epoch: the mean batch loss before
    each batch's first iteration and the training accuracy of those forwards); ``after_batch(model)``
    is called after each batch (the chapter records a loss trace). With ``checkpoint=path`` the
    weights, history and epoch are saved after every epoch and a later call resumes from them; a
    checkpoint of another model is refused before anything is loaded.

    The iteration is the batched one of :func:`ncg_train_ensemble` with one network: the trajectory
    of the adjoint is reused by the sensitivity, the Sobolev transform is one product, and nothing
    synchronises with the host inside an iteration. ``graphs`` (default: on when the model is on a
    CUDA device) replays the iteration as captured CUDA graphs."""
    if not isinstance(model, SNODE):
        raise TypeError(f"ncg_train trains an SNODE, got {type(model).__name__}.")
    run = _NCGRun([model], [seed], [bool(sobolev)], NCGOptions(**options), ensemble=False)
    return run.train([data], epochs)[0]


def ncg_train_ensemble(models, data: Dataset, *, seeds, sobolev=True, epochs: int, **options) -> list[History]:
    """``E`` independent :func:`ncg_train` runs in one batched pass (§3.7): network ``i`` of ``models``
    is trained on ``data`` with its own seed ``seeds[i]`` (its own order of batches) and Sobolev
    gradients where ``sobolev`` (one flag for all, or one per network), and ends with the weights,
    to rounding, of its own :func:`ncg_train`. The networks must have the same sizes, activation and
    loss. ``options``: those of :class:`NCGOptions`. One history per network; ``after_batch(i,
    model)`` after each batch, with the network's weights written back first; ``checkpoint`` holds
    all the networks and resumes them together."""
    models = list(models)
    if not models or not all(isinstance(m, SNODE) for m in models):
        raise TypeError("ncg_train_ensemble trains a non-empty list of SNODEs.")
    first = models[0]
    shape = lambda m: (m.dim, m.steps, m.T, m.activation, m.loss_kind, m.classes, m.W.dtype, m.W.device)  # noqa: E731
    if any(shape(m) != shape(first) for m in models):
        raise ValueError(
            "the networks of an ensemble must have the same dim, steps, T, activation, loss, classes, dtype and device."
        )
    seeds = list(seeds)
    flags = [bool(sobolev)] * len(models) if isinstance(sobolev, bool) else [bool(f) for f in sobolev]
    if len(seeds) != len(models) or len(flags) != len(models):
        raise ValueError(
            f"give one seed (and one sobolev flag, or one for all) per network: {len(models)} networks, "
            f"{len(seeds)} seeds, {len(flags)} flags."
        )
    options = NCGOptions(**{"desc": "NCG ensemble epoch", **options})
    return _NCGRun(models, seeds, flags, options, ensemble=True).train([data] * len(models), epochs)


class _NCGRun:
    """The loop shared by :func:`ncg_train` (one network, whose weights are updated in place) and
    :func:`ncg_train_ensemble` (stacked copies, written back after every batch and at the end):
    the checkpoint, the engine's state and one epoch of batches."""

    def __init__(self, models, seeds, flags, options: NCGOptions, *, ensemble: bool):
        self.models, self.seeds, self.flags, self.o, self.ensemble = models, seeds, flags, options, ensemble
        m0 = models[0]
        self.kind = "snode-ncg-ensemble" if ensemble else "snode-ncg"
        self.signature = {
            "dim": m0.dim,
            "steps": m0.steps,
            "T": m0.T,
            "activation": m0.activation,
            "loss": m0.loss_kind,
            "beta": options.beta,
            "sobolev": flags[0] if not ensemble else flags,
        }
        if ensemble:
            self.signature["seeds"] = list(seeds)

    def train(self, datas, epochs) -> list[History]:
        epochs = _validate.positive_int(epochs, "epochs")
        start, histories = self._restore(epochs)
        self._prepare()
        for epoch in range(start, epochs):
            loss_sum, correct, total = self._epoch(datas, epoch, epochs)
            for h_, l_, c_ in zip(histories, loss_sum.tolist(), correct.tolist()):
                h_.loss.append(l_ / total)
                h_.accuracy.append(c_ / total)
            self._write_back()
            self._save(epoch, histories)
        self._write_back()
        return histories

    def _restore(self, epochs):
        """The epoch to start from and the histories, from the checkpoint if there is one."""
        histories, path, m0 = [History() for _ in self.models], self.o.checkpoint, self.models[0]
        if path is None:
            return 0, histories
        _validate.writable(path, "checkpoint")
        if not Path(path).exists():
            return 0, histories
        state = load_checkpoint(path, map_location=m0.W.device)
        if state.get("kind") != self.kind or state.get("signature") != self.signature:
            raise ValueError(
                f"checkpoint {path} is not of this training ({state.get('signature')} != {self.signature})."
            )
        start = int(state["epoch"])
        if start > epochs:
            raise ValueError(f"checkpoint {path} is at epoch {start}, beyond epochs={epochs}.")
        if not self.ensemble:
            m0.load_state_dict(state["model"])
            return start, [History(**state["history"])]
        with torch.no_grad():
            for i, m in enumerate(self.models):
                m.W.copy_(state["W"][i])
                m.b.copy_(state["b"][i])
        return start, [History(**h) for h in state["histories"]]

    def _prepare(self):
        """The engine's state over the weights (stacked copies, or views of the one network's)."""
        m0, o = self.models[0], self.o
        if self.ensemble:
            self.W = torch.stack([m.W.detach() for m in self.models])
            self.b = torch.stack([m.b.detach() for m in self.models])
        else:  # views of the parameters: the steps update the model itself
            self.W, self.b = m0.W.data.unsqueeze(0), m0.b.data.unsqueeze(0)
        W = self.W
        self.state = _ncg_engine.State(W, self.b)
        M = _ncg_engine.sobolev_matrix(m0.steps, m0.T, dtype=W.dtype, device=W.device) if any(self.flags) else None
        mask = None if all(self.flags) else torch.tensor(self.flags, device=W.device)
        self.options = dict(M=M, mask=mask, rule=o.beta, weight_decay=float(o.weight_decay), trust=1.0)
        self.graphs = (W.device.type == "cuda") if o.graphs is None else bool(o.graphs)
        if self.graphs and W.device.type != "cuda":
            raise ValueError("graphs=True needs a model on a CUDA device.")
        self.graphed = None

    def _write_back(self):
        if self.ensemble:
            with torch.no_grad():
                for i, m in enumerate(self.models):
                    m.W.copy_(self.W[i])
                    m.b.copy_(self.b[i])

    def _step(self, x0, yb, loss_sum, correct):
        """The ``iterations`` of one batch; the loss and correct count before the first are added to
        ``loss_sum`` and ``correct`` at once (a CUDA graph's outputs are overwritten by its next replay)."""
        m0, o = self.models[0], self.o
        B = _ncg_engine.Batch(
            x0, yb, h=m0.h, sigma=m0.sigma, dsigma=m0.dsigma, loss=m0.loss_kind, classes=m0.classes, T=m0.T
        )
        if self.graphs and (self.graphed is None or self.graphed.B.x0.shape != x0.shape):
            self.graphed = _ncg_engine.Graphed(self.state, B, **self.options)
        if self.graphs and self.graphed.B.x0.shape == x0.shape:
            self.graphed.load(x0, yb)
        for j in range(o.iterations):
            if self.graphs:
                loss, ok = self.graphed(j == 0)
            else:
                loss, ok = _ncg_engine.iteration(self.state, B, restart=j == 0, **self.options)
            if j == 0:
                loss_sum += loss.double() * len(yb[0])
                correct += ok

    def _epoch(self, datas, epoch, epochs):
        m0, o, W = self.models[0], self.o, self.W
        loaders = [
            DataLoader(d, batch_size=o.batch_size, shuffle=True, generator=torch.Generator().manual_seed(s + epoch))
            for d, s in zip(datas, self.seeds)
        ]
        loss_sum = torch.zeros(len(self.models), dtype=torch.float64, device=W.device)
        correct = torch.zeros(len(self.models), dtype=torch.long, device=W.device)
        total = 0
        show = progress_enabled() if o.progress is None else o.progress
        bar = tqdm(
            zip(*loaders), total=len(loaders[0]), desc=f"{o.desc} {epoch + 1}/{epochs}", disable=not show, leave=False
        )
        for n, batches in enumerate(bar):
            x0 = torch.stack([m0.encode(xb.to(W.device)) for xb, _ in batches])
            yb = torch.stack([y.to(W.device) for _, y in batches])
            self._step(x0, yb, loss_sum, correct)
            total += len(yb[0])
            if o.after_batch is not None:
                self._after_batch()
            if show and (n % 20 == 0):
                bar.set_postfix(loss=f"{float(loss_sum[0]) / total:.4f}", acc=f"{int(correct[0]) / total:.3f}")
        return loss_sum, correct, total

    def _after_batch(self):
        if not self.ensemble:
            return self.o.after_batch(self.models[0])
        self._write_back()
        for i, m in enumerate(self.models):
            self.o.after_batch(i, m)

    def _save(self, epoch, histories):
        if self.o.checkpoint is None:
            return
        state = {"kind": self.kind, "signature": self.signature, "epoch": epoch + 1}
        if self.ensemble:
            state.update(W=self.W.clone(), b=self.b.clone(), histories=[h_.as_dict() for h_ in histories])
        else:
            state.update(model=self.models[0].state_dict(), history=histories[0].as_dict())
        save_checkpoint(self.o.checkpoint, state)


def fit_backprop(
    model: SNODE,
    data: Dataset,
    *,
    epochs: int,
    optimizer: str = "adam",
    lr: float = 1e-3,
    batch_size: int = 100,
    seed: int = 0,
    progress: bool | None = None,
    checkpoint=None,
    after_step=None,
) -> History:
    """The ResNet analogue (§3.5): the same Euler network, trained by backpropagation with Adam or
    SGD (momentum 0.9) through :func:`labkit.train.fit`, on the model's own loss; ``after_step``
    as there."""
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam' or 'sgd'.")
    lr = _validate.positive(lr, "lr")
    opt = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    )

    def step(m, xb, yb):
        xT = m.flow(m.encode(xb))
        return m.loss(xT, yb), xT[:, : m.classes]

    return fit(
        model,
        data,
        epochs,
        batch_size=batch_size,
        optimizer=opt,
        seed=seed,
        progress=progress,
        checkpoint=checkpoint,
        step_fn=step,
        after_step=after_step,
        desc=f"{optimizer} epoch",
    )


@torch.no_grad()
def sensitivity_attack(
    model: SNODE,
    x0: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 30,
    step_size: float = 0.03,
    kappa: float = 0.975,
    clamp=(-1.0, 0.0),
    generator=None,
    return_points: bool = False,
):
    """The sensitivity-guided search for small adversarial perturbations (:prf:ref:`alg-sensitivity-attack`,
    after the reference code; it reaches at most ``steps · step_size``): at each of
    ``steps`` iterations, with ``z`` the first ``classes`` components of ``x(T)`` and ``P`` the
    same rows of ``Ξ(T)``, every other class ``i`` gives the direction ``p_i = κ∇z_i − ∇z_c`` and
    the linearised distance ``r_i = (z_c − κ z_i)/‖p_i‖`` to ``κ z_i ≥ z_c``; the iterate moves a
    fixed ``step_size`` along the ``p_i`` of the smallest ``r_i`` (a random direction if none is
    finite) and is clipped to ``clamp`` (the encoded pixel range). Returns, per initial state, the
    smallest ``‖x − x0‖`` at which the prediction differed from ``labels`` (``inf`` where none did,
    0 where it already differed); with ``return_points`` also those points. The rows of ``Ξ(T)``
    come from one adjoint sweep (the same numbers as :func:`input_jacobian`'s, at a fraction of the
    cost)."""
    x0 = _state(model, x0)
    _validate.labels(labels, n=len(x0), classes=model.classes)
    steps = _validate.positive_int(steps, "steps")
    step_size = _validate.positive(step_size, "step_size")
    labels = labels.to(x0.device)
    C = model.classes
    pred = model.flow(x0)[:, :C].argmax(1)
    best = torch.where(pred != labels, 0.0, math.inf).to(x0.dtype)
    points = x0.clone()
    x = x0.clone()
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    rows = torch.arange(len(x0), device=x0.device)
    for _ in range(steps):
        xT, P = _output_rows(model, x, C)
        z = xT[:, :C]
        c = z.argmax(1)
        p = kappa * P - P[rows, c][:, None, :]
        norms = p.norm(dim=2)
        r = (z[rows, c][:, None] - kappa * z) / norms
        r[rows, c] = math.inf
        r = torch.where(torch.isfinite(r), r, torch.full_like(r, math.inf))
        i = r.argmin(1)
        direction = p[rows, i] / norms[rows, i][:, None]
        lost = ~torch.isfinite(r[rows, i]) | ~torch.isfinite(direction).all(1)
        if lost.any():
            rand = torch.randn(int(lost.sum()), x.shape[1], generator=gen).to(x)
            direction[lost] = rand / rand.norm(dim=1, keepdim=True)
        x = (x + step_size * direction).clamp(*clamp)
        dist = (x - x0).norm(dim=1)
        flipped = (model.flow(x)[:, :C].argmax(1) != labels) & (dist < best)
        best = torch.where(flipped, dist, best)
        points[flipped] = x[flipped]
    return (best, points) if return_points else best


def smoothness(model: SNODE) -> float:
    """The discrete ``∫₀ᵀ ‖∂_t W‖_F² + ‖∂_t b‖² dt``: ``Σ_k (‖W_{k+1} − W_k‖² + ‖b_{k+1} − b_k‖²)/h``."""
    with torch.no_grad():
        dW, db = model.W[1:] - model.W[:-1], model.b[1:] - model.b[:-1]
        return float((dW.pow(2).sum() + db.pow(2).sum()) / model.h)


@torch.no_grad()
def lipschitz_bound(model: SNODE) -> float:
    """A sound upper bound of the ℓ2 Lipschitz constant of the logits as a function of the images
    (§3.5, used by the bench of §6.1): the Euler step ``x ↦ x + hσ(W_k x + b_k)`` has Jacobian
    ``I + h D W_k`` with ``D`` diagonal in ``[0, s]`` (``s`` the activation's largest slope), so its
    constant is at most ``1 + h s ‖W_k‖₂``; :meth:`SNODE.encode` and taking the first ``classes``
    components have norm 1. The norms are computed exactly in float64."""
    norms = torch.linalg.matrix_norm(model.W.detach().double(), ord=2)
    return float(torch.prod(1 + model.h * activations.get(model.activation).slopes[1] * norms))


class OnImages(nn.Module):
    """An :class:`SNODE` trained on images block-averaged by ``factor`` (:func:`downsample`), as a
    classifier of the full-size images (§6.1): ``model(downsample(x, factor))``. Block averaging
    has ℓ2 norm ``1/factor``, so :meth:`lipschitz_bound` is :func:`lipschitz_bound` over
    ``factor``."""

    def __init__(self, model: SNODE, factor: int = 2):
        super().__init__()
        self.model, self.factor = model, _validate.positive_int(factor, "factor")

    def forward(self, images):
        return self.model(downsample(images, self.factor))

    def lipschitz_bound(self) -> float:
        return lipschitz_bound(self.model) / self.factor


class _Field(nn.Module):
    """``σ(W(t)x + b(t))`` with the cell weights interpolated linearly between cell midpoints."""

    def __init__(self, model: SNODE):
        super().__init__()
        self.model = model

    def forward(self, t, x):
        m = self.model
        u = (float(t.detach()) / m.h - 0.5) if m.steps > 1 else 0.0
        i = min(max(int(math.floor(u)), 0), m.steps - 2) if m.steps > 1 else 0
        w = min(max(u - i, 0.0), 1.0) if m.steps > 1 else 0.0
        j = min(i + 1, m.steps - 1)
        W = (1 - w) * m.W[i] + w * m.W[j]
        b = (1 - w) * m.b[i] + w * m.b[j]
        return m.sigma(x @ W.T + b)


def adaptive_gradient(model: SNODE, x0, target, *, rtol: float = 1e-3, atol: float = 1e-3, adjoint: bool = True):
    """Optimise-then-discretise (§3.6): the gradient ``(gW, gb)`` of the loss of the *continuous*
    ODE whose weights interpolate the cells linearly in ``t``, solved by dopri5 through
    ``torchdiffeq`` with the tolerances given, differentiated by its continuous adjoint
    (``adjoint=True``) or by backpropagation through the solver's steps. Only as accurate as the
    tolerances, and the gradient of another model than the Euler network."""
    from torchdiffeq import odeint, odeint_adjoint

    x = _state(model, x0)
    field = _Field(model)
    t = torch.tensor([0.0, model.T], dtype=x.dtype)
    # the interpolated weights have kinks at the cell midpoints: the solver must step onto them
    kinks = {"jump_t": (torch.arange(model.steps, dtype=x.dtype) + 0.5) * model.h}
    rtol, atol = _validate.positive(rtol, "rtol"), _validate.positive(atol, "atol")
    if adjoint:
        out = odeint_adjoint(
            field,
            x,
            t,
            rtol=rtol,
            atol=atol,
            method="dopri5",
            adjoint_params=(model.W, model.b),
            options=kinks,
            adjoint_options=kinks,
        )
    else:
        out = odeint(field, x, t, rtol=rtol, atol=atol, method="dopri5", options=kinks)
    loss = model.loss(out[-1], target)
    return torch.autograd.grad(loss, (model.W, model.b))


def reference_iteration(model, x0, labels, memory, *, beta: str, sobolev: bool, weight_decay: float = 0.0):
    """One NCG iteration (:prf:ref:`alg-ncg`) of one network composed of this module's reference
    functions, as :func:`ncg_train` computed it before its batched engine (a sweep per function,
    the Thomas solve, Python floats for β and η): the baseline of the tests and of
    ``scripts/bench_ncg_overhead.py``. ``memory`` is ``{}`` at a restart and is updated in place."""
    params = (model.W.detach(), model.b.detach())
    g = adjoint_gradient(model, x0, labels, weight_decay=weight_decay)
    if sobolev:
        g = tuple(sobolev_gradient(t, model.T) for t in g)
    g_prev, d_prev = memory.get("g"), memory.get("d")
    b_ = cg_beta(beta, g, g_prev, d_prev)
    d = tuple(-a + b_ * p for a, p in zip(g, d_prev)) if d_prev is not None and b_ else tuple(-a for a in g)
    xT, xi = _sensitivity(model, x0, dW=d[0], db=d[1])
    eta = line_search(model, xT, xi, labels, weight_decay=weight_decay, params=params, direction=d)
    with torch.no_grad():
        model.W.add_(d[0], alpha=eta)
        model.b.add_(d[1], alpha=eta)
    memory.update(g=g, d=d)
