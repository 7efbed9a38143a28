"""Chapter 6's experiment: every method of the book on MNIST and Fashion-MNIST (and the
convolutional ones on CIFAR-10) under one protocol (:mod:`labkit.bench`), with the soundness audit
of every certificate, and the chapter's tables and figures (§6.3–§6.5).

The registry :data:`METHODS` is collected from the chapters (each chapter's ``bench_methods()``
builds and trains its methods with its own recipe); the grid is one :class:`~labkit.chapters.Job`
per (data set, method, seed), one record per job::

    python -m labkit.chapters ch06 --mode book --set 'methods=["cpl", "clip"]' --set 'seeds=[0, 1]'
    python -m labkit.chapters ch06 --mode full --shard 2/4      # one part of four
    python -m labkit.chapters ch06 --mode full --summary        # the tables of the records
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .. import bench, experiment, report, runtime
from ..data import load
from . import DATA, Job, cached, ch01, ch02, ch03, ch04, ch05, execute, given, per_mode, pick, run_sizes

#: The registry of every method of the book, by name (§6.1), in the order of the bench's tables.
METHODS = {m.name: m for ch in (ch02, ch01, ch03, ch04, ch05) for m in ch.bench_methods()}

__all__ = [
    "METHODS",
    "method",
    "SIZES",
    "RECORD",
    "RECORDS",
    "GRID_SIZES",
    "FULL",
    "DATA",
    "LITERATURE",
    "SOURCES",
    "sizes",
    "full_banner",
    "methods_table",
    "grid",
    "jobs",
    "run",
    "collect",
    "summary",
    "verify",
    "table",
    "audit_table",
    "budget",
    "paper_table",
    "when_table",
    "literature_table",
    "values",
    "certificate_cost",
    "run_minutes",
    "plot_curves",
    "plot_pareto",
    "plot_gap",
    "plot_paper",
    "budget_values",
    "plot_datasets",
    "record_where",
]

_CONV = [name for name, m in METHODS.items() if "conv" in m.kinds]
_ALL = list(bench.DATASETS)
# fmt: off
#: The sizes per mode. Book mode trains on 4 000 images of each MNIST-like set (500 of them the CLIP
#: validation split) and 2 000 CIFAR-10 images, 3 epochs in batches of 64 for every method, with 1 000 test
#: images (so that at least 200 certified points are audited) and attacks on the first 100 (50 on
#: CIFAR-10); on CIFAR-10 it runs five of the eight convolutional methods (the families CPL, SLL, the
#: unconstrained ResNet, the paper's switching network and the certified one). Full mode takes all the data
#: and all the methods, 20 epochs, three seeds, attacks on 1 000 images with 100 AutoPGD steps and two
#: restarts.
SIZES = per_mode({
    #                 smoke                 book                                     full
    "datasets":      (["mnist", "cifar10"], _ALL,                                    _ALL),
    "seeds":         ([0],                  [0],                                     [0, 1, 2]),
    "n_train":       (200,                  4000,                                    None),
    "n_val":         (50,                   500,                                     5000),
    "n_test":        (100,                  1000,                                    None),
    "cifar_train":   (100,                  2000,                                    None),
    "cifar_test":    (50,                   1000,                                    None),
    "epochs":        (1,                    3,                                       20),
    "batch_size":    (64,                   64,                                      128),
    "n_attack":      (20,                   100,                                     1000),
    "cifar_attack":  (20,                   50,                                      1000),
    "cifar_methods": (_CONV,                ["cpl", "sll", "sp-resnet", "sp-switching", "sp-certified"], _CONV),
    "pgd_steps":     (5,                    10,                                      50),
    "apgd_steps":    (5,                    10,                                      100),
    "apgd_restarts": (1,                    1,                                       2),
    "deepfool_steps": (10,                  20,                                      50),
    "n_lower":       (4,                    16,                                      64),
    "lower_steps":   (10,                   30,                                      100),
    "audit_steps":   (5,                    10,                                      50),
    "n_audit_apgd":  (1,                    2,                                       50),
    "min_checked":   (0,                    200,                                     200),
}, methods=list(METHODS))
# fmt: on
#: No single record file. The grid is a folder of records, one per job, ``book/data/bench_<mode>``.
RECORD = None
RECORDS = "bench_{mode}"
#: The sizes that choose the grid (which jobs), not what a job does; records are compared without them.
GRID_SIZES = ("methods", "datasets", "seeds")
#: The folder of the full-mode records (``python -m labkit.chapters ch06 --mode full`` writes them).
FULL = DATA / "bench_full"

#: Published CIFAR-10 ℓ2 certified accuracies at ε = 36/255 (Table 4 of Prach et al. 2024, which collects
#: them), as rows of method, venue, clean %, certified %, parameters and source.
LITERATURE = [
    ("BCOP Large", "NeurIPS'19", 72.1, 58.2, "2 M", "Prach et al. 2024, Table 4"),
    ("Cayley KW-Large", "ICLR'21", 75.3, 59.1, "2 M", "Prach et al. 2024, Table 4"),
    ("SOC LipConvNet-25", "ICML'21", 76.4, 61.9, "24 M", "Prach et al. 2024, Table 4"),
    ("AOL Large", "ECCV'22", 71.6, 64.0, "136 M", "Prach et al. 2024, Table 4"),
    ("LOT LipNet-25", "NeurIPS'22", 76.8, 64.4, "27 M", "Prach et al. 2024, Table 4"),
    ("SOC-15 + CRC", "NeurIPS'22", 79.4, 67.0, "21 M", "Prach et al. 2024, Table 4"),
    ("CPL XL", "ICML'22", 78.5, 64.4, "236 M", "Prach et al. 2024, Table 4"),
    ("SLL X-Large", "ICLR'23", 73.3, 65.8, "236 M", "Prach et al. 2024, Table 4"),
    ("LiResNet + generated data", "ICLR'24", 87.0, 78.1, "–", "README of the LiResNet code"),
]


def sizes(mode: str | None = None) -> dict:
    """The sizes of :func:`run` in ``mode`` (default: the current mode)."""
    return pick(SIZES, mode)


#: Where each method's own evaluation (``Method.paper``) comes from (§6.5). Only the convex-potential
#: papers' certified accuracy is read from the papers; the others come from the authors' code, and the
#: log-norm paper's evaluation could not be read at all, so FGSM stands in as a common one-step attack.
SOURCES = {
    "fgsm": "FGSM, a common one-step evaluation (the log-norm paper's own could not be read)",
    "sphere": "the sphere attack of the CLIP authors' code",
    "sensitivity": "the sensitivity attack of the sNODE reference code",
    "certified": "certified accuracy, as the CPL and SLL papers report it",
    "pgd10": "10-step ℓ2 PGD of the structure-preserving authors' code (Foolbox)",
}


def methods_table() -> report.Table:
    """§6.1's registry: each method of :data:`METHODS` with its chapter, what it is, what
    it guarantees, the paper evaluation it comes with and the data sets it runs on."""
    rows = [
        {
            "name": m.name,
            "chapter": int(m.chapter[2:]),
            "title": m.title,
            "guarantee": m.guarantee,
            "paper": SOURCES.get(m.paper, "–"),
            "data": "MNIST-like" + (", CIFAR-10" if "conv" in m.kinds else ""),
        }
        for m in METHODS.values()
    ]
    return report.table(
        rows,
        [
            ("method", "name"),
            ("chapter", "chapter"),
            ("what it is", "title"),
            ("what it guarantees", "guarantee"),
            ("its own evaluation, and whose", "paper"),
            ("data", "data"),
        ],
    )


def method(name: str) -> bench.Method:
    """The :class:`~labkit.bench.Method` called ``name``; ``ValueError`` naming the methods that exist."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; there are {', '.join(METHODS)}.")
    return METHODS[name]


