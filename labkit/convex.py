"""Convex potential layers: 1-Lipschitz residual networks with certified l2 robustness (§4.2).

A *convex potential layer* (CPL, Meunier et al. 2022) is one explicit Euler step of the gradient
flow of the convex potential ``f(x) = Σ_i ψ(w_iᵀx + b_i)`` (``ψ' = σ``)::

    z = x − h · Wᵀ σ(W x + b),      h = 2 / ‖W‖₂²,

which is 1-Lipschitz in l2 for every ``h ≤ 2/‖W‖₂²`` (:prf:ref:`thm-cpl`). ``W`` is a
matrix (:class:`ConvexPotentialLayer`) or a zero-padded convolution, whose adjoint ``Wᵀ`` is the
transposed convolution with the same kernel, padding and stride (:class:`ConvexPotentialConv2d`).
The SDP-based Lipschitz layer (SLL, Araujo et al. 2023) replaces ``h`` by a diagonal scaling
``2T`` with ``WᵀTW ⪯ I`` from a Gershgorin bound (:class:`SLLLayer`, :class:`SLLConv2d`); CPL is
the special case ``T = I/‖W‖²``.

**How ‖W‖ is obtained, and why the certificate is sound.** In training mode a CPL takes a few power
iteration steps per forward pass from a persistent vector (stored in the module's state), and the
gradient flows through the estimate ``σ̂ = ‖W u‖`` as in the authors' code; the step is
``2/(σ̂² + 10⁻⁴)``. The power iteration approaches ``‖W‖`` *from below*, so that step may be slightly
too long. In evaluation mode the layer therefore does not use it: it uses an **upper bound** of
``‖W‖``, computed in float64 and cached until the weights change: the exact spectral norm for a
matrix, and for a convolution the norm of the circular convolution with the same kernel on a torus
large enough that no wrap-around reaches the image (the zero-padded operator is a restriction of
it, so its norm is no larger; :func:`conv_norm_upper_bound`; on a GPU the largest singular value
of each frequency's matrix is bounded from above by Gram iteration, :func:`spectral_norm_bound`,
instead of an SVD). Every trained model evaluated here is
therefore 1-Lipschitz up to floating-point rounding, whatever the power iteration did.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import _validate, activations, attacks, audit, certify, experiment
from . import lipschitz as lip
from . import train as _train
from .runtime import progress_enabled, resolve_device

__all__ = [
    "ConvexPotentialLayer",
    "ConvexPotentialConv2d",
    "SLLLayer",
    "SLLConv2d",
    "conv_norm_upper_bound",
    "spectral_norm_bound",
    "GRAM_TOLERANCE",
    "conv_matrix",
    "all_active_norm",
    "jacobian_norms",
    "ChannelPad",
    "FeaturePad",
    "SumPool2d",
    "FirstK",
    "LLN",
    "Center",
    "LipschitzNet",
    "cpl_dense",
    "cpl_conv",
    "PRESETS",
    "preset",
    "preset_parameters",
    "baseline_mlp",
    "margin_loss",
    "triangular_lr",
    "Augmented",
    "SPEEDUPS",
    "backend_flags",
    "fit",
    "certified_radii",
    "evaluate_robustness",
    "EPS_MNIST",
    "EPS_CIFAR",
]

_EPS_TRAIN = 1e-4  # added to σ̂² in training mode, as in the authors' code
#: The activations a convex potential layer may use: non-decreasing with slope at most 1.
_MONOTONE = (*(a.module for a in activations.TABLE.values() if a.slopes[0] >= 0 and a.slopes[1] <= 1), nn.Identity)


def _activation(act):
    """Elementwise, non-decreasing, slope ≤ 1 (§4.6): ReLU, tanh, sigmoid,
    softplus, identity, or leaky ReLU with slope in [0, 1]."""
    act = nn.ReLU() if act is None else act
    if isinstance(act, nn.LeakyReLU) and 0 <= act.negative_slope <= 1:
        return act
    if not isinstance(act, _MONOTONE):
        raise TypeError(
            f"the activation inside a convex potential layer must be elementwise, non-decreasing "
            f"and 1-Lipschitz (ReLU, LeakyReLU(0≤α≤1), Tanh, Sigmoid, Softplus); got {act!r}. "
            "GroupSort/MaxMin can only go between layers."
        )
    return act


def _init_uniform(t: torch.Tensor, fan_in: int, generator=None):
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        t.copy_((torch.rand(t.shape, generator=generator) * 2 - 1) * bound)


def _normalize(t):
    return t / t.norm().clamp_min(1e-30)


class CPLBase(nn.Module):
    """Shared machinery of the CPLs ``x − h Wᵀσ(Wx + b)`` (:prf:ref:`thm-cpl`): the step size from the
    power iteration or the sound norm bound, and the forward map; subclasses give ``W`` (``_op``)
    and ``Wᵀ`` (:meth:`adjoint`)."""

    def __init__(self, activation, step, train_iters):
        super().__init__()
        self.activation = _activation(activation)
        self.step = _validate.positive(step, "step")
        self.train_iters = _validate.positive_int(train_iters, "train_iters")
        self._bound_cache = None  # (weight copy, input shape, value) of the certified norm

    # -- the norm -------------------------------------------------------------------------------
    def _u_shape(self, x):
        raise NotImplementedError

    def _ensure_u(self, shape, like):
        if self.u.shape != torch.Size(shape):
            gen = torch.Generator().manual_seed(0)
            self.u = _normalize(torch.randn(shape, generator=gen, dtype=like.dtype)).to(like.device)
            self._bound_cache = None

    def power_norm(self, iters: int = 100, shape=None) -> torch.Tensor:
        """Power iteration from the stored vector (updated in place): a lower bound of ``‖W‖₂`` that
        grows towards it. Returns ``‖W u‖`` with the gradient attached (§4.3)."""
        iters = _validate.positive_int(iters, "iters")
        if shape is not None:
            self._ensure_u(shape, self.weight)
        if self.u.numel() == 0:
            raise RuntimeError("the layer has not seen an input yet: give shape=(1, C, H, W).")
        with torch.no_grad():
            u = self.u.to(self.weight.dtype)
            for _ in range(iters):
                v = _normalize(self._op(u, bias=False))
                u = _normalize(self.adjoint(v, u.shape))
            self.u.copy_(u)
        return self._op(self.u.to(self.weight.dtype), bias=False).norm()

    def norm_bound(self) -> float:
        """An upper bound of ``‖W‖₂`` in float64 (exact for a matrix), used by the evaluation-mode
        step, so the certificate is sound. It is cached with a copy of the weight it was computed
        from and recomputed whenever the weight's *values* differ from that copy: an in-place edit
        (``layer.weight.data.mul_(1.5)``, pruning, weight averaging) changes neither the tensor's
        version counter nor its storage, so a cache keyed on those would certify a stale bound."""
        weight, shape = self.weight.detach(), tuple(self.u.shape)
        cached = self._bound_cache
        if (
            cached is None
            or cached[1] != shape
            or cached[0].shape != weight.shape
            or cached[0].device != weight.device
            or not torch.equal(cached[0], weight)
        ):
            self._bound_cache = (weight.clone(), shape, self._compute_bound())
        return self._bound_cache[2]

    def step_size(self, x=None) -> torch.Tensor | float:
        """The step ``h``: ``step/(σ̂² + 10⁻⁴)`` from the power iteration in training mode (with its
        gradient), ``step/bound²`` from :meth:`norm_bound` in evaluation mode."""
        if x is not None:
            self._ensure_u(self._u_shape(x), x)
        if self.training:
            self._bound_cache = None
            sigma = self.power_norm(self.train_iters)
            return self.step / (sigma**2 + _EPS_TRAIN)
        return self.step / self.norm_bound() ** 2

    def forward(self, x):
        h = self.step_size(x)
        return x - h * self.adjoint(self.activation(self._op(x)), x.shape)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "u"
        if key in state_dict and state_dict[key].shape != self.u.shape:
            self.u = torch.empty_like(state_dict[key])
        self._bound_cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ConvexPotentialLayer(CPLBase):
    """Dense CPL ``z = x − (2/‖W‖²) Wᵀσ(Wx + b)`` with ``W`` of shape ``(hidden, features)``
    (:prf:ref:`thm-cpl`). ``step`` is the numerator (2 is the largest 1-Lipschitz one;
    ``step=2.2`` builds the counterexample of the chapter). ``train_iters`` power steps per
    training forward; evaluation uses the exact norm (see the module docstring)."""

    def __init__(
        self,
        features: int,
        hidden: int | None = None,
        *,
        activation=None,
        step: float = 2.0,
        train_iters: int = 1,
        generator=None,
    ):
        features = _validate.positive_int(features, "features")
        hidden = features if hidden is None else _validate.positive_int(hidden, "hidden")
        super().__init__(activation, step, train_iters)
        self.features, self.hidden = features, hidden
        self.weight = nn.Parameter(torch.empty(hidden, features))
        self.bias = nn.Parameter(torch.empty(hidden))
        _init_uniform(self.weight, features, generator)
        _init_uniform(self.bias, features, generator)
        self.register_buffer("u", torch.empty(0))
        self._ensure_u((features,), self.weight)

    def _u_shape(self, x):
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"expected input of shape (N, {self.features}), got {tuple(x.shape)}.")
        return (self.features,)

    def _op(self, x, bias=True):
        return F.linear(x, self.weight, self.bias if bias else None)

    def adjoint(self, y, shape):
        """``Wᵀ y``, the exact adjoint of the layer's linear map, for an input of shape ``shape``."""
        return y @ self.weight

    def _compute_bound(self):
        W = self.weight.detach().double()
        G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
        return float(torch.linalg.eigvalsh(G)[-1].clamp_min(0).sqrt())

    def extra_repr(self):
        return f"features={self.features}, hidden={self.hidden}, step={self.step}"


