"""All methods on one bench (§6): a registry of the book's methods, one evaluation protocol
for every trained model, a soundness audit of every certificate, and a command line that runs a
grid of (data set, method, seed) with one JSON record per run.

Every method is built and trained by its own chapter's module; nothing is re-implemented here.
What the bench adds is the *protocol* (§6.2): the same test points, radii, attacks and attack
strengths for every model, with an independent attack library (ART, :mod:`labkit.audit`) beside
labkit's own PGD, so that the papers' numbers, each measured its own way, become comparable::

    python -m labkit.bench --methods cpl clip --datasets mnist --seeds 0 1 --mode book
    python -m labkit.bench --mode full --shard 2/4          # one part of four
    python -m labkit.bench --mode full --summary            # merge the records into the tables
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from . import _validate, attacks, audit, certify, clip, convex, data, experiment, lognorm, snode, structured, train
from . import lipschitz as lip
from .runtime import progress_enabled, resolve_device, seed_everything

__all__ = [
    "DATASETS",
    "IMAGES",
    "RADII",
    "Method",
    "METHODS",
    "method",
    "grid",
    "shard",
    "run_one",
    "evaluate",
    "soundness",
    "run_grid",
    "record_path",
    "GRID_SIZES",
    "run_sizes",
    "collect",
    "main",
]

#: The data sets of the bench, the two MNIST-like ones for every method and CIFAR-10 for the convolutional ones.
DATASETS = ("mnist", "fashion_mnist", "cifar10")
#: The image shape of each data set.
IMAGES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
#: The radii of the protocol, per data set and norm. In ℓ2 Chapter 4's and CLIP's radii for the MNIST-like
#: sets, the certified-robustness radii 36/255, 72/255, 108/255 and the structure-preserving paper's 0.5
#: for CIFAR-10; in ℓ∞ 0.05 and 0.1 as in §1.4, and 2/255 and 8/255.
RADII = {
    "mnist": {"l2": (0.5, 1.0, 1.58, 2.0), "linf": (0.05, 0.1)},
    "fashion_mnist": {"l2": (0.5, 1.0, 1.58, 2.0), "linf": (0.05, 0.1)},
    "cifar10": {"l2": (36 / 255, 72 / 255, 108 / 255, 0.5), "linf": (2 / 255, 8 / 255)},
}


@dataclasses.dataclass(frozen=True)
class Method:
    """One method of the bench (§6.1).

    ``train(ctx)`` builds the model from its chapter's module, trains it with that chapter's recipe
    and returns ``(model, extra)``: the classifier of full-size images in ``[0, 1]`` and what is
    worth keeping of the training (histories). ``bound(model)`` returns ``(map, L)``: the map whose
    ℓ2 Lipschitz constant the method bounds (the whole classifier, or the body of a
    :class:`labkit.convex.LipschitzNet`) and that sound bound; ``radii(model, x, y, L)`` the
    certified ℓ2 radius of each point (default: margin over √2 L, :func:`labkit.certify.certified_radius`).
    ``certifies`` is true for the methods whose certificate is their point (by construction or
    by a controlled bound); the others still get the radii of their computed bound. ``paper`` names
    the paper's own evaluation (:func:`evaluate`)."""

    name: str
    chapter: str
    title: str
    kinds: tuple
    certifies: bool
    guarantee: str
    paper: str | None
    train: Callable
    bound: Callable
    radii: Callable | None = None


def _whole(model):
    return model, float(model.lipschitz_bound())


# -- Chapter 2: a plain network, weight decay, CLIP -------------------------------------------------------