def grid(methods=None, datasets=None, seeds=(0,), *, only=None) -> list[tuple[str, str, int]]:
    """The runs ``(data set, method, seed)`` of the bench, data set by data set, for the methods that
    apply to each data set (the dense ones only to the MNIST-like sets) and, where ``only`` names a
    data set (``{data set: [methods]}``), are among its methods. Unknown names, negative or
    repeated seeds and a grid with no run raise ``ValueError`` before anything runs."""
    methods = list(METHODS) if methods is None else list(methods)
    datasets = list(bench.DATASETS) if datasets is None else list(datasets)
    only = dict(only or {})
    for m in [*methods, *(m for ms in only.values() for m in ms)]:
        method(m)
    for d in datasets:
        if d not in bench.DATASETS:
            raise ValueError(f"unknown data set {d!r}; the bench has {', '.join(bench.DATASETS)}.")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers, got {seeds!r}.")
    if len(set(seeds)) != len(seeds) or len(set(methods)) != len(methods) or len(set(datasets)) != len(datasets):
        raise ValueError("methods, data sets and seeds must not repeat.")
    kind = lambda d: "conv" if d == "cifar10" else "dense"  # noqa: E731
    runs = [
        (d, m, s)
        for d in datasets
        for m in methods
        if kind(d) in METHODS[m].kinds and m in only.get(d, [m])
        for s in seeds
    ]
    if not runs:
        raise ValueError(f"no method of {methods} applies to {datasets} (the dense methods need MNIST-like data).")
    return runs