def _transpose_padding(in_size, kernel, stride, padding):
    out = (in_size + 2 * padding - kernel) // stride + 1
    return in_size - ((out - 1) * stride - 2 * padding + kernel)


#: The largest relative overestimate that the Gram iteration of spectral_norm_bound allows.
GRAM_TOLERANCE = 1e-3


def _gram_iterations(rank: int, tolerance: float) -> int:
    # t squarings overestimate by at most rank^(1/2^(t+1)) (all singular values equal: the worst case)
    if rank <= 1:
        return 0
    return max(0, math.ceil(math.log2(math.log(rank) / math.log1p(tolerance))) - 1)


def spectral_norm_bound(mats: torch.Tensor, *, method: str = "auto", tolerance: float = GRAM_TOLERANCE):
    """Upper bounds of the largest singular value of each matrix of a batch ``(..., m, n)`` (real or
    complex), in float64 on the matrices' device; a tensor of shape ``(...)``.

    ``method="svd"``: the exact values from an SVD. ``method="gram"``: Gram iteration (Delattre
    et al., ICML 2023): with ``G₀ = A`` and ``G_{k+1} = G_kᴴG_k``, ``σ₁(A)^{2^t} = σ₁(G_t) ≤
    ‖G_t‖_F``, so ``‖G_t‖_F^{1/2^t}`` bounds ``σ₁(A)`` from above for every ``t``; it exceeds it
    by at most the factor ``min(m, n)^{1/2^{t+1}}``, and ``t`` is chosen to make that
    ``1 + tolerance``. Each ``G_k`` is rescaled to unit Frobenius norm and the scale is kept as a
    logarithm, so nothing overflows. It needs only matrix products, which is what a GPU does
    fast; batched small SVDs are slow there. ``"auto"``: Gram iteration on a CUDA device, else the
    SVD on the CPU. Both are exact up to float64 rounding (a relative error of order 10⁻¹⁴)."""
    if method not in ("auto", "svd", "gram"):
        raise ValueError(f"method must be 'auto', 'svd' or 'gram', got {method!r}.")
    if mats.ndim < 2:
        raise ValueError(f"expected a batch of matrices (..., m, n), got shape {tuple(mats.shape)}.")
    tolerance = _validate.positive(tolerance, "tolerance")
    A = mats.detach()
    if method == "auto" and A.device.type != "cuda":  # an SVD, on the CPU (float64 everywhere)
        method, device, A = "svd", A.device, A.cpu()
    else:
        device = A.device
    A = A.to(torch.complex128) if A.is_complex() else A.double()
    if method == "svd":
        return torch.linalg.matrix_norm(A, ord=2).to(device)
    if A.shape[-2] < A.shape[-1]:  # the same singular values, the smaller Gram matrices
        A = A.mH
    iters = _gram_iterations(min(A.shape[-2:]), tolerance)
    log_scale = torch.zeros(A.shape[:-2], dtype=torch.float64, device=A.device)
    G = A
    for _ in range(iters):
        r = torch.linalg.matrix_norm(G)  # Frobenius
        zero = r == 0
        r = torch.where(zero, torch.ones_like(r), r)
        G = G / r[..., None, None]
        log_scale = torch.where(zero, log_scale, 2 * (log_scale + r.log()))
        G = G.mH @ G
    last = torch.linalg.matrix_norm(G)
    return torch.where(last == 0, torch.zeros_like(last), ((log_scale + last.log()) / 2**iters).exp())


