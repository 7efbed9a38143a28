"""CLIP: Lipschitz regularisation by adversarially updated input pairs (§2.2; Bungert,
Raab, Roith, Schwinn, Tenbrinck).

The Lipschitz constant ``sup ‖f(x) − f(x')‖ / ‖x − x'‖`` is replaced by its maximum over a
finite set of pairs, :class:`PairSet`, which is moved by gradient ascent on the difference
quotient after every mini-batch (Algorithm 1); the training loss adds ``λ`` times that estimate
(:prf:ref:`alg-clip`), and ``λ`` follows a target accuracy (:class:`LambdaSchedule`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate, activations, attacks, experiment, lipschitz
from . import train as _train
from .lipschitz import quotient
from .runtime import resolve_device

__all__ = [
    "quotient",
    "PairSet",
    "LambdaSchedule",
    "mlp",
    "clip_loss",
    "Setting",
    "SETTINGS",
    "get_setting",
    "Run",
    "fit",
    "regression_data",
    "regression_truth",
    "grid_lipschitz",
    "fit_regression",
    "regression",
    "split",
    "evaluate_robustness",
]  # quotient: labkit.lipschitz.quotient, re-exported


class PairSet:
    """The pairs ``X_Lip`` with their per-pair step sizes (§2.3, Algorithm 1).

    ``update`` takes ``iters`` steps of gradient ascent on each pair's quotient (squared if
    ``squared``): a tentative step ``u + τ_p ∇_u``, ``v + τ_p ∇_v`` is *accepted per pair* only
    if that pair's quotient increased, and then ``τ_p`` is multiplied by ``growth``; otherwise
    the pair stays and ``τ_p`` is divided by ``growth``. So no accepted step ever lowers a
    quotient. The estimate is :meth:`estimate`: the largest quotient, a lower bound on the
    Lipschitz constant of the current network (it can never certify robustness).
    """

    def __init__(
        self,
        u: torch.Tensor,
        v: torch.Tensor,
        *,
        step_size: float = 1.0,
        growth: float = 1.3,
        squared: bool = False,
        clamp: tuple[float, float] | None = None,
    ):
        if u.shape != v.shape or u.ndim < 2 or u.shape[0] == 0:
            raise ValueError(
                f"u and v must be non-empty batches of the same shape, got {tuple(u.shape)} and {tuple(v.shape)}."
            )
        self.u, self.v = u.detach().clone(), v.detach().clone()
        self.step_size = torch.full(
            (u.shape[0],), _validate.positive(step_size, "step_size"), dtype=u.dtype, device=u.device
        )
        self.growth = _validate.positive(growth, "growth")
        if self.growth <= 1:
            raise ValueError(f"growth must exceed 1, got {growth}.")
        self.squared, self.clamp = bool(squared), clamp
        self.value: torch.Tensor | None = None  # the quotients at the last update

    @classmethod
    def from_batch(
        cls, x: torch.Tensor, *, mode: str = "partial_random", noise: float = 0.1, generator=None, **options
    ) -> PairSet:
        """Pairs from a batch of inputs, as the authors' ``u_v_init``: ``"plain"`` pairs the first
        half with the second, ``"partial_random"`` pairs the second half ``u`` with
        ``u + U[0, noise)``, ``"noise"`` draws both from ``U[0, noise)``."""
        x = x.detach()
        half = x.shape[0] // 2
        if half == 0:
            raise ValueError("need a batch of at least two inputs to form pairs.")
        rand = lambda: noise * torch.rand(x[half : 2 * half].shape, generator=generator).to(x)  # noqa: E731
        if mode == "plain":
            u, v = x[:half], x[half : 2 * half]
        elif mode == "partial_random":
            u = x[half : 2 * half]
            v = u + rand()
        elif mode == "noise":
            u, v = rand(), rand()
        else:
            raise ValueError(f"mode must be 'plain', 'partial_random' or 'noise', got {mode!r}.")
        return cls(u, v, **options)

    def __len__(self) -> int:
        return self.u.shape[0]

    def _values(self, model, u, v):
        return quotient(model, u, v, squared=self.squared)

    def update(self, model, iters: int = 1) -> torch.Tensor:
        """``iters`` accept/reject ascent steps; returns the quotients afterwards (detached)."""
        with attacks.frozen(model):
            best = None
            for _ in range(_validate.positive_int(iters, "iters")):
                u = self.u.clone().requires_grad_(True)
                v = self.v.clone().requires_grad_(True)
                values = self._values(model, u, v)
                gu, gv = torch.autograd.grad(values.sum(), (u, v))
                if best is None:  # the current quotients come with the first gradient
                    best = values.detach()
                shape = (-1,) + (1,) * (u.ndim - 1)
                tu = self.u + self.step_size.view(shape) * gu
                tv = self.v + self.step_size.view(shape) * gv
                if self.clamp is not None:
                    tu, tv = tu.clamp(*self.clamp), tv.clamp(*self.clamp)
                with torch.no_grad():
                    new = self._values(model, tu, tv)
                ok = new > best
                self.u = torch.where(ok.view(shape), tu, self.u).detach()
                self.v = torch.where(ok.view(shape), tv, self.v).detach()
                best = torch.where(ok, new, best)
                self.step_size = torch.where(ok, self.step_size * self.growth, self.step_size / self.growth)
        self.value = best.detach()
        return self.value

    def estimate(self) -> float:
        """The largest quotient (not squared) at the last update: a lower bound of Lip(f)."""
        if self.value is None:
            raise RuntimeError("call update(model) first.")
        v = float(self.value.max())
        return v**0.5 if self.squared else v

    def worst(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair with the largest quotient at the last update, as batches of one."""
        if self.value is None:
            raise RuntimeError("call update(model) first.")
        k = int(self.value.argmax())
        return self.u[k : k + 1], self.v[k : k + 1]