def jobs(s, *, seed=0, device=None, progress=None) -> list[Job]:
    """One :class:`~labkit.chapters.Job` per run of :func:`grid` of the sizes ``s`` (on CIFAR-10 the
    methods of ``cifar_methods``), keyed ``"<data set>/<method>/seed <s>"``: the method's own
    ``train`` (its chapter's recipe) on the training set, then :func:`labkit.bench.evaluate` on the
    test set, with the training time, the method's description and what its training kept.
    ``progress``: each training's own bars (default: in full mode only)."""
    show = runtime.progress_enabled() and runtime.mode() == "full" if progress is None else progress
    dev = runtime.resolve_device(device)
    cifar = lambda d: d == "cifar10"  # noqa: E731
    sets = {
        d: (
            cached(lambda d=d: load(d, limit=s.cifar_train if cifar(d) else s.n_train)),
            cached(lambda d=d: load(d, train=False, limit=s.cifar_test if cifar(d) else s.n_test)),
        )
        for d in bench.DATASETS
    }

    def job(dataset, name, run_seed):
        m = method(name)

        def evaluate(model, kept, seconds):
            res = bench.evaluate(m, model, sets[dataset][1](), dataset, s, device=device)
            res.update(
                seconds=seconds,
                epochs=s.epochs,
                method=name,
                chapter=m.chapter,
                title=m.title,
                dataset=dataset,
                seed=run_seed,
                guarantee=m.guarantee,
                training=kept,
            )
            return res

        train_ = lambda: m.train(bench.Context(dataset, run_seed, sets[dataset][0](), s, dev, show))  # noqa: E731
        return Job(f"{dataset}/{name}/seed {run_seed}", train_, evaluate, run_seed)

    return [job(*run) for run in grid(s.methods, s.datasets, s.seeds, only={"cifar10": s.cifar_methods})]


def run(*, seed=0, device=None, progress=None, done=None, on_result=None, **sizes) -> dict:
    """The bench grid of the :data:`SIZES` given (every method on every data set it applies to, on
    CIFAR-10 those of ``cifar_methods``, for every seed of ``seeds``; ``seed`` is unused), in
    memory: :func:`labkit.chapters.execute` of :func:`jobs`. ``python -m labkit.chapters ch06``
    keeps one record per job."""
    s = given(sizes, SIZES)
    return execute(jobs(s, device=device, progress=progress), done=done, on_result=on_result, desc="bench")