def conv_norm_upper_bound(weight: torch.Tensor, input_size, padding: int, *, method: str = "auto") -> float:
    """Upper bound of the l2 operator norm of the zero-padded convolution with kernel ``weight``
    ``(C_out, C_in, k, k)`` on ``input_size = (H, W)`` images (any stride): the norm of the circular
    convolution on an ``(H + 2p) × (W + 2p)`` torus, i.e. the largest singular value of the kernel's
    2-D DFT over all frequencies, in float64 (:prf:ref:`prop-convnorm`). The
    zero-padded operator is that circular one between an isometric embedding and a coordinate
    restriction; a stride only drops output rows. It is computed on the kernel's device with
    :func:`spectral_norm_bound` (``method``): exactly on the CPU, within a factor ``1 + 10⁻³``
    above on a GPU, without copying the kernel to the host."""
    H, W = input_size
    N1, N2 = H + 2 * padding, W + 2 * padding
    if weight.shape[-2] > N1 or weight.shape[-1] > N2:
        raise ValueError("kernel larger than the padded input.")
    # the kernel is real, so the matrices at ω and −ω are conjugate, with the same singular values:
    # the half-spectrum of rfft2 holds them all
    K = torch.fft.rfft2(weight.detach().double(), s=(N1, N2))  # (C_out, C_in, N1, N2 // 2 + 1)
    return float(spectral_norm_bound(K.permute(2, 3, 0, 1), method=method).max())


def conv_matrix(op, shape, dtype=torch.float64) -> torch.Tensor:
    """The matrix of a linear map ``op`` on tensors of ``shape`` (without batch), column by column,
    applied to ``dtype`` basis vectors: for exact SVD checks on small inputs (§4.3)."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=dtype).reshape(n, *shape)
    with torch.no_grad():
        return op(eye).reshape(n, -1).T


class ConvexPotentialConv2d(CPLBase):
    """Convolutional CPL: ``W`` is the zero-padded convolution with kernel ``(hidden, channels, k, k)``,
    ``Wᵀ`` the transposed convolution with the same kernel, padding and stride (its exact adjoint),
    so the layer maps ``(N, channels, H, W)`` to the same shape (§4.3). The power iteration
    runs on the actual input size (its vector is re-initialised when the size changes). The
    authors' hidden width is 5 (``conv_size``), not ``channels``: say which you use."""

    def __init__(
        self,
        channels: int,
        hidden: int | None = None,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        activation=None,
        step: float = 2.0,
        train_iters: int = 1,
        generator=None,
    ):
        channels = _validate.positive_int(channels, "channels")
        hidden = channels if hidden is None else _validate.positive_int(hidden, "hidden")
        k = _validate.positive_int(kernel_size, "kernel_size")
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}.")
        super().__init__(activation, step, train_iters)
        self.channels, self.hidden, self.kernel_size = channels, hidden, k
        self.stride, self.padding = _validate.positive_int(stride, "stride"), k // 2
        self.weight = nn.Parameter(torch.empty(hidden, channels, k, k))
        self.bias = nn.Parameter(torch.empty(hidden))
        fan_in = channels * k * k
        _init_uniform(self.weight, fan_in, generator)
        _init_uniform(self.bias, fan_in, generator)
        self.register_buffer("u", torch.empty(0))

    def _u_shape(self, x):
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected input of shape (N, {self.channels}, H, W), got {tuple(x.shape)}.")
        return (1, self.channels, x.shape[2], x.shape[3])

    def _op(self, x, bias=True):
        return F.conv2d(x, self.weight, self.bias if bias else None, stride=self.stride, padding=self.padding)

    def adjoint(self, y, shape):
        """``Wᵀ y``, the exact adjoint of the layer's linear map, for an input of shape ``shape``."""
        op = tuple(_transpose_padding(s, self.kernel_size, self.stride, self.padding) for s in shape[-2:])
        return F.conv_transpose2d(y, self.weight, stride=self.stride, padding=self.padding, output_padding=op)

    def _compute_bound(self):
        if self.u.numel() == 0:
            raise RuntimeError("the layer has not seen an input yet; run one forward pass first.")
        return conv_norm_upper_bound(self.weight, self.u.shape[-2:], self.padding)

    def extra_repr(self):
        return (
            f"channels={self.channels}, hidden={self.hidden}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, step={self.step}"
        )


