"""Chapter 1's experiment: classical and stabilised training of a neural-ODE classifier (§1.4).

For each data set and target ``δ`` (``None``: classical training) an
:class:`~labkit.lognorm.ODEClassifier` (tanh block on ``[0, 1]``, explicit Euler) is trained,
with :class:`~labkit.lognorm.StabilizeEachEpoch` for a target; then its clean accuracy, the
noise, FGSM and PGD curves, the certificate and a lower bound of the block's Lipschitz constant
by pair ascent on 64 lifted test points are measured.
"""

from __future__ import annotations

import time

import torch

from .. import bench, data, experiment, lipschitz, lognorm, report, train
from . import DATA, Job, cached, execute, given, per_mode, pick

__all__ = [
    "SIZES",
    "RECORD",
    "DATA",
    "sizes",
    "label",
    "train_classifier",
    "jobs",
    "run",
    "bench_methods",
    "evaluate",
    "certification",
    "certified_table",
    "comparison",
    "verify",
    "table",
    "values",
    "DEMOS",
    "demos",
    "motivating_matrix",
    "sweep",
    "sweep_table",
    "against_slsqp",
    "slsqp_table",
    "bench_table",
    "bench_growth",
    "bench_matrix",
    "tail_cost",
]

# fmt: off
#: The sizes per mode (in full mode all 60 000 / 10 000 images, width 16, 15 epochs, PGD with 50 steps;
#: both architectures, the free lift and head and the unit-norm ones, certified at the ℓ2 ``radii``).
SIZES = per_mode({
    #              smoke  book    full
    "n_train":   (300,   10_000, None),
    "n_test":    (100,   1_000,  None),
    "epochs":    (1,     3,      15),
    "width":     (6,     10,     16),
    "pgd_steps": (5,     20,     50),
    "n_audit":   (50,    200,    1000),
}, datasets=["mnist", "fashion_mnist"], targets=[None, 0.5, 0.2], eps=[0.0, 0.05, 0.1, 0.15, 0.2], steps=10,
   lr=3e-3, architectures=["free", "unit norm"], radii=[0.1, 0.2, 0.3, 0.5])
# fmt: on
#: The full-mode record, in ``book/data``.
RECORD = "ch01_full.json"


def sizes(mode: str | None = None) -> dict:
    """The sizes of :func:`run` in ``mode`` (default: the current mode)."""
    return pick(SIZES, mode)


def label(target, architecture: str = "free") -> str:
    """The name of a run: ``classical`` or ``δ = <target>``, followed by ``, unit norm`` for the
    architecture whose lift and head have spectral norm at most 1."""
    name = "classical" if target is None else f"δ = {target:g}"
    return name if architecture == "free" else f"{name}, {architecture}"


def train_classifier(
    train_set,
    *,
    width,
    steps,
    target,
    architecture="free",
    epochs,
    lr,
    batch_size=128,
    seed=0,
    device=None,
    progress=None,
) -> tuple:
    """The chapter's recipe, which the bench (§6.1) runs too: an :class:`~labkit.lognorm.ODEClassifier`
    (``width``, tanh block on ``[0, 1]`` with ``steps`` Euler steps, the lift and head free or of unit
    norm) trained with Adam, and stabilised to ``target`` after every epoch
    (:class:`~labkit.lognorm.StabilizeEachEpoch`; ``None``: classical training). Returns ``(model,
    kept)``, kept holding the training ``history`` and the stabilisation's (``stabilize``)."""
    if architecture not in ("free", "unit norm"):
        raise ValueError(f"architectures must be 'free' or 'unit norm', got {architecture!r}.")
    torch.manual_seed(seed)
    model = lognorm.ODEClassifier(
        width=width, T=1.0, steps=steps, activation="tanh", unit_norm=architecture == "unit norm"
    )
    hook = lognorm.StabilizeEachEpoch(target) if target is not None else None
    hist = train.fit(
        model,
        train_set,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        after_epoch=hook,
        device=device,
        progress=progress,
    )
    return model, {"history": hist.as_dict(), "stabilize": hook.history if hook else []}