def _ch2(config):
    def fit(ctx):
        from .chapters import ch02

        setting = dataclasses.replace(clip.get_setting("standard"), batch_size=ctx.s.batch_size)
        torch.manual_seed(ctx.seed)
        model = clip.mlp(setting.sizes, setting.activation, last_activation=setting.last_activation)
        tr, val = clip.split(ctx.train, ctx.s.n_val)
        target = ch02.TARGETS[ctx.dataset][0] if config == "CLIP" else None
        run = clip.fit(model, tr, val, setting=setting, epochs=ctx.s.epochs, warmup=min(1, ctx.s.epochs - 1),
                       lam=0.1 if target else 0.0, target=target, increment=0.01,
                       weight_decay=5e-4 if config == "weight decay" else 0.0, seed=ctx.seed, device=ctx.device,
                       progress=ctx.progress)  # fmt: skip
        return run.model, {"history": run.history, "target": target}

    return fit


def _product(model):
    return model, lip.upper_bound(model)


# -- Chapter 1: the log-norm-stabilised neural ODE --------------------------------------------------------


def _lognorm(unit):
    def fit(ctx):
        torch.manual_seed(ctx.seed)
        model = lognorm.ODEClassifier(784, width=10, T=1.0, steps=10, activation="tanh", unit_norm=unit)
        hook = lognorm.StabilizeEachEpoch(0.2)
        hist = train.fit(model, ctx.train, epochs=ctx.s.epochs, batch_size=ctx.s.batch_size, lr=3e-3, seed=ctx.seed,
                         after_epoch=hook, device=ctx.device, progress=ctx.progress)  # fmt: skip
        return model, {"history": hist.as_dict(), "stabilize": hook.history, "delta": 0.2}

    return fit


def _certificate(model):
    return model, float(model.certificate()["lipschitz_bound"])


# -- Chapter 3: the standalone neural ODE and its ResNet analogue -----------------------------------------


def _snode(ncg):
    def fit(ctx):
        x, y = ctx.train.tensors
        tr = TensorDataset(snode.downsample(x, 2), y)
        torch.manual_seed(ctx.seed)
        model = snode.SNODE(196, T=3.0, steps=4, activation="tanh", loss="l2",
                            generator=torch.Generator().manual_seed(ctx.seed))  # fmt: skip
        model = model.to(ctx.device)
        if ncg:
            hist = snode.ncg_train(model, tr, epochs=ctx.s.epochs, batch_size=ctx.s.batch_size, iterations=6,
                                   sobolev=True, seed=ctx.seed, progress=ctx.progress)  # fmt: skip
        else:
            hist = snode.fit_backprop(model, tr, epochs=ctx.s.epochs, lr=1e-3, batch_size=ctx.s.batch_size,
                                      seed=ctx.seed, progress=ctx.progress)  # fmt: skip
        return snode.OnImages(model, 2), {"history": hist.as_dict()}

    return fit


# -- Chapter 4: convex potential layers -------------------------------------------------------------------


def _convex(layer):
    def fit(ctx):
        if ctx.dataset == "cifar10":
            mean = ctx.train.tensors[0].mean((0, 2, 3))
            model = convex.cpl_conv(IMAGES["cifar10"], channels=16, conv_depth=4, conv_hidden=16, dense_depth=1,
                                    dense_hidden=64, layer=layer, head="lln", mean=mean, seed=ctx.seed)  # fmt: skip
        else:
            model = convex.cpl_dense(784, width=784, depth=2, hidden=100, layer=layer, head="first", seed=ctx.seed)
        hist = convex.fit(model, ctx.train, ctx.s.epochs, batch_size=ctx.s.batch_size, augment=ctx.dataset == "cifar10",
                          seed=ctx.seed, device=ctx.device, progress=ctx.progress)  # fmt: skip
        return model, {"history": hist.as_dict()}

    return fit


def _body(model):
    return model.body, 1.0


def _convex_radii(model, x, y, bound):
    return torch.cat([convex.certified_radii(model, xb, yb) for xb, yb in zip(x.split(512), y.split(512))])


# -- Chapter 5: structure-preserving networks -------------------------------------------------------------