class SLLBase(nn.Module):
    """Shared machinery of the SLLs ``x − 2 Wᵀ T σ(Wx + b)`` (:prf:ref:`thm-sll`); subclasses give
    ``W`` and ``Wᵀ`` (:meth:`adjoint`)."""

    def __init__(self, activation, hidden, generator, step):
        super().__init__()
        self.activation = _activation(activation)
        self.step = _validate.positive(step, "step")
        self.theta = nn.Parameter(torch.randn(hidden, generator=generator))
        self._scaling_cache = None  # (copies of W and θ, t) in evaluation mode

    def scaling(self) -> torch.Tensor:
        """The diagonal ``t`` with ``t_i = 1 / Σ_j |WWᵀ|_ij q_j/q_i``, ``q = exp(θ)`` (Gershgorin;
        :prf:ref:`thm-sll`): then ``WᵀTW ⪯ I`` exactly, for every value of the parameters.

        In evaluation mode ``t`` is a constant (no gradient to the parameters), cached with copies
        of ``W`` and ``θ`` and recomputed whenever their values differ from the copies (as for
        CPL's norm bound): an attack that calls the layer on one point at a time would otherwise
        pay for the Gram matrix ``WWᵀ`` on every call."""
        if self.training:
            self._scaling_cache = None
            return self._compute_scaling()
        params = (self.weight.detach(), self.theta.detach())
        cached = self._scaling_cache
        if cached is None or not all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in zip(cached[0], params)
        ):
            with torch.no_grad():
                self._scaling_cache = (tuple(p.clone() for p in params), self._compute_scaling())
        return self._scaling_cache[1]

    def _compute_scaling(self) -> torch.Tensor:
        q = torch.exp(self.theta)
        row = (self._abs_gram() @ q) / q
        return 1.0 / (row + 1e-12)  # a larger denominator only shortens the step: still sound

    def forward(self, x):
        self._check_input(x)
        t = self.scaling()
        pre = self.activation(self._op(x))
        return x - self.step * self.adjoint(self._scale(pre, t), x.shape)


class SLLLayer(SLLBase):
    """Dense SLL ``z = x − 2 Wᵀ T σ(Wx + b)`` with ``T`` from its ``scaling()`` (:prf:ref:`thm-sll`).
    Exactly 1-Lipschitz without any norm estimate; CPL is the case ``T = I/‖W‖²``. ``step`` replaces
    the factor 2 (larger values break the guarantee, for tests)."""

    def __init__(self, features: int, hidden: int | None = None, *, activation=None, step: float = 2.0, generator=None):
        features = _validate.positive_int(features, "features")
        hidden = features if hidden is None else _validate.positive_int(hidden, "hidden")
        super().__init__(activation, hidden, generator, step)
        self.features, self.hidden = features, hidden
        self.weight = nn.Parameter(torch.empty(hidden, features))
        self.bias = nn.Parameter(torch.empty(hidden))
        nn.init.xavier_normal_(self.weight, generator=generator)
        _init_uniform(self.bias, features, generator)

    def _check_input(self, x):
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"expected input of shape (N, {self.features}), got {tuple(x.shape)}.")

    def _abs_gram(self):
        return (self.weight @ self.weight.T).abs()

    def _op(self, x, bias=True):
        return F.linear(x, self.weight, self.bias if bias else None)

    def adjoint(self, y, shape):
        """``Wᵀ y``, the exact adjoint of the layer's linear map, for an input of shape ``shape``."""
        return y @ self.weight

    @staticmethod
    def _scale(pre, t):
        return pre * t


class SLLConv2d(SLLBase):
    """Convolutional SLL (stride 1, zero padding ``k//2``): ``|WWᵀ|`` is bounded by the absolute
    autocorrelation of the kernel summed over all offsets, a bound valid for zero padding
    (:prf:ref:`thm-sll`)."""

    def __init__(
        self,
        channels: int,
        hidden: int | None = None,
        kernel_size: int = 3,
        *,
        activation=None,
        step: float = 2.0,
        generator=None,
    ):
        channels = _validate.positive_int(channels, "channels")
        hidden = channels if hidden is None else _validate.positive_int(hidden, "hidden")
        k = _validate.positive_int(kernel_size, "kernel_size")
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}.")
        super().__init__(activation, hidden, generator, step)
        self.channels, self.hidden, self.kernel_size, self.padding = channels, hidden, k, k // 2
        self.weight = nn.Parameter(torch.empty(hidden, channels, k, k))
        self.bias = nn.Parameter(torch.empty(hidden))
        nn.init.xavier_normal_(self.weight, generator=generator)
        _init_uniform(self.bias, channels * k * k, generator)

    def _check_input(self, x):
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected input of shape (N, {self.channels}, H, W), got {tuple(x.shape)}.")

    def _abs_gram(self):
        k = self.kernel_size
        auto = F.conv2d(self.weight, self.weight, padding=k - 1)  # (hidden, hidden, 2k-1, 2k-1)
        return auto.abs().sum((2, 3))

    def _op(self, x, bias=True):
        return F.conv2d(x, self.weight, self.bias if bias else None, padding=self.padding)

    def adjoint(self, y, shape):
        """``Wᵀ y``, the exact adjoint of the layer's linear map, for an input of shape ``shape``."""
        return F.conv_transpose2d(y, self.weight, padding=self.padding)

    @staticmethod
    def _scale(pre, t):
        return pre * t.view(1, -1, 1, 1)


