"""Structure-preserving networks: layers as steps of a non-autonomous ODE (§5.2.1).

A network is a composition of steps ``Ψ^{h_k}`` of numerical methods for ``ẋ = F(x, θ(t))`` with
``θ`` piecewise constant (Celledoni et al. 2023). A step that preserves a property of the vector
field gives a layer with that property. Two such properties are built here:

* **Non-expansiveness** from steps that are *not* all non-expansive (§5.2.3). The non-expansive step
  ``x ↦ x − g A_cᵀσ(A_c x + b)`` with ``A_cᵀA_c = I`` and slopes of ``σ`` in ``[a, 1]`` contracts by
  :func:`contraction_factor`; the expansive step ``x ↦ x + e σ(A_e x + b)`` with ``‖A_e‖ ≤ 1``
  expands by at most ``1 + e``; with ``e`` at :func:`expansive_step_bound` the pair is 1-Lipschitz.
* **A linear invariant** (§5.5): :class:`MassPreservingNet` keeps ``𝟙ᵀx`` whatever its weights.

The five training regimes of the authors' code (``davidemurari/StructuredNeuralNetworks``, the folders of
``Adversarial Robustness/CIFAR10``) are :data:`PRESETS` (``resnet``, ``naive``, ``nonexpansive``,
``switching``, ``flexible``), with the departures that §5.3 lists; a sixth,
``certified``, makes the 1-Lipschitz claim a theorem: exactly orthogonal ``A_c``
(:class:`OrthogonalConv2d`, :class:`OrthogonalLinear`), hard-normalised ``A_e``, lift and head, and
:meth:`StructuredNet.lipschitz_bound`, a sound upper bound of the whole classifier's constant in
pixel space (the input normalisation folded in), which every preset reports and which
:func:`labkit.certify.certified_radius` turns into certificates.

**Soundness of the bounds.** Every ``lipschitz_bound`` is computed in float64 from the current
weights, whatever the projections did: the exact spectral norm of a matrix, the
:func:`labkit.convex.conv_norm_upper_bound` of a zero-padded convolution, and for the orthogonal
operators the largest singular value of their exact (float64) matrices per frequency. A step's
factor uses only what holds for *its* operator: the contraction of :func:`contraction_factor`
(``tight=True``) needs ``A_cᵀA_c = I``, which only the orthogonal operators have; any other
operator gets the general ``max(1, g‖A‖² − 1)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from . import _validate
from . import train as _train
from .convex import Augmented, conv_norm_upper_bound

__all__ = [
    "contraction_factor",
    "expansive_step_bound",
    "flexible_step_bound",
    "DenseOp",
    "ConvOp",
    "OrthogonalLinear",
    "OrthogonalConv2d",
    "NonExpansiveStep",
    "ExpansiveStep",
    "ResidualStep",
    "SwitchingBlock",
    "Lift",
    "Head",
    "SwitchingOptions",
    "StructuredNet",
    "Recipe",
    "PRESETS",
    "preset",
    "hinge_loss",
    "fit",
    "block_jacobian_norms",
    "MassPreservingNet",
    "sir_field",
    "sir_data",
    "EPS_PAPER",
    "CIFAR_MEAN",
    "CIFAR_STD",
]

#: The ℓ2 radii of the authors' CIFAR-10 evaluation (their ``main.ipynb``), 0, 8/255, 16/255, 36/255, 0.3,
#: 0.5, 0.6, 0.8 and 1.
EPS_PAPER = (0.0, 8 / 255, 16 / 255, 36 / 255, 0.3, 0.5, 0.6, 0.8, 1.0)
#: The normalisation of the authors' CIFAR-10 training (their ``training.py``; their attack wrapper in
#: ``Switch prescribed/main.ipynb`` used other values, a pitfall of §5.7).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


# -- the step-size rules -----------------------------------------------------------------------------


def _slope(a) -> float:
    a = float(a)
    if not (math.isfinite(a) and 0 < a <= 1):
        raise ValueError(f"a, the smallest slope of the activation, must lie in (0, 1], got {a!r}.")
    return a


def _substeps(substeps) -> int:
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps must be an integer S ≥ 1, got {substeps!r}.")
    return substeps


def _step(g, name="g") -> float:
    g = float(g)
    if not (math.isfinite(g) and g >= 0):
        raise ValueError(f"{name} must be a finite step size ≥ 0, got {g!r}.")
    return g


def contraction_factor(g: float, a: float, *, tight: bool = False) -> float:
    """Lipschitz constant of the non-expansive step ``x ↦ x − g Aᵀσ(Ax + b)`` for ``AᵀA = I`` and an
    activation with slopes in ``[a, 1]`` (:prf:ref:`lem-nonexpansive`).

    The paper's factor ``√(1 − 2ag + g²)`` (default) is what its switching rule is built on. Since
    ``AᵀDA`` is symmetric with spectrum in ``[a, 1]``, the exact factor is
    ``max(|1 − g|, |1 − ag|)`` (``tight=True``), never larger."""
    a, g = _slope(a), _step(g)
    if tight:
        return max(abs(1 - g), abs(1 - a * g))
    return math.sqrt(1 - 2 * a * g + g * g)


def expansive_step_bound(h_c: float, a: float = 0.5, substeps: int = 2) -> float:
    """The largest ``h_e`` for which ``S`` sub-steps of (expansive ``h_e/S``, then non-expansive
    ``h_c/S``) are 1-Lipschitz by the paper's factor (:prf:ref:`thm-switching`):
    ``h_e = S · (1/√(1 − 2a h_c/S + (h_c/S)²) − 1)``. For ``a = ½, S = 2`` it is the reference code's
    ``4/√(h_c² − 2h_c + 4) − 2``. ``h_c`` must lie in ``(0, 2aS)``, where the step contracts."""
    a, S = _slope(a), _substeps(substeps)
    h_c = _step(h_c, "h_c")
    if not 0 < h_c < 2 * a * S:
        raise ValueError(
            f"h_c must lie in (0, 2aS) = (0, {2 * a * S:g}) for the non-expansive step to contract, got {h_c!r}."
        )
    return S * (1 / contraction_factor(h_c / S, a) - 1)


def flexible_step_bound(h_c: float, a: float = 0.5, substeps: int = 2) -> float:
    """The coupled condition that the flexible regime's clamps lack (§5.2): the largest
    ``h_e`` for which ``S`` non-expansive sub-steps ``h_c/S`` followed by one expansive step
    ``x ↦ x + h_e A_cᵀReLU(A_c x + b)`` with the same orthogonal ``A_c`` are 1-Lipschitz, by the
    exact factor: ``h_e = max(|1 − h_c/S|, 1 − a h_c/S)^(−S) − 1``. ``h_c ∈ (0, 2S)``."""
    a, S = _slope(a), _substeps(substeps)
    h_c = _step(h_c, "h_c")
    if not 0 < h_c < 2 * S:
        raise ValueError(f"h_c must lie in (0, 2S) = (0, {2 * S}) for the sub-steps to contract, got {h_c!r}.")
    return contraction_factor(h_c / S, a, tight=True) ** (-S) - 1


# -- linear operators ---------------------------------------------------------------------------------


def _orthogonal(rows, cols, generator):
    q, r = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    return q if rows >= cols else q.T


class _Op(nn.Module):
    """A linear operator ``A`` with its exact adjoint and a sound float64 bound of ``‖A‖₂``."""

    orthogonal = False

    def forward(self, x, bias: bool = True):
        raise NotImplementedError

    def adjoint(self, y):
        raise NotImplementedError

    def norm_bound(self) -> float:
        raise NotImplementedError

    def orthogonality(self) -> torch.Tensor:
        """The authors' penalty term for this operator (zero for an exactly orthogonal one)."""
        return torch.zeros((), device=next(self.parameters()).device)

    @torch.no_grad()
    def rescale(self, factor: float) -> None:
        """Divide the weight by ``factor`` (a projection after an optimiser step)."""
        self.weight.div_(factor)