def _structured(name):
    def fit(ctx):
        if ctx.dataset == "cifar10":
            net = dict(in_shape=IMAGES["cifar10"], widths=[8, 16, 32], layers=2, mean=structured.CIFAR_MEAN,
                       std=structured.CIFAR_STD)  # fmt: skip
        else:
            net = dict(in_shape=IMAGES[ctx.dataset], conv=False, widths=[128], layers=4)
        model, recipe = structured.preset(name, seed=ctx.seed, **net)
        hist = structured.fit(model, ctx.train, ctx.s.epochs, margin=recipe["margin"], gamma=recipe["gamma"],
                              lr=recipe["lr"], optimizer=recipe["optimizer"], batch_size=ctx.s.batch_size,
                              augment=ctx.dataset == "cifar10", seed=ctx.seed, device=ctx.device,
                              progress=ctx.progress)  # fmt: skip
        return model, {"history": hist, "recipe": recipe}

    return fit


_DENSE, _BOTH = ("dense",), ("dense", "conv")
_PRODUCT = "none; a product of layer norms, computed after training"
# fmt: off
#: The registry of every method of the book, by name (§6.1).
METHODS = {m.name: m for m in [
    Method("plain", "ch02", "plain network (784-200-80-10)", _DENSE, False, _PRODUCT, None, _ch2("none"), _product),
    Method("weight-decay", "ch02", "weight decay 5·10⁻⁴", _DENSE, False, _PRODUCT, None, _ch2("weight decay"),
           _product),
    Method("clip", "ch02", "CLIP (λ by target accuracy)", _DENSE, False, _PRODUCT, "sphere", _ch2("CLIP"), _product),
    Method("lognorm", "ch01", "log-norm ODE, δ = 0.2, free lift and head", _DENSE, False,
           "the block's Euler bound, about exp(Tδ); lift and head unconstrained", "fgsm", _lognorm(False),
           _certificate),
    Method("lognorm-unit", "ch01", "log-norm ODE, δ = 0.2, unit-norm lift and head", _DENSE, True,
           "ℓ2 certificate from the Euler bound of the stabilised block", "fgsm", _lognorm(True), _certificate),
    Method("snode", "ch03", "sNODE of N = 4 Euler steps (Chapter 3: 30 to 150), NCG with Sobolev gradients",
           _DENSE, False,
           "none; Π(1 + h‖W_k‖) computed after training", "sensitivity", _snode(True), _whole),
    Method("snode-resnet", "ch03", "sNODE's ResNet analogue (N = 4), Adam", _DENSE, False,
           "none; Π(1 + h‖W_k‖) computed after training", "sensitivity", _snode(False), _whole),
    Method("cpl", "ch04", "convex potential layers (CPL)", _BOTH, True, "1-Lipschitz body by construction",
           "certified", _convex("cpl"), _body, _convex_radii),
    Method("sll", "ch04", "SDP-based Lipschitz layers (SLL)", _BOTH, True, "1-Lipschitz body by construction",
           "certified", _convex("sll"), _body, _convex_radii),
    *[Method(f"sp-{name}", "ch05", f"structure-preserving, {name}", _BOTH, name == "certified",
             "1-Lipschitz dynamic layers, lift and head by construction" if name == "certified" else
             "none; the product bound of §5.4 computed after training", "pgd10", _structured(name), _whole)
      for name in structured.PRESETS],
]}
# fmt: on