def jacobian_norms(layer: ConvexPotentialLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact ``‖J(x)‖₂`` of a dense CPL at each row of ``x`` in evaluation mode, with
    ``J(x) = I − h Wᵀ D(x) W`` and ``D(x) = diag(σ'(Wx + b))`` (proof of :prf:ref:`thm-cpl`), and the
    number of units with ``σ' > 0`` at each row: ``(norms, active)``, both of length ``len(x)``.
    Where the layer is differentiable these are its local Lipschitz numbers; §4.1 sets them beside
    random difference quotients at the same points."""
    if not isinstance(layer, ConvexPotentialLayer):
        raise TypeError(f"jacobian_norms takes a dense ConvexPotentialLayer, got {type(layer).__name__}.")
    _validate.batch(x)
    if x.ndim != 2 or x.shape[1] != layer.features:
        raise ValueError(f"x must have shape (batch, {layer.features}), got {tuple(x.shape)}.")
    was_training = layer.training
    layer.eval()
    try:
        W, b = layer.weight.detach().to(x.dtype), layer.bias.detach().to(x.dtype)
        h = float(layer.step_size())
        pre = (x.detach() @ W.T + b).requires_grad_(True)
        with torch.enable_grad():
            slopes = torch.autograd.grad(layer.activation(pre).sum(), pre)[0]
        J = torch.eye(W.shape[1], dtype=x.dtype) - h * torch.einsum("ki,bk,kj->bij", W, slopes, W)
        return torch.linalg.matrix_norm(J, 2), (slopes > 0).sum(1)
    finally:
        layer.train(was_training)


def all_active_norm(layer: nn.Module, shape) -> float:
    """``‖J‖₂`` of a residual layer's Jacobian where every unit is active (``σ' = 1``), i.e. of
    ``I − S`` with ``S = h WᵀW`` (CPL) or ``2WᵀTW`` (SLL), computed exactly in evaluation mode on
    inputs of ``shape`` (no batch). The CPL theorem says ≤ 1 exactly when ``h ≤ 2/‖W‖²``; at ``h =
    2.2/‖W‖²`` it is 1.2 (§4.1). Random-pair estimates miss this."""
    import copy

    probe = copy.deepcopy(layer).double().eval()
    probe.activation = nn.Identity()
    with torch.no_grad():
        zero = torch.zeros((1, *shape), dtype=torch.float64)
        if isinstance(probe, CPLBase):
            probe._ensure_u((shape[0],) if len(shape) == 1 else (1, *shape), zero)
        base = probe(zero)
        J = conv_matrix(lambda t: probe(t) - base, tuple(shape))
    return float(torch.linalg.matrix_norm(J, ord=2))


# -- norm-preserving pieces -------------------------------------------------------------------------


class ChannelPad(nn.Module):
    """Append zero channels up to ``channels``: an isometric embedding (norm exactly 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = _validate.positive_int(channels, "channels")

    def forward(self, x):
        extra = self.channels - x.shape[1]
        if extra < 0:
            raise ValueError(f"input has {x.shape[1]} channels, more than {self.channels}.")
        return F.pad(x, (0, 0, 0, 0, 0, extra)) if x.ndim == 4 else F.pad(x, (0, extra))


class FeaturePad(ChannelPad):
    """Flatten and append zero features up to ``features`` (an isometric embedding)."""

    def forward(self, x):
        return super().forward(x.flatten(1))


class SumPool2d(nn.Module):
    """Sum over ``k × k`` blocks divided by ``k`` (not ``k²``): operator norm exactly 1, while average
    pooling has norm ``1/k`` and would shrink every margin by ``k`` (§4.6)."""

    def __init__(self, kernel_size: int = 4):
        super().__init__()
        self.kernel_size = _validate.positive_int(kernel_size, "kernel_size")

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size) * self.kernel_size


class FirstK(nn.Module):
    """Keep the first ``k`` coordinates (a projection, 1-Lipschitz): the logits of a model whose
    certificate uses the √2 rule."""

    def __init__(self, k: int):
        super().__init__()
        self.k = _validate.positive_int(k, "k")

    def forward(self, x):
        return x[:, : self.k]


class LLN(nn.Module):
    """Last-layer normalisation: ``f_i(z) = ŵ_iᵀ z + b_i`` with unit rows ``ŵ_i = w_i/‖w_i‖``. Not
    1-Lipschitz as a map (its norm can reach √K); ``f_y − f_j`` is ``‖ŵ_y − ŵ_j‖``-Lipschitz, which
    the pairwise certificate uses (:prf:ref:`prop-cert`)."""

    def __init__(self, features: int, classes: int, generator=None):
        super().__init__()
        self.weight = nn.Parameter(
            torch.empty(_validate.positive_int(classes, "classes"), _validate.positive_int(features, "features"))
        )
        self.bias = nn.Parameter(torch.zeros(classes))
        nn.init.xavier_normal_(self.weight, generator=generator)

    def normalized_weight(self):
        return self.weight / self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, z):
        return F.linear(z, self.normalized_weight(), self.bias)

    def pair_norms(self) -> torch.Tensor:
        """``‖ŵ_i − ŵ_j‖₂`` for all class pairs (a ``K × K`` matrix)."""
        W = self.normalized_weight().detach()
        return torch.cdist(W, W)


