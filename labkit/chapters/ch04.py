"""Chapter 4's experiment: convex potential networks (CPL, SLL) against an unconstrained network,
certified and attacked (§4.4), and CPL-S on CIFAR-10 with the authors' recipe (§4.5)."""

from __future__ import annotations

import math
import time

from .. import convex, data, lipschitz, report
from ..runtime import seed_everything
from . import DATA, given, per_mode, pick

__all__ = [
    "SIZES",
    "RECORD",
    "CIFAR_RECORD",
    "DATA",
    "sizes",
    "run",
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


def run(*, seed=0, device=None, progress=None, done=None, on_result=None, **sizes) -> dict:
    """With the :data:`SIZES` given: for each MNIST-like data set, the dense ``mnist`` preset (first-K
    head) with each of ``dense_layers`` (CPL, SLL) and :func:`labkit.convex.baseline_mlp`, evaluated
    at :data:`labkit.convex.EPS_MNIST`. If ``cifar``: the convolutional preset ``cifar_preset`` with
    each of ``cifar_layers`` (CPL, SLL), evaluated at :data:`labkit.convex.EPS_CIFAR`;
    ``require_full_cifar`` refuses a training set smaller than the official 50 000 images, before
    any training. Results keyed ``"<data set>/<model>"``, each a :func:`labkit.experiment.result` by
    :func:`labkit.convex.evaluate_robustness` with the training time and history. Every run is
    seeded on its own, so an interrupted full run resumes: results in ``done`` are kept, and
    ``on_result(key, result)`` is called after each new one."""
    s = given(sizes, SIZES)
    attack = {"pgd_steps": s.pgd_steps, "n_attack": s.n_attack, "n_lower": s.n_lower, "lower_steps": s.lower_steps,
              "n_audit": s.n_audit, "audit_steps": s.audit_steps}  # fmt: skip

    def evaluate(model, te, eps, lipc, seconds, hist):
        return convex.evaluate_robustness(model, te, eps, lipschitz=lipc, **attack, device=device, progress=progress,
                                          seconds=seconds, sizes=sizes, history=hist.as_dict())  # fmt: skip

    unknown = [label for label in s.dense_layers if label not in ("cpl", "sll")]
    if unknown:
        raise ValueError(f"dense_layers are 'cpl' or 'sll', got {unknown}.")
    cifar = s.cifar and bool(s.cifar_layers)
    if cifar:  # refuse a subset before anything is trained
        cifar_tr = data.load("cifar10", limit=s.cifar_train)
        cifar_te = data.load("cifar10", train=False, limit=s.cifar_test)
        if s.require_full_cifar and (len(cifar_tr) < 50000 or len(cifar_te) < 10000):
            raise data.DataNotFoundError(
                f"full mode needs all of CIFAR-10 (50 000 / 10 000 images) but found {len(cifar_tr)} / "
                f"{len(cifar_te)} (the subset in LABKIT_DATA?). Point LABKIT_DATA at the full cifar-10-batches-py "
                "folder or a cifar10-full.npz, or run `python -m labkit.data download cifar10` on a machine with "
                "network access."
            )
    out = {}

    def keep(key, result):
        out[key] = result
        if on_result is not None:
            on_result(key, result)

    for name in s.datasets:
        todo = [label for label in (*s.dense_layers, "baseline") if not (done and f"{name}/{label}" in done)]
        out.update({f"{name}/{label}": done[f"{name}/{label}"] for label in (*s.dense_layers, "baseline")
                    if label not in todo})  # fmt: skip
        if not todo:
            continue
        tr = data.load(name, limit=s.n_train)
        te = data.load(name, train=False, limit=s.n_test)
        in_features = math.prod(tr.tensors[0].shape[1:])
        for label in todo:
            seed_everything(seed)
            if label in ("cpl", "sll"):
                model = convex.preset("mnist", layer=label, seed=seed)
                t0 = time.perf_counter()
                hist = convex.fit(model, tr, s.dense_epochs, seed=seed, device=device, progress=progress)
                lipc = None
            else:
                dense = convex.PRESETS["mnist"]
                model = convex.baseline_mlp(in_features, width=dense["width"], depth=dense["depth"], seed=seed)
                t0 = time.perf_counter()
                hist = convex.fit(model, tr, s.dense_epochs, margin=None, seed=seed, device=device, progress=progress)
                lipc = lipschitz.upper_bound(model.cpu())
            seconds = time.perf_counter() - t0
            keep(f"{name}/{label}", evaluate(model, te, convex.EPS_MNIST, lipc, seconds, hist))
    if cifar:
        mean = cifar_tr.tensors[0].mean((0, 2, 3))
        for kind in s.cifar_layers:
            if done and f"cifar10/{kind}" in done:
                out[f"cifar10/{kind}"] = done[f"cifar10/{kind}"]
                continue
            seed_everything(seed)
            model = convex.preset(s.cifar_preset, layer=kind, mean=mean, seed=seed)
            t0 = time.perf_counter()
            hist = convex.fit(model, cifar_tr, s.cifar_epochs, augment=True, seed=seed, device=device,
                              progress=progress, speedups=s.cifar_speedups)  # fmt: skip
            seconds = time.perf_counter() - t0
            keep(f"cifar10/{kind}", evaluate(model, cifar_te, convex.EPS_CIFAR, None, seconds, hist))
    return out


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