def method(name: str) -> Method:
    """The :class:`Method` called ``name``; ``ValueError`` naming the methods that exist."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; there are {', '.join(METHODS)}.")
    return METHODS[name]


def _kind(dataset: str) -> str:
    return "conv" if dataset == "cifar10" else "dense"


def grid(methods=None, datasets=None, seeds=(0,), *, only=None) -> list[tuple[str, str, int]]:
    """The runs ``(data set, method, seed)`` of the bench, data set by data set, for the methods that
    apply to each data set (the dense ones only to the MNIST-like sets) and, where ``only`` names a
    data set (``{data set: [methods]}``), are among its methods. Unknown names, negative or
    repeated seeds and a grid with no run raise ``ValueError`` before anything runs."""
    methods = list(METHODS) if methods is None else list(methods)
    datasets = list(DATASETS) if datasets is None else list(datasets)
    only = dict(only or {})
    for m in [*methods, *(m for ms in only.values() for m in ms)]:
        method(m)
    for d in datasets:
        if d not in DATASETS:
            raise ValueError(f"unknown data set {d!r}; the bench has {', '.join(DATASETS)}.")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers, got {seeds!r}.")
    if len(set(seeds)) != len(seeds) or len(set(methods)) != len(methods) or len(set(datasets)) != len(datasets):
        raise ValueError("methods, data sets and seeds must not repeat.")
    runs = [(d, m, s) for d in datasets for m in methods if _kind(d) in METHODS[m].kinds and m in only.get(d, [m])
            for s in seeds]  # fmt: skip
    if not runs:
        raise ValueError(f"no method of {methods} applies to {datasets} (the dense methods need MNIST-like data).")
    return runs


def shard(runs: list, spec: str) -> list:
    """Part ``i`` of ``n`` of ``runs`` for ``spec = "i/n"`` (``1 ≤ i ≤ n``): every ``n``-th run from the
    ``i``-th, so the ``n`` parts cover the grid exactly once and have sizes that differ by at most one."""
    try:
        i, n = (int(p) for p in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"a shard is i/n with integers 1 ≤ i ≤ n, e.g. 2/4; got {spec!r}.") from None
    if not 1 <= i <= n:
        raise ValueError(f"a shard is i/n with 1 ≤ i ≤ n, got {spec!r}.")
    return list(runs)[i - 1 :: n]


@dataclasses.dataclass
class _Context:
    dataset: str
    seed: int
    train: TensorDataset
    s: object
    device: torch.device
    progress: bool | None


@functools.lru_cache(maxsize=4)
def _load(dataset, train_split, limit):
    return data.load(dataset, train=train_split, limit=limit)


def _data(dataset, s):
    """The training and test sets of a run, read once per grid (the runs do not change them)."""
    cifar = dataset == "cifar10"
    return _load(dataset, True, s.cifar_train if cifar else s.n_train), _load(
        dataset, False, s.cifar_test if cifar else s.n_test
    )


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float(torch.cat([model(b).argmax(1) for b in x.split(512)]).eq(y).float().mean())


def _paper(m: Method, model, dataset, xa, ya, s, radii) -> dict | None:
    """The method's own evaluation of ``model`` (the paper's or its authors' code's;
    :data:`labkit.chapters.ch06.SOURCES` says whose), its headline number measured its way, on the attacked
    points ``xa, ya`` (a certified number on all test points, whose certified ``radii`` are given), and
    which protocol curve answers it at the same radius and norm (``protocol``)."""
    gen = torch.Generator().manual_seed(0)
    if m.paper == "fgsm":  # Chapter 1: the paper's own evaluation could not be read; FGSM in ℓ∞ stands in
        eps = RADII[dataset]["linf"][-1]
        value = _accuracy(model, attacks.fgsm(model, xa, ya, eps), ya)
        return {"evaluation": "FGSM, one step", "norm": "linf", "radius": eps, "value": value, "protocol": "apgd"}
    if m.paper == "sphere":  # the CLIP authors' code: its sphere attack in ℓ2 at ε = 2
        value = _accuracy(model, attacks.pgd_l2_sphere(model, xa, ya, 2.0, generator=gen), ya)
        return {"evaluation": "CLIP's sphere attack, 7 steps", "norm": "l2", "radius": 2.0, "value": value,
                "protocol": "apgd"}  # fmt: skip
    if m.paper == "sensitivity":  # the sNODE reference code's sensitivity attack, on the encoded 14×14 images
        inner = model.model
        norms = snode.sensitivity_attack(inner, inner.encode(snode.downsample(xa, model.factor)), ya,
                                         steps=s.pgd_steps * 3, generator=gen)  # fmt: skip
        eps = 1.0  # a 14×14 perturbation u is a 28×28 one of norm factor·‖u‖ (each pixel repeated factor² times)
        value = float((norms * model.factor > eps).float().mean())
        return {"evaluation": "sensitivity-guided attack", "norm": "l2", "radius": eps, "value": value,
                "protocol": "apgd"}  # fmt: skip
    if m.paper == "certified":  # CPL and SLL report certified accuracy
        eps = RADII[dataset]["l2"][2 if dataset != "cifar10" else 0]
        value = certify.accuracy_at(radii, [eps])[0]
        return {"evaluation": "certified", "norm": "l2", "radius": eps, "value": value, "protocol": "certified"}
    if m.paper == "pgd10":  # the structure-preserving authors' code: Foolbox's 10-step ℓ2 PGD, step 0.025 ε
        eps = 0.5 if dataset == "cifar10" else 1.0
        value = attacks.pgd_curve(model, xa, ya, [eps], steps=10, rel_step=0.025, monotone=False, generator=gen)[0]
        return {"evaluation": "10-step ℓ2 PGD, step 0.025 ε", "norm": "l2", "radius": eps, "value": value,
                "protocol": "apgd"}  # fmt: skip
    return None


def _monotone(robust, model, x, y, radii) -> list[float]:
    """Accuracy at each of the increasing ``radii`` when ``robust(x, y, ε)`` (a mask) attacks only the
    points that are still robust at the previous radius: a point broken at ε is broken at every larger
    radius, since the larger ball holds the same adversarial example."""
    with torch.no_grad():
        ok = torch.cat([model(b).argmax(1) for b in x.split(512)]) == y
    out = []
    for e in radii:
        idx = torch.nonzero(ok).flatten()
        if idx.numel():
            ok[idx] = robust(x[idx], y[idx], e)
        out.append(float(ok.float().mean()))
    return out


def evaluate(m: Method, model, test, dataset: str, s, *, device=None) -> dict:
    """The protocol of §6.2 for one trained model of method ``m``, as a :func:`labkit.experiment.result`
    in ℓ2 with a nested ℓ∞ result (``linf``):

    * clean accuracy on the ``n_test`` test images, and the inference throughput on them;
      clean and certified accuracy on the attacked images alone (``attacked``), for the gaps;
    * certified accuracy at each ℓ2 radius of :data:`RADII` from the method's sound bound;
    * on the first ``n_attack`` images: labkit's PGD (``pgd_steps`` steps) and ART's AutoPGD
      (cross-entropy and DLR, ``apgd_steps`` steps, ``apgd_restarts`` starts) in ℓ2 and ℓ∞ at each
      radius, from the smallest up, each radius attacking the points still robust at the one below;
      the minimal adversarial ℓ2 norms found by ART's DeepFool (0 for a misclassified point, ``None``
      where it failed) and their median over the correctly classified points;
    * the adversarial lower bound (``n_lower`` images, ``lower_steps`` steps) and the upper bound of
      the map the method bounds;
    * the paper's own evaluation beside the protocol's number (``paper``);
    * the soundness audit (:func:`soundness`) of every certified point."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    x, y = (t.to(dev) for t in test.tensors)
    with torch.no_grad():
        t0 = time.perf_counter()
        logits = torch.cat([model(b) for b in x.split(512)])
        throughput = len(x) / max(time.perf_counter() - t0, 1e-9)
    clean = float((logits.argmax(1) == y).float().mean())
    target, bound = m.bound(model)
    radii = (m.radii or (lambda model, x, y, L: certify.certified_radius(logits, y, L)))(model, x, y, bound).cpu()
    n = min(s.cifar_attack if dataset == "cifar10" else s.n_attack, len(y))
    xa, ya = x[:n], y[:n]
    out = {}
    for norm, grid_ in RADII[dataset].items():
        gen = torch.Generator().manual_seed(0)

        def labkit_pgd(xs, ys, e, norm=norm, gen=gen):
            with torch.no_grad():
                return model(attacks.pgd(model, xs, ys, e, norm=norm, steps=s.pgd_steps, generator=gen)).argmax(1) == ys

        def art_apgd(xs, ys, e, norm=norm):
            return audit.apgd_robust(model, xs, ys, e, norm=norm, steps=s.apgd_steps, restarts=s.apgd_restarts)

        out[norm] = {"pgd": _monotone(labkit_pgd, model, xa, ya, grid_),
                     "apgd": _monotone(art_apgd, model, xa, ya, grid_)}  # fmt: skip
    minimal = audit.deepfool_norms(model, xa, ya, max_iter=s.deepfool_steps)
    lower = lip.lower_bound(target, x[: s.n_lower], steps=s.lower_steps, generator=torch.Generator().manual_seed(0))
    attack = {
        "pgd": {"library": "labkit", "steps": s.pgd_steps, "restarts": 1, "points": n},
        "apgd": {"library": audit.library(), "losses": ["cross_entropy", "difference_logits_ratio"],
                 "steps": s.apgd_steps, "restarts": s.apgd_restarts, "points": n},
        "deepfool": {"library": audit.library(), "steps": s.deepfool_steps, "points": n},
    }  # fmt: skip
    l2 = RADII[dataset]["l2"]
    res = experiment.result(
        radii=l2,
        clean=clean,
        empirical=out["l2"],
        certified=certify.accuracy_at(radii, l2),
        lipschitz={"lower": lower, "upper": bound, "map": "body" if target is not model else "network"},
        norm="l2",
        attack=attack,
        linf=experiment.result(
            radii=RADII[dataset]["linf"], clean=clean, empirical=out["linf"], norm="linf", attack=attack
        ),  # fmt: skip
        minimal={
            "attack": "DeepFool",
            "norms": [v if math.isfinite(v) else None for v in minimal.tolist()],
            "median": float(minimal[minimal > 0].median()) if bool((minimal > 0).any()) else None,
        },
        parameters=sum(p.numel() for p in model.parameters()),
        throughput=throughput,
        certifies=m.certifies,
        median_radius=float(radii.median()),
        certified_points=int((radii > 0).sum()),
        attacked={"clean": _accuracy(model, xa, ya), "certified": [float((radii[:n] > e).float().mean()) for e in l2]},
    )
    res["paper"] = _paper(m, model, dataset, xa, ya, s, radii)
    res["audit"] = soundness(model, x, y, radii, lower=lower, bound=bound, minimal=minimal, steps=s.audit_steps,
                             n_apgd=s.n_audit_apgd)  # fmt: skip
    return res


