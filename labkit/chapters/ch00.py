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
from . import DATA, Job, execute, given, pick

__all__ = [
    "SIZES",
    "RECORD",
    "DATA",
    "EPS_INF",
    "EPS_L2",
    "sizes",
    "mlp",
    "train_model",
    "jobs",
    "run",
    "measure",
    "verify",
    "table",
    "estimates_table",
    "values",
    "plot_curves",
    "gradient_check",
    "gradient_table",
    "gradient_values",
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
    """The sizes of :func:`train_model` and :func:`measure` in ``mode`` (default: the current mode)."""
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


def jobs(s, *, seed=0, device=None) -> list[Job]:
    """The chapter's one :class:`~labkit.chapters.Job`, ``"mnist"``: :func:`train_model`, then
    :func:`measure` on the test images."""

    def train_():
        model, _, test_set = train_model(**vars(s), seed=seed, device=device)
        return model, {"test": test_set}

    return [Job("mnist", train_, lambda model, kept, seconds: measure(model, kept["test"], **vars(s), seed=seed), seed)]


def run(*, seed=0, device=None, done=None, on_result=None, **sizes) -> dict:
    """:func:`train_model` and :func:`measure` with the :data:`SIZES` given, as the other chapters run
    (:func:`labkit.chapters.execute`): ``{"mnist": result}``. The page runs the two steps itself,
    since it shows the trained model before measuring it."""
    return execute(jobs(given(sizes, SIZES), seed=seed, device=device), done=done, on_result=on_result)


def measure(model, test_set, *, seed=0, **sizes) -> dict:
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
    e = _measured(results)["estimates"]
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


def _measured(results: dict) -> dict:
    """The one result of :func:`measure` in ``results``, given as it is or as :func:`run` keys it."""
    return results if "estimates" in results else results["mnist"]


def verify(results: dict) -> None:
    """Raise ``AssertionError`` if a lower bound of the constant exceeds its upper bound, the
    product of layer norms, or if the certified accuracy at a radius exceeds what PGD leaves there
    (a certificate below an attack would be unsound)."""
    r = _measured(results)
    e, l2 = r["estimates"], r["l2"]
    assert max(e["random"], e["pairs"], e["jacobian"]) <= e["upper"] * (1 + 1e-6), "a lower bound above the upper"
    for eps, c, p in zip(l2["radii"], l2["certified"], l2["empirical"]["pgd"]):
        assert c <= p + 1e-6, f"certified {c} above PGD's {p} at ε = {eps}"  # float32 accuracies


def table(results: dict) -> report.Table:
    """The chapter's table: :func:`estimates_table`."""
    return estimates_table(_measured(results))


def values(results: dict) -> dict:
    """The numbers the prose quotes."""
    results = _measured(results)
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


def plot_curves(results: dict, pgd_steps: int):
    """§0.2's figure: accuracy under noise, FGSM and PGD in ℓ∞ (left), and under ℓ2 PGD beside the
    certified accuracy of the product bound (right). Returns the figure."""
    import matplotlib.pyplot as plt

    r = _measured(results)
    linf, l2 = r["linf"], r["l2"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = {"noise": "Gaussian noise", "fgsm": "FGSM", "pgd": f"PGD ({pgd_steps} steps)"}
    for (key, name), marker in zip(names.items(), "o^s"):
        ax1.plot(linf["radii"], linf["empirical"][key], marker=marker, label=name)
    ax1.set(xlabel="ε (l∞)", ylabel="accuracy", title="l∞ perturbations", ylim=(-0.02, 1.02))
    ax1.legend()
    ax2.plot(l2["radii"], l2["empirical"]["pgd"], "s-", label="PGD-l2 (empirical, an upper estimate)")
    ax2.plot(l2["radii"], l2["certified"], "d-", label=f"certified (L ≤ {l2['lipschitz']['upper']:.0f})")
    ax2.set(xlabel="ε (l2)", title="l2 perturbations", ylim=(-0.02, 1.02))
    ax2.legend()
    fig.tight_layout()
    return fig


def gradient_check(seed: int = 0, h: float = 1e-6) -> dict:
    """§0.4's check, in float64: the directional derivative of ``‖φ(x₀)‖²`` (a
    :class:`~labkit.odes.NeuralODE` of a tanh field, 16 random states) along a random direction of
    the parameters, by direct backpropagation and by the adjoint at tolerances 1e-4 and 1e-8,
    against central finite differences of step ``h`` at tolerance 1e-12. Returns the rows (method,
    tolerance, derivative, relative error, time in ms) and the finite-difference value."""
    from .. import odes

    torch.manual_seed(seed)
    field = odes.VectorField(6, hidden=24, activation="tanh").double()
    x0 = torch.randn(16, 6, dtype=torch.float64)
    params = list(field.parameters())
    direction = [torch.randn_like(p) for p in params]

    def derivative(adjoint, tol):
        field.zero_grad()
        node = odes.NeuralODE(field, 1.0, rtol=tol, atol=tol, adjoint=adjoint)
        t0 = time.perf_counter()
        node(x0).pow(2).sum().backward()
        return sum(float((p.grad * d).sum()) for p, d in zip(params, direction)), time.perf_counter() - t0

    reference = odes.NeuralODE(field, 1.0, rtol=1e-12, atol=1e-12)

    def move(step):
        for p, d in zip(params, direction):
            p += step * d

    with torch.no_grad():
        move(h)
        up = float(reference(x0).pow(2).sum())
        move(-2 * h)
        down = float(reference(x0).pow(2).sum())
        move(h)  # back to the weights
    fd = (up - down) / (2 * h)
    rows = []
    for tol in (1e-4, 1e-8):
        for adjoint in (False, True):
            g, secs = derivative(adjoint, tol)
            rows.append(
                {
                    "method": "adjoint" if adjoint else "direct",
                    "tol": tol,
                    "g": g,
                    "error": abs(g - fd) / abs(fd),
                    "ms": 1000 * secs,
                }
            )
    return {"rows": rows, "fd": fd, "h": h}


def gradient_table(check: dict) -> report.Table:
    """The table of :func:`gradient_check`."""
    columns = [
        ("method", "method"),
        ("rtol = atol", "tol", "{:g}"),
        ("directional derivative", "g", "{:.10f}"),
        ("relative error vs FD", "error", "{:.1e}"),
        ("time", "ms", "{:.0f} ms"),
    ]
    caption = f"Finite-difference reference (h = {check['h']:g}, tolerance 1e-12): **{check['fd']:.10f}**"
    return report.table(check["rows"], columns, caption=caption)


def gradient_values(check: dict) -> dict:
    """The adjoint's relative errors at the tight and the loose tolerance, for the prose."""
    errors = {(r["method"], r["tol"]): r["error"] for r in check["rows"]}
    return {"adj_err_tight": errors["adjoint", 1e-8], "adj_err_loose": errors["adjoint", 1e-4]}
