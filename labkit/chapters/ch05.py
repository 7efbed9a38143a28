"""Chapter 5's experiment: the authors' five training regimes and the certified switching network on
CIFAR-10, each attacked by the authors' 10-step ℓ2 PGD and by a stronger one at the authors' nine
radii, with sound Lipschitz bounds beside adversarial lower bounds and, for the certified network,
certified accuracy checked by attacks at 0.99 of each radius (§5.4); and the SIR fit of a
mass-preserving network against a plain one (§5.5).
"""

from __future__ import annotations

import torch

from .. import attacks, audit, bench, certify, data, report, structured
from .. import lipschitz as lip
from . import DATA, Job, cached, execute, given, per_mode, pick

__all__ = [
    "SIZES",
    "RECORD",
    "DATA",
    "PAPER",
    "sizes",
    "train_preset",
    "jobs",
    "run",
    "BENCH_NETS",
    "bench_methods",
    "pair_sweep",
    "pair_values",
    "plot_pair_sweep",
    "evaluate",
    "sir",
    "verify",
    "table",
    "values",
    "findings",
    "paper_table",
    "bench_table",
    "certified_cost",
]

# fmt: off
#: The sizes per mode. Book mode trains the CPU-sized skeleton (widths 8/16/32, one switching pair per
#: block) on the first 2 000 CIFAR-10 training images for 5 epochs, full mode the authors' network
#: (widths 32/64/128, 4 dynamic layers per block) and recipe (100 epochs, batch 128) on all of CIFAR-10,
#: which needs a GPU and the full data set (a subset is refused before anything is trained).
SIZES = per_mode({
    #                    smoke             book              full
    "n_train":          (200,              2000,             None),
    "n_test":           (100,              1000,             None),
    "widths":           ([4, 8, 8],        [8, 16, 32],      [32, 64, 128]),
    "layers":           (2,                2,                4),
    "epochs":           (1,                5,                100),
    "batch_size":       (64,               64,               128),
    "require_full_cifar": (False,          False,            True),
    "n_attack":         (20,               100,              1024),
    "strong_steps":     (5,                20,               100),
    "strong_restarts":  (1,                2,                5),
    "n_lower":          (4,                16,               64),
    "lower_steps":      (10,               30,               100),
    "check_steps":      (5,                20,               50),
    "n_audit":          (2,                16,               100),
    "min_checked":      (1,                200,              200),
    "audit_steps":      (5,                20,               50),
    "sir_train":        (100,              400,              2000),
    "sir_steps":        (20,               400,              3000),
    "sir_iterations":   (5,                50,               100),
}, presets=list(structured.PRESETS), paper_steps=10, paper_rel_step=0.025, decay_every=30,
   radii=list(structured.EPS_PAPER))
# fmt: on
#: The full-mode record, in ``book/data``.
RECORD = "ch05_full.json"

#: The CIFAR-10 results of the authors' repository (``davidemurari/StructuredNeuralNetworks``, the files
#: ``Adversarial Robustness/CIFAR10/<regime>/*margin_<m>.txt``; % of the first 1 024 test images under
#: Foolbox's L2PGD with 10 steps) at the authors' radii, one row per regime and margin.
PAPER = {
    ("resnet", 0.07): [88.2, 86.8, 84.6, 78.1, 63.8, 42.9, 33.2, 17.3, 7.3],
    ("resnet", 0.15): [90.9, 89.9, 87.7, 80.8, 64.1, 41.3, 34.1, 16.8, 7.2],
    ("resnet", 0.3): [91.4, 88.9, 85.8, 79.2, 58.2, 34.8, 23.9, 9.5, 4.0],
    ("naive", 0.07): [82.6, 81.2, 79.5, 76.7, 68.9, 59.2, 54.0, 41.9, 31.9],
    ("naive", 0.15): [74.6, 73.4, 72.8, 70.6, 65.5, 58.7, 54.7, 44.9, 37.5],
    ("naive", 0.3): [85.4, 83.9, 82.4, 78.3, 68.8, 55.8, 48.9, 37.5, 26.4],
    ("nonexpansive", 0.07): [83.9, 82.6, 82.1, 79.4, 74.2, 66.1, 62.7, 54.6, 48.2],
    ("nonexpansive", 0.15): [81.1, 80.1, 79.2, 78.0, 72.6, 66.8, 63.1, 55.6, 47.0],
    ("nonexpansive", 0.3): [79.7, 79.0, 78.4, 76.5, 71.8, 64.9, 61.3, 55.6, 47.8],
    ("switching", 0.07): [80.8, 79.8, 79.0, 77.5, 73.9, 67.8, 64.6, 58.1, 51.6],
    ("switching", 0.15): [79.6, 78.7, 78.2, 76.1, 71.8, 65.7, 62.4, 55.8, 50.5],
    ("switching", 0.3): [78.9, 78.4, 77.9, 75.5, 71.0, 65.0, 62.0, 55.1, 49.4],
    ("flexible", 0.07): [82.2, 81.2, 80.8, 79.0, 74.6, 68.7, 65.5, 58.7, 51.3],
    ("flexible", 0.15): [81.7, 81.3, 80.3, 78.5, 74.3, 68.0, 64.2, 56.9, 51.0],
    ("flexible", 0.3): [83.2, 82.3, 80.8, 77.6, 74.1, 66.8, 62.9, 55.7, 48.3],
}