def soundness(model, x, y, radii, *, lower: float, bound: float, minimal=None, steps: int = 20,
              n_apgd: int = 0) -> dict:  # fmt: skip
    """The soundness audit of a certificate (§6.2): ART's PGD at 0.99 of each certified point's radius
    (:func:`labkit.audit.certificates_batch`, all points with a positive radius), ART's AutoPGD on the
    first ``n_apgd`` of them (:func:`labkit.audit.certificates`), the DeepFool norms ``minimal`` of the
    first points (none may lie below the point's certified radius) and the adversarial lower bound
    ``lower`` (it may not exceed ``bound``). ``sound`` is true when nothing broke."""
    batch = audit.certificates_batch(model, x, y, radii, steps=steps)
    apgd = audit.certificates(model, x, y, radii, limit=n_apgd, steps=steps) if n_apgd else None
    below = []
    if minimal is not None:
        r = radii[: len(minimal)].double()
        below = torch.nonzero((r > 0) & (minimal < r * (1 - 1e-4))).flatten().tolist()
    crossed = lower > bound * (1 + 1e-6)
    flipped = batch["flipped"] + (apgd["flipped"] if apgd else 0)
    return {
        "points": batch["points"],
        "flipped": batch["flipped"],
        "flipped_index": batch["flipped_index"],
        "attack": batch["attack"],
        "apgd": apgd,
        "deepfool_below_radius": below,
        "lower_above_bound": crossed,
        "sound": flipped == 0 and not below and not crossed,
    }


