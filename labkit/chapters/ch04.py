"""Chapter 4's experiment: convex potential networks (CPL, SLL) against an unconstrained network,
certified and attacked (§4.4), and CPL-S on CIFAR-10 with the authors' recipe (§4.5)."""

from __future__ import annotations

import math

import torch

from .. import bench, convex, data, lipschitz, report
from . import DATA, Job, cached, execute, given, per_mode, pick

__all__ = [
    "SIZES",
    "RECORD",
    "CIFAR_RECORD",
    "DATA",
    "sizes",
    "train_preset",
    "jobs",
    "run",
    "BENCH_PRESETS",
    "bench_methods",
    "step_sweep",
    "step_values",
    "plot_step_sweep",
    "verify",
    "table",
    "values",
    "presets_table",
    "bench_table",
    "bench_values",
    "cifar_values",
]

# fmt: off
#: The sizes per mode. In book mode the dense ``mnist`` preset (CPL) on 4 000 MNIST-like images, the ``cifar``
#: preset on the first 2 000 CIFAR-10 images and 1 000 test images; in full mode the dense preset with CPL
#: and SLL layers on all of MNIST and Fashion-MNIST (a CPU can run it), and CPL-S with the authors' recipe on
#: all of CIFAR-10 (200 epochs; needs a GPU and the full CIFAR-10, and refuses a subset; ``--set
#: 'cifar_layers=[]'`` leaves it out). ``cifar_speedups`` names variants of the training step
#: (:data:`labkit.convex.SPEEDUPS`) for a GPU; the certificate does not depend on them.
SIZES = per_mode({
    #                      smoke                       book                        full
    "datasets":           (["mnist", "fashion_mnist"], ["mnist", "fashion_mnist"], ["mnist", "fashion_mnist"]),
    "dense_layers":       (["cpl"],                    ["cpl"],                    ["cpl", "sll"]),
    "n_train":            (300,                        4000,                       None),
    "n_test":             (100,                        1000,                       None),
    "dense_epochs":       (1,                          3,                          3),
    "cifar_preset":       ("cifar",                    "cifar",                    "cpl-s"),
    "cifar_layers":       (["cpl", "sll"],             ["cpl", "sll"],             ["cpl"]),
    "require_full_cifar": (False,                      False,                      True),
    "cifar_train":        (100,                        2000,                       None),
    "cifar_test":         (50,                         1000,                       None),
    "cifar_epochs":       (1,                          3,                          200),
    "cifar_speedups":     ([],                         [],                         []),
    "pgd_steps":          (3,                          10,                         10),
    "n_attack":           (30,                         200,                        None),
    "n_lower":            (8,                          32,                         64),
    "lower_steps":        (10,                         50,                         100),
    "n_audit":            (4,                          16,                         200),
    "audit_steps":        (10,                         30,                         100),
}, cifar=True)
# fmt: on
RECORD = "ch04_full.json"
#: The record of CPL-S on the full CIFAR-10 alone (``--set 'datasets=[]'``, as scripts/gpu_run.sh
#: cpls writes it), shown beside the dense record.
CIFAR_RECORD = "ch04_cifar.json"


def sizes(mode: str | None = None) -> dict:
    """The sizes of :func:`run` in ``mode`` (default: the current mode)."""
    return pick(SIZES, mode)


def train_preset(
    train_set, preset: str, layer: str, *, epochs, seed=0, device=None, progress=None, fit=None, **overrides
) -> tuple:
    """The chapter's recipe, which the bench (§6.1) runs too: the :data:`labkit.convex.PRESETS` entry
    ``preset`` (its sizes changed by ``overrides``) with ``layer`` (``"cpl"`` or ``"sll"``), trained
    by :func:`labkit.convex.fit` (the options ``fit``: batch size, augmentation, speedups). Returns
    ``(model, kept)``, kept holding the training ``history``."""
    model = convex.preset(preset, layer=layer, seed=seed, **overrides)
    hist = convex.fit(model, train_set, epochs, seed=seed, device=device, progress=progress, **(fit or {}))
    return model, {"history": hist.as_dict()}