def collect(folder) -> dict:
    """The results of every record in a results ``folder``, keyed by job, in the order of
    :func:`grid` (data set, method, seed), each with its provenance under ``"record"``; an empty dict
    when there is none."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.glob("*__*__seed*.json")) if folder.is_dir() else []:
        rec = experiment.load_record(path)
        keep = ("mode", "created", "device", "device_name", "torch", "commit", "dirty", "seconds", "sizes")
        found[rec["run"]] = {**rec["results"], "record": {k: rec.get(k) for k in keep}}
    order = {(d, m): i for i, (d, m) in enumerate((d, m) for d in bench.DATASETS for m in METHODS)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(tuple(kv[0].split("/")[:2]), 1e9), kv[0])))


def summary(results: dict) -> str:
    """The tables of :func:`table` and :func:`audit_table` of ``results``, for the command line."""
    return f"{table(results)}\n\n{audit_table(results)}"


def full_banner(results: dict) -> report.Table:
    """Where and how the full-mode records (:func:`collect` of :data:`FULL`) were made, one
    line per group of records that ran with the same sizes on the same device: data sets, number of
    runs, seeds, device, dates, total time, torch, commit, and every size that differs from the
    full-mode :data:`SIZES` (a shortened schedule says so here)."""
    if not results:
        return report.banner(None, command="python -m labkit.chapters ch06 --mode full")
    groups = {}
    for key, r in results.items():
        rec = r["record"]
        how = [rec.get("device"), rec.get("device_name"), run_sizes(rec.get("sizes"), GRID_SIZES)]
        sig = json.dumps(how, sort_keys=True)
        groups.setdefault(sig, []).append((key, rec))
    reference = run_sizes(sizes("full"), GRID_SIZES)
    lines = []
    for members in groups.values():
        recs = [rec for _, rec in members]
        first = recs[0]
        names = sorted({key.split("/")[0] for key, _ in members}, key=bench.DATASETS.index)
        seeds = sorted({int(key.rsplit(" ", 1)[1]) for key, _ in members})
        dates = sorted({str(rec.get("created"))[:10] for rec in recs})
        when = " to ".join([dates[0], dates[-1]] if len(dates) > 1 else dates)
        hours = sum(float(rec.get("seconds") or 0) for rec in recs) / 3600
        dirty = " (with local changes)" if any(rec.get("dirty") for rec in recs) else ""
        commits = ", ".join(sorted({str(rec.get("commit"))[:10] for rec in recs}))
        changed = report.changed_sizes(run_sizes(first.get("sizes"), GRID_SIZES), reference)
        lines.append(
            f"{', '.join(names)}: {len(recs)} run{'s' if len(recs) > 1 else ''}, seed{'s' if len(seeds) > 1 else ''} "
            f"{', '.join(map(str, seeds))} (the full table has {', '.join(map(str, sizes('full')['seeds']))}), on "
            f"{first.get('device')} ({first.get('device_name')}), {when}, "
            f"{hours:.1f} h in all, torch {first.get('torch')}, commit {commits}{dirty}. {changed}"
        )
    return report.Table("Full-mode records. " + " ".join(lines))


def verify(results: dict, *, min_checked: int = 0) -> None:
    """Raise ``AssertionError`` if the soundness audit of any run found a violation (a certified point
    flipped at 0.99 of its radius, a DeepFool norm below a certified radius, a lower bound above the
    stated bound), or if a method that certifies had fewer than ``min_checked`` certified points
    audited."""
    for key, r in results.items():
        a = r["audit"]
        assert a["flipped"] == 0 and not (a["apgd"] or {}).get("flipped"), (
            f"{key}: {a['attack']['library']} flipped certified points {a['flipped_index']}"
        )
        below = a["deepfool_below_radius"]
        assert not below, f"{key}: DeepFool went below certified radii at {below}"
        assert not a["lower_above_bound"], f"{key}: the lower bound {r['lipschitz']['lower']} exceeds the bound"
        if r["certifies"]:
            assert a["points"] >= min_checked, f"{key}: only {a['points']} certified points audited (< {min_checked})"


def _split(key):
    data, name, seed = key.split("/")
    return data, name, seed


def _title(data: str) -> str:
    return {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}.get(data, data)


def _by_method(results: dict) -> dict:
    """``{(data, method): [results of its seeds]}`` in the results' order."""
    groups = {}
    for key, r in results.items():
        data, name, _ = _split(key)
        groups.setdefault((data, name), []).append(r)
    return groups


def _avg(rs, f):
    vals = [f(r) for r in rs]
    vals = [v for v in vals if v is not None]
    return statistics.fmean(vals) if vals else None


def _spread(rs, f, fmt: str = "{:.3f}") -> str:
    """The mean of ``f`` over the seeds' results ``rs``, with the range over the seeds when there
    are several: ``0.981 (0.979–0.983)``."""
    vals = [v for v in (f(r) for r in rs) if v is not None]
    if not vals:
        return "–"
    mean = fmt.format(statistics.fmean(vals))
    return mean if len(vals) == 1 else f"{mean} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def table(results: dict) -> report.Table:
    """§6.3's main table, one row per (data set, method), averaged over seeds: parameters, training
    time, throughput, clean accuracy, and at the first ℓ2 radius certified accuracy, labkit's PGD and
    ART's AutoPGD; AutoPGD in ℓ∞ at the larger radius; the median DeepFool norm; the bounds."""
    rows = []
    for (data, name), rs in _by_method(results).items():
        r0 = rs[0]
        rows.append(
            {
                "data": _title(data),
                "method": name,
                "seeds": len(rs),
                "params": r0["parameters"] / 1e3,
                "seconds": _avg(rs, lambda r: r["seconds"]),
                "ips": _avg(rs, lambda r: r["throughput"]),
                "clean": _spread(rs, lambda r: r["clean"]),
                "eps": r0["radii"][0],
                "eps_inf": r0["linf"]["radii"][-1],
                "cert": _spread(rs, lambda r: r["certified"][0]),
                "pgd": _spread(rs, lambda r: r["empirical"]["pgd"][0]),
                "apgd": _spread(rs, lambda r: r["empirical"]["apgd"][0]),
                "apgd_inf": _spread(rs, lambda r: r["linf"]["empirical"]["apgd"][-1]),
                "deepfool": _spread(rs, lambda r: r["minimal"]["median"], "{:.2f}"),
                "lower": _avg(rs, lambda r: r["lipschitz"]["lower"]),
                "upper": _avg(rs, lambda r: r["lipschitz"]["upper"]),
            }
        )
    first = next(iter(results.values()), None)
    strength = ""
    if first:
        a = first["attack"]
        strength = (
            f" Attacks on the first {a['apgd']['points']} test images: PGD {a['pgd']['steps']} steps, 1 start; "
            f"AutoPGD (CE and DLR) {a['apgd']['steps']} steps, {a['apgd']['restarts']} start(s); DeepFool "
            f"{a['deepfool']['steps']} steps ({a['apgd']['library']})."
        )
    return report.table(
        rows,
        [
            ("data", "data"),
            ("method", "method"),
            ("parameters", "params", "{:.0f} k"),
            ("training", "seconds", "{:.1f} s"),
            ("images/s", "ips", "{:.0f}"),
            ("seeds", "seeds"),
            ("clean", "clean"),
            ("ε₁ (ℓ2)", "eps", "{:.3g}"),
            ("certified", "cert"),
            ("PGD", "pgd"),
            ("AutoPGD", "apgd"),
            ("AutoPGD ℓ∞", lambda r: f"{r['apgd_inf']} at {r['eps_inf']:.3g}"),
            ("median DeepFool (correct points)", "deepfool"),
            ("lower / upper L", lambda r: f"{r['lower']:.3g} / {r['upper']:.3g}"),
        ],
        caption="Accuracies averaged over the seeds, with their range over the seeds in brackets where there are "
        "several; certified, PGD and AutoPGD at the first ℓ2 radius ε₁ of the "
        "data set; certified accuracy on all test points, PGD and AutoPGD on the attacked ones (the first n)."
        f"{strength}",
    )