def run_one(dataset: str, name: str, seed: int, s, *, device=None, progress=None) -> dict:
    """Train method ``name`` on ``dataset`` with ``seed`` and the bench sizes ``s`` and evaluate it
    (:func:`evaluate`); the result holds the training time, the method's description and what its
    training kept."""
    m = method(name)
    tr, te = _data(dataset, s)
    seed_everything(seed)
    ctx = _Context(dataset, seed, tr, s, resolve_device(device), progress)
    t0 = time.perf_counter()
    model, kept = m.train(ctx)
    seconds = time.perf_counter() - t0
    res = evaluate(m, model, te, dataset, s, device=device)
    res.update(seconds=seconds, epochs=s.epochs, method=name, chapter=m.chapter, title=m.title, dataset=dataset,
               seed=seed, guarantee=m.guarantee, training=kept)  # fmt: skip
    return res


def record_path(folder, run) -> Path:
    """The file of the run ``(data set, method, seed)`` in the results ``folder``."""
    dataset, name, seed = run
    return Path(folder) / f"{dataset}__{name}__seed{seed}.json"


def _key(run) -> str:
    return f"{run[0]}/{run[1]}/seed {run[2]}"


def run_grid(runs, sizes: dict, *, mode: str, folder=None, device=None, progress=None, restart: bool = False) -> dict:
    """Run ``runs`` (from :func:`grid`, maybe a :func:`shard`) with the bench ``sizes`` and return the
    results keyed ``"<data set>/<method>/seed <s>"``. With a results ``folder`` each finished run is
    written at once, atomically, as its own record (:func:`record_path`); a run whose record is
    there with the same mode and sizes (:func:`run_sizes`) is read, not run again (so a killed grid resumes where it
    stopped; the run that was cut off starts again and, being seeded, gives the same numbers).
    A record there with other sizes stops the grid before anything runs, unless ``restart``.
    A progress bar counts the runs (in full mode each training shows its own as well)."""
    from tqdm.auto import tqdm

    from .chapters import ch06, given

    s = given(sizes, ch06.SIZES)
    out, todo = _plan(runs, sizes, mode=mode, folder=folder, restart=restart)
    env = experiment.environment(device)
    show = progress_enabled() if progress is None else progress
    for run, path in tqdm(todo, desc="bench", disable=not show):
        t0 = time.perf_counter()
        res = run_one(*run, s, device=device, progress=show and mode == "full")  # a run's own bars: long runs only
        if path is not None:
            experiment.save_record(path, res, mode=mode, seconds=time.perf_counter() - t0, sizes=sizes, env=env,
                                   extra={"run": _key(run)})  # fmt: skip
        out[_key(run)] = res
    return {_key(run): out[_key(run)] for run in runs}


