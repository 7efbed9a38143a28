"""The bench's protocol (§6.2): what a method of the bench is (:class:`Method`), one evaluation
for every trained model, and the soundness audit of every certificate.

Every method is built and trained by its own chapter (``bench_methods()`` of each chapter
module); Chapter 6's experiment (:mod:`labkit.chapters.ch06`) collects them into its registry and
grid. What this module adds is the *protocol*: the same test points, radii, attacks and attack
strengths for every model, with an independent attack library (ART, :mod:`labkit.audit`) beside
labkit's own PGD, so that the papers' numbers, each measured its own way, become comparable.
The grid runs with ``python -m labkit.chapters ch06`` (``--shard 2/4`` for one part of four,
``--summary`` for the tables of the records).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
from torch.utils.data import TensorDataset

from . import attacks, audit, certify, experiment, snode
from . import lipschitz as lip
from .runtime import resolve_device

__all__ = [
    "DATASETS",
    "IMAGES",
    "RADII",
    "DENSE",
    "BOTH",
    "PRODUCT",
    "Method",
    "Context",
    "network_bound",
    "product_bound",
    "evaluate",
    "soundness",
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


@dataclasses.dataclass(frozen=True, kw_only=True)
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
    the paper's own evaluation (:func:`evaluate`). ``kinds``: :data:`DENSE` or :data:`BOTH`.
    Built by keyword only."""

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


#: The kinds of data a method runs on, the MNIST-like sets only or CIFAR-10's images too.
DENSE, BOTH = ("dense",), ("dense", "conv")
#: The guarantee of a method with none, a bound computed after training.
PRODUCT = "none; a product of layer norms, computed after training"


def network_bound(model):
    """``(model, L)``: the whole classifier and its own sound bound, ``model.lipschitz_bound()``."""
    return model, float(model.lipschitz_bound())


def product_bound(model):
    """``(model, L)``: the whole classifier and the product of its layer norms."""
    return model, lip.upper_bound(model)


@dataclasses.dataclass
class Context:
    """What a method's ``train`` gets: the data set's name, the seed, the training set, the bench's
    sizes ``s`` (epochs, batch size, validation images), the device and whether to show progress."""

    dataset: str
    seed: int
    train: TensorDataset
    s: object
    device: torch.device
    progress: bool | None


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
        return {
            "evaluation": "CLIP's sphere attack, 7 steps",
            "norm": "l2",
            "radius": 2.0,
            "value": value,
            "protocol": "apgd",
        }
    if m.paper == "sensitivity":  # the sNODE reference code's sensitivity attack, on the encoded 14×14 images
        inner = model.model
        norms = snode.sensitivity_attack(
            inner, inner.encode(snode.downsample(xa, model.factor)), ya, steps=s.pgd_steps * 3, generator=gen
        )
        eps = 1.0  # a 14×14 perturbation u is a 28×28 one of norm factor·‖u‖ (each pixel repeated factor² times)
        value = float((norms * model.factor > eps).float().mean())
        return {
            "evaluation": "sensitivity-guided attack",
            "norm": "l2",
            "radius": eps,
            "value": value,
            "protocol": "apgd",
        }
    if m.paper == "certified":  # CPL and SLL report certified accuracy
        eps = RADII[dataset]["l2"][2 if dataset != "cifar10" else 0]
        value = certify.accuracy_at(radii, [eps])[0]
        return {"evaluation": "certified", "norm": "l2", "radius": eps, "value": value, "protocol": "certified"}
    if m.paper == "pgd10":  # the structure-preserving authors' code: Foolbox's 10-step ℓ2 PGD, step 0.025 ε
        eps = 0.5 if dataset == "cifar10" else 1.0
        value = attacks.pgd_curve(model, xa, ya, [eps], steps=10, rel_step=0.025, monotone=False, generator=gen)[0]
        return {
            "evaluation": "10-step ℓ2 PGD, step 0.025 ε",
            "norm": "l2",
            "radius": eps,
            "value": value,
            "protocol": "apgd",
        }
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


def _curves(model, xa, ya, dataset, s) -> dict:
    """``{norm: {"pgd": curve, "apgd": curve}}``: labkit's PGD and ART's AutoPGD at each radius of
    :data:`RADII`, from the smallest up, on the points still robust at the one below."""
    out = {}
    for norm, grid_ in RADII[dataset].items():
        gen = torch.Generator().manual_seed(0)

        def labkit_pgd(xs, ys, e, norm=norm, gen=gen):
            with torch.no_grad():
                return model(attacks.pgd(model, xs, ys, e, norm=norm, steps=s.pgd_steps, generator=gen)).argmax(1) == ys

        def art_apgd(xs, ys, e, norm=norm):
            return audit.apgd_robust(model, xs, ys, e, norm=norm, steps=s.apgd_steps, restarts=s.apgd_restarts)

        out[norm] = {
            "pgd": _monotone(labkit_pgd, model, xa, ya, grid_),
            "apgd": _monotone(art_apgd, model, xa, ya, grid_),
        }
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
    out = _curves(model, xa, ya, dataset, s)
    minimal = audit.deepfool_norms(model, xa, ya, max_iter=s.deepfool_steps)
    lower = lip.lower_bound(target, x[: s.n_lower], steps=s.lower_steps, generator=torch.Generator().manual_seed(0))
    attack = {
        "pgd": {"library": "labkit", "steps": s.pgd_steps, "restarts": 1, "points": n},
        "apgd": {
            "library": audit.library(),
            "losses": ["cross_entropy", "difference_logits_ratio"],
            "steps": s.apgd_steps,
            "restarts": s.apgd_restarts,
            "points": n,
        },
        "deepfool": {"library": audit.library(), "steps": s.deepfool_steps, "points": n},
    }
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
        ),
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
    res["audit"] = soundness(
        model, x, y, radii, lower=lower, bound=bound, minimal=minimal, steps=s.audit_steps, n_apgd=s.n_audit_apgd
    )
    return res


def soundness(
    model, x, y, radii, *, lower: float, bound: float, minimal=None, steps: int = 20, n_apgd: int = 0
) -> dict:
    """The soundness audit of a certificate (§6.2): ART's PGD at 0.99 of each certified point's radius
    (:func:`labkit.audit.certificates_batch`, all points with a positive radius), ART's AutoPGD on the
    first ``n_apgd`` of them (:func:`labkit.audit.certificates`), the DeepFool norms ``minimal`` of the
    first points (none may lie below the point's certified radius) and the adversarial lower bound
    ``lower`` (it may not exceed ``bound``). ``sound`` is true when nothing broke."""
    batch = audit.check(model, x, y, radii, attack="art-pgd", steps=steps)
    apgd = audit.check(model, x, y, radii, attack="art-apgd", limit=n_apgd, steps=steps) if n_apgd else None
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
