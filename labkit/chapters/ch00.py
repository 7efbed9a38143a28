"""Chapter 0's experiment: a small MNIST classifier, attacked and bounded (§0.1–§0.3).

A ReLU network 784-256-256-10 is trained (:func:`train_model`); :func:`run` measures its clean
accuracy, its ℓ∞ curves under noise, FGSM and PGD, its ℓ2 curve under PGD beside the certified
accuracy from the product of layer norms, and three lower bounds of its Lipschitz constant
against that upper bound. Chapter 0 has no full-mode record.
"""

from __future__ import annotations

import time
from functools import partial

import torch
from torch import nn

from .. import attacks, certify, data, experiment, lipschitz, report, train
from . import DATA, given, pick

__all__ = [
    "SIZES",
    "RECORD",
    "DATA",
    "EPS_INF",
    "EPS_L2",
    "sizes",
    "mlp",
    "train_model",
    "run",
    "estimates_table",
    "values",
]

#: The ℓ∞ radii of the chapter's curves.
EPS_INF = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2]
#: The ℓ2 radii of the chapter's curves.
EPS_L2 = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
#: The sizes per mode (images, epochs, PGD steps, starts and steps of the pair search).
SIZES = {
    "smoke": {"n_train": 300, "n_test": 100, "epochs": 2, "pgd_steps": 5, "n_lower": 16, "lower_steps": 20},
    "book": {"n_train": 20_000, "n_test": 1_000, "epochs": 4, "pgd_steps": 20, "n_lower": 100, "lower_steps": 100},
    "full": {"n_train": None, "n_test": None, "epochs": 15, "pgd_steps": 50, "n_lower": 500, "lower_steps": 300},
}
RECORD = None


def sizes(mode: str | None = None) -> dict:
    """The sizes of :func:`train_model` and :func:`run` in ``mode`` (default: the current mode)."""
    return pick(SIZES, mode)


def mlp() -> nn.Sequential:
    """The chapter's classifier: 784-256-256-10 with ReLU."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def train_model(*, seed=0, device=None, **sizes):
    """With the :data:`SIZES` given, load MNIST (``n_train`` / ``n_test`` images) and train
    :func:`mlp` for ``epochs`` epochs (Adam 1e-3, batch 128). Returns ``(model, train_set,
    test_set)``, the model on the CPU in eval mode."""
    s = given(sizes, SIZES)
    train_set = data.load("mnist", train=True, limit=s.n_train)
    test_set = data.load("mnist", train=False, limit=s.n_test)
    torch.manual_seed(seed)
    model = mlp()
    train.fit(model, train_set, epochs=s.epochs, lr=1e-3, batch_size=128, seed=seed, device=device)
    return model.cpu().eval(), train_set, test_set


def run(model, test_set, *, seed=0, **sizes) -> dict:
    """Attack and bound ``model`` on ``test_set``: ``{"linf": result, "l2": result, "estimates": {...}}``.

    ``linf``: :func:`labkit.experiment.robustness` at :data:`EPS_INF`; ``l2``: PGD-ℓ2 and the certified
    accuracy at :data:`EPS_L2` with the product of layer norms as the constant; ``estimates``: the
    lower bounds of the constant from random pairs of test images (:func:`labkit.lipschitz.quotient`),
    gradient ascent on pairs and the largest Jacobian norm (``n_lower`` images each), with their
    times, and the upper bound. ``sizes`` are the :data:`SIZES` (PGD steps, starts and steps of the
    pair search)."""
    s = given(sizes, SIZES)
    pgd_steps, n_lower, lower_steps = s.pgd_steps, s.n_lower, s.lower_steps
    linf = experiment.robustness(model, test_set, EPS_INF, pgd_steps=pgd_steps, seed=seed, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    pgd_l2 = attacks.robust_accuracy(
        model, test_set, partial(attacks.pgd_l2, steps=pgd_steps, generator=gen), EPS_L2, device="cpu"
    )
    upper = lipschitz.upper_bound(model)
    cert = certify.certified_accuracy(model, test_set, EPS_L2, upper, device="cpu")
    l2 = experiment.result(
        radii=EPS_L2,
        clean=linf["clean"],
        norm="l2",
        empirical={"pgd": list(pgd_l2.values())},
        certified=list(cert.values()),
        lipschitz={"upper": upper, "map": "network"},
        attack={"pgd": {"steps": pgd_steps, "restarts": 1, "points": len(test_set)}},
    )
    xs = test_set.tensors[0][:n_lower]
    t0 = time.perf_counter()
    pairs = lipschitz.lower_bound(
        model, xs, method="pairs", steps=lower_steps, generator=torch.Generator().manual_seed(seed)
    )
    t_pairs = time.perf_counter() - t0
    t0 = time.perf_counter()
    jac = lipschitz.lower_bound(model, xs, method="jacobian")
    t_jac = time.perf_counter() - t0
    others = test_set.tensors[0][n_lower : 2 * n_lower] if len(test_set) >= 2 * n_lower else xs.flip(0)
    with torch.no_grad():
        rand = float(lipschitz.quotient(model, xs, others).max())
    l2["lipschitz"]["lower"] = max(pairs, jac)
    return {
        "linf": linf,
        "l2": l2,
        "estimates": {
            "random": rand,
            "pairs": pairs,
            "pairs_seconds": t_pairs,
            "jacobian": jac,
            "jacobian_seconds": t_jac,
            "upper": upper,
            "n_lower": n_lower,
        },
    }


def estimates_table(results: dict) -> report.Table:
    """§0.3's table: the three lower bounds and the upper bound of the constant."""
    e = results["estimates"]
    n = e["n_lower"]
    rows = [
        {"name": "random pairs of test images", "kind": "lower", "value": e["random"], "time": None},
        {
            "name": f"gradient ascent on pairs ({n} starts)",
            "kind": "lower",
            "value": e["pairs"],
            "time": e["pairs_seconds"],
        },
        {
            "name": f"largest Jacobian norm ({n} images)",
            "kind": "lower",
            "value": e["jacobian"],
            "time": e["jacobian_seconds"],
        },
        {"name": "product of layer norms", "kind": "upper", "value": e["upper"], "time": None},
    ]
    return report.table(
        rows, [("estimate", "name"), ("kind", "kind"), ("value", "value", "{:.2f}"), ("time", "time", "{:.1f} s")]
    )


def values(results: dict) -> dict:
    """The numbers the prose quotes."""
    linf, l2, e = results["linf"], results["l2"], results["estimates"]
    return {
        "acc_fgsm_01": experiment.at(linf, "fgsm", 0.1),
        "acc_pgd_01": experiment.at(linf, "pgd", 0.1),
        "acc_noise_01": experiment.at(linf, "noise", 0.1),
        "pgd_steps": linf["attack"]["pgd"]["steps"],
        "L_upper": e["upper"],
        "cert_05": experiment.at(l2, "certified", 0.5),
        "pgd_l2_05": experiment.at(l2, "pgd", 0.5),
        "lb_pairs": e["pairs"],
        "lb_jac": e["jacobian"],
        "lb_random": e["random"],
        "gap_factor": e["upper"] / max(e["pairs"], e["jacobian"]),
        "random_share": e["random"] / e["pairs"],
    }