#: The sizes that choose the grid (which runs), not what a run does; records are compared without them.
GRID_SIZES = ("methods", "datasets", "seeds")


def run_sizes(sizes: dict) -> dict:
    """The sizes that determine a run's numbers: ``sizes`` without :data:`GRID_SIZES`, as JSON gives
    them back. Two records of one run with the same ``run_sizes`` hold the same numbers, whether
    their grids were chosen with ``--seeds 0`` or ``--set 'seeds=[0]'``."""
    return {k: v for k, v in json.loads(json.dumps(sizes or {})).items() if k not in GRID_SIZES}


def _plan(runs, sizes, *, mode, folder, restart):
    """``(finished results, [(run, path)] to do)``; ``ValueError`` for a record made with other sizes
    (:func:`run_sizes`), ``OSError`` for a folder that cannot be written, before anything runs."""
    out, todo = {}, []
    if folder is not None:
        _validate.writable(Path(folder) / ".bench", "results folder")
    for run in runs:
        path = None if folder is None else record_path(folder, run)
        if path is not None and path.exists() and not restart:
            old = experiment.load_record(path)
            if old.get("mode") != mode or run_sizes(old.get("sizes")) != run_sizes(sizes):
                raise ValueError(
                    f"{path} was made with other sizes (mode {old.get('mode')!r}); give another --results folder "
                    "or --restart to run it again."
                )
            out[_key(run)] = old["results"]
            continue
        todo.append((run, path))
    return out, todo