def sizes(mode: str | None = None) -> dict:
    """The sizes of :func:`run` in ``mode`` (default: the current mode)."""
    return pick(SIZES, mode)


def _first_dynamic(model, x):
    """The first dynamic layer of ``model`` and its inputs for the images ``x`` (lifted features)."""
    first = model.blocks[0]
    with torch.no_grad():
        z = first[0]((x.reshape(x.shape[0], *model.in_shape) - model.mean) / model.std)
    return first[1], z


def evaluate(model, name: str, recipe: dict, test, s, *, device=None) -> dict:
    """The protocol of §5.4 for one trained model, as a :func:`labkit.experiment.result`: clean
    accuracy on the test images; on the first ``n_attack`` of them, accuracy under the authors'
    attack (``paper_steps`` steps of ``paper_rel_step · ε``, each radius attacked afresh) and
    under a stronger one (``strong_steps`` steps of ``2.5 ε / steps``, ``strong_restarts`` starts,
    monotone over the radii); certified accuracy from the sound bound
    :meth:`labkit.structured.StructuredNet.lipschitz_bound`; adversarial lower bounds of the
    whole classifier and of its first dynamic layer. For a model that claims a certificate (the
    certified preset), every certified test point is attacked by PGD at 0.99 of its radius
    (``check``) and the first ``n_audit`` by the independent library (``audit``)."""
    model.eval()
    x, y = test.tensors
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in x.split(512)])
    clean = float((logits.argmax(1) == y).float().mean())
    xa, ya = x[: s.n_attack], y[: s.n_attack]
    gen = torch.Generator().manual_seed(0)
    paper = attacks.pgd_curve(
        model, xa, ya, s.radii, steps=s.paper_steps, rel_step=s.paper_rel_step, monotone=False, generator=gen
    )
    strong = attacks.pgd_curve(model, xa, ya, s.radii, steps=s.strong_steps, restarts=s.strong_restarts, generator=gen)
    bound = model.lipschitz_bound()
    radii = certify.certified_radius(logits, y, bound)
    lower = lip.lower_bound(model, x[: s.n_lower], steps=s.lower_steps, generator=torch.Generator().manual_seed(0))
    layer, z = _first_dynamic(model, x[: s.n_lower])
    layer_lower = lip.lower_bound(layer, z, steps=s.lower_steps, generator=torch.Generator().manual_seed(0))
    extra = {}
    if name == "certified":
        c = audit.check(model, x, y, radii, attack="labkit", steps=s.check_steps, seed=1)
        extra["check"] = {"points": c["points"], "flipped": c["flipped"], "steps": s.check_steps, "fraction": 0.99}
        extra["audit"] = audit.certificates(model, x, y, radii, limit=s.n_audit, steps=s.audit_steps)
    return {
        "radii": list(s.radii),
        "clean": clean,
        "norm": "l2",
        "empirical": {"paper": paper, "strong": strong},
        "certified": certify.accuracy_at(radii, s.radii),
        "lipschitz": {
            "lower": lower,
            "upper": bound,
            "map": "network",
            "claimed": recipe["nominal"],
            "layer_lower": layer_lower,
            "layer_upper": layer.lipschitz_bound(),
        },
        "attack": {
            "paper": {"steps": s.paper_steps, "rel_step": s.paper_rel_step, "restarts": 1, "points": len(ya)},
            "strong": {"steps": s.strong_steps, "restarts": s.strong_restarts, "points": len(ya), "monotone": True},
        },
        "parameters": model.parameters_count(),
        "margin": recipe["margin"],
        **extra,
    }