class Center(nn.Module):
    """Subtract a fixed mean (a translation: Lipschitz constant 1; dividing by a standard deviation
    would multiply the constant by ``1/min std``, so it is not offered)."""

    def __init__(self, mean):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))

    def forward(self, x):
        return x - self.mean


class LipschitzNet(nn.Module):
    """A classifier ``head ∘ body`` whose ``body`` is 1-Lipschitz by construction (§4.3): the
    head is :class:`FirstK` (√2 certificate) or :class:`LLN` (pairwise certificate)."""

    def __init__(self, body: nn.Sequential, head: nn.Module):
        super().__init__()
        if not isinstance(head, (FirstK, LLN)):
            raise TypeError("head must be FirstK or LLN.")
        self.body, self.head = body, head

    def forward(self, x):
        return self.head(self.body(x))

    def parameters_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _layer(kind, conv, width, hidden, generator, kernel_size=3):
    if kind == "cpl":
        return (
            ConvexPotentialConv2d(width, hidden, kernel_size, generator=generator)
            if conv
            else ConvexPotentialLayer(width, hidden, generator=generator)
        )
    if kind == "sll":
        return (
            SLLConv2d(width, hidden, kernel_size, generator=generator)
            if conv
            else SLLLayer(width, hidden, generator=generator)
        )
    raise ValueError(f"layer must be 'cpl' or 'sll', got {kind!r}.")


def _head(head, features, classes, generator):
    if head == "first":
        if classes > features:
            raise ValueError("the first-K head needs at least as many features as classes.")
        return FirstK(classes)
    if head == "lln":
        return LLN(features, classes, generator)
    raise ValueError(f"head must be 'first' or 'lln', got {head!r}.")


def cpl_dense(
    in_features: int = 784,
    *,
    width: int = 1024,
    depth: int = 4,
    hidden: int = 512,
    classes: int = 10,
    layer: str = "cpl",
    head: str = "first",
    seed: int = 0,
) -> LipschitzNet:
    """Dense network for MNIST-sized inputs: flatten, zero-pad to ``width``, ``depth`` CPL (or SLL)
    layers of ``hidden`` units, head (§4.4)."""
    if width < in_features:
        raise ValueError(f"width ({width}) must be at least in_features ({in_features}).")
    gen = torch.Generator().manual_seed(seed)
    body = nn.Sequential(FeaturePad(width), *[_layer(layer, False, width, hidden, gen) for _ in range(depth)])
    return LipschitzNet(body, _head(head, width, classes, gen))


def cpl_conv(
    in_shape=(3, 32, 32),
    *,
    channels: int = 16,
    conv_depth: int = 5,
    conv_hidden: int | None = None,
    pool: int = 4,
    dense_depth: int = 2,
    dense_hidden: int = 512,
    classes: int = 10,
    layer: str = "cpl",
    head: str = "lln",
    mean=None,
    seed: int = 0,
) -> LipschitzNet:
    """The authors' architecture (§4.3): centre, zero-pad channels to
    ``channels``, ``conv_depth`` convolutional layers of ``conv_hidden`` hidden channels (default
    ``channels``; the authors use 5), sum-pool ``pool`` (norm 1), flatten, ``dense_depth`` dense
    layers of ``dense_hidden`` units, head."""
    C, H, W = in_shape
    if H % pool or W % pool:
        raise ValueError(f"pool {pool} must divide the image size {H}×{W}.")
    gen = torch.Generator().manual_seed(seed)
    mean = torch.zeros(C, 1, 1) if mean is None else torch.as_tensor(mean, dtype=torch.float32).view(C, 1, 1)
    features = channels * (H // pool) * (W // pool)
    body = nn.Sequential(
        Center(mean),
        ChannelPad(channels),
        *[_layer(layer, True, channels, conv_hidden or channels, gen) for _ in range(conv_depth)],
        SumPool2d(pool),
        nn.Flatten(),
        *[_layer(layer, False, features, dense_hidden, gen) for _ in range(dense_depth)],
    )
    return LipschitzNet(body, _head(head, features, classes, gen))


#: Model presets. ``mnist`` and ``cifar`` are the CPU-sized book models; ``cpl-s`` … ``cpl-xl`` are
#: the published sizes (width / conv layers / dense layers from the SLL code of the same group:
#: conv hidden width 5, dense hidden 2048; CPL-XL's 236 M parameters match it).
PRESETS = {
    "mnist": dict(builder="dense", width=1024, depth=4, hidden=512, head="first"),
    "cifar": dict(
        builder="conv", channels=16, conv_depth=4, conv_hidden=16, dense_depth=2, dense_hidden=512, head="lln"
    ),
    "cpl-s": dict(
        builder="conv", channels=45, conv_depth=20, conv_hidden=5, dense_depth=7, dense_hidden=2048, head="lln"
    ),
    "cpl-m": dict(
        builder="conv", channels=60, conv_depth=30, conv_hidden=5, dense_depth=10, dense_hidden=2048, head="lln"
    ),
    "cpl-l": dict(
        builder="conv", channels=90, conv_depth=50, conv_hidden=5, dense_depth=10, dense_hidden=2048, head="lln"
    ),
    "cpl-xl": dict(
        builder="conv", channels=120, conv_depth=70, conv_hidden=5, dense_depth=15, dense_hidden=2048, head="lln"
    ),
}


def preset_parameters(name: str, *, in_shape=(3, 32, 32), classes: int = 10, layer: str = "cpl") -> int:
    """Number of trainable parameters of a preset, counted without building it (CPL-XL has 236 M)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}.")
    p = PRESETS[name]
    extra = 1 if layer == "sll" else 0  # SLL's θ, one per hidden unit
    if p["builder"] == "dense":
        F_, m = p["width"], p["hidden"]
        body = p["depth"] * (m * F_ + m * (1 + extra))
    else:
        C, h, k = p["channels"], p["conv_hidden"], 3
        F_ = C * (in_shape[1] // 4) * (in_shape[2] // 4)
        m = p["dense_hidden"]
        body = p["conv_depth"] * (h * C * k * k + h * (1 + extra)) + p["dense_depth"] * (m * F_ + m * (1 + extra))
    return body + (classes * F_ + classes if p["head"] == "lln" else 0)


def preset(name: str, **overrides) -> LipschitzNet:
    """Build a model from :data:`PRESETS` (keyword ``overrides`` replace its entries, e.g.
    ``layer="sll"``, ``mean=...``, ``classes=100``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}.")
    cfg = {**PRESETS[name], **overrides}
    builder = cfg.pop("builder")
    return cpl_dense(**cfg) if builder == "dense" else cpl_conv(**cfg)


def baseline_mlp(
    in_features: int = 784, *, width: int = 1024, depth: int = 4, classes: int = 10, seed: int = 0
) -> nn.Sequential:
    """An unconstrained ReLU network of about the size of the ``mnist`` preset, to set beside it:
    its only certificate is the product of layer norms (:func:`labkit.lipschitz.upper_bound`)."""
    torch.manual_seed(seed)
    sizes = [in_features] + [width] * depth
    layers = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], classes))