class LambdaSchedule:
    """The ``λ`` rule by a target accuracy (a discrepancy principle; §2.3): after each epoch,
    ``λ += increment`` if the measured accuracy exceeds ``target``, else ``λ = max(λ − increment, 0)``;
    ``λ = warmup_value`` during the first ``warmup`` epochs, and the rule acts every ``cooldown + 1``
    epochs. ``step(accuracy)`` returns the ``λ`` for the next epoch."""

    def __init__(
        self,
        lam: float,
        target: float,
        increment: float,
        *,
        warmup: int = 0,
        warmup_value: float = 0.0,
        cooldown: int = 0,
    ):
        self.base = _validate.nonneg(lam, "lam")
        self.target = float(target)
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"target is an accuracy in [0, 1], got {target}.")
        self.increment = _validate.nonneg(increment, "increment")
        self.warmup, self.cooldown = int(warmup), int(cooldown)
        if self.warmup < 0 or self.cooldown < 0:
            raise ValueError("warmup and cooldown must be non-negative.")
        self.warmup_value = _validate.nonneg(warmup_value, "warmup_value")
        self.epoch, self._since = 0, 0
        self.lam = self.warmup_value if self.warmup > 0 else self.base
        self.history = [self.lam]

    def step(self, accuracy: float) -> float:
        self.epoch += 1
        if self.epoch < self.warmup:
            self.lam = self.warmup_value
        elif self.epoch == self.warmup:
            self.lam = self.base
        else:
            self._since += 1
            if self._since > self.cooldown:
                self._since = 0
                self.lam = self.lam + self.increment if accuracy > self.target else max(self.lam - self.increment, 0.0)
        self.history.append(self.lam)
        return self.lam