def jobs(s, *, seed=0, device=None) -> list[Job]:
    """One :class:`~labkit.chapters.Job` per (data set, architecture, target) of the sizes ``s``:
    :func:`train_classifier`, then :func:`evaluate`."""
    out = []
    for name in s.datasets:
        tr = cached(lambda name=name: data.load(name, limit=s.n_train))
        te = cached(lambda name=name: data.load(name, train=False, limit=s.n_test))
        for arch, delta in [(a, d) for a in s.architectures for d in s.targets]:
            recipe = {
                "width": s.width,
                "steps": s.steps,
                "target": delta,
                "architecture": arch,
                "epochs": s.epochs,
                "lr": s.lr,
                "seed": seed,
                "device": device,
            }
            out.append(
                Job(
                    f"{name}/{label(delta, arch)}",
                    lambda tr=tr, recipe=recipe: train_classifier(tr(), **recipe),
                    lambda model, kept, seconds, te=te, delta=delta: evaluate(
                        model, te(), s, target=delta, kept=kept, seconds=seconds, seed=seed, device=device
                    ),
                    seed,
                )
            )
    return out


def run(*, seed=0, device=None, done=None, on_result=None, **sizes) -> dict:
    """Train and evaluate every (data set, architecture, target) with the :data:`SIZES` given
    (:func:`jobs`); results keyed ``"<data set>/<label>"`` (:func:`label`), each a
    :func:`labkit.experiment.result` with the block's bounds (``map: "block"``: the pair-ascent lower
    bound and the Euler bound), the ``certificate``, the stabilisation ``history`` and the
    ``certification`` of the whole classifier (:func:`certification`). Results in ``done`` are kept,
    and ``on_result(key, result)`` is called after each new one (:func:`labkit.chapters.execute`)."""
    s = given(sizes, SIZES)
    for arch in s.architectures:
        if arch not in ("free", "unit norm"):
            raise ValueError(f"architectures must be 'free' or 'unit norm', got {arch!r}.")
    return execute(jobs(s, seed=seed, device=device), done=done, on_result=on_result)


def evaluate(model, test, s, *, target, kept: dict, seconds: float, seed=0, device=None) -> dict:
    """§1.4's measurements of a trained classifier: clean accuracy, the noise, FGSM and PGD curves
    at ``eps``, the certificate, a pair-ascent lower bound of the block's constant on 64 lifted test
    points, and the :func:`certification` of the whole classifier."""
    model.eval()
    r = experiment.robustness(
        model,
        test,
        s.eps,
        pgd_steps=s.pgd_steps,
        seed=seed,
        device=device,
        seconds=seconds,
        sizes=vars(s),
        history=kept["stabilize"],
        target=target,
    )
    dev = next(model.parameters()).device
    z = model.lift_features(test.tensors[0][:64].to(dev).flatten(1)).detach()
    lower = lipschitz.lower_bound(model.block, z, steps=100, generator=torch.Generator().manual_seed(seed))
    r["certificate"] = certificate = model.certificate()
    r["lipschitz"] = {"lower": lower, "upper": certificate["euler_bound"], "map": "block"}
    r["certification"] = certification(model, test, s.radii, n_audit=s.n_audit, steps=s.pgd_steps, seed=seed)
    return r


def certification(model, test, radii, *, n_audit: int, steps: int, seed: int = 0) -> dict:
    """The ℓ2 certificate of the whole classifier (§1.4): radii ``r = margin/(√2 L)`` with ``L`` the
    classifier bound of :meth:`~labkit.lognorm.ODEClassifier.certificate` (the Euler bound times the
    norms of lift and head), the certified accuracy at each of ``radii``, an audit (ℓ2 PGD with
    ``steps`` steps at 0.99 of its own radius on the first ``n_audit`` certified test points: the
    number it flips must be 0), and a pair-ascent lower bound of the classifier's constant, which
    must not exceed ``L``."""
    from .. import audit, certify

    x, y = test.tensors
    dev = next(model.parameters()).device
    x, y = x.to(dev), y.to(dev)
    L = model.certificate()["lipschitz_bound"]
    with torch.no_grad():
        r = certify.certified_radius(model(x), y, L)
    a = audit.check(model, x, y, r, attack="labkit", steps=steps, limit=n_audit, seed=seed)
    lower = lipschitz.lower_bound(model, x[:64], steps=100, generator=torch.Generator().manual_seed(seed))
    return {
        "norm": "l2",
        "bound": L,
        "radii": list(radii),
        "certified": certify.accuracy_at(r, radii),
        "audit": {
            "points": a["points"],
            "flipped": a["flipped"],
            "attack": f"PGD l2, {steps} steps, at 0.99 of each radius",
        },
        "lower": lower,
    }