# -- training -----------------------------------------------------------------------------------------


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float = 0.7) -> torch.Tensor:
    """The authors' loss: PyTorch's multi-class hinge ``(1/K) Σ_{j≠y} max(0, m − f_y + f_j)``,
    batch mean (note the ``1/K``; §4.3)."""
    return F.multi_margin_loss(logits, labels, margin=margin)


def triangular_lr(optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The authors' per-step schedule, piecewise linear through (0, 0), (0.4 T, 1), (0.8 T, 1/20),
    (T, 0) times the base rate; evaluated at step midpoints, so neither the first nor the last step
    runs at rate 0 (the released code loses its last epoch to that)."""
    T = _validate.positive_int(total_steps, "total_steps")

    def factor(k):
        s = min((k + 0.5) / T, 1.0)
        if s <= 0.4:
            return s / 0.4
        if s <= 0.8:
            return 1.0 + (s - 0.4) / 0.4 * (1 / 20 - 1.0)
        return (1 - s) / 0.2 / 20

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Augmented(Dataset):
    """Random crop of the reflect-padded image and horizontal flip (the authors' CIFAR
    augmentation); draws from torch's global generator, which :func:`labkit.train.fit` seeds per
    epoch, so runs repeat."""

    def __init__(self, data: Dataset, pad: int = 4, flip: bool = True):
        self.data, self.pad, self.flip = data, pad, flip

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        if self.pad:
            H, W = x.shape[-2:]
            xp = F.pad(x[None], (self.pad,) * 4, mode="reflect")[0]
            a, b = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = xp[:, a : a + H, b : b + W]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x, y


#: The variants of the training step that :func:`fit` can switch on (``speedups``), for a GPU's epoch
#: time (§4.5): cuDNN's autotuning of convolution algorithms, TF32 matrix products, the channels-last
#: memory format, bfloat16 autocast of the forward pass, and the fused Adam step. None of them touches
#: the certificate: the weights stay float32 and the bounds and radii are computed outside autocast.
SPEEDUPS = ("cudnn-benchmark", "tf32", "channels-last", "bf16", "fused-adam")


@contextlib.contextmanager
def backend_flags(speedups=()):
    """Switch on cuDNN's autotuning and TF32 matrix products when ``speedups`` names them, and restore
    the previous settings afterwards."""
    on = set(speedups)
    saved = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.benchmark = "cudnn-benchmark" in on or saved[0]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = "tf32" in on or saved[1]
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def fit(
    model,
    data: Dataset,
    epochs: int,
    *,
    lr: float = 1e-3,
    margin: float | None = 0.7,
    batch_size: int = 256,
    augment: bool = False,
    seed: int = 0,
    device=None,
    progress=None,
    speedups=(),
):
    """Train with the authors' recipe (§4.3): Adam, triangular learning rate per
    step, multi-margin loss with ``margin`` (``None``: cross-entropy, for the baseline), optional
    augmentation. ``speedups``: variants of :data:`SPEEDUPS` for the training step only (the model is
    left in the channels-last format if asked; its weights stay float32). Returns
    :class:`labkit.train.History`."""

    epochs = _validate.positive_int(epochs, "epochs")
    batch_size = _validate.positive_int(batch_size, "batch_size")
    unknown = set(speedups) - set(SPEEDUPS)
    if unknown:
        raise ValueError(f"unknown speedups {sorted(unknown)}; use some of {SPEEDUPS}.")
    loss_fn = (
        F.cross_entropy
        if margin is None
        else functools.partial(margin_loss, margin=_validate.positive(margin, "margin"))
    )
    dev = resolve_device(device)
    channels_last = "channels-last" in speedups
    if channels_last:
        model.to(memory_format=torch.channels_last)
    fused = {"fused": True} if "fused-adam" in speedups else {}
    opt = torch.optim.Adam(model.parameters(), lr=_validate.positive(lr, "lr"), **fused)
    steps = epochs * math.ceil(len(data) / batch_size)
    sched = triangular_lr(opt, steps)
    data = Augmented(data) if augment else data
    step_fn = None
    if channels_last or "bf16" in speedups:

        def step_fn(m, xb, yb):
            if channels_last and xb.ndim == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled="bf16" in speedups):
                out = m(xb)
            out = out.float()
            return loss_fn(out, yb), out

    with backend_flags(speedups):
        return _train.fit(
            model,
            data,
            epochs,
            batch_size=batch_size,
            optimizer=opt,
            loss_fn=loss_fn,
            seed=seed,
            device=dev,
            progress=progress,
            step_fn=step_fn,
            after_step=_train.every_step(sched),
        )


# -- certificates and evaluation ----------------------------------------------------------------------


def certified_radii(model, x: torch.Tensor, y: torch.Tensor, *, lipschitz: float | None = None) -> torch.Tensor:
    """Certified l2 radius of each example (0 when misclassified), in evaluation mode (:prf:ref:`prop-cert`).

    For a :class:`LipschitzNet` the body's constant is 1: a :class:`FirstK` head uses the √2 rule
    :func:`labkit.certify.certified_radius`, an :class:`LLN` head the pairwise rule
    :func:`labkit.certify.lln_radius`. Any other model needs ``lipschitz``, an upper bound of its
    logits' constant."""

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        model.train(was)
    if isinstance(model, LipschitzNet):
        if lipschitz is not None:
            raise ValueError("a LipschitzNet certifies itself; do not pass lipschitz.")
        if isinstance(model.head, LLN):
            return certify.lln_radius(logits, y, model.head.pair_norms().to(logits), 1.0)
        return certify.certified_radius(logits, y, 1.0)
    if lipschitz is None:
        raise ValueError("give lipschitz, an upper bound of the model's Lipschitz constant.")
    return certify.certified_radius(logits, y, lipschitz)


def evaluate_robustness(
    model,
    test: Dataset,
    eps_list,
    *,
    lipschitz: float | None = None,
    pgd_steps: int = 50,
    n_attack: int | None = None,
    n_lower: int = 64,
    lower_steps: int = 100,
    n_audit: int = 0,
    audit_steps: int = 50,
    device=None,
    progress=None,
    **fields,
) -> dict:
    """Clean accuracy, certified accuracy and l2-PGD accuracy at each radius of ``eps_list``, and a
    lower bound of the Lipschitz constant (adversarial pair search on ``n_lower`` test images) of
    the certified map: the body of a :class:`LipschitzNet` (certified constant 1), else the whole
    model (certified constant ``lipschitz``) (§4.4), as a
    :func:`labkit.experiment.result` (empirical curve ``pgd``). PGD runs on the first ``n_attack``
    test images (default all); ``broken`` counts, per radius, the attacked images that were
    certified at that radius and still fooled there (a sound certificate gives 0). With
    ``n_audit > 0`` the first ``n_audit`` certified images are also attacked by an independent
    library at 0.99 of their radii (:func:`labkit.audit.certificates`, ``audit_steps`` steps), and
    its report is the result's ``audit``. ``fields`` go to the result."""
    dev = resolve_device(device)
    model = model.to(dev)
    if len(test) == 0:
        raise ValueError("test is empty: there is nothing to certify or attack.")
    x = _train.inputs(test).to(dev)
    y = torch.as_tensor([int(test[i][1]) for i in range(len(test))], device=dev)
    radii = torch.cat(
        [certified_radii(model, xb, yb, lipschitz=lipschitz) for xb, yb in zip(x.split(512), y.split(512))]
    )
    clean = _train.evaluate(model, test, device=dev)["accuracy"]
    model.eval()  # the attacked model and the check below use the sound evaluation norm
    eps_values = [_validate.nonneg(e, "eps") for e in eps_list]
    steps = _validate.positive_int(pgd_steps, "pgd_steps")
    n = len(y) if n_attack is None else min(_validate.positive_int(n_attack, "n_attack"), len(y))
    gen = torch.Generator().manual_seed(0)
    correct, broken = {e: 0 for e in eps_values}, {e: 0 for e in eps_values}
    show = progress_enabled() if progress is None else progress
    batches = list(zip(x[:n].split(256), y[:n].split(256), radii[:n].split(256)))
    with tqdm(total=len(batches) * len(eps_values), desc="PGD", disable=not show, leave=False) as bar:
        for xb, yb, rb in batches:
            for e in eps_values:
                adv = attacks.pgd(model, xb, yb, e, norm="l2", steps=steps, generator=gen)
                with torch.no_grad():
                    ok = model(adv).argmax(1) == yb
                correct[e] += int(ok.sum())
                broken[e] += int(((rb > e) & ~ok).sum())
                bar.update()
    target = model.body if isinstance(model, LipschitzNet) else model
    lower = lip.lower_bound(target, x[:n_lower], steps=lower_steps, generator=torch.Generator().manual_seed(0))
    body = isinstance(model, LipschitzNet)
    if n_audit:
        fields["audit"] = audit.certificates(model, x, y, radii, limit=n_audit, steps=audit_steps)
    return experiment.result(
        radii=eps_values,
        clean=clean,
        norm="l2",
        empirical={"pgd": [correct[e] / n for e in eps_values]},
        certified=certify.accuracy_at(radii, eps_values),
        lipschitz={"lower": lower, "upper": 1.0 if body else float(lipschitz), "map": "body" if body else "network"},
        attack={"pgd": {"steps": steps, "restarts": 1, "points": n}},
        broken=[broken[e] for e in eps_values],
        n_attack=n,
        median_radius=float(radii.median()),
        parameters=sum(p.numel() for p in model.parameters()),
        **fields,
    )


# -- the chapter's radii ------------------------------------------------------------------------------

#: The l2 radii of Chapter 4 for MNIST and Fashion-MNIST (1.58 is the usual MNIST radius).
EPS_MNIST = (0.5, 1.0, 1.58)
#: The l2 radii of Chapter 4 for CIFAR-10 (36, 72 and 108 over 255).
EPS_CIFAR = (36 / 255, 72 / 255, 108 / 255)