def collect(folder) -> dict:
    """The results of every record in a results ``folder``, keyed as :func:`run_grid` keys them, in
    the order of :func:`grid` (data set, method, seed); an empty dict when there is none."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.glob("*__*__seed*.json")) if folder.is_dir() else []:
        rec = experiment.load_record(path)
        keep = ("mode", "created", "device", "device_name", "torch", "commit", "dirty", "seconds", "sizes")
        found[rec["run"]] = {**rec["results"], "record": {k: rec.get(k) for k in keep}}
    order = {(d, m): i for i, (d, m) in enumerate((d, m) for d in DATASETS for m in METHODS)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(tuple(kv[0].split("/")[:2]), 1e9), kv[0])))


def main(argv=None) -> int:
    """``python -m labkit.bench``: run a grid of the bench and write one record per run, or
    (``--summary``) print the chapter's tables of the records in the results folder."""
    import argparse

    from . import runtime
    from .chapters import ch06

    parser = argparse.ArgumentParser(prog="python -m labkit.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help=f"default: all ({', '.join(METHODS)}), on CIFAR-10 the mode's cifar_methods",
    )
    parser.add_argument("--datasets", nargs="+", metavar="DATA", help=f"default: the mode's ({', '.join(DATASETS)})")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="default: the mode's seeds")
    parser.add_argument("--mode", choices=runtime.MODES, default=None, help="sizes (default: LABKIT_MODE or book)")
    parser.add_argument("--results", type=Path, help="results folder (default: book/data/bench_<mode>)")
    parser.add_argument("--shard", default="1/1", metavar="I/N", help="run part I of N of the grid (default 1/1)")
    parser.add_argument("--restart", action="store_true", help="run again the runs that have a record")
    parser.add_argument("--set", action="append", default=[], metavar="SIZE=VALUE",
                        help="change one of the mode's sizes (a JSON value), e.g. --set epochs=5 for a shortened "
                        "schedule; every record keeps the sizes it ran with")  # fmt: skip
    parser.add_argument("--summary", action="store_true", help="print the tables of the records and stop")
    args = parser.parse_args(argv)
    mode = args.mode or runtime.mode()
    try:
        sizes = experiment.set_sizes(ch06.sizes(mode), args.set)
    except ValueError as err:
        parser.error(str(err))
    folder = args.results or ch06.DATA / f"bench_{mode}"
    if args.summary:
        results = collect(folder)
        if not results:
            print(f"no bench records in {folder}", file=sys.stderr)
            return 1
        print(ch06.table(results), ch06.audit_table(results), sep="\n\n")
        return 0
    try:
        only = {} if args.methods else {"cifar10": sizes["cifar_methods"]}
        runs = grid(args.methods, args.datasets or sizes["datasets"], args.seeds or sizes["seeds"], only=only)
        runs = shard(runs, args.shard)
        _plan(runs, sizes, mode=mode, folder=folder, restart=args.restart)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    if not runs:
        print(f"shard {args.shard} of this grid is empty.", file=sys.stderr)
        return 0
    results = run_grid(runs, sizes, mode=mode, folder=folder, restart=args.restart)
    print(f"{len(results)} run(s) in {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