# --------------------------------------------------------------------------- models and loss
def mlp(sizes=(784, 200, 80, 10), activation: str = "sigmoid", *, last_activation: bool = False) -> nn.Sequential:
    """Flatten, then ``Linear → activation`` per layer; with ``last_activation`` also after the
    last layer, as in the authors' ``fully_connected`` (§2.3)."""
    if activation not in activations.TABLE:
        raise ValueError(f"activation must be one of {sorted(activations.TABLE)}, got {activation!r}.")
    sizes = [_validate.positive_int(s, "layer size") for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"sizes needs an input and an output size, got {sizes}.")
    layers: list[nn.Module] = [nn.Flatten()]
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2 or last_activation:
            layers.append(activations.module(activation))
    return nn.Sequential(*layers)


def clip_loss(
    model, x, y, pairs: PairSet, lam: float, *, loss_fn=None, reduce: str = "max", reg_max: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CLIP's loss (:prf:ref:`alg-clip`): ``loss_fn(model(x), y) + lam · R`` with ``R`` the
    quotient (squared if ``pairs.squared``) of the worst pair at the last update (``reduce="max"``)
    or the mean over all pairs (``"mean"``). The pairs enter as constants; only the parameters are
    differentiated. When ``R > reg_max`` the term is left out, as in the authors' code. Returns
    the loss, the outputs ``model(x)`` and ``R`` (a float; NaN when ``lam = 0``)."""
    loss_fn = loss_fn or F.cross_entropy
    out = model(x)
    data = loss_fn(out, y)
    if lam == 0:
        return data, out, float("nan")
    if reduce == "max":
        u, v = pairs.worst()
    elif reduce == "mean":
        u, v = pairs.u, pairs.v
    else:
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}.")
    reg = quotient(model, u.detach(), v.detach(), squared=pairs.squared).mean()
    value = float(reg.detach())
    if reg_max is not None and value > reg_max:
        return data, out, value
    return data + lam * reg, out, value


# --------------------------------------------------------------------------- settings and training
@dataclass(frozen=True)
class Setting:
    """Everything that distinguishes the two ways of training with CLIP (§2.3).

    ``"paper"`` is the authors' released code (784-200-80-10 with sigmoid after every layer, SGD
    0.1 with momentum 0.9, squared quotient of the single worst pair dropped above 5000, pairs not
    clamped, λ rule on training accuracy every second epoch after a warm-up, model selection by
    accuracy under their sphere attack on the validation split); ``"standard"`` is ours (plain
    logits, the quotient itself, pairs kept in the image box, λ rule on validation accuracy every
    epoch, the last model kept)."""

    name: str
    last_activation: bool
    squared: bool
    reg_max: float | None
    pair_clamp: tuple[float, float] | None
    cooldown: int
    schedule_on: str  # "train" or "val"
    select: str  # "adversarial" or "last"
    activation: str = "sigmoid"
    sizes: tuple = (784, 200, 80, 10)
    lr: float = 0.1
    momentum: float = 0.9
    batch_size: int = 128
    reduce: str = "max"
    pair_init: str = "partial_random"
    pair_step: float = 10.0
    growth: float = 1.3
    n_pairs: int = 500
    redraw: int = 2000
    val_attack_steps: int = 7
    goal: float = 0.9  # the authors' default goal accuracy, used in model selection when no target is set


SETTINGS = {
    "paper": Setting(
        "paper",
        last_activation=True,
        squared=True,
        reg_max=5000.0,
        pair_clamp=None,
        cooldown=1,
        schedule_on="train",
        select="adversarial",
    ),
    "standard": Setting(
        "standard",
        last_activation=False,
        squared=False,
        reg_max=None,
        pair_clamp=(0.0, 1.0),
        cooldown=0,
        schedule_on="val",
        select="last",
    ),
}


def get_setting(name) -> Setting:
    """The :class:`Setting` called ``name`` (``"paper"`` or ``"standard"``), or ``name`` itself
    if it is a :class:`Setting`."""
    if isinstance(name, Setting):
        return name
    if name not in SETTINGS:
        raise ValueError(f"setting must be one of {sorted(SETTINGS)}, got {name!r}.")
    return SETTINGS[name]


@dataclass
class Run:
    """What :func:`fit` returns: the model it kept and one row per epoch in ``history``
    (``lam``, ``loss``, ``accuracy``, ``val_accuracy``, ``val_adv_accuracy``, ``estimate`` the largest
    pair quotient at the end of the epoch, ``reg`` the mean regulariser over the epoch) and the
    largest pair quotient after every ``trace_every`` batches in ``trace``."""

    model: nn.Module
    setting: str
    history: dict = field(default_factory=dict)
    trace: list = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def _draw_pairs(val_x, s: Setting, gen, dev) -> PairSet:
    idx = torch.randperm(val_x.shape[0], generator=gen)[: 2 * s.n_pairs]
    return PairSet.from_batch(
        val_x[idx].to(dev),
        mode=s.pair_init,
        generator=gen,
        step_size=s.pair_step,
        growth=s.growth,
        squared=s.squared,
        clamp=s.pair_clamp,
    )


class _Clip:
    """The state of one :func:`fit` between batches and epochs: the pairs (drawn again every
    ``redraw`` batches), the regulariser's values of the epoch, the λ schedule and the best model."""

    def __init__(
        self, run: Run, s: Setting, val_data, schedule: LambdaSchedule, *, pairs, target, seed, dev, trace_every
    ):
        self.run, self.s, self.val_data, self.schedule = run, s, val_data, schedule
        self.target, self.seed, self.dev, self.trace_every = target, seed, dev, trace_every
        self.val_x, self.gen = _train.inputs(val_data), torch.Generator().manual_seed(seed)
        self.pairs = _draw_pairs(self.val_x, s, self.gen, dev) if pairs else None
        self.batches, self.regs, self.best_score, self.best = 0, [], -1.0, None

    def step(self, model, xb, yb):
        """CLIP's step: the pairs' ascent step, then the loss with the penalty (:func:`clip_loss`)."""
        if self.pairs is not None:
            if self.batches and self.batches % self.s.redraw == 0:
                self.pairs = _draw_pairs(self.val_x, self.s, self.gen, self.dev)
            self.pairs.update(model)
            if self.batches % self.trace_every == 0:
                self.run.trace.append(self.pairs.estimate())
        self.batches += 1
        s = self.s
        loss, out, reg = clip_loss(model, xb, yb, self.pairs, self.schedule.lam, reduce=s.reduce, reg_max=s.reg_max)
        self.regs.append(reg)
        return loss, out

    def end_of_epoch(self, model, epoch, history):
        """The epoch's row of the history, the selection of the kept model and λ's next value."""
        import copy
        from functools import partial

        s, gen = self.s, torch.Generator().manual_seed(self.seed)
        val_acc = _train.evaluate(model, self.val_data, device=self.dev)["accuracy"]
        sphere = partial(attacks.pgd_l2_sphere, steps=s.val_attack_steps, generator=gen)
        val_adv = attacks.robust_accuracy(model, self.val_data, sphere, [2.0], device=self.dev, progress=False)[2.0]
        regs = [r for r in self.regs if not math.isnan(r)]
        row = {
            "lam": self.schedule.lam,
            "loss": history.loss[-1],
            "accuracy": history.accuracy[-1],
            "val_accuracy": val_acc,
            "val_adv_accuracy": val_adv,
            "estimate": self.pairs.estimate() if self.pairs is not None else float("nan"),
            "reg": sum(regs) / len(regs) if regs else float("nan"),
        }
        for key, value in row.items():
            self.run.history[key].append(value)
        self.regs = []
        accuracy = history.accuracy[-1] if s.schedule_on == "train" else val_acc
        if s.select == "adversarial":
            score = val_adv + float(accuracy > (s.goal if self.target is None else self.target))
            if score > self.best_score:
                self.best_score, self.best, self.run.best_epoch = score, copy.deepcopy(model.state_dict()), epoch
        else:
            self.run.best_epoch = epoch
        self.schedule.step(accuracy)