def audit_table(results: dict) -> report.Table:
    """§6.4's soundness audit, one row per run: certified points attacked by ART's PGD at 0.99 of
    their radii and how many flipped, the per-point AutoPGD audit, DeepFool norms below a radius, and
    whether the lower bound stayed below the bound. A violation is marked **VIOLATION**."""
    rows = []
    for key, r in results.items():
        a = r["audit"]
        apgd = a["apgd"] or {"points": 0, "flipped": 0}
        rows.append(
            {
                "key": key,
                "certifies": "yes" if r["certifies"] else "computed bound",
                "batch": f"{a['flipped']} / {a['points']}",
                "apgd": f"{apgd['flipped']} / {apgd['points']}",
                "below": len(a["deepfool_below_radius"]),
                "bounds": f"{r['lipschitz']['lower']:.3g} ≤ {r['lipschitz']['upper']:.3g}"
                if not a["lower_above_bound"]
                else f"**{r['lipschitz']['lower']:.3g} > {r['lipschitz']['upper']:.3g}**",
                "verdict": "sound" if a["sound"] else "**VIOLATION**",
            }
        )
    return report.table(
        rows,
        [
            ("run", "key"),
            ("certificate", "certifies"),
            ("PGD at 0.99 r: flipped / attacked", "batch"),
            ("AutoPGD at 0.99 r", "apgd"),
            ("DeepFool below r", "below"),
            ("lower ≤ upper", "bounds"),
            ("audit", "verdict"),
        ],
    )


def budget(results: dict) -> dict:
    """The matched budget (§6.1): the epochs (the same for every method), the smallest and largest
    parameter counts per data set and their ratio with and without the log-norm ODE (its exact
    certificate enumerates the 2¹⁰ vertices of the slope box of its width-10 block), and the training
    times."""
    out = {}
    for data in {(_split(k)[0]) for k in results}:
        rs = {_split(k)[1]: r for k, r in results.items() if _split(k)[0] == data}
        params = {m: r["parameters"] for m, r in rs.items()}
        rest = {m: p for m, p in params.items() if not m.startswith("lognorm")} or params
        out[data] = {
            "epochs": sorted({r["epochs"] for r in rs.values()}),
            "min": min(params.values()),
            "max": max(params.values()),
            "ratio": max(params.values()) / min(params.values()),
            "ratio_without_lognorm": max(rest.values()) / min(rest.values()),
            "seconds": (min(r["seconds"] for r in rs.values()), max(r["seconds"] for r in rs.values())),
        }
    return out


def paper_table(results: dict) -> report.Table:
    """Each method's own evaluation (:data:`SOURCES` says whose) against the protocol's number at the
    same radius and norm (§6.5): AutoPGD (CE and DLR) for an empirical claim, the same certificate for a
    certified one."""
    rows = []
    for (data, name), rs in _by_method(results).items():
        p = rs[0].get("paper")
        if not p:
            continue
        rows.append(
            {
                "data": _title(data),
                "method": name,
                **p,
                "value": _avg(rs, lambda r: r["paper"]["value"]),
                "common": _avg(rs, lambda r: _protocol(r)),
                "source": SOURCES.get(METHODS[name].paper, "–"),
            }
        )
    return report.table(
        rows,
        [
            ("data", "data"),
            ("method", "method"),
            ("own evaluation", "evaluation"),
            ("whose", "source"),
            ("radius", lambda r: f"{r['radius']:.3g} ({'ℓ∞' if r['norm'] == 'linf' else 'ℓ2'})"),
            ("its way", "value", "{:.3f}"),
            ("protocol", "common", "{:.3f}"),
            ("change", lambda r: r["common"] - r["value"], "{:+.3f}"),
        ],
    )