def _baseline(train_set, *, epochs, seed, device, progress) -> tuple:
    dense = convex.PRESETS["mnist"]
    in_features = math.prod(train_set.tensors[0].shape[1:])
    model = convex.baseline_mlp(in_features, width=dense["width"], depth=dense["depth"], seed=seed)
    hist = convex.fit(model, train_set, epochs, margin=None, seed=seed, device=device, progress=progress)
    return model, {"history": hist.as_dict(), "lipschitz": lipschitz.upper_bound(model.cpu())}


def jobs(s, *, seed=0, device=None, progress=None) -> list[Job]:
    """One :class:`~labkit.chapters.Job` per MNIST-like data set and model (the ``mnist`` preset with
    each of ``dense_layers``, and the baseline), then per CIFAR-10 layer of ``cifar_layers`` (the
    ``cifar_preset``); each evaluated by :func:`labkit.convex.evaluate_robustness`."""
    attack = {
        "pgd_steps": s.pgd_steps,
        "n_attack": s.n_attack,
        "n_lower": s.n_lower,
        "lower_steps": s.lower_steps,
        "n_audit": s.n_audit,
        "audit_steps": s.audit_steps,
    }
    options = {"seed": seed, "device": device, "progress": progress}

    def evaluator(test, eps):
        return lambda model, kept, seconds: convex.evaluate_robustness(
            model,
            test(),
            eps,
            lipschitz=kept.get("lipschitz"),
            **attack,
            device=device,
            progress=progress,
            seconds=seconds,
            sizes=vars(s),
            history=kept["history"],
        )

    out = []
    for name in s.datasets:
        tr = cached(lambda name=name: data.load(name, limit=s.n_train))
        evaluate = evaluator(cached(lambda name=name: data.load(name, train=False, limit=s.n_test)), convex.EPS_MNIST)
        for label in s.dense_layers:
            train_ = lambda tr=tr, label=label: train_preset(tr(), "mnist", label, epochs=s.dense_epochs, **options)  # noqa: E731
            out.append(Job(f"{name}/{label}", train_, evaluate, seed))
        out.append(
            Job(f"{name}/baseline", lambda tr=tr: _baseline(tr(), epochs=s.dense_epochs, **options), evaluate, seed)
        )
    if s.cifar and s.cifar_layers:
        tr = cached(lambda: data.load("cifar10", limit=s.cifar_train))
        te = cached(lambda: data.load("cifar10", train=False, limit=s.cifar_test))
        fit = {"augment": True, "speedups": s.cifar_speedups}
        for kind in s.cifar_layers:
            train_ = lambda kind=kind: train_preset(
                tr(),
                s.cifar_preset,
                kind,
                epochs=s.cifar_epochs,
                fit=fit,  # noqa: E731
                mean=tr().tensors[0].mean((0, 2, 3)),
                **options,
            )
            out.append(Job(f"cifar10/{kind}", train_, evaluator(te, convex.EPS_CIFAR), seed))
    return out


def run(*, seed=0, device=None, progress=None, done=None, on_result=None, **sizes) -> dict:
    """With the :data:`SIZES` given (:func:`jobs`): for each MNIST-like data set, the dense ``mnist``
    preset (first-K head) with each of ``dense_layers`` (CPL, SLL) and
    :func:`labkit.convex.baseline_mlp`, evaluated at :data:`labkit.convex.EPS_MNIST`. If ``cifar``: the
    convolutional preset ``cifar_preset`` with each of ``cifar_layers`` (CPL, SLL), evaluated at
    :data:`labkit.convex.EPS_CIFAR`; ``require_full_cifar`` refuses a training set smaller than the
    official 50 000 images, before any training. Results keyed ``"<data set>/<model>"``, each a
    :func:`labkit.experiment.result` by :func:`labkit.convex.evaluate_robustness` with the training
    time and history. Results in ``done`` are kept, and ``on_result(key, result)`` is called after
    each new one (:func:`labkit.chapters.execute`)."""
    s = given(sizes, SIZES)
    unknown = [label for label in s.dense_layers if label not in ("cpl", "sll")]
    if unknown:
        raise ValueError(f"dense_layers are 'cpl' or 'sll', got {unknown}.")
    if s.cifar and s.cifar_layers and s.require_full_cifar:  # refuse a subset before anything is trained
        data.require_full("cifar10", s.cifar_train, s.cifar_test)
    return execute(jobs(s, seed=seed, device=device, progress=progress), done=done, on_result=on_result)