class DenseOp(_Op):
    """``A x + b`` with ``A`` of shape ``(out, in)``; delta-orthogonal initialisation (a random
    orthogonal matrix times ``gain``, the authors' ``calculate_gain``)."""

    def __init__(self, features: int, out: int | None = None, *, bias=True, gain=1.0, generator=None):
        super().__init__()
        features = _validate.positive_int(features, "features")
        out = features if out is None else _validate.positive_int(out, "out")
        self.weight = nn.Parameter(_orthogonal(out, features, generator) * gain)
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None
        self.in_shape, self.out_shape = (features,), (out,)

    def forward(self, x, bias=True):
        return F.linear(x, self.weight, self.bias if bias else None)

    def adjoint(self, y):
        return y @ self.weight

    def norm_bound(self):
        return float(torch.linalg.matrix_norm(self.weight.detach().cpu().double(), ord=2))

    def orthogonality(self):
        W = self.weight
        return (W @ W.T - torch.eye(W.shape[0], device=W.device, dtype=W.dtype)).norm()


class ConvOp(_Op):
    """Zero-padded ``k × k`` convolution on ``(channels, H, W)`` images (``size = (H, W)``), adjoint
    the transposed convolution; delta-orthogonal initialisation (only the centre tap, a random
    orthogonal matrix times ``gain``), as the authors'."""

    def __init__(
        self,
        channels: int,
        out: int | None = None,
        size=(32, 32),
        *,
        kernel_size=3,
        bias=True,
        gain=1.0,
        generator=None,
    ):
        super().__init__()
        channels = _validate.positive_int(channels, "channels")
        out = channels if out is None else _validate.positive_int(out, "out")
        k = _validate.positive_int(kernel_size, "kernel_size")
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}.")
        weight = torch.zeros(out, channels, k, k)
        weight[:, :, k // 2, k // 2] = _orthogonal(out, channels, generator) * gain
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None
        self.size, self.padding = tuple(int(s) for s in size), k // 2
        self.in_shape, self.out_shape = (channels, *self.size), (out, *self.size)

    def _check(self, x):
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            shape = ", ".join(map(str, self.in_shape))
            raise ValueError(f"expected input of shape (N, {shape}), got {tuple(x.shape)}.")

    def forward(self, x, bias=True):
        self._check(x)
        return F.conv2d(x, self.weight, self.bias if bias else None, padding=self.padding)

    def adjoint(self, y):
        return F.conv_transpose2d(y, self.weight, padding=self.padding)

    def norm_bound(self):
        return conv_norm_upper_bound(self.weight, self.size, self.padding)

    def orthogonality(self):
        K = self.weight
        k = K.shape[-1]
        gram = F.conv2d(K, K, padding=k - 1)  # (out, out, 2k−1, 2k−1): correlations of the filters
        target = torch.zeros_like(gram)
        target[:, :, k - 1, k - 1] = torch.eye(K.shape[0], device=K.device, dtype=K.dtype)
        return (gram - target).norm()


class OrthogonalLinear(_Op):
    """An exactly orthogonal ``n × n`` matrix ``A = exp(V − Vᵀ)`` (plus a bias): ``AᵀA = I`` for every
    value of the trained ``V`` (up to rounding)."""

    orthogonal = True

    def __init__(self, features: int, *, bias=True, scale=0.5, generator=None):
        super().__init__()
        n = _validate.positive_int(features, "features")
        self.skew = nn.Parameter(torch.randn(n, n, generator=generator) * scale / math.sqrt(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None
        self.in_shape = self.out_shape = (n,)
        self._cache = None

    @property
    def weight(self):
        if self._cache is not None:
            return self._cache
        return torch.linalg.matrix_exp(self.skew - self.skew.T)

    @contextlib.contextmanager
    def cached(self):
        """Compute ``A`` once for the forward maps and adjoints inside a switching block, which
        applies ``A`` and ``Aᵀ`` ``2S`` times per forward pass (the gradient still reaches ``V``)."""
        self._cache = torch.linalg.matrix_exp(self.skew - self.skew.T)
        try:
            yield self
        finally:
            self._cache = None

    def forward(self, x, bias=True):
        return F.linear(x, self.weight, self.bias if bias else None)

    def adjoint(self, y):
        return y @ self.weight

    def norm_bound(self):
        V = self.skew.detach().cpu().double()
        return float(torch.linalg.matrix_norm(torch.linalg.matrix_exp(V - V.T), ord=2))

    def rescale(self, factor):  # an orthogonal operator needs no projection
        pass


class OrthogonalConv2d(_Op):
    """An exactly orthogonal convolution on ``(channels, H, W)`` images with circular padding: the
    Cayley transform ``Q(ω) = (I + Â(ω))⁻¹(I − Â(ω))`` of the skew-Hermitian ``Â = K̂ − K̂ᴴ`` at each
    frequency ``ω`` of the image's 2-D DFT, where ``K̂`` is the DFT of a trained ``k × k`` kernel
    (Trockman & Kolter 2021). Each ``Q(ω)`` is unitary, so the operator is orthogonal on the whole
    image space: its unrolled matrix ``M`` has ``MᵀM = I``. The adjoint applies ``Q(ω)ᴴ``."""

    orthogonal = True

    def __init__(self, channels: int, size=(32, 32), *, kernel_size=3, bias=True, generator=None):
        super().__init__()
        C = _validate.positive_int(channels, "channels")
        k = _validate.positive_int(kernel_size, "kernel_size")
        self.size = tuple(int(s) for s in size)
        if k > min(self.size):
            raise ValueError(f"kernel_size {k} is larger than the image {self.size}.")
        self.kernel = nn.Parameter(torch.randn(C, C, k, k, generator=generator) / (C * k * k))
        self.bias = nn.Parameter(torch.zeros(C)) if bias else None
        self.in_shape = self.out_shape = (C, *self.size)
        self._cache = None

    def _q(self, dtype=None):
        K = self.kernel if dtype is None else self.kernel.to(dtype)
        if K.shape[-1] == 1:  # a 1 × 1 kernel: the same orthogonal matrix at every frequency and pixel
            A = K[:, :, 0, 0] - K[:, :, 0, 0].T
            eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
            return torch.linalg.solve(eye + A, eye - A)
        H, W = self.size
        Kf = torch.fft.rfft2(K, s=(H, W)).permute(2, 3, 0, 1)  # (H, W//2+1, C, C)
        A = Kf - Kf.conj().transpose(-1, -2)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        return torch.linalg.solve(eye + A, eye - A)

    def _transform(self, x, q):
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            shape = ", ".join(map(str, self.in_shape))
            raise ValueError(f"expected input of shape (N, {shape}), got {tuple(x.shape)}.")
        if q.ndim == 2:
            return F.conv2d(x, q.to(x.dtype)[:, :, None, None])
        xf = torch.fft.rfft2(x).permute(2, 3, 1, 0)  # (H, W//2+1, C, N)
        yf = (q.to(xf.dtype) @ xf).permute(3, 2, 0, 1)
        return torch.fft.irfft2(yf, s=self.size)

    @contextlib.contextmanager
    def cached(self):
        """Compute the matrices ``Q(ω)`` once for the forward maps and adjoints inside the block
        (a switching block applies ``A_c`` and ``A_cᵀ`` ``2S`` times per forward pass)."""
        self._cache = self._q()
        try:
            yield self
        finally:
            self._cache = None

    def forward(self, x, bias=True):
        q = self._cache if self._cache is not None else self._q()
        y = self._transform(x, q)
        return y + self.bias.view(1, -1, 1, 1) if bias and self.bias is not None else y

    def adjoint(self, y):
        q = self._cache if self._cache is not None else self._q()
        return self._transform(y, q.conj().transpose(-1, -2))

    def norm_bound(self):
        with torch.no_grad():  # on the CPU, per frequency
            return float(torch.linalg.matrix_norm(self.cpu_copy()._q(torch.float64), ord=2).max())

    def cpu_copy(self):
        copy = OrthogonalConv2d.__new__(OrthogonalConv2d)
        nn.Module.__init__(copy)
        copy.kernel, copy.size = self.kernel.detach().cpu(), self.size
        return copy

    def rescale(self, factor):  # an orthogonal operator needs no projection
        pass


# -- steps ------------------------------------------------------------------------------------------


def _act(a):
    """LeakyReLU with slope ``a`` (slopes in ``[a, 1]``); ``a = 0`` is ReLU."""
    return nn.ReLU() if a == 0 else nn.LeakyReLU(a)


def _nonexp_factor(g, op, a):
    """Sound Lipschitz bound of ``x ↦ x − g Aᵀσ(Ax + b)`` with slopes of ``σ`` in ``[a, 1]``."""
    if op.orthogonal:  # AᵀA = I (to rounding): AᵀDA is symmetric with spectrum in [a, 1]
        return max(abs(1 - g), abs(1 - a * g))
    return max(1.0, g * op.norm_bound() ** 2 - 1)


class NonExpansiveStep(nn.Module):
    """``x ↦ x − h Aᵀσ(Ax + b)``, one explicit Euler step of the gradient flow of a convex potential
    (the CPL step), with a trainable ``h = |u|`` clamped by ``project()`` to ``clamp`` (the
    authors' ``[0, 1.9]``; :prf:ref:`lem-nonexpansive`). ``a`` is the activation's smallest slope
    (0: ReLU)."""

    def __init__(self, op: _Op, *, step: float = 1.0, a: float = 0.0, clamp=(0.0, 1.9)):
        super().__init__()
        self.op, self.a, self.clamp = op, float(a), clamp
        self.activation = _act(self.a)
        self.u = nn.Parameter(torch.tensor(float(step)))

    def step_size(self):
        return self.u.abs()

    def forward(self, x):
        return x - self.step_size() * self.op.adjoint(self.activation(self.op(x)))

    @torch.no_grad()
    def project(self):
        self.u.clamp_(*self.clamp)

    def lipschitz_bound(self) -> float:
        return _nonexp_factor(float(self.step_size().detach()), self.op, self.a)

    def penalty(self):
        return self.op.orthogonality()


class ExpansiveStep(nn.Module):
    """``x ↦ x + h σ(Ax + b)`` with ``A`` square: Lipschitz at most ``1 + h‖A‖``
    (:prf:ref:`lem-expansive`)."""

    def __init__(self, op: _Op, *, step: float = 0.1, a: float = 0.5):
        super().__init__()
        if op.in_shape != op.out_shape:
            raise ValueError(f"an expansive step needs a square operator, got {op.in_shape} → {op.out_shape}.")
        self.op, self.a = op, float(a)
        self.activation = _act(self.a)
        self.u = nn.Parameter(torch.tensor(float(step)))

    def step_size(self):
        return self.u.abs()

    def forward(self, x):
        return x + self.step_size() * self.activation(self.op(x))

    def lipschitz_bound(self) -> float:
        return 1 + float(self.step_size().detach()) * self.op.norm_bound()

    def penalty(self):
        return self.op.orthogonality()


class ResidualStep(nn.Module):
    """``x ↦ s (x + B ReLU(Ax + b))``: the unconstrained ResNet layer (``s = 1``) and the naively
    constrained one (``s = ½``) of the paper's first two regimes."""

    def __init__(self, op_a: _Op, op_b: _Op, *, scale: float = 1.0):
        super().__init__()
        self.op_a, self.op_b, self.scale = op_a, op_b, float(scale)

    def forward(self, x):
        return self.scale * (x + self.op_b(F.relu(self.op_a(x))))

    def lipschitz_bound(self) -> float:
        return self.scale * (1 + self.op_a.norm_bound() * self.op_b.norm_bound())

    def penalty(self):
        return self.op_a.orthogonality() + self.op_b.orthogonality()


RULES = ("prescribed", "flexible", "coupled")


class SwitchingBlock(nn.Module):
    """A pair of an expansive and a non-expansive step, each split into ``substeps`` sub-steps, with
    trainable step sizes (:prf:ref:`thm-switching`; the authors' ``Switch prescribed`` and ``Switch flexible``
    networks):

    * ``rule="prescribed"``: ``S`` times ``x ← x + (h_e/S) r σ(A_e x + b_e)``, then
      ``x ← x − (h_c/S) A_cᵀσ(A_c x + b_c)``, with σ = LeakyReLU(``a``). ``project()`` sets
      ``h_c ← clip(|u_c|, 0.3, 1)``, ``h_e ← expansive_step_bound(h_c, a, S)`` and ``r ← clip(r, 0, 1)``,
      as the authors' code does for ``a = ½, S = 2``.
    * ``rule="flexible"``: ``S`` sub-steps ``x ← x − (h_c/S) A_cᵀσ(A_c x + b_c)``, then
      ``x ← x + h_e A_cᵀReLU(A_c x + b_c)`` with the same ``A_c``; the authors' clamps only:
      ``u_c ∈ [0.11, 1.89]``, ``u_e ∈ [−1.9, 0.05]``, ``h_e = |u_e|``. These do **not** make the pair
      1-Lipschitz (``h_c = 0.11, h_e = 1.9`` expands).
    * ``rule="coupled"``: the flexible block with, in addition, ``h_e ≤``
      :func:`flexible_step_bound` ``(h_c, a, S)``, the condition the code lacks.

    ``orthogonal=True`` makes ``A_c`` exactly orthogonal (the certified preset; convolutional:
    :class:`OrthogonalConv2d` with ``orthogonal_kernel``); ``normalized=True``
    divides ``A_e`` by ``max(1, ‖A_e‖)`` (a sound bound) in ``project()``. ``conv`` and ``size``
    choose convolutions on ``(width, *size)`` images instead of matrices on ``width`` features."""

    def __init__(
        self,
        width: int,
        *,
        conv: bool = True,
        size=(32, 32),
        a: float = 0.5,
        substeps: int = 2,
        rule: str = "prescribed",
        orthogonal: bool = False,
        normalized: bool = False,
        h_c: float = 1.0,
        h_e: float = 0.1,
        orthogonal_kernel: int = 3,
        generator=None,
    ):
        super().__init__()
        width = _validate.positive_int(width, "width")
        self.a, self.substeps = _slope(a), _substeps(substeps)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
        self.rule, self.normalized = rule, bool(normalized)
        lo, hi = (0.3, 1.0) if rule == "prescribed" else (0.11, 1.89)
        if not lo <= h_c <= hi:
            raise ValueError(f"h_c must lie in [{lo}, {hi}] for the {rule} rule, got {h_c!r}.")
        gain = math.sqrt(2 / (1 + self.a**2))

        def op(orth):
            if orth:
                if conv:
                    return OrthogonalConv2d(width, size, kernel_size=orthogonal_kernel, generator=generator)
                return OrthogonalLinear(width, generator=generator)
            if conv:
                return ConvOp(width, size=size, gain=gain, generator=generator)
            return DenseOp(width, gain=gain, generator=generator)

        self.op_c = op(orthogonal)
        self.act_c = _act(self.a)
        self.u_c = nn.Parameter(torch.tensor(float(h_c)))
        if rule == "prescribed":
            self.op_e = op(False)
            self.act_e = _act(self.a)
            self.r = nn.Parameter(torch.tensor(1.0))
            self.u_e = nn.Parameter(torch.tensor(expansive_step_bound(h_c, self.a, self.substeps)))
        else:
            self.act_e = nn.ReLU()
            self.u_e = nn.Parameter(torch.tensor(-float(h_e)))
        self.project()

    @property
    def h_c(self) -> float:
        return float(self.u_c.detach().abs())

    @property
    def h_e(self) -> float:
        return float(self.u_e.detach().abs())

    def _contract(self, x, g):
        return x - g * self.op_c.adjoint(self.act_c(self.op_c(x)))

    def forward(self, x):
        if isinstance(self.op_c, (OrthogonalConv2d, OrthogonalLinear)):
            with self.op_c.cached():
                return self._forward(x)
        return self._forward(x)

    def _forward(self, x):
        S = self.substeps
        g = self.u_c.abs() / S
        if self.rule == "prescribed":
            e = self.u_e.abs() / S * self.r
            for _ in range(S):
                x = x + e * self.act_e(self.op_e(x))
                x = self._contract(x, g)
            return x
        for _ in range(S):
            x = self._contract(x, g)
        return x + self.u_e.abs() * self.op_c.adjoint(self.act_e(self.op_c(x)))

    @torch.no_grad()
    def project(self):
        """The projections after an optimiser step (see the class docstring)."""
        S = self.substeps
        if self.rule == "prescribed":
            h_c = float(self.u_c.abs().clamp(0.3, 1.0))
            self.u_c.fill_(h_c)
            self.u_e.fill_(expansive_step_bound(h_c, self.a, S))
            self.r.clamp_(0.0, 1.0)
            if self.normalized:
                self.op_e.rescale(max(1.0, self.op_e.norm_bound()))
            return
        self.u_c.clamp_(0.11, 1.89)
        self.u_e.clamp_(-1.9, 0.05)
        if self.rule == "coupled":
            bound = flexible_step_bound(float(self.u_c), self.a, S)
            self.u_e.copy_(self.u_e.sign() * self.u_e.abs().clamp(max=bound))

    def lipschitz_bound(self) -> float:
        """A sound upper bound of the block's Lipschitz constant, from the current weights."""
        S = self.substeps
        contract = _nonexp_factor(self.h_c / S, self.op_c, self.a)
        if self.rule == "prescribed":
            expand = 1 + self.h_e / S * float(self.r.detach().abs()) * self.op_e.norm_bound()
            return (expand * contract) ** S
        return contract**S * (1 + self.h_e * self.op_c.norm_bound() ** 2)

    def penalty(self):
        p = self.op_c.orthogonality()
        return p + self.op_e.orthogonality() if self.rule == "prescribed" else p


# -- lift, head, network ------------------------------------------------------------------------------


class Lift(nn.Module):
    """The authors' lift ``x ↦ ReLU(ρ · A x)`` with a ``k × k`` convolution (or a matrix) ``A`` without
    bias and a trainable scalar ``ρ``. ``project()``: ``"power"`` divides ``A`` by ``max(1, σ̂²)``
    with ``σ̂`` from one power step on a persistent vector (the authors' projection, which squares
    the estimate), ``"hard"`` divides ``A`` by ``max(1, ‖A‖)`` from a sound bound and clips ``ρ`` to
    ``[−1, 1]``, ``None`` does nothing. Bound: ``|ρ| ‖A‖``."""

    def __init__(self, in_channels: int, width: int, *, conv=True, size=(32, 32), project=None, generator=None):
        super().__init__()
        if project not in (None, "power", "hard"):
            raise ValueError(f"project must be None, 'power' or 'hard', got {project!r}.")
        self.mode = project
        if conv:  # delta-orthogonal: an isometry at initialisation when width ≥ in_channels
            self.op = ConvOp(in_channels, width, size, bias=False, gain=1.0, generator=generator)
        else:
            self.op = DenseOp(in_channels, width, bias=False, generator=generator)
        self.rho = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("v", torch.randn(self.op.in_shape, generator=generator)[None])
        if project == "hard":  # the certified model satisfies its constraints from the start
            self.project()

    def forward(self, x):
        return F.relu(self.rho * self.op(x))

    @torch.no_grad()
    def project(self):
        if self.mode == "power":
            w = self.op.adjoint(self.op(self.v, bias=False))  # one power step: AᵀA v
            sigma2 = float(self.op(self.v / self.v.norm(), bias=False).norm() ** 2)
            self.v.copy_(w / w.norm().clamp_min(1e-30))
            self.op.rescale(max(1.0, sigma2))
        elif self.mode == "hard":
            self.op.rescale(max(1.0, self.op.norm_bound()))
            self.rho.clamp_(-1.0, 1.0)

    def lipschitz_bound(self) -> float:
        return abs(float(self.rho.detach())) * self.op.norm_bound()


class Head(nn.Linear):
    """The linear classifier. ``project()``: ``"frobenius"`` divides ``W`` by ``max(1, ‖W‖_F)``
    (the authors' ``torch.norm(W, 2)`` on a matrix, pitfall 4), ``"spectral"`` by ``max(1, ‖W‖₂)``,
    ``None`` does nothing. Bound: the exact ``‖W‖₂``."""

    def __init__(self, features, classes, *, project=None, generator=None):
        super().__init__(features, classes)
        if project not in (None, "frobenius", "spectral"):
            raise ValueError(f"project must be None, 'frobenius' or 'spectral', got {project!r}.")
        self.mode = project
        with torch.no_grad():  # orthogonal rows: spectral norm 1
            self.weight.copy_(_orthogonal(classes, features, generator))
            self.bias.zero_()
        if project == "spectral":
            self.project()

    @torch.no_grad()
    def project(self):
        if self.mode == "frobenius":
            self.weight.div_(max(1.0, float(self.weight.norm())))
        elif self.mode == "spectral":
            self.weight.div_(max(1.0, self.lipschitz_bound()))

    def lipschitz_bound(self) -> float:
        return float(torch.linalg.matrix_norm(self.weight.detach().cpu().double(), ord=2))


KINDS = ("resnet", "naive", "nonexpansive", "switching")


@dataclass(frozen=True)
class SwitchingOptions:
    """The options of a switching network's :class:`SwitchingBlock` s (§5.3), given to
    :class:`StructuredNet` as keywords: the LeakyReLU slope ``a``, ``substeps`` per pair, the step
    ``rule``, orthogonal operators (``orthogonal``, ``orthogonal_kernel``), ``normalized`` steps and
    the constant ``h_c`` of the step rule."""

    a: float = 0.5
    substeps: int = 2
    rule: str = "prescribed"
    orthogonal: bool = False
    orthogonal_kernel: int = 3
    normalized: bool = False
    h_c: float = 1.0


class StructuredNet(nn.Module):
    """The authors' skeleton (their ``network.py``, §5.3): normalise, then per block a :class:`Lift` to the block's
    width, ``layers`` dynamic layers and (convolutional) a 2 × 2 max-pool, then flatten and a
    :class:`Head`. ``kind`` chooses the dynamic layers: ``"resnet"`` (:class:`ResidualStep`, ``s =
    1``), ``"naive"`` (``s = ½``), ``"nonexpansive"`` (:class:`NonExpansiveStep`, ReLU) or
    ``"switching"`` (``layers/2`` :class:`SwitchingBlock` s with the keywords ``switching`` of
    :class:`SwitchingOptions`). ``conv=False`` builds the dense analogue (one block, no pooling) for
    flat inputs. The input is normalised by ``(x − mean) / std`` inside the model, so attacks act on
    pixels in ``[0, 1]``."""

    def __init__(
        self,
        kind="switching",
        *,
        in_shape=(3, 32, 32),
        widths=(32, 64, 128),
        layers=4,
        classes=10,
        conv=True,
        lift_project=None,
        head_project=None,
        mean=None,
        std=None,
        seed=0,
        **switching,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        sw = SwitchingOptions(**switching)
        layers = _validate.positive_int(layers, "layers")
        if kind == "switching" and layers % 2:
            raise ValueError(f"a switching network has pairs of layers: layers must be even, got {layers}.")
        in_shape = tuple(int(s) for s in in_shape)
        if conv and len(in_shape) != 3:
            raise ValueError(f"a convolutional network needs in_shape (C, H, W), got {in_shape}.")
        widths = [_validate.positive_int(w, "width") for w in widths]
        if not conv and len(widths) != 1:
            raise ValueError("the dense network has one block: give one width.")
        gen = torch.Generator().manual_seed(seed)
        self.kind, self.in_shape, self.classes = kind, in_shape, classes
        self.a, self.substeps, self.rule = sw.a, sw.substeps, sw.rule
        self._normalisation(mean, std, conv)
        blocks, size, c_in = [], in_shape[1:] if conv else None, in_shape[0] if conv else math.prod(in_shape)
        for width in widths:
            lift = Lift(c_in, width, conv=conv, size=size, project=lift_project, generator=gen)
            dyn = self._dynamic(width, layers, conv=conv, size=size, switching=sw, generator=gen)
            pool = [nn.MaxPool2d(2)] if conv else []
            blocks.append(nn.Sequential(lift, *dyn, *pool))
            if conv:
                if size[0] % 2 or size[1] % 2:
                    raise ValueError(f"2 × 2 pooling needs even image sizes, got {size}.")
                size = (size[0] // 2, size[1] // 2)
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        features = widths[-1] * (size[0] * size[1] if conv else 1)
        self.head = Head(features, classes, project=head_project, generator=gen)

    def _normalisation(self, mean, std, conv):
        """The buffers ``mean`` and ``std`` of the input's normalisation, one entry per channel."""
        channels = self.in_shape[0]
        mean = torch.zeros(channels) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        std = torch.ones(channels) if std is None else torch.as_tensor(std, dtype=torch.float32)
        if mean.numel() != channels or std.numel() != channels or bool((std <= 0).any()):
            raise ValueError(f"mean and std must have one entry per channel ({channels}), std > 0.")
        pixels = math.prod(self.in_shape[1:])
        for name, value in (("mean", mean), ("std", std)):
            shaped = value.reshape(1, channels, 1, 1) if conv else value.repeat_interleave(pixels).reshape(1, -1)
            self.register_buffer(name, shaped)

    def _dynamic(self, width, layers, *, conv, size, switching: SwitchingOptions, generator) -> list:
        """The dynamic layers of one block of ``width`` channels (or features)."""
        if self.kind == "switching":
            options = dataclasses.asdict(switching)
            return [
                SwitchingBlock(width, conv=conv, size=size, **options, generator=generator) for _ in range(layers // 2)
            ]
        gain = math.sqrt(2)

        def op():
            if conv:
                return ConvOp(width, size=size, gain=gain, generator=generator)
            return DenseOp(width, gain=gain, generator=generator)

        if self.kind == "nonexpansive":
            return [NonExpansiveStep(op(), step=1.0, a=0.0) for _ in range(layers)]
        return [ResidualStep(op(), op(), scale=1.0 if self.kind == "resnet" else 0.5) for _ in range(layers)]

    def forward(self, x):
        if x.ndim < 2 or math.prod(x.shape[1:]) != math.prod(self.in_shape):
            raise ValueError(
                f"expected inputs of shape (N, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}."
            )  # noqa: E501
        x = x.reshape(x.shape[0], *self.in_shape) if self.mean.ndim == 4 else x.flatten(1)
        z = self.blocks((x - self.mean) / self.std)
        return self.head(z.flatten(1))

    def dynamic_layers(self):
        """The dynamic layers (steps and switching blocks), block by block."""
        return [m for block in self.blocks for m in block if hasattr(m, "penalty")]

    def penalty(self) -> torch.Tensor:
        """The authors' orthogonality penalty ``Σ_ℓ ‖K_ℓ ⋆ K_ℓ − δ ⊗ I‖_F`` over the dynamic operators."""
        return sum((m.penalty() for m in self.dynamic_layers()), torch.zeros((), device=self.mean.device))

    @torch.no_grad()
    def project(self) -> None:
        """The projections after each optimiser step: lift, dynamic layers, head."""
        for m in self.modules():
            if m is not self and hasattr(m, "project"):
                m.project()

    def lipschitz_bound(self) -> float:
        """A sound upper bound of the classifier's ℓ2 Lipschitz constant on pixels, in float64: the
        product of the lifts', the dynamic layers' and the head's bounds (max-pooling and ReLU are
        1-Lipschitz) and ``1/min(std)`` for the input normalisation."""
        bound = 1 / float(self.std.min())
        for block in self.blocks:
            for m in block:
                if hasattr(m, "lipschitz_bound"):
                    bound *= m.lipschitz_bound()
        return bound * self.head.lipschitz_bound()

    def parameters_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


# fmt: off
#: The authors' five regimes (§5.3) and the certified variant. Each gives the network's
#: keywords and its training recipe: hinge ``margin`` (one model per margin in the authors' code: 0.07,
#: 0.15, 0.3; 0.15 here), orthogonality weight ``gamma``, SGD with momentum 0.9 at learning rate
#: ``lr`` (decayed ×0.1 every 30 epochs by :func:`fit`). ``nominal`` is the Lipschitz constant the
#: regime claims for its dynamic layers (``None``: no claim). The certified preset is ours: exactly
#: orthogonal 1 × 1 ``A_c`` (:class:`OrthogonalConv2d`; ``orthogonal_kernel=3`` gives 3 × 3 at
#: more cost on the CPU), hard-normalised ``A_e``, lift and head, the shortest ``h_c`` (0.3,
#: the least forced contraction, §5.2.2), the margin 0.7 (its certified radii are margins over
#: √2 · its bound, which includes the ``1/min std ≈ 5`` of the input normalisation) and Adam at
#: 10⁻³ as in Chapter 4 (SGD at the paper's rate trains this contracting network slowly).
PRESETS = {
    "resnet":       dict(kind="resnet", gamma=0.0, nominal=None),
    "naive":        dict(kind="naive", gamma=0.01, nominal=None),
    "nonexpansive": dict(kind="nonexpansive", lift_project="power", head_project="frobenius", gamma=0.1),
    "switching":    dict(kind="switching", rule="prescribed", lift_project="power", head_project="frobenius",
                         gamma=0.1),
    "flexible":     dict(kind="switching", rule="flexible", lift_project="power", head_project="frobenius",
                         gamma=0.01),
    "certified":    dict(kind="switching", rule="prescribed", orthogonal=True, orthogonal_kernel=1, normalized=True,
                         lift_project="hard", head_project="spectral", h_c=0.3, gamma=0.0, margin=0.7, lr=1e-3,
                         optimizer="adam"),
}
for _p in PRESETS.values():
    for _k, _v in dict(margin=0.15, lr=0.01, optimizer="sgd", nominal=1.0).items():
        _p.setdefault(_k, _v)
# fmt: on
_RECIPE = ("gamma", "margin", "lr", "optimizer", "nominal")


def preset(name: str, **overrides) -> tuple[StructuredNet, dict]:
    """Build a preset of :data:`PRESETS`: ``(model, recipe)``, the recipe holding ``gamma``,
    ``margin``, ``lr``, ``optimizer`` and ``nominal``. Keywords override the network's arguments
    (``widths``, ``layers``, ``in_shape``, ``mean``, ``std``, ``rule="coupled"``, …) or the recipe."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}.")
    cfg = {**PRESETS[name], **overrides}
    recipe = {k: cfg.pop(k) for k in _RECIPE if k in cfg}
    return StructuredNet(**cfg), recipe


def hinge_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The authors' multi-class hinge ``(1/B) Σ_b Σ_{j≠y} max(0, m + f_j − f_y)``, summed over the
    classes, not averaged (pitfall 6: PyTorch's ``multi_margin_loss`` divides by ``K``)."""
    m = _validate.positive(margin, "margin")
    true = logits.gather(1, labels[:, None])
    terms = F.relu(m + logits - true).scatter(1, labels[:, None], 0.0)
    return terms.sum(1).mean()


class _Projection(_train.every_step):
    """After every optimiser step: the step-decay schedule, then the model's projections."""

    def __init__(self, scheduler, model):
        super().__init__(scheduler)
        self.model = model

    def __call__(self, model):
        super().__call__(model)
        self.model.project()


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class Recipe:
    """The training recipe of :func:`fit` (the authors' ``main.ipynb`` and ``training.py``, §5.3),
    given to it as keywords: the hinge ``margin``, the orthogonality weight ``gamma``, the learning
    rate ``lr`` divided by 10 every ``decay_every`` epochs, the ``optimizer`` (``"sgd"`` with
    momentum 0.9, or ``"adam"``) and how many ``restarts`` a non-finite loss may cause. Checked
    when made."""

    margin: float = 0.15
    gamma: float = 0.0
    lr: float = 0.01
    decay_every: int = 30
    optimizer: str = "sgd"
    restarts: int = 2

    def __post_init__(self):
        _validate.positive_int(self.decay_every, "decay_every")
        _validate.positive(self.margin, "margin")
        _validate.nonneg(self.gamma, "gamma")
        _validate.positive(self.lr, "lr")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}.")


def fit(
    model: StructuredNet,
    data: Dataset,
    epochs: int,
    *,
    batch_size: int = 128,
    augment: bool = True,
    seed: int = 0,
    device=None,
    progress=None,
    **recipe,
) -> dict:
    """Train with the authors' recipe (the keywords ``recipe`` of :class:`Recipe`, §5.3): SGD
    (momentum 0.9) at ``lr``, ×0.1 every ``decay_every`` epochs (``steps`` per epoch), the summed
    hinge :func:`hinge_loss` plus ``gamma`` × the orthogonality penalty, crops and flips
    (``augment``), and the model's projections after every step. If the loss becomes NaN or
    infinite, training restarts from the initial weights with ``lr/10``, at most ``restarts``
    times, and the restart is logged (pitfall 7). Returns the history as a dict with ``restarts``
    and the final ``lr``."""
    epochs = _validate.positive_int(epochs, "epochs")
    r = Recipe(**recipe)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_data = Augmented(data) if augment else data
    steps, lr, log = math.ceil(len(data) / batch_size), r.lr, []
    for attempt in range(r.restarts + 1):
        try:
            hist = _attempt(
                model,
                train_data,
                epochs,
                r,
                lr,
                steps,
                batch_size=batch_size,
                seed=seed,
                device=device,
                progress=progress,
            )
            return {**hist.as_dict(), "restarts": log, "lr": lr}
        except NonFiniteLoss as err:
            if attempt == r.restarts:
                raise
            log.append(str(err))
            model.load_state_dict(start)
            lr /= 10
    raise AssertionError("unreachable")


def _attempt(model, train_data, epochs, r: Recipe, lr, steps, **options):
    """One training of :func:`fit` at learning rate ``lr``; :class:`NonFiniteLoss` if the loss is not finite."""

    def loss_fn(logits, y):
        loss = hinge_loss(logits, y, r.margin) + (r.gamma * model.penalty() if r.gamma else 0.0)
        if not bool(torch.isfinite(loss)):
            raise NonFiniteLoss(f"the loss is {float(loss.detach())} at learning rate {lr:g}")
        return loss

    if r.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=r.decay_every * steps, gamma=0.1)
    return _train.fit(
        model, train_data, epochs, optimizer=opt, loss_fn=loss_fn, after_step=_Projection(sched, model), **options
    )


def block_jacobian_norms(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The exact ``‖J(x)‖₂`` of ``block`` at each input of ``x`` (one Jacobian per input, by autograd,
    in the block's dtype): the check the design notes ask for, not random pairs."""
    n = x[0].numel()
    J = torch.func.vmap(torch.func.jacrev(lambda t: block(t[None])[0]))(x.detach())
    return torch.linalg.matrix_norm(J.reshape(x.shape[0], -1, n), ord=2).detach()


# -- mass preservation ----------------------------------------------------------------------------------


class _SkewStep(nn.Module):
    """``x ↦ x + h S(x) 𝟙`` with ``S(x)`` skew-symmetric, its entries from a small ReLU network: the
    increment sums to zero, so ``𝟙ᵀx`` is kept."""

    def __init__(self, n, hidden, h, generator):
        super().__init__()
        self.n, self.h = n, h
        self.net = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, n * (n - 1) // 2))
        self.register_buffer("rows", torch.triu_indices(n, n, 1))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) / math.sqrt(p.shape[-1]))

    def forward(self, x):
        upper = torch.zeros(x.shape[0], self.n, self.n, dtype=x.dtype, device=x.device)
        upper[:, self.rows[0], self.rows[1]] = self.net(x)
        S = upper - upper.transpose(1, 2)
        return x + self.h * S.sum(2)  # S 𝟙: the row sums, which add up to 0


class MassPreservingNet(nn.Module):
    """A network that keeps the linear invariant ``𝟙ᵀx`` of its input whatever its weights (§5.5;
    after the authors' ``Mass Preserving Networks/time1FlowMap.ipynb``): zero-padding lifts
    ``dim → widths[0] → …`` (the padded coordinates are 0,
    so the sum is kept), ``layers`` steps ``x ↦ x + h G(x) 𝟙`` per width (``G(x)`` skew-symmetric,
    from a small ReLU network), and a projection to ``dim`` that adds the dropped coordinates' sum
    back, spread evenly. ``plain=True`` builds the
    same network with an unconstrained increment ``x ↦ x + h N(x)`` (the comparison)."""

    def __init__(
        self,
        dim: int = 3,
        widths=(10, 10, 15),
        *,
        layers: int = 3,
        hidden: int = 50,
        h: float = 0.5,
        plain: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        dim = _validate.positive_int(dim, "dim")
        widths = [_validate.positive_int(w, "width") for w in widths]
        if any(w < dim for w in widths) or any(b < a for a, b in zip(widths, widths[1:])):
            raise ValueError(f"widths must be non-decreasing and at least dim = {dim}, got {widths}.")
        gen = torch.Generator().manual_seed(seed)
        self.dim, self.widths, self.plain = dim, widths, plain
        steps = []
        for w in widths:
            for _ in range(_validate.positive_int(layers, "layers")):
                if plain:
                    net = nn.Sequential(nn.Linear(w, hidden), nn.ReLU(), nn.Linear(hidden, w))
                    steps.append(_PlainStep(net, h))
                else:
                    steps.append(_SkewStep(w, hidden, h, gen))
        self.steps = nn.ModuleList(steps)

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected inputs of shape (N, {self.dim}), got {tuple(x.shape)}.")
        k = 0
        for w in self.widths:
            x = F.pad(x, (0, w - x.shape[1]))
            for _ in range(len(self.steps) // len(self.widths)):
                x = self.steps[k](x)
                k += 1
        kept, dropped = x[:, : self.dim], x[:, self.dim :]
        return kept + dropped.sum(1, keepdim=True) / self.dim


class _PlainStep(nn.Module):
    def __init__(self, net, h):
        super().__init__()
        self.net, self.h = net, h

    def forward(self, x):
        return x + self.h * self.net(x)


def sir_field(x: torch.Tensor, r0: float = 1.0) -> torch.Tensor:
    """The SIR model ``Ṡ = −R₀SI, İ = R₀SI − I, Ṙ = I`` (§5.5), whose total ``S + I + R`` is a
    linear first integral."""
    S, I = x[..., 0], x[..., 1]
    return torch.stack([-r0 * S * I, r0 * S * I - I, I], -1)


def sir_data(n: int, *, t: float = 1.0, steps: int = 100, seed: int = 0, dtype=torch.float64):
    """``n`` pairs ``(x(0), x(t))`` of the SIR model from initial states uniform on the simplex
    ``S + I + R = 1``, integrated by classical Runge–Kutta with ``steps`` steps (an explicit RK method:
    the sum is kept to rounding)."""
    n = _validate.positive_int(n, "n")
    gen = torch.Generator().manual_seed(seed)
    x0 = -torch.log(torch.rand(n, 3, generator=gen, dtype=dtype))
    x0 = x0 / x0.sum(1, keepdim=True)
    x, h = x0.clone(), float(t) / _validate.positive_int(steps, "steps")
    for _ in range(steps):
        k1 = sir_field(x)
        k2 = sir_field(x + h / 2 * k1)
        k3 = sir_field(x + h / 2 * k2)
        k4 = sir_field(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x0, x