def verify(results: dict) -> None:
    """Raise ``AssertionError`` if a pair-ascent lower bound of a block exceeds its certified
    Euler bound, or, where the classifier was certified (:func:`certification`), if the audit
    flipped a certified point or the classifier's lower bound exceeds its certified bound (a
    broken certificate)."""
    for key, r in results.items():
        lip = r["lipschitz"]
        assert lip["lower"] <= lip["upper"] * (1 + 1e-6), f"{key}: a certified bound was broken ({lip})"
        c = r.get("certification")  # records made before the classifier was certified have none
        if c is not None:
            assert c["audit"]["flipped"] == 0, f"{key}: the audit broke {c['audit']['flipped']} certified points"
            assert c["lower"] <= c["bound"] * (1 + 1e-6), f"{key}: the classifier's bound was broken ({c})"


def table(results: dict) -> report.Table:
    """§1.4's table: accuracy, PGD at ε = 0.1, μ* and the bounds of each run."""
    rows = [{"key": k, **r} for k, r in results.items()]
    cert = lambda field: lambda r: r["certificate"][field]  # noqa: E731
    return report.table(
        rows,
        [
            ("data", lambda r: r["key"].split("/")[0]),
            ("training", lambda r: r["key"].split("/")[1]),
            ("clean", "clean", "{:.3f}"),
            ("PGD ε=0.1", lambda r: experiment.at(r, "pgd", 0.1), "{:.3f}"),
            ("μ*", cert("mu_star"), "{:.3f}"),
            ("flow e^{Tμ*}", cert("flow_bound"), "{:.3f}"),
            ("Euler bound", cert("euler_bound"), "{:.3f}"),
            ("block lower bound", lambda r: r["lipschitz"]["lower"], "{:.3f}"),
            ("classifier bound", cert("lipschitz_bound"), "{:.1f}"),
        ],
    )


def certified_table(results: dict) -> report.Table:
    """§1.4's certificates of the whole classifier (:func:`certification`): its bound, the certified
    accuracy at each ℓ2 radius, the audit and the classifier's lower bound, for every run that has one."""
    rows = [{"key": k, **r["certification"]} for k, r in results.items() if "certification" in r]
    if not rows:
        return report.Table("This record has no certificate of the whole classifier (it predates them).")
    radii = rows[0]["radii"]
    return report.table(
        rows,
        [
            ("data", lambda r: r["key"].split("/")[0]),
            ("training", lambda r: r["key"].split("/")[1]),
            ("classifier bound L", "bound", "{:.3g}"),
            *[
                (f"certified, ℓ2 r = {rho:g}", lambda r, i=i: r["certified"][i], "{:.3f}")
                for i, rho in enumerate(radii)
            ],
            ("audit: flipped / attacked", lambda r: f"{r['audit']['flipped']} / {r['audit']['points']}"),
            ("lower bound of L", "lower", "{:.3g}"),
        ],
        caption="Certified ℓ2 accuracy of the whole classifier from margins/(√2 L); the audit attacks each "
        "certified point at 0.99 of its own radius.",
    )