def _protocol(r: dict) -> float:
    """The protocol's number at the radius and norm of the result's paper evaluation."""
    p = r["paper"]
    res = r["linf"] if p["norm"] == "linf" else r
    curve = res["certified"] if p["protocol"] == "certified" else res["empirical"]["apgd"]
    for e, v in zip(res["radii"], curve):
        if abs(e - p["radius"]) < 1e-9:
            return v
    raise KeyError(f"the protocol has no radius {p['radius']}.")


def when_table(results: dict) -> report.Table:
    """§6.6's "which method when": per method what it guarantees, what it costs (training time and
    parameters per data set), and, from this bench, where it is the single best or the single worst
    method in clean accuracy, certified accuracy and AutoPGD accuracy at ε₁ (ties are not listed)."""
    groups = _by_method(results)
    by_data = {}
    for (data, name), rs in groups.items():
        by_data.setdefault(data, {})[name] = {
            "clean": _avg(rs, lambda r: r["clean"]),
            "certified": _avg(rs, lambda r: r["certified"][0]),
            "AutoPGD": _avg(rs, lambda r: r["empirical"]["apgd"][0]),
            "seconds": _avg(rs, lambda r: r["seconds"]),
            "params": rs[0]["parameters"],
        }
    rows = []
    for name, m in METHODS.items():
        wins, loses, cost = [], [], []
        for data, ms in by_data.items():
            if name not in ms:
                continue
            cost.append(f"{_title(data)} {ms[name]['seconds']:.1f} s, {ms[name]['params'] / 1e3:.0f} k")
            for what in ("clean", "certified", "AutoPGD"):
                vals = [v[what] for v in ms.values()]
                if ms[name][what] == max(vals) and vals.count(max(vals)) == 1:
                    wins.append(f"{what} ({_title(data)})")
                elif ms[name][what] == min(vals) and vals.count(min(vals)) == 1:
                    loses.append(f"{what} ({_title(data)})")
        if not cost:
            continue
        rows.append(
            {
                "method": name,
                "what": m.title,
                "guarantee": m.guarantee,
                "cost": ", ".join(cost),
                "wins": "; ".join(wins) or "–",
                "loses": "; ".join(loses) or "–",
            }
        )
    return report.table(
        rows,
        [
            ("method", "method"),
            ("what it is", "what"),
            ("what it guarantees", "guarantee"),
            ("training time, parameters", "cost"),
            ("best on this bench", "wins"),
            ("worst on this bench", "loses"),
        ],
    )


def literature_table(results: dict, *, where: str) -> report.Table:
    """The literature anchor (§6.7): :data:`LITERATURE` (the papers' numbers, as published) and this
    bench's CIFAR-10 runs of the certifying methods at 36/255 (ours, with ``where`` they ran)."""
    rows = [
        {"method": f"{m} ({v})", "clean": c, "cert": k, "params": p, "source": f"published; {s}"}
        for m, v, c, k, p, s in LITERATURE
    ]
    for (data, name), rs in _by_method(results).items():
        if data != "cifar10" or not rs[0]["certifies"]:
            continue
        rows.append(
            {
                "method": f"{name} (this bench)",
                "clean": 100 * _avg(rs, lambda r: r["clean"]),
                "cert": 100 * _avg(rs, lambda r: r["certified"][0]),
                "params": f"{rs[0]['parameters'] / 1e3:.0f} k",
                "source": f"ours; {where}",
            }
        )
    return report.table(
        rows,
        [
            ("method", "method"),
            ("clean %", "clean", "{:.1f}"),
            ("certified % at 36/255", "cert", "{:.1f}"),
            ("parameters", "params"),
            ("source", "source"),
        ],
    )