def verify(results: dict) -> None:
    """Raise ``AssertionError`` if a lower bound exceeds the certified constant, if PGD fooled an
    attacked image at a radius where it was certified, or if the independent audit
    (:func:`labkit.audit.certificates`) flipped a certified point at 0.99 of its radius."""
    for key, r in results.items():
        lip = r["lipschitz"]
        assert lip["lower"] <= lip["upper"] * (1 + 1e-5), f"{key}: lower bound above the certificate"
        assert not any(r["broken"]), f"{key}: PGD broke a certified point: {dict(zip(r['radii'], r['broken']))}"
        a = r["audit"]
        assert a["flipped"] == 0, f"{key}: {a['attack']['library']} flipped certified points {a['flipped_index']}"


def table(results: dict) -> report.Table:
    """§4.4's table: clean, certified / PGD at the three radii, the bounds, size and training time."""
    rows = [{"key": k, **r} for k, r in results.items()]
    at = lambda i: lambda r: f"{r['certified'][i]:.3f} / {r['empirical']['pgd'][i]:.3f}"  # noqa: E731
    return report.table(
        rows,
        [
            ("data", lambda r: r["key"].split("/")[0]),
            ("model", lambda r: r["key"].split("/")[1]),
            ("clean", "clean", "{:.3f}"),
            ("certified / PGD at ε₁", at(0)),
            ("at ε₂", at(1)),
            ("at ε₃", at(2)),
            ("Lipschitz lower bound", lambda r: r["lipschitz"]["lower"], "{:.3f}"),
            ("certified constant", lambda r: r["lipschitz"]["upper"], "{:.3g}"),
            ("parameters", lambda r: r["parameters"] / 1e6, "{:.2f} M"),
            ("training", "seconds", "{:.0f} s"),
            ("audit: flipped / attacked", lambda r: f"{r['audit']['flipped']} / {r['audit']['points']}"),
        ],
        caption="ε = 0.5, 1, 1.58 (MNIST, Fashion-MNIST) and 36/255, 72/255, 108/255 (CIFAR-10):",
    )


def values(results: dict) -> dict:
    """The numbers the prose quotes, ``{"<data set>/<model>/<what>": value}``: clean, lower, constant,
    cert0..2 and pgd0..2 (by radius index), and ``n_attack`` and ``n_audit``."""
    first = next(iter(results.values()), None)
    out = {"n_attack": first["n_attack"], "n_audit": first["sizes"]["n_audit"]} if first else {}
    for key, r in results.items():
        out.update(
            {
                f"{key}/clean": r["clean"],
                f"{key}/lower": r["lipschitz"]["lower"],
                f"{key}/constant": r["lipschitz"]["upper"],
            }
        )
        for i in range(len(r["radii"])):
            out[f"{key}/cert{i}"] = r["certified"][i]
            out[f"{key}/pgd{i}"] = r["empirical"]["pgd"][i]
    return out


def presets_table() -> report.Table:
    """§4.3's table of :data:`labkit.convex.PRESETS`: layers, head and parameter count of each."""
    rows = []
    for name, p in convex.PRESETS.items():
        n = convex.preset_parameters(name, in_shape=(1, 28, 28) if name == "mnist" else (3, 32, 32))
        rows.append(
            {
                "preset": name,
                "conv": f"{p.get('conv_depth', 0)} × width {p.get('channels', '–')}, "
                f"hidden {p.get('conv_hidden', '–')}",
                "dense": f"{p.get('dense_depth', p.get('depth'))} × hidden {p.get('dense_hidden', p.get('hidden'))}",
                "head": p["head"],
                "parameters": n / 1e6,
            }
        )
    return report.table(
        rows,
        [
            ("preset", "preset"),
            ("convolutional CPLs", "conv"),
            ("dense CPLs", "dense"),
            ("head", "head"),
            ("parameters", "parameters", "{:.2f} M"),
        ],
    )