def _lambda_schedule(s: Setting, *, lam=0.1, target=0.97, increment=0.05, warmup=1, **unknown) -> tuple:
    """The :class:`LambdaSchedule` of :func:`fit`'s keywords, and the target (``None``: λ fixed)."""
    if unknown:
        raise TypeError(
            f"fit got unknown options {sorted(unknown)}; the schedule's are lam, target, increment, warmup."
        )
    lam = _validate.nonneg(lam, "lam")
    warmup = int(warmup)
    if warmup < 0:
        raise ValueError(f"warmup must be non-negative, got {warmup}.")
    fixed = target is None or lam == 0
    schedule = LambdaSchedule(
        lam, 0.0 if fixed else target, 0.0 if fixed else increment, warmup=warmup if lam > 0 else 0, cooldown=s.cooldown
    )
    return schedule, target


def fit(
    model,
    train_data,
    val_data,
    *,
    setting="paper",
    epochs: int = 10,
    weight_decay: float = 0.0,
    seed: int = 0,
    device=None,
    progress: bool | None = None,
    trace_every: int = 10,
    **schedule,
) -> Run:
    """Train ``model`` with CLIP (:prf:ref:`alg-clip`) in the given :class:`Setting`.

    Every mini-batch: one accept/reject ascent step of the pairs (:meth:`PairSet.update`), then an
    SGD step on :func:`clip_loss`; the loop is :func:`labkit.train.fit` with CLIP's step. The pairs
    come from the validation split (``2·n_pairs`` images) and are drawn again every ``redraw``
    batches. After each epoch ``λ`` follows :class:`LambdaSchedule`, whose keywords ``schedule``
    are ``lam`` (default 0.1), ``target`` (0.97), ``increment`` (0.05) and ``warmup`` (1): 0 for
    ``warmup`` epochs, then ``lam``, then ``± increment`` by whether the accuracy (training or
    validation, by the setting) exceeds ``target``; ``lam = 0`` trains without CLIP and
    ``target=None`` keeps ``λ`` fixed. ``weight_decay`` is SGD's (the baseline). Returns a
    :class:`Run` with the kept model: the last one, or in the paper setting the best by accuracy
    under the sphere attack (ε = 2) on the validation split, plus one if the training accuracy
    beat the target (``Setting.goal`` without one), as the authors score it.
    """
    import time

    s = get_setting(setting)
    epochs = _validate.positive_int(epochs, "epochs")
    lam_schedule, target = _lambda_schedule(s, **schedule)
    if len(train_data) == 0 or len(val_data) < 2:
        raise ValueError("train_data must be non-empty and val_data needs at least two examples.")
    dev = resolve_device(device)
    model.to(dev)
    decay = _validate.nonneg(weight_decay, "weight_decay")
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=decay)
    keys = ("lam", "loss", "accuracy", "val_accuracy", "val_adv_accuracy", "estimate", "reg")
    run = Run(model=model, setting=s.name, history={k: [] for k in keys})
    state = _Clip(
        run,
        s,
        val_data,
        lam_schedule,
        pairs=lam_schedule.base > 0,
        target=target,
        seed=seed,
        dev=dev,
        trace_every=trace_every,
    )
    t0 = time.perf_counter()
    hooks = {"progress": progress, "step_fn": state.step, "after_epoch": state.end_of_epoch, "desc": s.name}
    _train.fit(model, train_data, epochs, batch_size=s.batch_size, optimizer=opt, device=dev, seed=seed, **hooks)
    if state.best is not None:
        model.load_state_dict(state.best)
    model.eval()
    run.seconds = time.perf_counter() - t0
    return run