def comparison(results: dict, radius: float = 0.3) -> str:
    """A Markdown paragraph from the results (§1.4): for each data set and architecture, what
    stabilisation to the smallest target changes against classical training, in PGD accuracy at
    ε = 0.1 (ℓ∞) and in certified accuracy at the ℓ2 ``radius``, and which architecture supports
    the claim that stabilised training makes the classifier more robust."""
    parts, support = [], {}
    for key, r in results.items():
        name, lab = key.split("/")
        if not lab.startswith("classical") or "certification" not in r:
            continue
        arch = "unit norm" if lab.endswith("unit norm") else "free"
        stabilised = [
            k
            for k in results
            if k.split("/")[0] == name and k != key and k.endswith("unit norm") == (arch == "unit norm")
        ]
        if not stabilised:
            continue
        target = min(stabilised, key=lambda k: float(k.split("= ")[1].split(",")[0]))
        a, b = r, results[target]
        i = a["certification"]["radii"].index(radius)
        pgd = (experiment.at(a, "pgd", 0.1), experiment.at(b, "pgd", 0.1))
        cert = (a["certification"]["certified"][i], b["certification"]["certified"][i])
        clean = (a["clean"], b["clean"])
        parts.append(
            f"{name}, {arch} lift and head: {target.split('/')[1].split(',')[0]} against classical training changes "
            f"the clean accuracy from {clean[0]:.1%} to {clean[1]:.1%}, PGD at ε = 0.1 from {pgd[0]:.1%} to "
            f"{pgd[1]:.1%} and the certified accuracy at ℓ2 radius {radius:g} from {cert[0]:.1%} to {cert[1]:.1%}"
        )
        support.setdefault(arch, []).append(pgd[1] > pgd[0] or cert[1] > cert[0])
    if not parts:
        return "No run of this record has a certificate of the whole classifier."
    verdict = [
        f"with the {arch} lift and head, stabilisation made the classifier more robust (higher PGD or certified "
        f"accuracy) on {sum(v)} of {len(v)} data sets"
        for arch, v in support.items()
    ]
    arch_effect = [
        f"{key.split('/')[0]}: {experiment.at(r, 'pgd', 0.1):.1%} (free) against "
        f"{experiment.at(results[key + ', unit norm'], 'pgd', 0.1):.1%} (unit norm)"
        for key, r in results.items()
        if key.endswith("/classical") and key + ", unit norm" in results
    ]
    effect = (
        " The architecture itself weighs as much or more: PGD accuracy at ε = 0.1 after classical training, "
        + "; ".join(arch_effect)
        + "."
        if arch_effect
        else ""
    )
    return (
        "**Which architecture supports the claim.** " + "; ".join(parts) + ". So " + "; ".join(verdict) + "." + effect
    )


def values(results: dict) -> dict:
    """The numbers the prose quotes, ``{"<data set>/<label>/<what>": value}`` (glue them with
    :func:`labkit.report.glue_all`): clean, PGD at 0.1, μ*, flow and classifier bounds."""
    out = {}
    for key, r in results.items():
        c = r["certificate"]
        out.update(
            {
                f"{key}/clean": r["clean"],
                f"{key}/pgd": experiment.at(r, "pgd", 0.1),
                f"{key}/mu": c["mu_star"],
                f"{key}/flow": c["flow_bound"],
                f"{key}/clf": c["lipschitz_bound"],
            }
        )
    return out


# -- the page's demonstrations (§1.1, §1.3, §1.5) ----------------------------------------------------

#: The sizes of the page's small demonstrations per mode (the motivating matrix's size, the
#: targets of the sweep, and the sizes compared with SLSQP).
DEMOS = {
    "smoke": {"n": 5, "targets": [0.5, 0.0], "slsqp_sizes": [4, 5]},
    "book": {"n": 8, "targets": [1.0, 0.5, 0.0], "slsqp_sizes": [5, 6, 7]},
    "full": {"n": 10, "targets": [1.0, 0.5, 0.2, 0.1, 0.0], "slsqp_sizes": [6, 8, 10]},
}


def demos(mode: str | None = None) -> dict:
    """The sizes of the page's demonstrations in ``mode`` (default: the current mode)."""
    return pick(DEMOS, mode)


def motivating_matrix(n: int) -> torch.Tensor:
    """§1.1's matrix: standard normal entries (seed 1) minus 0.8 I, float64."""
    return torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.8 * torch.eye(n)


def sweep(A, targets, activation: str = "tanh") -> list:
    """§1.3: :func:`labkit.lognorm.stabilize` for each target, each answer confirmed by enumerating
    every vertex (``AssertionError`` if one misses its target). One row per target with the
    result, the enumerated μ* and the time."""
    rows = []
    for delta in targets:
        res = lognorm.stabilize(A, delta, activation)
        check_mu, _ = lognorm.worst_case_lognorm(A + res.perturbation, activation, method="enumerate")
        assert check_mu <= delta + 1e-6 and res.converged, f"δ = {delta}: μ* = {check_mu} after stabilize"
        rows.append({"target": delta, "result": res, "mu_checked": check_mu})
    return rows