def bench_table(bench: dict) -> report.Table:
    """The record of ``scripts/bench_convex.py`` (§4.5): seconds per batch and images per second of a
    training step and of an evaluation forward, with the device, threads, date and commit."""
    return report.table(
        bench["results"],
        [
            ("what", "what"),
            ("seconds per batch", "seconds", "{:.2f}"),
            ("images per second", "images_per_second", "{:.1f}"),
        ],
        caption=f"{bench['sizes']['preset']}, batch {bench['sizes']['batch']}, {bench['device_name']}, "
        f"{bench['threads']} threads, {bench['created'][:10]}, commit {str(bench['commit'])[:10]}",
    )


def bench_values(bench: dict, *, epochs: int, images: int = 50_000) -> dict:
    """From the benchmark record: the preset's parameters (millions), training images per second,
    seconds and minutes per epoch of ``images`` and hours for ``epochs`` epochs at that speed, from
    the plain training step (the first row); and ``best``, the fastest training step among it and the
    variants the record holds (rows named ``train step, <variant>``), with ``best_epoch_seconds`` (§4.5)."""
    ips = bench["results"][0]["images_per_second"]
    train = [bench["results"][0], *(r for r in bench["results"][1:] if r["what"].startswith("train step, "))]
    slowest = min(r["images_per_second"] for r in train)
    if slowest <= 0:
        raise ValueError(f"the benchmark record has a non-positive speed ({slowest}).")
    fastest = max(train, key=lambda r: r["images_per_second"])
    return {
        "parameters": bench["sizes"]["parameters"] / 1e6,
        "images_per_second": ips,
        "epoch_seconds": images / ips,
        "epoch_minutes": images / ips / 60,
        "run_hours": images / ips * epochs / 3600,
        "best": "the plain step" if fastest is train[0] else fastest["what"].removeprefix("train step, "),
        "best_epoch_seconds": images / fastest["images_per_second"],
    }


def cifar_values(record: dict) -> dict:
    """The numbers the prose quotes from the CPL-S record (:data:`CIFAR_RECORD`, §4.5): those of
    :func:`values`, and ``epochs`` ("1 epoch", "20 epochs"), training ``minutes``, ``where`` it ran
    (the CPU of this book or a GPU, with the device's name), and the audit's ``audited`` and
    ``flipped`` points."""
    r = record["results"]["cifar10/cpl"]
    epochs = record["sizes"]["cifar_epochs"]
    where = "the CPU of this book" if record["device"] == "cpu" else "a GPU"
    return {
        **values(record["results"]),
        "epochs": f"{epochs} epoch{'s' * (epochs != 1)}",
        "minutes": r["seconds"] / 60,
        "where": f"{where} ({record['device_name']})",
        "audited": r["audit"]["points"],
        "flipped": r["audit"]["flipped"],
    }


def _body(model):
    return model.body, 1.0


def _radii(model, x, y, bound):
    return torch.cat([convex.certified_radii(model, xb, yb) for xb, yb in zip(x.split(512), y.split(512))])


#: The bench's smaller presets of §6.1, the ``mnist`` preset at 2 layers of 784 features with 100
#: hidden units and the ``cifar`` preset with one dense layer of 64.
BENCH_PRESETS = {
    "dense": ("mnist", {"width": 784, "depth": 2, "hidden": 100}),
    "conv": ("cifar", {"dense_depth": 1, "dense_hidden": 64}),
}