# --------------------------------------------------------------------------- 1-D regression
def regression_data(n: int = 40, *, noise: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy samples ``y = sin(πx) + x/2 + noise·N(0, 1)`` at uniform random ``x`` in [−1, 1]
    (§2.4), as ``(n, 1)`` float64 tensors. The ground truth is
    :func:`regression_truth`."""
    g = torch.Generator().manual_seed(int(_validate.nonneg(seed, "seed")))
    n = _validate.positive_int(n, "n")
    x = 2 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 1
    y = regression_truth(x) + _validate.nonneg(noise, "noise") * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, y


def regression_truth(x: torch.Tensor) -> torch.Tensor:
    """The ground truth of the regression example, ``sin(πx) + x/2`` (Lipschitz constant π + 1/2)."""
    return torch.sin(torch.pi * x) + 0.5 * x


def grid_lipschitz(f, lo: float = -1.0, hi: float = 1.0, points: int = 2001) -> float:
    """Largest slope of a 1-D function ``f`` between neighbouring points of a uniform grid on
    ``[lo, hi]``: a lower bound of its Lipschitz constant there, and for a smooth ``f`` a close one."""
    t = torch.linspace(lo, hi, _validate.positive_int(points, "points"), dtype=torch.float64).view(-1, 1)
    with torch.no_grad():
        y = f(t).view(-1)
    return float(((y[1:] - y[:-1]).abs() / (t[1, 0] - t[0, 0])).max())


def fit_regression(
    x, y, lam: float, *, width: int = 100, steps: int = 3000, lr: float = 3e-3, seed: int = 0, pair_noise: float = 0.1
) -> tuple[nn.Module, PairSet]:
    """Fit a 1-``width``-``width``-1 tanh network to ``(x, y)`` by full-batch Adam on the mean squared
    error plus ``lam`` times the largest pair quotient (§2.4); the pairs are the
    data points and their ``U[0, pair_noise)`` shifts, moved by one ascent step per Adam step.
    Returns the network (float64, eval mode) and its pairs."""
    lam = _validate.nonneg(lam, "lam")
    torch.manual_seed(seed)
    model = mlp((1, width, width, 1), "tanh").double()
    pairs = PairSet.from_batch(
        torch.cat([x, x]),
        mode="partial_random",
        noise=pair_noise,
        step_size=0.1,
        generator=torch.Generator().manual_seed(seed),
    )
    opt = torch.optim.Adam(model.parameters(), lr=_validate.positive(lr, "lr"))
    for _ in range(_validate.positive_int(steps, "steps")):
        if lam > 0:
            pairs.update(model)
        loss, _, _ = clip_loss(model, x, y, pairs, lam, loss_fn=F.mse_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    pairs.update(model)
    return model.eval(), pairs


def regression(
    lams=(0.0, 1e-3, 1e-2, 1e-1), *, n: int = 40, noise: float = 0.2, steps: int = 3000, seed: int = 0
) -> dict:
    """The regression sweep of Chapter 2: for each ``λ`` the fit on a grid, its grid Lipschitz
    constant, the pair estimate, the training error and the error against the ground truth.
    JSON-ready."""
    x, y = regression_data(n, noise=noise, seed=seed)
    grid = torch.linspace(-1, 1, 401, dtype=torch.float64).view(-1, 1)
    truth = regression_truth(grid)
    out = {
        "x": x.view(-1).tolist(),
        "y": y.view(-1).tolist(),
        "grid": grid.view(-1).tolist(),
        "truth": truth.view(-1).tolist(),
        "lams": [float(v) for v in lams],
        "fits": [],
        "lipschitz": [],
        "estimate": [],
        "train_mse": [],
        "truth_mse": [],
    }
    for lam in lams:
        model, pairs = fit_regression(x, y, lam, steps=steps, seed=seed)
        with torch.no_grad():
            fit = model(grid)
            out["train_mse"].append(float(F.mse_loss(model(x), y)))
        out["fits"].append(fit.view(-1).tolist())
        out["truth_mse"].append(float(F.mse_loss(fit, truth)))
        out["lipschitz"].append(grid_lipschitz(model))
        out["estimate"].append(pairs.estimate())
    return out


# --------------------------------------------------------------------------- evaluation
def split(data, n_val: int, *, seed: int = 42):
    """A seeded random split of a ``TensorDataset`` into training and validation parts of sizes
    ``len(data) − n_val`` and ``n_val`` (the authors split 0.9/0.1 with seed 42)."""
    from torch.utils.data import TensorDataset

    if not isinstance(getattr(data, "tensors", None), tuple):
        raise TypeError(f"split needs a TensorDataset (images, labels), got {type(data).__name__}.")
    x, y = data.tensors
    n_val = _validate.positive_int(n_val, "n_val")
    if n_val >= len(y):
        raise ValueError(f"n_val={n_val} leaves no training data out of {len(y)}.")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x[perm[n_val:]], y[perm[n_val:]]), TensorDataset(x[perm[:n_val]], y[perm[:n_val]])


def evaluate_robustness(
    model,
    test,
    *,
    eps: float = 2.0,
    noise: float = 1.0,
    attack_steps: int = 100,
    ascent_steps: int = 200,
    pairs_from=None,
    seed: int = 0,
    device=None,
    **fields,
) -> dict:
    """Chapter 2's evaluation of one model, as a :func:`labkit.experiment.result` at the one
    radius ``eps`` (ℓ2): clean accuracy; the empirical curves ``pgd_l2`` (standard ℓ2 PGD) and
    ``pgd_sphere`` (the authors' sphere attack), ``attack_steps`` steps each; ``noise``, the
    accuracy under Gaussian noise of standard deviation ``noise``; and the Lipschitz constant of
    the output map bracketed: ``lipschitz.lower`` (:func:`labkit.lipschitz.lower_bound`, 100 Adam
    steps from 200 test points), ``pair_ascent`` (``ascent_steps`` steps of a fresh
    :class:`PairSet` drawn from ``pairs_from``, default the test images, another lower bound) and
    ``lipschitz.upper`` (product of layer norms and slopes). ``fields`` go to the result."""
    from functools import partial

    dev = resolve_device(device)
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    acc = lambda attack, e: attacks.robust_accuracy(model, test, attack, [e], device=dev, progress=False)[e]  # noqa: E731
    x = _train.inputs(test, 200).to(dev)
    source = _train.inputs(pairs_from if pairs_from is not None else test, 1000).to(dev)
    pairs = PairSet.from_batch(source, step_size=10.0, generator=gen())
    pairs.update(model, iters=_validate.positive_int(ascent_steps, "ascent_steps"))
    clean = _train.evaluate(model, test, device=dev)["accuracy"]
    noisy = acc(partial(attacks.gaussian_noise, generator=gen()), noise)
    empirical = {
        "pgd_l2": [acc(partial(attacks.pgd, norm="l2", steps=attack_steps, generator=gen()), eps)],
        "pgd_sphere": [acc(partial(attacks.pgd_l2_sphere, steps=attack_steps, generator=gen()), eps)],
    }
    lower = lipschitz.lower_bound(model, x, steps=100, generator=gen())
    return experiment.result(
        radii=[eps],
        clean=clean,
        empirical=empirical,
        norm="l2",
        lipschitz={"lower": lower, "upper": lipschitz.upper_bound(model), "map": "network"},
        attack={
            "pgd_l2": {"steps": attack_steps, "restarts": 1, "points": len(test)},
            "pgd_sphere": {"steps": attack_steps, "restarts": 1, "points": len(test)},
        },
        noise={"sigma": float(noise), "accuracy": noisy},
        pair_ascent=pairs.estimate(),
        **fields,
    )