def sweep_table(rows) -> report.Table:
    """The table of :func:`sweep`."""
    res = lambda field: lambda r: getattr(r["result"], field)  # noqa: E731
    return report.table(
        rows,
        [
            ("target δ", "target", "{:g}"),
            ("‖Δ‖_F", res("norm"), "{:.4f}"),
            ("μ*(A+Δ) by enumeration", "mu_checked", "{:.6f}"),
            ("rounds", res("rounds")),
            ("working set", res("working_set")),
            ("time", res("seconds"), "{:.1f} s"),
        ],
    )


def against_slsqp(sizes, delta: float = 0.5, activation: str = "tanh") -> list:
    """§1.5: the two-level method against SLSQP with all 2^n vertex constraints on random n × n
    matrices (seed n); one row per size with both norms, both times and the difference in %."""

    rows = []
    for n in sizes:
        M = torch.randn(n, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        ours = lognorm.stabilize(M, delta, activation)
        t0 = time.perf_counter()
        _, ref = lognorm.stabilize_slsqp(M, delta, activation, restarts=2)
        rows.append(
            {
                "n": n,
                "ours": ours.norm,
                "ours_seconds": ours.seconds,
                "slsqp": ref,
                "slsqp_seconds": time.perf_counter() - t0,
                "gap": 100 * (ours.norm / ref - 1),
            }
        )
    return rows


def slsqp_table(rows) -> report.Table:
    """The table of :func:`against_slsqp`."""
    return report.table(
        rows,
        [
            ("n", "n"),
            ("‖Δ‖_F two-level", "ours", "{:.4f}"),
            ("time", "ours_seconds", "{:.1f} s"),
            ("‖Δ‖_F SLSQP (all vertices)", "slsqp", "{:.4f}"),
            ("time", "slsqp_seconds", "{:.1f} s"),
            ("difference", "gap", "{:+.2f} %"),
        ],
    )


def bench_table(bench: dict) -> report.Table:
    """The table of ``scripts/bench_stabilize.py``'s record: per size and tolerance, our time, norm,
    certified lower bound, rounds, working set and how the run ended, beside SLSQP on the final
    working set; unfinished runs show their checkpoint's progress."""
    res = bench["results"]

    def row(r):
        ours, ref, part = r["stabilize"], r.get("slsqp"), r.get("unfinished")
        out = {"n": r["n"], "rel_tol": f"{r.get('rel_tol', 1e-3):g}"}
        if ours is None and part is None:
            return {**out, "time": f"not finished in {res['stabilize_budget']:.0f} s"}
        if ours is None:  # stopped by the budget; its checkpoint says how far it got
            return {
                **out,
                "time": f"not finished: {part['seconds']:.0f} s so far",
                "norm": f"{part['upper']:.4f} (feasible for 𝒟 only)",
                "lower": f"{part['lower_bound']:.4f}",
                "rounds": part["rounds"],
                "D": part["working_set"],
            }
        resumed = f" (resumed at round {ours['resumed_from_round']})" if ours.get("resumed_from_round") else ""
        out.update(
            time=f"{ours['seconds']:.1f} s{resumed}",
            norm=f"{ours['norm']:.4f}",
            lower=f"{ours['lower_bound']:.4f}",
            rounds=ours["rounds"],
            D=ours["working_set"],
            end="repair" if ours.get("repaired") else "clean",
        )
        if ref is None:
            out["ref_time"] = f"not finished in {res['budget']:.0f} s"
        else:
            out.update(ref_time=f"{ref['seconds']:.1f} s", ref_norm=f"{ref['norm']:.4f}", ref_mu=f"{ref['mu']:.4f}")
        return out

    rows = [row(r) for r in res["rows"]]
    get = lambda key: lambda r: r.get(key, "")  # noqa: E731
    return report.table(
        rows,
        [
            ("n", "n"),
            ("rel_tol", "rel_tol"),
            ("stabilize", get("time")),
            ("‖Δ‖_F", get("norm")),
            ("certified lower bound", get("lower")),
            ("rounds", get("rounds")),
            ("\\|𝒟\\|", get("D")),
            ("end", get("end")),
            ("SLSQP on 𝒟", get("ref_time")),
            ("‖Δ‖_F", get("ref_norm")),
            ("μ*", get("ref_mu")),
        ],
        caption=f"{bench['device_name']}, {bench['threads']} threads, {bench['created'][:10]}, commit "
        f"{str(bench['commit'])[:10]}",
    )


def bench_matrix(n: int) -> torch.Tensor:
    """The benchmark's ``n × n`` matrix (``scripts/bench_stabilize.py``, §1.5): seed 0, entries
    ``N(0, 1/n)`` so that ``μ*`` stays of order one, float64."""
    return torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / n**0.5


def tail_cost(bench: dict, n: int = 128, violation: float = 1e-3) -> dict:
    """The relative cost of the uniform repair of a ``violation`` at size ``n`` of the benchmark
    record (§1.5, *The tail of the cutting planes*): ``‖A‖_F``, the recorded ``‖Δ‖_F``, the lower
    bound ``‖A + Δ‖_F ≥ ‖A‖_F − ‖Δ‖_F`` and the cost ``(v/δ)‖A + Δ‖_F/‖Δ‖_F`` it bounds from below."""
    rows = [r for r in bench["results"]["rows"] if r["n"] == n and r["stabilize"] is not None]
    if not rows:
        raise ValueError(f"the benchmark record has no finished run at n = {n}.")
    delta = float(bench["results"]["delta"])
    norm = rows[-1]["stabilize"]["norm"]
    a = float(bench_matrix(n).norm())
    total = max(a - norm, 0.0)
    return {"A": a, "delta": norm, "sum": total, "cost": violation / delta * total / norm}


def bench_growth(bench: dict) -> str:
    """One sentence from the benchmark record: the measured growth of the time as a power of n
    between successive sizes at rel_tol = 10⁻³, and the working set and rounds per unit of n."""
    import math

    done = [
        (r["n"], r["stabilize"])
        for r in bench["results"]["rows"]
        if r["stabilize"] is not None and r.get("rel_tol", 1e-3) == 1e-3
    ]  # one tolerance for the growth
    growth = [
        f"{math.log(b['seconds'] / a['seconds']) / math.log(m / n):.1f} (n = {n} → {m})"
        for (n, a), (m, b) in zip(done, done[1:])
        if m != n
    ]
    if not growth:
        return ""
    return (
        "Measured growth of the time as a power of $n$ between successive sizes: "
        + ", ".join(growth)
        + ". Per unit of $n$, the final working set holds "
        + ", ".join(f"{r['working_set'] / n:.1f}" for n, r in done)
        + " vertices and the rounds number "
        + ", ".join(f"{r['rounds'] / n:.1f}" for n, r in done)
        + f" (n = {', '.join(str(n) for n, _ in done)}; rel_tol = 10⁻³)."
    )


def _certificate(model):
    return model, float(model.certificate()["lipschitz_bound"])


def bench_methods() -> list[bench.Method]:
    """The chapter's methods on the bench (§6.1): :func:`train_classifier` stabilised to ``δ = 0.2``,
    with the free and with the unit-norm lift and head, at the book mode's width and the chapter's
    steps and learning rate, for the bench's epochs and batch size."""
    book = pick(SIZES, "book")

    def trainer(architecture):
        def train_(ctx):
            model, kept = train_classifier(
                ctx.train,
                width=book["width"],
                steps=book["steps"],
                target=0.2,
                architecture=architecture,
                epochs=ctx.s.epochs,
                lr=book["lr"],
                batch_size=ctx.s.batch_size,
                seed=ctx.seed,
                device=ctx.device,
                progress=ctx.progress,
            )
            return model, {**kept, "delta": 0.2}

        return train_

    common = {"chapter": "ch01", "kinds": bench.DENSE, "paper": "fgsm", "bound": _certificate}
    return [
        bench.Method(
            name="lognorm",
            title="log-norm ODE, δ = 0.2, free lift and head",
            certifies=False,
            guarantee="the block's Euler bound, about exp(Tδ); lift and head unconstrained",
            train=trainer("free"),
            **common,
        ),
        bench.Method(
            name="lognorm-unit",
            title="log-norm ODE, δ = 0.2, unit-norm lift and head",
            certifies=True,
            guarantee="ℓ2 certificate from the Euler bound of the stabilised block",
            train=trainer("unit norm"),
            **common,
        ),
    ]