def sir(s, *, seed=0) -> dict:
    """§5.5: fit the time-1 map of the SIR model (:func:`labkit.structured.sir_data`) with a
    :class:`labkit.structured.MassPreservingNet` and with the same network with unconstrained steps
    (Adam, full batch, ``sir_steps`` steps, float64); then iterate each ``sir_iterations`` times
    from held-out states and record the largest drift ``|𝟙ᵀx_k − 𝟙ᵀx_0|`` after each iteration, and
    the test error of one step."""
    x0, x1 = structured.sir_data(s.sir_train + 200, seed=seed)
    tr, te = slice(0, s.sir_train), slice(s.sir_train, None)
    out = {"iterations": s.sir_iterations, "train": s.sir_train, "steps": s.sir_steps}
    for label, plain in (("mass", False), ("plain", True)):
        torch.manual_seed(seed)
        net = structured.MassPreservingNet(plain=plain, seed=seed).double()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(s.sir_steps):
            loss = ((net(x0[tr]) - x1[tr]) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            mse = float(((net(x0[te]) - x1[te]) ** 2).sum(1).mean())
            x, total, drift = x0[te], x0[te].sum(1), []
            for _ in range(s.sir_iterations):
                x = net(x)
                drift.append(float((x.sum(1) - total).abs().max()))
        out[label] = {"mse": mse, "drift": drift, "train_loss": float(loss.detach())}
    return out


def train_preset(train_set, name: str, *, epochs, seed=0, device=None, progress=None, fit=None, **net) -> tuple:
    """The chapter's recipe, which the bench (§6.1) runs too: the preset ``name`` of
    :data:`labkit.structured.PRESETS` (the network's sizes ``net``) trained by
    :func:`labkit.structured.fit` with the preset's margin, γ, learning rate and optimiser (further
    options ``fit``: batch size, schedule, augmentation). Returns ``(model, kept)``, kept holding
    the training ``history`` and the ``recipe``."""
    model, recipe = structured.preset(name, seed=seed, **net)
    hist = structured.fit(
        model,
        train_set,
        epochs,
        margin=recipe["margin"],
        gamma=recipe["gamma"],
        lr=recipe["lr"],
        optimizer=recipe["optimizer"],
        seed=seed,
        device=device,
        progress=progress,
        **(fit or {}),
    )
    return model, {"history": hist, "recipe": recipe}


def jobs(s, *, seed=0, device=None, progress=None) -> list[Job]:
    """One :class:`~labkit.chapters.Job` per preset of ``presets``: :func:`train_preset` on CIFAR-10,
    then :func:`evaluate`; and the job ``"sir"`` (:func:`sir`)."""
    tr = cached(lambda: data.load("cifar10", limit=s.n_train))
    te = cached(lambda: data.load("cifar10", train=False, limit=s.n_test))
    net = {"widths": s.widths, "layers": s.layers, "mean": structured.CIFAR_MEAN, "std": structured.CIFAR_STD}
    fit = {"decay_every": s.decay_every, "batch_size": s.batch_size}

    def evaluator(name):
        return lambda model, kept, seconds: {
            **evaluate(model, name, kept["recipe"], te(), s, device=device),
            "seconds": seconds,
            "history": kept["history"],
            "sizes": vars(s),
        }

    options = {"epochs": s.epochs, "seed": seed, "device": device, "progress": progress, "fit": fit, **net}
    out = [
        Job(f"cifar10/{name}", lambda name=name: train_preset(tr(), name, **options), evaluator(name), seed)
        for name in s.presets
    ]
    return [*out, Job("sir", lambda: (None, {}), lambda model, kept, seconds: sir(s, seed=seed), seed)]


def run(*, seed=0, device=None, progress=None, done=None, on_result=None, **sizes) -> dict:
    """Train each preset of ``presets`` (:data:`labkit.structured.PRESETS`) with its recipe and the
    sizes given, and evaluate it (:func:`jobs`, :func:`evaluate`); results keyed
    ``"cifar10/<preset>"``, plus ``"sir"`` (:func:`sir`). ``require_full_cifar`` refuses a subset of
    CIFAR-10 before anything is trained. Results in ``done`` are kept, and ``on_result(key,
    result)`` is called after each new one (:func:`labkit.chapters.execute`)."""
    s = given(sizes, SIZES)
    if s.require_full_cifar:
        data.require_full("cifar10", s.n_train, s.n_test)
    return execute(jobs(s, seed=seed, device=device, progress=progress), done=done, on_result=on_result)


def _models(results):
    return {k: r for k, r in results.items() if k != "sir"}


def verify(results: dict) -> None:
    """Raise ``AssertionError`` if an adversarial lower bound exceeds a model's sound upper bound, if
    an attack flipped a point of the certified network at 0.99 of its certified radius (our PGD on
    every certified point, and the independent library's AutoPGD on the first few), or if fewer
    certified points than the size ``min_checked`` were checked."""
    for key, r in _models(results).items():
        lip_ = r["lipschitz"]
        assert lip_["lower"] <= lip_["upper"] * (1 + 1e-5), f"{key}: lower bound above the sound bound"
        assert lip_["layer_lower"] <= lip_["layer_upper"] * (1 + 1e-5), f"{key}: layer lower bound above its bound"
        if "check" in r:
            assert r["check"]["flipped"] == 0, f"{key}: PGD flipped {r['check']['flipped']} certified points"
            least = r.get("sizes", {}).get("min_checked", 0)
            assert r["check"]["points"] >= least, (
                f"{key}: only {r['check']['points']} certified test points were checked, fewer than {least}"
            )
            a = r["audit"]
            assert a["flipped"] == 0, f"{key}: {a['attack']['library']} flipped certified points {a['flipped_index']}"


_LABEL = {
    "resnet": "unconstrained ResNet",
    "naive": "naively constrained",
    "nonexpansive": "non-expansive",
    "switching": "switching, prescribed",
    "flexible": "switching, flexible",
    "certified": "switching, certified (ours)",
}


def table(results: dict) -> report.Table:
    """§5.4's table: per preset the clean accuracy, the authors' attack and the strong attack at
    36/255, 0.5 and 1, the certified accuracy at 36/255, the layer's and the network's bounds."""
    rows = [{"key": k, **r} for k, r in _models(results).items()]

    def pair(eps):
        i = structured.EPS_PAPER.index(eps)
        return lambda r: f"{r['empirical']['paper'][i]:.2f} / {r['empirical']['strong'][i]:.2f}"

    return report.table(
        rows,
        [
            ("model", lambda r: _LABEL.get(r["key"].split("/")[1], r["key"])),
            ("clean", "clean", "{:.3f}"),
            ("authors' / strong at 36/255", pair(36 / 255)),
            ("at 0.5", pair(0.5)),
            ("at 1.0", pair(1.0)),
            ("certified at 36/255", lambda r: r["certified"][3], "{:.3f}"),
            (
                "layer: lower / bound",
                lambda r: f"{r['lipschitz']['layer_lower']:.2f} / {r['lipschitz']['layer_upper']:.3g}",
            ),
            ("network: lower / bound", lambda r: f"{r['lipschitz']['lower']:.2f} / {r['lipschitz']['upper']:.3g}"),
            ("training", "seconds", "{:.0f} s"),
        ],
        caption="accuracy on CIFAR-10 test images; attacks on the first "
        f"{rows[0]['attack']['paper']['points'] if rows else 0} (authors': {rows[0]['attack']['paper']['steps'] if rows else 0}"  # noqa: E501
        " steps; strong: more steps and restarts); bounds in pixel space, the layer being the first dynamic one:",
    )


def values(results: dict) -> dict:
    """The numbers the prose quotes: ``<preset>/<what>`` for clean, paper and strong accuracy at each
    radius index (``paper0`` …), certified ``cert<i>``, ``lower``, ``bound``, ``layer_lower``,
    ``layer_bound``, the largest gap between the two attacks, and the certified network's check and
    audit counts; ``sir/<net>/mse`` and ``sir/<net>/drift`` (the last iteration's)."""
    out = {}
    for key, r in _models(results).items():
        name = key.split("/")[1]
        out[f"{name}/clean"] = r["clean"]
        for i in range(len(r["radii"])):
            out[f"{name}/paper{i}"] = r["empirical"]["paper"][i]
            out[f"{name}/strong{i}"] = r["empirical"]["strong"][i]
            out[f"{name}/cert{i}"] = r["certified"][i]
        gaps = [p - q for p, q in zip(r["empirical"]["paper"], r["empirical"]["strong"])]
        out[f"{name}/gap"] = max(gaps)
        out[f"{name}/lower"] = r["lipschitz"]["lower"]
        out[f"{name}/bound"] = r["lipschitz"]["upper"]
        out[f"{name}/layer_lower"] = r["lipschitz"]["layer_lower"]
        out[f"{name}/layer_bound"] = r["lipschitz"]["layer_upper"]
        if "check" in r:
            out[f"{name}/checked"] = r["check"]["points"]
            out[f"{name}/flipped"] = r["check"]["flipped"]
            out[f"{name}/audited"] = r["audit"]["points"]
    if "sir" in results:
        for label in ("mass", "plain"):
            out[f"sir/{label}/mse"] = results["sir"][label]["mse"]
            out[f"sir/{label}/drift"] = results["sir"][label]["drift"][-1]
    return out


def findings(results: dict) -> str:
    """What the run shows, as Markdown bullets computed from ``results`` (§5.4): the most accurate
    regime, which regime keeps most accuracy at ε = 0.5 and at ε = 1 under the strong attack, the
    largest gap between the two attacks, the dynamic layers whose adversarial lower bound exceeds
    1, the restarts, and the certified network's certified accuracy and check."""
    models = {k.split("/")[1]: r for k, r in _models(results).items()}
    if not models:
        return "No model was run."
    i05, i1 = structured.EPS_PAPER.index(0.5), structured.EPS_PAPER.index(1.0)
    name = lambda n: _LABEL.get(n, n)  # noqa: E731
    best = max(models, key=lambda n: models[n]["clean"])
    keep05 = max(models, key=lambda n: models[n]["empirical"]["strong"][i05])
    keep1 = max(models, key=lambda n: models[n]["empirical"]["strong"][i1])
    gaps = {n: max(p - q for p, q in zip(r["empirical"]["paper"], r["empirical"]["strong"])) for n, r in models.items()}
    widest = max(gaps, key=gaps.get)
    over = [n for n, r in models.items() if r["lipschitz"]["layer_lower"] > 1]
    lines = [
        f"- **Clean accuracy**: the {name(best)} network is the most accurate ({models[best]['clean']:.1%}); the "
        + ", ".join(f"{name(n)} {r['clean']:.1%}" for n, r in models.items() if n != best)
        + ".",
        f"- **Under the strong attack** the {name(keep05)} network keeps the most at ε = 0.5 "
        f"({models[keep05]['empirical']['strong'][i05]:.1%}) and "
        + ("" if keep1 == keep05 else f"the {name(keep1)} network ")
        + f"at ε = 1 ({models[keep1]['empirical']['strong'][i1]:.1%}); the unconstrained ResNet keeps "
        + (f"{models['resnet']['empirical']['strong'][i1]:.1%} at ε = 1." if "resnet" in models else "– (not run)."),
        f"- **The authors' attack is weak**: the strong attack lowers the accuracy by up to {gaps[widest]:.1%} "
        f"(the {name(widest)} network); the smallest largest gap is {min(gaps.values()):.1%}.",
        "- **Dynamic layers above 1**: "
        + (
            ", ".join(f"{name(n)} ({models[n]['lipschitz']['layer_lower']:.2f})" for n in over) + " — the pair "
            "search finds a first dynamic layer that expands."
            if over
            else "the pair search finds no first dynamic layer that expands; that is not a proof that none does."
        ),
    ]
    restarted = [n for n, r in models.items() if r.get("history", {}).get("restarts")]
    if restarted:
        lines.append(
            "- **Restarts**: the loss became NaN and training restarted at a tenth of the rate for "
            + ", ".join(name(n) for n in restarted)
            + "."
        )
    if "certified" in models:
        c = models["certified"]
        lines.append(
            f"- **The certified network** is {c['clean']:.1%} accurate and certifies "
            + ", ".join(f"{c['certified'][i]:.1%} at {e:.3g}" for i, e in enumerate(c["radii"]) if 0 < e <= 0.31)
            + f" with L = {c['lipschitz']['upper']:.2f}; no attack broke a certificate "
            f"({c['check']['flipped']} of {c['check']['points']} points flipped by PGD at 0.99 of their radii)."
        )
    return "\n".join(lines)


def paper_table(results: dict | None = None, *, margin: float = 0.15) -> report.Table:
    """The repository's CIFAR-10 rows at ``margin`` (:data:`PAPER`) beside ours, when ``results``
    are given, under the authors' own attack (10 steps of 0.025 ε from a random start, each radius
    afresh) and under the strong one, at the authors' radii, in %."""
    rows = []
    for name in ("resnet", "naive", "nonexpansive", "switching", "flexible"):
        rows.append({"model": f"{_LABEL[name]} (repository, m = {margin})", "v": PAPER[(name, margin)]})
        r = (results or {}).get(f"cifar10/{name}")
        if r is not None:
            for attack in ("paper", "strong"):
                ours = [100 * a for a in r["empirical"][attack]]
                rows.append({"model": f"{_LABEL[name]} (ours, {attack} attack)", "v": ours})
    names = ["0", "8/255", "16/255", "36/255", "0.3", "0.5", "0.6", "0.8", "1.0"]

    def column(i):
        return lambda r: r["v"][i]

    return report.table(rows, [("model", "model")] + [(n, column(i), "{:.1f}") for i, n in enumerate(names)])


def bench_table(bench: dict) -> report.Table:
    """The record of ``scripts/bench_structured.py``: images per second of a training step of each
    network, with the device, threads, date and commit."""
    return report.table(
        bench["results"],
        [
            ("network", "what"),
            ("parameters", "parameters", "{:,}"),
            ("batch", "batch"),
            ("seconds per batch", "seconds", "{:.3f}"),
            ("images per second", "images_per_second", "{:.0f}"),
        ],
        caption=f"{bench['device_name']}, {bench['threads']} threads, {bench['created'][:10]}, "
        f"commit {str(bench['commit'])[:10]}",
    )


def certified_cost(record: dict | None) -> dict | None:
    """What the certified preset reaches on CIFAR-10 in a bench record (Chapter 6's
    ``cifar10__sp-certified__seed<s>.json``; §5.7): ``clean`` accuracy, ``certified`` accuracy at the
    first radius of the record (36/255), that radius, and the ``epochs`` it trained; ``None`` without
    a record."""
    if record is None:
        return None
    r = record["results"]
    return {
        "clean": r["clean"],
        "certified": r["certified"][0],
        "radius": r["radii"][0],
        "epochs": record["sizes"]["epochs"],
    }


#: The bench's networks of §6.1, on CIFAR-10 widths 8, 16, 32 with 2 layers each, and on the
#: MNIST-like sets a dense network of width 128 with 4 layers.
BENCH_NETS = {
    "conv": {
        "in_shape": (3, 32, 32),
        "widths": [8, 16, 32],
        "layers": 2,
        "mean": structured.CIFAR_MEAN,
        "std": structured.CIFAR_STD,
    },
    "dense": {"conv": False, "widths": [128], "layers": 4},
}


def bench_methods() -> list[bench.Method]:
    """The chapter's presets on the bench (§6.1), each :func:`train_preset` of :data:`BENCH_NETS`
    at the bench's epochs and batch size (augmented on CIFAR-10); the certified one certifies."""

    def trainer(name):
        def train_(ctx):
            kind = "conv" if ctx.dataset == "cifar10" else "dense"
            net = BENCH_NETS[kind] if kind == "conv" else {"in_shape": bench.IMAGES[ctx.dataset], **BENCH_NETS[kind]}
            fit = {"batch_size": ctx.s.batch_size, "augment": kind == "conv"}
            return train_preset(
                ctx.train,
                name,
                epochs=ctx.s.epochs,
                seed=ctx.seed,
                device=ctx.device,
                progress=ctx.progress,
                fit=fit,
                **net,
            )

        return train_

    return [
        bench.Method(
            name=f"sp-{name}",
            chapter="ch05",
            title=f"structure-preserving, {name}",
            kinds=bench.BOTH,
            certifies=name == "certified",
            paper="pgd10",
            train=trainer(name),
            bound=bench.network_bound,
            guarantee="1-Lipschitz dynamic layers, lift and head by construction"
            if name == "certified"
            else "none; the product bound of §5.4 computed after training",
        )
        for name in structured.PRESETS
    ]


def pair_sweep(h_c: float = 0.6, a: float = 0.5, substeps: int = 2) -> dict:
    """§5.1's experiment: one dense switching pair (16 features, orthogonal, normalised, float64)
    whose expansive step is ``f · e*`` for 15 factors ``f`` from 0 to 3.5, with ``e*`` the authors'
    bound (:func:`labkit.structured.expansive_step_bound`): the Lipschitz estimate of the pair
    (exact Jacobian norms on 200 random inputs, and a pair search), of one expansive sub-step alone
    and of one non-expansive sub-step alone, and the factor that the exact contraction bound allows."""
    import numpy as np

    star = structured.expansive_step_bound(h_c, a, substeps)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=gen, dtype=torch.float64)
    factors = np.linspace(0, 3.5, 15)
    pair, expansive_alone = [], []
    for f in factors:
        block = structured.SwitchingBlock(
            16,
            conv=False,
            a=a,
            substeps=substeps,
            h_c=h_c,
            orthogonal=True,
            normalized=True,
            generator=torch.Generator().manual_seed(1),
        ).double()
        with torch.no_grad():
            block.op_e.weight.mul_(4)
            block.project()  # ‖A_e‖ = 1 and h_e = e*
            block.op_c.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
            block.u_e.mul_(f)  # h_e = f · e*
        exact = float(structured.block_jacobian_norms(block, x).max())
        searched = lip.lower_bound(block, x[:32], steps=60, generator=torch.Generator().manual_seed(3))
        pair.append(max(exact, searched))
        step = structured.ExpansiveStep(block.op_e, step=f * star / substeps, a=a)
        expansive_alone.append(float(structured.block_jacobian_norms(step, x).max()))
    contract = structured.NonExpansiveStep(block.op_c, step=h_c / substeps, a=a)
    contract_alone = float(structured.block_jacobian_norms(contract, x).max())
    tight = substeps * (1 / structured.contraction_factor(h_c / substeps, a, tight=True) - 1)
    return {
        "factors": factors,
        "star": star,
        "tight": tight,
        "pair": pair,
        "expansive_alone": expansive_alone,
        "contract_alone": contract_alone,
    }