def values(results: dict) -> dict:
    """The numbers the prose quotes: per run ``"<data>/<method>/<what>"`` (clean, cert0, apgd0, pgd0,
    the paper evaluation), the audit totals ``audited``, ``flipped`` and ``violations``, and on the
    MNIST-like sets the range of certified accuracy at ε₁ of the methods that certify
    (``certifying_low``, ``certifying_high``) and the best of the others (``others_best`` and its
    ``others_best_method``)."""
    out = {"audited": 0, "flipped": 0, "violations": 0, "runs": len(results)}
    for (data, name), rs in _by_method(results).items():
        key = f"{data}/{name}"
        out[f"{key}/clean"] = _avg(rs, lambda r: r["clean"])
        out[f"{key}/cert0"] = _avg(rs, lambda r: r["certified"][0])
        out[f"{key}/apgd0"] = _avg(rs, lambda r: r["empirical"]["apgd"][0])
        out[f"{key}/pgd0"] = _avg(rs, lambda r: r["empirical"]["pgd"][0])
        if rs[0].get("paper"):
            out[f"{key}/paper"] = _avg(rs, lambda r: r["paper"]["value"])
            out[f"{key}/protocol"] = _avg(rs, _protocol)
    dense = {
        (d, n): _avg(rs, lambda r: r["certified"][0]) for (d, n), rs in _by_method(results).items() if d != "cifar10"
    }
    certifying = [v for (_, n), v in dense.items() if METHODS[n].certifies]
    others = {n: v for (_, n), v in dense.items() if not METHODS[n].certifies}
    if certifying and others:
        best = max(others, key=others.get)
        out.update(
            certifying_low=min(certifying),
            certifying_high=max(certifying),
            others_best=others[best],
            others_best_method=best,
        )
    for r in results.values():
        a = r["audit"]
        out["audited"] += a["points"]
        out["flipped"] += a["flipped"] + ((a["apgd"] or {}).get("flipped") or 0)
        out["violations"] += 0 if a["sound"] else 1
    return out


def certificate_cost(results: dict, *, reference: str = "plain") -> str:
    """§6.6's sentence on what a certificate costs in clean accuracy, computed from the runs: per data
    set, the methods that certify (``Method.certifies`` of :data:`METHODS`) with their clean accuracy
    against the ``reference`` network's, split into those below it and those at or above it. A
    certificate need not cost accuracy; which ones do is a property of the runs."""
    groups = {k: _avg(rs, lambda r: r["clean"]) for k, rs in _by_method(results).items()}
    parts = []
    for data in dict.fromkeys(d for d, _ in groups):
        ref = groups.get((data, reference))
        if ref is None:
            continue
        certifying = {n: v for (d, n), v in groups.items() if d == data and METHODS[n].certifies}
        below = [f"{n} {v:.3f}" for n, v in certifying.items() if v < ref]
        above = [f"{n} {v:.3f}" for n, v in certifying.items() if v >= ref]
        text = f"on {_title(data)} ({reference} {ref:.3f})"
        if below:
            text += ", below it: " + ", ".join(below)
        if above:
            text += ("; " if below else ", ") + "at or above it: " + ", ".join(above)
        parts.append(text)
    if not parts:
        return f"No run of the {reference} network to compare clean accuracies with."
    return (
        "Clean accuracy of the methods that certify, against the unconstrained network of the same data set: "
        + "; ".join(parts)
        + ". A certificate constrains the network, but whether that costs clean accuracy depends on the method "
        "and the budget."
    )


def run_minutes(results: dict) -> dict:
    """Per data set, the shortest and longest run of full-mode records in minutes (each record's own
    ``seconds``: training and evaluation) and the share of evaluation in them:
    ``{"<data>/minutes_min": …, "<data>/minutes_max": …, "<data>/eval_share_min": …,
    "<data>/eval_share_max": …}``; results without their record are left out."""
    by_data = {}
    for key, r in results.items():
        rec = r.get("record")
        if rec and rec.get("seconds"):
            share = 1 - r["seconds"] / rec["seconds"]
            by_data.setdefault(_split(key)[0], []).append((rec["seconds"] / 60, share))
    out = {}
    for data, rows in by_data.items():
        minutes, shares = zip(*rows)
        out.update(
            {
                f"{data}/minutes_min": min(minutes),
                f"{data}/minutes_max": max(minutes),
                f"{data}/eval_share_min": min(shares),
                f"{data}/eval_share_max": max(shares),
            }
        )
    return out


# -- figures --------------------------------------------------------------------------------------------


def _colors(names):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    return {n: cmap(i % 20) for i, n in enumerate(names)}