def bench_methods() -> list[bench.Method]:
    """The chapter's layers on the bench (§6.1): CPL and SLL, :func:`train_preset` of
    :data:`BENCH_PRESETS` (the convolutional one on CIFAR-10, with augmentation) at the bench's
    epochs and batch size; certified by the margin of the 1-Lipschitz body's output."""

    def trainer(layer):
        def train_(ctx):
            kind = "conv" if ctx.dataset == "cifar10" else "dense"
            preset, sizes = BENCH_PRESETS[kind]
            if kind == "conv":
                sizes = {**sizes, "mean": ctx.train.tensors[0].mean((0, 2, 3))}
            fit = {"batch_size": ctx.s.batch_size, "augment": kind == "conv"}
            return train_preset(
                ctx.train,
                preset,
                layer,
                epochs=ctx.s.epochs,
                seed=ctx.seed,
                device=ctx.device,
                progress=ctx.progress,
                fit=fit,
                **sizes,
            )

        return train_

    common = {
        "chapter": "ch04",
        "kinds": bench.BOTH,
        "certifies": True,
        "paper": "certified",
        "guarantee": "1-Lipschitz body by construction",
        "bound": _body,
        "radii": _radii,
    }
    return [
        bench.Method(name="cpl", title="convex potential layers (CPL)", train=trainer("cpl"), **common),
        bench.Method(name="sll", title="SDP-based Lipschitz layers (SLL)", train=trainer("sll"), **common),
    ]


def step_sweep(factors=None) -> dict:
    """§4.1's experiment: one dense CPL (40 → 80 → 40, float64) at each step factor ``h ‖W‖²`` of
    ``factors`` (default: 11 from 0.5 to 3), its Lipschitz number with every unit active (exact),
    the largest exact Jacobian norm over 2 000 random inputs of the unit cube (and the most units
    active there), and the largest quotient of 2 000 random pairs 10⁻³ apart."""
    import numpy as np

    factors = np.linspace(0.5, 3.0, 11) if factors is None else np.asarray(factors)
    gen = torch.Generator().manual_seed(0)
    out = {"factors": factors, "active": [], "cube": [], "sampled": [], "units": []}
    x = torch.rand(2000, 40, generator=gen, dtype=torch.float64)
    dx = 1e-3 * torch.randn(2000, 40, generator=gen, dtype=torch.float64)
    for f in factors:
        layer = convex.ConvexPotentialLayer(40, 80, step=float(f), generator=torch.Generator().manual_seed(1))
        layer = layer.double().eval()
        out["active"].append(convex.all_active_norm(layer, (40,)))
        norms, on = convex.jacobian_norms(layer, x)
        out["cube"].append(float(norms.max()))
        out["units"].append(int(on.max()))
        with torch.no_grad():
            out["sampled"].append(float(lipschitz.quotient(layer, x, x + dx).max()))
    return out


def step_values(sweep: dict) -> dict:
    """The numbers of :func:`step_sweep` the prose quotes: at the factor nearest 2.25 and at the
    largest one, and the largest sampled quotient and number of active units."""
    import numpy as np

    factors, active, cube, sampled = sweep["factors"], sweep["active"], sweep["cube"], sweep["sampled"]
    low = int(np.argmin(abs(factors - 2.25)))
    return {
        "low": factors[low],
        "low_active": active[low],
        "low_cube": cube[low],
        "high": factors[-1],
        "high_active": active[-1],
        "high_cube": cube[-1],
        "high_sampled": sampled[-1],
        "sampled_max": max(sampled),
        "units": max(sweep["units"]),
    }


def plot_step_sweep(sweep: dict):
    """§4.1's figure of :func:`step_sweep`: the three Lipschitz numbers against the step factor."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(sweep["factors"], sweep["active"], "o-", label="all units active (exact; no cube input does this)")
    ax.plot(sweep["factors"], sweep["cube"], "^-", label="exact Jacobian norm, largest over the 2 000 inputs")
    ax.plot(sweep["factors"], sweep["sampled"], "s--", label="largest quotient of 2 000 random pairs")
    ax.axhline(1, color="k", lw=0.8)
    ax.axvline(2, color="grey", ls=":")
    ax.set(xlabel=r"$h\,\|W\|_2^2$", ylabel="Lipschitz number", title="one dense CPL, 40 → 80 → 40")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