def pair_values(sweep: dict) -> dict:
    """The numbers of :func:`pair_sweep` the prose quotes: ``e*``, the exact bound over it, the
    non-expansive step alone, the largest expansive step alone, the first factor where the pair
    expands and the pair's estimate at ``e*``."""
    import numpy as np

    factors, pair = sweep["factors"], sweep["pair"]
    crossing = next((f for f, p in zip(factors, pair) if p > 1 + 1e-9), None)
    return {
        "star": sweep["star"],
        "tight_ratio": sweep["tight"] / sweep["star"],
        "contract": sweep["contract_alone"],
        "expand_max": max(sweep["expansive_alone"]),
        "cross": crossing or float("nan"),
        "pair_at_star": pair[list(np.round(factors, 6)).index(1.0)],
    }


def plot_pair_sweep(sweep: dict):
    """§5.1's figure of :func:`pair_sweep`: the three estimates against ``h_e / e*``."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 3.6))
    factors = sweep["factors"]
    plt.plot(factors, sweep["pair"], "o-", label="the pair, S = 2 sub-steps (exact Jacobians and pair search)")
    plt.plot(factors, sweep["expansive_alone"], "s--", label="one expansive sub-step alone")
    plt.axhline(sweep["contract_alone"], color="C2", ls=":", label="one non-expansive sub-step alone")
    plt.axhline(1, color="k", lw=0.8)
    plt.axvline(1, color="C3", lw=0.8, label="the authors' bound e*")
    plt.axvline(sweep["tight"] / sweep["star"], color="C4", lw=0.8, ls="--", label="the exact factor's bound")
    plt.xlabel("expansive step h_e / e*")
    plt.ylabel("Lipschitz estimate")
    plt.legend(fontsize=7)
    plt.tight_layout()
    return fig