def plot_curves(results: dict, data: str, ax=None):
    """Robust accuracy against ε in ℓ2 on ``data``: certified curves solid, AutoPGD curves dashed,
    one colour per method, both on the attacked test points; the clean accuracy at ε = 0 (§6.3)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4))[1]
    groups = {n: rs for (d, n), rs in _by_method(results).items() if d == data}
    colors = _colors(METHODS)
    for name, rs in groups.items():
        eps = [0.0, *rs[0]["radii"]]
        clean = _avg(rs, lambda r: r["attacked"]["clean"])
        emp = [clean, *[_avg(rs, lambda r, i=i: r["empirical"]["apgd"][i]) for i in range(len(eps) - 1)]]
        cert = [clean, *[_avg(rs, lambda r, i=i: r["attacked"]["certified"][i]) for i in range(len(eps) - 1)]]
        ax.plot(eps, emp, "--", color=colors[name], lw=1.2)
        ax.plot(eps, cert, "-", color=colors[name], lw=1.8, label=name)
    ax.set_xlabel("ℓ2 radius ε")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{_title(data)}: certified (solid) and AutoPGD (dashed)")
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_pareto(results: dict, ax=None):
    """Clean accuracy against robust accuracy at ε₁ (ℓ2) on the attacked test points: AutoPGD as
    open markers, certified as filled ones, one marker shape per data set (§6.3)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    colors = _colors(METHODS)
    marks = {"mnist": "o", "fashion_mnist": "s", "cifar10": "^"}
    for (data, name), rs in _by_method(results).items():
        clean = _avg(rs, lambda r: r["clean"])
        ax.scatter(
            _avg(rs, lambda r: r["empirical"]["apgd"][0]),
            clean,
            marker=marks[data],
            facecolors="none",
            edgecolors=colors[name],
        )
        ax.scatter(
            _avg(rs, lambda r: r["attacked"]["certified"][0]), clean, marker=marks[data], color=colors[name], s=18
        )
    for name in {n for _, n in _by_method(results)}:
        ax.scatter([], [], color=colors[name], label=name)
    for data, mk in marks.items():
        ax.scatter([], [], marker=mk, color="gray", label=_title(data))
    ax.set_xlabel("robust accuracy at ε₁ on the attacked points (open: AutoPGD, filled: certified)")
    ax.set_ylabel("clean accuracy")
    ax.legend(fontsize=6, ncol=3)
    return ax


def plot_gap(results: dict, ax=None):
    """The gap between each method's AutoPGD and certified accuracy at ε₁ on the attacked test points
    (§6.3): what neither the attack nor the certificate decides."""
    import matplotlib.pyplot as plt

    groups = _by_method(results)
    ax = ax or plt.subplots(figsize=(8, 3.6))[1]
    labels = [f"{n}\n{_title(d)}" for d, n in groups]
    gaps = [_avg(rs, lambda r: r["empirical"]["apgd"][0] - r["attacked"]["certified"][0]) for rs in groups.values()]
    colors = _colors(METHODS)
    ax.bar(range(len(gaps)), gaps, color=[colors[n] for _, n in groups])
    ax.set_xticks(range(len(gaps)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("AutoPGD − certified at ε₁")
    return ax


def plot_paper(results: dict, ax=None):
    """Each method's own evaluation (circle) and the protocol's number at the same radius (arrow head)
    (§6.5)."""
    import matplotlib.pyplot as plt

    rows = [
        (f"{n} ({_title(d)})", _avg(rs, lambda r: r["paper"]["value"]), _avg(rs, _protocol))
        for (d, n), rs in _by_method(results).items()
        if rs[0].get("paper")
    ]
    ax = ax or plt.subplots(figsize=(7, 0.3 * len(rows) + 1))[1]
    for i, (_, paper, common) in enumerate(rows):
        ax.annotate("", xy=(common, i), xytext=(paper, i), arrowprops=dict(arrowstyle="->", color="C3"))
        ax.plot([paper], [i], "o", color="C0")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.set_xlabel("accuracy: the method's own evaluation (circle) → the protocol (arrow)")
    ax.set_xlim(0, 1)
    return ax


def budget_values(results: dict) -> dict:
    """The numbers of :func:`budget` the prose quotes, as ``"<data set>/<name>"``."""
    return {f"{d}/{k}": v for d, b in budget(results).items() for k, v in b.items() if isinstance(v, (int, float))}


def plot_datasets(results: dict):
    """:func:`plot_curves` of every data set of ``results``, side by side. Returns the figure."""
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(key.split("/")[0] for key in results))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        plot_curves(results, data, ax=ax)
    fig.tight_layout()
    return fig


def record_where(results: dict) -> str | None:
    """Where the CIFAR-10 runs of the records ``results`` (:func:`collect`) ran, for
    :func:`literature_table`; ``None`` without one."""
    cifar = [r["record"] for key, r in results.items() if key.startswith("cifar10/")]
    if not cifar:
        return None
    first = cifar[0]
    return (
        f"full-mode record, {first['device']} ({first['device_name']}), all of CIFAR-10, "
        f"{first['sizes']['epochs']} epochs"
    )
